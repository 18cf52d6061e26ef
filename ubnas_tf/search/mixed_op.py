"""Partial-channel mixed op (PC-DARTS), evaluated for all edges leaving one node at once."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
from larq import utils

from ubnas_tf.modules import ModuleConfig, channel_shuffle, get_module_config
from ubnas_tf.ops import build_op, get_primitive, resolve_primitives

__all__ = ["PartialChannelMixedOp"]


@utils.register_keras_custom_object
class PartialChannelMixedOp(tf.keras.layers.Layer):
    r"""A mixed op over the candidate primitives, on 1/K of the channels.

    For an input \\(x\\) with \\(C\\) channels, the first \\(C/K\\) channels \\(x_a\\) go through
    every candidate op and are mixed with the op weights \\(p_o\\) (softmaxed alphas); the
    remaining channels \\(x_b\\) bypass the ops (2x2 max-pooled at stride 2), and the result
    is channel-shuffled with K groups:

    \\[ f(x) = \mathrm{shuffle}_K\big(\big[\textstyle\sum_o p_o\, o(x_a),\ x_b\big]\big). \\]

    `fan_out` edges that share this input (all the edges leaving one node) are evaluated
    together: each binary conv op runs as one convolution with ``fan_out * C/K`` filters
    (one independent kernel per edge), parameter-free ops run once and are re-weighted per
    edge, and ``none`` is never computed. The result equals `fan_out` separate mixed ops.

    Call with ``op_weights`` of shape ``[fan_out, len(primitives)]``; returns a list of
    `fan_out` tensors (a tensor when ``fan_out == 1``).
    """

    def __init__(
        self,
        channels: int,
        primitives: Sequence[str],
        k: int,
        strides: int = 1,
        fan_out: int = 1,
        config: str | dict | ModuleConfig | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.primitives = resolve_primitives(list(primitives))
        if int(k) < 1:
            raise ValueError(f"The channel sampling ratio K must be >= 1, got {k}.")
        self.k = int(k)
        self.strides = int(strides)
        self.fan_out = int(fan_out)
        self.config = get_module_config(config)
        self.channels = int(channels)
        if self.channels % self.k:
            raise ValueError(
                f"{self.name}: {self.channels} channels are not divisible by the channel sampling "
                f"ratio K={self.k}; choose K (--k_normal/--k_reduce) dividing the cell width "
                f"or an --init_channels that K divides."
            )
        # Built here, not in build(): the cell calls `partial_outputs` directly.
        self.part = self.channels // self.k
        self.ops = []
        for name in self.primitives:
            spec = get_primitive(name)
            if spec.zero:
                continue
            fan = self.fan_out if spec.parametric else 1
            layer = build_op(name, self.part, self.strides, self.config, search=True, fan_out=fan,
                             layer_name=f"{name}")
            self.ops.append((self.primitives.index(name), spec.parametric, layer))
        self.bypass_pool = (
            # "same": ceil(H/2) like the stride-2 ops, so odd sizes line up with them.
            tf.keras.layers.MaxPool2D(2, 2, padding="same")
            if self.strides == 2 and self.k > 1
            else None
        )

    def partial_outputs(self, inputs, op_weights, training=None):
        """The mixed part ``[B, H, W, fan_out, C/K]`` and the shared bypass ``[B, H, W, C - C/K]``.

        Channel shuffle is left to the caller: it is a fixed permutation, so a node summing
        several edges can shuffle once after the sum.
        """
        x_a = inputs[..., : self.part]
        op_weights = tf.cast(op_weights, inputs.dtype)
        mixed = None
        for index, parametric, op in self.ops:
            out = op(x_a, training=training)
            shape = tf.shape(out)
            fan = self.fan_out if parametric else 1
            out = tf.reshape(out, tf.concat([shape[:3], [fan, self.part]], 0))
            term = out * op_weights[:, index][:, None]
            mixed = term if mixed is None else mixed + term
        if self.k == 1:
            return mixed, None
        x_b = inputs[..., self.part :]
        bypass = self.bypass_pool(x_b) if self.bypass_pool is not None else x_b
        return mixed, bypass

    def call(self, inputs, op_weights, training=None):
        mixed, bypass = self.partial_outputs(inputs, op_weights, training=training)
        outs = []
        for t in range(self.fan_out):
            part = mixed[..., t, :]
            full = part if bypass is None else tf.concat([part, bypass], axis=-1)
            outs.append(channel_shuffle(full, self.k))
        return outs[0] if self.fan_out == 1 else outs

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "primitives": list(self.primitives), "k": self.k,
                "strides": self.strides, "fan_out": self.fan_out, "config": self.config.to_dict()}
