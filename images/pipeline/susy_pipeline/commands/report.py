"""`report`: an aggregated evaluation as JSON and as a small PNG.

    report --evaluation NAME [--shard-count N] [--out DIR]

writes `DIR/NAME.json` (the aggregated result, with the ROC curve sampled at
up to 257 points instead of the full histograms; with several models, one
curve per model under `models[].roc`) and `DIR/NAME.png`: the ROC curve of
every model (the ensemble's dashed) with its AUC, and rows and accuracy per
shard, for people who would rather look than read. Imports matplotlib (Agg backend) only when drawing.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from .. import options
from ..evaluation import aggregate_stored
from ..report_files import write_report
from ..schema import DEFAULT_DATABASE
from ..store import DEFAULT_NAMESPACE, open_store

DEFAULT_OUT = os.path.join(".susy", "reports")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help="write an evaluation's result as JSON and PNG",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_evaluation(p)
    p.add_argument("--out", default=DEFAULT_OUT, help="output directory (default %(default)s)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    return report(evaluation=args.evaluation, shard_count=args.shard_count, out=args.out,
                  store_uri=args.store, database=args.database,
                  namespace=args.namespace)


def report(*, evaluation: str, shard_count: int | None = None, out: str = DEFAULT_OUT,
           store_uri: str | None = None, database: str = DEFAULT_DATABASE,
           namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
    """Aggregate the stored shard results of `evaluation` and write its report into `out`."""
    with open_store(store_uri, database, namespace=namespace) as store:
        return write_report(aggregate_stored(store, evaluation, shard_count), out)
