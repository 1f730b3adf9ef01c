"""TrainingRun spec.model.warmStart: parsed like an EvaluationRun's model reference, resolved to one
id by the operator before any Job (status.parentModelId), passed to the trainer as --warm-start,
checked against the parent's network.

The emulator tests run the real operator with the stand-in pods of support/fakes.py (their
trainer records the parent as the real one does); tests/test_continual.py trains for real.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from susy_operator import builders, crd, spec as spec_lib
from susy_pipeline import store as store_lib
from support import fakes
from support.fixtures import NAMESPACE, cluster, condition, operator, store_uri, training_run  # noqa: F401
from support.harness import Cluster

PARENT = "c" * 32


def _parse(**model: Any) -> spec_lib.TrainingRunSpec:
    return spec_lib.parse_training_run({"dataset": {"uri": "x.csv"}, "model": model})


def test_an_alias_is_a_model_reference_in_the_pipelines_syntax() -> None:
    ref = _parse(warmStart={"alias": "champion"}).model.warm_start
    assert ref == spec_lib.ModelReference(alias="champion")
    assert (ref.store_ref, ref.text, ref.describe()) == ("alias:champion", "alias:champion", "the model of alias champion")
    with pytest.raises(spec_lib.SpecError, match="spec.model.warmStart.alias"):
        _parse(warmStart={"alias": "no spaces"})


def test_warm_start_is_a_model_reference_and_leaves_the_recipe_to_the_parent() -> None:
    parsed = _parse(warmStart={"trainingRun": "first"})
    assert parsed.model.warm_start == spec_lib.ModelReference(training_run="first")
    assert parsed.model.recipe is None  # the parent's
    assert _parse(warmStart={"id": PARENT}, recipe="tuned").model.recipe == "tuned"
    assert _parse().model.warm_start is None and _parse().model.recipe == spec_lib.DEFAULT_RECIPE


@pytest.mark.parametrize("warm,problem", [
    ({}, "spec.model.warmStart must name the model exactly one way (id, timestamp, trainingRun or alias), "
           "got none"),
    ({"id": PARENT, "trainingRun": "a"}, "got id, trainingRun"),
    ({"id": "nope"}, "spec.model.warmStart.id"),
    ({"timestamp": "yesterday"}, "spec.model.warmStart.timestamp 'yesterday' is not an RFC 3339 date-time"),
    ("latest:first", "spec.model.warmStart must be an object"),
])
def test_bad_warm_start_references_are_named(warm: Any, problem: str) -> None:
    with pytest.raises(spec_lib.SpecError) as error:
        _parse(warmStart=warm)
    assert problem in str(error.value)


def test_the_trainer_continues_the_resolved_parent() -> None:
    owner = builders.Owner(kind=crd.TRAINING_KIND, name="second", namespace="ns", uid="u" * 36)
    parsed = _parse(warmStart={"trainingRun": "first"})
    command = builders.trainer_job(owner, parsed, "run", fakes_job_config(), PARENT)[
        "spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--warm-start") + 1] == PARENT
    assert "--recipe" not in command
    plain = builders.trainer_job(owner, _parse(), "run", fakes_job_config())[
        "spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--warm-start" not in plain and plain[plain.index("--recipe") + 1] == "seed"


def fakes_job_config() -> builders.JobConfig:
    from susy_operator import config

    return config.load({"SUSY_PIPELINE_IMAGE": "pipeline:test"}).job_config


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_warm_started_training_run_waits_for_its_parent_and_names_it(cluster: Cluster, operator,
                                                                        store_uri: str) -> None:
    cluster.start_runner(executor=fakes.executor)
    operator()
    # The child first: it waits in Pending for the TrainingRun that makes its parent.
    cluster.create(training_run("second", model={"warmStart": {"trainingRun": "first"}}))
    pending = cluster.wait_phase("trainingruns", NAMESPACE, "second", {crd.PENDING}, 15)
    waiting = condition(pending, crd.MODEL_RESOLVED)
    assert (waiting["status"], waiting["reason"]) == ("False", crd.REASON_WAITING_FOR_TRAINING_RUN)
    assert not cluster.list("jobs", NAMESPACE)  # nothing runs before the parent is known

    cluster.create(training_run("first", model={"recipe": "tuned"}))
    done = {n: cluster.wait_phase("trainingruns", NAMESPACE, n, {crd.SUCCEEDED, crd.FAILED}, 45)
            for n in ("first", "second")}
    for obj in done.values():
        assert obj["status"]["phase"] == crd.SUCCEEDED, json.dumps(obj["status"], indent=1)
    parent_id = done["first"]["status"]["modelId"]
    child = done["second"]["status"]
    assert child["parentModelId"] == parent_id and "parentModelId" not in done["first"]["status"]
    assert condition(done["second"], crd.MODEL_RESOLVED)["status"] == "True"
    trainer = cluster.get("jobs", NAMESPACE, builders.job_name("second", crd.TRAINER))
    command = trainer["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--warm-start") + 1] == parent_id and "--recipe" not in command
    with store_lib.open_store(store_uri, namespace=NAMESPACE) as store:
        record = store.resolve_model(child["modelId"])
    assert record["parent_model_id"] == parent_id and record["recipe"] == "tuned"

    # A field that contradicts the parent's network fails the run naming it, before any Job.
    cluster.create(training_run("third", model={"warmStart": {"id": parent_id}, "hidden": [64, 64]}))
    failed = cluster.wait_phase("trainingruns", NAMESPACE, "third", {crd.SUCCEEDED, crd.FAILED}, 15)
    assert failed["status"]["phase"] == crd.FAILED
    assert "spec.model.hidden contradicts the warm-start parent" in failed["status"]["message"]
    # An unknown parent fails too.
    cluster.create(training_run("fourth", model={"warmStart": {"id": "d" * 32}}))
    failed = cluster.wait_phase("trainingruns", NAMESPACE, "fourth", {crd.SUCCEEDED, crd.FAILED}, 15)
    assert failed["status"]["phase"] == crd.FAILED
    assert condition(failed, crd.MODEL_RESOLVED)["reason"] == crd.REASON_MODEL_NOT_FOUND
    assert builders.job_name("third", crd.PRODUCER) not in {j["metadata"]["name"] for j in cluster.list("jobs", NAMESPACE)}

    # Another team's model in the shared store is not a parent here, by id nor by timestamp.
    with store_lib.open_store(store_uri, namespace="team-b") as team_b:
        theirs = team_b.save_model({"run": "first", "recipe": "tuned"}, b"team-b's weights")
    cluster.create(training_run("fifth", model={"warmStart": {"id": theirs}}))
    failed = cluster.wait_phase("trainingruns", NAMESPACE, "fifth", {crd.SUCCEEDED, crd.FAILED}, 15)
    assert condition(failed, crd.MODEL_RESOLVED)["reason"] == crd.REASON_MODEL_NOT_FOUND
    assert f"in namespace '{NAMESPACE}'" in failed["status"]["message"]
    cluster.create(training_run("sixth", model={"warmStart": {"timestamp": "2999-01-01T00:00:00Z"}}))
    sixth = cluster.wait_phase("trainingruns", NAMESPACE, "sixth", {crd.SUCCEEDED, crd.FAILED}, 45)
    assert sixth["status"].get("parentModelId") not in (None, theirs), sixth["status"]
    # An alias of this namespace names the parent too (one of team-b's of the same name does not).
    with store_lib.open_store(store_uri, namespace="team-b") as team_b:
        team_b.set_alias("champion", theirs, set_by="team-b")
    with store_lib.open_store(store_uri, namespace=NAMESPACE) as ours:
        ours.set_alias("champion", parent_id, set_by="us")
    cluster.create(training_run("seventh", model={"warmStart": {"alias": "champion"}}))
    seventh = cluster.wait_phase("trainingruns", NAMESPACE, "seventh", {crd.SUCCEEDED, crd.FAILED}, 45)
    assert seventh["status"]["parentModelId"] == parent_id, seventh["status"]
