"""Progress a person reads (bars on a terminal, log lines elsewhere) and the heartbeats that the
operator reads (issue 25).

The commands run as a person runs them: `python -m susy_pipeline ...` on a pseudo-terminal
(tests/support/terminal.py), and the test reads the screen they leave and the bar as it was
mid-run. The same commands with stderr on a pipe (a Job's log) must print no bar, only lines.
Heartbeats: the real evaluator on real files and the embedded store across processes.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

from support.terminal import run_in_terminal

SAMPLE = "data/susy-sample.csv.gz"
ESCAPE = "\x1b["
RATE = re.compile(r"[\d,]+ rows/s")


def _bar_lines(screen, description):
    return [line for line in screen.seen + screen.lines if line.startswith(description) and "━" in line]


def test_scale_on_a_terminal_draws_a_bar_with_rows_rate_and_eta_and_logs_above_it(tmp_path):
    code, screen, _ = run_in_terminal([sys.executable, "-m", "susy_pipeline", "scale", "--data", SAMPLE,
                                       "--out", str(tmp_path / "x"), "--times", "4", "--files", "2"],
                                      timeout=300)
    assert code == 0, screen.text()
    total = 4 * 10_000 * 2  # the sample's 10,000 test rows, x4, in two formats
    bars = _bar_lines(screen, "scale x4")
    assert bars, screen.text()
    final = screen.lines[[i for i, line in enumerate(screen.lines) if line.startswith("scale x4")][-1]]
    assert "100%" in final and f"{total:,}/{total:,} rows" in final and RATE.search(final), final
    assert "ETA" in final
    # The log lines print above the bar, each whole on its own line, none drawn through the bar.
    wrote = [line for line in screen.lines if "scale: wrote" in line]
    assert len(wrote) == 4 and all("━" not in line for line in wrote), screen.text()
    assert screen.lines.index(wrote[-1]) < screen.lines.index(final)


def test_scale_with_stderr_on_a_pipe_prints_plain_log_lines_and_no_bar(tmp_path):
    done = subprocess.run([sys.executable, "-m", "susy_pipeline", "scale", "--data", SAMPLE,
                           "--out", str(tmp_path / "x"), "--times", "1", "--files", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert ESCAPE not in done.stderr and "━" not in done.stderr
    assert "scale: wrote" in done.stderr
    assert json.loads(done.stdout)["rows"] == 10_000


@pytest.fixture(scope="module")
def stored_model(tmp_path_factory):
    pytest.importorskip("tensorflow")
    from support.models import small_model_in_store
    from susy_pipeline.commands.scale import scale

    root = tmp_path_factory.mktemp("progress")
    uri = f"sqlite:///{root}/store.sqlite3"
    model_id, _ = small_model_in_store(uri, "progress")
    files = scale(SAMPLE, str(root / "data"), times=6, files=1, row_group_rows=5_000)["files"]
    return {"uri": uri, "model_id": model_id, "root": root, "files": files}


def _evaluate_argv(stored_model, fmt, evaluation, *extra):
    return [sys.executable, "-m", "susy_pipeline", "evaluate", "--model", stored_model["model_id"],
            "--data", *stored_model["files"][fmt], "--evaluation", evaluation, "--shard-index", "0",
            "--store", stored_model["uri"], "--chunk-rows", "1024", *extra]


def test_evaluate_on_a_terminal_shows_rows_scored_of_planned_with_rate(stored_model):
    code, screen, _ = run_in_terminal(_evaluate_argv(stored_model, "csv.gz", "tty-eval"), timeout=300)
    assert code == 0, screen.text()
    bars = _bar_lines(screen, "evaluate tty-eval shard 0/1")
    assert bars, screen.text()
    # CSV.gz: the rows planned are an estimate from bytes, shown with `~`.
    assert all("~" in line for line in bars), bars
    final = bars[-1]
    assert "60,000/~" in final and RATE.search(final), final


def test_evaluate_heartbeats_one_document_per_shard_rising_then_exact(stored_model):
    """Two shards over one Parquet file (exact plan from the footer) and one CSV.gz (estimated),
    heartbeats every 0.05 s: one document per shard however many writes, the final one equal to
    the shard's result."""
    from susy_pipeline.scoring import evaluate_shard
    from susy_pipeline.store import open_store

    with open_store(stored_model["uri"]) as store:
        results = [evaluate_shard(store, model_ref=stored_model["model_id"], inputs=stored_model["files"]["parquet"],
                                  evaluation="beats", shard_index=i, shard_count=2, chunk_rows=1024,
                                  heartbeat_seconds=0.05, warmup_calls=1) for i in range(2)]
        beats = store.heartbeats("beats")
        gz = evaluate_shard(store, model_ref=stored_model["model_id"], inputs=stored_model["files"]["csv.gz"],
                            evaluation="beats-gz", shard_index=0, shard_count=1, chunk_rows=1024,
                            heartbeat_seconds=0, warmup_calls=1)
        assert store.heartbeats("beats-gz") == []  # 0: none
    assert [b["source"] for b in beats] == ["shard-0", "shard-1"]
    for beat, result in zip(beats, results):
        assert beat["finished"] and beat["rows_done"] == beat["rows_planned"] == result["rows"]
        assert beat["rows_planned_estimated"] is False and beat["rows_per_second"] > 0
        # The first at 0 rows before streaming, then one every 0.05 s while it streams (one may
        # fall just after the end).
        assert result["heartbeats_written"] >= max(1, int(result["seconds"] / 0.05))
    assert sum(r["rows"] for r in results) == 60_000 and gz["rows"] == 60_000


def test_planned_rows_exact_for_parquet_and_close_for_csv(stored_model):
    from susy_pipeline import shards

    parquet = stored_model["files"]["parquet"][0]
    for n in (1, 2, 3):
        planned = [shards.planned_shard_rows(shards.plan_shard([parquet], i, n)) for i in range(n)]
        assert all(exact for _, exact in planned) and sum(rows for rows, _ in planned) == 60_000
    gz = stored_model["files"]["csv.gz"][0]
    rows, exact = shards.planned_shard_rows(shards.plan_shard([gz], 0, 1))
    assert not exact and abs(rows - 60_000) / 60_000 < 0.05, rows
    plain = stored_model["root"] / "plain.csv"
    import gzip
    plain.write_bytes(gzip.decompress(open(gz, "rb").read()))
    halves = [shards.planned_shard_rows(shards.plan_shard([str(plain)], i, 2)) for i in range(2)]
    assert abs(sum(r for r, _ in halves) - 60_000) / 60_000 < 0.02, halves
    ranged = shards.plan_shard([gz], 0, 1, ranges=shards.row_ranges([gz], 100, 5_000))
    assert shards.planned_shard_rows(ranged) == (5_000, True)


TRAIN_SCRIPT = textwrap.dedent("""
    import json, logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, "tests")
    from test_training import in_memory_source
    from susy_pipeline.model import RECIPES, with_overrides
    from susy_pipeline.training import train
    beats = []
    config = with_overrides(RECIPES["tuned"], epochs=3, patience=0)
    train(in_memory_source("data/susy-sample.csv.gz", 6000, per_message=10), config, expected_rows=6000,
          report=beats.append)
    print("BEATS " + json.dumps(beats))
""")


def test_train_on_a_terminal_draws_a_bar_per_epoch_and_reports_each_epoch():
    pytest.importorskip("tensorflow")
    code, screen, raw = run_in_terminal([sys.executable, "-c", TRAIN_SCRIPT], timeout=300)
    assert code == 0, screen.text()
    beats = json.loads(raw[raw.index("BEATS ") + 6:].splitlines()[0])
    assert [b["epoch"] for b in beats] == [0, 1, 2, 3] and all(b["epochs"] == 3 for b in beats)
    train_rows = beats[1]["train_rows"]
    for beat in beats[1:]:
        assert beat["loss"] > 0 and 0.5 < beat["val_auc"] <= 1 and beat["rows_per_second"] > 0
    for epoch in (1, 2, 3):
        bars = _bar_lines(screen, f"epoch {epoch}/3")
        assert bars, screen.text()
        assert f"{train_rows:,}/{train_rows:,} rows" in bars[-1] and RATE.search(bars[-1]), bars[-1]
    # Each epoch's log line is whole, above the bars, as the pod's log has it.
    logged = [line for line in screen.lines if line.startswith("INFO susy_pipeline.training: epoch ")]
    assert [line.split()[3] for line in logged] == ["1/3:", "2/3:", "3/3:"], screen.text()


def test_produce_on_a_terminal_shows_rows_sent_of_the_estimate_with_rate(kafka_broker, tmp_path):
    code, screen, raw = run_in_terminal(
        [sys.executable, "-m", "susy_pipeline", "produce", "--data", SAMPLE, "--rows-per-message", "50",
         "--bootstrap", kafka_broker, "--topic", "progress-tty", "--run-name", "progress-tty",
         "--store", f"sqlite:///{tmp_path}/s.sqlite3"], timeout=300)
    assert code == 0, screen.text()
    bars = _bar_lines(screen, "produce progress-tty")
    assert bars, screen.text()
    # The sample's 20,979 rows (CSV.gz: an estimate from its bytes, shown with `~`).
    assert "20,979/~" in bars[-1] and RATE.search(bars[-1]), bars[-1]
    assert json.loads(raw[raw.index('{"run"'):].splitlines()[0])["rows"] == 20_979
