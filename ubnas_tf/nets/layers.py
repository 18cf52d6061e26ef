"""Layers used only by the evaluation network."""

from __future__ import annotations

import zlib

import tensorflow as tf
from larq import utils


@utils.register_keras_custom_object
class DropPath(tf.keras.layers.Layer):
    """Drops a whole edge per example during training (DARTS' drop-path), rescaling the rest.

    The rate lives in a non-trainable variable so a callback can ramp it up over training
    without retracing; it is identity at inference and in the converted model. Masks are
    stateless random draws keyed by (layer name, a call counter variable), so a run resumed
    from a checkpoint draws exactly the masks an uninterrupted run would.
    """

    def __init__(self, rate: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_rate = float(rate)

    def build(self, input_shape):
        self.rate = self.add_weight("rate", shape=(), trainable=False,
                                    initializer=tf.keras.initializers.Constant(self.initial_rate))
        self.calls = self.add_weight("calls", shape=(), dtype=tf.int64, trainable=False,
                                     initializer="zeros",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._seed = zlib.crc32(self.name.encode("utf-8"))
        super().build(input_shape)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        keep = 1.0 - tf.cast(self.rate, inputs.dtype)
        shape = tf.stack([tf.shape(inputs)[0], 1, 1, 1])
        seed = tf.stack([tf.constant(self._seed, tf.int64), self.calls.assign_add(1)])
        mask = tf.random.stateless_uniform(shape, seed=seed) < tf.cast(keep, tf.float32)
        mask = tf.cast(mask, inputs.dtype)
        return inputs * mask / keep

    def get_config(self):
        return {**super().get_config(), "rate": self.initial_rate}


class DropPathSchedule(tf.keras.callbacks.Callback):
    """Sets every `DropPath` rate to ``max_rate * epoch / epochs`` at each epoch start."""

    def __init__(self, max_rate: float, epochs: int):
        super().__init__()
        self.max_rate = float(max_rate)
        self.epochs = int(epochs)

    def on_epoch_begin(self, epoch, logs=None):
        rate = self.max_rate * epoch / max(1, self.epochs)
        for layer in self.model._flatten_layers():
            if isinstance(layer, DropPath):
                layer.rate.assign(rate)
