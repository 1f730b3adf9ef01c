"""Namespaces in the model store (issue 22, point 3): two teams share one store, and a reference in
namespace B never reaches namespace A's records, by id, timestamp, latest:RUN, listing, productions,
shard results, claims or delete. Records from before namespaces belong to `local`.

Both back ends: MongoStore on mongomock (two stores on one client stand for two processes on one
server) and the embedded store (two stores on one SQLite file; the old-file adoption across
processes)."""
from __future__ import annotations

import json
import multiprocessing
import sqlite3
import time

import pytest

from susy_pipeline import cli
from susy_pipeline.errors import BadInput
from susy_pipeline.store import EmbeddedStore, ModelNotFound, MongoStore, open_store

from support.mongo import mongomock_client, run_processes, stores  # noqa: F401 (a fixture)


def test_a_reference_in_namespace_b_never_resolves_to_a_model_of_namespace_a(stores):
    a, b = stores("team-a"), stores("team-b")
    a_model = a.save_model({"run": "shared-name"}, b"a's weights")
    time.sleep(0.01)
    assert a.resolve_model("latest:shared-name")["namespace"] == "team-a"
    for ref, message in ((a_model, "no model with id"), ("latest:shared-name", "no model of run"),
                         ("2999-01-01T00:00:00Z", "no model created at or before")):
        with pytest.raises(ModelNotFound, match=f"{message}.*in namespace 'team-b'"):
            b.resolve_model(ref)
        with pytest.raises(ModelNotFound):
            b.load_model(ref)
    assert b.list_models() == [] and b.list_models("shared-name") == []
    with pytest.raises(ModelNotFound):
        b.delete_model(a_model, force=True)
    assert a.load_model(a_model)[1] == b"a's weights"  # untouched

    # The same names in B are B's own: each namespace sees its own model.
    b_model = b.save_model({"run": "shared-name"}, b"b's weights")
    assert a.resolve_model("latest:shared-name")["model_id"] == a_model
    assert b.resolve_model("latest:shared-name")["model_id"] == b_model
    assert [m["model_id"] for m in a.list_models()] == [a_model]


def test_productions_shard_results_and_claims_of_the_same_names_stay_apart(stores):
    a, b = stores("team-a"), stores("team-b")
    a_model, b_model = a.save_model({"run": "r"}, b"a"), b.save_model({"run": "r"}, b"b")
    a.put_production("r", {"rows": 10})
    b.put_production("r", {"rows": 20})
    a.put_shard_result("ev", 0, {"model_id": a_model, "rows": 1})
    b.put_shard_result("ev", 0, {"model_id": b_model, "rows": 2})
    b.put_shard_result("ev", 1, {"model_id": b_model, "rows": 3})
    a.claim_model("ev", a_model, 2)
    b.claim_model("ev", b_model, 2)
    assert (a.get_production("r")["rows"], b.get_production("r")["rows"]) == (10, 20)
    assert a.get_production("r")["namespace"] == "team-a"
    assert [r["rows"] for r in a.shard_results("ev")] == [1]
    assert [r["rows"] for r in b.shard_results("ev")] == [2, 3]
    assert all(r["namespace"] == "team-b" for r in b.shard_results("ev"))
    assert stores("team-c").get_production("r") is None and stores("team-c").shard_results("ev") == []
    # B's evaluation is finished, A's is not; releasing A's evaluation leaves B's claim.
    assert a.unfinished_evaluations(a_model)[0]["missing"] == [1]
    assert b.unfinished_evaluations(b_model) == []
    assert a.release_evaluation("ev") == [a_model]
    assert [c["evaluation"] for c in b.model_claims(b_model)] == ["ev"]
    assert b.model_claims(a_model) == []


def test_views_of_one_connection_see_their_own_namespace_and_prepare_the_collections_once(monkeypatch):
    """The operator keeps one connection and takes a view per custom resource's namespace."""
    base = MongoStore(client=mongomock_client())
    prepared = []
    monkeypatch.setattr(MongoStore, "_prepare_collections", lambda self: prepared.append(self.namespace))
    a, b = base.in_namespace("team-a"), base.in_namespace("team-b")
    model = a.save_model({"run": "r"}, b"a")
    assert [m["model_id"] for m in a.list_models()] == [model] and b.list_models() == []
    assert base.in_namespace("team-a").resolve_model(model)["namespace"] == "team-a"
    assert prepared == ["team-a"] and base.namespace == "local"
    with pytest.raises(BadInput):
        base.in_namespace("Team A")


def test_a_namespace_must_be_a_kubernetes_namespace_name(tmp_path):
    for bad in ("", "Team-A", "a/b", "-a", "a" * 64, "a_b"):
        with pytest.raises(BadInput, match="expected a Kubernetes namespace name"):
            open_store(f"sqlite:///{tmp_path}/s.sqlite3", namespace=bad)
        with pytest.raises(BadInput):
            MongoStore(client=mongomock_client(), namespace=bad)


# --- records written before namespaces -------------------------------------

_OLD_SCHEMA = """
CREATE TABLE documents (collection TEXT NOT NULL, id TEXT NOT NULL, run TEXT, created_at TEXT NOT NULL,
                        body TEXT NOT NULL, blob BLOB, PRIMARY KEY (collection, id));
CREATE INDEX documents_by_run ON documents (collection, run, created_at);
CREATE INDEX documents_by_time ON documents (collection, created_at);
"""
OLD_MODEL = "0" * 32


def _write_a_store_from_before_namespaces(path) -> None:
    """The rows the store wrote before this change: no namespace column, keys without one."""
    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA)
    rows = [
        ("bigdata.MLModels", OLD_MODEL, "old-run", "2026-01-01T00:00:00.000000Z",
         {"model_id": OLD_MODEL, "run": "old-run", "created_at": "2026-01-01T00:00:00.000000Z"}, b"old bytes"),
        ("bigdata.Productions", "old-run", "old-run", "2026-01-01T00:00:00.000000Z",
         {"run": "old-run", "rows": 7}, None),
        ("bigdata.ShardResults", "old-eval/0", "old-eval", "2026-01-01T00:00:00.000000Z",
         {"evaluation": "old-eval", "shard_index": 0, "model_id": OLD_MODEL, "rows": 5}, None),
        ("bigdata.Evaluations", f"old-eval/{OLD_MODEL}", OLD_MODEL, "2026-01-01T00:00:00.000000Z",
         {"evaluation": "old-eval", "model_id": OLD_MODEL, "shard_count": 2,
          "claimed_at": "2026-01-01T00:00:00.000000Z"}, None),
    ]
    db.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)",
                   [(c, i, r, t, json.dumps(body), blob) for c, i, r, t, body, blob in rows])
    db.commit()
    db.close()


def _open_and_list(path: str, queue) -> None:
    with EmbeddedStore(path) as store:
        queue.put([m["model_id"] for m in store.list_models()])


def _assert_old_records_are_local(local, other) -> None:
    assert local.load_model(OLD_MODEL)[0]["namespace"] == "local"
    assert local.resolve_model("latest:old-run")["model_id"] == OLD_MODEL
    assert local.get_production("old-run")["rows"] == 7
    assert [r["rows"] for r in local.shard_results("old-eval")] == [5]
    assert local.unfinished_evaluations(OLD_MODEL)[0]["missing"] == [1]
    # The moved records behave as new ones: an upsert replaces, it does not add a twin.
    local.put_shard_result("old-eval", 0, {"model_id": OLD_MODEL, "rows": 6})
    local.put_production("old-run", {"rows": 8})
    assert [r["rows"] for r in local.shard_results("old-eval")] == [6]
    assert local.get_production("old-run")["rows"] == 8
    with pytest.raises(ModelNotFound):
        other.resolve_model(OLD_MODEL)
    assert other.list_models() == [] and other.shard_results("old-eval") == []


def test_an_embedded_store_from_before_namespaces_is_adopted_into_local_once_by_racing_processes(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    _write_a_store_from_before_namespaces(path)
    queue = multiprocessing.get_context("spawn").Queue()
    assert run_processes(_open_and_list, [(path, queue)] * 4) == [0] * 4
    assert [queue.get(timeout=5) for _ in range(4)] == [[OLD_MODEL]] * 4
    keys = sorted(k for k, in sqlite3.connect(path).execute("SELECT id FROM documents"))
    assert keys == sorted([OLD_MODEL, "local/old-run", "local/old-eval/0", f"local/old-eval/{OLD_MODEL}"])
    with EmbeddedStore(path) as local, EmbeddedStore(path, namespace="team-a") as other:
        _assert_old_records_are_local(local, other)


def test_mongodb_records_from_before_namespaces_are_adopted_into_local(tmp_path):
    client = mongomock_client()
    db = client["bigdata"]
    db["MLModels"].insert_one({"_id": OLD_MODEL, "model_id": OLD_MODEL, "run": "old-run",
                               "created_at": "2026-01-01T00:00:00.000000Z", "model": b"old bytes"})
    db["Productions"].insert_one({"_id": "old-run", "run": "old-run", "rows": 7})
    db["ShardResults"].insert_one({"_id": "old-eval/0", "evaluation": "old-eval", "shard_index": 0,
                                   "model_id": OLD_MODEL, "rows": 5})
    db["Evaluations"].insert_one({"_id": f"old-eval/{OLD_MODEL}", "evaluation": "old-eval",
                                  "model_id": OLD_MODEL, "shard_count": 2, "claimed_at": "2026-01-01"})
    other = MongoStore(client=client, namespace="team-a")
    assert other.list_models() == []  # the first store to touch the server moves them to local
    local = MongoStore(client=client)
    _assert_old_records_are_local(local, other)
    assert sorted(db["ShardResults"].distinct("_id")) == ["local/old-eval/0"]
    assert db["MLModels"].count_documents({"namespace": {"$exists": False}}) == 0


# --- the commands ----------------------------------------------------------

def test_commands_take_the_namespace_from_the_option_or_susy_namespace(tmp_path, capsys, monkeypatch):
    uri = f"sqlite:///{tmp_path}/store.sqlite3"
    with open_store(uri, namespace="team-a") as a:
        a_model = a.save_model({"run": "r"}, b"a")
    with open_store(uri) as local:
        local_model = local.save_model({"run": "r"}, b"local")

    def models(*argv):
        code = cli.main(["models", *argv, "--store", uri])
        out, err = capsys.readouterr()
        return code, out, err

    assert [m["model_id"] for m in json.loads(models("list")[1])["models"]] == [local_model]
    assert [m["model_id"] for m in json.loads(models("list", "--namespace", "team-a")[1])["models"]] == [a_model]
    code, _, err = models("lineage", a_model)
    assert code == 2 and "in namespace 'local'" in err
    monkeypatch.setenv("SUSY_NAMESPACE", "team-a")
    assert json.loads(models("lineage", a_model)[1])["namespace"] == "team-a"
    assert json.loads(models("list")[1])["count"] == 1
    with pytest.raises(SystemExit) as refused:  # argparse's usage error
        models("list", "--namespace", "Team_A")
    assert refused.value.code == 2
    assert "expected a Kubernetes namespace name" in capsys.readouterr().err
