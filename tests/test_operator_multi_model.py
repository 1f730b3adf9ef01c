"""EvaluationRun spec.models (1 to 8 references) and spec.ensemble: parsed, bounded by the CRD,
resolved by the operator before the Job (all of them, or the run fails naming the one that names
nothing), scored by one Indexed Job that passes every distinct id once, and reported as a
leaderboard with the best by AUC.

The emulator test runs the real operator with the stand-in pods of support/fakes.py, whose
evaluator tallies one pseudo-score array per model with the evaluator's own `ModelTallies`;
tests/test_multi_model.py scores real models.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from susy_operator import builders, crd, spec as spec_lib, status as st
from susy_pipeline import evaluation, store as store_lib
from support import fakes
from support.fixtures import NAMESPACE, cluster, condition, evaluation_run, operator, store_uri, training_run  # noqa: F401
from support.harness import ApiError, Cluster

A, B = "a" * 32, "b" * 32
TERMINAL = {crd.SUCCEEDED, crd.FAILED}


def _parse(**spec: Any) -> spec_lib.EvaluationRunSpec:
    return spec_lib.parse_evaluation_run({"dataset": {"uris": ["x.parquet"]}, **spec})


def _command(parsed: spec_lib.EvaluationRunSpec, ids: Any) -> list[str]:
    owner = builders.Owner(kind=crd.EVALUATION_KIND, name="er", namespace="ns", uid="u" * 36)
    config = builders.JobConfig(image="img", kafka_bootstrap="k:9092", store_secret="s", database="bigdata")
    job = builders.evaluator_job(owner, parsed, "ev", ids, config)
    return job["spec"]["template"]["spec"]["containers"][0]["command"]


def test_models_and_ensemble_are_parsed_and_model_stays_one() -> None:
    parsed = _parse(models=[{"id": A}, {"trainingRun": "tr-b"}], ensemble="mean")
    assert parsed.references == (spec_lib.ModelReference(id=A), spec_lib.ModelReference(training_run="tr-b"))
    assert parsed.model == spec_lib.ModelReference(id=A) and parsed.ensemble == "mean"
    assert [r.text for r in parsed.references] == [A, "trainingRun:tr-b"]
    one = _parse(model={"id": A})
    assert one.references == (spec_lib.ModelReference(id=A),) and one.models == () and one.ensemble is None


@pytest.mark.parametrize("spec,problem", [
    ({"model": {"id": A}, "models": [{"id": B}]}, "spec.model and spec.models are both given"),
    ({"models": []}, "spec.models must list 1 to 8 models"),
    ({"models": [{"id": A}] * 9}, "spec.models must list 1 to 8 models"),
    ({"models": [{"id": A, "trainingRun": "x"}]}, "spec.models[0] must name the model exactly one way"),
    ({"models": [{"id": A}, {"id": "nope"}]}, "spec.models[1].id"),
    ({"models": [{"id": A}], "ensemble": "mean"}, "spec.ensemble needs at least two models"),
    ({"models": [{"id": A}, {"id": B}], "ensemble": "vote"}, "spec.ensemble must be one of mean"),
    ({}, "spec.model is required"),
])
def test_bad_model_lists_are_named(spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(spec_lib.SpecError) as error:
        _parse(**spec)
    assert problem in str(error.value)


def test_the_job_passes_each_distinct_model_once_and_the_ensemble() -> None:
    parsed = _parse(models=[{"id": A}, {"trainingRun": "tr-a"}, {"id": B}], ensemble="mean")
    command = _command(parsed, [A, A, B])
    assert command[command.index("evaluate") + 1:command.index("--data")] == [
        "--model", A, "--model", B, "--ensemble", "mean"]
    # An ensemble of one distinct model would be that model: not scored twice.
    command = _command(_parse(models=[{"id": A}, {"trainingRun": "tr-a"}], ensemble="mean"), [A, A])
    assert command[command.index("evaluate") + 1:command.index("--data")] == ["--model", A]
    # One model: the command line of before.
    assert _command(_parse(model={"id": A}), A)[4:6] == ["--model", A]


def test_the_leaderboard_lists_every_reference_then_the_ensemble_and_names_the_best() -> None:
    results = [fakes.models_shard_result("ev", [A, B], [A, B], i, 3, "mean") for i in range(3)]
    aggregated = evaluation.aggregate(results)
    refs = [{"reference": "trainingRun:tr-a", "modelId": A}, {"reference": A, "modelId": A},
            {"reference": "trainingRun:tr-b", "modelId": B}]
    board, best = st.leaderboard(aggregated, refs)
    assert [(e["reference"], e.get("modelId")) for e in board] == [
        ("trainingRun:tr-a", A), (A, A), ("trainingRun:tr-b", B), ("ensemble", None)]
    assert board[0] == {**board[1], "reference": "trainingRun:tr-a"}
    assert board[-1]["members"] == [A, B]
    by_name = {m["name"]: m for m in aggregated["models"]}
    assert board[2]["auc"] == by_name[B]["auc"] and board[2]["confusion"] == by_name[B]["confusion"]
    assert best == {"reference": max(board, key=lambda e: e["auc"])["reference"],
                    "auc": max(e["auc"] for e in board), **({"modelId": B} if best.get("modelId") else {})}
    # A one-model evaluation: one entry, the best is that model.
    single = evaluation.aggregate([fakes.shard_result("ev", A, i, 2) for i in range(2)])
    board, best = st.leaderboard(single, [{"reference": A, "modelId": A}])
    assert len(board) == 1 and best == {"reference": A, "modelId": A, "auc": single["auc"]}


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_two_models_and_their_ensemble_end_to_end(cluster: Cluster, operator, store_uri: str) -> None:
    runner = cluster.start_runner(executor=fakes.executor)
    operator()
    for name in ("tr-a", "tr-b"):
        cluster.create(training_run(name))
    ids = {}
    for name in ("tr-a", "tr-b"):
        tr = cluster.wait_phase("trainingruns", NAMESPACE, name, TERMINAL, 30)
        assert tr["status"]["phase"] == crd.SUCCEEDED, tr["status"]
        ids[name] = tr["status"]["modelId"]
    models = [{"trainingRun": "tr-a"}, {"trainingRun": "tr-b"}, {"id": ids["tr-a"]}]
    er = evaluation_run("board", None, models=models, ensemble="mean")
    del er["spec"]["model"]
    cluster.create(er)
    done = cluster.wait_phase("evaluationruns", NAMESPACE, "board", TERMINAL, 30)
    es = done["status"]
    assert es["phase"] == crd.SUCCEEDED, json.dumps(es, indent=1)

    # One Job, one pass: every shard was given each distinct model once, and the ensemble.
    eval_runs = [run for run in runner.runs if run.job == "board-eval"]
    assert len(eval_runs) == 3
    command = cluster.get("jobs", NAMESPACE, "board-eval")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("evaluate") + 1:command.index("--data")] == [
        "--model", ids["tr-a"], "--model", ids["tr-b"], "--ensemble", "mean"]

    expected = evaluation.aggregate([fakes.models_shard_result(
        "x", [ids["tr-a"], ids["tr-b"]], [ids["tr-a"], ids["tr-b"]], i, 3, "mean") for i in range(3)])
    exp = {m["model_id"] if m["model_id"] else "ensemble": m for m in expected["models"]}
    assert es["models"] == [{"reference": "trainingRun:tr-a", "modelId": ids["tr-a"]},
                            {"reference": "trainingRun:tr-b", "modelId": ids["tr-b"]},
                            {"reference": ids["tr-a"], "modelId": ids["tr-a"]}]
    board = es["leaderboard"]
    assert [e["reference"] for e in board] == ["trainingRun:tr-a", "trainingRun:tr-b", ids["tr-a"], "ensemble"]
    for entry, key in zip(board, [ids["tr-a"], ids["tr-b"], ids["tr-a"], "ensemble"]):
        m = exp[key]
        assert (entry["rows"], entry["accuracy"], entry["auc"], entry["logLoss"], entry["confusion"]) == (
            m["rows"], m["accuracy"], m["auc"], m["log_loss"], m["confusion"]), key
    assert board[-1]["members"] == [ids["tr-a"], ids["tr-b"]]
    top = max(board, key=lambda e: e["auc"])
    assert es["best"]["reference"] == top["reference"] and es["best"]["auc"] == top["auc"]
    # The single-model fields stay, for the first model.
    assert es["modelId"] == ids["tr-a"] and es["auc"] == exp[ids["tr-a"]]["auc"]
    assert es["rows"] == 3 * fakes.ROWS_PER_SHARD
    print("\nleaderboard (stand-in scores):")
    for e in board:
        print(f"  {e['reference']:34s} AUC {e['auc']:.4f}  accuracy {e['accuracy']:.4f}")
    print(f"  best: {es['best']['reference']}")
    # Every distinct model is claimed by the evaluation.
    store = store_lib.open_store(store_uri, namespace=NAMESPACE)
    for model_id in ids.values():
        assert any(e["evaluation"] == es["evaluation"] for e in store.model_evaluations(model_id))


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_bad_model_lists_are_refused_or_fail_naming_the_reference(cluster: Cluster, operator,
                                                                   store_uri: str) -> None:
    cluster.start_runner(executor=fakes.executor)
    operator()
    cluster.create(training_run("tr-ok"))
    tr = cluster.wait_phase("trainingruns", NAMESPACE, "tr-ok", TERMINAL, 30)
    good = tr["status"]["modelId"]

    refused = {
        "both": ({"model": {"id": good}, "models": [{"id": good}]}, "name the models one way"),
        "lonely-ensemble": ({"models": [{"id": good}], "ensemble": "mean"}, "ensemble needs at least two models"),
        "nine": ({"models": [{"id": good}] * 9}, "spec.models: Too many"),
        "vote": ({"models": [{"id": good}, {"id": good}], "ensemble": "vote"}, "spec.ensemble: Unsupported value"),
    }
    for name, (spec, text) in refused.items():
        obj = evaluation_run(name, spec.get("model"), **{k: v for k, v in spec.items() if k != "model"})
        if "model" not in spec:
            del obj["spec"]["model"]
        with pytest.raises(ApiError) as invalid:
            cluster.create(obj)
        message = json.loads(invalid.value.body)["message"]
        assert invalid.value.code == 422 and text in message, (name, message)

    # An unknown model among several fails the run naming it, before any Job: no partial leaderboard.
    obj = evaluation_run("unknown", None, models=[{"id": good}, {"id": "d" * 32}], ensemble="mean")
    del obj["spec"]["model"]
    cluster.create(obj)
    failed = cluster.wait_phase("evaluationruns", NAMESPACE, "unknown", TERMINAL, 20)
    assert failed["status"]["phase"] == crd.FAILED
    cond = condition(failed, crd.FAILED_CONDITION)
    assert cond["reason"] == crd.REASON_MODEL_NOT_FOUND and "spec.models[1]" in cond["message"] \
        and "d" * 32 in cond["message"], cond
    assert "leaderboard" not in failed["status"]
    assert [j["metadata"]["name"] for j in cluster.list("jobs", NAMESPACE) if "unknown" in j["metadata"]["name"]] == []


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_real_evaluator_pods_score_two_models_and_their_ensemble(cluster: Cluster, operator, store_uri: str,
                                                                 tmp_path) -> None:
    """The real `evaluate` in every pod (the Job runner runs each pod's command as a process): two
    small real models in the store, one EvaluationRun of 3 shards over the sample's held-out rows;
    the leaderboard equals one `evaluate` process scoring both models and their ensemble."""
    import os
    import subprocess
    import sys

    from support.harness import REPO, SAMPLE
    from support.models import small_model_in_store

    first, _ = small_model_in_store(store_uri, namespace=NAMESPACE, run="narrow", hidden=(16, 8))
    second, _ = small_model_in_store(store_uri, namespace=NAMESPACE, run="wide", hidden=(64, 32))
    cluster.start_runner()
    operator()
    er = evaluation_run("real-board", None, models=[{"id": first}, {"id": second}], ensemble="mean",
                        dataset={"uris": [str(SAMPLE)], "skip": 10979}, shards=3, chunkRows=4096, stripeRows=4096)
    del er["spec"]["model"]
    cluster.create(er)
    done = cluster.wait_phase("evaluationruns", NAMESPACE, "real-board", TERMINAL, 240)
    es = done["status"]
    assert es["phase"] == crd.SUCCEEDED, json.dumps(es, indent=1)

    single = subprocess.run(
        [sys.executable, "-m", "susy_pipeline", "evaluate", "--model", first, "--model", second, "--ensemble", "mean",
         "--data", str(SAMPLE), "--skip", "10979", "--evaluation", "one-process", "--shard-index", "0",
         "--chunk-rows", "4096"],
        env={**os.environ, "MONGODB_URI": store_uri, "SUSY_NAMESPACE": NAMESPACE, "HOME": str(tmp_path)},
        cwd=str(REPO),
        capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]
    with store_lib.open_store(store_uri, namespace=NAMESPACE) as store:
        expected = evaluation.aggregate(store.shard_results("one-process"))
    board = es["leaderboard"]
    assert [e["reference"] for e in board] == [first, second, "ensemble"]
    for entry, m in zip(board, expected["models"], strict=True):
        assert (entry["rows"], entry["accuracy"], entry["auc"], entry["logLoss"], entry["confusion"]) == (
            10_000, m["accuracy"], m["auc"], m["log_loss"], m["confusion"]), entry["reference"]
    assert es["best"]["auc"] == max(e["auc"] for e in board)
    print("\nreal pods, 3 shards = one process:")
    for e in board:
        print(f"  {e['reference']:34s} AUC {e['auc']:.4f}  accuracy {e['accuracy']:.4f}  log-loss {e['logLoss']:.4f}")


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_an_evaluation_run_never_resolves_another_namespaces_model(cluster: Cluster, operator,
                                                                    store_uri: str) -> None:
    """Two teams share the store (issue 22): team-b's models, even the newest, are not found from a
    run in NAMESPACE by id, timestamp or latest of a run name both teams use."""
    cluster.start_runner(executor=fakes.executor)
    operator()
    cluster.create(training_run("tr-own"))
    own = cluster.wait_phase("trainingruns", NAMESPACE, "tr-own", TERMINAL, 30)["status"]
    with store_lib.open_store(store_uri, namespace="team-b") as team_b:
        # Newer than NAMESPACE's model, and under NAMESPACE's run name: a store-wide search takes it.
        theirs = team_b.save_model({"run": own["runName"]}, b"team-b's weights")

    cluster.create(evaluation_run("by-id", {"id": theirs}))
    failed = cluster.wait_phase("evaluationruns", NAMESPACE, "by-id", TERMINAL, 20)
    cond = condition(failed, crd.MODEL_RESOLVED)
    assert failed["status"]["phase"] == crd.FAILED and cond["reason"] == crd.REASON_MODEL_NOT_FOUND
    assert f"in namespace '{NAMESPACE}'" in cond["message"], cond

    for name, ref in (("by-time", {"timestamp": "2999-01-01T00:00:00Z"}), ("by-run", {"trainingRun": "tr-own"})):
        cluster.create(evaluation_run(name, ref))
        done = cluster.wait_phase("evaluationruns", NAMESPACE, name, TERMINAL, 30)
        assert done["status"]["phase"] == crd.SUCCEEDED, done["status"]
        assert done["status"]["modelId"] == own["modelId"] != theirs
        env = {e["name"]: e.get("value") for e in cluster.get("jobs", NAMESPACE, f"{name}-eval")[
            "spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["SUSY_NAMESPACE"] == NAMESPACE  # the shards write NAMESPACE's records

    # An alias: team-b's "champion" is not NAMESPACE's, until NAMESPACE sets its own.
    with store_lib.open_store(store_uri, namespace="team-b") as team_b:
        team_b.set_alias("champion", theirs, set_by="team-b")
    cluster.create(evaluation_run("by-their-alias", {"alias": "champion"}))
    failed = cluster.wait_phase("evaluationruns", NAMESPACE, "by-their-alias", TERMINAL, 20)
    cond = condition(failed, crd.MODEL_RESOLVED)
    assert cond["reason"] == crd.REASON_MODEL_NOT_FOUND and f"no alias 'champion' in namespace '{NAMESPACE}'" in \
        cond["message"], cond
    with store_lib.open_store(store_uri, namespace=NAMESPACE) as ours:
        ours.set_alias("champion", own["modelId"], set_by="us")
    cluster.create(evaluation_run("by-alias", {"alias": "champion"}))
    done = cluster.wait_phase("evaluationruns", NAMESPACE, "by-alias", TERMINAL, 30)
    assert done["status"]["phase"] == crd.SUCCEEDED, done["status"]
    assert done["status"]["models"] == [{"reference": "alias:champion", "modelId": own["modelId"]}]
