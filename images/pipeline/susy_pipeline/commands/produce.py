"""`produce`: stream SUSY rows from a file into a Kafka topic and record what was written.

Wire format (the seed's): key = label (b"0"/b"1"), value = the 18 features
comma-separated, as written in the file. With --rows-per-message K > 1 a
message carries K rows (labels comma-separated in the key, rows newline-
separated in the value): fewer, larger messages, for throughput.

A live stream (a stand-in for a detector): `--rate ROWS_PER_SECOND` sends at that
steady rate, `--loop` reads the file again from --skip when it ends, for ever.
SIGTERM (or SIGINT) stops it cleanly: what was sent is flushed and its offsets
recorded under --run-name, as for a bounded run, and the command exits 0.
Clients: `confluent` (default: confluent-kafka 2.16, librdkafka 2.16; Apache Kafka 0.8 to 4.x
through ApiVersions negotiation) or `kafka-python` (kafka-python 3.0). Both send idempotently with
acks=all, take the same KAFKA_* security settings and record the same offsets per partition.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
from typing import Iterator

from .. import kafka_io, options
from ..data import file_format, iter_batches
from ..errors import BadInput
from ..pacing import paced
from ..progress import Progress
from ..redaction import display_uri
from ..shards import Piece, planned_rows
from ..schema import DEFAULT_DATABASE, DEFAULT_TOPIC
from ..store import DEFAULT_NAMESPACE, open_store, utc_now

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("produce", help="stream a SUSY file into Kafka", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=options.env("SUSY_DATA", "data/susy-sample.csv.gz"),
                   help="SUSY file: .csv, .csv.gz or .parquet, a path or an s3://, gs:// or https:// URI "
                        "(env SUSY_DATA; default: %(default)s)")
    p.add_argument("--skip", type=options.non_negative, default=int(options.env("SUSY_SKIP", 0)),
                   help="rows to skip first (env SUSY_SKIP; default: %(default)s)")
    p.add_argument("--limit", type=options.non_negative, default=options.env("SUSY_LIMIT"),
                   help="rows to send at most (env SUSY_LIMIT; default: all)")
    p.add_argument("--partitions", type=options.positive, default=int(options.env("KAFKA_PARTITIONS", 1)),
                   help="partitions when creating the topic (env KAFKA_PARTITIONS; default: %(default)s)")
    p.add_argument("--rows-per-message", type=options.positive,
                   default=int(options.env("SUSY_ROWS_PER_MESSAGE", 1)),
                   help="rows per Kafka message (env SUSY_ROWS_PER_MESSAGE; default: %(default)s, the seed's format)")
    p.add_argument("--client", choices=kafka_io.PRODUCER_CLIENTS,
                   default=options.env("SUSY_PRODUCER_CLIENT", "confluent"),
                   help="Kafka client that sends: confluent (librdkafka 2.x, the fast one) or kafka-python "
                        "(env SUSY_PRODUCER_CLIENT; default: %(default)s)")
    p.add_argument("--max-message-bytes", type=options.positive,
                   default=int(options.env("KAFKA_MAX_MESSAGE_BYTES", kafka_io.DEFAULT_MAX_MESSAGE_BYTES)),
                   help="largest Kafka message (record batch) sent: a message holds fewer than "
                        "--rows-per-message rows where they would not fit; at most the broker's "
                        "message.max.bytes (env KAFKA_MAX_MESSAGE_BYTES; default: %(default)s, Kafka's)")
    p.add_argument("--rate", type=float, default=options.env("SUSY_RATE"), metavar="ROWS_PER_SECOND",
                   help="send at this steady rate, a live stream (env SUSY_RATE; default: as fast as "
                        "the broker takes them)")
    p.add_argument("--loop", action="store_true", default=options.env("SUSY_LOOP") == "true",
                   help="with --rate: read the rows again when they end, until SIGTERM (env SUSY_LOOP=true)")
    options.add_kafka(p)
    options.add_run_name(p)
    options.add_store(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> dict:
    return produce(data=args.data, skip=args.skip, limit=None if args.limit is None else int(args.limit),
                   partitions=args.partitions, rows_per_message=args.rows_per_message,
                   max_message_bytes=args.max_message_bytes, client=args.client,
                   bootstrap=args.bootstrap, topic=args.topic, run_name=args.run_name,
                   store_uri=args.store, database=args.database,
                   namespace=args.namespace, rate=args.rate, loop=args.loop)


def produce(*, data: str, bootstrap: str, run_name: str, topic: str = DEFAULT_TOPIC, skip: int = 0,
            limit: int | None = None, partitions: int = 1, rows_per_message: int = 1,
            max_message_bytes: int = kafka_io.DEFAULT_MAX_MESSAGE_BYTES, client: str = "confluent",
            store_uri: str | None = None, database: str = DEFAULT_DATABASE,
            namespace: str = DEFAULT_NAMESPACE, rate: float | None = None, loop: bool = False) -> dict:
    """Send rows `skip`.. (at most `limit`) of `data` to `topic`; record the offsets under `run_name`.
    With `rate`, at that many rows per second (`loop`: again and again until SIGTERM)."""
    if rate is not None and rate <= 0:
        raise BadInput(f"--rate must be > 0 rows per second, got {rate:g}")
    if loop and rate is None:
        raise BadInput("--loop needs --rate: an endless stream as fast as the broker takes it would fill the topic")
    log.info("producing %s rows %d..%s to topic %s at %s%s", display_uri(data, path=True), skip,
             "end" if limit is None else skip + limit - 1, topic, bootstrap,
             f", {rate:g} rows/s" + (", looping" if loop else "") if rate else "")
    # The store first: fail early if it is down.
    with open_store(store_uri, database, namespace=namespace) as store, _stopped_by_signals() as stop:
        def read():
            return iter_batches(data, skip=skip, limit=limit, keep_text=True)

        batches = read() if rate is None else paced(read, rate, rows_per_message=rows_per_message,
                                                     repeat=loop, stop=stop)
        # A paced, looping stream has no end to count towards: its bar shows rows and rows/s.
        planned, estimated = rows_to_send(data, skip, limit) if not loop else (None, False)
        progress = Progress(f"produce {topic}", planned, estimated=estimated, log_every_s=2.0, logger=log)
        production = kafka_io.produce(batches, bootstrap=bootstrap, topic=topic, partitions=partitions,
                                      rows_per_message=rows_per_message, max_message_bytes=max_message_bytes,
                                      client=client, progress=progress)
        record = {**production.to_record(), "client": client, "source": {"data": data, "skip": skip, "limit": limit},
                  "created_at": utc_now()}
        if rate is not None:
            record["source"].update(rate=rate, loop=loop, stopped_by_signal=stop.is_set())
        store.put_production(run_name, record)
    return {"run": run_name, **record}


def rows_to_send(data: str, skip: int, limit: int | None) -> tuple[int, bool]:
    """(rows `produce` will send, estimated): rows after `skip` (exact for Parquet, from bytes for
    CSV), at most `limit`. For the progress bar only."""
    rows, exact = planned_rows(Piece(data, file_format(data)))
    rows = max(0, rows - skip)
    return (rows if limit is None else min(rows, limit)), not exact


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[threading.Event]:
    """An event that SIGTERM (how Kubernetes stops a pod) and SIGINT set, instead of ending the
    process: the producer then flushes and records its offsets. The previous handlers come back
    after."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield stop
        return
    previous = {sig: signal.signal(sig, lambda signum, _: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
