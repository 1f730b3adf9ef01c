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

Machines of one kind differ up to 3x in speed, so each stage is also shown as a
ratio to a limit measured in the same run, on the same cores:
- the producer against kafka-python sending the same messages, already encoded
  in memory, with the same producer settings (the client's limit; target >= 0.8),
  with the producer's reading alone (file -> encoded messages, nothing sent)
  beside it, and the best ratio the cores allow (producer_ceiling): both run on
  the same cores as the broker;
- consume + one traced epoch against the same epoch from the same raw batches
  already in memory (no Kafka; decode and training identical; target >= 0.7).

It prints markdown tables with the seed's figure, ours, the ratio and the
target, and the CPU model. Run it on a quiet machine: other processes on the
same 2 cores skew every row.
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

from common import cpu_model, print_table, process_cpu_seconds  # noqa: E402
from susy_pipeline.broker import TFIO_SETTINGS  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SEED_PRODUCE_S = 3.56      # 90k rows
SEED_CONSUME_S = 0.145
SEED_TRAIN_S = 9.98
TARGET_PRODUCE_ROWS_S = 250_000
TARGET_CONSUME_TRAIN_S = 2.0
TARGET_PRODUCER_VS_CLIENT = 0.8
TARGET_CONSUME_VS_MEMORY = 0.7


def client_limit_once(bootstrap: str, topic: str, messages: list[tuple[list[bytes], list[bytes], int]],
                      partitions: int = 1) -> float:
    """Seconds for kafka-python alone to send `messages` (keys, values, rows per batch, pre-encoded) with
    the producer's settings, topic set-up included as in the producer: what no producer code can beat."""
    from kafka import KafkaProducer

    from susy_pipeline import kafka_io

    started = time.perf_counter()
    partitions = kafka_io.ensure_topic(bootstrap, topic, partitions)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=20,
                             batch_size=kafka_io.PRODUCER_BATCH_BYTES, max_request_size=16 << 20, retries=5)
    n = 0
    for keys, values, _ in messages:
        for key, value in zip(keys, values):
            producer.send(topic, key=key, value=value, partition=n % partitions)
            n += 1
    producer.flush()
    seconds = time.perf_counter() - started
    producer.close(timeout=10)
    return seconds


CORES = len(os.sched_getaffinity(0))


def cpu_seconds(bootstrap: str) -> float:
    """CPU seconds used so far by this process (every thread) and by the embedded broker serving
    `bootstrap`: the producer, its client limit and the broker share these cores."""
    total = process_cpu_seconds()
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
            if not (cmdline and cmdline[0].endswith(b"tansu") and f"tcp://{bootstrap}".encode() in cmdline):
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        except OSError:
            continue
    return total


def producer_ceiling(limit_s: float, limit_cpu: float, read_s: float, read_cpu: float) -> float:
    """The best producer/limit ratio these cores allow, from costs measured in the same run.

    The producer does the limit's work (client and broker) and its own reading, so it cannot beat
    either alone, max(limit_s, read_s), nor all the cores busy with both, (limit_cpu + read_cpu) /
    cores. When reading the file costs about as much CPU as sending it, the second bound is the
    one that holds, however well the two overlap.
    """
    return limit_s / max(limit_s, read_s, (limit_cpu + read_cpu) / CORES)


def read_encode_seconds(path: str, rows_per_message: int) -> float:
    """Seconds for the producer's reading alone: the file read, parsed, validated and encoded into
    messages (`kafka_io.message_batches`), with nothing sent."""
    from susy_pipeline import kafka_io
    from susy_pipeline.data import iter_batches

    started = time.perf_counter()
    for _ in kafka_io.message_batches(iter_batches(path, keep_text=True), rows_per_message):
        pass
    return time.perf_counter() - started


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
        f"configuration={list(TFIO_SETTINGS)!r}))\n"
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
    limits: list[tuple[str, str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp, embedded_broker() as bootstrap:
        path = make_file(rows, tmp)
        produced = {}
        for per_message in (1, 100, 500):
            counter = iter(range(1000))

            def produce_once():
                topic = f"bench-{per_message}-{next(counter)}"
                return kafka_io.produce(iter_batches(path, keep_text=True), bootstrap=bootstrap, topic=topic,
                                        rows_per_message=per_message)

            # Interleaved with the client's limit, so a slow minute hits both sides of the ratio.
            encoded = list(kafka_io.message_batches(iter_batches(path, keep_text=True), per_message))
            pairs, reading, ceilings = [], [], []
            for r in range(args.repeats + 1):  # the first pair warms up (connections, metadata)
                production = produce_once()
                delete_topic(bootstrap, production.topic)
                limit_topic = f"bench-limit-{per_message}-{r}"
                cpu = cpu_seconds(bootstrap)
                limit_s = client_limit_once(bootstrap, limit_topic, encoded)
                limit_cpu = cpu_seconds(bootstrap) - cpu
                delete_topic(bootstrap, limit_topic)
                if r:
                    pairs.append((production.seconds, limit_s))
                    cpu = cpu_seconds(bootstrap)
                    reading.append(read_encode_seconds(path, per_message))
                    ceilings.append(producer_ceiling(limit_s, limit_cpu, reading[-1], cpu_seconds(bootstrap) - cpu))
            seconds = statistics.median(p for p, _ in pairs)
            limit_median = statistics.median(l for _, l in pairs)
            ratio = statistics.median(limit / p for p, limit in pairs)
            best = statistics.median(ceilings)
            produced[per_message] = produce_once()
            table.append((f"produce {rows:,} rows, {per_message} row(s)/message", f"{SEED_PRODUCE_S:.2f} s",
                          f"{seconds:.2f} s ({rows / seconds:,.0f} rows/s)", f"{SEED_PRODUCE_S / seconds:.1f}x",
                          f">= {TARGET_PRODUCE_ROWS_S:,} rows/s"))
            limits.append((f"producer, {per_message} row(s)/message, vs kafka-python sending the same "
                           "pre-encoded messages", f"{rows / seconds:,.0f} rows/s",
                           f"{rows / limit_median:,.0f} rows/s",
                           f"{ratio:.2f} (ceiling on {CORES} cores: {best:.2f}, so {ratio / best:.0%} of it)",
                           f">= {TARGET_PRODUCER_VS_CLIENT} {'ok' if ratio >= TARGET_PRODUCER_VS_CLIENT else 'MISSED'}"
                           f"{', above the ceiling here' if TARGET_PRODUCER_VS_CLIENT > best else ''}"))
            # What the producer adds to the limit's work, on the same cores as the client and the broker.
            limits.append((f"the producer's own reading alone ({per_message} row(s)/message: file -> encoded "
                           "messages, no broker), against the same limit, for comparison",
                           f"{statistics.median(reading):.3f} s", f"{limit_median:.3f} s",
                           f"{statistics.median(reading) / limit_median:.2f} (reading time / limit time)", ""))

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
            cached = list(source())  # the same raw batches, read once: the in-memory limit's source
            epochs, memory = [], []
            for _ in range(args.repeats):  # interleaved
                epochs.append(train(source, config, expected_rows=rows)[1]["epoch_seconds"])
                memory.append(train(lambda: iter(cached), config, expected_rows=rows)[1]["epoch_seconds"])
            first = statistics.median(e[0] for e in epochs)
            traced = statistics.median(e[1] for e in epochs)
            in_memory = statistics.median(e[1] for e in memory)
            ratio = statistics.median(m[1] / e[1] for e, m in zip(epochs, memory))
            limits.append((f"consume + 1 traced epoch, batch {batch_size}, vs the same epoch from in-memory "
                           "batches", f"{traced:.2f} s", f"{in_memory:.2f} s", f"{ratio:.2f}",
                           f">= {TARGET_CONSUME_VS_MEMORY} {'ok' if ratio >= TARGET_CONSUME_VS_MEMORY else 'MISSED'}"))
            seed_total = SEED_CONSUME_S + SEED_TRAIN_S
            table.append((f"consume + 1 epoch, {rows:,} rows, batch {batch_size} (traced)", f"{seed_total:.2f} s",
                          f"{traced:.2f} s", f"{seed_total / traced:.1f}x", f"<= {TARGET_CONSUME_TRAIN_S:.0f} s"))
            table.append(("same, first epoch (model build + tracing)", f"{seed_total:.2f} s",
                          f"{first:.2f} s", f"{seed_total / first:.1f}x", ""))

    print(f"\nProducer and trainer, {rows:,} rows, median of {args.repeats} ({os.cpu_count()} cores, "
          f"{cpu_model()})\n")
    print_table(("what", "seed", "here", "speed-up", "target"), table)
    print("\nEach stage against its limit, measured in the same run (ratio = limit time / stage time)\n")
    print_table(("stage vs limit", "stage", "limit", "ratio", "target"), limits)


if __name__ == "__main__":
    main()
