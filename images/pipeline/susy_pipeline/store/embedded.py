"""The embedded back end: SQLite from the standard library in WAL mode, one file that several
processes (parallel evaluator shards) read and write at once."""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from typing import Any, Iterable

from ..schema import DEFAULT_DATABASE, MODELS_COLLECTION
from .base import (ALIAS_HISTORY_COLLECTION, ALIASES_COLLECTION, CHUNK_BYTES, DEFAULT_NAMESPACE,
                   EVALUATIONS_COLLECTION, HEARTBEATS_COLLECTION, PRODUCTIONS_COLLECTION,
                   SHARD_RESULTS_COLLECTION, SHARD_RESULTS_PAGE, ModelBytesDamaged, ModelInUse, ModelRef,
                   Store, _coerce_ref, check_namespace, utc_now)

# --- Embedded: SQLite in WAL mode -----------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    id         TEXT NOT NULL,
    run        TEXT,
    created_at TEXT NOT NULL,
    body       TEXT NOT NULL,
    blob       BLOB,
    namespace  TEXT NOT NULL DEFAULT 'local',
    PRIMARY KEY (collection, id)
);
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
# After _adopt_records_without_namespace: a store made before namespaces has no column to index.
_NAMESPACE_INDEXES = """
DROP INDEX IF EXISTS documents_by_run;
DROP INDEX IF EXISTS documents_by_time;
CREATE INDEX IF NOT EXISTS documents_by_namespace_run ON documents (collection, namespace, run, created_at);
CREATE INDEX IF NOT EXISTS documents_by_namespace_time ON documents (collection, namespace, created_at);
"""


class EmbeddedStore(Store):
    """One SQLite file shared by several processes (WAL mode, busy timeout)."""

    def __init__(self, path: str | os.PathLike, database: str = DEFAULT_DATABASE, *,
                 namespace: str = DEFAULT_NAMESPACE):
        self.path = os.fspath(path)
        self.database = database
        self.namespace = check_namespace(namespace)
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
            self._adopt_records_without_namespace()
            for statement in filter(str.strip, _NAMESPACE_INDEXES.split(";")):
                self._db.execute(statement)

    def _adopt_records_without_namespace(self) -> None:
        """A store file made before namespaces: its records join namespace `local`, keys included.

        In the transaction that opens the store, so of several processes opening an old file at
        once exactly one moves the records and the others find the column there."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(documents)")}
        if "namespace" in columns:
            return
        self._db.execute(f"ALTER TABLE documents ADD COLUMN namespace TEXT NOT NULL "
                         f"DEFAULT '{DEFAULT_NAMESPACE}'")
        # Model ids are unique across namespaces; the other records were keyed by name alone.
        self._db.execute(
            "UPDATE documents SET id = ? || '/' || id WHERE collection NOT LIKE ?",
            (DEFAULT_NAMESPACE, f"%.{MODELS_COLLECTION}"))

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
            self._write(collection, key, run, created_at, body, blob)

    def _write(self, collection: str, key: str, run: str | None, created_at: str,
               body: dict[str, Any], blob: bytes | None = None) -> None:
        """Insert or replace one document of this namespace (inside the caller's transaction)."""
        self._db.execute(
            "INSERT OR REPLACE INTO documents (collection, id, run, created_at, body, blob, namespace) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self._collection(collection), key, run, created_at,
             json.dumps({**body, "namespace": self.namespace}), blob, self.namespace))

    def _select(self, collection: str, where: str = "", args: Iterable[Any] = (),
                order: str = "created_at DESC", limit: int | None = None,
                with_blob: bool = False) -> list[tuple[dict[str, Any], bytes | None]]:
        with self._lock:
            rows = self._db.execute(*self._query(collection, where, args, order, limit, with_blob)
                                    ).fetchall()
        # A record from before namespaces has none in its body: the column says where it is now.
        return [({**json.loads(body), "namespace": self.namespace}, blob) for body, blob in rows]

    def _query(self, collection: str, where: str, args: Iterable[Any], order: str,
               limit: int | None, with_blob: bool) -> tuple[str, tuple[Any, ...]]:
        """The SELECT of this namespace's documents of a collection that match `where`."""
        sql = (f"SELECT body, {'blob' if with_blob else 'NULL'} FROM documents "
               f"WHERE collection = ? AND namespace = ?")
        if where:
            sql += f" AND {where}"
        sql += f" ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return sql, (self._collection(collection), self.namespace, *args)

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
            self._write(MODELS_COLLECTION, model_id, meta["run"], meta["created_at"], meta)
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
        ref = self._alias_target(_coerce_ref(ref))
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
        self._upsert(PRODUCTIONS_COLLECTION, self._key(run), run, body.get("created_at") or utc_now(),
                     body)

    def get_production(self, run):
        rows = self._select(PRODUCTIONS_COLLECTION, "id = ?", (self._key(run),))
        return rows[0][0] if rows else None

    def put_shard_result(self, evaluation, shard_index, result):
        body = {**result, "evaluation": evaluation, "shard_index": int(shard_index)}
        self._upsert(SHARD_RESULTS_COLLECTION, self._key(evaluation, int(shard_index)), evaluation,
                     utc_now(), body)

    def iter_shard_results(self, evaluation, fields=None):
        collection, after = self._collection(SHARD_RESULTS_COLLECTION), ""
        while True:
            # A page per statement, each under the lock: other threads' statements run between
            # pages, and no read snapshot stays open while the caller works.
            with self._lock:
                page = self._db.execute(
                    "SELECT id, body FROM documents WHERE collection = ? AND namespace = ? AND run = ? "
                    "AND id > ? ORDER BY id LIMIT ?",
                    (collection, self.namespace, evaluation, after, SHARD_RESULTS_PAGE)).fetchall()
            if not page:
                return
            after = page[-1][0]
            while page:
                _, body = page.pop(0)  # the page's text goes as its results are decoded
                yield self._fields({**json.loads(body), "namespace": self.namespace}, fields)

    def count_shard_results(self, evaluation):
        with self._lock:
            (count,) = self._db.execute(
                "SELECT count(*) FROM documents WHERE collection = ? AND namespace = ? AND run = ?",
                (self._collection(SHARD_RESULTS_COLLECTION), self.namespace, evaluation)).fetchone()
        return int(count)

    def put_heartbeat(self, run, source, beat):
        body = {**beat, "run": run, "source": source, "updated_at": utc_now()}
        self._upsert(HEARTBEATS_COLLECTION, self._key(run, source), run, body["updated_at"], body)

    def heartbeats(self, run):
        return [body for body, _ in self._select(HEARTBEATS_COLLECTION, "run = ?", (run,), order="id")]

    def claim_model(self, evaluation, model_id, shard_count):
        body = {"evaluation": evaluation, "model_id": model_id, "shard_count": int(shard_count),
                "claimed_at": utc_now()}
        # Column `run` holds the model id here, so the records of one model are found by index.
        self._upsert(EVALUATIONS_COLLECTION, self._key(evaluation, model_id), model_id,
                     body["claimed_at"], body)

    def model_claims(self, model_id):
        return [body for body, _ in self._select(EVALUATIONS_COLLECTION, "run = ?", (model_id,))]

    def _drop_claims(self, evaluation):
        collection = self._collection(EVALUATIONS_COLLECTION)
        with self._lock, self._transaction():
            # Few records (one per evaluation and model): filtered here, so no JSON1 is needed.
            rows = self._db.execute("SELECT id, body FROM documents WHERE collection = ? AND namespace = ?",
                                    (collection, self.namespace)).fetchall()
            mine = [(key, json.loads(body)["model_id"]) for key, body in rows
                    if json.loads(body).get("evaluation") == evaluation]
            self._db.executemany("DELETE FROM documents WHERE collection = ? AND id = ?",
                                 ((collection, key) for key, _ in mine))
        return sorted(model_id for _, model_id in mine)

    def get_alias(self, name):
        rows = self._select(ALIASES_COLLECTION, "id = ?", (self._key(name),))
        return rows[0][0] if rows and rows[0][0]["model_id"] is not None else None

    def list_aliases(self):
        # Column `run` holds the model id (NULL once deleted), as it does for Evaluations.
        return [body for body, _ in self._select(ALIASES_COLLECTION, "run IS NOT NULL", order="id")]

    def alias_history(self, name):
        return [body for body, _ in self._select(ALIAS_HISTORY_COLLECTION, "run = ?", (name,),
                                                 order="id DESC")]

    def _move_alias(self, name, model_id, *, set_by, expected_model_id):
        # One BEGIN IMMEDIATE transaction: the read, the checks and both writes, with every other
        # writer (process or thread) kept out until it commits.
        with self._lock, self._transaction():
            row = self._db.execute(*self._query(ALIASES_COLLECTION, "id = ?", (self._key(name),),
                                                "id", None, False)).fetchone()
            current = json.loads(row[0]) if row else None
            if expected_model_id is not None and (current or {}).get("model_id") != expected_model_id:
                raise self._alias_conflict(name, current if (current or {}).get("model_id") else None,
                                           expected_model_id)
            if model_id is not None and self._db.execute(*self._query(
                    MODELS_COLLECTION, "id = ?", (model_id,), "id", None, False)).fetchone() is None:
                raise self._alias_missing_model(name, model_id)
            moved = self._move_record(name, model_id, current, set_by, utc_now())
            state = {k: v for k, v in moved.items() if k != "previous_model_id"}
            self._write(ALIASES_COLLECTION, self._key(name), model_id, moved["set_at"], state)
            self._write(ALIAS_HISTORY_COLLECTION, self._key(name, f"{moved['version']:012d}"), name,
                        moved["set_at"], moved)
        return {**moved, "namespace": self.namespace}

    def _remove_model(self, model_id):
        bucket = self._collection(MODELS_COLLECTION)
        with self._lock, self._transaction():
            # In the deleting transaction: an alias set since delete_model looked is not left
            # pointing at nothing.
            aliased = self._db.execute(*self._query(ALIASES_COLLECTION, "run = ?", (model_id,), "id",
                                                    None, False)).fetchall()
            if aliased:
                names = [json.loads(body)["name"] for body, _ in aliased]
                raise ModelInUse(f"model {model_id} became the model of alias(es) "
                                 f"{', '.join(map(repr, names))} while it was being deleted", [], names)
            self._db.execute("DELETE FROM chunks WHERE bucket = ? AND files_id = ?", (bucket, model_id))
            self._db.execute("DELETE FROM files WHERE bucket = ? AND id = ?", (bucket, model_id))
            self._db.execute("DELETE FROM documents WHERE collection = ? AND id = ? AND namespace = ?",
                             (bucket, model_id, self.namespace))
            self._db.execute("DELETE FROM documents WHERE collection = ? AND run = ? AND namespace = ?",
                             (self._collection(EVALUATIONS_COLLECTION), model_id, self.namespace))

    def close(self):
        self._db.close()
