"""The operator's Role (charts/susy-operator, rendered by `helm template`) grants every API call the
running operator makes, and nothing it never calls.

The calls are recorded, not guessed: the real operator (kopf and the kubernetes client, told
apart by their User-Agent) runs a scenario that reaches every code path that talks to the API,
namespaced as the chart deploys it by default (`--standalone --namespace NS`), against the API
emulator, which logs each request as RBAC sees it (verb, API group, resource[/subresource]).
"""
from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from susy_operator import crd, tenancy
from support import fakes
from support.emulator import operator_calls
from support.fixtures import (NAMESPACE, cluster, evaluation_run, operator, store_uri, training_run,  # noqa: F401
                              write_messages)
from support.harness import Cluster

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "susy-operator"

# What the scenario below records (and docs/operator.md lists for the chart).
EXPECTED_CALLS = {
    # kopf: serve the two resources, keep its progress annotations and finalizers, write status.
    ("list", crd.GROUP, crd.TRAINING_PLURAL), ("watch", crd.GROUP, crd.TRAINING_PLURAL),
    ("patch", crd.GROUP, crd.TRAINING_PLURAL), ("patch", crd.GROUP, f"{crd.TRAINING_PLURAL}/status"),
    ("list", crd.GROUP, crd.EVALUATION_PLURAL), ("watch", crd.GROUP, crd.EVALUATION_PLURAL),
    ("patch", crd.GROUP, crd.EVALUATION_PLURAL), ("patch", crd.GROUP, f"{crd.EVALUATION_PLURAL}/status"),
    # kopf.event: one Event per transition.
    ("create", "", "events"),
    # susy_operator.k8s: the Jobs, and the TrainingRun an EvaluationRun names.
    ("create", "batch", "jobs"), ("get", "batch", "jobs"),
    ("get", crd.GROUP, crd.TRAINING_PLURAL),
    # kopf: the operator's Jobs and their pods, whose changes wake their run (handlers.job_changed,
    # pod_changed); k8s.list_job_pods: why a pod failed or cannot start.
    ("list", "batch", "jobs"), ("watch", "batch", "jobs"),
    ("list", "", "pods"), ("watch", "", "pods"),
    # k8s.set_job_suspend: a run without a queue suspended or resumed (spec.suspend).
    ("patch", "batch", "jobs"),
    # k8s.set_kueue_workloads_active: a queued run suspended or resumed.
    ("list", "kueue.x-k8s.io", "workloads"), ("patch", "kueue.x-k8s.io", "workloads"),
    # k8s.delete_custom_object: a finished run past its TTL (spec.ttlSecondsAfterFinished).
    ("delete", crd.GROUP, crd.TRAINING_PLURAL), ("delete", crd.GROUP, crd.EVALUATION_PLURAL),
    # k8s.read_labels: whether the Secret and the claim a run names are open to runs (tenancy.py).
    ("get", "", "secrets"), ("get", "", "persistentvolumeclaims"),
    # kopf serves the ContinualTraining; continual_training.py creates, reads and (beyond its
    # historyLimit) deletes its generations' TrainingRuns and EvaluationRuns.
    ("list", crd.GROUP, crd.CONTINUAL_PLURAL), ("watch", crd.GROUP, crd.CONTINUAL_PLURAL),
    ("patch", crd.GROUP, crd.CONTINUAL_PLURAL), ("patch", crd.GROUP, f"{crd.CONTINUAL_PLURAL}/status"),
    ("create", crd.GROUP, crd.TRAINING_PLURAL), ("delete", crd.GROUP, crd.TRAINING_PLURAL),
    ("create", crd.GROUP, crd.EVALUATION_PLURAL), ("get", crd.GROUP, crd.EVALUATION_PLURAL),
    ("delete", crd.GROUP, crd.EVALUATION_PLURAL),
}

# Granted without being called: where the OwnerReferencesPermissionEnforcement admission plugin is
# on, creating a Job whose ownerReference sets blockOwnerDeletion (builders.owner_reference,
# kopf.adopt) needs `update` on the owner's finalizers subresource
# (kubernetes plugin/pkg/admission/gc/gc_admission.go). The emulator has no such plugin, so no
# request records it; the Role must hold exactly these on top of the recorded calls.
ADMISSION_GRANTS = {
    ("update", crd.GROUP, f"{crd.TRAINING_PLURAL}/finalizers"),
    ("update", crd.GROUP, f"{crd.EVALUATION_PLURAL}/finalizers"),
    ("update", crd.GROUP, f"{crd.CONTINUAL_PLURAL}/finalizers"),
}


def helm_binary() -> str | None:
    return shutil.which("helm", path=str(ROOT / ".venv" / "bin")) or shutil.which("helm")


def granted_calls(helm: str) -> set[tuple[str, str, str]]:
    rendered = subprocess.run([helm, "template", "susy-operator", str(CHART), "--namespace", NAMESPACE],
                              check=True, capture_output=True, text=True).stdout
    roles = [doc for doc in yaml.safe_load_all(rendered) if doc and doc.get("kind") in ("Role", "ClusterRole")]
    assert len(roles) == 1, [r["kind"] for r in roles]
    return {(verb, group, resource)
            for rule in roles[0]["rules"]
            for group in rule.get("apiGroups", [])
            for resource in rule.get("resources", [])
            for verb in rule.get("verbs", [])}


@pytest.fixture
def recorded_calls(cluster: Cluster, operator, kafka_broker: str) -> set[tuple[str, str, str]]:
    cluster.start_runner(executor=fakes.executor, fail_first={("crash-producer", 0)})
    operator(args=("--standalone", "--namespace", NAMESPACE), SUSY_MISSING_RUN_GRACE_SECONDS="1",
             SUSY_KAFKA_BOOTSTRAP=kafka_broker)
    # A ContinualTraining over three generations (new messages before each; the pods are fakes):
    # the first creates a TrainingRun, the second an EvaluationRun as well, the third's end deletes
    # the second's children (historyLimit 1).
    topic = f"rbac-ct-{secrets.token_hex(3)}"
    write_messages(kafka_broker, topic, 5)
    cluster.create({"apiVersion": crd.API_VERSION, "kind": crd.CONTINUAL_KIND,
                    "metadata": {"name": "ct", "namespace": NAMESPACE},
                    "spec": {"kafka": {"topic": topic}, "trigger": {"everyRows": 5}, "reader": "kafka-python",
                             "evaluation": {"dataset": {"uris": ["/data/held-out.csv"]}}, "alias": "rbac",
                             "historyLimit": 1}})
    for generation in (1, 2, 3):
        cluster.wait_for(lambda: ((cluster.get(crd.CONTINUAL_PLURAL, NAMESPACE, "ct") or {}).get("status") or {}).get(
            "lastDecision", {}).get("generation") == generation, 60, f"generation {generation}")
        if generation < 3:
            write_messages(kafka_broker, topic, 5)
    cluster.wait_for(lambda: cluster.get(crd.EVALUATION_PLURAL, NAMESPACE, "ct-g2-eval") is None, 30,
                     "generation 2's children deleted")
    open_to_runs = {"namespace": NAMESPACE, "labels": {tenancy.LABEL_ALLOW_RUNS: "true"}}
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", **open_to_runs},
                    "stringData": {"AWS_REGION": "eu-west-1"}})
    cluster.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", **open_to_runs},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    tr = training_run("tr", volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
                      volumeMounts=[{"name": "data", "mountPath": "/data"}])
    tr["spec"]["dataset"]["secretName"] = "creds"  # the Secret's and the claim's labels are read
    cluster.create(tr)
    cluster.create(evaluation_run("er", {"trainingRun": "tr"}))  # reads the TrainingRun
    bad = training_run("bad")
    del bad["spec"]["dataset"]
    # The API server (and the emulator) refuse it by the CRD schema; one stored before the CRD had
    # that rule reaches the operator all the same: the failure path, a Warning Event, no Job.
    cluster.call(cluster.emulator.put, "trainingruns", bad)
    cluster.create(training_run("crash", runPolicy={"backoffLimit": 0}))  # a failed Job: its pods are read
    # Finished runs past their TTL: deleted by the operator (the TrainingRun once its EvaluationRun ended).
    cluster.create(training_run("gone", ttlSecondsAfterFinished=0))
    cluster.create(evaluation_run("gone-er", {"trainingRun": "gone"}, ttlSecondsAfterFinished=0))
    # Suspended and resumed without a queue: the operator patches the Job.
    cluster.create(training_run("held", suspend=True))
    cluster.wait_phase("trainingruns", NAMESPACE, "held", {crd.SUSPENDED}, 30)
    cluster.patch("trainingruns", NAMESPACE, "held", {"spec": {"suspend": False}})
    # Suspended with a queue: the operator sets the Kueue Workload (made here, as Kueue would) inactive.
    cluster.create(training_run("queued", queueName="team-a"))
    job = cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "queued-producer"), 30, "the queued Job")
    cluster.create({"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload",
                    "metadata": {"name": "job-queued-producer", "namespace": NAMESPACE,
                                 "labels": {"kueue.x-k8s.io/job-uid": job["metadata"]["uid"]}},
                    "spec": {"queueName": "team-a", "active": True}})
    cluster.wait_phase("trainingruns", NAMESPACE, "queued", {crd.QUEUED}, 30)
    cluster.patch("trainingruns", NAMESPACE, "queued", {"spec": {"suspend": True}})
    for plural, name in (("trainingruns", "tr"), ("evaluationruns", "er"), ("trainingruns", "bad"),
                         ("trainingruns", "crash"), ("trainingruns", "held")):
        cluster.wait_phase(plural, NAMESPACE, name, {crd.SUCCEEDED, crd.FAILED}, 30)
    cluster.wait_for(lambda: cluster.events(NAMESPACE, "er"), 10, "Events")
    cluster.wait_for(lambda: cluster.get("workloads", NAMESPACE, "job-queued-producer")["spec"]["active"] is False,
                     30, "the Workload inactive")
    for plural, name in (("trainingruns", "gone"), ("evaluationruns", "gone-er")):
        cluster.wait_for(lambda: cluster.get(plural, NAMESPACE, name) is None, 30, f"{name} deleted after its TTL")
    return cluster.call(lambda: operator_calls(cluster.emulator.calls))


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_role_grants_exactly_the_calls_the_operator_makes(recorded_calls: set[tuple[str, str, str]]) -> None:
    print("\nAPI calls made by the operator (verb, group, resource):")
    for call in sorted(recorded_calls):
        print("  ", call)
    assert recorded_calls == EXPECTED_CALLS
    helm = helm_binary()
    if helm is None:
        pytest.skip("helm is not installed (run `make tools`): the Role was not rendered")
    granted = granted_calls(helm)
    missing = recorded_calls - granted
    assert not missing, f"the Role does not grant calls the operator makes: {sorted(missing)}"
    assert ADMISSION_GRANTS <= granted, "blockOwnerDeletion needs update on the owners' finalizers"
    unused = granted - recorded_calls - ADMISSION_GRANTS
    assert not unused, f"the Role grants calls the operator never makes: {sorted(unused)}"
