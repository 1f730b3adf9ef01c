"""`models`: list the stored models, newest first."""
from __future__ import annotations

import argparse

from . import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list stored models", description=__doc__)
    p.add_argument("--run-name", default=None, help="only the models of this run")
    options.add_store(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> dict:
    with options.store_from(args) as store:
        models = store.list_models(args.run_name)
    for m in models:
        auc = m.get("metrics", {}).get("val_auc")
        print(f"{m['model_id']}  {m['created_at']}  run={m.get('run')}  rows={m.get('rows')}  "
              f"val_auc={'-' if auc is None else f'{auc:.4f}'}")
    return {"models": len(models)}
