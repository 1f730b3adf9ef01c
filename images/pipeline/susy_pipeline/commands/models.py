"""`models`: list, export and delete stored models; set and read their aliases.

  models [list] [--run-name RUN] [--table]   the models, newest first (one JSON document; --table: a table)
  models [list] --lineage REF [--table]       the model and its warm-start parents, back to the first
  models export REF --out FILE.keras        write a model's .keras bytes to a file
  models delete ID [--force]                delete a model: its record and its bytes
  models lineage REF                        where a model came from and what scored it
  models alias set NAME REF [--expect ID] [--set-by WHO]   point alias NAME at a model (atomic)
  models alias get NAME | list | history NAME               read aliases and every move of one

`models` alone lists. REF is a model id, an ISO-8601 timestamp (the newest model
created at or before it), latest:RUN or alias:NAME; `delete` takes an id only.
`delete` refuses (exit 2, naming the evaluations) while an evaluation that
scores the model is unfinished: every evaluator shard records the model it
scores before loading it, and an evaluation is finished once each of its shards
has stored its result. It refuses too while an alias points to the model.
--force deletes anyway, for an evaluation that will never finish (its
EvaluationRun deleted, or failed for good), and deletes the model's aliases
with it (their history stays).

An alias is a named pointer to a model of the namespace (as MLflow's registered
model aliases), moved with `alias set`: recorded with who moved it (--set-by,
default the OS user) and when, every move kept (`alias history`, newest first).
With --expect ID the move happens only if the alias points at model ID now
(compare-and-set: of two writers that read the same model, one wins and the
other exits 2 naming where the alias points). A model that is not in the
namespace is refused.

`lineage` prints the model's record without its bytes (recipe, hyper-parameters,
metrics, and `lineage`: the topic, the partitions' offsets and the source rows
it was trained on), the production record of its run (`production`; null when
none is stored, and `production_matches` false when a later production of the
same run name has replaced the one the model was trained on) and the
evaluations that scored it, with how many of their shards are done.
"""
from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
from typing import Any

from .. import options
from ..continual import ancestry
from ..errors import BadInput
from ..redaction import echo
from ..progress import Progress
from ..schema import DEFAULT_DATABASE
from ..store import DEFAULT_NAMESPACE, ModelRef, check_alias, open_store

# Bytes written per step of `models export` (its progress bar moves per step).
EXPORT_PIECE_BYTES = 1 << 20

# Shown by `models list --table` (the JSON has every field of each record).
_COLUMNS = ("model_id", "created_at", "run", "rows", "val_auc", "size")


def _add_list_options(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--run-name", default=default, help="only the models of this run")
    p.add_argument("--table", action="store_true", default=default,
                   help="print a table for people instead of the JSON document")
    p.add_argument("--lineage", default=default, metavar="REF",
                   help="only this model (id, ISO-8601 timestamp, latest:RUN or alias:NAME) and the chain of "
                        "models it was warm-started from, newest first")


def _add_store(p: argparse.ArgumentParser) -> None:
    """The store options on a subcommand, defaulting to what `models` itself was given."""
    p.add_argument("--store", default=argparse.SUPPRESS,
                   help="model store: mongodb://... or sqlite:///PATH (env MONGODB_URI)")
    p.add_argument("--database", default=argparse.SUPPRESS, help="database name (env SUSY_DATABASE)")
    p.add_argument("--namespace", type=options.namespace, default=argparse.SUPPRESS,
                   help="the store's namespace (env SUSY_NAMESPACE; default: local)")


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
    export.add_argument("ref", metavar="REF", help="model id, ISO-8601 timestamp, latest:RUN or alias:NAME")
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
    lineage.add_argument("ref", metavar="REF", help="model id, ISO-8601 timestamp, latest:RUN or alias:NAME")
    _add_store(lineage)
    lineage.set_defaults(run=run_lineage)

    alias = actions.add_parser("alias", help="named pointers to models: set, get, list, history")
    alias_actions = alias.add_subparsers(dest="alias_command", metavar="ACTION", required=True)
    set_alias = alias_actions.add_parser("set", help="point alias NAME at the model REF names (atomic)")
    set_alias.add_argument("name", metavar="NAME", help="the alias (e.g. champion)")
    set_alias.add_argument("ref", metavar="REF",
                           help="model id, ISO-8601 timestamp, latest:RUN or alias:OTHER")
    set_alias.add_argument("--expect", metavar="ID", default=None,
                           help="move it only if it points at model ID now (compare-and-set; exit 2 if not)")
    set_alias.add_argument("--set-by", default=None, metavar="WHO",
                           help="who moves it, kept in its history (default: the OS user)")
    get_alias = alias_actions.add_parser("get", help="the model alias NAME points to, who set it and when")
    get_alias.add_argument("name", metavar="NAME")
    list_aliases = alias_actions.add_parser("list", help="every alias of the namespace, by name")
    history = alias_actions.add_parser("history", help="every move of alias NAME, newest first")
    history.add_argument("name", metavar="NAME")
    for action, run in ((set_alias, run_alias_set), (get_alias, run_alias_get),
                        (list_aliases, run_alias_list), (history, run_alias_history)):
        _add_store(action)
        action.set_defaults(run=run)


def _row(m: dict[str, Any]) -> dict[str, str]:
    auc = (m.get("metrics") or {}).get("val_auc")
    size = m.get("size_bytes")
    return {"model_id": m["model_id"], "created_at": m["created_at"], "run": str(m.get("run")),
            "rows": "-" if m.get("rows") is None else str(m["rows"]),
            "val_auc": "-" if auc is None else f"{auc:.4f}",
            "size": "-" if size is None else f"{size / 1e6:.1f} MB"}


def run_list(args: argparse.Namespace) -> dict | None:
    return list_models(run_name=args.run_name, lineage=args.lineage, table=args.table,
                       store_uri=args.store, database=args.database,
                       namespace=args.namespace)


def list_models(*, run_name: str | None = None, lineage: str | None = None, table: bool = False,
                store_uri: str | None = None, database: str = DEFAULT_DATABASE,
                namespace: str = DEFAULT_NAMESPACE) -> dict | None:
    """The stored models, newest first (of one run, or `lineage`'s chain); with `table`, printed
    as a table instead."""
    if lineage and run_name:
        raise BadInput("--lineage and --run-name select differently: give one of them")
    with open_store(store_uri, database, namespace=namespace) as store:
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
    return export_model(ref=args.ref, out=args.out, store_uri=args.store, database=args.database,
                        namespace=args.namespace)


def export_model(*, ref: str, out: str, store_uri: str | None = None,
                 database: str = DEFAULT_DATABASE,
                 namespace: str = DEFAULT_NAMESPACE) -> dict:
    """Write the .keras bytes of the model `ref` names to the file `out`."""
    if not out.endswith(".keras"):
        raise BadInput(f"--out {echo(out)}: the file name must end .keras (keras.models.load_model "
                       "reads no other)")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise BadInput(f"--out {echo(out)}: directory {parent} does not exist")
    with open_store(store_uri, database, namespace=namespace) as store:
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
                        database=args.database,
                        namespace=args.namespace)


def delete_model(*, model_id: str, force: bool = False, store_uri: str | None = None,
                 database: str = DEFAULT_DATABASE,
                 namespace: str = DEFAULT_NAMESPACE) -> dict:
    """Delete a model's record and bytes (refused while an unfinished evaluation uses it, unless `force`)."""
    ref = ModelRef.parse(model_id)
    if ref.model_id is None:
        raise BadInput(f"models delete takes a model id, not {echo(model_id)} "
                       "(`models list` shows the ids)")
    with open_store(store_uri, database, namespace=namespace) as store:
        return store.delete_model(ref.model_id, force=force, deleted_by=f"{os_user()} (models delete --force)")


def os_user() -> str:
    """Who runs the command, for an alias's history."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no USER/LOGNAME and no passwd entry (a container's arbitrary uid)
        return f"uid {os.getuid()}"


def _store_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"store_uri": args.store, "database": args.database, "namespace": args.namespace}


def run_alias_set(args: argparse.Namespace) -> dict:
    return set_alias(name=args.name, ref=args.ref, expect=args.expect, set_by=args.set_by or os_user(),
                     **_store_args(args))


def set_alias(*, name: str, ref: str, set_by: str, expect: str | None = None,
              store_uri: str | None = None, database: str = DEFAULT_DATABASE,
              namespace: str = DEFAULT_NAMESPACE) -> dict:
    """Point alias `name` at the model `ref` names (only if it points at `expect` now, if given)."""
    with open_store(store_uri, database, namespace=namespace) as store:
        model_id = store.resolve_model(ref)["model_id"]
        return store.set_alias(name, model_id, set_by=set_by, expected_model_id=expect)


def run_alias_get(args: argparse.Namespace) -> dict:
    with open_store(args.store, args.database, namespace=args.namespace) as store:
        alias = store.get_alias(check_alias(args.name))
    if alias is None:
        raise BadInput(f"no alias {args.name!r} in namespace {args.namespace!r} "
                       "(`models alias list` shows them)")
    return alias


def run_alias_list(args: argparse.Namespace) -> dict:
    with open_store(args.store, args.database, namespace=args.namespace) as store:
        aliases = store.list_aliases()
    return {"count": len(aliases), "aliases": aliases}


def run_alias_history(args: argparse.Namespace) -> dict:
    with open_store(args.store, args.database, namespace=args.namespace) as store:
        moves = store.alias_history(check_alias(args.name))
    return {"name": args.name, "count": len(moves), "history": moves}


def run_lineage(args: argparse.Namespace) -> dict:
    return model_lineage(ref=args.ref, store_uri=args.store, database=args.database,
                         namespace=args.namespace)


def model_lineage(*, ref: str, store_uri: str | None = None, database: str = DEFAULT_DATABASE,
                  namespace: str = DEFAULT_NAMESPACE) -> dict:
    """The model's record, the production it was trained on and the evaluations that scored it."""
    with open_store(store_uri, database, namespace=namespace) as store:
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
