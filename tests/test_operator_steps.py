"""The reconciler's decisions, without kopf, a client or a process: steps.decide, the TrainingRun
reference rule, and the status helpers the handlers use (status.py)."""
from __future__ import annotations

import json

import pytest

from susy_operator import crd, status as st, steps

NOW = "2026-11-28T10:00:00Z"
STEP = steps.TRAINING_STEPS[0]


def job(state: str | None, **status: object) -> dict:
    conditions = [{"type": state, "status": "True", "reason": "BackoffLimitExceeded" if state == "Failed" else "",
                   "message": "Job has reached the specified backoff limit"}] if state else []
    return {"metadata": {"name": "tr-producer"}, "status": {"conditions": conditions, **status}}


def never() -> bool:
    raise AssertionError("the store is asked only when the Job is gone")


def decide(job_obj, recorded=None, *, output=never, not_starting=(), grace=300.0):
    return steps.decide(STEP, job_obj, recorded, output_present=output, not_starting=not_starting, now=NOW,
                        grace_seconds=grace)


def test_the_step_table_names_each_step_once() -> None:
    assert [s.component for s in steps.TRAINING_STEPS] == [crd.PRODUCER, crd.TRAINER]
    assert steps.training_step(crd.PRODUCING) is STEP
    assert steps.next_training_step(STEP) is steps.TRAINING_STEPS[1]
    assert steps.next_training_step(steps.TRAINING_STEPS[1]) is None
    assert steps.training_step(crd.SUCCEEDED) is None


def test_complete_and_failed_jobs() -> None:
    assert decide(job("Complete")).action == steps.DONE
    failed = decide(job("Failed"))
    assert (failed.action, failed.reason) == (steps.FAIL, "BackoffLimitExceeded")
    assert "tr-producer" in failed.message


def test_a_missing_job_is_created_only_when_never_created() -> None:
    assert decide(None).action == steps.CREATE
    assert decide(None, {"state": "Missing"}).action == steps.CREATE


def test_a_job_gone_after_it_finished_is_done() -> None:
    assert decide(None, {"name": "tr-producer", "state": "Complete"}).action == steps.DONE
    # ttlSecondsAfterFinished: 0 removed it before the operator saw it finish: the store decides.
    assert decide(None, {"name": "tr-producer", "state": "Running"}, output=lambda: True).action == steps.DONE


def test_a_job_gone_while_running_fails_the_step_never_reruns_it() -> None:
    decision = decide(None, {"name": "tr-producer", "state": "Running", "active": 1}, output=lambda: False)
    assert (decision.action, decision.reason) == (steps.FAIL, crd.REASON_JOB_DELETED)
    assert "tr-producer was deleted before it finished" in decision.message
    assert STEP.output in decision.message


def test_a_pod_that_cannot_start_waits_then_fails_after_the_grace_period() -> None:
    pods = [("tr-producer-x", "ImagePullBackOff", 'Back-off pulling image "nope:1"')]
    first = decide(job(None, active=1), {"state": "Running"}, not_starting=pods)
    assert (first.action, first.reason) == (steps.WAIT, "ImagePullBackOff")
    assert first.not_starting == {"since": NOW, "reason": "ImagePullBackOff",
                                  "message": 'pod tr-producer-x: ImagePullBackOff: Back-off pulling image "nope:1"'}
    recorded = {"state": "Running", "notStarting": {**first.not_starting, "since": "2026-11-28T09:54:00Z"}}
    later = decide(job(None, active=1), recorded, not_starting=pods, grace=300)
    assert (later.action, later.reason) == (steps.FAIL, "ImagePullBackOff")
    assert "(for 360 s, more than the 300 s grace period)" in later.message
    # The pod started after all: the wait is over, nothing is recorded.
    assert decide(job(None, active=1, ready=1), recorded).not_starting is None


def test_the_grace_period_counts_from_the_first_sighting_of_the_same_reason() -> None:
    pods = [("p", "ErrImagePull", "")]
    recorded = {"state": "Running", "notStarting": {"since": "2026-11-28T09:58:00Z", "reason": "ErrImagePull"}}
    assert decide(job(None, active=1), recorded, not_starting=pods, grace=300).action == steps.WAIT
    assert decide(job(None, active=1), recorded, not_starting=pods, grace=100).action == steps.FAIL
    # Another reason starts the clock again.
    other = decide(job(None, active=1), recorded, not_starting=[("p", "Unschedulable", "0/3 nodes")], grace=100)
    assert (other.action, other.not_starting["since"]) == (steps.WAIT, NOW)


def test_pods_not_starting_and_failed_from_what_the_kubelet_reports() -> None:
    pods = [
        {"metadata": {"name": "a", "creationTimestamp": "1"}, "status": {"phase": "Pending", "containerStatuses": [
            {"state": {"waiting": {"reason": "ContainerCreating"}}}]}},
        {"metadata": {"name": "b", "creationTimestamp": "2"}, "status": {"phase": "Pending", "containerStatuses": [
            {"state": {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "s" not found'}}}]}},
        {"metadata": {"name": "c", "creationTimestamp": "3"}, "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes"}]}},
        {"metadata": {"name": "d", "creationTimestamp": "4"}, "status": {"phase": "Failed", "containerStatuses": [
            {"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}},
        {"metadata": {"name": "e", "creationTimestamp": "5"}, "status": {"phase": "Succeeded", "containerStatuses": [
            {"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}},
    ]
    assert st.pods_not_starting(pods) == [("b", "CreateContainerConfigError", 'secret "s" not found'),
                                          ("c", "Unschedulable", "0/1 nodes")]
    assert st.pods_failed(pods) == [("d", "OOMKilled (exit code 137)", "")]
    assert st.pod_problems(pods) == ["pod d: OOMKilled (exit code 137)",
                                     'pod b: CreateContainerConfigError: secret "s" not found',
                                     "pod c: Unschedulable: 0/1 nodes"]


@pytest.mark.parametrize("tr, age, expected", [
    (None, 10, (steps.WAIT, "", "TrainingRun t does not exist yet")),
    (None, 400, (steps.FAIL, crd.REASON_TRAINING_RUN_NOT_FOUND, "TrainingRun t does not exist in namespace ns")),
    ({"status": {"phase": crd.FAILED, "message": "boom"}}, 0, (steps.FAIL, crd.REASON_TRAINING_RUN_FAILED,
                                                               "TrainingRun t failed: boom")),
    ({"status": {"phase": crd.TRAINING}}, 0, (steps.WAIT, "", "TrainingRun t is Training")),
    ({"status": {"phase": crd.SUCCEEDED, "runName": "ns.t.1"}}, 0, (steps.DONE, "", "latest:ns.t.1")),
])
def test_an_evaluation_naming_a_training_run(tr, age, expected) -> None:
    assert steps.training_run_reference("t", "ns", tr, age, 300) == expected


def test_status_helpers_hold_the_store_contract() -> None:
    assert st.kafka_offsets({"partitions": {"1": [5, 9], "0": [0, 4]}}) == [
        {"partition": 0, "start": 0, "end": 4}, {"partition": 1, "start": 5, "end": 9}]
    aggregated = {"accuracy": 0.5, "auc": 0.6, "log_loss": 0.7, "rows": 4,
                  "confusion": {"tn": 1, "fp": 1, "fn": 1, "tp": 1}}
    # A result from before precisions were recorded was computed in fp32 (issue 24).
    assert st.evaluation_metrics(aggregated) == {"accuracy": 0.5, "auc": 0.6, "logLoss": 0.7, "rows": 4,
                                                 "confusion": {"tn": 1, "fp": 1, "fn": 1, "tp": 1},
                                                 "precision": "fp32"}
    assert st.evaluation_metrics({**aggregated, "precision": "bf16"})["precision"] == "bf16"
    with pytest.raises(KeyError):  # the store writes auc and log_loss; other spellings are a bug
        st.evaluation_metrics({**{k: v for k, v in aggregated.items() if k != "auc"}, "roc_auc": 0.6})
    summaries = st.shard_summaries([{"shard_index": 1, "rows": 4, "correct": 3, "seconds": 1, "rows_per_second": 4},
                                    {"shard_index": 0, "rows": 0}])
    assert [s["index"] for s in summaries] == [0, 1] and summaries[1]["accuracy"] == 0.75


def test_a_failed_step_names_its_pods_termination_message_first_redacted(monkeypatch) -> None:
    """Issue 22 §8: a run whose producer exited 2 said only "Container exited with code 2"; the
    cause was in the pod's log. The kubelet puts the container's termination message (the
    pipeline's one-line error) in state.terminated.message, or lastState for a restarted container;
    the Failed message leads with it, redacted and bounded like every condition message."""
    monkeypatch.setenv("MONGODB_URI", "mongodb://app:storePw7781@db:27017/?tlsCertificateKeyFilePassword=tlsKeyPw5523")
    cause = "/data/susy.csv.gz: no data rows after skipping 30000"
    pods = [
        {"metadata": {"name": "p-0", "creationTimestamp": "1"}, "status": {"phase": "Failed", "containerStatuses": [
            {"state": {"terminated": {"exitCode": 2, "reason": "Error", "message": cause}}}]}},
        {"metadata": {"name": "p-1", "creationTimestamp": "2"}, "status": {"phase": "Running", "containerStatuses": [
            {"state": {"running": {}}, "lastState": {"terminated": {
                "exitCode": 3, "reason": "Error",
                "message": "store at mongodb://app:storePw7781@db:27017/?tlsCertificateKeyFilePassword=tlsKeyPw5523 "
                           "down; key tlsKeyPw5523"}}}]}},
    ]
    message = st.failed_job_message("Job p: Container p exited with code 2 (podFailurePolicy)", st.pods_failed(pods))
    assert message.startswith(f"pod p-0: Error (exit code 2): {cause}; pod p-1: Error (exit code 3): ")
    assert message.endswith("; Job p: Container p exited with code 2 (podFailurePolicy)")
    shown = st.failed_patch({}, reason="PodFailurePolicy", message=message, now="T")
    text = json.dumps(shown)
    assert "storePw7781" not in text and "tlsKeyPw5523" not in text and "mongodb://db:27017" in text
    assert shown["message"].startswith(f"pod p-0: Error (exit code 2): {cause}")
    assert len(st.shown("x\n" * 3000)) == st.MESSAGE_LIMIT
