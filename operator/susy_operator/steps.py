"""The runs' steps as a table, and what to do next for one step: pure, no kopf, no client.

A TrainingRun is two steps (producer, trainer), or the trainer alone when its spec.source names
offsets already in Kafka (`training_steps`); an EvaluationRun is one step (evaluator). For each, the
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
| suspended          | (spec.suspend, or queued until Kueue admits)   | WAIT, held: no grace runs out    |
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


def training_steps(reads_existing_offsets: bool) -> tuple[Step, ...]:
    """The steps a TrainingRun runs: producer and trainer, or with spec.source (offsets already in
    Kafka) the trainer alone."""
    return TRAINING_STEPS[1:] if reads_existing_offsets else TRAINING_STEPS


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
    # The Job is suspended (spec.suspend, or not yet admitted by Kueue): it has no pods to wait for.
    held: bool = False


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
    if st.job_suspended(job):
        # A suspended Job's pods are being removed, and none start: a queue's wait is not a pod that
        # cannot start, so the grace period starts over once the Job runs.
        return Decision(WAIT, held=True)
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


# --- spec.suspend and queues -----------------------------------------------------------------------
# What holding a step's Job asks of the operator (`hold`). Without a queue the operator suspends and
# resumes the Job itself. With one, Kueue owns spec.suspend: it starts a suspended Job whose Workload
# is admitted and suspends a running one whose Workload is not (kueue
# pkg/controller/jobframework/reconciler.go, ReconcileGenericJob steps 7 and 8), so a Job the operator
# suspended would be started again. Kueue's way to stop an admitted workload is its Workload's
# spec.active false (site/content/en/docs/concepts/workload.md, "Active": evicted, not requeued);
# true again queues it for admission.
SUSPEND_JOB: Final = "SuspendJob"
RESUME_JOB: Final = "ResumeJob"
DEACTIVATE_WORKLOAD: Final = "DeactivateWorkload"
ACTIVATE_WORKLOAD: Final = "ActivateWorkload"


@dataclasses.dataclass(frozen=True)
class Hold:
    phase: str | None        # crd.SUSPENDED, crd.QUEUED, or None: the step runs in its own phase
    action: str | None = None
    message: str = ""
    create: bool = True      # whether a missing Job may be created now


def hold(scheduling: Any, job: Mapping[str, Any] | None, recorded: Mapping[str, Any] | None) -> Hold:
    """What spec.suspend and spec.queueName (`scheduling`, a spec.Scheduling) ask of a step whose Job
    is `job` (None: not created yet); `recorded` is status.jobs[component] (its `workloadDeactivated`
    says the operator set the Kueue Workload inactive)."""
    name = (job or {}).get("metadata", {}).get("name", "")
    deactivated = bool((recorded or {}).get("workloadDeactivated"))
    if job is not None and st.job_state(job) != "Running":
        return Hold(None)  # finished: the step's outcome stands, suspended or not
    suspended = st.job_suspended(job)
    if scheduling.suspend:
        message = (f"Suspended (spec.suspend): Job {name} has no pods until spec.suspend is cleared" if job
                   else "Suspended (spec.suspend): the step's Job is created when spec.suspend is cleared")
        if scheduling.queued:
            # A queued Job is not created while suspended: Kueue could admit it before its Workload
            # is deactivated, and it would hold quota for nothing.
            return Hold(crd.SUSPENDED, None if job is None or deactivated else DEACTIVATE_WORKLOAD, message,
                        create=False)
        return Hold(crd.SUSPENDED, SUSPEND_JOB if job is not None and not suspended else None, message)
    if scheduling.queued:
        action = ACTIVATE_WORKLOAD if deactivated else None
        if suspended or job is None:
            return Hold(crd.QUEUED, action, f"{crd.QUEUED_MESSAGE}: LocalQueue {scheduling.queue_name}"
                                            + (f", Job {name}" if name else ""))
        return Hold(None, action)
    return Hold(None, RESUME_JOB if suspended else None)


def step_phase(status: Mapping[str, Any]) -> str | None:
    """The phase of the run's current step: status.phase, or while held (Suspended, Queued) the
    step's own phase that status.stepPhase keeps."""
    phase = status.get("phase")
    return status.get("stepPhase") if phase in crd.HELD_PHASES else phase


# --- finished runs cleaned up (spec.ttlSecondsAfterFinished) ---------------------------------------

def ttl_seconds_left(status: Mapping[str, Any], ttl_seconds: int | None, now: str) -> float | None:
    """Seconds until a finished run may be deleted (0 or less: now); None while it runs, or without
    a TTL (the CR's spec.ttlSecondsAfterFinished, else the operator's default)."""
    finished = status.get("completionTime")
    if ttl_seconds is None or status.get("phase") not in crd.TERMINAL_PHASES or not finished:
        return None
    return ttl_seconds - _seconds_between(finished, now)


def runs_naming(training_run: str, runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """`Kind/name` of each unfinished run among `runs` (one namespace's TrainingRuns and EvaluationRuns)
    that names TrainingRun `training_run` (spec.model.trainingRun, spec.models[].trainingRun,
    spec.model.warmStart.trainingRun): it resolves the model through that TrainingRun's status, so
    the TrainingRun is kept until they finish."""
    found = []
    for run in runs:
        if ((run.get("status") or {}).get("phase")) in crd.TERMINAL_PHASES:
            continue
        spec = run.get("spec") or {}
        model = spec.get("model") or {}
        references = [model, model.get("warmStart") or {}, *(spec.get("models") or [])]
        if any(isinstance(ref, Mapping) and ref.get("trainingRun") == training_run for ref in references):
            found.append(f"{run.get('kind')}/{run.get('metadata', {}).get('name')}")
    return found
