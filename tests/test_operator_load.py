"""The operator alone under load: 50 EvaluationRuns created at once.

The test Job runner completes the evaluator pods WITHOUT starting TensorFlow: each "pod" tallies
deterministic pseudo-scores with the evaluator's own ShardTally and upserts the shard result with
`store.put_shard_result`, the store function the real evaluator uses (support/fakes.py). What is
measured is the operator: every run reaches Succeeded with the exact totals, no Job is created
twice, and the create-to-Job-visible latency (emulator clock, CR POST to Job POST) is printed.
"""
from __future__ import annotations

import statistics
import time

import pytest

from susy_operator import crd
from susy_pipeline import store as store_lib
from support import fakes
from support.fixtures import NAMESPACE, cluster, evaluation_run, operator, store_uri  # noqa: F401
from support.harness import Cluster, summarize

RUNS = 50
SHARDS = 3

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_fifty_evaluation_runs_at_once(cluster: Cluster, operator, store_uri: str, capsys, record_property) -> None:
    cluster.start_runner(executor=fakes.executor)
    operator(SUSY_POLL_SECONDS="1")  # the 50 timers' polling competes with the creates for 2 cores
    model_id = store_lib.open_store(store_uri, namespace=NAMESPACE).save_model({"run": "load"}, b"weights")
    # Let the operator finish starting (its first LIST) so the latency measures handling, not start-up.
    cluster.wait_for(lambda: any(c.verb == "watch" and c.resource == crd.EVALUATION_PLURAL
                                 for c in cluster.call(lambda: list(cluster.emulator.calls))), 30, "kopf's watch")

    started = time.monotonic()
    names = [f"load-{i:02d}" for i in range(RUNS)]
    for name in names:
        cluster.create(evaluation_run(name, {"id": model_id}, shards=SHARDS))

    def all_done() -> bool:
        phases = [(cluster.get("evaluationruns", NAMESPACE, n) or {}).get("status", {}).get("phase") for n in names]
        return all(p in (crd.SUCCEEDED, crd.FAILED) for p in phases)

    cluster.wait_for(all_done, 180, f"{RUNS} EvaluationRuns to finish", interval=0.25)
    elapsed = time.monotonic() - started

    expected = fakes.expected_totals(SHARDS)
    for name in names:
        status = cluster.get("evaluationruns", NAMESPACE, name)["status"]
        assert status["phase"] == crd.SUCCEEDED, (name, status.get("message"))
        assert status["shards"]["succeeded"] == SHARDS and status["shards"]["failedPods"] == 0
        assert (status["rows"], status["accuracy"], status["auc"], status["confusion"]) == (
            expected["rows"], expected["accuracy"], expected["auc"], expected["confusion"]), name

    creations = cluster.job_creations()
    assert creations == {(NAMESPACE, f"{n}-eval"): 1 for n in names}, "a Job was created twice (or not at all)"
    operator_creates = cluster.call(lambda: [c for c in cluster.emulator.calls
                                             if c.verb == "create" and c.resource == "jobs"])
    assert len(operator_creates) == RUNS, "the operator retried a create (409)"

    latencies = cluster.latencies([(NAMESPACE, f"evaluationruns:{n}", f"{n}-eval") for n in names])
    record_property("latency_median_ms", round(statistics.median(latencies) * 1000, 1))
    record_property("latency_max_ms", round(max(latencies) * 1000, 1))
    with capsys.disabled():  # shown in `make test` output, not only with -s
        print(f"\n{RUNS} EvaluationRuns x {SHARDS} shards: all Succeeded in {elapsed:.1f} s; {summarize(latencies)}")
    assert statistics.median(latencies) < 5.0 and max(latencies) < 30.0
