"""Container images and the kind end-to-end run.

The end-to-end test (marker `docker`) builds both images, installs both charts on a kind
cluster and takes the example TrainingRun and EvaluationRun to Succeeded through
hack/kind-e2e.sh (`make kind-e2e`). Without a Docker engine it is skipped, and says why.

The other tests need no Docker: they read the Dockerfiles and their .dockerignore files and
check what the build relies on (pinned base, multi-stage, non-root user, the sample baked in,
every COPY source inside the build context).
"""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGES = {
    "pipeline": ROOT / "images" / "pipeline" / "Dockerfile",
    "operator": ROOT / "images" / "operator" / "Dockerfile",
}
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
# Dockerfiles, read statically


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _dockerignore(dockerfile: Path) -> list[str]:
    # BuildKit prefers <Dockerfile>.dockerignore next to the Dockerfile over the root one.
    path = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if not path.exists():
        path = ROOT / ".dockerignore"
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def _in_context(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also matches everything below it."""
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pat[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatch(p, pat) for p in prefixes)
        if hit:
            included = negate
    return included


def _copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for op, rest in _instructions(dockerfile):
        if op != "COPY" or "--from=" in rest:
            continue
        args = [a for a in rest.split() if not a.startswith("--")]
        sources.extend(args[:-1])
    return sources


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_is_pinned_multistage_and_non_root(image: str) -> None:
    dockerfile = IMAGES[image]
    ins = _instructions(dockerfile)
    base = [rest for op, rest in ins if op == "ARG" and rest.startswith("PYTHON_IMAGE=")]
    assert base and re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm", base[0]), base
    froms = [rest for op, rest in ins if op == "FROM"]
    assert len(froms) >= 2 and froms[0].endswith(" AS builder"), "multi-stage with a builder"
    assert any("--from=builder /opt/venv" in rest for op, rest in ins if op == "COPY")
    final = ins[max(i for i, (op, _) in enumerate(ins) if op == "FROM"):]
    users = [rest for op, rest in final if op == "USER"]
    assert users and users[-1].split(":")[0] == "10001", "the runtime stage runs as uid 10001"
    extra = "pipeline" if image == "pipeline" else "operator"
    assert any(f".[{extra}]" in rest for op, rest in ins if op == "RUN"), f"installs .[{extra}]"
    entry = [rest for op, rest in final if op == "ENTRYPOINT"]
    assert entry == [f'["python", "-m", "susy_{extra}"]']


def test_pipeline_image_bakes_the_sample() -> None:
    ins = _instructions(IMAGES["pipeline"])
    copies = [rest for op, rest in ins if op == "COPY" and "data/susy-sample.csv.gz" in rest]
    assert copies and copies[0].split()[-1] == "/opt/susy/data/"
    assert any(op == "WORKDIR" and rest == "/opt/susy" for op, rest in ins), \
        "relative data/susy-sample.csv.gz resolves in the image"
    assert "data/README.md" in copies[0], "the CC BY 4.0 attribution travels with the data"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_copy_source_is_in_the_build_context(image: str) -> None:
    dockerfile = IMAGES[image]
    patterns = _dockerignore(dockerfile)
    for source in _copy_sources(dockerfile):
        matches = [p.relative_to(ROOT).as_posix() for p in ROOT.glob(source)]
        if "[" in source and not matches:
            continue  # an optional file (README.m[d]): COPY tolerates it while another source matches
        assert matches, f"{image}: COPY {source} matches nothing in the repository"
        for match in matches:
            assert _in_context(match, patterns), f"{image}: COPY {match} is excluded by .dockerignore"
    # What must never be sent to the builder.
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_kind.py", ".susy/store.sqlite3"):
        assert not _in_context(path, patterns), f"{image}: {path} would be in the build context"


def test_dockerignore_excludes_bytecode() -> None:
    for dockerfile in IMAGES.values():
        patterns = _dockerignore(dockerfile)
        assert not _in_context("images/pipeline/susy_pipeline/__pycache__/x.pyc", patterns)


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
