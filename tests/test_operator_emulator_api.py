"""The API emulator's fixes over kmock 0.8 (tests/support/emulator.py), one behaviour per test, over
HTTP as clients see it. If kmock is upgraded, these say which fixes are still needed."""
from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from support.harness import ApiError, Cluster

JOBS = "/apis/batch/v1/namespaces/ns/jobs"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path).start()
    try:
        yield c
    finally:
        c.stop()


def job(name: str, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, **meta}, "spec": {"x": 1}}


def watch(api: Cluster, path: str, count: int, timeout: float = 5.0,
          events: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The first `count` events of a watch; appended to `events` as they arrive, if given."""
    events = [] if events is None else events
    with urllib.request.urlopen(api.url + path, timeout=timeout) as resp:
        for line in resp:
            if line.strip():
                events.append(json.loads(line))
            if len(events) >= count:
                break
    return events


def test_create_sets_server_metadata_and_answers_201(api: Cluster) -> None:
    req = urllib.request.Request(api.url + JOBS, data=json.dumps(job("a")).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 201
        created = json.loads(resp.read())
    meta = created["metadata"]
    assert meta["namespace"] == "ns" and meta["uid"] and meta["creationTimestamp"]
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0
    with pytest.raises(ApiError) as conflict:
        api.request("POST", JOBS, job("a"))
    assert conflict.value.code == 409 and "AlreadyExists" in conflict.value.body


def test_generate_name(api: Cluster) -> None:
    event = api.request("POST", "/api/v1/namespaces/ns/events",
                        {"metadata": {"generateName": "kopf-event-"}, "reason": "R"})
    assert event["metadata"]["name"].startswith("kopf-event-") and len(event["metadata"]["name"]) == 16


def test_status_subresource_is_enforced(api: Cluster) -> None:
    created = api.request("POST", JOBS, {**job("a"), "status": {"active": 9}})
    assert "status" not in created  # dropped on create
    merge = "application/merge-patch+json"
    body = api.request("PATCH", f"{JOBS}/a", {"spec": {"x": 2}, "status": {"active": 1}}, merge)
    assert body["spec"]["x"] == 2 and "status" not in body and body["metadata"]["generation"] == 2
    body = api.request("PATCH", f"{JOBS}/a/status", {"spec": {"x": 3}, "status": {"active": 1}}, merge)
    assert body["spec"]["x"] == 2 and body["status"] == {"active": 1} and body["metadata"]["generation"] == 2


def test_merge_and_json_patches(api: Cluster) -> None:
    api.request("POST", JOBS, {**job("a"), "spec": {"nested": {"a": 1, "b": 2}}})
    body = api.request("PATCH", f"{JOBS}/a", {"spec": {"nested": {"a": None, "c": 3}}}, "application/merge-patch+json")
    assert body["spec"]["nested"] == {"b": 2, "c": 3}
    body = api.request("PATCH", f"{JOBS}/a", {"spec": {"nested": "scalar"}}, "application/merge-patch+json")
    assert body["spec"]["nested"] == "scalar"  # RFC 7386: a scalar replaces a dict
    rv = body["metadata"]["resourceVersion"]
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
           {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]
    with pytest.raises(ApiError) as failed:
        api.request("PATCH", f"{JOBS}/a", ops, "application/json-patch+json")
    assert failed.value.code == 422  # kopf retries its finalizer patch on 422, not on 500
    ops[0]["value"] = rv
    assert api.request("PATCH", f"{JOBS}/a", ops, "application/json-patch+json")["metadata"]["finalizers"] == ["f"]


def test_watch_resumes_from_a_resource_version(api: Cluster) -> None:
    first = api.request("POST", JOBS, job("a"))
    api.request("POST", JOBS, job("b"))
    rv = first["metadata"]["resourceVersion"]
    events = watch(api, f"{JOBS}?watch=true&resourceVersion={rv}", 1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "b")]
    # No version: a snapshot of what exists, then the live events.
    received: list[dict[str, Any]] = []
    thread = threading.Thread(target=watch, args=(api, f"{JOBS}?watch=true", 3), kwargs={"events": received})
    thread.start()
    # The snapshot has been taken once its two ADDED events arrived: only then delete.
    api.wait_for(lambda: len(received) >= 2, 5, "the watch's snapshot")
    api.request("DELETE", f"{JOBS}/a")
    thread.join(5)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in received] == [
        ("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]


def test_watch_answers_410_for_a_version_older_than_its_log(api: Cluster) -> None:
    api.emulator.store.log_limit = 2  # type: ignore[union-attr]
    for name in "abcd":
        api.request("POST", JOBS, job(name))
    (event,) = watch(api, f"{JOBS}?watch=true&resourceVersion=1", 1)
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


def test_list_honours_label_and_field_selectors(api: Cluster) -> None:
    api.request("POST", JOBS, job("a", labels={"app": "x", "tier": "1"}))
    api.request("POST", JOBS, job("b", labels={"app": "y"}))
    names = lambda q: [o["metadata"]["name"] for o in api.request("GET", f"{JOBS}?{q}")["items"]]  # noqa: E731
    assert names("labelSelector=app%3Dx") == ["a"]
    assert names("labelSelector=app%21%3Dx") == ["b"]
    assert names("labelSelector=tier") == ["a"]
    assert names("labelSelector=app+in+%28x%2Cy%29") == ["a", "b"]
    assert names("fieldSelector=metadata.name%3Db") == ["b"]
    assert int(api.request("GET", JOBS)["metadata"]["resourceVersion"]) >= 2


def test_garbage_collection_of_dependents(api: Cluster) -> None:
    owner = api.request("POST", JOBS, job("owner"))
    ref = {"apiVersion": "batch/v1", "kind": "Job", "name": "owner", "uid": owner["metadata"]["uid"]}
    api.request("POST", JOBS, job("child", ownerReferences=[ref]))
    api.request("POST", JOBS, job("orphan-to-be", ownerReferences=[ref]))
    api.request("DELETE", f"{JOBS}/owner")
    assert api.get("jobs", "ns", "child") is None and api.get("jobs", "ns", "orphan-to-be") is None
    owner = api.request("POST", JOBS, job("owner2"))
    ref["uid"] = owner["metadata"]["uid"]
    api.request("POST", JOBS, job("kept", ownerReferences=[ref]))
    api.request("DELETE", f"{JOBS}/owner2", {"propagationPolicy": "Orphan"})
    assert api.get("jobs", "ns", "kept")["metadata"]["ownerReferences"] == []
    # A dependent created after its owner is gone is collected at once.
    api.request("POST", JOBS, job("late", ownerReferences=[{**ref, "uid": "gone"}]))
    assert api.get("jobs", "ns", "late") is None


def test_namespaces_put_and_discovery(api: Cluster) -> None:
    api.request("POST", JOBS, job("a"))
    names = [n["metadata"]["name"] for n in api.request("GET", "/api/v1/namespaces")["items"]]
    assert names == ["default", "ns"]
    assert api.request("GET", "/api/v1/namespaces/ns")["status"]["phase"] == "Active"
    with pytest.raises(ApiError) as put:
        api.request("PUT", f"{JOBS}/a", job("a"))
    assert put.value.code == 405
    core = {r["name"] for r in api.request("GET", "/api/v1")["resources"]}
    assert {"namespaces", "events", "secrets"} <= core  # kopf waits for namespaces in discovery
    crds = api.request("GET", "/apis/apiextensions.k8s.io/v1")["resources"]
    assert [r["name"] for r in crds] == ["customresourcedefinitions"]


def test_request_history_is_trimmed_so_requests_stay_fast(api: Cluster) -> None:
    api.request("POST", JOBS, job("a"))
    for _ in range(300):
        api.request("GET", "/apis")  # discovery goes through kmock's request matching
    assert len(api.emulator._requests) <= api.emulator.history_limit  # type: ignore[union-attr]
    started = time.perf_counter()
    for _ in range(20):
        api.request("GET", f"{JOBS}/a")
    assert (time.perf_counter() - started) / 20 < 0.05


# --- custom resources are admitted from their CRD (support/crdschema.py) -------------------------------

TRS = "/apis/susy.dev/v1alpha1/namespaces/ns/trainingruns"
ERS = "/apis/susy.dev/v1alpha1/namespaces/ns/evaluationruns"
MERGE = "application/merge-patch+json"


def tr(name: str = "t", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "susy.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": name},
            "spec": {"dataset": {"uri": "/data/susy.csv.gz"}, **spec}}


def refusal(call: Any) -> dict[str, Any]:
    with pytest.raises(ApiError) as refused:
        call()
    assert refused.value.code == 422, refused.value.body
    status = json.loads(refused.value.body)
    assert (status["kind"], status["status"], status["reason"], status["code"]) == ("Status", "Failure", "Invalid", 422)
    return status


def test_custom_resources_are_defaulted_and_pruned(api: Cluster) -> None:
    created = api.request("POST", TRS, {**tr(epochs=3, bogus=True), "status": {"phase": "Succeeded"}})
    spec = created["spec"]
    assert "bogus" not in spec and spec["epochs"] == 3  # unknown fields pruned
    assert spec["dataset"] == {"uri": "/data/susy.csv.gz", "skip": 0, "limit": 10000}
    assert spec["kafka"] == {"partitions": 3}  # `default: {}`, then its own defaults (no topic: the run's own)
    # model: `default: {}` with no recipe default: a warm start takes its parent's recipe, else the operator
    # applies seed (spec.py), so the schema must not fill one in.
    assert spec["model"] == {} and spec["reader"] == "confluent"
    assert spec["runPolicy"] == {"backoffLimit": 2, "activeDeadlineSeconds": 21600, "ttlSecondsAfterFinished": 86400}
    assert "status" not in created  # the status subresource: creation drops it
    assert api.get("trainingruns", "ns", "t") == created
    env = api.request("POST", TRS, tr("e", env=[{"name": "A"}]))["spec"]["env"]
    assert env == [{"name": "A", "value": ""}]


def test_invalid_custom_resources_are_refused_with_the_field_named(api: Cluster) -> None:
    status = refusal(lambda: api.request("POST", TRS, tr(epochs=0)))
    assert status["message"] == ('TrainingRun.susy.dev "t" is invalid: spec.epochs: Invalid value: 0: '
                                 "spec.epochs in body should be greater than or equal to 1")
    assert status["details"] == {"name": "t", "group": "susy.dev", "kind": "TrainingRun", "causes": [
        {"reason": "FieldValueInvalid", "field": "spec.epochs",
         "message": "Invalid value: 0: spec.epochs in body should be greater than or equal to 1"}]}
    status = refusal(lambda: api.request("POST", TRS, tr(reader="librdkafka", epochs="ten")))
    assert [c["field"] for c in status["details"]["causes"]] == ["spec.epochs", "spec.reader"]
    assert 'spec.reader: Unsupported value: "librdkafka": supported values: "confluent", "tfio", "kafka-python"' in status["message"]
    assert status["message"].startswith('TrainingRun.susy.dev "t" is invalid: [')
    # CEL rules: the name rule at the root, a cross-field rule, a list rule.
    status = refusal(lambda: api.request("POST", TRS, tr("9lives")))
    assert status["details"]["causes"][0]["field"] == "<nil>" and "RFC 1035 label" in status["message"]
    er = {"apiVersion": "susy.dev/v1alpha1", "kind": "EvaluationRun", "metadata": {"name": "e"},
          "spec": {"model": {"trainingRun": "t"}, "dataset": {"uris": ["x"]}, "shards": 2, "parallelism": 3}}
    status = refusal(lambda: api.request("POST", ERS, er))
    assert status["message"] == ('EvaluationRun.susy.dev "e" is invalid: spec: Invalid value: "object": '
                                 "parallelism must not exceed shards")
    status = refusal(lambda: api.request("POST", TRS, tr(env=[{"name": "MONGODB_URI", "value": "x"}])))
    assert status["details"]["causes"][0]["field"] == "spec.env"
    assert api.list("trainingruns", "ns") == [] and api.list("evaluationruns", "ns") == []


def test_an_edited_spec_is_refused_on_patch_and_put(api: Cluster) -> None:
    created = api.request("POST", TRS, tr(epochs=3))
    path = f"{TRS}/t"
    # kubectl apply / edit (merge patch), a JSON patch, kubectl replace (PUT): every field but two.
    status = refusal(lambda: api.request("PATCH", path, {"spec": {"epochs": 4}}, MERGE))
    assert status["message"] == ('TrainingRun.susy.dev "t" is invalid: spec: Invalid value: "object": '
                                 "spec is immutable but for suspend and ttlSecondsAfterFinished: "
                                 "create a new TrainingRun")
    suspended = api.request("PATCH", path, {"spec": {"suspend": True, "ttlSecondsAfterFinished": 60}}, MERGE)
    assert suspended["spec"]["suspend"] is True and suspended["metadata"]["generation"] == 2
    created = api.request("PATCH", path, {"spec": {"suspend": None, "ttlSecondsAfterFinished": None}}, MERGE)
    refusal(lambda: api.request("PATCH", path, [{"op": "replace", "path": "/spec/epochs", "value": 4}],
                                "application/json-patch+json"))
    refusal(lambda: api.request("PUT", path, {**created, "spec": {**created["spec"], "epochs": 4}}))
    stored = api.get("trainingruns", "ns", "t")
    assert stored == created and stored["metadata"]["generation"] == 3
    # Metadata may change; a PUT needs the current resourceVersion (no unconditional update for CRs).
    labelled = api.request("PATCH", path, {"metadata": {"labels": {"a": "b"}}}, MERGE)
    assert labelled["metadata"]["labels"] == {"a": "b"} and labelled["metadata"]["generation"] == 3
    status = refusal(lambda: api.request("PUT", path, {**created, "metadata": {"name": "t"}}))
    assert status["details"]["causes"][0]["field"] == "metadata.resourceVersion"
    with pytest.raises(ApiError) as stale:
        api.request("PUT", path, created)
    assert stale.value.code == 409
    replaced = api.request("PUT", path, {**labelled, "metadata": {**labelled["metadata"], "labels": {}}})
    assert replaced["metadata"]["labels"] == {} and replaced["spec"] == created["spec"]


def test_the_status_subresource_validates_status_only(api: Cluster) -> None:
    api.request("POST", ERS, {"apiVersion": "susy.dev/v1alpha1", "kind": "EvaluationRun", "metadata": {"name": "e"},
                              "spec": {"model": {"trainingRun": "t"}, "dataset": {"uris": ["x"]}}})
    path = f"{ERS}/e/status"
    status = refusal(lambda: api.request("PATCH", path, {"status": {"phase": "Done"}}, MERGE))
    assert status["details"]["causes"][0]["field"] == "status.phase"
    refusal(lambda: api.request("PATCH", path, {"status": {"startTime": "yesterday"}}, MERGE))
    patched = api.request("PATCH", path, {"spec": {"shards": 9}, "status": {
        "phase": "Evaluating", "kopf": {"kept": 1}, "shards": {"total": 2, "unknown": 1}}}, MERGE)
    assert patched["spec"]["shards"] == 1  # ignored through /status, so no immutability error either
    # status preserves unknown fields at its top, but a declared sub-object is pruned to its schema.
    assert patched["status"] == {"phase": "Evaluating", "kopf": {"kept": 1}, "shards": {"total": 2}}


def test_an_object_stored_before_a_rule_can_still_be_patched(api: Cluster) -> None:
    """Validation ratcheting (KEP-4008): an unchanged invalid field does not block other changes,
    so the operator can still write status, annotations and finalizers on it."""
    assert api.emulator is not None
    api.call(api.emulator.put, "trainingruns", {**tr(epochs=0), "metadata": {"name": "old", "namespace": "ns"}})
    api.request("PATCH", f"{TRS}/old", {"metadata": {"finalizers": ["x/y"]}}, MERGE)
    api.request("PATCH", f"{TRS}/old/status", {"status": {"phase": "Failed"}}, MERGE)
    obj = api.get("trainingruns", "ns", "old")
    assert obj["spec"]["epochs"] == 0 and obj["metadata"]["finalizers"] == ["x/y"]
    assert obj["metadata"]["generation"] == 1  # its defaults, filled in on the way, are no spec change
    assert obj["status"] == {"phase": "Failed"}
    refusal(lambda: api.request("PATCH", f"{TRS}/old", {"spec": {"epochs": -1}}, MERGE))


def test_an_indexed_job_whose_last_pod_hostname_is_no_dns_label_is_refused(api: Cluster) -> None:
    def indexed(name: str, completions: int) -> dict[str, Any]:
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                "spec": {"completionMode": "Indexed", "completions": completions}}

    api.request("POST", JOBS, indexed("j" * 59, 1000))  # j...j-999: 63 characters
    status = refusal(lambda: api.request("POST", JOBS, indexed("k" * 60, 1000)))
    assert status["details"]["causes"][0]["field"] == "metadata.name"
    assert f"will not able to create pod with invalid DNS label: {'k' * 60}-999" in status["message"]
    api.request("POST", JOBS, indexed("k" * 60, 100))  # k...k-99: 63 characters
