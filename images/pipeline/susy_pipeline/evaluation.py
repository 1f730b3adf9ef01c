"""Shard results and their exact aggregation. Pure: numpy only, no TensorFlow.

The operator imports this module, so it must stay free of TensorFlow, pyarrow
and I/O. An evaluator shard feeds `ShardTally.add` with (labels, scores) chunks
and turns the tally into a JSON-safe *shard result* (`ShardTally.result`);
`aggregate` combines the results of all shards of one evaluation.

Why the totals are exact and independent of how rows are split into shards
and chunks:

- Counts (rows, correct, confusion matrix, histogram bins) are integers.
- Log-loss: each row's loss is computed in float64 from its float32 score
  (clipped to [1e-7, 1 - 1e-7], as Keras clips), then rounded to an integer
  number of `LOSS_UNIT` (1e-12) units. Those integers are summed as Python
  ints, so the sum is exact and the same in any order. The quantization error
  is at most 0.5e-12 per row, so the mean loss is off by at most 5e-13,
  whatever the row count. The sum is stored as a decimal string
  (`log_loss_units`), because it can exceed the 64-bit integers MongoDB
  stores (52 million rows x 0.45 nats = 2.3e19 units).
- AUC comes from per-class histograms of the score over `HISTOGRAM_BINS`
  equal bins on [0, 1] (2**14, so that `score * bins` is exact in float32 and
  binning never rounds). A positive and a negative in the same bin count as
  half a correctly ordered pair, so the histogram AUC differs from the exact
  AUC by at most `auc_max_error` (reported with it): the share of
  positive-negative pairs that fall in a shared bin, halved.

Prediction rule: a row is predicted signal when its score is > 0.5, as
`keras.metrics.BinaryAccuracy` decides.

Several models in one pass (`ModelTallies`): a shard scores every model on every chunk it reads
and keeps one `ShardTally` per distinct model, plus one for their ensemble (`ensemble_mean`:
the mean of the models' probabilities, summed in float64 in the models' order). A row's
ensemble score is computed from the same bit-identical member scores by the same instructions
in every split, so the ensemble's totals are exact in the same sense as a model's. The shard
result keeps the first model's counts at the top (as a one-model result has them) and lists
every model, then the ensemble, under `models`; `aggregate` merges each entry across shards.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from .errors import BadInput
from .redaction import echo

HISTOGRAM_BINS = 1 << 14
LOSS_SCALE = 10 ** 12          # log-loss is summed in integer units of 1 / LOSS_SCALE nats
LOSS_UNIT = 1.0 / LOSS_SCALE
PROB_EPSILON = 1e-7            # keras.backend.epsilon(): scores are clipped to [eps, 1 - eps]
THRESHOLD = 0.5                # predicted signal when score > THRESHOLD
# Rows per int64 partial sum: 2**18 rows x 16.2 nats x 1e12 stays below 2**63.
_SUM_BLOCK = 1 << 18

RESULT_VERSION = 1
# Models one evaluation may score in one pass (each shard holds them all in memory).
MAX_MODELS = 8
ENSEMBLE = "ensemble"             # the ensemble's entry name in `models`
ENSEMBLE_METHODS = ("mean",)


class IncompleteEvaluation(BadInput):
    """The shard results do not add up to one whole evaluation.

    `missing`, `duplicated` and `unexpected` list shard indices; `inconsistent`
    lists other problems (different models, data plans, shard counts).
    """

    def __init__(self, evaluation: str | None, shard_count: int | None, *,
                 missing: Sequence[int] = (), duplicated: Sequence[int] = (),
                 unexpected: Sequence[int] = (), inconsistent: Sequence[str] = ()):
        self.evaluation = evaluation
        self.shard_count = shard_count
        self.missing = sorted(missing)
        self.duplicated = sorted(duplicated)
        self.unexpected = sorted(unexpected)
        self.inconsistent = list(inconsistent)
        problems = []
        if self.missing:
            problems.append(f"missing shard(s) {_ranges(self.missing)}")
        if self.duplicated:
            problems.append(f"duplicated shard(s) {_ranges(self.duplicated)}")
        if self.unexpected:
            problems.append(f"shard index(es) {_ranges(self.unexpected)} outside 0..{(shard_count or 0) - 1}")
        problems.extend(self.inconsistent)
        name = f"evaluation {evaluation!r}" if evaluation else "evaluation"
        have = f" of {shard_count} shards" if shard_count is not None else ""
        super().__init__(f"{name}{have} is incomplete, no total reported: " + "; ".join(problems))


def _ranges(indices: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5' (a compact list for messages)."""
    out, start, prev = [], None, None
    for i in sorted(indices):
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
    return ", ".join(out)


# --- per-row quantities ------------------------------------------------------

def score_bins(scores: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """The histogram bin of each score: floor(score * bins), score 1.0 in the top bin."""
    s = np.asarray(scores, dtype=np.float64)
    return np.clip(np.floor(s * bins), 0, bins - 1).astype(np.intp)


def loss_units(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each row's binary cross-entropy as an int64 count of LOSS_UNIT nats."""
    p = np.clip(np.asarray(scores, dtype=np.float64), PROB_EPSILON, 1.0 - PROB_EPSILON)
    positive = np.asarray(labels) == 1
    loss = -np.log(np.where(positive, p, 1.0 - p))
    return np.rint(loss * LOSS_SCALE).astype(np.int64)


def _exact_sum(values: np.ndarray) -> int:
    """Sum of int64 values as a Python int, without int64 overflow."""
    return sum(int(values[i:i + _SUM_BLOCK].sum()) for i in range(0, len(values), _SUM_BLOCK))


# --- one shard's tally -------------------------------------------------------

@dataclass
class ShardTally:
    """Integer sums over the rows a shard has scored; `add` chunks in any order."""

    bins: int = HISTOGRAM_BINS
    rows: int = 0
    tn: int = 0
    fp: int = 0
    fn: int = 0
    tp: int = 0
    loss_units: int = 0
    positive: np.ndarray = field(default=None)  # type: ignore[assignment]
    negative: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.positive is None:
            self.positive = np.zeros(self.bins, dtype=np.int64)
        if self.negative is None:
            self.negative = np.zeros(self.bins, dtype=np.int64)

    @property
    def correct(self) -> int:
        return self.tn + self.tp

    def add(self, labels: np.ndarray, scores: np.ndarray) -> None:
        """Count one chunk: labels in {0, 1}, scores in [0, 1] (the model's sigmoid output)."""
        labels = np.asarray(labels).reshape(-1)
        scores = np.asarray(scores).reshape(-1)
        if labels.shape != scores.shape:
            raise ValueError(f"{labels.shape[0]} labels but {scores.shape[0]} scores")
        positive = labels == 1
        predicted = scores > THRESHOLD
        n_pos = int(np.count_nonzero(positive))
        tp = int(np.count_nonzero(positive & predicted))
        fp = int(np.count_nonzero(predicted)) - tp
        self.rows += int(labels.shape[0])
        self.tp += tp
        self.fn += n_pos - tp
        self.fp += fp
        self.tn += int(labels.shape[0]) - n_pos - fp
        self.loss_units += _exact_sum(loss_units(labels, scores))
        b = score_bins(scores, self.bins)
        self.positive += np.bincount(b[positive], minlength=self.bins)
        self.negative += np.bincount(b[~positive], minlength=self.bins)

    def merge(self, other: "ShardTally") -> None:
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {other.bins} and {self.bins} bins")
        self.rows += other.rows
        self.tn += other.tn
        self.fp += other.fp
        self.fn += other.fn
        self.tp += other.tp
        self.loss_units += other.loss_units
        self.positive += other.positive
        self.negative += other.negative

    def counts(self) -> dict[str, Any]:
        """The tally as the JSON-safe count fields of a shard result."""
        return {
            "rows": self.rows,
            "correct": self.correct,
            "log_loss_units": str(self.loss_units),
            "log_loss_unit": LOSS_UNIT,
            "log_loss_sum": self.loss_units / LOSS_SCALE,
            "confusion": {"tn": self.tn, "fp": self.fp, "fn": self.fn, "tp": self.tp},
            "histogram": {"bins": self.bins, "positive": self.positive.tolist(),
                          "negative": self.negative.tolist()},
        }

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> "ShardTally":
        hist = result["histogram"]
        c = result["confusion"]
        tally = cls(bins=int(hist["bins"]), tn=int(c["tn"]), fp=int(c["fp"]), fn=int(c["fn"]),
                    tp=int(c["tp"]), loss_units=int(result["log_loss_units"]),
                    positive=np.asarray(hist["positive"], dtype=np.int64),
                    negative=np.asarray(hist["negative"], dtype=np.int64))
        tally.rows = int(result["rows"])
        if tally.tn + tally.fp + tally.fn + tally.tp != tally.rows:
            raise BadInput(f"shard {result.get('shard_index')}: confusion matrix does not add up "
                             f"to {tally.rows} rows")
        if int(tally.positive.sum() + tally.negative.sum()) != tally.rows:
            raise BadInput(f"shard {result.get('shard_index')}: histogram does not add up "
                             f"to {tally.rows} rows")
        return tally

    def metrics(self) -> dict[str, Any]:
        """Accuracy, mean log-loss, confusion matrix and AUC of the rows tallied."""
        auc, auc_max_error = auc_from_histograms(self.positive, self.negative)
        rows = self.rows
        return {
            "rows": rows,
            "correct": self.correct,
            # Fractions so that the one rounding is the final one, whatever the order.
            "accuracy": float(Fraction(self.correct, rows)) if rows else None,
            "log_loss": float(Fraction(self.loss_units, rows * LOSS_SCALE)) if rows else None,
            "log_loss_units": str(self.loss_units),
            "confusion": {"tn": self.tn, "fp": self.fp, "fn": self.fn, "tp": self.tp},
            "auc": auc,
            "auc_max_error": auc_max_error,
            "positives": int(self.positive.sum()),
            "negatives": int(self.negative.sum()),
        }


def ensemble_mean(scores: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of several models' scores per row, summed in float64 in the order given.

    Elementwise, in a fixed order: a row's ensemble score depends only on its own member scores,
    never on the chunk or shard it was read in.
    """
    total = np.array(scores[0], dtype=np.float64)
    for s in scores[1:]:
        total += np.asarray(s, dtype=np.float64)
    return total / len(scores)


class ModelTallies:
    """One shard's tallies for `count` models scored on the same chunks, and their ensemble.

    `add(labels, scores)` takes one score array per model (in the models' order); with
    `ensemble` ("mean") one more tally counts `ensemble_mean` of them. `tallies` lists the
    models' tallies, then the ensemble's.
    """

    def __init__(self, count: int, ensemble: str | None = None, bins: int = HISTOGRAM_BINS) -> None:
        if ensemble is not None and ensemble not in ENSEMBLE_METHODS:
            raise BadInput(f"unknown ensemble {echo(ensemble)} (known: {', '.join(ENSEMBLE_METHODS)})")
        self.count = count
        self.ensemble = ensemble
        self.bins = bins
        self.tallies = [ShardTally(bins=bins) for _ in range(count + (1 if ensemble else 0))]

    @property
    def rows(self) -> int:
        return self.tallies[0].rows

    def add(self, labels: np.ndarray, scores: Sequence[np.ndarray] | np.ndarray) -> None:
        if isinstance(scores, np.ndarray) and scores.ndim == 1:
            scores = [scores]
        if len(scores) != self.count:
            raise ValueError(f"{len(scores)} score arrays for {self.count} models")
        for tally, s in zip(self.tallies, scores):
            tally.add(labels, s)
        if self.ensemble:
            self.tallies[-1].add(labels, ensemble_mean(scores))

    def merge(self, other: "ModelTallies") -> None:
        for mine, theirs in zip(self.tallies, other.tallies, strict=True):
            mine.merge(theirs)


# --- AUC and ROC from histograms --------------------------------------------

def auc_from_histograms(positive: Sequence[int], negative: Sequence[int]) -> tuple[float | None, float | None]:
    """(AUC, bound on its error) from per-class score histograms over the same bins.

    AUC = P(score of a random positive > score of a random negative), ties
    counted half. Pairs within one bin are counted as ties; the true AUC lies
    within the returned bound, sum(pos_b * neg_b) / (2 * P * N).
    """
    pos = [int(x) for x in positive]
    neg = [int(x) for x in negative]
    n_pos, n_neg = sum(pos), sum(neg)
    if n_pos == 0 or n_neg == 0:
        return None, None
    below = 0   # negatives in lower bins
    twice_wins = 0
    twice_ties = 0
    for p, n in zip(pos, neg):
        twice_wins += p * (2 * below + n)
        twice_ties += p * n
        below += n
    pairs = 2 * n_pos * n_neg
    return float(Fraction(twice_wins, pairs)), float(Fraction(twice_ties, 2 * pairs))


def roc_from_histograms(positive: Sequence[int], negative: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) at every bin edge, from (0, 0) to (1, 1)."""
    pos = np.asarray(positive, dtype=np.float64)[::-1]
    neg = np.asarray(negative, dtype=np.float64)[::-1]
    tpr = np.concatenate([[0.0], np.cumsum(pos) / max(pos.sum(), 1.0)])
    fpr = np.concatenate([[0.0], np.cumsum(neg) / max(neg.sum(), 1.0)])
    return fpr, tpr


# --- aggregation -------------------------------------------------------------

_SAME_ACROSS_SHARDS = ("evaluation", "shard_count", "model_id", "plan_id")


# What `aggregate` reads of a shard result; the store returns only these (`aggregate_stored`).
RESULT_FIELDS = ("evaluation", "shard_index", "shard_count", "model_id", "model_ref", "plan_id", "ensemble",
                 "models", "rows", "correct", "confusion", "log_loss_units", "histogram", "seconds", "precision",
                 "rows_per_second", "peak_rss_bytes", "remote_bytes_read", "inputs")


class _Merge:
    """`aggregate`'s running state: the tallies merged so far and a few numbers per shard, never
    a shard result. 1000 shards of 8 models and their ensemble are about 2.4 GiB decoded whole
    (issue 22), against the operator's 512Mi; merged one at a time they need one result's room.

    Problems are recorded as they are met and raised at the end in the order a whole-list check
    reports them: missing, duplicated or inconsistent shards first, then models that differ,
    then a result whose counts cannot be merged."""

    def __init__(self) -> None:
        self.evaluation: str | None = None          # as the first result seen names it
        self.indexes: Counter[int] = Counter()
        self.values: dict[str, dict[str, list[int]]] = {key: {} for key in _SAME_ACROSS_SHARDS}
        self.shard_counts: set[Any] = set()
        self.signatures: dict[str, list[int]] = {}
        self.precisions: dict[str, list[int]] = {}
        self.summaries: list[dict[str, Any]] = []
        self.lowest: Mapping[str, Any] | None = None  # the lowest index's model names and options
        self.total: ShardTally | None = None
        self.models: list[ShardTally] = []
        self.signature: str | None = None
        self.broken: Exception | None = None

    def add(self, r: Mapping[str, Any]) -> None:
        index = int(r["shard_index"])
        if self.evaluation is None and not self.indexes:
            self.evaluation = r.get("evaluation")
        self.indexes[index] += 1
        for key in _SAME_ACROSS_SHARDS:
            self.values[key].setdefault(str(r.get(key)), []).append(index)
        self.shard_counts.add(r.get("shard_count"))
        signature = repr(_model_signature(r))
        self.signatures.setdefault(signature, []).append(index)
        # A result from before precisions were recorded was computed in fp32.
        self.precisions.setdefault(str(r.get("precision") or "fp32"), []).append(index)
        self.summaries.append(_shard_summary(r))
        entries = model_entries(r)
        if self.lowest is None or index < self.lowest["shard_index"]:
            self.lowest = {"shard_index": index, "model_id": r.get("model_id"), "ensemble": r.get("ensemble"),
                           "entries": [{k: e.get(k) for k in ("name", "model_ref", "model_id", "ensemble", "members")}
                                       for e in entries]}
        if self.broken is not None:
            return
        try:
            tally = ShardTally.from_result(r)
        except BadInput as err:  # counts that do not add up: as the whole-list check raised it
            self.broken = err
            return
        if self.total is None:
            self.total, self.signature = tally, signature
            self.models = [ShardTally(bins=int(e["histogram"]["bins"])) for e in entries]
        else:
            try:
                self.total.merge(tally)
            except ValueError as err:
                self.broken = IncompleteEvaluation(self.evaluation, None, inconsistent=[f"shard {index}: {err}"])
                return
        if signature != self.signature:
            return  # other models than the first result's: refused at the end, nothing to merge into
        for total, entry in zip(self.models, entries):
            try:
                total.merge(ShardTally.from_result({**entry, "shard_index": index}))
            except ValueError as err:
                self.broken = IncompleteEvaluation(self.evaluation, None, inconsistent=[
                    f"shard {index}, model {entry.get('name')}: {err}"])
                return

    def result(self, shard_count: int | None) -> dict[str, Any]:
        evaluation = self.evaluation
        if shard_count is None:
            counts = self.shard_counts
            if len(counts) != 1 or None in counts:
                raise IncompleteEvaluation(evaluation, None, inconsistent=[
                    "no shard results" if not self.indexes
                    else f"shards disagree on the shard count: {sorted(map(str, counts))}"])
            shard_count = int(next(iter(counts)))
        if shard_count < 1:
            raise BadInput(f"shard_count must be >= 1, got {shard_count}")
        seen = self.indexes
        missing = [i for i in range(shard_count) if i not in seen]
        duplicated = [i for i, n in seen.items() if n > 1 and 0 <= i < shard_count]
        unexpected = [i for i in seen if not 0 <= i < shard_count]
        inconsistent = []
        for key in _SAME_ACROSS_SHARDS:
            by_value = self.values[key]
            if len(set(by_value) | ({str(shard_count)} if key == "shard_count" else set())) > 1:
                detail = "; ".join(f"{v!s} in shard(s) {_ranges(ix)}" for v, ix in sorted(by_value.items()))
                inconsistent.append(f"shards disagree on {key}: {detail}"
                                    + (f" (expected {shard_count})" if key == "shard_count" else ""))
        if missing or duplicated or unexpected or inconsistent:
            raise IncompleteEvaluation(evaluation, shard_count, missing=missing, duplicated=duplicated,
                                       unexpected=unexpected, inconsistent=inconsistent)
        if len(self.precisions) > 1:
            detail = "; ".join(f"{p} in shard(s) {_ranges(ix)}" for p, ix in sorted(self.precisions.items()))
            raise IncompleteEvaluation(evaluation, shard_count, inconsistent=[
                f"shards were scored in different precisions ({detail}): their tallies do not add up; "
                f"score every shard in one precision (evaluate --precision fp32 or bf16)"])
        if len(self.signatures) > 1:
            detail = "; ".join(f"{v} in shard(s) {_ranges(ix)}" for v, ix in sorted(self.signatures.items()))
            raise IncompleteEvaluation(evaluation, shard_count, inconsistent=[
                f"shards disagree on the models scored: {detail}"])
        if isinstance(self.broken, IncompleteEvaluation):
            raise IncompleteEvaluation(evaluation, shard_count, inconsistent=self.broken.inconsistent)
        if self.broken is not None:
            raise self.broken
        total, lowest = self.total, self.lowest
        assert total is not None and lowest is not None
        models = [_merged_entry(head, tally) for head, tally in zip(lowest["entries"], self.models)]
        summaries = sorted(self.summaries, key=lambda s: s["shard_index"])
        wall = max((float(s["seconds"] or 0.0) for s in summaries), default=0.0)
        return {
            "evaluation": evaluation,
            "model_id": lowest["model_id"],
            "shard_count": shard_count,
            "precision": next(iter(self.precisions)),
            **total.metrics(),
            "threshold": THRESHOLD,
            "histogram_bins": total.bins,
            # Shards run in parallel: the slowest one bounds the evaluation.
            "slowest_shard_seconds": wall,
            "rows_per_second": total.rows / wall if wall > 0 else None,
            "shards": summaries,
            # Every model in the order given, the ensemble last (one entry for a one-model evaluation).
            "models": models,
            "ensemble": lowest["ensemble"],
            "best": best_model(models),
            # The merged histograms (for ROC curves); `printable` leaves them out.
            "histogram": {"bins": total.bins, "positive": total.positive.tolist(),
                          "negative": total.negative.tolist()},
        }


def aggregate(results: Iterable[Mapping[str, Any]], shard_count: int | None = None) -> dict[str, Any]:
    """The evaluation result from the results of all its shards, exactly, in any order.

    Reads `results` once, one at a time (a store's `iter_shard_results` holds one page of them):
    memory holds the merged tallies and a summary line per shard, not the results.
    Refuses (raises `IncompleteEvaluation`) when a shard index in
    0..shard_count-1 is missing or appears twice, when an index is out of
    range, or when the shards disagree on evaluation, model, data plan or
    shard count. `shard_count` defaults to the one the shards recorded.
    """
    merge = _Merge()
    for r in results:
        merge.add(r)
    return merge.result(shard_count)


def model_entries(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The per-model entries of a shard result: its `models`, or (one model, as results without
    `models` are) the result itself under its reference."""
    entries = result.get("models")
    if entries:
        return list(entries)
    ref = result.get("model_ref") or result.get("model_id")
    return [{**result, "name": ref, "model_ref": ref}]


def _model_signature(result: Mapping[str, Any]) -> list[tuple[Any, Any]]:
    return [(e.get("name"), e.get("model_id")) for e in model_entries(result)]


def _merged_entry(head: Mapping[str, Any], total: ShardTally) -> dict[str, Any]:
    """One model's (or the ensemble's) aggregate: its names from the lowest shard, its totals."""
    out: dict[str, Any] = {"name": head.get("name"), "model_ref": head.get("model_ref"),
                           "model_id": head.get("model_id")}
    if head.get("members") is not None:
        out.update(ensemble=head.get("ensemble"), members=list(head["members"]))
    out.update(total.metrics())
    out["histogram"] = {"bins": total.bins, "positive": total.positive.tolist(),
                        "negative": total.negative.tolist()}
    return out


def best_model(models: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The entry with the highest AUC (the first of equals, so a model before the ensemble)."""
    scored = [m for m in models if m.get("auc") is not None]
    if not scored:
        return None
    best = max(scored, key=lambda m: m["auc"])  # max keeps the first of equal keys
    return {"name": best.get("name"), "model_id": best.get("model_id"), "auc": best["auc"]}


def printable(result: Mapping[str, Any]) -> dict[str, Any]:
    """An aggregated result without its (long) histograms."""
    out = {k: v for k, v in result.items() if k != "histogram"}
    if isinstance(out.get("models"), list):
        out["models"] = [{k: v for k, v in m.items() if k != "histogram"} for m in out["models"]]
    return out


def _shard_summary(r: Mapping[str, Any]) -> dict[str, Any]:
    rows = int(r["rows"])
    return {
        "shard_index": int(r["shard_index"]),
        "rows": rows,
        "correct": int(r["correct"]),
        "accuracy": float(Fraction(int(r["correct"]), rows)) if rows else None,
        "seconds": r.get("seconds"),
        "rows_per_second": r.get("rows_per_second"),
        "peak_rss_bytes": r.get("peak_rss_bytes"),
        "remote_bytes_read": r.get("remote_bytes_read"),
        "inputs": len(r.get("inputs") or ()),
    }



def aggregate_stored(store, evaluation: str, shard_count: int | None) -> dict[str, Any]:
    """`aggregate` over the shard results `store` holds for `evaluation` (raises if any is missing),
    read one at a time with only the fields it needs."""
    return aggregate(store.iter_shard_results(evaluation, RESULT_FIELDS), shard_count)
