"""A run's live progress in status, from the heartbeats its pods write to the store. Pure.

Evaluator shards write one heartbeat document each every few seconds, the trainer one per epoch
(susy_pipeline/heartbeat.py, docs/contracts.md §2). The reconciler reads a run's heartbeats once
per poll, the poll it makes anyway (no extra wake-ups), and writes:

- EvaluationRun `status.progress`: rows scored of rows planned in total and per shard (`~` when
  a CSV's rows were estimated from its bytes), rows/s, an ETA, `percent` and `display` (the
  `Progress` printer column, e.g. `41%`); on success, the aggregate's rows exactly.
- TrainingRun `status.progress`: epoch k of N, the last epoch's loss and validation AUC, rows/s,
  `display` (the `Epoch` printer column, e.g. `3/10`).

A source whose heartbeat has not changed for `stale_seconds` while it is unfinished is *stalled*
(`stalled_sources`); the reconciler then checks that its pod still runs and raises a Warning
Event naming it (runs.py). The trainer beats once per epoch, so its limit is at least three of its
epochs.
"""
from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

# Per-shard entries kept in status: an EvaluationRun of more shards lists the first ones (the
# totals count all). Keeps the object far below etcd's 1.5 MiB.
MAX_SHARDS_LISTED = 100
# The trainer beats per epoch: stalled only after this many of its epochs without one.
TRAINER_STALE_EPOCHS = 3


def _seconds_since(timestamp: str | None, now: datetime.datetime) -> float | None:
    if not timestamp:
        return None
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return (now - then).total_seconds()


def percent_text(done: int, planned: int, finished: bool) -> tuple[int, str]:
    """(percent, display): never 100% before the end (an estimate may fall short), never over."""
    if finished:
        return 100, "100%"
    if planned <= 0:
        return 0, "0%"
    share = min(99, 100 * done // planned)
    return share, f"{share}%"


def evaluation_progress(beats: Sequence[Mapping[str, Any]], shard_count: int) -> dict[str, Any]:
    """status.progress of an EvaluationRun from its shards' heartbeats.

    A shard without a heartbeat yet counts as planning the mean of those that have one (and
    makes the total an estimate). rows/s is the sum over the shards still scoring; the ETA is the
    rows left over it.
    """
    shards = sorted((b for b in beats if b.get("kind") == "shard"), key=lambda b: int(b.get("shard_index", 0)))
    done = sum(int(b.get("rows_done") or 0) for b in shards)
    planned_known = sum(max(int(b.get("rows_planned") or 0), int(b.get("rows_done") or 0)) for b in shards)
    missing = max(0, shard_count - len(shards))
    planned = planned_known + (planned_known * missing // len(shards) if shards else 0)
    estimated = missing > 0 or any(b.get("rows_planned_estimated") for b in shards)
    finished = bool(shards) and missing == 0 and all(b.get("finished") for b in shards)
    rate = sum(float(b.get("rows_per_second") or 0) for b in shards if not b.get("finished"))
    left = max(0, planned - done)
    percent, display = percent_text(done, planned, finished)
    return {
        "rowsScored": done,
        "rowsPlanned": planned,
        "rowsPlannedEstimated": estimated,
        "rowsPerSecond": round(rate, 1),
        "etaSeconds": (0 if finished else round(left / rate)) if rate > 0 or finished else None,
        "percent": percent,
        "display": display,
        "shardsReporting": len(shards),
        "shards": [{
            "index": int(b.get("shard_index", 0)),
            "rowsScored": int(b.get("rows_done") or 0),
            "rowsPlanned": int(b.get("rows_planned") or 0),
            "rowsPlannedEstimated": bool(b.get("rows_planned_estimated")),
            "rowsPerSecond": float(b.get("rows_per_second") or 0),
            "finished": bool(b.get("finished")),
            "updatedAt": b.get("updated_at"),
        } for b in shards[:MAX_SHARDS_LISTED]],
    }


def final_evaluation_progress(progress: Mapping[str, Any] | None, rows: int) -> dict[str, Any]:
    """status.progress once the shard results are aggregated: the aggregate's rows, exactly."""
    out = dict(progress or {})
    out.update(rowsScored=rows, rowsPlanned=rows, rowsPlannedEstimated=False, rowsPerSecond=out.get("rowsPerSecond", 0.0),
               etaSeconds=0, percent=100, display="100%")
    out["shards"] = [{**s, "rowsPlanned": s["rowsScored"], "rowsPlannedEstimated": False, "finished": True}
                     for s in out.get("shards") or []]
    return out


def training_progress(beats: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """status.progress of a TrainingRun from its trainer's heartbeat; None before the first."""
    beat = next((b for b in beats if b.get("kind") == "trainer"), None)
    if beat is None:
        return None
    epoch, epochs = int(beat.get("epoch") or 0), int(beat.get("epochs") or 0)
    return {
        "epoch": epoch,
        "epochs": epochs,
        "loss": beat.get("loss"),
        "valLoss": beat.get("val_loss"),
        "valAuc": beat.get("val_auc"),
        "rowsPerSecond": beat.get("rows_per_second"),
        "epochSeconds": beat.get("epoch_seconds"),
        "display": f"{epoch}/{epochs}",
        "updatedAt": beat.get("updated_at"),
        # Every finished epoch (the trainer keeps its last 50), also those shorter than a poll.
        "history": [{"epoch": h.get("epoch"), "loss": h.get("loss"), "valAuc": h.get("val_auc"),
                     "rowsPerSecond": h.get("rows_per_second")} for h in beat.get("history") or []] or None,
    }


def stalled_sources(beats: Sequence[Mapping[str, Any]], now: datetime.datetime,
                    stale_seconds: float) -> list[tuple[str, float]]:
    """(source, seconds since its last heartbeat) of every unfinished source silent for too long:
    `stale_seconds`, and for the trainer at least TRAINER_STALE_EPOCHS of its last epoch's time."""
    stalled = []
    for beat in beats:
        if beat.get("finished"):
            continue
        age = _seconds_since(beat.get("updated_at"), now)
        limit = stale_seconds
        if beat.get("kind") == "trainer":
            limit = max(limit, TRAINER_STALE_EPOCHS * float(beat.get("epoch_seconds") or 0))
        if age is not None and age > limit:
            stalled.append((str(beat.get("source")), age))
    return sorted(stalled)


def describe_source(source: str) -> str:
    """`shard-2` -> `shard 2`; `trainer` stays."""
    kind, _, index = source.partition("-")
    return f"{kind} {index}" if index else kind


def without_none(value: Any) -> Any:
    """`value` with every None field left out: in a merge patch None deletes the field, so a
    progress holding one would never equal the status it was written to, and be patched again at
    every poll."""
    if isinstance(value, Mapping):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


def shard_index(source: str) -> int | None:
    kind, _, index = source.partition("-")
    return int(index) if kind == "shard" and index.isdigit() else None
