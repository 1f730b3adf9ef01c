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

Aliases: a named, movable pointer to a model of the namespace (MLflow's registered-model aliases:
mlflow/store/model_registry/dbmodels/models.py, SqlRegisteredModelAlias, one row per (name,
alias)), referenced as `alias:NAME`. `set_alias` moves one atomically, refusing a model that is
not in the namespace; with `expected_model_id` it is a compare-and-set (MongoDB: one
find_one_and_update whose filter holds the expected model; the embedded store: one BEGIN
IMMEDIATE transaction), so of two writers that both read the same champion only one moves it.
Each move is recorded (who, when, from which model to which) as one document in
`AliasHistory`, which is never rewritten. A model an alias points to is not deleted unless
forced; forced, its aliases go with it (as MLflow's delete_model_version deletes the aliases of
the version, mlflow/store/model_registry/sqlalchemy_store.py), each removal recorded.

Namespaces: a store is opened for one namespace (`open_store(..., namespace=)`; the operator
passes the custom resource's Kubernetes namespace, the commands `--namespace` / SUSY_NAMESPACE,
default `local`). Every record it writes carries `namespace`, and every read (a model by id,
timestamp, `latest:RUN`, `alias:NAME`, a listing, productions, shard results, evaluation claims) sees only
that namespace, so one team's reference never resolves to another's model. Records keyed by a
name (productions, shard results, claims) are keyed `NAMESPACE/NAME`; a namespace is a
Kubernetes namespace name, which holds no "/", so two namespaces' keys never collide. Records
written before namespaces existed belong to `local`: each back end moves them there the first
time it is opened (`_adopt_records_without_namespace`), once, without losing any.
"""
from __future__ import annotations

import copy
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
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from .schema import DEFAULT_DATABASE, MODELS_COLLECTION
from .errors import BadInput, Unavailable
from .redaction import display_uri, echo, scrub

PRODUCTIONS_COLLECTION = "Productions"
SHARD_RESULTS_COLLECTION = "ShardResults"
# Named pointers to models (one document per namespace and name) and every move of one: set_alias.
ALIASES_COLLECTION = "Aliases"
ALIAS_HISTORY_COLLECTION = "AliasHistory"
# As a Kubernetes label value: letters, digits, '-', '_' and '.', at most 63, alphanumeric at both
# ends; so an alias fits the CRDs' alias fields and a label, and "alias:NAME" parses one way.
ALIAS_PATTERN = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
# Which evaluation scores which model (one record per evaluation and model): see claim_model.
EVALUATIONS_COLLECTION = "Evaluations"
# What a running shard or trainer last reported (one document per source, overwritten): see put_heartbeat.
HEARTBEATS_COLLECTION = "Heartbeats"
# Shard results read per store call by iter_shard_results: one result of 8 models and their
# ensemble is about 2.4 MiB decoded, so a page holds about 20 MiB however many shards there are.
SHARD_RESULTS_PAGE = 8
# GridFS's default chunk size (255 KiB): below 256 KiB, so a chunk with its document fits in
# one 256 KiB power-of-two allocation in MongoDB's storage.
CHUNK_BYTES = 255 * 1024
DEFAULT_EMBEDDED_URI = "sqlite:///.susy/store.sqlite3"
# Command-line runs (and records from before namespaces) live here; the operator uses the
# custom resource's namespace.
DEFAULT_NAMESPACE = "local"
# A Kubernetes namespace name (an RFC 1123 label): no "/", so "NAMESPACE/NAME" keys are unambiguous.
NAMESPACE_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

T = TypeVar("T")


class StoreError(RuntimeError):
    """Base class for store problems."""


class StoreUnavailable(StoreError, Unavailable):
    """The store could not be reached after bounded retries."""


class ModelNotFound(StoreError, BadInput, LookupError):
    """No stored model matches a reference."""


class ModelInUse(StoreError, BadInput):
    """A model that an unfinished evaluation names, or an alias points to, cannot be deleted."""

    def __init__(self, message: str, evaluations: list[dict[str, Any]], aliases: list[str] = ()):
        super().__init__(message)
        self.evaluations = evaluations
        self.aliases = list(aliases)


class AliasConflict(StoreError, BadInput):
    """A compare-and-set of an alias lost: it no longer points where the caller expected."""


def check_alias(name: str) -> str:
    if not isinstance(name, str) or not ALIAS_PATTERN.fullmatch(name):
        raise BadInput(f"alias {name!r}: expected letters, digits, '-', '_' or '.', at most 63 "
                       "characters, a letter or digit at both ends (e.g. champion)")
    return name


def check_namespace(namespace: str) -> str:
    """The namespace, if it is a Kubernetes namespace name; else `BadInput`."""
    if not isinstance(namespace, str) or not NAMESPACE_PATTERN.fullmatch(namespace):
        raise BadInput(f"namespace {echo(namespace)}: expected a Kubernetes namespace name (lower-case "
                       f"letters, digits and '-', at most 63 characters), e.g. {DEFAULT_NAMESPACE!r}")
    return namespace


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
    """How a user names a model: by id, by timestamp, the latest of a run, or an alias.

    Text forms: `ID`, an ISO-8601 timestamp (the newest model created at or
    before it), `latest:RUN`, or `alias:NAME` (the model the alias points to now).
    """

    model_id: str | None = None
    at_or_before: str | None = None
    run: str | None = None
    alias: str | None = None

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
        if text.startswith("alias:"):
            return cls(alias=check_alias(text[len("alias:"):]))
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
        if self.alias is not None:
            return f"alias:{self.alias}"
        return self.model_id or self.at_or_before or ""


def _coerce_ref(ref: ModelRef | str) -> ModelRef:
    return ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)


class Store:
    """The interface both back ends implement; an instance sees one namespace."""

    namespace: str = DEFAULT_NAMESPACE

    def in_namespace(self, namespace: str) -> "Store":
        """This store's connection, seeing `namespace` instead: the operator keeps one connection
        and reads each custom resource's records through its namespace. Closing a view closes
        the connection they share."""
        view = copy.copy(self)
        view.namespace = check_namespace(namespace)
        return view

    def _key(self, *parts: Any) -> str:
        """The key of a record named by `parts` in this namespace: NAMESPACE/PART/..."""
        return "/".join((self.namespace, *map(str, parts)))

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
            done = {r["shard_index"] for r in self.iter_shard_results(claim["evaluation"], ("model_id", "models"))
                    if _names_model(r, model_id)}
            missing = [i for i in range(int(claim["shard_count"])) if i not in done]
            evaluations.append({**claim, "shards_done": len(done), "missing": missing,
                                "finished": not missing})
        return sorted(evaluations, key=lambda c: c["evaluation"])

    def unfinished_evaluations(self, model_id: str) -> list[dict[str, Any]]:
        """The evaluations that name a model and still miss shard results for it."""
        return [e for e in self.model_evaluations(model_id) if not e["finished"]]

    def delete_model(self, model_id: str, *, force: bool = False,
                     deleted_by: str = "unknown") -> dict[str, Any]:
        """Delete a model by id (its bytes and its record); return what was deleted.

        Raises `ModelNotFound` for an unknown id, and `ModelInUse` while an unfinished
        evaluation names it or an alias points to it, unless `force` (for an evaluation that
        will never finish: its EvaluationRun deleted or failed for good). Forced, the aliases
        that point to it are deleted with it, each removal in the alias's history (`deleted_by`).
        """
        meta = self.resolve_model(ModelRef(model_id=model_id))
        busy = self.unfinished_evaluations(model_id)
        aliases = sorted(a["name"] for a in self.list_aliases() if a["model_id"] == model_id)
        if busy and not force:
            names = ", ".join(f"{c['evaluation']!r} ({c['shards_done']} of {c['shard_count']} shards "
                              f"done, last claimed {c['claimed_at']})" for c in busy)
            raise ModelInUse(
                f"model {model_id} is in use by unfinished evaluation(s) {names}: wait until every "
                f"shard has stored its result, or pass --force if the evaluation will never finish "
                f"(its EvaluationRun deleted or failed)", busy, aliases)
        if aliases and not force:
            raise ModelInUse(
                f"model {model_id} is the model of alias(es) {', '.join(map(repr, aliases))}: move "
                f"them first (models alias set NAME REF), or pass --force to delete the aliases with "
                f"the model (their history stays)", [], aliases)
        for name in aliases:  # only if it still points here: a move meanwhile keeps the alias
            try:
                self._move_alias(name, None, set_by=deleted_by, expected_model_id=model_id)
            except AliasConflict:
                pass
        self._remove_model(model_id)
        return {"model_id": model_id, "run": meta.get("run"), "created_at": meta.get("created_at"),
                "size_bytes": meta.get("size_bytes"), "deleted": True,
                "unfinished_evaluations": [c["evaluation"] for c in busy], "aliases_deleted": aliases}

    # --- aliases ---

    def set_alias(self, name: str, model_id: str, *, set_by: str,
                  expected_model_id: str | None = None) -> dict[str, Any]:
        """Point alias `name` at model `model_id` of this namespace, atomically; return the alias.

        With `expected_model_id`, only if the alias points there now (compare-and-set; else
        `AliasConflict`, naming where it points). A model not in the namespace is refused
        (`ModelNotFound`). Every move adds one document to the alias's history."""
        check_alias(name)
        if not set_by:
            raise BadInput(f"alias {name!r}: set_by (who moves it) must not be empty")
        return self._move_alias(name, model_id, set_by=set_by, expected_model_id=expected_model_id)

    def get_alias(self, name: str) -> dict[str, Any] | None:
        """{namespace, name, model_id, set_by, set_at, version}, or None if there is no such alias."""
        raise NotImplementedError

    def list_aliases(self) -> list[dict[str, Any]]:
        """The namespace's aliases, by name."""
        raise NotImplementedError

    def alias_history(self, name: str) -> list[dict[str, Any]]:
        """Every move of alias `name`, newest first: {version, model_id (None: deleted),
        previous_model_id, set_by, set_at}."""
        raise NotImplementedError

    def _move_alias(self, name: str, model_id: str | None, *, set_by: str,
                    expected_model_id: str | None) -> dict[str, Any]:
        """The back end's atomic step: check, move (None: delete), record the move."""
        raise NotImplementedError

    def _alias_target(self, ref: ModelRef) -> ModelRef:
        """An `alias:NAME` reference as the id it points to now; any other reference as it is."""
        if ref.alias is None:
            return ref
        alias = self.get_alias(ref.alias)
        if alias is None:
            raise ModelNotFound(f"no alias {ref.alias!r} in namespace {self.namespace!r}")
        return ModelRef(model_id=alias["model_id"])

    @staticmethod
    def _alias_conflict(name: str, current: dict[str, Any] | None, expected: str) -> AliasConflict:
        where = f"model {current['model_id']}" if current else "no model (it does not exist)"
        return AliasConflict(f"alias {name!r} points to {where}, not the expected {expected}: "
                             "someone moved it meanwhile; read it again and decide")

    @staticmethod
    def _move_record(name: str, model_id: str | None, previous: dict[str, Any] | None,
                     set_by: str, set_at: str) -> dict[str, Any]:
        """The alias's new state, which is also its history entry. A deleted alias stays as a
        record without a model, so its versions go on counting if it is set again."""
        return {"name": name, "model_id": model_id,
                "previous_model_id": (previous or {}).get("model_id"),
                "set_by": set_by, "set_at": set_at, "version": ((previous or {}).get("version") or 0) + 1}

    def _alias_missing_model(self, name: str, model_id: str) -> ModelNotFound:
        return ModelNotFound(f"alias {name!r}: no model with id {model_id!r} in namespace {self.namespace!r}")

    def put_production(self, run: str, record: dict[str, Any]) -> None:
        """Record (upsert) what a producer wrote for a run."""
        raise NotImplementedError

    def get_production(self, run: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def put_shard_result(self, evaluation: str, shard_index: int, result: dict[str, Any]) -> None:
        """Upsert one evaluator shard's result: a retried shard replaces its own."""
        raise NotImplementedError

    def shard_results(self, evaluation: str) -> list[dict[str, Any]]:
        """Every stored shard result of an evaluation, by shard index, all in memory (for a few;
        `iter_shard_results` for many)."""
        return sorted(self.iter_shard_results(evaluation), key=lambda r: r["shard_index"])

    def iter_shard_results(self, evaluation: str,
                           fields: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every stored shard result of an evaluation, one at a time, in the back end's order:
        read SHARD_RESULTS_PAGE per call (each with the store's bounded retries), so memory holds
        one page whatever the shard count. With `fields`, only those top-level fields (and
        `shard_index`)."""
        raise NotImplementedError

    def count_shard_results(self, evaluation: str) -> int:
        """How many shard results an evaluation has stored (reads none of them)."""
        raise NotImplementedError

    @staticmethod
    def _fields(doc: dict[str, Any], fields: Sequence[str] | None) -> dict[str, Any]:
        if fields is None:
            return doc
        return {k: doc[k] for k in ("shard_index", *fields) if k in doc}

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

    def _new_model_record(self, record: dict[str, Any]) -> dict[str, Any]:
        meta = {k: v for k, v in record.items() if k not in ("_id", "model")}
        meta["model_id"] = uuid.uuid4().hex
        meta["created_at"] = utc_now()
        meta["namespace"] = self.namespace
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

    def _not_found(self, ref: ModelRef) -> ModelNotFound:
        where = f"in namespace {self.namespace!r}"
        if ref.run is not None:
            return ModelNotFound(f"no model of run {echo(ref.run)} {where}")
        if ref.at_or_before is not None:
            return ModelNotFound(f"no model created at or before {ref.at_or_before} {where}")
        return ModelNotFound(f"no model with id {echo(ref.model_id)} {where}")


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


# --- MongoDB ---------------------------------------------------------------

class MongoStore(Store):
    """pymongo against MongoDB: majority write concern, bounded retries."""

    def __init__(self, uri: str | None = None, database: str = DEFAULT_DATABASE, *,
                 namespace: str = DEFAULT_NAMESPACE, client: Any = None, attempts: int = 3,
                 backoff_s: float = 1.0, server_selection_timeout_ms: int = 5000):
        import pymongo
        from pymongo.write_concern import WriteConcern

        self.uri = uri
        self.namespace = check_namespace(namespace)
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
        self._aliases = db.get_collection(ALIASES_COLLECTION, write_concern=majority)
        self._alias_history = db.get_collection(ALIAS_HISTORY_COLLECTION, write_concern=majority)
        # A lost heartbeat is replaced by the next one a few seconds later: w=1 is enough.
        self._heartbeats = db.get_collection(HEARTBEATS_COLLECTION)
        # GridFS bucket MLModels: MLModels.files (one document per model, _id = the model id) and
        # MLModels.chunks (CHUNK_BYTES each); made on first use, so constructing needs no server.
        self._db, self._majority = db, majority
        self._files = db.get_collection(f"{MODELS_COLLECTION}.files", write_concern=majority)
        self._chunks = db.get_collection(f"{MODELS_COLLECTION}.chunks", write_concern=majority)
        self._gridfs = None
        # Shared by every in_namespace view of this connection (a dict, which copy.copy shares):
        # the indexes and the adoption of old records run once per connection, not once per view
        # (the operator makes a view per call).
        self._prepared = {"done": False}

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
                if not self._prepared["done"]:
                    self._prepare_collections()
                    self._prepared["done"] = True
                return fn()
            except self._errors as err:
                if attempt == self.attempts:
                    where = display_uri(self.uri) if self.uri else "the configured client"
                    raise StoreUnavailable(
                        f"MongoDB at {where} is unreachable: {what} failed {attempt} times "
                        f"({type(err).__name__}: {scrub(str(err).splitlines()[0], limit=200)})") from err
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def _prepare_collections(self) -> None:
        """Indexes led by the namespace (every query names one), then records from before
        namespaces adopted into `local`; both idempotent, so every process may run them."""
        self._models.create_index([("namespace", 1), ("run", 1), ("created_at", -1)])
        self._models.create_index([("namespace", 1), ("created_at", -1)])
        self._shards.create_index([("namespace", 1), ("evaluation", 1), ("shard_index", 1)])
        self._evaluations.create_index([("namespace", 1), ("model_id", 1)])
        self._evaluations.create_index([("namespace", 1), ("evaluation", 1)])
        self._productions.create_index([("namespace", 1)])
        self._heartbeats.create_index([("namespace", 1), ("run", 1), ("source", 1)])
        # One alias per namespace and name, whatever its _id: two first sets cannot both insert.
        self._aliases.create_index([("namespace", 1), ("name", 1)], unique=True)
        self._aliases.create_index([("namespace", 1), ("model_id", 1)])
        self._alias_history.create_index([("namespace", 1), ("name", 1), ("version", -1)])
        self._adopt_records_without_namespace()

    def _adopt_records_without_namespace(self) -> None:
        """Records written before namespaces join `local`. Models keep their ids (unique across
        namespaces); a record keyed by name gets the key `local/NAME`: the new document is
        written before the old one is removed, so a process stopped half way loses nothing and
        the next one finishes the move (the namespace index finds what is left)."""
        unscoped = {"namespace": {"$exists": False}}
        self._models.update_many(unscoped, {"$set": {"namespace": DEFAULT_NAMESPACE}})
        for collection in (self._productions, self._shards, self._evaluations, self._heartbeats):
            for doc in collection.find(unscoped, {"_id": True}):
                old = collection.find_one({"_id": doc["_id"]})
                if old is None:  # another process moved it meanwhile
                    continue
                moved = {**old, "_id": f"{DEFAULT_NAMESPACE}/{old['_id']}", "namespace": DEFAULT_NAMESPACE}
                collection.replace_one({"_id": moved["_id"]}, moved, upsert=True)
                collection.delete_one({"_id": old["_id"]})

    def _scoped(self, query: dict[str, Any] | None = None) -> dict[str, Any]:
        """A query limited to this store's namespace."""
        return {**(query or {}), "namespace": self.namespace}

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
                model_id, f"{model_id}.keras", data,
                metadata={"model_id": model_id, "run": meta["run"], "namespace": self.namespace})

        # The bytes first, then the document: a listed model always has its bytes.
        self._call("saving a model's bytes", upload)
        self._call("saving a model", lambda: self._models.replace_one(
            {"_id": model_id}, {"_id": model_id, **meta}, upsert=True))
        return model_id

    def _find_model(self, ref, with_blob: bool):
        ref = self._alias_target(_coerce_ref(ref))
        projection = None if with_blob else {"model": False}
        if ref.model_id is not None:
            query, sort = {"_id": ref.model_id}, None
        elif ref.run is not None:
            query, sort = {"run": ref.run}, [("created_at", -1)]
        else:
            query, sort = {"created_at": {"$lte": ref.at_or_before}}, [("created_at", -1)]

        def find():
            cursor = self._models.find(self._scoped(query), projection)
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
        query = self._scoped(None if run is None else {"run": run})
        docs = self._call("listing models", lambda: list(
            self._models.find(query, {"model": False}).sort([("created_at", -1)])))
        return [self._strip(d) for d in docs]

    def put_production(self, run, record):
        doc = self._scoped({**record, "run": run})
        self._call("recording a production", lambda: self._productions.replace_one(
            {"_id": self._key(run)}, doc, upsert=True))

    def get_production(self, run):
        return self._strip(self._call("reading a production",
                                      lambda: self._productions.find_one({"_id": self._key(run)})))

    def put_shard_result(self, evaluation, shard_index, result):
        key = self._key(evaluation, int(shard_index))
        doc = self._scoped({**result, "evaluation": evaluation, "shard_index": int(shard_index)})
        self._call("recording a shard result", lambda: self._shards.replace_one(
            {"_id": key}, doc, upsert=True))

    def iter_shard_results(self, evaluation, fields=None):
        projection = None if fields is None else {k: True for k in ("shard_index", *fields)}
        last = None
        while True:
            # Pages by shard index (keyset), each a retried call: a failover half way resumes
            # after the last shard read, not from the start.
            query = self._scoped({"evaluation": evaluation})
            if last is not None:
                query["shard_index"] = {"$gt": last}
            page = self._call("reading shard results", lambda: list(
                self._shards.find(query, projection).sort([("shard_index", 1)]).limit(SHARD_RESULTS_PAGE)))
            if not page:
                return
            last = page[-1]["shard_index"]
            while page:
                yield self._fields(self._strip(page.pop(0)), fields)

    def count_shard_results(self, evaluation):
        return int(self._call("counting shard results", lambda: self._shards.count_documents(
            self._scoped({"evaluation": evaluation}))))

    def put_heartbeat(self, run, source, beat):
        doc = self._scoped({**beat, "run": run, "source": source, "updated_at": utc_now()})
        self._call("recording a heartbeat", lambda: self._heartbeats.replace_one(
            {"_id": self._key(run, source)}, doc, upsert=True))

    def heartbeats(self, run):
        docs = self._call("reading heartbeats", lambda: list(
            self._heartbeats.find(self._scoped({"run": run})).sort([("source", 1)])))
        return [self._strip(d) for d in docs]

    def claim_model(self, evaluation, model_id, shard_count):
        doc = self._scoped({"evaluation": evaluation, "model_id": model_id,
                            "shard_count": int(shard_count), "claimed_at": utc_now()})
        self._call("recording an evaluation", lambda: self._evaluations.replace_one(
            {"_id": self._key(evaluation, model_id)}, doc, upsert=True))

    def model_claims(self, model_id):
        docs = self._call("reading evaluations", lambda: list(
            self._evaluations.find(self._scoped({"model_id": model_id})).sort([("evaluation", 1)])))
        return [self._strip(d) for d in docs]

    def _drop_claims(self, evaluation):
        def drop():
            query = self._scoped({"evaluation": evaluation})
            model_ids = sorted(d["model_id"] for d in self._evaluations.find(query))
            self._evaluations.delete_many(query)
            return model_ids

        return self._call("releasing an evaluation's models", drop)

    def get_alias(self, name):
        doc = self._call("reading an alias", lambda: self._aliases.find_one({"_id": self._key(name)}))
        return self._strip(doc) if doc and doc.get("model_id") is not None else None

    def list_aliases(self):
        docs = self._call("listing aliases", lambda: list(
            self._aliases.find(self._scoped({"model_id": {"$ne": None}})).sort([("name", 1)])))
        return [self._strip(d) for d in docs]

    def alias_history(self, name):
        docs = self._call("reading an alias's history", lambda: list(
            self._alias_history.find(self._scoped({"name": name})).sort([("version", -1)])))
        history = [self._strip(d) for d in docs]
        # A mover stopped between the move and its record: the alias itself is the newest entry.
        current = self._call("reading an alias", lambda: self._aliases.find_one({"_id": self._key(name)}))
        if current and current.get("version") not in {h.get("version") for h in history}:
            history.insert(0, {**self._strip(current), "previous_model_id": None, "recovered": True})
        return history

    def _move_alias(self, name, model_id, *, set_by, expected_model_id):
        from pymongo import ReturnDocument
        from pymongo.errors import DuplicateKeyError

        if model_id is not None:
            try:
                self.resolve_model(ModelRef(model_id=model_id))
            except ModelNotFound:
                raise self._alias_missing_model(name, model_id) from None
        key, set_at = self._key(name), utc_now()
        # The compare-and-set is the filter: the update applies only while the alias still points
        # at the expected model, in one find_one_and_update (atomic on one document:
        # https://www.mongodb.com/docs/manual/reference/method/db.collection.findOneAndUpdate/).
        query = {"_id": key} if expected_model_id is None else {"_id": key, "model_id": expected_model_id}
        update = {"$set": self._scoped({"name": name, "model_id": model_id, "set_by": set_by,
                                        "set_at": set_at}),
                  "$inc": {"version": 1}}

        def move():
            try:
                return self._aliases.find_one_and_update(query, update, upsert=expected_model_id is None,
                                                         return_document=ReturnDocument.BEFORE)
            except DuplicateKeyError:
                # Two first sets at once: the unique index lets one insert, the other fails and is
                # retried as an update, as MongoDB's manual says of upserts (mongodb/docs
                # source/includes/extracts-parameter-upsert.yaml, "uniquely indexed"; servers since
                # 4.4 retry it themselves when the key equals the filter, SERVER-47212).
                return self._aliases.find_one_and_update(query, update, return_document=ReturnDocument.BEFORE)

        before = self._call("moving an alias", move)
        if before is None and expected_model_id is not None:
            raise self._alias_conflict(name, self.get_alias(name), expected_model_id)
        moved = self._move_record(name, model_id, before, set_by, set_at)

        def record():
            # $setOnInsert: a history entry, once written, is never changed. The previous move's
            # entry too, in case the process that made it stopped before writing it.
            if before is not None and before.get("version"):
                self._alias_history.update_one(
                    {"_id": self._key(name, f"{before['version']:012d}")},
                    {"$setOnInsert": self._scoped({**self._move_record(
                        name, before.get("model_id"), None, before.get("set_by"), before.get("set_at")),
                        "version": before["version"], "recovered": True})}, upsert=True)
            self._alias_history.update_one({"_id": self._key(name, f"{moved['version']:012d}")},
                                           {"$setOnInsert": self._scoped(moved)}, upsert=True)

        self._call("recording an alias move", record)
        return {**moved, "namespace": self.namespace}

    def _remove_model(self, model_id):
        # The bytes first, the document last: a delete that fails half way can be run again.
        self._call("deleting a model's bytes", lambda: (
            self._chunks.delete_many({"files_id": model_id}), self._files.delete_one({"_id": model_id})))
        self._call("deleting a model", lambda: self._models.delete_one(self._scoped({"_id": model_id})))
        self._call("deleting a model's evaluations",
                   lambda: self._evaluations.delete_many(self._scoped({"model_id": model_id})))

    def close(self):
        self._client.close()


def open_store(uri: str | None = None, database: str = DEFAULT_DATABASE, *,
               namespace: str = DEFAULT_NAMESPACE) -> Store:
    """A store for a URI (`mongodb://...` / `mongodb+srv://...` or `sqlite:///PATH`) that reads
    and writes only the records of `namespace`."""
    uri = uri or os.environ.get("MONGODB_URI") or DEFAULT_EMBEDDED_URI
    if uri.startswith(("mongodb://", "mongodb+srv://")):
        return MongoStore(uri, database, namespace=namespace)
    if uri.startswith("sqlite://"):
        # As SQLAlchemy spells them: sqlite:///relative/path, sqlite:////absolute/path.
        path = uri[len("sqlite://"):]
        if not path.startswith("/") or len(path) < 2:
            raise BadInput(f"store URI {echo(uri)}: expected sqlite:///PATH")
        return EmbeddedStore(path[1:], database, namespace=namespace)
    raise BadInput(f"store URI {display_uri(uri)!r}: expected mongodb://, mongodb+srv:// or sqlite:///PATH")
