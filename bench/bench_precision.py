"""Benchmark an evaluator shard in bf16 against fp32 (issue 24 item 4).

    .venv/bin/python bench/bench_precision.py [--times 15] [--files 2] [--repeats 3] [--quick]

On the sample's test rows repeated `--times` times as Parquet (`scale`), with a model of the
tuned architecture trained for one epoch (or `--model` from `--store`), for each precision (fp32,
bf16: `evaluate --precision`):

1. one shard, all cores: rows/s, against the forward pass alone over the same chunks in memory in
   the same precision (forward_pass.py --precision; target >= 0.85), with the best ratio these
   cores allow (bench_evaluate.ceiling) beside it;
2. bf16's rows/s against fp32's (no fixed target: it depends on AMX or AVX512-BF16, whose flags
   the table prints);
3. the AUC on the sample's 10,000 held-out rows, the same weights computed in fp32 and in bf16,
   and how many labels flip at 0.5.

Each figure is the median of `--repeats` runs, fp32 and bf16 interleaved. Run it on a quiet
machine; `--quick` (x2, one repeat) only checks that the script works.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "images", "pipeline"))

from bench_evaluate import (TARGET_VS_FORWARD, ceiling, forward_pass, prepare_store_and_model, run_shards,  # noqa: E402
                            scaled, target_verdict)
from common import add_shard_options, cpu_model  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def holdout_aucs(store_uri: str, model_ref: str) -> dict[str, float]:
    """The sample's held-out rows scored by the same weights in fp32 and bf16: AUCs, labels flipped."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from susy_pipeline import data, precision
    from susy_pipeline.model import model_from_bytes
    from susy_pipeline.schema import SAMPLE_TRAIN_ROWS
    from susy_pipeline.store import open_store
    from susy_pipeline.training import roc_auc

    with open_store(store_uri) as store:
        _, blob = store.load_model(model_ref)
    model = model_from_bytes(blob)
    batches = list(data.iter_batches(os.path.join(ROOT, "data", "susy-sample.csv.gz"), skip=SAMPLE_TRAIN_ROWS))
    x = np.concatenate([b.features for b in batches])
    y = np.concatenate([b.labels for b in batches])
    scores = {p: precision.with_precision(model, p).predict(x, batch_size=16_384, verbose=0).ravel()
              for p in PRECISIONS}
    return {"auc_fp32": roc_auc(y, scores["fp32"]), "auc_bf16": roc_auc(y, scores["bf16"]),
            "mean_abs_difference": float(np.abs(scores["fp32"] - scores["bf16"]).mean()),
            "flipped": int(((scores["fp32"] > 0.5) != (scores["bf16"] > 0.5)).sum()), "rows": int(len(y))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shard_options(p, files_help="Parquet files (one shard reads them all)",
                      repeats_help="runs per figure; the median is printed")
    args = p.parse_args()
    if args.quick:
        args.times, args.repeats = 2, 1
    prepare_store_and_model(args)
    paths = scaled(args.work, args.times, args.files)["parquet"]
    cpus = len(os.sched_getaffinity(0))
    from susy_pipeline.precision import cpu_flags, has_native_bf16

    flags = sorted(cpu_flags() & {"amx_bf16", "amx_tile", "avx512_bf16"})
    shard, forward, ratios, ceilings = {q: [] for q in PRECISIONS}, {q: [] for q in PRECISIONS}, \
        {q: [] for q in PRECISIONS}, {q: [] for q in PRECISIONS}
    stamp = time.strftime("%Y%m%d%H%M%S")
    for r in range(args.repeats):
        for q in PRECISIONS:  # interleaved, so a slow minute hits both
            args.precision = q
            fw = forward_pass(args, paths)
            (one,) = run_shards(args, paths, f"bench-precision-{q}-{stamp}-{r}", 1)
            if one.get("precision") != q:
                sys.exit(f"the shard computed in {one.get('precision')}, not {q}")
            shard[q].append(one["rows_per_second"])
            forward[q].append(fw["rows_per_second"])
            ratios[q].append(one["rows_per_second"] / fw["rows_per_second"])
            ceilings[q].append(ceiling(fw, cpus))
    aucs = holdout_aucs(args.store, args.model)
    rows = one["rows"]
    target = TARGET_VS_FORWARD["parquet"]
    print(f"\nOne Parquet shard, {rows:,} rows, fp32 and bf16, median of {args.repeats} ({cpus} cores, "
          f"{cpu_model()}; bf16 flags: {', '.join(flags) or 'none'}: "
          f"{'native' if has_native_bf16(flags) else 'emulated'})\n")
    print("| what | shard | forward pass alone | ratio | target |")
    print("|---|---|---|---|---|")
    for q in PRECISIONS:
        ratio, best = statistics.median(ratios[q]), statistics.median(ceilings[q])
        shown, verdict = target_verdict(ratio, target, best)
        print(f"| shard vs forward pass, {q} | {statistics.median(shard[q]):,.0f} rows/s | "
              f"{statistics.median(forward[q]):,.0f} rows/s | {ratio:.2f} (ceiling on {cpus} cores: {best:.2f}, "
              f"so {ratio / best:.0%} of it) | {shown} {verdict} |")
    speedup = statistics.median(b / f for b, f in zip(shard["bf16"], shard["fp32"]))
    forward_speedup = statistics.median(b / f for b, f in zip(forward["bf16"], forward["fp32"]))
    print(f"| bf16 vs fp32, shard rows/s | {statistics.median(shard['bf16']):,.0f} | "
          f"{statistics.median(shard['fp32']):,.0f} | {speedup:.2f}x (forward pass alone: {forward_speedup:.2f}x) | "
          "reported, no target |")
    print(f"\nThe sample's {aucs['rows']:,} held-out rows, the same weights: AUC fp32 {aucs['auc_fp32']:.6f}, "
          f"bf16 {aucs['auc_bf16']:.6f} (difference {aucs['auc_bf16'] - aucs['auc_fp32']:+.6f}); mean |p32 - p16| "
          f"{aucs['mean_abs_difference']:.2e}; {aucs['flipped']} labels flipped at 0.5")


if __name__ == "__main__":
    main()
