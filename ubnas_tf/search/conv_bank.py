"""The binary convolution ops of a mixed op, evaluated together (the search's hot path)."""

from __future__ import annotations

from collections.abc import Sequence

import larq as lq
import tensorflow as tf
from larq import utils

from ubnas_tf.modules import ModuleConfig, _batch_norm, _pool, get_module_config
from ubnas_tf.padded_conv import one_padded_conv2d, supports_one_padded_conv2d
from ubnas_tf.quantizers import get_activation_quantizer, get_kernel_quantizer
from ubnas_tf.search.mixing import mix_ops

__all__ = ["BinaryConvBank", "same_padding"]

# Activation quantizers with weights of their own: one sign of the input cannot serve them all.
_STATEFUL_ACTIVATION_QUANTIZERS = ("learnable_threshold_approx_sign",)


def same_padding(size: int, kernel_size: int, strides: int, dilation_rate: int) -> list[int]:
    """Keras' (and Larq's) ``"same"`` padding of one spatial axis: ``[before, after]``."""
    effective = (kernel_size - 1) * dilation_rate + 1
    out = -(-size // strides)
    total = max((out - 1) * strides + effective - size, 0)
    return [total // 2, total - total // 2]


@utils.register_keras_custom_object
class BinaryConvBank(tf.keras.layers.Layer):
    r"""The weighted sum of several non-affine `BinaryConvModule`\ s on one input.

    For binary modules \(o\) (kernel \(k_o\), dilation \(d_o\)), each with `fan_out` edges
    \(t\) of their own kernels, mixed with weights \(w_{o,t}\):

    \[ y_t = \sum_o w_{o,t}\big(BN_{o,t}(\mathrm{bconv}_{o,t}(q(BN_{pre}(x)))) + s(x)\big)
           = \sum_o w_{o,t}\, BN_{o,t}(\cdot) + \Big(\sum_o w_{o,t}\Big) s(x) \]

    which is what `PartialChannelMixedOp` computes with one module per op, evaluated with
    far fewer graph nodes:

    * the pre-activation BN and the sign \(q\) are computed once: in the search every BN is
      non-affine, so the modules' pre-BNs see the same input and hold the same statistics;
    * ops of equal kernel size keep their kernels in one variable (``kernel_3x3``: the ops'
      ``fan_out * C`` output channels side by side, in op order) and are quantized in one
      call; the magnitude-aware scale is per output channel, so it is each op's own;
    * modules of equal dilation run as one convolution: each op's quantized kernel is
      zero-embedded in the family's largest kernel. With Larq's ``pad_values=1`` "same"
      padding the embedded taps read exactly the pixels the smaller kernel reads (a kernel
      2 larger pads one more pixel each side, where its zero ring lands), so the result is
      unchanged; at stride 1 the padding is not materialised (`one_padded_conv2d`);
    * a dilated module at stride 2 is a dense conv on the ``[::2, ::2]``-subsampled input,
      as in `BinaryConvModule`;
    * the post-BN is one BN over all the convolutions' channels (BN is per channel), and
      the real shortcut \(s\) (identity, or the config's 2x2 pool at stride 2) is added
      once, weighted by \(\sum_o w_{o,t}\) (there is no activation after the add).

    Only configs whose activation quantizer has no weights and that put no activation after
    the shortcut qualify (`supports`); the others are evaluated module by module.

    `ops` are kept sorted by dilation, then kernel size. Call with ``weights`` of shape
    ``[len(ops), fan_out]`` (rows in the order of `ops`); returns ``[B, H', W', fan_out * C]``
    (edge after edge).
    """

    def __init__(
        self,
        ops: Sequence[tuple[str, int, int]],
        strides: int = 1,
        fan_out: int = 1,
        config: str | dict | ModuleConfig | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # Family-major (then kernel size) order, so each family's weights are a row range.
        self.ops = sorted(((str(name), int(k), int(d)) for name, k, d in ops),
                          key=lambda op: (op[2], op[1]))
        if not self.ops:
            raise ValueError("BinaryConvBank needs at least one (name, kernel_size, dilation) op.")
        if strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, got {strides}.")
        self.strides = int(strides)
        self.fan_out = int(fan_out)
        self.config = get_module_config(config)
        if not self.supports(self.config):
            raise ValueError(f"Module config {self.config.name!r} cannot be evaluated as a bank "
                             "(see BinaryConvBank.supports).")
        # Ops of equal kernel size share a variable; ops of equal dilation a convolution
        # (a dilated op at stride 2 runs dense on the subsampled input, in its own family).
        self.size_groups = [(size, [i for i, (_, k, _) in enumerate(self.ops) if k == size])
                            for size in sorted({k for _, k, _ in self.ops})]
        self.families = [(rate, [i for i, (_, _, d) in enumerate(self.ops) if d == rate])
                         for rate in sorted({d for _, _, d in self.ops})]

    @staticmethod
    def supports(config: ModuleConfig) -> bool:
        """True when a shared input sign and a folded shortcut are exact for `config`."""
        return (config.activation is None
                and config.activation_quantizer not in _STATEFUL_ACTIVATION_QUANTIZERS)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.channels = channels
        cfg = self.config
        self.pre_bn = _batch_norm(False, "pre_bn") if cfg.bn_before_sign else None
        self.input_quantizer = get_activation_quantizer(cfg.activation_quantizer)
        self.kernel_quantizer = get_kernel_quantizer(cfg.kernel_quantizer)
        block = self.fan_out * channels
        self.kernels = []
        for k, members in self.size_groups:
            # Glorot-normal per op: the variance 2 / (fan_in + fan_out) of one op's kernel,
            # not of the wider variable holding several.
            fan_in, fan_out = k * k * channels, k * k * block
            scale = (fan_in + fan_out * len(members)) / (fan_in + fan_out)
            init = tf.keras.initializers.VarianceScaling(scale, "fan_avg", "truncated_normal")
            self.kernels.append(self.add_weight(
                f"kernel_{k}x{k}", (k, k, channels, len(members) * block), initializer=init,
                constraint=lq.constraints.WeightClip(1.0)))
        self.post_bn = _batch_norm(False, "post_bn")
        self.shortcut_pool = _pool(cfg.downsample_shortcut, 2, 2) if self.strides == 2 else None
        super().build(input_shape)

    def latent_kernels(self) -> dict[str, tf.Tensor]:
        """Each op's latent (unquantized) kernel ``[k, k, C, fan_out * C]``, by op name."""
        kernels = {}
        for (_, members), variable in zip(self.size_groups, self.kernels, strict=True):
            for i, part in zip(members, tf.split(variable, len(members), axis=-1), strict=True):
                kernels[self.ops[i][0]] = part
        return kernels

    def op_kernels(self) -> list[tf.Tensor]:
        """Each op's quantized kernel ``[k, k, C, fan_out * C]``, in the order of `ops`."""
        kernels: list[tf.Tensor | None] = [None] * len(self.ops)
        for (_, members), variable in zip(self.size_groups, self.kernels, strict=True):
            # A tensor, not the variable: Larq's custom gradients refuse variables read inside
            # (a MirroredVariable under tf.distribute is one).
            kernel = tf.convert_to_tensor(variable)
            if self.kernel_quantizer is not None:
                kernel = self.kernel_quantizer(kernel)
            parts = tf.split(kernel, len(members), axis=-1) if len(members) > 1 else [kernel]
            for i, part in zip(members, parts, strict=True):
                kernels[i] = part
        return kernels

    def _family_kernel(self, kernels: list[tf.Tensor], members: list[int]) -> tuple[tf.Tensor, int]:
        """The family's kernels zero-embedded in its largest and concatenated."""
        size = max(self.ops[i][1] for i in members)
        parts = []
        for i in members:
            ring = (size - self.ops[i][1]) // 2
            parts.append(tf.pad(kernels[i], [[ring, ring], [ring, ring], [0, 0], [0, 0]])
                         if ring else kernels[i])
        return (parts[0] if len(parts) == 1 else tf.concat(parts, -1)), size

    def call(self, inputs, weights, training=None):
        h = self.pre_bn(inputs, training=training) if self.pre_bn is not None else inputs
        if self.input_quantizer is not None:
            h = self.input_quantizer(h)
        kernels = self.op_kernels()
        outputs = []
        for dilation, members in self.families:
            x = h
            strides, rate = self.strides, dilation
            if self.strides == 2 and dilation > 1:
                x, strides, rate = h[:, ::2, ::2, :], 1, 1
            kernel, size = self._family_kernel(kernels, members)
            if supports_one_padded_conv2d(size, strides, rate):
                outputs.append(one_padded_conv2d(x, kernel, rate))
                continue
            pads = [same_padding(x.shape[axis], size, strides, rate) for axis in (1, 2)]
            x = tf.pad(x, [[0, 0], *pads, [0, 0]], constant_values=1.0)
            outputs.append(tf.nn.conv2d(x, kernel, strides, "VALID", dilations=rate))
        # Families are op ranges, so the channels of all convs side by side are in op order.
        y = outputs[0] if len(outputs) == 1 else tf.concat(outputs, -1)
        mixed = mix_ops(self.post_bn(y, training=training), weights, per_edge=True)
        shortcut = self.shortcut_pool(inputs) if self.shortcut_pool is not None else inputs
        total = tf.reduce_sum(weights, axis=0, keepdims=True)  # [1, T]: sum_o w_{o,t}
        return mixed + mix_ops(shortcut, total, per_edge=False)

    def get_config(self):
        return {**super().get_config(), "ops": [list(op) for op in self.ops],
                "strides": self.strides, "fan_out": self.fan_out,
                "config": self.config.to_dict()}
