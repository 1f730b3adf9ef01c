"""`evaluate`: score one shard of a (large) test set with one or more stored models.

    evaluate --model REF [--model REF2 ... [--ensemble mean]] --data FILES_OR_GLOBS... \
             --evaluation NAME --shard-index I --shard-count N [--skip S] [--limit L]
             [--chunk-rows 16384]

Several `--model`s (up to 8) are scored in one pass: the shard reads and
decodes its rows once and runs every model on every chunk, keeping exact
tallies per model; `--ensemble mean` adds the mean of their probabilities as
one more model, named `ensemble`. Two references that resolve to one model
are scored once and reported under both; an unknown one fails the shard
(exit 2) before anything is stored. `aggregate` then prints every model's
totals in the order given and the best by AUC.

With `--skip`/`--limit` the shards score exactly rows `[S, S+L)` of the inputs
taken together in sorted path order (e.g. `--skip 10979` on the sample: its
held-out test rows), split among the shards as the rows would be.

`--precision bf16` computes the hidden layers in bfloat16 (oneDNN; about 1.7x the rows/s where
the CPU has AMX or AVX512-BF16); `auto` takes it only there and only with `--allow-bf16`.
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from .. import options, scoring
from ..errors import BadInput
from ..evaluation import ENSEMBLE_METHODS, MAX_MODELS
from ..precision import EVALUATION_PRECISIONS
from ..heartbeat import HEARTBEAT_ENV, HEARTBEAT_SECONDS
from ..schema import DEFAULT_CHUNK_ROWS, DEFAULT_DATABASE
from ..scoring import SCORING_THREADS, evaluate_shard
from ..shards import STRIPE_ROWS
from ..store import DEFAULT_NAMESPACE, open_store

# What SUSY_ALLOW_BF16 takes for yes (the operator writes "true").
TRUE_WORDS = ("1", "true", "yes")
# The command's own text, then how a shard is read and scored (the engine's, in scoring.py).
DESCRIPTION = __doc__ + "\n" + scoring.__doc__.split("\n", 2)[2]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate", help="score one shard of a test set with a stored model; upsert the shard result",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=None,
                   help="model id, ISO timestamp (newest at or before), latest:RUN or alias:NAME; give it up to "
                        f"{MAX_MODELS} times to score several models in one pass (env SUSY_MODEL, "
                        "space-separated)")
    p.add_argument("--ensemble", choices=ENSEMBLE_METHODS, default=options.env("SUSY_ENSEMBLE") or None,
                   help="also score the models' ensemble: mean, the mean of their probabilities "
                        "(env SUSY_ENSEMBLE)")
    p.add_argument("--data", nargs="+", default=options.env("SUSY_DATA", "").split() or None,
                   help="files, URIs (s3://, gs://, https://) or globs: .csv, .csv.gz, .parquet "
                        "(env SUSY_DATA, space-separated)")
    p.add_argument("--evaluation", default=options.env("SUSY_EVALUATION"),
                   help="evaluation name the shard result is stored under (env SUSY_EVALUATION)")
    p.add_argument("--shard-index", type=int, default=options.env("JOB_COMPLETION_INDEX"),
                   help="this shard, 0..N-1 (env JOB_COMPLETION_INDEX, as Indexed Jobs set it)")
    p.add_argument("--shard-count", type=options.positive, default=options.env("SUSY_SHARD_COUNT", 1),
                   help="number of shards N (env SUSY_SHARD_COUNT; default 1)")
    p.add_argument("--skip", type=options.non_negative, default=options.env("SUSY_SKIP", 0),
                   help="rows of the inputs, taken together in sorted order, skipped before the "
                        "scored ones (env SUSY_SKIP; default 0)")
    p.add_argument("--limit", type=options.positive, default=options.env("SUSY_LIMIT"),
                   help="rows scored after --skip (env SUSY_LIMIT; default: every row to the end)")
    p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                   help="rows per forward pass (default %(default)s)")
    p.add_argument("--stripe-rows", type=int, default=STRIPE_ROWS,
                   help="CSV.gz stripe size when a .gz file is split among shards (default %(default)s)")
    p.add_argument("--model-threads", type=options.positive, default=options.env("SUSY_MODEL_THREADS"),
                   help="TensorFlow intra-op threads per model call (env SUSY_MODEL_THREADS; default: "
                        "the CPUs this process may use, CPU limit included, less one for the reader "
                        "when any input is CSV)")
    p.add_argument("--scoring-threads", type=options.positive,
                   default=options.env("SUSY_SCORING_THREADS", SCORING_THREADS),
                   help="model calls in flight at once, each on its own chunk (env SUSY_SCORING_THREADS; "
                        "default %(default)s; totals do not depend on it)")
    p.add_argument("--precision", choices=EVALUATION_PRECISIONS, default=options.env("SUSY_PRECISION", "auto"),
                   help="what the models compute in: fp32, bf16 (any CPU; emulated and slower without AMX or "
                        "AVX512-BF16), or auto: bf16 only where /proc/cpuinfo shows amx_bf16 and amx_tile, or "
                        "avx512_bf16, and the run opted in with --allow-bf16, else fp32. bf16 moves scores "
                        "slightly, so tallies change; the shard result records the precision and aggregate "
                        "refuses shards of different precisions (env SUSY_PRECISION; default: %(default)s)")
    p.add_argument("--allow-bf16", action="store_true", default=options.env("SUSY_ALLOW_BF16", "") in TRUE_WORDS,
                   help="the run's opt-in that lets --precision auto take bf16 (env SUSY_ALLOW_BF16=true)")
    p.add_argument("--progress-seconds", type=float, default=10.0,
                   help="log rows done and rows/s this often when stderr is not a terminal (on a "
                        "terminal a progress bar shows them; default %(default)s)")
    p.add_argument("--heartbeat-seconds", type=float, default=None,
                   help="write this shard's progress (rows scored and planned, rows/s) to the store "
                        f"this often, for the operator's status; 0: never (env {HEARTBEAT_ENV}; "
                        f"default {HEARTBEAT_SECONDS:g})")
    options.add_store(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    # `append` with a default list would add to it: the environment is the fallback instead.
    model = args.model or options.env("SUSY_MODEL", "").split() or None
    missing = [opt for opt, value in (("--model", model), ("--data", args.data),
                                      ("--evaluation", args.evaluation), ("--shard-index", args.shard_index))
               if value in (None, [], "")]
    if missing:
        raise BadInput(f"evaluate needs {', '.join(missing)} (or their environment variables)")
    return evaluate(
        model_ref=model, ensemble=args.ensemble, inputs=args.data, evaluation=args.evaluation,
        shard_index=args.shard_index, shard_count=args.shard_count, skip=args.skip, limit=args.limit,
        chunk_rows=args.chunk_rows, stripe_rows=args.stripe_rows, model_threads=args.model_threads,
        scoring_threads=args.scoring_threads, progress_seconds=args.progress_seconds,
        precision=args.precision, allow_bf16=args.allow_bf16, heartbeat_seconds=args.heartbeat_seconds,
        store_uri=args.store, database=args.database, namespace=args.namespace)


def evaluate(*, model_ref: str | Sequence[str], inputs: Sequence[str], evaluation: str, shard_index: int,
             shard_count: int = 1, ensemble: str | None = None, skip: int = 0, limit: int | None = None,
             chunk_rows: int = DEFAULT_CHUNK_ROWS, stripe_rows: int = STRIPE_ROWS,
             model_threads: int | None = None, scoring_threads: int = SCORING_THREADS,
             progress_seconds: float = 10.0, heartbeat_seconds: float | None = None,
             precision: str = "auto", allow_bf16: bool = False,
             store_uri: str | None = None, database: str = DEFAULT_DATABASE,
             namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
    """Score one shard (`scoring.evaluate_shard`), upsert its result; return it without histograms."""
    with open_store(store_uri, database, namespace=namespace) as store:
        result = evaluate_shard(
            store, model_ref=model_ref, ensemble=ensemble, inputs=inputs, evaluation=evaluation,
            shard_index=shard_index, shard_count=shard_count, skip=skip, limit=limit, chunk_rows=chunk_rows,
            stripe_rows=stripe_rows, model_threads=model_threads, scoring_threads=scoring_threads,
            progress_seconds=progress_seconds, heartbeat_seconds=heartbeat_seconds, precision=precision,
            allow_bf16=allow_bf16)
    return summary(result)


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The shard result without its histograms (what `evaluate` prints)."""
    rows = result["rows"]
    out = {k: v for k, v in result.items() if k not in ("histogram", "inputs")}
    if "models" in result:
        out["models"] = [{k: v for k, v in m.items() if k != "histogram"} for m in result["models"]]
    out["accuracy"] = result["correct"] / rows if rows else None
    out["log_loss"] = result["log_loss_sum"] / rows if rows else None
    out["inputs"] = len(result["inputs"])
    return out
