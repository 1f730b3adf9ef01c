"""kopf handlers: TrainingRun -> producer Job -> trainer Job -> model id; EvaluationRun -> model
resolution -> one Indexed evaluator Job -> aggregated metrics.

Shape (STYLE.md, kopf and dask-kubernetes anchors):
- A create/resume handler validates the spec and starts the first step. It does nothing for a CR
  that has already started (status.runName / status.evaluation is set), so a restarted operator
  never re-runs a step.
- A timer per running CR is the level-based reconciler: it reads the current step's Job, copies its
  counts into status, and on success starts the next step. Timers stop once the phase is terminal.
- Jobs have fixed names and are created only when absent (409 = already there), so a retry or a
  restart between "create Job" and "write status" is harmless. Creating a Job always precedes the
  status patch that records it.
- Every phase transition posts an Event. A spec that cannot run ends in phase Failed with a
  Failed condition naming the problem, and a kopf.PermanentError.
"""
from __future__ import annotations

import datetime
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from susy_operator import builders, config, crd, finalizers, k8s, spec as spec_lib, status as st

CONFIG = config.load()
# How often a running CR looks at its Jobs. Each tick of a running CR is one GET of one Job.
POLL_SECONDS = CONFIG.poll_seconds

TRAINING = (crd.GROUP, crd.VERSION, crd.TRAINING_PLURAL)
EVALUATION = (crd.GROUP, crd.VERSION, crd.EVALUATION_PLURAL)


# --- settings -----------------------------------------------------------------------------------

@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    """Triggered once at start: operator-wide settings, each with its reason."""
    # Keep kopf's bookkeeping in annotations under our group, so status holds only our fields
    # (the CRD's status schema is structural; see docs/walkthrough/updates.rst on pruning).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=crd.GROUP)
    # kopf's default, named here so that the uninstall hook (`release-finalizers`) removes the
    # same one; the timers make kopf add it to every running CR (finalizers.py says when).
    settings.persistence.finalizer = finalizers.KOPF_FINALIZER
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=crd.GROUP, key="last-handled-configuration")
    # Our handlers post one Event per transition; kopf's own INFO lines ("Handler ... succeeded")
    # would double them in `kubectl describe`. Warnings and errors still become Events.
    settings.posting.level = logging.WARNING
    # The CRDs ship with the chart and exist before the operator starts: resolve them once at
    # start-up instead of watching CustomResourceDefinitions and Namespaces (less RBAC, fewer watches).
    settings.scanning.disabled = True
    # Sync handlers run in threads; the default pool has CPUs + 4 of them (6 on a 2-CPU node), and
    # 50 EvaluationRuns created at once would queue behind those few.
    settings.execution.max_workers = CONFIG.max_workers
    # A server-side watch timeout below the client one: the server ends each stream cleanly and
    # kopf reconnects from the last resourceVersion, instead of a stream that silently stops
    # delivering after a network hiccup (kopf docs/configuration.rst, "API timeouts").
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # One API call (not a watch) that hangs for a minute is failed and retried, rather than holding
    # its object's handler for kopf's default of 5 minutes.
    settings.networking.request_timeout = 60
    if CONFIG.store_uri is None:
        logger.warning("MONGODB_URI is not set: runs will wait at their first store read.")
    else:
        try:
            _store()  # connect (and import the store module) now, not inside the first CR's handler
        except Exception as error:  # noqa: BLE001 - the handlers retry; the operator must still start
            logger.warning(f"The store is not reachable yet: {error}")


@kopf.on.probe(id="config")
def probe(**_: Any) -> dict[str, Any]:
    """Liveness (`--liveness`): answers while the event loop runs; shows what Jobs will get."""
    return {"image": CONFIG.image, "kafka": CONFIG.kafka_bootstrap, "pollSeconds": POLL_SECONDS}


# --- store access -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _store() -> Any:
    from susy_pipeline import store  # no TensorFlow, no Kafka (contracts.md §2)

    if CONFIG.store_uri is None:
        raise kopf.TemporaryError("MONGODB_URI is not set for the operator", delay=60)
    return store.open_store(CONFIG.store_uri, database=CONFIG.database)


def _store_errors_are_temporary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A store that is down for a moment is a reason to retry soon, not kopf's default 60 s backoff."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from susy_pipeline.store import ModelNotFound, StoreError

        try:
            return fn(*args, **kwargs)
        except ModelNotFound:
            raise
        except StoreError as error:
            raise kopf.TemporaryError(f"model store: {error}", delay=max(POLL_SECONDS, 10)) from error
    return wrapper


def _model_id(record: Mapping[str, Any]) -> str:
    for key in ("model_id", "id", "_id"):
        if record.get(key):
            return str(record[key])
    raise KeyError("model record without an id")


def _owner(body: Mapping[str, Any]) -> builders.Owner:
    return builders.Owner.from_body(body)


def _ensure_job(body: kopf.Body, job: dict[str, Any], logger: kopf.Logger) -> tuple[dict[str, Any], bool]:
    """Create-if-absent at the edge. A same-named Job of an older CR instance is not ours: wait."""
    kopf.adopt(job, owner=body)
    existing, created = k8s.create_job_if_absent(job)
    if not k8s.owned_by(existing, body["metadata"]["uid"]):
        raise kopf.TemporaryError(f"Job {job['metadata']['name']} belongs to an older {body['kind']} "
                                  "of the same name; waiting for its garbage collection", delay=5)
    if created:
        logger.info(f"Created Job {job['metadata']['name']}.")
        kopf.event(body, type="Normal", reason=crd.EVENT_JOB_CREATED,
                   message=f"Created Job {job['metadata']['name']}")
    return existing, created


def _fail(body: kopf.Body, status: Mapping[str, Any], patch: kopf.Patch, *, reason: str, message: str,
          generation: int | None, condition: str | None = None) -> None:
    """Phase Failed with its condition; `condition` (the step that failed) is set False with the same reason."""
    now = st.now_rfc3339()
    patch.status.update(st.failed_patch(status, reason=reason, message=message, now=now, generation=generation))
    if condition is not None:
        patch.status["conditions"] = st.with_condition(
            {"conditions": patch.status["conditions"]}, condition, False, reason=reason, message=message,
            now=now, generation=generation)
    kopf.event(body, type="Warning", reason=crd.EVENT_FAILED, message=f"{reason}: {message}")


def _pod_problems(job: Mapping[str, Any]) -> list[str]:
    meta = job.get("metadata") or {}
    try:
        return st.pod_problems(k8s.list_job_pods(meta["namespace"], meta["name"]))
    except Exception as err:  # noqa: BLE001 - the Job's own reason still fails the run
        logging.getLogger(__name__).warning("cannot list the pods of Job %s: %s", meta.get("name"), err)
        return []


def _job_complete(body: kopf.Body, job: Mapping[str, Any], component: str, step: str,
                  status: Mapping[str, Any], patch: kopf.Patch, generation: int | None) -> bool:
    """Copy the Job's counts into status.jobs; True once it has completed. A failed Job fails the
    CR, with the Job controller's reason on the Failed condition and on the step's condition."""
    summary = st.job_summary(job)
    if (status.get("jobs") or {}).get(component) != summary:
        patch.status["jobs"] = {component: summary}
    state = st.job_state(job)
    if state == "Failed":
        reason, message = st.job_failure_message(job)
        problems = _pod_problems(job)
        if problems:  # the Job says only that it failed; its pods say why (OOMKilled, exit 1, ...)
            message += "; " + "; ".join(problems)
        _fail(body, status, patch, reason=reason, message=message, generation=generation, condition=step)
    return state == "Complete"


def _parse_spec(parse: Callable[[Mapping[str, Any]], Any], body: kopf.Body, spec: kopf.Spec,
                status: Mapping[str, Any], patch: kopf.Patch, generation: int | None) -> Any:
    """The parsed spec; an invalid one ends the CR in Failed (InvalidSpec) and stops the handler."""
    try:
        return parse(spec)
    except spec_lib.SpecError as error:
        _fail(body, status, patch, reason=crd.REASON_INVALID_SPEC, message=str(error), generation=generation)
        raise kopf.PermanentError(f"invalid spec: {error}") from error


def _running(status: Mapping[str, Any], annotations: Mapping[str, str], **_: Any) -> bool:
    """The timers' filter; while it holds, kopf keeps its finalizer on the CR (finalizers.py)."""
    return finalizers.is_followed(status, annotations)


@kopf.on.resume(*TRAINING, annotations={finalizers.RELEASED_ANNOTATION: kopf.PRESENT})
@kopf.on.resume(*EVALUATION, annotations={finalizers.RELEASED_ANNOTATION: kopf.PRESENT})
def reclaim(annotations: kopf.Annotations, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    """Triggered on start for a CR an uninstall released (the chart's pre-delete hook, finalizers.py):
    removes the annotation, so the reconciler timer follows the CR again. Writes no status."""
    reclaim = finalizers.reclaim_patch(annotations)
    if reclaim is not None:
        for key, value in reclaim["metadata"]["annotations"].items():
            patch.metadata.annotations[key] = value
        logger.info("Following this run again: an earlier uninstall had released it.")


# --- TrainingRun --------------------------------------------------------------------------------

@kopf.on.resume(*TRAINING)
@kopf.on.create(*TRAINING)
@_store_errors_are_temporary
def start_training(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
                   namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    """Triggered by a new TrainingRun (and on operator start). Writes status.runName, phase Producing
    and the Produced condition, and creates the producer Job; an invalid spec ends in Failed."""
    if status.get("runName") or status.get("phase") in crd.TERMINAL_PHASES:
        return  # already started: the timer `reconcile_training` follows it from here
    generation = meta.get("generation")
    parsed = _parse_spec(spec_lib.parse_training_run, body, spec, status, patch, generation)
    run = spec_lib.run_name(namespace, name, uid)
    job, _ = _ensure_job(body, builders.producer_job(_owner(body), parsed, run, CONFIG.job_config), logger)
    now = st.now_rfc3339()
    patch.status.update({
        "phase": crd.PRODUCING,
        "runName": run,
        "startTime": now,
        "observedGeneration": generation,
        "jobs": {crd.PRODUCER: st.job_summary(job)},
        "conditions": st.with_conditions(status, [
            (crd.PRODUCED, False, crd.REASON_JOB_CREATED, f"producer Job {job['metadata']['name']} created"),
            (crd.TRAINED, False, crd.REASON_WAITING, "waiting for the producer"),
            (crd.SUCCEEDED_CONDITION, False, crd.REASON_JOB_RUNNING, "producing"),
        ], now=now, generation=generation),
    })
    kopf.event(body, type="Normal", reason=crd.EVENT_STARTED,
               message=f"Phase {crd.PRODUCING}: run {run}, producer Job {job['metadata']['name']}")


@kopf.timer(*TRAINING, interval=POLL_SECONDS, when=_running)
@_store_errors_are_temporary
def reconcile_training(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
                       namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    """Every POLL_SECONDS while running: follows the producer, then the trainer Job. Writes
    status.jobs, rowsProduced and kafka (offsets) after producing, modelId at the end."""
    generation = meta.get("generation")
    run = status.get("runName")
    if not run:
        return
    # Parsed again: the spec may have changed under a running CR (no CEL rules on this cluster).
    parsed = _parse_spec(spec_lib.parse_training_run, body, spec, status, patch, generation)
    owner = _owner(body)
    phase = status.get("phase")
    component = crd.PRODUCER if phase == crd.PRODUCING else crd.TRAINER
    build = builders.producer_job if component == crd.PRODUCER else builders.trainer_job
    job = k8s.read_job(namespace, builders.job_name(name, component))
    if job is None or not k8s.owned_by(job, uid):
        # Deleted by hand (or by the TTL controller before we looked): a fresh one of the same step.
        job, _ = _ensure_job(body, build(owner, parsed, run, CONFIG.job_config), logger)
    step = crd.PRODUCED if component == crd.PRODUCER else crd.TRAINED
    if not _job_complete(body, job, component, step, status, patch, generation):
        return
    now = st.now_rfc3339()
    store = _store()
    if component == crd.PRODUCER:
        production = store.get_production(run)
        if production is None:
            _fail(body, status, patch, reason=crd.REASON_RECORD_MISSING, generation=generation, condition=step,
                  message=f"producer Job {job['metadata']['name']} succeeded but the store has no "
                          f"production record for run {run}")
            return
        trainer, _ = _ensure_job(body, builders.trainer_job(owner, parsed, run, CONFIG.job_config), logger)
        rows = int(production.get("rows") or 0)
        offsets = [{"partition": int(p), "start": int(r[0]), "end": int(r[1])}
                   for p, r in sorted((production.get("partitions") or {}).items(), key=lambda kv: int(kv[0]))]
        patch.status.update({
            "phase": crd.TRAINING,
            "rowsProduced": rows,
            "kafka": {"topic": production.get("topic", parsed.kafka.topic), "offsets": offsets},
            "jobs": {crd.PRODUCER: st.job_summary(job), crd.TRAINER: st.job_summary(trainer)},
            "conditions": st.with_conditions(status, [
                (crd.PRODUCED, True, crd.REASON_JOB_SUCCEEDED, f"{rows} rows in topic {parsed.kafka.topic}"),
                (crd.TRAINED, False, crd.REASON_JOB_CREATED, f"trainer Job {trainer['metadata']['name']} created"),
            ], now=now, generation=generation),
        })
        kopf.event(body, type="Normal", reason=crd.EVENT_STEP_SUCCEEDED,
                   message=f"Phase {crd.TRAINING}: producer wrote {rows} rows; trainer Job "
                           f"{trainer['metadata']['name']}")
        return

    models = store.list_models(run=run)
    if not models:
        _fail(body, status, patch, reason=crd.REASON_RECORD_MISSING, generation=generation, condition=step,
              message=f"trainer Job {job['metadata']['name']} succeeded but the store has no model "
                      f"for run {run}")
        return
    model_id = _model_id(models[0])  # newest first
    patch.status.update({
        "phase": crd.SUCCEEDED,
        "modelId": model_id,
        "completionTime": now,
        "observedGeneration": generation,
        "conditions": st.with_conditions(status, [
            (crd.TRAINED, True, crd.REASON_JOB_SUCCEEDED, f"model {model_id}"),
            (crd.SUCCEEDED_CONDITION, True, crd.REASON_JOB_SUCCEEDED, f"model {model_id}"),
        ], now=now, generation=generation),
    })
    kopf.event(body, type="Normal", reason=crd.EVENT_SUCCEEDED, message=f"Phase {crd.SUCCEEDED}: model {model_id}")


# --- EvaluationRun ------------------------------------------------------------------------------

class _Wait(Exception):
    """The model reference cannot be resolved yet (its TrainingRun is still running)."""


class _Unresolvable(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _age_seconds(timestamp: str | None) -> float:
    if not timestamp:
        return 0.0
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return (datetime.datetime.now(datetime.timezone.utc) - then).total_seconds()


def _resolve_model(namespace: str, ref: spec_lib.ModelReference, created: str | None) -> str:
    """The model id a reference names now. Raises _Wait or _Unresolvable."""
    from susy_pipeline.store import ModelNotFound

    if ref.training_run is not None:
        tr = k8s.read_training_run(namespace, ref.training_run)
        if tr is None:
            # `kubectl apply -f manifests/examples/` creates evaluationrun.yaml first: give the
            # TrainingRun a moment to appear before calling the reference wrong.
            if _age_seconds(created) < CONFIG.missing_run_grace_seconds:
                raise _Wait(f"TrainingRun {ref.training_run} does not exist yet")
            raise _Unresolvable(crd.REASON_TRAINING_RUN_NOT_FOUND,
                                f"TrainingRun {ref.training_run} does not exist in namespace {namespace}")
        tr_status = tr.get("status") or {}
        if tr_status.get("phase") == crd.FAILED:
            raise _Unresolvable(crd.REASON_TRAINING_RUN_FAILED,
                                f"TrainingRun {ref.training_run} failed: {tr_status.get('message', '')}")
        if tr_status.get("phase") != crd.SUCCEEDED or not tr_status.get("runName"):
            raise _Wait(f"TrainingRun {ref.training_run} is {tr_status.get('phase') or 'not started'}")
        store_ref = f"latest:{tr_status['runName']}"
    else:
        store_ref = ref.store_ref
    try:
        return _model_id(_store().resolve_model(store_ref))
    except ModelNotFound as error:
        raise _Unresolvable(crd.REASON_MODEL_NOT_FOUND, f"no model for {ref.describe()}: {error}") from error


def _start_evaluator(body: kopf.Body, parsed: spec_lib.EvaluationRunSpec, status: Mapping[str, Any],
                     evaluation: str, patch: kopf.Patch, logger: kopf.Logger, generation: int | None) -> None:
    """Resolve the model and create the Indexed Job, or record why not (wait, or fail)."""
    namespace = body["metadata"]["namespace"]
    now = st.now_rfc3339()
    try:
        model_id = _resolve_model(namespace, parsed.model, body["metadata"].get("creationTimestamp"))
    except _Wait as wait:
        conditions = st.with_condition(status, crd.MODEL_RESOLVED, False, reason=crd.REASON_WAITING_FOR_TRAINING_RUN,
                                       message=str(wait), now=now, generation=generation)
        if status.get("phase") == crd.PENDING and conditions == st.conditions(status):
            return  # still waiting for the same thing: no patch, no Event
        kopf.event(body, type="Normal", reason=crd.EVENT_WAITING, message=str(wait))
        patch.status["phase"] = crd.PENDING
        patch.status["conditions"] = conditions
        return
    except _Unresolvable as error:
        _fail(body, status, patch, reason=error.reason, message=error.message, generation=generation,
              condition=crd.MODEL_RESOLVED)
        return
    job, _ = _ensure_job(body, builders.evaluator_job(_owner(body), parsed, evaluation, model_id,
                                                      CONFIG.job_config), logger)
    patch.status.update({
        "phase": crd.EVALUATING,
        "modelId": model_id,
        "shards": st.shard_counts(job, parsed.shards),
        "jobs": {crd.EVALUATOR: st.job_summary(job)},
        "conditions": st.with_conditions(status, [
            (crd.MODEL_RESOLVED, True, crd.REASON_MODEL_RESOLVED, f"{parsed.model.describe()} is {model_id}"),
            (crd.EVALUATED, False, crd.REASON_JOB_CREATED,
             f"evaluator Job {job['metadata']['name']}: {parsed.shards} shards, "
             f"parallelism {parsed.effective_parallelism}"),
        ], now=now, generation=generation),
    })
    kopf.event(body, type="Normal", reason=crd.EVENT_STARTED,
               message=f"Phase {crd.EVALUATING}: model {model_id}, {parsed.shards} shards, "
                       f"Job {job['metadata']['name']}")


@kopf.on.resume(*EVALUATION)
@kopf.on.create(*EVALUATION)
@_store_errors_are_temporary
def start_evaluation(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
                     namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    """Triggered by a new EvaluationRun (and on operator start). Writes status.evaluation, resolves
    the model (status.modelId) and creates the Indexed evaluator Job, or waits in Pending for a
    TrainingRun still running; an invalid spec or an unknown model ends in Failed."""
    if status.get("evaluation") or status.get("phase") in crd.TERMINAL_PHASES:
        return  # already started: the timer `reconcile_evaluation` follows it from here
    generation = meta.get("generation")
    parsed = _parse_spec(spec_lib.parse_evaluation_run, body, spec, status, patch, generation)
    evaluation = spec_lib.run_name(namespace, name, uid)
    patch.status.update({
        "phase": crd.PENDING,
        "evaluation": evaluation,
        "startTime": st.now_rfc3339(),
        "observedGeneration": generation,
        "shards": st.shard_counts(None, parsed.shards),
    })
    _start_evaluator(body, parsed, status, evaluation, patch, logger, generation)


def _shard_summary(results: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    summary = []
    for r in sorted(results, key=lambda r: int(r["shard_index"])):
        rows = int(r.get("rows") or 0)
        summary.append({
            "index": int(r["shard_index"]),
            "rows": rows,
            "accuracy": round(int(r.get("correct") or 0) / rows, 6) if rows else 0.0,
            "seconds": round(float(r.get("seconds") or 0.0), 3),
            "rowsPerSecond": round(float(r.get("rows_per_second") or 0.0), 1),
        })
    return summary[:100]  # status stays small; the store keeps every shard


def _metrics(aggregated: Mapping[str, Any]) -> dict[str, Any]:
    """status fields from `susy_pipeline.evaluation.aggregate` (contracts.md §3)."""
    def pick(*keys: str) -> Any:
        for key in keys:
            if key in aggregated:
                return aggregated[key]
        return None

    confusion = pick("confusion") or {}
    return {
        "accuracy": pick("accuracy"),
        "auc": pick("auc", "roc_auc"),
        "logLoss": pick("log_loss", "logLoss"),
        "rows": pick("rows"),
        "confusion": {k: int(confusion[k]) for k in ("tn", "fp", "fn", "tp") if k in confusion},
    }


@kopf.timer(*EVALUATION, interval=POLL_SECONDS, when=_running)
@_store_errors_are_temporary
def reconcile_evaluation(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
                         namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    """Every POLL_SECONDS while running: retries model resolution while Pending; then follows the
    evaluator Job into status.shards, and on completion aggregates the shard results from the
    store into accuracy, auc, logLoss, rows, confusion and shardResults."""
    from susy_pipeline.evaluation import IncompleteEvaluation, aggregate

    generation = meta.get("generation")
    evaluation = status.get("evaluation")
    if not evaluation:
        return
    parsed = _parse_spec(spec_lib.parse_evaluation_run, body, spec, status, patch, generation)
    if status.get("phase") == crd.PENDING or not status.get("modelId"):
        _start_evaluator(body, parsed, status, evaluation, patch, logger, generation)
        return
    job = k8s.read_job(namespace, builders.job_name(name, crd.EVALUATOR, parsed.shards))
    if job is None or not k8s.owned_by(job, uid):
        job, _ = _ensure_job(body, builders.evaluator_job(_owner(body), parsed, evaluation, status["modelId"],
                                                          CONFIG.job_config), logger)
    shards = st.shard_counts(job, parsed.shards)
    if status.get("shards") != shards:
        patch.status["shards"] = shards
    if not _job_complete(body, job, crd.EVALUATOR, crd.EVALUATED, status, patch, generation):
        return
    now = st.now_rfc3339()
    results = _store().shard_results(evaluation)
    try:
        aggregated = aggregate(results, parsed.shards)
    except IncompleteEvaluation as error:
        _fail(body, status, patch, reason=crd.REASON_AGGREGATION_FAILED, generation=generation,
              condition=crd.EVALUATED,
              message=f"evaluator Job {job['metadata']['name']} completed but the shard results are "
                      f"incomplete: {error}")
        return
    metrics = _metrics(aggregated)
    patch.status.update({
        "phase": crd.SUCCEEDED,
        "completionTime": now,
        "observedGeneration": generation,
        **metrics,
        "shardResults": _shard_summary(results),
        "conditions": st.with_conditions(status, [
            (crd.EVALUATED, True, crd.REASON_AGGREGATED,
             f"{metrics['rows']} rows in {parsed.shards} shards, accuracy {metrics['accuracy']}"),
            (crd.SUCCEEDED_CONDITION, True, crd.REASON_AGGREGATED, f"accuracy {metrics['accuracy']}"),
        ], now=now, generation=generation),
    })
    kopf.event(body, type="Normal", reason=crd.EVENT_SUCCEEDED,
               message=f"Phase {crd.SUCCEEDED}: accuracy {metrics['accuracy']}, AUC {metrics['auc']}, "
                       f"{metrics['rows']} rows")

