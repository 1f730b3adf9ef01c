"""A TrainingRun: producer Job -> trainer Job -> model id (steps.TRAINING_STEPS).

`start` (on create and on operator start) validates the spec, resolves a warm-start parent and
creates the producer Job; it does nothing for a run that has already started (status.runName set),
so a restarted operator never re-runs a step. `reconcile` (the timer, and the wake-up when a Job
or pod of the run changes) follows the current step's Job and on success starts the next step.
What both kinds share (following a Job, failing, the store) is in `runs.py`; the kopf wiring in
`handlers.py`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from susy_operator import builders, crd, k8s, metrics, progress as progress_lib, runs, spec as spec_lib, \
    status as st, steps, tenancy
from susy_operator.runs import CONFIG


def _parse(spec: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> spec_lib.TrainingRunSpec:
    return spec_lib.parse_training_run(spec, allowed_volume_types=CONFIG.allowed_volume_types, labels=labels)


def start(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
          namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger) -> None:
    """Writes status.runName, phase Producing and the Produced condition, and creates the producer
    Job (with spec.source: phase Training, status.kafka, and the trainer Job); an invalid spec
    ends in Failed."""
    if status.get("runName") or status.get("phase") in crd.TERMINAL_PHASES:
        return  # already started: `reconcile` follows it from here
    generation = meta.get("generation")
    parsed = runs.parse_spec(runs.parse_with_labels(_parse, body), body, spec, status, patch, generation,
                             enforce_tenancy=True)
    parent: list[tuple[str, bool, str, str]] = []
    if parsed.model.warm_start is not None:
        parent_id = _resolve_parent(body, parsed, status, patch, generation)
        if parent_id is None:
            return  # failed
        patch.status["parentModelId"] = parent_id
        parent = [(crd.MODEL_RESOLVED, True, crd.REASON_MODEL_RESOLVED,
                   f"warm start: {parsed.model.warm_start.describe()} is {parent_id}")]
    if parsed.source is None:  # a run on offsets already in Kafka writes nothing: no queue
        _wait_for_topic(body, status, patch, generation)
    run = spec_lib.run_name(namespace, name, uid)
    first = steps.training_steps(parsed.source is not None)[0]
    job_name = builders.job_name(name, first.component)
    to_create = "created" if steps.hold(parsed.scheduling, None, None).create else \
        "to be created when spec.suspend is cleared"
    if first.component == crd.TRAINER:
        job = runs.ensure_step_job(body, builders.trainer_job(runs.owner(body), parsed, run, CONFIG.job_config,
                                                              patch.status.get("parentModelId")),
                                   parsed.scheduling, logger)
        assert parsed.source is not None
        waiting = [(crd.TRAINED, False, crd.REASON_JOB_CREATED if job else crd.REASON_SUSPENDED,
                    f"trainer Job {job_name} {to_create} for {parsed.source.offsets_text}")]
        offsets = [{"partition": p, **({"start": s} if s is not None else {}), "end": e}
                   for p, s, e in parsed.source.ranges]
        extra = {"kafka": {"topic": parsed.source.topic, "offsets": offsets}}
    else:
        job = runs.ensure_step_job(body, builders.producer_job(runs.owner(body), parsed, run, CONFIG.job_config),
                                   parsed.scheduling, logger)
        waiting = [(crd.PRODUCED, False, crd.REASON_JOB_CREATED if job else crd.REASON_SUSPENDED,
                    f"producer Job {job_name} {to_create}"),
                   (crd.TRAINED, False, crd.REASON_WAITING, "waiting for the producer")]
        extra = {}
    now = st.now_rfc3339()
    patch.status.update({
        "phase": first.phase,
        "runName": run,
        "startTime": now,
        "observedGeneration": generation,
        "jobs": {first.component: st.job_summary(job)},
        **extra,
        "conditions": st.with_conditions(status, [
            *parent, *waiting,
            (crd.SUCCEEDED_CONDITION, False, crd.REASON_JOB_RUNNING, first.phase.lower()),
        ], now=now, generation=generation),
    })
    kopf.event(body, type="Normal", reason=crd.EVENT_STARTED,
               message=f"Phase {first.phase}: run {run}, {first.component} Job {job_name}")


def _wait_for_topic(body: kopf.Body, status: Mapping[str, Any], patch: kopf.Patch, generation: int | None) -> None:
    """Returns when no older TrainingRun still has to produce into this run's topic (one producer
    per topic at a time: tenancy.topic_holder); until then phase Pending, condition Produced False
    with reason TopicBusy, and kopf retries (TemporaryError). Runs of every namespace the operator
    may list count, since a topic is the whole Kafka cluster's; another namespace's run is not named."""
    listed = k8s.list_custom_objects(crd.TRAINING_PLURAL, None if CONFIG.watch_all_namespaces
                                     else body["metadata"]["namespace"])
    holder = tenancy.topic_holder(body, listed)
    if holder is None:
        return
    topic = tenancy.run_topic(body)
    other = holder["metadata"]
    who = (f"TrainingRun {other['name']}" if other["namespace"] == body["metadata"]["namespace"]
           else "a TrainingRun of another namespace")
    message = (f"topic {topic}: {who}, created earlier, has not finished producing into it; one producer per "
               f"topic at a time (leave spec.kafka.topic unset for the run's own topic)")
    now = st.now_rfc3339()
    conditions = st.with_condition(status, crd.PRODUCED, False, reason=crd.REASON_TOPIC_BUSY, message=message,
                                   now=now, generation=generation)
    if status.get("phase") != crd.PENDING or conditions != st.conditions(status):
        kopf.event(body, type="Normal", reason=crd.EVENT_WAITING, message=message)
        patch.status["phase"] = crd.PENDING
        patch.status["conditions"] = conditions
    raise kopf.TemporaryError(message, delay=runs.POLL_SECONDS)


def _resolve_parent(body: kopf.Body, parsed: spec_lib.TrainingRunSpec, status: Mapping[str, Any],
                    patch: kopf.Patch, generation: int | None) -> str | None:
    """spec.model.warmStart as a model id whose network the spec does not contradict; None once the
    run has failed (unknown parent, or a contradicting field, named). A trainingRun reference not
    yet succeeded: phase Pending, condition ModelResolved False, and kopf retries (TemporaryError)."""
    from susy_pipeline.continual import contradictions
    from susy_pipeline.errors import BadInput

    ref = parsed.model.warm_start
    assert ref is not None
    namespace = body["metadata"]["namespace"]
    now = st.now_rfc3339()
    try:
        parent_id = runs.resolve_model(namespace, ref, body["metadata"].get("creationTimestamp"))
    except runs.Wait as wait:
        conditions = st.with_condition(status, crd.MODEL_RESOLVED, False, reason=crd.REASON_WAITING_FOR_TRAINING_RUN,
                                       message=f"warm start: {wait}", now=now, generation=generation)
        if status.get("phase") != crd.PENDING or conditions != st.conditions(status):
            kopf.event(body, type="Normal", reason=crd.EVENT_WAITING, message=f"warm start: {wait}")
            patch.status["phase"] = crd.PENDING
            patch.status["conditions"] = conditions
        raise kopf.TemporaryError(f"warm start: {wait}", delay=runs.POLL_SECONDS)
    except runs.Unresolvable as error:
        runs.fail(body, status, patch, reason=error.reason, message=f"warm start: {error.message}",
                  generation=generation, condition=crd.MODEL_RESOLVED)
        return None
    try:
        parent = runs.model_store(body["metadata"]["namespace"]).resolve_model(parent_id)
        problems = contradictions(parent, recipe=parsed.model.recipe, hidden=parsed.model.hidden,
                                  dropout=parsed.model.dropout)
    except BadInput as error:  # a parent whose record has no hyper-parameters
        problems = [("warmStart", str(error))]
    if problems:
        runs.fail(body, status, patch, reason=crd.REASON_INVALID_SPEC, generation=generation,
                  message="; ".join(f"spec.model.{field} contradicts the warm-start parent, model {parent_id}: {why}"
                                    for field, why in problems))
        return None
    return parent_id


def _training_output(step: steps.Step, run: str, namespace: str) -> bool:
    store = runs.model_store(namespace)
    return (store.get_production(run) is not None) if step.component == crd.PRODUCER \
        else bool(store.list_models(run=run))


def reconcile(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
              namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger) -> None:
    """Follow the current step's Job (steps.TRAINING_STEPS); on success start the next step. Writes
    status.jobs, rowsProduced and kafka (offsets) after producing; modelId and rowsTrained at the end."""
    generation = meta.get("generation")
    run = status.get("runName")
    step = steps.training_step(steps.step_phase(status))
    if not run or step is None or runs.stale(uid, status):
        return
    parsed = runs.parse_spec(runs.parse_with_labels(_parse, body), body, spec, status, patch, generation)
    owner = runs.owner(body)
    build = builders.producer_job if step.component == crd.PRODUCER else builders.trainer_job
    parent_id = () if step.component == crd.PRODUCER else (status.get("parentModelId"),)
    done, summary, job = runs.follow_step(body, step, builders.job_name(name, step.component),
                                          lambda: build(owner, parsed, run, CONFIG.job_config, *parent_id), status,
                                          patch, logger,
                                          generation, output_present=lambda: _training_output(step, run, namespace),
                                          scheduling=parsed.scheduling)
    if step.component == crd.TRAINER and patch.status.get("phase") != crd.FAILED:
        # Epoch k of N from the trainer's heartbeat (written per epoch), on this poll.
        runs.follow_heartbeats(body, status, patch, run, None if done else job, progress_lib.training_progress)
    if not done:
        return
    now = st.now_rfc3339()
    store = runs.model_store(namespace)
    job_name = summary.get("name", builders.job_name(name, step.component))
    if step.component == crd.PRODUCER:
        production = store.get_production(run)
        if production is None:
            runs.fail(body, status, patch, reason=crd.REASON_RECORD_MISSING, generation=generation,
                      condition=step.condition,
                      message=f"producer Job {job_name} succeeded but the store has no production record for run {run}")
            return
        trainer = runs.ensure_step_job(body, builders.trainer_job(owner, parsed, run, CONFIG.job_config,
                                                                  status.get("parentModelId")),
                                       parsed.scheduling, logger)
        trainer_name = builders.job_name(name, crd.TRAINER)
        rows = int(production.get("rows") or 0)
        offsets = st.kafka_offsets(production)
        patch.status.update({
            "phase": crd.TRAINING,
            "rowsProduced": rows,
            "kafka": {"topic": production.get("topic", builders.topic(owner, parsed)), "offsets": offsets},
            "jobs": {crd.PRODUCER: summary, crd.TRAINER: st.job_summary(trainer)},
            "conditions": st.with_conditions(status, [
                (crd.PRODUCED, True, crd.REASON_JOB_SUCCEEDED, f"{rows} rows in topic {builders.topic(owner, parsed)}"),
                (crd.TRAINED, False, crd.REASON_JOB_CREATED if trainer else crd.REASON_SUSPENDED,
                 f"trainer Job {trainer_name} "
                 f"{'created' if trainer else 'to be created when spec.suspend is cleared'}"),
            ], now=now, generation=generation),
        })
        runs.wrote_phase(uid, crd.TRAINING)
        kopf.event(body, type="Normal", reason=crd.EVENT_STEP_SUCCEEDED,
                   message=f"Phase {crd.TRAINING}: producer wrote {rows} rows; trainer Job {trainer_name}")
        return

    models = store.list_models(run=run)
    if not models:
        runs.fail(body, status, patch, reason=crd.REASON_RECORD_MISSING, generation=generation,
                  condition=step.condition,
                  message=f"trainer Job {job_name} succeeded but the store has no model for run {run}")
        return
    model_id = str(models[0]["model_id"])  # newest first
    # The model's own count: a spec.source.kafka run has no production record to count before.
    rows_trained = models[0].get("rows")
    patch.status.update({
        "phase": crd.SUCCEEDED,
        "modelId": model_id,
        **({"rowsTrained": int(rows_trained)} if rows_trained is not None else {}),
        "completionTime": now,
        "observedGeneration": generation,
        "conditions": st.with_conditions(status, [
            (crd.TRAINED, True, crd.REASON_JOB_SUCCEEDED, f"model {model_id}"),
            (crd.SUCCEEDED_CONDITION, True, crd.REASON_JOB_SUCCEEDED, f"model {model_id}"),
        ], now=now, generation=generation),
    })
    runs.wrote_phase(uid, crd.SUCCEEDED)
    if metrics.first_time(uid, "succeeded"):
        metrics.ROWS_TRAINED.inc(int(rows_trained or status.get("rowsProduced") or 0))
    kopf.event(body, type="Normal", reason=crd.EVENT_SUCCEEDED, message=f"Phase {crd.SUCCEEDED}: model {model_id}")
