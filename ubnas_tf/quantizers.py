"""Larq quantizer extensions used by UBNAS.

Larq already provides the ApproxSign activation quantizer (`larq.quantizers.ApproxSign`,
alias ``"approx_sign"``) and the magnitude-aware weight quantizer
(``"magnitude_aware_sign"``); UBNAS reuses those unchanged. This module adds what Larq
lacks, registered as Keras custom objects with string aliases so that models using them
save, load and convert with the Larq Compute Engine (LCE).
"""

from __future__ import annotations

from collections.abc import Callable

import larq as lq
import tensorflow as tf
from larq import utils
from larq.quantizers import _BaseQuantizer, approx_sign

__all__ = ["LearnableThresholdApproxSign", "calibrate_thresholds", "get_activation_quantizer",
           "get_kernel_quantizer"]


@utils.register_alias("learnable_threshold_approx_sign")
@utils.register_keras_custom_object
class LearnableThresholdApproxSign(_BaseQuantizer):
    r"""ApproxSign with a learnable per-channel threshold (ReActNet's RSign).

    \\[
    q(x_c) = \operatorname{sign}(x_c - b_c) = \begin{cases}
      -1 & x_c < b_c \\\
      1 & x_c \geq b_c
    \end{cases}
    \\]

    The straight-through estimate is Bi-Real Net's ApproxSign applied to the shifted input
    \\(u = x - b\\):
    \\[
    \frac{\partial q}{\partial x_c} = \begin{cases}
      2 - 2 \left|u_c\right| & \left|u_c\right| \leq 1 \\\
      0 & \left|u_c\right| > 1
    \end{cases},
    \qquad \frac{\partial q}{\partial b_c} = -\frac{\partial q}{\partial x_c}.
    \\]

    The forward pass is `larq.math.sign(x - b)` (never zero), which LCE lowers to a float
    subtraction followed by `LceQuantize`, so the following binary convolution still becomes
    `LceBconv2d`.

    # Arguments
        threshold_initializer: initializer of the per-channel threshold \\(b\\).
        threshold_regularizer: optional regularizer of \\(b\\).
        metrics: as for every Larq quantizer (e.g. ``["flip_ratio"]``).
    """

    precision = 1

    def __init__(
        self,
        threshold_initializer: str | tf.keras.initializers.Initializer = "zeros",
        threshold_regularizer: str | tf.keras.regularizers.Regularizer | None = None,
        **kwargs,
    ):
        self.threshold_initializer = tf.keras.initializers.get(threshold_initializer)
        self.threshold_regularizer = tf.keras.regularizers.get(threshold_regularizer)
        super().__init__(**kwargs)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "LearnableThresholdApproxSign needs a known channel dimension "
                f"(last axis); got input shape {input_shape}."
            )
        self.threshold = self.add_weight(
            name="threshold",
            shape=(int(channels),),
            initializer=self.threshold_initializer,
            regularizer=self.threshold_regularizer,
            trainable=True,
        )
        super().build(input_shape)

    def call(self, inputs):
        shifted = inputs - tf.cast(self.threshold, inputs.dtype)
        return super().call(approx_sign(shifted))

    def get_config(self):
        return {
            **super().get_config(),
            "threshold_initializer": tf.keras.initializers.serialize(self.threshold_initializer),
            "threshold_regularizer": tf.keras.regularizers.serialize(self.threshold_regularizer)
            if self.threshold_regularizer is not None
            else None,
        }


def calibrate_thresholds(model: tf.keras.Model, images: tf.Tensor) -> list[str]:
    r"""Sets every `LearnableThresholdApproxSign` threshold of `model` from data; returns
    the names of the thresholds set.

    Each threshold becomes the per-channel mean of its quantizer's input on `images`,
    \\(b_c = \frac{1}{NHW} \sum_{n,h,w} x_{nhwc}\\): the sign then splits every channel
    around its centre, where a BatchNorm before the sign would put it. This matters where
    the thresholds start untrained, as in stage 2 of two-stage retraining (stage 1 has real
    activations and no thresholds): at 0, a channel whose input is mostly positive (no BN
    before the sign, after a PReLU) binarises to +1 almost everywhere and carries nothing.

    One forward pass in training mode (batch statistics, as the first training step sees
    them), in which each quantizer sets its threshold just before applying it, so later
    quantizers see inputs that calibrated earlier ones produced. Every other variable
    (BatchNorm moving statistics included) is left as it was. Runs eagerly; a quantizer
    called more than once in the pass keeps its last call's mean.
    """
    quantizers = [layer for layer in model._flatten_layers()
                  if isinstance(layer, LearnableThresholdApproxSign)]
    if not quantizers:
        return []
    # A forward pass changes no trainable variable: only the moving statistics need keeping.
    others = model.non_trainable_variables
    kept = [v.numpy() for v in others]

    def calibrating(quantizer: LearnableThresholdApproxSign) -> Callable:
        call = quantizer.call

        def calibrating_call(inputs):
            axes = list(range(inputs.shape.rank - 1))
            quantizer.threshold.assign(
                tf.cast(tf.reduce_mean(tf.cast(inputs, tf.float32), axes),
                        quantizer.threshold.dtype))
            return call(inputs)

        return calibrating_call

    try:
        for quantizer in quantizers:
            quantizer.call = calibrating(quantizer)
        model(images, training=True)
    finally:
        for quantizer in quantizers:
            del quantizer.call  # the class's own call again
        for variable, value in zip(others, kept, strict=True):
            variable.assign(value)
    return [q.threshold.name for q in quantizers]


ACTIVATION_QUANTIZERS = ("approx_sign", "learnable_threshold_approx_sign")
KERNEL_QUANTIZERS = ("ste_sign", "magnitude_aware_sign")


def get_activation_quantizer(name: str | None) -> tf.keras.layers.Layer | None:
    """A fresh activation quantizer for `name` (one of `ACTIVATION_QUANTIZERS`; ``None``: real)."""
    if name is None:
        return None
    if name not in ACTIVATION_QUANTIZERS:
        raise ValueError(
            f"Unknown activation quantizer {name!r}; expected one of {list(ACTIVATION_QUANTIZERS)}."
        )
    return lq.quantizers.get(name)


def get_kernel_quantizer(name: str | None, clip_value: float = 1.0) -> tf.keras.layers.Layer | None:
    """A fresh binary weight quantizer for `name` (one of `KERNEL_QUANTIZERS`; ``None``: real)."""
    if name is None:
        return None
    if name == "ste_sign":
        return lq.quantizers.SteSign(clip_value=clip_value)
    if name == "magnitude_aware_sign":
        return lq.quantizers.MagnitudeAwareSign(clip_value=clip_value)
    raise ValueError(f"Unknown kernel quantizer {name!r}; expected one of {list(KERNEL_QUANTIZERS)}.")
