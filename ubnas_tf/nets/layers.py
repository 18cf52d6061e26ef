"""Layers used only by the evaluation network."""

from __future__ import annotations

import tensorflow as tf
from larq import utils


@utils.register_keras_custom_object
class DropPath(tf.keras.layers.Layer):
    """Drops a whole edge per example during training (DARTS' drop-path), rescaling the rest.

    The rate lives in a non-trainable variable so a callback can ramp it up over training
    without retracing; it is identity at inference and in the converted model.
    """

    def __init__(self, rate: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_rate = float(rate)

    def build(self, input_shape):
        self.rate = self.add_weight("rate", shape=(), trainable=False,
                                    initializer=tf.constant_initializer(self.initial_rate))
        super().build(input_shape)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        keep = 1.0 - tf.cast(self.rate, inputs.dtype)
        shape = tf.stack([tf.shape(inputs)[0], 1, 1, 1])
        mask = tf.cast(tf.random.uniform(shape) < tf.cast(keep, tf.float32), inputs.dtype)
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
