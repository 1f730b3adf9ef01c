"""What a CR author may reach (tenancy.py, config.py, builders.py), decided without a cluster.

Each refusal names the CR field and the operator setting (chart value and env) that would allow
it; the operator-level tests (test_operator_tenancy_emulator.py) show the same messages on a run.
"""
from __future__ import annotations

import pytest

from susy_operator import builders, config, crd, spec as spec_lib, tenancy

PIPELINE_IMAGE = "registry.local/susy-pipeline:1.2.3"
POLICY = tenancy.Policy(default_image=PIPELINE_IMAGE, operator_secrets=frozenset({"susy-platform-mongodb"}))
OWNER = builders.Owner(kind=crd.TRAINING_KIND, name="train", namespace="team-a", uid="0f6e3c52-8d1b")


def training(**overrides):
    raw = {"dataset": {"uri": "/opt/susy/data/susy-sample.csv.gz"}}
    raw.update(overrides)
    return spec_lib.parse_training_run(raw)


def evaluation(**overrides):
    raw = {"model": {"trainingRun": "train"}, "dataset": {"uris": ["/data/a.csv"]}}
    raw.update(overrides)
    return spec_lib.parse_evaluation_run(raw)


def no_labels(kind: str, name: str):
    return {}


def refusals(parsed, policy=POLICY, labels_of=no_labels) -> list[str]:
    try:
        tenancy.enforce(parsed, policy, labels_of)
    except tenancy.NotAllowed as error:
        assert error.reason == crd.REASON_NOT_ALLOWED
        return list(error.problems)
    return []


# --- images ----------------------------------------------------------------------------------------

def test_the_pipeline_image_and_unset_images_pass() -> None:
    assert refusals(training()) == []
    assert refusals(training(images={"trainer": PIPELINE_IMAGE})) == []


def test_an_image_outside_the_allowlist_is_refused_naming_the_field_and_the_setting() -> None:
    (problem,) = refusals(training(images={"trainer": "evil/miner:1"}))
    assert problem.startswith("spec.images.trainer 'evil/miner:1' is not an allowed image")
    assert "tenancy.allowedImages" in problem and "SUSY_ALLOWED_IMAGES" in problem
    (problem,) = refusals(evaluation(image="evil/miner:1"))
    assert problem.startswith("spec.image 'evil/miner:1'")


def test_allowed_image_patterns() -> None:
    policy = tenancy.Policy(default_image=PIPELINE_IMAGE, allowed_images=("registry.local/team-*/susy:*",))
    assert refusals(training(images={"producer": "registry.local/team-a/susy:2"}), policy) == []
    assert len(refusals(training(images={"producer": "registry.local/other/susy:2"}), policy)) == 1


# --- env -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONWARNINGS",
                                  "TF_CPP_MIN_LOG_LEVEL", "GLIBC_TUNABLES", "MALLOC_CHECK_", "GCONV_PATH",
                                  "OPENSSL_CONF", "SSL_CERT_FILE", "KAFKA_SASL_USERNAME", "MONGODB_URI_EXTRA",
                                  "SUSY_TEST", "AWS_CONFIG_FILE", "PATH", "MPLBACKEND"])
def test_reserved_env_names_are_refused(name: str) -> None:
    (problem,) = refusals(training(env=[{"name": "OMP_NUM_THREADS", "value": "2"}, {"name": name, "value": "x"}]))
    assert problem.startswith(f"spec.env[1].name {name} is reserved")


@pytest.mark.parametrize("name", ["OMP_NUM_THREADS", "AWS_REGION", "AWS_ENDPOINT_URL", "TZ", "HTTPS_PROXY"])
def test_ordinary_env_names_pass(name: str) -> None:
    assert refusals(evaluation(env=[{"name": name, "value": "x"}])) == []


def test_an_env_allowlist_admits_only_its_names() -> None:
    policy = tenancy.Policy(default_image=PIPELINE_IMAGE, allowed_env=("OMP_*",))
    assert refusals(training(env=[{"name": "OMP_NUM_THREADS", "value": "2"}]), policy) == []
    (problem,) = refusals(training(env=[{"name": "TZ", "value": "UTC"}]), policy)
    assert problem == ("spec.env[0].name TZ is not allowed by the operator setting tenancy.allowedEnv "
                       "(env SUSY_ALLOWED_ENV)")


# --- dataset paths ---------------------------------------------------------------------------------

@pytest.mark.parametrize("uri", ["/proc/self/environ", "file:///proc/1/environ", "FILE:///sys/kernel/x",
                                 "/dev/stdin", "//proc/self/environ", "/etc/susy/kafka/user.key",
                                 "/etc/susy/store-ca/ca.crt", "/var/run/secrets/kubernetes.io/token",
                                 "/*/self/environ", "/p[r]oc/self/environ", "/**/environ", "/pro?/x",
                                 "/opt/../proc/self/environ", "data/../../proc/self/environ"])
def test_dataset_paths_into_the_pod_or_the_operators_mounts_are_refused(uri: str) -> None:
    (problem,) = refusals(training(dataset={"uri": uri}))
    assert problem.startswith(f"spec.dataset.uri {uri!r}") and "no operator setting allows it" in problem \
        or "must not contain '..'" in problem


@pytest.mark.parametrize("uri", ["/opt/susy/data/susy-sample.csv.gz", "/data/*.parquet", "data/x.csv",
                                 "s3://bucket/proc/x.parquet", "https://host/dev/x.csv", "/procedures/x.csv"])
def test_ordinary_dataset_paths_pass(uri: str) -> None:
    assert refusals(training(dataset={"uri": uri})) == []


def test_every_evaluation_uri_is_checked() -> None:
    (problem,) = refusals(evaluation(dataset={"uris": ["/data/a.csv", "/sys/x.csv"]}))
    assert problem.startswith("spec.dataset.uris[1] '/sys/x.csv' reaches /sys")


# --- Secrets and claims ----------------------------------------------------------------------------

PVC = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "team-data"}}],
       "volumeMounts": [{"name": "data", "mountPath": "/data"}]}


def test_an_unlabelled_secret_or_claim_is_refused_naming_the_label_and_the_setting() -> None:
    problems = refusals(training(dataset={"uri": "s3://b/x.csv", "secretName": "creds"}, **PVC))
    assert problems == [
        "spec.dataset.secretName creds: the Secret is not open to runs: label it susy.dev/allow-runs=true, "
        "or name it in the operator setting tenancy.allowedSecrets (env SUSY_ALLOWED_SECRETS)",
        "spec.volumes[0].persistentVolumeClaim.claimName team-data: the PersistentVolumeClaim is not open to "
        "runs: label it susy.dev/allow-runs=true, or name it in the operator setting tenancy.allowedClaims "
        "(env SUSY_ALLOWED_CLAIMS)"]


def test_a_labelled_secret_and_claim_pass_and_only_names_no_setting_allows_are_read() -> None:
    asked = []

    def labels_of(kind: str, name: str):
        asked.append((kind, name))
        return {tenancy.LABEL_ALLOW_RUNS: "true"}

    assert refusals(evaluation(dataset={"uris": ["s3://b/x"], "secretName": "creds"}, **PVC), labels_of=labels_of) == []
    assert asked == [("Secret", "creds"), ("PersistentVolumeClaim", "team-data")]
    asked.clear()
    policy = tenancy.Policy(default_image=PIPELINE_IMAGE, allowed_secrets=("cre*",), allowed_claims=("team-*",))
    assert refusals(evaluation(dataset={"uris": ["s3://b/x"], "secretName": "creds"}, **PVC), policy, labels_of) == []
    assert asked == []


def test_a_label_other_than_true_and_a_missing_secret_are_refused() -> None:
    (problem,) = refusals(training(dataset={"uri": "s3://b/x", "secretName": "creds"}),
                          labels_of=lambda kind, name: {tenancy.LABEL_ALLOW_RUNS: "yes"})
    assert "is not open to runs" in problem
    (problem,) = refusals(training(dataset={"uri": "s3://b/x", "secretName": "creds"}),
                          labels_of=lambda kind, name: None)
    assert problem == "spec.dataset.secretName creds: no such Secret in the run's namespace"


def test_the_operators_own_secrets_are_refused_even_when_labelled() -> None:
    (problem,) = refusals(training(dataset={"uri": "s3://b/x", "secretName": "susy-platform-mongodb"}),
                          labels_of=lambda kind, name: {tenancy.LABEL_ALLOW_RUNS: "true"})
    assert "one of the operator's own connection Secrets" in problem


def test_every_problem_is_named_at_once() -> None:
    problems = refusals(training(images={"producer": "x:1"}, env=[{"name": "LD_PRELOAD", "value": "/x.so"}],
                                 dataset={"uri": "/proc/self/environ", "secretName": "creds"}))
    assert [p.split(" ")[0] for p in problems] == [
        "spec.images.producer", "spec.env[0].name", "spec.dataset.uri", "spec.dataset.secretName"]


# --- the settings ----------------------------------------------------------------------------------

def test_the_settings_are_read_from_the_environment() -> None:
    cfg = config.load({"SUSY_PIPELINE_IMAGE": PIPELINE_IMAGE, "SUSY_ALLOWED_IMAGES": "a/*, b/*",
                       "SUSY_ALLOWED_ENV": "OMP_*", "SUSY_ALLOWED_SECRETS": "s3-*", "SUSY_ALLOWED_CLAIMS": "data",
                       "SUSY_STORE_SECRET": "store", "SUSY_KAFKA_SECRET": "kafka-client",
                       "SUSY_STORE_NAMESPACE_SECRET": "team-store", "SUSY_STORE_NAMESPACE_KEY": "mongodb-uri"})
    policy = cfg.tenancy
    assert policy == tenancy.Policy(default_image=PIPELINE_IMAGE, allowed_images=("a/*", "b/*"),
                                    allowed_env=("OMP_*",), allowed_secrets=("s3-*",), allowed_claims=("data",),
                                    operator_secrets=frozenset({"store", "kafka-client", "team-store"}))
    assert config.load({}).tenancy.allowed_images == ()  # the chart's own image only


def test_per_namespace_store_credentials_reach_every_job() -> None:
    cfg = config.load({"SUSY_STORE_SECRET": "susy-platform-mongodb", "SUSY_STORE_NAMESPACE_SECRET": "susy-store",
                       "SUSY_STORE_NAMESPACE_KEY": "mongodb-uri", "SUSY_NAMESPACE_DATABASE": "susy-{namespace}"})
    job = builders.producer_job(OWNER, training(), "team-a.train.0f6e3c52", cfg.job_config)
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MONGODB_URI"]["valueFrom"] == {"secretKeyRef": {"name": "susy-store", "key": "mongodb-uri"}}
    assert env["SUSY_DATABASE"]["value"] == "susy-team-a"
    assert env["SUSY_NAMESPACE"]["value"] == "team-a"
    # Without the setting: the shared Secret and database, as before.
    shared = builders.producer_job(OWNER, training(), "r", config.load({}).job_config)
    env = {e["name"]: e for e in shared["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MONGODB_URI"]["valueFrom"]["secretKeyRef"]["name"] == "susy-platform-mongodb"
    assert env["SUSY_DATABASE"]["value"] == "bigdata"


def test_a_long_namespace_database_stays_a_mongodb_name_and_distinct() -> None:
    job_config = config.load({"SUSY_NAMESPACE_DATABASE": "susy-{namespace}"}).job_config
    a, b = job_config.database_for("a" * 62 + "x"), job_config.database_for("a" * 62 + "y")
    assert a != b and len(a) <= 63 and len(b) <= 63


@pytest.mark.parametrize("value", ["susy", "susy.{namespace}", "susy {namespace}"])
def test_a_namespace_database_that_cannot_work_stops_the_operator_at_start(value: str) -> None:
    with pytest.raises(ValueError, match="SUSY_NAMESPACE_DATABASE"):
        config.load({"SUSY_NAMESPACE_DATABASE": value})


# --- topics ----------------------------------------------------------------------------------------

def test_a_run_without_a_topic_gets_its_own() -> None:
    job = builders.producer_job(OWNER, training(), "r", config.load({}).job_config)
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--topic") + 1] == "susy-team-a-train"
    named = builders.producer_job(OWNER, training(kafka={"topic": "trainData"}), "r", config.load({}).job_config)
    command = named["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--topic") + 1] == "trainData"


def test_default_topics_are_valid_bounded_and_distinct() -> None:
    long_a, long_b = "a" * 240 + ".x", "a" * 240 + ".y"
    topics = {tenancy.default_topic("ns", n) for n in (long_a, long_b, "a.b", "a-b")}
    assert len(topics) == 4
    assert all(len(t) <= 249 and spec_lib.TOPIC_PATTERN.match(t) and "." not in t for t in topics)


def run(name: str, created: str, phase: str | None = None, topic: str | None = None, ns: str = "team-a",
        produced_reason: str | None = None):
    body = {"metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "creationTimestamp": created},
            "spec": {"dataset": {"uri": "x"}, **({"kafka": {"topic": topic}} if topic else {})}}
    if phase:
        body["status"] = {"phase": phase, "conditions": [{"type": "Produced", "status": "False",
                                                           "reason": produced_reason or "JobCreated"}]}
    return body


def test_the_oldest_run_that_has_not_finished_producing_holds_its_topic() -> None:
    first = run("a", "2026-12-05T08:00:00Z", "Producing", "trainData")
    second = run("b", "2026-12-05T08:00:01Z", None, "trainData")
    assert tenancy.topic_holder(second, [first, second])["metadata"]["name"] == "a"
    assert tenancy.topic_holder(first, [first, second]) is None
    # Other namespaces' runs of the same topic count: a topic is the whole Kafka cluster's.
    other_ns = run("c", "2026-12-05T07:59:00Z", "Pending", "trainData", ns="team-b", produced_reason="TopicBusy")
    assert tenancy.topic_holder(first, [first, other_ns])["metadata"]["name"] == "c"
    # Pending for its warm-start parent, a run is not queued for the topic: it holds nothing (it could
    # wait for a younger run that waits for it).
    parent_wait = run("c", "2026-12-05T07:59:00Z", "Pending", "trainData", produced_reason=None)
    assert tenancy.topic_holder(first, [first, parent_wait]) is None
    # A run that trains on offsets already in Kafka (spec.source) produces nothing: it holds nothing.
    trainer_only = run("e", "2026-12-05T07:58:00Z", None, "trainData")
    trainer_only["spec"]["source"] = {"kafka": {"topic": "trainData"}}
    assert tenancy.topic_holder(first, [first, trainer_only]) is None
    # Once the holder trains (or ends), the topic is free; runs of their own topics never wait.
    assert tenancy.topic_holder(second, [run("a", "2026-12-05T08:00:00Z", "Training", "trainData"), second]) is None
    assert tenancy.topic_holder(run("d", "2026-12-05T08:00:02Z"), [first, run("d", "2026-12-05T08:00:02Z")]) is None
