r"""Larq's one-padded binary convolution, trained without materialising its padding.

A binary conv pads with ones (``pad_values=1``, so that LCE's binary kernels see a valid
\\(\pm 1\\) everywhere). Larq pads explicitly and convolves the padded tensor, which costs a
copy of every input and, in the backward pass, a slice of every input gradient. Because a
convolution is linear in its input, the one-padded result splits into the zero-padded
convolution, which oneDNN pads internally, and a constant term of the padding alone:

\\[ W * \mathrm{pad}_c(x) = W * \mathrm{pad}_0(x) + c\,\big(W * \mathrm{pad}_1(0)\big), \\]

where the second term is the same for every image: the ring of padding convolved with the
kernel summed over its input channels (`padding_ring_term`).

A dilated convolution (rate \\(d\\)) on a \\(H \times W\\) map is \\(d^2\\) dense
convolutions of the phase maps \\(x[a::d, b::d]\\) (`tf.space_to_batch`); on a small map the
taps of a large kernel that cannot reach any pixel of a phase map read only padding, so the
dense convolutions use the kernel cropped to the taps that can (a dilated 5x5 on a 4x4 map
is a 3x3 on its 2x2 phase maps). Measured forward + backward of one conv at batch 128 on the
project's 2-core CPU (`docs/speed.md`): 15 to 70 % faster than the explicit padding.

`OnesPaddedQuantConv2D` is a Larq `QuantConv2D` that computes this way in training and as
Larq does in inference, so LCE converts exactly the graph it converted before.
"""

from __future__ import annotations

import larq as lq
import numpy as np
import tensorflow as tf
from larq import utils

__all__ = ["OnesPaddedQuantConv2D", "one_padded_conv2d", "padding_ring_term",
           "supports_one_padded_conv2d"]


def supports_one_padded_conv2d(kernel_size: int, strides: int, dilation_rate: int) -> bool:
    """Whether `one_padded_conv2d` computes this "same" convolution: stride 1 and an odd
    kernel (symmetric padding); any dilation rate."""
    return strides == 1 and kernel_size % 2 == 1 and dilation_rate >= 1


def padding_ring_term(height: int, width: int, kernel: tf.Tensor, dilation_rate: int,
                      pad_value: float = 1.0) -> tf.Tensor:
    """``[1, H, W, C_out]``: the "same" convolution's output from its padding alone, a ring of
    `pad_value` around a ``H x W`` map of zeros.

    One small matrix product: a constant ``[H W, k k]`` matrix saying which taps of each
    output land on the padding, times the kernel summed over its input channels (cheaper to
    trace and to differentiate than a convolution of the ring)."""
    k = int(kernel.shape[0])
    d = int(dilation_rate)
    p = (k - 1) * d // 2
    ring = np.pad(np.zeros((height, width)), p, constant_values=pad_value)
    taps = np.stack([ring[u * d:u * d + height, v * d:v * d + width]
                     for u in range(k) for v in range(k)], axis=-1)
    summed = tf.reshape(tf.reduce_sum(kernel, axis=2), [k * k, -1])  # [k k, C_out]
    term = tf.matmul(tf.constant(taps.reshape(height * width, k * k), kernel.dtype), summed)
    return tf.reshape(term, [1, height, width, -1])


def _cropped(kernel: tf.Tensor, reach: int) -> tf.Tensor:
    """The kernel's taps at most `reach` pixels from its centre (the others read padding)."""
    half = (int(kernel.shape[0]) - 1) // 2
    if half <= reach:
        return kernel
    return kernel[half - reach:half + reach + 1, half - reach:half + reach + 1]


def one_padded_conv2d(inputs: tf.Tensor, kernel: tf.Tensor, dilation_rate: int = 1,
                      pad_value: float = 1.0) -> tf.Tensor:
    r"""Stride-1 "same" convolution of NHWC `inputs` padded with `pad_value`, without
    padding them: equal (to float rounding) to Larq's ``tf.pad(inputs, ..., pad_value)``
    followed by a "valid" convolution, for an odd square `kernel` ``[k, k, C_in, C_out]``.
    """
    height, width = int(inputs.shape[1]), int(inputs.shape[2])
    d = int(dilation_rate)
    if d == 1:
        reach = max(height, width) - 1
        out = tf.nn.conv2d(inputs, _cropped(kernel, reach), 1, "SAME")
    else:
        # Phase maps of ceil(H / d) x ceil(W / d); the zeros that round them up lie outside
        # the map, where zero padding puts zeros too.
        extra = [[0, -height % d], [0, -width % d]]
        phases = tf.space_to_batch(inputs, [d, d], extra)
        reach = max(int(phases.shape[1]), int(phases.shape[2])) - 1
        out = tf.nn.conv2d(phases, _cropped(kernel, reach), 1, "SAME")
        out = tf.batch_to_space(out, [d, d], extra)
    if pad_value == 0 or kernel.shape[0] == 1:  # no padding, or zeros
        return out
    return out + padding_ring_term(height, width, kernel, d, pad_value)


@utils.register_keras_custom_object
class OnesPaddedQuantConv2D(lq.layers.QuantConv2D):
    """A Larq `QuantConv2D` whose constant "same" padding is computed by `one_padded_conv2d`
    in training: the same function and variables, a smaller training graph.

    In inference (``training`` false), and for strides, even kernels or groups it does not
    cover, it is Larq's `QuantConv2D` unchanged, so saving, loading and LCE conversion see
    the layer Larq defines.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pad_in_conv = False

    def _trains_without_pad(self, inputs) -> bool:
        kh, kw = self.kernel_size
        return (not self._is_native_padding and not tf.is_tensor(self.pad_values)
                and kh == kw and self.strides[0] == self.strides[1] and self.groups == 1
                and self.dilation_rate[0] == self.dilation_rate[1]
                and self.data_format == "channels_last"
                and inputs.shape[1:3].is_fully_defined()
                and supports_one_padded_conv2d(kh, self.strides[0], self.dilation_rate[0]))

    def call(self, inputs, training=None):
        if not training or not self._trains_without_pad(inputs):
            return super().call(inputs)
        # Larq skips its explicit pad for "native" padding; the conv op adds the ring.
        with utils.patch_object(self, "_is_native_padding", True), \
                utils.patch_object(self, "_pad_in_conv", True):
            return super().call(inputs)

    def convolution_op(self, inputs, kernel):
        if not self._pad_in_conv:
            return super().convolution_op(inputs, kernel)
        return one_padded_conv2d(inputs, tf.convert_to_tensor(kernel), self.dilation_rate[0],
                                 float(self.pad_values))
