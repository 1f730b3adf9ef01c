"""Custom resources as the API server treats them, read from the CRD files in manifests/crds/.

What kube-apiserver's apiextensions code does to a custom resource on create and update, in the
order it does it (k8s.io/apiextensions-apiserver, pkg/registry/customresource/strategy.go and
validator.go; docs: "Specifying a structural schema", "Defaulting", "Validation rules"):

1. prune: fields the schema does not declare are dropped (except under
   `x-kubernetes-preserve-unknown-fields`), and so are nulls where the schema is not `nullable`;
2. default: `default` values fill absent fields, top down, so a defaulted `{}` gets its own defaults;
3. validate the OpenAPI v3 schema, then the `x-kubernetes-validations` CEL rules; transition rules
   (those naming `oldSelf`) run only on update and only where the old object has the field;
4. ratchet (KEP-4008, on by default since 1.30): on update, an error on a field whose value did not
   change is not reported, so an object stored under a laxer schema can still be patched.

Errors carry the API server's field path and wording ("spec.epochs: Invalid value: 0: spec.epochs
in body should be greater than or equal to 1"), and `invalid_status` wraps them in the 422 Status
body the API server answers. The schema keywords are checked by jsonschema after the small
OpenAPI -> JSON-schema translation below; CEL runs on cel-python. tests/test_crds.py uses the same
translation and the same CEL evaluation.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD_DIR = Path(__file__).resolve().parents[2] / "manifests" / "crds"

Path_ = tuple[Any, ...]  # field path: str keys, int list indexes


# --- the CRD files ----------------------------------------------------------------------------------

def load_crds(directory: Path = CRD_DIR) -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text()) for path in sorted(directory.glob("*.yaml"))]


def storage_version(crd: Mapping[str, Any]) -> Mapping[str, Any]:
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return version


# --- OpenAPI v3 (Kubernetes flavour) -> JSON schema ------------------------------------------------

def to_json_schema(node: Any) -> Any:
    """OpenAPI v3.0 (Kubernetes flavour) -> JSON schema: boolean exclusiveMinimum, nullable, x-*."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if out.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if out.get("exclusiveMaximum") is True:
        out["exclusiveMaximum"] = out.pop("maximum")
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


# --- CEL (x-kubernetes-validations) -----------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _program(rule: str) -> Any:
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def is_transition_rule(rule: str) -> bool:
    return "oldSelf" in rule


def evaluate_rule(rule: str, self_value: Any, old_value: Any) -> bool:
    """One rule on one value. Transition rules pass on create (`old_value` None), as on a cluster.
    An evaluation error (a missing field, a type mismatch) raises celpy.CELEvalError."""
    import celpy

    if is_transition_rule(rule) and old_value is None:
        return True
    activation = {"self": celpy.json_to_cel(self_value)}
    if old_value is not None:
        activation["oldSelf"] = celpy.json_to_cel(old_value)
    return bool(_program(rule).evaluate(activation))


# --- field errors -----------------------------------------------------------------------------------

def field_path(path: Path_) -> str:
    """`spec.env[1].name`, as apimachinery's field.Path prints it; `<nil>` for the root."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<nil>"


def go_value(value: Any) -> str:
    """A value the way field.Invalid prints it (quoted strings, bare numbers)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps("object" if isinstance(value, Mapping) else "array" if isinstance(value, list) else str(value))


@dataclasses.dataclass(frozen=True)
class FieldError:
    path: Path_
    reason: str   # metav1.CauseType: FieldValueInvalid, FieldValueRequired, FieldValueNotSupported, ...
    detail: str   # what follows "<field>: "

    @property
    def field(self) -> str:
        return field_path(self.path)

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}"


def _schema_error(error: jsonschema.ValidationError, prefix: Path_) -> list[FieldError]:
    path: Path_ = (*prefix, *error.absolute_path)
    where = field_path(path)
    value, bound = error.instance, error.validator_value
    kind = error.validator
    if kind == "required":
        return [FieldError((*path, name), "FieldValueRequired", "Required value")
                for name in bound if isinstance(value, Mapping) and name not in value]
    if kind == "type":
        wanted = bound[0] if isinstance(bound, list) else bound
        got = _json_type(value)
        return [FieldError(path, "FieldValueTypeInvalid",
                           f"Invalid value: {json.dumps(got)}: {where} in body must be of type {wanted}: "
                           f"{json.dumps(got)}")]
    if kind == "enum":
        supported = ", ".join(json.dumps(v) for v in bound)
        return [FieldError(path, "FieldValueNotSupported",
                           f"Unsupported value: {go_value(value)}: supported values: {supported}")]
    if kind == "maxLength":
        return [FieldError(path, "FieldValueTooLong", f"Too long: may not be longer than {bound}")]
    if kind == "maxItems":
        return [FieldError(path, "FieldValueTooMany", f"Too many: {len(value)}: must have at most {bound} items")]
    detail = {
        "minimum": f"should be greater than or equal to {go_value(bound)}",
        "maximum": f"should be less than or equal to {go_value(bound)}",
        "exclusiveMinimum": f"should be greater than {go_value(bound)}",
        "exclusiveMaximum": f"should be less than {go_value(bound)}",
        "pattern": f"should match '{bound}'",
        "minLength": f"should be at least {bound} chars long",
        "minItems": f"should have at least {bound} items",
        "format": f"must be of type {bound}",
    }.get(kind, error.message)
    shown = len(value) if kind == "minItems" else value
    return [FieldError(path, "FieldValueInvalid", f"Invalid value: {go_value(shown)}: {where} in body {detail}")]


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, Mapping) else "null"


def _date_time(value: Any) -> bool:
    import datetime

    if not isinstance(value, str) or "T" not in value.upper():
        return False
    try:
        datetime.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


FORMATS = jsonschema.FormatChecker(formats=())
FORMATS.checks("date-time")(_date_time)


# --- the structural schema, node by node -------------------------------------------------------------

def _properties(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    return schema.get("properties") or {}


def _is_leaf_union(schema: Mapping[str, Any]) -> bool:
    return bool(schema.get("x-kubernetes-int-or-string") or "anyOf" in schema)


def prune(value: Any, schema: Mapping[str, Any], *, root: bool = False) -> Any:
    """A copy without undeclared fields, and without nulls where the schema is not nullable."""
    if isinstance(value, Mapping) and schema.get("type") == "object" and not _is_leaf_union(schema):
        props = _properties(schema)
        extra = schema.get("additionalProperties")
        keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields")
        out = {}
        for key, item in value.items():
            if root and key in ("apiVersion", "kind", "metadata"):
                out[key] = copy.deepcopy(item)  # ObjectMeta has its own rules, not the CRD's
            elif key in props:
                if item is None and not props[key].get("nullable"):
                    continue
                out[key] = prune(item, props[key])
            elif isinstance(extra, Mapping):
                out[key] = prune(item, extra)
            elif keep_unknown or extra is True:
                out[key] = copy.deepcopy(item)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [prune(item, schema["items"]) for item in value]
    return copy.deepcopy(value)


def apply_defaults(value: Any, schema: Mapping[str, Any]) -> Any:
    """Fill absent fields from `default`, top down (a defaulted object gets its own defaults)."""
    if isinstance(value, dict) and not _is_leaf_union(schema):
        for key, prop in _properties(schema).items():
            if key not in value and "default" in prop:
                value[key] = copy.deepcopy(prop["default"])
            if key in value:
                value[key] = apply_defaults(value[key], prop)
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key in set(value) - set(_properties(schema)):
                value[key] = apply_defaults(value[key], extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def schema_errors(value: Any, schema: Mapping[str, Any], path: Path_ = ()) -> list[FieldError]:
    validator = jsonschema.Draft7Validator(to_json_schema(schema), format_checker=FORMATS)
    errors = [found for error in validator.iter_errors(value) for found in _schema_error(error, path)]
    return sorted(errors, key=lambda e: (e.field, e.detail)) + _list_type_errors(value, schema, path)


def _list_type_errors(value: Any, schema: Mapping[str, Any], path: Path_) -> list[FieldError]:
    """`x-kubernetes-list-type: map` keys and `set` items are unique."""
    errors: list[FieldError] = []
    if isinstance(value, list):
        list_type = schema.get("x-kubernetes-list-type")
        seen: set[str] = set()
        for i, item in enumerate(value):
            if list_type == "map" and isinstance(item, Mapping):
                key = json.dumps({k: item.get(k) for k in schema.get("x-kubernetes-list-map-keys") or []},
                                 sort_keys=True)
            elif list_type == "set":
                key = json.dumps(item, sort_keys=True)
            else:
                key = None
            if key is not None:
                if key in seen:
                    errors.append(FieldError((*path, i), "FieldValueDuplicate", f"Duplicate value: {key}"))
                seen.add(key)
            if isinstance(schema.get("items"), Mapping):
                errors += _list_type_errors(item, schema["items"], (*path, i))
    elif isinstance(value, Mapping):
        for key, prop in _properties(schema).items():
            if key in value:
                errors += _list_type_errors(value[key], prop, (*path, key))
    return errors


def cel_errors(value: Any, old: Any, schema: Mapping[str, Any], path: Path_ = ()) -> list[FieldError]:
    """Every `x-kubernetes-validations` rule on `value` and below; `old` None: a create."""
    errors: list[FieldError] = []
    for rule in schema.get("x-kubernetes-validations") or []:
        text = rule["rule"]
        if is_transition_rule(text) and old is None:
            continue  # not correlatable: transition rules do not run
        try:
            ok = evaluate_rule(text, _cel_view(value, path), _cel_view(old, path) if old is not None else None)
        except Exception as error:  # noqa: BLE001 - celpy.CELEvalError and its causes
            errors.append(FieldError(path, "FieldValueInvalid", f"Invalid value: {go_value(value)}: "
                                     f"rule evaluation error: {error}"))
            continue
        if not ok:
            where = (*path, *rule["fieldPath"].lstrip(".").split(".")) if rule.get("fieldPath") else path
            message = rule.get("message") or f"failed rule: {text}"
            errors.append(FieldError(where, rule.get("reason", "FieldValueInvalid"),
                                     f"Invalid value: {go_value(value)}: {message}"))
    if isinstance(value, Mapping) and not _is_leaf_union(schema):
        for key, prop in _properties(schema).items():
            if key in value and not (not path and key == "metadata"):
                child_old = old.get(key) if isinstance(old, Mapping) else None
                errors += cel_errors(value[key], child_old, prop, (*path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        olds = _correlated_items(value, old, schema)
        for i, item in enumerate(value):
            errors += cel_errors(item, olds[i], schema["items"], (*path, i))
    return errors


def _cel_view(value: Any, path: Path_) -> Any:
    """At the root, CEL sees metadata.name and metadata.generateName only."""
    if path or not isinstance(value, Mapping):
        return value
    view = dict(value)
    view["metadata"] = {k: v for k, v in (value.get("metadata") or {}).items() if k in ("name", "generateName")}
    return view


def _correlated_items(value: list[Any], old: Any, schema: Mapping[str, Any]) -> list[Any]:
    """Old items by map key for `list-type: map` (the only correlatable lists); None otherwise."""
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(old, list):
        return [None] * len(value)
    keys = schema.get("x-kubernetes-list-map-keys") or []

    def key(item: Any) -> Any:
        return tuple(item.get(k) for k in keys) if isinstance(item, Mapping) else None
    by_key = {key(item): item for item in old}
    return [by_key.get(key(item)) for item in value]


_MISSING = object()


def _at(value: Any, path: Path_) -> Any:
    for part in path:
        if isinstance(part, int):
            value = value[part] if isinstance(value, list) and part < len(value) else _MISSING
        else:
            value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def _ratcheted(error: FieldError, new: Any, old: Any) -> bool:
    """KEP-4008: an unchanged field keeps an error it already had. A missing required field is
    unchanged when its parent is."""
    path = error.path[:-1] if error.reason == "FieldValueRequired" else error.path
    before = _at(old, path)
    return before is not _MISSING and before == _at(new, path)


# --- what the API server does with a request body ----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CustomResourceSchema:
    """One served version of one CRD: its structural schema and names."""
    group: str
    kind: str
    schema: Mapping[str, Any]

    @classmethod
    def from_crd(cls, crd: Mapping[str, Any]) -> "CustomResourceSchema":
        return cls(crd["spec"]["group"], crd["spec"]["names"]["kind"],
                   storage_version(crd)["schema"]["openAPIV3Schema"])

    @property
    def status_schema(self) -> Mapping[str, Any]:
        return _properties(self.schema).get("status") or {"type": "object",
                                                            "x-kubernetes-preserve-unknown-fields": True}

    def read(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """An object as the API server decodes it, from a request or from storage: pruned, defaulted."""
        return apply_defaults(prune(obj, self.schema, root=True), self.schema)

    def admit(self, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None
              ) -> tuple[dict[str, Any], list[FieldError]]:
        """Create (`old` None) or update of the main resource: pruned, defaulted, and its errors."""
        new = self.read(obj)
        if old is not None:  # defaults apply on reading from storage too: compare like with like
            old = self.read(old)
        errors = schema_errors(_without_metadata(new), _without_metadata_schema(self.schema))
        errors += cel_errors(new, old, self.schema)
        if old is not None:
            errors = [e for e in errors if not _ratcheted(e, new, old)]
        return new, errors

    def admit_status(self, status: Any, old_status: Any) -> tuple[Any, list[FieldError]]:
        """An update through the status subresource: only status is pruned, defaulted and checked."""
        schema = self.status_schema
        if status is None:
            return None, []
        new = apply_defaults(prune(status, schema), schema)
        if old_status is not None:
            old_status = apply_defaults(prune(old_status, schema), schema)
        errors = schema_errors(new, schema, ("status",)) + cel_errors(new, old_status, schema, ("status",))
        if old_status is not None:
            errors = [e for e in errors if not _ratcheted(dataclasses.replace(e, path=e.path[1:]), new, old_status)]
        return new, errors

    def invalid_status(self, name: str, errors: list[FieldError]) -> dict[str, Any]:
        return invalid_status(self.kind, self.group, name, errors)


def _without_metadata(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "metadata"}


def _without_metadata_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {**schema, "properties": {k: v for k, v in _properties(schema).items() if k != "metadata"}}


def invalid_status(kind: str, group: str, name: str, errors: list[FieldError]) -> dict[str, Any]:
    """The 422 body: `Kind.group "name" is invalid: <errors>` (apimachinery errors.NewInvalid)."""
    listed = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    qualified = f"{kind}.{group}" if group else kind
    return {
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": f'{qualified} "{name}" is invalid: {listed}',
        "reason": "Invalid", "code": 422,
        "details": {"name": name, "group": group, "kind": kind,
                    "causes": [{"reason": e.reason, "message": e.detail, "field": e.field} for e in errors]},
    }
