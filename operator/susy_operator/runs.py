"""What every kind of run shares while the operator reconciles it: the store, following one step's
Job, failing a run, model references, and the bookkeeping that keeps two handlers of one run apart.

The kinds' own behaviour is in `training_run.py` and `evaluation_run.py`; `handlers.py` only wires
kopf to them. The rules they all keep:
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

from susy_operator import builders, config, crd, k8s, metrics, progress as progress_lib, spec as spec_lib, \
    status as st, steps, tenancy

CONFIG = config.load()
# How often a running CR looks at its Jobs. Each tick of a running CR is one GET of one Job.
POLL_SECONDS = CONFIG.poll_seconds


# --- store access -------------------------------------------------------------------------------

def model_store(namespace: str) -> Any:
    """The model store as a run of `namespace` sees it: its database (the chart's
    store.perNamespaceDatabase, else store.database), through the operator's own URI, and in it
    only the records of `namespace` (its models, productions, shard results and aliases)."""
    return _open_store(CONFIG.job_config.database_for(namespace)).in_namespace(namespace)


@functools.lru_cache(maxsize=64)
def _open_store(database: str) -> Any:
    """One connection per database (opened on first use, then kept)."""
    from susy_pipeline import store  # no TensorFlow, no Kafka (contracts.md §2)

    if CONFIG.store_uri is None:
        raise kopf.TemporaryError("MONGODB_URI is not set for the operator", delay=60)
    return store.open_store(CONFIG.store_uri, database=database)


def connect_store() -> None:
    """Open the store of the shared database now (and import the store module), not inside the
    first CR's handler."""
    _open_store(CONFIG.database)


# The condition that says how the current step goes, by phase (TrainingRun and EvaluationRun).
_STEP_CONDITION = {crd.PRODUCING: crd.PRODUCED, crd.TRAINING: crd.TRAINED, crd.EVALUATING: crd.EVALUATED,
                   crd.PENDING: crd.MODEL_RESOLVED}


def store_errors_are_temporary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A store that is down for a moment is a reason to retry soon, not kopf's default 60 s backoff;
    meanwhile the current step's condition says StoreUnavailable (kopf applies a handler's patch
    on a failed attempt too: kopf/_core/engines/daemons.py for timers, processing.py for the rest).
    Wraps a kopf handler (kopf calls it with keyword arguments only); functools.wraps keeps the
    handler's name, which kopf takes as its id (kopf/_core/intents/registries.py get_callable_id)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from susy_pipeline.store import ModelNotFound, StoreError

        try:
            return fn(*args, **kwargs)
        except ModelNotFound:
            raise
        except StoreError as error:
            status, patch = kwargs.get("status") or {}, kwargs.get("patch")
            condition = _STEP_CONDITION.get(steps.step_phase(status))
            if patch is not None and condition is not None:
                patch.status["conditions"] = st.with_condition(
                    status, condition, False, reason=crd.REASON_STORE_UNAVAILABLE, message=f"model store: {error}",
                    now=st.now_rfc3339(), generation=(kwargs.get("meta") or {}).get("generation"))
            raise kopf.TemporaryError(f"model store: {error}", delay=max(min(POLL_SECONDS, 30), 5)) from error
    return wrapper


# --- model references ---------------------------------------------------------------------------

class Wait(Exception):
    """The model reference cannot be resolved yet (its TrainingRun is still running)."""


class Unresolvable(Exception):
    """The model reference names no model, and never will: the run fails with `reason`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _age_seconds(timestamp: str | None) -> float:
    if not timestamp:
        return 0.0
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return (datetime.datetime.now(datetime.timezone.utc) - then).total_seconds()


def resolve_model(namespace: str, ref: spec_lib.ModelReference, created: str | None) -> str:
    """The model id a reference (an EvaluationRun's model, a TrainingRun's warm start) names now.
    Raises Wait or Unresolvable."""
    from susy_pipeline.store import ModelNotFound

    if ref.training_run is not None:
        tr = k8s.read_training_run(namespace, ref.training_run)
        action, reason, detail = steps.training_run_reference(
            ref.training_run, namespace, tr, _age_seconds(created), CONFIG.missing_run_grace_seconds)
        if action == steps.WAIT:
            raise Wait(detail)
        if action == steps.FAIL:
            raise Unresolvable(reason, detail)
        store_ref = detail
    else:
        store_ref = ref.store_ref
    try:
        return str(model_store(namespace).resolve_model(store_ref)["model_id"])
    except ModelNotFound as error:
        raise Unresolvable(crd.REASON_MODEL_NOT_FOUND, f"no model for {ref.describe()}: {error}") from error


# --- acting on a run ----------------------------------------------------------------------------

def owner(body: Mapping[str, Any]) -> builders.Owner:
    return builders.Owner.from_body(body)


def ensure_job(body: kopf.Body, job: dict[str, Any], logger: kopf.Logger) -> tuple[dict[str, Any], bool]:
    """Create-if-absent at the edge. A same-named Job of an older CR instance is not ours: wait."""
    kopf.adopt(job, owner=body)
    existing, created = k8s.create_job_if_absent(job)
    if not k8s.owned_by(existing, body["metadata"]["uid"]):
        raise kopf.TemporaryError(f"Job {job['metadata']['name']} belongs to an older {body['kind']} "
                                  "of the same name; waiting for its garbage collection", delay=5)
    if created:
        metrics.JOBS_CREATED.labels(step=metrics.step_of(job["metadata"]["labels"][crd.LABEL_COMPONENT])).inc()
        logger.info(f"Created Job {job['metadata']['name']}.")
        kopf.event(body, type="Normal", reason=crd.EVENT_JOB_CREATED,
                   message=f"Created Job {job['metadata']['name']}")
    return existing, created


def ensure_step_job(body: kopf.Body, job: dict[str, Any], scheduling: spec_lib.Scheduling,
                    logger: kopf.Logger) -> dict[str, Any] | None:
    """`ensure_job` for the first Job of a step, unless spec.suspend holds a queued run: then None,
    and the Job is created once spec.suspend is cleared (steps.hold)."""
    if not steps.hold(scheduling, None, None).create:
        return None
    return ensure_job(body, job, logger)[0]


def parse_with_labels(parse: Callable[..., Any], body: kopf.Body) -> Callable[[Mapping[str, Any]], Any]:
    """`parse(spec, labels=...)` with the CR's labels (Kueue's queue-name and priority-class labels)."""
    labels = dict((body.get("metadata") or {}).get("labels") or {})
    return lambda spec: parse(spec, labels=labels)


def fail(body: kopf.Body, status: Mapping[str, Any], patch: kopf.Patch, *, reason: str, message: str,
         generation: int | None, condition: str | None = None) -> None:
    """Phase Failed with its condition; `condition` (the step that failed) is set False with the same reason."""
    now = st.now_rfc3339()
    patch.status.update(st.failed_patch(status, reason=reason, message=message, now=now, generation=generation))
    # The other handler of this run, holding a status read before this patch, steps aside (`stale`)
    # instead of failing the run a second time (a second Event, the failure counted twice).
    wrote_phase(body["metadata"]["uid"], crd.FAILED)
    if condition is not None:
        patch.status["conditions"] = st.with_condition(
            {"conditions": patch.status["conditions"]}, condition, False, reason=reason, message=message,
            now=now, generation=generation)
    kopf.event(body, type="Warning", reason=crd.EVENT_FAILED, message=st.shown(f"{reason}: {message}"))
    evaluation = status.get("evaluation") if body.get("kind") == crd.EVALUATION_KIND else None
    if evaluation:
        # An evaluation that failed for good will never finish: its model may be deleted again
        # without --force (store.release_evaluation keeps the shard results). Here, not in
        # evaluation_run.py, because a failed step (follow_step) and an invalid spec fail it too.
        try:
            model_store(body["metadata"]["namespace"]).release_evaluation(evaluation)
        except Exception as error:  # noqa: BLE001 - the failure is recorded either way
            logging.getLogger(__name__).warning("cannot release evaluation %s in the store: %s", evaluation, error)


def parse_spec(parse: Callable[[Mapping[str, Any]], Any], body: kopf.Body, spec: kopf.Spec,
               status: Mapping[str, Any], patch: kopf.Patch, generation: int | None, *,
               enforce_tenancy: bool = False) -> Any:
    """The parsed spec; an invalid one ends the CR in Failed (InvalidSpec) and stops the handler.
    With `enforce_tenancy` (where a run starts: its spec cannot change afterwards, the CRD's
    `self == oldSelf`), what the operator's tenancy settings refuse ends it in Failed (NotAllowed)."""
    try:
        parsed = parse(spec)
        if enforce_tenancy:
            namespace = body["metadata"]["namespace"]
            tenancy.enforce(parsed, CONFIG.tenancy, lambda kind, name: k8s.read_labels(kind, namespace, name))
        return parsed
    except spec_lib.SpecError as error:
        reason = getattr(error, "reason", crd.REASON_INVALID_SPEC)
        fail(body, status, patch, reason=reason, message=str(error), generation=generation)
        what = "not allowed" if reason == crd.REASON_NOT_ALLOWED else "invalid spec"
        raise kopf.PermanentError(f"{what}: {error}") from error


# --- two handlers of one run ----------------------------------------------------------------------

# Phase transitions this process wrote, by CR uid: (phase, monotonic time). The timer and the
# wake-up handler can both look at a CR before kopf has applied the other one's patch; the one
# that sees the older phase steps aside for a moment rather than doing the transition twice.
_written_phases: dict[str, tuple[str, float]] = {}
_STALE_SECONDS = 30.0


class RunLocks:
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


run_locks = RunLocks()


def stale(uid: str, status: Mapping[str, Any]) -> bool:
    """This process wrote a newer phase for the run than `status` shows, moments ago: step aside."""
    written = _written_phases.get(uid)
    return (written is not None and written[0] != status.get("phase")
            and time.monotonic() - written[1] < _STALE_SECONDS)


def wrote_phase(uid: str, phase: str) -> None:
    """Record a phase transition this process has just patched (read by `stale`)."""
    now = time.monotonic()
    for old in [u for u, (_, t) in _written_phases.items() if now - t > _STALE_SECONDS]:
        del _written_phases[old]  # kopf has long applied those patches
    _written_phases[uid] = (phase, now)


# --- following one step's Job ---------------------------------------------------------------------

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


# Keys of a step's summary in status.jobs that hold only for a while.
_TRANSIENT_MARKS = ("notStarting", "suspended", "workloadDeactivated")


def _act_on_hold(body: kopf.Body, held: steps.Hold, job: dict[str, Any] | None,
                 recorded: Mapping[str, Any] | None, logger: kopf.Logger) -> tuple[dict[str, Any] | None, bool]:
    """Carry out what `steps.hold` asks of the step's Job: (the Job as it is now, whether the operator
    holds the Job's Kueue Workload inactive)."""
    deactivated = bool((recorded or {}).get("workloadDeactivated"))
    if job is None or held.action is None:
        return job, deactivated
    meta = job["metadata"]
    if held.action in (steps.SUSPEND_JOB, steps.RESUME_JOB):
        suspend = held.action == steps.SUSPEND_JOB
        if k8s.set_job_suspend(meta["namespace"], meta["name"], suspend):
            logger.info(f"{'Suspended' if suspend else 'Resumed'} Job {meta['name']}.")
            job = {**job, "spec": {**job["spec"], "suspend": suspend}}
        return job, deactivated
    active = held.action == steps.ACTIVATE_WORKLOAD
    count = k8s.set_kueue_workloads_active(meta["namespace"], meta["uid"], active)
    if count:
        logger.info(f"Set the Kueue Workload of Job {meta['name']} {'active' if active else 'inactive'}.")
    elif not active:
        logger.info(f"Job {meta['name']} has no Kueue Workload yet: setting it inactive at the next look.")
    return job, (not active) if count else (deactivated and not active)


def follow_step(body: kopf.Body, step: steps.Step, job_name: str, build: Callable[[], dict[str, Any]],
                status: Mapping[str, Any], patch: kopf.Patch, logger: kopf.Logger, generation: int | None,
                output_present: Callable[[], bool],
                scheduling: spec_lib.Scheduling = spec_lib.Scheduling()) -> tuple[bool, dict[str, Any],
                                                                                  dict[str, Any] | None]:
    """Observe the step's Job and act on `steps.hold` (spec.suspend, Kueue: `scheduling`) and
    `steps.decide`: (done, its summary in status.jobs, the Job). While the Job is held, phase
    Suspended or Queued (`hold_phase`)."""
    namespace, uid = body["metadata"]["namespace"], body["metadata"]["uid"]
    job = k8s.read_job(namespace, job_name)
    if job is not None and not k8s.owned_by(job, uid):
        raise kopf.TemporaryError(f"Job {job_name} belongs to an older {body['kind']} of the same name; "
                                  "waiting for its garbage collection", delay=5)
    recorded = (status.get("jobs") or {}).get(step.component)
    now = st.now_rfc3339()
    held = steps.hold(scheduling, job, recorded)
    job, deactivated = _act_on_hold(body, held, job, recorded, logger)
    not_starting = st.pods_not_starting(_job_pods(job)) if _may_have_pods_not_starting(job) else []
    decision = steps.decide(step, job, recorded, output_present=output_present, not_starting=not_starting,
                            now=now, grace_seconds=CONFIG.pod_start_grace_seconds)
    if decision.action == steps.CREATE and not held.create:
        hold_phase(body, status, patch, held, step, now=now, generation=generation)
        return False, dict(recorded or {"state": "Missing"}), None
    if decision.action == steps.CREATE:
        job, _ = ensure_job(body, build(), logger)
        held = steps.hold(scheduling, job, recorded)  # a queued Job is created suspended
    summary = st.job_summary(job) if job is not None else {**(recorded or {}), "state": "Complete"}
    if deactivated:
        summary["workloadDeactivated"] = True
    if decision.not_starting:
        summary["notStarting"] = dict(decision.not_starting)
    if recorded != summary:
        # A merge patch keeps what it does not name: a mark that no longer holds is removed (None).
        summary.update({key: None for key in _TRANSIENT_MARKS if (recorded or {}).get(key) and key not in summary})
        patch.status["jobs"] = {step.component: summary}
    if decision.action == steps.FAIL:
        message = decision.message
        if st.job_state(job) == "Failed":  # the Job says only that it failed; its pods say why
            message = st.failed_job_message(message, st.pods_failed(_job_pods(job or {})))
        fail(body, status, patch, reason=decision.reason, message=message, generation=generation,
              condition=step.condition)
        if metrics.first_time(uid, f"failed:{step.component}"):
            metrics.JOBS_FAILED.labels(step=metrics.step_of(step.component)).inc()
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
                       message=st.shown(f"{decision.message}; the run fails if this lasts "
                                        f"{CONFIG.pod_start_grace_seconds:.0f} s"))
        patch.status["conditions"] = st.with_condition(
            status, step.condition, False, reason=crd.REASON_POD_NOT_STARTING, message=decision.message,
            now=now, generation=generation)
    if decision.action == steps.WAIT:
        hold_phase(body, status, patch, held, step, now=now, generation=generation)
    if decision.action == steps.DONE:
        seconds = metrics.job_seconds(job)
        if seconds is not None and metrics.first_time(uid, f"done:{step.component}"):
            metrics.STEP_DURATION.labels(step=metrics.step_of(step.component)).observe(seconds)
    return decision.action == steps.DONE, summary, job


def reconcile(reconciler: Callable[..., None], body: kopf.Body, spec: kopf.Spec, status: kopf.Status,
              meta: kopf.Meta, name: str, namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger) -> None:
    """One look at a running run: its kind's `reconciler`, one handler at a time per run, then
    `settle_hold` (the Suspended and Queued conditions of a run that is no longer held)."""
    with run_locks.hold(uid), metrics.RECONCILE_DURATION.labels(kind=body["kind"]).time():
        if stale(uid, status):
            return  # the other handler's patch is not applied yet
        reconciler(body, spec, status, meta, name, namespace, uid, patch, logger)
        settle_hold(body, status, patch, meta.get("generation"))


# --- held runs: spec.suspend and Kueue ---------------------------------------------------------------

def _post(body: kopf.Body, events: list[tuple[str, str]]) -> None:
    for reason, message in events:
        kopf.event(body, type="Normal", reason=reason, message=message)


def hold_phase(body: kopf.Body, status: Mapping[str, Any], patch: kopf.Patch, held: steps.Hold, step: steps.Step,
               *, now: str, generation: int | None) -> None:
    """Phase Suspended or Queued while `held` says so, the step's own phase once it no longer
    does (status.held_patch; its conditions turn False in `settle_hold`)."""
    if held.phase is not None:
        changes, events = st.held_patch(status, held.phase, step.phase, held.message, now=now, generation=generation)
        patch.status.update(changes)
        _post(body, events)
    elif status.get("phase") in crd.HELD_PHASES:
        patch.status["phase"] = step.phase
    if patch.status.get("phase") not in (None, status.get("phase")):
        wrote_phase(body["metadata"]["uid"], patch.status["phase"])


def settle_hold(body: kopf.Body, status: Mapping[str, Any], patch: kopf.Patch, generation: int | None) -> None:
    """After a reconcile: a run that is no longer held (phase not Suspended or Queued, whatever the
    reconciler wrote: the next step, Succeeded, Failed) has its Suspended and Queued conditions
    turned False, stepPhase removed, and the Resumed or Admitted Event posted. A step may well have
    been admitted and finished between two looks; the conditions are computed on what the
    reconciler's own patch already holds."""
    written = patch.status
    phase = written.get("phase", status.get("phase"))
    if phase in crd.HELD_PHASES:
        return
    current = {"phase": phase, "stepPhase": status.get("stepPhase"),
               "message": written.get("message", status.get("message")),
               "conditions": written.get("conditions", status.get("conditions"))}
    changes, events = st.held_patch(current, None, phase, "", now=st.now_rfc3339(), generation=generation)
    changes.pop("phase", None)
    patch.status.update(changes)
    _post(body, events)


# --- finished runs cleaned up (spec.ttlSecondsAfterFinished) -----------------------------------------

_PLURALS = {crd.TRAINING_KIND: crd.TRAINING_PLURAL, crd.EVALUATION_KIND: crd.EVALUATION_PLURAL}


def ttl_seconds(spec: Mapping[str, Any]) -> int | None:
    """The run's spec.ttlSecondsAfterFinished, else the operator's default (None: kept forever). Read
    from the spec as it is: a run that failed for an invalid spec is cleaned up all the same."""
    value = spec.get("ttlSecondsAfterFinished")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return CONFIG.run_ttl_seconds_after_finished


def expire(body: kopf.Body, spec: Mapping[str, Any], status: Mapping[str, Any], name: str, namespace: str,
           uid: str, logger: kopf.Logger) -> None:
    """Delete a finished run once its TTL has passed; its Jobs go with it (ownerReferences), its
    models, evaluations and aliases stay in the store (nothing here touches the store). A TrainingRun
    that an unfinished run still names by `trainingRun` (its model is resolved through this
    TrainingRun's status) is kept until that run finishes."""
    ttl = ttl_seconds(spec)
    left = steps.ttl_seconds_left(status, ttl, st.now_rfc3339())
    if left is None or left > 0:
        return
    if body["kind"] == crd.TRAINING_KIND:
        listed = [{**run, "kind": kind} for kind, plural in _PLURALS.items()
                  for run in k8s.list_custom_objects(plural, namespace)]
        naming = steps.runs_naming(name, listed)
        if naming:
            logger.info(f"Past its TTL ({ttl} s), kept while {', '.join(naming)} name(s) it.")
            return
    kopf.event(body, type="Normal", reason=crd.EVENT_EXPIRED,
               message=f"Deleting this {body['kind']} {ttl} s after it finished (ttlSecondsAfterFinished); "
                       "its models and results stay in the store")
    if k8s.delete_custom_object(_PLURALS[body["kind"]], namespace, name, uid):
        logger.info(f"Deleted {ttl} s after it finished.")


# --- heartbeats: live progress and stalled pods ------------------------------------------------------

def _running_pod(pods: list[dict[str, Any]], source: str) -> str | None:
    """The running pod a heartbeat source is (an evaluator shard by its completion index)."""
    index = progress_lib.shard_index(source)
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if (pod.get("status") or {}).get("phase") != "Running":
            continue
        if index is None or labels.get("batch.kubernetes.io/job-completion-index") == str(index):
            return str(pod["metadata"]["name"])
    return None


def follow_heartbeats(body: kopf.Body, status: Mapping[str, Any], patch: kopf.Patch, run: str,
                      job: Mapping[str, Any] | None,
                      summarize: Callable[[list[dict[str, Any]]], dict[str, Any] | None]) -> None:
    """Fold the run's heartbeats into status.progress (`summarize`, from progress.py), on the poll the
    run makes anyway. A source silent for CONFIG.heartbeat_stale_seconds whose pod still runs goes
    into status.progress.stalled, with one Warning Event (HeartbeatStopped) naming it and its pod
    when it first stalls; it is not failed for that (the Job's own deadline and retries apply)."""
    beats = model_store(body["metadata"]["namespace"]).heartbeats(run)
    progress = summarize(beats)
    if progress is None:
        return
    previous = status.get("progress") or {}
    stalled = progress_lib.stalled_sources(beats, datetime.datetime.now(datetime.timezone.utc),
                                           CONFIG.heartbeat_stale_seconds)
    pods = _job_pods(job) if stalled and job is not None else []
    last_beat = {b.get("source"): b.get("updated_at") for b in beats}
    names = []
    for source, age in stalled:
        pod = _running_pod(pods, source)
        if pod is None:
            continue  # its pod ended (the Job's state says how) or has not been seen yet
        names.append(source)
        # One silence (the same last beat) warns once, even if two handlers see it before either's patch.
        silence = f"stalled:{source}:{last_beat.get(source)}"
        if source not in (previous.get("stalled") or []) and metrics.first_time(body["metadata"]["uid"], silence):
            metrics.HEARTBEATS_MISSED.labels(source=source.partition("-")[0]).inc()
            kopf.event(body, type="Warning", reason=crd.EVENT_HEARTBEAT_STOPPED,
                       message=f"{progress_lib.describe_source(source)} has sent no heartbeat for {age:.0f} s "
                               f"while its pod {pod} is running: stuck, or starved of CPU?")
    progress = progress_lib.without_none({**progress, "stalled": names})
    if progress != previous:
        patch.status["progress"] = progress
