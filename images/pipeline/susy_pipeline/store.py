"""The model store: trained models, producer records and evaluation shard results.

Two back ends behind one small interface:

- `MongoStore` (production): pymongo against MongoDB, database `bigdata`,
  collection `MLModels` as in the seed; writes use majority write concern and
  every call is retried a bounded number of times before `StoreUnavailable`.
- `EmbeddedStore` (one machine, tests): SQLite from the standard library in
  WAL mode, one file that several processes (parallel evaluator shards) read
  and write at once.

This module imports neither TensorFlow nor Kafka: the operator uses it too.
A model is a metadata document plus the bytes of a Keras `.keras` archive
(architecture, weights and the normalization statistics). The bytes are kept
apart from the document, in chunks of `CHUNK_BYTES`: in MongoDB through GridFS
(bucket `MLModels`: collections `MLModels.files` and `MLModels.chunks`), since
one document is capped at 16 MiB and a [1024, 1024, 1024] model is 25 MB; in
the embedded store in the same shape (tables `files` and `chunks`). Models
saved before GridFS, with the bytes inside the document, still load.

`models delete` must not remove a model that an evaluation is still scoring:
each evaluator shard claims the model (`claim_model`) before loading it, and
an evaluation is unfinished while fewer of its shards than it has have stored
a result for that model. `delete_model` refuses while any is (`ModelInUse`).
An evaluation that will never finish is let go with `release_evaluation`.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

from .schema import DEFAULT_DATABASE, MODELS_COLLECTION
from .errors import BadInput, Unavailable
from .redaction import display_uri, echo, scrub

PRODUCTIONS_COLLECTION = "Productions"
SHARD_RESULTS_COLLECTION = "ShardResults"
# Which evaluation scores which model (one record per evaluation and model): see claim_model.
EVALUATIONS_COLLECTION = "Evaluations"
# What a running shard or trainer last reported (one document per source, overwritten): see put_heartbeat.
HEARTBEATS_COLLECTION = "Heartbeats"
# GridFS's default chunk size (255 KiB): below 256 KiB, so a chunk with its document fits in
# one 256 KiB power-of-two allocation in MongoDB's storage.
CHUNK_BYTES = 255 * 1024
DEFAULT_EMBEDDED_URI = "sqlite:///.susy/store.sqlite3"

T = TypeVar("T")


class StoreError(RuntimeError):
    """Base class for store problems."""


class StoreUnavailable(StoreError, Unavailable):
    """The store could not be reached after bounded retries."""


class ModelNotFound(StoreError, BadInput, LookupError):
    """No stored model matches a reference."""


class ModelInUse(StoreError, BadInput):
    """A model that an unfinished evaluation names cannot be deleted."""

    def __init__(self, message: str, evaluations: list[dict[str, Any]]):
        super().__init__(message)
        self.evaluations = evaluations


def _names_model(result: dict[str, Any], model_id: str) -> bool:
    """Whether a shard result scored `model_id`: its model, or one of its `models` (several
    models in one pass)."""
    return result.get("model_id") == model_id or any(
        isinstance(m, dict) and m.get("model_id") == model_id for m in result.get("models") or ())


class ModelBytesDamaged(StoreError):
    """A model's stored bytes are missing or do not match its record (exit 1: not the user's input)."""


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

    def claim_model(self, evaluation: str, model_id: str, shard_count: int) -> None:
        """Record (upsert) that `evaluation`, of `shard_count` shards, scores model `model_id`.

        Each evaluator shard calls it before it loads the model; `delete_model` refuses while
        the evaluation is unfinished (fewer than `shard_count` shard results for this model).
        """
        raise NotImplementedError

    def model_claims(self, model_id: str) -> list[dict[str, Any]]:
        """Every evaluation record that names a model: {evaluation, model_id, shard_count, claimed_at}."""
        raise NotImplementedError

    def _remove_model(self, model_id: str) -> None:
        """Delete a model's bytes, its document and its evaluation records."""
        raise NotImplementedError

    def _drop_claims(self, evaluation: str) -> list[str]:
        """Delete an evaluation's records in `Evaluations`; return the model ids they named."""
        raise NotImplementedError

    def release_evaluation(self, evaluation: str) -> list[str]:
        """Forget that `evaluation` scores a model, so the model can be deleted without --force.

        For an evaluation that will never finish (its EvaluationRun deleted, or failed for
        good): the operator calls it then. Its shard results stay. Returns the model ids it had
        claimed (none if it had claimed nothing: safe to call again).
        """
        return self._drop_claims(evaluation)

    def model_evaluations(self, model_id: str) -> list[dict[str, Any]]:
        """The evaluations that claimed a model, by name: each claim plus `shards_done`,
        `missing` (shard indexes without a result for this model) and `finished`."""
        evaluations = []
        for claim in self.model_claims(model_id):
            done = {r["shard_index"] for r in self.shard_results(claim["evaluation"])
                    if _names_model(r, model_id)}
            missing = [i for i in range(int(claim["shard_count"])) if i not in done]
            evaluations.append({**claim, "shards_done": len(done), "missing": missing,
                                "finished": not missing})
        return sorted(evaluations, key=lambda c: c["evaluation"])

    def unfinished_evaluations(self, model_id: str) -> list[dict[str, Any]]:
        """The evaluations that name a model and still miss shard results for it."""
        return [e for e in self.model_evaluations(model_id) if not e["finished"]]

    def delete_model(self, model_id: str, *, force: bool = False) -> dict[str, Any]:
        """Delete a model by id (its bytes and its record); return what was deleted.

        Raises `ModelNotFound` for an unknown id and `ModelInUse` while an unfinished
        evaluation names it, unless `force` (for an evaluation that will never finish: its
        EvaluationRun deleted or failed for good).
        """
        meta = self.resolve_model(ModelRef(model_id=model_id))
        busy = self.unfinished_evaluations(model_id)
        if busy and not force:
            names = ", ".join(f"{c['evaluation']!r} ({c['shards_done']} of {c['shard_count']} shards "
                              f"done, last claimed {c['claimed_at']})" for c in busy)
            raise ModelInUse(
                f"model {model_id} is in use by unfinished evaluation(s) {names}: wait until every "
                f"shard has stored its result, or pass --force if the evaluation will never finish "
                f"(its EvaluationRun deleted or failed)", busy)
        self._remove_model(model_id)
        return {"model_id": model_id, "run": meta.get("run"), "created_at": meta.get("created_at"),
                "size_bytes": meta.get("size_bytes"), "deleted": True,
                "unfinished_evaluations": [c["evaluation"] for c in busy]}

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

    def put_heartbeat(self, run: str, source: str, beat: dict[str, Any]) -> None:
        """Overwrite the one heartbeat document of `source` (`shard-3`, `trainer`) in `run`.

        A running evaluator shard or trainer calls it every few seconds (or per epoch); the
        operator folds a run's heartbeats into its status. One document per source, replaced,
        never appended: a run's heartbeats are as many documents as it has shards.
        """
        raise NotImplementedError

    def heartbeats(self, run: str) -> list[dict[str, Any]]:
        """The last heartbeat of every source of `run`, by source."""
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
    def _describe_bytes(meta: dict[str, Any], data: bytes, storage: str) -> None:
        """Record how the bytes are stored and what they are, so a load can check them."""
        meta["storage"] = storage
        meta["size_bytes"] = len(data)
        meta["sha256"] = hashlib.sha256(data).hexdigest()
        meta["chunk_bytes"] = CHUNK_BYTES

    @staticmethod
    def _checked(meta: dict[str, Any], data: bytes) -> bytes:
        size, digest = meta.get("size_bytes"), meta.get("sha256")
        if size is not None and len(data) != size:
            raise ModelBytesDamaged(f"model {meta.get('model_id')}: {len(data)} bytes stored, "
                                    f"its record says {size}")
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise ModelBytesDamaged(f"model {meta.get('model_id')}: the stored bytes do not match "
                                    f"their SHA-256 {digest}")
        return data

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
-- Model bytes in GridFS's shape: one row per file, the bytes in CHUNK_BYTES chunks numbered from 0.
-- `bucket` is DATABASE.MLModels, as GridFS's bucket MLModels is in database DATABASE.
CREATE TABLE IF NOT EXISTS files (
    bucket      TEXT NOT NULL,
    id          TEXT NOT NULL,
    filename    TEXT NOT NULL,
    length      INTEGER NOT NULL,
    chunk_size  INTEGER NOT NULL,
    upload_date TEXT NOT NULL,
    PRIMARY KEY (bucket, id)
);
CREATE TABLE IF NOT EXISTS chunks (
    bucket   TEXT NOT NULL,
    files_id TEXT NOT NULL,
    n        INTEGER NOT NULL,
    data     BLOB NOT NULL,
    PRIMARY KEY (bucket, files_id, n)
);
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
        data = bytes(model_bytes)
        meta = self._new_model_record(record)
        self._describe_bytes(meta, data, "chunks")
        model_id, bucket = meta["model_id"], self._collection(MODELS_COLLECTION)
        # One transaction: the chunks, the file and the document appear together or not at all.
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT INTO chunks (bucket, files_id, n, data) VALUES (?, ?, ?, ?)",
                ((bucket, model_id, n, data[start:start + CHUNK_BYTES])
                 for n, start in enumerate(range(0, len(data), CHUNK_BYTES))))
            self._db.execute(
                "INSERT INTO files (bucket, id, filename, length, chunk_size, upload_date) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (bucket, model_id, f"{model_id}.keras", len(data), CHUNK_BYTES, meta["created_at"]))
            self._db.execute(
                "INSERT INTO documents (collection, id, run, created_at, body, blob) "
                "VALUES (?, ?, ?, ?, ?, NULL)",
                (bucket, model_id, meta["run"], meta["created_at"], json.dumps(meta)))
        return model_id

    def _read_file(self, meta: dict[str, Any]) -> bytes:
        model_id, bucket = meta["model_id"], self._collection(MODELS_COLLECTION)
        with self._lock:
            # One read transaction, so a delete cannot land between the two SELECTs.
            self._db.execute("BEGIN")
            try:
                file = self._db.execute("SELECT length, chunk_size FROM files WHERE bucket = ? AND id = ?",
                                        (bucket, model_id)).fetchone()
                chunks = self._db.execute(
                    "SELECT n, data FROM chunks WHERE bucket = ? AND files_id = ? ORDER BY n",
                    (bucket, model_id)).fetchall()
            finally:
                self._db.execute("COMMIT")
        if file is None:
            raise ModelBytesDamaged(f"model {model_id}: its bytes are missing (no row in table files)")
        length, chunk_size = file
        expected = -(-length // chunk_size)
        if [n for n, _ in chunks] != list(range(expected)):
            raise ModelBytesDamaged(f"model {model_id}: {len(chunks)} of its {expected} chunks are stored")
        return self._checked(meta, b"".join(data for _, data in chunks))

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
        if blob is not None:  # saved before chunked storage: the bytes are in the document
            return meta, bytes(blob)
        return meta, self._read_file(meta)

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

    def put_heartbeat(self, run, source, beat):
        body = {**beat, "run": run, "source": source, "updated_at": utc_now()}
        self._upsert(HEARTBEATS_COLLECTION, f"{run}/{source}", run, body["updated_at"], body)

    def heartbeats(self, run):
        return [body for body, _ in self._select(HEARTBEATS_COLLECTION, "run = ?", (run,), order="id")]

    def claim_model(self, evaluation, model_id, shard_count):
        body = {"evaluation": evaluation, "model_id": model_id, "shard_count": int(shard_count),
                "claimed_at": utc_now()}
        # Column `run` holds the model id here, so the records of one model are found by index.
        self._upsert(EVALUATIONS_COLLECTION, f"{evaluation}/{model_id}", model_id, body["claimed_at"],
                     body)

    def model_claims(self, model_id):
        return [body for body, _ in self._select(EVALUATIONS_COLLECTION, "run = ?", (model_id,))]

    def _drop_claims(self, evaluation):
        collection = self._collection(EVALUATIONS_COLLECTION)
        with self._lock, self._transaction():
            # Few records (one per evaluation and model): filtered here, so no JSON1 is needed.
            rows = self._db.execute("SELECT id, body FROM documents WHERE collection = ?",
                                    (collection,)).fetchall()
            mine = [(key, json.loads(body)["model_id"]) for key, body in rows
                    if json.loads(body).get("evaluation") == evaluation]
            self._db.executemany("DELETE FROM documents WHERE collection = ? AND id = ?",
                                 ((collection, key) for key, _ in mine))
        return sorted(model_id for _, model_id in mine)

    def _remove_model(self, model_id):
        bucket = self._collection(MODELS_COLLECTION)
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM chunks WHERE bucket = ? AND files_id = ?", (bucket, model_id))
            self._db.execute("DELETE FROM files WHERE bucket = ? AND id = ?", (bucket, model_id))
            self._db.execute("DELETE FROM documents WHERE collection = ? AND id = ?", (bucket, model_id))
            self._db.execute("DELETE FROM documents WHERE collection = ? AND run = ?",
                             (self._collection(EVALUATIONS_COLLECTION), model_id))

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
        self._evaluations = db.get_collection(EVALUATIONS_COLLECTION, write_concern=majority)
        # A lost heartbeat is replaced by the next one a few seconds later: w=1 is enough.
        self._heartbeats = db.get_collection(HEARTBEATS_COLLECTION)
        # GridFS bucket MLModels: MLModels.files (one document per model, _id = the model id) and
        # MLModels.chunks (CHUNK_BYTES each); made on first use, so constructing needs no server.
        self._db, self._majority = db, majority
        self._files = db.get_collection(f"{MODELS_COLLECTION}.files", write_concern=majority)
        self._chunks = db.get_collection(f"{MODELS_COLLECTION}.chunks", write_concern=majority)
        self._gridfs = None
        self._indexed = False

    @property
    def _bucket(self):
        if self._gridfs is None:
            import gridfs

            self._gridfs = gridfs.GridFSBucket(self._db, bucket_name=MODELS_COLLECTION,
                                               chunk_size_bytes=CHUNK_BYTES, write_concern=self._majority)
        return self._gridfs

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                if not self._indexed:
                    self._models.create_index([("run", 1), ("created_at", -1)])
                    self._models.create_index([("created_at", -1)])
                    self._shards.create_index([("evaluation", 1), ("shard_index", 1)])
                    self._evaluations.create_index([("model_id", 1)])
                    self._heartbeats.create_index([("run", 1), ("source", 1)])
                    self._indexed = True
                return fn()
            except self._errors as err:
                if attempt == self.attempts:
                    where = display_uri(self.uri) if self.uri else "the configured client"
                    raise StoreUnavailable(
                        f"MongoDB at {where} is unreachable: {what} failed {attempt} times "
                        f"({type(err).__name__}: {scrub(str(err).splitlines()[0], limit=200)})") from err
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    @staticmethod
    def _strip(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc is None:
            return None
        return {k: v for k, v in doc.items() if k not in ("_id", "model")}

    def save_model(self, record, model_bytes):
        data = bytes(model_bytes)
        meta = self._new_model_record(record)
        self._describe_bytes(meta, data, "gridfs")
        model_id = meta["model_id"]

        def upload():
            # Idempotent: a retry first removes what a failed attempt may have left.
            self._chunks.delete_many({"files_id": model_id})
            self._files.delete_one({"_id": model_id})
            self._bucket.upload_from_stream_with_id(
                model_id, f"{model_id}.keras", data, metadata={"model_id": model_id, "run": meta["run"]})

        # The bytes first, then the document: a listed model always has its bytes.
        self._call("saving a model's bytes", upload)
        self._call("saving a model", lambda: self._models.replace_one(
            {"_id": model_id}, {"_id": model_id, **meta}, upsert=True))
        return model_id

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
        meta = self._strip(doc)
        if "model" in doc:  # saved before GridFS: the bytes are in the document
            return meta, bytes(doc["model"])
        import gridfs

        def download():
            try:
                return self._bucket.open_download_stream(meta["model_id"]).read()
            except gridfs.errors.NoFile:
                return None
            except gridfs.errors.CorruptGridFile as err:
                raise ModelBytesDamaged(f"model {meta['model_id']}: GridFS file damaged ({err})") from err

        data = self._call("reading a model's bytes", download)
        if data is None:
            raise ModelBytesDamaged(f"model {meta['model_id']}: its bytes are missing "
                                    f"(no file {meta['model_id']} in {MODELS_COLLECTION}.files)")
        return meta, self._checked(meta, data)

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

    def put_heartbeat(self, run, source, beat):
        doc = {**beat, "run": run, "source": source, "updated_at": utc_now()}
        self._call("recording a heartbeat", lambda: self._heartbeats.replace_one(
            {"_id": f"{run}/{source}"}, doc, upsert=True))

    def heartbeats(self, run):
        docs = self._call("reading heartbeats", lambda: list(
            self._heartbeats.find({"run": run}).sort([("source", 1)])))
        return [self._strip(d) for d in docs]

    def claim_model(self, evaluation, model_id, shard_count):
        doc = {"evaluation": evaluation, "model_id": model_id, "shard_count": int(shard_count),
               "claimed_at": utc_now()}
        self._call("recording an evaluation", lambda: self._evaluations.replace_one(
            {"_id": f"{evaluation}/{model_id}"}, doc, upsert=True))

    def model_claims(self, model_id):
        docs = self._call("reading evaluations", lambda: list(
            self._evaluations.find({"model_id": model_id}).sort([("evaluation", 1)])))
        return [self._strip(d) for d in docs]

    def _drop_claims(self, evaluation):
        def drop():
            model_ids = sorted(d["model_id"] for d in self._evaluations.find({"evaluation": evaluation}))
            self._evaluations.delete_many({"evaluation": evaluation})
            return model_ids

        return self._call("releasing an evaluation's models", drop)

    def _remove_model(self, model_id):
        # The bytes first, the document last: a delete that fails half way can be run again.
        self._call("deleting a model's bytes", lambda: (
            self._chunks.delete_many({"files_id": model_id}), self._files.delete_one({"_id": model_id})))
        self._call("deleting a model", lambda: self._models.delete_one({"_id": model_id}))
        self._call("deleting a model's evaluations",
                   lambda: self._evaluations.delete_many({"model_id": model_id}))

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
            raise BadInput(f"store URI {echo(uri)}: expected sqlite:///PATH")
        return EmbeddedStore(path[1:], database)
    raise BadInput(f"store URI {display_uri(uri)!r}: expected mongodb://, mongodb+srv:// or sqlite:///PATH")
