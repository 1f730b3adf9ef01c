"""The Helm charts (charts/susy-platform, charts/susy-operator), rendered with the real `helm`.

`make test` installs helm into .venv/bin first (`make tools`, mk/tools.mk). What is checked:

- `helm lint --strict` is clean for every values set (defaults and each `ci/*-values.yaml`);
- every rendered object validates against the Kubernetes OpenAPI schemas (kubernetes-validate,
  strict: unknown fields fail) of the oldest supported and the newest shipped release;
- the example custom resources validate against the CRD schemas, strictly as `kubectl apply` does;
- security: non-root, no privilege escalation, dropped capabilities, read-only root filesystems
  where the image allows it, and no credential inline in any manifest;
- the operator's Role: exactly the rules below, namespaced unless watchAllNamespaces, and
  covering every Kubernetes API call the operator's code makes;
- the chart's CRDs are byte-identical copies of manifests/crds/ (`make sync-crds`).
"""
from __future__ import annotations

import ast
import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHARTS = ROOT / "charts"
PLATFORM = CHARTS / "susy-platform"
OPERATOR = CHARTS / "susy-operator"
CRD_SOURCE = ROOT / "manifests" / "crds"
EXAMPLES = ROOT / "manifests" / "examples"
OPERATOR_SRC = ROOT / "operator" / "susy_operator"
NAMESPACE = "susy"

# The charts' kubeVersion floor (the evaluator's backoffLimitPerIndex and FailIndex are beta,
# on by default, from 1.29) and the newest schema kubernetes-validate ships.
K8S_FLOOR = "1.29"
K8S_VERSIONS = (K8S_FLOOR, ".".join(kubernetes_validate.latest_version().split(".")[:2]))

POD_KINDS = {"Deployment", "StatefulSet", "Job", "Pod", "DaemonSet", "ReplicaSet", "CronJob"}

# Containers allowed a writable root filesystem: the upstream entrypoints of these images
# render their configuration into the image (zoo.cfg, mongod's init files, and in KRaft mode
# Kafka's server.properties). Kafka in ZooKeeper mode renders its own into an emptyDir.
WRITABLE_ROOT = {
    ("StatefulSet", "zookeeper"),
    ("StatefulSet", "kafka"),
    ("StatefulSet", "mongodb"),
}
KAFKA_MODE_ANNOTATION = "susy.example.org/kafka-mode"

# Environment variable names that carry credentials and so must come from a Secret.
SENSITIVE_ENV = re.compile(r"(PASSWORD|PASSWD|TOKEN|_URI$|^MONGODB_URI$|CREDENTIAL|SECRET_KEY)")

GROUP = "susy.dev"
PLURALS = ("trainingruns", "evaluationruns", "continualtrainings")

# The operator's Role, rule by rule (apiGroups, resources, verbs). Widening it must be a
# deliberate edit here and in charts/susy-operator/templates/role.yaml.
EXPECTED_RULES = [
    ([GROUP], ["trainingruns", "evaluationruns", "continualtrainings"], ["list", "watch", "patch"]),
    ([GROUP], ["trainingruns", "evaluationruns"], ["create", "get", "list", "delete"]),
    ([GROUP], ["trainingruns/status", "evaluationruns/status", "continualtrainings/status"], ["patch"]),
    ([GROUP], ["trainingruns/finalizers", "evaluationruns/finalizers", "continualtrainings/finalizers"], ["update"]),
    (["batch"], ["jobs"], ["create", "get", "list", "watch", "patch"]),
    (["kueue.x-k8s.io"], ["workloads"], ["list", "patch"]),
    ([""], ["pods"], ["list", "watch"]),
    ([""], ["secrets", "persistentvolumeclaims"], ["get"]),
    ([""], ["events"], ["create"]),
]
PEERING_RULE = (["kopf.dev"], ["kopfpeerings"], ["get", "list", "watch", "patch"])
CLUSTER_PEERING_RULE = (["kopf.dev"], ["clusterkopfpeerings"], ["get", "list", "watch", "patch"])

# What kopf itself calls for the handlers the operator registers (on.create/resume/field/timer on
# both resources, on.event on its Jobs and pods, kopf.event, annotation progress storage):
# list+watch to serve, patch for finalizers/annotations, status patches for handler results,
# core Events.
KOPF_CALLS = {
    *((GROUP, p, v) for p in PLURALS for v in ("list", "watch", "patch")),
    *((GROUP, f"{p}/status", "patch") for p in PLURALS),
    ("batch", "jobs", "list"), ("batch", "jobs", "watch"), ("", "pods", "list"), ("", "pods", "watch"),
    ("", "events", "create"),
}

# Granted although the operator never calls them: the OwnerReferencesPermissionEnforcement
# admission plugin (OpenShift, hardened clusters) lets a Job carry an ownerReference with
# blockOwnerDeletion only when its creator may update the owner's finalizers
# (kubernetes plugin/pkg/admission/gc/gc_admission.go; issue 12, defect 7).
ADMISSION_GRANTS = {(GROUP, f"{p}/finalizers", "update") for p in PLURALS}

# kubernetes-client method -> (group, resource, verb), for the static scan of the operator code.
CLIENT_CALLS = {
    "create_namespaced_job": ("batch", "jobs", "create"),
    "read_namespaced_job": ("batch", "jobs", "get"),
    "read_namespaced_job_status": ("batch", "jobs/status", "get"),
    "list_namespaced_job": ("batch", "jobs", "list"),
    "list_job_for_all_namespaces": ("batch", "jobs", "list"),
    "delete_namespaced_job": ("batch", "jobs", "delete"),
    "delete_collection_namespaced_job": ("batch", "jobs", "deletecollection"),
    "patch_namespaced_job": ("batch", "jobs", "patch"),
    "replace_namespaced_job": ("batch", "jobs", "update"),
    "read_namespaced_pod": ("", "pods", "get"),
    "list_namespaced_pod": ("", "pods", "list"),
    "read_namespaced_pod_log": ("", "pods/log", "get"),
    "create_namespaced_event": ("", "events", "create"),
    "read_namespaced_secret": ("", "secrets", "get"),
    "list_namespaced_secret": ("", "secrets", "list"),
    "read_namespaced_persistent_volume_claim": ("", "persistentvolumeclaims", "get"),
    "read_namespaced_config_map": ("", "configmaps", "get"),
}
CUSTOM_OBJECT_CALLS = {
    "get_namespaced_custom_object": "get",
    "list_namespaced_custom_object": "list",
    "list_cluster_custom_object": "list",
    "patch_namespaced_custom_object": "patch",
    "replace_namespaced_custom_object": "update",
    "create_namespaced_custom_object": "create",
    "delete_namespaced_custom_object": "delete",
    "get_namespaced_custom_object_status": "get/status",
    "patch_namespaced_custom_object_status": "patch/status",
    "replace_namespaced_custom_object_status": "update/status",
}
# A name in a call's arguments -> the plurals it can be. k8s.py's `child_plural` parameters carry
# a ContinualTraining's children only (continual_training.py passes TRAINING_PLURAL or EVALUATION_PLURAL).
PLURAL_CONSTANTS = {"TRAINING_PLURAL": {"trainingruns"}, "EVALUATION_PLURAL": {"evaluationruns"},
                    "CONTINUAL_PLURAL": {"continualtrainings"}, "child_plural": {"trainingruns", "evaluationruns"}}


# ---------------------------------------------------------------------------------------------
# helm


def _helm() -> str:
    for candidate in (ROOT / ".venv" / "bin" / "helm", Path(sys.prefix) / "bin" / "helm"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("helm")
    if found:
        return found
    reason = "helm is not installed: run `make tools` (make test does it first)"
    print(f"SKIP: {reason}", file=sys.stderr)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def helm() -> str:
    return _helm()


def test_tools_run(helm: str) -> None:
    """`make tools` installed working helm (4.x) and kubectl binaries next to it."""
    assert run_helm(helm, "version", "--short").startswith("v4.")
    kubectl = Path(helm).with_name("kubectl")
    if kubectl.exists():
        out = subprocess.run([str(kubectl), "version", "--client"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
        assert "Client Version: v1." in out


def value_sets(chart: Path) -> list[Path | None]:
    return [None, *sorted((chart / "ci").glob("*-values.yaml"))]


def case_id(chart: Path, values: Path | None) -> str:
    return f"{chart.name}:{values.name if values else 'defaults'}"


CASES = [(chart, values) for chart in (PLATFORM, OPERATOR) for values in value_sets(chart)]
CASE_IDS = [case_id(c, v) for c, v in CASES]


def run_helm(helm: str, *args: str) -> str:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@functools.lru_cache(maxsize=None)
def _render(helm: str, chart: Path, values: Path | None, extra: tuple[str, ...] = ()) -> tuple[dict, ...]:
    release = chart.name  # "susy-platform" / "susy-operator", as the docs install them
    args = ["template", release, str(chart), "--namespace", NAMESPACE, "--include-crds"]
    if values is not None:
        args += ["--values", str(values)]
    for item in extra:
        args += ["--set", item]
    return tuple(doc for doc in yaml.safe_load_all(run_helm(helm, *args)) if doc)


def render(helm: str, chart: Path, values: Path | None = None, *sets: str) -> list[dict]:
    return list(_render(helm, chart, values, tuple(sets)))


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


def pod_spec(obj: dict) -> dict | None:
    kind = obj.get("kind")
    if kind == "Pod":
        return obj["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in POD_KINDS:
        return obj["spec"]["template"]["spec"]
    return None


def containers(obj: dict) -> Iterator[dict]:
    spec = pod_spec(obj)
    if spec:
        yield from spec.get("initContainers", [])
        yield from spec.get("containers", [])


# ---------------------------------------------------------------------------------------------
# lint and schema validation


@pytest.mark.parametrize(("chart", "values"), CASES, ids=CASE_IDS)
def test_helm_lint_is_clean(helm: str, chart: Path, values: Path | None) -> None:
    args = ["lint", "--strict", str(chart), "--namespace", NAMESPACE]
    if values is not None:
        args += ["--values", str(values)]
    out = run_helm(helm, *args)
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


@pytest.mark.parametrize("chart", [PLATFORM, OPERATOR], ids=lambda c: c.name)
def test_charts_require_kubernetes_1_29(helm: str, chart: Path) -> None:
    """1.28 serves backoffLimitPerIndex and FailIndex (the evaluator Job) only behind an alpha
    gate: the API server drops the field and refuses the Job with 422. Helm refuses 1.28."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    assert meta["kubeVersion"] == f">={K8S_FLOOR}.0-0"
    proc = subprocess.run([helm, "template", "x", str(chart), "--kube-version", "1.28.15"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "incompatible with Kubernetes v1.28.15" in proc.stderr, proc.stderr
    run_helm(helm, "template", "x", str(chart), "--kube-version", f"{K8S_FLOOR}.0")


def test_every_chart_has_a_non_default_values_file() -> None:
    for chart in (PLATFORM, OPERATOR):
        assert list((chart / "ci").glob("*-values.yaml")), f"{chart.name} has no ci/*-values.yaml"


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize(("chart", "values"), CASES, ids=CASE_IDS)
def test_rendered_objects_validate_against_kubernetes_schemas(
        helm: str, chart: Path, values: Path | None, k8s_version: str) -> None:
    objs = render(helm, chart, values)
    assert objs, "nothing rendered"
    failures = []
    for obj in objs:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{name}: {error.message} at {'.'.join(map(str, error.path))}")
        except kubernetes_validate.SchemaNotFoundError as error:
            failures.append(f"{name}: no schema ({error})")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# security


@pytest.mark.parametrize(("chart", "values"), CASES, ids=CASE_IDS)
def test_workloads_are_hardened(helm: str, chart: Path, values: Path | None) -> None:
    objs = render(helm, chart, values)
    workloads = [o for o in objs if o.get("kind") in POD_KINDS]
    assert workloads
    for obj in workloads:
        spec = pod_spec(obj)
        pod_sc = spec.get("securityContext") or {}
        for c in containers(obj):
            where = f"{obj['kind']}/{obj['metadata']['name']} container {c['name']}"
            sc = c.get("securityContext") or {}
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            assert non_root is True, f"{where}: runAsNonRoot is not true"
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert uid is None or uid != 0, f"{where}: runs as uid 0"
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
            assert sc.get("privileged") in (None, False), f"{where}: privileged"
            assert "ALL" in (sc.get("capabilities") or {}).get("drop", []), f"{where}: capabilities not dropped"
            assert not (sc.get("capabilities") or {}).get("add"), f"{where}: adds capabilities"
            writable = (obj["kind"], c["name"]) in WRITABLE_ROOT and not (
                c["name"] == "kafka" and obj["metadata"].get("annotations", {}).get(KAFKA_MODE_ANNOTATION) == "zookeeper")
            if writable:
                assert sc.get("readOnlyRootFilesystem") is False, f"{where}: say so explicitly"
            else:
                assert sc.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem is writable"
            assert c.get("resources", {}).get("requests") and c["resources"].get("limits"), \
                f"{where}: resources"
            assert ":" in c["image"] and not c["image"].endswith(":latest"), f"{where}: unpinned {c['image']}"
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")


@pytest.mark.parametrize(("chart", "values"), CASES, ids=CASE_IDS)
def test_no_credentials_inline(helm: str, chart: Path, values: Path | None) -> None:
    objs = render(helm, chart, values)
    for obj in objs:
        for c in containers(obj):
            for env in c.get("env", []):
                if SENSITIVE_ENV.search(env["name"]):
                    where = f"{obj['kind']}/{obj['metadata']['name']} {c['name']} env {env['name']}"
                    assert "value" not in env, f"{where} is inline"
                    assert "secretKeyRef" in env.get("valueFrom", {}), f"{where} is not from a Secret"
            for env in c.get("env", []):
                assert not re.search(r"mongodb(\+srv)?://[^@/\s]*:[^@/\s]*@", str(env.get("value", ""))), \
                    f"{obj['kind']}/{obj['metadata']['name']}: a URI with a password in env {env['name']}"
    # A ConfigMap never holds a password; the only Secret is the generated MongoDB one.
    for cm in by_kind(objs, "ConfigMap"):
        assert not re.search(r"(?i)pwd\s*:\s*[\"'][^\"']+[\"']", str(cm.get("data"))), cm["metadata"]["name"]
    for secret in by_kind(objs, "Secret"):
        assert chart == PLATFORM and secret["metadata"]["name"].endswith("-mongodb"), secret["metadata"]["name"]


def test_mongodb_secret_is_generated_once_and_kept(helm: str) -> None:
    objs = render(helm, PLATFORM)
    (secret,) = by_kind(objs, "Secret")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert {"mongodb-root-username", "mongodb-root-password", "mongodb-username", "mongodb-password",
            "uri"} <= set(secret["data"])
    import base64
    uri = base64.b64decode(secret["data"]["uri"]).decode()
    password = base64.b64decode(secret["data"]["mongodb-password"]).decode()
    assert re.fullmatch(
        rf"mongodb://app:{re.escape(password)}@susy-platform-mongodb\.{NAMESPACE}\.svc\.cluster\.local:27017"
        r"/bigdata\?authSource=admin", uri), uri
    template = (PLATFORM / "templates" / "mongodb-secret.yaml").read_text()
    assert "lookup" in template and "randAlphaNum" in template
    # With an existing Secret the chart creates none and points everything at it.
    objs = render(helm, PLATFORM, PLATFORM / "ci" / "ensemble-values.yaml")
    assert not by_kind(objs, "Secret")
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for o in objs for c in containers(o)
            for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {"my-mongodb-credentials"}


# ---------------------------------------------------------------------------------------------
# susy-platform


def test_platform_defaults_zookeeper_mode_kafka_3_9(helm: str) -> None:
    objs = render(helm, PLATFORM)
    sets = {o["metadata"]["name"]: o for o in by_kind(objs, "StatefulSet")}
    assert set(sets) == {"susy-platform-kafka", "susy-platform-zookeeper", "susy-platform-mongodb"}
    kafka = sets["susy-platform-kafka"]["spec"]["template"]["spec"]["containers"][0]
    assert re.fullmatch(r"apache/kafka:3\.9\.\d+", kafka["image"]), "ZooKeeper mode needs Kafka 3.9.x"
    env = {e["name"]: e.get("value") for e in kafka["env"]}
    assert "KAFKA_PROCESS_ROLES" not in env and "CLUSTER_ID" not in env
    zk = sets["susy-platform-zookeeper"]["spec"]["template"]["spec"]["containers"][0]
    assert re.fullmatch(r"zookeeper:3\.(8|9)\.\d+", zk["image"])
    mongo = sets["susy-platform-mongodb"]["spec"]["template"]["spec"]["containers"][0]
    assert re.fullmatch(r"mongo:(7|8)\.0\.\d+", mongo["image"])


def _kafka(objs: list[dict]) -> tuple[dict, dict]:
    (sts,) = [o for o in by_kind(objs, "StatefulSet") if o["metadata"]["name"].endswith("-kafka")]
    return sts, sts["spec"]["template"]["spec"]["containers"][0]


def _properties(text: str) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not a property line: {line!r}"
            assert key not in props, f"{key} set twice"
            props[key] = value
    return props


def _start_kafka(tmp_path: Path, container: dict, pod_name: str, pod_index: str) -> tuple[dict, list, dict]:
    """Runs the Kafka container's command as the pod does (bash -c, the pod's env), with
    bin/kafka-server-start.sh replaced by a stub that records its arguments and environment.
    Returns (server.properties, the stub's arguments, the stub's environment)."""
    assert container["command"][:2] == ["bash", "-c"] and len(container["command"]) == 3
    script = container["command"][2]
    conf = tmp_path / "conf"
    conf.mkdir()
    stub = tmp_path / "kafka-server-start.sh"
    stub.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$STUB_OUT/args"\nenv > "$STUB_OUT/env"\n')
    stub.chmod(0o755)
    for line, replacement in (("conf=/etc/kafka/broker\n", f"conf={conf}\n"),
                              ("start=/opt/kafka/bin/kafka-server-start.sh\n", f"start={stub}\n")):
        assert script.count(line) == 1, line
        script = script.replace(line, replacement)
    env = {"PATH": "/usr/bin:/bin", "STUB_OUT": str(tmp_path), "POD_NAME": pod_name, "POD_INDEX": pod_index}
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    seen = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)
    return _properties((conf / "server.properties").read_text()), (tmp_path / "args").read_text().split(), seen


@pytest.mark.parametrize(("values", "replicas"), [(None, 1), (PLATFORM / "ci" / "ensemble-values.yaml", 3)],
                         ids=["defaults", "ensemble"])
def test_kafka_zookeeper_mode_starts_the_broker_itself(helm: str, tmp_path: Path, values: Path | None,
                                                       replicas: int) -> None:
    """ZooKeeper mode bypasses the image's launcher, whose `KafkaDockerWrapper setup` formats
    storage with StorageTool and so always fails without process.roles (apache/kafka 3.9:
    docker/jvm/launch, core/src/main/scala/kafka/tools/StorageTool.scala; KAFKA-16453). The
    container writes a complete server.properties and execs bin/kafka-server-start.sh with it."""
    objs = render(helm, PLATFORM, values)
    sts, kafka = _kafka(objs)
    assert sts["metadata"]["annotations"][KAFKA_MODE_ANNOTATION] == "zookeeper"
    name, ns = sts["metadata"]["name"], NAMESPACE
    (zk,) = [o for o in by_kind(objs, "StatefulSet") if o["metadata"]["name"].endswith("-zookeeper")]
    zk_name = zk["metadata"]["name"]
    services = {s["metadata"]["name"]: s for s in by_kind(objs, "Service")}
    # Per-pod DNS names exist only through a headless Service named as the StatefulSet's serviceName.
    for workload in (sts, zk):
        svc = services[workload["spec"]["serviceName"]]
        assert svc["spec"]["clusterIP"] == "None"
    index = replicas - 1
    props, args, seen = _start_kafka(tmp_path, kafka, f"{name}-{index}", str(index))
    rf = min(replicas, 3)
    expected = {
        "broker.id": str(index),
        "advertised.listeners": f"PLAINTEXT://{name}-{index}.{sts['spec']['serviceName']}.{ns}.svc.cluster.local:9092",
        "zookeeper.connect": ",".join(f"{zk_name}-{i}.{zk['spec']['serviceName']}.{ns}.svc.cluster.local:2181"
                                      for i in range(zk["spec"]["replicas"])),
        "listeners": "PLAINTEXT://0.0.0.0:9092",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": "/var/lib/kafka/data/logs",
        "offsets.topic.replication.factor": str(rf),
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": str(max(1, rf - 1)),
        "default.replication.factor": str(rf),
        "num.partitions": "3",
        "auto.create.topics.enable": "true" if values is None else "false",
        "log.retention.hours": "168",
        "group.initial.rebalance.delay.ms": "0",
    }
    if values is not None:
        expected["message.max.bytes"] = "2097152"  # extraEnv KAFKA_MESSAGE_MAX_BYTES, the image's rule
    assert props == expected
    assert int(props["transaction.state.log.min.isr"]) <= rf <= sts["spec"]["replicas"]
    conf = tmp_path / "conf"
    assert args == [str(conf / "server.properties")]
    # Logging: stdout only, no GC log file (kafka-run-class.sh's -loggc), LOG_DIR on a volume.
    assert seen["KAFKA_LOG4J_OPTS"] == f"-Dlog4j.configuration=file:{conf}/log4j.properties"
    log4j = (conf / "log4j.properties").read_text()
    assert "FileAppender" not in log4j and "stdout" in log4j
    assert "-loggc" not in seen["EXTRA_ARGS"]
    assert seen["KAFKA_HEAP_OPTS"] == "-Xms256m -Xmx512m"
    # Everything the broker writes is on a mounted volume; the root filesystem is read-only.
    assert kafka["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in kafka["volumeMounts"]}
    assert mounts["/etc/kafka/broker"] == "config" and mounts["/tmp"] == "tmp"
    assert seen["LOG_DIR"].startswith("/tmp/")
    assert props["log.dirs"].startswith("/var/lib/kafka/data/") and mounts["/var/lib/kafka/data"] == "data"
    claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
    assert claims == ["data"], "the partitions live on the PVC"
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["config"] and "emptyDir" in volumes["tmp"]
    # No KRaft settings, and nothing for the image's launcher to turn into properties.
    assert not [e["name"] for e in kafka["env"] if e["name"] in
                ("KAFKA_PROCESS_ROLES", "KAFKA_NODE_ID", "CLUSTER_ID", "KAFKA_ZOOKEEPER_CONNECT")]


def test_kafka_zookeeper_mode_broker_id_from_the_pod_name(helm: str, tmp_path: Path) -> None:
    """Without the pod-index label the ordinal comes from the pod name; with neither, no start."""
    _, kafka = _kafka(render(helm, PLATFORM))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    props, _, _ = _start_kafka(tmp_path / "a", kafka, "susy-platform-kafka-7", "")
    assert props["broker.id"] == "7"
    with pytest.raises(AssertionError, match="no StatefulSet ordinal"):
        _start_kafka(tmp_path / "b", kafka, "kafka", "")


def test_kafka_kraft_mode_keeps_the_image_launcher(helm: str) -> None:
    sts, kafka = _kafka(render(helm, PLATFORM, PLATFORM / "ci" / "kraft-values.yaml"))
    assert sts["metadata"]["annotations"][KAFKA_MODE_ANNOTATION] == "kraft"
    assert "command" not in kafka and "args" not in kafka, "the image's CMD, /etc/kafka/docker/run"
    assert kafka["securityContext"]["readOnlyRootFilesystem"] is False, "its launcher writes /opt/kafka/config"


@pytest.mark.parametrize("values", [v for v in value_sets(PLATFORM) if v is None or "kraft" not in v.name],
                         ids=lambda v: v.name if v else "defaults")
def test_zookeeper_transaction_log_is_on_the_pvc(helm: str, values: Path | None) -> None:
    """dataLogDir (the image's ZOO_DATA_LOG_DIR, written into zoo.cfg by 31z4/zookeeper-docker's
    docker-entrypoint.sh; /datalog by default) must be on the data volume, which is the PVC."""
    objs = render(helm, PLATFORM, values)
    (zk,) = [o for o in by_kind(objs, "StatefulSet") if o["metadata"]["name"].endswith("-zookeeper")]
    c = zk["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    log_dir = env["ZOO_DATA_LOG_DIR"]
    (volume,) = [name for path, name in mounts.items() if log_dir == path or log_dir.startswith(path.rstrip("/") + "/")]
    assert volume == "data"
    assert "/datalog" not in mounts
    assert [t["metadata"]["name"] for t in zk["spec"]["volumeClaimTemplates"]] == ["data"]
    assert "data" not in {v["name"] for v in zk["spec"]["template"]["spec"].get("volumes", [])}


def _pod_labels(obj: dict) -> dict[str, str]:
    return obj["metadata"]["labels"] if obj["kind"] == "Pod" else obj["spec"]["template"]["metadata"]["labels"]


def _admits(policy: dict, labels: dict[str, str], port: str) -> bool:
    """Whether a NetworkPolicy lets a pod of this namespace with these labels reach `port` (a
    named container port) of the pods it selects: the rules' semantics for the shapes the chart
    uses (podSelector.matchLabels peers, optionally with a namespaceSelector for other namespaces)."""
    for rule in policy["spec"].get("ingress", []):
        if rule.get("ports") and port not in [p["port"] for p in rule["ports"]]:
            continue
        for peer in rule.get("from", []):
            if "namespaceSelector" in peer:
                continue  # other namespaces only
            if peer["podSelector"]["matchLabels"].items() <= labels.items():
                return True
    return False


def _pipeline_pod_labels() -> list[dict[str, str]]:
    """The labels the operator's builders put on every Job's pods (builders.labels)."""
    from susy_operator import builders, crd
    owners = [builders.Owner(kind=crd.TRAINING_KIND, name="tr", namespace=NAMESPACE, uid="u1"),
              builders.Owner(kind=crd.EVALUATION_KIND, name="er", namespace=NAMESPACE, uid="u2")]
    return [builders.labels(owners[0], crd.PRODUCER), builders.labels(owners[0], crd.TRAINER),
            builders.labels(owners[1], crd.EVALUATOR)]


def test_network_policies_admit_exactly_the_clients(helm: str) -> None:
    """Kafka and MongoDB: the pipeline's Jobs, the operator, this chart's topic Job and helm test
    pods; ZooKeeper: Kafka only. Every selector is checked against the labels the pods carry."""
    objs = render(helm, PLATFORM)
    policies = {p["metadata"]["name"]: p for p in by_kind(objs, "NetworkPolicy")}
    assert set(policies) == {"susy-platform-kafka", "susy-platform-mongodb", "susy-platform-zookeeper"}
    pods = {o["metadata"]["name"]: _pod_labels(o) for o in objs if o["kind"] in ("StatefulSet", "Job", "Pod")}
    kafka, zk, mongo = pods["susy-platform-kafka"], pods["susy-platform-zookeeper"], pods["susy-platform-mongodb"]
    topics_job, kafka_test = pods["susy-platform-kafka-topics"], pods["susy-platform-kafka-test-topics"]
    mongo_test = pods["susy-platform-mongodb-test-ping"]
    (operator,) = [_pod_labels(o) for o in by_kind(render(helm, OPERATOR), "Deployment")]
    pipeline = _pipeline_pod_labels()
    stranger = {"app": "something-else"}
    # Each policy selects its own component's pods, and only those.
    for name, target in (("susy-platform-kafka", kafka), ("susy-platform-mongodb", mongo),
                         ("susy-platform-zookeeper", zk)):
        selector = policies[name]["spec"]["podSelector"]["matchLabels"]
        assert selector.items() <= target.items(), name
        others = [labels for n, labels in pods.items() if labels is not target]
        assert not [o for o in others if selector.items() <= o.items()], f"{name} selects other pods"
        assert policies[name]["spec"]["policyTypes"] == ["Ingress"]
    k, m, z = (policies[f"susy-platform-{c}"] for c in ("kafka", "mongodb", "zookeeper"))
    for client in [*pipeline, operator, topics_job, kafka_test]:
        assert _admits(k, client, "client"), client
    for client in [*pipeline, operator, mongo_test]:
        assert _admits(m, client, "mongodb"), client
    assert _admits(k, kafka, "client") and _admits(k, kafka, "controller"), "brokers reach each other"
    assert _admits(z, kafka, "client")
    assert _admits(z, zk, "follower") and _admits(z, zk, "election")
    for outsider in (stranger, zk, mongo):
        assert not _admits(k, outsider, "client"), outsider
    # (Both helm test pods carry component=test: each may reach both services.)
    for outsider in (stranger, kafka, zk, topics_job):
        assert not _admits(m, outsider, "mongodb"), outsider
    for outsider in (stranger, operator, topics_job, kafka_test, mongo, *pipeline):
        assert not _admits(z, outsider, "client"), outsider
    # Every port a policy names is a named port of the pods it selects.
    for policy, target_obj in ((k, "susy-platform-kafka"), (m, "susy-platform-mongodb"), (z, "susy-platform-zookeeper")):
        (sts,) = [o for o in by_kind(objs, "StatefulSet") if o["metadata"]["name"] == target_obj]
        named = {p["name"] for c in containers(sts) for p in c.get("ports", [])}
        for rule in policy["spec"]["ingress"]:
            assert {p["port"] for p in rule.get("ports", [])} <= named, target_obj


def test_network_policies_switch_and_other_namespaces(helm: str) -> None:
    assert not by_kind(render(helm, PLATFORM, None, "networkPolicy.enabled=false"), "NetworkPolicy")
    kraft = by_kind(render(helm, PLATFORM, PLATFORM / "ci" / "kraft-values.yaml"), "NetworkPolicy")
    assert sorted(p["metadata"]["name"] for p in kraft) == ["susy-platform-kafka", "susy-platform-mongodb"]
    objs = render(helm, PLATFORM, None, "networkPolicy.clientNamespaces={team-a}")
    (k,) = [p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["name"].endswith("-kafka")]
    others = [peer for peer in k["spec"]["ingress"][0]["from"] if "namespaceSelector" in peer]
    assert len(others) == 2 and all(
        peer["namespaceSelector"]["matchExpressions"] == [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a"]}] for peer in others)


def test_platform_kraft_switch(helm: str) -> None:
    objs = render(helm, PLATFORM, PLATFORM / "ci" / "kraft-values.yaml")
    names = {o["metadata"]["name"] for o in objs}
    assert not any("zookeeper" in n for n in names), "no ZooKeeper in KRaft mode"
    (kafka,) = [o for o in by_kind(objs, "StatefulSet") if o["metadata"]["name"].endswith("-kafka")]
    env = {e["name"]: e.get("value") for e in kafka["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].count("@") == 3
    assert len(env["CLUSTER_ID"]) == 22
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env


def test_platform_takes_kafka_4_in_kraft_mode_and_refuses_it_in_zookeeper_mode(helm: str) -> None:
    objs = render(helm, PLATFORM, PLATFORM / "ci" / "kraft-kafka4-values.yaml")
    sts, kafka = _kafka(objs)
    assert kafka["image"] == "apache/kafka:4.1.0" and sts["metadata"]["annotations"][KAFKA_MODE_ANNOTATION] == "kraft"
    assert not any("zookeeper" in o["metadata"]["name"] for o in objs)
    for tag in ("4.1.0", "5.0.0"):
        proc = subprocess.run([helm, "template", "x", str(PLATFORM), "--set", f"kafka.image.tag={tag}"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0
        assert (f'kafka.image.tag "{tag}" is Kafka {tag[0]}, which has no ZooKeeper mode (removed in Kafka 4.0): '
                f'with kafka.mode "zookeeper" use a 3.9.x image, or set kafka.mode "kraft"') in proc.stderr
    # 3.9 in ZooKeeper mode (the default) and a tag that names no version are not refused.
    assert _kafka(render(helm, PLATFORM, None, "kafka.image.tag=latest"))[1]["image"] == "apache/kafka:latest"


def test_platform_invalid_mode_fails(helm: str) -> None:
    proc = subprocess.run([helm, "template", "x", str(PLATFORM), "--set", "kafka.mode=kraft4"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "kafka.mode" in proc.stderr


@pytest.mark.parametrize("values", value_sets(PLATFORM), ids=lambda v: v.name if v else "defaults")
def test_platform_statefulsets_have_headless_services_probes_and_storage(helm: str, values: Path | None) -> None:
    objs = render(helm, PLATFORM, values)
    headless = {s["metadata"]["name"]: s for s in by_kind(objs, "Service") if s["spec"].get("clusterIP") == "None"}
    for sts in by_kind(objs, "StatefulSet"):
        name = sts["metadata"]["name"]
        assert sts["spec"]["serviceName"] == name and name in headless, f"{name}: headless Service"
        assert headless[name]["spec"]["selector"].items() <= \
            sts["spec"]["template"]["metadata"]["labels"].items()
        c = sts["spec"]["template"]["spec"]["containers"][0]
        assert c.get("readinessProbe") and c.get("livenessProbe"), f"{name}: probes"
        claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
        volumes = [v["name"] for v in sts["spec"]["template"]["spec"].get("volumes", [])]
        assert "data" in claims or "data" in volumes, f"{name}: data volume"


@pytest.mark.parametrize("values", value_sets(PLATFORM), ids=lambda v: v.name if v else "defaults")
def test_platform_creates_topics_in_a_post_install_hook(helm: str, values: Path | None) -> None:
    objs = render(helm, PLATFORM, values)
    (job,) = by_kind(objs, "Job")
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert "post-install" in hooks
    script = " ".join(job["spec"]["template"]["spec"]["containers"][0]["command"])
    assert 'create "trainData"' in script and "--if-not-exists" in script


def test_platform_notes_say_what_to_run_next(helm: str) -> None:
    out = run_helm(helm, "install", "susy-platform", str(PLATFORM), "--dry-run=client", "--namespace", NAMESPACE)
    notes = out.split("NOTES:", 1)[1]
    assert "susy-platform-kafka:9092" in notes
    assert "helm install susy-operator" in notes and "manifests/examples/trainingrun.yaml" in notes


# ---------------------------------------------------------------------------------------------
# susy-operator


def _rules(role: dict) -> list[tuple[list[str], list[str], list[str]]]:
    return [(r["apiGroups"], r["resources"], r["verbs"]) for r in role["rules"]]


def test_operator_role_is_namespaced_and_exact(helm: str) -> None:
    objs = render(helm, OPERATOR)
    assert not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding"), \
        "nothing cluster-wide unless watchAllNamespaces"
    (role,) = by_kind(objs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert _rules(role) == EXPECTED_RULES
    (binding,) = by_kind(objs, "RoleBinding")
    (sa,) = by_kind(objs, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        # The operator reads its store URI from env, not the API; of a Secret it reads only the
        # metadata of one a run names (its allow label), never a list or a watch.
        assert "secrets" not in rule["resources"] or rule["verbs"] == ["get"]


def test_operator_role_variants(helm: str) -> None:
    (role,) = by_kind(render(helm, OPERATOR, None, "watchAllNamespaces=true"), "ClusterRole")
    assert _rules(role) == EXPECTED_RULES
    (role,) = by_kind(render(helm, OPERATOR, None, "peering.enabled=true"), "Role")
    assert _rules(role) == [*EXPECTED_RULES, PEERING_RULE]
    objs = render(helm, OPERATOR, OPERATOR / "ci" / "cluster-values.yaml")
    (role,) = by_kind(objs, "ClusterRole")
    assert _rules(role) == [*EXPECTED_RULES, CLUSTER_PEERING_RULE]
    (binding,) = by_kind(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["kind"] == "ClusterRole"


def _granted(role: dict) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}


def operator_api_calls() -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every kubernetes-client call in operator/susy_operator/*.py."""
    calls: set[tuple[str, str, str]] = set()
    for path in sorted(OPERATOR_SRC.glob("*.py")):
        if path.name == "kubectl_plugin.py":
            continue  # `kubectl susy` runs as its user, with the user's kubeconfig and RBAC
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            method = node.func.attr
            if method in CLIENT_CALLS:
                calls.add(CLIENT_CALLS[method])
            elif method in CUSTOM_OBJECT_CALLS and any(getattr(a, "id", "") == "KUEUE_GROUP" for a in node.args):
                calls.add(("kueue.x-k8s.io", "workloads", CUSTOM_OBJECT_CALLS[method]))  # k8s.py: Kueue's Workloads
            elif method in CUSTOM_OBJECT_CALLS:
                verb = CUSTOM_OBJECT_CALLS[method]
                plurals = {p for a in node.args
                           for p in PLURAL_CONSTANTS.get(getattr(a, "attr", getattr(a, "id", "")), ())} | \
                    {a.value for a in node.args if isinstance(a, ast.Constant) and a.value in PLURALS}
                for plural in plurals or set(PLURALS):
                    if verb.endswith("/status"):
                        calls.add((GROUP, f"{plural}/status", verb.split("/")[0]))
                    else:
                        calls.add((GROUP, plural, verb))
    return calls


def test_operator_role_covers_every_call_and_nothing_else(helm: str) -> None:
    (role,) = by_kind(render(helm, OPERATOR), "Role")
    granted = _granted(role)
    code_calls = operator_api_calls()
    needed = code_calls | KOPF_CALLS | ADMISSION_GRANTS
    missing = needed - granted
    assert not missing, f"the operator calls these but the Role does not grant them: {sorted(missing)}"
    # Least privilege: nothing beyond the calls in the code (static scan), kopf's own and what
    # admission needs for blockOwnerDeletion (tests/test_operator_rbac.py checks the same against calls recorded at run time).
    unused = granted - needed
    assert not unused, f"the Role grants calls the operator never makes: {sorted(unused)}"


def _docs_rbac_table() -> list[tuple[list[str], list[str], list[str], str]]:
    """The rows of the RBAC table in docs/deploy.md ("What the operator may do"):
    (apiGroups, resources, verbs, the rest of the verbs cell)."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text.split("### What the operator may do", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| API group")]
    table = []
    for row in rows:
        group, resources, verbs = (cell.strip() for cell in row.strip().strip("|").split("|"))
        groups = ["" if g.strip() == "core" else g.strip().strip("`") for g in group.split(",")]
        names = re.findall(r"`([^`]+)`", resources.split("(")[0])
        listed = re.split(r"[;(]", verbs, maxsplit=1)[0]
        table.append((groups, names, [v.strip() for v in listed.split(",")], verbs))
    return table


def test_docs_rbac_table_is_the_rendered_role(helm: str) -> None:
    """docs/deploy.md's table lists the Role's rules, in order, exactly (issue 12, defect 5)."""
    table = _docs_rbac_table()
    assert table, "no RBAC table in docs/deploy.md"
    always = [(g, r, v) for g, r, v, rest in table if "peering.enabled" not in rest]
    peering = [(g, r, v) for g, r, v, rest in table if "peering.enabled" in rest]
    (role,) = by_kind(render(helm, OPERATOR), "Role")
    assert always == _rules(role)
    (role,) = by_kind(render(helm, OPERATOR, None, "peering.enabled=true"), "Role")
    assert _rules(role) == [*always, *peering]


def test_operator_role_matches_the_crds() -> None:
    crds = [yaml.safe_load(p.read_text()) for p in sorted((OPERATOR / "crds").glob("*.yaml"))]
    assert crds, "charts/susy-operator/crds/ is empty: run `make sync-crds`"
    assert {c["spec"]["group"] for c in crds} == {GROUP}
    assert {c["spec"]["names"]["plural"] for c in crds} == set(PLURALS)
    for crd in crds:
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                assert "status" in version.get("subresources", {}), \
                    f"{crd['metadata']['name']} {version['name']}: the Role patches /status"


def test_the_run_ttl_default_is_off_and_reaches_the_operator_when_set(helm: str) -> None:
    from susy_operator import config

    def operator_env(*sets: str) -> dict[str, str]:
        (dep,) = by_kind(render(helm, OPERATOR, None, *sets), "Deployment")
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e["value"] for e in c["env"] if "value" in e}

    assert config.load(operator_env()).run_ttl_seconds_after_finished is None
    assert config.load(operator_env("runTtlSecondsAfterFinished=604800")).run_ttl_seconds_after_finished == 604800
    refused = subprocess.run([helm, "template", "x", str(OPERATOR), "--set", "runTtlSecondsAfterFinished=1h"],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "runTtlSecondsAfterFinished: 1h is not a whole number" in refused.stderr


def test_operator_deployment(helm: str) -> None:
    objs = render(helm, OPERATOR)
    (dep,) = by_kind(objs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["command"] == ["python", "-m", "susy_operator"]
    assert c["args"][:3] == ["--standalone", f"--namespace={NAMESPACE}", "--liveness=http://0.0.0.0:8080/healthz"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {"name": "healthz", "containerPort": 8080} in c["ports"]
    env = {e["name"]: e for e in c["env"]}
    assert env["SUSY_PIPELINE_IMAGE"]["value"] == "susy-pipeline:0.1.0"
    assert env["SUSY_KAFKA_BOOTSTRAP"]["value"] == "susy-platform-kafka:9092"
    assert env["SUSY_STORE_SECRET"]["value"] == "susy-platform-mongodb"
    assert env["SUSY_DATABASE"]["value"] == "bigdata"
    assert env["MONGODB_URI"]["valueFrom"]["secretKeyRef"] == {"name": "susy-platform-mongodb", "key": "uri"}
    assert c["image"] == "susy-operator:0.1.0" and c["imagePullPolicy"] == "IfNotPresent"
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["serviceAccountName"] == by_kind(objs, "ServiceAccount")[0]["metadata"]["name"]

    objs = render(helm, OPERATOR, OPERATOR / "ci" / "cluster-values.yaml")
    (c,) = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["--peering=susy", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz", "--verbose"]


def test_operator_reads_kafka_with_the_jobs_security_settings(helm: str) -> None:
    """kafka.secretName: the operator (which reads a ContinualTraining's topic offsets itself) gets
    the Secret's variables and files as the Jobs do (builders._secret_mounts: envFrom, and the files
    read-only at /etc/susy/kafka, where the Secret's KAFKA_SSL_CA_FILE points)."""
    (dep,) = by_kind(render(helm, OPERATOR, None, "kafka.secretName=kafka-client-tls"), "Deployment")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["envFrom"] == [{"secretRef": {"name": "kafka-client-tls"}}]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    from susy_operator import builders
    assert mounts["kafka-client"] == {"name": "kafka-client", "mountPath": builders.KAFKA_SECRET_PATH, "readOnly": True}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["kafka-client"]["secret"]["secretName"] == "kafka-client-tls"
    (plain,) = by_kind(render(helm, OPERATOR), "Deployment")
    assert "envFrom" not in plain["spec"]["template"]["spec"]["containers"][0]


def test_operator_standalone_refuses_two_replicas(helm: str) -> None:
    proc = subprocess.run([helm, "template", "x", str(OPERATOR), "--set", "replicas=2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "peering.enabled" in proc.stderr


def test_operator_defaults_point_at_the_platform_chart(helm: str) -> None:
    """Installed as the docs say (releases susy-platform and susy-operator in one namespace),
    the operator's defaults name the platform's Kafka Service and MongoDB Secret."""
    platform = render(helm, PLATFORM)
    kafka_svc = [s for s in by_kind(platform, "Service") if s["metadata"]["name"].endswith("-kafka")][0]
    port = kafka_svc["spec"]["ports"][0]["port"]
    (secret,) = by_kind(platform, "Secret")
    (dep,) = by_kind(render(helm, OPERATOR), "Deployment")
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SUSY_KAFKA_BOOTSTRAP"]["value"] == f"{kafka_svc['metadata']['name']}:{port}"
    assert env["SUSY_STORE_SECRET"]["value"] == secret["metadata"]["name"]


# ---------------------------------------------------------------------------------------------
# CRDs and examples


def test_chart_crds_are_identical_to_manifests_crds() -> None:
    source = {p.name: p.read_bytes() for p in sorted(CRD_SOURCE.glob("*.yaml"))}
    chart = {p.name: p.read_bytes() for p in sorted((OPERATOR / "crds").glob("*.yaml"))}
    assert source, "manifests/crds/ has no CRDs"
    assert set(chart) == set(source), f"run `make sync-crds`: {sorted(set(chart) ^ set(source))}"
    for name in source:
        assert chart[name] == source[name], f"charts/susy-operator/crds/{name} differs: run `make sync-crds`"


def _strict(schema: Any) -> Any:
    """The CRD schema as `kubectl apply` (strict field validation) applies it: unknown fields
    are errors wherever the schema lists properties and does not preserve unknown fields."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_schemas() -> dict[tuple[str, str, str], dict]:
    schemas = {}
    for path in sorted(CRD_SOURCE.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schema = dict(version["schema"]["openAPIV3Schema"])
            props = dict(schema.get("properties", {}))
            for key in ("apiVersion", "kind"):
                props.setdefault(key, {"type": "string"})
            props.setdefault("metadata", {"type": "object"})
            schema["properties"] = props
            schemas[(crd["spec"]["group"], version["name"], crd["spec"]["names"]["kind"])] = _strict(schema)
    return schemas


def test_examples_validate_against_the_crds() -> None:
    schemas = _crd_schemas()
    assert schemas, "manifests/crds/ has no CRDs"
    examples = [(p, doc) for p in sorted(EXAMPLES.glob("*.yaml"))
                for doc in yaml.safe_load_all(p.read_text()) if doc]
    kinds = {doc["kind"] for _, doc in examples}
    assert {"TrainingRun", "EvaluationRun"} <= kinds, f"examples cover {sorted(kinds)}"
    for path in (EXAMPLES / "trainingrun.yaml", EXAMPLES / "evaluationrun.yaml"):
        assert path.exists(), f"the kind e2e applies {path.relative_to(ROOT)}"
    for path, doc in examples:
        group, _, version = doc["apiVersion"].rpartition("/")
        key = (group, version, doc["kind"])
        assert key in schemas, f"{path.name}: no served CRD for {key}"
        validator = jsonschema.Draft4Validator(schemas[key])
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, f"{path.name}: " + "; ".join(
            f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_kind_e2e_resources_are_the_examples_with_smaller_requests() -> None:
    """hack/kind-e2e.sh applies hack/e2e/*.yaml: the example CRs plus requests that fit a
    4-CPU, 8 GiB node (issue 12, defect 9). They validate against the CRDs like the examples."""
    schemas = _crd_schemas()
    for name in ("trainingrun.yaml", "evaluationrun.yaml"):
        e2e = yaml.safe_load((ROOT / "hack" / "e2e" / name).read_text())
        example = yaml.safe_load((EXAMPLES / name).read_text())
        group, _, version = e2e["apiVersion"].rpartition("/")
        errors = list(jsonschema.Draft4Validator(schemas[(group, version, e2e["kind"])]).iter_errors(e2e))
        assert not errors, [e.message for e in errors]
        assert {k: v for k, v in e2e["spec"].items() if k != "resources"} == example["spec"]
        assert e2e["metadata"] == example["metadata"]
    shards = yaml.safe_load((ROOT / "hack" / "e2e" / "evaluationrun.yaml").read_text())["spec"]
    assert shards["resources"]["requests"] == {"cpu": "250m", "memory": "1Gi"} and shards["shards"] == 3
    # The PVC-backed run (issue 14): the example over the claim, 2 shards at a time on the node.
    e2e = yaml.safe_load((ROOT / "hack" / "e2e" / "evaluationrun-pvc.yaml").read_text())
    example = yaml.safe_load((EXAMPLES / "pvc" / "evaluationrun.yaml").read_text())
    group, _, version = e2e["apiVersion"].rpartition("/")
    assert not list(jsonschema.Draft4Validator(schemas[(group, version, e2e["kind"])]).iter_errors(e2e))
    assert {k: v for k, v in e2e["spec"].items() if k not in ("resources", "parallelism")} == example["spec"]
    assert e2e["spec"]["parallelism"] == 2 and e2e["spec"]["resources"]["requests"]["memory"] == "1Gi"


def test_crd_validation_rejects_unknown_and_mistyped_fields() -> None:
    """The strict CRD check above is not vacuous: a typo or a wrong type is an error."""
    schemas = _crd_schemas()
    doc = yaml.safe_load((EXAMPLES / "trainingrun.yaml").read_text())
    group, _, version = doc["apiVersion"].rpartition("/")
    validator = jsonschema.Draft4Validator(schemas[(group, version, doc["kind"])])
    assert not list(validator.iter_errors(doc))
    typo = {**doc, "spec": {**doc["spec"], "datasett": doc["spec"]["dataset"]}}
    assert list(validator.iter_errors(typo)), "an unknown spec field must fail"
    wrong = {**doc, "spec": {**doc["spec"], "dataset": {**doc["spec"]["dataset"], "limit": "many"}}}
    assert list(validator.iter_errors(wrong)), "a string where an integer belongs must fail"


def test_kafka_tls_listener_from_a_certificate_secret(helm: str, tmp_path: Path) -> None:
    """kafka.tls (ci/secured-values.yaml): an SSL listener on 9093 beside the plaintext one, each broker
    advertising both, a PEM keystore (KIP-651) made at start from the Secret's tls.key and tls.crt,
    the port on the Service and open in the NetworkPolicy to the same clients as the plaintext one.
    (The file's SASL listener is off here: the next test runs it.)"""
    objs = render(helm, PLATFORM, PLATFORM / "ci" / "secured-values.yaml", "kafka.sasl.enabled=false")
    sts, kafka = _kafka(objs)
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    (tls_dir / "tls.key").write_text("-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n")
    (tls_dir / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\ncert\n-----END CERTIFICATE-----\n")
    container = {**kafka, "command": [*kafka["command"][:2], kafka["command"][2].replace("/etc/kafka/tls/", f"{tls_dir}/")]}
    name, svc = sts["metadata"]["name"], sts["spec"]["serviceName"]
    props, _, _ = _start_kafka(tmp_path, container, f"{name}-0", "0")
    host = f"{name}-0.{svc}.{NAMESPACE}.svc.cluster.local"
    assert props["listeners"] == "PLAINTEXT://0.0.0.0:9092,SSL://0.0.0.0:9093"
    assert props["advertised.listeners"] == f"PLAINTEXT://{host}:9092,SSL://{host}:9093"
    assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,SSL:SSL"
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert (props["ssl.keystore.type"], props["ssl.keystore.location"]) == ("PEM", "/etc/kafka/broker/keystore.pem")
    keystore = (tmp_path / "conf" / "keystore.pem").read_text()
    assert keystore.index("PRIVATE KEY") < keystore.index("CERTIFICATE")
    mounts = {m["name"]: m for m in kafka["volumeMounts"]}
    assert mounts["tls"]["mountPath"] == "/etc/kafka/tls" and mounts["tls"]["readOnly"] is True
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "susy-platform-kafka-tls"
    service = next(s for s in by_kind(objs, "Service") if s["metadata"]["name"] == svc)
    assert {"name": "client-tls", "port": 9093, "targetPort": "client-tls"} in service["spec"]["ports"]
    (policy,) = [p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["name"].endswith("-kafka")]
    assert {"protocol": "TCP", "port": "client-tls"} in policy["spec"]["ingress"][0]["ports"]


@pytest.mark.parametrize("sets, message", [
    (("kafka.tls.enabled=true",), "kafka.tls.enabled needs kafka.tls.secretName"),
    # KRaft mode has the TLS listener too, on a port of its own (tests/test_charts_secured.py).
    (("kafka.tls.enabled=true", "kafka.tls.secretName=x", "kafka.mode=kraft"),
     "kafka.controllerPort and kafka.tls.port are both 9093"),
])
def test_kafka_tls_refuses_what_cannot_work(helm: str, sets: tuple[str, ...], message: str) -> None:
    args = [helm, "template", "t", str(PLATFORM)] + [a for s in sets for a in ("--set", s)]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_kafka_sasl_scram_listener_and_its_user(helm: str, tmp_path: Path) -> None:
    """kafka.sasl (ci/secured-values.yaml, with kafka.tls): a SASL_SSL listener on 9094, SCRAM-SHA-512
    with the broker's JAAS line for that listener, the client user set in ZooKeeper by kafka-configs.sh
    before the broker starts (a stub here records its arguments), the user and password from the
    Secret by secretKeyRef only, the port on the Service and in the NetworkPolicy."""
    objs = render(helm, PLATFORM, PLATFORM / "ci" / "secured-values.yaml")
    sts, kafka = _kafka(objs)
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    (tls_dir / "tls.key").write_text("-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n")
    (tls_dir / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\ncert\n-----END CERTIFICATE-----\n")
    configs = scram_stub(tmp_path, "kafka-configs.sh")
    script = kafka["command"][2].replace("/etc/kafka/tls/", f"{tls_dir}/")
    assert script.count("configs=/opt/kafka/bin/kafka-configs.sh\n") == 1
    script = script.replace("configs=/opt/kafka/bin/kafka-configs.sh\n", f"configs={configs}\n")
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in kafka["env"] if "valueFrom" in e
                  and "secretKeyRef" in e["valueFrom"]}
    assert secret_env == {"SASL_USERNAME": {"name": "susy-platform-kafka-scram", "key": "username"},
                          "SASL_PASSWORD": {"name": "susy-platform-kafka-scram", "key": "password"}}
    env = [*kafka["env"], {"name": "SASL_USERNAME", "value": "susy"}, {"name": "SASL_PASSWORD", "value": "pw42"}]
    container = {**kafka, "command": [*kafka["command"][:2], script], "env": env}
    name, svc = sts["metadata"]["name"], sts["spec"]["serviceName"]
    props, _, _ = _start_kafka(tmp_path, container, f"{name}-0", "0")
    host = f"{name}-0.{svc}.{NAMESPACE}.svc.cluster.local"
    assert props["listeners"] == "PLAINTEXT://0.0.0.0:9092,SSL://0.0.0.0:9093,SASL_SSL://0.0.0.0:9094"
    assert props["advertised.listeners"] == (f"PLAINTEXT://{host}:9092,SSL://{host}:9093,SASL_SSL://{host}:9094")
    assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL"
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required;")
    # The password reaches kafka-configs.sh in a file only this user may read, gone once used.
    scram_file = str(tmp_path / "conf" / "scram.properties")
    assert (tmp_path / "kafka-configs.sh.args").read_text().split("\n")[:-1] == [
        "--zookeeper", props["zookeeper.connect"], "--alter", "--entity-type", "users", "--entity-name", "susy",
        "--add-config-file", scram_file]
    assert (tmp_path / "kafka-configs.sh.file").read_text() == "SCRAM-SHA-512=password=pw42\n"
    assert (tmp_path / "kafka-configs.sh.mode").read_text().strip() == "600"
    assert not Path(scram_file).exists()
    assert "pw42" not in "\n".join(f"{k}={v}" for k, v in props.items())
    # The authorizer: nobody but the brokers (User:ANONYMOUS, on the plaintext listener) may change users.
    assert props["authorizer.class.name"] == "kafka.security.authorizer.AclAuthorizer"
    assert props["super.users"] == "User:ANONYMOUS"
    service = next(s for s in by_kind(objs, "Service") if s["metadata"]["name"] == svc)
    assert {"name": "client-sasl", "port": 9094, "targetPort": "client-sasl"} in service["spec"]["ports"]
    (policy,) = [p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["name"].endswith("-kafka")]
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": "client-sasl"}]


def scram_stub(folder: Path, name: str) -> Path:
    """A Kafka tool stub that records its arguments (NAME.args) and, for --add-config-file, the
    file's content (NAME.file) and permission bits (NAME.mode), before the script deletes it."""
    stub = folder / name
    stub.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > "{folder}/{name}.args"\n'
                    'while [[ $# -gt 0 ]]; do\n'
                    f'  if [[ $1 == --add-config-file ]]; then cat "$2" > "{folder}/{name}.file"; '
                    f'stat -c %a "$2" > "{folder}/{name}.mode"; fi\n'
                    '  shift\ndone\n')
    stub.chmod(0o755)
    return stub


def test_kafka_sasl_without_tls_is_sasl_plaintext(helm: str) -> None:
    objs = render(helm, PLATFORM, None, "kafka.sasl.enabled=true", "kafka.sasl.secretName=s",
                  "kafka.sasl.mechanism=SCRAM-SHA-256")
    _, kafka = _kafka(objs)
    assert "listeners=PLAINTEXT://0.0.0.0:9092,SASL_PLAINTEXT://0.0.0.0:9094" in kafka["command"][2]
    assert "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=" in kafka["command"][2]


@pytest.mark.parametrize("sets, message", [
    (("kafka.sasl.enabled=true",), "kafka.sasl.enabled needs kafka.sasl.secretName"),
    (("kafka.sasl.enabled=true", "kafka.sasl.secretName=x", "kafka.sasl.mechanism=PLAIN"),
     "kafka.sasl.mechanism must be SCRAM-SHA-256 or SCRAM-SHA-512"),
])
def test_kafka_sasl_refuses_what_cannot_work(helm: str, sets: tuple[str, ...], message: str) -> None:
    args = [helm, "template", "t", str(PLATFORM)] + [a for s in sets for a in ("--set", s)]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode != 0 and message.replace("\\", "") in out.stderr.replace("\\", ""), out.stderr


def test_operator_tenancy_values_reach_the_operators_settings(helm: str) -> None:
    """tenancy.*, store.perNamespaceSecret, store.perNamespaceDatabase and watchAllNamespaces, as the
    operator reads them from the rendered Deployment's env (config.load), and nothing by default."""
    from susy_operator import config

    def operator_env(*sets: str) -> dict[str, str]:
        (dep,) = by_kind(render(helm, OPERATOR, None, *sets), "Deployment")
        return {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}

    cfg = config.load(operator_env(
        "tenancy.allowedImages={registry.example/susy/*,registry.example/other@sha256:*}",
        "tenancy.allowedEnv={OMP_*}", "tenancy.allowedSecrets={s3-*}", "tenancy.allowedClaims={data}",
        "store.perNamespaceSecret.name=team-store", "store.perNamespaceSecret.key=mongodb-uri",
        "store.perNamespaceDatabase=susy-{namespace}", "watchAllNamespaces=true"))
    policy = cfg.tenancy
    assert policy.allowed_images == ("registry.example/susy/*", "registry.example/other@sha256:*")
    assert (policy.allowed_env, policy.allowed_secrets, policy.allowed_claims) == (("OMP_*",), ("s3-*",), ("data",))
    assert "team-store" in policy.operator_secrets and "susy-platform-mongodb" in policy.operator_secrets
    jobs = cfg.job_config
    assert (jobs.store_secret, jobs.store_secret_key, jobs.database_for("team-a")) == (
        "team-store", "mongodb-uri", "susy-team-a")
    assert cfg.watch_all_namespaces
    default = config.load(operator_env())
    assert default.tenancy.allowed_images == () and default.tenancy.default_image == "susy-pipeline:0.1.0"
    assert default.job_config.store_secret == "susy-platform-mongodb" and not default.watch_all_namespaces


def test_the_tfio_readers_librdkafka_settings_are_the_platforms_and_reach_every_job(helm: str) -> None:
    """kafka.tfioLibrdkafka (for tansu's fallback settings, or a cluster's librdkafka 1.5.0 quirks)
    reaches every Job as SUSY_TFIO_LIBRDKAFKA through the operator's settings; a CR cannot set it
    (SUSY_* is reserved: librdkafka's plugin.library.paths loads code)."""
    from susy_operator import builders, config, tenancy

    (dep,) = by_kind(render(helm, OPERATOR, None, r"kafka.tfioLibrdkafka=api.version.request=false\,a=b"),
                     "Deployment")
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    jobs = config.load(env).job_config
    job_env = {e["name"]: e.get("value") for e in builders.pipeline_env(jobs, "team-a")}
    assert job_env["SUSY_TFIO_LIBRDKAFKA"] == "api.version.request=false,a=b"
    (default,) = by_kind(render(helm, OPERATOR, None), "Deployment")
    default_env = {e["name"]: e.get("value") for e in default["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "SUSY_TFIO_LIBRDKAFKA" not in default_env
    assert "SUSY_TFIO_LIBRDKAFKA" not in {e["name"] for e in builders.pipeline_env(config.load(default_env).job_config,
                                                                                     "team-a")}
    refused = tenancy.env_problems("spec", [("SUSY_TFIO_LIBRDKAFKA", "plugin.library.paths=/tmp/x.so")],
                                   config.load(env).tenancy)
    assert refused and "spec.env" in refused[0]
