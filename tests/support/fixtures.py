"""pytest fixtures for the operator tests (imported by tests/test_operator_*.py)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from susy_operator import crd
from support.harness import SAMPLE, Cluster, OperatorProcess

NAMESPACE = "default"
SECRET = "susy-store"


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store.sqlite3"  # four slashes: an absolute path


@pytest.fixture
def cluster(tmp_path: Path, store_uri: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path).start()
    # The Jobs read the store URI from this Secret (secretKeyRef), as in the chart.
    c.create_store_secret(NAMESPACE, SECRET, store_uri)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path, store_uri: str) -> Iterator[Callable[..., OperatorProcess]]:
    """Start (and at teardown stop) the real operator; `operator(args=..., **env)`."""
    started: list[OperatorProcess] = []

    def start(args: tuple[str, ...] = ("--standalone", "-A"), **env: str) -> OperatorProcess:
        process = OperatorProcess(cluster.url, tmp_path, {
            "MONGODB_URI": store_uri, "SUSY_STORE_SECRET": SECRET, "SUSY_DATABASE": "bigdata",
            "SUSY_PIPELINE_IMAGE": "susy-pipeline:test", "SUSY_KAFKA_BOOTSTRAP": "127.0.0.1:9",
            **env}, args=args).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def training_run(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"dataset": {"uri": str(SAMPLE), "limit": 2000}, "kafka": {"partitions": 2}}
    body.update(spec)
    return {"apiVersion": crd.API_VERSION, "kind": crd.TRAINING_KIND,
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": body}


def evaluation_run(name: str, model: dict[str, str], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "dataset": {"uris": [str(SAMPLE)]}, "shards": 3}
    body.update(spec)
    return {"apiVersion": crd.API_VERSION, "kind": crd.EVALUATION_KIND,
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": body}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    raise AssertionError(f"no {type_} condition in {obj.get('status')}")


def write_messages(bootstrap: str, topic: str, messages: int) -> None:
    """`messages` one-row messages on partition 0 of `topic` (created if absent): someone else's
    stream, for a ContinualTraining whose pods are fakes (the rows are never decoded)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for _ in range(messages):
        producer.send(topic, key=b"1", value=b"0" * 18, partition=0)
    producer.close()
