"""The operator's own speed, against the API emulator (no TensorFlow, no Kafka).

  python bench/bench_operator.py [--runs 10] [--idle-runs 50] [--window 30]

Two figures, for docs/operator.md:
- step latency: from the moment a producer Job ends (the test Job runner writes its final status)
  to the moment the operator creates that run's trainer Job, over --runs TrainingRuns (the
  emulator's clock: both times are taken on its event loop);
- request rate: the operator's API requests per minute while --idle-runs EvaluationRuns sit in
  phase Evaluating (their pods never end), over a --window seconds window after they all started.

The pods are stand-ins (tests/support/fakes.py) that write what the real stages write through the
same store functions, so what is measured is the operator: the real `python -m susy_operator`
(kopf and the kubernetes client) in its own process, with its default settings unless
--poll-seconds is given.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from susy_operator import config, crd  # noqa: E402
from susy_pipeline import store as store_lib  # noqa: E402
from common import cpu_model  # noqa: E402
from support import fakes  # noqa: E402
from support.fixtures import NAMESPACE, SECRET, evaluation_run, training_run  # noqa: E402
from support.harness import Cluster, OperatorProcess  # noqa: E402


async def _takes_a_while(job: dict, index: int, env: dict) -> int:
    """A pod that runs 1-3 s (seeded by its Job's name), so Jobs end at any phase of a timer."""
    await asyncio.sleep(random.Random(job["metadata"]["name"]).uniform(1.0, 3.0))
    return await fakes.executor(job, index, env)


async def _never_ends(job: dict, index: int, env: dict) -> int:
    await asyncio.Event().wait()
    return 0


def _operator(cluster: Cluster, workdir: Path, store_uri: str, poll: str | None) -> OperatorProcess:
    env = {"MONGODB_URI": store_uri, "SUSY_STORE_SECRET": SECRET, "SUSY_DATABASE": "bigdata",
           "SUSY_PIPELINE_IMAGE": "susy-pipeline:bench", "SUSY_KAFKA_BOOTSTRAP": "127.0.0.1:9"}
    # OperatorProcess sets a fast test default: put the operator's own default (or --poll-seconds) back.
    env["SUSY_POLL_SECONDS"] = poll if poll is not None else str(config.load({}).poll_seconds)
    return OperatorProcess(cluster.url, workdir, env, args=("--standalone", "--namespace", NAMESPACE)).start()


def _wait_watch(cluster: Cluster, plural: str) -> None:
    cluster.wait_for(lambda: any(c.verb == "watch" and c.resource == plural
                                 for c in cluster.call(lambda: list(cluster.emulator.calls))), 60, "kopf's watch")


def step_latency(runs: int, poll: str | None) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        store_uri = f"sqlite:///{workdir}/store.sqlite3"
        cluster = Cluster(workdir).start()
        cluster.create_store_secret(NAMESPACE, SECRET, store_uri)
        runner = cluster.start_runner(executor=_takes_a_while)
        operator = _operator(cluster, workdir, store_uri, poll)
        try:
            _wait_watch(cluster, crd.TRAINING_PLURAL)
            names = [f"lat-{i:02d}" for i in range(runs)]
            for name in names:
                cluster.create(training_run(name))
                time.sleep(0.3)  # spread the runs over the timers' phase
            for name in names:
                cluster.wait_phase("trainingruns", NAMESPACE, name, {crd.SUCCEEDED, crd.FAILED}, 120)
            created = cluster.call(lambda: dict(cluster.emulator.create_times))
            ended = cluster.call(lambda: dict(runner.finish_times))
            return [created[("jobs", NAMESPACE, f"{n}-trainer")] - ended[(NAMESPACE, f"{n}-producer")]
                    for n in names]
        finally:
            operator.stop()
            cluster.stop()


def request_rate(runs: int, window: float, poll: str | None) -> tuple[float, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        store_uri = f"sqlite:///{workdir}/store.sqlite3"
        cluster = Cluster(workdir).start()
        cluster.create_store_secret(NAMESPACE, SECRET, store_uri)
        cluster.start_runner(executor=_never_ends)
        model_id = store_lib.open_store(store_uri, namespace=NAMESPACE).save_model({"run": "bench"}, b"weights")
        operator = _operator(cluster, workdir, store_uri, poll)
        try:
            _wait_watch(cluster, crd.EVALUATION_PLURAL)
            names = [f"idle-{i:02d}" for i in range(runs)]
            for name in names:
                cluster.create(evaluation_run(name, {"id": model_id}, shards=2))
            for name in names:
                cluster.wait_phase("evaluationruns", NAMESPACE, name, {crd.EVALUATING}, 60)
            time.sleep(2)  # past the start-up patches

            def operator_calls() -> list:
                return cluster.call(lambda: [c for c in cluster.emulator.calls
                                             if c.agent.startswith(("kopf", "OpenAPI-Generator"))])
            before = len(operator_calls())
            time.sleep(window)
            calls = operator_calls()[before:]
            by_kind: dict[str, int] = {}
            for c in calls:
                key = f"{c.verb} {c.resource}"
                by_kind[key] = by_kind.get(key, 0) + 1
            return len(calls) * 60.0 / window, by_kind
        finally:
            operator.stop()
            cluster.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="TrainingRuns for the step latency (default 10)")
    p.add_argument("--idle-runs", type=int, default=50, help="running EvaluationRuns (default 50)")
    p.add_argument("--window", type=float, default=30.0, help="seconds of request counting (default 30)")
    p.add_argument("--poll-seconds", help="SUSY_POLL_SECONDS for the operator (default: its own)")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    print(f"operator bench on {cpu_model()} ({os.cpu_count()} CPUs); poll seconds: "
          f"{args.poll_seconds or 'the operator default'}")
    latencies = step_latency(args.runs, args.poll_seconds)
    rate, by_kind = request_rate(args.idle_runs, args.window, args.poll_seconds)
    ms = sorted(x * 1000 for x in latencies)
    print()
    print(f"{'what':58s} {'value':>12s}")
    print("-" * 71)
    print(f"{'producer Job ended -> trainer Job created, median (ms)':58s} {statistics.median(ms):12.0f}")
    print(f"{'producer Job ended -> trainer Job created, max (ms)':58s} {max(ms):12.0f}")
    print(f"{'target: median under 1 s; ratio median / 1000 ms':58s} {statistics.median(ms) / 1000:12.2f}")
    print(f"{f'API requests per minute, {args.idle_runs} running EvaluationRuns':58s} {rate:12.0f}")
    print(f"{'  of which per CR per minute':58s} {rate / args.idle_runs:12.1f}")
    for key, count in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"{'    ' + key:58s} {count * 60.0 / args.window:12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
