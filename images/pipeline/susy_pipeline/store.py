"""The model store: trained models, producer records and evaluation shard results.

Two back ends behind one small interface:

- `MongoStore` (production): pymongo against MongoDB, database `bigdata`,
  collection `MLModels` as in the seed; writes use majority write concern and
  every call is retried a bounded number of times before `StoreUnavailable`.
- `EmbeddedStore` (one machine, tests): SQLite from the standard library in
  WAL mode, one file that several processes (parallel evaluator shards) read
  and write at once.

This module imports neither TensorFlow nor Kafka: the operator uses it too.
Models are stored whole, as the bytes of a Keras `.keras` archive
(architecture, weights and the normalization statistics).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar
from urllib.parse import urlsplit, urlunsplit

from .schema import DEFAULT_DATABASE, MODELS_COLLECTION
from .errors import BadInput, Unavailable

PRODUCTIONS_COLLECTION = "Productions"
SHARD_RESULTS_COLLECTION = "ShardResults"
DEFAULT_EMBEDDED_URI = "sqlite:///.susy/store.sqlite3"

T = TypeVar("T")


class StoreError(RuntimeError):
    """Base class for store problems."""


class StoreUnavailable(StoreError, Unavailable):
    """The store could not be reached after bounded retries."""


class ModelNotFound(StoreError, BadInput, LookupError):
    """No stored model matches a reference."""


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string that sorts as text."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _as_utc_text(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ModelRef:
    """How a user names a model: by id, by timestamp, or the latest of a run.

    Text forms: `ID`, an ISO-8601 timestamp (the newest model created at or
    before it), or `latest:RUN`.
    """

    model_id: str | None = None
    at_or_before: str | None = None
    run: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelRef":
        text = text.strip()
        if not text:
            raise BadInput("empty model reference")
        if text.startswith("latest:"):
            run = text[len("latest:"):]
            if not run:
                raise BadInput("model reference 'latest:' needs a run name, e.g. latest:my-run")
            return cls(run=run)
        if re.fullmatch(r"[0-9a-f]{32}", text):
            return cls(model_id=text)
        try:
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return cls(model_id=text)
        return cls(at_or_before=_as_utc_text(moment))

    def __str__(self) -> str:
        if self.run is not None:
            return f"latest:{self.run}"
        return self.model_id or self.at_or_before or ""


def _coerce_ref(ref: ModelRef | str) -> ModelRef:
    return ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)


def redact(uri: str) -> str:
    """A URI with its password replaced, fit for logs and error messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class Store:
    """The interface both back ends implement."""

    def save_model(self, record: dict[str, Any], model_bytes: bytes) -> str:
        """Store a model with a new unique id and creation time; return the id."""
        raise NotImplementedError

    def load_model(self, ref: ModelRef | str) -> tuple[dict[str, Any], bytes]:
        """The metadata and `.keras` bytes of the model a reference names."""
        raise NotImplementedError

    def resolve_model(self, ref: ModelRef | str) -> dict[str, Any]:
        """The metadata (no bytes) of the model a reference names."""
        raise NotImplementedError

    def list_models(self, run: str | None = None) -> list[dict[str, Any]]:
        """Model metadata, newest first, optionally of one run."""
        raise NotImplementedError

    def put_production(self, run: str, record: dict[str, Any]) -> None:
        """Record (upsert) what a producer wrote for a run."""
        raise NotImplementedError

    def get_production(self, run: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def put_shard_result(self, evaluation: str, shard_index: int, result: dict[str, Any]) -> None:
        """Upsert one evaluator shard's result: a retried shard replaces its own."""
        raise NotImplementedError

    def shard_results(self, evaluation: str) -> list[dict[str, Any]]:
        """Every stored shard result of an evaluation, by shard index."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _new_model_record(record: dict[str, Any]) -> dict[str, Any]:
        meta = {k: v for k, v in record.items() if k not in ("_id", "model")}
        meta["model_id"] = uuid.uuid4().hex
        meta["created_at"] = utc_now()
        meta.setdefault("run", None)
        meta.setdefault("format", "keras")
        return meta

    @staticmethod
    def _not_found(ref: ModelRef) -> ModelNotFound:
        if ref.run is not None:
            return ModelNotFound(f"no model of run {ref.run!r} in the store")
        if ref.at_or_before is not None:
            return ModelNotFound(f"no model created at or before {ref.at_or_before}")
        return ModelNotFound(f"no model with id {ref.model_id!r}")


# --- Embedded: SQLite in WAL mode -----------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    id         TEXT NOT NULL,
    run        TEXT,
    created_at TEXT NOT NULL,
    body       TEXT NOT NULL,
    blob       BLOB,
    PRIMARY KEY (collection, id)
);
CREATE INDEX IF NOT EXISTS documents_by_run ON documents (collection, run, created_at);
CREATE INDEX IF NOT EXISTS documents_by_time ON documents (collection, created_at);
"""


class EmbeddedStore(Store):
    """One SQLite file shared by several processes (WAL mode, busy timeout)."""

    def __init__(self, path: str | os.PathLike, database: str = DEFAULT_DATABASE):
        self.path = os.fspath(path)
        self.database = database
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        # isolation_level=None: explicit transactions, so a schema create and a
        # write from another process never interleave half-way.
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                                   check_same_thread=False)
        # One connection, used by many threads (the operator's handlers): a lock runs one
        # statement or transaction at a time to its end. Otherwise another thread's statement
        # joins an open transaction, or reads through the read snapshot of another thread's
        # still-running SELECT and misses newer commits (the likely cause of a shard result
        # the operator's load test once found missing).
        self._lock = threading.Lock()
        self._db.execute("PRAGMA busy_timeout = 60000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        with self._transaction():
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)

    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self_inner):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self_inner, exc_type, *_):
                db.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()

    def _collection(self, name: str) -> str:
        return f"{self.database}.{name}"

    def _upsert(self, collection: str, key: str, run: str | None, created_at: str,
                body: dict[str, Any], blob: bytes | None = None) -> None:
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO documents (collection, id, run, created_at, body, blob) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (self._collection(collection), key, run, created_at, json.dumps(body), blob))

    def _select(self, collection: str, where: str = "", args: Iterable[Any] = (),
                order: str = "created_at DESC", limit: int | None = None,
                with_blob: bool = False) -> list[tuple[dict[str, Any], bytes | None]]:
        sql = f"SELECT body, {'blob' if with_blob else 'NULL'} FROM documents WHERE collection = ?"
        if where:
            sql += f" AND {where}"
        sql += f" ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(sql, (self._collection(collection), *args)).fetchall()
        return [(json.loads(body), blob) for body, blob in rows]

    def save_model(self, record, model_bytes):
        meta = self._new_model_record(record)
        self._upsert(MODELS_COLLECTION, meta["model_id"], meta["run"], meta["created_at"], meta,
                     bytes(model_bytes))
        return meta["model_id"]

    def _find_model(self, ref: ModelRef | str, with_blob: bool):
        ref = _coerce_ref(ref)
        if ref.model_id is not None:
            rows = self._select(MODELS_COLLECTION, "id = ?", (ref.model_id,), with_blob=with_blob)
        elif ref.run is not None:
            rows = self._select(MODELS_COLLECTION, "run = ?", (ref.run,), limit=1, with_blob=with_blob)
        else:
            rows = self._select(MODELS_COLLECTION, "created_at <= ?", (ref.at_or_before,), limit=1,
                                with_blob=with_blob)
        if not rows:
            raise self._not_found(ref)
        return rows[0]

    def load_model(self, ref):
        meta, blob = self._find_model(ref, with_blob=True)
        return meta, blob

    def resolve_model(self, ref):
        return self._find_model(ref, with_blob=False)[0]

    def list_models(self, run=None):
        if run is None:
            return [m for m, _ in self._select(MODELS_COLLECTION)]
        return [m for m, _ in self._select(MODELS_COLLECTION, "run = ?", (run,))]

    def put_production(self, run, record):
        body = {**record, "run": run}
        self._upsert(PRODUCTIONS_COLLECTION, run, run, body.get("created_at") or utc_now(), body)

    def get_production(self, run):
        rows = self._select(PRODUCTIONS_COLLECTION, "id = ?", (run,))
        return rows[0][0] if rows else None

    def put_shard_result(self, evaluation, shard_index, result):
        body = {**result, "evaluation": evaluation, "shard_index": int(shard_index)}
        self._upsert(SHARD_RESULTS_COLLECTION, f"{evaluation}/{int(shard_index)}", evaluation,
                     utc_now(), body)

    def shard_results(self, evaluation):
        rows = self._select(SHARD_RESULTS_COLLECTION, "run = ?", (evaluation,), order="id")
        return sorted((body for body, _ in rows), key=lambda r: r["shard_index"])

    def close(self):
        self._db.close()


# --- MongoDB ---------------------------------------------------------------

class MongoStore(Store):
    """pymongo against MongoDB: majority write concern, bounded retries."""

    def __init__(self, uri: str | None = None, database: str = DEFAULT_DATABASE, *,
                 client: Any = None, attempts: int = 3, backoff_s: float = 1.0,
                 server_selection_timeout_ms: int = 5000):
        import pymongo
        from pymongo.write_concern import WriteConcern

        self.uri = uri
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._errors = (pymongo.errors.ConnectionFailure, pymongo.errors.ServerSelectionTimeoutError)
        self._client = client or pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=server_selection_timeout_ms, retryWrites=True,
            appname="susy-pipeline")
        db = self._client[database]
        majority = WriteConcern(w="majority")
        self._models = db.get_collection(MODELS_COLLECTION, write_concern=majority)
        self._productions = db.get_collection(PRODUCTIONS_COLLECTION, write_concern=majority)
        self._shards = db.get_collection(SHARD_RESULTS_COLLECTION, write_concern=majority)
        self._indexed = False

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                if not self._indexed:
                    self._models.create_index([("run", 1), ("created_at", -1)])
                    self._models.create_index([("created_at", -1)])
                    self._shards.create_index([("evaluation", 1), ("shard_index", 1)])
                    self._indexed = True
                return fn()
            except self._errors as err:
                if attempt == self.attempts:
                    where = redact(self.uri) if self.uri else "the configured client"
                    raise StoreUnavailable(
                        f"MongoDB at {where} is unreachable: {what} failed {attempt} times "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    @staticmethod
    def _strip(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc is None:
            return None
        return {k: v for k, v in doc.items() if k not in ("_id", "model")}

    def save_model(self, record, model_bytes):
        from bson.binary import Binary

        meta = self._new_model_record(record)
        doc = {"_id": meta["model_id"], **meta, "model": Binary(bytes(model_bytes))}
        self._call("saving a model", lambda: self._models.insert_one(doc))
        return meta["model_id"]

    def _find_model(self, ref, with_blob: bool):
        ref = _coerce_ref(ref)
        projection = None if with_blob else {"model": False}
        if ref.model_id is not None:
            query, sort = {"_id": ref.model_id}, None
        elif ref.run is not None:
            query, sort = {"run": ref.run}, [("created_at", -1)]
        else:
            query, sort = {"created_at": {"$lte": ref.at_or_before}}, [("created_at", -1)]

        def find():
            cursor = self._models.find(query, projection)
            if sort:
                cursor = cursor.sort(sort)
            return next(iter(cursor.limit(1)), None)

        doc = self._call("finding a model", find)
        if doc is None:
            raise self._not_found(ref)
        return doc

    def load_model(self, ref):
        doc = self._find_model(ref, with_blob=True)
        return self._strip(doc), bytes(doc["model"])

    def resolve_model(self, ref):
        return self._strip(self._find_model(ref, with_blob=False))

    def list_models(self, run=None):
        query = {} if run is None else {"run": run}
        docs = self._call("listing models", lambda: list(
            self._models.find(query, {"model": False}).sort([("created_at", -1)])))
        return [self._strip(d) for d in docs]

    def put_production(self, run, record):
        doc = {**record, "run": run}
        self._call("recording a production", lambda: self._productions.replace_one(
            {"_id": run}, doc, upsert=True))

    def get_production(self, run):
        return self._strip(self._call("reading a production",
                                      lambda: self._productions.find_one({"_id": run})))

    def put_shard_result(self, evaluation, shard_index, result):
        key = f"{evaluation}/{int(shard_index)}"
        doc = {**result, "evaluation": evaluation, "shard_index": int(shard_index)}
        self._call("recording a shard result", lambda: self._shards.replace_one(
            {"_id": key}, doc, upsert=True))

    def shard_results(self, evaluation):
        docs = self._call("reading shard results", lambda: list(
            self._shards.find({"evaluation": evaluation}).sort([("shard_index", 1)])))
        return [self._strip(d) for d in docs]

    def close(self):
        self._client.close()


def open_store(uri: str | None = None, database: str = DEFAULT_DATABASE) -> Store:
    """A store for a URI: `mongodb://...` / `mongodb+srv://...` or `sqlite:///PATH`."""
    uri = uri or os.environ.get("MONGODB_URI") or DEFAULT_EMBEDDED_URI
    if uri.startswith(("mongodb://", "mongodb+srv://")):
        return MongoStore(uri, database)
    if uri.startswith("sqlite://"):
        # As SQLAlchemy spells them: sqlite:///relative/path, sqlite:////absolute/path.
        path = uri[len("sqlite://"):]
        if not path.startswith("/") or len(path) < 2:
            raise BadInput(f"store URI {uri!r}: expected sqlite:///PATH")
        return EmbeddedStore(path[1:], database)
    raise BadInput(f"store URI {redact(uri)!r}: expected mongodb://, mongodb+srv:// or sqlite:///PATH")
