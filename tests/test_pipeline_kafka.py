"""Both producer clients and the three readers against a real Kafka-protocol broker (tansu on loopback).

Topics seeded here (one per test, so tests do not see each other's rows):
- `wire-<client>-<n>`: the first 500 sample rows, `n` rows per message, 3 partitions.
- `readers`: the first 3000 rows, 7 per message, 3 partitions; `recorded`: the whole sample through
  the `produce` command, one row per message, 3 partitions.
Readers are compared after sorting, as tensorflow-io's own Kafka tests do,
because rows from different partitions interleave in no fixed order.
"""
from __future__ import annotations

import gzip
import re
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


def produce(broker, sample, topic, rows, per_message, partitions=3, client="confluent"):
    return kafka_io.produce(iter_batches(sample, limit=rows, keep_text=True), bootstrap=broker, topic=topic,
                            partitions=partitions, rows_per_message=per_message, client=client)


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


@pytest.mark.parametrize("client", kafka_io.PRODUCER_CLIENTS)
@pytest.mark.parametrize("per_message", [1, 50])
def test_producer_writes_the_seed_wire_format_and_records_exact_offsets(kafka_broker, sample, per_message, client):
    topic = f"wire-{client}-{per_message}"
    production = produce(kafka_broker, sample, topic, 500, per_message, client=client)
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


def tfio_decoded(kafka_broker, topic, partitions, folder):
    """tensorflow-io in its own process: librdkafka's threads crash the interpreter at exit
    once the broker fixture has gone, which would take pytest's summary with them."""
    out = folder / f"tfio-{topic}.npy"
    done = subprocess.run([sys.executable, "-c", TFIO_READ, kafka_broker, topic, repr(partitions), str(out)],
                          cwd=Path(__file__).parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(out)


def from_file(sample, rows):
    labels, features = (np.concatenate(a) for a in zip(*((b.labels, b.features)
                                                         for b in iter_batches(sample, limit=rows))))
    table = np.hstack([labels[:, None], features])
    return table[np.lexsort(table.T[::-1])]


def test_the_three_readers_yield_the_same_rows_through_one_decode_step(kafka_broker, sample, tmp_path):
    production = produce(kafka_broker, sample, "readers", 3000, 7)
    via_kafka_python = decoded(kafka_io.kafka_python_batches(kafka_broker, "readers", production.partitions))
    via_confluent = decoded(kafka_io.confluent_batches(kafka_broker, "readers", production.partitions))
    via_tfio = tfio_decoded(kafka_broker, "readers", production.to_record()["partitions"], tmp_path)
    expected = from_file(sample, 3000)
    np.testing.assert_array_equal(via_kafka_python, expected)
    np.testing.assert_array_equal(via_confluent, expected)
    np.testing.assert_array_equal(via_tfio, expected)


def test_the_offsets_a_run_records_are_read_back_exactly_by_all_three_readers(kafka_broker, sample, store_path,
                                                                               tmp_path):
    """What a TrainingRun's producer Job records (the `produce` command, its store record) and what its
    trainer reads with each reader: the same messages, each exactly once, nothing past the range
    even when the topic holds more (a second production appended after it)."""
    from susy_pipeline.commands.produce import produce as produce_command
    from susy_pipeline.store import open_store

    produce_command(data=str(sample), bootstrap=kafka_broker, run_name="recorded", topic="recorded",
                    partitions=3, store_uri=store_path)
    produce(kafka_broker, sample, "recorded", 100, 1)  # later rows of another run, same topic
    with open_store(store_path) as store:
        record = store.get_production("recorded")
    ranges = kafka_io.Production.ranges(record)
    assert sum(end - start for start, end in ranges.values()) == record["messages"] == record["rows"]
    expected = from_file(sample, None)
    assert len(expected) == record["rows"]
    for reader in ("kafka-python", "confluent"):
        batches = list(kafka_io.READERS[reader](kafka_broker, "recorded", ranges))
        assert sum(len(keys) for keys, _ in batches) == record["messages"], reader
        np.testing.assert_array_equal(decoded(batches), expected, err_msg=reader)
    np.testing.assert_array_equal(tfio_decoded(kafka_broker, "recorded", record["partitions"], tmp_path), expected)


@pytest.mark.parametrize("reader", ["kafka-python", "confluent"])
def test_reading_past_what_was_written_times_out_instead_of_hanging(kafka_broker, sample, reader):
    production = produce(kafka_broker, sample, f"short-{reader}", 100, 1, partitions=1)
    start, end = production.partitions[0]
    with pytest.raises(kafka_io.KafkaReadTimeout, match="no messages .* for 3 s"):
        list(kafka_io.READERS[reader](kafka_broker, f"short-{reader}", {0: (start, end + 50)}, timeout_s=3))


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


LOST_BROKER_TIMEOUTS = {"kafka-python": {"request_timeout_ms": 2000, "delivery_timeout_ms": 4000},
                        "confluent": {"request.timeout.ms": 2000, "message.timeout.ms": 4000}}


@pytest.mark.parametrize("client", kafka_io.PRODUCER_CLIENTS)
def test_a_broker_lost_mid_stream_fails_the_producer_naming_it(sample, client):
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
                             rows_per_message=100, client=client, producer_options=LOST_BROKER_TIMEOUTS[client])
        assert time.monotonic() - started < 30


@pytest.mark.parametrize("client, options, reason", [
    ("kafka-python", {"retries": 0}, "incompatible with user-provided retries=0"),
    ("confluent", {"acks": "1"}, "`acks` must be set to `all` when `enable.idempotence` is true"),
    ("confluent", {"no.such.setting": "1"}, "No such configuration property"),
])
def test_settings_the_client_refuses_are_bad_input_not_an_unreachable_broker(kafka_broker, sample, client,
                                                                              options, reason):
    """Each client refuses a setting that cannot work beside the idempotent producer: exit 2 with its
    reason, not 'no Kafka broker answers' (exit 3, which a Job would retry in vain)."""
    from susy_pipeline.errors import BadInput

    with pytest.raises(BadInput, match="Kafka client settings refused: .*" + re.escape(reason)):
        kafka_io.produce(iter_batches(sample, limit=10, keep_text=True), bootstrap=kafka_broker, topic="refused",
                         client=client, producer_options=options)


def test_the_confluent_reader_refuses_settings_librdkafka_refuses(kafka_broker):
    from susy_pipeline.errors import BadInput

    with pytest.raises(BadInput, match="Kafka client settings refused: .*No such configuration property"):
        next(kafka_io.confluent_batches(kafka_broker, "any", {0: (0, 1)}, configuration=["no.such.setting=1"]))
    with pytest.raises(BadInput, match="librdkafka setting 'fetch.wait.max.ms': expected KEY=VALUE"):
        next(kafka_io.confluent_batches(kafka_broker, "any", {0: (0, 1)}, configuration=["fetch.wait.max.ms"]))


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


@pytest.mark.parametrize("client, options, cause", [
    ("kafka-python", {"max_request_size": 64 << 10}, "MessageSizeTooLargeError"),
    ("confluent", {"message.max.bytes": 64 << 10}, "MSG_SIZE_TOO_LARGE"),
])
def test_a_message_refused_as_too_large_is_bad_input_naming_the_limit(kafka_broker, sample, client, options, cause):
    """A broker's MessageSizeTooLarge (MESSAGE_TOO_LARGE, what Kafka answers for a record batch over
    message.max.bytes) was reported as an unreachable broker, exit 3, and retried in vain. tansu
    enforces no limit, so the refusal here is the client's own, set under what the producer was told
    the limit is (as a broker whose message.max.bytes is lower than --max-message-bytes would):
    kafka-python's max_request_size, which it enforces in send() with the same
    MessageSizeTooLargeError, and librdkafka's message.max.bytes (MSG_SIZE_TOO_LARGE, the broker's code)."""
    from susy_pipeline.errors import EXIT_BAD_INPUT, BadInput, exit_code

    with pytest.raises(BadInput) as caught:
        kafka_io.produce(iter_batches(sample, limit=2000, keep_text=True), bootstrap=kafka_broker,
                         topic=f"too-large-{client}", rows_per_message=1000, max_message_bytes=1 << 20,
                         client=client, producer_options=options)
    message = str(caught.value)
    assert exit_code(caught.value) == EXIT_BAD_INPUT
    assert f"refused as too large ({cause})" in message
    assert "at most 1,048,576 bytes (--max-message-bytes, env KAFKA_MAX_MESSAGE_BYTES)" in message
