"""Issue 26, the pure parts: spec.suspend, Kueue queues and priorities, the CR's own TTL. Spec parsing,
the Job builders, the step decision for suspended Jobs, the held phases and their conditions."""
from __future__ import annotations

import pytest

from susy_operator import builders, config, crd, finalizers, spec as spec_lib, status as st, steps

OWNER = builders.Owner(kind=crd.TRAINING_KIND, name="susy-train", namespace="team-a",
                       uid="0f6e3c52-8d1b-4d8e-9a55-1f2e3d4c5b6a")
OWNER_ER = builders.Owner(kind=crd.EVALUATION_KIND, name="susy-eval", namespace="team-a",
                          uid="7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")
CONFIG = builders.JobConfig(image="susy-pipeline:test", kafka_bootstrap="kafka:9092", store_secret="store",
                            database="db")
RUN = "team-a.susy-train.0f6e3c52"
NOW = "2026-12-05T10:00:00Z"
TR = {"dataset": {"uri": "/opt/susy/data/susy-sample.csv.gz"}}
ER = {"model": {"trainingRun": "susy-train"}, "dataset": {"uris": ["/d.csv"]}, "shards": 2}


def all_jobs(spec: dict, labels: dict | None = None) -> list[dict]:
    training = spec_lib.parse_training_run({**TR, **spec}, labels=labels)
    evaluation = spec_lib.parse_evaluation_run({**ER, **spec}, labels=labels)
    return [builders.producer_job(OWNER, training, RUN, CONFIG), builders.trainer_job(OWNER, training, RUN, CONFIG),
            builders.evaluator_job(OWNER_ER, evaluation, "e", "ab" * 16, CONFIG)]


# --- spec ---------------------------------------------------------------------------------------

def test_the_scheduling_fields_are_optional_and_parsed() -> None:
    assert spec_lib.parse_training_run(TR).scheduling == spec_lib.Scheduling()
    parsed = spec_lib.parse_evaluation_run({**ER, "suspend": True, "queueName": "team-a",
                                            "priorityClassName": "batch.low", "workloadPriorityClassName": "low",
                                            "ttlSecondsAfterFinished": 0})
    assert parsed.scheduling == spec_lib.Scheduling(suspend=True, queue_name="team-a", priority_class_name="batch.low",
                                                    workload_priority_class_name="low", ttl_seconds_after_finished=0)
    assert parsed.scheduling.queued


def test_kueue_labels_on_the_resource_stand_for_the_fields() -> None:
    labels = {crd.LABEL_KUEUE_QUEUE: "team-a", crd.LABEL_KUEUE_PRIORITY: "low", "team": "physics"}
    scheduling = spec_lib.parse_training_run(TR, labels=labels).scheduling
    assert (scheduling.queue_name, scheduling.workload_priority_class_name) == ("team-a", "low")
    same = spec_lib.parse_training_run({**TR, "queueName": "team-a"}, labels=labels).scheduling
    assert same.queue_name == "team-a"


@pytest.mark.parametrize("spec, labels, problem", [
    ({"suspend": "yes"}, {}, "spec.suspend must be true or false"),
    ({"queueName": "Team_A"}, {}, "spec.queueName 'Team_A' does not match"),
    ({"queueName": "a" * 64}, {}, "spec.queueName must be at most 63 characters"),
    ({"queueName": "a"}, {crd.LABEL_KUEUE_QUEUE: "b"}, "spec.queueName 'a' and the label kueue.x-k8s.io/queue-name"),
    ({}, {crd.LABEL_KUEUE_PRIORITY: "Low!"}, "metadata.labels[kueue.x-k8s.io/priority-class]"),
    ({"priorityClassName": "-x"}, {}, "spec.priorityClassName '-x' does not match"),
    ({"ttlSecondsAfterFinished": -1}, {}, "spec.ttlSecondsAfterFinished must be >= 0"),
])
def test_bad_scheduling_fields_are_named(spec: dict, labels: dict, problem: str) -> None:
    for parse, base in ((spec_lib.parse_training_run, TR), (spec_lib.parse_evaluation_run, ER)):
        with pytest.raises(spec_lib.SpecError) as error:
            parse({**base, **spec}, labels=labels)
        assert any(p.startswith(problem) for p in error.value.problems), error.value.problems


def test_the_operator_wide_ttl_default_is_off_unless_set() -> None:
    assert config.load({}).run_ttl_seconds_after_finished is None
    assert config.load({"SUSY_RUN_TTL_SECONDS_AFTER_FINISHED": "3600"}).run_ttl_seconds_after_finished == 3600
    with pytest.raises(ValueError, match="SUSY_RUN_TTL_SECONDS_AFTER_FINISHED"):
        config.load({"SUSY_RUN_TTL_SECONDS_AFTER_FINISHED": "1h"})


# --- builders ----------------------------------------------------------------------------------

def test_jobs_without_scheduling_fields_are_unchanged() -> None:
    for job in all_jobs({}):
        assert "suspend" not in job["spec"] and "priorityClassName" not in job["spec"]["template"]["spec"]
        assert not any(key.startswith("kueue.x-k8s.io/") for key in job["metadata"]["labels"])


def test_a_queued_run_creates_every_job_suspended_with_kueues_labels() -> None:
    for job in all_jobs({"queueName": "team-a", "workloadPriorityClassName": "low", "priorityClassName": "batch"}):
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"][crd.LABEL_KUEUE_QUEUE] == "team-a"
        assert job["metadata"]["labels"][crd.LABEL_KUEUE_PRIORITY] == "low"
        # Kueue reads both from the Job, not its pods; the pods keep the run's selector labels only.
        assert crd.LABEL_KUEUE_QUEUE not in job["spec"]["template"]["metadata"]["labels"]
        assert job["spec"]["template"]["spec"]["priorityClassName"] == "batch"


def test_a_suspended_run_without_a_queue_creates_suspended_jobs_without_kueue_labels() -> None:
    for job in all_jobs({"suspend": True, "workloadPriorityClassName": "low", "priorityClassName": "batch"}):
        assert job["spec"]["suspend"] is True
        # Without a queue Kueue ignores a Job, so its priority label would mean nothing.
        assert crd.LABEL_KUEUE_PRIORITY not in job["metadata"]["labels"]
        assert job["spec"]["template"]["spec"]["priorityClassName"] == "batch"


# --- steps: a suspended Job is held, never failed for its pods ----------------------------------

def job(suspend: bool | None = None, **status: object) -> dict:
    body: dict = {"metadata": {"name": "susy-train-producer"}, "spec": {}, "status": dict(status)}
    if suspend is not None:
        body["spec"]["suspend"] = suspend
    return body


UNSCHEDULABLE = [("susy-train-producer-x", "Unschedulable", "0/3 nodes are available")]


def test_a_suspended_job_waits_held_past_any_grace_and_forgets_the_pods_clock() -> None:
    recorded = {"name": "susy-train-producer", "state": "Running",
                "notStarting": {"since": "2026-12-05T08:00:00Z", "reason": "Unschedulable", "message": "m"}}
    for not_starting in ((), UNSCHEDULABLE):
        decision = steps.decide(steps.TRAINING_STEPS[0], job(suspend=True), recorded, output_present=lambda: False,
                                not_starting=not_starting, now=NOW, grace_seconds=1)
        assert (decision.action, decision.held, decision.not_starting) == (steps.WAIT, True, None)
    # The same Job running with the same pod, two hours on: the grace period has run out.
    running = steps.decide(steps.TRAINING_STEPS[0], job(suspend=False, active=1), recorded,
                           output_present=lambda: False, not_starting=UNSCHEDULABLE, now=NOW, grace_seconds=300)
    assert running.action == steps.FAIL and not running.held


def test_a_finished_job_is_never_held() -> None:
    complete = job(suspend=True, conditions=[{"type": "Complete", "status": "True"}])
    assert not st.job_suspended(complete) and st.job_summary(complete).get("suspended") is None
    assert steps.decide(steps.TRAINING_STEPS[0], complete, None, output_present=lambda: False, now=NOW,
                        grace_seconds=1).action == steps.DONE
    assert steps.hold(spec_lib.Scheduling(suspend=True), complete, None) == steps.Hold(None)
    assert st.job_summary(job(suspend=True))["suspended"] is True


QUEUED = spec_lib.Scheduling(queue_name="team-a")


@pytest.mark.parametrize("scheduling, the_job, recorded, expected", [
    # Without a queue, the operator suspends and resumes the Job itself.
    (spec_lib.Scheduling(), job(suspend=False), None, (None, None, True)),
    (spec_lib.Scheduling(suspend=True), job(suspend=False), None, (crd.SUSPENDED, steps.SUSPEND_JOB, True)),
    (spec_lib.Scheduling(suspend=True), job(suspend=True), None, (crd.SUSPENDED, None, True)),
    (spec_lib.Scheduling(suspend=True), None, None, (crd.SUSPENDED, None, True)),
    (spec_lib.Scheduling(), job(suspend=True), None, (None, steps.RESUME_JOB, True)),
    # With one, Kueue owns spec.suspend: the operator waits for admission, and holds a run through
    # the Kueue Workload; a Job not yet created waits for spec.suspend to be cleared.
    (QUEUED, job(suspend=True), None, (crd.QUEUED, None, True)),
    (QUEUED, None, None, (crd.QUEUED, None, True)),
    (QUEUED, job(suspend=False), None, (None, None, True)),
    (spec_lib.Scheduling(queue_name="team-a", suspend=True), job(suspend=False), None,
     (crd.SUSPENDED, steps.DEACTIVATE_WORKLOAD, False)),
    (spec_lib.Scheduling(queue_name="team-a", suspend=True), job(suspend=True), {"workloadDeactivated": True},
     (crd.SUSPENDED, None, False)),
    (spec_lib.Scheduling(queue_name="team-a", suspend=True), None, None, (crd.SUSPENDED, None, False)),
    (QUEUED, job(suspend=True), {"workloadDeactivated": True}, (crd.QUEUED, steps.ACTIVATE_WORKLOAD, True)),
])
def test_hold(scheduling, the_job, recorded, expected) -> None:
    held = steps.hold(scheduling, the_job, recorded)
    assert (held.phase, held.action, held.create) == expected
    if held.phase == crd.QUEUED:
        assert held.message.startswith(crd.QUEUED_MESSAGE)


def test_held_phases_are_followed_and_name_their_step() -> None:
    for phase in crd.HELD_PHASES:
        assert finalizers.is_followed({"phase": phase}, {})
        assert steps.step_phase({"phase": phase, "stepPhase": crd.TRAINING}) == crd.TRAINING
    assert steps.step_phase({"phase": crd.PRODUCING}) == crd.PRODUCING


def test_queued_then_admitted_conditions_phase_and_events() -> None:
    status = {"phase": crd.PRODUCING, "conditions": []}
    patch, events = st.held_patch(status, crd.QUEUED, crd.PRODUCING, crd.QUEUED_MESSAGE, now=NOW)
    assert patch["phase"] == crd.QUEUED and patch["stepPhase"] == crd.PRODUCING
    assert patch["message"] == crd.QUEUED_MESSAGE
    queued = st.get_condition(patch, crd.QUEUED_CONDITION)
    assert (queued["status"], queued["reason"], queued["message"]) == ("True", crd.REASON_WAITING_FOR_ADMISSION,
                                                                       crd.QUEUED_MESSAGE)
    assert [reason for reason, _ in events] == [crd.EVENT_QUEUED]
    status = {**status, **patch}
    assert st.held_patch(status, crd.QUEUED, crd.PRODUCING, crd.QUEUED_MESSAGE, now=NOW) == ({}, [])  # idempotent
    patch, events = st.held_patch(status, None, crd.PRODUCING, "", now="2026-12-05T10:05:00Z")
    assert patch["phase"] == crd.PRODUCING and patch["stepPhase"] is None and patch["message"] is None
    admitted = st.get_condition(patch, crd.QUEUED_CONDITION)
    assert (admitted["status"], admitted["reason"]) == ("False", crd.REASON_ADMITTED)
    assert [reason for reason, _ in events] == [crd.EVENT_ADMITTED]


def test_suspended_then_resumed() -> None:
    status = {"phase": crd.TRAINING, "conditions": []}
    patch, events = st.held_patch(status, crd.SUSPENDED, crd.TRAINING, "Suspended (spec.suspend)", now=NOW)
    assert (patch["phase"], patch["stepPhase"]) == (crd.SUSPENDED, crd.TRAINING)
    assert st.is_true(patch, crd.SUSPENDED_CONDITION) and [r for r, _ in events] == [crd.EVENT_SUSPENDED]
    patch, events = st.held_patch({**status, **patch}, None, crd.TRAINING, "", now=NOW)
    assert patch["phase"] == crd.TRAINING and not st.is_true(patch, crd.SUSPENDED_CONDITION)
    assert st.get_condition(patch, crd.SUSPENDED_CONDITION)["reason"] == crd.REASON_RESUMED
    assert [r for r, _ in events] == [crd.EVENT_RESUMED]
    assert st.held_patch({"phase": crd.TRAINING}, None, crd.TRAINING, "", now=NOW) == ({}, [])


# --- the CR's own TTL ----------------------------------------------------------------------------

def test_ttl_counts_from_completion_and_only_for_finished_runs() -> None:
    done = {"phase": crd.SUCCEEDED, "completionTime": "2026-12-05T09:59:00Z"}
    assert steps.ttl_seconds_left(done, 120, NOW) == 60
    assert steps.ttl_seconds_left(done, 0, NOW) == -60
    assert steps.ttl_seconds_left({**done, "phase": crd.FAILED}, 60, NOW) == 0
    assert steps.ttl_seconds_left(done, None, NOW) is None
    assert steps.ttl_seconds_left({"phase": crd.TRAINING}, 0, NOW) is None
    assert steps.ttl_seconds_left({"phase": crd.SUSPENDED}, 0, NOW) is None


def test_a_training_run_named_by_an_unfinished_run_is_kept() -> None:
    runs = [
        {"kind": "EvaluationRun", "metadata": {"name": "e1"}, "spec": {"model": {"trainingRun": "t"}},
         "status": {"phase": crd.PENDING}},
        {"kind": "EvaluationRun", "metadata": {"name": "e2"}, "spec": {"models": [{"id": "0" * 32},
                                                                                  {"trainingRun": "t"}]}},
        {"kind": "TrainingRun", "metadata": {"name": "t2"}, "spec": {"model": {"warmStart": {"trainingRun": "t"}}},
         "status": {"phase": crd.QUEUED}},
        {"kind": "EvaluationRun", "metadata": {"name": "done"}, "spec": {"model": {"trainingRun": "t"}},
         "status": {"phase": crd.SUCCEEDED}},
        {"kind": "EvaluationRun", "metadata": {"name": "other"}, "spec": {"model": {"trainingRun": "u"}}},
    ]
    assert steps.runs_naming("t", runs) == ["EvaluationRun/e1", "EvaluationRun/e2", "TrainingRun/t2"]
    assert steps.runs_naming("v", runs) == []


# --- against the API emulator: the operator, the Job runner (the Job controller) and the test as Kueue ------

import asyncio  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from support import fakes  # noqa: E402
from support.fixtures import (NAMESPACE, cluster, condition, evaluation_run, operator, store_uri,  # noqa: E402,F401
                              training_run)
from support.harness import Cluster  # noqa: E402


def admit(cluster: Cluster, job_name: str) -> None:
    """What Kueue does when a Workload is admitted: the Job un-suspended (kueue
    pkg/controller/jobs/job/job_controller.go, RunWithPodSetsInfo)."""
    cluster.patch("jobs", NAMESPACE, job_name, {"spec": {"suspend": False}})


def reasons(cluster: Cluster, name: str) -> list[str]:
    return [e["reason"] for e in sorted(cluster.events(NAMESPACE, name), key=lambda e: e["metadata"]["name"])]


def wait_phase(cluster: Cluster, name: str, phase: str, timeout: float = 20) -> dict[str, Any]:
    return cluster.wait_phase("trainingruns", NAMESPACE, name, {phase}, timeout)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_queued_run_waits_past_the_pod_start_grace_and_runs_once_admitted(cluster: Cluster, operator) -> None:
    runner = cluster.start_runner(executor=fakes.executor)
    operator(SUSY_POD_START_GRACE_SECONDS="1")
    cluster.create(training_run("tr", queueName="team-a", workloadPriorityClassName="low"))
    job = cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "tr-producer"), 20, "the producer Job")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][crd.LABEL_KUEUE_QUEUE] == "team-a"
    assert job["metadata"]["labels"][crd.LABEL_KUEUE_PRIORITY] == "low"
    run = wait_phase(cluster, "tr", crd.QUEUED)
    assert run["status"]["stepPhase"] == crd.PRODUCING
    assert condition(run, crd.QUEUED_CONDITION)["message"].startswith(crd.QUEUED_MESSAGE)
    time.sleep(4)  # four times the grace period, the operator looking every 0.25 s
    run = cluster.get("trainingruns", NAMESPACE, "tr")
    assert run["status"]["phase"] == crd.QUEUED, run["status"]
    assert not runner.runs, "a suspended Job starts no pod"

    admit(cluster, "tr-producer")
    trainer = cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "tr-trainer"), 20, "the trainer Job")
    assert trainer["spec"]["suspend"] is True and trainer["metadata"]["labels"][crd.LABEL_KUEUE_QUEUE] == "team-a"
    run = cluster.wait_for(lambda: (lambda r: r if r["status"].get("stepPhase") == crd.TRAINING else None)(
        cluster.get("trainingruns", NAMESPACE, "tr")), 20, "the trainer queued")
    assert run["status"]["phase"] == crd.QUEUED and run["status"]["rowsProduced"] == 2000
    admit(cluster, "tr-trainer")
    run = wait_phase(cluster, "tr", crd.SUCCEEDED)
    admitted = condition(run, crd.QUEUED_CONDITION)
    assert (admitted["status"], admitted["reason"]) == ("False", crd.REASON_ADMITTED)
    assert "stepPhase" not in run["status"] and "message" not in run["status"]
    cluster.wait_for(lambda: reasons(cluster, "tr").count(crd.EVENT_ADMITTED) == 2, 10,
                     f"two Admitted Events (so far: {reasons(cluster, 'tr')})")
    assert reasons(cluster, "tr").count(crd.EVENT_QUEUED) == 2
    assert cluster.job_creations() == {(NAMESPACE, "tr-producer"): 1, (NAMESPACE, "tr-trainer"): 1}


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_suspend_mid_run_then_resume_without_a_duplicate_job(cluster: Cluster, operator) -> None:
    attempts: list[int] = []

    async def producer_slow_the_first_time(job: dict[str, Any], index: int, env: dict[str, str]) -> int:
        if job["metadata"]["name"].endswith("-producer") and not attempts:
            attempts.append(1)
            await asyncio.sleep(600)  # the pod removed by the suspension cancels this
        return await fakes.executor(job, index, env)

    runner = cluster.start_runner(executor=producer_slow_the_first_time)
    operator(SUSY_POD_START_GRACE_SECONDS="1")
    cluster.create(training_run("tr"))
    cluster.wait_for(lambda: runner.tasks, 20, "the producer pod to start")
    cluster.patch("trainingruns", NAMESPACE, "tr", {"spec": {"suspend": True}})
    run = wait_phase(cluster, "tr", crd.SUSPENDED)
    assert run["status"]["stepPhase"] == crd.PRODUCING and st.is_true(run["status"], crd.SUSPENDED_CONDITION)
    job = cluster.wait_for(lambda: (lambda j: j if st.job_suspended(j) and not j["status"].get("active") else None)(
        cluster.get("jobs", NAMESPACE, "tr-producer")), 10, "the Job suspended, its pod gone")
    assert job["status"]["failed"] == 0  # a pod removed by the suspension is no failure
    cluster.wait_for(lambda: not cluster.list("pods", NAMESPACE), 10, "the pod deleted")
    time.sleep(2)  # twice the grace period: a suspended run does not fail
    assert cluster.get("trainingruns", NAMESPACE, "tr")["status"]["phase"] == crd.SUSPENDED

    cluster.patch("trainingruns", NAMESPACE, "tr", {"spec": {"suspend": None}})
    run = wait_phase(cluster, "tr", crd.SUCCEEDED)
    resumed = condition(run, crd.SUSPENDED_CONDITION)
    assert (resumed["status"], resumed["reason"]) == ("False", crd.REASON_RESUMED)
    assert cluster.job_creations() == {(NAMESPACE, "tr-producer"): 1, (NAMESPACE, "tr-trainer"): 1}
    assert [r.job for r in runner.runs] == ["tr-producer", "tr-producer", "tr-trainer"]
    assert {crd.EVENT_SUSPENDED, crd.EVENT_RESUMED} <= set(reasons(cluster, "tr"))


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_queued_run_suspended_sets_its_kueue_workload_inactive_and_back(cluster: Cluster, operator) -> None:
    """With a queue, Kueue owns the Job's spec.suspend (it would start an admitted Job the operator
    suspended): the operator holds the run through the Workload's spec.active instead."""
    cluster.start_runner(executor=fakes.executor)
    operator()
    cluster.create(training_run("tr", queueName="team-a"))
    job = cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "tr-producer"), 20, "the producer Job")
    cluster.create({"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload",  # as Kueue makes it
                    "metadata": {"name": "job-tr-producer-1a2b3", "namespace": NAMESPACE,
                                 "labels": {"kueue.x-k8s.io/job-uid": job["metadata"]["uid"]}},
                    "spec": {"queueName": "team-a", "active": True}})
    wait_phase(cluster, "tr", crd.QUEUED)
    cluster.patch("trainingruns", NAMESPACE, "tr", {"spec": {"suspend": True}})
    wait_phase(cluster, "tr", crd.SUSPENDED)
    cluster.wait_for(lambda: cluster.get("workloads", NAMESPACE, "job-tr-producer-1a2b3")["spec"]["active"] is False,
                     10, "the Workload inactive")
    assert cluster.get("jobs", NAMESPACE, "tr-producer")["spec"]["suspend"] is True  # untouched: Kueue's
    cluster.patch("trainingruns", NAMESPACE, "tr", {"spec": {"suspend": False}})
    cluster.wait_for(lambda: cluster.get("workloads", NAMESPACE, "job-tr-producer-1a2b3")["spec"]["active"] is True,
                     10, "the Workload active again")
    wait_phase(cluster, "tr", crd.QUEUED)
    admit(cluster, "tr-producer")
    cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "tr-trainer"), 20, "the trainer Job")
    assert cluster.job_creations()[(NAMESPACE, "tr-producer")] == 1


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_the_ttl_deletes_a_finished_run_and_its_model_stays_loadable(cluster: Cluster, operator, store_uri: str) -> None:
    from susy_pipeline.model import ModelConfig, build_model, model_from_bytes, model_to_bytes
    from susy_pipeline.store import open_store

    real_model = model_to_bytes(build_model(ModelConfig(hidden=(4,), normalize=False)))

    async def saves_a_real_model(job: dict[str, Any], index: int, env: dict[str, str]) -> int:
        if job["metadata"]["name"].endswith("-trainer"):
            with open_store(env["MONGODB_URI"], env["SUSY_DATABASE"], namespace=env["SUSY_NAMESPACE"]) as store:
                command = job["spec"]["template"]["spec"]["containers"][0]["command"]
                store.save_model({"run": command[command.index("--run-name") + 1]}, real_model)
            return 0
        return await fakes.executor(job, index, env)

    cluster.start_runner(executor=saves_a_real_model)
    operator(SUSY_MISSING_RUN_GRACE_SECONDS="600")
    cluster.create(training_run("tr", ttlSecondsAfterFinished=1))
    cluster.create(training_run("kept"))  # no TTL, and the operator's default is off
    # A run that names `tr` and has not finished (held here by spec.suspend) keeps it past its TTL.
    cluster.create(evaluation_run("er", {"trainingRun": "tr"}, suspend=True))
    done = wait_phase(cluster, "tr", crd.SUCCEEDED)
    model_id = done["status"]["modelId"]
    wait_phase(cluster, "kept", crd.SUCCEEDED)
    cluster.wait_phase("evaluationruns", NAMESPACE, "er", {crd.SUSPENDED}, 20)
    time.sleep(3)
    assert cluster.get("trainingruns", NAMESPACE, "tr") is not None, "kept while EvaluationRun er names it"
    cluster.delete("evaluationruns", NAMESPACE, "er")
    cluster.wait_for(lambda: cluster.get("trainingruns", NAMESPACE, "tr") is None, 20, "the TTL deletion")
    cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "tr-trainer") is None, 10, "its Jobs gone with it")
    assert cluster.get("trainingruns", NAMESPACE, "kept") is not None
    with open_store(store_uri, "bigdata", namespace=NAMESPACE) as store:
        _, data = store.load_model(model_id)
    assert model_from_bytes(data).count_params() == build_model(ModelConfig(hidden=(4,), normalize=False)).count_params()


def test_a_continual_trainings_generations_wait_in_its_queue_with_its_priorities() -> None:
    """A ContinualTraining's queueName and priorities (or Kueue's labels on it) reach every
    generation's TrainingRun and EvaluationRun, whose Jobs then wait in that queue; its suspend
    stays its own (no new generation), not the children's."""
    from susy_operator import continual

    ct = {"kafka": {"topic": "live"}, "trigger": {"everyRows": 500}, "alias": "live", "suspend": True,
          "evaluation": {"dataset": {"uris": ["/opt/susy/data/susy-sample.csv.gz"]}},
          "queueName": "team-a", "priorityClassName": "batch"}
    parsed = spec_lib.parse_continual_training(ct, labels={crd.LABEL_KUEUE_PRIORITY: "low"})
    children = [continual.training_run_child("ct", "ns", parsed, 1, {0: (0, 500)}, None),
                continual.evaluation_run_child("ct", "ns", parsed, 1, "a" * 32, "b" * 32)]
    for child in children:
        assert (child["spec"]["queueName"], child["spec"]["priorityClassName"],
                child["spec"]["workloadPriorityClassName"]) == ("team-a", "batch", "low")
        assert "suspend" not in child["spec"] and "ttlSecondsAfterFinished" not in child["spec"]
        parse = spec_lib.parse_training_run if child["kind"] == crd.TRAINING_KIND else spec_lib.parse_evaluation_run
        assert parse(child["spec"]).scheduling.queued
    plain = spec_lib.parse_continual_training({k: v for k, v in ct.items() if k not in ("queueName", "priorityClassName")})
    assert "queueName" not in continual.training_run_child("ct", "ns", plain, 1, {0: (0, 500)}, None)["spec"]
