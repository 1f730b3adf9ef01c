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
- pod logs (`pods/NAME/log`, `follow=true` streamed until the pod has ended), read from
  `log_source` (the Job runner's log files), and RBAC refusals for chosen users: a bearer token in
  `denied` maps to the (verb, group, resource) it may not call, answered 403 Forbidden with the
  API server's message (kubernetes staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/
  errors.go, forbiddenMessage);
- kmock keeps every request and re-scans the list on each request (a GET went from 3 ms to 190 ms
  after 4,000 requests): we keep the last `history_limit` and record what tests need in `calls`.

The object handling itself is `ApiStore` (support/apistore.py: pure, tested without HTTP);
this module is the kmock adapter: it routes requests to the store, renders its refusals as Status
bodies, streams watches and records each call as RBAC sees it. Everything runs on the emulator's
event loop, which `Cluster` (harness.py) runs in a thread.
"""
from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp.web
import attrs

import kmock
from kmock._internal import enums, rendering

from support.apistore import CORE_KINDS, ApiError, ApiStore, Call, Kind, operator_calls

__all__ = ["Kind", "SusyEmulator", "operator_calls"]  # harness.py and the RBAC tests import these here

NAMESPACES_PATH = re.compile(r"^/api/v1/namespaces/?(?P<name>[^/]+)?/?$")


# slots=False: the state below lives in the instance __dict__ (kmock's classes are slotted).
@attrs.define(kw_only=True, slots=False)
class SusyEmulator(kmock.KubernetesEmulator):
    """See the module docstring. `kinds` are served in addition to CORE_KINDS."""

    kinds: tuple[Kind, ...] = ()
    history_limit: int = 50
    heartbeat_seconds: float = 5.0

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.calls: list[Call] = []
        self._changed: asyncio.Condition | None = None
        # (namespace, pod) -> the pod's log so far, or None when it has none (yet).
        self.log_source: Callable[[str, str], str | None] = lambda namespace, pod: None
        # bearer token -> (user name, the (verb, group, resource) it may not call).
        self.denied: dict[str, tuple[str, set[tuple[str, str, str]]]] = {}
        self.store = ApiStore((*CORE_KINDS, *self.kinds),
                              clock=lambda: asyncio.get_running_loop().time(), on_change=self._wake_watches)
        for kind in self.store.kind_by_key.values():
            verbs = {"get", "list", "watch", "create", "patch", "delete"} | ({"update"} if kind.schema else set())
            self.resources[f"{kind.group}/{kind.version}/{kind.plural}" if kind.group
                           else f"{kind.version}/{kind.plural}"] = kmock.ResourceInfo(
                kind=kind.kind, singular=kind.kind.lower(), namespaced=kind.namespaced, verbs=verbs,
                shortnames=set(kind.shortnames), subresources={"status"} if kind.status_subresource else set())

    # The store's records and its log's length, as the tests read and set them.
    created = property(lambda self: self.store.created)
    create_times = property(lambda self: self.store.create_times)
    log_limit = property(lambda self: self.store.log_limit,
                         lambda self, limit: setattr(self.store, "log_limit", limit))

    def put(self, plural: str, obj: Mapping[str, Any], *, group: str | None = None) -> dict[str, Any]:
        return self.store.put(plural, obj, group=group)

    def list_objects(self, plural: str, namespace: str | None = None, *, group: str | None = None,
                     labels: str | None = None) -> list[dict[str, Any]]:
        return self.store.list_objects(plural, namespace, group=group, labels=labels)

    def get_object(self, plural: str, namespace: str | None, name: str, *, group: str | None = None
                   ) -> dict[str, Any] | None:
        return self.store.get_object(plural, namespace, name, group=group)

    def kind_for(self, plural: str, group: str | None = None) -> Kind:
        return self.store.kind_for(plural, group)

    # --- plumbing -------------------------------------------------------------------------------

    @property
    def changed(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def _wake_watches(self) -> None:
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

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
        items = [{"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": ns, "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, ns)), "resourceVersion": "1"},
                  "status": {"phase": "Active"}} for ns in self.store.namespaces()]
        self._record("get" if name else "list", "", "namespaces", None, name, 200, raw_request)
        if name is None:
            return aiohttp.web.json_response({"apiVersion": "v1", "kind": "NamespaceList",
                                              "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})
        for item in items:
            if item["metadata"]["name"] == name:
                return aiohttp.web.json_response(item)
        return self._refusal(ApiError(404, "NotFound", f'namespaces "{name}" not found'))

    def _record(self, verb: str, group: str, resource: str, namespace: str | None, name: str | None,
                code: int, raw: Any) -> None:
        agent = raw.headers.get("User-Agent", "") if raw is not None else ""
        self.calls.append(Call(verb, group, resource, namespace, name, code, agent))

    @staticmethod
    def _refusal(error: ApiError) -> aiohttp.web.Response:
        return aiohttp.web.json_response(error.status, status=error.code)

    # --- dispatch -------------------------------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or res.plural is None:
            return await super()._handle(request)  # discovery: kmock's scaffold
        kind = self.store.kind_by_key.get((res.group, res.version, res.plural))
        raw = request._raw_request
        resource = f"{res.plural}/{request.subresource}" if request.subresource else res.plural
        forbidden = self._forbidden(request, resource)
        if forbidden is not None:
            verb, error = forbidden
            self._record(verb, res.group or "", resource, request.namespace, request.name, 403, raw)
            return self._refusal(error)
        if kind is not None and kind.plural == "pods" and request.subresource == "log":
            self._record("get", "", resource, request.namespace, request.name, 200, raw)
            return await self._log(request)
        if kind is not None and request.action == enums.action.WATCH:
            self._record("watch", kind.group, resource, request.namespace, request.name, 200, raw)
            return await self._watch(kind, request)
        verb, code, body = self._dispatch(kind, resource, request)
        self._record(verb, kind.group if kind else res.group or "", resource, request.namespace, request.name,
                     code, raw)
        return aiohttp.web.json_response(body, status=code)

    def _forbidden(self, request: rendering.Request, resource: str) -> tuple[str, ApiError] | None:
        """(verb, the 403) when the request's user may not make it (`denied`), else None."""
        token = (request.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        if token not in self.denied:
            return None
        user, rules = self.denied[token]
        res = request.resource
        assert res is not None
        verb = "watch" if request.action == enums.action.WATCH else {
            enums.action.LIST: "list", enums.action.FETCH: "get", enums.action.CREATE: "create",
            enums.action.UPDATE: "patch", enums.action.DELETE: "delete"}.get(request.action, "get")
        if (verb, res.group or "", resource) not in rules:
            return None
        plural, _, sub = resource.partition("/")
        what = f'{plural} "{request.name}"' if request.name else plural
        where = f' in the namespace "{request.namespace}"' if request.namespace else " at the cluster scope"
        message = (f'{what} is forbidden: User "{user}" cannot {verb} resource "{resource}" '
                   f'in API group "{res.group or ""}"{where}')
        return verb, ApiError(403, "Forbidden", message, {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": "Forbidden", "details": {"name": request.name, "group": res.group or "", "kind": plural},
            "code": 403})

    async def _log(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """A pod's log as text; with follow=true, streamed until the pod has ended."""
        namespace, name = request.namespace or "", request.name or ""
        if self.store.get_object("pods", namespace, name) is None:
            return self._refusal(ApiError(404, "NotFound", f'pods "{name}" not found'))
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request._raw_request)
        sent = 0
        while True:
            text = self.log_source(namespace, name) or ""
            if len(text) > sent:
                await response.write(text[sent:].encode())
                sent = len(text)
            pod = self.store.get_object("pods", namespace, name)
            ended = pod is None or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            if request.params.get("follow") != "true" or ended:
                if ended and len(self.log_source(namespace, name) or "") > sent:
                    continue  # the last lines written as the pod ended
                break
            await asyncio.sleep(0.1)
        await response.write_eof()
        return response

    def _dispatch(self, kind: Kind | None, resource: str, request: rendering.Request
                  ) -> tuple[str, int, dict[str, Any]]:
        """(the verb as RBAC names it, the HTTP status, the body) of one non-watch request."""
        method, store, ns, name = request.method, self.store, request.namespace, request.name
        if kind is None:
            error = ApiError(404, "NotFound", f"the server could not find the requested resource {resource}")
            return method.value.lower(), error.code, error.status
        action = request.action
        verb = {enums.action.LIST: "list", enums.action.FETCH: "get", enums.action.CREATE: "create",
                enums.action.UPDATE: "patch", enums.action.DELETE: "delete"}.get(action)
        if verb is None:
            verb = {enums.method.PUT: "update", enums.method.DELETE: "deletecollection"}.get(method,
                                                                                              method.value.lower())
        try:
            if action == enums.action.LIST:
                return verb, 200, store.list(kind, ns, request.params)
            if action == enums.action.FETCH:
                return verb, 200, store.get(kind, ns, name, request.subresource)
            if action == enums.action.CREATE:
                return verb, 201, store.create(kind, ns, request.data)
            if action == enums.action.UPDATE:
                content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
                return verb, 200, store.patch(kind, ns, name, request.data, content_type, request.subresource)
            if action == enums.action.DELETE:
                options = request.data if isinstance(request.data, Mapping) else {}
                policy = options.get("propagationPolicy") or request.params.get("propagationPolicy") or "Background"
                return verb, 200, store.delete(kind, ns, name, policy)
            if method == enums.method.PUT and name and kind.schema is not None:
                return verb, 200, store.replace(kind, ns, name, request.data, request.subresource)
            if method == enums.method.PUT:
                raise ApiError(405, "MethodNotAllowed", "PUT is not supported by the emulator")
            if method == enums.method.DELETE:
                raise ApiError(405, "MethodNotAllowed", "deletecollection is not supported")
            raise ApiError(405, "MethodNotAllowed", f"{method.value} is not supported")
        except ApiError as error:
            return verb, error.code, error.status

    async def _watch(self, kind: Kind, request: rendering.Request) -> aiohttp.web.StreamResponse:
        params, namespace, name = request.params, request.namespace, request.name
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        try:
            initial, position = self.store.watch_start(kind, namespace, name, params)
        except ApiError as error:
            await response.write(json.dumps({"type": "ERROR", "object": error.status}).encode() + b"\n")
            await response.write_eof()
            return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        next_position: int | None = position
        try:
            for event in initial:
                await response.write(json.dumps(event).encode() + b"\n")
            while True:
                events, next_position = self.store.events_from(position, kind, namespace, name, params)
                if next_position is None:
                    break  # fell behind the trimmed log; the client re-lists on reconnect
                for event in events:
                    await response.write(json.dumps(event).encode() + b"\n")
                position = next_position
                timeout = self.heartbeat_seconds
                if deadline is not None:
                    timeout = min(timeout, deadline - loop.time())
                    if timeout <= 0:
                        break
                async with self.changed:
                    if position >= self.store.log_offset + len(self.store.log):
                        try:
                            await asyncio.wait_for(self.changed.wait(), timeout)
                        except asyncio.TimeoutError:
                            if params.get("allowWatchBookmarks") == "true":
                                bookmark = {"type": "BOOKMARK", "object": {
                                    "apiVersion": kind.api_version, "kind": kind.kind,
                                    "metadata": {"resourceVersion": str(self.store.rv)}}}
                                await response.write(json.dumps(bookmark).encode() + b"\n")
                            else:  # probe the connection: a closed one raises below
                                await response.write(b"\n")
            await response.write_eof()
        except (ConnectionResetError, RuntimeError, asyncio.CancelledError):
            pass
        return response
