"""The pure shard-result math (`susy_pipeline.evaluation`): no TensorFlow, no files.

Scores here are fixed arrays, so every check is about the tally and the
aggregation alone: however rows are split into shards and chunks, the totals
are the same integers, and the histogram AUC stays within 0.001 of
scikit-learn's exact AUC.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from susy_pipeline.evaluation import (HISTOGRAM_BINS, IncompleteEvaluation, ShardTally, aggregate,
                                      auc_from_histograms, loss_units, printable, roc_from_histograms)


def _scores(n: int, seed: int = 0, separation: float = 1.5):
    """Labels (46% signal, as SUSY) and float32 sigmoid scores with SUSY-like overlap."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.46).astype(np.float32)
    logits = rng.normal(size=n) + separation * labels - 0.7
    return labels, (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def _results(labels, scores, cuts, *, evaluation="ev", model_id="m1", plan_id="p1"):
    """Shard results for the rows split at `cuts`, each shard tallied in uneven chunks."""
    bounds = [0, *cuts, len(labels)]
    out = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        tally = ShardTally()
        chunk = 777 + 100 * i
        for c in range(a, b, chunk):
            tally.add(labels[c:min(b, c + chunk)], scores[c:min(b, c + chunk)])
        out.append({"evaluation": evaluation, "shard_index": i, "shard_count": len(bounds) - 1,
                    "model_id": model_id, "plan_id": plan_id, "seconds": 1.0 + i,
                    **tally.counts()})
    return out


def _totals(result):
    return (result["rows"], result["correct"], result["log_loss_units"], result["confusion"],
            result["histogram"], result["accuracy"], result["log_loss"], result["auc"])


@pytest.mark.parametrize("shards", [1, 2, 3, 7])
def test_totals_are_the_same_integers_however_rows_are_split(shards):
    labels, scores = _scores(50_000)
    single = ShardTally()
    single.add(labels, scores)
    rng = np.random.default_rng(shards)
    cuts = sorted(rng.choice(np.arange(1, len(labels)), size=shards - 1, replace=False).tolist())
    # Through JSON, as the store keeps them.
    results = json.loads(json.dumps(_results(labels, scores, cuts)))
    total = aggregate(results, shards)
    expected = {**single.metrics(), "histogram": {"bins": HISTOGRAM_BINS, "positive": single.positive.tolist(),
                                                  "negative": single.negative.tolist()}}
    assert _totals(total) == _totals(expected)
    assert total["accuracy"] == single.correct / len(labels)
    assert sum(s["rows"] for s in total["shards"]) == len(labels)


def test_confusion_matrix_and_log_loss_match_scikit_learn():
    labels, scores = _scores(20_000, seed=3)
    tally = ShardTally()
    tally.add(labels, scores)
    m = tally.metrics()
    predicted = scores > 0.5
    assert m["confusion"] == {"tn": int(np.sum(~predicted & (labels == 0))), "fp": int(np.sum(predicted & (labels == 0))),
                              "fn": int(np.sum(~predicted & (labels == 1))), "tp": int(np.sum(predicted & (labels == 1)))}
    assert m["accuracy"] == np.mean(predicted == (labels == 1))
    assert m["log_loss"] == pytest.approx(sk_log_loss(labels, scores.astype(np.float64)), abs=1e-9)


def test_loss_units_are_order_independent_and_exact_for_extreme_scores():
    labels = np.array([1, 0, 1, 0], np.float32)
    scores = np.array([0.0, 1.0, 1.0, 0.0], np.float32)  # clipped like Keras: -log(1e-7) nats
    units = loss_units(labels, scores)
    assert units[0] == round(-np.log(1e-7) * 1e12)
    assert units[1] == round(-np.log(1.0 - (1.0 - 1e-7)) * 1e12)
    assert units[2] == units[3] == round(-np.log(1.0 - 1e-7) * 1e12)
    # Sums exceed int64 (as 52M rows would) and stay exact as Python ints via the string field.
    tally = ShardTally()
    for _ in range(3):
        tally.add(np.zeros(600_000, np.float32), np.ones(600_000, np.float32))
    assert int(tally.counts()["log_loss_units"]) == 1_800_000 * int(units[1]) > 2 ** 63


@pytest.mark.parametrize("seed,separation", [(0, 1.5), (1, 0.2), (2, 4.0)])
def test_histogram_auc_within_0001_of_scikit_learn(seed, separation):
    labels, scores = _scores(100_000, seed=seed, separation=separation)
    tally = ShardTally()
    tally.add(labels, scores)
    auc, bound = auc_from_histograms(tally.positive, tally.negative)
    exact = roc_auc_score(labels, scores)
    assert abs(auc - exact) <= bound + 1e-12
    assert abs(auc - exact) < 0.001
    assert bound < 0.001


def test_auc_counts_ties_within_a_bin_as_half():
    pos, neg = [0, 2, 1], [1, 1, 0]
    # pairs: 3 pos x 2 neg = 6; wins: bin1 pos beat bin0 neg (2), bin2 pos beat both (2); ties bin1: 2 x 0.5
    assert auc_from_histograms(pos, neg) == (5 / 6, 2 / 24)
    assert auc_from_histograms([0, 3], [0, 0]) == (None, None)
    fpr, tpr = roc_from_histograms(pos, neg)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1


def test_a_missing_shard_is_reported_not_averaged_over():
    labels, scores = _scores(10_000)
    results = _results(labels, scores, [2_000, 5_000, 9_000])
    with pytest.raises(IncompleteEvaluation) as err:
        aggregate(results[:2] + results[3:], 4)
    assert err.value.missing == [2]
    assert "missing shard(s) 2" in str(err.value) and "no total" in str(err.value)
    # The shard count recorded by the shards is enough to notice it.
    with pytest.raises(IncompleteEvaluation, match=r"missing shard\(s\) 2"):
        aggregate(results[:2] + results[3:])
    with pytest.raises(IncompleteEvaluation, match="no shard results"):
        aggregate([])


def test_duplicated_unexpected_and_inconsistent_shards_are_refused():
    labels, scores = _scores(10_000)
    results = _results(labels, scores, [4_000])
    with pytest.raises(IncompleteEvaluation) as err:
        aggregate(results + [results[1]], 2)
    assert err.value.duplicated == [1] and "duplicated shard(s) 1" in str(err.value)
    stray = {**results[1], "shard_index": 5}
    with pytest.raises(IncompleteEvaluation, match=r"shard index\(es\) 5 outside 0..1"):
        aggregate(results + [stray], 2)
    other_model = {**results[1], "model_id": "m2"}
    with pytest.raises(IncompleteEvaluation, match="disagree on model_id"):
        aggregate([results[0], other_model], 2)
    other_data = {**results[1], "plan_id": "p2"}
    with pytest.raises(IncompleteEvaluation, match="disagree on plan_id"):
        aggregate([results[0], other_data], 2)


def test_a_rerun_shard_replaces_its_own_result(tmp_path):
    from susy_pipeline.store import open_store

    labels, scores = _scores(10_000)
    results = _results(labels, scores, [3_000, 6_000])
    with open_store(f"sqlite:///{tmp_path}/store.sqlite3") as store:
        for r in results:
            store.put_shard_result("ev", r["shard_index"], r)
        before = aggregate(store.shard_results("ev"), 3)
        store.put_shard_result("ev", 1, {**results[1], "seconds": 9.0})  # the retried pod
        after = aggregate(store.shard_results("ev"), 3)
    assert _totals(before) == _totals(after)
    assert len(after["shards"]) == 3 and after["shards"][1]["seconds"] == 9.0


def test_printable_drops_the_histograms():
    labels, scores = _scores(1_000)
    out = printable(aggregate(_results(labels, scores, []), 1))
    assert "histogram" not in out and out["rows"] == 1_000


def test_the_module_imports_no_tensorflow_or_pyarrow():
    code = ("import sys, susy_pipeline.evaluation; "
            "print(sorted(m for m in ('tensorflow', 'pyarrow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_report_writes_json_and_png(tmp_path):
    from susy_pipeline.report_files import write_report

    labels, scores = _scores(20_000)
    result = aggregate(_results(labels, scores, [5_000, 12_000], evaluation="ev/1"), 3)
    paths = write_report(result, str(tmp_path))
    assert paths["json"].endswith("ev_1.json") and paths["png"].endswith("ev_1.png")
    with open(paths["json"]) as f:
        document = json.load(f)
    assert "histogram" not in document and document["rows"] == 20_000
    assert document["roc"]["fpr"][0] == 0 and document["roc"]["tpr"][-1] == 1
    assert len(document["roc"]["fpr"]) <= 257
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_aggregate_command_exits_2_and_names_the_missing_shard(tmp_path):
    from susy_pipeline.store import open_store

    labels, scores = _scores(6_000)
    uri = f"sqlite:///{tmp_path}/store.sqlite3"
    with open_store(uri) as store:
        for r in _results(labels, scores, [2_000, 4_000]):
            if r["shard_index"] != 1:
                store.put_shard_result("ev", r["shard_index"], r)
    cmd = [sys.executable, "-m", "susy_pipeline", "aggregate", "--evaluation", "ev", "--store", uri]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert "missing shard(s) 1" in out.stderr
