"""Two teams, one operator, one store (issue 22's acceptance): the real operator serving every
namespace against the API emulator, the stand-in pods of support/fakes.py writing through the
store's own functions.

Team A and team B each train a model in their own namespace, under the same TrainingRun name.
Team B's custom resources then try to reach team A's model every way a reference can: by id, by a
timestamp, by `latest` of team A's run, by a TrainingRun name both teams use, by an alias name both
teams use, and as a warm start; each finds team B's own model or none. Then team
B tries each escalation path, and each is refused with a message naming the field and the operator
setting (chart value and env) that would allow it.
"""
from __future__ import annotations

import datetime
import json
import time

import pytest

from susy_operator import crd
from susy_pipeline import store as store_lib
from support import fakes
from support.fixtures import SECRET, cluster, condition, operator, store_uri  # noqa: F401
from support.harness import SAMPLE, Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TEAM_A, TEAM_B = "team-a", "team-b"


def _cr(kind: str, namespace: str, name: str, spec: dict) -> dict:
    return {"apiVersion": crd.API_VERSION, "kind": kind, "metadata": {"name": name, "namespace": namespace},
            "spec": spec}


def _train(cluster: Cluster, namespace: str, name: str, **spec) -> dict:
    cluster.create(_cr(crd.TRAINING_KIND, namespace, name,
                       {"dataset": {"uri": str(SAMPLE), "limit": 1000}, **spec}))
    return cluster.wait_phase("trainingruns", namespace, name, {crd.SUCCEEDED, crd.FAILED}, 60)


def _evaluate(cluster: Cluster, namespace: str, name: str, model: dict, **spec) -> dict:
    cluster.create(_cr(crd.EVALUATION_KIND, namespace, name,
                       {"model": model, "dataset": {"uris": [str(SAMPLE)]}, "shards": 1, **spec}))
    return cluster.wait_phase("evaluationruns", namespace, name, {crd.SUCCEEDED, crd.FAILED}, 60)


def test_two_teams_reach_neither_each_others_models_nor_anything_the_operator_does_not_allow(
        cluster: Cluster, operator, store_uri: str) -> None:
    for namespace in (TEAM_A, TEAM_B):
        cluster.create_store_secret(namespace, SECRET, store_uri)
    cluster.start_runner(executor=fakes.executor)
    operator(SUSY_WATCH_ALL_NAMESPACES="true")

    # Team B first, team A a moment later: team A's model is the newest in the store.
    b = _train(cluster, TEAM_B, "tr")
    assert b["status"]["phase"] == crd.SUCCEEDED, json.dumps(b["status"], indent=1)
    time.sleep(1.1)  # store timestamps: team A's model strictly after this instant
    after_b = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(1.1)
    a = _train(cluster, TEAM_A, "tr")
    assert a["status"]["phase"] == crd.SUCCEEDED, json.dumps(a["status"], indent=1)
    model_a, model_b = a["status"]["modelId"], b["status"]["modelId"]
    assert model_a != model_b

    # By id: team A's model is not found from team B.
    by_id = _evaluate(cluster, TEAM_B, "by-id", {"id": model_a})
    assert condition(by_id, crd.FAILED_CONDITION)["reason"] == crd.REASON_MODEL_NOT_FOUND
    assert _evaluate(cluster, TEAM_A, "by-id", {"id": model_a})["status"]["phase"] == crd.SUCCEEDED
    # By timestamp: the newest model at or before now is team A's in the store, team B's for team B.
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert _evaluate(cluster, TEAM_B, "by-time", {"timestamp": now})["status"]["modelId"] == model_b
    assert _evaluate(cluster, TEAM_A, "by-time", {"timestamp": now})["status"]["modelId"] == model_a
    # Between the two: team B's model for team B; nothing for team A, though team B's is older.
    between = after_b.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert _evaluate(cluster, TEAM_B, "between", {"timestamp": between})["status"]["modelId"] == model_b
    early = _evaluate(cluster, TEAM_A, "between", {"timestamp": between})
    assert condition(early, crd.FAILED_CONDITION)["reason"] == crd.REASON_MODEL_NOT_FOUND
    # By TrainingRun name (its latest model), the same name in both namespaces: each its own.
    assert _evaluate(cluster, TEAM_B, "by-run", {"trainingRun": "tr"})["status"]["modelId"] == model_b
    # As a warm start, by id: not found.
    warm = _train(cluster, TEAM_B, "warm", model={"warmStart": {"id": model_a}})
    assert condition(warm, crd.FAILED_CONDITION)["reason"] == crd.REASON_MODEL_NOT_FOUND
    # By alias: team A's alias "champion" (set in team A's namespace) names nothing for team B, as an
    # EvaluationRun's model and as a warm start; team B's own alias of that name is its own model.
    store = store_lib.open_store(store_uri)
    store.in_namespace(TEAM_A).set_alias("champion", model_a, set_by="team-a")
    assert _evaluate(cluster, TEAM_A, "by-alias", {"alias": "champion"})["status"]["modelId"] == model_a
    by_alias = _evaluate(cluster, TEAM_B, "by-alias", {"alias": "champion"})
    assert condition(by_alias, crd.FAILED_CONDITION)["reason"] == crd.REASON_MODEL_NOT_FOUND
    warm_alias = _train(cluster, TEAM_B, "warm-alias", model={"warmStart": {"alias": "champion"}})
    assert condition(warm_alias, crd.FAILED_CONDITION)["reason"] == crd.REASON_MODEL_NOT_FOUND
    store.in_namespace(TEAM_B).set_alias("champion", model_b, set_by="team-b")
    assert _evaluate(cluster, TEAM_B, "by-own-alias", {"alias": "champion"})["status"]["modelId"] == model_b
    # `latest` of a run, in the store's own syntax (contracts.md §1): each namespace's view resolves
    # its own, or nothing.
    view_a, view_b = store.in_namespace(TEAM_A), store.in_namespace(TEAM_B)
    run_a = a["status"]["runName"]
    assert view_a.resolve_model(f"latest:{run_a}")["model_id"] == model_a
    with pytest.raises(store_lib.ModelNotFound):
        view_b.resolve_model(f"latest:{run_a}")

    # Each escalation path from team B: refused before any Job, the field and the setting named.
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a-creds", "namespace": TEAM_A,
                    "labels": {"susy.dev/allow-runs": "true"}}, "stringData": {"AWS_ACCESS_KEY_ID": "a"}})
    attempts = {
        "image": ({"images": {"trainer": "evil/miner:1"}},
                  "spec.images.trainer 'evil/miner:1' is not an allowed image",
                  "tenancy.allowedImages (env SUSY_ALLOWED_IMAGES)"),
        "env": ({"env": [{"name": "LD_PRELOAD", "value": "/tmp/x.so"}]},
                "spec.env[0].name LD_PRELOAD is reserved", "no operator setting allows it"),
        "path": ({"dataset": {"uri": "/proc/self/environ"}},
                 "spec.dataset.uri '/proc/self/environ' reaches /proc", "no operator setting allows it"),
        "store-secret": ({"dataset": {"uri": "s3://b/x.csv", "secretName": SECRET}},
                         "spec.dataset.secretName susy-store is one of the operator's own connection Secrets",
                         "no operator setting allows it"),
        "other-team-secret": ({"dataset": {"uri": "s3://b/x.csv", "secretName": "a-creds"}},
                              "spec.dataset.secretName a-creds: no such Secret in the run's namespace", ""),
        "claim": ({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "a-data"}}],
                   "volumeMounts": [{"name": "d", "mountPath": "/data"}]},
                  "spec.volumes[0].persistentVolumeClaim.claimName a-data: no such PersistentVolumeClaim", ""),
        "hostpath": ({"volumes": [{"name": "d", "hostPath": {"path": "/"}}],
                      "volumeMounts": [{"name": "d", "mountPath": "/data"}]},
                     "spec.volumes[0].hostPath: volume type hostPath is not allowed", "SUSY_ALLOWED_VOLUME_TYPES"),
    }
    jobs_before = {j["metadata"]["name"] for j in cluster.list("jobs", TEAM_B)}
    for name, (spec, field, setting) in attempts.items():
        refused = _train(cluster, TEAM_B, f"escalate-{name}", **spec)
        failed = condition(refused, crd.FAILED_CONDITION)
        assert refused["status"]["phase"] == crd.FAILED and field in failed["message"] \
            and setting in failed["message"], (name, failed)
    assert {j["metadata"]["name"] for j in cluster.list("jobs", TEAM_B)} == jobs_before
