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
import logging
import os
import shutil
import sys
import time
from typing import Any, Iterator

from . import options
from .schema import DEFAULT_TOPIC, SAMPLE_TRAIN_ROWS

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run-local", help="produce -> Kafka -> train -> store -> sharded evaluation, "
                                         "on one machine", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/susy-sample.csv.gz", help="SUSY sample (default: %(default)s)")
    p.add_argument("--train-rows", type=options.positive, default=SAMPLE_TRAIN_ROWS,
                   help="rows 0..N-1 train, the rest are the test set (default: %(default)s)")
    p.add_argument("--shards", type=options.positive, default=2, help="evaluator shards (default: %(default)s)")
    p.add_argument("--reader", default=options.env("SUSY_READER", "kafka-python"),
                   choices=["kafka-python", "tfio"],
                   help="trainer's Kafka reader (env SUSY_READER; default: %(default)s; tfio needs a broker its bundled "
                        "librdkafka 1.5.0 can talk to, see README)")
    p.add_argument("--recipe", default="tuned", choices=["tuned", "seed"], help="training recipe")
    p.add_argument("--rows-per-message", type=options.positive, default=1,
                   help="rows per Kafka message (default: %(default)s, the seed's format)")
    p.add_argument("--workdir", default=".susy", help="where test files and reports go (default: %(default)s)")
    p.add_argument("--bootstrap", default=options.env("KAFKA_BOOTSTRAP"),
                   help="Kafka bootstrap (env KAFKA_BOOTSTRAP; default: start an embedded broker)")
    p.add_argument("--topic", default=options.env("KAFKA_TOPIC", DEFAULT_TOPIC), help="topic (env KAFKA_TOPIC; default: %(default)s)")
    options.add_store(p)
    p.set_defaults(run=run)


@contextlib.contextmanager
def kafka(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        log.info("using the Kafka broker at %s", bootstrap)
        yield bootstrap
        return
    from .broker import embedded_broker

    with embedded_broker() as address:
        yield address


def _stage(argv: list[str]) -> dict[str, Any]:
    """Run one pipeline command in this process: the command module's own options (with their
    environment defaults) and its `run`, as the CLI would, without going through the CLI."""
    from . import aggregate, produce, scale, train

    commands = {"aggregate": aggregate, "produce": produce, "scale": scale, "train": train}
    parser = argparse.ArgumentParser(prog="run-local")
    commands[argv[0]].add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


def run(args: argparse.Namespace) -> dict:
    from .evaluate import run_parallel
    from .model import model_from_bytes

    os.makedirs(args.workdir, exist_ok=True)
    run_name = "local-" + time.strftime("%Y%m%d-%H%M%S")
    store = ["--store", args.store, "--database", args.database]
    timings: list[tuple[str, int, float]] = []

    # The test rows as one file per shard (whole files are the evaluator's fastest split).
    test_dir = os.path.join(args.workdir, f"test-rows-from-{args.train_rows}-in-{args.shards}-files")
    started = time.perf_counter()
    if not os.path.isdir(test_dir):
        partial = test_dir + ".partial"  # renamed when complete: an interrupted run is redone
        shutil.rmtree(partial, ignore_errors=True)
        _stage(["scale", "--data", args.data, "--skip", str(args.train_rows), "--times", "1",
                "--files", str(args.shards), "--formats", "csv.gz", "--out", partial])
        os.replace(partial, test_dir)
        log.info("wrote the test rows to %s", test_dir)
    test_files = sorted(os.path.join(test_dir, f) for f in os.listdir(test_dir) if f.endswith(".csv.gz"))

    with kafka(args.bootstrap) as bootstrap:
        kafka_args = ["--bootstrap", bootstrap, "--topic", args.topic]
        t = time.perf_counter()
        produced = _stage(["produce", "--data", args.data, "--limit", str(args.train_rows),
                           "--rows-per-message", str(args.rows_per_message), "--run-name", run_name,
                           *kafka_args, *store])
        timings.append(("produce", produced["rows"], time.perf_counter() - t))

        t = time.perf_counter()
        trained = _stage(["train", "--run-name", run_name, "--reader", args.reader, "--recipe", args.recipe,
                          *kafka_args, *store])
        # Every epoch reads the topic again: rows/s counts rows x epochs.
        timings.append((f"consume + train ({trained['epochs_run']} ep.)", trained["rows"] * trained["epochs_run"],
                        time.perf_counter() - t))
    model_id = trained["model_id"]

    t = time.perf_counter()
    with options.store_from(args) as st:
        meta, blob = st.load_model(model_id)
    model_from_bytes(blob)  # fails here, not in N shards, if the stored bytes are bad
    timings.append(("load model", 1, time.perf_counter() - t))

    t = time.perf_counter()
    evaluation = f"{run_name}-test"
    run_parallel(model_ref=model_id, inputs=test_files, evaluation=evaluation, shard_count=args.shards,
                 store_uri=args.store, database=args.database)
    result = _stage(["aggregate", "--evaluation", evaluation, "--shard-count", str(args.shards),
                     "--report", os.path.join(args.workdir, "reports"), *store])
    timings.append((f"evaluate ({args.shards} shards)", result["rows"], time.perf_counter() - t))

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
