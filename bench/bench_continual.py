"""A ContinualTraining generation: how long from the trigger to the moved alias, and what a
generation costs against a fresh TrainingRun on the same rows.

  python bench/bench_continual.py [--rows 50000] [--recipe seed] [--epochs 1] [--eval-rows 10000]

The real operator on the API emulator, the real pipeline stages as local processes (the test Job
runner, as tests/test_operator_continual.py), tansu. Generation 1 trains from scratch on --rows
rows and becomes champion. Then --rows new rows are produced at once; the figures are:
- trigger -> alias: from the generation's start (status.current.startedAt, the reconcile that saw
  the rows) to the decision that moved the alias (or kept it), and from the last row produced to
  that decision;
- the generation's wall time (TrainingRun warm-started from the champion + EvaluationRun of both)
  against a fresh TrainingRun (spec.source on the same offsets, no warm start, the same recipe)
  created after it, as a ratio measured in the same run.
Rows go 10 to a message into 2 partitions; the sample's rows 0-10978 are repeated as needed;
the held-out set is its rows 10979 on (--eval-rows of them).
"""
from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from common import cpu_model  # noqa: E402
from susy_operator import continual as ct, crd  # noqa: E402
from susy_pipeline.broker import embedded_broker  # noqa: E402
from support.fixtures import NAMESPACE, SECRET  # noqa: E402
from support.harness import REPO, SAMPLE, Cluster, OperatorProcess  # noqa: E402

TOPIC = "bench-continual"
NAME = "bench"
SAMPLE_TRAIN_ROWS = 10979


def _seconds(timestamp: str) -> float:
    return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def produce(bootstrap: str, store_uri: str, rows: int) -> float:
    """`rows` rows of the sample's training rows (repeated) into the topic; the time it ended."""
    left = rows
    while left > 0:
        limit = min(left, SAMPLE_TRAIN_ROWS)
        subprocess.run([sys.executable, "-m", "susy_pipeline", "produce", "--data", str(SAMPLE), "--limit",
                        str(limit), "--rows-per-message", "10", "--partitions", "2", "--topic", TOPIC,
                        "--bootstrap", bootstrap, "--run-name", f"bench-{left}", "--store", store_uri],
                       check=True, cwd=str(REPO), capture_output=True)
        left -= limit
    return time.time()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=50_000, help="rows per generation (default 50,000)")
    p.add_argument("--recipe", default="seed", choices=["seed", "tuned"], help="default: seed")
    p.add_argument("--epochs", type=int, default=1, help="default: 1")
    p.add_argument("--eval-rows", type=int, default=10_000, help="held-out rows scored (default 10,000)")
    p.add_argument("--poll-seconds", default="1", help="the operator's SUSY_POLL_SECONDS (default 1)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp, embedded_broker() as bootstrap:
        workdir = Path(tmp)
        store_uri = f"sqlite:///{workdir}/store.sqlite3"
        cluster = Cluster(workdir).start()
        cluster.create_store_secret(NAMESPACE, SECRET, store_uri)
        cluster.start_runner()
        operator = OperatorProcess(cluster.url, workdir, {
            "MONGODB_URI": store_uri, "SUSY_STORE_SECRET": SECRET, "SUSY_DATABASE": "bigdata",
            "SUSY_PIPELINE_IMAGE": "susy-pipeline:bench", "SUSY_KAFKA_BOOTSTRAP": bootstrap,
            "SUSY_POLL_SECONDS": args.poll_seconds}, args=("--standalone", "--namespace", NAMESPACE)).start()
        path = f"/apis/{crd.GROUP}/{crd.VERSION}/namespaces/{NAMESPACE}/{crd.CONTINUAL_PLURAL}/{NAME}"

        def status() -> dict:
            return (cluster.get(crd.CONTINUAL_PLURAL, NAMESPACE, NAME) or {}).get("status") or {}

        def decided(generation: int) -> dict:
            return cluster.wait_for(lambda: (status().get("lastDecision") or {}).get("generation") == generation
                                    and status(), 3600, f"generation {generation}", interval=0.2)
        try:
            produce(bootstrap, store_uri, args.rows)
            cluster.create({"apiVersion": crd.API_VERSION, "kind": crd.CONTINUAL_KIND,
                            "metadata": {"name": NAME, "namespace": NAMESPACE},
                            "spec": {"kafka": {"topic": TOPIC, "rowsPerMessage": 10},
                                     "trigger": {"everyRows": args.rows}, "model": {"recipe": args.recipe},
                                     "epochs": args.epochs, "reader": "kafka-python",  # tansu
                                     "evaluation": {"dataset": {"uris": [str(SAMPLE)], "skip": SAMPLE_TRAIN_ROWS,
                                                                "limit": args.eval_rows}},
                                     "alias": NAME}})
            decided(1)
            produced_at = produce(bootstrap, store_uri, args.rows)
            second = decided(2)
            entry = next(h for h in second["history"] if h["generation"] == 2)
            started = _seconds(entry["startedAt"])
            decided_at = _seconds(second["lastDecision"]["time"])
            generation_seconds = decided_at - started

            fresh = {"apiVersion": crd.API_VERSION, "kind": crd.TRAINING_KIND,
                     "metadata": {"name": "bench-fresh", "namespace": NAMESPACE},
                     "spec": {"source": {"kafka": {"topic": TOPIC, "offsets": entry["offsets"]}},
                              "model": {"recipe": args.recipe}, "epochs": args.epochs, "reader": "kafka-python"}}
            created = time.time()
            cluster.create(fresh)
            cluster.wait_phase(crd.TRAINING_PLURAL, NAMESPACE, "bench-fresh", {crd.SUCCEEDED, crd.FAILED}, 3600)
            fresh_seconds = time.time() - created
        finally:
            operator.stop()
            cluster.stop()

    rows = ct.rows_in(ct.ranges_map(entry["offsets"]), 10)
    print(f"ContinualTraining, one generation of {rows:,} new rows (recipe {args.recipe}, {args.epochs} epoch(s), "
          f"{args.eval_rows:,} held-out rows); CPU: {cpu_model()}")
    print(f"  decision: {second['lastDecision']['decision']} ({second['lastDecision']['message']})")
    print(f"  trigger (generation start) -> alias decision: {generation_seconds:7.1f} s")
    print(f"  last row produced -> alias decision:          {decided_at - produced_at:7.1f} s")
    print(f"  a fresh TrainingRun on the same offsets:       {fresh_seconds:7.1f} s")
    print(f"  generation / fresh TrainingRun:                {generation_seconds / fresh_seconds:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
