"""The API server's object handling (support/apistore.py), tested without HTTP or an event loop."""
from __future__ import annotations

from typing import Any

import pytest

from support.apistore import CORE_KINDS, ApiError, ApiStore, Kind
from support.harness import SUSY_KINDS

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


@pytest.fixture
def store() -> ApiStore:
    return ApiStore((*CORE_KINDS, *SUSY_KINDS), clock=lambda: 0.0)


def kind(store: ApiStore, plural: str) -> Kind:
    return store.kind_for(plural)


def job(name: str, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, **meta}, "spec": {"template": {}}}


def training_run(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "susy.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": name},
            "spec": {"dataset": {"uri": "data.csv"}, **spec}}


def test_create_sets_server_metadata_and_logs_an_event_in_order(store: ApiStore) -> None:
    jobs = kind(store, "jobs")
    a = store.create(jobs, "ns", job("a"))
    b = store.create(jobs, "ns", job("b"))
    assert a["metadata"]["namespace"] == "ns" and a["metadata"]["generation"] == 1 and a["metadata"]["uid"]
    assert int(a["metadata"]["resourceVersion"]) < int(b["metadata"]["resourceVersion"])
    events, _ = store.events_from(0, jobs, "ns", None, {})
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "a"), ("ADDED", "b")]
    with pytest.raises(ApiError) as refused:
        store.create(jobs, "ns", job("a"))
    assert refused.value.code == 409 and refused.value.status["reason"] == "AlreadyExists"


def test_a_watch_resumes_after_a_version_and_answers_410_below_the_log(store: ApiStore) -> None:
    jobs = kind(store, "jobs")
    store.log_limit = 2
    rvs = [store.create(jobs, "ns", job(n))["metadata"]["resourceVersion"] for n in "abcd"]
    initial, position = store.watch_start(jobs, "ns", None, {"resourceVersion": rvs[2]})
    assert initial == []
    events, _ = store.events_from(position, jobs, "ns", None, {})
    assert [e["object"]["metadata"]["name"] for e in events] == ["d"]
    with pytest.raises(ApiError) as gone:
        store.watch_start(jobs, "ns", None, {"resourceVersion": rvs[0]})
    assert gone.value.code == 410
    snapshot, _ = store.watch_start(jobs, "ns", None, {})
    assert sorted(e["object"]["metadata"]["name"] for e in snapshot) == ["a", "b", "c", "d"]


def test_merge_patch_and_json_patch_with_a_failed_test(store: ApiStore) -> None:
    jobs = kind(store, "jobs")
    store.create(jobs, "ns", job("a", labels={"x": "1", "y": "2"}))
    patched = store.patch(jobs, "ns", "a", {"metadata": {"labels": {"x": None, "z": "3"}}}, MERGE)
    assert patched["metadata"]["labels"] == {"y": "2", "z": "3"}
    with pytest.raises(ApiError) as failed:
        store.patch(jobs, "ns", "a", [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"}], JSON_PATCH)
    assert failed.value.code == 422
    with pytest.raises(ApiError) as stale:
        store.patch(jobs, "ns", "a", {"metadata": {"resourceVersion": "1"}}, MERGE)
    assert stale.value.code == 409


def test_the_status_subresource_is_apart_from_the_object(store: ApiStore) -> None:
    jobs = kind(store, "jobs")
    created = store.create(jobs, "ns", {**job("a"), "status": {"active": 9}})
    assert "status" not in created
    store.patch(jobs, "ns", "a", {"status": {"active": 1}, "spec": {"x": 1}}, MERGE, subresource="status")
    after = store.patch(jobs, "ns", "a", {"status": {"active": 5}}, MERGE)
    assert after["status"] == {"active": 1} and "x" not in after["spec"]


def test_dependents_go_with_their_owner_or_are_orphaned(store: ApiStore) -> None:
    jobs, pods = kind(store, "jobs"), kind(store, "pods")
    owner = store.create(jobs, "ns", job("owner"))
    ref = [{"apiVersion": "batch/v1", "kind": "Job", "name": "owner", "uid": owner["metadata"]["uid"]}]
    store.create(pods, "ns", {"metadata": {"name": "p1", "ownerReferences": ref}})
    store.delete(jobs, "ns", "owner")
    assert store.get_object("pods", "ns", "p1") is None
    owner = store.create(jobs, "ns", job("owner"))
    ref = [{"apiVersion": "batch/v1", "kind": "Job", "name": "owner", "uid": owner["metadata"]["uid"]}]
    store.create(pods, "ns", {"metadata": {"name": "p2", "ownerReferences": ref}})
    store.delete(jobs, "ns", "owner", policy="Orphan")
    assert store.get_object("pods", "ns", "p2")["metadata"]["ownerReferences"] == []


def test_finalizers_hold_a_deletion_until_removed(store: ApiStore) -> None:
    jobs = kind(store, "jobs")
    store.create(jobs, "ns", job("a", finalizers=["x/y"]))
    held = store.delete(jobs, "ns", "a")
    assert held["metadata"]["deletionTimestamp"] and store.get_object("jobs", "ns", "a") is not None
    store.patch(jobs, "ns", "a", {"metadata": {"finalizers": None}}, MERGE)
    assert store.get_object("jobs", "ns", "a") is None


def test_label_and_field_selectors(store: ApiStore) -> None:
    jobs = kind(store, "jobs")
    store.create(jobs, "ns", job("a", labels={"app": "x", "tier": "1"}))
    store.create(jobs, "ns", job("b", labels={"app": "y"}))
    names = lambda params: [o["metadata"]["name"] for o in store.list(jobs, "ns", params)["items"]]  # noqa: E731
    assert names({"labelSelector": "app=x"}) == ["a"]
    assert names({"labelSelector": "app in (x,y),!tier"}) == ["b"]
    assert names({"fieldSelector": "metadata.name!=a"}) == ["b"]


def test_custom_resources_are_admitted_from_their_crd(store: ApiStore) -> None:
    runs = kind(store, "trainingruns")
    created = store.create(runs, "ns", training_run("t", unknownField=1))
    # Defaults come from the schema (partitions: 3); the topic has none, so that each run's own
    # topic is chosen by the operator (susy-<namespace>-<name>, issue 22).
    assert "unknownField" not in created["spec"] and created["spec"]["kafka"]["partitions"] == 3
    assert "topic" not in created["spec"]["kafka"]
    with pytest.raises(ApiError) as invalid:
        store.create(runs, "ns", training_run("u", epochs=0))
    assert invalid.value.code == 422 and "spec.epochs" in invalid.value.status["message"]
    with pytest.raises(ApiError) as immutable:
        store.patch(runs, "ns", "t", {"spec": {"epochs": 3}}, MERGE)
    assert immutable.value.code == 422


def test_an_indexed_job_whose_last_pod_name_is_no_dns_label_is_refused(store: ApiStore) -> None:
    jobs = kind(store, "jobs")
    body = {"metadata": {"name": "a" * 62}, "spec": {"completionMode": "Indexed", "completions": 10}}
    with pytest.raises(ApiError) as refused:
        store.create(jobs, "ns", body)
    assert refused.value.code == 422 and "invalid DNS label" in refused.value.status["message"]
