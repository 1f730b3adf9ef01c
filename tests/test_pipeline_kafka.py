"""Producer and both readers against a real Kafka-protocol broker (tansu on loopback).

Topics seeded here (one per test, so tests do not see each other's rows):
- `wire-<n>`: the first 500 sample rows, `n` rows per message, 3 partitions.
Readers are compared after sorting, as tensorflow-io's own Kafka tests do,
because rows from different partitions interleave in no fixed order.
"""
from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TFIO_TANSU_SETTINGS
from susy_pipeline import kafka_io
from susy_pipeline.data import iter_batches

pytestmark = pytest.mark.integration


def sample_rows(sample, n):
    with gzip.open(sample, "rt") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


def produce(broker, sample, topic, rows, per_message, partitions=3):
    return kafka_io.produce(iter_batches(sample, limit=rows, keep_text=True), bootstrap=broker, topic=topic,
                            partitions=partitions, rows_per_message=per_message)


def decoded(batches):
    import tensorflow as tf

    from susy_pipeline.decode import decode_batch

    xs, ys = [], []
    for keys, values in batches:
        x, y = decode_batch(tf.constant(keys), tf.constant(values))
        xs.append(x.numpy())
        ys.append(y.numpy())
    rows = np.hstack([np.concatenate(ys), np.concatenate(xs)])
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("per_message", [1, 50])
def test_producer_writes_the_seed_wire_format_and_records_exact_offsets(kafka_broker, sample, per_message):
    topic = f"wire-{per_message}"
    production = produce(kafka_broker, sample, topic, 500, per_message)
    messages = -(-500 // per_message)
    assert production.rows == 500 and production.messages == messages
    assert sorted(production.partitions) == [0, 1, 2]
    assert sum(end - start for start, end in production.partitions.values()) == messages

    raw = list(kafka_io.kafka_python_batches(kafka_broker, topic, production.partitions, timeout_s=30))
    keys = [k for batch_keys, _ in raw for k in batch_keys]
    values = [v for _, batch_values in raw for v in batch_values]
    assert len(keys) == messages
    rows = sorted(
        (label, line) for key, value in zip(keys, values)
        for label, line in zip(key.decode().split(","), value.decode().split("\n")))
    expected = sorted((("1" if float(line.split(",", 1)[0]) == 1 else "0"), line.split(",", 1)[1])
                      for line in sample_rows(sample, 500))
    assert rows == expected  # key = label b"0"/b"1", value = the 18 features as in the file


TFIO_READ = """
import sys, numpy as np
from susy_pipeline import kafka_io
from susy_pipeline.kafka_io import Production
from conftest import TFIO_TANSU_SETTINGS
from test_pipeline_kafka import decoded
ranges = Production.ranges({"partitions": eval(sys.argv[3])})
np.save(sys.argv[4], decoded(kafka_io.tfio_batches(sys.argv[1], sys.argv[2], ranges,
                                                   configuration=TFIO_TANSU_SETTINGS, timeout_s=60)))
"""


def test_both_readers_yield_the_same_rows_through_one_decode_step(kafka_broker, sample, tmp_path):
    production = produce(kafka_broker, sample, "readers", 3000, 7)
    via_kafka_python = decoded(kafka_io.kafka_python_batches(kafka_broker, "readers", production.partitions))
    # tensorflow-io in its own process: librdkafka's threads crash the interpreter at exit
    # once the broker fixture has gone, which would take pytest's summary with them.
    out = tmp_path / "tfio.npy"
    partitions = repr(production.to_record()["partitions"])
    done = subprocess.run([sys.executable, "-c", TFIO_READ, kafka_broker, "readers", partitions, str(out)],
                          cwd=Path(__file__).parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    via_tfio = np.load(out)
    labels, features = (np.concatenate(a) for a in zip(*((b.labels, b.features)
                                                         for b in iter_batches(sample, limit=3000))))
    from_file = np.hstack([labels[:, None], features])
    from_file = from_file[np.lexsort(from_file.T[::-1])]
    np.testing.assert_array_equal(via_kafka_python, from_file)
    np.testing.assert_array_equal(via_tfio, from_file)


def test_reading_past_what_was_written_times_out_instead_of_hanging(kafka_broker, sample):
    production = produce(kafka_broker, sample, "short", 100, 1, partitions=1)
    start, end = production.partitions[0]
    with pytest.raises(kafka_io.KafkaReadTimeout, match="no messages .* for 3 s"):
        list(kafka_io.kafka_python_batches(kafka_broker, "short", {0: (start, end + 50)}, timeout_s=3))


def _train(store_path, kafka_broker, topic, *extra):
    return subprocess.run(
        [sys.executable, "-m", "susy_pipeline", "train", "--run-name", topic, "--recipe", "seed",
         "--bootstrap", kafka_broker, "--topic", topic, "--store", store_path, *extra],
        capture_output=True, text=True, timeout=180)


def test_a_hung_tfio_read_ends_the_trainer_with_exit_3(kafka_broker, sample, store_path):
    """Without the tansu-only settings, librdkafka 1.5.0 misreads the broker's
    ApiVersions reply and waits forever. The trainer must still end, clearly.

    Runs the real `train` command in a subprocess: a hung read thread cannot be
    stopped, so the command leaves with os._exit, which would end pytest too.
    """
    from susy_pipeline.store import open_store

    production = produce(kafka_broker, sample, "hung", 100, 1, partitions=1)
    with open_store(store_path) as store:
        store.put_production("hung", production.to_record())
    done = _train(store_path, kafka_broker, "hung", "--reader", "tfio", "--read-timeout", "8")
    assert done.returncode == 3, done.stderr[-2000:]
    assert "tensorflow-io read of hung" in done.stderr and "no data for 8 s" in done.stderr


def test_fewer_rows_than_the_producer_recorded_is_an_error(kafka_broker, sample, store_path):
    from susy_pipeline.store import open_store

    production = produce(kafka_broker, sample, "shortfall", 100, 1, partitions=1)
    start, end = production.partitions[0]
    record = {**production.to_record(), "partitions": {"0": [start, end + 50]}, "rows": 150}
    with open_store(store_path) as store:
        store.put_production("shortfall", record)
    settings = [arg for s in TFIO_TANSU_SETTINGS for arg in ("--librdkafka", s)]
    done = _train(store_path, kafka_broker, "shortfall", "--reader", "tfio", *settings)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "error: the producer recorded 150 rows but the stream held 100" in done.stderr


def test_unreachable_broker_is_a_clear_error():
    with pytest.raises(kafka_io.KafkaUnavailable, match="no Kafka broker answers at 127.0.0.1:1"):
        kafka_io.ensure_topic("127.0.0.1:1", "t", 1, timeout_s=2)


def test_a_broker_lost_mid_stream_fails_the_producer_naming_it(sample):
    """Sends that fail after the producer has started (the broker gone between two read batches)
    end the producer with KafkaUnavailable (exit 3, retried by the Job), not a partial success."""
    import time

    from susy_pipeline.broker import embedded_broker

    with embedded_broker() as broker:
        def batches_then_broker_gone():
            for i, batch in enumerate(iter_batches(sample, limit=6_000, keep_text=True, block_bytes=1 << 18)):
                if i == 1:  # the first batch is sent by now (topic made, producer connected)
                    time.sleep(1.5)
                    # SIGKILL: on SIGTERM tansu keeps serving the connections it has open.
                    subprocess.run(["pkill", "-9", "-f", f"tcp://{broker}"], check=False)
                    time.sleep(0.5)
                yield batch

        started = time.monotonic()
        with pytest.raises(kafka_io.KafkaUnavailable, match=rf"producing to lost at {broker} failed"):
            kafka_io.produce(batches_then_broker_gone(), bootstrap=broker, topic="lost", partitions=1,
                             rows_per_message=100, producer_options={"request_timeout_ms": 2000,
                                                                     "delivery_timeout_ms": 4000})
        assert time.monotonic() - started < 30


def test_settings_the_client_refuses_are_bad_input_not_an_unreachable_broker(kafka_broker, sample):
    """kafka-python refuses retries=0 beside the idempotent producer: exit 2 with its reason, not
    'no Kafka broker answers' (exit 3, which a Job would retry in vain)."""
    from susy_pipeline.errors import BadInput

    with pytest.raises(BadInput, match="Kafka client settings refused: .*incompatible with user-provided retries=0"):
        kafka_io.produce(iter_batches(sample, limit=10, keep_text=True), bootstrap=kafka_broker, topic="refused",
                         producer_options={"retries": 0})


def test_rows_per_message_is_cut_so_every_message_fits_the_byte_limit(kafka_broker, sample):
    """10,000 rows per message (the CRD's maximum) made messages of about 4 MiB, over Kafka's
    default 1 MiB message.max.bytes (issue 22 §7). Now a message holds fewer rows where they would
    not fit: every message read back is at most the limit, and every row arrives once. (tansu takes
    messages of any size, so the limit here is the producer's own: a 64 KiB one.)"""
    limit = 64 << 10
    production = kafka_io.produce(iter_batches(sample, limit=5000, keep_text=True), bootstrap=kafka_broker,
                                  topic="bounded", partitions=1, rows_per_message=10_000,
                                  max_message_bytes=limit)
    raw = list(kafka_io.kafka_python_batches(kafka_broker, "bounded", production.partitions, timeout_s=30))
    keys = [k for batch_keys, _ in raw for k in batch_keys]
    values = [v for _, batch_values in raw for v in batch_values]
    sizes = [len(k) + len(v) for k, v in zip(keys, values)]
    assert len(keys) == production.messages > 5000 * 400 // limit  # cut: not one message of 5,000 rows
    assert max(sizes) + kafka_io.RECORD_OVERHEAD_BYTES <= limit
    assert sum(len(k.split(b",")) for k in keys) == 5000 == sum(len(v.split(b"\n")) for v in values)
    assert decoded(raw).shape == (5000, 19)


def test_message_bounds_split_only_what_does_not_fit():
    from susy_pipeline.errors import BadInput

    rows = np.full(10, 100)
    np.testing.assert_array_equal(kafka_io.message_bounds(rows, 4, 1 << 20), [0, 4, 8, 10])
    # 3 rows of 100 bytes fit in 300 + the record overhead; the fourth starts a new message.
    np.testing.assert_array_equal(kafka_io.message_bounds(rows, 4, 300 + kafka_io.RECORD_OVERHEAD_BYTES),
                                  [0, 3, 6, 9, 10])
    with pytest.raises(BadInput, match=r"row 12 is 100 bytes as a Kafka message, over the limit of 200 bytes"):
        kafka_io.message_bounds(np.array([10, 10, 100]), 1, 200, first_row=10)


def test_a_message_refused_as_too_large_is_bad_input_naming_the_limit(kafka_broker, sample):
    """A broker's MessageSizeTooLarge (MESSAGE_TOO_LARGE, what Kafka answers for a record batch over
    message.max.bytes) was reported as an unreachable broker, exit 3, and retried in vain. tansu
    enforces no limit, so the refusal here is kafka-python's own: its max_request_size, which it
    enforces in send() with the same MessageSizeTooLargeError, set under what the producer was told
    the limit is (as a broker whose message.max.bytes is lower than --max-message-bytes would)."""
    from susy_pipeline.errors import EXIT_BAD_INPUT, BadInput, exit_code

    with pytest.raises(BadInput) as caught:
        kafka_io.produce(iter_batches(sample, limit=2000, keep_text=True), bootstrap=kafka_broker,
                         topic="too-large", rows_per_message=1000, max_message_bytes=1 << 20,
                         producer_options={"max_request_size": 64 << 10})
    message = str(caught.value)
    assert exit_code(caught.value) == EXIT_BAD_INPUT
    assert "refused as too large (MessageSizeTooLargeError)" in message
    assert "at most 1,048,576 bytes (--max-message-bytes, env KAFKA_MAX_MESSAGE_BYTES)" in message
