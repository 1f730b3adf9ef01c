"""`make venv` checks the interpreter against requires-python first, and rebuilds a venv of another Python.

The interpreters here are fakes: shell scripts that answer the version question with a fixed
MAJOR.MINOR, so the check is tested for Pythons this machine does not have.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "hack" / "python-venv.sh"

pytestmark = pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")


def fake_python(path: Path, version: str) -> Path:
    """An executable that prints `version` whatever it is asked (and so 'makes' no venv)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def fake_venv(path: Path, version: str) -> Path:
    fake_python(path / "bin" / "python", version)
    (path / "pyvenv.cfg").write_text(f"home = /nowhere\nversion = {version}.0\n")
    return path


def env_with(bin_dir: Path) -> dict[str, str]:
    """PATH with `bin_dir` first, so its fakes are the Pythons the advice finds."""
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_make_venv_with_python_3_12_stops_before_creating_anything_and_says_what_to_run(tmp_path):
    if not shutil.which("make"):
        pytest.skip("needs make")
    bin_dir = tmp_path / "bin"
    python312 = fake_python(bin_dir / "python3.12", "3.12")
    fake_python(bin_dir / "python3.11", "3.11")
    venv = tmp_path / "venv"
    done = subprocess.run(["make", "-C", str(ROOT), "venv", f"PYTHON={python312}", f"VENV={venv}"],
                          capture_output=True, text=True, env=env_with(bin_dir), timeout=60)
    assert done.returncode != 0
    assert f"'{python312}' is Python 3.12; this project needs Python >=3.10,<3.12" in done.stderr
    assert "run:  make PYTHON=python3.11 venv" in done.stderr
    assert not venv.exists()  # nothing half made for a later PYTHON=python3.11 to trip over


@pytest.mark.parametrize("version,allowed", [("3.9", False), ("3.10", True), ("3.11", True),
                                             ("3.12", False), ("3.13", False), ("4.0", False)])
def test_the_check_reads_requires_python(tmp_path, version, allowed):
    python = fake_python(tmp_path / "bin" / f"python{version}", version)
    done = subprocess.run([str(SCRIPT), str(python), str(tmp_path / "venv"), "command line"],
                          capture_output=True, text=True, env=env_with(tmp_path / "bin"), timeout=60)
    assert (done.returncode == 0) == allowed, done.stderr


def test_a_venv_made_by_another_python_is_made_again(tmp_path):
    venv = fake_venv(tmp_path / "venv", "3.12")  # what a failed `make` on Python 3.12 left
    done = subprocess.run([str(SCRIPT), sys.executable, str(venv), "command line"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{venv} was made by Python 3.12; making it again with {sys.executable}" in done.stderr
    made = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.version_info[:2])"],
                          capture_output=True, text=True, check=True)
    assert made.stdout.strip() == str(tuple(sys.version_info[:2]))


def test_a_good_venv_is_kept_when_python_was_not_chosen(tmp_path):
    venv = fake_venv(tmp_path / "venv", "3.11")
    (venv / "half-installed").write_text("")
    python312 = fake_python(tmp_path / "bin" / "python3", "3.12")  # the default python3 is too new
    # "file": make's $(origin PYTHON) for the Makefile's own `PYTHON ?= python3`
    done = subprocess.run([str(SCRIPT), str(python312), str(venv), "file"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (venv / "half-installed").exists()  # the install resumes in it
    for chosen in ("command line", "environment"):  # PYTHON=python3.12 named by the user: refused
        done = subprocess.run([str(SCRIPT), str(python312), str(venv), chosen],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "is Python 3.12" in done.stderr
        assert (venv / "half-installed").exists()


def test_a_directory_that_is_no_venv_is_never_removed(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "precious").write_text("")
    done = subprocess.run([str(SCRIPT), sys.executable, str(venv), "command line"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "is not a virtual environment" in done.stderr
    assert (venv / "precious").exists()
