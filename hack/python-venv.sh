#!/usr/bin/env bash
# Make sure VENV is a virtual environment of a Python that pyproject.toml's requires-python
# allows, before anything is installed into it (the Makefile's $(STAMP) rule).
#
#   hack/python-venv.sh PYTHON VENV [ORIGIN]
#
# ORIGIN is make's $(origin PYTHON): "command line" or "environment" when the user chose PYTHON,
# "file" when it is the Makefile's own default (python3).
# - VENV exists, its Python is allowed, and PYTHON was not chosen (or is the same version):
#   kept, so a half-finished install resumes in it.
# - Otherwise PYTHON must be allowed; if it is not, this says which Python to name and stops
#   before creating anything (exit 1). A VENV made by another Python, or broken, is removed
#   and made again with PYTHON.
set -euo pipefail

python=${1:?usage: hack/python-venv.sh PYTHON VENV [ORIGIN]}
venv=${2:?usage: hack/python-venv.sh PYTHON VENV [ORIGIN]}
case ${3:-file} in
  "command line"|environment*|override) chosen=true ;;
  *) chosen=false ;;
esac
here=$(cd "$(dirname "$0")/.." && pwd)
pyproject=${SUSY_PYPROJECT:-$here/pyproject.toml}

# requires-python = ">=3.10,<3.12": comma-separated clauses of an operator and MAJOR.MINOR.
spec=$(sed -n 's/^requires-python *= *"\([^"]*\)".*/\1/p' "$pyproject")
[[ -n $spec ]] || { echo "python-venv: no requires-python in $pyproject" >&2; exit 1; }

version_of() {  # the MAJOR.MINOR an interpreter reports, or nothing if it does not run
  { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true; } | tail -n 1
}

allowed() {  # allowed MAJOR.MINOR: true if every clause of $spec holds
  local major=${1%%.*} minor=${1#*.} clause op want wmajor wminor have target
  [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] || return 1
  have=$((major * 1000 + minor))
  IFS=',' read -ra clauses <<<"$spec"
  for clause in "${clauses[@]}"; do
    clause=${clause// /}
    op=${clause%%[0-9]*}
    want=${clause#"$op"}
    wmajor=${want%%.*}
    wminor=${want#*.}
    wminor=${wminor%%.*}
    [[ $wminor =~ ^[0-9]+$ ]] || wminor=0
    target=$((wmajor * 1000 + wminor))
    case $op in
      '>=') ((have >= target)) ;;
      '>') ((have > target)) ;;
      '<') ((have < target)) ;;
      '<=') ((have <= target)) ;;
      '=='|'~=') ((have == target)) ;;
      '!=') ((have != target)) ;;
      *) echo "python-venv: cannot read clause '$clause' of requires-python" >&2; return 1 ;;
    esac || return 1
  done
}

advice() {  # which interpreters on PATH would do, as commands to run
  local candidates=() name v
  for name in python3.11 python3.10 python3; do
    command -v "$name" >/dev/null 2>&1 || continue
    v=$(version_of "$name")
    [[ -n $v ]] && allowed "$v" && candidates+=("$name")
  done
  if ((${#candidates[@]})); then
    echo "  run:  make PYTHON=${candidates[0]}${MAKECMDGOALS:+ $MAKECMDGOALS}"
    echo "  (Pythons on PATH that fit: ${candidates[*]})"
  else
    echo "  install Python 3.11 with its venv module (Debian/Ubuntu: apt-get install python3.11"
    echo "  python3.11-venv; or 'pyenv install 3.11' / 'uv python install 3.11'), then:"
    echo "  make PYTHON=python3.11${MAKECMDGOALS:+ $MAKECMDGOALS}"
  fi
}

venv_version=
if [[ -e $venv ]]; then
  venv_version=$(version_of "$venv/bin/python")
fi

if [[ -n $venv_version ]] && allowed "$venv_version"; then
  if ! $chosen; then
    exit 0  # PYTHON not chosen: keep the venv there is (an install resumes in it)
  fi
  wanted=$(version_of "$python")
  if [[ $wanted == "$venv_version" ]]; then
    exit 0
  fi
fi

if ! command -v "$python" >/dev/null 2>&1; then
  { echo "python-venv: no '$python' on PATH; this project needs Python $spec."; advice; } >&2
  exit 1
fi
version=$(version_of "$python")
if [[ -z $version ]]; then
  { echo "python-venv: '$python' does not run; this project needs Python $spec."; advice; } >&2
  exit 1
fi
if ! allowed "$version"; then
  {
    echo "python-venv: '$python' is Python $version; this project needs Python $spec"
    echo "  (TensorFlow 2.16 and tensorflow-io 0.37.1 have no wheels for newer Pythons)."
    advice
  } >&2
  exit 1
fi

if [[ -e $venv ]]; then
  if [[ ! -f $venv/pyvenv.cfg ]]; then
    echo "python-venv: $venv exists and is not a virtual environment (no pyvenv.cfg); move it away" >&2
    exit 1
  fi
  maker=${venv_version:+Python $venv_version}
  echo "python-venv: $venv was made by ${maker:-a Python that no longer runs}; making it again with $python (Python $version)" >&2
  rm -rf -- "$venv"
fi
if ! "$python" -m venv "$venv"; then
  rm -rf -- "$venv"
  echo "python-venv: '$python -m venv' failed; on Debian/Ubuntu install python$version-venv" >&2
  exit 1
fi
