"""Pods as real containers: a Kubernetes pod spec -> `docker run`, for the test Job runner.

What a kubelet would do with the fields the operator's Jobs and the operator chart's Deployment
use, done by a Docker engine (host networking only: no traffic leaves loopback):

| pod spec                                        | docker run                                   |
|-------------------------------------------------|----------------------------------------------|
| image, command, args                            | image, --entrypoint command[0], the rest     |
| env (values; Secret and fieldRef resolved first)| -e NAME=VALUE                                |
| securityContext runAsUser / runAsGroup, fsGroup | --user UID:GID, --group-add GID              |
| runAsNonRoot with a root user                   | not started: CreateContainerConfigError      |
| readOnlyRootFilesystem                          | --read-only                                  |
| capabilities drop / add                         | --cap-drop / --cap-add                       |
| allowPrivilegeEscalation: false                 | --security-opt no-new-privileges             |
| emptyDir volume (+ volumeMounts)                | a fresh 0777 host folder, bind-mounted       |
| emptyDir medium Memory                          | --tmpfs                                      |
| persistentVolumeClaim                           | the host folder the runner maps the claim to |
| resources.limits cpu / memory                   | --cpus / --memory (= --memory-swap: no swap) |
| terminationMessagePath (default                 | an empty 0666 host file bind-mounted there,  |
| /dev/termination-log) and its policy            | read after exit as the kubelet reads it      |

The container's exit code, and Docker's OOMKilled flag (exit 137 with reason OOMKilled, as the
kubelet reports it), come back as a `PodOutcome`. Requests, probes, node selection and image
pulls are not emulated: there is one node, and images must already be in the local engine
(imagePullPolicy is read as `Never`; a missing image is ErrImageNeverPull, as on a node).

`docker_run_args` is pure, so the translation is unit-tested without an engine.
"""
from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LABEL = "susy.test/runner"  # every container started here carries it, so a test can clean up


class PodStartError(Exception):
    """The container could not be created; the kubelet leaves such a pod Pending (Waiting)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class PodOutcome:
    exit_code: int
    reason: str          # Completed, Error or OOMKilled, as in containerStatuses[].state.terminated
    message: str = ""


# How the kubelet fills containerStatuses[].state.terminated.message (pkg/kubelet/kuberuntime/
# kuberuntime_container.go, getTerminationMessage and readLastStringFromContainerLogs; the limits in
# pkg/kubelet/container/runtime.go): the last 4096 bytes of the file at terminationMessagePath;
# with terminationMessagePolicy FallbackToLogsOnError, when that file is empty and the container
# failed, the last 80 lines of its log, at most their last 2048 bytes.
MAX_TERMINATION_MESSAGE_BYTES = 4096
MAX_TERMINATION_LOG_BYTES = 2048
MAX_TERMINATION_LOG_LINES = 80


def termination_message(container: Mapping[str, Any], message_file: Path | None, log: Path, exit_code: int) -> str:
    """The termination message the kubelet would publish for a container that has ended."""
    data = b""
    if message_file is not None and message_file.is_file():
        data = message_file.read_bytes()[-MAX_TERMINATION_MESSAGE_BYTES:]
    if not data and exit_code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError" \
            and log.is_file():
        lines = log.read_bytes().splitlines(keepends=True)[-MAX_TERMINATION_LOG_LINES:]
        data = b"".join(lines)[-MAX_TERMINATION_LOG_BYTES:]
    return data.decode(errors="replace")


_MEMORY_SUFFIXES = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
                    "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}


def memory_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity ("1536Mi", "2G", "1e9", 1000000) in bytes."""
    text = str(quantity).strip()
    match = re.fullmatch(r"([0-9.]+(?:e[0-9]+)?)([kMGT]i?|)", text)
    if not match:
        raise ValueError(f"unsupported memory quantity {quantity!r}")
    return int(float(match[1]) * _MEMORY_SUFFIXES[match[2]])


def cpus(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity ("500m", "1", 2) in CPUs."""
    text = str(quantity).strip()
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _security(pod_spec: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, Any]:
    """The container's effective security settings: its own override the pod's (as in the API)."""
    merged = {k: v for k, v in (pod_spec.get("securityContext") or {}).items()
              if k in ("runAsUser", "runAsGroup", "runAsNonRoot")}
    merged.update(container.get("securityContext") or {})
    return merged


def docker_run_args(*, name: str, pod_spec: Mapping[str, Any], env: Mapping[str, str],
                    volume_dirs: Mapping[str, Path], image_user: str = "",
                    labels: Mapping[str, str] = (), extra_mounts: Sequence[tuple[str, str]] = (),
                    ) -> list[str]:
    """The `docker run` arguments (after `docker`) for the first container of a pod spec.

    `volume_dirs` maps each of the pod's non-memory volumes to a host folder. `image_user` is the
    image's USER (for runAsNonRoot when the pod sets no runAsUser). `extra_mounts` are bind
    mounts the pod spec does not name (what stands in for a network path, see the runner).
    Raises PodStartError for what the kubelet would refuse to start.
    """
    container = pod_spec["containers"][0]
    security = _security(pod_spec, container)
    args = ["run", "--detach", "--name", name, "--network", "host", "--pull", "never"]
    for key, value in dict(labels).items():
        args += ["--label", f"{key}={value}"]

    user = security.get("runAsUser")
    group = security.get("runAsGroup")
    effective_user = str(user) if user is not None else (image_user.split(":")[0] or "0")
    if security.get("runAsNonRoot") and effective_user in ("0", "root"):
        # kubelet: "container has runAsNonRoot and image will run as root" (CreateContainerConfigError)
        raise PodStartError("CreateContainerConfigError", "container has runAsNonRoot and image will run as root")
    if user is not None:
        args += ["--user", f"{user}:{group if group is not None else 0}"]
    fs_group = (pod_spec.get("securityContext") or {}).get("fsGroup")
    if fs_group is not None:
        args += ["--group-add", str(fs_group)]
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    capabilities = security.get("capabilities") or {}
    for cap in capabilities.get("drop") or []:
        args += ["--cap-drop", cap]
    for cap in capabilities.get("add") or []:
        args += ["--cap-add", cap]
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]

    limits = (container.get("resources") or {}).get("limits") or {}
    if "cpu" in limits:
        args += ["--cpus", f"{cpus(limits['cpu']):g}"]
    if "memory" in limits:
        limit = memory_bytes(limits["memory"])
        args += ["--memory", str(limit), "--memory-swap", str(limit)]

    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise PodStartError("CreateContainerConfigError", f"volume {mount['name']!r} not found")
        read_only = ",ro" if mount.get("readOnly") else ""
        if "emptyDir" in volume and (volume["emptyDir"] or {}).get("medium") == "Memory":
            args += ["--tmpfs", f"{mount['mountPath']}:mode=1777"]
        elif mount["name"] in volume_dirs:
            args += ["--mount", f"type=bind,source={volume_dirs[mount['name']]},target={mount['mountPath']}"
                     f"{',readonly' if read_only else ''}"]
        else:
            raise PodStartError("CreateContainerConfigError",
                                f"volume {mount['name']!r}: {sorted(set(volume) - {'name'})} is not emulated")
    for source, target in extra_mounts:
        args += ["--mount", f"type=bind,source={source},target={target}"]

    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    command = list(container.get("command") or [])
    if command:
        args += ["--entrypoint", command[0]]
    args.append(container["image"])
    args += command[1:] + list(container.get("args") or [])
    return args


def volume_dirs(pod_spec: Mapping[str, Any], root: Path, claims: Mapping[str, Path]) -> dict[str, Path]:
    """Host folders for a pod's volumes: new 0777 folders for emptyDirs (as the kubelet makes
    them), the mapped folder for each persistentVolumeClaim, hostPath as named."""
    result: dict[str, Path] = {}
    for volume in pod_spec.get("volumes") or []:
        if "emptyDir" in volume and (volume["emptyDir"] or {}).get("medium") != "Memory":
            folder = root / volume["name"]
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)
            result[volume["name"]] = folder
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claim not in claims:
                # The kubelet cannot mount an unbound claim: the pod stays Pending (FailedMount).
                raise PodStartError("ContainerCreating", f"persistentvolumeclaim {claim!r} not found")
            result[volume["name"]] = claims[claim]
        elif "hostPath" in volume:
            result[volume["name"]] = Path(volume["hostPath"]["path"])
    return result


class ContainerRuntime:
    """Runs pods as containers of the local Docker engine (see the module docstring)."""

    def __init__(self, workdir: Path, *, docker: str = "docker", run_id: str = "susy",
                 claims: Mapping[str, Path] | None = None,
                 extra_mounts: Sequence[tuple[str, str]] = ()) -> None:
        self.docker = docker
        self.workdir = Path(workdir)
        self.run_id = run_id
        self.claims = dict(claims or {})
        self.extra_mounts = list(extra_mounts)
        self.containers: dict[str, str] = {}  # pod name -> container name, for the fault tests

    def container_name(self, pod_name: str) -> str:
        return f"{self.run_id}-{pod_name}"

    def check_image(self, image: str) -> None:
        """As the kubelet with imagePullPolicy Never: a missing image never starts (ErrImageNeverPull)."""
        self._image_user(image)

    def _image_user(self, image: str) -> str:
        result = subprocess.run([self.docker, "image", "inspect", "--format", "{{.Config.User}}", image],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise PodStartError("ErrImageNeverPull", f'Container image "{image}" is not present with pull policy of Never')
        return result.stdout.strip()

    async def _docker(self, *args: str, check: bool = True) -> str:
        process = await asyncio.create_subprocess_exec(self.docker, *args, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate()
        if check and process.returncode != 0:
            raise RuntimeError(f"docker {args[0]}: {err.decode(errors='replace').strip()}")
        return out.decode()

    async def run(self, pod_name: str, pod_spec: Mapping[str, Any], env: Mapping[str, str], log: Path,
                  message_file: Path, labels: Mapping[str, str] = ()) -> PodOutcome:
        """Start the pod's container, wait for it, write its log to `log` and read its termination
        message from `message_file`; kill and remove it if cancelled."""
        image = pod_spec["containers"][0]["image"]
        image_user = await asyncio.to_thread(self._image_user, image)
        dirs = volume_dirs(pod_spec, self.workdir / "volumes" / pod_name, self.claims)
        name = self.container_name(pod_name)
        # As the kubelet does (kuberuntime_container.go, makeMounts: a file of the pod's own folder
        # on the node, bind-mounted at terminationMessagePath, writable by any container user), so
        # a read-only root filesystem still takes the message; read after the container exits.
        container = pod_spec["containers"][0]
        message_file.write_bytes(b"")
        message_file.chmod(0o666)
        message_path = container.get("terminationMessagePath") or "/dev/termination-log"
        args = docker_run_args(name=name, pod_spec=pod_spec, env=env, volume_dirs=dirs, image_user=image_user,
                               labels={LABEL: self.run_id, "susy.test/pod": pod_name, **dict(labels)},
                               extra_mounts=[*self.extra_mounts, (str(message_file), message_path)])
        await self._docker("rm", "--force", name, check=False)
        try:
            await self._docker(*args)
        except RuntimeError as err:
            raise PodStartError("CreateContainerError", str(err)) from None
        self.containers[pod_name] = name
        try:
            exit_code = int((await self._docker("wait", name)).strip())
            state = (await self._docker("inspect", "--format", "{{.State.OOMKilled}}", name)).strip()
            with open(log, "wb") as out:
                process = await asyncio.create_subprocess_exec(self.docker, "logs", name, stdout=out, stderr=out)
                await process.wait()
        except asyncio.CancelledError:
            await asyncio.shield(self._docker("rm", "--force", name, check=False))
            raise
        await self._docker("rm", "--force", name, check=False)
        if state == "true":
            return PodOutcome(exit_code, "OOMKilled", f"container exceeded its memory limit (exit {exit_code})")
        return PodOutcome(exit_code, "Completed" if exit_code == 0 else "Error",
                          termination_message(container, message_file, log, exit_code))

    def remove_all(self) -> None:
        """Remove every container this runtime started (teardown)."""
        listed = subprocess.run([self.docker, "ps", "--all", "--quiet", "--filter", f"label={LABEL}={self.run_id}"],
                                capture_output=True, text=True)
        ids = listed.stdout.split()
        if ids:
            subprocess.run([self.docker, "rm", "--force", *ids], capture_output=True)
        shutil.rmtree(self.workdir / "volumes", ignore_errors=True)


def engine_available(docker: str = "docker") -> str | None:
    """None if a Docker engine answers, else why not (for pytest's skip reason)."""
    if shutil.which(docker) is None:
        return f"no '{docker}' client on PATH"
    try:
        result = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                                text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "'docker info' did not answer in 20 s"
    if result.returncode != 0:
        return f"no Docker engine answers: {result.stderr.strip()[:200]}"
    return None


def image_present(image: str, docker: str = "docker") -> bool:
    return subprocess.run([docker, "image", "inspect", image], capture_output=True).returncode == 0


