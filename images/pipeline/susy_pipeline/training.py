"""Training from a Kafka stream: raw message batches -> tf.data -> Keras.

The shape follows the tf.data guide: source, one vectorized decode per window
of rows, shuffle, batch, prefetch. Each epoch reads the topic again between the recorded offsets
(`from_generator` calls the reader anew), so nothing unbounded is cached.

Before training, one pass over the stream computes the standardization
statistics (float64 sums over the training rows) and keeps every
`validation_every`-th row aside for early stopping. Those statistics go into
the model's Normalization layer, so they are saved with it.
"""
from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from .cpus import all_but_one, configure_threads
from .decode import decode_batch
from . import precision as precision_lib
from .kafka_io import RawBatch
from .model import TrainConfig, build_model, compile_model, trainable_params
from .progress import Progress, bars_wanted
from .schema import N_FEATURES

log = logging.getLogger(__name__)

RawSource = Callable[[], Iterator[RawBatch]]
_RAW_SPEC = (tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string))


def use_training_threads(model_threads: int | None = None) -> None:
    """Intra-op threads for the training step: `model_threads`, or the CPUs less one.

    Call before TensorFlow runs its first op. Measured on 2 cores at batch 256:
    one model thread beside the input pipeline (Kafka reads, decoding) trained
    an epoch in ~1.6 s, two model threads contending with it in ~1.7-1.9 s.
    """
    configure_threads(model_threads or all_but_one())


def freeze_heap() -> None:
    """Leave every object alive now (TensorFlow's and Keras's, about 400,000 once imported) out
    of later garbage collections (gc.freeze).

    With them in, one full collection took about 0.2 s on 2 cores, and a read of 90,000 one-row
    messages (a Python object each, from confluent-kafka or kafka-python) set one off in most
    epochs: the input pipeline stopped for 0.2 s of a 0.5 s epoch (bench/bench_kafka.py). The
    garbage there is first collected, so none is kept; reference counting still frees what is
    frozen when its last reference goes, but a reference cycle among frozen objects that becomes
    garbage later stays: nothing in a trainer process (one `train`), a little in a process that
    trains many times (the tests, the benchmarks). Called as training starts; again is harmless.
    """
    gc.collect()
    gc.freeze()


class StreamMismatch(RuntimeError):
    """The stream did not hold the rows the producer recorded."""


@dataclass
class StreamSummary:
    rows: int
    train_rows: int
    validation_rows: int
    mean: np.ndarray
    variance: np.ndarray
    validation: tuple[np.ndarray, np.ndarray] | None
    seconds: float


# Windows decoded (and permuted) at once, and batches ready ahead of the training step.
PARALLEL_WINDOWS = 2
PREFETCH_BATCHES = 4

_WINDOW_SPEC = (tf.TensorSpec([], tf.int64), tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string))


def message_rows(keys: np.ndarray) -> int:
    """Rows in a batch of messages: a key holds one label per row."""
    return sum(key.count(b",") + 1 for key in keys)


def windows(source: RawSource, min_rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The reader's message batches grouped into windows of at least `min_rows` rows.

    Yields (index of the window's first row in the stream, keys, values).
    """
    keys_parts: list[np.ndarray] = []
    values_parts: list[np.ndarray] = []
    first = rows = 0
    for keys, values in source():
        keys_parts.append(keys)
        values_parts.append(values)
        rows += message_rows(keys)
        if rows >= min_rows:
            yield first, np.concatenate(keys_parts), np.concatenate(values_parts)
            first, rows, keys_parts, values_parts = first + rows, 0, [], []
    if keys_parts:
        yield first, np.concatenate(keys_parts), np.concatenate(values_parts)


def is_validation_row(index: tf.Tensor, every: int) -> tf.Tensor:
    return tf.equal(index % every, every - 1)


def training_dataset(source: RawSource, config: TrainConfig, train_rows: int | None = None) -> tf.data.Dataset:
    """Shuffled, batched, decoded training rows (validation rows left out).

    The stream comes in windows of at least `shuffle_buffer` rows; each window
    is decoded in one call, its validation rows dropped, its rows permuted
    (a new permutation every epoch), and `rebatch` cuts it into batches. That
    is the effect of `unbatch().shuffle(n).batch(b)` at a fraction of the
    per-row cost, which on 2 cores was as large as a training step. With
    `train_rows` known, the dataset declares its length, so Keras knows an
    epoch's end.
    """
    every = config.validation_every

    def decode_window(first, keys, values):
        features, labels = decode_batch(keys, values)
        if every:
            index = first + tf.range(tf.shape(labels, out_type=tf.int64)[0])
            keep = tf.logical_not(is_validation_row(index, every))
            features, labels = tf.boolean_mask(features, keep), tf.boolean_mask(labels, keep)
        return features, labels

    def permute(window, random):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(window[1])[0]), seed=tf.stack([random, tf.constant(0, tf.int64)]))
        return tf.gather(window[0], order), tf.gather(window[1], order)

    window_rows = max(config.shuffle_buffer, config.batch_size)
    ds = tf.data.Dataset.from_generator(lambda: windows(source, window_rows), output_signature=_WINDOW_SPEC)
    ds = ds.map(decode_window, num_parallel_calls=PARALLEL_WINDOWS)
    if config.shuffle_buffer:
        randoms = tf.data.Dataset.random(seed=config.seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, randoms)).map(permute, num_parallel_calls=PARALLEL_WINDOWS)
    ds = ds.rebatch(config.batch_size)
    if train_rows is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(-(-train_rows // config.batch_size)))
    # Fixed parallelism instead of tf.data's autotuner: measured here on 2 cores,
    # the autotuner made about one epoch in three take ~1 s longer (the cores sat
    # idle meanwhile); with it off, 90k rows at batch 256 went from ~2.1 s to ~1.7 s
    # per epoch, with no slow epochs.
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(PREFETCH_BATCHES).with_options(options)


def summarize_stream(source: RawSource, config: TrainConfig, expected_rows: int | None) -> StreamSummary:
    """One pass: count rows, standardization statistics, the validation slice."""
    started = time.perf_counter()
    every = config.validation_every
    total = np.zeros(N_FEATURES)
    total_sq = np.zeros(N_FEATURES)
    train_rows = 0
    rows = 0
    val_x: list[np.ndarray] = []
    val_y: list[np.ndarray] = []
    for keys, values in source():
        x, y = (t.numpy() for t in decode_batch(tf.constant(keys), tf.constant(values)))
        if every:
            held = (np.arange(rows, rows + len(x)) % every) == every - 1
            val_x.append(x[held])
            val_y.append(y[held])
            x = x[~held]
        x64 = x.astype(np.float64)
        total += x64.sum(axis=0)
        total_sq += np.square(x64).sum(axis=0)
        train_rows += len(x)
        rows += len(y)
    if expected_rows is not None and rows != expected_rows:
        raise StreamMismatch(f"the producer recorded {expected_rows} rows but the stream held {rows}")
    if train_rows == 0:
        raise StreamMismatch("the stream held no training rows")
    mean = total / train_rows
    variance = np.maximum(total_sq / train_rows - np.square(mean), 1e-12)
    validation = None
    if every:
        validation = (np.concatenate(val_x), np.concatenate(val_y))
    return StreamSummary(rows, train_rows, rows - train_rows, mean, variance, validation,
                         time.perf_counter() - started)


class CountingSource:
    """Wraps a reader; remembers how many rows its last complete pass yielded.

    It also keeps the reader's own exception: inside `from_generator`,
    TensorFlow turns it into a generic op error, and the CLI needs the real
    one (a Kafka timeout exits 3, and must not wait on a hung read thread).
    """

    def __init__(self, source: RawSource):
        self.source = source
        self.rows_last_pass: int | None = None
        self.error: BaseException | None = None

    def __call__(self) -> Iterator[RawBatch]:
        rows = 0
        try:
            for keys, values in self.source():
                rows += message_rows(keys)
                yield keys, values
        except Exception as err:
            self.error = err
            raise
        self.rows_last_pass = rows


EpochReport = Callable[[dict[str, Any]], None]
# The trainer's heartbeat carries its last epochs too, so that an epoch shorter than the
# operator's poll still reaches status (the heartbeat is one document, overwritten per epoch).
EPOCH_HISTORY = 50


def epoch_facts(epoch: int, epochs: int, seconds: float, train_rows: int, logs: dict[str, Any]) -> dict[str, Any]:
    """What one finished epoch reports (log line, heartbeat): epoch k of N, loss, validation AUC."""
    def number(key: str) -> float | None:
        value = logs.get(key)
        return None if value is None else round(float(value), 6)

    return {"kind": "trainer", "epoch": epoch, "epochs": epochs, "loss": number("loss"),
            "val_loss": number("val_loss"), "val_auc": number("val_auc"),
            "epoch_seconds": round(seconds, 3), "train_rows": train_rows,
            "rows_per_second": round(train_rows / max(seconds, 1e-9), 1)}


class _EpochProgress(keras.callbacks.Callback):
    """One line per epoch (rows/s and the metrics Keras computed) and `report(epoch_facts)`; on a
    terminal, a bar per epoch over its rows as well (`progress.Progress`).

    Batch hooks only when a bar is drawn: elsewhere Keras runs no Python between batches for it.
    """

    def __init__(self, train_rows: int, epochs: int, batch_size: int, report: EpochReport | None = None):
        super().__init__()
        self.train_rows, self.epochs, self.batch_size = train_rows, epochs, batch_size
        self.report = report
        self.started = 0.0
        self.seconds: list[float] = []
        self.history: list[dict[str, Any]] = []
        self.bar: Progress | None = None
        if bars_wanted():
            self.on_train_batch_end = self._batch_end  # type: ignore[method-assign]

    def on_train_begin(self, logs=None):
        if self.report is not None:
            self.report({**epoch_facts(0, self.epochs, 0.0, self.train_rows, {}), "rows_per_second": None})

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
        if bars_wanted():
            self.bar = Progress(f"epoch {epoch + 1}/{self.epochs}", self.train_rows or None, logger=log)

    def _batch_end(self, batch, logs=None):
        if self.bar is not None:
            self.bar.update(min((batch + 1) * self.batch_size, self.train_rows or (batch + 1) * self.batch_size))

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.seconds.append(round(seconds, 3))
        metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
        log.info("epoch %d/%d: %.2f s, %.0f rows/s, %s", epoch + 1, self.epochs, seconds,
                 self.train_rows / max(seconds, 1e-9), metrics)
        if self.report is not None:
            facts = epoch_facts(epoch + 1, self.epochs, seconds, self.train_rows, logs or {})
            self.history = [*self.history, {k: facts[k] for k in ("epoch", "loss", "val_auc", "rows_per_second")}]
            self.report({**facts, "history": self.history[-EPOCH_HISTORY:]})


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """The exact ROC AUC (Mann-Whitney, ties counted half); None without both classes."""
    labels = np.asarray(labels).ravel() > 0.5
    scores = np.asarray(scores, np.float64).ravel()
    positives = int(labels.sum())
    negatives = labels.size - positives
    if not positives or not negatives:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0  # 1-based rank of each distinct score, ties averaged
    rank_sum = average_rank[inverse][labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def holdout_auc(model, validation: tuple[np.ndarray, np.ndarray] | None, precision: str) -> dict[str, Any]:
    """The model's AUC on the held-out rows as trained, and, for mixed_bf16, the same weights
    computed in fp32 beside it: how much of a difference is the precision, not the training."""
    if validation is None or not len(validation[1]):
        return {}
    x, y = validation
    facts = {"holdout_rows": int(len(y)),
             "holdout_auc": roc_auc(y, model.predict(x, batch_size=16384, verbose=0))}
    if precision != "fp32":
        fp32 = precision_lib.with_precision(model, "fp32")
        facts["holdout_auc_fp32"] = roc_auc(y, fp32.predict(x, batch_size=16384, verbose=0))
    return facts


def train(source: RawSource, config: TrainConfig, *, expected_rows: int | None = None, parent=None,
          report: EpochReport | None = None, precision: str = "fp32"):
    """Train a model on the stream; return (model, facts for the model record).

    `report` gets `epoch_facts` when training starts (epoch 0) and after every epoch (the
    trainer's heartbeat). `precision` "mixed_bf16" trains under Keras's mixed_bfloat16 policy
    (float32 weights, the hidden layers' products in bfloat16; the Normalization and the output
    layer in float32, see precision.py); the facts then hold the held-out AUC in both precisions.

    With `parent` (a loaded Keras model of the same architecture), training continues from its
    weights and keeps its Normalization statistics (the weights were learned on inputs
    standardized by them); the stream's own statistics are not computed, and the optimizer
    starts afresh at `config`'s learning rate.
    """
    keras.utils.set_random_seed(config.seed)
    freeze_heap()
    started = time.perf_counter()
    source = CountingSource(source)
    needs_pass = (config.model.normalize and parent is None) or config.validation_every
    summary = summarize_stream(source, config, expected_rows) if needs_pass else None
    if summary is None and expected_rows is None:
        # Rows given as offsets (`train --offsets`): their count is not known in advance, and Keras
        # trains otherwise on a dataset of unknown length (measured: other weights, same seed and
        # rows), so the stream is counted first; the model is the one its production would give.
        for _ in source():
            pass
        expected_rows = source.rows_last_pass
        log.info("stream: %d rows, counted before training", expected_rows)
    if summary:
        log.info("stream: %d rows (%d train, %d validation), statistics pass %.2f s",
                 summary.rows, summary.train_rows, summary.validation_rows, summary.seconds)
    if precision not in precision_lib.TRAINING_PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {precision_lib.TRAINING_PRECISIONS}")
    if parent is not None:
        model = compile_model(precision_lib.with_precision(parent, precision), config.model.learning_rate)
        log.info("warm start: continuing from the parent model's weights and standardization")
    else:
        model = build_model(config.model,
                            mean=summary.mean if summary else None,
                            variance=summary.variance if summary else None)
        if precision != "fp32":
            model = compile_model(precision_lib.with_precision(model, precision), config.model.learning_rate)
    log.info("model: %d trainable parameters, hidden %s, dropout %.2f",
             trainable_params(model), list(config.model.hidden), config.model.dropout)
    mode = "max" if config.monitor.endswith("auc") else "min"
    progress = _EpochProgress(summary.train_rows if summary else expected_rows or 0, config.epochs,
                              config.batch_size, report)
    callbacks: list[Any] = [progress]
    if summary and summary.validation is not None and config.patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=config.monitor, mode=mode, patience=config.patience,
                                                       restore_best_weights=True))
    if summary and summary.validation is not None and config.reduce_lr_patience:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=config.monitor, mode=mode, factor=0.5,
                                                           patience=config.reduce_lr_patience))
    train_rows = summary.train_rows if summary else expected_rows
    try:
        history = model.fit(training_dataset(source, config, train_rows),
                            validation_data=summary.validation if summary else None,
                            epochs=config.epochs, callbacks=callbacks, shuffle=False, verbose=0)
    except tf.errors.OpError as err:
        if source.error is not None:
            raise source.error from err
        if expected_rows is not None and source.rows_last_pass not in (None, expected_rows):
            raise StreamMismatch(f"the producer recorded {expected_rows} rows but the stream held "
                                 f"{source.rows_last_pass}") from err
        raise
    seen = source.rows_last_pass
    if expected_rows is not None and seen != expected_rows:
        raise StreamMismatch(f"the producer recorded {expected_rows} rows but the stream held {seen}")
    epochs_run = len(history.history.get("loss", []))
    final = {k: float(v[-1]) for k, v in history.history.items()}
    if summary and summary.validation is not None and config.patience:
        watched = np.asarray(history.history[config.monitor])
        best = int(np.argmax(watched) if config.monitor.endswith("auc") else np.argmin(watched))
        final = {k: float(v[best]) for k, v in history.history.items()}
    facts = {
        "rows": seen,
        "train_rows": summary.train_rows if summary else seen,
        "validation_rows": summary.validation_rows if summary else 0,
        "epochs_run": epochs_run,
        "epoch_seconds": progress.seconds,  # each epoch reads the topic again
        "epoch_losses": [round(float(v), 6) for v in history.history.get("loss", [])],
        "seconds": round(time.perf_counter() - started, 3),
        "metrics": {k: round(v, 6) for k, v in final.items()},
        "trainable_params": trainable_params(model),
        "precision": precision,
        **holdout_auc(model, summary.validation if summary else None, precision),
    }
    return model, facts
