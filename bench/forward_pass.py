"""The evaluator's limit: the forward pass alone over the same chunks, the data already in memory.

    MONGODB_URI=URI python bench/forward_pass.py --model REF --chunk-rows N --data FILES... [--precision bf16]

A fresh process, set up as one evaluator shard is (the same thread settings, scorer, chunking,
tally and scoring threads), that first reads every chunk of the data into memory, then times only
the scoring and tallying. Prints one JSON line: rows, seconds, rows_per_second, and what each half
costs per row: read_cpu_s and read_wall_s (reading, decoding, validating and chunking, as the
shard's reader thread does; pyarrow decompresses ahead in a thread of its own, so CPU can exceed
wall) and score_cpu_s (the model calls and tallies). bench_evaluate.py divides a shard's rows/s by
rows_per_second, and from the per-row costs works out the best ratio these cores allow.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "images", "pipeline"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import process_cpu_seconds  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default=os.environ.get("MONGODB_URI"), required=not os.environ.get("MONGODB_URI"),
                   help="model store (env MONGODB_URI, as bench_evaluate.py passes it)")
    p.add_argument("--model", required=True)
    p.add_argument("--chunk-rows", type=int, required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="what the model computes in, as `evaluate --precision` makes it (default %(default)s)")
    args = p.parse_args()

    from susy_pipeline import precision, scoring, shards
    from susy_pipeline.cpus import configure_threads
    from susy_pipeline.evaluation import HISTOGRAM_BINS
    from susy_pipeline.model import model_from_bytes
    from susy_pipeline.store import open_store

    paths = shards.resolve_inputs(args.data)
    configure_threads(scoring.default_model_threads(paths))
    with open_store(args.store) as store:
        _, blob = store.load_model(args.model)
    score = scoring.make_scorer(precision.with_precision(model_from_bytes(blob), args.precision), args.chunk_rows)
    cpu, wall = process_cpu_seconds(), time.perf_counter()
    chunks = list(scoring.iter_chunks(shards.plan_shard(paths, 0, 1), args.chunk_rows))
    read_cpu, read_wall = process_cpu_seconds() - cpu, time.perf_counter() - wall
    scoring._score_chunks(iter(chunks[:4]), score, HISTOGRAM_BINS, lambda rows: None, math.inf,  # warm-up
                          workers=scoring.SCORING_THREADS)
    cpu, started = process_cpu_seconds(), time.monotonic()
    tally = scoring._score_chunks(iter(chunks), score, HISTOGRAM_BINS, lambda rows: None, math.inf,
                                  workers=scoring.SCORING_THREADS)
    seconds, score_cpu = time.monotonic() - started, process_cpu_seconds() - cpu
    rows = tally.rows
    print(json.dumps({"rows": rows, "seconds": seconds, "rows_per_second": rows / seconds,
                      "read_cpu_s": read_cpu / rows, "read_wall_s": read_wall / rows,
                      "score_cpu_s": score_cpu / rows}))



if __name__ == "__main__":
    main()
