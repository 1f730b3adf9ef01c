#!/usr/bin/env bash
# Build a local Python 3.11 base image from Debian's own packages, for machines where no image
# registry answers (so `FROM python:3.11.13-slim-bookworm` cannot be pulled).
#
# Usage: hack/base-image.sh [IMAGE]   (default susy-base:bookworm-py3.11)
# The image is the cache: when it exists, nothing is done (`docker image rm IMAGE` to rebuild).
# Needs root (debootstrap), Debian's `debootstrap` package and a Docker engine.
#
# What goes in, and why:
# - `debootstrap --variant=minbase bookworm`: Debian 12, the release python:3.11-slim-bookworm
#   is built on, so the Dockerfile's steps (groupadd, useradd, python -m venv) behave the same;
#   bookworm's python3 is 3.11, the version the project pins (TensorFlow 2.16 wheels).
# - python3, python3-venv, python-is-python3: the Dockerfile calls `python -m venv`.
# - ca-certificates plus this machine's CA bundle: pip inside a build verifies the package index
#   with the same bundle the host's pip uses (PIP_CERT), which may hold a local proxy's CA.
set -euo pipefail

IMAGE=${1:-${BASE_IMAGE:-susy-base:bookworm-py3.11}}
DOCKER=${DOCKER:-docker}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base-image: $IMAGE exists (cached); 'docker image rm $IMAGE' to rebuild" >&2
  exit 0
fi
[[ $(id -u) == 0 ]] || { echo "base-image: debootstrap needs root" >&2; exit 2; }
if ! command -v debootstrap >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || { echo "base-image: no debootstrap and no apt-get" >&2; exit 2; }
  echo "base-image: apt-get install debootstrap" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } >/dev/null \
    || { echo "base-image: could not install debootstrap" >&2; exit 2; }
fi

root=$(mktemp -d /var/tmp/susy-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "base-image: debootstrap $SUITE into $root (a few minutes)" >&2
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
  "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 \
  || { tail -30 "$root.log" >&2; echo "base-image: debootstrap failed (log: $root.log)" >&2; exit 1; }
rm -f "$root.log"
[[ -f $CA_BUNDLE ]] && cp "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
# Smaller and reproducible enough: no apt lists, no caches, no logs.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
       "$root"/var/log/*.log "$root"/tmp/*
python_version=$(chroot "$root" python --version 2>&1)
echo "base-image: importing as $IMAGE ($python_version)" >&2
tar -C "$root" -c . | "$DOCKER" import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  --message "debootstrap --variant=minbase $SUITE ($python_version)" - "$IMAGE" >/dev/null
echo "base-image: $IMAGE built" >&2
