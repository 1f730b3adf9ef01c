"""`produce`: stream SUSY rows from a file into a Kafka topic and record what was written.

Wire format (the seed's): key = label (b"0"/b"1"), value = the 18 features
comma-separated, as written in the file. With --rows-per-message K > 1 a
message carries K rows (labels comma-separated in the key, rows newline-
separated in the value): fewer, larger messages, for throughput.

Clients: `confluent` (default: confluent-kafka 2.16, librdkafka 2.16; Apache Kafka 0.8 to 4.x
through ApiVersions negotiation) or `kafka-python` (kafka-python 3.0). Both send idempotently with
acks=all, take the same KAFKA_* security settings and record the same offsets per partition.
"""
from __future__ import annotations

import argparse
import logging

from .. import kafka_io, options
from ..data import iter_batches
from ..schema import DEFAULT_DATABASE, DEFAULT_TOPIC
from ..store import open_store, utc_now

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
    options.add_kafka(p)
    options.add_run_name(p)
    options.add_store(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> dict:
    return produce(data=args.data, skip=args.skip, limit=None if args.limit is None else int(args.limit),
                   partitions=args.partitions, rows_per_message=args.rows_per_message,
                   bootstrap=args.bootstrap, topic=args.topic, run_name=args.run_name, client=args.client,
                   store_uri=args.store, database=args.database)


def produce(*, data: str, bootstrap: str, run_name: str, topic: str = DEFAULT_TOPIC, skip: int = 0,
            limit: int | None = None, partitions: int = 1, rows_per_message: int = 1, client: str = "confluent",
            store_uri: str | None = None, database: str = DEFAULT_DATABASE) -> dict:
    """Send rows `skip`.. (at most `limit`) of `data` to `topic`; record the offsets under `run_name`."""
    log.info("producing %s rows %d..%s to topic %s at %s", data, skip,
             "end" if limit is None else skip + limit - 1, topic, bootstrap)
    with open_store(store_uri, database) as store:  # fail early if the store is down
        production = kafka_io.produce(iter_batches(data, skip=skip, limit=limit, keep_text=True),
                                      bootstrap=bootstrap, topic=topic, partitions=partitions,
                                      rows_per_message=rows_per_message, client=client)
        record = {**production.to_record(), "client": client, "source": {"data": data, "skip": skip, "limit": limit},
                  "created_at": utc_now()}
        store.put_production(run_name, record)
    return {"run": run_name, **record}
