"""Status helpers: the conditions list (metav1.Condition shape) and child-Job summaries.

A merge-patch replaces a list whole, so `with_condition` always returns the full list computed
from the current status; it is safe to apply twice. The caller passes the time, so these
functions stay pure and testable.
"""
from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from susy_operator import crd

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


def truncate(message: str, limit: int = MESSAGE_LIMIT) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


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
                "message": truncate(message),
                "lastTransitionTime": now if changed else condition.get("lastTransitionTime", now),
                **({"observedGeneration": generation} if generation is not None else {}),
            }
            return result
    result.append({"type": type_, "status": new_status, "reason": reason, "message": truncate(message),
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
        "message": truncate(message),
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


def pod_problems(pods: Sequence[Mapping[str, Any]], limit: int = 3) -> list[str]:
    """Why a Job's pods failed or cannot start, from what the kubelet reports on each pod:
    a container terminated with a non-zero exit (`OOMKilled`, `Error`, with its exit code), or
    waiting for a reason other than the normal start-up (`CreateContainerConfigError`,
    `ErrImagePull`, ...). One line per distinct cause, the first `limit` of them, oldest pod first."""
    normal_waits = {"ContainerCreating", "PodInitializing"}
    lines: list[str] = []
    seen: set[tuple[str, str]] = set()
    ordered = sorted(pods, key=lambda p: (p.get("metadata", {}).get("creationTimestamp") or "",
                                          p.get("metadata", {}).get("name") or ""))
    for pod in ordered:
        name = pod.get("metadata", {}).get("name", "?")
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            state = container.get("state") or {}
            terminated, waiting = state.get("terminated") or {}, state.get("waiting") or {}
            if terminated and terminated.get("exitCode", 0) != 0:
                cause = f"{terminated.get('reason') or 'Error'} (exit code {terminated.get('exitCode')})"
                detail = terminated.get("message") or ""
            elif waiting.get("reason") and waiting["reason"] not in normal_waits:
                cause, detail = waiting["reason"], waiting.get("message") or ""
            else:
                continue
            if (cause, detail) in seen:
                continue
            seen.add((cause, detail))
            lines.append(f"pod {name}: {cause}" + (f": {detail}" if detail else ""))
    return lines[:limit]


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
