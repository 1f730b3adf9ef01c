"""Benchmark several models in one evaluator pass against one pass per model.

    .venv/bin/python bench/bench_models.py [--times 50] [--repeats 1] [--quick]

k models scored by one shard (`evaluate --model A --model B ...`) read and
decode the rows once; k one-model shards read them k times. For k = 1, 2
and 4 (models of the tuned architecture, one epoch each from different
seeds), from Parquet and from CSV.gz (the sample's test rows x`--times`, one
file), this runs one `python -m susy_pipeline evaluate` process per pass, as
the operator runs a shard, and prints:

- one k-model pass: seconds streaming (after start-up), rows/s (rows / those
  seconds: rows read, each scored by k models), and the split: read + decode
  seconds (the reader thread, counted once) and model seconds (the k models'
  calls, summed over the scoring threads, which overlap the reader);
- k one-model passes over the same data, one after another: the sum of their
  streaming seconds and of their read + decode seconds (paid k times), and
  their wall time with start-up against the one pass's;
- the one pass's ensemble (`--ensemble mean`) at k = 4.

Each figure is the median of `--repeats` runs, every configuration run once per
repeat in turn. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "images", "pipeline"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from bench_evaluate import scaled  # noqa: E402
from common import cpu_model, store_env  # noqa: E402

KS = (1, 2, 4)


def train_models(store_uri: str, count: int) -> list[str]:
    """`count` models of the tuned architecture, one epoch each on the sample's train rows, seeds 1.."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from susy_pipeline import data
    from susy_pipeline.model import ModelConfig, build_model, model_to_bytes
    from susy_pipeline.schema import SAMPLE_TRAIN_ROWS
    from susy_pipeline.store import open_store

    batches = list(data.iter_batches(os.path.join(ROOT, "data", "susy-sample.csv.gz"), limit=SAMPLE_TRAIN_ROWS))
    x = np.concatenate([b.features for b in batches])
    y = np.concatenate([b.labels for b in batches])
    ids = []
    with open_store(store_uri) as store:
        for seed in range(1, count + 1):
            keras.utils.set_random_seed(seed)
            model = build_model(ModelConfig(), mean=x.mean(0), variance=x.var(0))
            model.fit(x, y, epochs=1, batch_size=256, verbose=0)
            ids.append(store.save_model({"run": f"bench-models-{seed}"}, model_to_bytes(model)))
    return ids


def one_pass(args, paths: list[str], models: list[str], evaluation: str, ensemble: bool = False) -> dict:
    """One shard process scoring `models`; its summary plus `wall` (seconds with start-up)."""
    cmd = [sys.executable, "-m", "susy_pipeline", "evaluate", *[a for m in models for a in ("--model", m)],
           *(["--ensemble", "mean"] if ensemble else []), "--data", *paths,
           "--evaluation", evaluation, "--shard-index", "0", "--shard-count", "1",
           "--chunk-rows", str(args.chunk_rows)]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=store_env(args.store))
    if done.returncode != 0:
        sys.exit(f"evaluate failed ({done.returncode}): {done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall": time.monotonic() - started}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--times", type=int, default=50, help="scale factor of the test rows (default %(default)s)")
    p.add_argument("--chunk-rows", type=int, default=16_384)
    p.add_argument("--repeats", type=int, default=1, help="runs per figure, the median printed (default %(default)s)")
    p.add_argument("--work", default=os.path.join(ROOT, ".susy", "bench-models"))
    p.add_argument("--quick", action="store_true", help="--times 2: check that the script works")
    args = p.parse_args()
    if args.quick:
        args.times, args.repeats = 2, 1
    os.makedirs(args.work, exist_ok=True)
    args.store = f"sqlite:///{os.path.join(args.work, 'store.sqlite3')}"
    t = time.monotonic()
    models = train_models(args.store, max(KS))
    print(f"# trained {len(models)} models in {time.monotonic() - t:.1f} s", file=sys.stderr)
    data = scaled(args.work, args.times, 1)
    stamp = time.strftime("%Y%m%d%H%M%S")

    def median(runs: list[dict]) -> dict:
        return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]

    table = []
    for fmt in ("parquet", "csv.gz"):
        # Interleaved: each repeat runs every configuration once, so a busy minute hits all of them.
        runs: dict[str, list[dict]] = {}
        for r in range(args.repeats):
            for j, m in enumerate(models):
                runs.setdefault(f"single{j}", []).append(one_pass(args, data[fmt], [m], f"bm-{stamp}-{fmt}-s{j}-{r}"))
            for k in KS[1:]:
                runs.setdefault(f"k{k}", []).append(one_pass(args, data[fmt], models[:k], f"bm-{stamp}-{fmt}-k{k}-{r}"))
            runs.setdefault("ensemble", []).append(
                one_pass(args, data[fmt], models, f"bm-{stamp}-{fmt}-ens-{r}", ensemble=True))
        singles = [median(runs[f"single{j}"]) for j in range(len(models))]
        for k in KS:
            table.append((fmt, k, singles[0] if k == 1 else median(runs[f"k{k}"]), singles[:k], False))
        table.append((fmt, len(models), median(runs["ensemble"]), singles, True))

    rows = table[0][2]["rows"]
    cpus = len(os.sched_getaffinity(0))
    print(f"\n## Several models in one pass: {rows:,} rows (sample test rows x{args.times}, one file), "
          f"one shard on {cpus} cores ({cpu_model()}), chunk {args.chunk_rows:,}, median of {args.repeats}\n")
    print("| format | models | one pass: s (rows/s) | its read + decode s, once | its model s | "
          "k one-model passes: s | their read + decode s | one pass vs k passes | wall with start-up: one vs k |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fmt, k, multi, singles, ens in table:
        k_seconds = sum(s["seconds"] for s in singles)
        k_read = sum(s["read_seconds"] for s in singles)
        k_wall = sum(s["wall"] for s in singles)
        label = f"{k} + ensemble" if ens else str(k)
        print(f"| {fmt} | {label} | {multi['seconds']:.2f} ({multi['rows_per_second']:,.0f}) | "
              f"{multi['read_seconds']:.2f} | {multi['score_seconds']:.2f} | {k_seconds:.2f} | {k_read:.2f} | "
              f"{k_seconds / multi['seconds']:.2f}x faster | {multi['wall']:.1f} s vs {k_wall:.1f} s |")
    exact = all(m["models"][j]["correct"] == s["correct"] and m["models"][j]["log_loss_units"] == s["log_loss_units"]
                for _, k, m, singles, _ in table if k > 1 for j, s in enumerate(singles))
    print(f"\nEvery model's totals in a k-model pass equal its one-model pass's: {exact}. "
          "Model seconds are summed over the scoring threads, which run beside the reader, so read + "
          "model can exceed the pass.")


if __name__ == "__main__":
    main()
