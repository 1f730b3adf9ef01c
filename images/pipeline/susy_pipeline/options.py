"""Options shared by the commands, and `env`, the one way an option takes an environment default
(Kubernetes Jobs set env). Every name `env` is asked for is recorded in ENV_NAMES, so a test can
hold each command's --help to naming the variables its options read."""
from __future__ import annotations

import argparse
import os

from .redaction import echo
from .schema import DEFAULT_DATABASE, DEFAULT_TOPIC, TOPIC_PATTERN
from .store import DEFAULT_EMBEDDED_URI, DEFAULT_NAMESPACE, check_namespace


ENV_NAMES: list[str] = []


def env(name: str, default=None):
    """The variable's value if set and not empty, else `default`."""
    ENV_NAMES.append(name)
    return os.environ.get(name) or default


def add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=env("MONGODB_URI", DEFAULT_EMBEDDED_URI),
                   help="model store: mongodb://... or sqlite:///PATH (env MONGODB_URI; "
                        "default: the embedded store %(default)s)")
    p.add_argument("--database", default=env("SUSY_DATABASE", DEFAULT_DATABASE),
                   help="database name (env SUSY_DATABASE; default: %(default)s)")
    p.add_argument("--namespace", type=namespace, default=env("SUSY_NAMESPACE", DEFAULT_NAMESPACE),
                   help="the store's namespace: every record written carries it and every model "
                        "reference resolves within it (env SUSY_NAMESPACE, which the operator sets "
                        "to the custom resource's namespace; default: %(default)s)")


def namespace(text: str) -> str:
    try:
        return check_namespace(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_kafka(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", default=env("KAFKA_BOOTSTRAP"), required=not env("KAFKA_BOOTSTRAP"),
                   help="Kafka bootstrap servers host:port (env KAFKA_BOOTSTRAP)")
    add_topic(p)


def add_topic(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topic", type=topic_name, default=env("KAFKA_TOPIC", DEFAULT_TOPIC),
                   help="Kafka topic (env KAFKA_TOPIC; default: %(default)s)")


def add_run_name(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-name", default=env("SUSY_RUN_NAME"), required=not env("SUSY_RUN_NAME"),
                   help="training run name: links the producer record, the trainer and the model "
                        "(env SUSY_RUN_NAME)")


def add_evaluation(p: argparse.ArgumentParser) -> None:
    """--evaluation, --shard-count and the store: what names one evaluation's stored results."""
    p.add_argument("--evaluation", default=env("SUSY_EVALUATION"), required=not env("SUSY_EVALUATION"),
                   help="evaluation name (env SUSY_EVALUATION)")
    # The same variable as evaluate's --shard-count, so one Job env serves both commands.
    p.add_argument("--shard-count", type=positive, default=env("SUSY_SHARD_COUNT"),
                   help="expected shard count (env SUSY_SHARD_COUNT; default: as the shards recorded it)")
    add_store(p)


def topic_name(text: str) -> str:
    """A Kafka topic name that Kafka itself accepts (schema.TOPIC_PATTERN), else a usage error (exit 2)."""
    if not TOPIC_PATTERN.match(text):
        raise argparse.ArgumentTypeError(
            f"{echo(text)} is not a Kafka topic name: ASCII letters, digits, '.', '_' and '-', 1 to 249 "
            "characters, not periods only (Apache Kafka's Topic.validate)")
    return text


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
