"""Benchmark the Kafka clients: confluent-kafka against kafka-python (issue 24).

    .venv/bin/python bench/bench_kafka.py [--rows 90000] [--repeats 3] [--quick]

On the embedded broker (tansu), with a `--rows` CSV.gz made from the sample (its rows repeated),
one row per message (the seed's wire format), each figure the median of `--repeats` runs,
interleaved so that a slow minute hits both sides of a ratio:

1. produce (file read and parse included) through confluent-kafka (`produce`, the default) against
   confluent-kafka's own loop sending the same messages, already encoded in memory (`produce` per
   message, no callbacks, one flush: what no producer code on this client can beat; target >=
   0.8), and against the kafka-python producer (`produce --client kafka-python`; target >= 6x);
   the producer's own reading alone (file -> encoded messages) beside them, and the best ratio
   these cores allow against the own loop (bench_pipeline.producer_ceiling, from the CPU seconds
   of this process and the broker);
2. consuming the `--rows` one-row messages with the confluent reader against the kafka-python
   reader (target >= 5x);
3. consume + one traced epoch (the seed's architecture, batch 1024) with the confluent reader
   against the same epoch from the same raw batches in memory (target >= 0.9), with the best
   ratio these cores allow (producer_ceiling's bound: the in-memory epoch's work and one read of
   the topic, from the CPU seconds of this process and the broker during each).

Run it on a quiet machine; `--quick` (9,000 rows, one repeat) only checks that the script works.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "images", "pipeline"))

from bench_pipeline import CORES, cpu_seconds, delete_topic, make_file, producer_ceiling, read_encode_seconds  # noqa: E402
from common import cpu_model, print_table  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TARGET_VS_OWN_LOOP = 0.8
TARGET_VS_KAFKA_PYTHON_PRODUCER = 6.0
TARGET_CONSUME_VS_KAFKA_PYTHON = 5.0
TARGET_EPOCH_VS_MEMORY = 0.9


def own_loop_once(bootstrap: str, topic: str, messages: list[tuple[list[bytes], list[bytes], int]],
                  partitions: int) -> float:
    """Seconds for confluent-kafka alone to send the pre-encoded messages, round-robin, with the
    producer's reliability settings (idempotent, acks=all) and topic set-up, as a user's plain loop
    would: `produce` per message, `poll(0)` now and then, one `flush`."""
    from confluent_kafka import Producer

    from susy_pipeline import kafka_io

    started = time.perf_counter()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 20, "queue.buffering.max.messages": 2_000_000})
    partitions = kafka_io.ensure_topic(bootstrap, topic, partitions)
    n = 0
    for keys, values, _ in messages:
        for key, value in zip(keys, values):
            producer.produce(topic, value, key, partition=n % partitions)
            n += 1
        producer.poll(0)
    producer.flush()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=90_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="--rows 9000 --repeats 1: check that it works")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats = 9_000, 1
    logging.basicConfig(level=logging.WARNING)
    # kafka-python 3's event loop warns of every task that held it over 100 ms: the kafka-python
    # reader and producer share the interpreter with the bench's own work, so each run printed
    # dozens of these between the tables, saying nothing about the figures.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)

    from susy_pipeline import kafka_io
    from susy_pipeline.broker import embedded_broker
    from susy_pipeline.data import iter_batches
    from susy_pipeline.model import SEED_RECIPE, with_overrides
    from susy_pipeline.training import freeze_heap, train, use_training_threads

    use_training_threads()
    freeze_heap()  # as the trainer does: TensorFlow's objects out of the reads' collections
    rows, repeats = args.rows, args.repeats
    out: list[tuple[str, str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp, embedded_broker() as bootstrap:
        path = make_file(rows, tmp)
        encoded = list(kafka_io.message_batches(iter_batches(path, keep_text=True), 1))
        counter = iter(range(10_000))

        def produce(client: str):
            topic = f"bench-{client}-{next(counter)}"
            return kafka_io.produce(iter_batches(path, keep_text=True), bootstrap=bootstrap, topic=topic,
                                    partitions=args.partitions, client=client)

        ours, loop, python, reading, ceilings = [], [], [], [], []
        for r in range(repeats + 1):  # the first round warms up
            production = produce("confluent")
            delete_topic(bootstrap, production.topic)
            cpu = cpu_seconds(bootstrap)
            loop_s = own_loop_once(bootstrap, f"bench-loop-{r}", encoded, args.partitions)
            loop_cpu = cpu_seconds(bootstrap) - cpu
            delete_topic(bootstrap, f"bench-loop-{r}")
            slow = produce("kafka-python")
            delete_topic(bootstrap, slow.topic)
            if r:
                ours.append(production.seconds)
                loop.append(loop_s)
                python.append(slow.seconds)
                cpu = cpu_seconds(bootstrap)
                reading.append(read_encode_seconds(path, 1))
                ceilings.append(producer_ceiling(loop_s, loop_cpu, reading[-1], cpu_seconds(bootstrap) - cpu))
        vs_loop = statistics.median(l / o for o, l in zip(ours, loop))
        best = statistics.median(ceilings)
        vs_python = statistics.median(p / o for o, p in zip(ours, python))
        out.append(("produce, 1 row/message, vs confluent-kafka's own loop of the same pre-encoded messages",
                    f"{rows / statistics.median(ours):,.0f} rows/s", f"{rows / statistics.median(loop):,.0f} msgs/s",
                    f"{vs_loop:.2f} (ceiling on {CORES} cores: {best:.2f}, so {vs_loop / best:.0%} of it)",
                    f">= {TARGET_VS_OWN_LOOP} {'ok' if vs_loop >= TARGET_VS_OWN_LOOP else 'MISSED'}"
                    f"{', above the ceiling here' if TARGET_VS_OWN_LOOP > best else ''}"))
        out.append(("produce, 1 row/message, vs the kafka-python producer (--client kafka-python)",
                    f"{rows / statistics.median(ours):,.0f} rows/s", f"{rows / statistics.median(python):,.0f} rows/s",
                    f"{vs_python:.1f}x", f">= {TARGET_VS_KAFKA_PYTHON_PRODUCER:.0f}x "
                    f"{'ok' if vs_python >= TARGET_VS_KAFKA_PYTHON_PRODUCER else 'MISSED'}"))
        out.append(("the producer's own reading alone (file -> encoded messages, no broker), for comparison",
                    f"{statistics.median(reading):.3f} s", f"{statistics.median(loop):.3f} s (own loop)",
                    f"{statistics.median(reading) / statistics.median(loop):.2f} (reading / own loop)", ""))

        production = produce("confluent")
        confluent_s, python_s = [], []
        for _ in range(repeats):
            for name, times in (("confluent", confluent_s), ("kafka-python", python_s)):
                started = time.perf_counter()
                n = sum(len(k) for k, _ in kafka_io.READERS[name](bootstrap, production.topic, production.partitions))
                times.append(time.perf_counter() - started)
                if n != rows:
                    sys.exit(f"the {name} reader read {n} messages, not {rows}")
        consume_ratio = statistics.median(p / c for c, p in zip(confluent_s, python_s))
        out.append((f"consume {rows:,} one-row messages, confluent reader vs kafka-python reader",
                    f"{statistics.median(confluent_s):.3f} s", f"{statistics.median(python_s):.3f} s",
                    f"{consume_ratio:.1f}x", f">= {TARGET_CONSUME_VS_KAFKA_PYTHON:.0f}x "
                    f"{'ok' if consume_ratio >= TARGET_CONSUME_VS_KAFKA_PYTHON else 'MISSED'}"))

        config = with_overrides(SEED_RECIPE, batch_size=1024, epochs=2)

        def source():
            return kafka_io.confluent_batches(bootstrap, production.topic, production.partitions)

        cached = list(source())
        epochs, memory, epoch_ceilings = [], [], []
        for _ in range(repeats):  # interleaved; epoch 2 is the traced one
            epochs.append(train(source, config, expected_rows=rows)[1]["epoch_seconds"])
            # CPU at each epoch's end (this process and the broker): epoch 2's own CPU in memory.
            marks: list[float] = []
            memory.append(train(lambda: iter(cached), config, expected_rows=rows,
                                report=lambda facts: marks.append(cpu_seconds(bootstrap)))[1]["epoch_seconds"])
            cpu = cpu_seconds(bootstrap)
            started = time.perf_counter()
            for _ in source():  # one read of the topic, as each epoch makes
                pass
            read_s, read_cpu = time.perf_counter() - started, cpu_seconds(bootstrap) - cpu
            epoch_ceilings.append(producer_ceiling(memory[-1][1], marks[-1] - marks[-2], read_s, read_cpu))
        epoch_ratio = statistics.median(m[1] / e[1] for e, m in zip(epochs, memory))
        epoch_best = statistics.median(epoch_ceilings)
        out.append(("consume + 1 traced epoch, batch 1024, confluent reader vs the same epoch from in-memory batches",
                    f"{statistics.median(e[1] for e in epochs):.2f} s", f"{statistics.median(m[1] for m in memory):.2f} s",
                    f"{epoch_ratio:.2f} (ceiling on {CORES} cores: {epoch_best:.2f}, so {epoch_ratio / epoch_best:.0%} "
                    f"of it)", f">= {TARGET_EPOCH_VS_MEMORY} "
                    f"{'ok' if epoch_ratio >= TARGET_EPOCH_VS_MEMORY else 'MISSED'}"
                    f"{', above the ceiling here' if TARGET_EPOCH_VS_MEMORY > epoch_best else ''}"))

    print(f"\nKafka clients, {rows:,} rows, 1 row per message, {args.partitions} partitions, median of {repeats} "
          f"({CORES} cores, {cpu_model()})\n")
    print_table(("stage vs limit", "stage", "limit", "ratio", "target"), out)


if __name__ == "__main__":
    main()
