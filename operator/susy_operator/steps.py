"""The runs' steps as a table, and what to do next for one step: pure, no kopf, no client.

A TrainingRun is two steps (producer, trainer), an EvaluationRun one (evaluator). For each, the
reconciler observes the step's Job (or its absence), what status last recorded of it, whether the
store already holds the step's output, and the pods that cannot start; `decide` turns that into
one action. The rules, in the order they apply:

| the Job now        | what else                                      | action                           |
|--------------------|------------------------------------------------|----------------------------------|
| Complete           |                                                | DONE                             |
| Failed             |                                                | FAIL with the Job's reason       |
| missing            | never created (nothing recorded)               | CREATE                           |
| missing            | recorded Complete, or its output in the store  | DONE (deleted after it finished: |
|                    |                                                | a TTL, `kubectl delete job`)     |
| missing            | recorded, no output                            | FAIL JobDeleted (never re-run)   |
| running            | a pod cannot start for `grace` seconds or more | FAIL with the pod's reason       |
| running            | a pod cannot start, for less                   | WAIT, saying which pod and why   |
| running            |                                                | WAIT                             |
"""
from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from susy_operator import crd, status as st

CREATE: Final = "Create"
WAIT: Final = "Wait"
DONE: Final = "Done"
FAIL: Final = "Fail"


@dataclasses.dataclass(frozen=True)
class Step:
    component: str   # the Job's component label and name suffix
    condition: str   # the condition that turns True when the step is done
    phase: str       # status.phase while the step runs
    output: str      # what "done" leaves in the store, checked when the Job is gone


TRAINING_STEPS: Final = (
    Step(crd.PRODUCER, crd.PRODUCED, crd.PRODUCING, "the run's production record (rows, offsets)"),
    Step(crd.TRAINER, crd.TRAINED, crd.TRAINING, "a model saved under the run's name"),
)
EVALUATION_STEP: Final = Step(crd.EVALUATOR, crd.EVALUATED, crd.EVALUATING,
                              "a result for every shard of the evaluation")


def training_step(phase: str | None) -> Step | None:
    """The TrainingRun step that runs in `phase`, if any."""
    return next((step for step in TRAINING_STEPS if step.phase == phase), None)


def next_training_step(step: Step) -> Step | None:
    index = TRAINING_STEPS.index(step)
    return TRAINING_STEPS[index + 1] if index + 1 < len(TRAINING_STEPS) else None


@dataclasses.dataclass(frozen=True)
class Decision:
    action: str
    reason: str = ""
    message: str = ""
    # While a pod cannot start: {"since", "reason", "message"}, kept in status.jobs[component].
    not_starting: Mapping[str, str] | None = None


def _seconds_between(earlier: str, later: str) -> float:
    parse = lambda t: datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    return (parse(later) - parse(earlier)).total_seconds()


def decide(step: Step, job: Mapping[str, Any] | None, recorded: Mapping[str, Any] | None, *,
           output_present: Callable[[], bool], not_starting: Sequence[tuple[str, str, str]] = (),
           now: str, grace_seconds: float) -> Decision:
    """What to do about `step` (the rules are in the module docstring).

    `recorded` is status.jobs[component] as last written (None: the Job was never created);
    `output_present` is asked only when the Job is gone; `not_starting` comes from
    `status.pods_not_starting` over the Job's pods.
    """
    state = st.job_state(job)
    if state == "Complete":
        return Decision(DONE)
    if state == "Failed":
        reason, message = st.job_failure_message(job or {})
        return Decision(FAIL, reason, message)
    if state == "Missing":
        if recorded is None or recorded.get("state") == "Missing":
            return Decision(CREATE)
        if recorded.get("state") == "Complete" or output_present():
            return Decision(DONE)
        name = recorded.get("name", f"<{step.component}>")
        return Decision(FAIL, crd.REASON_JOB_DELETED,
                        f"Job {name} was deleted before it finished (last seen: {recorded.get('state')}, "
                        f"{recorded.get('succeeded', 0)} succeeded, {recorded.get('active', 0)} active) and "
                        f"the store has no {step.output}; the step is not run again: delete and re-create "
                        "the resource to start over")
    if not not_starting:
        return Decision(WAIT)
    lines = st.describe_pods(not_starting)
    pod, reason, _ = not_starting[0]
    previous = (recorded or {}).get("notStarting") or {}
    since = previous.get("since") if previous.get("reason") == reason else None
    since = since or now
    waited = _seconds_between(since, now)
    message = "; ".join(lines)
    if waited >= grace_seconds:
        return Decision(FAIL, reason, f"{message} (for {waited:.0f} s, more than the {grace_seconds:.0f} s "
                                      "grace period)")
    return Decision(WAIT, reason, message, not_starting={"since": since, "reason": reason, "message": message})


def training_run_reference(run: str, namespace: str, training_run: Mapping[str, Any] | None, age_seconds: float,
                           grace_seconds: float) -> tuple[str, str, str]:
    """What an EvaluationRun naming TrainingRun `run` does now: (WAIT, "", why), (FAIL, reason, why),
    or (DONE, "", the store reference `latest:<runName>`). `age_seconds` is the EvaluationRun's age:
    `kubectl apply -f manifests/examples/` may create it before the TrainingRun it names."""
    if training_run is None:
        if age_seconds < grace_seconds:
            return WAIT, "", f"TrainingRun {run} does not exist yet"
        return FAIL, crd.REASON_TRAINING_RUN_NOT_FOUND, f"TrainingRun {run} does not exist in namespace {namespace}"
    tr_status = training_run.get("status") or {}
    if tr_status.get("phase") == crd.FAILED:
        return FAIL, crd.REASON_TRAINING_RUN_FAILED, f"TrainingRun {run} failed: {tr_status.get('message', '')}"
    if tr_status.get("phase") != crd.SUCCEEDED or not tr_status.get("runName"):
        return WAIT, "", f"TrainingRun {run} is {tr_status.get('phase') or 'not started'}"
    return DONE, "", f"latest:{tr_status['runName']}"
