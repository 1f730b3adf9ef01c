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

import contextlib
import datetime
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import kopf

from susy_operator import builders, config, crd, finalizers, k8s, spec as spec_lib, status as st, steps

CONFIG = config.load()
# How often a running CR looks at its Jobs. Each tick of a running CR is one GET of one Job.
POLL_SECONDS = CONFIG.poll_seconds

# The annotation a Job or pod event sets on its run (a tuple: the key itself has dots).
OBSERVED_FIELD = ("metadata", "annotations", crd.ANNOTATION_OBSERVED)

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


# The condition that says how the current step goes, by phase (TrainingRun and EvaluationRun).
_STEP_CONDITION = {crd.PRODUCING: crd.PRODUCED, crd.TRAINING: crd.TRAINED, crd.EVALUATING: crd.EVALUATED,
                   crd.PENDING: crd.MODEL_RESOLVED}


def _store_errors_are_temporary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A store that is down for a moment is a reason to retry soon, not kopf's default 60 s backoff;
    meanwhile the current step's condition says StoreUnavailable (kopf applies a handler's patch
    on a failed attempt too: kopf/_core/engines/daemons.py for timers, processing.py for the rest)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from susy_pipeline.store import ModelNotFound, StoreError

        try:
            return fn(*args, **kwargs)
        except ModelNotFound:
            raise
        except StoreError as error:
            status, patch = kwargs.get("status") or {}, kwargs.get("patch")
            condition = _STEP_CONDITION.get(status.get("phase"))
            if patch is not None and condition is not None:
                patch.status["conditions"] = st.with_condition(
                    status, condition, False, reason=crd.REASON_STORE_UNAVAILABLE, message=f"model store: {error}",
                    now=st.now_rfc3339(), generation=(kwargs.get("meta") or {}).get("generation"))
            raise kopf.TemporaryError(f"model store: {error}", delay=max(min(POLL_SECONDS, 30), 5)) from error
    return wrapper


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
    evaluation = status.get("evaluation") if body.get("kind") == crd.EVALUATION_KIND else None
    if evaluation:
        # An evaluation that failed for good will never finish: its model may be deleted again
        # without --force (store.release_evaluation keeps the shard results).
        try:
            _store().release_evaluation(evaluation)
        except Exception as error:  # noqa: BLE001 - the failure is recorded either way
            logging.getLogger(__name__).warning("cannot release evaluation %s in the store: %s", evaluation, error)


def _job_pods(job: Mapping[str, Any]) -> list[dict[str, Any]]:
    meta = job.get("metadata") or {}
    try:
        return k8s.list_job_pods(meta["namespace"], meta["name"])
    except Exception as err:  # noqa: BLE001 - the Job's own state still drives the run
        logging.getLogger(__name__).warning("cannot list the pods of Job %s: %s", meta.get("name"), err)
        return []


def _may_have_pods_not_starting(job: Mapping[str, Any] | None) -> bool:
    """Only a Job with an active pod that is not ready can have one that cannot start: list pods then."""
    job_status = (job or {}).get("status") or {}
    return int(job_status.get("active") or 0) > int(job_status.get("ready") or 0)


# Phase transitions this process wrote, by CR uid: (phase, monotonic time). The timer and the
# wake-up handler can both look at a CR before kopf has applied the other one's patch; the one
# that sees the older phase steps aside for a moment rather than doing the transition twice.
_written_phases: dict[str, tuple[str, float]] = {}
_STALE_SECONDS = 30.0


class _RunLocks:
    """One lock per run while a handler holds or waits for it: the timer and the wake-up handler
    reconcile a run one at a time. A run's entry goes when no handler is using it, so the registry
    holds only the runs being reconciled at this moment, however many have come and gone."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[str, tuple[threading.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.contextmanager
    def hold(self, uid: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._entries.get(uid) or (threading.Lock(), 0)
            self._entries[uid] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._entries[uid]
                if users == 1:
                    del self._entries[uid]
                else:
                    self._entries[uid] = (lock, users - 1)


_run_locks = _RunLocks()


def _stale(uid: str, status: Mapping[str, Any]) -> bool:
    written = _written_phases.get(uid)
    return (written is not None and written[0] != status.get("phase")
            and time.monotonic() - written[1] < _STALE_SECONDS)


def _wrote_phase(uid: str, phase: str) -> None:
    now = time.monotonic()
    for old in [u for u, (_, t) in _written_phases.items() if now - t > _STALE_SECONDS]:
        del _written_phases[old]  # kopf has long applied those patches
    _written_phases[uid] = (phase, now)


def _follow_step(body: kopf.Body, step: steps.Step, job_name: str, build: Callable[[], dict[str, Any]],
                 status: Mapping[str, Any], patch: kopf.Patch, logger: kopf.Logger, generation: int | None,
                 output_present: Callable[[], bool]) -> tuple[bool, dict[str, Any], dict[str, Any] | None]:
    """Observe the step's Job and act on `steps.decide`: (done, its summary in status.jobs, the Job)."""
    namespace, uid = body["metadata"]["namespace"], body["metadata"]["uid"]
    job = k8s.read_job(namespace, job_name)
    if job is not None and not k8s.owned_by(job, uid):
        raise kopf.TemporaryError(f"Job {job_name} belongs to an older {body['kind']} of the same name; "
                                  "waiting for its garbage collection", delay=5)
    recorded = (status.get("jobs") or {}).get(step.component)
    now = st.now_rfc3339()
    not_starting = st.pods_not_starting(_job_pods(job)) if _may_have_pods_not_starting(job) else []
    decision = steps.decide(step, job, recorded, output_present=output_present, not_starting=not_starting,
                            now=now, grace_seconds=CONFIG.pod_start_grace_seconds)
    if decision.action == steps.CREATE:
        job, _ = _ensure_job(body, build(), logger)
    summary = st.job_summary(job) if job is not None else {**(recorded or {}), "state": "Complete"}
    if decision.not_starting:
        summary["notStarting"] = dict(decision.not_starting)
    if recorded != summary:
        patch.status["jobs"] = {step.component: summary}
        if recorded and recorded.get("notStarting") and not decision.not_starting:
            patch.status["jobs"] = {step.component: {**summary, "notStarting": None}}
    if decision.action == steps.FAIL:
        message = decision.message
        if st.job_state(job) == "Failed":  # the Job says only that it failed; its pods say why
            problems = st.describe_pods(st.pods_failed(_job_pods(job or {})))
            if problems:
                message += "; " + "; ".join(problems)
        _fail(body, status, patch, reason=decision.reason, message=message, generation=generation,
              condition=step.condition)
        return False, summary, job
    current = st.get_condition(status, step.condition) or {}
    if decision.action == steps.WAIT and not decision.not_starting and job is not None and current.get("reason") in (
            crd.REASON_STORE_UNAVAILABLE, crd.REASON_POD_NOT_STARTING):
        # The store is back, or the pod started: say so instead of the old trouble.
        patch.status["conditions"] = st.with_condition(
            status, step.condition, False, reason=crd.REASON_JOB_RUNNING,
            message=f"Job {job['metadata']['name']} running", now=now, generation=generation)
    if decision.not_starting and decision.not_starting != (recorded or {}).get("notStarting"):
        if (recorded or {}).get("notStarting", {}).get("reason") != decision.reason:
            kopf.event(body, type="Warning", reason=crd.EVENT_POD_NOT_STARTING,
                       message=f"{decision.message}; the run fails if this lasts "
                               f"{CONFIG.pod_start_grace_seconds:.0f} s")
        patch.status["conditions"] = st.with_condition(
            status, step.condition, False, reason=crd.REASON_POD_NOT_STARTING, message=decision.message,
            now=now, generation=generation)
    return decision.action == steps.DONE, summary, job


def _parse_training_run(spec: Mapping[str, Any]) -> spec_lib.TrainingRunSpec:
    return spec_lib.parse_training_run(spec, allowed_volume_types=CONFIG.allowed_volume_types)


def _parse_evaluation_run(spec: Mapping[str, Any]) -> spec_lib.EvaluationRunSpec:
    return spec_lib.parse_evaluation_run(spec, allowed_volume_types=CONFIG.allowed_volume_types)


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
        return  # already started: the timer `reconcile` follows it from here
    generation = meta.get("generation")
    parsed = _parse_spec(_parse_training_run, body, spec, status, patch, generation)
    parent: list[tuple[str, bool, str, str]] = []
    if parsed.model.warm_start is not None:
        parent_id = _resolve_parent(body, parsed, status, patch, generation)
        if parent_id is None:
            return  # failed
        patch.status["parentModelId"] = parent_id
        parent = [(crd.MODEL_RESOLVED, True, crd.REASON_MODEL_RESOLVED,
                   f"warm start: {parsed.model.warm_start.describe()} is {parent_id}")]
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
            *parent,
            (crd.PRODUCED, False, crd.REASON_JOB_CREATED, f"producer Job {job['metadata']['name']} created"),
            (crd.TRAINED, False, crd.REASON_WAITING, "waiting for the producer"),
            (crd.SUCCEEDED_CONDITION, False, crd.REASON_JOB_RUNNING, "producing"),
        ], now=now, generation=generation),
    })
    kopf.event(body, type="Normal", reason=crd.EVENT_STARTED,
               message=f"Phase {crd.PRODUCING}: run {run}, producer Job {job['metadata']['name']}")


def _resolve_parent(body: kopf.Body, parsed: spec_lib.TrainingRunSpec, status: Mapping[str, Any],
                    patch: kopf.Patch, generation: int | None) -> str | None:
    """spec.model.warmStart as a model id whose network the spec does not contradict; None once the
    run has failed (unknown parent, or a contradicting field, named). A trainingRun reference not
    yet succeeded: phase Pending, condition ModelResolved False, and kopf retries (TemporaryError)."""
    from susy_pipeline.continual import contradictions
    from susy_pipeline.errors import BadInput

    ref = parsed.model.warm_start
    assert ref is not None
    now = st.now_rfc3339()
    try:
        parent_id = _resolve_model(body["metadata"]["namespace"], ref, body["metadata"].get("creationTimestamp"))
    except _Wait as wait:
        conditions = st.with_condition(status, crd.MODEL_RESOLVED, False, reason=crd.REASON_WAITING_FOR_TRAINING_RUN,
                                       message=f"warm start: {wait}", now=now, generation=generation)
        if status.get("phase") != crd.PENDING or conditions != st.conditions(status):
            kopf.event(body, type="Normal", reason=crd.EVENT_WAITING, message=f"warm start: {wait}")
            patch.status["phase"] = crd.PENDING
            patch.status["conditions"] = conditions
        raise kopf.TemporaryError(f"warm start: {wait}", delay=POLL_SECONDS)
    except _Unresolvable as error:
        _fail(body, status, patch, reason=error.reason, message=f"warm start: {error.message}",
              generation=generation, condition=crd.MODEL_RESOLVED)
        return None
    try:
        problems = contradictions(_store().resolve_model(parent_id), recipe=parsed.model.recipe,
                                  hidden=parsed.model.hidden, dropout=parsed.model.dropout)
    except BadInput as error:  # a parent whose record has no hyper-parameters
        problems = [("warmStart", str(error))]
    if problems:
        _fail(body, status, patch, reason=crd.REASON_INVALID_SPEC, generation=generation,
              message="; ".join(f"spec.model.{field} contradicts the warm-start parent, model {parent_id}: {why}"
                                for field, why in problems))
        return None
    return parent_id


def _training_output(step: steps.Step, run: str) -> bool:
    store = _store()
    return (store.get_production(run) is not None) if step.component == crd.PRODUCER \
        else bool(store.list_models(run=run))


def _reconcile_training(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
                        namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger) -> None:
    """Follow the current step's Job (steps.TRAINING_STEPS); on success start the next step. Writes
    status.jobs, rowsProduced and kafka (offsets) after producing, modelId at the end."""
    generation = meta.get("generation")
    run = status.get("runName")
    step = steps.training_step(status.get("phase"))
    if not run or step is None or _stale(uid, status):
        return
    parsed = _parse_spec(_parse_training_run, body, spec, status, patch, generation)
    owner = _owner(body)
    build = builders.producer_job if step.component == crd.PRODUCER else builders.trainer_job
    parent_id = () if step.component == crd.PRODUCER else (status.get("parentModelId"),)
    done, summary, _ = _follow_step(body, step, builders.job_name(name, step.component),
                                 lambda: build(owner, parsed, run, CONFIG.job_config, *parent_id), status,
                                 patch, logger,
                                 generation, output_present=lambda: _training_output(step, run))
    if not done:
        return
    now = st.now_rfc3339()
    store = _store()
    job_name = summary.get("name", builders.job_name(name, step.component))
    if step.component == crd.PRODUCER:
        production = store.get_production(run)
        if production is None:
            _fail(body, status, patch, reason=crd.REASON_RECORD_MISSING, generation=generation,
                  condition=step.condition,
                  message=f"producer Job {job_name} succeeded but the store has no production record for run {run}")
            return
        trainer, _ = _ensure_job(body, builders.trainer_job(owner, parsed, run, CONFIG.job_config,
                                                            status.get("parentModelId")), logger)
        rows = int(production.get("rows") or 0)
        offsets = st.kafka_offsets(production)
        patch.status.update({
            "phase": crd.TRAINING,
            "rowsProduced": rows,
            "kafka": {"topic": production.get("topic", parsed.kafka.topic), "offsets": offsets},
            "jobs": {crd.PRODUCER: summary, crd.TRAINER: st.job_summary(trainer)},
            "conditions": st.with_conditions(status, [
                (crd.PRODUCED, True, crd.REASON_JOB_SUCCEEDED, f"{rows} rows in topic {parsed.kafka.topic}"),
                (crd.TRAINED, False, crd.REASON_JOB_CREATED, f"trainer Job {trainer['metadata']['name']} created"),
            ], now=now, generation=generation),
        })
        _wrote_phase(uid, crd.TRAINING)
        kopf.event(body, type="Normal", reason=crd.EVENT_STEP_SUCCEEDED,
                   message=f"Phase {crd.TRAINING}: producer wrote {rows} rows; trainer Job "
                           f"{trainer['metadata']['name']}")
        return

    models = store.list_models(run=run)
    if not models:
        _fail(body, status, patch, reason=crd.REASON_RECORD_MISSING, generation=generation, condition=step.condition,
              message=f"trainer Job {job_name} succeeded but the store has no model for run {run}")
        return
    model_id = str(models[0]["model_id"])  # newest first
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
    _wrote_phase(uid, crd.SUCCEEDED)
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
        action, reason, detail = steps.training_run_reference(
            ref.training_run, namespace, tr, _age_seconds(created), CONFIG.missing_run_grace_seconds)
        if action == steps.WAIT:
            raise _Wait(detail)
        if action == steps.FAIL:
            raise _Unresolvable(reason, detail)
        store_ref = detail
    else:
        store_ref = ref.store_ref
    try:
        return str(_store().resolve_model(store_ref)["model_id"])
    except ModelNotFound as error:
        raise _Unresolvable(crd.REASON_MODEL_NOT_FOUND, f"no model for {ref.describe()}: {error}") from error


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
                ids.append(_resolve_model(namespace, ref, body["metadata"].get("creationTimestamp")))
            except _Wait as wait:
                waiting = waiting or wait
            except _Unresolvable as error:
                if parsed.models:
                    raise _Unresolvable(error.reason, f"spec.models[{i}]: {error.message}") from error
                raise
        if waiting is not None:
            raise waiting
        model_id = ids[0]
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
    # Claimed before any shard starts, so `models delete` refuses from now on, not only once a
    # shard pod has started (the shards claim it again; an upsert).
    for distinct in dict.fromkeys(ids):
        _store().claim_model(evaluation, distinct, parsed.shards)
    job, _ = _ensure_job(body, builders.evaluator_job(_owner(body), parsed, evaluation, ids,
                                                      CONFIG.job_config), logger)
    resolved = "; ".join(f"{ref.describe()} is {i}" for ref, i in zip(parsed.references, ids))
    patch.status.update({
        "phase": crd.EVALUATING,
        "modelId": model_id,
        "models": [{"reference": ref.text, "modelId": i} for ref, i in zip(parsed.references, ids)],
        "shards": st.shard_counts(job, parsed.shards),
        "jobs": {crd.EVALUATOR: st.job_summary(job)},
        "conditions": st.with_conditions(status, [
            (crd.MODEL_RESOLVED, True, crd.REASON_MODEL_RESOLVED, resolved),
            (crd.EVALUATED, False, crd.REASON_JOB_CREATED,
             f"evaluator Job {job['metadata']['name']}: {parsed.shards} shards, "
             f"parallelism {parsed.effective_parallelism}"),
        ], now=now, generation=generation),
    })
    kopf.event(body, type="Normal", reason=crd.EVENT_STARTED,
               message=f"Phase {crd.EVALUATING}: model{'s' if len(ids) > 1 else ''} {', '.join(ids)}, "
                       f"{parsed.shards} shards, "
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
        return  # already started: the timer `reconcile` follows it from here
    generation = meta.get("generation")
    parsed = _parse_spec(_parse_evaluation_run, body, spec, status, patch, generation)
    evaluation = spec_lib.run_name(namespace, name, uid)
    patch.status.update({
        "phase": crd.PENDING,
        "evaluation": evaluation,
        "startTime": st.now_rfc3339(),
        "observedGeneration": generation,
        "shards": st.shard_counts(None, parsed.shards),
    })
    _start_evaluator(body, parsed, status, evaluation, patch, logger, generation)


def _reconcile_evaluation(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
                          namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger) -> None:
    """Retry model resolution while Pending; then follow the evaluator Job (steps.EVALUATION_STEP)
    into status.shards, and on completion aggregate the shard results from the store into
    accuracy, auc, logLoss, rows, confusion and shardResults."""
    from susy_pipeline.evaluation import IncompleteEvaluation, aggregate

    generation = meta.get("generation")
    evaluation = status.get("evaluation")
    if not evaluation or _stale(uid, status):
        return
    parsed = _parse_spec(_parse_evaluation_run, body, spec, status, patch, generation)
    if status.get("phase") == crd.PENDING or not status.get("modelId"):
        _start_evaluator(body, parsed, status, evaluation, patch, logger, generation)
        return
    step = steps.EVALUATION_STEP
    job_name = builders.job_name(name, crd.EVALUATOR, parsed.shards)
    done, _, job = _follow_step(
        body, step, job_name,
        lambda: builders.evaluator_job(_owner(body), parsed, evaluation, _model_ids(status), CONFIG.job_config),
        status, patch, logger, generation,
        output_present=lambda: len(_store().shard_results(evaluation)) >= parsed.shards)
    shards = st.shard_counts(job, parsed.shards) if job is not None else status.get("shards")
    if status.get("shards") != shards:
        patch.status["shards"] = shards
    if not done:
        return
    now = st.now_rfc3339()
    results = _store().shard_results(evaluation)
    try:
        aggregated = aggregate(results, parsed.shards)
    except IncompleteEvaluation as error:
        _fail(body, status, patch, reason=crd.REASON_AGGREGATION_FAILED, generation=generation,
              condition=crd.EVALUATED,
              message=f"evaluator Job {job_name} completed but the shard results are incomplete: {error}")
        return
    metrics = st.evaluation_metrics(aggregated)
    references = status.get("models") or [{"reference": parsed.model.text, "modelId": status["modelId"]}]
    try:
        board, best = st.leaderboard(aggregated, references)
    except KeyError as error:
        _fail(body, status, patch, reason=crd.REASON_AGGREGATION_FAILED, generation=generation,
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
        "shardResults": st.shard_summaries(results),
        "conditions": st.with_conditions(status, [
            (crd.EVALUATED, True, crd.REASON_AGGREGATED,
             f"{metrics['rows']} rows in {parsed.shards} shards, accuracy {metrics['accuracy']}"),
            (crd.SUCCEEDED_CONDITION, True, crd.REASON_AGGREGATED, f"accuracy {metrics['accuracy']}"),
        ], now=now, generation=generation),
    })
    _wrote_phase(uid, crd.SUCCEEDED)
    kopf.event(body, type="Normal", reason=crd.EVENT_SUCCEEDED,
               message=f"Phase {crd.SUCCEEDED}: accuracy {metrics['accuracy']}, AUC {metrics['auc']}, "
                       f"{metrics['rows']} rows")


# --- following a running run ------------------------------------------------------------------

_RECONCILERS = {crd.TRAINING_KIND: _reconcile_training, crd.EVALUATION_KIND: _reconcile_evaluation}


@kopf.timer(*TRAINING, interval=POLL_SECONDS, when=_running)
@kopf.timer(*EVALUATION, interval=POLL_SECONDS, when=_running)
@kopf.on.field(*TRAINING, field=OBSERVED_FIELD, when=_running)
@kopf.on.field(*EVALUATION, field=OBSERVED_FIELD, when=_running)
@_store_errors_are_temporary
def reconcile(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
              namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    """Triggered at once when a Job or pod event marked a run (`job_changed`, `pod_changed`), and
    every POLL_SECONDS while it runs (the safety net for a missed event): the run's kind's
    `_reconcile_training` or `_reconcile_evaluation`, one handler at a time per run."""
    with _run_locks.hold(uid):
        _RECONCILERS[body["kind"]](body, spec, status, meta, name, namespace, uid, patch, logger)


# --- waking a run when its Job or pods change ------------------------------------------------------

_OWNER_PLURALS = {crd.TRAINING_KIND: crd.TRAINING_PLURAL, crd.EVALUATION_KIND: crd.EVALUATION_PLURAL}
_OWNER_LABELS = {crd.LABEL_TRAINING_RUN: crd.TRAINING_PLURAL, crd.LABEL_EVALUATION_RUN: crd.EVALUATION_PLURAL}


@kopf.on.event("batch", "v1", "jobs", labels={crd.LABEL_MANAGED_BY: crd.MANAGED_BY})
def job_changed(type: str, body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    """Triggered by every change of a Job the operator made: when it has finished (or was deleted),
    marks its owner (crd.ANNOTATION_OBSERVED), whose `wake_*` handler then takes the next step."""
    state = "Deleted" if type == "DELETED" else st.job_state(body)
    if state not in ("Complete", "Failed", "Deleted"):
        return
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        plural = _OWNER_PLURALS.get(ref.get("kind"))
        if plural is not None and ref.get("apiVersion") == crd.API_VERSION:
            k8s.wake_owner(plural, namespace, ref["name"], f"{name}:{state}")


@kopf.on.event("", "v1", "pods", labels={crd.LABEL_MANAGED_BY: crd.MANAGED_BY})
def pod_changed(body: kopf.Body, namespace: str, name: str, labels: kopf.Labels, **_: Any) -> None:
    """Triggered by every change of a pipeline pod: when it cannot start (st.pods_not_starting),
    marks its run, so that the run's condition says so within seconds."""
    problems = st.pods_not_starting([body])
    if not problems:
        return
    for label, plural in _OWNER_LABELS.items():
        if labels.get(label):
            k8s.wake_owner(plural, namespace, labels[label], f"{name}:{problems[0][1]}")

