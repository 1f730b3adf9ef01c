"""`train`: consume exactly what `produce` recorded for a run, train, save the model.

Readers (--reader), each reading exactly the offsets `produce` recorded:
- `confluent` (default): confluent-kafka 2.16.1, librdkafka 2.16.0. Apache Kafka 0.8 to 4.x,
  Kafka 4 (KRaft) included: it asks the broker's ApiVersions and uses the newest version both
  support (librdkafka src/rdkafka_broker.c, rd_kafka_broker_ApiVersion_supported; Fetch up to
  v16, src/rdkafka_fetcher.c), so KIP-896's removals in Kafka 4.0 (Fetch v0-v3, ListOffsets v0,
  Produce v0-v2, ...; apache/kafka clients/src/main/resources/common/message/*Request.json)
  never reach it. The fastest, and the default here and in the operator (a TrainingRun's
  spec.reader) because it reads every Kafka the platform chart runs, Kafka 4 included.
- `tfio`: tensorflow-io 0.37.1, the seed's TensorFlow-native path; its bundled librdkafka 1.5.0
  reads Apache Kafka 2.x to 3.9 (ZooKeeper or KRaft mode) with default settings, not Kafka 4:
  its feature table (v1.5.0 src/rdkafka_feature.c) ties SASL and the group consumer to
  SaslHandshake v0 and JoinGroup/FindCoordinator v0, which 4.0 removed.
  Only tansu, the test broker, needs the tfio settings api.version.request=false and
  broker.version.fallback=0.9.0 (--librdkafka).
- `kafka-python`: kafka-python 3.0, pure Python: Kafka 0.8 to 4.3.
Recipes: `tuned` (default:
standardization, dropout 0.5, early stopping on every 5th row) or `seed`
(the original: 1 epoch, batch 32, no standardization).

`--precision mixed_bf16` trains in bfloat16 (Keras mixed precision) and records the held-out
rows' AUC in bf16 and, for the same weights, in fp32 (`holdout_auc`, `holdout_auc_fp32`); every
model records `precision` and `holdout_auc`.

Continual learning: `--warm-start REF` (a model id, an ISO-8601 timestamp,
latest:RUN or alias:NAME) continues a stored model, its weights and standardization, on this
run's rows. The parent's recorded settings are the defaults; an option that
would change its network (--hidden, --dropout, a --recipe of another shape) is
refused. The new model's record names the parent (`parent_model_id`);
`models --lineage ID` prints the chain.

Data already in Kafka: `--offsets TOPIC:P=START-END[,P=START-END...]` (end
exclusive, as the producer records them) trains on exactly those offsets, written
by anyone, instead of a production record; or a JSON file of the lineage's shape
`{"topic": T, "partitions": {"0": [START, END]}}`. START may be `parent`: where
the --warm-start model stopped on that partition (its lineage), so a model is
continued on the data that arrived after it. Offsets past the log end, a
partition that does not exist or offsets deleted by retention are refused (exit
2) naming the offsets the log holds; nothing is trained on part of a range.
"""
from __future__ import annotations

import argparse
import logging
from typing import Sequence

from .. import options
from ..kafka_io import READERS, Production
from ..kafka_offsets import OffsetRequest, check_ranges, log_offsets, parse_offsets
from ..kafka_security import KafkaSecurity
from ..continual import warm_start_config
from ..model import RECIPES, model_from_bytes, model_to_bytes, with_overrides
from ..precision import TRAINING_PRECISIONS
from ..errors import BadInput
from ..heartbeat import TRAINER_SOURCE, Heartbeat
from ..schema import DEFAULT_DATABASE
from ..store import DEFAULT_NAMESPACE, open_store

log = logging.getLogger(__name__)


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths like 128,256,128, got {text!r}")
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"layer widths must be >= 1, got {text!r}")
    return widths


def _offsets(text: str) -> OffsetRequest:
    try:
        return parse_offsets(text)
    except BadInput as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train from Kafka, save the model to the store", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_run_name(p)
    p.add_argument("--reader", choices=sorted(READERS), default=options.env("SUSY_READER", "confluent"),
                   help="Kafka reader: confluent (librdkafka 2.16) for Kafka 0.8-4.x, tfio (librdkafka 1.5.0) "
                        "for Kafka 2.x-3.9, kafka-python for 0.8-4.3 (env SUSY_READER; default: %(default)s)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=options.env("SUSY_RECIPE"),
                   help="training recipe (env SUSY_RECIPE; default: tuned, the better model, or with "
                        "--warm-start the parent's; a TrainingRun defaults to seed, one pass over "
                        "the topic as the seed's job did)")
    p.add_argument("--warm-start", metavar="REF", default=options.env("SUSY_WARM_START"),
                   help="continue training this stored model (id, ISO-8601 timestamp, latest:RUN or alias:NAME) "
                        "on this run's rows: its weights and standardization, its settings as the "
                        "defaults (env SUSY_WARM_START)")
    p.add_argument("--offsets", type=_offsets, default=options.env("SUSY_OFFSETS"), metavar="SPEC",
                   help="train on these offsets of data already in Kafka, not on a production record: "
                        "TOPIC:P=START-END[,P=START-END...] (END exclusive; START may be 'parent', "
                        "where the --warm-start model stopped) or a JSON file {topic, partitions} "
                        "(env SUSY_OFFSETS)")
    p.add_argument("--epochs", type=options.positive, help="maximum epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=options.positive, help="default: the recipe's")
    p.add_argument("--learning-rate", type=float, help="Adam learning rate (default: the recipe's)")
    p.add_argument("--dropout", type=float, help="dropout rate after each hidden layer")
    p.add_argument("--hidden", type=_widths, help="hidden layer widths, e.g. 128,256,128")
    p.add_argument("--patience", type=options.non_negative,
                   help="early stopping: epochs without validation improvement (default: the recipe's)")
    p.add_argument("--validation-every", type=options.non_negative,
                   help="hold out every N-th row of the stream for early stopping; 0: none "
                        "(default: the recipe's)")
    p.add_argument("--monitor", choices=["val_loss", "val_auc"],
                   help="what early stopping watches (default: the recipe's)")
    p.add_argument("--seed", type=int, help="random seed (default: the recipe's)")
    p.add_argument("--precision", choices=TRAINING_PRECISIONS, default=options.env("SUSY_TRAIN_PRECISION", "fp32"),
                   help="fp32, or mixed_bf16: Keras's mixed_bfloat16 policy (float32 weights, the hidden "
                        "layers' products in bfloat16, fast where the CPU has AMX or AVX512-BF16); the "
                        "model record then holds the held-out AUC computed in bf16 and in fp32 "
                        "(env SUSY_TRAIN_PRECISION; default: %(default)s)")
    p.add_argument("--model-threads", type=options.positive,
                   default=options.env("SUSY_MODEL_THREADS"),
                   help="TensorFlow intra-op threads for the training step (env SUSY_MODEL_THREADS; "
                        "default: the CPUs this process may use, CPU limit included, less one for "
                        "reading and decoding the stream)")
    p.add_argument("--read-timeout", type=float, default=float(options.env("SUSY_READ_TIMEOUT", 120)),
                   help="seconds without Kafka progress before giving up (env SUSY_READ_TIMEOUT; default: %(default)s)")
    p.add_argument("--librdkafka", action="append", default=[], metavar="KEY=VALUE",
                   help="extra librdkafka setting for the tfio and confluent readers (repeatable; env "
                        "SUSY_LIBRDKAFKA, comma-separated)")
    options.add_kafka(p)
    options.add_store(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> dict:
    librdkafka = [s for s in options.env("SUSY_LIBRDKAFKA", "").split(",") if s] + args.librdkafka
    if args.reader == "tfio":
        # The platform's settings for librdkafka 1.5.0 alone (the operator's SUSY_TFIO_LIBRDKAFKA,
        # the chart's kafka.tfioLibrdkafka): the confluent reader's librdkafka 2.x needs none.
        librdkafka = [s for s in options.env("SUSY_TFIO_LIBRDKAFKA", "").split(",") if s] + librdkafka
    return train(run_name=args.run_name, offsets=args.offsets, bootstrap=args.bootstrap, reader=args.reader, recipe=args.recipe,
                 warm_start=args.warm_start, epochs=args.epochs, batch_size=args.batch_size,
                 learning_rate=args.learning_rate, dropout=args.dropout, hidden=args.hidden,
                 patience=args.patience, validation_every=args.validation_every, monitor=args.monitor,
                 seed=args.seed, model_threads=args.model_threads, read_timeout=args.read_timeout,
                 librdkafka=librdkafka, precision=args.precision, store_uri=args.store, database=args.database,
                 namespace=args.namespace)


def train(*, run_name: str, bootstrap: str, reader: str = "confluent", recipe: str | None = None,
          warm_start: str | None = None, epochs: int | None = None, batch_size: int | None = None,
          learning_rate: float | None = None, dropout: float | None = None,
          hidden: tuple[int, ...] | None = None, patience: int | None = None,
          validation_every: int | None = None, monitor: str | None = None, seed: int | None = None,
          model_threads: int | None = None, read_timeout: float = 120.0, librdkafka: Sequence[str] = (),
          precision: str = "fp32", store_uri: str | None = None, database: str = DEFAULT_DATABASE,
          namespace: str = DEFAULT_NAMESPACE, offsets: OffsetRequest | None = None) -> dict:
    """Train on the offsets `produce` recorded for `run_name` (or on `offsets`), save the model;
    return its record.

    A hyper-parameter left None is the recipe's (or, with `warm_start`, the parent's);
    `librdkafka` adds settings for the librdkafka readers (tfio, confluent).
    """
    from ..training import train as train_model, use_training_threads  # TensorFlow loads only here

    use_training_threads(model_threads)
    # The connection's security (KAFKA_* variables), read once: a setting that cannot work is exit 2
    # before the store or Kafka is touched. Its description, without the password, goes into the
    # model's lineage.
    security = KafkaSecurity.from_env()

    overrides = dict(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                     dropout=dropout, hidden=hidden, patience=patience,
                     validation_every=validation_every, monitor=monitor, seed=seed)
    with open_store(store_uri, database, namespace=namespace) as store:
        parent_meta = parent = None
        if warm_start:
            # Refused before Kafka is read: an unknown parent or a contradicting option is exit 2.
            parent_meta, parent_bytes = store.load_model(warm_start)
            config = warm_start_config(parent_meta, recipe=recipe, **overrides)
            recipe = recipe or parent_meta.get("recipe") or "tuned"
            parent = model_from_bytes(parent_bytes)
            log.info("warm start from model %s (run %s)", parent_meta["model_id"], parent_meta.get("run"))
        else:
            recipe = recipe or "tuned"
            config = with_overrides(RECIPES[recipe], **overrides)
        if offsets is not None:
            topic, ranges, expected_rows = _checked_offsets(offsets, parent_meta, bootstrap, security)
            partitions = {str(p): list(r) for p, r in sorted(ranges.items())}
            source_facts = {"offsets": partitions}
        else:
            production = store.get_production(run_name)
            if production is None:
                raise BadInput(f"no producer record for run {run_name!r}: run `produce --run-name "
                               f"{run_name}` first, or give --offsets")
            topic, ranges = production["topic"], Production.ranges(production)
            expected_rows, partitions = int(production["rows"]), production["partitions"]
            source_facts = production.get("source")
        read = READERS[reader]
        extra = {}
        if reader in ("tfio", "confluent"):
            extra["configuration"] = list(librdkafka)
        log.info("training run %s from %s %s via %s, recipe %s", run_name, topic,
                 ranges, reader, recipe)

        def source():
            return read(bootstrap, topic, ranges, timeout_s=read_timeout,
                        security=security, **extra)

        heartbeat = Heartbeat(store, run_name, TRAINER_SOURCE, dict, every_s=0)  # written per epoch
        model, facts = train_model(source, config, expected_rows=expected_rows, parent=parent,
                                   report=heartbeat.write, precision=precision)
        record = {
            "run": run_name,
            "recipe": recipe,
            "parent_model_id": parent_meta["model_id"] if parent_meta else None,
            "hyperparameters": config.to_dict(),
            "reader": reader,
            "lineage": {"topic": topic, "partitions": partitions,
                        "bootstrap": bootstrap, "source": source_facts,
                        "security": security.describe()},
            **facts,
        }
        model_id = store.save_model(record, model_to_bytes(model))
    log.info("saved model %s (run %s)", model_id, run_name)
    return {"model_id": model_id, **record}


def _checked_offsets(offsets: OffsetRequest, parent_meta: dict | None, bootstrap: str,
                     security: KafkaSecurity) -> tuple[str, dict[int, tuple[int, int]], None]:
    """The exact ranges `offsets` names, checked whole against the log before anything is read.
    The row count is not known in advance (a message may carry several rows): None."""
    ranges = offsets.resolve(parent_meta)
    if not any(end > start for start, end in ranges.values()):
        raise BadInput(f"--offsets names no offsets to train on: {offsets.topic} {ranges}")
    check_ranges(offsets.topic, ranges, log_offsets(bootstrap, offsets.topic, security=security))
    return offsets.topic, ranges, None
