"""Tests of ubnas_tf.nets: the evaluation network, drop-path, two-stage retraining, and the
evaluation network's save/load, LCE conversion and cost accounting.

Models are tiny (8x8 inputs, 3 cells, init_channels=32) so the file runs in a few minutes
on 2 shared CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
import os

import larq as lq
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config
from tool_runs import FASHION_SKIP_REASON, HAVE_FASHION

from ubnas_tf.cost import iter_layers
from ubnas_tf.data import inputs
from ubnas_tf.deploy import (
    binary_conv_layers,
    convert_model,
    flatbuffer_op_counts,
    float_architecture,
    model_cost,
    verify_conversion,
)
from ubnas_tf.genotype import Genotype
from ubnas_tf.io_utils import read_json
from ubnas_tf.modules import (
    MODULE_CONFIGS,
    BinaryConvModule,
    BinaryPreprocess,
    FixedReduction,
    ModuleConfig,
)
from ubnas_tf.nets import training
from ubnas_tf.nets.eval_network import (
    EvalNetworkConfig,
    build_eval_network,
    check_lce_alignment,
    inference_model,
)
from ubnas_tf.nets.layers import DropPath, DropPathSchedule
from ubnas_tf.nets.training import (
    TrainConfig,
    carry_weights,
    run_training,
    smoothed_sparse_crossentropy,
)
from ubnas_tf.quantizers import LearnableThresholdApproxSign, calibrate_thresholds
from ubnas_tf.rundir import ResumeError, RunDirectory

INPUT_SHAPE = (8, 8, 3)
NUM_CLASSES = 10

# Every non-none op; the reduction cell applies bdil_conv_5x5 and skip_connect (and a max
# pool and bconv_5x5) to its inputs 0/1, i.e. at stride 2.
ALL_OPS = Genotype(
    normal=(("bconv_3x3", 0), ("skip_connect", 1), ("bconv_5x5", 1), ("max_pool_3x3", 2),
            ("bdil_conv_3x3", 0), ("avg_pool_3x3", 3), ("bdil_conv_5x5", 2), ("skip_connect", 4)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("bdil_conv_5x5", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("bconv_3x3", 1),
            ("avg_pool_3x3", 1), ("bdil_conv_3x3", 2), ("bconv_5x5", 0), ("skip_connect", 3)),
    reduce_concat=(2, 3, 4, 5),
)
# A two-node genotype for the tests that only need some binary convs.
SMALL = Genotype(
    normal=(("bconv_3x3", 0), ("skip_connect", 1), ("bdil_conv_3x3", 1), ("avg_pool_3x3", 2)),
    normal_concat=(2, 3),
    reduce=(("bdil_conv_5x5", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("bconv_5x5", 2)),
    reduce_concat=(2, 3),
)
# One node per cell (its concat names a single state): the fastest network to save, load
# and convert.
TINY = Genotype(
    normal=(("bconv_3x3", 0), ("skip_connect", 1)),
    normal_concat=(2,),
    reduce=(("bdil_conv_5x5", 0), ("skip_connect", 1)),
    reduce_concat=(2,),
)
OP_NAMES = {"skip_connect", "max_pool_3x3", "avg_pool_3x3", "bconv_3x3", "bconv_5x5",
            "bdil_conv_3x3", "bdil_conv_5x5"}


def net_config(**kwargs) -> EvalNetworkConfig:
    return EvalNetworkConfig(**{"layers": 3, "init_channels": 32, "stem_strides": 1, **kwargs})


def build(genotype=SMALL, module_config=None, **kwargs) -> tf.keras.Model:
    return build_eval_network(genotype, INPUT_SHAPE, NUM_CLASSES, net_config(**kwargs), module_config)


def images(n: int, seed: int = 0, shape=INPUT_SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def quant_convs(model: tf.keras.Model) -> list[tuple[str, lq.layers.QuantConv2D]]:
    """Every QuantConv2D nested in `model`, with its path."""
    return [(p, layer) for p, layer in iter_layers(model) if isinstance(layer, lq.layers.QuantConv2D)]


def perturb(model: tf.keras.Model, seed: int = 0) -> None:
    """Gives BN statistics, thresholds and PReLU slopes non-default values, so that a save/load
    round trip that loses any of them changes the predictions."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        name = w.name
        if "moving_variance" in name:
            value = rng.uniform(0.5, 2.0, w.shape)
        elif "moving_mean" in name:
            value = rng.normal(0.0, 0.2, w.shape)
        elif "threshold" in name or "alpha" in name:
            value = rng.normal(0.0, 0.3, w.shape)
        else:
            continue
        w.assign(value.astype(np.float32))


@pytest.fixture(autouse=True)
def _seed():
    tf.keras.utils.set_random_seed(0)


@pytest.fixture(scope="module")
def all_ops_aux():
    tf.keras.utils.set_random_seed(0)
    return build(ALL_OPS, auxiliary=True)


@pytest.fixture(scope="module")
def all_ops_stage2():
    tf.keras.utils.set_random_seed(1)
    model = build(ALL_OPS)
    perturb(model, 1)
    return model


@pytest.fixture(scope="module")
def tiny_stage2():
    tf.keras.utils.set_random_seed(2)
    model = build(TINY)
    perturb(model, 2)
    return model


@pytest.fixture(scope="module")
def tiny_flatbuffer(tiny_stage2):
    return convert_model(inference_model(tiny_stage2))


# ---- 1. structure ---------------------------------------------------------------------


def test_genotype_uses_every_op():
    assert ALL_OPS.validate().ops_used() == OP_NAMES
    strided = {op for op, source in ALL_OPS.reduce if source < 2}
    assert {"bdil_conv_5x5", "skip_connect"} <= strided


def test_logits_shape_and_widths_double(all_ops_aux):
    model = all_ops_aux
    x = images(3)
    logits, aux = model(x, training=False)
    assert logits.shape == (3, NUM_CLASSES) and aux.shape == (3, NUM_CLASSES)
    # layers=3: cell 0 normal at C=32, cells 1 and 2 reductions at 2C and 4C; a cell outputs
    # 4 nodes x its width.
    assert model.get_layer("cell_0/out").output.shape.as_list() == [None, 8, 8, 4 * 32]
    assert model.get_layer("cell_1/out").output.shape.as_list() == [None, 4, 4, 4 * 64]
    assert model.get_layer("cell_2/out").output.shape.as_list() == [None, 2, 2, 4 * 128]
    assert model.get_layer("cell_1/n2").output.shape.as_list() == [None, 4, 4, 64]
    # The stride-2 ops of the reduction cell halve the resolution of their 8x8 input.
    for name in ("cell_1/n2_0_bdil_conv_5x5", "cell_1/n2_1_skip_connect",
                 "cell_1/n3_0_max_pool_3x3", "cell_1/n3_1_bconv_3x3", "cell_1/n5_0_bconv_5x5"):
        layer = model.get_layer(name)
        assert layer.input.shape.as_list()[1:3] == [8, 8], name
        assert layer.output.shape.as_list() == [None, 4, 4, 64], name


def test_auxiliary_head_and_inference_model(all_ops_aux):
    model = all_ops_aux
    assert len(model.outputs) == 2
    inference = inference_model(model)
    assert len(inference.outputs) == 1
    assert inference.output.shape.as_list() == [None, NUM_CLASSES]
    assert not any(layer.name.startswith("aux") for layer in inference.layers)
    x = images(4, seed=3)
    np.testing.assert_allclose(inference(x, training=False), model(x, training=False)[0], rtol=1e-6)
    plain = build(SMALL)
    assert len(plain.outputs) == 1 and inference_model(plain) is plain


# ---- 2. LCE channel alignment -----------------------------------------------------------


def test_binary_convs_are_32_aligned(all_ops_stage2):
    convs = binary_conv_layers(all_ops_stage2)
    # 3 cells x (2 preprocess convs + 4 binary-conv ops)
    assert len(convs) == len(quant_convs(all_ops_stage2)) == 18
    for layer in convs:
        assert int(layer.kernel.shape[-2]) % 32 == 0, layer.name
    assert check_lce_alignment(all_ops_stage2) == []


def test_unaligned_widths_raise_naming_the_layers():
    with pytest.raises(ValueError) as info:
        build(SMALL, init_channels=24)
    message = str(info.value)
    assert "32" in message
    # The stem outputs 3 x 24 = 72 channels; the cell-0 ops work at 24.
    assert "cell_0/preprocess0/bconv (72 channels)" in message
    assert "cell_0/n2_0_bconv_3x3/bconv (24 channels)" in message


def test_unaligned_widths_warn_when_allowed():
    with pytest.warns(UserWarning, match="multiple of 32") as record:
        model = build_eval_network(SMALL, INPUT_SHAPE, NUM_CLASSES, net_config(init_channels=24),
                                   allow_unaligned=True)
    messages = [str(w.message) for w in record if "multiple of 32" in str(w.message)]
    assert len(messages) == 1 and "cell_0/preprocess0/bconv (72 channels)" in messages[0]
    assert model(images(2), training=False).shape == (2, NUM_CLASSES)
    assert check_lce_alignment(model)


# ---- 3. two-stage training: quantizers and weight transfer ----------------------------


def test_stage1_and_stage2_quantizers_and_weight_transfer():
    stage1 = build(SMALL, binary_activations=False)
    stage2 = build(SMALL, binary_activations=True)
    convs1, convs2 = quant_convs(stage1), quant_convs(stage2)
    assert len(convs1) == len(convs2) > 0
    for path, layer in convs1:
        assert layer.input_quantizer is None, path
        assert isinstance(layer.kernel_quantizer, lq.quantizers.MagnitudeAwareSign), path
        assert layer.kernel_quantizer.precision == 1
    for path, layer in convs2:
        assert isinstance(layer.input_quantizer, lq.quantizers.ApproxSign), path
        assert isinstance(layer.kernel_quantizer, lq.quantizers.MagnitudeAwareSign), path
    assert binary_conv_layers(stage1) == []  # real activations: not binary convs for LCE
    assert len(binary_conv_layers(stage2)) == len(convs2)

    perturb(stage1)
    weights = stage1.get_weights()
    assert [w.shape for w in weights] == [w.shape for w in stage2.get_weights()]
    assert carry_weights({v.name: v.numpy() for v in stage1.weights}, stage2) == []
    for a, b in zip(stage2.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    x = images(4)
    out1 = stage1.predict(x, verbose=0)
    out2 = stage2.predict(x, verbose=0)
    assert np.all(np.isfinite(out2))
    assert np.max(np.abs(out1 - out2)) > 1e-3  # same weights, binary activations now


def test_stage2_with_learnable_thresholds_starts_from_stage1_weights():
    # reactnet's thresholds exist only with binary activations: a positional set_weights
    # between the stages fails, carrying by name leaves them at 0 (a plain sign).
    stage1 = build(SMALL, "reactnet", binary_activations=False)
    stage2 = build(SMALL, "reactnet", binary_activations=True)
    perturb(stage1)
    with pytest.raises(ValueError):
        stage2.set_weights(stage1.get_weights())
    fresh = carry_weights({v.name: v.numpy() for v in stage1.weights}, stage2)
    assert fresh and all(name.endswith("threshold:0") for name in fresh)
    assert len(fresh) == len(binary_conv_layers(stage2))
    by_name = {v.name: v.numpy() for v in stage2.weights}
    for v in stage1.weights:
        np.testing.assert_array_equal(by_name[v.name], v.numpy())
    for name in fresh:
        np.testing.assert_array_equal(by_name[name], 0.0)
    with pytest.raises(ValueError, match="no variable of the same name and shape"):
        carry_weights({v.name: v.numpy() for v in build(TINY).weights}, stage2)


# ---- 4. save / load without custom_objects --------------------------------------------


@pytest.mark.parametrize("module_config", ["universal", "reactnet"])
def test_save_load_round_trip(module_config, tmp_path):
    # TINY's cells concatenate a single state: such a model must reload too.
    model = build(TINY, module_config)
    perturb(model, 2)
    if module_config == "reactnet":
        quantizers = [layer.input_quantizer for _, layer in quant_convs(model)]
        assert all(isinstance(q, LearnableThresholdApproxSign) for q in quantizers)
        assert all(np.all(q.threshold.numpy() != 0) for q in quantizers)
        assert any(isinstance(layer, tf.keras.layers.PReLU) for _, layer in iter_layers(model))
    x = images(6, seed=5)
    expected = model(x, training=False).numpy()

    keras_path = str(tmp_path / "model.keras")
    model.save(keras_path)
    saved_dir = str(tmp_path / "saved_model")
    tf.keras.models.save_model(model, saved_dir, save_format="tf")
    for path in (keras_path, saved_dir):
        loaded = tf.keras.models.load_model(path)  # no custom_objects
        np.testing.assert_allclose(loaded(x, training=False).numpy(), expected, rtol=1e-5,
                                   atol=1e-5, err_msg=path)
        # The real classes come back (not revived stand-ins), thresholds included.
        pairs = list(zip(quant_convs(loaded), quant_convs(model), strict=True))
        assert pairs
        for (conv_path, new), (_, old) in pairs:
            assert type(new.input_quantizer) is type(old.input_quantizer), (path, conv_path)
            if module_config == "reactnet":
                np.testing.assert_array_equal(new.input_quantizer.threshold.numpy(),
                                              old.input_quantizer.threshold.numpy())


def test_keras_round_trip_of_every_op(all_ops_stage2, tmp_path):
    path = str(tmp_path / "all_ops.keras")
    all_ops_stage2.save(path)
    loaded = tf.keras.models.load_model(path)
    x = images(4, seed=6)
    np.testing.assert_allclose(loaded(x, training=False), all_ops_stage2(x, training=False),
                               rtol=1e-5, atol=1e-5)


# ---- 5. LCE conversion -----------------------------------------------------------------


def _check_lce(model: tf.keras.Model, flatbuffer: bytes) -> None:
    n_binary = len(binary_conv_layers(model))
    assert n_binary == len(quant_convs(model)) > 0
    counts = flatbuffer_op_counts(flatbuffer)
    assert counts["LceBconv2d"] == n_binary
    assert counts["CONV_2D"] == 1  # the real stem only
    report = verify_conversion(model, flatbuffer, images(16, seed=7))
    assert report.agreement >= 0.99
    assert report.n_lce_bconv == report.n_binary_convs == n_binary


def test_lce_conversion_universal(tiny_stage2, tiny_flatbuffer):
    _check_lce(inference_model(tiny_stage2), tiny_flatbuffer)


def test_lce_conversion_reactnet_every_op():
    model = build(ALL_OPS, "reactnet", auxiliary=True)
    perturb(model, 3)
    model = inference_model(model)
    _check_lce(model, convert_model(model))


def test_lce_model_much_smaller_than_float(tiny_flatbuffer):
    float_config = ModuleConfig(name="float", kernel_quantizer=None, activation_quantizer=None)
    float_model = build(TINY, float_config)
    assert binary_conv_layers(float_model) == []
    assert all(layer.kernel_quantizer is None for _, layer in quant_convs(float_model))
    float_tflite = tf.lite.TFLiteConverter.from_keras_model(float_model).convert()
    assert len(tiny_flatbuffer) * 10 <= len(float_tflite), (len(tiny_flatbuffer), len(float_tflite))


def test_float_architecture_removes_quantizers_keeps_weights(tiny_stage2):
    model = inference_model(tiny_stage2)
    float_model = float_architecture(model)
    assert binary_conv_layers(float_model) == []
    convs = quant_convs(float_model)
    assert len(convs) == len(quant_convs(model)) > 0
    assert all(layer.input_quantizer is None and layer.kernel_quantizer is None
               for _, layer in convs)
    for a, b in zip(model.get_weights(), float_model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # The same function as the architecture built in float from the start, same weights.
    float_config = ModuleConfig(name="float", kernel_quantizer=None, activation_quantizer=None)
    reference = inference_model(build(TINY, float_config))
    reference.set_weights(model.get_weights())
    x = images(4)
    np.testing.assert_allclose(float_model(x, training=False), reference(x, training=False),
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(float_model(x, training=False), model(x, training=False), atol=1e-3)


# ---- 6. drop-path ----------------------------------------------------------------------


def test_drop_path_identity_at_inference():
    layer = DropPath(0.5)
    x = images(64, shape=(2, 2, 3))
    np.testing.assert_array_equal(layer(x, training=False), x)
    np.testing.assert_array_equal(layer(x), x)  # no training flag: inference


def test_drop_path_training_drops_and_rescales():
    rate, n = 0.25, 4000
    layer = DropPath(rate)
    x = np.abs(images(n, shape=(2, 2, 3))) + 0.1  # no zeros in the input
    out = layer(x, training=True).numpy()
    dropped = np.all(out == 0, axis=(1, 2, 3))
    kept = ~dropped
    # Whole examples are dropped; every other one is scaled by exactly 1 / (1 - rate).
    np.testing.assert_allclose(out[kept], x[kept] / (1 - rate), rtol=1e-6)
    assert abs(dropped.mean() - rate) < 0.04, dropped.mean()


def test_drop_path_schedule():
    model = build(SMALL, drop_path=0.3)
    drops = [layer for layer in model.layers if isinstance(layer, DropPath)]
    # Every edge except the stride-1 skip connections of the normal cell.
    names = {layer.name for layer in drops}
    assert "cell_0/n2_1_drop" not in names and "cell_0/n2_0_drop" in names
    assert "cell_1/n2_1_drop" in names  # skip_connect at stride 2 (a pool)
    x = images(3)
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
    schedule = DropPathSchedule(0.3, epochs=10)
    schedule.set_model(model)
    for epoch in (0, 4, 9):
        schedule.on_epoch_begin(epoch)
        for layer in drops:
            assert float(layer.rate.numpy()) == pytest.approx(0.3 * epoch / 10)


# ---- 7. cost accounting ----------------------------------------------------------------


def test_model_cost_matches_hand_count():
    model = build(SMALL)
    bops = 0
    n_modules = 0
    for layer in model.layers:
        if isinstance(layer, BinaryConvModule):
            k = layer.kernel_size
        elif isinstance(layer, BinaryPreprocess):
            k = 1
        else:
            continue
        n_modules += 1
        _, out_h, out_w, c_out = layer.output.shape.as_list()
        c_in = layer.input.shape.as_list()[-1]
        bops += out_h * out_w * k * k * c_in * c_out
    assert n_modules == len(binary_conv_layers(model))
    stem = model.get_layer("stem/conv")
    _, h, w, c = stem.output.shape.as_list()
    stem_flops = h * w * 3 * 3 * INPUT_SHAPE[-1] * c
    dense = model.get_layer("logits")
    classifier_flops = dense.input.shape.as_list()[-1] * NUM_CLASSES
    assert (c, dense.input.shape[-1]) == (3 * 32, 2 * 128)

    cost = model_cost(model)
    assert cost.bops == bops
    assert cost.flops == stem_flops + classifier_flops
    assert cost.ops == pytest.approx(bops / 64 + stem_flops + classifier_flops)
    assert cost.binary_params == sum(int(np.prod(layer.kernel.shape))
                                     for layer in binary_conv_layers(model))


# ---- 8. fixed reduction cells (ModuleConfig.reduction) ---------------------------------


def _fixed_reductions(model):
    return [layer for layer in model.layers if isinstance(layer, FixedReduction)]


@pytest.mark.parametrize("name", ["universal_real_reduction", "universal_binary_reduction"])
def test_fixed_reduction_replaces_the_reduce_cell(name):
    config = MODULE_CONFIGS[name]
    assert config.reduction == name.split("_")[1] and not config.searched_reduction
    model = build(SMALL, name)
    blocks = _fixed_reductions(model)
    assert [b.name for b in blocks] == ["cell_1/fixed_reduction", "cell_2/fixed_reduction"]
    # Nothing of the genotype's reduce cell is built.
    assert not any(layer.name.startswith(("cell_1/n", "cell_2/n", "cell_1/pre", "cell_2/pre"))
                   for layer in model.layers)
    # Each reads the previous cell's output and returns the width a cell of twice the width
    # would (SMALL's normal cell concatenates 2 nodes) at half the resolution.
    assert blocks[0].input.shape.as_list() == [None, 8, 8, 2 * 32]
    assert blocks[0].output.shape.as_list() == [None, 4, 4, 2 * 64]
    assert blocks[1].input.shape.as_list() == [None, 4, 4, 2 * 64]
    assert blocks[1].output.shape.as_list() == [None, 2, 2, 2 * 128]
    assert model(images(2), training=False).shape == (2, NUM_CLASSES)

    # Their cost, by hand: a real 1x1 conv counts as FLOPs at the pooled resolution, the
    # binary 3x3 stride-2 conv as BOPs; the rest of the network is what SMALL's normal cell,
    # stem and classifier cost.
    report = {row.name: row for row in model_cost(model).layers}
    for block in blocks:
        _, h, w, c_out = block.output.shape.as_list()
        c_in = block.input.shape.as_list()[-1]
        if config.reduction == "real":
            row = report[f"{block.name}/conv"]
            assert (row.flops, row.bops) == (h * w * c_in * c_out, 0)
            assert type(block.conv) is tf.keras.layers.Conv2D
        else:
            row = report[f"{block.name}/bconv"]
            assert (row.bops, row.flops) == (h * w * 9 * c_in * c_out, 0)
            assert block.conv.strides == (2, 2) and block.conv.kernel_size == (3, 3)
            assert row.binary_params == 9 * c_in * c_out
    cost = model_cost(model)
    normal_bops = sum(r.bops for n, r in report.items() if n.startswith("cell_0/"))
    stem = model.get_layer("stem/conv").output.shape.as_list()
    stem_flops = stem[1] * stem[2] * 9 * INPUT_SHAPE[-1] * stem[3]
    fixed_flops = sum(report[f"{b.name}/conv"].flops for b in blocks) if config.reduction == "real" else 0
    fixed_bops = sum(report[f"{b.name}/bconv"].bops for b in blocks) if config.reduction == "binary" else 0
    assert cost.bops == normal_bops + fixed_bops
    assert cost.flops == stem_flops + 2 * 128 * NUM_CLASSES + fixed_flops


def test_binary_fixed_reduction_module_by_hand():
    """y = BN_post(bconv_3x3,s2(sign(BN_pre(x)))) + repeat(avgpool_2x2(x)), inference BN = identity."""
    x = images(2, seed=11, shape=(5, 5, 32))
    block = FixedReduction(64, config="universal_binary_reduction")
    y = block(x, training=False).numpy()
    assert y.shape == (2, 3, 3, 64)
    conv = block.conv
    # Fresh BNs at inference divide by sqrt(1 + eps).
    signed = np.where(x / np.sqrt(1 + 1e-5) >= 0, 1.0, -1.0)
    padded = np.pad(signed, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1.0)
    latent = conv.kernel.numpy()  # magnitude-aware sign: sign(w) x mean |w| per output channel
    kernel = np.where(latent >= 0, 1.0, -1.0) * np.abs(latent).mean(axis=(0, 1, 2))
    conv_out = np.zeros((2, 3, 3, 64))
    for i in range(3):
        for j in range(3):
            patch = padded[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
            conv_out[:, i, j] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    pooled = tf.keras.layers.AveragePooling2D(2, 2, padding="same")(x).numpy()
    expected = conv_out / np.sqrt(1 + 1e-5) + np.concatenate([pooled, pooled], axis=-1)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="searched"):
        FixedReduction(64, config="universal")


@pytest.mark.parametrize("name", ["universal_real_reduction", "universal_binary_reduction"])
def test_fixed_reduction_saves_loads_and_converts(name, tmp_path):
    model = build(TINY, name)
    perturb(model, 4)
    x = images(6, seed=5)
    expected = model(x, training=False).numpy()
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = tf.keras.models.load_model(path)  # no custom_objects
    assert [b.kind for b in _fixed_reductions(loaded)] == [name.split("_")[1]] * 2
    np.testing.assert_allclose(loaded(x, training=False).numpy(), expected, rtol=1e-5, atol=1e-5)

    flatbuffer = convert_model(model)
    counts = flatbuffer_op_counts(flatbuffer)
    n_binary = len(binary_conv_layers(model))
    assert n_binary == len(quant_convs(model)) > 0
    assert counts["LceBconv2d"] == n_binary  # the binary reduction's conv among them
    # The stem, plus the real reduction's two 1x1 convs (float CONV_2D).
    assert counts["CONV_2D"] == (3 if name == "universal_real_reduction" else 1)
    if name == "universal_binary_reduction":
        assert [p for p, _ in quant_convs(model) if "fixed_reduction" in p] == [
            "cell_1/fixed_reduction/bconv", "cell_2/fixed_reduction/bconv"]
    report = verify_conversion(model, flatbuffer, images(16, seed=7))
    assert report.agreement >= 0.99


def test_fixed_reduction_stage1_to_stage2():
    stage1 = build(TINY, "universal_binary_reduction", binary_activations=False)
    stage2 = build(TINY, "universal_binary_reduction", binary_activations=True)
    assert _fixed_reductions(stage1)[0].conv.input_quantizer is None
    assert isinstance(_fixed_reductions(stage2)[0].conv.input_quantizer, lq.quantizers.ApproxSign)
    assert carry_weights({v.name: v.numpy() for v in stage1.weights}, stage2) == []


# ---- 9. loss ---------------------------------------------------------------------------


def test_smoothed_sparse_crossentropy():
    logits = tf.constant([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, -0.3, 3.0]])
    labels = tf.constant([[2], [0]])
    smoothing = 0.2
    loss = smoothed_sparse_crossentropy(smoothing, 4)(labels, logits).numpy()
    one_hot = tf.one_hot([2, 0], 4)
    reference = tf.keras.losses.categorical_crossentropy(one_hot, logits, from_logits=True,
                                                         label_smoothing=smoothing).numpy()
    np.testing.assert_allclose(loss, reference, rtol=1e-6)
    # By hand: targets (1 - s) * onehot + s / K against log-softmax.
    z = logits.numpy()
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    targets = one_hot.numpy() * (1 - smoothing) + smoothing / 4
    np.testing.assert_allclose(loss, -(targets * log_p).sum(-1), rtol=1e-5)
    assert loss.shape == (2,)


# ---- 8. two-stage retraining end to end ------------------------------------------------


@pytest.fixture
def _restore_tf_state():
    yield
    # run_training turns op determinism on for the whole process; later tests do not expect it.
    tf_config.disable_op_determinism()


def _tiny_training(tmp_path, monkeypatch, **epochs):
    """A small retraining run on real Fashion-MNIST images: its config and run directory."""
    if not HAVE_FASHION:
        pytest.skip(FASHION_SKIP_REASON)

    load_arrays = inputs.load_arrays

    def capped_load_arrays(dataset, split, data_dir=None, max_examples=None):
        # The real IDX files, but 512 test images instead of 10000 (run time).
        return load_arrays(dataset, split, data_dir, 512 if split == "test" else max_examples)

    monkeypatch.setattr(inputs, "load_arrays", capped_load_arrays)
    genotype_path = tmp_path / "genotype.json"
    TINY.save(genotype_path)
    run_path = tmp_path / "run"
    cfg = TrainConfig(genotype=str(genotype_path), output_dir=str(run_path), max_examples=256,
                      validation_examples=32, layers=3, init_channels=32, stem_strides=2,
                      batch_size=32, verbose=0, **epochs)
    run = RunDirectory(str(run_path), "train")
    run.prepare(dataclasses.asdict(cfg), overwrite=False)
    return cfg, run


@pytest.mark.slow
def test_run_training_two_stages(tmp_path, monkeypatch, _restore_tf_state):
    cfg, run = _tiny_training(tmp_path, monkeypatch, stage1_epochs=1, epochs=1)
    run_path = tmp_path / "run"
    summary = run_training(cfg, run)

    for name in ("model_best.keras", "model_final.keras", "history.json", "cost.json",
                 "summary.json", "genotype.json"):
        assert (run_path / name).is_file(), name
    assert not [f for f in os.listdir(run_path) if f.startswith(".tmp-")]
    history = read_json(str(run_path / "history.json"))["epochs"]
    assert [(r["epoch"], r["stage"]) for r in history] == [(0, 1), (1, 2)]
    assert all(np.isfinite(r["logs"]["loss"]) for r in history)
    saved = json.loads((run_path / "summary.json").read_text())
    assert 0.0 <= saved["test_accuracy"] <= 1.0
    assert saved["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    cost = json.loads((run_path / "cost.json").read_text())
    assert cost["totals"]["bops"] > 0 and cost["totals"]["flops"] > 0

    final = tf.keras.models.load_model(str(run_path / "model_final.keras"))
    assert len(final.outputs) == 1 and final.output.shape.as_list() == [None, NUM_CLASSES]
    convs = quant_convs(final)
    assert convs
    for path, layer in convs:
        assert isinstance(layer.input_quantizer, lq.quantizers.ApproxSign), path  # stage 2
    assert final.predict(np.zeros((2, 28, 28, 1), np.float32), verbose=0).shape == (2, NUM_CLASSES)



@pytest.mark.slow
@pytest.mark.parametrize("calibrate", [True, False])
def test_stage2_starts_its_learnable_thresholds_at_their_inputs_mean(
        calibrate, tmp_path, monkeypatch, capsys, _restore_tf_state):
    # combined has no BN before its learnable-threshold signs: at 0 they would binarise the
    # stage-1 activations badly. run_training calibrates them on stage 2's first batch.
    calls = []

    def spy(model, images):
        names = calibrate_thresholds(model, images)
        calls.append((np.shape(images), names, {v.name: v.numpy() for v in model.weights
                                                 if v.name in names}))
        return names

    monkeypatch.setattr(training, "calibrate_thresholds", spy)
    cfg, run = _tiny_training(tmp_path, monkeypatch, stage1_epochs=1, epochs=1,
                              module_config="combined", calibrate_thresholds=calibrate)
    capsys.readouterr()
    run_training(cfg, run)
    out = capsys.readouterr().out
    final = tf.keras.models.load_model(run.join("model_final.keras"))
    thresholds = [layer.input_quantizer.threshold.name for _, layer in quant_convs(final)]
    if not calibrate:
        assert calls == []
        assert f"({len(thresholds)} variables of binary activations at their initial values)" in out
        return
    [(shape, names, values)] = calls  # once, at the switch to binary activations
    assert shape == (cfg.batch_size, 28, 28, 1)
    assert len(names) == len(thresholds) > 0
    assert all(np.any(value != 0) for value in values.values())
    assert f"({len(names)} learnable thresholds at their inputs' mean on one training batch)" in out


@pytest.mark.slow
def test_run_training_evaluates_the_best_model_only_when_its_weights_differ(
        tmp_path, monkeypatch, _restore_tf_state):
    evaluated = []
    evaluate = tf.keras.Model.evaluate

    def counting_evaluate(model, *args, **kwargs):
        if "_use_cached_eval_dataset" not in kwargs:  # not fit's validation pass
            evaluated.append(model)
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(tf.keras.Model, "evaluate", counting_evaluate)
    # One epoch: its model is both the best and the final one, so the test set is read once.
    cfg, run = _tiny_training(tmp_path, monkeypatch, stage1_epochs=0, epochs=1)
    summary = run_training(cfg, run)
    assert len(evaluated) == 1
    assert summary["best_model_test_accuracy"] == summary["test_accuracy"]

    # A best model whose weights differ (one kernel zeroed) is evaluated on its own.
    best = tf.keras.models.load_model(run.join("model_best.keras"))
    kernel = next(v for v in best.trainable_weights if "kernel" in v.name)
    kernel.assign(tf.zeros_like(kernel))
    best.save(run.join("model_best.keras"))
    state = run.read_state()
    del state["finished"]
    run.write_state(state)
    os.remove(run.join("summary.json"))
    evaluated.clear()
    resumed = run_training(cfg, run)
    assert len(evaluated) == 2
    assert resumed["test_accuracy"] == summary["test_accuracy"]
    assert resumed["best_model_test_accuracy"] != summary["best_model_test_accuracy"]


@pytest.mark.slow
def test_run_training_keeps_the_best_validation_accuracy_in_its_checkpoints(
        tmp_path, monkeypatch, capsys, _restore_tf_state):
    cfg, run = _tiny_training(tmp_path, monkeypatch, stage1_epochs=0, epochs=2)
    summary = run_training(cfg, run)
    val = [r["logs"]["val_accuracy"] for r in read_json(run.join("history.json"))["epochs"]]
    assert summary["best_val_accuracy"] == pytest.approx(max(val), abs=1e-7)
    # Each checkpoint holds the best of its own epochs, so a resume that falls back to the
    # older one compares against that; state.json, which names the newest, holds none.
    for epoch in (1, 2):
        reader = tf.train.load_checkpoint(run.join("checkpoints", "stage2", f"ckpt-{epoch}"))
        best = reader.get_tensor("best_val_accuracy/.ATTRIBUTES/VARIABLE_VALUE")
        assert best == pytest.approx(max(val[:epoch]), abs=1e-7), epoch
    state = run.read_state()
    assert "best_val_accuracy" not in state and state["finished"]

    # Killed after training, before the summary: the best value comes back with the weights.
    del state["finished"]
    run.write_state(state)
    os.remove(run.join("summary.json"))
    capsys.readouterr()
    resumed = run_training(cfg, run)
    assert "Stage 2:" not in capsys.readouterr().out  # nothing retrained
    assert resumed["best_val_accuracy"] == summary["best_val_accuracy"]
    assert resumed["best_model_test_accuracy"] == summary["best_model_test_accuracy"]

    # No stage-2 checkpoint loads (damaged, or written by an older version): a clear error
    # that says --overwrite, never training on half-restored variables.
    state = run.read_state()
    state.update(finished=False, stage=2, stage_finished=False, completed_epochs=1)
    run.write_state(state)
    os.remove(run.join("summary.json"))
    for name in os.listdir(run.join("checkpoints", "stage2")):
        if ".data-" in name:
            path = run.join("checkpoints", "stage2", name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ResumeError, match="pass --overwrite to start afresh"):
        run_training(cfg, run)
