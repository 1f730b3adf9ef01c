"""The ContinualTraining's decisions (operator/susy_operator/continual.py), without a cluster:
a simulated stream and children, the status carried from one decision to the next exactly as
the reconciler patches it (`transition`)."""
from __future__ import annotations

import datetime

import pytest

from susy_operator import continual as ct, crd

CREATED = "2026-12-05T08:00:00Z"


def at(seconds: float) -> str:
    t = datetime.datetime(2026, 12, 5, 8, 0, 0, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    return t.isoformat().replace("+00:00", "Z")


class Loop:
    """The reconciler's side of the loop, in memory: decisions applied, children made up."""

    def __init__(self, trigger=ct.Trigger(every_rows=100), metric="auc", margin=0.0, history_limit=10):
        self.status: dict = {}
        self.trigger, self.metric, self.margin, self.history_limit = trigger, metric, margin, history_limit
        self.training: dict | None = None
        self.evaluation: dict | None = None
        self.decisions: list[ct.Decision] = []

    def step(self, held, now=0.0, suspended=False):
        decision = ct.decide(status=self.status, trigger=self.trigger, metric=self.metric, margin=self.margin,
                             suspended=suspended, held=held, topic="live", now=at(now), created=CREATED,
                             training=self.training, evaluation=self.evaluation)
        self.decisions.append(decision)
        if decision.action == ct.START:
            self.training = self.evaluation = None
        if decision.action == ct.CREATE_TRAINING:
            self.training = {"status": {"phase": crd.TRAINING}}
        if decision.action == ct.CREATE_EVALUATION:
            self.evaluation = {"status": {"phase": crd.EVALUATING}}
        self.status = ct.merged(self.status, ct.transition(self.status, decision, name="ct", now=at(now),
                                                         rows_per_message=self.trigger.rows_per_message,
                                                         history_limit=self.history_limit))
        return decision

    def train_done(self, model_id, phase=crd.SUCCEEDED, rows_trained=None):
        self.training = {"status": {"phase": phase, "modelId": model_id, "message": "trainer exit 2",
                                    **({"rowsTrained": rows_trained} if rows_trained is not None else {})}}

    def eval_done(self, scores: dict, phase=crd.SUCCEEDED):
        board = [{"modelId": m, "auc": v, "accuracy": v, "logLoss": 1 - v} for m, v in scores.items()]
        self.evaluation = {"status": {"phase": phase, "leaderboard": board, "message": "shard 0 failed"}}

    def generation(self, held, model_id, scores=None, now=0.0, rows_trained=None):
        """Start, train and (unless the first) evaluate one generation; return the final decision."""
        assert self.step(held, now).action == ct.START
        assert self.step(held, now).action == ct.CREATE_TRAINING
        assert self.step(held, now).action == ct.WAIT
        self.train_done(model_id, rows_trained=rows_trained)
        if scores is None:
            return self.step(held, now)
        assert self.step(held, now).action == ct.CREATE_EVALUATION
        assert self.step(held, now).action == ct.WAIT
        self.eval_done(scores)
        return self.step(held, now)


def test_generations_are_contiguous_never_overlap_and_skip_nothing():
    loop = Loop()
    first = loop.generation({0: (0, 120), 1: (0, 80)}, "m1")
    assert first.action == ct.PROMOTE and first.reason == crd.REASON_FIRST_GENERATION
    # More rows arrive while nothing runs, then more while generation 2 is in flight: those go to 3.
    assert loop.step({0: (0, 150), 1: (0, 100)}).action == ct.WAIT  # 50 of 100 rows
    second = loop.generation({0: (0, 200), 1: (0, 150)}, "m2", {"m1": 0.80, "m2": 0.82})
    assert second.action == ct.PROMOTE
    third = loop.generation({0: (0, 400), 1: (0, 150)}, "m3", {"m2": 0.82, "m3": 0.81})
    assert third.action == ct.REJECT
    offsets = [ct.ranges_map(h["offsets"]) for h in loop.status["history"]]
    assert offsets == [{0: (0, 120), 1: (0, 80)}, {0: (120, 200), 1: (80, 150)}, {0: (200, 400)}]
    for p in (0, 1):  # every offset up to the last trigger, once
        covered = sorted(o for r in offsets if p in r for o in range(*r[p]))
        assert covered == list(range({0: 400, 1: 150}[p]))
    assert loop.status["champion"]["modelId"] == "m2" and loop.status["champion"]["value"] == 0.82
    assert loop.status["rowsConsumed"] == 550
    assert loop.status["lastDecision"]["decision"] == crd.REJECTED
    assert loop.status["lastDecision"]["challenger"] == {"modelId": "m3", "value": 0.81}


def test_rows_consumed_are_the_rows_each_model_was_trained_on_where_its_trainingrun_says():
    """offsets x rowsPerMessage bounds the rows (a message may hold fewer); the child's
    status.rowsTrained, from the model's record, is exact and wins; a failed generation adds none."""
    loop = Loop(trigger=ct.Trigger(every_rows=100, rows_per_message=10))
    loop.generation({0: (0, 12)}, "m1", rows_trained=117)
    assert loop.status["rowsConsumed"] == 117 and loop.status["history"][-1]["rows"] == 117
    loop.generation({0: (0, 25)}, "m2", {"m1": 0.80, "m2": 0.70}, rows_trained=128)  # rejected: still consumed
    assert loop.status["rowsConsumed"] == 245 and loop.status["history"][-1]["rows"] == 128
    loop.generation({0: (0, 40)}, "m3", {"m1": 0.80, "m3": 0.90})  # a child without rowsTrained: the bound
    assert loop.status["rowsConsumed"] == 245 + 15 * 10 and loop.status["history"][-1]["rows"] == 150
    assert loop.step({0: (0, 55)}).action == ct.START
    loop.step({0: (0, 55)})
    loop.train_done(None, phase=crd.FAILED, rows_trained=999)
    assert loop.step({0: (0, 55)}).action == ct.FAIL_GENERATION
    assert loop.status["rowsConsumed"] == 395 and "rows" not in loop.status["history"][-1]


def test_one_generation_at_a_time_whatever_arrives():
    loop = Loop()
    loop.step({0: (0, 100)})
    for end in (500, 5000, 50000):  # the trigger is long past; the first generation is not done
        decision = loop.step({0: (0, end)})
        assert decision.action in (ct.CREATE_TRAINING, ct.WAIT) and decision.generation == 1


def test_a_failed_generation_keeps_the_champion_and_the_next_retries_its_offsets_plus_what_arrived():
    loop = Loop()
    loop.generation({0: (0, 100)}, "m1")
    loop.step({0: (0, 250)})
    loop.step({0: (0, 250)})
    loop.train_done(None, phase=crd.FAILED)
    failed = loop.step({0: (0, 250)})
    assert failed.action == ct.FAIL_GENERATION and "trainer exit 2" in failed.message
    assert loop.status["champion"]["modelId"] == "m1"
    assert loop.status["lastDecision"]["decision"] == crd.GENERATION_FAILED
    # The retry waits for the next trigger (100 rows beyond what generation 2 was to read) ...
    assert loop.step({0: (0, 300)}).action == ct.WAIT
    # ... and then reads generation 2's start to the log's end.
    retry = loop.step({0: (0, 350)})
    assert retry.action == ct.START and retry.generation == 3 and retry.ranges == {0: (100, 350)}
    # An evaluation that fails fails the generation the same way.
    loop.step({0: (0, 350)})
    loop.train_done("m3")
    assert loop.step({0: (0, 350)}).action == ct.CREATE_EVALUATION
    loop.eval_done({}, phase=crd.FAILED)
    assert loop.step({0: (0, 350)}).action == ct.FAIL_GENERATION
    assert ct.offsets_map(loop.status["consumed"]) == {0: 100}


def test_a_paused_stream_is_waiting_and_says_for_what():
    loop = Loop(trigger=ct.Trigger(every_rows=100, every_seconds=60))
    loop.generation({0: (0, 100)}, "m1")
    for now in (10, 100, 1000):
        decision = loop.step({0: (0, 100)}, now=now)
        assert decision.action == ct.WAIT and decision.reason == crd.REASON_WAITING_FOR_DATA
    assert decision.message == "waiting for the trigger: 0 of 100 rows, 60 of 60 s (and at least one new row)"
    # everySeconds fires on a trickle, once a row has arrived.
    assert loop.step({0: (0, 101)}, now=1001).action == ct.START


def test_everyseconds_counts_from_creation_before_the_first_generation():
    loop = Loop(trigger=ct.Trigger(every_seconds=30))
    assert loop.step({0: (0, 5)}, now=29).action == ct.WAIT
    assert loop.step({0: (0, 5)}, now=30).ranges == {0: (0, 5)}


def test_rows_per_message_scales_the_trigger():
    loop = Loop(trigger=ct.Trigger(every_rows=1000, rows_per_message=10))
    assert loop.step({0: (0, 99)}).action == ct.WAIT
    assert loop.step({0: (0, 100)}).action == ct.START


def test_retention_gap_and_a_recreated_topic_name_the_lost_offsets():
    loop = Loop()
    loop.generation({0: (0, 100), 1: (0, 100)}, "m1")
    gap = loop.step({0: (150, 260), 1: (0, 150)})
    assert gap.action == ct.START and gap.ranges == {0: (150, 260), 1: (100, 150)}
    assert gap.lost == ("partition 0: offsets 100..149 were deleted (retention) before a generation read them",)


def test_a_recreated_topic_starts_again_at_its_first_offset():
    status = {"consumed": [{"partition": 0, "offset": 500}, {"partition": 3, "offset": 9}],
              "champion": {"modelId": "m1"}, "generation": 4}
    ranges, lost = ct.next_ranges(ct.offsets_map(status["consumed"]), {0: (0, 120)})
    assert ranges == {0: (0, 120)}
    assert lost == ["partition 0: the log ends at 120, before offset 500 consumed so far (the topic was deleted "
                    "and re-created?); starting again at 0",
                    "partition 3 no longer exists (consumed up to offset 9)"]


def test_a_deleted_topic_waits_naming_what_was_consumed():
    loop = Loop()
    loop.generation({0: (0, 100)}, "m1")
    missing = loop.step(None)
    assert missing.action == ct.WAIT and missing.reason == crd.REASON_TOPIC_MISSING
    assert missing.lost == ("topic live does not exist (consumed so far: partition 0 up to offset 100)",)


def test_suspend_starts_nothing_new_but_lets_the_current_generation_finish():
    loop = Loop()
    assert loop.step({0: (0, 100)}, suspended=True).reason == crd.REASON_SUSPENDED
    loop.step({0: (0, 100)})
    assert loop.step({0: (0, 100)}, suspended=True).action == ct.CREATE_TRAINING


@pytest.mark.parametrize("metric,champion,challenger,margin,action", [
    ("auc", 0.80, 0.805, 0.0, ct.PROMOTE),
    ("auc", 0.80, 0.805, 0.01, ct.REJECT),        # wins, but not by more than the margin
    ("auc", 0.80, 0.80, 0.0, ct.REJECT),          # a tie keeps the champion
    ("accuracy", 0.70, 0.75, 0.02, ct.PROMOTE),
    ("logLoss", 0.50, 0.45, 0.01, ct.PROMOTE),    # lower is better
    ("logLoss", 0.50, 0.55, 0.0, ct.REJECT),
])
def test_the_margin_and_the_metrics_direction(metric, champion, challenger, margin, action):
    board = [{"modelId": "a", metric: champion}, {"modelId": "b", metric: challenger}]
    verdict = ct.judge(metric, margin, "a", "b", board)
    assert verdict.action == action
    assert verdict.champion == {"modelId": "a", "value": champion}
    assert f"margin {margin:g}" in verdict.message


def test_an_evaluation_without_the_models_scores_fails_the_generation():
    verdict = ct.judge("auc", 0.0, "a", "b", [{"modelId": "a", "auc": 0.8}])
    assert verdict.action == ct.FAIL_GENERATION and "no auc for model b" in verdict.message


def test_history_is_bounded_and_expired_children_are_the_finished_old_ones():
    loop = Loop(history_limit=2)
    loop.generation({0: (0, 100)}, "m1")
    loop.generation({0: (0, 200)}, "m2", {"m1": 0.8, "m2": 0.9})
    loop.generation({0: (0, 300)}, "m3", {"m2": 0.9, "m3": 0.7})
    assert [h["generation"] for h in loop.status["history"]] == [2, 3]
    children = [(1, True), (1, True), (2, True), (3, True), (4, False)]
    assert ct.expired_generations(children, current_generation=4, limit=2) == [1, 2]
    assert ct.expired_generations([(4, False), (3, True)], current_generation=4, limit=1) == [3]


def test_child_names_are_fixed_per_generation():
    assert ct.training_run_name("live", 3) == "live-g3-train"
    assert ct.evaluation_run_name("live", 3) == "live-g3-eval"
    assert len(ct.training_run_name("x" * 63, 1234)) <= 63


# --- the children and the specs ------------------------------------------------------------------

def _ct_spec(**extra):
    from susy_operator import spec as spec_lib

    spec = {"kafka": {"topic": "live", "rowsPerMessage": 10}, "trigger": {"everyRows": 500},
            "model": {"recipe": "seed", "hidden": [16, 8], "learningRate": 0.01},
            "evaluation": {"dataset": {"uris": ["/opt/susy/data/susy-sample.csv.gz"], "skip": 10979},
                           "metric": "logLoss", "margin": 0.01},
            "alias": "live", "reader": "kafka-python", "env": [{"name": "A", "value": "1"}], **extra}
    return spec_lib.parse_continual_training(spec)


def test_the_children_are_valid_resources_the_operator_accepts():
    """A generation's TrainingRun (offsets, warm start from the champion) and EvaluationRun
    (champion and challenger) validate against their CRDs and parse."""
    from susy_operator import builders, spec as spec_lib
    from test_crds import errors

    parsed = _ct_spec()
    first = ct.training_run_child("live", "ns", parsed, 1, {0: (0, 100), 1: (0, 90)}, None)
    later = ct.training_run_child("live", "ns", parsed, 2, {0: (100, 150)}, "a" * 32)
    evaluation = ct.evaluation_run_child("live", "ns", parsed, 2, "a" * 32, "b" * 32)
    for child in (first, later, evaluation):
        assert errors(child["kind"], child) == [], child["metadata"]["name"]
        assert child["metadata"]["labels"][crd.LABEL_CONTINUAL_TRAINING] == "live"
    assert first["metadata"]["name"] == "live-g1-train" and evaluation["metadata"]["name"] == "live-g2-eval"
    first_spec = spec_lib.parse_training_run(first["spec"])
    assert first_spec.model.hidden == (16, 8) and first_spec.model.warm_start is None
    later_spec = spec_lib.parse_training_run(later["spec"])
    assert later_spec.model.warm_start.id == "a" * 32 and later_spec.model.hidden is None
    assert later_spec.model.learning_rate == 0.01 and later_spec.env == (("A", "1"),)
    assert later_spec.source.offsets_text == "live:0=100-150"
    job = builders.trainer_job(builders.Owner(crd.TRAINING_KIND, "live-g2-train", "ns", "u" * 36), later_spec,
                               "ns.live-g2-train.uuuuuuuu",
                               builders.JobConfig(image="i", kafka_bootstrap="k:9092", store_secret="s", database="d"),
                               "a" * 32)
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--offsets") + 1] == "live:0=100-150"
    assert command[command.index("--warm-start") + 1] == "a" * 32
    assert spec_lib.parse_evaluation_run(evaluation["spec"]).models[1].id == "b" * 32


def test_invalid_continual_specs_name_the_field():
    from susy_operator import spec as spec_lib

    with pytest.raises(spec_lib.SpecError) as err:
        _ct_spec(trigger={}, alias="Not An Alias", evaluation={"dataset": {"uris": []}, "margin": 2})
    text = str(err.value)
    assert "spec.trigger needs everyRows, everySeconds or both" in text
    assert "spec.alias" in text and "spec.evaluation.margin must be a number in [0, 1]" in text
    assert "spec.evaluation.dataset.uris must list" in text


def test_a_trainingrun_source_reads_offsets_and_leaves_out_the_producer():
    from susy_operator import spec as spec_lib, steps

    parsed = spec_lib.parse_training_run({"source": {"kafka": {"topic": "live", "offsets": [
        {"partition": 1, "end": 50}, {"partition": 0, "start": 10, "end": 20}]}},
        "model": {"warmStart": {"id": "a" * 32}}})
    assert parsed.source.offsets_text == "live:0=10-20,1=parent-50"
    assert [s.component for s in steps.training_steps(True)] == [crd.TRAINER]
    assert [s.component for s in steps.training_steps(False)] == [crd.PRODUCER, crd.TRAINER]
    with pytest.raises(spec_lib.SpecError, match="start may be left out only with spec.model.warmStart"):
        spec_lib.parse_training_run({"source": {"kafka": {"topic": "live", "offsets": [{"partition": 0, "end": 5}]}}})
    with pytest.raises(spec_lib.SpecError, match="spec.dataset and spec.source are both given"):
        spec_lib.parse_training_run({"dataset": {"uri": "x"}, "source": {"kafka": {"topic": "live", "offsets": [
            {"partition": 0, "start": 0, "end": 5}]}}})
    with pytest.raises(spec_lib.SpecError, match="spec.dataset is required"):
        spec_lib.parse_training_run({})
