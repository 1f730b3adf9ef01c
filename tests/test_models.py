"""Stored models at the sizes the CRD allows, and the `models` command (list, export, delete).

A [1024, 1024, 1024] model (the CRD allows 8 layers of 4,096) is a 25 MB `.keras` archive, over
MongoDB's 16 MiB document cap: it must round-trip through GridFS (mongomock) and the embedded
store's chunks with the same predictions. `models delete` refuses while an evaluation that claimed
the model has fewer shard results than shards.
"""
from __future__ import annotations

import json
import os

import bson
import numpy as np
import pytest

from susy_pipeline import cli
from susy_pipeline.store import MongoStore, open_store

from support.mongo import MONGODB_DOCUMENT_CAP, mongomock_client


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path}/store.sqlite3"


def _largest_record(store) -> int:
    """The size of the largest document (MongoDB: BSON) or row (the embedded store) stored."""
    if isinstance(store, MongoStore):
        db = store._models.database
        return max(len(bson.encode(doc)) for name in db.list_collection_names() for doc in db[name].find())
    tables = {name for name, in store._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return max(size for table, column in (("documents", "length(body) + coalesce(length(blob), 0)"),
                                          ("chunks", "length(data)")) if table in tables
               for size, in store._db.execute(f"SELECT max({column}) FROM {table}"))


def _cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("backend", ["embedded", "mongo"])
def test_a_25_mb_keras_model_round_trips_with_equal_predictions(backend, tmp_path):
    pytest.importorskip("tensorflow")
    from susy_pipeline.model import ModelConfig, build_model, model_from_bytes, model_to_bytes

    rng = np.random.default_rng(7)
    x = rng.normal(size=(256, 18)).astype(np.float32)
    model = build_model(ModelConfig(hidden=(1024, 1024, 1024)), mean=x.mean(0), variance=x.var(0))
    # One step builds Adam's two moments per weight: 8.5 MB of weights become a 25.5 MB archive,
    # as a trained model of this size is.
    model.fit(x, (x[:, 0] > 0).astype(np.float32), epochs=1, batch_size=256, verbose=0)
    data = model_to_bytes(model)
    assert len(data) > MONGODB_DOCUMENT_CAP
    if backend == "embedded":
        store = open_store(f"sqlite:///{tmp_path}/store.sqlite3")
    else:
        store = MongoStore(client=mongomock_client(), database="bigdata")
    with store:
        model_id = store.save_model({"run": "wide", "hyperparameters": {"hidden": [1024] * 3}}, data)
        meta, loaded = store.load_model("latest:wide")
        # mongomock takes a document of any size; a MongoDB server refuses one over 16 MiB.
        assert _largest_record(store) < MONGODB_DOCUMENT_CAP
    assert meta["model_id"] == model_id and loaded == data
    again = model_from_bytes(loaded)
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


def test_models_list_prints_one_json_document_or_a_table(uri, capsys):
    with open_store(uri) as store:
        first = store.save_model({"run": "a", "rows": 10, "metrics": {"val_auc": 0.8123}}, b"1" * 100)
        second = store.save_model({"run": "b", "rows": 20}, b"2" * 100)
    for argv in (["models", "--store", uri], ["models", "list", "--store", uri],
                 ["models", "--store", uri, "list"]):
        code, out, _ = _cli(capsys, *argv)
        listing = json.loads(out)  # the whole of stdout is one JSON document
        assert code == 0 and listing["count"] == 2
        assert [m["model_id"] for m in listing["models"]] == [second, first]
        assert listing["models"][1]["size_bytes"] == 100 and listing["models"][1]["run"] == "a"
    for argv in (["models", "--store", uri, "--run-name", "a"],
                 ["models", "list", "--run-name", "a", "--store", uri]):
        code, out, _ = _cli(capsys, *argv)
        assert [m["model_id"] for m in json.loads(out)["models"]] == [first]
    code, out, _ = _cli(capsys, "models", "list", "--table", "--store", uri)
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["model_id", "created_at", "run", "rows", "val_auc", "size"]
    assert rows[1].split()[0] == first and "0.8123" in rows[1] and len(rows) == 2


def test_models_export_writes_the_keras_bytes(uri, tmp_path, capsys):
    data = os.urandom(600_000)  # three chunks
    with open_store(uri) as store:
        model_id = store.save_model({"run": "r"}, data)
    out_file = tmp_path / "exported.keras"
    code, out, _ = _cli(capsys, "models", "export", "latest:r", "--out", str(out_file), "--store", uri)
    assert code == 0 and out_file.read_bytes() == data
    assert json.loads(out) == {"model_id": model_id, "run": "r", "out": str(out_file), "bytes": len(data)}
    code, _, err = _cli(capsys, "models", "export", model_id, "--out", str(tmp_path / "x.h5"), "--store", uri)
    assert code == 2 and "must end .keras" in err
    code, _, err = _cli(capsys, "models", "export", "latest:nobody", "--out", str(out_file), "--store", uri)
    assert code == 2 and "no model of run 'nobody'" in err


def test_models_delete_refuses_while_an_evaluation_is_unfinished(uri, capsys):
    with open_store(uri) as store:
        model_id = store.save_model({"run": "r"}, b"x" * 1000)
        store.claim_model("eval-1", model_id, 2)
        store.put_shard_result("eval-1", 0, {"model_id": model_id, "rows": 5})
    code, out, err = _cli(capsys, "models", "delete", model_id, "--store", uri)
    assert code == 2 and out == ""
    assert f"model {model_id} is in use by unfinished evaluation(s) 'eval-1' (1 of 2 shards done" in err
    code, _, err = _cli(capsys, "models", "delete", "latest:r", "--store", uri)
    assert code == 2 and "takes a model id" in err

    with open_store(uri) as store:
        store.put_shard_result("eval-1", 1, {"model_id": model_id, "rows": 5})
    code, out, _ = _cli(capsys, "models", "delete", model_id, "--store", uri)
    assert code == 0 and json.loads(out)["deleted"] is True
    code, _, err = _cli(capsys, "models", "delete", model_id, "--store", uri)
    assert code == 2 and "no model with id" in err


def test_models_delete_force_removes_a_model_of_an_abandoned_evaluation(uri, capsys):
    with open_store(uri) as store:
        model_id = store.save_model({"run": "r"}, b"x")
        store.claim_model("gone", model_id, 4)
    code, out, _ = _cli(capsys, "models", "delete", model_id, "--force", "--store", uri)
    assert code == 0 and json.loads(out)["unfinished_evaluations"] == ["gone"]
    with open_store(uri) as store:
        assert store.list_models() == []


def test_an_evaluator_shard_claims_its_model_until_every_shard_is_in(uri, tmp_path):
    """evaluate_shard records the model before loading it; delete waits for the last shard."""
    pytest.importorskip("tensorflow")
    from susy_pipeline.scoring import evaluate_shard
    from susy_pipeline.model import ModelConfig, build_model, model_to_bytes
    from susy_pipeline.store import ModelInUse

    rows = "\n".join(",".join(["1"] + ["0.5"] * 18) if i % 2 else ",".join(["0"] + ["0.1"] * 18)
                     for i in range(40))
    data = tmp_path / "test.csv"
    data.write_text(rows + "\n")
    model = build_model(ModelConfig(hidden=(4,)), mean=[0.0] * 18, variance=[1.0] * 18)
    with open_store(uri) as store:
        model_id = store.save_model({"run": "r"}, model_to_bytes(model))
        evaluate_shard(store, model_ref="latest:r", inputs=[str(data)], evaluation="ev", shard_index=0,
                       shard_count=2, chunk_rows=16, warmup_calls=1)
        assert store.model_claims(model_id)[0]["evaluation"] == "ev"
        with pytest.raises(ModelInUse, match=r"'ev' \(1 of 2 shards done"):
            store.delete_model(model_id)
        evaluate_shard(store, model_ref=model_id, inputs=[str(data)], evaluation="ev", shard_index=1,
                       shard_count=2, chunk_rows=16, warmup_calls=1)
        assert store.delete_model(model_id)["deleted"]


def test_models_lineage_names_the_production_and_the_evaluations(uri, capsys):
    partitions = {"0": [0, 600], "1": [0, 400]}
    with open_store(uri) as store:
        store.put_production("r", {"topic": "trainData", "partitions": partitions, "rows": 1000,
                                   "source": {"data": "data/susy-sample.csv.gz", "skip": 0, "limit": 1000}})
        model_id = store.save_model({"run": "r", "recipe": "seed", "lineage": {
            "topic": "trainData", "partitions": partitions, "bootstrap": "kafka:9092",
            "source": {"data": "data/susy-sample.csv.gz", "skip": 0, "limit": 1000}}}, b"m" * 10)
        store.claim_model("ev-done", model_id, 1)
        store.put_shard_result("ev-done", 0, {"model_id": model_id, "rows": 5})
        store.claim_model("ev-running", model_id, 3)
        store.put_shard_result("ev-running", 2, {"model_id": model_id, "rows": 5})
    code, out, _ = _cli(capsys, "models", "lineage", "latest:r", "--store", uri)
    shown = json.loads(out)
    assert code == 0 and shown["model_id"] == model_id and shown["recipe"] == "seed"
    assert shown["lineage"]["partitions"] == partitions and shown["lineage"]["source"]["limit"] == 1000
    assert shown["production"]["rows"] == 1000 and shown["production_matches"] is True
    assert [(e["evaluation"], e["shards_done"], e["missing"], e["finished"]) for e in shown["evaluations"]] \
        == [("ev-done", 1, [], True), ("ev-running", 1, [0, 1], False)]

    with open_store(uri) as store:  # the run name used again: its production record replaced
        store.put_production("r", {"topic": "trainData", "partitions": {"0": [600, 700]}, "rows": 100})
    code, out, _ = _cli(capsys, "models", "lineage", model_id, "--store", uri)
    assert code == 0 and json.loads(out)["production_matches"] is False
    code, _, err = _cli(capsys, "models", "lineage", "latest:nobody", "--store", uri)
    assert code == 2 and "no model of run 'nobody'" in err


def test_a_released_evaluation_no_longer_holds_its_model(uri, capsys):
    """What the operator does for an EvaluationRun that failed for good or was deleted."""
    with open_store(uri) as store:
        model_id = store.save_model({"run": "r"}, b"x")
        store.claim_model("failed-eval", model_id, 2)
    code, _, err = _cli(capsys, "models", "delete", model_id, "--store", uri)
    assert code == 2 and "'failed-eval' (0 of 2 shards done" in err
    with open_store(uri) as store:
        assert store.release_evaluation("failed-eval") == [model_id]
        assert store.release_evaluation("failed-eval") == []  # again: nothing left, no error
    code, out, _ = _cli(capsys, "models", "delete", model_id, "--store", uri)
    assert code == 0 and json.loads(out)["unfinished_evaluations"] == []
