"""Tests of ubnas_tf.deploy: LCE conversion + verification, and BNN cost accounting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import larq as lq
import numpy as np
import pytest
import tensorflow as tf
from tool_runs import REPO

from ubnas_tf.deploy import (
    ConversionError,
    binary_conv_layers,
    convert_model,
    flatbuffer_op_counts,
    model_cost,
    verify_conversion,
)
from ubnas_tf.nets import DropPath

# ---- hand-computed costs of `tiny_model` (8x8x3 input) --------------------------------
STEM_FLOPS = 8 * 8 * 3 * 3 * 3 * 32  # 3x3 conv, 3 -> 32 channels at 8x8
BCONV1_BOPS = 8 * 8 * 3 * 3 * 32 * 32  # 3x3 binary conv 32 -> 32 at 8x8
BCONV2_BOPS = 4 * 4 * 3 * 3 * 32 * 32  # stride 2: 4x4 output
DENSE_FLOPS = 32 * 10
BINARY_PARAMS = 2 * (3 * 3 * 32 * 32)  # two binary kernels
# stem kernel + 3 BNs at 2 params/channel (Larq folds beta/mean, gamma/var) + dense W and b
REAL_PARAMS = 3 * 3 * 3 * 32 + 3 * (2 * 32) + (32 * 10 + 10)
MEMORY_KB = (BINARY_PARAMS * 1 + REAL_PARAMS * 32) / (8 * 1024)


class TfSign(lq.quantizers.Quantizer):
    """A 1-bit quantizer written with tf.sign: LCE silently keeps the conv in float."""

    precision = 1

    def call(self, inputs):
        return tf.sign(inputs)


def _bconv(filters, strides, input_quantizer, kernel_quantizer, name):
    return lq.layers.QuantConv2D(
        filters,
        3,
        strides=strides,
        padding="same",
        pad_values=1.0,
        use_bias=False,
        input_quantizer=input_quantizer,
        kernel_quantizer=kernel_quantizer,
        kernel_constraint="weight_clip",
        name=name,
    )


def tiny_model(
    input_quantizer="approx_sign",
    kernel_quantizer="magnitude_aware_sign",
    second_input_quantizer=None,
    name="tiny",
):
    x = tf.keras.Input((8, 8, 3))
    h = tf.keras.layers.Conv2D(32, 3, padding="same", use_bias=False, name="stem")(x)
    h = tf.keras.layers.BatchNormalization(name="stem_bn")(h)
    y = _bconv(32, 1, input_quantizer, kernel_quantizer, "bconv1")(h)
    y = tf.keras.layers.BatchNormalization(name="bn1")(y)
    h = tf.keras.layers.add([h, y])
    q2 = second_input_quantizer if second_input_quantizer is not None else input_quantizer
    y = _bconv(32, 2, q2, kernel_quantizer, "bconv2")(h)
    y = tf.keras.layers.BatchNormalization(name="bn2")(y)
    y = tf.keras.layers.GlobalAveragePooling2D()(y)
    y = tf.keras.layers.Dense(10, name="classifier")(y)
    # float32 output, as mixed-precision models need; a no-op otherwise.
    out = tf.keras.layers.Activation("linear", dtype="float32", name="logits")(y)
    return tf.keras.Model(x, out, name=name)


@tf.keras.utils.register_keras_serializable("test_deploy")
class BinaryBlock(tf.keras.layers.Layer):
    """A custom layer hiding a binary conv + BN inside: cost and checks must see them."""

    def __init__(self, filters=32, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.strides = filters, strides
        self.conv = _bconv(filters, strides, "approx_sign", "magnitude_aware_sign", "conv")
        self.bn = tf.keras.layers.BatchNormalization(name="bn")

    def call(self, inputs, training=None):
        return self.bn(self.conv(inputs), training=training)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


def nested_model():
    """tiny_model's layers, with the binary part in a custom layer inside a sub-model."""
    inner_in = tf.keras.Input((8, 8, 32))
    y = BinaryBlock(32, 1, name="block1")(inner_in)
    h = tf.keras.layers.add([inner_in, y])
    y = BinaryBlock(32, 2, name="block2")(h)
    body = tf.keras.Model(inner_in, y, name="body")
    x = tf.keras.Input((8, 8, 3))
    h = tf.keras.layers.Conv2D(32, 3, padding="same", use_bias=False, name="stem")(x)
    h = tf.keras.layers.BatchNormalization(name="stem_bn")(h)
    y = tf.keras.layers.GlobalAveragePooling2D()(body(h))
    return tf.keras.Model(x, tf.keras.layers.Dense(10, name="classifier")(y), name="nested")


@pytest.fixture(scope="module")
def tiny():
    tf.keras.utils.set_random_seed(0)
    model = tiny_model()
    return model, convert_model(model)


def _inputs(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 8, 8, 3)).astype(np.float32)


# ---- conversion and verification ------------------------------------------------------


def test_convert_op_counts(tiny):
    model, flatbuffer = tiny
    counts = flatbuffer_op_counts(flatbuffer)
    assert counts["LceBconv2d"] == 2
    assert counts["LceQuantize"] == 2
    assert counts["CONV_2D"] == 1  # the real stem only
    assert counts["FULLY_CONNECTED"] == 1
    assert [layer.name for layer in binary_conv_layers(model)] == ["bconv1", "bconv2"]


def test_verify_passes(tiny):
    model, flatbuffer = tiny
    report = verify_conversion(model, flatbuffer, _inputs(64))
    assert report.n_binary_convs == report.n_lce_bconv == 2
    assert report.agreement >= 0.99
    assert report.n_examples == 64
    assert report.max_abs_diff < 1e-3
    assert report.op_counts["LceBconv2d"] == 2


def test_tf_sign_quantizer_is_reported_by_name():
    model = tiny_model(second_input_quantizer=TfSign(name="tf_sign"))
    flatbuffer = convert_model(model)
    assert flatbuffer_op_counts(flatbuffer)["LceBconv2d"] == 1  # the silent float fallback
    with pytest.raises(ConversionError, match="bconv2") as info:
        verify_conversion(model, flatbuffer, _inputs(4))
    message = str(info.value)
    assert "bconv1" not in message
    assert "larq.math.sign" in message


def test_disagreement_is_reported(tiny):
    model, flatbuffer = tiny
    other = tiny_model(name="other")  # other random weights: most top-1 classes differ
    with pytest.raises(ConversionError, match=r"disagree on the top-1 class of \d+ of 32"):
        verify_conversion(other, flatbuffer, _inputs(32))


def test_mixed_precision_model_converts():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = tiny_model(name="mixed")
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert model.layers[1].compute_dtype == "float16"
    flatbuffer = convert_model(model)  # LCE itself rejects float16 models
    assert flatbuffer_op_counts(flatbuffer)["LceBconv2d"] == 2
    report = verify_conversion(model, flatbuffer, _inputs(16))
    assert report.agreement >= 0.99
    assert model_cost(model).bops == BCONV1_BOPS + BCONV2_BOPS


# ---- cost accounting --------------------------------------------------------------------


def test_cost_matches_hand_counts(tiny):
    model, _ = tiny
    report = model_cost(model)
    assert report.bops == BCONV1_BOPS + BCONV2_BOPS == 737_280
    assert report.flops == STEM_FLOPS + DENSE_FLOPS == 55_616
    assert report.ops == report.bops / 64 + report.flops == 11_520 + 55_616
    assert report.binary_params == BINARY_PARAMS == 18_432
    assert report.real_params == REAL_PARAMS == 1_386
    assert report.memory_kb == pytest.approx(MEMORY_KB)
    rows = {row.name: row for row in report.layers}
    assert rows["bconv2"].bops == BCONV2_BOPS and rows["bconv2"].output_shape == [None, 4, 4, 32]
    assert rows["stem"].flops == STEM_FLOPS


def test_cost_matches_larq_summary(tiny):
    model, _ = tiny
    report = model_cost(model)
    profile = lq.models.ModelProfile(model)  # what lq.models.summary prints
    assert report.binary_params == profile.weight_count(bitwidth=1)
    assert report.real_params == profile.weight_count(bitwidth=32)
    assert report.memory_bits == profile.memory
    assert report.bops == profile.op_count("mac", 1)
    assert report.flops == profile.op_count("mac", 32)


def test_stage1_model_counts_flops():
    model = tiny_model(input_quantizer=None)  # real activations, binary weights
    report = model_cost(model)
    assert report.bops == 0
    assert report.flops == STEM_FLOPS + DENSE_FLOPS + BCONV1_BOPS + BCONV2_BOPS
    assert report.binary_params == BINARY_PARAMS
    assert binary_conv_layers(model) == []
    assert report.flops == lq.models.ModelProfile(model).op_count("mac", 32)


def test_nested_layers_are_counted_and_converted():
    model = nested_model()
    report = model_cost(model)
    assert report.bops == BCONV1_BOPS + BCONV2_BOPS
    assert report.flops == STEM_FLOPS + DENSE_FLOPS
    assert report.binary_params == BINARY_PARAMS
    assert report.real_params == REAL_PARAMS
    names = {row.name for row in report.layers}
    assert {"body/block1/conv", "body/block2/bn"} <= names
    assert len(binary_conv_layers(model)) == 2
    counts = flatbuffer_op_counts(convert_model(model))
    assert counts["LceBconv2d"] == 2


def test_shared_layer_is_charged_per_call():
    x = tf.keras.Input((4,))
    dense = tf.keras.layers.Dense(4, name="shared")
    model = tf.keras.Model(x, dense(dense(x)))
    report = model_cost(model)
    assert report.flops == 2 * 4 * 4
    assert report.real_params == 4 * 4 + 4
    assert report.layers[0].calls == 2


def test_cost_report_save_and_table(tiny, tmp_path):
    model, _ = tiny
    report = model_cost(model)
    path = tmp_path / "cost.json"
    report.save(str(path))
    data = json.loads(path.read_text())
    assert data["totals"]["bops"] == BCONV1_BOPS + BCONV2_BOPS
    assert data["totals"]["ops"] == pytest.approx(report.ops)
    assert [p.name for p in tmp_path.iterdir()] == ["cost.json"]  # no temp file left
    table = report.table()
    assert "bconv1" in table and "737,280" in table


# ---- command-line tools -----------------------------------------------------------------


def _run_tool(script, *args, expect_rc=0):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert proc.returncode == expect_rc, proc.stdout + proc.stderr
    return proc.stdout if expect_rc == 0 else proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def saved_tiny(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "tiny.keras"
    tiny[0].save(path)
    return path


@pytest.mark.slow
def test_summary_cli(saved_tiny, tmp_path):
    out = tmp_path / "cost.json"
    stdout = _run_tool("tools/summary.py", f"--model={saved_tiny}", f"--output={out}")
    assert "bconv2" in stdout
    assert json.loads(out.read_text())["totals"]["bops"] == BCONV1_BOPS + BCONV2_BOPS


@pytest.mark.slow
def test_convert_cli(saved_tiny, tmp_path):
    out = tmp_path / "tiny.tflite"
    stdout = _run_tool(
        "tools/convert.py", f"--model={saved_tiny}", f"--output={out}", "--verify_examples=16"
    )
    assert flatbuffer_op_counts(out.read_bytes())["LceBconv2d"] == 2
    assert "agreement" in stdout and "random normal" in stdout
    # An impossible agreement is refused as a flag (exit 2) before anything is converted or
    # written; a failed check itself is tested in-process (test_disagreement_is_reported).
    failed = tmp_path / "failed.tflite"
    proc = _run_tool(
        "tools/convert.py",
        f"--model={saved_tiny}",
        f"--output={failed}",
        "--verify_examples=4",
        "--min_agreement=1.01",
        expect_rc=2,
    )
    assert "--min_agreement=1.01 is invalid; it must be a number in [0.0, 1.0]." in proc
    assert not failed.exists()


def test_a_model_with_drop_path_loads_after_importing_only_ubnas_tf(tmp_path):
    # DropPath (--drop_path > 0, the CIFAR-10 and ImageNet recipes) lives in ubnas_tf.nets;
    # importing the package must register it, or tools/convert.py cannot load such a model.
    inputs = tf.keras.Input((4, 4, 2))
    model = tf.keras.Model(inputs, DropPath(0.2, name="drop")(inputs))
    path = tmp_path / "model.keras"
    model.save(path)
    code = ("import sys, tensorflow as tf, ubnas_tf\n"
            "m = tf.keras.models.load_model(sys.argv[1], compile=False)\n"
            "print(type(m.get_layer('drop')).__name__, m.get_layer('drop').initial_rate)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES=""),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["DropPath", "0.2"]
