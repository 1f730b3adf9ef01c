"""Run the API emulator (and the test Job runner) in a background thread, and the real operator
as a subprocess (`python -m susy_operator`, so it can be killed with SIGKILL mid-run).

Tests stay synchronous: they talk to the emulator over HTTP like kubectl would (`Cluster.create`,
`.get`, `.delete`) and read its state through `Cluster.call` on the emulator's loop.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import kmock

from susy_operator import crd
from support.crdschema import load_crds
from support.emulator import Kind, SusyEmulator
from support.jobrunner import JobRunner

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
SAMPLE = REPO / "data" / "susy-sample.csv.gz"

# Served as their CRDs describe them: schema, defaults, pruning and CEL rules (support/crdschema.py).
SUSY_KINDS = tuple(Kind.from_crd(doc) for doc in load_crds())
# Kueue's Workload (kubernetes-sigs/kueue apis/kueue/v1beta1), without its schema: the tests act as
# Kueue, creating the Workload of a queued Job and reading the spec.active the operator sets.
KUEUE_WORKLOAD = Kind("kueue.x-k8s.io", "v1beta1", "workloads", "Workload", status_subresource=True)
PLURAL_PATHS = {
    crd.TRAINING_PLURAL: f"/apis/{crd.GROUP}/{crd.VERSION}",
    crd.EVALUATION_PLURAL: f"/apis/{crd.GROUP}/{crd.VERSION}",
    crd.CONTINUAL_PLURAL: f"/apis/{crd.GROUP}/{crd.VERSION}",
    "jobs": "/apis/batch/v1",
    "secrets": "/api/v1",
    "persistentvolumeclaims": "/api/v1",
    "events": "/api/v1",
    "pods": "/api/v1",
    "workloads": f"/apis/{KUEUE_WORKLOAD.group}/{KUEUE_WORKLOAD.version}",
}


class Cluster:
    """The emulator on a loopback port, plus an optional JobRunner on the same event loop."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="emulator", daemon=True)
        self.emulator: SusyEmulator | None = None
        self.url = ""
        self.runner: JobRunner | None = None
        self._runner_task: asyncio.Future[Any] | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "Cluster":
        self.thread.start()

        async def enter() -> None:
            self.emulator = SusyEmulator(kinds=(*SUSY_KINDS, KUEUE_WORKLOAD))
            await self.emulator.__aenter__()
            self._server = kmock.Server(self.emulator)
            await self._server.__aenter__()
            self.url = str(self._server.url).rstrip("/")

        asyncio.run_coroutine_threadsafe(enter(), self.loop).result(10)
        return self

    def start_runner(self, **kwargs: Any) -> JobRunner:
        self.runner = JobRunner(self.url, self.workdir / "pods", cwd=str(REPO), **kwargs)
        assert self.emulator is not None
        self.emulator.log_source = self.runner.pod_log
        self._runner_task = asyncio.run_coroutine_threadsafe(self.runner.run(), self.loop)
        return self.runner

    def stop(self) -> None:
        async def leave() -> None:
            if self._runner_task is not None:
                self._runner_task.cancel()
            await self._server.__aexit__(None, None, None)
            await self.emulator.__aexit__(None, None, None)  # type: ignore[union-attr]

        try:
            asyncio.run_coroutine_threadsafe(leave(), self.loop).result(10)
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn on the emulator's loop (its state is only touched there)."""
        async def run() -> T:
            return fn(*args, **kwargs)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    # --- kubectl-like HTTP ----------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "User-Agent": "susy-test-kubectl/1.0"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.read().decode()) from None

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        plural = {crd.TRAINING_KIND: crd.TRAINING_PLURAL, crd.EVALUATION_KIND: crd.EVALUATION_PLURAL,
                  crd.CONTINUAL_KIND: crd.CONTINUAL_PLURAL, "Secret": "secrets",
                  "PersistentVolumeClaim": "persistentvolumeclaims", "Job": "jobs", "Workload": "workloads"}[obj["kind"]]
        ns = obj["metadata"].get("namespace", "default")
        return self.request("POST", f"{PLURAL_PATHS[plural]}/namespaces/{ns}/{plural}", obj)

    def patch(self, plural: str, namespace: str, name: str, body: dict[str, Any]) -> Any:
        """`kubectl patch --type merge`."""
        return self.request("PATCH", f"{PLURAL_PATHS[plural]}/namespaces/{namespace}/{plural}/{name}", body,
                            "application/merge-patch+json")

    def delete(self, plural: str, namespace: str, name: str, policy: str | None = None) -> Any:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": policy} if policy else None
        return self.request("DELETE", f"{PLURAL_PATHS[plural]}/namespaces/{namespace}/{plural}/{name}", body)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        assert self.emulator is not None
        return self.call(self.emulator.get_object, plural, namespace, name)

    def list(self, plural: str, namespace: str | None = None, labels: str | None = None) -> list[dict[str, Any]]:
        assert self.emulator is not None
        return self.call(self.emulator.list_objects, plural, namespace, labels=labels)

    def create_store_secret(self, namespace: str, name: str, uri: str) -> None:
        import base64
        self.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                     "type": "Opaque", "data": {"uri": base64.b64encode(uri.encode()).decode()}})

    # --- waiting ----------------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def wait_phase(self, plural: str, namespace: str, name: str, phases: set[str], timeout: float) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.get(plural, namespace, name)
            return obj if obj and (obj.get("status") or {}).get("phase") in phases else None
        try:
            return self.wait_for(check, timeout, f"{plural}/{name} in {sorted(phases)}")
        except AssertionError:
            obj = self.get(plural, namespace, name)
            raise AssertionError(f"{plural}/{name} not in {sorted(phases)} after {timeout}s; "
                                 f"status={json.dumps((obj or {}).get('status'), indent=1)}") from None

    def job_creations(self) -> dict[tuple[str | None, str], int]:
        assert self.emulator is not None
        return self.call(lambda: {(ns, n): c for (p, ns, n), c in self.emulator.created.items() if p == "jobs"})

    def latencies(self, pairs: list[tuple[str, str, str]]) -> list[float]:
        """Seconds from a CR's creation to its Job's creation, for (namespace, cr plural:name, job name)."""
        assert self.emulator is not None
        times = self.call(lambda: dict(self.emulator.create_times))
        result = []
        for ns, cr, job in pairs:
            plural, name = cr.split(":")
            result.append(times[("jobs", ns, job)] - times[(plural, ns, name)])
        return result

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [e for e in self.list("events", namespace) if e.get("involvedObject", {}).get("name") == name]


class ApiError(Exception):
    def __init__(self, code: int, body: str) -> None:
        super().__init__(f"HTTP {code}: {body[:500]}")
        self.code = code
        self.body = body


class OperatorProcess:
    """`python -m susy_operator` in a subprocess, logged in to the emulator via tests/support/login.py."""

    def __init__(self, url: str, workdir: Path, env: dict[str, str], args: tuple[str, ...] = ("--standalone", "-A")):
        self.url = url
        self.workdir = workdir
        self.env = env
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> "OperatorProcess":
        self.starts += 1
        log = open(self.workdir / f"operator.{self.starts}.log", "wb")
        env = {
            **{k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")},
            # This checkout's packages first: a venv shared by several worktrees installs one of
            # them in editable mode, which would otherwise be the operator under test.
            "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO / "operator"), str(REPO / "images" / "pipeline")]),
            "SUSY_TEST_API_SERVER": self.url,
            "KUBECONFIG": str(self.workdir / "no-kubeconfig"),  # never a real cluster
            "SUSY_POLL_SECONDS": "0.25",
            # No /metrics server unless a test asks (several operators run at once in some tests).
            "SUSY_METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "support.login", *self.args, "--verbose"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies or the OOM killer strikes."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return "\n".join((self.workdir / f"operator.{i}.log").read_text(errors="replace")
                         for i in range(1, self.starts + 1))


def summarize(latencies: list[float]) -> str:
    ms = [x * 1000 for x in latencies]
    return (f"create-to-Job-visible latency over {len(ms)} CRs: median {statistics.median(ms):.1f} ms, "
            f"max {max(ms):.1f} ms")
