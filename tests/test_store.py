"""The model store: both back ends behind one interface, refs, concurrency, a store that is down."""
from __future__ import annotations

import os
import time

import bson
import pytest

from susy_pipeline.store import (CHUNK_BYTES, EmbeddedStore, ModelBytesDamaged, ModelInUse, ModelNotFound,
                                 ModelRef, MongoStore, StoreUnavailable, open_store)
from support.mongo import MONGODB_DOCUMENT_CAP, mongomock_client, run_processes


@pytest.fixture(params=["embedded", "mongo"])
def store(request, tmp_path):
    if request.param == "embedded":
        s = open_store(f"sqlite:///{tmp_path}/store.sqlite3")
    else:
        # mongomock stands in for a MongoDB server in one process (none can run here).
        s = MongoStore(client=mongomock_client(), database="bigdata")
    yield s
    s.close()


def _stored_shape(store, model_id):
    """(chunk sizes in order, the largest document's size) as the back end holds them."""
    if isinstance(store, MongoStore):
        db = store._db
        chunks = [len(c["data"]) for c in db["MLModels.chunks"].find({"files_id": model_id}).sort("n", 1)]
        largest = max(len(bson.encode(doc)) for name in db.list_collection_names()
                      for doc in db[name].find())
        return chunks, largest
    rows = store._db.execute("SELECT length(data) FROM chunks WHERE files_id = ? ORDER BY n",
                             (model_id,)).fetchall()
    largest = store._db.execute("SELECT max(length(body) + coalesce(length(blob), 0)) FROM documents"
                                ).fetchone()[0]
    return [n for n, in rows], largest


def test_a_model_over_16_mib_is_stored_in_chunks_and_round_trips(store):
    data = os.urandom(17 * 1024 * 1024 + 12_345)
    model_id = store.save_model({"run": "big"}, data)
    meta, loaded = store.load_model(model_id)
    assert loaded == data
    assert meta["size_bytes"] == len(data) and "model" not in meta
    assert store.list_models("big")[0]["size_bytes"] == len(data)
    chunks, largest = _stored_shape(store, model_id)
    assert chunks == [CHUNK_BYTES] * (len(data) // CHUNK_BYTES) + [len(data) % CHUNK_BYTES]
    assert largest < MONGODB_DOCUMENT_CAP  # no single document near the server's cap


def _save_the_old_way(store, model_id, data):
    """A model as the store saved it before chunking: the bytes inside the document."""
    meta = {"model_id": model_id, "created_at": "2026-01-01T00:00:00.000000Z", "run": "old",
            "format": "keras"}
    if isinstance(store, MongoStore):
        store._models.insert_one({"_id": model_id, **meta, "model": bson.Binary(data)})
    else:
        store._upsert("MLModels", model_id, "old", meta["created_at"], meta, data)


def test_models_saved_with_their_bytes_in_the_document_still_load_and_delete(store):
    _save_the_old_way(store, "0" * 32, b"old bytes")
    new = store.save_model({"run": "old"}, b"new bytes")
    assert store.load_model("0" * 32) == (store.resolve_model("0" * 32), b"old bytes")
    assert store.load_model("latest:old")[1] == b"new bytes"
    store.delete_model("0" * 32)
    with pytest.raises(ModelNotFound):
        store.load_model("0" * 32)
    assert [m["model_id"] for m in store.list_models()] == [new]


def test_missing_or_damaged_chunks_fail_the_load_clearly(store):
    model_id = store.save_model({"run": "r"}, os.urandom(3 * CHUNK_BYTES))
    if isinstance(store, MongoStore):
        store._db["MLModels.chunks"].delete_one({"files_id": model_id, "n": 1})
    else:
        store._db.execute("DELETE FROM chunks WHERE files_id = ? AND n = 1", (model_id,))
    with pytest.raises(ModelBytesDamaged, match=model_id):
        store.load_model(model_id)


def test_delete_refuses_while_an_evaluation_of_the_model_is_unfinished(store):
    model_id = store.save_model({"run": "r"}, os.urandom(2 * CHUNK_BYTES))
    other = store.save_model({"run": "r"}, b"other")
    store.claim_model("eval-a", model_id, 2)
    store.claim_model("eval-a", model_id, 2)  # every shard claims; one record
    store.put_shard_result("eval-a", 0, {"model_id": model_id, "rows": 1})
    store.put_shard_result("eval-a", 1, {"model_id": other, "rows": 1})  # another model's: not this one's
    with pytest.raises(ModelInUse, match=r"'eval-a' \(1 of 2 shards done") as refused:
        store.delete_model(model_id)
    assert refused.value.exit_code == 2 and refused.value.evaluations[0]["missing"] == [1]
    assert store.load_model(model_id)[0]["model_id"] == model_id  # nothing was removed
    assert store.delete_model(other)["deleted"]  # no evaluation names it

    store.put_shard_result("eval-a", 1, {"model_id": model_id, "rows": 1})  # the last shard is in
    assert store.unfinished_evaluations(model_id) == []
    assert store.delete_model(model_id)["deleted"]
    with pytest.raises(ModelNotFound):
        store.delete_model(model_id)
    assert _stored_shape(store, model_id)[0] == []  # its chunks are gone too
    assert store.model_claims(model_id) == []


def test_releasing_an_evaluation_drops_its_claims_only(store):
    first = store.save_model({"run": "r"}, b"1")
    second = store.save_model({"run": "r"}, b"2")
    store.claim_model("ev/a", first, 2)  # a name with a slash: claims are keyed "evaluation/model"
    store.claim_model("ev/a", second, 2)
    store.claim_model("ev", first, 1)
    store.put_shard_result("ev/a", 0, {"model_id": first, "rows": 1})
    assert store.release_evaluation("ev/a") == sorted([first, second])
    assert [c["evaluation"] for c in store.model_claims(first)] == ["ev"]
    assert store.model_claims(second) == [] and store.release_evaluation("ev/a") == []
    assert len(store.shard_results("ev/a")) == 1  # the results stay
    with pytest.raises(ModelInUse, match="'ev' "):
        store.delete_model(first)
    assert store.delete_model(second)["deleted"]


def test_delete_with_force_removes_a_model_whose_evaluation_never_finishes(store):
    model_id = store.save_model({"run": "r"}, b"x")
    store.claim_model("abandoned", model_id, 3)
    result = store.delete_model(model_id, force=True)
    assert result["unfinished_evaluations"] == ["abandoned"]
    assert store.list_models() == []


def test_model_refs_by_id_timestamp_and_latest_of_run(store):
    first = store.save_model({"run": "a", "rows": 1}, b"one")
    time.sleep(0.01)
    second = store.save_model({"run": "b", "rows": 2}, b"two")
    time.sleep(0.01)
    third = store.save_model({"run": "a", "rows": 3}, b"three")
    assert len({first, second, third}) == 3
    assert store.load_model(first) == (store.resolve_model(first), b"one")
    assert store.resolve_model("latest:a")["model_id"] == third
    assert store.resolve_model("latest:b")["model_id"] == second
    second_at = store.resolve_model(second)["created_at"]
    assert store.resolve_model(second_at)["model_id"] == second          # exactly at
    assert store.resolve_model(ModelRef.parse("2999-01-01T00:00:00Z"))["model_id"] == third
    assert [m["model_id"] for m in store.list_models()] == [third, second, first]
    assert [m["model_id"] for m in store.list_models("a")] == [third, first]
    meta = store.resolve_model(first)
    assert meta["run"] == "a" and meta["rows"] == 1 and meta["created_at"].endswith("Z")
    assert "model" not in meta


@pytest.mark.parametrize("ref,message", [
    ("0123456789abcdef0123456789abcdef", "no model with id"),
    ("latest:nobody", "no model of run 'nobody'"),
    ("1999-01-01T00:00:00Z", "no model created at or before 1999-01-01"),
])
def test_unknown_model_is_a_clear_error(store, ref, message):
    store.save_model({"run": "a"}, b"x")
    with pytest.raises(ModelNotFound, match=message):
        store.load_model(ref)


def test_productions_and_shard_results_are_upserts(store):
    assert store.get_production("r") is None
    store.put_production("r", {"rows": 10, "partitions": {"0": [0, 10]}})
    store.put_production("r", {"rows": 11, "partitions": {"0": [0, 11]}})
    assert store.get_production("r")["rows"] == 11
    store.put_shard_result("e", 1, {"rows": 5})
    store.put_shard_result("e", 0, {"rows": 3})
    store.put_shard_result("e", 1, {"rows": 7})  # a retried shard replaces its own result
    store.put_shard_result("other", 0, {"rows": 100})
    assert [(r["shard_index"], r["rows"]) for r in store.shard_results("e")] == [(0, 3), (1, 7)]


def test_model_ref_parsing():
    assert ModelRef.parse("latest:run-1").run == "run-1"
    assert ModelRef.parse("0123456789abcdef0123456789abcdef").model_id is not None
    assert ModelRef.parse("2026-11-24T10:00:00+01:00").at_or_before == "2026-11-24T09:00:00.000000Z"
    with pytest.raises(ValueError, match="needs a run name"):
        ModelRef.parse("latest:")


def _write_many(path: str, worker: int) -> None:
    store = EmbeddedStore(path)
    for i in range(20):
        store.put_shard_result("concurrent", worker * 100 + i, {"rows": i})
    store.save_model({"run": f"w{worker}"}, bytes([worker]) * 1000)
    store.close()


def test_embedded_store_is_safe_for_many_processes_at_once(tmp_path):
    """montydb lost a table creation in this situation; SQLite WAL must not."""
    path = str(tmp_path / "fresh" / "store.sqlite3")  # not created yet: all 8 race to create it
    assert run_processes(_write_many, [(path, w) for w in range(8)]) == [0] * 8
    store = EmbeddedStore(path)
    assert len(store.shard_results("concurrent")) == 160
    assert len(store.list_models()) == 8


def test_mongodb_that_is_down_fails_clearly_after_bounded_retries():
    """The message goes into every running CR's conditions while the store is down (issue 22 §4):
    scheme and host only, no user, password or query parameter."""
    store = MongoStore("mongodb://app:secret@127.0.0.1:1/?authSource=admin&tls=true"
                       "&tlsCertificateKeyFilePassword=keypass&authMechanismProperties=AWS_SESSION_TOKEN:tok",
                       attempts=2, backoff_s=0.1, server_selection_timeout_ms=300)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        store.list_models()
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "unreachable" in message and "failed 2 times" in message
    assert "MongoDB at mongodb://127.0.0.1:1 is unreachable" in message
    for secret in ("app", "secret", "keypass", "AWS_SESSION_TOKEN", "tok", "authSource"):
        assert secret not in message


def test_store_uris():
    with pytest.raises(ValueError, match="expected mongodb://"):
        open_store("redis://x")


def test_a_heartbeat_is_one_document_per_source_overwritten(store):
    for rows in (0, 500, 1_000):
        store.put_heartbeat("ev", "shard-1", {"rows_done": rows, "rows_planned": 1_000})
    store.put_heartbeat("ev", "shard-0", {"rows_done": 7})
    store.put_heartbeat("other", "shard-0", {"rows_done": 9})
    beats = store.heartbeats("ev")
    assert [(b["source"], b["rows_done"]) for b in beats] == [("shard-0", 7), ("shard-1", 1_000)]
    assert all(b["run"] == "ev" and b["updated_at"].endswith("Z") for b in beats)
    assert [b["rows_done"] for b in store.heartbeats("other")] == [9]
    assert store.heartbeats("nothing") == []
