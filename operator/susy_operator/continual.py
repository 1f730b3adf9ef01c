"""A ContinualTraining's loop as one pure decision: given what status recorded, the topic's
offsets now, the time and the current generation's children, what to do next. No kopf, no client.

A generation trains a challenger on exactly the offsets that arrived since the last generation
that finished (its ranges start where the consumed offsets end, and end at the log's end when the
trigger fires), warm-started from the champion; then one EvaluationRun scores champion and
challenger on the held-out set; the challenger becomes champion only if it wins by more than the
margin. The first generation trains from scratch and becomes champion without an evaluation.

| state                                  | what else                               | action            |
|----------------------------------------|-----------------------------------------|-------------------|
| a generation in flight, no TrainingRun |                                         | CREATE_TRAINING   |
| its TrainingRun running                |                                         | WAIT              |
| its TrainingRun Failed                 |                                         | FAIL_GENERATION   |
| its TrainingRun Succeeded, no champion |                                         | PROMOTE (first)   |
| its TrainingRun Succeeded              | no EvaluationRun                        | CREATE_EVALUATION |
| its EvaluationRun running              |                                         | WAIT              |
| its EvaluationRun Failed               |                                         | FAIL_GENERATION   |
| its EvaluationRun Succeeded            | challenger wins by more than the margin | PROMOTE           |
| its EvaluationRun Succeeded            | otherwise                               | REJECT            |
| no generation in flight                | suspended                               | WAIT (Suspended)  |
| no generation in flight                | the topic does not exist                | WAIT (TopicMissing, names what was consumed) |
| no generation in flight                | the trigger has not fired               | WAIT (says what it waits for) |
| no generation in flight                | the trigger fired                       | START generation N+1 |

Offsets, per partition:
- `consumed`: where the last generation that finished (promoted or rejected) ended; the next
  generation starts there. A failed generation leaves it alone, so the next one retries the same
  start offsets plus whatever arrived meanwhile. Generations never overlap and never skip.
- `triggerFrom`: where the last generation that was started ended (failed ones too); the trigger
  counts the rows beyond it, so a failing generation is retried at the next trigger, not at once.
- Offsets below the log's first (deleted by retention), or a log that ends before what was
  consumed (the topic deleted and re-created) are lost: the decision names them (`lost`), and the
  generation starts at the log's first offset; nothing waits for rows that will never come.
- A stream that pauses is a WAIT, never a failure.
"""
from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Final

from susy_operator import crd

WAIT: Final = "Wait"
START: Final = "StartGeneration"
CREATE_TRAINING: Final = "CreateTraining"
CREATE_EVALUATION: Final = "CreateEvaluation"
PROMOTE: Final = "Promote"
REJECT: Final = "Reject"
FAIL_GENERATION: Final = "FailGeneration"

METRICS: Final = ("auc", "accuracy", "logLoss")
LOWER_IS_BETTER: Final = frozenset({"logLoss"})

Ranges = dict[int, tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class Trigger:
    every_rows: int | None = None
    every_seconds: int | None = None
    rows_per_message: int = 1


@dataclasses.dataclass(frozen=True)
class Decision:
    action: str
    message: str = ""
    reason: str = ""
    generation: int | None = None
    ranges: Ranges | None = None             # START: the new generation's offsets
    lost: tuple[str, ...] = ()               # offsets that can never be read, named
    challenger: Mapping[str, Any] | None = None   # PROMOTE/REJECT: {modelId, value}
    champion: Mapping[str, Any] | None = None
    rows: int | None = None                  # PROMOTE/REJECT: the rows the challenger was trained on
                                             # (FAIL_GENERATION: not consumed, not counted)


def offsets_map(entries: Sequence[Mapping[str, Any]] | None) -> dict[int, int]:
    """status.consumed / status.triggerFrom ([{partition, offset}]) as {partition: offset}."""
    return {int(e["partition"]): int(e["offset"]) for e in entries or []}


def offsets_list(offsets: Mapping[int, int]) -> list[dict[str, int]]:
    return [{"partition": p, "offset": o} for p, o in sorted(offsets.items())]


def ranges_list(ranges: Ranges) -> list[dict[str, int]]:
    return [{"partition": p, "start": s, "end": e} for p, (s, e) in sorted(ranges.items())]


def ranges_map(entries: Sequence[Mapping[str, Any]] | None) -> Ranges:
    return {int(e["partition"]): (int(e["start"]), int(e["end"])) for e in entries or []}


def training_run_name(ct_name: str, generation: int) -> str:
    """Fixed per generation, so a restarted operator finds the child it made (never generateName)."""
    return f"{ct_name[:50]}-g{generation}-train"


def evaluation_run_name(ct_name: str, generation: int) -> str:
    return f"{ct_name[:50]}-g{generation}-eval"


def _seconds_between(earlier: str, later: str) -> float:
    parse = lambda t: datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    return (parse(later) - parse(earlier)).total_seconds()


def next_ranges(consumed: Mapping[int, int], held: Mapping[int, tuple[int, int]]) -> tuple[Ranges, list[str]]:
    """The ranges a generation started now reads, and the offsets lost on the way.

    Each partition the log holds runs from where consumption stopped (a partition new to the
    topic: its first offset) to the log's end. A start below the log's first offset lost the
    offsets in between to retention; a log that ends before the start was re-created."""
    ranges: Ranges = {}
    lost: list[str] = []
    for p, (first, end) in sorted(held.items()):
        start = consumed.get(p, first)
        if start > end:
            lost.append(f"partition {p}: the log ends at {end}, before offset {start} consumed so far "
                        f"(the topic was deleted and re-created?); starting again at {first}")
            start = first
        elif start < first:
            lost.append(f"partition {p}: offsets {start}..{first - 1} were deleted (retention) before "
                        "a generation read them")
            start = first
        ranges[p] = (start, end)
    for p in sorted(set(consumed) - set(held)):
        lost.append(f"partition {p} no longer exists (consumed up to offset {consumed[p]})")
    return ranges, lost


def _improvement(metric: str, challenger: float, champion: float) -> float:
    return champion - challenger if metric in LOWER_IS_BETTER else challenger - champion


def _board_value(board: Sequence[Mapping[str, Any]], model_id: str, metric: str) -> float | None:
    for entry in board:
        if str(entry.get("modelId")) == model_id and entry.get(metric) is not None:
            return float(entry[metric])
    return None


def judge(metric: str, margin: float, champion_id: str, challenger_id: str,
          board: Sequence[Mapping[str, Any]]) -> Decision:
    """PROMOTE or REJECT from an EvaluationRun's leaderboard (both models scored in one pass)."""
    champion = _board_value(board, champion_id, metric)
    challenger = _board_value(board, challenger_id, metric)
    if champion is None or challenger is None:
        missing = champion_id if champion is None else challenger_id
        return Decision(FAIL_GENERATION, reason=crd.REASON_EVALUATION_INCOMPLETE,
                        message=f"the evaluation has no {metric} for model {missing}")
    gain = _improvement(metric, challenger, champion)
    better = "lower" if metric in LOWER_IS_BETTER else "higher"
    facts = dict(challenger={"modelId": challenger_id, "value": challenger},
                 champion={"modelId": champion_id, "value": champion})
    if gain > margin:
        return Decision(PROMOTE, reason=crd.REASON_CHALLENGER_WON, **facts,
                        message=f"challenger {metric} {challenger:.6g} against the champion's {champion:.6g}: "
                                f"{abs(gain):.4g} {better}, more than the margin {margin:g}")
    return Decision(REJECT, reason=crd.REASON_CHAMPION_KEPT, **facts,
                    message=f"challenger {metric} {challenger:.6g} against the champion's {champion:.6g}: "
                            f"{'only ' if gain > 0 else ''}{gain:+.4g} ({better} is better), not more than the "
                            f"margin {margin:g}")


def _in_flight(current: Mapping[str, Any], champion_id: str | None, metric: str, margin: float,
               training: Mapping[str, Any] | None, evaluation: Mapping[str, Any] | None) -> Decision:
    generation = int(current["generation"])
    tr_name = current.get("trainingRun") or ""
    if training is None:
        return Decision(CREATE_TRAINING, generation=generation, message=f"creating TrainingRun {tr_name}")
    tr_phase = (training.get("status") or {}).get("phase")
    if tr_phase == crd.FAILED:
        return Decision(FAIL_GENERATION, generation=generation, reason=crd.REASON_TRAINING_RUN_FAILED,
                        message=f"TrainingRun {tr_name} failed: {(training.get('status') or {}).get('message', '')}")
    challenger_id = (training.get("status") or {}).get("modelId")
    if tr_phase != crd.SUCCEEDED or not challenger_id:
        return Decision(WAIT, generation=generation, reason=crd.REASON_TRAINING,
                        message=f"generation {generation}: TrainingRun {tr_name} is {tr_phase or 'starting'}")
    # Exact, from the model's record (TrainingRun status.rowsTrained): a message may hold fewer
    # than rowsPerMessage rows (a batch's last, a paced piece's last), so offsets x rowsPerMessage
    # only bounds it. Absent (an older operator's child), the bound stands in.
    rows = (training.get("status") or {}).get("rowsTrained")
    rows = int(rows) if rows is not None else None
    if champion_id is None:
        return Decision(PROMOTE, generation=generation, reason=crd.REASON_FIRST_GENERATION, rows=rows,
                        challenger={"modelId": challenger_id, "value": None},
                        message=f"generation {generation} is the first: its model {challenger_id} becomes champion")
    ev_name = current.get("evaluationRun") or ""
    if evaluation is None:
        return Decision(CREATE_EVALUATION, generation=generation,
                        challenger={"modelId": challenger_id, "value": None},
                        message=f"creating EvaluationRun {ev_name}: champion {champion_id} against challenger "
                                f"{challenger_id}")
    ev_status = evaluation.get("status") or {}
    if ev_status.get("phase") == crd.FAILED:
        return Decision(FAIL_GENERATION, generation=generation, reason=crd.REASON_EVALUATION_RUN_FAILED,
                        message=f"EvaluationRun {ev_name} failed: {ev_status.get('message', '')}")
    if ev_status.get("phase") != crd.SUCCEEDED:
        return Decision(WAIT, generation=generation, reason=crd.REASON_EVALUATING,
                        message=f"generation {generation}: EvaluationRun {ev_name} is "
                                f"{ev_status.get('phase') or 'starting'}")
    verdict = judge(metric, margin, champion_id, str(challenger_id), ev_status.get("leaderboard") or [])
    return dataclasses.replace(verdict, generation=generation, rows=rows)


def decide(*, status: Mapping[str, Any], trigger: Trigger, metric: str, margin: float, suspended: bool,
           held: Mapping[int, tuple[int, int]] | None, topic: str, now: str, created: str,
           training: Mapping[str, Any] | None = None,
           evaluation: Mapping[str, Any] | None = None) -> Decision:
    """The next action (the rules are in the module docstring).

    `held` is the log's [first, end) per partition (kafka_offsets.log_offsets), None when the
    topic does not exist; `training` and `evaluation` are the current generation's children as
    read (None: absent); `created` is the resource's creationTimestamp, where `everySeconds`
    counts from before a first generation."""
    champion_id = (status.get("champion") or {}).get("modelId")
    current = status.get("current")
    if current:
        return _in_flight(current, champion_id, metric, margin, training, evaluation)
    generation = int(status.get("generation") or 0)
    if suspended:
        return Decision(WAIT, reason=crd.REASON_SUSPENDED, message="spec.suspend: no new generation is started")
    consumed = offsets_map(status.get("consumed"))
    if held is None:
        so_far = ", ".join(f"partition {p} up to offset {o}" for p, o in sorted(consumed.items())) or "nothing"
        return Decision(WAIT, reason=crd.REASON_TOPIC_MISSING,
                        lost=(f"topic {topic} does not exist (consumed so far: {so_far})",),
                        message=f"topic {topic} does not exist; waiting for it")
    ranges, lost = next_ranges(consumed, held)
    trigger_from = offsets_map(status.get("triggerFrom")) or consumed
    arrived = sum(max(0, end - max(start, trigger_from.get(p, start))) for p, (start, end) in ranges.items())
    rows = arrived * trigger.rows_per_message
    waited = _seconds_between(status.get("lastGenerationTime") or created, now)
    fired = []
    if trigger.every_rows is not None and rows >= trigger.every_rows:
        fired.append(f"{rows} new rows, at least {trigger.every_rows}")
    if trigger.every_seconds is not None and waited >= trigger.every_seconds and rows > 0:
        fired.append(f"{waited:.0f} s since the last generation, at least {trigger.every_seconds} s")
    if not fired:
        waiting_for = []
        if trigger.every_rows is not None:
            waiting_for.append(f"{rows} of {trigger.every_rows} rows")
        if trigger.every_seconds is not None:
            waiting_for.append(f"{min(waited, trigger.every_seconds):.0f} of {trigger.every_seconds} s"
                               + ("" if rows else " (and at least one new row)"))
        return Decision(WAIT, reason=crd.REASON_WAITING_FOR_DATA, lost=tuple(lost),
                        message="waiting for the trigger: " + ", ".join(waiting_for))
    ranges = {p: r for p, r in ranges.items() if r[1] > r[0]}
    return Decision(START, generation=generation + 1, ranges=ranges, lost=tuple(lost),
                    reason=crd.REASON_TRIGGERED, message=f"generation {generation + 1}: " + "; ".join(fired))


def next_trigger(decision: Decision) -> str:
    """status.nextTrigger: what a waiting resource waits for, in words."""
    return decision.message if decision.reason in (crd.REASON_WAITING_FOR_DATA, crd.REASON_SUSPENDED,
                                                   crd.REASON_TOPIC_MISSING) else "after the current generation"


def rows_in(ranges: Ranges, rows_per_message: int) -> int:
    return sum(end - start for start, end in ranges.values()) * rows_per_message


def bounded_history(history: Sequence[Mapping[str, Any]], entry: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
    """status.history with `entry` added (one per generation, the newest last), at most `limit`."""
    kept = [dict(h) for h in history if h.get("generation") != entry.get("generation")]
    kept.append(dict(entry))
    kept.sort(key=lambda h: int(h["generation"]))
    return kept[-limit:] if limit > 0 else []


def expired_generations(children: Sequence[tuple[int, bool]], current_generation: int, limit: int) -> list[int]:
    """The generations whose finished children are deleted: all but the newest `limit`
    generations, never the one in flight. `children` is (generation, finished) per child."""
    keep_from = current_generation - limit + 1
    return sorted({g for g, finished in children if finished and g < keep_from})


def merged(status: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`status` after the merge-patch `changes` (top-level keys; None deletes), as kopf applies it."""
    out = dict(status)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def transition(status: Mapping[str, Any], decision: Decision, *, name: str, now: str, rows_per_message: int,
               history_limit: int) -> dict[str, Any]:
    """The status fields `decision` changes (a merge-patch; lists whole), once its side effect
    (a child created, the alias moved) is done. WAIT, CREATE_TRAINING and CREATE_EVALUATION change
    only what the reconciler writes itself (conditions, nextTrigger)."""
    current = status.get("current") or {}
    if decision.action == START:
        assert decision.generation is not None and decision.ranges is not None
        return {
            "generation": decision.generation,
            "current": {"generation": decision.generation, "offsets": ranges_list(decision.ranges),
                        "trainingRun": training_run_name(name, decision.generation),
                        "evaluationRun": evaluation_run_name(name, decision.generation),
                        "startedAt": now},
            # The trigger counts from this generation's end from now on, whatever becomes of it.
            "triggerFrom": offsets_list({**offsets_map(status.get("triggerFrom")),
                                         **{p: e for p, (_, e) in decision.ranges.items()}}),
            "lastGenerationTime": now,
        }
    if decision.action == CREATE_EVALUATION and decision.challenger:
        return {"current": {**current, "challengerModelId": decision.challenger["modelId"]}}
    if decision.action not in (PROMOTE, REJECT, FAIL_GENERATION):
        return {}
    ranges = ranges_map(current.get("offsets"))
    outcome = {PROMOTE: crd.PROMOTED, REJECT: crd.REJECTED, FAIL_GENERATION: crd.GENERATION_FAILED}[decision.action]
    last = {"generation": decision.generation, "decision": outcome, "reason": decision.reason,
            "message": decision.message, "time": now}
    if decision.challenger:
        last["challenger"] = dict(decision.challenger)
    if decision.champion:
        last["champion"] = dict(decision.champion)
    rows = None if decision.action == FAIL_GENERATION else \
        decision.rows if decision.rows is not None else rows_in(ranges, rows_per_message)
    entry = {**last, "offsets": ranges_list(ranges), "startedAt": current.get("startedAt"),
             "trainingRun": current.get("trainingRun"),
             "evaluationRun": current.get("evaluationRun") if decision.champion else None,
             **({"rows": rows} if rows is not None else {})}
    patch: dict[str, Any] = {
        "current": None,
        "lastDecision": last,
        "history": bounded_history(status.get("history") or [], entry, history_limit),
        "lastGenerationTime": now,
    }
    if decision.action == FAIL_GENERATION:
        return patch  # consumed stays: the next generation reads these offsets again, and more
    patch["consumed"] = offsets_list({**offsets_map(status.get("consumed")),
                                      **{p: e for p, (_, e) in ranges.items()}})
    patch["rowsConsumed"] = int(status.get("rowsConsumed") or 0) + (rows or 0)
    if decision.action == PROMOTE:
        assert decision.challenger is not None
        patch["champion"] = {"modelId": decision.challenger["modelId"], "value": decision.challenger.get("value"),
                             "generation": decision.generation, "since": now}
    elif decision.champion is not None:  # the champion's score on the latest evaluation
        patch["champion"] = {**(status.get("champion") or {}), "value": decision.champion["value"]}
    return patch


# --- the children ---------------------------------------------------------------------------------

def child_labels(name: str, generation: int) -> dict[str, str]:
    return {crd.LABEL_CONTINUAL_TRAINING: name, crd.LABEL_GENERATION: str(generation),
            crd.LABEL_PART_OF: "susy", crd.LABEL_MANAGED_BY: crd.MANAGED_BY}


def _child(kind: str, child_name: str, name: str, namespace: str, generation: int, spec: Any,
           body_spec: dict[str, Any]) -> dict[str, Any]:
    """A child resource: its fixed name, the generation's labels, and the resource's env, queue and
    priorities (a generation waits in the resource's Kueue queue as any run does)."""
    if spec.env:
        body_spec["env"] = [{"name": k, "value": v} for k, v in spec.env]
    for key, value in (("queueName", spec.scheduling.queue_name),
                       ("priorityClassName", spec.scheduling.priority_class_name),
                       ("workloadPriorityClassName", spec.scheduling.workload_priority_class_name)):
        if value is not None:
            body_spec[key] = value
    return {"apiVersion": crd.API_VERSION, "kind": kind,
            "metadata": {"name": child_name, "namespace": namespace, "labels": child_labels(name, generation)},
            "spec": body_spec}


def training_run_child(name: str, namespace: str, spec: Any, generation: int, ranges: Ranges,
                       champion_id: str | None) -> dict[str, Any]:
    """The generation's TrainingRun: exactly `ranges` of the topic (spec.source.kafka, no producer),
    warm-started from the champion; the first generation (no champion) from the recipe.
    `spec` is a spec.ContinualTrainingSpec. Later generations keep the champion's network and
    recipe; the learning rate, epochs and batch size apply to every generation."""
    model: dict[str, Any] = {}
    if champion_id is None:
        model["recipe"] = spec.model.recipe
        if spec.model.hidden is not None:
            model["hidden"] = list(spec.model.hidden)
        if spec.model.dropout is not None:
            model["dropout"] = spec.model.dropout
    else:
        model["warmStart"] = {"id": champion_id}
    if spec.model.learning_rate is not None:
        model["learningRate"] = spec.model.learning_rate
    body_spec: dict[str, Any] = {
        "source": {"kafka": {"topic": spec.topic, "offsets": ranges_list(ranges)}},
        "model": model,
        "reader": spec.reader,
    }
    for key, value in (("epochs", spec.epochs), ("batchSize", spec.batch_size)):
        if value is not None:
            body_spec[key] = value
    return _child(crd.TRAINING_KIND, training_run_name(name, generation), name, namespace, generation, spec,
                  body_spec)


def evaluation_run_child(name: str, namespace: str, spec: Any, generation: int, champion_id: str,
                         challenger_id: str) -> dict[str, Any]:
    """The generation's EvaluationRun: champion and challenger scored in one pass on the held-out set."""
    held_out = spec.evaluation
    dataset: dict[str, Any] = {"uris": list(held_out.uris), "skip": held_out.skip}
    if held_out.limit is not None:
        dataset["limit"] = held_out.limit
    if held_out.secret_name is not None:
        dataset["secretName"] = held_out.secret_name
    return _child(crd.EVALUATION_KIND, evaluation_run_name(name, generation), name, namespace, generation, spec,
                  {"models": [{"id": champion_id}, {"id": challenger_id}], "dataset": dataset, "shards": spec.shards})
