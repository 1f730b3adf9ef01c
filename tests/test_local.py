"""`run-local` (what `make run` runs), end to end on its own embedded broker and store.

Uses the seed recipe (one epoch) to stay quick; `make run` itself trains the
tuned recipe, whose AUC test_training.py checks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("reader", ["confluent", "kafka-python", "tfio"])
def test_run_local_produces_trains_evaluates_and_reports(tmp_path, reader):
    """Every reader on the embedded broker, with nothing in the environment: the tfio reader gets the
    librdkafka settings tansu needs (broker.TFIO_SETTINGS) from run-local itself."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAFKA_BOOTSTRAP", "MONGODB_URI", "SUSY_READER", "SUSY_LIBRDKAFKA")}
    done = subprocess.run(
        [sys.executable, "-m", "susy_pipeline", "run-local", "--recipe", "seed", "--shards", "3",
         "--reader", reader, "--workdir", str(tmp_path / "work"), "--store", f"sqlite:///{tmp_path}/store.sqlite3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # stdout is one JSON document, as for every command
    assert result["test_rows"] == 10_000
    assert 0.7 < result["test_accuracy"] < 1 and 0.8 < result["test_auc"] < 1
    # The table for people (what `make run` shows) is on stderr, after the log.
    table = done.stderr[done.stderr.index("stage "):]
    assert "evaluate (3 shards)" in table and "produce" in table
    assert f"model id {result['model_id']}" in table
    assert os.path.exists(result["report"]["png"]) and os.path.exists(result["report"]["json"])
    assert len(os.listdir(tmp_path / "work" / "test-rows-from-10979-in-3-files")) == 3
