"""The API server's object handling, without HTTP: what tests/support/emulator.py serves.

An `ApiStore` holds the objects of each kind, their resourceVersions and one ordered event log,
and applies the API server's rules (see emulator.py's docstring for why each exists):
server-set metadata, generateName, status-subresource isolation, RFC 7386 merge patches and JSON
patches with `test` ops, resourceVersion preconditions, admission of custom resources from their
CRD (support/crdschema.py), the Indexed Job name rule, finalizers and deletionTimestamp, and
garbage collection of dependents by ownerReferences. Operations return plain dicts or raise
`ApiError`, which carries the Kubernetes Status the server would answer. Watches read the log:
`watch_start` takes a snapshot and a log position in one step, `events_from` replays from it.

Pure and synchronous: tests call it directly, and the HTTP adapter calls it on its event loop.
"""
from __future__ import annotations

import bisect
import collections
import copy
import dataclasses
import datetime
import json
import re
import secrets
import string
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jsonpatch

from support.crdschema import CustomResourceSchema, FieldError, invalid_status

ResKey = tuple[str, str, str]  # (group, version, plural)
ObjKey = tuple[str | None, str]  # (namespace, name)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class Call:
    """One API request as RBAC sees it."""
    verb: str          # get, list, watch, create, patch, update, delete, deletecollection
    group: str         # "" for the core group
    resource: str      # plural, or plural/subresource
    namespace: str | None
    name: str | None
    code: int
    agent: str         # User-Agent: tells the operator (kopf, kubernetes client) from the test tools


@dataclasses.dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = False
    shortnames: tuple[str, ...] = ()
    # A custom resource's schema: objects are pruned, defaulted and validated (support/crdschema.py).
    schema: CustomResourceSchema | None = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    @classmethod
    def from_crd(cls, crd: Mapping[str, Any]) -> "Kind":
        """A custom resource served as its CRD (a manifests/crds/*.yaml document) describes it."""
        spec = crd["spec"]
        schema = CustomResourceSchema.from_crd(crd)
        (version,) = [v for v in spec["versions"] if v.get("storage")]
        return cls(spec["group"], version["name"], spec["names"]["plural"], spec["names"]["kind"],
                   namespaced=spec["scope"] == "Namespaced",
                   status_subresource="status" in (version.get("subresources") or {}),
                   shortnames=tuple(spec["names"].get("shortNames") or ()), schema=schema)

    @property
    def key(self) -> ResKey:
        return (self.group, self.version, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


CORE_KINDS = (
    # kopf waits for both of these in discovery before it starts any watch, even when it never
    # lists them (settings.scanning.disabled); kmock does not announce them on its own.
    Kind("", "v1", "namespaces", "Namespace", namespaced=False),
    Kind("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced=False),
    Kind("", "v1", "events", "Event"),
    Kind("", "v1", "secrets", "Secret"),
    Kind("", "v1", "configmaps", "ConfigMap"),
    Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
    Kind("", "v1", "pods", "Pod", status_subresource=True),
    Kind("batch", "v1", "jobs", "Job", status_subresource=True),
    Kind("events.k8s.io", "v1", "events", "Event"),
)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge-patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- selectors ----------------------------------------------------------------------------------

_SET_TERM = re.compile(r"^\s*(?P<key>[^\s!=]+)\s+(?P<op>in|notin)\s+\((?P<values>[^)]*)\)\s*$")


def _split_selector(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        terms.append(current)
    return [t.strip() for t in terms if t.strip()]


def label_selector_matches(selector: str | None, labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    for term in _split_selector(selector or ""):
        m = _SET_TERM.match(term)
        if m:
            values = {v.strip() for v in m["values"].split(",")}
            present = m["key"] in labels and labels[m["key"]] in values
            if (m["op"] == "in") != present:
                return False
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_selector_matches(selector: str | None, obj: Mapping[str, Any]) -> bool:
    for term in _split_selector(selector or ""):
        negate = "!=" in term
        path, value = (s.strip() for s in term.replace("==", "=").replace("!=", "=").split("=", 1))
        current: Any = obj
        for part in path.split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        if (str(current) == value) == negate:
            return False
    return True


class ApiError(Exception):
    """A refusal, as the Kubernetes Status body the API server would answer."""

    def __init__(self, code: int, reason: str, message: str, status: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.status = status or {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                                 "code": code, "reason": reason, "message": message}


def _not_found(kind: Kind, name: str | None) -> ApiError:
    return ApiError(404, "NotFound", f'{kind.plural}.{kind.group} "{name}" not found')


def _invalid(kind: Kind, name: str, errors: list[FieldError]) -> ApiError:
    assert kind.schema is not None
    return ApiError(422, "Invalid", "", kind.schema.invalid_status(name, errors))


def job_problems(kind: Kind, obj: Mapping[str, Any]) -> ApiError | None:
    """kubernetes pkg/apis/batch/validation/validation.go, ValidateJob: "For indexed job, the job
    controller appends a suffix (`-$INDEX`) to the pod hostname"; `<name>-<completions-1>` must
    be a DNS-1123 label, or the Job could never create its last pod."""
    spec = obj.get("spec") or {}
    if kind.key != ("batch", "v1", "jobs") or spec.get("completionMode") != "Indexed":
        return None
    completions = spec.get("completions")
    if not isinstance(completions, int) or completions <= 0:
        return None
    name = obj["metadata"]["name"]
    hostname = f"{name}-{completions - 1}"
    if len(hostname) <= 63 and DNS_LABEL.match(hostname):
        return None
    error = FieldError(("metadata", "name"), "FieldValueInvalid",
                       f"Invalid value: {json.dumps(name)}: will not able to create pod with invalid "
                       f"DNS label: {hostname}")
    return ApiError(422, "Invalid", "", invalid_status("Job", "batch", name, [error]))


class ApiStore:
    """Objects, resourceVersions and the event log of the kinds served (see the module docstring).

    `clock` stamps `create_times` (the adapter passes its loop's clock); `on_change` is called after
    every event appended to the log (the adapter wakes its watches).
    """

    def __init__(self, kinds: Iterable[Kind], *, log_limit: int = 200_000,
                 clock: Callable[[], float] = time.monotonic, on_change: Callable[[], None] | None = None) -> None:
        self.rv = 0
        self.kind_by_key: dict[ResKey, Kind] = {}
        self.objects_by_kind: dict[ResKey, dict[ObjKey, dict[str, Any]]] = {}
        self.log: list[tuple[int, ResKey, dict[str, Any]]] = []
        self.log_rvs: list[int] = []
        self.log_floor = 0   # resourceVersions at or below this one are no longer in the log
        self.log_offset = 0  # entries dropped from the front of the log
        self.log_limit = log_limit
        self.created: collections.Counter[tuple[str, str | None, str]] = collections.Counter()
        self.create_times: dict[tuple[str, str | None, str], float] = {}
        self.clock = clock
        self.on_change = on_change
        for kind in kinds:
            self.kind_by_key[kind.key] = kind
            self.objects_by_kind[kind.key] = {}

    # --- bookkeeping ----------------------------------------------------------------------------

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _emit(self, kind: Kind, type_: str, obj: dict[str, Any]) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        self.log.append((rv, kind.key, {"type": type_, "object": copy.deepcopy(obj)}))
        self.log_rvs.append(rv)
        if len(self.log) > self.log_limit:
            drop = len(self.log) - self.log_limit
            self.log_floor = self.log_rvs[drop - 1]
            self.log_offset += drop
            del self.log[:drop], self.log_rvs[:drop]
        if self.on_change is not None:
            self.on_change()

    def bucket(self, kind: Kind) -> dict[ObjKey, dict[str, Any]]:
        return self.objects_by_kind[kind.key]

    def key(self, kind: Kind, namespace: str | None, name: str | None) -> ObjKey:
        return (namespace if kind.namespaced else None, name or "")

    def matching(self, kind: Kind, namespace: str | None, params: Mapping[str, str]) -> list[dict[str, Any]]:
        return [obj for (ns, _), obj in self.bucket(kind).items()
                if (namespace is None or ns == namespace)
                and label_selector_matches(params.get("labelSelector"), obj["metadata"].get("labels"))
                and field_selector_matches(params.get("fieldSelector"), obj)]

    def namespaces(self) -> list[str]:
        return sorted({"default"} | {ns for objs in self.objects_by_kind.values() for ns, _ in objs if ns})

    # --- verbs ----------------------------------------------------------------------------------

    def list(self, kind: Kind, namespace: str | None, params: Mapping[str, str]) -> dict[str, Any]:
        items = sorted(self.matching(kind, namespace, params),
                       key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        return {"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    def get(self, kind: Kind, namespace: str | None, name: str | None, subresource: str | None = None
            ) -> dict[str, Any]:
        obj = self.bucket(kind).get(self.key(kind, namespace, name))
        if obj is None:
            raise _not_found(kind, name)
        if subresource not in (None, "status"):
            raise ApiError(404, "NotFound", f"no subresource {subresource}")
        return obj

    def create(self, kind: Kind, namespace: str | None, body: Any) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        namespace = namespace if kind.namespaced else None
        if kind.namespaced:
            if namespace is None:
                raise ApiError(400, "BadRequest", "a namespaced resource is created under /namespaces/NS/")
            if meta.get("namespace") not in (None, namespace):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match "
                                                  "the namespace sent on the request")
            meta["namespace"] = namespace
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "metadata.name or metadata.generateName is required")
            suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
            meta["name"] = f"{meta['generateName']}{suffix}"
        if kind.status_subresource:
            obj.pop("status", None)
        if kind.schema is not None:
            obj, errors = kind.schema.admit(obj)
            meta = obj["metadata"]
            if errors:
                raise _invalid(kind, meta["name"], errors)
        problem = job_problems(kind, obj)
        if problem is not None:
            raise problem
        key = (namespace, meta["name"])
        if key in self.bucket(kind):
            raise ApiError(409, "AlreadyExists", f'{kind.plural}.{kind.group} "{meta["name"]}" already exists')
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = str(self._next_rv())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta.pop("deletionTimestamp", None)
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        self.bucket(kind)[key] = obj
        self.created[(kind.plural, namespace, meta["name"])] += 1
        self.create_times[(kind.plural, namespace, meta["name"])] = self.clock()
        self._emit(kind, "ADDED", obj)
        refs = meta.get("ownerReferences") or []
        if refs and not any(self._uid_exists(ref.get("uid")) for ref in refs):
            # The garbage collector removes a dependent whose owners are all gone (a child created
            # by a controller that raced with its owner's deletion).
            gone = copy.deepcopy(obj)
            gone["metadata"]["resourceVersion"] = str(self._next_rv())
            self._remove(kind, key, gone)
        return obj

    def _uid_exists(self, uid: str | None) -> bool:
        return any(o["metadata"].get("uid") == uid for objs in self.objects_by_kind.values() for o in objs.values())

    def patch(self, kind: Kind, namespace: str | None, name: str | None, patch: Any, content_type: str,
              subresource: str | None = None) -> dict[str, Any]:
        key = self.key(kind, namespace, name)
        old = self.get(kind, namespace, name, subresource)
        try:
            if content_type == "application/json-patch+json":
                if not isinstance(patch, list):
                    raise ApiError(400, "BadRequest", "a JSON patch is a list of operations")
                patched = jsonpatch.apply_patch(copy.deepcopy(old), patch)
            elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                if not isinstance(patch, Mapping):
                    raise ApiError(400, "BadRequest", "a merge patch is a JSON object")
                wanted_rv = (patch.get("metadata") or {}).get("resourceVersion")
                if wanted_rv is not None and wanted_rv != old["metadata"]["resourceVersion"]:
                    raise ApiError(409, "Conflict", "the object has been modified; please apply your "
                                                    "changes to the latest version and try again")
                patched = merge_patch(old, patch)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {content_type!r}")
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict, jsonpatch.JsonPointerException) as exc:
            raise ApiError(422, "Invalid", f"the patch could not be applied: {exc}") from None
        return self._update(kind, key, old, patched, subresource)

    def replace(self, kind: Kind, namespace: str | None, name: str | None, body: Any,
                subresource: str | None = None) -> dict[str, Any]:
        """PUT (kubectl replace, client `replace_*`): the whole object, at a given resourceVersion."""
        key = self.key(kind, namespace, name)
        old = self.get(kind, namespace, name, subresource)
        if not isinstance(body, Mapping):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        meta = body.get("metadata") or {}
        if meta.get("name") not in (None, name):
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        if not meta.get("resourceVersion"):
            # Custom resources allow no unconditional update (the CRD strategy's
            # AllowUnconditionalUpdate is false).
            error = FieldError(("metadata", "resourceVersion"), "FieldValueInvalid",
                               "Invalid value: 0x0: must be specified for an update")
            raise _invalid(kind, name or "", [error])
        if meta["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {kind.plural}.{kind.group} '
                                            f'"{name}": the object has been modified; please apply '
                                            "your changes to the latest version and try again")
        return self._update(kind, key, old, copy.deepcopy(dict(body)), subresource)

    def _update(self, kind: Kind, key: ObjKey, old: dict[str, Any], patched: dict[str, Any],
                subresource: str | None) -> dict[str, Any]:
        """Store the result of a PATCH or PUT: the status subresource's rules, server-set metadata,
        admission from the CRD, generation and resourceVersion, and deletion once unblocked."""
        new = copy.deepcopy(old)
        if subresource == "status":
            if patched.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = patched["status"]
        else:
            status = old.get("status")
            new = patched
            if kind.status_subresource:
                if status is None:
                    new.pop("status", None)
                else:
                    new["status"] = status
        for fixed in ("uid", "name", "namespace", "creationTimestamp", "generation", "resourceVersion"):
            if fixed in old["metadata"]:
                new.setdefault("metadata", {})[fixed] = old["metadata"][fixed]
        if kind.schema is not None:
            if subresource == "status":
                status, errors = kind.schema.admit_status(new.get("status"), old.get("status"))
                if status is not None:
                    new["status"] = status
            else:
                new, errors = kind.schema.admit(new, old)
            if errors:
                raise _invalid(kind, key[1], errors)
        if new == old:
            return old
        # Stored objects are read with their defaults (one put() past admission may lack them).
        before = kind.schema.read(old) if kind.schema is not None else old
        spec_changed = {k: v for k, v in new.items() if k not in ("metadata", "status")} != \
                       {k: v for k, v in before.items() if k not in ("metadata", "status")}
        if spec_changed:
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = str(self._next_rv())
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(kind, key, new)
            return new
        self.bucket(kind)[key] = new
        self._emit(kind, "MODIFIED", new)
        return new

    def delete(self, kind: Kind, namespace: str | None, name: str | None, policy: str = "Background") -> dict[str, Any]:
        key = self.key(kind, namespace, name)
        obj = self.bucket(kind).get(key)
        if obj is None:
            raise _not_found(kind, name)
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj = copy.deepcopy(obj)
                obj["metadata"]["deletionTimestamp"] = _now()
                obj["metadata"]["resourceVersion"] = str(self._next_rv())
                self.bucket(kind)[key] = obj
                self._emit(kind, "MODIFIED", obj)
            return obj
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._next_rv())
        self._remove(kind, key, obj, policy=policy)
        return obj

    def _remove(self, kind: Kind, key: ObjKey, obj: dict[str, Any], *, policy: str = "Background") -> None:
        self.bucket(kind).pop(key, None)
        self._emit(kind, "DELETED", obj)
        self._collect_dependents(obj["metadata"]["uid"], orphan=policy == "Orphan")

    def _collect_dependents(self, owner_uid: str, *, orphan: bool) -> None:
        """The garbage collector: dependents go with their owner, or lose the reference (Orphan)."""
        for kind_key, objects in self.objects_by_kind.items():
            kind = self.kind_by_key[kind_key]
            for key, obj in list(objects.items()):
                refs = obj["metadata"].get("ownerReferences") or []
                if not any(ref.get("uid") == owner_uid for ref in refs):
                    continue
                obj = copy.deepcopy(obj)
                obj["metadata"]["resourceVersion"] = str(self._next_rv())
                if orphan:
                    obj["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != owner_uid]
                    objects[key] = obj
                    self._emit(kind, "MODIFIED", obj)
                else:
                    self._remove(kind, key, obj)

    # --- watches ----------------------------------------------------------------------------------

    def watch_start(self, kind: Kind, namespace: str | None, name: str | None, params: Mapping[str, str]
                    ) -> tuple[list[dict[str, Any]], int]:
        """(the events to send first, the log position to follow from), in one synchronous step so
        that no event falls in between. Raises ApiError 410 for a version older than the log."""
        since = params.get("resourceVersion")
        if since in (None, "", "0"):
            initial = [{"type": "ADDED", "object": copy.deepcopy(obj)} for obj in self.matching(kind, namespace, params)
                       if name is None or obj["metadata"]["name"] == name]
            return initial, self.log_offset + len(self.log)
        since_rv = int(since)
        if since_rv < self.log_floor:
            raise ApiError(410, "Expired", f"too old resource version: {since_rv}")
        return [], self.log_offset + bisect.bisect_right(self.log_rvs, since_rv)

    def events_from(self, position: int, kind: Kind, namespace: str | None, name: str | None,
                    params: Mapping[str, str]) -> tuple[list[dict[str, Any]], int | None]:
        """The wanted events of `kind` logged at `position` and after, and the next position; None
        when `position` fell behind the trimmed log (the client re-lists on reconnect)."""
        if position < self.log_offset:
            return [], None
        events = []
        for _, key, event in self.log[position - self.log_offset:]:
            obj = event["object"]
            if (key == kind.key and (namespace is None or obj["metadata"].get("namespace") == namespace)
                    and (name is None or obj["metadata"]["name"] == name)
                    and label_selector_matches(params.get("labelSelector"), obj["metadata"].get("labels"))
                    and field_selector_matches(params.get("fieldSelector"), obj)):
                events.append(event)
        return events, self.log_offset + len(self.log)

    # --- test helpers ---------------------------------------------------------------------------

    def kind_for(self, plural: str, group: str | None = None) -> Kind:
        for kind in self.kind_by_key.values():
            if kind.plural == plural and (group is None or kind.group == group):
                return kind
        raise KeyError(plural)

    def put(self, plural: str, obj: Mapping[str, Any], *, group: str | None = None) -> dict[str, Any]:
        """Create or replace an object directly, with server-set metadata and no admission: what
        the store holds, e.g. an object kept from before its CRD's schema was tightened."""
        kind = self.kind_for(plural, group)
        obj = copy.deepcopy(dict(obj))
        meta = obj.setdefault("metadata", {})
        key = (meta.get("namespace") if kind.namespaced else None, meta["name"])
        old = self.bucket(kind).get(key)
        meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", old["metadata"]["creationTimestamp"] if old else _now())
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(self._next_rv())
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        self.bucket(kind)[key] = obj
        self._emit(kind, "MODIFIED" if old else "ADDED", obj)
        return obj

    def list_objects(self, plural: str, namespace: str | None = None, *, group: str | None = None,
                     labels: str | None = None) -> list[dict[str, Any]]:
        kind = self.kind_for(plural, group)
        return copy.deepcopy(self.matching(kind, namespace, {"labelSelector": labels} if labels else {}))

    def get_object(self, plural: str, namespace: str | None, name: str, *, group: str | None = None
                   ) -> dict[str, Any] | None:
        kind = self.kind_for(plural, group)
        obj = self.bucket(kind).get((namespace if kind.namespaced else None, name))
        return copy.deepcopy(obj) if obj is not None else None


def operator_calls(calls: Iterable[Call], agents: tuple[str, ...] = ("kopf", "OpenAPI-Generator")
                   ) -> set[tuple[str, str, str]]:
    """(verb, group, resource) of the calls the operator made (kopf's and the kubernetes client's)."""
    return {(c.verb, c.group, c.resource) for c in calls if c.agent.startswith(agents)}
