"""A ContinualTraining end to end: the real operator on the API emulator, the real pipeline
stages as local processes (the test Job runner), tansu, and a producer streaming at a fixed rate.

Topic ct-e2e, 2 partitions, 10 rows a message, written by `produce --rate 300 --loop` from the
sample's training rows. Generation 1 trains from scratch and becomes champion; generation 2 is
trained with learning rate 1.0 (a challenger that cannot learn) and is rejected; generation 3
(the learning rate back to the recipe's) continues the champion on generation 2's rows and its
own, and is promoted. The operator is SIGKILLed once mid-generation and restarted. `suspend`
gates the generations so each one's spec is the one the test set.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from susy_operator import continual as ct, crd
from susy_pipeline import store as store_lib
from susy_pipeline.kafka_offsets import log_offsets
from support.fixtures import NAMESPACE, cluster, operator, store_uri, write_messages  # noqa: F401
from support.harness import REPO, SAMPLE, Cluster
from support.operator_container import free_port

pytestmark = [pytest.mark.integration]

NAME = "live"
PATH = f"/apis/{crd.GROUP}/{crd.VERSION}/namespaces/{NAMESPACE}/{crd.CONTINUAL_PLURAL}/{NAME}"


def continual_training(**spec) -> dict:
    body = {"kafka": {"topic": "ct-e2e", "rowsPerMessage": 10}, "trigger": {"everyRows": 2000},
            "model": {"recipe": "seed"}, "epochs": 1, "reader": "kafka-python",  # tansu: see docs/deploy.md
            "evaluation": {"dataset": {"uris": [str(SAMPLE)], "skip": 10979, "limit": 4000}, "metric": "auc",
                           "margin": 0.0},
            "alias": "ct-e2e", "historyLimit": 10, **spec}
    return {"apiVersion": crd.API_VERSION, "kind": crd.CONTINUAL_KIND,
            "metadata": {"name": NAME, "namespace": NAMESPACE}, "spec": body}


def patch_spec(cluster: Cluster, spec: dict) -> None:
    cluster.request("PATCH", PATH, {"spec": spec}, content_type="application/merge-patch+json")


def status(cluster: Cluster) -> dict:
    return (cluster.get(crd.CONTINUAL_PLURAL, NAMESPACE, NAME) or {}).get("status") or {}


def decided(cluster: Cluster, generation: int, runner) -> dict:
    def last():
        decision = status(cluster).get("lastDecision") or {}
        return decision if decision.get("generation") == generation else None
    try:
        return cluster.wait_for(last, 240, f"generation {generation}'s decision", interval=0.2)
    except AssertionError:
        logs = {run.log: open(run.log).read()[-1500:] for run in runner.runs if run.log and run.exit_code}
        raise AssertionError((status(cluster), logs)) from None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_generations_follow_the_stream_champion_and_challenger(cluster: Cluster, operator, store_uri: str,
                                                               kafka_broker: str, tmp_path) -> None:
    runner = cluster.start_runner()
    env = {"SUSY_KAFKA_BOOTSTRAP": kafka_broker, "SUSY_POLL_SECONDS": "0.5"}
    producer = subprocess.Popen(
        [sys.executable, "-m", "susy_pipeline", "produce", "--data", str(SAMPLE), "--limit", "10979",
         "--rate", "300", "--loop", "--rows-per-message", "10", "--partitions", "2", "--topic", "ct-e2e",
         "--bootstrap", kafka_broker, "--run-name", "stream", "--store", store_uri],
        cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = operator(**env)
        cluster.create(continual_training())
        cluster.wait_for(lambda: cluster.get(crd.TRAINING_PLURAL, NAMESPACE, f"{NAME}-g1-train"), 60, "generation 1")
        patch_spec(cluster, {"suspend": True})  # generation 1 finishes; none starts after it

        one = decided(cluster, 1, runner)
        assert one["decision"] == crd.PROMOTED and one["reason"] == crd.REASON_FIRST_GENERATION
        champion = one["challenger"]["modelId"]
        store = store_lib.open_store(store_uri, namespace=NAMESPACE)  # the operator's: the CR's namespace
        assert store.get_alias("ct-e2e")["model_id"] == champion

        # Generation 2: a challenger that cannot learn.
        patch_spec(cluster, {"suspend": False, "model": {"learningRate": 1.0}})
        cluster.wait_for(lambda: cluster.get(crd.TRAINING_PLURAL, NAMESPACE, f"{NAME}-g2-train"), 60, "generation 2")
        patch_spec(cluster, {"suspend": True, "model": {"learningRate": None}})
        two = decided(cluster, 2, runner)
        assert two["decision"] == crd.REJECTED, two
        assert two["challenger"]["value"] <= two["champion"]["value"]
        assert store.get_alias("ct-e2e")["model_id"] == champion

        # Generation 3: the recipe's learning rate; the operator is killed mid-generation.
        patch_spec(cluster, {"suspend": False})
        cluster.wait_for(lambda: cluster.get(crd.TRAINING_PLURAL, NAMESPACE, f"{NAME}-g3-train"), 60, "generation 3")
        patch_spec(cluster, {"suspend": True})
        first.kill()
        time.sleep(2)
        operator(**env)
        three = decided(cluster, 3, runner)
        assert three["decision"] == crd.PROMOTED, three
        assert three["challenger"]["value"] > three["champion"]["value"]
        assert store.get_alias("ct-e2e")["model_id"] == three["challenger"]["modelId"] != champion
    finally:
        producer.send_signal(signal.SIGTERM)
        producer.communicate(timeout=60)

    final = status(cluster)
    assert final["generation"] == 3 and final["champion"]["modelId"] == three["challenger"]["modelId"]
    # The children: one TrainingRun per generation (none made twice after the restart), one
    # EvaluationRun per generation after the first; contiguous, non-overlapping offsets that
    # cover every offset from the topic's start to the last trigger.
    trainings = {t["metadata"]["name"]: t for t in cluster.list(crd.TRAINING_PLURAL, NAMESPACE)}
    assert sorted(trainings) == [f"{NAME}-g{g}-train" for g in (1, 2, 3)]
    assert sorted(e["metadata"]["name"] for e in cluster.list(crd.EVALUATION_PLURAL, NAMESPACE)) == \
        [f"{NAME}-g{g}-eval" for g in (2, 3)]
    ranges = [ct.ranges_map([{**o, "start": o.get("start", 0)} for o in
                             trainings[f"{NAME}-g{g}-train"]["spec"]["source"]["kafka"]["offsets"]]) for g in (1, 2, 3)]
    assert [ct.ranges_map(h["offsets"]) for h in final["history"]] == ranges
    ends = {}
    for p in (0, 1):
        covered = sorted(o for r in ranges if p in r for o in range(*r[p]))
        ends[p] = ranges[-1][p][1]
        assert covered == list(range(ends[p])), f"partition {p}"
    assert ct.offsets_map(final["consumed"]) == ends
    held = log_offsets(kafka_broker, "ct-e2e")
    assert all(held[p][1] >= ends[p] for p in ends)
    # Rows: each child's own count, from its model's record (a spec.source.kafka run has no
    # producer to count them); a paced piece's or a loop's last message holds fewer than 10, so
    # offsets x 10 only bounds them.
    rows = [trainings[f"{NAME}-g{g}-train"]["status"]["rowsTrained"] for g in (1, 2, 3)]
    assert rows == [store.resolve_model(trainings[f"{NAME}-g{g}-train"]["status"]["modelId"])["rows"]
                    for g in (1, 2, 3)]
    assert all(0 < n <= sum(end - start for start, end in r.values()) * 10 for n, r in zip(rows, ranges))
    assert final["rowsConsumed"] == sum(rows) and [h["rows"] for h in final["history"]] == rows
    # Owner references on every child; the alias history holds the two promotions only.
    for child in [*trainings.values(), *cluster.list(crd.EVALUATION_PLURAL, NAMESPACE)]:
        assert [r["name"] for r in child["metadata"]["ownerReferences"]] == [NAME]
    history = store.alias_history("ct-e2e")
    assert sorted(h["model_id"] for h in history) == sorted([champion, three["challenger"]["modelId"]])
    assert all(f"ContinualTraining {NAMESPACE}/{NAME}" in h["set_by"] for h in history)
    events = {e["reason"] for e in cluster.events(NAMESPACE, NAME)}
    assert {crd.EVENT_PROMOTED, crd.EVENT_REJECTED, crd.EVENT_GENERATION_STARTED} <= events
    # Deleting the resource leaves the models and the alias.
    cluster.delete(crd.CONTINUAL_PLURAL, NAMESPACE, NAME)
    assert store.get_alias("ct-e2e")["model_id"] == three["challenger"]["modelId"]
    assert store.resolve_model(champion)["model_id"] == champion


@pytest.mark.timeout(120)
def test_a_missing_topic_waits_naming_it_and_an_invalid_spec_fails_naming_the_field(
        cluster: Cluster, operator, kafka_broker: str) -> None:
    """No generation can start: the topic does not exist (DataLost, reason TopicMissing, and the
    resource keeps waiting), or the spec breaks a rule the CRD would have refused (one stored
    before the rule: phase Failed, InvalidSpec naming the field)."""
    from support import fakes

    cluster.start_runner(executor=fakes.executor)
    operator(SUSY_KAFKA_BOOTSTRAP=kafka_broker, SUSY_POLL_SECONDS="0.5")
    cluster.create(continual_training(kafka={"topic": "ct-never-written"}))

    def lost() -> dict | None:
        conditions = {c["type"]: c for c in status(cluster).get("conditions") or []}
        return conditions.get(crd.DATA_LOST_CONDITION) if crd.DATA_LOST_CONDITION in conditions else None
    condition = cluster.wait_for(lost, 60, "the DataLost condition")
    assert (condition["status"], condition["reason"]) == ("True", crd.REASON_TOPIC_MISSING)
    assert "topic ct-never-written does not exist (consumed so far: nothing)" in condition["message"]
    assert status(cluster).get("generation") is None and not cluster.list(crd.TRAINING_PLURAL, NAMESPACE)
    assert "topic ct-never-written does not exist" in status(cluster)["nextTrigger"]

    bad = continual_training(trigger={})
    bad["metadata"]["name"] = "bad"
    cluster.call(cluster.emulator.put, crd.CONTINUAL_PLURAL, bad)
    failed = cluster.wait_for(lambda: ((cluster.get(crd.CONTINUAL_PLURAL, NAMESPACE, "bad") or {}).get("status")
                                       or {}).get("phase") == crd.FAILED
                              and cluster.get(crd.CONTINUAL_PLURAL, NAMESPACE, "bad"), 60, "bad to fail")
    assert "spec.trigger needs everyRows, everySeconds or both" in failed["status"]["message"]


@pytest.mark.timeout(120)
def test_an_alias_moved_by_someone_else_is_not_overwritten(cluster: Cluster, operator, store_uri: str,
                                                           kafka_broker: str) -> None:
    """Generation 1 sets the alias; a person then points it at another model; generation 2's
    challenger (which wins, fake scores) is not promoted over the person's choice: the generation
    fails with AliasMoved, and that model is the champion from then on. Pods are fakes."""
    from support import fakes

    cluster.start_runner(executor=fakes.executor)
    metrics_port = free_port()
    operator(SUSY_KAFKA_BOOTSTRAP=kafka_broker, SUSY_POLL_SECONDS="0.5", SUSY_METRICS_PORT=str(metrics_port))
    topic = f"ct-moved-{time.time_ns()}"
    write_messages(kafka_broker, topic, 5)
    cluster.create(continual_training(kafka={"topic": topic}, trigger={"everyRows": 5}))

    def decision(generation: int) -> dict | None:
        last = status(cluster).get("lastDecision") or {}
        return last if last.get("generation") == generation else None
    first = cluster.wait_for(lambda: decision(1), 60, "generation 1")
    store = store_lib.open_store(store_uri, namespace=NAMESPACE)
    chosen = store.save_model({"run": "chosen-by-hand"}, b"weights")
    store.set_alias("ct-e2e", chosen, set_by="a person", expected_model_id=first["challenger"]["modelId"])
    write_messages(kafka_broker, topic, 5)
    second = cluster.wait_for(lambda: decision(2), 60, "generation 2")
    assert (second["decision"], second["reason"]) == (crd.GENERATION_FAILED, crd.REASON_ALIAS_MOVED), second
    assert store.get_alias("ct-e2e")["model_id"] == chosen
    assert status(cluster)["champion"]["modelId"] == chosen
    assert crd.EVENT_GENERATION_FAILED in {e["reason"] for e in cluster.events(NAMESPACE, NAME)}
    # The operator's metrics: generation 1 succeeded and was promoted (the first); generation 2
    # failed (AliasMoved), and a challenger not promoted over a person's choice is no rejection.
    assert scrape(metrics_port, "susy_operator_generations_total", "susy_operator_promotions_total") == {
        'susy_operator_generations_total{outcome="succeeded"}': 1.0,
        'susy_operator_generations_total{outcome="failed"}': 1.0,
        'susy_operator_promotions_total{result="promoted"}': 1.0,
        'susy_operator_promotions_total{result="rejected"}': 0.0}


def scrape(port: int, *names: str) -> dict[str, float]:
    """The operator's /metrics samples of these names, in the exposition format Prometheus reads."""
    from prometheus_client.parser import text_string_to_metric_families

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


@pytest.mark.timeout(240)
def test_a_trainingrun_past_the_log_end_fails_naming_the_offsets_the_log_holds(
        cluster: Cluster, operator, kafka_broker: str) -> None:
    """A TrainingRun with spec.source (no producer) whose range ends past the log: the real trainer
    exits 2 before reading, and the run is Failed with its message: the topic, the partition and
    the offsets that exist. No producer Job is ever made."""
    from support.fixtures import training_run

    cluster.start_runner()
    operator(SUSY_KAFKA_BOOTSTRAP=kafka_broker, SUSY_POLL_SECONDS="0.5")
    topic = f"tr-source-{time.time_ns()}"
    write_messages(kafka_broker, topic, 20)
    body = training_run("from-kafka", source={"kafka": {"topic": topic, "offsets": [
        {"partition": 0, "start": 10, "end": 50}]}}, reader="kafka-python")
    del body["spec"]["dataset"], body["spec"]["kafka"]
    cluster.create(body)
    tr = cluster.wait_phase(crd.TRAINING_PLURAL, NAMESPACE, "from-kafka", {crd.SUCCEEDED, crd.FAILED}, 200)
    assert tr["status"]["phase"] == crd.FAILED, tr["status"]
    message = tr["status"]["message"]
    assert f"topic {topic}" in message
    assert "partition 0: offsets 20..49 are past the log end; the log holds offsets 0..19" in message
    assert cluster.get("jobs", NAMESPACE, "from-kafka-producer") is None
    assert tr["status"]["kafka"] == {"topic": topic, "offsets": [{"partition": 0, "start": 10, "end": 50}]}
