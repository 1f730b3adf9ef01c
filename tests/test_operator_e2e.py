"""End to end on this machine: the real operator, the real pipeline stages, a real Kafka broker.

kubectl-like POSTs to the API emulator -> the operator (python -m susy_operator: kopf and the
kubernetes client) creates Jobs -> the test Job runner runs each pod's command as a local process
(`python -m susy_pipeline produce|train|evaluate`, the pod's env, the store URI resolved from the
Secret, JOB_COMPLETION_INDEX per index) against the tansu broker and the embedded store -> the
operator writes the model id, then the aggregated metrics, into status.

Along the way: the operator is killed (SIGKILL) between the producer and the trainer and
restarted, and shard 1's first pod fails; the run still completes, with one Job per step and the
retried shard counted once. The aggregated metrics equal a single-process evaluation of the same
data exactly.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from susy_operator import crd
from susy_pipeline import evaluation as evaluation_lib, store as store_lib
from support.fixtures import NAMESPACE, cluster, condition, evaluation_run, operator, store_uri, training_run  # noqa: F401
from support.harness import REPO, SAMPLE, Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]

TRAIN_ROWS = 4000


def test_training_and_sharded_evaluation_end_to_end(cluster: Cluster, operator, store_uri: str,
                                                    kafka_broker: str, tmp_path, capsys) -> None:
    runner = cluster.start_runner(fail_first={("er-eval", 1)})
    env = {"SUSY_KAFKA_BOOTSTRAP": kafka_broker, "SUSY_POLL_SECONDS": "0.5"}
    first = operator(**env)

    cluster.create(training_run(
        "tr", dataset={"uri": str(SAMPLE), "skip": 0, "limit": TRAIN_ROWS},
        kafka={"topic": "operator-e2e", "partitions": 2},
        model={"recipe": "seed"}, epochs=1, reader="kafka-python",  # tansu: see docs/deploy.md
    ))
    cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "tr-producer"), 30, "the producer Job")
    first.kill()  # SIGKILL: the producer finishes while no operator runs
    cluster.wait_for(lambda: (cluster.get("jobs", NAMESPACE, "tr-producer") or {}).get("status", {}).get(
        "completionTime"), 120, "the producer to finish")
    assert cluster.get("jobs", NAMESPACE, "tr-trainer") is None
    operator(**env)

    tr = cluster.wait_phase("trainingruns", NAMESPACE, "tr", {crd.SUCCEEDED, crd.FAILED}, 300)
    logs = {run.log: open(run.log).read()[-2000:] for run in runner.runs if run.log and run.exit_code}
    assert tr["status"]["phase"] == crd.SUCCEEDED, (tr["status"], logs)
    st = tr["status"]
    assert st["rowsProduced"] == st["rowsTrained"] == TRAIN_ROWS
    assert sum(o["end"] - o["start"] for o in st["kafka"]["offsets"]) == TRAIN_ROWS  # one row per message
    store = store_lib.open_store(store_uri, namespace=NAMESPACE)
    model = store.resolve_model(st["modelId"])
    assert model["run"] == st["runName"]

    # Held-out rows only: the sample's rows 10979 on (the TrainingRun trained on rows 0-3999).
    cluster.create(evaluation_run("er", {"trainingRun": "tr"}, dataset={"uris": [str(SAMPLE)], "skip": 10979},
                                  shards=3, parallelism=3, chunkRows=4096, stripeRows=4096))
    er = cluster.wait_phase("evaluationruns", NAMESPACE, "er", {crd.SUCCEEDED, crd.FAILED}, 300)
    logs = {run.log: open(run.log).read()[-2000:] for run in runner.runs if run.log and run.exit_code}
    assert er["status"]["phase"] == crd.SUCCEEDED, (er["status"], logs)
    es = er["status"]
    assert es["modelId"] == st["modelId"]
    assert es["shards"] == {"total": 3, "succeeded": 3, "failed": 0, "active": 0, "failedPods": 1, "progress": "3/3"}
    assert condition(er, crd.EVALUATED)["status"] == "True"

    # The same data, scored in one process by the same command, aggregated by the same function.
    single = subprocess.run(
        [sys.executable, "-m", "susy_pipeline", "evaluate", "--model", st["modelId"], "--data", str(SAMPLE),
         "--evaluation", "single-process", "--shard-index", "0", "--shard-count", "1", "--chunk-rows", "4096",
         "--skip", "10979"],
        env={**os.environ, "MONGODB_URI": store_uri, "SUSY_NAMESPACE": NAMESPACE, "HOME": str(tmp_path)},
        cwd=str(REPO),
        capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]
    expected = evaluation_lib.aggregate(store.shard_results("single-process"), 1)
    assert es["rows"] == expected["rows"] == 10000
    assert es["accuracy"] == expected["accuracy"]
    assert es["auc"] == expected["auc"]
    assert es["logLoss"] == expected["log_loss"]
    assert es["confusion"] == expected["confusion"]
    with capsys.disabled():
        print(f"\nend to end: model {st['modelId']}, accuracy {es['accuracy']:.6f}, AUC {es['auc']:.6f}, "
              f"log-loss {es['logLoss']:.6f} over {es['rows']} rows in 3 shards = single process")

    # One Job per step, despite the restart and the retried shard.
    assert cluster.job_creations() == {(NAMESPACE, "tr-producer"): 1, (NAMESPACE, "tr-trainer"): 1,
                                       (NAMESPACE, "er-eval"): 1}
    attempts = sorted((r.index, r.attempt, r.exit_code) for r in runner.runs if r.job == "er-eval")
    assert attempts == [(0, 0, 0), (1, 0, 1), (1, 1, 0), (2, 0, 0)]
    results = store.shard_results(es["evaluation"])
    assert sorted(r["shard_index"] for r in results) == [0, 1, 2]
    assert all(r["rows"] > 0 for r in results), "every shard scored part of the file"
