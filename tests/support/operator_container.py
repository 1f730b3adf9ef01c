"""The operator as the chart deploys it, run as a container of the local Docker engine.

The Deployment comes from `helm template charts/susy-operator` (so the container gets the chart's
command, arguments, env, user, read-only root, dropped capabilities, /tmp emptyDir and limits),
and `pods.docker_run_args` turns its pod template into `docker run`. What a cluster would add
and cannot here: the service account's token and the in-cluster address, which a kubeconfig
pointing at the API emulator (mounted read-only, named by KUBECONFIG) stands in for.
"""
from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from support.harness import REPO, Cluster
from support.pods import LABEL, docker_run_args, volume_dirs

CHART = REPO / "charts" / "susy-operator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_deployment(helm: str, namespace: str, values: dict[str, str]) -> dict[str, Any]:
    """The operator Deployment that `helm template` renders with `--set` values."""
    args = [helm, "template", "susy-operator", str(CHART), "--namespace", namespace]
    for key, value in values.items():
        args += ["--set-string", f"{key}={value}"]
    rendered = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    for doc in yaml.safe_load_all(rendered):
        if doc and doc.get("kind") == "Deployment":
            return doc
    raise AssertionError("helm template rendered no Deployment")


def kubeconfig(server: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "operator", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "operator"}}],
    })


class OperatorContainer:
    """start / kill (SIGKILL, as a lost node) / stop / log, like harness.OperatorProcess."""

    def __init__(self, cluster: Cluster, workdir: Path, deployment: dict[str, Any], *,
                 extra_mounts: list[tuple[str, str]], run_id: str, docker: str = "docker") -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.deployment = deployment
        self.extra_mounts = extra_mounts
        self.run_id = run_id
        self.docker = docker
        self.starts = 0
        self.name = ""
        self.logs: list[str] = []

    def _env(self, pod_spec: dict[str, Any], namespace: str, pod_name: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in pod_spec["containers"][0].get("env") or []:
            source = item.get("valueFrom") or {}
            if "value" in item:
                env[item["name"]] = item["value"]
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.cluster.get("secrets", namespace, ref["name"])
                assert secret is not None, f"Secret {ref['name']} for the operator"
                env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            elif "fieldRef" in source:
                env[item["name"]] = {"metadata.namespace": namespace, "metadata.name": pod_name}[
                    source["fieldRef"]["fieldPath"]]
        return env

    def start(self) -> "OperatorContainer":
        self.starts += 1
        namespace = self.deployment["metadata"].get("namespace", "default")
        pod_spec = json.loads(json.dumps(self.deployment["spec"]["template"]["spec"]))
        pod_name = f"susy-operator-{self.starts}"
        self.name = f"{self.run_id}-{pod_name}"
        config = self.workdir / "kubeconfig"
        config.write_text(kubeconfig(self.cluster.url))
        config.chmod(0o644)
        env = {**self._env(pod_spec, namespace, pod_name), "KUBECONFIG": "/var/run/susy/kubeconfig"}
        args = docker_run_args(
            name=self.name, pod_spec=pod_spec, env=env,
            volume_dirs=volume_dirs(pod_spec, self.workdir / "operator-volumes" / pod_name, {}),
            labels={LABEL: self.run_id, "susy.test/pod": pod_name},
            extra_mounts=[*self.extra_mounts, (str(config), "/var/run/susy/kubeconfig")])
        subprocess.run([self.docker, "rm", "--force", self.name], capture_output=True)
        subprocess.run([self.docker, *args], check=True, capture_output=True)
        return self

    def _collect(self) -> None:
        out = subprocess.run([self.docker, "logs", self.name], capture_output=True, text=True)
        self.logs.append(out.stdout + out.stderr)

    def kill(self) -> None:
        subprocess.run([self.docker, "kill", "--signal", "KILL", self.name], capture_output=True)
        self._collect()

    def stop(self) -> None:
        subprocess.run([self.docker, "stop", "--time", "10", self.name], capture_output=True)
        self._collect()
        subprocess.run([self.docker, "rm", "--force", self.name], capture_output=True)

    def running(self) -> bool:
        out = subprocess.run([self.docker, "inspect", "--format", "{{.State.Running}}", self.name],
                             capture_output=True, text=True)
        return out.stdout.strip() == "true"

    def log(self) -> str:
        current = subprocess.run([self.docker, "logs", self.name], capture_output=True, text=True)
        return "\n".join([*self.logs, current.stdout + current.stderr])

    def wait_healthy(self, port: int, timeout: float = 60) -> None:
        """kopf's liveness endpoint answers (the chart's probes use it)."""
        import urllib.request
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if not self.running():
                break
            time.sleep(0.5)
        raise AssertionError(f"the operator container is not healthy:\n{self.log()[-3000:]}")
