"""`aggregate`: combine the shard results of one evaluation into the exact totals.

    aggregate --evaluation NAME [--shard-count N] [--report DIR]

Reads every shard result of NAME from the store and prints the evaluation
result (`evaluation.aggregate`): accuracy = total correct / total rows, mean
log-loss, confusion matrix, AUC from the merged histograms, and a line per
shard. A missing, duplicated or inconsistent shard is an error (exit 2) that
names the shards; no partial total is printed. `--report DIR` also writes the
JSON and PNG report (see `report`).
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from . import options
from .evaluation import aggregate, printable


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("aggregate", help="combine an evaluation's shard results into exact totals",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_evaluation_args(p)
    p.add_argument("--report", metavar="DIR", default=None, help="also write DIR/NAME.json and DIR/NAME.png")
    p.set_defaults(run=run)
    return p


def add_evaluation_args(p: argparse.ArgumentParser) -> None:
    """--evaluation, --shard-count and the store: what names one evaluation's results."""
    p.add_argument("--evaluation", default=os.environ.get("SUSY_EVALUATION"),
                   required=not os.environ.get("SUSY_EVALUATION"), help="evaluation name (env SUSY_EVALUATION)")
    p.add_argument("--shard-count", type=options.positive, default=None,
                   help="expected shard count (default: as the shards recorded it)")
    options.add_store(p)


def aggregated(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation's result from its stored shard results (raises if any is missing)."""
    with options.store_from(args) as store:
        return aggregate(store.shard_results(args.evaluation), args.shard_count)


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = aggregated(args)
    out = printable(result)
    if args.report:
        from .report import write_report

        paths = write_report(result, args.report)
        out["report"] = {"json": paths["json"], "png": paths["png"]}
    return out
