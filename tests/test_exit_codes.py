"""Exit codes by intent (contracts.md §1): bad input 2, a dependency unavailable 3, anything else 1.

The errors carry their code (susy_pipeline/errors.py); `cli.main` only asks them. A `KeyError`
or `ValueError` raised by the code itself is a bug, not bad input: exit 1 with a traceback, so a
Job's podFailurePolicy (exit 2 = FailJob/FailIndex) never mistakes a bug for bad input."""
from __future__ import annotations

import pytest

from susy_pipeline import cli, errors
from susy_pipeline.commands import aggregate
from susy_pipeline.commands.download import DownloadError
from susy_pipeline.errors import DataError, StorageDenied, StorageUnavailable
from susy_pipeline.evaluation import IncompleteEvaluation
from susy_pipeline.kafka_io import KafkaReadTimeout, KafkaUnavailable
from susy_pipeline.store import ModelNotFound, StoreUnavailable


@pytest.mark.parametrize("error, code", [
    (DataError("f.csv", 3, "19 columns expected"), 2),
    (StorageDenied("s3://b/k", None, "access denied"), 2),
    (ModelNotFound("no model abc"), 2),
    (IncompleteEvaluation("e", 2, missing=[1]), 2),
    (KafkaUnavailable("no broker"), 3),
    (KafkaReadTimeout("no data for 60 s"), 3),
    (StoreUnavailable("no mongod"), 3),
    (StorageUnavailable("no endpoint"), 3),
    (DownloadError("offline"), 3),
    (KeyError("model_id"), 1),
    (ValueError("shapes differ"), 1),
    (IndexError("list index out of range"), 1),
    (RuntimeError("boom"), 1),
])
def test_each_error_kind_has_its_exit_code(error: BaseException, code: int) -> None:
    assert errors.exit_code(error) == code


@pytest.mark.parametrize("raised, code", [
    (KeyError("a bug"), 1),
    (DataError("x.csv", 7, "not a number"), 2),
    (StoreUnavailable("mongodb://db: no answer after 3 tries"), 3),
])
def test_the_command_line_exits_with_the_errors_code(monkeypatch, capsys, raised, code) -> None:
    def run(args):
        raise raised

    monkeypatch.setattr(aggregate, "run", run)
    assert cli.main(["aggregate", "--evaluation", "e", "--shard-count", "1"]) == code
    err = capsys.readouterr().err
    assert f"error: {raised}" in err
    # Only the unforeseen failure gets a traceback: the other two are one clear line.
    assert ("Traceback (most recent call last)" in err) == (code == 1)
