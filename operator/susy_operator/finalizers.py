"""kopf's finalizer on the custom resources, and how an uninstall releases it. Pure: no kopf, no client.

Why there is a finalizer at all (kopf 1.45.2, the same in nolar/kopf's main branch):
- `kopf.timer` registers its handler with `requires_finalizer=True` (kopf/on.py, `timer()`, as
  `daemon()`); `kopf.on.create/resume/update` register `requires_finalizer=None`, and only
  `kopf.on.delete` without `optional=True` asks for one. Our only timers are the reconcilers.
- kopf/_core/reactor/processing.py, `process_resource_causes`: on every event, when a spawning
  handler whose filters match (`registries.SpawningRegistry.requires_finalizer` -> `match()`, which
  ends with the `when=` callback) requires it, kopf adds `settings.persistence.finalizer`
  (default "kopf.zalando.org/KopfFinalizerMarker", kopf/_cogs/configs/configuration.py) to
  metadata.finalizers; when none matches any more, it removes it ("Removing the finalizer, as
  there are no handlers requiring it"). So a CR carries it exactly while it runs (`when=` is the
  phase), and loses it once it succeeds or fails, unless it has a TTL (spec.ttlSecondsAfterFinished
  or the chart's runTtlSecondsAfterFinished): the `expire` timer keeps it until the operator
  deletes the CR (`is_expiring`).
- A CR still running when the operator goes away keeps it, and Kubernetes never deletes an object
  with finalizers: `kubectl delete` hangs, and so does deleting its namespace (kopf
  docs/troubleshooting.rst, "kubectl freezes on object deletion").

What the chart's pre-delete hook (`python -m susy_operator release-finalizers`) does about it:
one merge patch per CR that removes kopf's finalizer *and* sets RELEASED_ANNOTATION. The
annotation turns the timers' `when=` false (`is_followed`), so the operator, which still runs
while pre-delete hooks run, does not add the finalizer back on the MODIFIED event the patch
causes. A reinstalled operator clears the annotation when it resumes the CR (`reclaim_patch`)
and follows it again. The resourceVersion in the patch makes it fail (409) rather than
overwrite a finalizer list that changed in between; the command re-reads and tries again.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from susy_operator import crd

# kopf's default (kopf/_cogs/configs/configuration.py, PersistenceSettings.finalizer); the
# operator sets it explicitly at start-up so that it and the uninstall hook name the same one.
KOPF_FINALIZER: Final = "kopf.zalando.org/KopfFinalizerMarker"
# Set by the uninstall hook on each CR it released: the operator stops following it.
RELEASED_ANNOTATION: Final = f"{crd.GROUP}/released-by-uninstall"

RUNNING_PHASES: Final = frozenset({crd.PENDING, crd.PRODUCING, crd.TRAINING, crd.EVALUATING, *crd.HELD_PHASES})


def is_followed(status: Mapping[str, Any], annotations: Mapping[str, str]) -> bool:
    """Whether the reconciler timers run for a CR (and so whether kopf keeps its finalizer on it)."""
    return status.get("phase") in RUNNING_PHASES and RELEASED_ANNOTATION not in annotations


def is_expiring(status: Mapping[str, Any], annotations: Mapping[str, str], ttl_seconds: int | None) -> bool:
    """Whether the TTL timer runs for a finished CR (spec.ttlSecondsAfterFinished, or the operator's
    default): kopf keeps its finalizer on it meanwhile, until the operator deletes it; an
    uninstall releases it as it releases a running one."""
    return (ttl_seconds is not None and status.get("phase") in crd.TERMINAL_PHASES
            and RELEASED_ANNOTATION not in annotations)


def is_released(annotations: Mapping[str, str]) -> bool:
    """A ContinualTraining never finishes, so its timer runs until an uninstall releases it."""
    return RELEASED_ANNOTATION in annotations


def release_patch(obj: Mapping[str, Any], released_at: str) -> dict[str, Any] | None:
    """The merge patch that releases one CR from kopf's finalizer; None when it holds none.

    Other finalizers (another controller's, `foregroundDeletion`) stay: a merge patch replaces
    lists whole, so the list is written out without ours, at the resourceVersion it was read at.
    """
    meta = obj.get("metadata") or {}
    finalizers = list(meta.get("finalizers") or [])
    if KOPF_FINALIZER not in finalizers:
        return None
    return {"metadata": {
        "resourceVersion": meta["resourceVersion"],
        "finalizers": [f for f in finalizers if f != KOPF_FINALIZER],
        "annotations": {RELEASED_ANNOTATION: released_at},
    }}


def reclaim_patch(annotations: Mapping[str, str]) -> dict[str, Any] | None:
    """What a (re)started operator writes on a CR an uninstall released: the annotation removed."""
    if RELEASED_ANNOTATION not in annotations:
        return None
    return {"metadata": {"annotations": {RELEASED_ANNOTATION: None}}}
