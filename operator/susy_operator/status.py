"""Status helpers: the conditions list (metav1.Condition shape) and child-Job summaries.

A merge-patch replaces a list whole, so `with_condition` always returns the full list computed
from the current status; it is safe to apply twice. The caller passes the time, so these
functions stay pure and testable.
"""
from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Final

from susy_operator import crd
from susy_pipeline import redaction

MESSAGE_LIMIT = 1024  # metav1.Condition allows 32768; keep `kubectl describe` readable.


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def conditions(status: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return [dict(c) for c in ((status or {}).get("conditions") or [])]


def get_condition(status: Mapping[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for condition in conditions(status):
        if condition.get("type") == type_:
            return condition
    return None


def is_true(status: Mapping[str, Any] | None, type_: str) -> bool:
    condition = get_condition(status, type_)
    return condition is not None and condition.get("status") == "True"


def shown(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """A message as a condition, status.message or an Event shows it: one line, at most `limit`
    characters, URIs as scheme and hosts and this process's secrets masked (susy_pipeline.redaction):
    it may quote a pod's termination message or a store error."""
    return redaction.one_line(message, limit=limit)


def with_condition(status: Mapping[str, Any] | None, type_: str, value: bool, *, reason: str,
                   message: str = "", now: str, generation: int | None = None) -> list[dict[str, Any]]:
    """The full conditions list with one type set; lastTransitionTime moves only when status flips."""
    result = conditions(status)
    new_status = "True" if value else "False"
    for i, condition in enumerate(result):
        if condition.get("type") == type_:
            changed = condition.get("status") != new_status
            result[i] = {
                "type": type_,
                "status": new_status,
                "reason": reason,
                "message": shown(message),
                "lastTransitionTime": now if changed else condition.get("lastTransitionTime", now),
                **({"observedGeneration": generation} if generation is not None else {}),
            }
            return result
    result.append({"type": type_, "status": new_status, "reason": reason, "message": shown(message),
                   "lastTransitionTime": now,
                   **({"observedGeneration": generation} if generation is not None else {})})
    return result


def with_conditions(status: Mapping[str, Any] | None, updates: Sequence[tuple[str, bool, str, str]], *,
                    now: str, generation: int | None = None) -> list[dict[str, Any]]:
    """Apply several (type, value, reason, message) updates in order."""
    current: dict[str, Any] = {"conditions": conditions(status)}
    for type_, value, reason, message in updates:
        current["conditions"] = with_condition(current, type_, value, reason=reason, message=message,
                                               now=now, generation=generation)
    return current["conditions"]


def failed_patch(status: Mapping[str, Any] | None, *, reason: str, message: str, now: str,
                 generation: int | None = None) -> dict[str, Any]:
    """The status patch that ends a run: phase Failed, Failed=True, Succeeded=False."""
    return {
        "phase": crd.FAILED,
        "completionTime": now,
        "message": shown(message),
        "conditions": with_conditions(status, [
            (crd.FAILED_CONDITION, True, reason, message),
            (crd.SUCCEEDED_CONDITION, False, reason, message),
        ], now=now, generation=generation),
        **({"observedGeneration": generation} if generation is not None else {}),
    }


# --- child Jobs ---------------------------------------------------------------------------------

def job_condition(job: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for condition in ((job or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return condition
    return None


def job_state(job: Mapping[str, Any] | None) -> str:
    """`Missing`, `Running`, `Complete` or `Failed`, from the conditions the Job controller sets."""
    if job is None:
        return "Missing"
    if job_condition(job, "Complete") is not None:
        return "Complete"
    if job_condition(job, "Failed") is not None:
        return "Failed"
    return "Running"


def job_suspended(job: Mapping[str, Any] | None) -> bool:
    """Whether a Job that has not finished is suspended (spec.suspend): it has no pods, and the Job
    controller starts none until the field is cleared (by the operator, or by Kueue admitting it)."""
    return bool(job and ((job.get("spec") or {}).get("suspend") is True) and job_state(job) == "Running")


def job_hold_state(job: Mapping[str, Any]) -> str:
    """job_state, told apart further for a Job that has not finished: `Suspended`, or `Resumed`
    from its un-suspension until its first pod is active. The Job controller sets the condition
    Suspended False (JobResumed) when spec.suspend is cleared (kubernetes
    pkg/controller/job/job_controller.go); a Job that was never suspended stays `Running`."""
    state = job_state(job)
    if state != "Running":
        return state
    if job_suspended(job):
        return "Suspended"
    resumed = any(c.get("type") == "Suspended" and c.get("status") == "False"
                  for c in (job.get("status") or {}).get("conditions") or [])
    return "Resumed" if resumed and not int((job.get("status") or {}).get("active") or 0) else "Running"


def job_failure_message(job: Mapping[str, Any]) -> tuple[str, str]:
    """(reason, message) of a failed Job, as the Job controller wrote them."""
    condition = job_condition(job, "Failed") or {}
    name = job.get("metadata", {}).get("name", "?")
    reason = condition.get("reason") or crd.REASON_JOB_FAILED
    detail = condition.get("message") or "the Job failed"
    failed_indexes = (job.get("status") or {}).get("failedIndexes")
    if failed_indexes:
        detail += f" (failed indexes: {failed_indexes})"
    return reason, f"Job {name}: {detail}"


# Waiting reasons of a container that is starting normally (the kubelet's own words).
NORMAL_WAITS: Final = frozenset({"ContainerCreating", "PodInitializing"})


def _pods_oldest_first(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(pods, key=lambda p: (p.get("metadata", {}).get("creationTimestamp") or "",
                                       p.get("metadata", {}).get("name") or ""))


def pods_not_starting(pods: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(pod, reason, message) for each pod that cannot start, as the scheduler and kubelet report it:
    a container waiting for a reason other than the normal start-up (CreateContainerConfigError,
    ErrImagePull, ImagePullBackOff, InvalidImageName, ...), or PodScheduled False (Unschedulable).
    Without a Job-level signal for these, a Job would sit until activeDeadlineSeconds."""
    found = []
    for pod in _pods_oldest_first(pods):
        name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status") or {}
        if status.get("phase") not in (None, "Pending"):
            continue
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                found.append((name, condition.get("reason") or "Unschedulable", condition.get("message") or ""))
                break
        else:
            for container in status.get("containerStatuses") or []:
                waiting = (container.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") and waiting["reason"] not in NORMAL_WAITS:
                    found.append((name, waiting["reason"], waiting.get("message") or ""))
                    break
    return found


def pods_failed(pods: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(pod, cause, message) for each container that ended with a non-zero exit: the kubelet's reason
    (OOMKilled, Error, DeadlineExceeded) with the exit code, and the container's termination message
    (the pipeline's one-line error, or its log's tail: terminationMessagePolicy FallbackToLogsOnError).
    The Job says only that it failed. A container the kubelet restarted has it in lastState."""
    found = []
    for pod in _pods_oldest_first(pods):
        name = pod.get("metadata", {}).get("name", "?")
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = ((container.get("state") or {}).get("terminated")
                          or (container.get("lastState") or {}).get("terminated") or {})
            if terminated and terminated.get("exitCode", 0) != 0:
                found.append((name, f"{terminated.get('reason') or 'Error'} (exit code {terminated.get('exitCode')})",
                              terminated.get("message") or ""))
    return found


def failed_job_message(job_message: str, failed: Sequence[tuple[str, str, str]]) -> str:
    """Why a step whose Job failed failed: its pods' causes first (the termination message says what
    to fix, "skip 30000 is past the end of x.csv"), then the Job controller's own words ("Container
    exited with code 2"), so that a cut message keeps the cause."""
    return "; ".join([*describe_pods(failed), job_message])


def describe_pods(problems: Sequence[tuple[str, str, str]], limit: int = 3) -> list[str]:
    """One line per distinct (cause, message), the first `limit` of them: "pod P: CAUSE: MESSAGE"."""
    lines: list[str] = []
    seen: set[tuple[str, str]] = set()
    for pod, cause, message in problems:
        if (cause, message) not in seen:
            seen.add((cause, message))
            lines.append(f"pod {pod}: {cause}" + (f": {message}" if message else ""))
    return lines[:limit]


def pod_problems(pods: Sequence[Mapping[str, Any]], limit: int = 3) -> list[str]:
    """Why a Job's pods failed or cannot start (pods_failed, then pods_not_starting), as lines."""
    return describe_pods([*pods_failed(pods), *pods_not_starting(pods)], limit)


def job_summary(job: Mapping[str, Any] | None) -> dict[str, Any]:
    """The per-child summary kept in status.jobs (name, active, succeeded, failed, state)."""
    if job is None:
        return {"state": "Missing"}
    st = job.get("status") or {}
    summary = {
        "name": job["metadata"]["name"],
        "state": job_state(job),
        "active": int(st.get("active") or 0),
        "succeeded": int(st.get("succeeded") or 0),
        "failed": int(st.get("failed") or 0),
    }
    for key in ("completedIndexes", "failedIndexes", "startTime", "completionTime"):
        if st.get(key):
            summary[key] = st[key]
    if job_suspended(job):
        summary["suspended"] = True
    return summary


def count_indexes(spec: str | None) -> int:
    """Count the indexes in a Job's interval list such as `0,2-4` (completedIndexes syntax)."""
    total = 0
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            low, high = part.split("-", 1)
            total += int(high) - int(low) + 1
        else:
            total += 1
    return total


def shard_counts(job: Mapping[str, Any] | None, total: int) -> dict[str, Any]:
    """status.shards of an EvaluationRun: indexes done / failed for good, failed pod attempts."""
    st = (job or {}).get("status") or {}
    succeeded = count_indexes(st.get("completedIndexes"))
    failed = count_indexes(st.get("failedIndexes"))
    return {
        "total": total,
        "succeeded": succeeded,
        "failed": failed,
        "active": int(st.get("active") or 0),
        "failedPods": int(st.get("failed") or 0),
        "progress": f"{succeeded}/{total}",
    }


def kafka_offsets(production: Mapping[str, Any]) -> list[dict[str, int]]:
    """status.kafka.offsets from a production record's {partition: [start, end)} (contracts.md §1)."""
    return [{"partition": int(p), "start": int(r[0]), "end": int(r[1])}
            for p, r in sorted((production.get("partitions") or {}).items(), key=lambda kv: int(kv[0]))]


def shard_summaries(results: Sequence[Mapping[str, Any]], limit: int = 100) -> list[dict[str, Any]]:
    """status.shardResults: one line per shard result, the first `limit` (the store keeps every one)."""
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
    return summary[:limit]


def evaluation_metrics(aggregated: Mapping[str, Any]) -> dict[str, Any]:
    """status fields from `susy_pipeline.evaluation.aggregate`, whose keys contracts.md §3 fixes."""
    confusion = aggregated["confusion"]
    return {
        "accuracy": aggregated["accuracy"],
        "auc": aggregated["auc"],
        "logLoss": aggregated["log_loss"],
        "rows": aggregated["rows"],
        "confusion": {k: int(confusion[k]) for k in ("tn", "fp", "fn", "tp")},
        # What every shard computed in (aggregate refuses a mix); results from before precisions
        # were recorded are fp32.
        "precision": aggregated.get("precision") or "fp32",
    }


def _board_entry(reference: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    confusion = entry["confusion"]
    out: dict[str, Any] = {"reference": reference}
    if entry.get("model_id"):
        out["modelId"] = str(entry["model_id"])
    if entry.get("members") is not None:
        out["members"] = [str(m) for m in entry["members"]]
    out.update({
        "rows": int(entry["rows"]),
        "accuracy": entry["accuracy"],
        "auc": entry["auc"],
        "logLoss": entry["log_loss"],
        "confusion": {k: int(confusion[k]) for k in ("tn", "fp", "fn", "tp")},
    })
    return out


def leaderboard(aggregated: Mapping[str, Any],
                references: Sequence[Mapping[str, str]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(status.leaderboard, status.best) from `susy_pipeline.evaluation.aggregate`.

    `references` is status.models: {reference, modelId} per model the spec names, in its order.
    The evaluator was given each distinct id once, so a reference takes the aggregated entry of
    its id (two references to one model show the same totals); the ensemble's entry comes last.
    `best` is the entry with the highest AUC, the first of equals.
    """
    entries = aggregated.get("models") or [{**aggregated, "name": aggregated.get("model_id")}]
    by_id = {str(e.get("model_id")): e for e in entries if e.get("members") is None}
    board = []
    for ref in references:
        entry = by_id.get(str(ref["modelId"]))
        if entry is None:
            raise KeyError(f"the shard results hold no totals for model {ref['modelId']} ({ref['reference']})")
        board.append(_board_entry(ref["reference"], entry))
    board += [_board_entry("ensemble", e) for e in entries if e.get("members") is not None]
    scored = [e for e in board if e["auc"] is not None]
    if not scored:
        return board, None
    top = max(scored, key=lambda e: e["auc"])  # max keeps the first of equal keys
    best = {"reference": top["reference"], "auc": top["auc"]}
    if "modelId" in top:
        best["modelId"] = top["modelId"]
    return board, best


# --- held runs (spec.suspend, Kueue) -------------------------------------------------------------

def held_patch(status: Mapping[str, Any], held_phase: str | None, step_phase: str, message: str, *,
               now: str, generation: int | None = None) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """(the status patch, the Events to post as (reason, message)) that move a running run into
    `held_phase` (crd.SUSPENDED, crd.QUEUED) or back to its step's `step_phase` (held_phase None).

    Empty when nothing changes. While held, status.stepPhase keeps the step's phase; the Suspended
    and Queued conditions say why, and turn False (Resumed, Admitted) once that is over.
    """
    updates: list[tuple[str, bool, str, str]] = []
    events: list[tuple[str, str]] = []
    was_suspended = is_true(status, crd.SUSPENDED_CONDITION)
    was_queued = is_true(status, crd.QUEUED_CONDITION)
    if held_phase == crd.SUSPENDED:
        updates.append((crd.SUSPENDED_CONDITION, True, crd.REASON_SUSPENDED, message))
        if not was_suspended:
            events.append((crd.EVENT_SUSPENDED, message))
    elif was_suspended:
        updates.append((crd.SUSPENDED_CONDITION, False, crd.REASON_RESUMED, "spec.suspend was cleared"))
        events.append((crd.EVENT_RESUMED, f"spec.suspend was cleared: phase {held_phase or step_phase}"))
    if held_phase == crd.QUEUED:
        updates.append((crd.QUEUED_CONDITION, True, crd.REASON_WAITING_FOR_ADMISSION, message))
        if not was_queued:
            events.append((crd.EVENT_QUEUED, message))
    elif was_queued and held_phase is None:
        updates.append((crd.QUEUED_CONDITION, False, crd.REASON_ADMITTED, "admitted by Kueue (Job un-suspended)"))
        events.append((crd.EVENT_ADMITTED, f"Admitted by Kueue (Job un-suspended): phase {step_phase}"))
    patch: dict[str, Any] = {}
    phase = held_phase or step_phase
    if status.get("phase") != phase:
        patch["phase"] = phase
    if held_phase is not None and status.get("stepPhase") != step_phase:
        patch["stepPhase"] = step_phase
    if held_phase is None and status.get("stepPhase") is not None:
        patch["stepPhase"] = None
    if held_phase is not None and status.get("message") != message:
        patch["message"] = message
    held_messages = {c.get("message") for c in conditions(status) if c.get("status") == "True"
                     and c.get("type") in (crd.SUSPENDED_CONDITION, crd.QUEUED_CONDITION)}
    if held_phase is None and status.get("message") and status.get("message") in held_messages:
        patch["message"] = None  # the hold's own message; a failure's stays
    conditions_now = with_conditions(status, updates, now=now, generation=generation)
    if conditions_now != conditions(status):
        patch["conditions"] = conditions_now
    return patch, events
