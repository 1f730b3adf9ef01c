"""What evaluator heartbeats cost: a shard's rows/s with and without them, in one run.

    .venv/bin/python bench/bench_heartbeats.py [--times 300] [--repeats 5] [--every 1] [--quick]

A heartbeat is one store write per shard every `--every` seconds (susy_pipeline/heartbeat.py),
from its own thread. This script runs one evaluator shard (`python -m susy_pipeline evaluate`, as
the operator runs it) over the scaled sample, Parquet (the fastest format, so the one a fixed cost
shows most in), alternately with `--heartbeat-seconds 0` (none) and `--every`, `--repeats` times
each, and prints the median rows/s of each, their ratio (target >= 0.98), and the store writes per
shard per minute while it streams. The shard must stream for several intervals (x300, 3 million
rows, is a few seconds here, hence an interval of 1 s against the 5 s default: five times the
writes, so the cost shown is an upper bound). The store is the embedded one (SQLite) unless `--store` names another. Run it on
a quiet machine: other processes on the same cores move every figure more than heartbeats do.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_evaluate import prepare_store_and_model, scaled  # noqa: E402
from common import ROOT, add_shard_options, cpu_model  # noqa: E402

TARGET_RATIO = 0.98


def run_shard(args, paths, evaluation: str, every: float) -> dict:
    cmd = [sys.executable, "-m", "susy_pipeline", "evaluate", "--model", args.model, "--store", args.store,
           "--data", *paths, "--evaluation", evaluation, "--shard-index", "0", "--shard-count", "1",
           "--chunk-rows", str(args.chunk_rows), "--heartbeat-seconds", str(every)]
    env = {**os.environ, "SUSY_PROGRESS": "log"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        sys.exit(f"shard failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shard_options(p, files_help="Parquet files the shard reads", repeats_help="runs of each setting")
    p.set_defaults(times=300, repeats=5)
    p.add_argument("--every", type=float, default=1.0, help="heartbeat interval in seconds (default %(default)s)")
    args = p.parse_args()
    if args.quick:
        args.times, args.repeats = 2, 1
    prepare_store_and_model(args)
    paths = scaled(args.work, args.times, args.files)["parquet"]
    stamp = time.strftime("%Y%m%d%H%M%S")
    without, with_beats, writes_per_minute = [], [], []
    for r in range(args.repeats):  # interleaved: a busy minute hits both settings
        without.append(run_shard(args, paths, f"beats-{stamp}-off-{r}", 0)["rows_per_second"])
        shard = run_shard(args, paths, f"beats-{stamp}-on-{r}", args.every)
        with_beats.append(shard["rows_per_second"])
        # The periodic writes while streaming (the first, at 0 rows, is before the clock starts).
        writes_per_minute.append((shard["heartbeats_written"] - 1) / (shard["seconds"] / 60))
    off, on = statistics.median(without), statistics.median(with_beats)
    ratio = on / off
    print(f"# CPU: {cpu_model()}; {len(os.sched_getaffinity(0))} CPUs; Parquet x{args.times} "
          f"({args.times * 10_000:,} rows) in {args.files} file(s); {args.repeats} runs each, medians")
    print("| heartbeats | rows/s | store writes per shard per minute |")
    print("|---|---:|---:|")
    print(f"| none | {off:,.0f} | 0 |")
    print(f"| every {args.every:g} s | {on:,.0f} | {statistics.median(writes_per_minute):.1f} |")
    print(f"\nratio with/without: {ratio:.3f} (target >= {TARGET_RATIO}); each run: "
          f"{', '.join(f'{b / a:.3f}' for a, b in zip(without, with_beats))}")


if __name__ == "__main__":
    main()
