"""Training on the real sample: decode, model shape, store round trip, and the full
produce -> Kafka -> train -> store path with real TensorFlow.

Split (data/README.md): rows 0-10978 train, rows 10979-20978 are UCI test rows.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from susy_pipeline.data import iter_batches
from susy_pipeline.decode import decode_batch
from susy_pipeline.kafka_io import message_batches
from susy_pipeline.model import RECIPES, SEED_RECIPE, build_model, model_from_bytes, model_to_bytes, \
    trainable_params, with_overrides
from susy_pipeline.schema import SAMPLE_TRAIN_ROWS
from susy_pipeline.store import open_store
from susy_pipeline.training import StreamMismatch, train


def test_decode_one_and_several_rows_per_message():
    one = ",".join(["1.5"] * 18)
    two = "\n".join([",".join(["2"] * 18), ",".join(["-3e-1"] * 18)])
    features, labels = decode_batch(tf.constant([b"1", b"0,1"]), tf.constant([one.encode(), two.encode()]))
    np.testing.assert_array_equal(labels.numpy().ravel(), [1, 0, 1])
    np.testing.assert_allclose(features.numpy()[:, 0], [1.5, 2.0, -0.3], rtol=1e-7)
    assert features.shape == (3, 18)


@pytest.mark.parametrize("keys,values,message", [
    ([b"1"], [b"1,2,3"], "does not have 18 features"),
    ([b"1,0"], [",".join(["1"] * 18).encode()], "labels in a message key do not match"),
])
def test_decode_rejects_malformed_messages(keys, values, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        decode_batch(tf.constant(keys), tf.constant(values))


def test_seed_model_has_68481_parameters():
    assert trainable_params(build_model(SEED_RECIPE.model)) == 68_481
    tuned = build_model(RECIPES["tuned"].model, mean=np.zeros(18), variance=np.ones(18))
    assert trainable_params(tuned) == 68_481  # normalization adds only non-trainable statistics


def in_memory_source(sample, rows, per_message=1):
    """The producer's messages, handed to the trainer without a broker (unit level)."""
    messages = list(message_batches(iter_batches(sample, limit=rows, keep_text=True), per_message))

    def source():
        for keys, values, _ in messages:
            yield np.array(keys, dtype=object), np.array(values, dtype=object)
    return source


def test_model_round_trips_through_the_store(sample, store_path):
    config = with_overrides(RECIPES["tuned"], epochs=1)
    model, facts = train(in_memory_source(sample, 2000, per_message=10), config, expected_rows=2000)
    assert facts["rows"] == 2000 and facts["validation_rows"] == 400
    with open_store(store_path) as store:
        model_id = store.save_model({"run": "rt", **facts}, model_to_bytes(model))
        meta, blob = store.load_model(model_id)
    loaded = model_from_bytes(blob)
    assert meta["rows"] == 2000
    for before, after in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(before, after)  # normalization statistics included
    x = next(iter(iter_batches(sample, skip=SAMPLE_TRAIN_ROWS, limit=1000))).features
    np.testing.assert_array_equal(model(x, training=False).numpy(), loaded(x, training=False).numpy())


def test_trainer_refuses_a_stream_shorter_than_recorded(sample):
    with pytest.raises(StreamMismatch, match="recorded 600 rows but the stream held 500"):
        train(in_memory_source(sample, 500), with_overrides(RECIPES["tuned"], epochs=1), expected_rows=600)


def run_cli(*args, env=None):
    done = subprocess.run([sys.executable, "-m", "susy_pipeline", *args], capture_output=True, text=True,
                          timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_tfio_reader_trains_end_to_end(kafka_broker, store_path):
    """The production reader, through the real commands (tansu-only librdkafka settings)."""
    from conftest import TFIO_TANSU_SETTINGS

    common = ["--bootstrap", kafka_broker, "--topic", "tfio-train", "--store", store_path,
              "--run-name", "tfio-run"]
    run_cli("produce", "--limit", "3000", "--rows-per-message", "20", "--partitions", "2", *common)
    settings = [arg for s in TFIO_TANSU_SETTINGS for arg in ("--librdkafka", s)]
    trained = run_cli("train", "--reader", "tfio", "--recipe", "seed", "--batch-size", "256", *common, *settings)
    assert trained["rows"] == 3000 and trained["reader"] == "tfio" and trained["epochs_run"] == 1
    with open_store(store_path) as store:
        assert store.resolve_model("latest:tfio-run")["model_id"] == trained["model_id"]


@pytest.mark.integration
def test_trained_from_kafka_on_the_train_rows_reaches_auc_0866_on_the_uci_test_rows(kafka_broker, store_path,
                                                                                    sample):
    from sklearn.metrics import roc_auc_score

    common = ["--bootstrap", kafka_broker, "--topic", "auc-train", "--store", store_path, "--run-name", "auc"]
    produced = run_cli("produce", "--limit", str(SAMPLE_TRAIN_ROWS), *common)
    assert produced["rows"] == SAMPLE_TRAIN_ROWS
    trained = run_cli("train", "--reader", "kafka-python", *common)
    assert trained["rows"] == SAMPLE_TRAIN_ROWS
    assert trained["lineage"]["partitions"] == produced["partitions"]
    with open_store(store_path) as store:
        meta, blob = store.load_model("latest:auc")
    assert meta["model_id"] == trained["model_id"] and meta["hyperparameters"]["model"]["normalize"]
    batches = list(iter_batches(sample, skip=SAMPLE_TRAIN_ROWS))
    x = np.concatenate([b.features for b in batches])
    y = np.concatenate([b.labels for b in batches])
    scores = model_from_bytes(blob)(x, training=False).numpy().ravel()
    auc = roc_auc_score(y, scores)
    print(f"test AUC {auc:.4f} after {trained['epochs_run']} epochs")
    assert auc >= 0.866
