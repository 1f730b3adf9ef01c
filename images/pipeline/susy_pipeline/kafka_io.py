"""Kafka at the edges: the producer client and the two readers.

Both readers yield the same thing, raw message batches `(keys, values)` as
numpy arrays of bytes, and `training.py` turns either into the same `tf.data`
pipeline with one decode step:

- `tfio_batches` (production): tensorflow-io's `KafkaIODataset`, one per
  partition, read between the exact offsets the producer recorded. tfio 0.37.1
  bundles librdkafka 1.5.0; when a read goes wrong it hangs instead of
  raising, so every read runs in a worker thread (`streams.ReadAhead`) and the
  consumer side gives up after `timeout_s` without progress (`KafkaReadTimeout`).
- `kafka_python_batches`: kafka-python with manual partition assignment, for
  brokers that librdkafka 1.5.0 cannot talk to: Kafka 4 (which dropped the
  Fetch and ListOffsets versions 1.5.0 falls back to, KIP-896), and tansu
  without the two test-only settings below. Apache Kafka 2.x-3.9, in
  ZooKeeper and KRaft mode, works with the tfio reader as it is.
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .data import Batch
from .errors import BadInput
from .progress import Progress
from .streams import ReadAhead
from .kafka_security import KafkaSecurity, KafkaUnavailable, check_broker, check_tfio_logging

log = logging.getLogger(__name__)

RawBatch = tuple[np.ndarray, np.ndarray]  # (keys, values), dtype object (bytes)
T = TypeVar("T")


class KafkaReadTimeout(KafkaUnavailable):
    """A read made no progress for the allowed time."""
    # A hung tensorflow-io read thread cannot be stopped: the command leaves without joining it.
    abandons_threads = True


@dataclass
class Production:
    """What a producer wrote: enough for a trainer to read exactly that and stop.

    `partitions` maps partition -> [first offset, end offset) of this run's
    messages, taken from the producer's own send results (tansu's ListOffsets
    answer is not the end offset, see docs/contracts.md).
    """

    topic: str
    partitions: dict[int, list[int]] = field(default_factory=dict)
    rows: int = 0
    messages: int = 0
    rows_per_message: int = 1
    seconds: float = 0.0

    def to_record(self) -> dict[str, Any]:
        return {"topic": self.topic, "rows": self.rows, "messages": self.messages,
                "rows_per_message": self.rows_per_message, "seconds": round(self.seconds, 3),
                "rows_per_second": round(self.rows / self.seconds) if self.seconds else None,
                # BSON keys must be strings
                "partitions": {str(p): list(r) for p, r in sorted(self.partitions.items())}}

    @staticmethod
    def ranges(record: Mapping[str, Any]) -> dict[int, tuple[int, int]]:
        return {int(p): (int(r[0]), int(r[1])) for p, r in record["partitions"].items()}


# --- producing -------------------------------------------------------------

# Measured here, sending 90,000 prepared rows at 500 rows per message took about
# 0.23 s with 4-8 MiB record batches against 0.31 s with 1 MiB: fewer produce
# requests for the broker to answer. A record batch is capped by the broker's message limit
# too (below), so against a broker at Kafka's defaults the batches are 1 MiB.
PRODUCER_BATCH_BYTES = 8 << 20
# The largest message (record batch) a broker takes: Kafka's message.max.bytes, default 1048588
# (1 MiB and the 12-byte log overhead), per topic max.message.bytes; the broker compares each
# record *batch* with it (core/src/main/scala/kafka/log/UnifiedLog.scala, analyzeAndValidateRecords:
# RecordTooLargeException, MESSAGE_TOO_LARGE to the producer). The producer keeps every message,
# and every record batch, at or under `max_message_bytes`: `--rows-per-message` rows, or fewer
# where they would not fit. Raise it (produce --max-message-bytes, env KAFKA_MAX_MESSAGE_BYTES)
# only with the broker's limit.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
# A record batch's own header is 61 bytes (magic v2) and a record's framing under 30 (varint
# lengths, offset and timestamp deltas, no headers): what a message's rows may use is the limit
# less this.
RECORD_OVERHEAD_BYTES = 128
# File batches (about 1 MiB of text each) parsed ahead of the sends, so the
# reader keeps going while the sending threads hold the GIL.
READ_AHEAD_BATCHES = 8


def _connect(bootstrap: str, make: Callable[[], T]) -> T:
    """A kafka-python client (its constructor connects to the bootstrap brokers). Settings the
    client refuses are bad input (exit 2: retrying cannot fix them), not an unreachable broker."""
    from kafka.errors import KafkaConfigurationError, KafkaError

    try:
        return make()
    except KafkaConfigurationError as err:
        raise BadInput(f"Kafka client settings refused: {err}") from None
    except KafkaError as err:
        raise KafkaUnavailable(f"no Kafka broker answers at {bootstrap}") from err


def ensure_topic(bootstrap: str, topic: str, partitions: int, *, timeout_s: float = 30,
                 security: KafkaSecurity | None = None) -> int:
    """Create the topic if absent; return its partition count."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    security = security or KafkaSecurity.from_env()
    check_broker(bootstrap, security)
    admin = _connect(bootstrap, lambda: KafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
        bootstrap_timeout_ms=int(timeout_s * 1000), client_id="susy-producer-admin", **security.kafka_python()))
    try:
        if topic not in admin.list_topics():
            try:
                admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=-1)])
                log.info("created topic %s with %d partition(s)", topic, partitions)
            except TopicAlreadyExistsError:
                pass  # created by someone else in between: fine
        described = admin.describe_topics([topic])
        found = len(described[0]["partitions"]) if described else partitions
        if found != partitions:
            log.warning("topic %s exists with %d partition(s); writing to those, not %d",
                        topic, found, partitions)
        return found or partitions
    finally:
        admin.close()


def message_batches(batches: Iterable[Batch], rows_per_message: int,
                    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Iterator[tuple[list[bytes], list[bytes], int]]:
    """Rows -> Kafka (keys, values, rows) in the seed's wire format; see decode.py.

    A message of k rows is its rows' labels joined by "," (key) and their
    feature text joined by "\n" (value); a batch's last message may hold fewer
    rows, and so does one whose `rows_per_message` rows would not fit in
    `max_message_bytes`. The joins run in pyarrow, not Python, so they hold the GIL (which
    the producer's pure-Python sends need) only briefly.
    """
    for batch in batches:
        if batch.feature_text is None:
            raise ValueError("producer batches must be read with keep_text=True")
        keys = pa.array(np.where(batch.labels == 1, "1", "0"), pa.string())
        values = batch.feature_text
        # A row costs its text, its label and their two separators.
        row_bytes = pc.binary_length(values).to_numpy(zero_copy_only=False).astype(np.int64) + 3
        bounds = message_bounds(row_bytes, rows_per_message, max_message_bytes, first_row=batch.first_row)
        if len(bounds) - 1 < len(batch):
            offsets = pa.array(bounds, pa.int32())
            keys = pc.binary_join(pa.ListArray.from_arrays(offsets, keys), ",")
            values = pc.binary_join(pa.ListArray.from_arrays(offsets, values), "\n")
        yield keys.cast(pa.binary()).to_pylist(), values.cast(pa.binary()).to_pylist(), len(batch)


def message_bounds(row_bytes: np.ndarray, rows_per_message: int, max_message_bytes: int, *,
                   first_row: int = 0) -> np.ndarray:
    """Where each message starts (and where the last ends) in a batch of rows of these sizes: at
    most `rows_per_message` rows, and at most `max_message_bytes` with the record's overhead.

    Raises BadInput for a row that does not fit in a message by itself."""
    room = max_message_bytes - RECORD_OVERHEAD_BYTES
    n = len(row_bytes)
    if n and int(row_bytes.max()) > room:
        row = int(np.argmax(row_bytes > room))
        raise BadInput(f"row {first_row + row} is {int(row_bytes[row]):,} bytes as a Kafka message, over the "
                       f"limit of {max_message_bytes:,} bytes per message (--max-message-bytes, env "
                       "KAFKA_MAX_MESSAGE_BYTES; the broker's message.max.bytes)")
    if not n or int(row_bytes.max()) * rows_per_message <= room:  # the usual case: every message fits
        return np.append(np.arange(0, n, rows_per_message), n)
    bounds, size, count = [0], 0, 0
    for i, cost in enumerate(row_bytes.tolist()):
        if count == rows_per_message or size + cost > room:
            bounds.append(i)
            size, count = 0, 0
        size += cost
        count += 1
    bounds.append(n)
    return np.array(bounds)


def produce(batches: Iterable[Batch], *, bootstrap: str, topic: str, partitions: int = 1,
            rows_per_message: int = 1, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
            progress_every_s: float = 2.0, producer_options: Mapping[str, Any] | None = None,
            security: KafkaSecurity | None = None, progress: Progress | None = None) -> Production:
    """Stream rows into `topic` and return exactly what was written.

    `progress` (default: rows of unknown total) hears of every batch sent: a bar on a terminal, a
    log line every `progress_every_s` elsewhere.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

    if rows_per_message < 1:
        raise ValueError("rows_per_message must be >= 1")
    if max_message_bytes <= RECORD_OVERHEAD_BYTES:
        raise BadInput(f"--max-message-bytes must be over {RECORD_OVERHEAD_BYTES}, got {max_message_bytes}")
    started = time.perf_counter()
    # Reading and parsing the file (pyarrow, GIL released) starts now, beside the
    # broker round trips below, and then overlaps the sends.
    messages = ReadAhead(message_batches(batches, rows_per_message, max_message_bytes), depth=READ_AHEAD_BATCHES,
                          name="produce-read")
    options = dict(acks="all", enable_idempotence=True, linger_ms=20,
                   batch_size=min(PRODUCER_BATCH_BYTES, max_message_bytes),
                   max_request_size=max(16 << 20, max_message_bytes), retries=5, client_id="susy-producer")
    security = security or KafkaSecurity.from_env()
    options.update(security.kafka_python())
    options.update(producer_options or {})
    try:
        partitions = ensure_topic(bootstrap, topic, partitions, security=security)
        producer = _connect(bootstrap, lambda: KafkaProducer(bootstrap_servers=bootstrap, **options))
    except BaseException:
        messages.close()  # stop the reader thread
        raise

    result = Production(topic=topic, rows_per_message=rows_per_message)
    # The first and the last message sent to each partition: within a partition the broker assigns
    # offsets in send order (idempotent producer), so those two give its range. Every other
    # message is only checked for failure, from `pending`, in order, once done: no callback per
    # message (at one row per message, callbacks cost about a tenth of the producer's time).
    first: dict[int, Any] = {}
    last: dict[int, Any] = {}
    pending: collections.deque = collections.deque()  # bounded by the client's buffer_memory
    failures: list[BaseException] = []

    def check_done(wait: bool = False) -> None:
        while pending and (wait or pending[0].is_done):
            future = pending.popleft()
            if wait:
                future.get(timeout=30)  # done after flush(); raises its failure (or a timeout)
            elif future.exception is not None:
                failures.append(future.exception)

    progress = progress or Progress(f"produce {topic}", log_every_s=progress_every_s, logger=log)
    n_messages = 0
    try:
        for keys, values, rows in messages:  # the next batches parse meanwhile
            for key, value in zip(keys, values):
                # Round-robin by message, not by key: keying by label would put
                # all signal rows in one partition and all background in another.
                partition = n_messages % partitions
                future = producer.send(topic, key=key, value=value, partition=partition)
                if n_messages < partitions:
                    first[partition] = future
                last[partition] = future
                pending.append(future)
                n_messages += 1
            result.rows += rows
            check_done()
            if failures:
                break
            progress.update(result.rows)
        producer.flush()
        check_done(wait=True)
    except (MessageSizeTooLargeError, RecordListTooLargeError) as err:
        raise _too_large(topic, bootstrap, max_message_bytes, err) from err
    except KafkaError as err:
        raise KafkaUnavailable(f"producing to {topic} at {bootstrap} failed: {err}") from err
    finally:
        progress.close()
        messages.close()
        producer.close(timeout=10)
    if failures:
        if isinstance(failures[0], (MessageSizeTooLargeError, RecordListTooLargeError)):
            raise _too_large(topic, bootstrap, max_message_bytes, failures[0])
        raise KafkaUnavailable(f"producing to {topic} at {bootstrap} failed: {failures[0]!r}")
    result.seconds = time.perf_counter() - started
    result.messages = n_messages
    result.partitions = {p: [first[p].value.offset, last[p].value.offset + 1] for p in sorted(first)}
    written = sum(end - start for start, end in result.partitions.values())
    if written != n_messages:
        raise KafkaUnavailable(f"sent {n_messages} messages but the offsets span {written}: another "
                               f"producer wrote to {topic} at the same time; use a topic per run")
    log.info("produced %d rows in %d messages to %s in %.2f s (%.0f rows/s); offsets %s",
             result.rows, n_messages, topic, result.seconds, result.rows / max(result.seconds, 1e-9),
             result.partitions)
    return result


def _too_large(topic: str, bootstrap: str, max_message_bytes: int, err: BaseException) -> BadInput:
    """A message refused as too large (by the broker, or by the client's own max_request_size):
    bad input, exit 2: the same message sent again is refused again."""
    return BadInput(f"producing to {topic} at {bootstrap}: a message was refused as too large "
                    f"({type(err).__name__}); messages here are at most {max_message_bytes:,} bytes "
                    "(--max-message-bytes, env KAFKA_MAX_MESSAGE_BYTES): set it at or under the broker's "
                    "message.max.bytes (the topic's max.message.bytes), or lower --rows-per-message")


# --- reading ---------------------------------------------------------------

def kafka_python_batches(bootstrap: str, topic: str, ranges: Mapping[int, tuple[int, int]], *,
                         timeout_s: float = 60.0, max_records: int = 4096,
                         security: KafkaSecurity | None = None) -> Iterator[RawBatch]:
    """Read exactly the offset ranges with kafka-python; yield (keys, values) batches."""
    from kafka import KafkaConsumer, TopicPartition

    security = security or KafkaSecurity.from_env()
    check_broker(bootstrap, security)
    consumer = _connect(bootstrap, lambda: KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, client_id="susy-trainer",
        fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20, **security.kafka_python()))
    try:
        todo = {TopicPartition(topic, p): (start, end) for p, (start, end) in ranges.items() if end > start}
        consumer.assign(list(todo))
        for tp, (start, _) in todo.items():
            consumer.seek(tp, start)
        deadline = time.monotonic() + timeout_s
        while todo:
            polled = consumer.poll(timeout_ms=500, max_records=max_records)
            keys: list[bytes] = []
            values: list[bytes] = []
            for tp, records in polled.items():
                if tp not in todo:
                    continue
                end = todo[tp][1]
                for record in records:
                    if record.offset < end:
                        keys.append(record.key)
                        values.append(record.value)
                if records and records[-1].offset >= end - 1:
                    del todo[tp]
                    consumer.pause(tp)
            if keys:
                deadline = time.monotonic() + timeout_s
                yield np.array(keys, dtype=object), np.array(values, dtype=object)
            elif time.monotonic() > deadline:
                raise KafkaReadTimeout(f"no messages from {topic} at {bootstrap} for {timeout_s:.0f} s; "
                                       f"still expected: {_describe(todo)}")
    finally:
        consumer.close()


def tfio_batches(bootstrap: str, topic: str, ranges: Mapping[int, tuple[int, int]], *,
                 configuration: Sequence[str] = (), timeout_s: float = 60.0,
                 read_batch: int = 4096, security: KafkaSecurity | None = None) -> Iterator[RawBatch]:
    """Read exactly the offset ranges with tensorflow-io; yield (keys, values) batches.

    `configuration` is librdkafka's `key=value` list. Production needs none;
    tests against tansu pass `api.version.request=false` and
    `broker.version.fallback=0.9.0`: librdkafka 1.5.0 skips one byte too few
    per tagged field (`rd_kafka_buf_skip_tags`, src/rdkafka_buf.h; fixed in
    2.2.0, #4278), and tansu writes default-valued tagged fields into its
    ApiVersions reply, which Apache Kafka never does. The connection's security
    (kafka_security.py) comes first; `configuration` may add to it.
    """
    security = security or KafkaSecurity.from_env()
    check_tfio_logging(security)
    check_broker(bootstrap, security)
    configuration = [*security.librdkafka(), *configuration]

    def read_partitions() -> Iterator[RawBatch]:
        import tensorflow_io as tfio

        for partition, (start, end) in sorted(ranges.items()):
            if end <= start:
                continue
            dataset = tfio.IODataset.from_kafka(topic, partition=partition, start=start, stop=end,
                                                servers=bootstrap, configuration=list(configuration))
            read = 0
            for values, keys in dataset.batch(read_batch).as_numpy_iterator():
                read += len(keys)
                if read > end - start:
                    # Seen against tansu with the settings above: a read from offset 160 to 170 gave
                    # offsets 0..169 (the start is not honoured, the stop is). Never train on rows
                    # outside the range; kafka-python seeks exactly.
                    raise BadInput(f"tensorflow-io read more than the {end - start} messages of {topic} "
                                   f"partition {partition} offsets {start}..{end - 1}: this broker does "
                                   "not honour its start offset; use --reader kafka-python")
                yield keys.astype(object), values.astype(object)

    what = f"tensorflow-io read of {topic} {dict(ranges)} at {bootstrap}"
    yield from ReadAhead(read_partitions, depth=8, timeout_s=timeout_s, name="tfio-read",
                          on_timeout=lambda s: KafkaReadTimeout(f"{what}: no data for {s:.0f} s"))


def _describe(todo) -> str:
    return ", ".join(f"partition {tp.partition} offsets {s}..{e}" for tp, (s, e) in todo.items())


READERS: dict[str, Callable[..., Iterator[RawBatch]]] = {
    "tfio": tfio_batches,
    "kafka-python": kafka_python_batches,
}
