"""Every environment variable a command's options read (options.env) is named in that command's
--help, so what docs/contracts.md promises a Job ("every option it sets has a variable") can be
checked by reading the help."""
from __future__ import annotations

import argparse

import pytest

from susy_pipeline import cli, options


@pytest.mark.parametrize("module", cli.COMMANDS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_help_names_every_variable_the_options_read(module) -> None:
    before = len(options.ENV_NAMES)
    sub = argparse.ArgumentParser().add_subparsers()
    module.add_parser(sub)
    names = set(options.ENV_NAMES[before:])
    text = " ".join(" ".join(p.format_help() for p in sub.choices.values()).split())  # argparse wraps lines
    missing = sorted(n for n in names if n not in text)
    assert not missing, f"{module.__name__} reads {missing} but its --help does not say so"


@pytest.mark.parametrize("command", ["evaluate", "aggregate", "report"])
def test_every_shard_count_option_reads_the_same_variable(command, monkeypatch) -> None:
    monkeypatch.setenv("SUSY_SHARD_COUNT", "4")
    monkeypatch.setenv("SUSY_EVALUATION", "e")
    args = cli.parser().parse_args([command])  # defaults are read when the parser is built
    assert args.shard_count == 4


@pytest.mark.parametrize("command", ["produce", "train", "run-local"])
@pytest.mark.parametrize("topic", [".", "..", "...", "t" * 250, "my topic"])
def test_topic_names_kafka_refuses_are_usage_errors(command, topic, capsys):
    """`.` and `..` reached the embedded broker, and the trainer's kafka-python then failed on them
    with exit 1 (issue 22 §8); now every command that takes --topic refuses them as Kafka does
    (Topic.validate, clients/src/main/java/org/apache/kafka/common/internals/Topic.java)."""
    with pytest.raises(SystemExit) as caught:  # the option is checked as it is read, before the rest
        cli.parser().parse_args([command, "--topic", topic])
    assert caught.value.code == 2
    assert "is not a Kafka topic name" in capsys.readouterr().err


def test_a_legal_topic_name_with_periods_passes():
    args = cli.parser().parse_args(["produce", "--topic", "team.a-run_1", "--bootstrap", "b:9092", "--run-name", "r",
                                    "--data", "x.csv"])
    assert args.topic == "team.a-run_1"
