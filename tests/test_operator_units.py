"""The operator's pure core, without a cluster: Job builders, spec validation, status helpers."""
from __future__ import annotations

import copy
import os
import re

import pytest

from susy_operator import builders, config, crd, spec as spec_lib, status as st

OWNER_TR = builders.Owner(kind=crd.TRAINING_KIND, name="susy-train", namespace="team-a",
                          uid="0f6e3c52-8d1b-4d8e-9a55-1f2e3d4c5b6a")
OWNER_ER = builders.Owner(kind=crd.EVALUATION_KIND, name="susy-eval", namespace="team-a",
                          uid="7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")
CONFIG = builders.JobConfig(image="registry.local/susy-pipeline:1.2.3", kafka_bootstrap="kafka.susy:9092",
                            store_secret="susy-store", database="bigdata")
RUN = "team-a.susy-train.0f6e3c52"


def training_spec(**overrides):
    raw = {"dataset": {"uri": "/opt/susy/data/susy-sample.csv.gz", "skip": 100, "limit": 5000},
           "kafka": {"topic": "t1", "partitions": 3}}
    raw.update(overrides)
    return spec_lib.parse_training_run(raw)


def evaluation_spec(**overrides):
    raw = {"model": {"trainingRun": "susy-train"}, "dataset": {"uris": ["/data/a.csv", "/data/b-*.parquet"]},
           "shards": 4, "parallelism": 2, "chunkRows": 1000}
    raw.update(overrides)
    return spec_lib.parse_evaluation_run(raw)


def container(job):
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return c


def env_of(job):
    return {e["name"]: e for e in container(job)["env"]}


# --- builders ---------------------------------------------------------------------------------------

ALL_JOBS = {
    "producer": lambda: builders.producer_job(OWNER_TR, training_spec(), RUN, CONFIG),
    "trainer": lambda: builders.trainer_job(OWNER_TR, training_spec(), RUN, CONFIG),
    "evaluator": lambda: builders.evaluator_job(OWNER_ER, evaluation_spec(), "team-a.susy-eval.7a1b2c3d",
                                                "ab" * 16, CONFIG),
}


@pytest.mark.parametrize("component", sorted(ALL_JOBS))
def test_job_metadata_owner_and_labels(component: str) -> None:
    job = ALL_JOBS[component]()
    owner = OWNER_ER if component == "evaluator" else OWNER_TR
    meta = job["metadata"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert meta["name"] == f"{owner.name}-{crd.JOB_SUFFIX[component]}"
    assert meta["namespace"] == owner.namespace
    assert meta["ownerReferences"] == [{"apiVersion": "susy.dev/v1alpha1", "kind": owner.kind, "name": owner.name,
                                        "uid": owner.uid, "controller": True, "blockOwnerDeletion": True}]
    selector = crd.LABEL_EVALUATION_RUN if component == "evaluator" else crd.LABEL_TRAINING_RUN
    expected_labels = {
        "app.kubernetes.io/name": "susy-pipeline",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "susy",
        "app.kubernetes.io/managed-by": "susy-operator",
        selector: owner.name,
    }
    assert meta["labels"] == expected_labels
    assert job["spec"]["template"]["metadata"]["labels"] == expected_labels


@pytest.mark.parametrize("component", sorted(ALL_JOBS))
def test_job_run_policy_security_and_resources(component: str) -> None:
    job = ALL_JOBS[component]()
    spec = job["spec"]
    for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        assert isinstance(spec[key], int), key
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(job)
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert c["volumeMounts"] == [{"name": "scratch", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "scratch", "emptyDir": {}}]
    assert c["image"] == CONFIG.image and c["imagePullPolicy"] == "IfNotPresent"
    assert c["resources"] == builders.DEFAULT_RESOURCES[component]
    assert c["resources"] is not builders.DEFAULT_RESOURCES[component]  # a copy, safe to mutate
    rule = spec["podFailurePolicy"]["rules"][0]
    assert rule["onExitCodes"] == {"containerName": component, "operator": "In", "values": [crd.EXIT_BAD_INPUT]}


@pytest.mark.parametrize("component", sorted(ALL_JOBS))
def test_job_env_takes_the_store_uri_from_the_secret(component: str) -> None:
    job = ALL_JOBS[component]()
    env = env_of(job)
    assert env["MONGODB_URI"] == {"name": "MONGODB_URI",
                                  "valueFrom": {"secretKeyRef": {"name": "susy-store", "key": "uri"}}}
    assert "value" not in env["MONGODB_URI"]
    assert env["KAFKA_BOOTSTRAP"]["value"] == "kafka.susy:9092"
    assert env["SUSY_DATABASE"]["value"] == "bigdata"
    # The store namespace is the custom resource's own: every record the Job writes carries it.
    assert env["SUSY_NAMESPACE"]["value"] == job["metadata"]["namespace"]
    names = [e["name"] for e in container(job)["env"]]
    assert len(names) == len(set(names))
    if component != "evaluator":
        assert env["SUSY_RUN_NAME"]["value"] == RUN


def test_producer_command() -> None:
    job = ALL_JOBS["producer"]()
    assert container(job)["command"] == [
        "python", "-m", "susy_pipeline", "produce", "--data", "/opt/susy/data/susy-sample.csv.gz",
        "--skip", "100", "--limit", "5000", "--topic", "t1", "--partitions", "3", "--run-name", RUN]
    assert job["spec"]["completions"] == 1 and job["spec"]["parallelism"] == 1
    assert "completionMode" not in job["spec"]
    assert job["spec"]["podFailurePolicy"]["rules"][0]["action"] == "FailJob"


def test_trainer_command_passes_only_what_the_spec_sets() -> None:
    plain = container(ALL_JOBS["trainer"]())["command"]
    assert plain == ["python", "-m", "susy_pipeline", "train", "--run-name", RUN, "--reader", "confluent",
                     "--recipe", "seed"]
    full = container(builders.trainer_job(OWNER_TR, training_spec(
        model={"recipe": "tuned", "hidden": [64, 32], "learningRate": 0.01, "dropout": 0.25},
        epochs=3, batchSize=128, reader="kafka-python"), RUN, CONFIG))["command"]
    assert full[4:] == ["--run-name", RUN, "--reader", "kafka-python", "--recipe", "tuned", "--epochs", "3",
                        "--batch-size", "128", "--learning-rate", "0.01", "--dropout", "0.25", "--hidden", "64,32"]


def test_evaluator_is_one_indexed_job() -> None:
    job = ALL_JOBS["evaluator"]()
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == 4 and spec["parallelism"] == 2
    assert spec["backoffLimitPerIndex"] == 1
    assert spec["backoffLimit"] == 4 * 2  # a global cap above every index's own retries
    assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailIndex"
    assert container(job)["command"] == [
        "python", "-m", "susy_pipeline", "evaluate", "--model", "ab" * 16, "--data", "/data/a.csv",
        "/data/b-*.parquet", "--evaluation", "team-a.susy-eval.7a1b2c3d", "--shard-count", "4",
        "--chunk-rows", "1000"]
    # The index comes from Kubernetes (JOB_COMPLETION_INDEX), never from the operator.
    assert "JOB_COMPLETION_INDEX" not in env_of(job)
    assert "--shard-index" not in container(job)["command"]


def test_evaluator_stripe_rows_only_when_set() -> None:
    job = builders.evaluator_job(OWNER_ER, evaluation_spec(stripeRows=4096), "e", "ab" * 16, CONFIG)
    assert container(job)["command"][-2:] == ["--stripe-rows", "4096"]


def test_evaluator_precision_reaches_the_job_env_and_user_env_cannot_change_it() -> None:
    default = env_of(builders.evaluator_job(OWNER_ER, evaluation_spec(), "e", "ab" * 16, CONFIG))
    assert (default["SUSY_PRECISION"]["value"], default["SUSY_ALLOW_BF16"]["value"]) == ("auto", "false")
    opted = builders.evaluator_job(OWNER_ER, evaluation_spec(
        precision="auto", allowBf16=True, env=[{"name": "SUSY_PRECISION", "value": "fp32"}]), "e", "ab" * 16, CONFIG)
    names = [e["name"] for e in container(opted)["env"]]
    assert names.count("SUSY_PRECISION") == 1
    assert (env_of(opted)["SUSY_PRECISION"]["value"], env_of(opted)["SUSY_ALLOW_BF16"]["value"]) == ("auto", "true")
    bf16 = evaluation_spec(precision="bf16")
    assert (bf16.precision, bf16.allow_bf16) == ("bf16", False)


@pytest.mark.parametrize("field, value, message", [
    ("precision", "fp16", "spec.precision"),
    ("allowBf16", "yes", "spec.allowBf16 must be true or false, got 'yes'"),
])
def test_evaluation_precision_fields_are_checked(field, value, message) -> None:
    with pytest.raises(spec_lib.SpecError, match=re.escape(message)):
        evaluation_spec(**{field: value})


def test_evaluator_parallelism_defaults_to_the_shard_count() -> None:
    job = builders.evaluator_job(OWNER_ER, evaluation_spec(parallelism=None, shards=5), "e", "ab" * 16, CONFIG)
    assert job["spec"]["parallelism"] == 5


def test_overrides_images_resources_and_user_env() -> None:
    spec = training_spec(images={"trainer": "my/trainer:2"},
                         resources={"trainer": {"limits": {"cpu": "2", "memory": "3Gi"}}},
                         env=[{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}, {"name": "HOME", "value": "/x"}])
    trainer = builders.trainer_job(OWNER_TR, spec, RUN, CONFIG)
    producer = builders.producer_job(OWNER_TR, spec, RUN, CONFIG)
    assert container(trainer)["image"] == "my/trainer:2"
    assert container(producer)["image"] == CONFIG.image
    assert container(trainer)["resources"] == {"limits": {"cpu": "2", "memory": "3Gi"}}
    env = env_of(trainer)
    assert env["TF_CPP_MIN_LOG_LEVEL"]["value"] == "2"
    assert env["HOME"]["value"] == "/tmp"  # the operator's value wins; no duplicate entry
    assert [e["name"] for e in container(trainer)["env"]].count("HOME") == 1


def test_builders_are_deterministic_and_do_not_share_state() -> None:
    first, second = ALL_JOBS["trainer"](), ALL_JOBS["trainer"]()
    assert first == second
    container(first)["env"].append({"name": "X", "value": "1"})
    container(first)["resources"]["limits"]["memory"] = "1Ti"
    assert ALL_JOBS["trainer"]() == second


def test_long_names_are_cut_to_63_characters_and_stay_distinct() -> None:
    long_a, long_b = "a" * 60 + "-x", "a" * 60 + "-y"
    names = {builders.job_name(n, c) for n in (long_a, long_b) for c in (crd.PRODUCER, crd.TRAINER)}
    assert len(names) == 4
    assert all(len(n) <= 63 and n[0].isalnum() for n in names)
    assert builders.job_name("short", crd.EVALUATOR) == "short-eval"
    owner = builders.Owner(kind=crd.TRAINING_KIND, name=long_a, namespace="ns", uid="u" * 36)
    job = builders.producer_job(owner, training_spec(), RUN, CONFIG)
    assert all(len(v) <= 63 for v in job["metadata"]["labels"].values())


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def max_pod_hostname_problem(job) -> str | None:
    """kubernetes pkg/apis/batch/validation/validation.go, ValidateJob: an Indexed Job's
    `<name>-<completions - 1>` (its last pod's hostname) must be a DNS-1123 label."""
    spec = job["spec"]
    if spec.get("completionMode") != "Indexed" or not spec.get("completions"):
        return None
    hostname = f"{job['metadata']['name']}-{spec['completions'] - 1}"
    return None if len(hostname) <= 63 and DNS_LABEL.match(hostname) else hostname


@pytest.mark.parametrize("length", [1, 54, 55, 56, 57, 62, 63])
@pytest.mark.parametrize("shards", [1, 10, 11, 101, spec_lib.MAX_SHARDS])
def test_indexed_job_names_leave_room_for_the_pod_index(length: int, shards: int) -> None:
    """EvaluationRun names up to 63 characters (the CRD's bound) with up to MAX_SHARDS shards
    give a Job the API server accepts; names that already fit keep their plain form."""
    name = ("e" * length)[:length]
    owner = builders.Owner(kind=crd.EVALUATION_KIND, name=name, namespace="ns", uid="u" * 36)
    job = builders.evaluator_job(owner, evaluation_spec(shards=shards, parallelism=1), "ev", "ab" * 16, CONFIG)
    assert max_pod_hostname_problem(job) is None, job["metadata"]["name"]
    assert job["metadata"]["name"] == builders.job_name(name, crd.EVALUATOR, shards)  # what the timer reads
    if len(f"{name}-eval-{shards - 1}") <= 63:
        assert job["metadata"]["name"] == f"{name}-eval"


def test_longest_names_stay_distinct_for_indexed_jobs() -> None:
    long_a, long_b = "a" * 61 + "-x", "a" * 61 + "-y"
    names = {builders.job_name(n, crd.EVALUATOR, spec_lib.MAX_SHARDS) for n in (long_a, long_b)}
    assert len(names) == 2 and all(len(n) <= 63 - len("-999") for n in names)


def test_store_secret_key_reaches_every_job() -> None:
    """The chart's store.secretKey (SUSY_STORE_URI_KEY) is the key in every Job's secretKeyRef."""
    cfg = config.load({"SUSY_STORE_SECRET": "mongo", "SUSY_STORE_URI_KEY": "connection-string"})
    assert cfg.store_secret_key == "connection-string"
    jobs = [builders.producer_job(OWNER_TR, training_spec(), RUN, cfg.job_config),
            builders.trainer_job(OWNER_TR, training_spec(), RUN, cfg.job_config),
            builders.evaluator_job(OWNER_ER, evaluation_spec(), "ev", "ab" * 16, cfg.job_config)]
    for job in jobs:
        assert env_of(job)["MONGODB_URI"]["valueFrom"]["secretKeyRef"] == {"name": "mongo", "key": "connection-string"}
    assert config.load({}).store_secret_key == crd.STORE_SECRET_KEY == "uri"
    assert config.load({"SUSY_STORE_URI_KEY": ""}).store_secret_key == "uri"


def test_service_account_and_pull_policy_come_from_the_operator_config() -> None:
    cfg = config.load({"SUSY_PIPELINE_IMAGE": "img:9", "SUSY_KAFKA_BOOTSTRAP": "k:1", "SUSY_STORE_SECRET": "s",
                       "SUSY_DATABASE": "db", "SUSY_IMAGE_PULL_POLICY": "Always",
                       "SUSY_JOB_SERVICE_ACCOUNT": "susy-jobs"})
    job = builders.producer_job(OWNER_TR, training_spec(), RUN, cfg.job_config)
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "susy-jobs"
    assert container(job)["imagePullPolicy"] == "Always"
    assert env_of(job)["MONGODB_URI"]["valueFrom"]["secretKeyRef"]["name"] == "s"
    assert cfg.store_uri is None and cfg.poll_seconds == 30.0  # the safety net: Job events wake a run


# --- spec validation ----------------------------------------------------------------------------------

def test_training_defaults() -> None:
    spec = spec_lib.parse_training_run({"dataset": {"uri": "x"}})
    assert spec.dataset == spec_lib.Dataset(uri="x", skip=0, limit=spec_lib.DEFAULT_LIMIT)
    assert spec.kafka == spec_lib.Kafka(topic=None, partitions=3)  # the run's own topic (builders.topic)
    assert spec.model == spec_lib.ModelParams(recipe="seed")
    assert (spec.epochs, spec.batch_size, spec.reader) == (None, None, "confluent")
    assert spec.run_policy == spec_lib.RunPolicy()


def test_spec_errors_name_every_problem() -> None:
    with pytest.raises(spec_lib.SpecError) as info:
        spec_lib.parse_evaluation_run({"model": {"id": "zz"}, "dataset": {"uris": []}, "shards": 0})
    problems = " | ".join(info.value.problems)
    assert "spec.model.id" in problems and "spec.dataset.uris" in problems and "spec.shards" in problems
    with pytest.raises(spec_lib.SpecError, match="spec.dataset is required"):
        spec_lib.parse_training_run({})


def test_model_reference_forms() -> None:
    assert evaluation_spec(model={"id": "ab" * 16}).model.store_ref == "ab" * 16
    ts = evaluation_spec(model={"timestamp": "2026-11-24T10:00:00Z"}).model
    assert ts.store_ref == "2026-11-24T10:00:00Z" and "at or before" in ts.describe()
    with pytest.raises(spec_lib.SpecError, match="RFC 3339"):
        evaluation_spec(model={"timestamp": "yesterday"})
    assert spec_lib.run_name("ns", "tr", "0123456789abcdef") == "ns.tr.01234567"


# --- status helpers --------------------------------------------------------------------------------------

def test_with_condition_adds_updates_and_keeps_transition_time() -> None:
    status: dict = {}
    status["conditions"] = st.with_condition(status, "Produced", False, reason="JobCreated", now="T1", generation=1)
    assert status["conditions"] == [{"type": "Produced", "status": "False", "reason": "JobCreated", "message": "",
                                     "lastTransitionTime": "T1", "observedGeneration": 1}]
    same = st.with_condition(status, "Produced", False, reason="JobRunning", message="m", now="T2", generation=1)
    assert same[0]["lastTransitionTime"] == "T1" and same[0]["reason"] == "JobRunning"
    flipped = st.with_condition({"conditions": same}, "Produced", True, reason="JobSucceeded", now="T3")
    assert flipped[0]["lastTransitionTime"] == "T3" and flipped[0]["status"] == "True"
    both = st.with_condition({"conditions": flipped}, "Trained", False, reason="JobCreated", now="T4")
    assert [c["type"] for c in both] == ["Produced", "Trained"]
    assert st.is_true({"conditions": both}, "Produced") and not st.is_true({"conditions": both}, "Trained")
    # Applying the same update twice gives the same list (merge-patches replace lists whole).
    again = st.with_condition({"conditions": both}, "Trained", False, reason="JobCreated", now="T5")
    assert again == both


def test_failed_patch_sets_phase_and_both_terminal_conditions() -> None:
    patch = st.failed_patch({"conditions": []}, reason="InvalidSpec", message="x" * 5000, now="T", generation=2)
    assert patch["phase"] == crd.FAILED and patch["observedGeneration"] == 2
    by_type = {c["type"]: c for c in patch["conditions"]}
    assert by_type["Failed"]["status"] == "True" and by_type["Succeeded"]["status"] == "False"
    assert len(by_type["Failed"]["message"]) == st.MESSAGE_LIMIT


def job_with(status):
    return {"metadata": {"name": "j"}, "status": status}


def test_job_state_and_summary() -> None:
    assert st.job_state(None) == "Missing"
    assert st.job_state(job_with({"active": 1})) == "Running"
    assert st.job_state(job_with({"conditions": [{"type": "Complete", "status": "True"}]})) == "Complete"
    assert st.job_state(job_with({"conditions": [{"type": "Failed", "status": "True"}]})) == "Failed"
    assert st.job_state(job_with({"conditions": [{"type": "Failed", "status": "False"}]})) == "Running"
    failed = job_with({"failed": 3, "failedIndexes": "1,3", "conditions": [
        {"type": "Failed", "status": "True", "reason": "FailedIndexes", "message": "Job has failed indexes"}]})
    assert st.job_failure_message(failed) == ("FailedIndexes", "Job j: Job has failed indexes (failed indexes: 1,3)")
    assert st.job_summary(failed) == {"name": "j", "state": "Failed", "active": 0, "succeeded": 0, "failed": 3,
                                      "failedIndexes": "1,3"}


def test_shard_counts_from_indexes() -> None:
    assert st.count_indexes("0-2,5,7-8") == 6 and st.count_indexes("") == 0 and st.count_indexes(None) == 0
    job = job_with({"active": 2, "failed": 1, "completedIndexes": "0,2-3", "failedIndexes": ""})
    assert st.shard_counts(job, 6) == {"total": 6, "succeeded": 3, "failed": 0, "active": 2, "failedPods": 1,
                                       "progress": "3/6"}
    assert st.shard_counts(None, 2)["progress"] == "0/2"


def test_pure_modules_import_neither_kopf_nor_a_client() -> None:
    import ast
    import pathlib

    root = pathlib.Path(builders.__file__).parent
    for name in ("crd.py", "spec.py", "builders.py", "status.py", "config.py", "finalizers.py", "tenancy.py"):
        tree = ast.parse((root / name).read_text())
        imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"kopf", "kubernetes", "pykube", "aiohttp"}, name


def _registered_handlers(module) -> list:
    import kopf

    registry = kopf.get_default_registry()
    return [h for sub in (registry._activities, registry._watching, registry._spawning, registry._changing)
            for h in sub.get_all_handlers() if h.fn.__module__ == module.__name__]


def test_handler_ids_stay_those_kopf_stored_progress_under() -> None:
    """kopf keeps each handler's progress in a CR's annotations under the handler's id (the
    function's name): an operator upgraded over running CRs must find the ids the older one wrote."""
    from susy_operator import handlers

    ids = {(str(h.id), getattr(h.selector, "any_name", None) if getattr(h, "selector", None) else None)
           for h in _registered_handlers(handlers)}
    observed = f"reconcile/metadata.annotations.{crd.ANNOTATION_OBSERVED}"
    assert ids == {("configure", None), ("config", None), ("job_changed", "jobs"), ("pod_changed", "pods"),
                   *{(handler_id, plural) for plural in (crd.TRAINING_PLURAL, crd.EVALUATION_PLURAL)
                     for handler_id in ("reclaim", "reconcile", observed, "count_run", "reconcile/spec.suspend",
                                        "expire")},
                   ("start_training", crd.TRAINING_PLURAL), ("start_evaluation", crd.EVALUATION_PLURAL),
                   ("reclaim", crd.CONTINUAL_PLURAL), ("reconcile_continual", crd.CONTINUAL_PLURAL)}


def test_handlers_module_is_only_kopf_wiring() -> None:
    """Each kind's behaviour lives in its own module (training_run.py, evaluation_run.py), what they
    share in runs.py: every function in handlers.py is a registered handler or a `when=` filter."""
    import inspect

    from susy_operator import handlers

    ours = _registered_handlers(handlers)
    registered = {inspect.unwrap(h.fn) for h in ours}
    filters = {h.when for h in ours if getattr(h, "when", None)}
    functions = {inspect.unwrap(fn) for _, fn in inspect.getmembers(handlers, inspect.isfunction)
                 if fn.__module__ == handlers.__name__}
    assert {fn.__name__ for fn in functions - registered - filters} == set()
    for handler in ours:  # a resource's handler is a few lines (configure is the settings, commented)
        if getattr(handler, "selector", None) is not None:
            assert len(inspect.getsource(inspect.unwrap(handler.fn)).splitlines()) <= 15, handler.id


def test_builder_input_is_not_mutated() -> None:
    raw = {"dataset": {"uri": "x"}, "env": [{"name": "A", "value": "1"}]}
    before = copy.deepcopy(raw)
    builders.trainer_job(OWNER_TR, spec_lib.parse_training_run(raw), RUN, CONFIG)
    assert raw == before


def test_the_operator_imports_neither_tensorflow_nor_kafka() -> None:
    """The operator image installs only the `operator` extra: no TensorFlow, pandas; kafka-python
    only for a ContinualTraining's offsets (kafka_offsets.log_offsets imports it when called)."""
    import subprocess
    import sys

    code = ("import sys, susy_operator.handlers, susy_pipeline.store, susy_pipeline.evaluation; "
            "print(sorted(m for m in ('tensorflow', 'tensorflow_io', 'kafka', 'pandas', 'pyarrow', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "SUSY_POLL_SECONDS": "5"})
    assert out.stdout.strip() == "[]"


def test_a_continual_trainings_offsets_are_read_without_the_pipelines_libraries(kafka_broker) -> None:
    """The operator image has kafka-python but not pyarrow, numpy's readers or TensorFlow: reading a
    topic's offsets (what a ContinualTraining's reconcile does) works with those imports refused
    (a container run found log_offsets importing pyarrow through kafka_io)."""
    import subprocess
    import sys

    from susy_pipeline.kafka_io import ensure_topic

    ensure_topic(kafka_broker, "operator-offsets", 2)
    blocked = ('pyarrow', 'tensorflow', 'tensorflow_io', 'pandas', 'confluent_kafka')
    code = (f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); "
            "import susy_operator.continual_training as ct; from susy_pipeline.kafka_offsets import log_offsets; "
            f"print(sorted(log_offsets({kafka_broker!r}, 'operator-offsets').items()))")
    # The checkout's packages, as pytest imports them (a venv shared by worktrees points elsewhere).
    env = {"PATH": "/usr/bin:/bin", "SUSY_POLL_SECONDS": "5", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[(0, (0, 0)), (1, (0, 0))]"


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]])
def test_the_operator_command_answers_help_with_or_without_run(argv, capsys) -> None:
    from susy_operator.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "Usage: susy-operator run [OPTIONS]" in out and "--standalone" in out


def test_the_operator_defaults_name_what_the_platform_chart_creates() -> None:
    cfg = config.load({})
    assert (cfg.kafka_bootstrap, cfg.store_secret) == ("susy-platform-kafka:9092", "susy-platform-mongodb")


def test_susy_namespace_in_a_runs_env_is_refused() -> None:
    """A user's env cannot move a run into another namespace's models."""
    with pytest.raises(spec_lib.SpecError, match=r"env\[0\]\.name SUSY_NAMESPACE is set by the operator"):
        spec_lib.parse_training_run({"dataset": {"uri": "x.csv"},
                                     "env": [{"name": "SUSY_NAMESPACE", "value": "another-team"}]})


def test_susy_reader_in_a_training_runs_env_is_refused_for_spec_reader() -> None:
    with pytest.raises(spec_lib.SpecError, match=r"env\[0\]\.name SUSY_READER is set by the operator"):
        spec_lib.parse_training_run({"dataset": {"uri": "x.csv"}, "env": [{"name": "SUSY_READER", "value": "tfio"}]})


def test_connection_secrets_reach_every_job_as_env_and_read_only_files() -> None:
    cfg = config.load({"SUSY_KAFKA_SECRET": "kafka-client", "SUSY_STORE_CA_SECRET": "mongo-ca"}).job_config
    for job in (builders.producer_job(OWNER_TR, training_spec(), RUN, cfg),
                builders.trainer_job(OWNER_TR, training_spec(), RUN, cfg)):
        c = container(job)
        assert c["envFrom"] == [{"secretRef": {"name": "kafka-client"}}]
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts[builders.KAFKA_SECRET_PATH]["readOnly"] and mounts[builders.STORE_CA_PATH]["readOnly"]
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        assert volumes["kafka-client"]["secret"] == {"secretName": "kafka-client"}
        # Only the CA's key, as ca.crt: the server key beside it in a cert-manager Secret stays out.
        assert volumes["store-ca"]["secret"] == {"secretName": "mongo-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    atlas = config.load({"SUSY_STORE_CA_SECRET": "atlas-ca", "SUSY_STORE_CA_KEY": "ca.pem"}).job_config
    volumes = {v["name"]: v for v in builders.trainer_job(OWNER_TR, training_spec(), RUN, atlas)
               ["spec"]["template"]["spec"]["volumes"]}
    assert volumes["store-ca"]["secret"]["items"] == [{"key": "ca.pem", "path": "ca.crt"}]
    plain = builders.producer_job(OWNER_TR, training_spec(), RUN, config.load({}).job_config)
    assert "envFrom" not in container(plain) and len(plain["spec"]["template"]["spec"]["volumes"]) == 1


# --- volumes, dataset credentials, EvaluationRun row range -------------------------------------------

PVC_VOLUMES = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "susy-data"}}],
               "volumeMounts": [{"name": "data", "mountPath": "/data"}]}


def pod_spec(job):
    return job["spec"]["template"]["spec"]


@pytest.mark.parametrize("component", sorted(ALL_JOBS))
def test_a_pvc_reaches_every_job_and_the_evaluator_mounts_it_read_only(component: str) -> None:
    if component == "evaluator":
        job = builders.evaluator_job(OWNER_ER, evaluation_spec(**PVC_VOLUMES), "e", "ab" * 16, CONFIG)
    else:
        job = getattr(builders, f"{component}_job")(OWNER_TR, training_spec(**PVC_VOLUMES), RUN, CONFIG)
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "susy-data"}} in pod_spec(job)["volumes"]
    mount = next(m for m in container(job)["volumeMounts"] if m["name"] == "data")
    assert mount["mountPath"] == "/data"
    # Forced for the evaluator (a shard only reads); as the CR says for the others.
    assert mount.get("readOnly", False) is (component == "evaluator")
    # The operator's own scratch volume stays.
    assert {"name": "scratch", "mountPath": "/tmp"} in container(job)["volumeMounts"]


def test_an_evaluator_mount_the_cr_marks_writable_is_read_only_anyway() -> None:
    raw = copy.deepcopy(PVC_VOLUMES)
    raw["volumeMounts"][0]["readOnly"] = False
    job = builders.evaluator_job(OWNER_ER, evaluation_spec(**raw), "e", "ab" * 16, CONFIG)
    assert container(job)["volumeMounts"][-1] == {"name": "data", "mountPath": "/data", "readOnly": True}
    assert raw["volumeMounts"][0]["readOnly"] is False  # the CR's fragment is copied, not changed


@pytest.mark.parametrize("kind", ["configMap", "hostPath"])
def test_configmap_and_hostpath_are_refused_unless_the_operator_allows_them(kind: str) -> None:
    source = {"configMap": {"name": "cm"}, "hostPath": {"path": "/srv/susy"}}[kind]
    raw = {"volumes": [{"name": "data", kind: source}], "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    with pytest.raises(spec_lib.SpecError) as err:
        evaluation_spec(**raw)
    assert f"spec.volumes[0].{kind}: volume type {kind} is not allowed" in str(err.value)
    assert "SUSY_ALLOWED_VOLUME_TYPES" in str(err.value)
    with pytest.raises(spec_lib.SpecError):
        spec_lib.parse_training_run({"dataset": {"uri": "/data/x.csv"}, **raw})
    allowed = config.allowed_volume_types(kind)
    parsed = spec_lib.parse_evaluation_run({"model": {"id": "ab" * 16}, "dataset": {"uris": ["/data/x"]}, **raw},
                                           allowed_volume_types=allowed)
    assert parsed.volumes.volumes[0][kind] == source


@pytest.mark.parametrize("mounts, problem", [
    ([{"name": "data", "mountPath": "/tmp"}], "is under /tmp"),
    ([{"name": "data", "mountPath": "/tmp/data"}], "is under /tmp"),
    ([{"name": "data", "mountPath": "/etc/susy/kafka"}], "is under /etc/susy"),
    ([{"name": "data", "mountPath": "/data/../tmp"}], "without . or .."),
    ([{"name": "data", "mountPath": "data"}], "must be an absolute path"),
    ([{"name": "other", "mountPath": "/data"}], "names no volume"),
    ([{"name": "data", "mountPath": "/data"}, {"name": "data", "mountPath": "/data/"}], "mounted twice"),
])
def test_mount_paths_and_names_are_checked(mounts, problem: str) -> None:
    with pytest.raises(spec_lib.SpecError) as err:
        evaluation_spec(volumes=PVC_VOLUMES["volumes"], volumeMounts=mounts)
    assert problem in str(err.value)


@pytest.mark.parametrize("volume, problem", [
    ({"name": "scratch", "persistentVolumeClaim": {"claimName": "c"}}, "operator's own"),
    ({"name": "data", "emptyDir": {}}, "exactly one source"),
    ({"name": "data", "persistentVolumeClaim": {"claimName": "c"}, "hostPath": {"path": "/x"}}, "exactly one source"),
    ({"name": "Data", "persistentVolumeClaim": {"claimName": "c"}}, "DNS label"),
])
def test_volumes_are_checked(volume, problem: str) -> None:
    with pytest.raises(spec_lib.SpecError) as err:
        training_spec(volumes=[volume])
    assert problem in str(err.value)


def test_an_unknown_allowed_volume_type_stops_the_operator_at_start() -> None:
    assert config.load({}).allowed_volume_types == {"persistentVolumeClaim"}
    assert config.load({"SUSY_ALLOWED_VOLUME_TYPES": "configMap, hostPath"}).allowed_volume_types == {
        "persistentVolumeClaim", "configMap", "hostPath"}
    with pytest.raises(ValueError, match="emptyDir"):
        config.load({"SUSY_ALLOWED_VOLUME_TYPES": "emptyDir"})


@pytest.mark.parametrize("component", sorted(ALL_JOBS))
def test_the_dataset_secret_becomes_env_from_and_is_named_in_susy_data_secret(component: str) -> None:
    if component == "evaluator":
        raw = {"uris": ["s3://bucket/test/*.parquet"], "secretName": "susy-data-s3"}
        job = builders.evaluator_job(OWNER_ER, evaluation_spec(dataset=raw), "e", "ab" * 16, CONFIG)
    else:
        raw = {"uri": "s3://bucket/train.csv.gz", "secretName": "susy-data-s3"}
        job = getattr(builders, f"{component}_job")(OWNER_TR, training_spec(dataset=raw), RUN, CONFIG)
    assert container(job)["envFrom"] == [{"secretRef": {"name": "susy-data-s3"}}]
    assert env_of(job)["SUSY_DATA_SECRET"] == {"name": "SUSY_DATA_SECRET", "value": "susy-data-s3"}
    # No credential value in the Job: only the Secret's name.
    assert "AWS_SECRET_ACCESS_KEY" not in env_of(job)


def test_no_dataset_secret_no_env_from() -> None:
    job = ALL_JOBS["evaluator"]()
    assert "envFrom" not in container(job) and "SUSY_DATA_SECRET" not in env_of(job)


def test_both_kafka_and_dataset_secrets_are_env_from() -> None:
    cfg = builders.JobConfig(**{**CONFIG.__dict__, "kafka_secret": "kafka-client"})
    job = builders.producer_job(OWNER_TR, training_spec(dataset={"uri": "/d.csv", "secretName": "creds"}), RUN, cfg)
    assert container(job)["envFrom"] == [{"secretRef": {"name": "kafka-client"}},
                                         {"secretRef": {"name": "creds"}}]


def test_evaluator_row_range_only_when_set() -> None:
    command = container(ALL_JOBS["evaluator"]())["command"]
    assert "--skip" not in command and "--limit" not in command
    ranged = evaluation_spec(dataset={"uris": ["/d.csv.gz"], "skip": 10979, "limit": 10000})
    command = container(builders.evaluator_job(OWNER_ER, ranged, "e", "ab" * 16, CONFIG))["command"]
    assert command[command.index("--skip") + 1] == "10979"
    assert command[command.index("--limit") + 1] == "10000"
    with pytest.raises(spec_lib.SpecError, match="spec.dataset.limit must be >= 1"):
        evaluation_spec(dataset={"uris": ["/d.csv.gz"], "limit": 0})


@pytest.mark.parametrize("component", sorted(ALL_JOBS))
def test_every_container_reports_its_cause_as_a_termination_message(component: str) -> None:
    """The pipeline writes its one-line error to /dev/termination-log; a container that dies before
    it can leaves its log's tail (FallbackToLogsOnError), which the operator copies into the CR."""
    for c in ALL_JOBS[component]()["spec"]["template"]["spec"]["containers"]:
        assert c["terminationMessagePath"] == "/dev/termination-log"
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_echoed_spec_values_are_bounded_and_redacted() -> None:
    """A spec error is the Failed condition, the Message column and an Event: a field's value is
    echoed at most redaction.MAX_ECHO_CHARS long, never with a password (issue 22 §4)."""
    bad = "mongodb://app:storePw7781@db:27017/?tlsCertificateKeyFilePassword=tlsKeyPw5523"
    with pytest.raises(spec_lib.SpecError) as caught:
        spec_lib.parse_training_run({"dataset": {"uri": "/d.csv"}, "kafka": {"topic": bad}, "epochs": "ten",
                                     "reader": "r" * 5000})
    message = str(caught.value)
    assert "storePw7781" not in message and "tlsKeyPw5523" not in message and len(message) < 600, message
    assert "spec.kafka.topic 'mongodb://db:27017/' does not match" in message
    assert f"got '{'r' * 64}'... (5000 characters)" in message
    assert "spec.epochs must be an integer, got 'ten'" in message
