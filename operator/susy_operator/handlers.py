"""The kopf wiring, and nothing else: which events of which kind run what. Each handler is a few
lines that call the kind's reconciler, `training_run.py` (TrainingRun -> producer Job -> trainer
Job -> model id) or `evaluation_run.py` (EvaluationRun -> model resolution -> one Indexed evaluator
Job -> aggregated metrics); what both share is in `runs.py`.

Shape (STYLE.md, kopf and dask-kubernetes anchors):
- A create/resume handler validates the spec and starts the first step. It does nothing for a CR
  that has already started (status.runName / status.evaluation is set), so a restarted operator
  never re-runs a step.
- A timer per running CR is the level-based reconciler: it reads the current step's Job, copies its
  counts into status, and on success starts the next step. Timers stop once the phase is terminal.
  A Job or pod event wakes the same reconciler at once (`job_changed`, `pod_changed`).
- kopf keeps each handler's progress under its id, which is the function's name (kopf
  _core/intents/registries.py get_callable_id, through functools.wraps): renaming a handler here
  changes what an upgraded operator finds on existing CRs (tests/test_operator_units.py pins them).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from susy_operator import (continual_training, crd, evaluation_run, finalizers, k8s, metrics, runs, status as st,
                           training_run)
from susy_operator.runs import CONFIG, POLL_SECONDS
from susy_pipeline.redaction import RedactingFilter

# The annotation a Job or pod event sets on its run (a tuple: the key itself has dots).
OBSERVED_FIELD = ("metadata", "annotations", crd.ANNOTATION_OBSERVED)

TRAINING = (crd.GROUP, crd.VERSION, crd.TRAINING_PLURAL)
EVALUATION = (crd.GROUP, crd.VERSION, crd.EVALUATION_PLURAL)
CONTINUAL = (crd.GROUP, crd.VERSION, crd.CONTINUAL_PLURAL)


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
    # Every log line, and every Event kopf posts from one (its per-object logger "kopf.objects"),
    # is redacted: an exception's text may quote a URI (susy_pipeline.redaction).
    logging.getLogger("kopf.objects").addFilter(RedactingFilter())
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
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
    # A deleted CR keeps kopf's finalizer until its timers have exited; a timer busy at that moment
    # (`expire` deletes its own CR from inside it) is checked again only after this many seconds
    # (kopf _core/engines/daemons.py stop_daemons; the default, 60, kept a CR past its TTL a minute).
    settings.background.cancellation_polling = 2
    # Prometheus scrapes /metrics on a port of its own (the chart's metrics.port), not kopf's
    # liveness port: a slow scrape never delays a liveness probe.
    metrics.serve(CONFIG.metrics_port)
    if CONFIG.store_uri is None:
        logger.warning("MONGODB_URI is not set: runs will wait at their first store read.")
    else:
        try:
            runs.connect_store()  # connect (and import the store module) now, not inside the first CR's handler
        except Exception as error:  # noqa: BLE001 - the handlers retry; the operator must still start
            logger.warning(f"The store is not reachable yet: {error}")


@kopf.on.probe(id="config")
def probe(**_: Any) -> dict[str, Any]:
    """Liveness (`--liveness`): answers while the event loop runs; shows what Jobs will get."""
    return {"image": CONFIG.image, "kafka": CONFIG.kafka_bootstrap, "pollSeconds": POLL_SECONDS}


def _running(status: Mapping[str, Any], annotations: Mapping[str, str], **_: Any) -> bool:
    """The timers' filter; while it holds, kopf keeps its finalizer on the CR (finalizers.py)."""
    return finalizers.is_followed(status, annotations)


def _expiring(spec: Mapping[str, Any], status: Mapping[str, Any], annotations: Mapping[str, str], **_: Any) -> bool:
    """The TTL timer's filter: finished, with a TTL (finalizers.is_expiring)."""
    return finalizers.is_expiring(status, annotations, runs.ttl_seconds(spec))


@kopf.on.resume(*TRAINING, annotations={finalizers.RELEASED_ANNOTATION: kopf.PRESENT})
@kopf.on.resume(*EVALUATION, annotations={finalizers.RELEASED_ANNOTATION: kopf.PRESENT})
@kopf.on.resume(*CONTINUAL, annotations={finalizers.RELEASED_ANNOTATION: kopf.PRESENT})
def reclaim(annotations: kopf.Annotations, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    """Triggered on start for a CR an uninstall released (the chart's pre-delete hook, finalizers.py):
    removes the annotation, so the reconciler timer follows the CR again. Writes no status."""
    reclaim = finalizers.reclaim_patch(annotations)
    if reclaim is not None:
        for key, value in reclaim["metadata"]["annotations"].items():
            patch.metadata.annotations[key] = value
        logger.info("Following this run again: an earlier uninstall had released it.")


# --- starting a run -------------------------------------------------------------------------------

@kopf.on.resume(*TRAINING)
@kopf.on.create(*TRAINING)
@runs.store_errors_are_temporary
def start_training(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
                   namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    """Triggered by a new TrainingRun (and on operator start): `training_run.start`, which writes
    status.runName, phase Producing and the Produced condition, and creates the producer Job; an
    invalid spec ends in Failed."""
    training_run.start(body, spec, status, meta, name, namespace, uid, patch, logger)


@kopf.on.resume(*EVALUATION)
@kopf.on.create(*EVALUATION)
@runs.store_errors_are_temporary
def start_evaluation(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
                     namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    """Triggered by a new EvaluationRun (and on operator start): `evaluation_run.start`, which
    writes status.evaluation, resolves the model (status.modelId) and creates the Indexed evaluator
    Job, or waits in Pending for a TrainingRun still running; an invalid spec or an unknown model
    ends in Failed."""
    evaluation_run.start(body, spec, status, meta, name, namespace, uid, patch, logger)


# --- following a running run ------------------------------------------------------------------

_RECONCILERS = {crd.TRAINING_KIND: training_run.reconcile, crd.EVALUATION_KIND: evaluation_run.reconcile}


@kopf.timer(*TRAINING, interval=POLL_SECONDS, when=_running)
@kopf.timer(*EVALUATION, interval=POLL_SECONDS, when=_running)
@kopf.on.field(*TRAINING, field=OBSERVED_FIELD, when=_running)
@kopf.on.field(*EVALUATION, field=OBSERVED_FIELD, when=_running)
@kopf.on.field(*TRAINING, field="spec.suspend", when=_running)
@kopf.on.field(*EVALUATION, field="spec.suspend", when=_running)
@runs.store_errors_are_temporary
def reconcile(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
              namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    """Triggered at once when a Job or pod event marked a run (`job_changed`, `pod_changed`) or
    spec.suspend changed, and every POLL_SECONDS while it runs (the safety net for a missed event):
    `runs.reconcile` with the run's kind's `training_run.reconcile` or `evaluation_run.reconcile`."""
    runs.reconcile(_RECONCILERS[body["kind"]], body, spec, status, meta, name, namespace, uid, patch, logger)


@kopf.timer(*TRAINING, interval=POLL_SECONDS, when=_expiring)
@kopf.timer(*EVALUATION, interval=POLL_SECONDS, when=_expiring)
def expire(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, name: str, namespace: str, uid: str,
           logger: kopf.Logger, **_: Any) -> None:
    """Triggered every POLL_SECONDS for a finished run with a TTL (spec.ttlSecondsAfterFinished or
    the operator's default): `runs.expire` deletes it once the TTL has passed. Writes no status."""
    runs.expire(body, spec, status, name, namespace, uid, logger)


# --- continual training ---------------------------------------------------------------------------

def _continual_followed(annotations: Mapping[str, str], **_: Any) -> bool:
    """The ContinualTraining timer's filter: until an uninstall releases it (finalizers.py)."""
    return not finalizers.is_released(annotations)


@kopf.timer(*CONTINUAL, interval=POLL_SECONDS, when=_continual_followed)
@runs.store_errors_are_temporary
def reconcile_continual(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
                        namespace: str, uid: str, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    """Triggered every POLL_SECONDS for every ContinualTraining (it never finishes: it follows a
    stream): `continual_training.reconcile`, which reads the topic's offsets and the current
    generation's children, decides, acts, and writes status (generation, champion, lastDecision,
    history, conditions Progressing and DataLost)."""
    with runs.run_locks.hold(uid):
        continual_training.reconcile(body, spec, status, meta, name, namespace, patch, logger)


@kopf.on.event(*TRAINING)
@kopf.on.event(*EVALUATION)
def count_run(type: str, body: kopf.Body, uid: str, **_: Any) -> None:
    """Triggered by every change of a run (and its deletion): keeps the `susy_operator_runs{kind,
    phase}` gauge (metrics.py). Writes nothing."""
    metrics.observe_run(uid, body.get("kind", ""), (body.get("status") or {}).get("phase"),
                        deleted=type == "DELETED")


# --- waking a run when its Job or pods change ------------------------------------------------------

_OWNER_PLURALS = {crd.TRAINING_KIND: crd.TRAINING_PLURAL, crd.EVALUATION_KIND: crd.EVALUATION_PLURAL}
_OWNER_LABELS = {crd.LABEL_TRAINING_RUN: crd.TRAINING_PLURAL, crd.LABEL_EVALUATION_RUN: crd.EVALUATION_PLURAL}


@kopf.on.event("batch", "v1", "jobs", labels={crd.LABEL_MANAGED_BY: crd.MANAGED_BY})
def job_changed(type: str, body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    """Triggered by every change of a Job the operator made: when it has finished (or was deleted),
    was suspended, or was resumed (by the operator, or admitted by Kueue), marks its owner
    (crd.ANNOTATION_OBSERVED), whose `reconcile` then takes the next step or says so."""
    state = "Deleted" if type == "DELETED" else st.job_hold_state(body)
    if state not in ("Complete", "Failed", "Deleted", "Suspended", "Resumed"):
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

