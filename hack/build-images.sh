#!/usr/bin/env bash
# Build the pipeline and operator images from images/Dockerfile (`make images`).
#
# The base: PYTHON_IMAGE if set; else the official python image when it is here or a registry
# serves it; else a local Debian base built by hack/base-image.sh (cached as a Docker image), and
# the script says so. Builds run with --network host: pip reaches the package index through the
# host's network, and an engine started without a bridge (as .ci/run starts it) has no other.
#
# Settings (environment): IMAGE_TAG (0.1.0), PIPELINE_IMAGE, OPERATOR_IMAGE, PYTHON_IMAGE,
# OFFICIAL_PYTHON_IMAGE, LOCAL_BASE_IMAGE, DOCKER, TARGETS ("operator pipeline"), BUILD_LOG
# (.susy/build-images.log; - for the terminal).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DOCKER=${DOCKER:-docker}
IMAGE_TAG=${IMAGE_TAG:-0.1.0}
PIPELINE_IMAGE=${PIPELINE_IMAGE:-susy-pipeline:$IMAGE_TAG}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-susy-operator:$IMAGE_TAG}
# OFFICIAL_PYTHON_IMAGE must match the Dockerfile's default PYTHON_IMAGE.
OFFICIAL_PYTHON_IMAGE=${OFFICIAL_PYTHON_IMAGE:-python:3.11.13-slim-bookworm}
LOCAL_BASE_IMAGE=${LOCAL_BASE_IMAGE:-susy-base:bookworm-py3.11}
TARGETS=${TARGETS:-operator pipeline}
mkdir -p "$ROOT/.susy"
BUILD_LOG=${BUILD_LOG:-$ROOT/.susy/build-images.log}
log() { printf 'build-images: %s\n' "$*" >&2; }

"$DOCKER" info >/dev/null 2>&1 || { log "no Docker engine answers 'docker info'"; exit 3; }

if [[ -z ${PYTHON_IMAGE:-} ]]; then
  if "$DOCKER" image inspect "$OFFICIAL_PYTHON_IMAGE" >/dev/null 2>&1 \
     || timeout 60 "$DOCKER" pull --quiet "$OFFICIAL_PYTHON_IMAGE" >/dev/null 2>&1; then
    PYTHON_IMAGE=$OFFICIAL_PYTHON_IMAGE
    log "base: $PYTHON_IMAGE (official)"
  else
    log "base: no registry serves $OFFICIAL_PYTHON_IMAGE here; using the local Debian base $LOCAL_BASE_IMAGE"
    "$ROOT/hack/base-image.sh" "$LOCAL_BASE_IMAGE"
    PYTHON_IMAGE=$LOCAL_BASE_IMAGE
    # BuildKit would still ask a registry about a FROM image that only `docker import` made.
    export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
  fi
fi

for target in $TARGETS; do
  case $target in
    pipeline) tag=$PIPELINE_IMAGE ;;
    operator) tag=$OPERATOR_IMAGE ;;
    *) log "unknown target '$target' (operator, pipeline)"; exit 2 ;;
  esac
  log "docker build --target $target -t $tag (FROM $PYTHON_IMAGE)"
  start=$(date +%s)
  # The builder's output goes to a log (BUILD_LOG=- prints it); its tail is shown on failure.
  if [[ $BUILD_LOG == - ]]; then
    "$DOCKER" build --network host -f images/Dockerfile --target "$target" \
      --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" -t "$tag" . >&2
  elif ! "$DOCKER" build --network host -f images/Dockerfile --target "$target" \
      --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" -t "$tag" . >"$BUILD_LOG" 2>&1; then
    tail -40 "$BUILD_LOG" >&2
    log "docker build --target $target failed (full log: $BUILD_LOG)"
    exit 1
  fi
  log "$tag built in $(( $(date +%s) - start )) s"
done
