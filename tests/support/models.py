"""A small real model for the evaluator tests: trained one epoch on the sample's training rows."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "susy-sample.csv.gz"


def small_model_in_store(store_uri: str, run: str, hidden: tuple[int, ...] = (32, 16), *,
                         namespace: str = "local"):
    """Train a small model of the project's builder on the sample's training rows (one epoch), save
    it to the store at `store_uri` under `run` in `namespace`; (its id, the Keras model)."""
    import numpy as np

    from susy_pipeline import data
    from susy_pipeline.cpus import configure_threads
    from susy_pipeline.model import ModelConfig, build_model, model_to_bytes
    from susy_pipeline.schema import SAMPLE_TRAIN_ROWS
    from susy_pipeline.store import open_store

    configure_threads(2)  # as a shard does, before TensorFlow starts (if it has not yet)
    batches = list(data.iter_batches(SAMPLE, limit=SAMPLE_TRAIN_ROWS))
    x = np.concatenate([b.features for b in batches])
    y = np.concatenate([b.labels for b in batches])
    model = build_model(ModelConfig(hidden=hidden), mean=x.mean(0), variance=x.var(0))
    model.fit(x, y, epochs=1, batch_size=512, verbose=0)
    with open_store(store_uri, namespace=namespace) as store:
        return store.save_model({"run": run}, model_to_bytes(model)), model
