"""Live progress in status from heartbeats (operator/susy_operator/progress.py, pure) and the
operator's Prometheus metrics (metrics.py): unit level, no cluster (issue 25).

The end-to-end behaviour (heartbeats from real shard processes folded by the real operator, a
SIGSTOPped shard's Warning Event, a real Prometheus scraping the operator) is in
tests/test_operator_observe.py.
"""
from __future__ import annotations

import datetime

import pytest

from susy_operator import metrics, progress

NOW = datetime.datetime(2026, 12, 5, 8, 0, 0, tzinfo=datetime.timezone.utc)


def at(seconds_ago: float) -> str:
    return (NOW - datetime.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def shard(i, done, planned, *, estimated=False, rate=100.0, finished=False, ago=1.0):
    return {"kind": "shard", "source": f"shard-{i}", "shard_index": i, "rows_done": done, "rows_planned": planned,
            "rows_planned_estimated": estimated, "rows_per_second": rate, "finished": finished,
            "updated_at": at(ago)}


def test_evaluation_progress_totals_rate_eta_and_the_column():
    beats = [shard(1, 300, 1_000, estimated=True, rate=50), shard(0, 500, 1_000, rate=100)]
    p = progress.evaluation_progress(beats, shard_count=2)
    assert (p["rowsScored"], p["rowsPlanned"], p["rowsPerSecond"]) == (800, 2_000, 150.0)
    assert p["rowsPlannedEstimated"] is True  # shard 1 counted a CSV's rows from its bytes
    assert p["etaSeconds"] == round(1_200 / 150) and (p["percent"], p["display"]) == (40, "40%")
    assert [s["index"] for s in p["shards"]] == [0, 1] and p["shardsReporting"] == 2


def test_a_shard_not_reporting_yet_counts_as_the_mean_and_marks_an_estimate():
    p = progress.evaluation_progress([shard(0, 100, 1_000, rate=10)], shard_count=3)
    assert p["rowsPlanned"] == 3_000 and p["rowsPlannedEstimated"] is True and p["display"] == "3%"


def test_never_100_percent_before_every_shard_finished_and_never_over():
    short = [shard(0, 1_200, 1_000, estimated=True), shard(1, 1_000, 1_000, finished=True, rate=0)]
    p = progress.evaluation_progress(short, shard_count=2)
    assert p["display"] == "99%" and p["rowsPlanned"] == 2_200  # a shard past its estimate plans what it did
    done = progress.evaluation_progress([shard(0, 1_000, 1_000, finished=True), shard(1, 7, 7, finished=True)], 2)
    assert (done["display"], done["etaSeconds"], done["rowsPerSecond"]) == ("100%", 0, 0.0)


def test_the_final_progress_is_the_aggregate_exactly():
    live = progress.evaluation_progress([shard(0, 990, 1_010, estimated=True), shard(1, 1_000, 1_000)], 2)
    final = progress.final_evaluation_progress(live, rows=2_003)
    assert (final["rowsScored"], final["rowsPlanned"], final["display"], final["rowsPlannedEstimated"]) == (
        2_003, 2_003, "100%", False)
    assert all(s["finished"] and s["rowsPlanned"] == s["rowsScored"] for s in final["shards"])


def test_training_progress_epoch_k_of_n_loss_and_validation_auc():
    assert progress.training_progress([]) is None
    beat = {"kind": "trainer", "source": "trainer", "epoch": 3, "epochs": 10, "loss": 0.45, "val_loss": 0.44,
            "val_auc": 0.861, "rows_per_second": 52_000.0, "epoch_seconds": 1.7, "updated_at": at(2)}
    p = progress.training_progress([beat])
    assert (p["display"], p["loss"], p["valAuc"], p["rowsPerSecond"]) == ("3/10", 0.45, 0.861, 52_000.0)
    assert p["history"] is None  # a heartbeat from before epoch histories
    history = [{"epoch": e, "loss": 0.4, "val_auc": auc, "rows_per_second": 50_000.0}
               for e, auc in ((1, 0.81), (2, 0.82), (3, 0.83))]
    p = progress.training_progress([{**beat, "history": history}])
    assert [(h["epoch"], h["valAuc"]) for h in p["history"]] == [(1, 0.81), (2, 0.82), (3, 0.83)]


def test_stalled_sources_are_the_unfinished_silent_ones_with_the_trainer_allowed_its_epochs():
    beats = [shard(0, 10, 100, ago=90), shard(1, 100, 100, finished=True, ago=500), shard(2, 5, 100, ago=3),
             {"kind": "trainer", "source": "trainer", "epoch": 1, "epochs": 5, "epoch_seconds": 40.0,
              "updated_at": at(100)}]
    assert progress.stalled_sources(beats, NOW, stale_seconds=60) == [("shard-0", 90.0)]  # trainer: 3 x 40 s
    beats[-1]["updated_at"] = at(130)
    assert [s for s, _ in progress.stalled_sources(beats, NOW, stale_seconds=60)] == ["shard-0", "trainer"]
    assert progress.describe_source("shard-12") == "shard 12" and progress.shard_index("shard-12") == 12
    assert progress.shard_index("trainer") is None


def test_runs_gauge_follows_each_run_through_its_phases_and_deletion():
    def value(kind, phase):
        return metrics.REGISTRY.get_sample_value("susy_operator_runs", {"kind": kind, "phase": phase}) or 0

    before = value("EvaluationRun", "Evaluating")
    metrics.observe_run("uid-a", "EvaluationRun", "Pending")
    metrics.observe_run("uid-a", "EvaluationRun", "Evaluating")
    metrics.observe_run("uid-a", "EvaluationRun", "Evaluating")  # the same phase again: no change
    assert value("EvaluationRun", "Evaluating") == before + 1 and value("EvaluationRun", "Pending") == 0
    metrics.observe_run("uid-a", "EvaluationRun", None, deleted=True)
    assert value("EvaluationRun", "Evaluating") == before


def test_labels_are_bounded_no_run_names():
    """No metric takes a run's name, namespace or model id as a label, and a step outside the fixed
    list is refused instead of becoming a new series."""
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            assert set(sample.labels) <= {"kind", "phase", "step", "source", "outcome", "result", "le"}, sample
    with pytest.raises(ValueError, match="unknown step"):
        metrics.step_of("my-run-producer")
    assert metrics.job_seconds({"status": {"startTime": "2026-12-05T08:00:00Z",
                                           "completionTime": "2026-12-05T08:01:30Z"}}) == 90.0


def test_a_run_event_counts_once_however_many_handlers_see_it():
    """The timer and a wake-up can both see a step fail before either's patch lands: one count."""
    assert metrics.first_time("uid-b", "failed:producer") is True
    assert metrics.first_time("uid-b", "failed:producer") is False
    assert metrics.first_time("uid-b", "failed:trainer") is True and metrics.first_time("uid-c", "failed:producer")


def test_progress_for_a_merge_patch_has_no_none_fields():
    """None deletes a field in a merge patch: such a progress would differ from the status it was
    written to at every poll, and be patched again and again."""
    p = progress.without_none(progress.evaluation_progress([], shard_count=2))
    assert "etaSeconds" not in p and p["display"] == "0%"
    beat = {"kind": "trainer", "epoch": 0, "epochs": 4, "loss": None, "val_auc": None, "updated_at": at(1)}
    assert set(progress.without_none(progress.training_progress([beat]))) == {"epoch", "epochs", "display", "updatedAt"}
