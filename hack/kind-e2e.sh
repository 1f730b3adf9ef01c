#!/usr/bin/env bash
# End-to-end run on a local kind cluster: build the images, install both charts, train
# through the tensorflow-io Kafka reader against the chart's (ZooKeeper-mode) Kafka,
# evaluate, and check that the EvaluationRun reports an accuracy.
#
# Usage: hack/kind-e2e.sh [preflight|up|images|load|deploy|run|diagnose|down|all]...
#   (no argument = all: up images load deploy run). Each step is idempotent.
# Needs: docker (a running engine), kind >= MIN_KIND_VERSION, and helm + kubectl (`make tools`
# puts them in .venv/bin); a cluster of Kubernetes >= MIN_K8S_VERSION whose nodes have at least
# MIN_CPU_MILLI and MIN_MEMORY_MI allocatable. `preflight` checks all of it and says what is missing.
# Every setting is an environment variable with a default, listed below.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

KIND=${KIND:-kind}
KIND_CLUSTER=${KIND_CLUSTER:-susy}
# The node image, by digest: kind v0.31.0's default (kubernetes-sigs/kind v0.31.0,
# pkg/apis/config/defaults/image.go). kind supports a node image with the kind release it was
# built for (kind docs, design/node-image), hence MIN_KIND_VERSION.
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-kindest/node:v1.35.0@sha256:452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f}
MIN_KIND_VERSION=${MIN_KIND_VERSION:-0.31.0}
# The charts' kubeVersion: the evaluator's backoffLimitPerIndex/FailIndex are alpha and off in 1.28.
MIN_K8S_VERSION=${MIN_K8S_VERSION:-1.29.0}
# What the run requests at its peak (the evaluation), summed over the nodes' allocatable:
# kube-system about 950m/290Mi, the platform (charts/susy-platform/ci/kind-values.yaml) 400m/1216Mi,
# the operator 50m/128Mi, three evaluator shards (hack/e2e/evaluationrun.yaml) 750m/3Gi; plus
# room for the shards' 1.5Gi limits. A 4-CPU, 8 GiB Docker Desktop VM has about 4/7.7Gi.
MIN_CPU_MILLI=${MIN_CPU_MILLI:-2500}
MIN_MEMORY_MI=${MIN_MEMORY_MI:-6144}
NAMESPACE=${NAMESPACE:-susy}
IMAGE_TAG=${IMAGE_TAG:-0.1.0}
PIPELINE_IMAGE=${PIPELINE_IMAGE:-susy-pipeline:$IMAGE_TAG}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-susy-operator:$IMAGE_TAG}
DOCKER=${DOCKER:-docker}
HELM=${HELM:-$ROOT/.venv/bin/helm}
KUBECTL=${KUBECTL:-$ROOT/.venv/bin/kubectl}
PLATFORM_RELEASE=${PLATFORM_RELEASE:-susy-platform}
OPERATOR_RELEASE=${OPERATOR_RELEASE:-susy-operator}
PLATFORM_VALUES=${PLATFORM_VALUES:-charts/susy-platform/ci/kind-values.yaml}  # -f file for the platform chart
# The example CRs (manifests/examples/) with requests that fit the node (MIN_* above).
TRAINING_RUN=${TRAINING_RUN:-hack/e2e/trainingrun.yaml}
EVALUATION_RUN=${EVALUATION_RUN:-hack/e2e/evaluationrun.yaml}
# Then the test set on a PersistentVolumeClaim (kind's default StorageClass): a Job writes the
# sample's held-out rows x15 to the claim, and an EvaluationRun mounts it ("" skips this part).
DATASET=${DATASET:-manifests/examples/pvc/dataset.yaml}
DATASET_JOB=${DATASET_JOB:-susy-data-scale}
PVC_EVALUATION_RUN=${PVC_EVALUATION_RUN:-hack/e2e/evaluationrun-pvc.yaml}
TIMEOUT=${TIMEOUT:-45m}                        # per custom resource
EXPECT_READER=${EXPECT_READER:-confluent}      # the reader the trainer Job must use (the default)

command -v "$HELM" >/dev/null 2>&1 || HELM=helm
command -v "$KUBECTL" >/dev/null 2>&1 || KUBECTL=kubectl
K() { "$KUBECTL" --context "kind-$KIND_CLUSTER" "$@"; }
H() { "$HELM" --kube-context "kind-$KIND_CLUSTER" "$@"; }
log() { printf '\n==> %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "kind-e2e: '$1' not found: $2" >&2; exit 2; }; }

die() { echo "kind-e2e: $*" >&2; exit 2; }

# version_at_least HAVE WANT: true when HAVE >= WANT (dotted numbers; a "-suffix" is ignored).
version_at_least() {
  local have=${1%%-*} want=${2%%-*}
  [[ $(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n 1) == "$want" ]]
}

to_millicores() {  # 4, 3500m
  case $1 in *m) echo "${1%m}" ;; *) echo $(( $1 * 1000 )) ;; esac
}

to_mebibytes() {  # 8024316Ki, 7836Mi, 8Gi, or bytes
  local v=$1
  case $v in
    *Ki) echo $(( ${v%Ki} / 1024 )) ;; *Mi) echo "${v%Mi}" ;; *Gi) echo $(( ${v%Gi} * 1024 )) ;;
    *k) echo $(( ${v%k} * 1000 / 1048576 )) ;; *M) echo $(( ${v%M} * 1000000 / 1048576 )) ;;
    *G) echo $(( ${v%G} * 1000000000 / 1048576 )) ;; *) echo $(( v / 1048576 )) ;;
  esac
}

# preflight_kind: the tools, and a kind release that supports the pinned node image.
preflight_kind() {
  need "$DOCKER" "install Docker and start its engine"
  need "$KIND" "install kind >= v$MIN_KIND_VERSION (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
  "$DOCKER" info >/dev/null 2>&1 || die "no Docker engine answers 'docker info'"
  local line version
  line=$("$KIND" version 2>/dev/null || true)
  version=$(sed -n 's/^kind v\([0-9][0-9.]*[^ ]*\).*/\1/p' <<<"$line")
  echo "kind-e2e: $KIND version: ${line:-<no answer>}" >&2
  [[ -n $version ]] || die "cannot read the kind version from '$KIND version'; kind >= v$MIN_KIND_VERSION is needed"
  version_at_least "$version" "$MIN_KIND_VERSION" \
    || die "kind v$version is too old: the node image $KIND_NODE_IMAGE is built for kind v$MIN_KIND_VERSION or newer; install a newer kind"
}

# preflight_cluster: the API server's version (the charts' kubeVersion) and the nodes' allocatable
# CPU and memory against what the run requests (MIN_CPU_MILLI, MIN_MEMORY_MI).
preflight_cluster() {
  local server cpu=0 mem=0 name c m missing=""
  server=$(K get --raw /version 2>/dev/null | sed -n 's/.*"gitVersion": *"v\([^"]*\)".*/\1/p')
  echo "kind-e2e: Kubernetes server version: ${server:-<no answer>} (needs >= $MIN_K8S_VERSION)" >&2
  [[ -n $server ]] || die "no Kubernetes API server answers for context kind-$KIND_CLUSTER (run '$0 up' first)"
  version_at_least "$server" "$MIN_K8S_VERSION" \
    || die "Kubernetes $server is too old: the charts need >= $MIN_K8S_VERSION (the evaluator Job's backoffLimitPerIndex); recreate the cluster with KIND_NODE_IMAGE=$KIND_NODE_IMAGE"
  while read -r name c m; do
    [[ -n $name ]] || continue
    cpu=$(( cpu + $(to_millicores "$c") )); mem=$(( mem + $(to_mebibytes "$m") ))
  done < <(K get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.status.allocatable.cpu} {.status.allocatable.memory}{"\n"}{end}')
  echo "kind-e2e: nodes' allocatable: ${cpu}m CPU, ${mem} MiB memory (the run needs ${MIN_CPU_MILLI}m, ${MIN_MEMORY_MI} MiB)" >&2
  (( cpu >= MIN_CPU_MILLI )) || missing="$(( MIN_CPU_MILLI - cpu ))m CPU"
  (( mem >= MIN_MEMORY_MI )) || missing="${missing:+$missing and }$(( MIN_MEMORY_MI - mem )) MiB memory"
  if [[ -n $missing ]]; then
    die "the nodes lack $missing for this run's pods (they would stay Pending): give Docker more CPUs/memory (Docker Desktop: Settings > Resources) and recreate the cluster"
  fi
}

preflight() {
  preflight_kind
  if "$KIND" get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
    preflight_cluster
  fi
}

up() {
  preflight_kind
  if "$KIND" get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
    log "kind cluster $KIND_CLUSTER exists"
  else
    log "kind create cluster --name $KIND_CLUSTER --image $KIND_NODE_IMAGE"
    "$KIND" create cluster --name "$KIND_CLUSTER" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 180s
  fi
  K cluster-info
  preflight_cluster
}

images() {
  log "hack/build-images.sh: $PIPELINE_IMAGE $OPERATOR_IMAGE"
  DOCKER="$DOCKER" PIPELINE_IMAGE="$PIPELINE_IMAGE" OPERATOR_IMAGE="$OPERATOR_IMAGE" "$ROOT/hack/build-images.sh"
}

# load_image IMAGE: `kind load docker-image`, and when that fails, as it does with Docker's
# containerd image store (default in Docker 29; "ctr: content digest ...: not found",
# kubernetes-sigs/kind#3795, #3845), `docker save` of this platform only plus
# `kind load image-archive` (the workaround kind's docs give, kubernetes-sigs/kind#4247).
load_image() {
  local image=$1 archive platform rc=0
  if "$KIND" load docker-image --name "$KIND_CLUSTER" "$image"; then
    return 0
  fi
  log "kind load docker-image $image failed: docker save + kind load image-archive (kind#3795, #3845)"
  archive=$(mktemp "${TMPDIR:-/tmp}/kind-e2e-image.XXXXXX")
  platform="linux/$("$DOCKER" version -f '{{.Server.Arch}}' 2>/dev/null || echo amd64)"
  # --platform (Docker 28+) keeps other platforms' missing blobs out of the archive.
  "$DOCKER" image save --platform "$platform" -o "$archive" "$image" 2>/dev/null \
    || "$DOCKER" image save -o "$archive" "$image" || rc=$?
  (( rc )) || "$KIND" load image-archive --name "$KIND_CLUSTER" "$archive" || rc=$?
  rm -f "$archive"
  return "$rc"
}

load() {
  log "kind load: $PIPELINE_IMAGE $OPERATOR_IMAGE"
  load_image "$PIPELINE_IMAGE" || die "cannot load $PIPELINE_IMAGE into kind cluster $KIND_CLUSTER"
  load_image "$OPERATOR_IMAGE" || die "cannot load $OPERATOR_IMAGE into kind cluster $KIND_CLUSTER"
}

deploy() {
  preflight_cluster
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
  # The point of this run: training went through the reader we expect (confluent by default).
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
  [[ -n $DATASET ]] || return 0
  log "kubectl apply -f $DATASET (a claim, and a Job that writes the test set to it)"
  K -n "$NAMESPACE" apply -f "$DATASET"
  K -n "$NAMESPACE" wait --for=condition=complete "job/$DATASET_JOB" --timeout=15m \
    || { K -n "$NAMESPACE" logs "job/$DATASET_JOB" --tail=50 >&2 || true; diagnose; exit 1; }
  log "kubectl apply -f $PVC_EVALUATION_RUN"
  K -n "$NAMESPACE" apply -f "$PVC_EVALUATION_RUN"
  wait_phase "$PVC_EVALUATION_RUN" || { diagnose; exit 1; }
  local rows
  rows=$(K -n "$NAMESPACE" get -f "$PVC_EVALUATION_RUN" -o jsonpath='{.status.rows} rows, accuracy {.status.accuracy}')
  log "Succeeded from the claim: $rows"
  echo "pvc=$rows"
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
    preflight|up|images|load|deploy|run|diagnose|down) "$step" ;;
    all) up; images; load; deploy; run ;;
    *) echo "usage: $0 [preflight|up|images|load|deploy|run|diagnose|down|all]..." >&2; exit 2 ;;
  esac
done
