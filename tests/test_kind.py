"""Container images and the kind end-to-end run.

The end-to-end test (marker `docker`) builds both images, installs both charts on a kind
cluster and takes the example TrainingRun and EvaluationRun to Succeeded through
hack/kind-e2e.sh (`make kind-e2e`). Without a Docker engine it is skipped, and says why.

The other tests need no Docker: the script's syntax and the make targets. The images themselves
are built and run for real by `make test` (tests/test_containers.py).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "hack" / "kind-e2e.sh"


def _docker_engine() -> str | None:
    """None when a Docker engine answers, else the reason to skip."""
    docker = shutil.which("docker")
    if docker is None:
        return "no Docker engine (the docker CLI is not installed)"
    try:
        proc = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"no Docker engine (docker info: {error})"
    if proc.returncode != 0:
        return "no Docker engine (docker info failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1] + ")"
    if shutil.which(os.environ.get("KIND", "kind")) is None:
        return "kind is not installed (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
    return None


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_kind_end_to_end() -> None:
    reason = _docker_engine()
    if reason:
        print(f"SKIP test_kind_end_to_end: {reason}", file=sys.stderr)
        pytest.skip(reason)
    steps = ["all"] if os.environ.get("KEEP_KIND_CLUSTER") else ["all", "down"]
    proc = subprocess.run(["bash", str(SCRIPT), *steps], cwd=ROOT, text=True, capture_output=True, timeout=5300)
    print(proc.stdout[-20000:])
    print(proc.stderr[-20000:], file=sys.stderr)
    if proc.returncode != 0 and "down" in steps:
        subprocess.run(["bash", str(SCRIPT), "down"], cwd=ROOT, timeout=300)
    assert proc.returncode == 0, "hack/kind-e2e.sh failed (output above)"
    accuracy = re.search(r"^accuracy=([0-9.]+)$", proc.stdout, re.M)
    assert accuracy and 0.5 < float(accuracy.group(1)) <= 1.0, "no plausible accuracy reported"


# ---------------------------------------------------------------------------------------------
# the kind script and make targets


def test_kind_script_is_valid_bash_and_waits_for_succeeded() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    assert "--for=jsonpath='{.status.phase}'=Succeeded" in text
    # The example CRs with requests that fit a 4-CPU, 8 GiB node (tests/test_charts.py validates them).
    for path in ("hack/e2e/trainingrun.yaml", "hack/e2e/evaluationrun.yaml"):
        assert path in text and (ROOT / path).exists()
    assert "{.status.accuracy}" in text


def test_make_targets_exist() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    for target in ("kind-up", "images", "kind-load", "deploy", "kind-e2e", "kind-down", "sync-crds", "tools"):
        proc = subprocess.run([make, "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"make -n {target}: {proc.stderr}"
