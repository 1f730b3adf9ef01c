"""A ContinualTraining: observe (status, the topic's offsets, the current generation's children)
-> decide (`continual.decide`, pure) -> act (create a child, move the alias, post an Event) ->
write what changed (`continual.transition`).

The children are TrainingRuns and EvaluationRuns with fixed names per generation
(`<name>-g<N>-train`, `-eval`), created only when absent and owned by the resource (kopf.adopt):
an operator killed at any point finds them again and creates no duplicate; deleting the resource
deletes them (garbage collection) and leaves the models and the alias in the store. The topic's
offsets are read by the operator itself, through the same KAFKA_* security settings as the Jobs
(kafka_offsets.log_offsets: ListOffsets, no consumer group, and for tansu one small fetch).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import kopf

from susy_operator import continual, crd, k8s, metrics, runs, spec as spec_lib, status as st
from susy_operator.runs import CONFIG

# A START is followed at once by CREATE_TRAINING, a finished training by CREATE_EVALUATION: a few
# decisions per reconcile, on the status as each one leaves it.
MAX_DECISIONS = 4


def _held_offsets(topic: str) -> Mapping[int, tuple[int, int]] | None:
    """The topic's [first, end) per partition; None if it does not exist. A broker that does not
    answer is a retry, never a decision."""
    from susy_pipeline.kafka_offsets import TopicMissing, log_offsets
    from susy_pipeline.kafka_security import KafkaUnavailable

    if not CONFIG.kafka_bootstrap:
        raise kopf.TemporaryError("the operator has no Kafka bootstrap address (SUSY_KAFKA_BOOTSTRAP)", delay=60)
    try:
        return log_offsets(CONFIG.kafka_bootstrap, topic)
    except TopicMissing:
        return None
    except KafkaUnavailable as error:
        raise kopf.TemporaryError(f"Kafka: {error}", delay=max(runs.POLL_SECONDS, 5)) from error


def _children(namespace: str, current: Mapping[str, Any] | None) -> tuple[dict | None, dict | None]:
    if not current:
        return None, None
    return (k8s.read_custom_object(crd.TRAINING_PLURAL, namespace, current["trainingRun"]),
            k8s.read_custom_object(crd.EVALUATION_PLURAL, namespace, current["evaluationRun"]))


def _create_child(body: kopf.Body, plural: str, child: dict[str, Any], logger: kopf.Logger) -> None:
    kopf.adopt(child, owner=body)
    existing, created = k8s.create_custom_object_if_absent(plural, child)
    if not k8s.owned_by(existing, body["metadata"]["uid"]):
        raise kopf.TemporaryError(f"{child['kind']} {child['metadata']['name']} belongs to another resource; "
                                  "waiting for it to go", delay=10)
    if created:
        logger.info(f"Created {child['kind']} {child['metadata']['name']}.")


def _move_alias(namespace: str, alias: str, challenger: str, champion: str | None, set_by: str) -> str | None:
    """Point the alias at the challenger, only if it still points at the champion (compare-and-set):
    done already (an operator killed after this, before its status patch) is success. Returns
    None, or the model the alias points at when someone else moved it meanwhile (not moved then)."""
    from susy_pipeline.store import AliasConflict

    store = runs.model_store(namespace)
    now = store.get_alias(alias)
    if now is not None and now.get("model_id") == challenger:
        return None
    try:
        store.set_alias(alias, challenger, set_by=set_by, expected_model_id=champion)
    except AliasConflict:
        moved = store.get_alias(alias)
        return (moved or {}).get("model_id") or "nothing"
    return None


def _act(body: kopf.Body, parsed: spec_lib.ContinualTrainingSpec, status: Mapping[str, Any],
         decision: continual.Decision, name: str, namespace: str, logger: kopf.Logger) -> continual.Decision:
    """The decision's side effect; the status it leads to is written by the caller. Returns the
    decision that was carried out: a promotion whose alias someone else moved meanwhile becomes a
    failed generation (the person's choice stands; it becomes the champion)."""
    current = status.get("current") or {}
    champion = (status.get("champion") or {}).get("modelId")
    if decision.action == continual.CREATE_TRAINING:
        ranges = continual.ranges_map(current.get("offsets"))
        _create_child(body, crd.TRAINING_PLURAL,
                      continual.training_run_child(name, namespace, parsed, decision.generation or 0, ranges, champion),
                      logger)
    elif decision.action == continual.CREATE_EVALUATION:
        assert decision.challenger is not None and champion is not None
        _create_child(body, crd.EVALUATION_PLURAL,
                      continual.evaluation_run_child(name, namespace, parsed, decision.generation or 0, champion,
                                                     decision.challenger["modelId"]), logger)
    elif decision.action == continual.START:
        kopf.event(body, type="Normal", reason=crd.EVENT_GENERATION_STARTED,
                   message=f"{decision.message}: offsets {continual.ranges_list(decision.ranges or {})}")
    elif decision.action == continual.PROMOTE:
        assert decision.challenger is not None
        moved = _move_alias(namespace, parsed.alias, decision.challenger["modelId"], champion,
                            f"ContinualTraining {namespace}/{name} generation {decision.generation}")
        if moved is not None:
            message = (f"alias {parsed.alias} was moved to {moved} by someone else since it pointed at {champion}: "
                       f"challenger {decision.challenger['modelId']} not promoted; {moved} is the champion now")
            kopf.event(body, type="Warning", reason=crd.EVENT_GENERATION_FAILED, message=message)
            return dataclasses.replace(decision, action=continual.FAIL_GENERATION, reason=crd.REASON_ALIAS_MOVED,
                                       message=message, champion={"modelId": moved, "value": None})
        kopf.event(body, type="Normal", reason=crd.EVENT_PROMOTED,
                   message=f"alias {parsed.alias} -> {decision.challenger['modelId']}: {decision.message}")
    elif decision.action == continual.REJECT:
        kopf.event(body, type="Normal", reason=crd.EVENT_REJECTED,
                   message=f"generation {decision.generation} rejected, alias {parsed.alias} stays on {champion}: "
                           f"{decision.message}")
    elif decision.action == continual.FAIL_GENERATION:
        kopf.event(body, type="Warning", reason=crd.EVENT_GENERATION_FAILED,
                   message=f"generation {decision.generation} failed, champion {champion} kept; the next "
                           f"trigger reads its offsets again: {decision.message}")
    return decision


def _count(uid: str, decision: continual.Decision) -> None:
    """A finished generation in the operator's metrics: `generations{outcome}` and, for a model
    that was scored against the champion (or is the first), `promotions{result}`. Once per
    generation: a handler retried after its status patch failed decides the same generation again."""
    outcome = {continual.PROMOTE: ("succeeded", "promoted"), continual.REJECT: ("succeeded", "rejected"),
               continual.FAIL_GENERATION: ("failed", None)}.get(decision.action)
    if outcome is None or not metrics.first_time(uid, f"generation:{decision.generation}"):
        return
    generation, promotion = outcome
    metrics.GENERATIONS.labels(outcome=generation).inc()
    if promotion is not None:
        metrics.PROMOTIONS.labels(result=promotion).inc()


def _conditions(status: Mapping[str, Any], decision: continual.Decision, now: str,
                generation: int | None) -> list[dict[str, Any]]:
    in_flight = bool(status.get("current"))
    updates = [(crd.PROGRESSING_CONDITION, in_flight, decision.reason or crd.REASON_WAITING_FOR_DATA,
                decision.message)]
    if decision.lost:
        updates.append((crd.DATA_LOST_CONDITION, True,
                        crd.REASON_TOPIC_MISSING if decision.reason == crd.REASON_TOPIC_MISSING
                        else crd.REASON_OFFSETS_DELETED, "; ".join(decision.lost)))
    elif st.get_condition(status, crd.DATA_LOST_CONDITION) is None:
        updates.append((crd.DATA_LOST_CONDITION, False, crd.REASON_NO_LOSS, "every offset was read"))
    return st.with_conditions(status, updates, now=now, generation=generation)


def _expire_children(namespace: str, name: str, generation: int, limit: int, logger: kopf.Logger) -> None:
    """Delete the finished children of generations older than the newest `limit` (their models stay)."""
    selector = f"{crd.LABEL_CONTINUAL_TRAINING}={name}"
    found = [(plural, child) for plural in (crd.TRAINING_PLURAL, crd.EVALUATION_PLURAL)
             for child in k8s.list_custom_objects(plural, namespace, selector)]

    def generation_of(child: Mapping[str, Any]) -> int:
        return int(child["metadata"].get("labels", {}).get(crd.LABEL_GENERATION, "0"))

    def finished(child: Mapping[str, Any]) -> bool:
        return (child.get("status") or {}).get("phase") in crd.TERMINAL_PHASES

    expired = set(continual.expired_generations([(generation_of(c), finished(c)) for _, c in found],
                                                generation, limit))
    for plural, child in found:
        if generation_of(child) in expired and finished(child):
            k8s.delete_custom_object(plural, namespace, child["metadata"]["name"])
            logger.info(f"Deleted {child['kind']} {child['metadata']['name']} (beyond historyLimit {limit}).")


def reconcile(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
              namespace: str, patch: kopf.Patch, logger: kopf.Logger) -> None:
    """Observe, decide, act, up to MAX_DECISIONS times; writes generation, current, champion,
    lastDecision, consumed, triggerFrom, rowsConsumed, history, nextTrigger and the conditions
    Progressing and DataLost. An invalid spec ends in Failed (InvalidSpec) naming the field."""
    generation = meta.get("generation")
    parsed = runs.parse_spec(runs.parse_with_labels(spec_lib.parse_continual_training, body), body, spec, status,
                             patch, generation)
    trigger = continual.Trigger(every_rows=parsed.every_rows, every_seconds=parsed.every_seconds,
                                rows_per_message=parsed.rows_per_message)
    state = dict(status)
    # A resource that failed on an invalid spec runs again once the spec is fixed.
    changes: dict[str, Any] = {"phase": None} if status.get("phase") == crd.FAILED else {}
    decision = continual.Decision(continual.WAIT)
    finished = False
    for _ in range(MAX_DECISIONS):
        now = st.now_rfc3339()
        training, evaluation = _children(namespace, state.get("current"))
        held = None if state.get("current") else _held_offsets(parsed.topic)
        decision = continual.decide(status=state, trigger=trigger, metric=parsed.metric, margin=parsed.margin,
                                    suspended=parsed.suspend, held=held, topic=parsed.topic, now=now,
                                    created=meta.get("creationTimestamp") or now, training=training,
                                    evaluation=evaluation)
        if decision.lost and list(decision.lost) != list(state.get("lostOffsets") or ()):
            kopf.event(body, type="Warning", reason=crd.EVENT_OFFSETS_LOST, message="; ".join(decision.lost))
            changes["lostOffsets"] = list(decision.lost)
        decision = _act(body, parsed, state, decision, name, namespace, logger)
        _count(meta.get("uid", name), decision)
        step = continual.transition(state, decision, name=name, now=now, rows_per_message=parsed.rows_per_message,
                                    history_limit=parsed.history_limit)
        if decision.reason == crd.REASON_ALIAS_MOVED and decision.champion:
            step["champion"] = {"modelId": decision.champion["modelId"], "value": None, "since": now}
        if step.get("champion") is not None:
            step["champion"] = {**step["champion"], "metric": parsed.metric}
        finished |= decision.action in (continual.PROMOTE, continual.REJECT, continual.FAIL_GENERATION)
        if decision.action == continual.START:
            # Written ahead: an operator killed after creating the generation's TrainingRun but
            # before this handler's patch would find no generation in status, and its child
            # orphaned. Recorded first, a restart finds the generation and creates (or finds) it.
            k8s.patch_continual_training_status(namespace, name, step)
        changes.update(step)
        state = continual.merged(state, step)
        if decision.action == continual.WAIT:
            break
    changes["nextTrigger"] = continual.next_trigger(decision)
    changes["conditions"] = _conditions(state, decision, st.now_rfc3339(), generation)
    changes["observedGeneration"] = generation
    # Written only when something changed: a resource waiting for its trigger is not patched
    # every poll (kopf would wake on each patch it made).
    for key, value in changes.items():
        if status.get(key) != value:
            patch.status[key] = value
    if finished:
        _expire_children(namespace, name, int(state.get("generation") or 0), parsed.history_limit, logger)
