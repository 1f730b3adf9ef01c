"""`run-local`: the whole pipeline on one machine, on embedded defaults (`make run`).

1. Kafka: the broker at KAFKA_BOOTSTRAP, or tansu (embedded, in memory) on a
   free loopback port.
2. Store: MONGODB_URI, or the embedded SQLite store under .susy/.
3. produce: the sample's training rows (0-10978) into the topic.
4. train: consume exactly those offsets, train the tuned recipe, save.
5. load the model back from the store by id (what the evaluator does).
6. evaluate: the sample's UCI-test rows (10979-20978) in N parallel shard
   processes, then aggregate their results exactly.

Prints a table of rows, seconds and rows/s per stage, and the test metrics, on
stderr (with the log, so `make run` shows it), and on stdout one JSON document
like every command: run, model id, evaluation, test metrics, report files.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator, Sequence

from .. import options
from ..broker import TFIO_SETTINGS, embedded_broker
from ..errors import EXIT_BAD_INPUT, BadInput
from ..model import model_from_bytes
from ..schema import DEFAULT_CHUNK_ROWS, DEFAULT_DATABASE, DEFAULT_TOPIC, SAMPLE_TRAIN_ROWS
from ..store import DEFAULT_NAMESPACE, open_store
from .aggregate import aggregate
from .produce import produce
from .scale import scale
from .train import train

log = logging.getLogger(__name__)

DEFAULT_DATA = os.path.join("data", "susy-sample.csv.gz")
DEFAULT_WORKDIR = ".susy"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run-local", help="produce -> Kafka -> train -> store -> sharded evaluation, "
                                         "on one machine", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="SUSY sample (default: %(default)s)")
    p.add_argument("--train-rows", type=options.positive, default=SAMPLE_TRAIN_ROWS,
                   help="rows 0..N-1 train, the rest are the test set (default: %(default)s)")
    p.add_argument("--shards", type=options.positive, default=2, help="evaluator shards (default: %(default)s)")
    p.add_argument("--reader", default=options.env("SUSY_READER", "confluent"),
                   choices=["confluent", "kafka-python", "tfio"],
                   help="trainer's Kafka reader (env SUSY_READER; default: %(default)s; tfio gets the librdkafka "
                        "settings the embedded broker needs by itself, and with --bootstrap needs a broker its "
                        "bundled librdkafka 1.5.0 can talk to, see README)")
    p.add_argument("--recipe", default="tuned", choices=["tuned", "seed"], help="training recipe")
    p.add_argument("--rows-per-message", type=options.positive, default=1,
                   help="rows per Kafka message (default: %(default)s, the seed's format)")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="where test files and reports go (default: %(default)s)")
    p.add_argument("--bootstrap", default=options.env("KAFKA_BOOTSTRAP"),
                   help="Kafka bootstrap (env KAFKA_BOOTSTRAP; default: start an embedded broker)")
    options.add_topic(p)
    options.add_store(p)
    p.set_defaults(run=run)


@contextlib.contextmanager
def kafka(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        log.info("using the Kafka broker at %s", bootstrap)
        yield bootstrap
        return
    with embedded_broker() as address:
        yield address


def run(args: argparse.Namespace) -> dict:
    return run_local(data=args.data, train_rows=args.train_rows, shards=args.shards, reader=args.reader,
                     recipe=args.recipe, rows_per_message=args.rows_per_message, workdir=args.workdir,
                     bootstrap=args.bootstrap, topic=args.topic, store_uri=args.store, database=args.database,
                     namespace=args.namespace)


def run_local(*, data: str = DEFAULT_DATA, train_rows: int = SAMPLE_TRAIN_ROWS, shards: int = 2,
              reader: str = "confluent", recipe: str = "tuned", rows_per_message: int = 1,
              workdir: str = DEFAULT_WORKDIR, bootstrap: str | None = None, topic: str = DEFAULT_TOPIC,
              store_uri: str | None = None, database: str = DEFAULT_DATABASE,
              namespace: str = DEFAULT_NAMESPACE) -> dict:
    """The module's steps 1-6, each stage called as its command's function; the table on stderr."""
    os.makedirs(workdir, exist_ok=True)
    run_name = "local-" + time.strftime("%Y%m%d-%H%M%S")
    store = dict(store_uri=store_uri, database=database, namespace=namespace)
    timings: list[tuple[str, int, float]] = []

    # The test rows as one file per shard (whole files are the evaluator's fastest split).
    test_dir = os.path.join(workdir, f"test-rows-from-{train_rows}-in-{shards}-files")
    started = time.perf_counter()
    if not os.path.isdir(test_dir):
        partial = test_dir + ".partial"  # renamed when complete: an interrupted run is redone
        shutil.rmtree(partial, ignore_errors=True)
        scale(data, partial, skip=train_rows, times=1, files=shards, formats=["csv.gz"])
        os.replace(partial, test_dir)
        log.info("wrote the test rows to %s", test_dir)
    test_files = sorted(os.path.join(test_dir, f) for f in os.listdir(test_dir) if f.endswith(".csv.gz"))

    with kafka(bootstrap) as address:
        t = time.perf_counter()
        produced = produce(data=data, limit=train_rows, rows_per_message=rows_per_message, run_name=run_name,
                           bootstrap=address, topic=topic, **store)
        timings.append(("produce", produced["rows"], time.perf_counter() - t))

        t = time.perf_counter()
        # The tfio reader needs librdkafka settings against the embedded broker (tansu) only.
        librdkafka = TFIO_SETTINGS if reader == "tfio" and not bootstrap else ()
        trained = train(run_name=run_name, reader=reader, recipe=recipe, bootstrap=address,
                        librdkafka=librdkafka, **store)
        # Every epoch reads the topic again: rows/s counts rows x epochs.
        timings.append((f"consume + train ({trained['epochs_run']} ep.)", trained["rows"] * trained["epochs_run"],
                        time.perf_counter() - t))
    model_id = trained["model_id"]

    t = time.perf_counter()
    with open_store(store_uri, database, namespace=namespace) as st:
        meta, blob = st.load_model(model_id)
    model_from_bytes(blob)  # fails here, not in N shards, if the stored bytes are bad
    timings.append(("load model", 1, time.perf_counter() - t))

    t = time.perf_counter()
    evaluation = f"{run_name}-test"
    run_parallel(model_ref=model_id, inputs=test_files, evaluation=evaluation, shard_count=shards, **store)
    result = aggregate(evaluation=evaluation, shard_count=shards, report=os.path.join(workdir, "reports"), **store)
    timings.append((f"evaluate ({shards} shards)", result["rows"], time.perf_counter() - t))

    print_table(timings, result, model_id, trained)
    return {"run": run_name, "model_id": model_id, "evaluation": evaluation,
            "test_accuracy": result["accuracy"], "test_auc": result["auc"], "test_rows": result["rows"],
            "report": result.get("report"), "seconds": round(time.perf_counter() - started, 2)}


def print_table(timings, result, model_id: str, trained: dict) -> None:
    """The stage table and the metrics, for people: on stderr, so stdout stays one JSON document."""
    lines = ["", f"{'stage':<28}{'rows':>10}{'seconds':>10}{'rows/s':>12}", "-" * 60]
    for stage, rows, seconds in timings:
        rate = f"{rows / seconds:,.0f}" if rows > 1 else ""
        lines.append(f"{stage:<28}{rows:>10,}{seconds:>10.2f}{rate:>12}")
    lines += ["-" * 60,
              f"trained on {trained['train_rows']:,} rows, {trained['validation_rows']:,} held out; "
              f"epochs run {trained['epochs_run']}, validation AUC {trained['metrics'].get('val_auc', float('nan')):.4f}",
              f"test rows {result['rows']:,}   accuracy {result['accuracy']:.4f}   AUC {result['auc']:.4f}   "
              f"log-loss {result['log_loss']:.4f}",
              f"model id {model_id}", ""]
    print("\n".join(lines), file=sys.stderr, flush=True)


def run_parallel(*, model_ref: str | Sequence[str], inputs: Sequence[str], evaluation: str, shard_count: int,
                 store_uri: str | None = None, database: str = DEFAULT_DATABASE,
                 namespace: str = DEFAULT_NAMESPACE, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 extra_args: Sequence[str] = (), cpus: Sequence[int] | None = None,
                 timeout_s: float | None = None, ensemble: str | None = None) -> list[dict[str, Any]]:
    """Run all N shards as parallel processes on this machine (what `run-local` does).

    Each shard is `python -m susy_pipeline evaluate ... --shard-index i`; with
    `cpus`, shard i is pinned to core `cpus[i % len(cpus)]` (as a CPU limit
    of 1 would hold it); `store_uri` reaches the shards as MONGODB_URI (not on their
    command line); without it each shard opens the store `evaluate` would by default. Returns the shards' printed summaries; raises
    RuntimeError naming every failed shard with the tail of its stderr.
    """
    procs = []
    refs = [model_ref] if isinstance(model_ref, str) else list(model_ref)
    model_args = [arg for ref in refs for arg in ("--model", str(ref))]
    if ensemble:
        model_args += ["--ensemble", ensemble]
    # The store URI (its password, its TLS key password) goes by environment, never on the command
    # line, which every user of the machine can read (/proc/PID/cmdline, ps).
    env = {**os.environ, "MONGODB_URI": store_uri} if store_uri else None
    for i in range(shard_count):
        cmd = [sys.executable, "-m", "susy_pipeline", "evaluate", *model_args,
               "--data", *inputs, "--evaluation", evaluation, "--shard-index", str(i),
               "--shard-count", str(shard_count), "--chunk-rows", str(chunk_rows),
               "--database", database, "--namespace", namespace, *extra_args]
        if cpus:
            cmd = ["taskset", "-c", str(cpus[i % len(cpus)]), *cmd]
        err = tempfile.TemporaryFile()
        procs.append((i, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env), err))
    summaries, failures = [], []
    for i, proc, err in procs:
        out, _ = proc.communicate(timeout=timeout_s)
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
        err.close()
        if proc.returncode != 0:
            failures.append(f"shard {i} exited {proc.returncode}: {' | '.join(tail)}")
            continue
        summaries.append(json.loads(out.decode().strip().splitlines()[-1]))
    if failures:
        message = f"evaluation {evaluation}: " + "; ".join(failures)
        bad_input = all(f" exited {EXIT_BAD_INPUT}:" in f for f in failures)
        raise (BadInput if bad_input else RuntimeError)(message)
    return summaries
