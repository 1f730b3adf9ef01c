"""End to end with planted secrets: what a failed step says, and where no secret may appear (issue
22 §4, §8).

The real operator against the API emulator, each pod's command a local process of the test Job
runner (which publishes a pod's termination message as the kubelet does, tests/support/pods.py),
the tansu broker. Planted: a store URI with a password, a TLS key password and an AWS session token
in its query (the operator's MONGODB_URI and the Jobs' store Secret; it answers nowhere, so the
store is down for the whole test), and a Kafka SASL password in the Kafka Secret every Job gets as
environment. Then:

- a TrainingRun whose `dataset.skip` is past the end of the file, and one whose S3 URI names no
  bucket, end Failed with the pipeline's own error in status.message, the Failed condition and the
  Warning Event (they said only "Container exited with code 2");
- an EvaluationRun waits on the store that is down, with a StoreUnavailable condition;
- no planted secret is in any log (the operator's, every pod's), termination message, status,
  Event, or command line (the Jobs' and the processes the runner started).
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from susy_operator import crd
from support.fixtures import NAMESPACE, SECRET, cluster, condition, evaluation_run, operator, training_run  # noqa: F401
from support.harness import SAMPLE, Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SECRETS = ("storePw7781", "tlsKeyPw5523", "sessTok9917", "saslPw3319")
PLANTED_STORE_URI = ("mongodb://susy-app:storePw7781@127.0.0.1:1/bigdata?authSource=admin"
                     "&tlsCertificateKeyFilePassword=tlsKeyPw5523"
                     "&authMechanismProperties=AWS_SESSION_TOKEN:sessTok9917")
KAFKA_SECRET = "kafka-client"


@pytest.fixture
def store_uri() -> str:
    """Overrides the fixtures' embedded store: the planted URI, in the Secret and the operator."""
    return PLANTED_STORE_URI


def _secret(name: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NAMESPACE},
            "type": "Opaque", "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def _found(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def test_failed_steps_say_why_and_no_planted_secret_appears_anywhere(cluster: Cluster, operator, kafka_broker: str,
                                                                   tmp_path: Path) -> None:
    # PLAINTEXT (tansu's), so the SASL credentials are carried, unused, in every Job's environment.
    cluster.create(_secret(KAFKA_SECRET, {"KAFKA_SASL_USERNAME": "susy", "KAFKA_SASL_PASSWORD": "saslPw3319"}))
    runner = cluster.start_runner()
    process = operator(SUSY_KAFKA_BOOTSTRAP=kafka_broker, SUSY_KAFKA_SECRET=KAFKA_SECRET, SUSY_POLL_SECONDS="0.5")

    cluster.create(training_run("tr-skip", dataset={"uri": str(SAMPLE), "skip": 30_000, "limit": 100},
                                kafka={"topic": "secrets-skip", "partitions": 1}))
    cluster.create(training_run("tr-no-bucket", dataset={"uri": "s3:///susy.csv.gz", "limit": 100},
                                kafka={"topic": "secrets-bucket", "partitions": 1}))
    cluster.create(evaluation_run("er-store", {"id": "0" * 32}, shards=1))

    causes = {"tr-skip": f"{SAMPLE}: no data rows after skipping 30000",
              "tr-no-bucket": "s3:///susy.csv.gz: expected s3://BUCKET/KEY"}
    for name, cause in causes.items():
        tr = cluster.wait_phase("trainingruns", NAMESPACE, name, {crd.SUCCEEDED, crd.FAILED}, 120)
        assert tr["status"]["phase"] == crd.FAILED, tr["status"]
        # The Message column (status.message), the Failed condition and the Event lead with the cause.
        assert tr["status"]["message"].startswith(f"pod {name}-producer-"), tr["status"]["message"]
        assert f"Error (exit code 2): {cause}" in tr["status"]["message"]
        assert cause in condition(tr, crd.FAILED_CONDITION)["message"]
        warnings = [e["message"] for e in cluster.events(NAMESPACE, name) if e.get("type") == "Warning"]
        assert any(cause in m for m in warnings), warnings

    def store_unavailable() -> dict | None:
        er = cluster.get("evaluationruns", NAMESPACE, "er-store") or {}
        return next((c for c in (er.get("status") or {}).get("conditions") or []
                     if c.get("reason") == crd.REASON_STORE_UNAVAILABLE), None)

    down = cluster.wait_for(store_unavailable, 90, "the EvaluationRun to report the store down", interval=0.5)
    assert "MongoDB at mongodb://127.0.0.1:1 is unreachable" in down["message"], down

    # Nowhere: every file the operator and the pods wrote (logs, termination messages), every
    # object's status and every Event, and every command line.
    written = {str(p): p.read_text(errors="replace") for p in tmp_path.rglob("*")
               if p.is_file() and p.suffix in (".log", ".termination-log")}
    assert any("operator." in p for p in written) and any("tr-skip-producer" in p for p in written), sorted(written)
    for path, text in written.items():
        assert not _found(text), (path, _found(text), text[-1500:])
    for plural in (crd.TRAINING_PLURAL, crd.EVALUATION_PLURAL):
        for obj in cluster.list(plural, NAMESPACE):
            assert not _found(json.dumps(obj.get("status"))), obj["status"]
    events = json.dumps(cluster.list("events", NAMESPACE))
    assert not _found(events)
    for job in cluster.list("jobs", NAMESPACE):
        for c in job["spec"]["template"]["spec"]["containers"]:
            assert not _found(json.dumps([c.get("command"), c.get("args")])), c
    assert runner.runs and all(not _found(json.dumps(run.command)) for run in runner.runs)
    # The planted values did reach the pods (so "not found" above means redacted, not absent).
    assert all(run.env.get("KAFKA_SASL_PASSWORD") == "saslPw3319" for run in runner.runs if run.env)
    assert process.process is not None and process.process.poll() is None
