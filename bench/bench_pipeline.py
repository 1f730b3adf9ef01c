"""Benchmark the producer and the trainer against the seed report's figures.

    .venv/bin/python bench/bench_pipeline.py [--rows 90000] [--repeats 3]

The seed produced 90,000 rows in 3.56 s (about 25k rows/s) and consumed them
in 0.145 s, then trained one epoch in 9.98 s. This script builds a 90,000-row
CSV.gz from the sample (its rows repeated), starts the embedded broker
(tansu), and measures, taking the median of `--repeats` runs:

1. producer rows/s (file read and parse included) with 1 row per message (the
   seed's wire format) and with 100 and 500 rows per message;
2. consuming all rows from Kafka into memory (kafka-python; tensorflow-io with
   the tansu-only librdkafka settings);
3. consume + one epoch of training through the trainer's tf.data pipeline at
   batch 256 and 1024 (the seed's architecture; no statistics pass, no
   validation slice, so one pass over Kafka per epoch, as the seed did): the
   second epoch, once the step function is traced, and the first beside it.

It prints a markdown table with the seed's figure, ours, the ratio and the
target. Run it on a quiet machine: other processes on the same 2 cores skew
every row.
"""
from __future__ import annotations

import argparse
import gzip
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "images", "pipeline"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SEED_PRODUCE_S = 3.56      # 90k rows
SEED_CONSUME_S = 0.145
SEED_TRAIN_S = 9.98
TARGET_PRODUCE_ROWS_S = 250_000
TARGET_CONSUME_TRAIN_S = 2.0
TFIO_TANSU_SETTINGS = ("api.version.request=false", "broker.version.fallback=0.9.0")


def make_file(rows: int, directory: str) -> str:
    sample = os.path.join(ROOT, "data", "susy-sample.csv.gz")
    with gzip.open(sample, "rb") as f:
        lines = f.readlines()
    out = os.path.join(directory, f"susy-{rows}.csv.gz")
    with gzip.open(out, "wb", compresslevel=6) as f:
        f.writelines(lines[i % len(lines)] for i in range(rows))
    return out


def median_of(repeats: int, fn, before_each=None):
    """Median seconds of `repeats` runs after one warm-up run (connections, topic metadata).

    `before_each(last result)` runs before each timed run, outside the timing.
    """
    times, last = [], fn()
    for _ in range(repeats):
        if before_each:
            before_each(last)
        started = time.perf_counter()
        last = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), last


def delete_topic(bootstrap: str, topic: str) -> None:
    """The embedded broker keeps every topic in memory, and grew slower as they piled up."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()


def tfio_consume_seconds(bootstrap: str, topic: str, partitions: dict) -> float:
    """tensorflow-io in its own process: librdkafka's threads may crash the interpreter at exit."""
    code = (
        "import sys, time; from susy_pipeline import kafka_io\n"
        f"ranges = {dict((int(p), tuple(r)) for p, r in partitions.items())!r}\n"
        "t = time.perf_counter()\n"
        f"n = sum(len(k) for k, _ in kafka_io.tfio_batches({bootstrap!r}, {topic!r}, ranges, "
        f"configuration={list(TFIO_TANSU_SETTINGS)!r}))\n"
        "print(time.perf_counter() - t, n)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "images", "pipeline")})
    if done.returncode != 0:
        return float("nan")
    return float(done.stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=90_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from susy_pipeline import kafka_io
    from susy_pipeline.broker import embedded_broker
    from susy_pipeline.data import iter_batches
    from susy_pipeline.model import SEED_RECIPE, with_overrides
    from susy_pipeline.training import train, use_training_threads

    use_training_threads()  # as the train command does
    rows = args.rows
    table: list[tuple[str, str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp, embedded_broker() as bootstrap:
        path = make_file(rows, tmp)
        produced = {}
        for per_message in (1, 100, 500):
            counter = iter(range(1000))

            def produce_once():
                topic = f"bench-{per_message}-{next(counter)}"
                return kafka_io.produce(iter_batches(path, keep_text=True), bootstrap=bootstrap, topic=topic,
                                        rows_per_message=per_message)

            seconds, production = median_of(args.repeats, produce_once,
                                             before_each=lambda last: delete_topic(bootstrap, last.topic))
            produced[per_message] = production
            table.append((f"produce {rows:,} rows, {per_message} row(s)/message", f"{SEED_PRODUCE_S:.2f} s",
                          f"{seconds:.2f} s ({rows / seconds:,.0f} rows/s)", f"{SEED_PRODUCE_S / seconds:.1f}x",
                          f">= {TARGET_PRODUCE_ROWS_S:,} rows/s"))

        for per_message in (1, 100):
            production = produced[per_message]
            seconds, _ = median_of(args.repeats, lambda: sum(
                len(k) for k, _ in kafka_io.kafka_python_batches(bootstrap, production.topic, production.partitions)))
            table.append((f"consume {rows:,} rows (kafka-python, {per_message}/msg)", f"{SEED_CONSUME_S:.3f} s",
                          f"{seconds:.3f} s", f"{SEED_CONSUME_S / seconds:.2f}x", ""))
            tfio_s = tfio_consume_seconds(bootstrap, production.topic, production.to_record()["partitions"])
            table.append((f"consume {rows:,} rows (tensorflow-io on tansu, {per_message}/msg)",
                          f"{SEED_CONSUME_S:.3f} s", f"{tfio_s:.3f} s", f"{SEED_CONSUME_S / tfio_s:.2f}x", ""))

        production = produced[100]
        for batch_size in (256, 1024):
            config = with_overrides(SEED_RECIPE, batch_size=batch_size, epochs=2)

            def source():
                return kafka_io.kafka_python_batches(bootstrap, production.topic, production.partitions)

            # Epoch 1 includes building the model and tracing its step; epoch 2 is a
            # traced epoch: read the topic again, decode, train.
            epochs = [train(source, config, expected_rows=rows)[1]["epoch_seconds"] for _ in range(args.repeats)]
            first = statistics.median(e[0] for e in epochs)
            traced = statistics.median(e[1] for e in epochs)
            seed_total = SEED_CONSUME_S + SEED_TRAIN_S
            table.append((f"consume + 1 epoch, {rows:,} rows, batch {batch_size} (traced)", f"{seed_total:.2f} s",
                          f"{traced:.2f} s", f"{seed_total / traced:.1f}x", f"<= {TARGET_CONSUME_TRAIN_S:.0f} s"))
            table.append(("same, first epoch (model build + tracing)", f"{seed_total:.2f} s",
                          f"{first:.2f} s", f"{seed_total / first:.1f}x", ""))

    print(f"\nProducer and trainer, {rows:,} rows, median of {args.repeats} ({os.cpu_count()} cores)\n")
    print("| what | seed | here | speed-up | target |")
    print("|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
