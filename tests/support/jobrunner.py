"""A stand-in for the Job controller and the kubelet, for tests against the API emulator.

It watches Jobs through the emulator's HTTP API and runs each pod, in one of two modes:
- process (the default): the container's command as a local process of this virtualenv, with the
  pod's env;
- container (`runtime=ContainerRuntime(...)`, tests/support/pods.py): a real container of the
  local Docker engine built from the pod spec: image, command, args, env, user and group,
  runAsNonRoot, read-only root, dropped capabilities, no privilege escalation, emptyDir volumes,
  CPU and memory limits; an OOM kill comes back as reason OOMKilled.
In both, env has secretKeyRef (from the emulator's Secrets) and fieldRef resolved, and
JOB_COMPLETION_INDEX per index for Indexed Jobs.

It writes the Job's status through the `/status` subresource the way the Job controller does:
startTime, active, succeeded, failed, completedIndexes / failedIndexes, then the terminal
conditions (SuccessCriteriaMet + Complete, or FailureTarget + Failed with BackoffLimitExceeded /
FailedIndexes / PodFailurePolicy / DeadlineExceeded). Each pod is also published as a Pod object
(the Job controller's labels and ownerReference; phase and containerStatuses as the kubelet
reports them, with the termination message it reads from the container's message file or, with
FallbackToLogsOnError, its log: `pods.termination_message`), so the operator can read why a pod
failed.

Honoured: completions, parallelism, completionMode Indexed, backoffLimit, backoffLimitPerIndex,
podFailurePolicy rules on exit codes (FailJob, FailIndex, Ignore, Count), activeDeadlineSeconds
(pods killed, DeadlineExceeded), the exponential back-off before a retry (`retry_delay_seconds`,
10 s on a cluster; 0 by default here), ttlSecondsAfterFinished (the Job is deleted that long after
it finished), and spec.suspend as the Job controller does it (kubernetes
pkg/controller/job/job_controller.go, KEP-2232 "suspend"): a Job created suspended starts no pod and
has a Suspended condition (reason JobSuspended); suspending a running one deletes its active pods
(not counted as failures) and keeps what succeeded; clearing suspend sets the condition False
(JobResumed), a new startTime, and runs what is left. A test that un-suspends a queued Job acts as
Kueue. Not: pod-level activeDeadlineSeconds.

`executor` replaces running the command (the load test writes shard results without starting
TensorFlow); it may append the pod's log lines to the file env["SUSY_TEST_POD_LOG"] names, and a
pod it declines (it returns None) runs its command as a process after all. `fail_first` makes the
first attempt of chosen (job-name, index) pods exit 1. `pod_log` serves each pod's log to the
emulator (`kubectl logs`).
A deleted Job's pods are killed.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from support.pods import ContainerRuntime, PodOutcome, PodStartError, termination_message

USER_AGENT = "susy-test-jobrunner/1.0"
Executor = Callable[[dict[str, Any], int, dict[str, str]], Awaitable[int | None]]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_indexes(indexes: set[int]) -> str:
    """Kubernetes' interval notation: {0,1,2,5} -> "0-2,5"."""
    parts, ordered = [], sorted(indexes)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


async def _secret_data(session: aiohttp.ClientSession, url: str, namespace: str,
                       name: str) -> dict[str, str] | None:
    async with session.get(f"{url}/api/v1/namespaces/{namespace}/secrets/{name}") as resp:
        secret = await resp.json() if resp.status == 200 else None
    if secret is None:
        return None
    return {**{k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()},
            **(secret.get("stringData") or {})}


async def resolve_env(session: aiohttp.ClientSession | None, url: str, namespace: str, pod_name: str,
                      items: list[dict[str, Any]], env_from: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """A container's env as the kubelet resolves it: envFrom secretRef first (every key that is a
    valid variable name), then the env list (values, secretKeyRef, fieldRef), which wins.

    A missing Secret or key raises PodStartError(CreateContainerConfigError), as on a node.
    """
    assert session is not None
    env: dict[str, str] = {}
    for source in env_from or []:
        if "secretRef" in source:
            name = source["secretRef"]["name"]
            data = await _secret_data(session, url, namespace, name)
            if data is None:
                if source["secretRef"].get("optional"):
                    continue
                raise PodStartError("CreateContainerConfigError", f'secret "{name}" not found')
            env.update({k: v for k, v in data.items() if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)})
    for item in items:
        source = item.get("valueFrom") or {}
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = await _secret_data(session, url, namespace, ref["name"])
            if data is None:
                raise PodStartError("CreateContainerConfigError", f'secret "{ref["name"]}" not found')
            if ref["key"] not in data:
                raise PodStartError("CreateContainerConfigError",
                                    f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}")
            env[item["name"]] = data[ref["key"]]
        elif "fieldRef" in source:
            env[item["name"]] = {"metadata.namespace": namespace, "metadata.name": pod_name}[
                source["fieldRef"]["fieldPath"]]
    return env


@dataclasses.dataclass
class PodRun:
    job: str
    namespace: str
    index: int | None
    attempt: int
    command: list[str]
    env: dict[str, str]
    pod: str = ""
    exit_code: int | None = None
    reason: str | None = None      # Completed, Error, OOMKilled; or why it never started
    log: str | None = None
    started: float | None = None   # loop time
    finished: float | None = None
    pid: int | None = None         # the local process (a test may SIGSTOP it: a hung pod)


class JobRunner:
    def __init__(self, url: str, workdir: Path, *, executor: Executor | None = None,
                 fail_first: set[tuple[str, int]] | None = None, python: str = sys.executable,
                 base_env: Mapping[str, str] | None = None, cwd: str | None = None,
                 runtime: ContainerRuntime | None = None, retry_delay_seconds: float = 0.0) -> None:
        self.url = url.rstrip("/")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.executor = executor
        self.fail_first = set(fail_first or ())
        self.python = python
        self.cwd = cwd
        self.runtime = runtime
        # The Job controller waits 10 s, 20 s, 40 s ... (capped at 6 min) before recreating a failed
        # pod; 0 (the default here) retries at once, which keeps the tests fast.
        self.retry_delay_seconds = retry_delay_seconds
        self.base_env = dict(base_env if base_env is not None else {
            k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")})
        self.runs: list[PodRun] = []
        self.tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.seen: set[str] = set()  # Job uids already taken
        self.ready: dict[tuple[str, str], int] = {}  # (namespace, Job) -> pods running (ready: no probes)
        self.finish_times: dict[tuple[str, str], float] = {}  # (namespace, Job) -> loop time of its end
        # Job uid -> what its pods achieved so far, kept across a suspension: succeeded, failed,
        # completed and failed indexes.
        self.progress: dict[str, dict[str, Any]] = {}
        self.suspended: set[str] = set()  # Job uids whose Suspended condition is True
        self.suspending: dict[str, asyncio.Task[None]] = {}  # Job uid -> its suspension, until resumed
        self.session: aiohttp.ClientSession | None = None

    # --- watching -------------------------------------------------------------------------------

    async def run(self) -> None:
        self.session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        try:
            rv: str | None = None
            while True:
                if rv is None:
                    async with self.session.get(f"{self.url}/apis/batch/v1/jobs") as resp:
                        listing = await resp.json()
                    rv = listing["metadata"]["resourceVersion"]
                    for job in listing["items"]:
                        self._consider("ADDED", job)
                params = {"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true"}
                async with self.session.get(f"{self.url}/apis/batch/v1/jobs", params=params,
                                            timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            rv = None
                            break
                        rv = event["object"]["metadata"].get("resourceVersion", rv)
                        if event["type"] != "BOOKMARK":
                            self._consider(event["type"], event["object"])
        finally:
            for task in self.tasks.values():
                task.cancel()
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            await self.session.close()

    def _consider(self, type_: str, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        key = (meta["namespace"], meta["name"])
        if type_ == "DELETED":
            task = self.tasks.pop(key, None)
            if task is not None:
                task.cancel()
            return
        conditions = {c["type"] for c in (job.get("status") or {}).get("conditions") or []
                      if c.get("status") == "True"}
        if conditions & {"Complete", "Failed"}:
            return
        loop = asyncio.get_running_loop()
        uid = meta["uid"]
        if job["spec"].get("suspend") is True:
            if uid not in self.suspended:
                self.suspended.add(uid)
                task = self.tasks.pop(key, None) if uid in self.seen else None
                self.seen.discard(uid)
                self.suspending[uid] = loop.create_task(self._suspend(job, task))
            return
        if uid in self.seen:
            return
        self.seen.add(uid)
        resumed = uid in self.suspended
        self.suspended.discard(uid)
        self.tasks[key] = loop.create_task(self._run_job(job, resumed=resumed))

    async def _suspend(self, job: dict[str, Any], task: asyncio.Task[None] | None) -> None:
        """The Job controller on spec.suspend: active pods deleted, condition Suspended True."""
        meta = job["metadata"]
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            for run in self.runs:
                if run.job == meta["name"] and run.namespace == meta["namespace"] and run.exit_code is None:
                    assert self.session is not None
                    async with self.session.delete(
                            f"{self.url}/api/v1/namespaces/{meta['namespace']}/pods/{run.pod}") as resp:
                        await resp.read()
        progress = self.progress.get(meta["uid"]) or {}
        await self._patch_status(job, {
            "active": 0, "ready": 0, "startTime": None,
            "succeeded": progress.get("succeeded", 0), "failed": progress.get("failed", 0),
            "conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended",
                            "message": "Job suspended", "lastTransitionTime": _now()}]})

    # --- one Job --------------------------------------------------------------------------------

    async def _patch_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        assert self.session is not None
        meta = job["metadata"]
        url = f"{self.url}/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}/status"
        async with self.session.patch(url, data=json.dumps({"status": status}),
                                      headers={"Content-Type": "application/merge-patch+json"}) as resp:
            await resp.read()

    async def _run_job(self, job: dict[str, Any], resumed: bool = False) -> None:
        spec = job["spec"]
        indexed = spec.get("completionMode") == "Indexed"
        completions = int(spec.get("completions") or 1)
        parallelism = int(spec.get("parallelism") or 1)
        per_index = spec.get("backoffLimitPerIndex")
        backoff_limit = int(spec.get("backoffLimit", 6))
        rules = (spec.get("podFailurePolicy") or {}).get("rules") or []
        progress = self.progress.setdefault(job["metadata"]["uid"], {
            "succeeded": 0, "failed": 0, "completed": set(), "failed_indexes": set()})
        state = {"active": 0, "succeeded": progress["succeeded"], "failed": progress["failed"], "startTime": _now()}
        key = (job["metadata"]["namespace"], job["metadata"]["name"])
        completed: set[int] = progress["completed"]
        failed_indexes: set[int] = progress["failed_indexes"]
        job_failure: dict[str, str] = {}
        lock = asyncio.Lock()
        semaphore = asyncio.Semaphore(parallelism)

        def current() -> dict[str, Any]:
            status: dict[str, Any] = {**state, "ready": self.ready.get(key, 0)}
            if indexed:
                status["completedIndexes"] = format_indexes(completed)
                if per_index is not None:
                    status["failedIndexes"] = format_indexes(failed_indexes)
            return status

        async def publish() -> None:
            await self._patch_status(job, current())

        def action_for(code: int) -> str:
            for rule in rules:
                on = rule.get("onExitCodes") or {}
                values = set(on.get("values") or [])
                if (on.get("operator") == "In") == (code in values):
                    return rule["action"]
            return "Count"

        async def run_index(index: int) -> None:
            attempt = 0
            while not job_failure:
                if attempt and self.retry_delay_seconds:
                    await asyncio.sleep(min(self.retry_delay_seconds * 2 ** (attempt - 1), 360))
                async with semaphore:
                    if job_failure:
                        return
                    async with lock:
                        state["active"] += 1
                        await publish()
                    code = await self._run_pod(job, index if indexed else None, attempt)
                    async with lock:
                        state["active"] -= 1
                        action = action_for(code) if code != 0 else "Succeeded"
                        if action == "Succeeded":
                            state["succeeded"] += 1
                            completed.add(index)
                        elif action != "Ignore":
                            state["failed"] += 1
                        progress["succeeded"], progress["failed"] = state["succeeded"], state["failed"]
                        await publish()
                if action == "Succeeded":
                    return
                if action == "FailJob":
                    job_failure.setdefault("reason", "PodFailurePolicy")
                    job_failure.setdefault("message", f"Container exited with code {code} (podFailurePolicy)")
                    return
                if action == "FailIndex":
                    failed_indexes.add(index)
                    return
                if action == "Count":
                    attempt += 1
                    if indexed and per_index is not None:
                        if attempt > int(per_index):
                            failed_indexes.add(index)
                            return
                    elif state["failed"] > backoff_limit:
                        job_failure.setdefault("reason", "BackoffLimitExceeded")
                        job_failure.setdefault("message", "Job has reached the specified backoff limit")
                        return
                else:  # Ignore: retry without counting
                    attempt += 1

        if resumed:
            suspension = self.suspending.pop(job["metadata"]["uid"], None)
            if suspension is not None:  # its pods gone and its status written before this run starts
                await suspension
            state.update(succeeded=progress["succeeded"], failed=progress["failed"])
            await self._patch_status(job, {**current(), "conditions": [
                {"type": "Suspended", "status": "False", "reason": "JobResumed", "message": "Job resumed",
                 "lastTransitionTime": _now()}]})
        else:
            await publish()
        deadline = spec.get("activeDeadlineSeconds")
        indexes = asyncio.gather(*(run_index(i) for i in range(completions) if i not in completed))
        # A deleted Job cancels this task and so the gather: mark its outcome read, not "never retrieved".
        indexes.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.wait_for(indexes, timeout=float(deadline) if deadline is not None else None)
        except asyncio.TimeoutError:
            # The Job controller kills the Job's pods and fails it (reason DeadlineExceeded).
            job_failure.update(reason="DeadlineExceeded", message="Job was active longer than specified deadline")
        now = _now()
        resumed_condition = [{"type": "Suspended", "status": "False", "reason": "JobResumed",
                              "message": "Job resumed", "lastTransitionTime": now}] if resumed else []
        self.finish_times[(job["metadata"]["namespace"], job["metadata"]["name"])] = asyncio.get_running_loop().time()
        if failed_indexes and not job_failure:
            job_failure = {"reason": "FailedIndexes", "message": "Job has failed indexes"}
        if job_failure:
            conditions = [
                {"type": "FailureTarget", "status": "True", **job_failure, "lastTransitionTime": now},
                {"type": "Failed", "status": "True", **job_failure, "lastTransitionTime": now},
            ]
            await self._patch_status(job, {**current(), "active": 0, "conditions": conditions + resumed_condition})
        else:
            conditions = [
                {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                 "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": now},
            ]
            await self._patch_status(job, {**current(), "active": 0, "completionTime": now,
                                           "conditions": conditions + resumed_condition})
        ttl = spec.get("ttlSecondsAfterFinished")
        if ttl is not None:  # the TTL-after-finished controller: the Job (and its pods) go
            await asyncio.sleep(float(ttl))
            meta = job["metadata"]
            assert self.session is not None
            async with self.session.delete(
                    f"{self.url}/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}",
                    data=json.dumps({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}),
                    headers={"Content-Type": "application/json"}) as resp:
                await resp.read()

    # --- one pod --------------------------------------------------------------------------------

    async def pod_env(self, job: dict[str, Any], index: int | None, pod_name: str = "") -> dict[str, str]:
        container = job["spec"]["template"]["spec"]["containers"][0]
        namespace = job["metadata"]["namespace"]
        # A process inherits a few host variables (PATH, ...); a container only what its image and
        # pod spec say.
        env = dict(self.base_env) if self.runtime is None else {}
        env.update(await resolve_env(self.session, self.url, namespace, pod_name, container.get("env") or [],
                                     container.get("envFrom")))
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        if self.runtime is None:
            # The pod's HOME=/tmp is shared between tests here: give each pod its own.
            env["HOME"] = str(self.workdir / "home")
            env["MPLCONFIGDIR"] = str(self.workdir / "home" / "matplotlib")
            # In the image `python` on PATH is the pipeline's Python; here it is this venv's, also
            # for a command that a shell resolves (`sh -c "python -m ..."`), not only command[0].
            bin_dir = str(Path(self.python).parent)
            env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH") or os.defpath])
        return env

    def _pod_object(self, job: dict[str, Any], name: str, index: int | None) -> dict[str, Any]:
        """The pod as the Job controller creates it: the template, its labels and a controller ref."""
        meta = job["metadata"]
        template = job["spec"]["template"]
        labels = {**(template.get("metadata") or {}).get("labels", {}),
                  "batch.kubernetes.io/controller-uid": meta["uid"], "controller-uid": meta["uid"],
                  "batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"]}
        if index is not None:
            labels["batch.kubernetes.io/job-completion-index"] = str(index)
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                             "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                                  "uid": meta["uid"], "controller": True,
                                                  "blockOwnerDeletion": True}]},
                "spec": template["spec"]}

    async def _pod_request(self, method: str, namespace: str, name: str | None, body: dict[str, Any]) -> None:
        assert self.session is not None
        url = f"{self.url}/api/v1/namespaces/{namespace}/pods"
        if name is not None:
            url += f"/{name}/status"
        headers = {"Content-Type": "application/merge-patch+json" if method == "PATCH" else "application/json"}
        async with self.session.request(method, url, data=json.dumps(body), headers=headers) as resp:
            await resp.read()

    async def _pod_status(self, namespace: str, name: str, container: str, *, phase: str,
                          state: dict[str, Any]) -> None:
        status = {"phase": phase, "containerStatuses": [{
            "name": container, "ready": phase == "Running", "restartCount": 0, "state": state}]}
        await self._pod_request("PATCH", namespace, name, {"status": status})

    async def _run_pod(self, job: dict[str, Any], index: int | None, attempt: int) -> int:
        meta = job["metadata"]
        container = job["spec"]["template"]["spec"]["containers"][0]
        command = list(container.get("command") or []) + list(container.get("args") or [])
        if self.runtime is None and command and command[0] == "python":
            command[0] = self.python
        pod_name = f"{meta['name']}-{index}-{attempt}" if index is not None else f"{meta['name']}-{attempt}"
        run = PodRun(meta["name"], meta["namespace"], index, attempt, command, {}, pod=pod_name)
        self.runs.append(run)
        await self._pod_request("POST", meta["namespace"], None, self._pod_object(job, pod_name, index))
        loop = asyncio.get_running_loop()
        run.started = loop.time()
        try:
            run.env = await self.pod_env(job, index, pod_name)  # a missing Secret: the pod stays Pending
            outcome = await self._pod_outcome(job, run, index, attempt)
        except PodStartError as err:
            # The kubelet keeps such a pod Pending, retrying: only the Job's deadline (or someone
            # deleting the Job) ends it. The operator is expected to notice and say why.
            run.reason = err.reason
            await self._pod_status(meta["namespace"], pod_name, container["name"], phase="Pending",
                                   state={"waiting": {"reason": err.reason, "message": err.message}})
            await asyncio.Event().wait()
            raise AssertionError("unreachable")
        finally:
            run.finished = loop.time()
        run.exit_code, run.reason = outcome.exit_code, outcome.reason
        terminated = {"exitCode": outcome.exit_code, "reason": outcome.reason}
        if outcome.message:
            terminated["message"] = outcome.message
        await self._pod_status(meta["namespace"], pod_name, container["name"],
                               phase="Succeeded" if outcome.exit_code == 0 else "Failed",
                               state={"terminated": terminated})
        return outcome.exit_code

    async def _pod_outcome(self, job: dict[str, Any], run: PodRun, index: int | None, attempt: int) -> PodOutcome:
        meta = job["metadata"]
        if (meta["name"], index if index is not None else 0) in self.fail_first and attempt == 0:
            return PodOutcome(1, "Error")  # the pod "crashed" before doing anything (a lost node)
        pod_spec = job["spec"]["template"]["spec"]
        if self.runtime is not None:
            await asyncio.to_thread(self.runtime.check_image, pod_spec["containers"][0]["image"])
        await self._pod_status(meta["namespace"], run.pod, pod_spec["containers"][0]["name"],
                               phase="Running", state={"running": {"startedAt": _now()}})
        key = (meta["namespace"], meta["name"])
        self.ready[key] = self.ready.get(key, 0) + 1
        await self._patch_status(job, {"ready": self.ready[key]})
        try:
            return await self._run_ready_pod(job, run, index)
        finally:
            self.ready[key] -= 1

    def pod_log(self, namespace: str, pod: str) -> str | None:
        """What pod `pod` has written so far (None: no such pod ran here, or it wrote nothing)."""
        for run in self.runs:
            if run.pod == pod and run.namespace == namespace and run.log and Path(run.log).is_file():
                return Path(run.log).read_text(errors="replace")
        return None

    async def _run_ready_pod(self, job: dict[str, Any], run: PodRun, index: int | None) -> PodOutcome:
        meta = job["metadata"]
        log = self.workdir / f"{run.pod}.{meta['namespace']}.log"
        run.log = str(log)
        # The container's terminationMessagePath, as a file of its own for this pod: a container
        # gets it mounted there; a local process writes it where SUSY_TERMINATION_LOG names it.
        message_file = self.workdir / f"{run.pod}.{meta['namespace']}.termination-log"
        message_file.unlink(missing_ok=True)
        if self.executor is not None:
            code = await self.executor(job, index if index is not None else 0,
                                       {**run.env, "SUSY_TEST_POD_LOG": str(log)})
            if code is not None:
                return PodOutcome(code, "Completed" if code == 0 else "Error")
        if self.runtime is not None:
            return await self.runtime.run(run.pod, job["spec"]["template"]["spec"], run.env, log, message_file,
                                          labels={"susy.test/job": meta["name"],
                                                  "susy.test/index": str(index if index is not None else 0)})
        (self.workdir / "home").mkdir(exist_ok=True)
        env = {**run.env, "SUSY_TERMINATION_LOG": str(message_file)}
        with open(log, "wb") as out:
            process = await asyncio.create_subprocess_exec(*run.command, env=env, stdout=out, stderr=out,
                                                           cwd=self.cwd)
            run.pid = process.pid
            try:
                code = await process.wait()
            except asyncio.CancelledError:
                process.kill()
                await process.wait()
                raise
        container = job["spec"]["template"]["spec"]["containers"][0]
        return PodOutcome(code, "Completed" if code == 0 else "Error",
                          termination_message(container, message_file, log, code))
