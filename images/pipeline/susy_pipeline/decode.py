"""Kafka messages to tensors, with TensorFlow ops only, one call per batch.

Wire format (the seed's): key = the label as text (`b"0"` or `b"1"`), value =
the 18 features comma-separated. A message may carry several rows
(`--rows-per-message`): then the key holds their labels comma-separated and
the value their feature lines joined by newlines. `decode_batch` handles both,
so one decode step serves every reader and every producer setting.
"""
from __future__ import annotations

import tensorflow as tf

from .schema import N_FEATURES


def decode_batch(keys: tf.Tensor, values: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A batch of (key, value) strings -> (features float32 [n, 18], labels float32 [n, 1])."""
    labels = tf.strings.to_number(tf.strings.split(keys, ",").flat_values, tf.float32)
    lines = tf.strings.split(values, "\n").flat_values
    fields = tf.strings.split(lines, ",")
    tf.debugging.assert_equal(fields.row_lengths(), tf.cast(N_FEATURES, tf.int64),
                              message="a Kafka message row does not have 18 features")
    features = tf.reshape(tf.strings.to_number(fields.flat_values, tf.float32), [-1, N_FEATURES])
    tf.debugging.assert_equal(tf.shape(labels)[0], tf.shape(features)[0],
                              message="labels in a message key do not match rows in its value")
    return features, tf.expand_dims(labels, -1)
