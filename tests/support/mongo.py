"""mongomock, standing in for a MongoDB server (none can run here), with pymongo's GridFS on it."""
from __future__ import annotations

import types

import mongomock
import mongomock.gridfs

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
