"""`models`: list, export and delete stored models.

  models [list] [--run-name RUN] [--table]   the models, newest first (one JSON document; --table: a table)
  models [list] --lineage REF [--table]       the model and its warm-start parents, back to the first
  models export REF --out FILE.keras        write a model's .keras bytes to a file
  models delete ID [--force]                delete a model: its record and its bytes
  models lineage REF                        where a model came from and what scored it

`models` alone lists. REF is a model id, an ISO-8601 timestamp (the newest model
created at or before it) or latest:RUN; `delete` takes an id only. `delete`
refuses (exit 2, naming the evaluations) while an evaluation that scores the
model is unfinished: every evaluator shard records the model it scores before
loading it, and an evaluation is finished once each of its shards has stored
its result. --force deletes anyway, for an evaluation that will never finish
(its EvaluationRun deleted, or failed for good).

`lineage` prints the model's record without its bytes (recipe, hyper-parameters,
metrics, and `lineage`: the topic, the partitions' offsets and the source rows
it was trained on), the production record of its run (`production`; null when
none is stored, and `production_matches` false when a later production of the
same run name has replaced the one the model was trained on) and the
evaluations that scored it, with how many of their shards are done.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

from .. import options
from ..continual import ancestry
from ..errors import BadInput
from ..progress import Progress
from ..schema import DEFAULT_DATABASE
from ..store import ModelRef, open_store

# Bytes written per step of `models export` (its progress bar moves per step).
EXPORT_PIECE_BYTES = 1 << 20

# Shown by `models list --table` (the JSON has every field of each record).
_COLUMNS = ("model_id", "created_at", "run", "rows", "val_auc", "size")


def _add_list_options(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--run-name", default=default, help="only the models of this run")
    p.add_argument("--table", action="store_true", default=default,
                   help="print a table for people instead of the JSON document")
    p.add_argument("--lineage", default=default, metavar="REF",
                   help="only this model (id, ISO-8601 timestamp or latest:RUN) and the chain of "
                        "models it was warm-started from, newest first")


def _add_store(p: argparse.ArgumentParser) -> None:
    """The store options on a subcommand, defaulting to what `models` itself was given."""
    p.add_argument("--store", default=argparse.SUPPRESS,
                   help="model store: mongodb://... or sqlite:///PATH (env MONGODB_URI)")
    p.add_argument("--database", default=argparse.SUPPRESS, help="database name (env SUSY_DATABASE)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, export or delete stored models", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    # On `models` itself too, so that `models --run-name R` (no subcommand) lists as it always did.
    _add_list_options(p, None)
    options.add_store(p)
    p.set_defaults(run=run_list, table=False)
    actions = p.add_subparsers(dest="models_command", metavar="ACTION")

    # Defaults SUPPRESSed: an option given before the action (`models --store X list`) stays.
    listing = actions.add_parser("list", help="list stored models, newest first (JSON; --table)")
    _add_list_options(listing, argparse.SUPPRESS)
    _add_store(listing)
    listing.set_defaults(run=run_list)

    export = actions.add_parser("export", help="write a model's .keras bytes to a file")
    export.add_argument("ref", metavar="REF", help="model id, ISO-8601 timestamp or latest:RUN")
    export.add_argument("--out", required=True, metavar="FILE.keras",
                        help="file to write (Keras loads only names ending .keras)")
    _add_store(export)
    export.set_defaults(run=run_export)

    delete = actions.add_parser("delete", help="delete a model (refused while an evaluation uses it)")
    delete.add_argument("model_id", metavar="ID", help="model id (32 hex characters)")
    delete.add_argument("--force", action="store_true",
                        help="delete even while an unfinished evaluation names the model")
    _add_store(delete)
    delete.set_defaults(run=run_delete)

    lineage = actions.add_parser("lineage", help="a model's record, the production it was trained "
                                                 "on and the evaluations that scored it")
    lineage.add_argument("ref", metavar="REF", help="model id, ISO-8601 timestamp or latest:RUN")
    _add_store(lineage)
    lineage.set_defaults(run=run_lineage)


def _row(m: dict[str, Any]) -> dict[str, str]:
    auc = (m.get("metrics") or {}).get("val_auc")
    size = m.get("size_bytes")
    return {"model_id": m["model_id"], "created_at": m["created_at"], "run": str(m.get("run")),
            "rows": "-" if m.get("rows") is None else str(m["rows"]),
            "val_auc": "-" if auc is None else f"{auc:.4f}",
            "size": "-" if size is None else f"{size / 1e6:.1f} MB"}


def run_list(args: argparse.Namespace) -> dict | None:
    return list_models(run_name=args.run_name, lineage=args.lineage, table=args.table,
                       store_uri=args.store, database=args.database)


def list_models(*, run_name: str | None = None, lineage: str | None = None, table: bool = False,
                store_uri: str | None = None, database: str = DEFAULT_DATABASE) -> dict | None:
    """The stored models, newest first (of one run, or `lineage`'s chain); with `table`, printed
    as a table instead."""
    if lineage and run_name:
        raise BadInput("--lineage and --run-name select differently: give one of them")
    with open_store(store_uri, database) as store:
        models = ancestry(store, lineage) if lineage else store.list_models(run_name)
    if not table:
        return {"count": len(models), "models": models}
    if lineage:
        models = [{"run": "(deleted)", "created_at": "-", **m} if m.get("deleted") else m for m in models]
    rows = [_row(m) for m in models]
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in _COLUMNS}
    print("  ".join(c.ljust(widths[c]) for c in _COLUMNS).rstrip())
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in _COLUMNS).rstrip())
    return None


def run_export(args: argparse.Namespace) -> dict:
    return export_model(ref=args.ref, out=args.out, store_uri=args.store, database=args.database)


def export_model(*, ref: str, out: str, store_uri: str | None = None,
                 database: str = DEFAULT_DATABASE) -> dict:
    """Write the .keras bytes of the model `ref` names to the file `out`."""
    if not out.endswith(".keras"):
        raise BadInput(f"--out {out!r}: the file name must end .keras (keras.models.load_model "
                       "reads no other)")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise BadInput(f"--out {out!r}: directory {parent} does not exist")
    with open_store(store_uri, database) as store:
        meta, data = store.load_model(ref)
    # Written beside the target and renamed: the file appears whole or not at all.
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".export-", suffix=".keras")
    try:
        with os.fdopen(fd, "wb") as f, Progress(f"export {meta['model_id']}", len(data),
                                                 unit="bytes") as progress:
            for start in range(0, len(data), EXPORT_PIECE_BYTES):
                progress.advance(f.write(data[start:start + EXPORT_PIECE_BYTES]))
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would make it, not mkstemp's 0600
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"model {meta['model_id']} written to {out} ({len(data):,} bytes)", file=sys.stderr)
    return {"model_id": meta["model_id"], "run": meta.get("run"), "out": out, "bytes": len(data)}


def run_delete(args: argparse.Namespace) -> dict:
    return delete_model(model_id=args.model_id, force=args.force, store_uri=args.store,
                        database=args.database)


def delete_model(*, model_id: str, force: bool = False, store_uri: str | None = None,
                 database: str = DEFAULT_DATABASE) -> dict:
    """Delete a model's record and bytes (refused while an unfinished evaluation uses it, unless `force`)."""
    ref = ModelRef.parse(model_id)
    if ref.model_id is None:
        raise BadInput(f"models delete takes a model id, not {model_id!r} "
                       "(`models list` shows the ids)")
    with open_store(store_uri, database) as store:
        return store.delete_model(ref.model_id, force=force)


def run_lineage(args: argparse.Namespace) -> dict:
    return model_lineage(ref=args.ref, store_uri=args.store, database=args.database)


def model_lineage(*, ref: str, store_uri: str | None = None, database: str = DEFAULT_DATABASE) -> dict:
    """The model's record, the production it was trained on and the evaluations that scored it."""
    with open_store(store_uri, database) as store:
        meta = store.resolve_model(ref)
        run = meta.get("run")
        production = store.get_production(run) if run is not None else None
        evaluations = store.model_evaluations(meta["model_id"])
    lineage = meta.get("lineage") or {}
    # Productions are keyed by run name, so a run name used again replaces the record; the
    # model's own lineage (topic and offsets) says whether this record is the one it read.
    matches = None if production is None else (
        production.get("topic") == lineage.get("topic")
        and production.get("partitions") == lineage.get("partitions"))
    return {**meta, "production": production, "production_matches": matches,
            "evaluations": evaluations}
