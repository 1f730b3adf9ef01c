"""The model store: both back ends behind one interface, refs, concurrency, a store that is down."""
from __future__ import annotations

import multiprocessing
import time

import mongomock
import pytest

from susy_pipeline.store import (EmbeddedStore, ModelNotFound, ModelRef, MongoStore, StoreUnavailable,
                                 open_store, redact)


@pytest.fixture(params=["embedded", "mongo"])
def store(request, tmp_path):
    if request.param == "embedded":
        s = open_store(f"sqlite:///{tmp_path}/store.sqlite3")
    else:
        # mongomock stands in for a MongoDB server in one process (none can run here).
        s = MongoStore(client=mongomock.MongoClient(), database="bigdata")
    yield s
    s.close()


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
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_write_many, args=(path, w)) for w in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0] * 8
    store = EmbeddedStore(path)
    assert len(store.shard_results("concurrent")) == 160
    assert len(store.list_models()) == 8


def test_mongodb_that_is_down_fails_clearly_after_bounded_retries():
    store = MongoStore("mongodb://app:secret@127.0.0.1:1/?authSource=admin", attempts=2, backoff_s=0.1,
                       server_selection_timeout_ms=300)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        store.list_models()
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "unreachable" in message and "failed 2 times" in message
    assert "secret" not in message and "app:***@127.0.0.1:1" in message


def test_store_uris():
    assert redact("mongodb://u:p@h:1/db") == "mongodb://u:***@h:1/db"
    with pytest.raises(ValueError, match="expected mongodb://"):
        open_store("redis://x")
