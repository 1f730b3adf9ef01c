"""Offset ranges of a topic: the ones a user asks to train on, and the ones the log holds.

A range is `[start, end)` per partition, as the producer records them (`Production.ranges`). A
trainer given ranges by hand (`train --offsets`, a TrainingRun's `spec.source.kafka`, a
ContinualTraining's generation) first checks them against the log: a partition that does not
exist, offsets past the log end, or offsets already deleted by retention are BadInput (exit 2)
naming the topic, the partition and the offsets the log does hold. Nothing is trained on part of
a range.

The log's offsets come from kafka-python's ListOffsets (`beginning_offsets`, `end_offsets`; no
consumer group, nothing committed). One broker needs more: tansu (the embedded and test broker)
answers ListOffsets "latest" with the base offset of the partition's last record batch + 1, not
with the offset after its last record (measured here: 25 records in one batch and 7 in the next
give 26, not 32; docs/contracts.md). `log_offsets` therefore fetches that last batch and takes
its last record's offset + 1. Against Apache Kafka the batch fetched holds the last record only
(kafka-python drops a batch's records below the fetch position), so the answer is the same
ListOffsets end, one small fetch later.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import BadInput
from .redaction import echo
from .kafka_security import KafkaSecurity, KafkaUnavailable, check_broker, connect_kafka_python

Ranges = dict[int, tuple[int, int]]

# TOPIC:P=START-END[,P=START-END...]; START may be `parent` (where the warm-start parent stopped).
_SPEC = re.compile(r"^(?P<topic>[a-zA-Z0-9._-]{1,249}):(?P<parts>.+)$")
_PART = re.compile(r"^(?P<p>\d+)=(?P<start>\d+|parent)-(?P<end>\d+)$")
PARENT = "parent"


@dataclass(frozen=True)
class OffsetRequest:
    """What `--offsets` asked for: a topic, and per partition (start or PARENT, end)."""
    topic: str
    partitions: dict[int, tuple[int | str, int]] = field(default_factory=dict)

    @property
    def needs_parent(self) -> bool:
        return any(start == PARENT for start, _ in self.partitions.values())

    def resolve(self, parent: Mapping[str, Any] | None = None) -> Ranges:
        """The exact ranges; a PARENT start is the end offset the parent model's lineage records
        for that partition (0 where the parent read none of it)."""
        if not self.needs_parent:
            return {p: (int(s), e) for p, (s, e) in self.partitions.items()}
        if parent is None:
            raise BadInput("--offsets starts at 'parent', which needs --warm-start (the model to continue)")
        lineage = parent.get("lineage") or {}
        if lineage.get("topic") != self.topic:
            raise BadInput(f"--offsets starts at 'parent' on topic {self.topic}, but the warm-start parent, model "
                           f"{parent.get('model_id')}, was trained on topic {lineage.get('topic')!r}")
        stopped = {int(p): int(r[1]) for p, r in (lineage.get("partitions") or {}).items()}
        ranges: Ranges = {}
        for p, (start, end) in self.partitions.items():
            first = stopped.get(p, 0) if start == PARENT else int(start)
            if end < first:
                raise BadInput(f"--offsets {self.topic} partition {p}: end {end} is before {first}, where the "
                               f"warm-start parent, model {parent.get('model_id')}, stopped")
            ranges[p] = (first, end)
        return ranges


def parse_offsets(text: str) -> OffsetRequest:
    """`TOPIC:P=START-END[,P=START-END...]`, or a JSON file of the lineage's shape,
    `{"topic": T, "partitions": {"0": [START, END], ...}}` (a production record is one)."""
    if not _SPEC.match(text) and Path(text).is_file():
        return _from_file(Path(text))
    match = _SPEC.match(text)
    if not match:
        raise BadInput(f"--offsets {echo(text)}: expected TOPIC:PARTITION=START-END[,PARTITION=START-END...] "
                       "(e.g. live:0=100-200,1=0-50) or a JSON file")
    partitions: dict[int, tuple[int | str, int]] = {}
    for item in match["parts"].split(","):
        part = _PART.match(item.strip())
        if not part:
            raise BadInput(f"--offsets {echo(text)}: {echo(item)} is not PARTITION=START-END (START a number or 'parent')")
        p = int(part["p"])
        start = part["start"] if part["start"] == PARENT else int(part["start"])
        end = int(part["end"])
        if p in partitions:
            raise BadInput(f"--offsets {echo(text)}: partition {p} is given twice")
        if start != PARENT and end < int(start):
            raise BadInput(f"--offsets {echo(text)}: partition {p} ends ({end}) before it starts ({start})")
        partitions[p] = (start, end)
    return OffsetRequest(match["topic"], partitions)


def _from_file(path: Path) -> OffsetRequest:
    try:
        data = json.loads(path.read_text())
        topic = data["topic"]
        partitions = {int(p): (int(r[0]), int(r[1])) for p, r in data["partitions"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise BadInput(f"{path}: expected {{\"topic\": T, \"partitions\": {{\"0\": [START, END]}}}}: {err}") from None
    if not isinstance(topic, str) or not _SPEC.match(f"{topic}:x"):
        raise BadInput(f"{path}: topic {echo(topic)} is not a Kafka topic name")
    for p, (start, end) in partitions.items():
        if start < 0 or end < start:
            raise BadInput(f"{path}: partition {p}: [{start}, {end}) is not an offset range")
    return OffsetRequest(topic, dict(partitions))


def format_offsets(topic: str, ranges: Mapping[int, tuple[int, int]]) -> str:
    """The `--offsets` text for exact ranges (what the operator passes to a trainer)."""
    return f"{topic}:" + ",".join(f"{p}={s}-{e}" for p, (s, e) in sorted(ranges.items()))


class TopicMissing(BadInput):
    """The topic does not exist (deleted, or never created)."""


def log_offsets(bootstrap: str, topic: str, *, security: KafkaSecurity | None = None,
                timeout_s: float = 10.0) -> Ranges:
    """Per partition, [the first offset the log still holds, the offset after its last record).

    Raises TopicMissing when the broker knows no such topic; KafkaUnavailable when it does not
    answer. See the module docstring for tansu's ListOffsets answer and how it is corrected.
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    security = security or KafkaSecurity.from_env()
    check_broker(bootstrap, security)
    consumer = connect_kafka_python(bootstrap, lambda: KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, client_id="susy-offsets",
        request_timeout_ms=int(timeout_s * 1000) + 5000, **security.kafka_python()))
    try:
        # A fresh client: kafka-python asks the cluster's metadata when its cache lacks the topic
        # (kafka/consumer/group.py, partitions_for_topic); an unknown topic is an empty set.
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise TopicMissing(f"topic {topic} does not exist at {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        beginning = consumer.beginning_offsets(tps, timeout_ms=int(timeout_s * 1000))
        listed_end = consumer.end_offsets(tps, timeout_ms=int(timeout_s * 1000))
        ends = _last_record_ends(consumer, {tp: (beginning[tp], listed_end[tp]) for tp in tps}, timeout_s)
        return {tp.partition: (beginning[tp], ends[tp]) for tp in tps}
    except KafkaError as err:
        raise KafkaUnavailable(f"reading the offsets of {topic} at {bootstrap} failed: {err}") from err
    finally:
        consumer.close()


def _last_record_ends(consumer: Any, listed: Mapping[Any, tuple[int, int]], timeout_s: float) -> dict[Any, int]:
    """For each partition holding records, fetch from ListOffsets' end - 1 (tansu: the last batch's
    base offset) and return the last record's offset + 1; a partition whose fetch returns nothing
    keeps the listed end (Apache Kafka: a control record, e.g. a transaction marker, at the end)."""
    ends = {tp: end for tp, (_, end) in listed.items()}
    todo = {tp for tp, (begin, end) in listed.items() if end > begin}
    if not todo:
        return ends
    consumer.assign(sorted(todo, key=lambda tp: tp.partition))
    for tp in todo:
        consumer.seek(tp, listed[tp][1] - 1)
    deadline = time.monotonic() + timeout_s
    while todo and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=200).items():
            if records and tp in todo:
                ends[tp] = max(ends[tp], records[-1].offset + 1)
                # A batch is returned whole; its last record is the log's last until the next poll.
                todo.discard(tp)
                consumer.pause(tp)
    return ends


def check_ranges(topic: str, wanted: Mapping[int, tuple[int, int]], held: Mapping[int, tuple[int, int]]) -> None:
    """BadInput naming every partition of `wanted` that the log (`held`, from log_offsets) cannot
    serve whole, with the offsets it does hold."""
    problems = []
    for p, (start, end) in sorted(wanted.items()):
        if p not in held:
            problems.append(f"partition {p} does not exist (the topic has partitions "
                            f"{', '.join(str(q) for q in sorted(held))})")
            continue
        first, last_end = held[p]
        if end == start:
            continue
        if start < first:
            problems.append(f"partition {p}: offsets {start}..{min(end, first) - 1} were deleted (retention); "
                            f"the log holds {_held(first, last_end)}")
        if end > last_end:
            problems.append(f"partition {p}: offsets {max(start, last_end)}..{end - 1} are past the log end; "
                            f"the log holds {_held(first, last_end)}")
    if problems:
        raise BadInput(f"topic {topic}: cannot read {format_offsets(topic, wanted)} whole: " + "; ".join(problems))


def _held(first: int, end: int) -> str:
    return f"offsets {first}..{end - 1}" if end > first else f"no offsets (the next is {end})"
