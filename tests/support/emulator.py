"""kmock's KubernetesEmulator with the API-server behaviour kopf and the kubernetes client need.

kmock 0.8 (pinned exactly in pyproject.toml) serves discovery, parses Kubernetes URLs and runs an
aiohttp server on loopback; that is what we keep. Against kopf 1.45.2 its object handling had
gaps (found by running the operator against it), each fixed here:

- server-set metadata: uid, resourceVersion, creationTimestamp, generation, and the namespace taken
  from the URL (kopf and ownerReferences need them);
- POST answers 201 (the client's `create_*` returned None on 200), 409 AlreadyExists as a Status;
- `generateName` (kopf posts its Events with one);
- label and field selectors on list and watch;
- the status subresource: a PATCH of the object ignores `status`, a PATCH of `/status` changes only
  `status`, and creation drops `status`, as the API server does for CRDs with the subresource;
- merge-patch per RFC 7386 (kmock refused to replace a dict by a scalar), JSON-patch with failed
  `test` ops answered 422 (kopf relies on it), resourceVersion preconditions answered 409;
- watches honour `resourceVersion`: one global, ordered event log; a watch takes its snapshot and
  its position in the log in one step (nothing can arrive in between), replays only events newer
  than the requested version, answers 410 Gone for versions older than the log, sends BOOKMARKs
  and ends after `timeoutSeconds`;
- garbage collection of dependents by ownerReferences (background; `Orphan` strips the references),
  also of a dependent created after all its owners were deleted;
- `/api/v1/namespaces[/NAME]` (kmock's URL parser failed with 500/404) and both `namespaces` and
  `customresourcedefinitions` in discovery: kopf waits for them before it starts any watch;
- custom resources are admitted as the API server admits them, from their CRD (`Kind.from_crd`,
  support/crdschema.py): unknown fields pruned, defaults applied, the OpenAPI schema and the CEL
  rules (`x-kubernetes-validations`, transition rules such as `self == oldSelf` on update)
  checked on create, PATCH and PUT of the object, and only status through `/status`; a refusal is
  the API server's 422 Status naming the field. kmock stores whatever it is sent, so without this
  an edited TrainingRun was accepted here and silently ignored by the operator;
- an Indexed Job whose `<name>-<completions - 1>` is not a DNS label is refused with 422, as
  kubernetes pkg/apis/batch/validation/validation.go (ValidateJob) does; the rest of a Job's
  validation is not emulated;
- PUT replaces a custom resource (resourceVersion required, as for CRDs); PUT of built-in kinds
  and deletecollection answer 405 (unsupported here, and the operator must not need them);
- kmock keeps every request and re-scans the list on each request (a GET went from 3 ms to 190 ms
  after 4,000 requests): we keep the last `history_limit` and record what tests need in `calls`.

Everything runs on the emulator's event loop; `EmulatorThread` (harness.py) owns that loop.
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import copy
import dataclasses
import datetime
import json
import re
import secrets
import string
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch

import kmock
from kmock._internal import enums, rendering

from support.crdschema import CustomResourceSchema, FieldError, invalid_status

ResKey = tuple[str, str, str]  # (group, version, plural)

NAMESPACES_PATH = re.compile(r"^/api/v1/namespaces/?(?P<name>[^/]+)?/?$")
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


# --- the emulator -------------------------------------------------------------------------------

# slots=False: the state below lives in the instance __dict__ (kmock's classes are slotted).
@attrs.define(kw_only=True, slots=False)
class SusyEmulator(kmock.KubernetesEmulator):
    """See the module docstring. `kinds` are served in addition to CORE_KINDS."""

    kinds: tuple[Kind, ...] = ()
    history_limit: int = 50
    log_limit: int = 200_000
    heartbeat_seconds: float = 5.0

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.rv = 0
        self.kind_by_key: dict[ResKey, Kind] = {}
        self.objects_by_kind: dict[ResKey, dict[tuple[str | None, str], dict[str, Any]]] = {}
        self.log: list[tuple[int, ResKey, dict[str, Any]]] = []
        self.log_rvs: list[int] = []
        self.log_floor = 0   # resourceVersions at or below this one are no longer in the log
        self.log_offset = 0  # entries dropped from the front of the log
        self.calls: list[Call] = []
        self.created: collections.Counter[tuple[str, str | None, str]] = collections.Counter()
        self.create_times: dict[tuple[str, str | None, str], float] = {}
        self._changed: asyncio.Condition | None = None
        for kind in (*CORE_KINDS, *self.kinds):
            self.kind_by_key[kind.key] = kind
            self.objects_by_kind[kind.key] = {}
            verbs = {"get", "list", "watch", "create", "patch", "delete"} | ({"update"} if kind.schema else set())
            self.resources[f"{kind.group}/{kind.version}/{kind.plural}" if kind.group
                           else f"{kind.version}/{kind.plural}"] = kmock.ResourceInfo(
                kind=kind.kind, singular=kind.kind.lower(), namespaced=kind.namespaced, verbs=verbs,
                shortnames=set(kind.shortnames), subresources={"status"} if kind.status_subresource else set())

    # --- plumbing -------------------------------------------------------------------------------

    @property
    def changed(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = NAMESPACES_PATH.match(raw_request.path)
        if match and raw_request.method == "GET" and raw_request.query.get("watch") != "true":
            return self._namespaces(match["name"], raw_request)
        try:
            return await super().__call__(raw_request)
        finally:
            # kmock matches every request against its whole history: keep only the recent part.
            del self._requests[: -self.history_limit]

    def _namespaces(self, name: str | None, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.Response:
        names = {"default"} | {ns for objs in self.objects_by_kind.values() for ns, _ in objs if ns}
        items = [{"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": ns, "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, ns)), "resourceVersion": "1"},
                  "status": {"phase": "Active"}} for ns in sorted(names)]
        self._record("get" if name else "list", "", "namespaces", None, name, 200, raw_request)
        if name is None:
            return aiohttp.web.json_response({"apiVersion": "v1", "kind": "NamespaceList",
                                              "metadata": {"resourceVersion": str(self.rv)}, "items": items})
        for item in items:
            if item["metadata"]["name"] == name:
                return aiohttp.web.json_response(item)
        return self._error(404, "NotFound", f'namespaces "{name}" not found')

    def _record(self, verb: str, group: str, resource: str, namespace: str | None, name: str | None,
                code: int, raw: Any) -> None:
        agent = raw.headers.get("User-Agent", "") if raw is not None else ""
        self.calls.append(Call(verb, group, resource, namespace, name, code, agent))

    @staticmethod
    def _error(code: int, reason: str, message: str) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"apiVersion": "v1", "kind": "Status", "metadata": {},
                                          "status": "Failure", "code": code, "reason": reason,
                                          "message": message}, status=code)

    @staticmethod
    def _invalid(kind: Kind, name: str, errors: list[FieldError]) -> aiohttp.web.Response:
        assert kind.schema is not None
        return aiohttp.web.json_response(kind.schema.invalid_status(name, errors), status=422)

    @staticmethod
    def _job_problems(kind: Kind, obj: Mapping[str, Any]) -> aiohttp.web.Response | None:
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
        return aiohttp.web.json_response(invalid_status("Job", "batch", name, [error]), status=422)

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
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    # --- dispatch -------------------------------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or res.plural is None:
            return await super()._handle(request)  # discovery: kmock's scaffold
        kind = self.kind_by_key.get((res.group, res.version, res.plural))
        raw = request._raw_request
        resource = f"{res.plural}/{request.subresource}" if request.subresource else res.plural
        method = request.method
        if kind is None:
            response = self._error(404, "NotFound", f"the server could not find the requested resource {resource}")
            verb = method.value.lower()
        elif request.action == enums.action.WATCH:
            self._record("watch", kind.group, resource, request.namespace, request.name, 200, raw)
            return await self._watch(kind, request)
        elif request.action == enums.action.LIST:
            verb, response = "list", self._list(kind, request)
        elif request.action == enums.action.FETCH:
            verb, response = "get", self._get(kind, request)
        elif request.action == enums.action.CREATE:
            verb, response = "create", self._create(kind, request)
        elif request.action == enums.action.UPDATE:
            verb, response = "patch", self._patch(kind, request)
        elif request.action == enums.action.DELETE:
            verb, response = "delete", self._delete(kind, request)
        elif method == enums.method.PUT and request.name and kind.schema is not None:
            verb, response = "update", self._replace(kind, request)
        elif method == enums.method.PUT:
            verb, response = "update", self._error(405, "MethodNotAllowed", "PUT is not supported by the emulator")
        elif method == enums.method.DELETE:
            verb, response = "deletecollection", self._error(405, "MethodNotAllowed", "deletecollection is not supported")
        else:
            verb, response = method.value.lower(), self._error(405, "MethodNotAllowed", f"{method.value} is not supported")
        self._record(verb, kind.group if kind else res.group or "", resource, request.namespace, request.name,
                     response.status, raw)
        return response

    def _bucket(self, kind: Kind) -> dict[tuple[str | None, str], dict[str, Any]]:
        return self.objects_by_kind[kind.key]

    def _matching(self, kind: Kind, namespace: str | None, params: Mapping[str, str]) -> list[dict[str, Any]]:
        return [obj for (ns, _), obj in self._bucket(kind).items()
                if (namespace is None or ns == namespace)
                and label_selector_matches(params.get("labelSelector"), obj["metadata"].get("labels"))
                and field_selector_matches(params.get("fieldSelector"), obj)]

    # --- verbs ----------------------------------------------------------------------------------

    def _list(self, kind: Kind, request: rendering.Request) -> aiohttp.web.Response:
        items = sorted(self._matching(kind, request.namespace, request.params),
                       key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        return aiohttp.web.json_response({"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                                          "metadata": {"resourceVersion": str(self.rv)}, "items": items})

    def _get(self, kind: Kind, request: rendering.Request) -> aiohttp.web.Response:
        obj = self._bucket(kind).get((request.namespace, request.name or ""))
        if obj is None:
            return self._error(404, "NotFound", f'{kind.plural}.{kind.group} "{request.name}" not found')
        if request.subresource not in (None, "status"):
            return self._error(404, "NotFound", f"no subresource {request.subresource}")
        return aiohttp.web.json_response(obj)

    def _create(self, kind: Kind, request: rendering.Request) -> aiohttp.web.Response:
        body = request.data
        if not isinstance(body, Mapping):
            return self._error(400, "BadRequest", "the body must be a JSON object")
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        namespace = request.namespace if kind.namespaced else None
        if kind.namespaced:
            if namespace is None:
                return self._error(400, "BadRequest", "a namespaced resource is created under /namespaces/NS/")
            if meta.get("namespace") not in (None, namespace):
                return self._error(400, "BadRequest", "the namespace of the provided object does not match "
                                                      "the namespace sent on the request")
            meta["namespace"] = namespace
        if not meta.get("name"):
            if not meta.get("generateName"):
                return self._error(422, "Invalid", "metadata.name or metadata.generateName is required")
            suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
            meta["name"] = f"{meta['generateName']}{suffix}"
        if kind.status_subresource:
            obj.pop("status", None)
        if kind.schema is not None:
            obj, errors = kind.schema.admit(obj)
            meta = obj["metadata"]
            if errors:
                return self._invalid(kind, meta["name"], errors)
        problem = self._job_problems(kind, obj)
        if problem is not None:
            return problem
        key = (namespace, meta["name"])
        if key in self._bucket(kind):
            return self._error(409, "AlreadyExists", f'{kind.plural}.{kind.group} "{meta["name"]}" already exists')
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = str(self._next_rv())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta.pop("deletionTimestamp", None)
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        self._bucket(kind)[key] = obj
        self.created[(kind.plural, namespace, meta["name"])] += 1
        self.create_times[(kind.plural, namespace, meta["name"])] = asyncio.get_running_loop().time()
        self._emit(kind, "ADDED", obj)
        refs = meta.get("ownerReferences") or []
        if refs and not any(self._uid_exists(ref.get("uid")) for ref in refs):
            # The garbage collector removes a dependent whose owners are all gone (a child created
            # by a controller that raced with its owner's deletion).
            gone = copy.deepcopy(obj)
            gone["metadata"]["resourceVersion"] = str(self._next_rv())
            self._remove(kind, key, gone)
        return aiohttp.web.json_response(obj, status=201)

    def _uid_exists(self, uid: str | None) -> bool:
        return any(o["metadata"].get("uid") == uid for objs in self.objects_by_kind.values() for o in objs.values())

    def _patch(self, kind: Kind, request: rendering.Request) -> aiohttp.web.Response:
        key = (request.namespace if kind.namespaced else None, request.name or "")
        old = self._bucket(kind).get(key)
        if old is None:
            return self._error(404, "NotFound", f'{kind.plural}.{kind.group} "{request.name}" not found')
        if request.subresource not in (None, "status"):
            return self._error(404, "NotFound", f"no subresource {request.subresource}")
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        patch = request.data
        try:
            if content_type == "application/json-patch+json":
                if not isinstance(patch, list):
                    return self._error(400, "BadRequest", "a JSON patch is a list of operations")
                patched = jsonpatch.apply_patch(copy.deepcopy(old), patch)
            elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                if not isinstance(patch, Mapping):
                    return self._error(400, "BadRequest", "a merge patch is a JSON object")
                wanted_rv = (patch.get("metadata") or {}).get("resourceVersion")
                if wanted_rv is not None and wanted_rv != old["metadata"]["resourceVersion"]:
                    return self._error(409, "Conflict", "the object has been modified; please apply your "
                                                        "changes to the latest version and try again")
                patched = merge_patch(old, patch)
            else:
                return self._error(415, "UnsupportedMediaType", f"unsupported patch type {content_type!r}")
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict, jsonpatch.JsonPointerException) as exc:
            return self._error(422, "Invalid", f"the patch could not be applied: {exc}")
        return self._update(kind, key, old, patched, request.subresource)

    def _replace(self, kind: Kind, request: rendering.Request) -> aiohttp.web.Response:
        """PUT (kubectl replace, client `replace_*`): the whole object, at a given resourceVersion."""
        key = (request.namespace if kind.namespaced else None, request.name or "")
        old = self._bucket(kind).get(key)
        if old is None:
            return self._error(404, "NotFound", f'{kind.plural}.{kind.group} "{request.name}" not found')
        if request.subresource not in (None, "status"):
            return self._error(404, "NotFound", f"no subresource {request.subresource}")
        body = request.data
        if not isinstance(body, Mapping):
            return self._error(400, "BadRequest", "the body must be a JSON object")
        meta = body.get("metadata") or {}
        if meta.get("name") not in (None, request.name):
            return self._error(400, "BadRequest", "the name of the object does not match the name on the URL")
        if not meta.get("resourceVersion"):
            # Custom resources allow no unconditional update (the CRD strategy's
            # AllowUnconditionalUpdate is false).
            error = FieldError(("metadata", "resourceVersion"), "FieldValueInvalid",
                               "Invalid value: 0x0: must be specified for an update")
            return self._invalid(kind, request.name or "", [error])
        if meta["resourceVersion"] != old["metadata"]["resourceVersion"]:
            return self._error(409, "Conflict", f'Operation cannot be fulfilled on {kind.plural}.{kind.group} '
                                                f'"{request.name}": the object has been modified; please apply '
                                                "your changes to the latest version and try again")
        return self._update(kind, key, old, copy.deepcopy(dict(body)), request.subresource)

    def _update(self, kind: Kind, key: tuple[str | None, str], old: dict[str, Any], patched: dict[str, Any],
                subresource: str | None) -> aiohttp.web.Response:
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
                return self._invalid(kind, key[1], errors)
        if new == old:
            return aiohttp.web.json_response(old)
        # Stored objects are read with their defaults (one put() past admission may lack them).
        before = kind.schema.read(old) if kind.schema is not None else old
        spec_changed = {k: v for k, v in new.items() if k not in ("metadata", "status")} != \
                       {k: v for k, v in before.items() if k not in ("metadata", "status")}
        if spec_changed:
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = str(self._next_rv())
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(kind, key, new)
            return aiohttp.web.json_response(new)
        self._bucket(kind)[key] = new
        self._emit(kind, "MODIFIED", new)
        return aiohttp.web.json_response(new)

    def _delete(self, kind: Kind, request: rendering.Request) -> aiohttp.web.Response:
        key = (request.namespace if kind.namespaced else None, request.name or "")
        obj = self._bucket(kind).get(key)
        if obj is None:
            return self._error(404, "NotFound", f'{kind.plural}.{kind.group} "{request.name}" not found')
        options = request.data if isinstance(request.data, Mapping) else {}
        policy = options.get("propagationPolicy") or request.params.get("propagationPolicy") or "Background"
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj = copy.deepcopy(obj)
                obj["metadata"]["deletionTimestamp"] = _now()
                obj["metadata"]["resourceVersion"] = str(self._next_rv())
                self._bucket(kind)[key] = obj
                self._emit(kind, "MODIFIED", obj)
            return aiohttp.web.json_response(obj)
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._next_rv())
        self._remove(kind, key, obj, policy=policy)
        return aiohttp.web.json_response(obj)

    def _remove(self, kind: Kind, key: tuple[str | None, str], obj: dict[str, Any], *,
                policy: str = "Background") -> None:
        self._bucket(kind).pop(key, None)
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

    async def _watch(self, kind: Kind, request: rendering.Request) -> aiohttp.web.StreamResponse:
        params = request.params
        raw = request._raw_request
        namespace = request.namespace

        def wanted(event: dict[str, Any]) -> bool:
            obj = event["object"]
            return ((namespace is None or obj["metadata"].get("namespace") == namespace)
                    and (request.name is None or obj["metadata"]["name"] == request.name)
                    and label_selector_matches(params.get("labelSelector"), obj["metadata"].get("labels"))
                    and field_selector_matches(params.get("fieldSelector"), obj))

        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        since = params.get("resourceVersion")
        # Snapshot and log position in one synchronous step: no event can fall in between.
        initial: list[dict[str, Any]] = []
        if since in (None, "", "0"):
            position = self.log_offset + len(self.log)
            initial = [{"type": "ADDED", "object": copy.deepcopy(obj)}
                       for obj in self._matching(kind, namespace, params)
                       if request.name is None or obj["metadata"]["name"] == request.name]
        else:
            since_rv = int(since)
            if since_rv < self.log_floor:
                gone = {"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "status": "Failure",
                                                    "code": 410, "reason": "Expired",
                                                    "message": f"too old resource version: {since_rv}"}}
                await response.write(json.dumps(gone).encode() + b"\n")
                await response.write_eof()
                return response
            position = self.log_offset + bisect.bisect_right(self.log_rvs, since_rv)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        try:
            for event in initial:
                await response.write(json.dumps(event).encode() + b"\n")
            while True:
                if position < self.log_offset:
                    break  # fell behind the trimmed log; the client re-lists on reconnect
                while position < self.log_offset + len(self.log):
                    _, key, event = self.log[position - self.log_offset]
                    position += 1
                    if key == kind.key and wanted(event):
                        await response.write(json.dumps(event).encode() + b"\n")
                timeout = self.heartbeat_seconds
                if deadline is not None:
                    timeout = min(timeout, deadline - loop.time())
                    if timeout <= 0:
                        break
                async with self.changed:
                    if position >= self.log_offset + len(self.log):
                        try:
                            await asyncio.wait_for(self.changed.wait(), timeout)
                        except asyncio.TimeoutError:
                            if params.get("allowWatchBookmarks") == "true":
                                bookmark = {"type": "BOOKMARK", "object": {
                                    "apiVersion": kind.api_version, "kind": kind.kind,
                                    "metadata": {"resourceVersion": str(self.rv)}}}
                                await response.write(json.dumps(bookmark).encode() + b"\n")
                            else:  # probe the connection: a closed one raises below
                                await response.write(b"\n")
            await response.write_eof()
        except (ConnectionResetError, RuntimeError, asyncio.CancelledError):
            pass
        return response

    # --- test helpers (call on the emulator's loop) --------------------------------------------

    def kind_for(self, plural: str, group: str | None = None) -> Kind:
        for kind in self.kind_by_key.values():
            if kind.plural == plural and (group is None or kind.group == group):
                return kind
        raise KeyError(plural)

    def put(self, plural: str, obj: Mapping[str, Any], *, group: str | None = None) -> dict[str, Any]:
        """Create or replace an object directly (no HTTP), with server-set metadata and no admission:
        what the store holds, e.g. an object kept from before its CRD's schema was tightened."""
        kind = self.kind_for(plural, group)
        obj = copy.deepcopy(dict(obj))
        meta = obj.setdefault("metadata", {})
        key = (meta.get("namespace") if kind.namespaced else None, meta["name"])
        old = self._bucket(kind).get(key)
        meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", old["metadata"]["creationTimestamp"] if old else _now())
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(self._next_rv())
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        self._bucket(kind)[key] = obj
        self._emit(kind, "MODIFIED" if old else "ADDED", obj)
        return obj

    def list_objects(self, plural: str, namespace: str | None = None, *, group: str | None = None,
                     labels: str | None = None) -> list[dict[str, Any]]:
        kind = self.kind_for(plural, group)
        return copy.deepcopy(self._matching(kind, namespace, {"labelSelector": labels} if labels else {}))

    def get_object(self, plural: str, namespace: str | None, name: str, *, group: str | None = None
                   ) -> dict[str, Any] | None:
        kind = self.kind_for(plural, group)
        obj = self._bucket(kind).get((namespace if kind.namespaced else None, name))
        return copy.deepcopy(obj) if obj is not None else None


def operator_calls(calls: Iterable[Call], agents: tuple[str, ...] = ("kopf", "OpenAPI-Generator")
                   ) -> set[tuple[str, str, str]]:
    """(verb, group, resource) of the calls the operator made (kopf's and the kubernetes client's)."""
    return {(c.verb, c.group, c.resource) for c in calls if c.agent.startswith(agents)}
