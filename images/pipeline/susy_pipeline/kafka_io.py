"""Kafka at the edges: the producer (two clients) and the three readers.

`produce` sends through confluent-kafka (librdkafka 2.x, the default) or kafka-python. The
readers yield the same thing, raw message batches `(keys, values)` as numpy arrays of bytes,
and `training.py` turns any of them into the same `tf.data` pipeline with one decode step:

- `confluent_batches` (the default): confluent-kafka's consumer, partitions assigned at the
  recorded offsets, `consume` in batches; librdkafka 2.16 negotiates every protocol version, so
  it reads Kafka 0.8 to 4.x and tansu with default settings.
- `tfio_batches`: tensorflow-io's `KafkaIODataset`, one per
  partition, read between the exact offsets the producer recorded. tfio 0.37.1
  bundles librdkafka 1.5.0; when a read goes wrong it hangs instead of
  raising, so every read runs in a worker thread (`streams.ReadAhead`) and the
  consumer side gives up after `timeout_s` without progress (`KafkaReadTimeout`).
- `kafka_python_batches`: kafka-python with manual partition assignment, pure
  Python. librdkafka 1.5.0 (tfio) cannot talk to Kafka 4 (KIP-896, docs/deploy.md)
  nor to tansu without the two test-only settings below; Apache Kafka 2.x-3.9, in
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
from .kafka_security import KafkaSecurity, KafkaUnavailable, check_broker, check_tfio_logging, connect_kafka_python

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


def ensure_topic(bootstrap: str, topic: str, partitions: int, *, timeout_s: float = 30,
                 security: KafkaSecurity | None = None) -> int:
    """Create the topic if absent; return its partition count."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    security = security or KafkaSecurity.from_env()
    check_broker(bootstrap, security)
    admin = connect_kafka_python(bootstrap, lambda: KafkaAdminClient(
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


PRODUCER_CLIENTS = ("confluent", "kafka-python")


def produce(batches: Iterable[Batch], *, bootstrap: str, topic: str, partitions: int = 1,
            rows_per_message: int = 1, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
            progress_every_s: float = 2.0, client: str = "confluent",
            producer_options: Mapping[str, Any] | None = None, security: KafkaSecurity | None = None,
            progress: Progress | None = None) -> Production:
    """Stream rows into `topic` and return exactly what was written.

    `client` sends through confluent-kafka (librdkafka 2.x, the default) or kafka-python;
    `producer_options` are that client's own settings (librdkafka's `message.timeout.ms`,
    kafka-python's `delivery_timeout_ms`) over ours. `progress` (default: rows of unknown total)
    hears of every batch sent: a bar on a terminal, a log line every `progress_every_s` elsewhere.
    """
    if rows_per_message < 1:
        raise ValueError("rows_per_message must be >= 1")
    if max_message_bytes <= RECORD_OVERHEAD_BYTES:
        raise BadInput(f"--max-message-bytes must be over {RECORD_OVERHEAD_BYTES}, got {max_message_bytes}")
    if client not in PRODUCER_CLIENTS:
        raise BadInput(f"producer client {client!r}: expected one of {', '.join(PRODUCER_CLIENTS)}")
    started = time.perf_counter()
    # Reading and parsing the file (pyarrow, GIL released) starts now, beside the
    # broker round trips below, and then overlaps the sends.
    messages = ReadAhead(message_batches(batches, rows_per_message, max_message_bytes), depth=READ_AHEAD_BATCHES,
                          name="produce-read")
    security = security or KafkaSecurity.from_env()
    sender = None
    try:
        check_broker(bootstrap, security)  # TLS and SASL refusals: exit 2 before any client starts
        if client == "confluent":
            # Made before the topic: librdkafka's idempotent producer asks for its producer id on
            # a 500 ms timer (seen here in its debug log: "Starting PID FSM timer"), which then
            # runs beside the topic admin and the file read.
            sender = _ConfluentSender(bootstrap, topic, security, max_message_bytes, producer_options or {})
        # The topic admin stays kafka-python's (one call, simpler than librdkafka's futures): it
        # also turns a broker that does not answer into exit 3 before any message is sent.
        partitions = ensure_topic(bootstrap, topic, partitions, security=security)
        if sender is None:
            sender = _KafkaPythonSender(bootstrap, topic, security, max_message_bytes, producer_options or {})
        sender.partitions = partitions
    except BaseException:
        messages.close()  # stop the reader thread
        if sender is not None:
            sender.close()
        raise

    result = Production(topic=topic, rows_per_message=rows_per_message)
    progress = progress or Progress(f"produce {topic}", log_every_s=progress_every_s, logger=log)
    try:
        for keys, values, rows in messages:  # the next batches parse meanwhile
            sender.send(keys, values)
            result.rows += rows
            if sender.failures:
                break
            progress.update(result.rows)
        if not sender.failures:
            result.partitions = sender.finish()  # flushes; a failure reported meanwhile is kept
    except sender.too_large_errors as err:
        raise _too_large(topic, bootstrap, max_message_bytes, err) from err
    except sender.client_errors as err:
        raise KafkaUnavailable(f"producing to {topic} at {bootstrap} failed: {err}") from err
    finally:
        progress.close()
        messages.close()
        sender.close()
    if sender.failures:
        failure = sender.failures[0]
        if sender.is_too_large(failure):
            raise _too_large(topic, bootstrap, max_message_bytes, failure)
        raise KafkaUnavailable(f"producing to {topic} at {bootstrap} failed: {sender.describe(failure)}")
    result.seconds = time.perf_counter() - started
    result.messages = sender.sent
    written = sum(end - start for start, end in result.partitions.values())
    if written != sender.sent:
        # Within a partition the idempotent producer's messages take consecutive offsets in send
        # order, so the first and last delivered give the range: a shorter range means messages
        # were lost, a longer one that someone else wrote in between.
        cause = ("messages were lost" if written < sender.sent else
                 f"another producer wrote to {topic} at the same time; use a topic per run")
        raise KafkaUnavailable(f"sent {sender.sent} messages but the offsets span {written}: {cause}")
    log.info("produced %d rows in %d messages to %s in %.2f s (%.0f rows/s) via %s; offsets %s",
             result.rows, sender.sent, topic, result.seconds, result.rows / max(result.seconds, 1e-9),
             client, result.partitions)
    return result


class _KafkaPythonSender:
    """kafka-python's producer, round-robin by message. Only the first and the last message sent
    to each partition are kept for their offsets; every other one is only checked for failure,
    from `pending`, in order, once done: no callback per message (at one row per message,
    callbacks cost about a tenth of the producer's time)."""

    def __init__(self, bootstrap: str, topic: str, security: KafkaSecurity, max_message_bytes: int,
                 options: Mapping[str, Any]):
        from kafka import KafkaProducer
        from kafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

        self.client_errors = (KafkaError,)
        self.too_large_errors = (MessageSizeTooLargeError, RecordListTooLargeError)
        settings = dict(acks="all", enable_idempotence=True, linger_ms=20,
                        batch_size=min(PRODUCER_BATCH_BYTES, max_message_bytes),
                        max_request_size=max(16 << 20, max_message_bytes), retries=5, client_id="susy-producer")
        settings.update(security.kafka_python())
        settings.update(options)
        self.producer = connect_kafka_python(bootstrap, lambda: KafkaProducer(bootstrap_servers=bootstrap, **settings))
        self.topic, self.partitions = topic, 1  # set once the topic is known
        self.first: dict[int, Any] = {}
        self.last: dict[int, Any] = {}
        self.pending: collections.deque = collections.deque()  # bounded by the client's buffer_memory
        self.failures: list[BaseException] = []
        self.sent = 0

    def send(self, keys: list[bytes], values: list[bytes]) -> None:
        for key, value in zip(keys, values):
            # Round-robin by message, not by key: keying by label would put
            # all signal rows in one partition and all background in another.
            partition = self.sent % self.partitions
            future = self.producer.send(self.topic, key=key, value=value, partition=partition)
            if self.sent < self.partitions:
                self.first[partition] = future
            self.last[partition] = future
            self.pending.append(future)
            self.sent += 1
        self._check_done()

    def _check_done(self, wait: bool = False) -> None:
        while self.pending and (wait or self.pending[0].is_done):
            future = self.pending.popleft()
            if wait:
                future.get(timeout=30)  # done after flush(); raises its failure (or a timeout)
            elif future.exception is not None:
                self.failures.append(future.exception)

    def is_too_large(self, failure: Any) -> bool:
        return isinstance(failure, self.too_large_errors)

    @staticmethod
    def describe(failure: Any) -> str:
        return repr(failure)

    def finish(self) -> dict[int, list[int]]:
        self.producer.flush()
        self._check_done(wait=True)
        return {p: [self.first[p].value.offset, self.last[p].value.offset + 1] for p in sorted(self.first)}

    def close(self) -> None:
        self.producer.close(timeout=10)


# librdkafka's queue of messages not yet acknowledged, bounded here (not by librdkafka's own
# limits, which are set above these) so that `produce_batch` never meets a full queue: it would
# refuse some messages of a batch, not always the last ones, and resending those would break the
# send order the offsets are taken from. 256 MiB holds over half a million one-row messages.
CONFLUENT_QUEUE_BYTES = 256 << 20
CONFLUENT_QUEUE_MESSAGES = 1_000_000


class _ConfluentSender:
    """confluent-kafka's producer (librdkafka 2.x), round-robin by message, one `produce_batch`
    call per partition per batch of messages. A delivery report reaches Python only for the first
    message sent to each partition and the last of each call (librdkafka reports in send order
    per partition, so those give the offsets and any failure that stops a partition); a message
    that fails alone in between shortens its partition's range, which `produce` catches by count.
    Measured here on one-row messages: per-message `produce` calls with a Python callback each ran
    at about a fifth of the rate of `produce_batch` without them."""

    def __init__(self, bootstrap: str, topic: str, security: KafkaSecurity, max_message_bytes: int,
                 options: Mapping[str, Any]):
        from confluent_kafka import KafkaError, KafkaException, Producer

        self.client_errors = (KafkaException,)
        self.too_large_errors = ()  # librdkafka reports them per message, below
        # librdkafka answers a message over its message.max.bytes with the broker's own code.
        self._too_large_codes = (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE)
        settings = {"bootstrap.servers": bootstrap, "client.id": "susy-producer", "enable.idempotence": True,
                    "acks": "all", "linger.ms": 20,
                    # librdkafka's own cap on a request and on a message: ours (the broker's
                    # message.max.bytes), so that an over-sized message is refused here, by name.
                    "message.max.bytes": max_message_bytes,
                    "batch.size": min(PRODUCER_BATCH_BYTES, max_message_bytes),
                    "queue.buffering.max.messages": 2 * CONFLUENT_QUEUE_MESSAGES,
                    "queue.buffering.max.kbytes": 2 * CONFLUENT_QUEUE_BYTES >> 10,
                    "logger": log,  # librdkafka's log lines through Python logging, not raw to stderr
                    **librdkafka_settings(security.librdkafka()), **options}
        self.producer = _confluent_client(Producer, settings)
        self.topic, self.partitions = topic, 1  # set once the topic is known
        self.first: dict[int, int] = {}
        self.end: dict[int, int] = {}
        self.failures: list[Any] = []  # confluent_kafka.KafkaError
        self.sent = 0

    def _delivered(self, err, message) -> None:
        if err is not None:
            self.failures.append(err)
            return
        partition, offset = message.partition(), message.offset()
        self.first[partition] = min(self.first.get(partition, offset), offset)
        self.end[partition] = max(self.end.get(partition, 0), offset + 1)

    def send(self, keys: list[bytes], values: list[bytes]) -> None:
        count = len(keys)
        if not count:
            return
        average = max(1, (sum(map(len, values)) + count) // count)
        room = min(CONFLUENT_QUEUE_MESSAGES, CONFLUENT_QUEUE_BYTES // average)
        while len(self.producer) and len(self.producer) + count > room:
            self.producer.poll(0.05)  # serves delivery reports while librdkafka drains its queue
        for partition in range(self.partitions):
            start = (partition - self.sent) % self.partitions  # this batch's first message for it
            if start >= count:
                continue
            batch = [{"key": k, "value": v} for k, v in zip(keys[start::self.partitions],
                                                           values[start::self.partitions])]
            if self.sent + start < self.partitions:  # the partition's first message of the run
                batch[0]["callback"] = self._delivered
            batch[-1]["callback"] = self._delivered
            queued = self.producer.produce_batch(self.topic, batch, partition=partition)
            if queued != len(batch):
                self.failures.append(next((m["_error"] for m in batch if "_error" in m), None))
                return
        self.sent += count
        self.producer.poll(0)

    def is_too_large(self, failure: Any) -> bool:
        return failure is not None and failure.code() in self._too_large_codes

    @staticmethod
    def describe(failure: Any) -> str:
        return failure.str() if failure is not None else "librdkafka did not queue every message"

    def finish(self) -> dict[int, list[int]]:
        self.producer.flush()  # waits for every delivery report (bounded by message.timeout.ms)
        return {p: [self.first[p], self.end[p]] for p in sorted(self.first) if p in self.end}

    def close(self) -> None:
        if len(self.producer):  # given up on: drop what is queued rather than wait for it
            self.producer.purge()
            self.producer.flush(5)


def librdkafka_settings(pairs: Iterable[str]) -> dict[str, str]:
    """librdkafka `key=value` settings (the tfio reader's form) as confluent-kafka's dict."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"librdkafka setting {pair!r}: expected KEY=VALUE")
        settings[key.strip()] = value.strip()
    return settings


def _confluent_client(make: Callable[[dict], T], settings: dict[str, Any]) -> T:
    """A confluent-kafka client. librdkafka checks its settings when the client is made (it
    connects later, in its own threads): a setting it refuses is bad input (exit 2)."""
    from confluent_kafka import KafkaException

    try:
        return make(settings)
    except KafkaException as err:
        raise BadInput(f"Kafka client settings refused: {err.args[0].str()}") from None
    except ValueError as err:  # confluent-kafka's own checks (a consumer without group.id)
        raise BadInput(f"Kafka client settings refused: {err}") from None


def _too_large(topic: str, bootstrap: str, max_message_bytes: int, err: Any) -> BadInput:
    """A message refused as too large (by the broker, or by the client's own limit: kafka-python's
    max_request_size, librdkafka's message.max.bytes): bad input, exit 2: the same message sent
    again is refused again. `err` is kafka-python's exception or librdkafka's KafkaError."""
    cause = err.name() if callable(getattr(err, "name", None)) else type(err).__name__
    return BadInput(f"producing to {topic} at {bootstrap}: a message was refused as too large "
                    f"({cause}); messages here are at most {max_message_bytes:,} bytes "
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
    consumer = connect_kafka_python(bootstrap, lambda: KafkaConsumer(
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


# Messages asked of librdkafka per `consume` call: one call returns what its fetch queue holds
# (up to this many), so the per-call cost is paid once per thousands of one-row messages.
CONSUME_BATCH = 10_000


def confluent_batches(bootstrap: str, topic: str, ranges: Mapping[int, tuple[int, int]], *,
                      timeout_s: float = 60.0, read_batch: int = CONSUME_BATCH,
                      configuration: Sequence[str] = (), security: KafkaSecurity | None = None) -> Iterator[RawBatch]:
    """Read exactly the offset ranges with confluent-kafka (librdkafka 2.x); yield (keys, values).

    The partitions are assigned at their recorded first offsets (`assign`, no group membership and
    no offset commits: the group id only satisfies the client), and each is dropped from the
    assignment once its recorded end offset is read; the broker's high watermark is never asked
    (tansu's is below the messages it holds). `configuration` adds librdkafka settings (as for
    the tfio reader); librdkafka 2.x needs none against tansu.
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    security = security or KafkaSecurity.from_env()
    check_broker(bootstrap, security)
    ends = {p: end for p, (start, end) in ranges.items() if end > start}
    if not ends:
        return
    consumer = _confluent_client(Consumer, {
        "bootstrap.servers": bootstrap, "client.id": "susy-trainer", "group.id": "susy-trainer",
        "enable.auto.commit": False, "enable.auto.offset.store": False,
        # A recorded offset the topic no longer holds (retention) is an error, not a silent jump.
        "auto.offset.reset": "error", "logger": log,
        **librdkafka_settings(security.librdkafka()), **librdkafka_settings(configuration)})
    # Connection trouble that librdkafka retries by itself; the read's own timeout bounds it.
    transient = (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE)
    try:
        consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in sorted(ends)])
        deadline = time.monotonic() + timeout_s
        left = sum(end - ranges[p][0] for p, end in ends.items())
        while ends:
            keys: list[bytes] = []
            values: list[bytes] = []
            done: list[int] = []
            # `consume` returns once it holds num_messages or its timeout has passed: asking for no
            # more than are left keeps the last call from waiting out the timeout.
            for message in consumer.consume(num_messages=max(1, min(read_batch, left)), timeout=0.5):
                err = message.error()
                if err is not None:
                    if err.fatal() or not (err.retriable() or err.code() in transient):
                        raise KafkaUnavailable(f"reading {topic} at {bootstrap}: {err.str()}")
                    log.warning("reading %s at %s: %s (retrying)", topic, bootstrap, err.str())
                    continue
                end = ends.get(message.partition())
                if end is None:
                    continue
                offset = message.offset()
                if offset < end:
                    keys.append(message.key())
                    values.append(message.value())
                if offset >= end - 1:
                    done.append(message.partition())
                    del ends[message.partition()]
            if done:
                consumer.incremental_unassign([TopicPartition(topic, p) for p in done])
            if keys:
                left -= len(keys)
                deadline = time.monotonic() + timeout_s
                yield np.array(keys, dtype=object), np.array(values, dtype=object)
            elif time.monotonic() > deadline:
                raise KafkaReadTimeout(f"no messages from {topic} at {bootstrap} for {timeout_s:.0f} s; still "
                                       f"expected: " + ", ".join(f"partition {p} offsets {ranges[p][0]}..{e}"
                                                                 for p, e in sorted(ends.items())))
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
                    # outside the range; confluent-kafka and kafka-python seek exactly.
                    raise BadInput(f"tensorflow-io read more than the {end - start} messages of {topic} "
                                   f"partition {partition} offsets {start}..{end - 1}: this broker does "
                                   "not honour its start offset; use --reader confluent or kafka-python")
                yield keys.astype(object), values.astype(object)

    what = f"tensorflow-io read of {topic} {dict(ranges)} at {bootstrap}"
    yield from ReadAhead(read_partitions, depth=8, timeout_s=timeout_s, name="tfio-read",
                          on_timeout=lambda s: KafkaReadTimeout(f"{what}: no data for {s:.0f} s"))


def _describe(todo) -> str:
    return ", ".join(f"partition {tp.partition} offsets {s}..{e}" for tp, (s, e) in todo.items())


READERS: dict[str, Callable[..., Iterator[RawBatch]]] = {
    "tfio": tfio_batches,
    "kafka-python": kafka_python_batches,
    "confluent": confluent_batches,
}
