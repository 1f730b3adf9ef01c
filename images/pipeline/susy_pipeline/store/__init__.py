"""The model store: trained models, producer records and evaluation shard results.

Two back ends behind one small interface:

- `MongoStore` (production): pymongo against MongoDB, database `bigdata`,
  collection `MLModels` as in the seed; writes use majority write concern and
  every call is retried a bounded number of times before `StoreUnavailable`.
- `EmbeddedStore` (one machine, tests): SQLite from the standard library in
  WAL mode, one file that several processes (parallel evaluator shards) read
  and write at once.

This module imports neither TensorFlow nor Kafka: the operator uses it too.
The package: `base.py` (the record names, the errors, model references and the `Store`
interface with what does not depend on the back end), `embedded.py` and `mongo.py` (one back end
each) and `open_store` here, which picks one from a URI.

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

import os

from ..errors import BadInput
from ..redaction import display_uri, echo
from ..schema import DEFAULT_DATABASE, MODELS_COLLECTION
from .base import (ALIAS_HISTORY_COLLECTION, ALIAS_PATTERN, ALIASES_COLLECTION, CHUNK_BYTES, DEFAULT_EMBEDDED_URI,
                   DEFAULT_NAMESPACE, EVALUATIONS_COLLECTION, HEARTBEATS_COLLECTION, NAMESPACE_PATTERN,
                   PRODUCTIONS_COLLECTION, SHARD_RESULTS_COLLECTION, SHARD_RESULTS_PAGE, AliasConflict,
                   ModelBytesDamaged, ModelInUse, ModelNotFound, ModelRef, Store, StoreError, StoreUnavailable,
                   check_alias, check_namespace, utc_now)
from .embedded import EmbeddedStore
from .mongo import MongoStore

__all__ = [
    "ALIAS_HISTORY_COLLECTION", "ALIAS_PATTERN", "ALIASES_COLLECTION", "CHUNK_BYTES", "DEFAULT_DATABASE",
    "DEFAULT_EMBEDDED_URI", "DEFAULT_NAMESPACE", "EVALUATIONS_COLLECTION", "HEARTBEATS_COLLECTION",
    "MODELS_COLLECTION", "NAMESPACE_PATTERN", "PRODUCTIONS_COLLECTION", "SHARD_RESULTS_COLLECTION",
    "SHARD_RESULTS_PAGE", "AliasConflict", "EmbeddedStore", "ModelBytesDamaged", "ModelInUse", "ModelNotFound",
    "ModelRef", "MongoStore", "Store", "StoreError", "StoreUnavailable", "check_alias", "check_namespace",
    "open_store", "utc_now",
]


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
