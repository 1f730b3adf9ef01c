"""The MongoDB back end: pymongo, majority write concern, bounded retries; model bytes through
GridFS (bucket MLModels)."""
from __future__ import annotations

import time
from typing import Any, Callable

from ..redaction import display_uri, scrub
from ..schema import DEFAULT_DATABASE, MODELS_COLLECTION
from .base import (ALIAS_HISTORY_COLLECTION, ALIASES_COLLECTION, CHUNK_BYTES, DEFAULT_NAMESPACE,
                   EVALUATIONS_COLLECTION, HEARTBEATS_COLLECTION, PRODUCTIONS_COLLECTION,
                   SHARD_RESULTS_COLLECTION, SHARD_RESULTS_PAGE, T, ModelBytesDamaged, ModelNotFound,
                   ModelRef, Store, StoreUnavailable, _coerce_ref, check_namespace, utc_now)

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
