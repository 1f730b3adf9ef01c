"""The evaluator end to end: a real (small) Keras model, real files, the embedded store.

The model is `model.build_model` with small hidden layers, fitted for one
epoch on the sample's train rows and saved in a SQLite store in tmp_path.
Inputs are the sample's 10,000 UCI test rows written by `scale` (3x, three
files; 2x, one file) plus plain-CSV copies. For every format and N in 1, 2,
3, 7, the N shard results must aggregate to exactly the single-process
values; the AUC must be within 0.001 of scikit-learn's on the same scores.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from susy_pipeline import data  # noqa: E402
from susy_pipeline.scoring import evaluate_shard  # noqa: E402
from susy_pipeline.evaluation import IncompleteEvaluation, aggregate  # noqa: E402
from susy_pipeline.commands.scale import scale  # noqa: E402
from susy_pipeline.store import open_store  # noqa: E402

SAMPLE = "data/susy-sample.csv.gz"
CHUNK = 4_096   # small, so shards cross many chunk boundaries
STRIPES = 1_000  # not a multiple of CHUNK: stripes leave gaps in chunks


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from support.models import small_model_in_store

    root = tmp_path_factory.mktemp("evaluate")
    uri = f"sqlite:///{root}/store.sqlite3"
    model_id, model = small_model_in_store(uri, "test-eval")
    many = scale(SAMPLE, str(root / "many"), times=3, files=3, row_group_rows=2_500)["files"]
    one = scale(SAMPLE, str(root / "one"), times=2, files=1, row_group_rows=3_000)["files"]
    inputs = {}
    for layout, files in (("files", many), ("single", one)):
        inputs[("csv.gz", layout)] = files["csv.gz"]
        inputs[("parquet", layout)] = files["parquet"]
        plain = []
        for path in files["csv.gz"]:
            with gzip.open(path, "rb") as src, open(path[:-3], "wb") as dst:
                shutil.copyfileobj(src, dst)
            plain.append(path[:-3])
        inputs[("csv", layout)] = plain
    return {"root": root, "uri": uri, "model_id": model_id, "model": model, "inputs": inputs}


def _run(env, store, evaluation, paths, n, indices=None, **kw):
    for i in (range(n) if indices is None else indices):
        evaluate_shard(store, model_ref=env["model_id"], inputs=paths, evaluation=evaluation,
                       shard_index=i, shard_count=n, chunk_rows=CHUNK, stripe_rows=STRIPES,
                       progress_seconds=60, warmup_calls=1, **kw)
    return aggregate(store.shard_results(evaluation), n)


def _exact(result):
    return {k: result[k] for k in ("rows", "correct", "accuracy", "log_loss", "log_loss_units", "confusion",
                                   "histogram", "auc")}


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet"])
@pytest.mark.parametrize("layout", ["files", "single"])
def test_n_shards_equal_the_single_process_exactly(env, fmt, layout):
    paths = env["inputs"][(fmt, layout)]
    with open_store(env["uri"]) as store:
        single = _run(env, store, f"{fmt}-{layout}-1", paths, 1)
        assert single["rows"] == (30_000 if layout == "files" else 20_000)
        for n in (2, 3, 7):
            sharded = _run(env, store, f"{fmt}-{layout}-{n}", paths, n)
            assert _exact(sharded) == _exact(single), f"{n} shards"
            assert [s["shard_index"] for s in sharded["shards"]] == list(range(n))


def test_same_totals_in_every_format(env):
    with open_store(env["uri"]) as store:
        totals = [_exact(_run(env, store, f"fmt-{fmt}", env["inputs"][(fmt, "files")], 2))
                  for fmt in ("csv", "csv.gz", "parquet")]
    assert totals[0] == totals[1] == totals[2]


def test_auc_within_0001_of_scikit_learn_on_the_same_scores(env):
    from sklearn.metrics import log_loss, roc_auc_score

    paths = env["inputs"][("parquet", "files")]
    x = np.concatenate([b.features for p in paths for b in data.iter_batches(p)])
    y = np.concatenate([b.labels for p in paths for b in data.iter_batches(p)])
    scores = env["model"](x, training=False).numpy().ravel()
    with open_store(env["uri"]) as store:
        result = _run(env, store, "auc", paths, 3)
    assert abs(result["auc"] - roc_auc_score(y, scores)) < 0.001
    assert result["auc_max_error"] < 0.001
    assert result["log_loss"] == pytest.approx(log_loss(y, scores.astype(np.float64)), abs=1e-5)
    assert result["accuracy"] == pytest.approx(np.mean((scores > 0.5) == (y == 1)), abs=1e-4)


def test_totals_do_not_depend_on_the_number_of_scoring_threads(env):
    paths = env["inputs"][("parquet", "single")]
    with open_store(env["uri"]) as store:
        totals = [_exact(_run(env, store, f"scorers-{k}", paths, 2, scoring_threads=k)) for k in (1, 2, 4)]
        assert [s["scoring_threads"] for s in store.shard_results("scorers-4")] == [4, 4]
    assert totals[0]["rows"] == 20_000
    assert totals[0] == totals[1] == totals[2]


def test_a_rerun_shard_does_not_change_the_totals(env):
    paths = env["inputs"][("csv.gz", "files")]
    with open_store(env["uri"]) as store:
        before = _run(env, store, "rerun", paths, 3)
        after = _run(env, store, "rerun", paths, 3, indices=[1, 1])  # the pod retried, twice
        assert len(store.shard_results("rerun")) == 3
    assert _exact(after) == _exact(before)


def test_a_missing_shard_is_reported_not_averaged_over(env):
    paths = env["inputs"][("parquet", "files")]
    with open_store(env["uri"]) as store:
        with pytest.raises(IncompleteEvaluation, match=r"missing shard\(s\) 1") as err:
            _run(env, store, "missing", paths, 3, indices=[0, 2])
    assert err.value.missing == [1]


def test_bad_row_in_the_middle_fails_the_shard_with_file_and_line(env, tmp_path):
    src = env["inputs"][("csv.gz", "single")][0]
    with gzip.open(src, "rt") as f:
        lines = f.read().splitlines()
    lines[12_345] = lines[12_345].replace(",", ",oops", 1)
    bad = str(tmp_path / "bad.csv.gz")
    with gzip.open(bad, "wt") as f:
        f.write("\n".join(lines) + "\n")
    with open_store(env["uri"]) as store:
        with pytest.raises(data.DataError, match=r"bad\.csv\.gz, line 12346: column 2 .* not a number"):
            _run(env, store, "bad", [bad], 1)
        assert store.shard_results("bad") == []  # nothing stored, so no wrong total


def test_command_line_exit_2_on_bad_data_and_index_from_job_completion_index(env, tmp_path):
    bad = tmp_path / "bad.csv"
    with gzip.open(env["inputs"][("csv.gz", "single")][0], "rt") as f:
        lines = [next(f) for _ in range(100)]
    lines[57] = lines[57].replace(",", ",inf,", 1)
    bad.write_text("".join(lines))
    good = env["inputs"][("parquet", "files")]
    base = [sys.executable, "-m", "susy_pipeline", "evaluate", "--model", env["model_id"],
            "--store", env["uri"], "--shard-count", "3"]
    run_env = {**os.environ, "JOB_COMPLETION_INDEX": "2", "SUSY_EVALUATION": "cli"}
    ok = subprocess.run(base + ["--data", *good], env=run_env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    summary = json.loads(ok.stdout.strip().splitlines()[-1])
    assert summary["shard_index"] == 2 and summary["rows"] == 10_000 and "histogram" not in summary
    failed = subprocess.run(base + ["--data", str(bad), "--evaluation", "cli-bad", "--shard-index", "0",
                                    "--shard-count", "1"], env=run_env,
                            capture_output=True, text=True)
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert "bad.csv, line 58: expected 19 columns, found 20" in failed.stderr


def _lines(paths):
    lines = []
    for path in paths:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            lines += f.readlines()
    return lines


def _labels(paths):
    return np.concatenate([b.labels for p in paths for b in data.iter_batches(p)])


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet"])
@pytest.mark.parametrize("layout", ["files", "single"])
def test_a_row_range_scores_exactly_its_rows_and_n_shards_equal_one(env, fmt, layout):
    """--skip/--limit: rows [skip, skip+limit) of the inputs taken together, here across file edges
    (files of 10,000 rows) and, in one file, not on a stripe, row-group or chunk edge."""
    paths = env["inputs"][(fmt, layout)]
    skip, limit = 7_777, 11_001
    labels = _labels(paths)[skip:skip + limit]
    with open_store(env["uri"]) as store:
        single = _run(env, store, f"range-{fmt}-{layout}-1", paths, 1, skip=skip, limit=limit)
        assert single["rows"] == limit
        confusion = single["confusion"]
        assert confusion["tp"] + confusion["fn"] == int(labels.sum())
        for n in (2, 3, 7):
            sharded = _run(env, store, f"range-{fmt}-{layout}-{n}", paths, n, skip=skip, limit=limit)
            assert _exact(sharded) == _exact(single), f"{n} shards"
        # Exactly those rows: the same totals (histogram and log-loss units included) as a file
        # holding only them, cut from the plain-CSV copy of the same rows.
        cut = env["root"] / f"cut-{fmt}-{layout}.csv"
        cut.write_bytes(b"".join(_lines(env["inputs"][("csv", layout)])[skip:skip + limit]))
        assert _exact(_run(env, store, f"range-{fmt}-{layout}-cut", [str(cut)], 1)) == _exact(single)


def test_the_samples_held_out_rows_in_three_shards(env):
    """The examples' EvaluationRun: rows 10,979 on of the sample (one .csv.gz), stripes of 4,096
    counted from the range's start, so every shard gets a part."""
    with open_store(env["uri"]) as store:
        single = _run(env, store, "held-out-1", [SAMPLE], 1, skip=10_979)
        sharded = _run(env, store, "held-out-3", [SAMPLE], 3, skip=10_979)
        ranged = _run(env, store, "held-out-limit", [SAMPLE], 3, skip=10_979, limit=10_000)
        cut = env["root"] / "held-out.csv"
        cut.write_bytes(b"".join(_lines([SAMPLE])[10_979:]))
        alone = _run(env, store, "held-out-alone", [str(cut)], 1)
    assert single["rows"] == 10_000
    assert _exact(sharded) == _exact(single) == _exact(ranged) == _exact(alone)
    assert all(s["rows"] > 0 for s in sharded["shards"])
    assert int(_labels([SAMPLE])[10_979:].sum()) == single["confusion"]["tp"] + single["confusion"]["fn"]


def test_a_range_past_the_end_is_bad_input(env):
    from susy_pipeline.errors import BadInput

    with open_store(env["uri"]) as store, pytest.raises(BadInput, match="none in the range"):
        _run(env, store, "past-end", [SAMPLE], 1, skip=20_979)
