"""What a run's author may reach, enforced by the real operator against the API emulator (issue 22).

- each escalation path (an image, reserved env names, a dataset path into the pod, a Secret and a
  claim not open to runs) fails the run with reason NotAllowed before any Job exists, its message
  naming the field and the setting, with a Warning Event; the setting, or the label, lets the same
  spec run;
- per-namespace store credentials: every Job reads MONGODB_URI from the run's own namespace's
  Secret and writes into that namespace's database, and the operator reads the run's results there;
- two TrainingRuns naming one topic at once both succeed, the younger waiting (TopicBusy) until the
  older has produced: real producers against the tansu broker, disjoint offsets.
The pure decisions are in tests/test_operator_tenancy.py.
"""
from __future__ import annotations

import asyncio
import json
import sys

import pytest

from susy_operator import crd, tenancy
from support import fakes
from support.fixtures import NAMESPACE, SECRET, cluster, condition, evaluation_run, operator, store_uri, training_run  # noqa: F401
from support.harness import REPO, SAMPLE, Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

OPEN_TO_RUNS = {tenancy.LABEL_ALLOW_RUNS: "true"}


def _failed(cluster: Cluster, plural: str, name: str, namespace: str = NAMESPACE) -> dict:
    obj = cluster.wait_phase(plural, namespace, name, {crd.SUCCEEDED, crd.FAILED}, 30)
    assert obj["status"]["phase"] == crd.FAILED, json.dumps(obj["status"], indent=1)
    return condition(obj, crd.FAILED_CONDITION)


def test_every_escalation_path_is_refused_naming_the_field_and_the_setting(cluster: Cluster, operator) -> None:
    cluster.start_runner(executor=fakes.executor)
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "team-creds", "namespace": NAMESPACE},
                    "stringData": {"AWS_ACCESS_KEY_ID": "x"}})
    operator()
    cluster.create(training_run(
        "escalate", images={"trainer": "evil/miner:1"},
        env=[{"name": "LD_PRELOAD", "value": "/tmp/x.so"}, {"name": "PYTHONPATH", "value": "/tmp"}],
        dataset={"uri": "/proc/self/environ", "secretName": "team-creds"},
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "team-data"}}],
        volumeMounts=[{"name": "data", "mountPath": "/data"}]))
    failed = _failed(cluster, "trainingruns", "escalate")
    assert failed["reason"] == crd.REASON_NOT_ALLOWED
    message = failed["message"]
    for field, setting in (
            ("spec.images.trainer 'evil/miner:1' is not an allowed image", "tenancy.allowedImages (env SUSY_ALLOWED_IMAGES)"),
            ("spec.env[0].name LD_PRELOAD is reserved", "no operator setting allows it"),
            ("spec.env[1].name PYTHONPATH is reserved", "no operator setting allows it"),
            ("spec.dataset.uri '/proc/self/environ' reaches /proc", "no operator setting allows it"),
            ("spec.dataset.secretName team-creds: the Secret is not open to runs: label it susy.dev/allow-runs=true",
             "tenancy.allowedSecrets (env SUSY_ALLOWED_SECRETS)"),
            ("spec.volumes[0].persistentVolumeClaim.claimName team-data: no such PersistentVolumeClaim", "")):
        assert field in message and setting in message, (field, message)
    assert cluster.list("jobs", NAMESPACE) == []
    (event,) = [e for e in cluster.events(NAMESPACE, "escalate") if e.get("type") == "Warning"]
    assert "evil/miner:1" in event["message"]

    # The operator's own Secret, labelled or not, is never a run's dataset Secret.
    cluster.create(evaluation_run("er-store", {"id": "ab" * 16},
                                  dataset={"uris": ["s3://b/x.parquet"], "secretName": SECRET}))
    failed = _failed(cluster, "evaluationruns", "er-store")
    assert failed["reason"] == crd.REASON_NOT_ALLOWED
    assert "spec.dataset.secretName susy-store is one of the operator's own connection Secrets" in failed["message"]


def test_the_setting_or_the_label_lets_the_same_spec_run(cluster: Cluster, operator) -> None:
    cluster.start_runner(executor=fakes.executor)
    operator(SUSY_ALLOWED_IMAGES="registry.example/team-*/susy:*")
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "team-creds", "namespace": NAMESPACE, "labels": OPEN_TO_RUNS}, "stringData": {"AWS_REGION": "x"}})
    cluster.create(training_run("allowed", images={"trainer": "registry.example/team-a/susy:2"},
                                env=[{"name": "OMP_NUM_THREADS", "value": "2"}],
                                dataset={"uri": str(SAMPLE), "limit": 1000, "secretName": "team-creds"}))
    tr = cluster.wait_phase("trainingruns", NAMESPACE, "allowed", {crd.SUCCEEDED, crd.FAILED}, 60)
    assert tr["status"]["phase"] == crd.SUCCEEDED, json.dumps(tr["status"], indent=1)
    trainer = cluster.get("jobs", NAMESPACE, "allowed-trainer")["spec"]["template"]["spec"]["containers"][0]
    assert trainer["image"] == "registry.example/team-a/susy:2"
    # Its own topic, by default.
    assert tr["status"]["kafka"]["topic"] == f"susy-{NAMESPACE}-allowed"


def test_per_namespace_store_credentials(cluster: Cluster, operator, tmp_path) -> None:
    """Each namespace's Jobs log in with the namespace's own Secret and write into its own database;
    the operator (its own URI) reads the run's records there."""
    team_uri = f"sqlite:///{tmp_path}/team-b.sqlite3"
    cluster.create_store_secret("team-b", "susy-store-b", team_uri)
    cluster.start_runner(executor=fakes.executor)
    operator(SUSY_STORE_NAMESPACE_SECRET="susy-store-b", SUSY_NAMESPACE_DATABASE="susy-{namespace}",
             MONGODB_URI=team_uri)
    tr = training_run("tr", dataset={"uri": str(SAMPLE), "limit": 1000})
    tr["metadata"]["namespace"] = "team-b"
    cluster.create(tr)
    done = cluster.wait_phase("trainingruns", "team-b", "tr", {crd.SUCCEEDED, crd.FAILED}, 60)
    assert done["status"]["phase"] == crd.SUCCEEDED, json.dumps(done["status"], indent=1)
    producer = cluster.get("jobs", "team-b", "tr-producer")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in producer["env"]}
    assert env["MONGODB_URI"]["valueFrom"]["secretKeyRef"] == {"name": "susy-store-b", "key": "uri"}
    assert (env["SUSY_DATABASE"]["value"], env["SUSY_NAMESPACE"]["value"]) == ("susy-team-b", "team-b")
    from susy_pipeline import store as store_lib

    team_store = store_lib.open_store(team_uri, "susy-team-b", namespace="team-b")
    assert team_store.resolve_model(done["status"]["modelId"])["run"] == done["status"]["runName"]
    assert store_lib.open_store(team_uri, "bigdata", namespace="team-b").list_models() == []


def _real_producer_fake_trainer(events: list[tuple[str, str]]):
    """Runs each producer pod's own command (the real `susy_pipeline produce` against the broker);
    the trainer is faked (support/fakes.py): this test is about the topic."""
    async def execute(job: dict, index: int, env: dict[str, str]) -> int:
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        if command[3] != "produce":
            return await fakes.executor(job, index, env)
        events.append(("start", job["metadata"]["name"]))
        process = await asyncio.create_subprocess_exec(sys.executable, *command[1:], env=env, cwd=str(REPO),
                                                       stdout=asyncio.subprocess.DEVNULL,
                                                       stderr=asyncio.subprocess.DEVNULL)
        code = await process.wait()
        events.append(("end", job["metadata"]["name"]))
        return code
    return execute


@pytest.mark.timeout(300)
def test_two_runs_naming_one_topic_at_once_both_succeed_one_after_the_other(
        cluster: Cluster, operator, store_uri: str, kafka_broker: str) -> None:
    events: list[tuple[str, str]] = []
    cluster.start_runner(executor=_real_producer_fake_trainer(events))
    operator(SUSY_KAFKA_BOOTSTRAP=kafka_broker)
    rows = 3000
    for name in ("first", "second"):
        cluster.create(training_run(name, dataset={"uri": str(SAMPLE), "limit": rows},
                                    kafka={"topic": "trainData", "partitions": 2}))
    runs = {name: cluster.wait_phase("trainingruns", NAMESPACE, name, {crd.SUCCEEDED, crd.FAILED}, 240)
            for name in ("first", "second")}
    for name, tr in runs.items():
        assert tr["status"]["phase"] == crd.SUCCEEDED, (name, json.dumps(tr["status"], indent=1))
        assert tr["status"]["rowsProduced"] == rows and tr["status"]["kafka"]["topic"] == "trainData"
    # One producer at a time: the younger started only after the older had ended.
    assert [kind for kind, _ in events] == ["start", "end", "start", "end"], events
    # The one that waited names the other (created in the same second, the uid decides which is older).
    waited = {name: [e for e in cluster.events(NAMESPACE, name) if e.get("reason") == crd.EVENT_WAITING]
              for name in runs}
    (younger,) = [name for name, found in waited.items() if found]
    (older,) = set(runs) - {younger}
    assert f"topic trainData: TrainingRun {older}, created earlier, has not finished producing" \
        in waited[younger][0]["message"]
    # Each run's recorded offsets: its own rows, no interleaving.
    spans = {name: {o["partition"]: (o["start"], o["end"]) for o in tr["status"]["kafka"]["offsets"]}
             for name, tr in runs.items()}
    for partition, (start, end) in spans[younger].items():
        assert start >= spans[older][partition][1]
    assert sum(e - s for s, e in spans[younger].values()) == rows
