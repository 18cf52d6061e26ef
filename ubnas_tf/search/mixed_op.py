"""Partial-channel mixed op (PC-DARTS), evaluated for all edges leaving one node at once."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
from larq import utils

from ubnas_tf.modules import (
    BinaryConvModule,
    ModuleConfig,
    PoolModule,
    _batch_norm,
    channel_shuffle,
    get_module_config,
)
from ubnas_tf.ops import build_op, get_primitive, resolve_primitives
from ubnas_tf.search.conv_bank import BinaryConvBank
from ubnas_tf.search.mixing import mix_ops, regroup_rows

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

    With ``fuse_convs`` (the default) and a module config that allows it, the binary conv
    ops are one `BinaryConvBank` (shared pre-BN and sign, one convolution per dilation),
    which computes the same function with a fraction of the graph; otherwise each is a
    `BinaryConvModule` of its own. With ``fuse_convs`` the pooling ops' non-affine BNs are
    one BN over their outputs side by side (``pool_bn``; BN is per channel, so the function
    is the same): on the first cells' 2-channel parts oneDNN has no vectorised BN, and one
    4-channel BN costs a third of two 2-channel ones.

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
        fuse_convs: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.fuse_convs = bool(fuse_convs)
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
        self.ops = []  # (primitive index, parametric, layer) of the ops evaluated one by one
        banked = []  # (primitive index, (name, kernel size, dilation)) of the bank's ops
        pooled = []  # primitive indices of the pools normalised together by pool_bn
        fuse = self.fuse_convs and BinaryConvBank.supports(self.config)
        for name in self.primitives:
            spec = get_primitive(name)
            if spec.zero:
                continue
            fan = self.fan_out if spec.parametric else 1
            layer = build_op(name, self.part, self.strides, self.config, search=True, fan_out=fan,
                             layer_name=f"{name}")
            if fuse and isinstance(layer, BinaryConvModule):
                banked.append((self.primitives.index(name),
                               (name, layer.kernel_size, layer.dilation_rate)))
                continue
            if self.fuse_convs and _normalised_pool(layer):  # its BN becomes pool_bn's
                layer = PoolModule(layer.pool_type, layer.strides, name=layer.name)
                pooled.append(self.primitives.index(name))
            self.ops.append((self.primitives.index(name), spec.parametric, layer))
        self.pool_bn = _batch_norm(False, "pool_bn") if pooled else None
        self.pooled_indices = pooled
        self.conv_bank = (BinaryConvBank([op for _, op in banked], self.strides, self.fan_out,
                                         self.config, name="binary_convs") if banked else None)
        by_name = {spec[0]: index for index, spec in banked}
        self.bank_indices = ([by_name[name] for name, _, _ in self.conv_bank.ops]
                             if self.conv_bank is not None else [])
        # Rows of the transposed op weights, in the order the groups below consume them.
        self._groups = [
            # pool_bn's pools first, so that their outputs are one channel range.
            ("shared", pooled + [index for index, parametric, _ in self.ops
                                 if not parametric and index not in pooled]),
            ("bank", self.bank_indices),
            ("per_edge", [index for index, parametric, _ in self.ops if parametric]),
        ]
        self._groups = [(kind, rows) for kind, rows in self._groups if rows]
        self.bypass_pool = (
            # "same": ceil(H/2) like the stride-2 ops, so odd sizes line up with them.
            tf.keras.layers.MaxPool2D(2, 2, padding="same")
            if self.strides == 2 and self.k > 1
            else None
        )

    def partial_outputs(self, inputs, op_weights, training=None):
        """The mixed part ``[B, H, W, fan_out * C/K]`` (edge after edge) and the shared bypass
        ``[B, H, W, C - C/K]``.

        Channel shuffle is left to the caller: it is a fixed permutation, so a node summing
        several edges can shuffle once after the sum.
        """
        if self.k == 1:
            x_a, x_b = inputs, None
        else:  # one Split (its gradient one Concat), not two strided slices
            x_a, x_b = tf.split(inputs, [self.part, self.channels - self.part], axis=-1)
        # [n_ops, fan_out] rows by group (in registry order the groups are consecutive rows).
        rows = regroup_rows(tf.transpose(tf.cast(op_weights, inputs.dtype)),
                            [row for _, group in self._groups for row in group],
                            [len(group) for _, group in self._groups])
        layers = {index: op for index, _, op in self.ops}
        mixed = None
        for (kind, group), weights in zip(self._groups, rows, strict=True):
            if kind == "bank":
                term = self.conv_bank(x_a, weights, training=training)
            else:  # the ops' outputs side by side, mixed in one product
                outs = []
                if kind == "shared" and self.pool_bn is not None:
                    pools = _pools_side_by_side([layers[i] for i in self.pooled_indices], x_a)
                    outs.append(self.pool_bn(pools, training=training))
                    group = group[len(self.pooled_indices):]
                outs += [layers[index](x_a, training=training) for index in group]
                features = outs[0] if len(outs) == 1 else tf.concat(outs, -1)
                term = mix_ops(features, weights, per_edge=kind == "per_edge" and self.fan_out > 1)
            mixed = term if mixed is None else mixed + term
        if x_b is None:
            return mixed, None
        bypass = self.bypass_pool(x_b) if self.bypass_pool is not None else x_b
        return mixed, bypass

    def call(self, inputs, op_weights, training=None):
        mixed, bypass = self.partial_outputs(inputs, op_weights, training=training)
        outs = []
        for part in tf.split(mixed, self.fan_out, axis=-1):
            full = part if bypass is None else tf.concat([part, bypass], axis=-1)
            outs.append(channel_shuffle(full, self.k))
        return outs[0] if self.fan_out == 1 else outs

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "primitives": list(self.primitives), "k": self.k,
                "strides": self.strides, "fan_out": self.fan_out, "config": self.config.to_dict(),
                "fuse_convs": self.fuse_convs}


def _normalised_pool(layer: tf.keras.layers.Layer) -> bool:
    """A pooling op followed by a non-affine BN (the search's): its BN can be shared."""
    return isinstance(layer, PoolModule) and layer.bn is not None and not layer.affine


def _pools_side_by_side(pools: Sequence[PoolModule], x: tf.Tensor) -> tf.Tensor:
    """The outputs of `pools` (without BN) concatenated, ``[B, H', W', len(pools) * C]``.

    oneDNN's pooling kernels vectorise over channels; with fewer than 4 (the first cells'
    2-channel parts) their backward pass took 3.5 ms a call at batch 64 and 32x32, 2.4x per
    element what 4 channels take, and a max and an average pool 7.9 ms forward and backward
    against 2.6 ms this way (`docs/speed.md`).
    Pooling is per image and channel, so such inputs are pooled as one image with the batch
    in the channels (``[1, H, W, B * C]``) and moved back once for all the pools.
    """
    channels = x.shape[-1]
    if channels >= 4:
        outs = [pool(x) for pool in pools]
        return outs[0] if len(outs) == 1 else tf.concat(outs, -1)
    _, height, width, _ = x.shape
    image = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, height, width, -1])
    outs = [pool(image) for pool in pools]
    _, height, width, _ = outs[0].shape
    outs = [tf.reshape(out, [height, width, -1, channels]) for out in outs]
    joined = outs[0] if len(outs) == 1 else tf.concat(outs, -1)
    return tf.transpose(joined, [2, 0, 1, 3])
