"""A stand-in for the Job controller and the kubelet, for tests against the API emulator.

It watches Jobs through the emulator's HTTP API, runs each pod's container command as a local
process with the pod's env (secretKeyRef resolved from the emulator's Secrets, and
JOB_COMPLETION_INDEX per index for Indexed Jobs), and writes the Job's status through the
`/status` subresource the way the Job controller does: startTime, active, succeeded, failed,
completedIndexes / failedIndexes, then the terminal conditions (SuccessCriteriaMet + Complete, or
FailureTarget + Failed with BackoffLimitExceeded / FailedIndexes / PodFailurePolicy).

Honoured: completions, parallelism, completionMode Indexed, backoffLimit, backoffLimitPerIndex,
podFailurePolicy rules on exit codes (FailJob, FailIndex, Ignore, Count). Not: activeDeadlineSeconds,
suspend, ttlSecondsAfterFinished, pod objects.

`executor` replaces running the command (the load test writes shard results without starting
TensorFlow); `fail_first` makes the first attempt of chosen (job-name, index) pods exit 1.
A deleted Job's processes are killed.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

USER_AGENT = "susy-test-jobrunner/1.0"
Executor = Callable[[dict[str, Any], int, dict[str, str]], Awaitable[int]]


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


@dataclasses.dataclass
class PodRun:
    job: str
    namespace: str
    index: int | None
    attempt: int
    command: list[str]
    env: dict[str, str]
    exit_code: int | None = None
    log: str | None = None


class JobRunner:
    def __init__(self, url: str, workdir: Path, *, executor: Executor | None = None,
                 fail_first: set[tuple[str, int]] | None = None, python: str = sys.executable,
                 base_env: Mapping[str, str] | None = None, cwd: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.executor = executor
        self.fail_first = set(fail_first or ())
        self.python = python
        self.cwd = cwd
        self.base_env = dict(base_env if base_env is not None else {
            k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")})
        self.runs: list[PodRun] = []
        self.tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.seen: set[str] = set()  # Job uids already taken
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
        if meta["uid"] in self.seen or conditions & {"Complete", "Failed"}:
            return
        self.seen.add(meta["uid"])
        self.tasks[key] = asyncio.get_running_loop().create_task(self._run_job(job))

    # --- one Job --------------------------------------------------------------------------------

    async def _patch_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        assert self.session is not None
        meta = job["metadata"]
        url = f"{self.url}/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}/status"
        async with self.session.patch(url, data=json.dumps({"status": status}),
                                      headers={"Content-Type": "application/merge-patch+json"}) as resp:
            await resp.read()

    async def _run_job(self, job: dict[str, Any]) -> None:
        spec = job["spec"]
        indexed = spec.get("completionMode") == "Indexed"
        completions = int(spec.get("completions") or 1)
        parallelism = int(spec.get("parallelism") or 1)
        per_index = spec.get("backoffLimitPerIndex")
        backoff_limit = int(spec.get("backoffLimit", 6))
        rules = (spec.get("podFailurePolicy") or {}).get("rules") or []
        state = {"active": 0, "succeeded": 0, "failed": 0, "startTime": _now()}
        completed: set[int] = set()
        failed_indexes: set[int] = set()
        job_failure: dict[str, str] = {}
        lock = asyncio.Lock()
        semaphore = asyncio.Semaphore(parallelism)

        def current() -> dict[str, Any]:
            status: dict[str, Any] = dict(state)
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

        await publish()
        await asyncio.gather(*(run_index(i) for i in range(completions)))
        now = _now()
        if failed_indexes and not job_failure:
            job_failure = {"reason": "FailedIndexes", "message": "Job has failed indexes"}
        if job_failure:
            conditions = [
                {"type": "FailureTarget", "status": "True", **job_failure, "lastTransitionTime": now},
                {"type": "Failed", "status": "True", **job_failure, "lastTransitionTime": now},
            ]
            await self._patch_status(job, {**current(), "active": 0, "conditions": conditions})
        else:
            conditions = [
                {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                 "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": now},
            ]
            await self._patch_status(job, {**current(), "active": 0, "completionTime": now, "conditions": conditions})

    # --- one pod --------------------------------------------------------------------------------

    async def _secret_value(self, namespace: str, name: str, key: str) -> str:
        assert self.session is not None
        async with self.session.get(f"{self.url}/api/v1/namespaces/{namespace}/secrets/{name}") as resp:
            if resp.status != 200:
                raise RuntimeError(f"Secret {namespace}/{name}: HTTP {resp.status}")
            secret = await resp.json()
        if key in (secret.get("stringData") or {}):
            return secret["stringData"][key]
        return base64.b64decode(secret["data"][key]).decode()

    async def pod_env(self, job: dict[str, Any], index: int | None) -> dict[str, str]:
        container = job["spec"]["template"]["spec"]["containers"][0]
        namespace = job["metadata"]["namespace"]
        env = dict(self.base_env)
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = item["value"]
            elif "secretKeyRef" in (item.get("valueFrom") or {}):
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = await self._secret_value(namespace, ref["name"], ref["key"])
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        # The pod's HOME=/tmp is shared between tests here: give each pod its own.
        env["HOME"] = str(self.workdir / "home")
        env["MPLCONFIGDIR"] = str(self.workdir / "home" / "matplotlib")
        return env

    async def _run_pod(self, job: dict[str, Any], index: int | None, attempt: int) -> int:
        meta = job["metadata"]
        container = job["spec"]["template"]["spec"]["containers"][0]
        command = list(container.get("command") or []) + list(container.get("args") or [])
        if command and command[0] == "python":
            command[0] = self.python
        env = await self.pod_env(job, index)
        run = PodRun(meta["name"], meta["namespace"], index, attempt, command, env)
        self.runs.append(run)
        if (meta["name"], index if index is not None else 0) in self.fail_first and attempt == 0:
            run.exit_code = 1  # the pod "crashed" before doing anything (an OOM kill, a lost node)
            return 1
        if self.executor is not None:
            run.exit_code = await self.executor(job, index if index is not None else 0, env)
            return run.exit_code
        log = self.workdir / f"{meta['namespace']}.{meta['name']}.{index if index is not None else 0}.{attempt}.log"
        run.log = str(log)
        (self.workdir / "home").mkdir(exist_ok=True)
        with open(log, "wb") as out:
            process = await asyncio.create_subprocess_exec(*command, env=env, stdout=out, stderr=out, cwd=self.cwd)
            try:
                run.exit_code = await process.wait()
            except asyncio.CancelledError:
                process.kill()
                await process.wait()
                raise
        return run.exit_code
