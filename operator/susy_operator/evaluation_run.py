"""An EvaluationRun: model resolution -> one Indexed evaluator Job -> aggregated metrics
(steps.EVALUATION_STEP).

`start` (on create and on operator start) validates the spec, records status.evaluation, resolves
every model reference and creates the evaluator Job, or waits in Pending for a TrainingRun still
running; it does nothing for a run that has already started. `reconcile` (the timer, and the
wake-up when a Job or pod of the run changes) retries the resolution while Pending, then follows
the Job and aggregates the shard results from the store. What both kinds share is in `runs.py`;
the kopf wiring in `handlers.py`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from susy_operator import builders, crd, metrics as metrics_lib, progress as progress_lib, runs, \
    spec as spec_lib, status as st, steps
from susy_operator.runs import CONFIG


def _parse(spec: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> spec_lib.EvaluationRunSpec:
    return spec_lib.parse_evaluation_run(spec, allowed_volume_types=CONFIG.allowed_volume_types, labels=labels)


def _model_ids(status: Mapping[str, Any]) -> list[str]:
    """The resolved ids status recorded (status.models; before it existed, status.modelId alone)."""
    return [m["modelId"] for m in status.get("models") or []] or [status["modelId"]]


def _start_evaluator(body: kopf.Body, parsed: spec_lib.EvaluationRunSpec, status: Mapping[str, Any],
                     evaluation: str, patch: kopf.Patch, logger: kopf.Logger, generation: int | None) -> None:
    """Resolve the model (every one of spec.models) and create the Indexed Job, or record why not
    (wait, or fail: a reference that names no model fails the run, naming it, even while another
    one still waits for its TrainingRun)."""
    namespace = body["metadata"]["namespace"]
    now = st.now_rfc3339()
    try:
        ids, waiting = [], None
        for i, ref in enumerate(parsed.references):
            try:
                ids.append(runs.resolve_model(namespace, ref, body["metadata"].get("creationTimestamp")))
            except runs.Wait as wait:
                waiting = waiting or wait
            except runs.Unresolvable as error:
                if parsed.models:
                    raise runs.Unresolvable(error.reason, f"spec.models[{i}]: {error.message}") from error
                raise
        if waiting is not None:
            raise waiting
        model_id = ids[0]
    except runs.Wait as wait:
        conditions = st.with_condition(status, crd.MODEL_RESOLVED, False, reason=crd.REASON_WAITING_FOR_TRAINING_RUN,
                                       message=str(wait), now=now, generation=generation)
        if status.get("phase") == crd.PENDING and conditions == st.conditions(status):
            return  # still waiting for the same thing: no patch, no Event
        kopf.event(body, type="Normal", reason=crd.EVENT_WAITING, message=str(wait))
        patch.status["phase"] = crd.PENDING
        patch.status["conditions"] = conditions
        return
    except runs.Unresolvable as error:
        runs.fail(body, status, patch, reason=error.reason, message=error.message, generation=generation,
                  condition=crd.MODEL_RESOLVED)
        return
    # Claimed before any shard starts, so `models delete` refuses from now on, not only once a
    # shard pod has started (the shards claim it again; an upsert).
    for distinct in dict.fromkeys(ids):
        runs.model_store(namespace).claim_model(evaluation, distinct, parsed.shards)
    job = runs.ensure_step_job(body, builders.evaluator_job(runs.owner(body), parsed, evaluation, ids,
                                                            CONFIG.job_config), parsed.scheduling, logger)
    job_name = builders.job_name(body["metadata"]["name"], crd.EVALUATOR, parsed.shards)
    resolved = "; ".join(f"{ref.describe()} is {i}" for ref, i in zip(parsed.references, ids))
    patch.status.update({
        "phase": crd.EVALUATING,
        "modelId": model_id,
        "models": [{"reference": ref.text, "modelId": i} for ref, i in zip(parsed.references, ids)],
        "shards": st.shard_counts(job, parsed.shards),
        "jobs": {crd.EVALUATOR: st.job_summary(job)},
        "conditions": st.with_conditions(status, [
            (crd.MODEL_RESOLVED, True, crd.REASON_MODEL_RESOLVED, resolved),
            (crd.EVALUATED, False, crd.REASON_JOB_CREATED if job else crd.REASON_SUSPENDED,
             f"evaluator Job {job_name}: {parsed.shards} shards, parallelism {parsed.effective_parallelism}"
             + ("" if job else "; created when spec.suspend is cleared")),
        ], now=now, generation=generation),
    })
    kopf.event(body, type="Normal", reason=crd.EVENT_STARTED,
               message=f"Phase {crd.EVALUATING}: model{'s' if len(ids) > 1 else ''} {', '.join(ids)}, "
                       f"{parsed.shards} shards, Job {job_name}")


def start(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
          namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger) -> None:
    """Writes status.evaluation, resolves the model (status.modelId) and creates the Indexed
    evaluator Job, or waits in Pending for a TrainingRun still running; an invalid spec or an
    unknown model ends in Failed."""
    if status.get("evaluation") or status.get("phase") in crd.TERMINAL_PHASES:
        return  # already started: `reconcile` follows it from here
    generation = meta.get("generation")
    parsed = runs.parse_spec(runs.parse_with_labels(_parse, body), body, spec, status, patch, generation,
                             enforce_tenancy=True)
    evaluation = spec_lib.run_name(namespace, name, uid)
    patch.status.update({
        "phase": crd.PENDING,
        "evaluation": evaluation,
        "startTime": st.now_rfc3339(),
        "observedGeneration": generation,
        "shards": st.shard_counts(None, parsed.shards),
    })
    _start_evaluator(body, parsed, status, evaluation, patch, logger, generation)


def reconcile(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
              namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger) -> None:
    """Retry model resolution while Pending; then follow the evaluator Job (steps.EVALUATION_STEP)
    into status.shards, and on completion aggregate the shard results from the store into
    accuracy, auc, logLoss, rows, confusion and shardResults."""
    from susy_pipeline.evaluation import IncompleteEvaluation, aggregate_stored

    generation = meta.get("generation")
    evaluation = status.get("evaluation")
    if not evaluation or runs.stale(uid, status):
        return
    parsed = runs.parse_spec(runs.parse_with_labels(_parse, body), body, spec, status, patch, generation)
    if status.get("phase") == crd.PENDING or not status.get("modelId"):
        _start_evaluator(body, parsed, status, evaluation, patch, logger, generation)
        return
    step = steps.EVALUATION_STEP
    job_name = builders.job_name(name, crd.EVALUATOR, parsed.shards)
    done, _, job = runs.follow_step(
        body, step, job_name,
        lambda: builders.evaluator_job(runs.owner(body), parsed, evaluation, _model_ids(status), CONFIG.job_config),
        status, patch, logger, generation,
        output_present=lambda: runs.model_store(namespace).count_shard_results(evaluation) >= parsed.shards,
        scheduling=parsed.scheduling)
    shards = st.shard_counts(job, parsed.shards) if job is not None else status.get("shards")
    if status.get("shards") != shards:
        patch.status["shards"] = shards
    if not done:
        if patch.status.get("phase") != crd.FAILED:
            runs.follow_heartbeats(body, status, patch, evaluation, job,
                                   lambda beats: progress_lib.evaluation_progress(beats, parsed.shards))
        return
    now = st.now_rfc3339()
    try:
        # One shard result at a time, only the fields it needs: 1000 shards of 8 models stay
        # within the operator's memory limit (issue 22; docs/evaluation.md has the measurement).
        aggregated = aggregate_stored(runs.model_store(namespace), evaluation, parsed.shards)
    except IncompleteEvaluation as error:
        runs.fail(body, status, patch, reason=crd.REASON_AGGREGATION_FAILED, generation=generation,
                  condition=crd.EVALUATED,
                  message=f"evaluator Job {job_name} completed but the shard results are incomplete: {error}")
        return
    metrics = st.evaluation_metrics(aggregated)
    references = status.get("models") or [{"reference": parsed.model.text, "modelId": status["modelId"]}]
    try:
        board, best = st.leaderboard(aggregated, references)
    except KeyError as error:
        runs.fail(body, status, patch, reason=crd.REASON_AGGREGATION_FAILED, generation=generation,
                  condition=crd.EVALUATED, message=f"evaluator Job {job_name} completed but {error.args[0]}")
        return
    metrics["leaderboard"] = board
    if best is not None:  # no AUC without both classes: no best either
        metrics["best"] = best
    patch.status.update({
        "phase": crd.SUCCEEDED,
        "completionTime": now,
        "observedGeneration": generation,
        **metrics,
        "shardResults": st.shard_summaries(aggregated["shards"]),
        # The aggregate's rows exactly, whatever the last heartbeats said.
        "progress": progress_lib.without_none({**progress_lib.final_evaluation_progress(
            progress_lib.evaluation_progress(runs.model_store(namespace).heartbeats(evaluation), parsed.shards),
            metrics["rows"]), "stalled": []}),
        "conditions": st.with_conditions(status, [
            (crd.EVALUATED, True, crd.REASON_AGGREGATED,
             f"{metrics['rows']} rows in {parsed.shards} shards, accuracy {metrics['accuracy']}"),
            (crd.SUCCEEDED_CONDITION, True, crd.REASON_AGGREGATED, f"accuracy {metrics['accuracy']}"),
        ], now=now, generation=generation),
    })
    runs.wrote_phase(uid, crd.SUCCEEDED)
    if metrics_lib.first_time(uid, "succeeded"):
        metrics_lib.ROWS_SCORED.inc(metrics["rows"])
    kopf.event(body, type="Normal", reason=crd.EVENT_SUCCEEDED,
               message=f"Phase {crd.SUCCEEDED}: accuracy {metrics['accuracy']}, AUC {metrics['auc']}, "
                       f"{metrics['rows']} rows")
