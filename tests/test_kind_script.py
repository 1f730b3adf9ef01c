"""hack/kind-e2e.sh's checks before it touches a cluster, run for real against stand-ins.

No Docker engine or kind cluster is needed: `docker`, `kind` and `kubectl` are small scripts
that answer as the real tools do (`kind version`, `kubectl get --raw /version`, the nodes'
allocatable resources, `kind load docker-image` failing as it does with Docker's containerd
image store) and log how they were called. The script's own bash does the rest.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "hack" / "kind-e2e.sh"

DOCKER = r"""#!/bin/bash
echo "docker $*" >> "$STUB_LOG"
case "$1" in
  info) exit 0 ;;
  version) echo amd64 ;;
  image)
    [[ $2 == save ]] || exit 1
    if [[ " $* " == *" --platform "* && -n ${NO_PLATFORM_SAVE:-} ]]; then
      echo 'unknown flag: --platform' >&2; exit 125
    fi
    while [[ $# -gt 0 ]]; do [[ $1 == -o ]] && { echo archive > "$2"; }; shift; done ;;
  *) exit 1 ;;
esac
"""

KIND = r"""#!/bin/bash
echo "kind $*" >> "$STUB_LOG"
case "$1 $2" in
  "version "*) echo "$KIND_VERSION_LINE" ;;
  "get clusters") echo susy ;;
  "load docker-image")
    if [[ -n ${CONTAINERD_STORE:-} ]]; then
      echo 'ERROR: failed to load image: command "docker exec --privileged -i susy-control-plane ctr --namespace=k8s.io images import --all-platforms --digests --snapshotter=overlayfs -" failed with error: exit status 1' >&2
      echo 'Command Output: ctr: content digest sha256:82014a3cbf22d2e03382cd9b123f4151d956986e727340a466406a206408b7a2: not found' >&2
      exit 1
    fi ;;
  "load image-archive")
    archive=${@: -1}
    [[ -s $archive ]] && echo "archive present: $archive" >> "$STUB_LOG" ;;
  *) exit 1 ;;
esac
"""

KUBECTL = r"""#!/bin/bash
echo "kubectl $*" >> "$STUB_LOG"
args=" $* "
if [[ $args == *" get --raw /version "* ]]; then
  printf '{\n  "major": "1",\n  "gitVersion": "v%s",\n  "platform": "linux/amd64"\n}\n' "$SERVER_VERSION"
elif [[ $args == *" get nodes "* ]]; then
  printf '%b' "$NODES"
else
  exit 1
fi
"""


@pytest.fixture
def tools(tmp_path: Path) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "STUB_LOG": str(tmp_path / "calls.log"),
           "KIND_VERSION_LINE": "kind v0.31.0 go1.25.5 linux/amd64", "SERVER_VERSION": "1.35.0",
           "NODES": "susy-control-plane 4 8024316Ki\\n"}
    for name, text in (("docker", DOCKER), ("kind", KIND), ("kubectl", KUBECTL)):
        path = tmp_path / name
        path.write_text(text)
        path.chmod(0o755)
        env[name.upper()] = str(path)
    env["HELM"] = "true"
    return env


def run_script(env: dict[str, str], *steps: str, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *steps], env={**env, **overrides}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def calls(env: dict[str, str]) -> list[str]:
    return Path(env["STUB_LOG"]).read_text().splitlines()


def test_preflight_prints_the_versions_and_passes(tools: dict[str, str]) -> None:
    proc = run_script(tools, "preflight")
    assert proc.returncode == 0, proc.stderr
    assert "kind v0.31.0 go1.25.5" in proc.stderr
    assert "Kubernetes server version: 1.35.0 (needs >= 1.29.0)" in proc.stderr
    assert "4000m CPU, 7836 MiB memory" in proc.stderr


@pytest.mark.parametrize("line", ["kind v0.30.0 go1.24.6 linux/amd64", "kind v0.20.0 go1.20.4 linux/amd64"])
def test_preflight_stops_on_an_old_kind(tools: dict[str, str], line: str) -> None:
    proc = run_script(tools, "preflight", KIND_VERSION_LINE=line)
    assert proc.returncode == 2
    assert "is too old" in proc.stderr and "v0.31.0 or newer" in proc.stderr


def test_preflight_stops_on_kubernetes_1_28(tools: dict[str, str]) -> None:
    proc = run_script(tools, "preflight", SERVER_VERSION="1.28.15")
    assert proc.returncode == 2
    assert "Kubernetes 1.28.15 is too old: the charts need >= 1.29.0" in proc.stderr


def test_preflight_says_what_the_nodes_lack(tools: dict[str, str]) -> None:
    proc = run_script(tools, "preflight", NODES="susy-control-plane 2 3900Mi\\n")
    assert proc.returncode == 2
    assert "the nodes lack 500m CPU and 2244 MiB memory" in proc.stderr
    proc = run_script(tools, "preflight", NODES="a 1500m 3Gi\\nb 2 4000000Ki\\n")
    assert proc.returncode == 0, proc.stderr  # summed over the nodes: 3500m, 6978 MiB


def test_the_pinned_node_image_is_a_digest_of_kubernetes_1_31_or_newer() -> None:
    text = SCRIPT.read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("KIND_NODE_IMAGE=")]
    image = line.split(":-", 1)[1].rstrip("}")
    name, _, digest = image.partition("@sha256:")
    assert len(digest) == 64 and int(digest, 16) >= 0
    minor = int(name.split(":v1.")[1].split(".")[0])
    assert name.startswith("kindest/node:v1.") and minor >= 31


def test_load_falls_back_to_an_image_archive(tools: dict[str, str]) -> None:
    """With Docker's containerd image store `kind load docker-image` fails (kind#3795, #3845):
    the script saves this platform's image and loads the archive instead."""
    proc = run_script(tools, "load", CONTAINERD_STORE="1")
    assert proc.returncode == 0, proc.stderr
    log = calls(tools)
    for image in ("susy-pipeline:0.1.0", "susy-operator:0.1.0"):
        assert f"kind load docker-image --name susy {image}" in log
        (save,) = [c for c in log if c.startswith("docker image save") and c.endswith(image)]
        assert "--platform linux/amd64" in save
    assert len([c for c in log if c.startswith("archive present:")]) == 2
    assert not list(Path(tools["TMPDIR"]).glob("kind-e2e-image.*")), "archives are removed"
    # An engine whose `docker image save` has no --platform: the whole image.
    Path(tools["STUB_LOG"]).unlink()
    proc = run_script(tools, "load", CONTAINERD_STORE="1", NO_PLATFORM_SAVE="1")
    assert proc.returncode == 0, proc.stderr
    assert len([c for c in calls(tools) if c.startswith("archive present:")]) == 2


def test_load_uses_kind_load_docker_image_when_it_works(tools: dict[str, str]) -> None:
    proc = run_script(tools, "load")
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in calls(tools) if c.startswith("docker image save")]
