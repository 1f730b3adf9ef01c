"""The real operator (`python -m susy_operator`, kopf + the kubernetes client) against the API
emulator, with the test Job runner standing in for the Job controller.

The pods here are the stand-ins of support/fakes.py: they write the same store records as the
real stages, through the same store functions, without Kafka or TensorFlow, so these tests take
seconds and pin down the operator's own behaviour: the state machine, restarts, retries, invalid
specs, garbage collection, Events. tests/test_operator_e2e.py runs the real stages.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from susy_operator import builders, crd, spec as spec_lib
from susy_pipeline import store as store_lib
from support import fakes
from support.fixtures import NAMESPACE, cluster, condition, evaluation_run, operator, store_uri, training_run  # noqa: F401
from support.harness import ApiError, Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TERMINAL = {crd.SUCCEEDED, crd.FAILED}


def succeeded(c: Cluster, plural: str, name: str, timeout: float = 30) -> dict[str, Any]:
    obj = c.wait_phase(plural, NAMESPACE, name, TERMINAL, timeout)
    assert obj["status"]["phase"] == crd.SUCCEEDED, json.dumps(obj["status"], indent=1)
    return obj


def test_training_then_evaluation_with_stand_in_pods(cluster: Cluster, operator, store_uri: str) -> None:
    runner = cluster.start_runner(executor=fakes.executor)
    operator()
    # The EvaluationRun comes first and waits in Pending for its TrainingRun.
    cluster.create(evaluation_run("er", {"trainingRun": "tr"}))
    pending = cluster.wait_phase("evaluationruns", NAMESPACE, "er", {crd.PENDING}, 15)
    waiting = condition(pending, crd.MODEL_RESOLVED)
    assert (waiting["status"], waiting["reason"]) == ("False", crd.REASON_WAITING_FOR_TRAINING_RUN)
    assert "does not exist yet" in waiting["message"]

    created = cluster.create(training_run("tr"))
    assert created["metadata"]["uid"]  # 201 with the server-set metadata
    tr = succeeded(cluster, "trainingruns", "tr")
    st = tr["status"]
    uid = created["metadata"]["uid"]
    assert st["runName"] == f"{NAMESPACE}.tr.{uid[:8]}"
    assert st["rowsProduced"] == 2000
    # No spec.kafka.topic: the run's own (tenancy.default_topic).
    assert st["kafka"] == {"topic": f"susy-{NAMESPACE}-tr", "offsets": [{"partition": 0, "start": 0, "end": 1000},
                                                                        {"partition": 1, "start": 0, "end": 1000}]}
    store = store_lib.open_store(store_uri, namespace=NAMESPACE)
    assert st["modelId"] == store.list_models(run=st["runName"])[0]["model_id"]
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        crd.PRODUCED: "True", crd.TRAINED: "True", crd.SUCCEEDED_CONDITION: "True"}
    assert st["observedGeneration"] == 1 and st["startTime"] and st["completionTime"]
    assert st["jobs"]["producer"]["state"] == "Complete" and st["jobs"]["trainer"]["state"] == "Complete"

    er = succeeded(cluster, "evaluationruns", "er")
    es = er["status"]
    expected = fakes.expected_totals(3)
    assert es["modelId"] == st["modelId"]
    assert (es["accuracy"], es["auc"], es["logLoss"], es["rows"]) == (
        expected["accuracy"], expected["auc"], expected["log_loss"], expected["rows"])
    assert es["confusion"] == expected["confusion"]
    assert es["shards"] == {"total": 3, "succeeded": 3, "failed": 0, "active": 0, "failedPods": 0, "progress": "3/3"}
    assert [s["index"] for s in es["shardResults"]] == [0, 1, 2]

    # Jobs: one per step, owned by their CR; the pods got the store URI from the Secret.
    assert cluster.job_creations() == {(NAMESPACE, "tr-producer"): 1, (NAMESPACE, "tr-trainer"): 1,
                                       (NAMESPACE, "er-eval"): 1}
    for job in cluster.list("jobs", NAMESPACE):
        (ref,) = job["metadata"]["ownerReferences"]
        owner = cluster.get("trainingruns" if ref["kind"] == crd.TRAINING_KIND else "evaluationruns",
                            NAMESPACE, ref["name"])
        assert owner is not None and ref["uid"] == owner["metadata"]["uid"]
    assert {run.env["MONGODB_URI"] for run in runner.runs} == {store_uri}
    eval_indexes = sorted(run.env["JOB_COMPLETION_INDEX"] for run in runner.runs if run.job == "er-eval")
    assert eval_indexes == ["0", "1", "2"]

    # Every transition posted an Event on its object (kopf posts them in the background).
    cluster.wait_for(lambda: any(e["reason"] == crd.EVENT_SUCCEEDED for e in cluster.events(NAMESPACE, "er")),
                     10, "the last Event")
    reasons = [e["reason"] for e in cluster.events(NAMESPACE, "tr")]
    assert reasons.count(crd.EVENT_JOB_CREATED) == 2
    assert {crd.EVENT_STARTED, crd.EVENT_STEP_SUCCEEDED, crd.EVENT_SUCCEEDED} <= set(reasons)
    er_reasons = [e["reason"] for e in cluster.events(NAMESPACE, "er")]
    assert {crd.EVENT_WAITING, crd.EVENT_JOB_CREATED, crd.EVENT_STARTED, crd.EVENT_SUCCEEDED} <= set(er_reasons)


def test_operator_killed_between_steps_resumes_without_duplicate_jobs(cluster: Cluster, operator) -> None:
    cluster.start_runner(executor=fakes.executor)
    # Crash right after "create the producer Job", before "write status": the Job exists, the
    # status does not know it. The restarted operator must adopt that Job, not make a second one.
    created = cluster.create(training_run("tr"))
    body = {"apiVersion": crd.API_VERSION, "kind": crd.TRAINING_KIND, "metadata": created["metadata"]}
    parsed = spec_lib.parse_training_run(created["spec"])
    run = spec_lib.run_name(NAMESPACE, "tr", created["metadata"]["uid"])
    job = builders.producer_job(builders.Owner.from_body(body), parsed, run, builders.JobConfig(
        image="susy-pipeline:test", kafka_bootstrap="127.0.0.1:9", store_secret="susy-store", database="bigdata"))
    cluster.create(job)

    first = operator()
    cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "tr-trainer"), 20, "the trainer Job")
    first.kill()  # SIGKILL between the trainer's creation and its completion
    cluster.wait_for(lambda: (cluster.get("jobs", NAMESPACE, "tr-trainer") or {}).get("status", {}).get(
        "completionTime"), 20, "the trainer Job to complete while the operator is down")

    second = operator()
    tr = succeeded(cluster, "trainingruns", "tr")
    cluster.create(evaluation_run("er", {"id": tr["status"]["modelId"]}))
    cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "er-eval"), 20, "the evaluator Job")
    second.kill()
    operator()
    succeeded(cluster, "evaluationruns", "er")

    assert cluster.job_creations() == {(NAMESPACE, "tr-producer"): 1, (NAMESPACE, "tr-trainer"): 1,
                                       (NAMESPACE, "er-eval"): 1}
    # The operator adopted the producer Job it found (409). A SIGKILL can land between creating
    # the trainer Job and recording it in status (a finished producer wakes its run at once, so
    # the two are close): the restarted operator then finds the trainer Job and adopts it (409)
    # too. Never a second Job: the 201s above are one per Job.
    creates = cluster.call(lambda: [c for c in cluster.emulator.calls if c.verb == "create"
                                    and c.resource == "jobs" and c.agent.startswith("OpenAPI-Generator")])
    codes = [c.code for c in creates]
    assert codes[0] == 409 and codes.count(201) == 2 and set(codes) <= {201, 409} and len(codes) <= 4, codes


def test_one_shard_fails_once_and_its_retry_counts_once(cluster: Cluster, operator, store_uri: str) -> None:
    runner = cluster.start_runner(executor=fakes.executor, fail_first={("er-eval", 1)})
    operator()
    store = store_lib.open_store(store_uri, namespace=NAMESPACE)
    model_id = store.save_model({"run": "somebody-else"}, b"weights")
    cluster.create(evaluation_run("er", {"id": model_id}, shards=3, parallelism=2))
    er = succeeded(cluster, "evaluationruns", "er")
    attempts = sorted((r.index, r.attempt, r.exit_code) for r in runner.runs if r.job == "er-eval")
    assert attempts == [(0, 0, 0), (1, 0, 1), (1, 1, 0), (2, 0, 0)]
    assert er["status"]["shards"] == {"total": 3, "succeeded": 3, "failed": 0, "active": 0, "failedPods": 1,
                                      "progress": "3/3"}
    expected = fakes.expected_totals(3)
    assert er["status"]["rows"] == expected["rows"] == 3 * fakes.ROWS_PER_SHARD
    assert er["status"]["accuracy"] == expected["accuracy"]
    assert len(store.shard_results(er["status"]["evaluation"])) == 3


def failed_at(obj: dict, step: str, reason: str) -> str:
    """Assert the CR ended Failed for `reason`, on its Failed condition and on the condition of the
    step that failed; return the Failed condition's message."""
    assert obj["status"]["phase"] == crd.FAILED
    failed, at_step = condition(obj, crd.FAILED_CONDITION), condition(obj, step)
    assert (failed["status"], failed["reason"]) == ("True", reason), failed
    assert (at_step["status"], at_step["reason"], at_step["message"]) == ("False", reason, failed["message"])
    return failed["message"]


def test_a_shard_out_of_retries_fails_the_run(cluster: Cluster, operator, store_uri: str) -> None:
    cluster.start_runner(executor=fakes.executor, fail_first={("er-eval", 2)})
    operator()
    model_id = store_lib.open_store(store_uri, namespace=NAMESPACE).save_model({"run": "r"}, b"weights")
    cluster.create(evaluation_run("er", {"id": model_id}, backoffLimitPerIndex=0))
    er = cluster.wait_phase("evaluationruns", NAMESPACE, "er", TERMINAL, 30)
    assert "failed indexes: 2" in failed_at(er, crd.EVALUATED, "FailedIndexes")
    assert er["status"]["shards"]["failed"] == 1 and er["status"]["shards"]["succeeded"] == 2


def test_a_producer_out_of_retries_fails_the_training_run(cluster: Cluster, operator) -> None:
    cluster.start_runner(executor=fakes.executor, fail_first={("tr-producer", 0)})
    operator()
    cluster.create(training_run("tr", runPolicy={"backoffLimit": 0}))
    tr = cluster.wait_phase("trainingruns", NAMESPACE, "tr", TERMINAL, 30)
    assert "tr-producer" in failed_at(tr, crd.PRODUCED, "BackoffLimitExceeded")
    assert [j["metadata"]["name"] for j in cluster.list("jobs", NAMESPACE)] == ["tr-producer"]  # no trainer


def test_a_trainer_that_saves_no_model_fails_the_run(cluster: Cluster, operator) -> None:
    async def saves_nothing(job: dict, index: int, env: dict) -> int:
        if job["metadata"]["name"] == "tr-trainer":
            return 0  # exits 0 without writing its model record
        return await fakes.executor(job, index, env)

    cluster.start_runner(executor=saves_nothing)
    operator()
    cluster.create(training_run("tr"))
    tr = cluster.wait_phase("trainingruns", NAMESPACE, "tr", TERMINAL, 30)
    assert "store has no model" in failed_at(tr, crd.TRAINED, crd.REASON_RECORD_MISSING)
    assert condition(tr, crd.PRODUCED)["status"] == "True"


@pytest.mark.parametrize("namespaced", [False, True], ids=["all-namespaces", "one-namespace"])
def test_invalid_specs_end_in_failed_with_the_reason(cluster: Cluster, operator, store_uri: str,
                                                     namespaced: bool) -> None:
    cluster.start_runner(executor=fakes.executor)
    operator(args=("--standalone", "--namespace", NAMESPACE) if namespaced else ("--standalone", "-A"),
             SUSY_MISSING_RUN_GRACE_SECONDS="1")
    bad_tr = training_run("no-dataset")
    del bad_tr["spec"]["dataset"]
    cases = {
        ("trainingruns", "no-dataset"): (bad_tr, crd.REASON_INVALID_SPEC, "spec.dataset is required"),
        ("evaluationruns", "zero-shards"): (evaluation_run("zero-shards", {"id": "ab" * 16}, shards=0),
                                            crd.REASON_INVALID_SPEC, "spec.shards must be between 1 and 1000"),
        ("evaluationruns", "too-parallel"): (evaluation_run("too-parallel", {"id": "ab" * 16}, parallelism=9),
                                             crd.REASON_INVALID_SPEC, "must not exceed spec.shards"),
        ("evaluationruns", "two-models"): (evaluation_run("two-models", {"id": "ab" * 16, "trainingRun": "x"}),
                                           crd.REASON_INVALID_SPEC, "exactly one way"),
        ("evaluationruns", "unknown-model"): (evaluation_run("unknown-model", {"id": "cd" * 16}),
                                              crd.REASON_MODEL_NOT_FOUND, "cd" * 16),
        ("evaluationruns", "too-early"): (evaluation_run("too-early", {"timestamp": "2001-01-01T00:00:00Z"}),
                                          crd.REASON_MODEL_NOT_FOUND, "at or before"),
        ("evaluationruns", "no-such-run"): (evaluation_run("no-such-run", {"trainingRun": "ghost"}),
                                            crd.REASON_TRAINING_RUN_NOT_FOUND, "ghost"),
    }
    # The CRD refuses the first four itself (schema and CEL), as a cluster does. The operator's own
    # check still matters for an object the API server stored before its CRD said so (Helm never
    # upgrades CRDs; a rule added later is not applied to what is stored): those are put straight
    # into the emulator's store, past admission, and must still end in Failed, not in a Job.
    refused = {"no-dataset": "name the rows one way: dataset (a file the producer writes to Kafka first) or source",
               "zero-shards": "spec.shards: Invalid value: 0: spec.shards in body should be greater than or equal to 1",
               "too-parallel": "spec: Invalid value: \"object\": parallelism must not exceed shards",
               "two-models": "spec.model: Invalid value: \"object\": name the model exactly one way"}
    for (plural, name), (obj, _, _) in cases.items():
        if name in refused:
            with pytest.raises(ApiError) as invalid:
                cluster.create(obj)
            assert invalid.value.code == 422 and refused[name] in json.loads(invalid.value.body)["message"], name
            assert cluster.emulator is not None
            cluster.call(cluster.emulator.put, plural, obj)
        else:
            cluster.create(obj)
    for (plural, name), (_, reason, text) in cases.items():
        obj = cluster.wait_phase(plural, NAMESPACE, name, TERMINAL, 20)
        assert obj["status"]["phase"] == crd.FAILED, name
        failed = condition(obj, crd.FAILED_CONDITION)
        assert failed["status"] == "True" and failed["reason"] == reason, (name, failed)
        assert text in failed["message"], (name, failed["message"])
        assert condition(obj, crd.SUCCEEDED_CONDITION)["status"] == "False"
        if reason != crd.REASON_INVALID_SPEC:  # the model reference was parsed but names nothing
            failed_at(obj, crd.MODEL_RESOLVED, reason)
        cluster.wait_for(lambda: [e for e in cluster.events(NAMESPACE, name)  # noqa: B023
                                  if e["type"] == "Warning" and reason in e["message"]], 10, f"a Warning on {name}")
    assert cluster.list("jobs", NAMESPACE) == []


def test_deleting_a_training_run_deletes_its_jobs(cluster: Cluster, operator) -> None:
    async def slow_producer(job: dict[str, Any], index: int, env: dict[str, str]) -> int:
        await asyncio.sleep(600)  # cancelled (the "pod" killed) when its Job is deleted
        return 0

    runner = cluster.start_runner(executor=slow_producer)
    operator()
    cluster.create(training_run("tr"))
    job = cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "tr-producer"), 20, "the producer Job")
    tr = cluster.get("trainingruns", NAMESPACE, "tr")
    assert job["metadata"]["ownerReferences"][0]["uid"] == tr["metadata"]["uid"]
    cluster.wait_for(lambda: runner.tasks, 10, "the producer pod to start")

    cluster.delete("trainingruns", NAMESPACE, "tr")  # kubectl delete: background propagation
    cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "tr-producer") is None, 10, "the Job's deletion")
    cluster.wait_for(lambda: not runner.tasks, 10, "the producer pod to be killed")
    assert cluster.get("trainingruns", NAMESPACE, "tr") is None


def test_liveness_endpoint_answers_with_the_probe(cluster: Cluster, operator) -> None:
    """The chart's livenessProbe: `--liveness=http://0.0.0.0:8080/healthz` (here on a free port)."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    operator(args=("--standalone", "-A", f"--liveness=http://127.0.0.1:{port}/healthz"))

    def healthz() -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                return json.loads(resp.read()) if resp.status == 200 else None
        except OSError:
            return None

    body = cluster.wait_for(healthz, 30, "/healthz")
    assert body["config"]["image"] == "susy-pipeline:test"


def test_a_non_default_store_secret_key_reaches_the_pods(cluster: Cluster, operator, store_uri: str) -> None:
    """The chart's store.secretKey (SUSY_STORE_URI_KEY) names the key in every Job's secretKeyRef,
    and the pods (the Job runner resolves secretKeyRef as the kubelet does) get the URI from it."""
    import base64

    runner = cluster.start_runner(executor=fakes.executor)
    cluster.create({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": "mongo", "namespace": NAMESPACE},
                    "data": {"connection-string": base64.b64encode(store_uri.encode()).decode()}})
    operator(SUSY_STORE_SECRET="mongo", SUSY_STORE_URI_KEY="connection-string")
    cluster.create(training_run("tr"))
    succeeded(cluster, "trainingruns", "tr")
    for job in cluster.list("jobs", NAMESPACE):
        (c,) = job["spec"]["template"]["spec"]["containers"]
        (uri,) = [e for e in c["env"] if e["name"] == "MONGODB_URI"]
        assert uri["valueFrom"]["secretKeyRef"] == {"name": "mongo", "key": "connection-string"}
    assert len(runner.runs) == 2 and {run.env["MONGODB_URI"] for run in runner.runs} == {store_uri}


def test_the_longest_evaluation_run_name_with_the_most_shards_gets_its_job(cluster: Cluster, operator,
                                                                          store_uri: str) -> None:
    """A 63-character name (the CRD's bound) and MAX_SHARDS shards: the Indexed Job's last pod
    hostname `<job>-999` must still be a DNS label, or the API server refuses the Job (the emulator
    applies ValidateJob's rule)."""
    operator()
    model_id = store_lib.open_store(store_uri, namespace=NAMESPACE).save_model({"run": "r"}, b"weights")
    name = "e" * 62 + "9"
    cluster.create(evaluation_run(name, {"id": model_id}, shards=spec_lib.MAX_SHARDS, parallelism=1))
    er = cluster.wait_phase("evaluationruns", NAMESPACE, name, {crd.EVALUATING, crd.FAILED}, 20)
    assert er["status"]["phase"] == crd.EVALUATING, er["status"]
    (job,) = cluster.list("jobs", NAMESPACE)
    assert job["metadata"]["name"] == builders.job_name(name, crd.EVALUATOR, spec_lib.MAX_SHARDS)
    assert len(f"{job['metadata']['name']}-{spec_lib.MAX_SHARDS - 1}") <= 63
    assert job["spec"]["completions"] == spec_lib.MAX_SHARDS
    creates = cluster.call(lambda: [c.code for c in cluster.emulator.calls if c.verb == "create"
                                    and c.resource == "jobs"])
    assert creates == [201]
