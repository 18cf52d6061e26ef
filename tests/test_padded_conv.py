"""`ubnas_tf.padded_conv`: the one-padded convolution without its padding equals Larq's
explicit padding (outputs and both gradients), and `OnesPaddedQuantConv2D` uses it only in
training."""

from __future__ import annotations

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from ubnas_tf.modules import BinaryConvModule
from ubnas_tf.padded_conv import OnesPaddedQuantConv2D, one_padded_conv2d


def _explicit(x, kernel, dilation, pad_value):
    """Larq's way: pad with `pad_value`, then a "valid" convolution."""
    p = (kernel.shape[0] - 1) * dilation // 2
    padded = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=pad_value)
    return tf.nn.convolution(padded, kernel, padding="VALID", dilations=dilation)


def _value_and_grads(fn, x, kernel):
    x, kernel = tf.constant(x), tf.constant(kernel)
    upstream = tf.constant(np.random.default_rng(1).normal(
        size=fn(x, kernel).shape).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = fn(x, kernel)
        loss = tf.reduce_sum(y * upstream)
    return [y.numpy(), *(g.numpy() for g in tape.gradient(loss, [x, kernel]))]


@pytest.mark.parametrize("size", [(14, 14), (7, 7), (4, 4), (5, 3), (2, 2), (1, 6)])
@pytest.mark.parametrize("kernel_size,dilation", [(1, 1), (3, 1), (5, 1), (3, 2), (5, 2), (3, 3)])
@pytest.mark.parametrize("pad_value", [1.0, -0.5])
def test_equals_explicit_padding_with_both_gradients(size, kernel_size, dilation, pad_value):
    rng = np.random.default_rng(0)
    x = np.sign(rng.normal(size=(3, *size, 4))).astype("float32")
    kernel = rng.normal(size=(kernel_size, kernel_size, 4, 5)).astype("float32")
    expected = _value_and_grads(lambda a, w: _explicit(a, w, dilation, pad_value), x, kernel)
    got = _value_and_grads(lambda a, w: one_padded_conv2d(a, w, dilation, pad_value), x, kernel)
    for name, e, g in zip(("output", "input gradient", "kernel gradient"), expected, got,
                          strict=True):
        assert g.shape == e.shape, name
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-4, err_msg=name)


def _op_types(layer, x, training):
    fn = tf.function(lambda t: layer(t, training=training))
    return {op.type for op in fn.get_concrete_function(x).graph.get_operations()}


def _pair(**kwargs):
    """A `OnesPaddedQuantConv2D` and a Larq `QuantConv2D` with the same weights."""
    common = dict(filters=6, padding="same", pad_values=1.0, use_bias=False,
                  input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                  kernel_constraint="weight_clip", **kwargs)
    ours, larqs = OnesPaddedQuantConv2D(**common), lq.layers.QuantConv2D(**common)
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 7, 7, 3)).astype("float32"))
    ours(x), larqs(x)
    larqs.set_weights(ours.get_weights())
    return ours, larqs, x


@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (5, 2)])
def test_layer_trains_without_a_pad_op_and_infers_as_larq(kernel_size, dilation):
    ours, larqs, x = _pair(kernel_size=kernel_size, dilation_rate=dilation)
    assert not {"Pad", "PadV2"} & _op_types(ours, x, training=True)
    assert "PadV2" in _op_types(ours, x, training=False)  # what LCE converts
    for training in (True, False):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y_ours = ours(x, training=training)
            y_larq = larqs(x, training=training)
        np.testing.assert_allclose(y_ours.numpy(), y_larq.numpy(), atol=1e-4)
        g_ours = tape.gradient(y_ours, [x, ours.kernel])
        g_larq = tape.gradient(y_larq, [x, larqs.kernel])
        for a, b in zip(g_ours, g_larq, strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)


def test_a_strided_conv_keeps_larqs_padding():
    ours, larqs, x = _pair(kernel_size=3, strides=2)
    assert "PadV2" in _op_types(ours, x, training=True)
    np.testing.assert_allclose(ours(x, training=True).numpy(),
                               larqs(x, training=True).numpy(), atol=1e-5)


def test_serialises_as_itself_and_binary_modules_use_it():
    ours, _, _ = _pair(kernel_size=3)
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(ours))
    assert type(clone) is OnesPaddedQuantConv2D
    assert clone.get_config() == ours.get_config()
    module = BinaryConvModule(3, dilation_rate=2, config="universal")
    module(tf.zeros((1, 8, 8, 4)))
    assert type(module.conv) is OnesPaddedQuantConv2D
