"""Pod stand-ins that write what the real stages write, through the same store functions, without
Kafka or TensorFlow: for the load test and the fast fault tests of the operator's own logic.

The real stages are exercised by tests/test_operator_e2e.py. Here:
- `produce` writes a production record (`store.put_production`) shaped like contracts.md §1;
- `train` saves a model record (`store.save_model`) for the run;
- `evaluate` tallies deterministic pseudo-scores for its shard with the evaluator's own
  `ShardTally` (several `--model`s and `--ensemble`: `ModelTallies`, one score array per model)
  and upserts it with `store.put_shard_result`, the function the evaluator uses.
"""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from susy_pipeline import evaluation, store as store_lib
from susy_pipeline.model import RECIPES

ROWS_PER_SHARD = 1000


def _args(command: list[str]) -> dict[str, Any]:
    """--flag value pairs of a pipeline command line (repeated --data collects a list)."""
    result: dict[str, Any] = {"command": command[3]}
    key = None
    for token in command[4:]:
        if token.startswith("--"):
            key = token[2:]
            result.setdefault(key, [])
        elif key is not None:
            result[key].append(token)
    return {k: (v[0] if isinstance(v, list) and len(v) == 1 and k != "data" else v) for k, v in result.items()}


def shard_result(evaluation_name: str, model_id: str, index: int, shard_count: int) -> dict[str, Any]:
    """What an evaluator pod would upsert for shard `index`: exact integer tallies."""
    rng = np.random.default_rng(index)
    labels = rng.integers(0, 2, ROWS_PER_SHARD)
    scores = np.clip(labels * 0.35 + rng.random(ROWS_PER_SHARD) * 0.65, 0.0, 1.0)
    tally = evaluation.ShardTally()
    tally.add(labels, scores)
    return {"evaluation": evaluation_name, "shard_index": index, "shard_count": shard_count,
            "model_id": model_id, "plan_id": f"fake-{shard_count}", **tally.counts(),
            "seconds": 0.01, "rows_per_second": ROWS_PER_SHARD / 0.01, "inputs": []}


def models_shard_result(evaluation_name: str, refs: list[str], ids: list[str], index: int, shard_count: int,
                        ensemble: str | None = None) -> dict[str, Any]:
    """What an evaluator pod scoring several models (`evaluate --model A --model B [--ensemble
    mean]`) would upsert: per distinct model its own pseudo-scores on the same rows (model k a
    little sharper than model k-1), tallied as the evaluator tallies them (`ModelTallies`)."""
    rng = np.random.default_rng(index)
    labels = rng.integers(0, 2, ROWS_PER_SHARD)
    noise = rng.random(ROWS_PER_SHARD)
    distinct = list(dict.fromkeys(ids))
    scores = [np.clip(labels * (0.25 + 0.1 * k) + noise * (0.75 - 0.1 * k), 0.0, 1.0) for k in range(len(distinct))]
    tallies = evaluation.ModelTallies(len(distinct), ensemble)
    tallies.add(labels, scores)
    entries = [{"name": ref, "model_ref": ref, "model_id": i, **tallies.tallies[distinct.index(i)].counts()}
               for ref, i in zip(refs, ids)]
    if ensemble:
        entries.append({"name": "ensemble", "model_ref": "ensemble", "model_id": None, "ensemble": ensemble,
                        "members": distinct, **tallies.tallies[-1].counts()})
    return {"evaluation": evaluation_name, "shard_index": index, "shard_count": shard_count,
            "model_id": ids[0], "model_ref": refs[0], "plan_id": f"fake-{shard_count}",
            **tallies.tallies[0].counts(), "models": entries, "ensemble": ensemble,
            "seconds": 0.01, "rows_per_second": ROWS_PER_SHARD / 0.01, "inputs": []}


def expected_totals(shard_count: int) -> dict[str, Any]:
    return evaluation.aggregate([shard_result("x", "m", i, shard_count) for i in range(shard_count)], shard_count)


def _run(job: dict[str, Any], index: int, env: dict[str, str]) -> int:
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    args = _args(command)
    store = store_lib.open_store(env["MONGODB_URI"], env.get("SUSY_DATABASE", "bigdata"),
                                 namespace=env["SUSY_NAMESPACE"])
    try:
        if args["command"] == "produce":
            partitions = int(args["partitions"])
            limit = int(args["limit"])
            per = limit // partitions
            store.put_production(args["run-name"], {
                "topic": args["topic"], "rows": limit, "rows_per_message": 1,
                "partitions": {str(p): [0, per + (limit - per * partitions if p == 0 else 0)]
                               for p in range(partitions)},
                "feature_mean": [0.0] * 18, "feature_std": [1.0] * 18})
        elif args["command"] == "train":
            # As the trainer: a warm start takes the parent's recipe and records the parent.
            parent = store.resolve_model(args["warm-start"]) if args.get("warm-start") else None
            recipe = args.get("recipe") or (parent or {}).get("recipe") or "tuned"
            store.save_model({"run": args["run-name"], "recipe": recipe,
                              "hyperparameters": RECIPES[recipe].to_dict(),
                              "parent_model_id": parent["model_id"] if parent else None}, b"not a real model")
        elif args["command"] == "evaluate" and isinstance(args["model"], list):  # several --model
            refs = args["model"]
            ids = [store.resolve_model(ref)["model_id"] for ref in refs]
            store.put_shard_result(args["evaluation"], index, models_shard_result(
                args["evaluation"], refs, ids, index, int(args["shard-count"]), args.get("ensemble")))
        elif args["command"] == "evaluate":
            model = store.resolve_model(args["model"])
            store.put_shard_result(args["evaluation"], index, shard_result(
                args["evaluation"], model["model_id"], index, int(args["shard-count"])))
        else:
            return 1
    finally:
        store.close()
    return 0


async def executor(job: dict[str, Any], index: int, env: dict[str, str]) -> int:
    return await asyncio.to_thread(_run, job, index, env)
