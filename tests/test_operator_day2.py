"""Day-to-day operation, against the API emulator with stand-in pods (support/fakes.py):

- a pod that cannot start (a missing Secret: CreateContainerConfigError) is reported in the
  step's condition and an Event within seconds, and fails the run after the grace period;
- a Job deleted after it finished (ttlSecondsAfterFinished: 0) is not run again: the run goes on;
- a Job deleted while it runs fails its step (JobDeleted), never a silent re-run;
- a finished Job wakes its run at once: with a 60 s timer the next step still starts in seconds.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from susy_operator import crd
from support import fakes
from susy_pipeline import store as store_lib
from support.fixtures import (NAMESPACE, cluster, condition, evaluation_run, operator, store_uri,  # noqa: F401
                              training_run)
from support.harness import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_pod_that_cannot_start_is_reported_then_fails_the_run(cluster: Cluster, operator) -> None:
    runner = cluster.start_runner(executor=fakes.executor)
    # The Jobs read the store URI from a Secret that does not exist: the kubelet cannot create the
    # container, the pod stays Pending (CreateContainerConfigError), the Job never fails by itself.
    operator(SUSY_STORE_SECRET="no-such-secret", SUSY_POD_START_GRACE_SECONDS="4", SUSY_POLL_SECONDS="5")
    started = time.monotonic()
    cluster.create(training_run("stuck"))

    def reported() -> dict[str, Any] | None:
        tr = cluster.get("trainingruns", NAMESPACE, "stuck") or {}
        produced = next((c for c in (tr.get("status") or {}).get("conditions") or [] if c["type"] == crd.PRODUCED), {})
        return tr if produced.get("reason") == crd.REASON_POD_NOT_STARTING else None
    tr = cluster.wait_for(reported, 15, "the Produced condition to name the pod")
    seen_after = time.monotonic() - started
    message = condition(tr, crd.PRODUCED)["message"]
    assert "CreateContainerConfigError" in message and 'secret "no-such-secret" not found' in message, message
    assert "stuck-producer-0" in message
    assert tr["status"]["jobs"]["producer"]["notStarting"]["reason"] == "CreateContainerConfigError"
    events = cluster.wait_for(lambda: [e for e in cluster.events(NAMESPACE, "stuck")
                                       if e.get("reason") == crd.EVENT_POD_NOT_STARTING], 10, "the Warning Event")
    assert events[0]["type"] == "Warning"

    assert seen_after < 3.0, "reported by the pod's event, not by the 5 s timer"

    # Past the grace period the run fails with the kubelet's reason, at the next timer tick.
    tr = cluster.wait_phase("trainingruns", NAMESPACE, "stuck", {crd.FAILED, crd.SUCCEEDED}, 30)
    assert tr["status"]["phase"] == crd.FAILED
    assert condition(tr, crd.FAILED_CONDITION)["reason"] == "CreateContainerConfigError"
    assert "grace period" in tr["status"]["message"]
    assert condition(tr, crd.PRODUCED)["status"] == "False"
    assert [r.exit_code for r in runner.runs] == [None], "the pod never ran"
    print(f"\nnot-starting pod reported {seen_after:.1f} s after the TrainingRun was created")


def test_jobs_removed_by_their_ttl_after_finishing_do_not_run_again(cluster: Cluster, operator) -> None:
    cluster.start_runner(executor=fakes.executor)
    operator()
    cluster.create(training_run("ttl", runPolicy={"ttlSecondsAfterFinished": 0}))
    tr = cluster.wait_phase("trainingruns", NAMESPACE, "ttl", {crd.FAILED, crd.SUCCEEDED}, 60)
    assert tr["status"]["phase"] == crd.SUCCEEDED, tr["status"]
    assert cluster.job_creations() == {(NAMESPACE, "ttl-producer"): 1, (NAMESPACE, "ttl-trainer"): 1}
    cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "ttl-trainer") is None, 10, "the TTL to remove the trainer")
    time.sleep(1.5)  # a few reconciler ticks (0.25 s) with both Jobs gone
    assert cluster.job_creations() == {(NAMESPACE, "ttl-producer"): 1, (NAMESPACE, "ttl-trainer"): 1}
    assert cluster.get("trainingruns", NAMESPACE, "ttl")["status"]["phase"] == crd.SUCCEEDED


def test_a_job_deleted_while_running_fails_its_step(cluster: Cluster, operator) -> None:
    async def never_ends(job: dict[str, Any], index: int, env: dict[str, str]) -> int:
        await asyncio.Event().wait()
        return 0

    cluster.start_runner(executor=never_ends)
    operator()
    cluster.create(training_run("gone"))
    cluster.wait_for(lambda: ((cluster.get("jobs", NAMESPACE, "gone-producer") or {}).get("status") or {})
                     .get("ready"), 30, "the producer pod to run")
    cluster.delete("jobs", NAMESPACE, "gone-producer", policy="Background")
    tr = cluster.wait_phase("trainingruns", NAMESPACE, "gone", {crd.FAILED, crd.SUCCEEDED}, 30)
    assert tr["status"]["phase"] == crd.FAILED
    assert condition(tr, crd.FAILED_CONDITION)["reason"] == crd.REASON_JOB_DELETED
    assert "gone-producer was deleted before it finished" in tr["status"]["message"]
    assert condition(tr, crd.PRODUCED)["reason"] == crd.REASON_JOB_DELETED
    time.sleep(1)
    assert cluster.job_creations() == {(NAMESPACE, "gone-producer"): 1}, "the step was not run again"


def test_a_finished_job_wakes_its_run_at_once(cluster: Cluster, operator) -> None:
    """The timer is 60 s here: only the Job events (kopf.on.event on the operator's Jobs) can start
    the trainer and finish the run within seconds."""
    async def a_second(job: dict[str, Any], index: int, env: dict[str, str]) -> int:
        await asyncio.sleep(1.0)
        return await fakes.executor(job, index, env)

    runner = cluster.start_runner(executor=a_second)
    operator(SUSY_POLL_SECONDS="60")
    cluster.create(training_run("quick"))
    tr = cluster.wait_phase("trainingruns", NAMESPACE, "quick", {crd.FAILED, crd.SUCCEEDED}, 20)
    assert tr["status"]["phase"] == crd.SUCCEEDED
    created = cluster.call(lambda: dict(cluster.emulator.create_times))
    ended = cluster.call(lambda: dict(runner.finish_times))
    latency = created[("jobs", NAMESPACE, "quick-trainer")] - ended[(NAMESPACE, "quick-producer")]
    assert latency < 2.0, f"producer end -> trainer Job took {latency:.2f} s"


def test_an_evaluation_claims_its_model_from_the_start_and_releases_it_when_it_fails(
        cluster: Cluster, operator, store_uri: str) -> None:
    """`models delete` refuses while an evaluation may still load the model: the operator claims it
    before any shard starts, and releases it when the evaluation fails for good."""
    async def never_ends(job: dict[str, Any], index: int, env: dict[str, str]) -> int:
        await asyncio.Event().wait()
        return 0

    cluster.start_runner(executor=never_ends)
    operator()
    store = store_lib.open_store(store_uri, namespace=NAMESPACE)
    model_id = store.save_model({"run": "r"}, b"weights")
    cluster.create(evaluation_run("held", {"id": model_id}, shards=2))
    er = cluster.wait_phase("evaluationruns", NAMESPACE, "held", {crd.EVALUATING}, 30)
    (claim,) = store.unfinished_evaluations(model_id)
    assert claim["evaluation"] == er["status"]["evaluation"] and claim["missing"] == [0, 1]
    with pytest.raises(store_lib.ModelInUse):
        store.delete_model(model_id)
    cluster.delete("jobs", NAMESPACE, "held-eval", policy="Background")  # the step fails: JobDeleted
    cluster.wait_phase("evaluationruns", NAMESPACE, "held", {crd.FAILED}, 30)
    cluster.wait_for(lambda: not store.unfinished_evaluations(model_id), 10, "the claim to be released")
    store.delete_model(model_id)
