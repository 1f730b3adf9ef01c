"""Datasets on volumes and behind credentials (issue 14): the real operator against the API
emulator, with the test Job runner's pods.

- a PVC-backed EvaluationRun: its Job carries the claim, every shard mounts it read-only;
- a Secret-backed one: the Secret's keys reach the pods through envFrom (resolved as the kubelet
  does), SUSY_DATA_SECRET names it, and no credential is in the Job;
- a volume type the operator does not allow: Failed (InvalidSpec) naming the field, no Job; the
  same spec runs once SUSY_ALLOWED_VOLUME_TYPES allows it.
The Secrets and claims here carry the label that opens them to runs (tenancy.LABEL_ALLOW_RUNS);
tests/test_operator_tenancy_emulator.py has the refusals.
"""
from __future__ import annotations

import json

import pytest

from susy_operator import crd, tenancy
from support import fakes
from support.fixtures import NAMESPACE, cluster, condition, evaluation_run, operator, store_uri  # noqa: F401
from support.harness import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MODEL = {"id": "ab" * 16}
PVC = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "susy-data"}}],
       "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": False}]}


OPEN_TO_RUNS = {tenancy.LABEL_ALLOW_RUNS: "true"}


def open_claim(cluster: Cluster, name: str) -> None:
    cluster.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": name, "namespace": NAMESPACE, "labels": OPEN_TO_RUNS},
                    "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}})


def _model(store_uri: str) -> str:
    from susy_pipeline import store as store_lib

    return store_lib.open_store(store_uri, namespace=NAMESPACE).save_model({"run": "datasets"}, b"not-a-real-model")


def test_a_pvc_backed_evaluation_run_mounts_the_claim_read_only_in_every_shard(
        cluster: Cluster, operator, store_uri: str) -> None:
    runner = cluster.start_runner(executor=fakes.executor)
    open_claim(cluster, "susy-data")
    operator()
    cluster.create(evaluation_run("er-pvc", {"trainingRun": "tr"}, dataset={"uris": ["/data/susy/*.parquet"]},
                                  shards=3, **PVC))
    cluster.create(fakes_training_run())
    er = cluster.wait_phase("evaluationruns", NAMESPACE, "er-pvc", {crd.SUCCEEDED, crd.FAILED}, 60)
    assert er["status"]["phase"] == crd.SUCCEEDED, json.dumps(er["status"], indent=1)
    (job,) = [j for j in cluster.list("jobs", NAMESPACE) if j["metadata"]["name"] == "er-pvc-eval"]
    pod = job["spec"]["template"]["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "susy-data"}} in pod["volumes"]
    (container,) = pod["containers"]
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in container["volumeMounts"]
    shards = [run for run in runner.runs if run.job == "er-pvc-eval"]
    assert sorted(run.index for run in shards) == [0, 1, 2]
    # The Job runner publishes each pod from the Job's template: the claim reached every pod.
    pods = [p for p in cluster.list("pods", NAMESPACE) if p["metadata"]["name"].startswith("er-pvc-eval")]
    assert pods and all({"name": "data", "mountPath": "/data", "readOnly": True}
                        in p["spec"]["containers"][0]["volumeMounts"] for p in pods)


def fakes_training_run() -> dict:
    from support.fixtures import training_run

    return training_run("tr")


def test_the_datasets_secret_reaches_the_pods_through_env_from(cluster: Cluster, operator, store_uri: str) -> None:
    runner = cluster.start_runner(executor=fakes.executor)
    cluster.create({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": "susy-data-s3", "namespace": NAMESPACE, "labels": OPEN_TO_RUNS},
                    "stringData": {"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
                                   "not a variable": "skipped"}})
    operator()
    cluster.create(fakes_training_run())
    cluster.create(evaluation_run("er-s3", {"trainingRun": "tr"}, shards=2,
                                  dataset={"uris": ["s3://susy-data/scaled/*.parquet"], "secretName": "susy-data-s3"}))
    er = cluster.wait_phase("evaluationruns", NAMESPACE, "er-s3", {crd.SUCCEEDED, crd.FAILED}, 60)
    assert er["status"]["phase"] == crd.SUCCEEDED, json.dumps(er["status"], indent=1)
    job = cluster.get("jobs", NAMESPACE, "er-s3-eval")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "susy-data-s3"}}]
    assert "s3cr3t" not in json.dumps(job)
    shards = [run for run in runner.runs if run.job == "er-s3-eval"]
    assert len(shards) == 2
    for run in shards:
        assert (run.env["AWS_ACCESS_KEY_ID"], run.env["AWS_SECRET_ACCESS_KEY"]) == ("AKIDTEST", "s3cr3t")
        assert run.env["SUSY_DATA_SECRET"] == "susy-data-s3"
        assert "not a variable" not in run.env


def test_a_missing_dataset_secret_keeps_the_pods_from_starting(cluster: Cluster, operator, store_uri: str) -> None:
    """A Secret the operator's setting allows by name is not looked up: if it is missing, the pods
    cannot start, and the run says why. (A name allowed only by a label must exist: the operator
    reads the label, and refuses a missing one at once.)"""
    cluster.start_runner(executor=fakes.executor)
    operator(SUSY_ALLOWED_SECRETS="absent")
    cluster.create(evaluation_run("er-nosecret", {"id": _model(store_uri)}, shards=1,
                                  dataset={"uris": ["s3://b/x.parquet"], "secretName": "absent"}))
    def not_starting():
        er = cluster.get("evaluationruns", NAMESPACE, "er-nosecret") or {}
        cond = condition(er, crd.EVALUATED) if er.get("status") else None
        return cond if cond and cond["reason"] == crd.REASON_POD_NOT_STARTING else None
    cond = cluster.wait_for(not_starting, 30, "PodNotStarting")
    assert "CreateContainerConfigError" in cond["message"] and "absent" in cond["message"]


@pytest.mark.parametrize("kind, source", [("hostPath", {"path": "/srv/susy"}), ("configMap", {"name": "cm"})])
def test_a_volume_type_the_operator_does_not_allow_fails_the_run_with_no_job(
        cluster: Cluster, operator, store_uri: str, kind: str, source: dict) -> None:
    cluster.start_runner(executor=fakes.executor)
    volumes = {"volumes": [{"name": "data", kind: source}],
               "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    first = operator()
    cluster.create(evaluation_run("er-refused", {"id": _model(store_uri)}, **volumes))
    er = cluster.wait_phase("evaluationruns", NAMESPACE, "er-refused", {crd.FAILED, crd.SUCCEEDED}, 30)
    failed = condition(er, crd.FAILED_CONDITION)
    assert (er["status"]["phase"], failed["reason"]) == (crd.FAILED, crd.REASON_INVALID_SPEC)
    assert f"spec.volumes[0].{kind}: volume type {kind} is not allowed" in failed["message"]
    assert cluster.list("jobs", NAMESPACE) == []

    # Allowed by the operator's setting, the same spec gets its Job.
    first.stop()
    operator(SUSY_ALLOWED_VOLUME_TYPES=kind)
    cluster.create(evaluation_run("er-allowed", {"id": _model(store_uri)}, **volumes))
    cluster.wait_for(lambda: cluster.get("jobs", NAMESPACE, "er-allowed-eval"), 30, "the allowed run's Job")
    pod = cluster.get("jobs", NAMESPACE, "er-allowed-eval")["spec"]["template"]["spec"]
    assert {"name": "data", kind: source} in pod["volumes"]


@pytest.mark.timeout(300)
def test_a_secret_backed_s3_evaluation_run_end_to_end_against_moto(
        cluster: Cluster, operator, store_uri: str, tmp_path, monkeypatch) -> None:
    """Real `python -m susy_pipeline evaluate` pods (no executor) read s3:// Parquet from moto's
    server with the credentials and endpoint that only the named Secret gives them."""
    from support.moto import MotoServer, moto_missing

    if moto_missing():
        pytest.skip(moto_missing())
    pytest.importorskip("tensorflow")
    from support.harness import SAMPLE
    from support.models import small_model_in_store
    from susy_pipeline import store as store_lib
    from susy_pipeline.evaluation import aggregate
    from susy_pipeline.commands.scale import scale

    server = MotoServer(tmp_path)
    try:
        server.create_bucket("susy-data")
        with monkeypatch.context() as m:  # only for writing the data; the pods get it from the Secret
            for key, value in server.env().items():
                m.setenv(key, value)
            scale(str(SAMPLE), "s3://susy-data/scaled", times=1, files=2, formats=["parquet"])
        model_id, _ = small_model_in_store(store_uri, namespace=NAMESPACE, run="s3-e2e")
        cluster.create({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                        "metadata": {"name": "susy-data-s3", "namespace": NAMESPACE, "labels": OPEN_TO_RUNS},
                        "stringData": server.env()})
        runner = cluster.start_runner()
        operator()
        cluster.create(evaluation_run("er-s3", {"id": model_id}, shards=2, chunkRows=4096, dataset={
            "uris": ["s3://susy-data/scaled/*.parquet"], "secretName": "susy-data-s3"}))
        er = cluster.wait_phase("evaluationruns", NAMESPACE, "er-s3", {crd.SUCCEEDED, crd.FAILED}, 240)
        logs = {run.log: open(run.log).read()[-2000:] for run in runner.runs if run.log and run.exit_code}
        assert er["status"]["phase"] == crd.SUCCEEDED, (er["status"], logs)
        assert er["status"]["rows"] == 10_000  # the sample's held-out rows, once
        results = store_lib.open_store(store_uri, namespace=NAMESPACE).shard_results(er["status"]["evaluation"])
        assert aggregate(results, 2)["rows"] == 10_000
        assert all(r["rows"] > 0 and r["remote_bytes_read"] > 0 for r in results)
        assert all(run.env["SUSY_DATA_SECRET"] == "susy-data-s3" for run in runner.runs)
    finally:
        server.stop()
