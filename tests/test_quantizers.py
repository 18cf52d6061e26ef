"""Behaviour of the binary activation quantizers: Larq's ``approx_sign`` (reused as is) and
our ``LearnableThresholdApproxSign``.

Covers forward values, straight-through gradients, (de)serialisation, Keras model save/load
and conversion with the Larq Compute Engine (LCE) into real binary ops.
"""

from __future__ import annotations

import collections

import larq as lq
import larq_compute_engine as lce
import numpy as np
import pytest
import tensorflow as tf
from larq_compute_engine.mlir.python import tflite_schema
from larq_compute_engine.tflite.python.interpreter import Interpreter

from ubnas_tf.quantizers import (
    ACTIVATION_QUANTIZERS,
    KERNEL_QUANTIZERS,
    LearnableThresholdApproxSign,
    calibrate_thresholds,
    get_activation_quantizer,
    get_kernel_quantizer,
)

# Points on both sides of, on, and inside the |u| <= 1 gradient window. All are dyadic
# rationals, so x = b + u is exact in float32 for the thresholds used below.
GRAD_POINTS = np.array([-1.5, -1.0, -0.5, 0.0, 0.25, 1.0, 1.2], dtype=np.float32)


def expected_approx_sign_grad(u: np.ndarray) -> np.ndarray:
    u = np.asarray(u, dtype=np.float64)
    return np.where(np.abs(u) <= 1.0, 2.0 - 2.0 * np.abs(u), 0.0)


def _threshold_quantizer(thresholds, **kwargs) -> LearnableThresholdApproxSign:
    """A built quantizer with its per-channel threshold set (via assign) to `thresholds`."""
    thresholds = np.asarray(thresholds, dtype=np.float32)
    q = LearnableThresholdApproxSign(**kwargs)
    q.build(tf.TensorShape([None, thresholds.shape[0]]))
    q.threshold.assign(thresholds)
    return q


# --------------------------------------------------------------------------------------------
# Forward values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantizer", ["approx_sign", "instance"])
def test_approx_sign_forward_is_plus_minus_one_never_zero(quantizer):
    q = lq.quantizers.get("approx_sign") if quantizer == "approx_sign" else lq.quantizers.ApproxSign()
    x = tf.constant([-3.0, -1.0, -1e-7, 0.0, -0.0, 1e-7, 0.5, 2.0])
    y = q(x).numpy()
    np.testing.assert_array_equal(y, [-1, -1, -1, 1, 1, 1, 1, 1])
    # Random values too, including exact zeros.
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 5)).astype(np.float32)
    x[0, 0, 0, :] = 0.0
    y = q(tf.constant(x)).numpy()
    assert set(np.unique(y).tolist()) <= {-1.0, 1.0}
    np.testing.assert_array_equal(y, np.where(x >= 0, 1.0, -1.0))


def test_plain_tf_sign_is_zero_at_zero():
    # Documents why the quantizers must use larq.math.sign, not tf.sign.
    assert tf.sign(tf.constant(0.0)).numpy() == 0.0
    assert lq.math.sign(tf.constant(0.0)).numpy() == 1.0


def test_learnable_threshold_forward_default_threshold_is_zero():
    q = LearnableThresholdApproxSign()
    x = tf.constant([[-2.0, -0.0, 0.0, 0.3], [1e-7, -1e-7, 5.0, -5.0]])
    y = q(x).numpy()
    np.testing.assert_array_equal(q.threshold.numpy(), np.zeros(4, np.float32))
    np.testing.assert_array_equal(y, [[-1, 1, 1, 1], [1, -1, 1, -1]])


def test_learnable_threshold_forward_with_nonzero_threshold():
    b = np.array([0.3, -0.7, 1.25], dtype=np.float32)
    q = _threshold_quantizer(b)
    # Row 0: exactly at the threshold -> +1 (never 0). Row 1: just below. Row 2: just above.
    x = np.stack([b, np.nextafter(b, -np.inf), np.nextafter(b, np.inf), np.zeros(3, np.float32)])
    y = q(tf.constant(x)).numpy()
    assert set(np.unique(y).tolist()) <= {-1.0, 1.0}
    np.testing.assert_array_equal(y[0], [1, 1, 1])
    np.testing.assert_array_equal(y[1], [-1, -1, -1])
    np.testing.assert_array_equal(y[2], [1, 1, 1])
    # x = 0: sign(0 - b) = -1 where b > 0, +1 where b < 0.
    np.testing.assert_array_equal(y[3], [-1, 1, -1])


def test_learnable_threshold_forward_nhwc_broadcasts_per_channel():
    b = np.array([0.5, -0.5], dtype=np.float32)
    q = _threshold_quantizer(b)
    x = np.random.default_rng(1).uniform(-2, 2, size=(3, 4, 4, 2)).astype(np.float32)
    x[0, 0, 0] = b  # exactly at the thresholds
    y = q(tf.constant(x)).numpy()
    np.testing.assert_array_equal(y, np.where(x - b >= 0, 1.0, -1.0))
    np.testing.assert_array_equal(y[0, 0, 0], [1.0, 1.0])


def test_learnable_threshold_needs_known_channels():
    q = LearnableThresholdApproxSign()
    with pytest.raises(ValueError, match="channel dimension"):
        q.build(tf.TensorShape([None, None]))


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


def test_approx_sign_gradient():
    q = lq.quantizers.get("approx_sign")
    x = tf.constant(GRAD_POINTS)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = q(x)
    grad = tape.gradient(y, x).numpy()
    np.testing.assert_allclose(grad, [0.0, 0.0, 1.0, 2.0, 1.5, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(grad, expected_approx_sign_grad(GRAD_POINTS), atol=1e-6)


def test_approx_sign_gradient_is_scaled_by_upstream():
    q = lq.quantizers.ApproxSign()
    x = tf.constant(GRAD_POINTS)
    w = tf.constant(np.arange(1, len(GRAD_POINTS) + 1, dtype=np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(w * q(x))
    np.testing.assert_allclose(
        tape.gradient(loss, x).numpy(), w.numpy() * expected_approx_sign_grad(GRAD_POINTS), atol=1e-6
    )


def test_learnable_threshold_gradient_zero_threshold_matches_approx_sign():
    q = LearnableThresholdApproxSign()
    x = tf.constant(GRAD_POINTS[:, None])  # batch of 7, one channel
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = q(x)
    grad = tape.gradient(y, x).numpy()[:, 0]
    np.testing.assert_allclose(grad, expected_approx_sign_grad(GRAD_POINTS), atol=1e-6)


def test_learnable_threshold_gradients_wrt_input_and_threshold():
    b = np.array([0.5, -0.25, 1.0], dtype=np.float32)
    q = _threshold_quantizer(b)
    u = GRAD_POINTS[:, None]  # [7, 1] shifted inputs, the same for every channel
    x_np = (u + b[None, :]).astype(np.float32)  # [7, 3]: exact in float32
    np.testing.assert_array_equal(x_np - b, np.broadcast_to(u, x_np.shape))
    # Distinct upstream gradients per element so that the sum over the batch is checked.
    dy = np.random.default_rng(2).uniform(0.5, 2.0, size=x_np.shape).astype(np.float32)
    x = tf.constant(x_np)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.constant(dy) * q(x))
    grad_x, grad_b = tape.gradient(loss, [x, q.threshold])

    local = expected_approx_sign_grad(x_np - b)  # 2 - 2|x - b| inside, 0 outside
    np.testing.assert_allclose(grad_x.numpy(), dy * local, atol=1e-6)
    # Unit upstream at the chosen points: exactly the ApproxSign values per point.
    np.testing.assert_allclose(local[:, 0], [0.0, 0.0, 1.0, 2.0, 1.5, 0.0, 0.0])
    assert grad_b.shape == (3,)
    np.testing.assert_allclose(grad_b.numpy(), -(dy * local).sum(axis=0), rtol=1e-6, atol=1e-6)


def test_learnable_threshold_gradient_wrt_threshold_sums_over_spatial_and_batch():
    b = np.array([0.1, -0.2], dtype=np.float32)
    q = _threshold_quantizer(b)
    x_np = np.random.default_rng(3).uniform(-2, 2, size=(2, 3, 3, 2)).astype(np.float32)
    x = tf.constant(x_np)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(q(x))
    grad_x, grad_b = tape.gradient(loss, [x, q.threshold])
    local = expected_approx_sign_grad(x_np - b)
    np.testing.assert_allclose(grad_x.numpy(), local, atol=1e-5)
    np.testing.assert_allclose(grad_b.numpy(), -local.sum(axis=(0, 1, 2)), atol=1e-4)


def test_learnable_threshold_is_the_only_trainable_weight():
    q = _threshold_quantizer([0.0, 0.0])
    assert [w.name.split("/")[-1].split(":")[0] for w in q.trainable_weights] == ["threshold"]
    assert q.non_trainable_weights == []
    assert q.precision == 1


# --------------------------------------------------------------------------------------------
# Calibration of the thresholds from data
# --------------------------------------------------------------------------------------------


def _two_sign_model():
    """conv (bias 1.5: inputs far from 0) -> sign|bconv -> BN -> sign|bconv, thresholds at 0."""
    inputs = tf.keras.Input((6, 6, 3))
    h = tf.keras.layers.Conv2D(4, 3, padding="same", name="real_conv",
                               bias_initializer=tf.keras.initializers.Constant(1.5))(inputs)
    h = lq.layers.QuantConv2D(4, 3, padding="same", use_bias=False, name="bconv1",
                              input_quantizer=LearnableThresholdApproxSign(name="sign1"),
                              kernel_quantizer="ste_sign")(h)
    h = tf.keras.layers.BatchNormalization(name="bn")(h)
    out = lq.layers.QuantConv2D(2, 3, padding="same", use_bias=False, name="bconv2",
                                input_quantizer=LearnableThresholdApproxSign(name="sign2"),
                                kernel_quantizer="ste_sign")(h)
    return tf.keras.Model(inputs, out)


def test_calibrate_thresholds_sets_each_to_the_mean_of_its_input():
    tf.keras.utils.set_random_seed(3)
    model = _two_sign_model()
    bn = model.get_layer("bn")
    bn.set_weights([np.full(4, 1.2, np.float32), np.full(4, 0.3, np.float32),
                    np.linspace(-1, 1, 4).astype(np.float32), np.full(4, 2.0, np.float32)])
    x = np.random.default_rng(0).normal(size=(16, 6, 6, 3)).astype(np.float32)
    q1 = model.get_layer("bconv1").input_quantizer
    q2 = model.get_layer("bconv2").input_quantizer
    untouched = {v.name: v.numpy() for v in model.variables
                 if v is not q1.threshold and v is not q2.threshold}

    names = calibrate_thresholds(model, x)

    assert names == [q1.threshold.name, q2.threshold.name]
    # Nothing else changed (BN's moving statistics neither), the quantizers are themselves again.
    for v in model.variables:
        if v.name in untouched:
            np.testing.assert_array_equal(v.numpy(), untouched[v.name], err_msg=v.name)
    assert "call" not in vars(q1) and "call" not in vars(q2)
    # sign1's input is the real conv's output; sign2's is BN (batch statistics) of bconv1
    # with sign1 already calibrated.
    first = model.get_layer("real_conv")(x).numpy()
    np.testing.assert_allclose(q1.threshold.numpy(), first.mean(axis=(0, 1, 2)), rtol=1e-5)
    assert np.all(q1.threshold.numpy() > 0.5)  # the 1.5 bias: 0 was far off
    second = bn(model.get_layer("bconv1")(first), training=True).numpy()
    np.testing.assert_allclose(q2.threshold.numpy(), second.mean(axis=(0, 1, 2)), atol=1e-5)
    # Calibrated, every channel of sign1's output is +1 at a fair share of the positions.
    share = (q1(first).numpy() > 0).mean(axis=(0, 1, 2))
    assert np.all((share > 0.2) & (share < 0.8)), share


def test_calibrate_thresholds_without_learnable_thresholds_changes_nothing():
    inputs = tf.keras.Input((6, 6, 3))
    h = tf.keras.layers.BatchNormalization()(inputs)
    out = lq.layers.QuantConv2D(2, 3, input_quantizer="approx_sign",
                                kernel_quantizer="ste_sign")(h)
    model = tf.keras.Model(inputs, out)
    before = [v.numpy() for v in model.variables]
    assert calibrate_thresholds(model, np.ones((2, 6, 6, 3), np.float32)) == []
    for v, b in zip(model.variables, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), b)


# --------------------------------------------------------------------------------------------
# Serialisation and registration
# --------------------------------------------------------------------------------------------


def test_learnable_threshold_config_round_trip_preserves_initializer():
    q = LearnableThresholdApproxSign(
        threshold_initializer=tf.keras.initializers.Constant(0.3),
        threshold_regularizer=tf.keras.regularizers.L2(1e-3),
        name="rsign",
    )
    config = q.get_config()
    assert config["name"] == "rsign"
    assert config["threshold_initializer"]["class_name"] == "Constant"
    assert config["threshold_initializer"]["config"]["value"] == pytest.approx(0.3)
    assert config["threshold_regularizer"]["class_name"] == "L2"

    q2 = LearnableThresholdApproxSign.from_config(config)
    assert isinstance(q2.threshold_initializer, tf.keras.initializers.Constant)
    assert isinstance(q2.threshold_regularizer, tf.keras.regularizers.L2)
    assert q2.get_config() == config
    q2.build(tf.TensorShape([None, 4]))
    np.testing.assert_allclose(q2.threshold.numpy(), np.full(4, 0.3, np.float32))


def test_learnable_threshold_config_round_trip_defaults():
    q = LearnableThresholdApproxSign()
    config = q.get_config()
    assert config["threshold_regularizer"] is None
    q2 = LearnableThresholdApproxSign.from_config(config)
    assert isinstance(q2.threshold_initializer, tf.keras.initializers.Zeros)
    assert q2.threshold_regularizer is None


def test_learnable_threshold_serialize_deserialize_via_larq():
    q = LearnableThresholdApproxSign(threshold_initializer=tf.keras.initializers.Constant(-0.4))
    q2 = lq.quantizers.get(lq.quantizers.serialize(q))
    assert type(q2) is LearnableThresholdApproxSign
    assert q2 is not q
    assert q2.get_config()["threshold_initializer"] == q.get_config()["threshold_initializer"]


def test_registration_and_alias():
    custom = tf.keras.utils.get_custom_objects()
    assert custom["LearnableThresholdApproxSign"] is LearnableThresholdApproxSign
    assert custom["learnable_threshold_approx_sign"] is LearnableThresholdApproxSign
    q = lq.quantizers.get("learnable_threshold_approx_sign")
    assert isinstance(q, LearnableThresholdApproxSign)
    assert isinstance(lq.quantizers.get("LearnableThresholdApproxSign"), LearnableThresholdApproxSign)
    # Larq's own approx_sign alias resolves to its ApproxSign class.
    assert isinstance(lq.quantizers.get("approx_sign"), lq.quantizers.ApproxSign)


def test_get_activation_and_kernel_quantizer_helpers():
    assert isinstance(get_activation_quantizer("approx_sign"), lq.quantizers.ApproxSign)
    a = get_activation_quantizer("learnable_threshold_approx_sign")
    b = get_activation_quantizer("learnable_threshold_approx_sign")
    assert isinstance(a, LearnableThresholdApproxSign) and a is not b
    with pytest.raises(ValueError, match="Unknown activation quantizer"):
        get_activation_quantizer("ste_sign_typo")
    assert isinstance(get_kernel_quantizer("ste_sign"), lq.quantizers.SteSign)
    mas = get_kernel_quantizer("magnitude_aware_sign", clip_value=0.5)
    assert isinstance(mas, lq.quantizers.MagnitudeAwareSign)
    assert mas.get_config()["clip_value"] == 0.5
    with pytest.raises(ValueError, match="Unknown kernel quantizer"):
        get_kernel_quantizer("approx_sign")
    assert set(ACTIVATION_QUANTIZERS) == {"approx_sign", "learnable_threshold_approx_sign"}
    assert set(KERNEL_QUANTIZERS) == {"ste_sign", "magnitude_aware_sign"}


# --------------------------------------------------------------------------------------------
# Model save / load
# --------------------------------------------------------------------------------------------


def _tiny_threshold_model(channels: int = 4) -> tf.keras.Model:
    inputs = tf.keras.Input((6, 6, channels))
    x = lq.layers.QuantConv2D(
        8,
        3,
        input_quantizer=LearnableThresholdApproxSign(),
        kernel_quantizer="magnitude_aware_sign",
        kernel_constraint="weight_clip",
        pad_values=1.0,
        padding="same",
        use_bias=False,
        name="qconv",
    )(inputs)
    x = tf.keras.layers.BatchNormalization(name="bn")(x)
    return tf.keras.Model(inputs, x)


def _quantizer_threshold(model: tf.keras.Model) -> np.ndarray:
    q = model.get_layer("qconv").input_quantizer
    assert isinstance(q, LearnableThresholdApproxSign)
    return q.threshold.numpy()


@pytest.mark.parametrize("fmt", ["keras", "savedmodel"])
def test_model_save_load_round_trip(tmp_path, fmt):
    tf.keras.utils.set_random_seed(0)
    model = _tiny_threshold_model()
    thresholds = np.array([0.25, -0.5, 0.75, -0.125], dtype=np.float32)
    model.get_layer("qconv").input_quantizer.threshold.assign(thresholds)
    # The threshold is a trainable weight of the model (so optimisers update it).
    assert any("threshold" in w.name for w in model.trainable_weights)

    x = np.random.default_rng(4).uniform(-1.5, 1.5, size=(3, 6, 6, 4)).astype(np.float32)
    expected = model.predict(x, verbose=0)

    if fmt == "keras":
        path = tmp_path / "model.keras"
        tf.keras.models.save_model(model, path)
    else:
        path = tmp_path / "saved_model"
        tf.keras.models.save_model(model, path, save_format="tf")
    # No custom_objects: registering the quantizer must be enough.
    loaded = tf.keras.models.load_model(path)

    np.testing.assert_array_equal(_quantizer_threshold(loaded), thresholds)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    # The reloaded threshold still matters: changing it changes the output.
    loaded.get_layer("qconv").input_quantizer.threshold.assign(np.zeros(4, np.float32))
    assert not np.array_equal(loaded.predict(x, verbose=0), expected)


# --------------------------------------------------------------------------------------------
# LCE conversion
# --------------------------------------------------------------------------------------------


def _op_counts(flatbuffer: bytes) -> collections.Counter:
    """Counts the operators of the flatbuffer's subgraphs by op name (custom or builtin)."""
    builtin_names = {
        v: k for k, v in vars(tflite_schema.BuiltinOperator).items() if not k.startswith("_")
    }
    model = tflite_schema.Model.GetRootAsModel(flatbuffer, 0)
    code_names = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        custom = code.CustomCode()
        if custom is not None:
            code_names.append(custom.decode())
        else:
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            code_names.append(builtin_names.get(builtin, f"builtin_{builtin}"))
    counts = collections.Counter()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for j in range(subgraph.OperatorsLength()):
            counts[code_names[subgraph.Operators(j).OpcodeIndex()]] += 1
    return counts


def _bn_conv_bn(input_quantizer, kernel_quantizer) -> tf.keras.Model:
    inputs = tf.keras.Input((8, 8, 32))
    x = tf.keras.layers.BatchNormalization()(inputs)
    x = lq.layers.QuantConv2D(
        32,
        3,
        input_quantizer=input_quantizer,
        kernel_quantizer=kernel_quantizer,
        kernel_constraint="weight_clip",
        padding="same",
        pad_values=1.0,
        use_bias=False,
        name="qconv",
    )(x)
    x = tf.keras.layers.BatchNormalization()(x)
    return tf.keras.Model(inputs, x)


def _randomise_batchnorms(model: tf.keras.Model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                rng.uniform(-0.3, 0.3, beta.shape).astype(np.float32),
                rng.uniform(-0.3, 0.3, mean.shape).astype(np.float32),
                rng.uniform(0.5, 1.5, var.shape).astype(np.float32),
            ])


@pytest.mark.parametrize("kernel_quantizer", ["ste_sign", "magnitude_aware_sign"])
@pytest.mark.parametrize("input_quantizer", ["approx_sign", "learnable_threshold"])
def test_lce_conversion_gives_binary_conv(input_quantizer, kernel_quantizer):
    iq = LearnableThresholdApproxSign() if input_quantizer == "learnable_threshold" else "approx_sign"
    model = _bn_conv_bn(iq, kernel_quantizer)
    if input_quantizer == "learnable_threshold":
        q = model.get_layer("qconv").input_quantizer
        q.threshold.assign(np.linspace(-0.5, 0.5, 32).astype(np.float32))
    counts = _op_counts(lce.convert_keras_model(model))
    assert counts["LceBconv2d"] == 1, counts
    assert counts["LceQuantize"] >= 1, counts
    assert counts["CONV_2D"] == 0, counts  # no silent float fallback


def test_lce_plain_tf_sign_quantizer_falls_back_to_float_conv():
    """Pitfall: a quantizer written with plain tf.sign (0 at 0) is not recognised as binary."""

    def tf_sign_quantizer(x):
        return tf.sign(x)

    model = _bn_conv_bn(tf_sign_quantizer, tf_sign_quantizer)
    counts = _op_counts(lce.convert_keras_model(model))
    assert counts["LceBconv2d"] == 0, counts
    assert counts["CONV_2D"] == 1, counts


def test_lce_interpreter_matches_keras_predict():
    tf.keras.utils.set_random_seed(5)
    model = _bn_conv_bn(LearnableThresholdApproxSign(), "magnitude_aware_sign")
    _randomise_batchnorms(model, seed=6)
    q = model.get_layer("qconv").input_quantizer
    q.threshold.assign(np.random.default_rng(7).uniform(-0.5, 0.5, 32).astype(np.float32))

    flatbuffer = lce.convert_keras_model(model)
    assert _op_counts(flatbuffer)["LceBconv2d"] == 1

    x = np.random.default_rng(8).normal(size=(2, 8, 8, 32)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    interpreter = Interpreter(
        flatbuffer,
        num_threads=1,
        use_reference_bconv=False,
        use_indirect_bgemm=False,
        use_xnnpack=False,
    )
    got = interpreter.predict(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-3)
