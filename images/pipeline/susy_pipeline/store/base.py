"""What both back ends share: the record names, the errors, model references and `Store`, the
interface with the logic that does not depend on the back end (package docstring: the design)."""
from __future__ import annotations

import copy
import datetime as dt
import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, TypeVar

from ..errors import BadInput, Unavailable
from ..redaction import echo

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
