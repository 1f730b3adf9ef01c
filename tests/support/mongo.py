"""mongomock, standing in for a MongoDB server (none can run here), with pymongo's GridFS on it; `stores`, both
back ends shared by several stores; `run_processes`, spawned processes started at once."""
from __future__ import annotations

import types

import mongomock
import mongomock.gridfs
import pytest

MONGODB_DOCUMENT_CAP = 16 * 1024 * 1024  # a MongoDB server refuses a larger BSON document; mongomock does not


def mongomock_client() -> mongomock.MongoClient:
    """A mongomock client that pymongo's own `gridfs` accepts (mongomock 4.3, pymongo 4.20.1).

    `enable_gridfs_integration` widens gridfs' isinstance checks to mongomock's Database and
    Collection. GridFSBucket also reads `db.client.options.timeout`, which mongomock's client
    lacks (its attribute lookup answers with a Database, and the deadline arithmetic fails), so
    the client gets that one field.
    """
    mongomock.gridfs.enable_gridfs_integration()
    client = mongomock.MongoClient()
    client.options = types.SimpleNamespace(timeout=None)
    return client



@pytest.fixture(params=["embedded", "mongo"])
def stores(request, tmp_path):
    """open(namespace="local") -> a store: stores on one shared back end, as processes of several
    namespaces see one server (`mongo`: mongomock) or one file (`embedded`)."""
    from susy_pipeline.store import MongoStore, open_store

    client = mongomock_client() if request.param == "mongo" else None
    opened = []

    def open_(namespace: str = "local"):
        opened.append(MongoStore(client=client, database="bigdata", namespace=namespace) if client is not None
                      else open_store(f"sqlite:///{tmp_path}/store.sqlite3", namespace=namespace))
        return opened[-1]
    yield open_
    for s in opened:
        s.close()

def run_processes(target, args: list[tuple], timeout_s: float = 60) -> list[int | None]:
    """Start one spawned process per argument tuple, all at once; their exit codes once joined."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    processes = [ctx.Process(target=target, args=a) for a in args]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout_s)
    return [p.exitcode for p in processes]
