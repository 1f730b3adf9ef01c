"""`aggregate`: combine the shard results of one evaluation into the exact totals.

    aggregate --evaluation NAME [--shard-count N] [--report DIR]

Reads every shard result of NAME from the store and prints the evaluation
result (`evaluation.aggregate`): accuracy = total correct / total rows, mean
log-loss, confusion matrix, AUC from the merged histograms, and a line per
shard. A missing, duplicated or inconsistent shard is an error (exit 2) that
names the shards; no partial total is printed. `--report DIR` also writes the
JSON and PNG report (see `report`).

`models` lists every model the shards scored, in the order `evaluate --model`
gave them, the ensemble last (named `ensemble`): reference, model id, rows,
accuracy, AUC, log-loss, confusion matrix; `best` names the one with the
highest AUC. The top-level totals are the first model's, as a one-model
evaluation has always printed them.
"""
from __future__ import annotations

import argparse
from typing import Any

from .. import options
from ..evaluation import aggregate_stored, printable
from ..report_files import write_report
from ..schema import DEFAULT_DATABASE
from ..store import DEFAULT_NAMESPACE, open_store


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("aggregate", help="combine an evaluation's shard results into exact totals",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_evaluation(p)
    p.add_argument("--report", metavar="DIR", default=None, help="also write DIR/NAME.json and DIR/NAME.png")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    return aggregate(evaluation=args.evaluation, shard_count=args.shard_count, report=args.report,
                     store_uri=args.store, database=args.database,
                     namespace=args.namespace)


def aggregate(*, evaluation: str, shard_count: int | None = None, report: str | None = None,
              store_uri: str | None = None, database: str = DEFAULT_DATABASE,
              namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
    """The exact totals of `evaluation` from its stored shard results (with `report`: also its
    JSON and PNG report in that directory)."""
    with open_store(store_uri, database, namespace=namespace) as store:
        result = aggregate_stored(store, evaluation, shard_count)
    out = printable(result)
    if report:
        paths = write_report(result, report)
        out["report"] = {"json": paths["json"], "png": paths["png"]}
    return out
