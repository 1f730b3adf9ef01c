#!/usr/bin/env bash
# Run a command (the test suite) with a Docker engine and freshly built images where possible:
#   hack/with-docker.sh COMMAND...
# Ensures an engine (hack/docker-engine.sh), builds the images (hack/build-images.sh; cached
# layers make a rebuild after a source change take seconds), runs COMMAND, and stops the engine
# if it started one. Where no engine can run or the build fails, COMMAND still runs, with
# SUSY_DOCKER_UNAVAILABLE saying why: the container tests skip with that reason. With
# SUSY_REQUIRE_DOCKER=1 (as .ci/run sets it where it has set up an engine) that is an error.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

reason=""
if "$ROOT/hack/docker-engine.sh" ensure; then
  trap '"$ROOT/hack/docker-engine.sh" stop' EXIT
  start=$(date +%s)
  if "$ROOT/hack/build-images.sh"; then
    echo "with-docker: images ready in $(( $(date +%s) - start )) s" >&2
  else
    reason="the image build failed (hack/build-images.sh)"
  fi
else
  reason="no Docker engine could be started here (hack/docker-engine.sh ensure)"
fi
if [[ -n $reason ]]; then
  if [[ ${SUSY_REQUIRE_DOCKER:-0} == 1 ]]; then
    echo "with-docker: $reason, and SUSY_REQUIRE_DOCKER=1" >&2
    exit 1
  fi
  echo "with-docker: $reason; the container tests will skip" >&2
  export SUSY_DOCKER_UNAVAILABLE=$reason
fi
"$@"
