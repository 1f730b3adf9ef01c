"""Benchmark one evaluator shard reading Parquet from `s3://` against the same files on local disk.

    .venv/bin/python bench/bench_object_storage.py [--times 15] [--files 2] [--repeats 3] [--quick]

Absolute rows/s do not transfer between machines (issue 14), so this reports a
ratio measured in one run: one shard's rows/s over `s3://` (moto's S3 server on
loopback, from `make tools`) divided by the same shard's rows/s over the same
Parquet files on local disk. Local and `s3://` runs alternate, `--repeats`
pairs, so a slow minute hits both sides; the ratio printed is the median of
the pairs' ratios. Target: >= 0.7.

Each shard is a process as the operator runs it (`python -m susy_pipeline
evaluate`); rows/s is its own figure (rows / seconds streaming and scoring,
after the model is loaded). The shards score the files' rows with the same
model, so their totals must be equal, and the table says whether they are.

What the ratio includes: moto is a Python server on the same cores as the
shard, so its CPU time (serving each ranged GET) competes with the shard's;
against a store on other machines the ratio can only be higher for the same
network bandwidth. It needs `.venv/opt/moto` (`make tools`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "images", "pipeline"))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # support.moto: the tests' moto server

from bench_evaluate import prepare_store_and_model, run_shards, scaled  # noqa: E402
from common import add_shard_options, cpu_model  # noqa: E402

TARGET_RATIO = 0.7
BUCKET = "bench"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shard_options(p, files_help="Parquet files", repeats_help="local/s3 pairs; the median ratio is printed")
    args = p.parse_args()
    if args.quick:
        args.times, args.repeats = 2, 1

    import pyarrow.fs as pafs
    from support.moto import CREDENTIALS, MotoServer, moto_missing

    if reason := moto_missing():
        sys.exit(reason)
    prepare_store_and_model(args)
    local = scaled(args.work, args.times, args.files)["parquet"]

    moto = MotoServer(_workdir(args.work))
    try:
        moto.create_bucket(BUCKET)
        s3 = pafs.S3FileSystem(access_key="test", secret_key="test", region="us-east-1",
                               endpoint_override=moto.url)
        remote = []
        for path in local:
            key = f"{BUCKET}/x{args.times}/{os.path.basename(path)}"
            pafs.copy_files(path, key, destination_filesystem=s3)
            remote.append(f"s3://{key}")
        os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=moto.url)  # the shards' environment
        stamp = time.strftime("%Y%m%d%H%M%S")
        pairs = []
        for r in range(args.repeats):
            a = run_shards(args, local, f"bench-s3-{stamp}-local-{r}", 1)[0]
            b = run_shards(args, remote, f"bench-s3-{stamp}-s3-{r}", 1)[0]
            pairs.append((a, b))
    finally:
        moto.stop()

    ratios = [b["rows_per_second"] / a["rows_per_second"] for a, b in pairs]
    ratio = statistics.median(ratios)
    a_med = statistics.median(a["rows_per_second"] for a, _ in pairs)
    b_med = statistics.median(b["rows_per_second"] for _, b in pairs)
    same = all(a["correct"] == b["correct"] and a["log_loss_units"] == b["log_loss_units"] for a, b in pairs)
    size = sum(os.path.getsize(p) for p in local)
    fetched = statistics.median(b["remote_bytes_read"] for _, b in pairs)
    rows = pairs[0][0]["rows"]
    print(f"\n## Evaluator from s3:// (moto on loopback) against local disk: {rows:,} rows "
          f"(sample test rows x{args.times}, {args.files} Parquet files), one shard, "
          f"{len(os.sched_getaffinity(0))} cores, CPU: {cpu_model()}, {args.repeats} interleaved pairs\n")
    print("| measure | local | s3:// | ratio s3/local | target |")
    print("|---|---|---|---|---|")
    print(f"| one shard, Parquet: rows/s (median) | {a_med:,.0f} | {b_med:,.0f} | "
          f"{ratio:.2f} (pairs: {', '.join(f'{x:.2f}' for x in ratios)}) | >= {TARGET_RATIO} "
          f"{'ok' if ratio >= TARGET_RATIO else 'MISSED'} |")
    print(f"| bytes fetched from object storage | 0 | {fetched:,.0f} of {size:,} | "
          f"{fetched / size:.3f} | about 1 (one shard reads everything) |")
    print(f"\nTotals equal local and s3:// in every pair: {same}.")


def _workdir(base: str):
    from pathlib import Path

    path = Path(base) / "moto"
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    main()
