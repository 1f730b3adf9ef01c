#!/usr/bin/env bash
# End-to-end run on a local kind cluster: build the images, install both charts, train
# through the tensorflow-io Kafka reader against the chart's (ZooKeeper-mode) Kafka,
# evaluate, and check that the EvaluationRun reports an accuracy.
#
# Usage: hack/kind-e2e.sh [up|images|load|deploy|run|diagnose|down|all]...
#   (no argument = all: up images load deploy run). Each step is idempotent.
# Needs: docker (a running engine), kind, and helm + kubectl (`make tools` puts them in .venv/bin).
# Every setting is an environment variable with a default, listed below.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

KIND=${KIND:-kind}
KIND_CLUSTER=${KIND_CLUSTER:-susy}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}           # empty: kind's default node image
NAMESPACE=${NAMESPACE:-susy}
IMAGE_TAG=${IMAGE_TAG:-0.1.0}
PIPELINE_IMAGE=${PIPELINE_IMAGE:-susy-pipeline:$IMAGE_TAG}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-susy-operator:$IMAGE_TAG}
DOCKER=${DOCKER:-docker}
HELM=${HELM:-$ROOT/.venv/bin/helm}
KUBECTL=${KUBECTL:-$ROOT/.venv/bin/kubectl}
PLATFORM_RELEASE=${PLATFORM_RELEASE:-susy-platform}
OPERATOR_RELEASE=${OPERATOR_RELEASE:-susy-operator}
PLATFORM_VALUES=${PLATFORM_VALUES:-}           # extra -f file for the platform chart
TRAINING_RUN=${TRAINING_RUN:-manifests/examples/trainingrun.yaml}
EVALUATION_RUN=${EVALUATION_RUN:-manifests/examples/evaluationrun.yaml}
TIMEOUT=${TIMEOUT:-45m}                        # per custom resource
EXPECT_READER=${EXPECT_READER:-tfio}           # the reader the trainer Job must use

command -v "$HELM" >/dev/null 2>&1 || HELM=helm
command -v "$KUBECTL" >/dev/null 2>&1 || KUBECTL=kubectl
K() { "$KUBECTL" --context "kind-$KIND_CLUSTER" "$@"; }
H() { "$HELM" --kube-context "kind-$KIND_CLUSTER" "$@"; }
log() { printf '\n==> %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "kind-e2e: '$1' not found: $2" >&2; exit 2; }; }

up() {
  need "$DOCKER" "install Docker and start its engine"
  need "$KIND" "install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
  "$DOCKER" info >/dev/null 2>&1 || { echo "kind-e2e: no Docker engine answers 'docker info'" >&2; exit 2; }
  if "$KIND" get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
    log "kind cluster $KIND_CLUSTER exists"
  else
    log "kind create cluster --name $KIND_CLUSTER"
    "$KIND" create cluster --name "$KIND_CLUSTER" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 180s
  fi
  K cluster-info
}

images() {
  need "$DOCKER" "install Docker"
  log "docker build $PIPELINE_IMAGE"
  DOCKER_BUILDKIT=1 "$DOCKER" build -f images/pipeline/Dockerfile -t "$PIPELINE_IMAGE" .
  log "docker build $OPERATOR_IMAGE"
  DOCKER_BUILDKIT=1 "$DOCKER" build -f images/operator/Dockerfile -t "$OPERATOR_IMAGE" .
}

load() {
  log "kind load docker-image $PIPELINE_IMAGE $OPERATOR_IMAGE"
  "$KIND" load docker-image --name "$KIND_CLUSTER" "$PIPELINE_IMAGE" "$OPERATOR_IMAGE"
}

deploy() {
  log "helm upgrade --install $PLATFORM_RELEASE charts/susy-platform"
  H upgrade --install "$PLATFORM_RELEASE" charts/susy-platform --namespace "$NAMESPACE" \
    --create-namespace --wait --timeout 15m ${PLATFORM_VALUES:+-f "$PLATFORM_VALUES"}
  log "helm upgrade --install $OPERATOR_RELEASE charts/susy-operator"
  H upgrade --install "$OPERATOR_RELEASE" charts/susy-operator --namespace "$NAMESPACE" --wait --timeout 5m \
    --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
    --set pipeline.image.repository="${PIPELINE_IMAGE%:*}" --set pipeline.image.tag="${PIPELINE_IMAGE##*:}" \
    --set kafka.bootstrap="$PLATFORM_RELEASE-kafka:9092" --set store.secretName="$PLATFORM_RELEASE-mongodb"
  log "helm test"
  H test "$PLATFORM_RELEASE" --namespace "$NAMESPACE" --timeout 5m
  H test "$OPERATOR_RELEASE" --namespace "$NAMESPACE" --timeout 5m
}

# wait_phase FILE: waits for status.phase=Succeeded with `kubectl wait`, in slices, so that a
# Failed phase stops the wait at once instead of at the timeout.
wait_phase() {
  local file=$1 deadline=$(( $(date +%s) + $(to_seconds "$TIMEOUT") )) phase
  while :; do
    if K -n "$NAMESPACE" wait -f "$file" --for=jsonpath='{.status.phase}'=Succeeded --timeout=30s >/dev/null 2>&1; then
      K -n "$NAMESPACE" get -f "$file"
      return 0
    fi
    phase=$(K -n "$NAMESPACE" get -f "$file" -o jsonpath='{.status.phase}' 2>/dev/null || true)
    echo "  $(date +%T) $file: phase ${phase:-<none>}" >&2
    if [[ $phase == Failed ]]; then
      K -n "$NAMESPACE" get -f "$file" -o yaml >&2
      return 1
    fi
    (( $(date +%s) < deadline )) || { echo "kind-e2e: $file not Succeeded after $TIMEOUT" >&2; return 1; }
  done
}

to_seconds() {  # 45m, 30s, 1h, or plain seconds
  local v=$1
  case $v in *h) echo $(( ${v%h} * 3600 ));; *m) echo $(( ${v%m} * 60 ));; *s) echo "${v%s}";; *) echo "$v";; esac
}

run() {
  [[ -f $TRAINING_RUN && -f $EVALUATION_RUN ]] || { echo "kind-e2e: $TRAINING_RUN or $EVALUATION_RUN is missing" >&2; exit 2; }
  log "kubectl apply -f $TRAINING_RUN"
  K -n "$NAMESPACE" apply -f "$TRAINING_RUN"
  local tr
  tr=$(K -n "$NAMESPACE" get -f "$TRAINING_RUN" -o jsonpath='{.metadata.name}')
  wait_phase "$TRAINING_RUN" || { diagnose; exit 1; }
  # The point of this run: training went through the reader we expect (tfio by default).
  local trainer
  trainer=$(K -n "$NAMESPACE" get jobs -l "susy.dev/trainingrun=$tr,app.kubernetes.io/component=trainer" \
              -o jsonpath='{.items[0].spec.template.spec.containers[0].command} {.items[0].spec.template.spec.containers[0].args} {.items[0].spec.template.spec.containers[0].env}')
  echo "trainer Job: $trainer" >&2
  [[ $trainer == *"\"--reader\",\"$EXPECT_READER\""* ]] \
    || { echo "kind-e2e: the trainer Job does not run with --reader $EXPECT_READER" >&2; exit 1; }
  log "kubectl apply -f $EVALUATION_RUN"
  K -n "$NAMESPACE" apply -f "$EVALUATION_RUN"
  wait_phase "$EVALUATION_RUN" || { diagnose; exit 1; }
  local accuracy
  accuracy=$(K -n "$NAMESPACE" get -f "$EVALUATION_RUN" -o jsonpath='{.status.accuracy}')
  [[ -n $accuracy ]] || { echo "kind-e2e: the EvaluationRun has no status.accuracy" >&2; diagnose; exit 1; }
  log "Succeeded: accuracy $accuracy"
  echo "accuracy=$accuracy"
}

diagnose() {
  log "diagnostics"
  K -n "$NAMESPACE" get trainingruns,evaluationruns,jobs,pods -o wide || true
  K -n "$NAMESPACE" describe trainingruns,evaluationruns || true
  K -n "$NAMESPACE" logs "deployment/$OPERATOR_RELEASE" --tail=200 || true
  local pod
  for pod in $(K -n "$NAMESPACE" get pods -l app.kubernetes.io/managed-by=susy-operator -o name 2>/dev/null); do
    echo "--- $pod" >&2
    K -n "$NAMESPACE" logs "$pod" --tail=80 || true
  done
}

down() {
  need "$KIND" "install kind"
  log "kind delete cluster --name $KIND_CLUSTER"
  "$KIND" delete cluster --name "$KIND_CLUSTER"
}

[[ $# -gt 0 ]] || set -- all
for step in "$@"; do
  case $step in
    up|images|load|deploy|run|diagnose|down) "$step" ;;
    all) up; images; load; deploy; run ;;
    *) echo "usage: $0 [up|images|load|deploy|run|diagnose|down|all]..." >&2; exit 2 ;;
  esac
done
