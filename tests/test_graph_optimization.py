"""The lean Grappler pipeline (`ubnas_tf.graph_optimization`): what it sets, where the tools
turn it on, and that functions compute the same under it."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.eager import context

from ubnas_tf.config import RunConfig
from ubnas_tf.graph_optimization import (
    lean_graph_optimization_active,
    use_lean_graph_optimization,
)

RewriterConfig = rewriter_config_pb2.RewriterConfig


@pytest.fixture
def default_pipeline():
    """TensorFlow's default function-call options around the test, whatever it sets."""
    saved = context.context().function_call_options
    context.context().function_call_options = None
    yield
    context.context().function_call_options = saved


def _call_config() -> config_pb2.ConfigProto:
    config = config_pb2.ConfigProto()
    config.ParseFromString(context.context().function_call_options.config_proto_serialized)
    return config


def test_sets_one_pass_without_the_memory_optimizer_and_keeps_the_rest(default_pipeline):
    tf.config.optimizer.set_experimental_options({"constant_folding": False})
    try:
        assert not lean_graph_optimization_active()
        before = _call_config()
        assert use_lean_graph_optimization(force=True)
        after = _call_config()
        rewrites = after.graph_options.rewrite_options
        assert rewrites.memory_optimization == RewriterConfig.NO_MEM_OPT
        assert rewrites.meta_optimizer_iterations == RewriterConfig.ONE
        assert rewrites.layout_optimizer == RewriterConfig.OFF
        assert rewrites.implementation_selector == RewriterConfig.OFF
        assert rewrites.remapping == RewriterConfig.OFF
        assert rewrites.loop_optimization == RewriterConfig.OFF
        assert rewrites.disable_tfg_optimizer
        # Everything else is what TensorFlow would have used: soft placement, the user's
        # own optimizer options.
        assert after.allow_soft_placement == before.allow_soft_placement
        assert rewrites.constant_folding == RewriterConfig.OFF
        assert lean_graph_optimization_active()
    finally:
        tf.config.optimizer.set_experimental_options({"constant_folding": True})


def test_leaves_a_gpu_machine_alone(default_pipeline, monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    assert not use_lean_graph_optimization()
    assert not lean_graph_optimization_active()


def test_run_config_turns_it_on_for_the_tools(default_pipeline, tmp_path):
    assert not lean_graph_optimization_active()
    RunConfig(output_dir=str(tmp_path), seed=3).apply_to_process()
    assert lean_graph_optimization_active()


def test_a_train_step_computes_the_same_under_both_pipelines(default_pipeline):
    def step_result() -> np.ndarray:
        tf.keras.utils.set_random_seed(0)
        model = tf.keras.Sequential([tf.keras.layers.Conv2D(4, 3, input_shape=(8, 8, 2)),
                                     tf.keras.layers.BatchNormalization(),
                                     tf.keras.layers.GlobalAveragePooling2D(),
                                     tf.keras.layers.Dense(3)])
        model.compile(tf.keras.optimizers.Adam(0.1),
                      tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        x = rng.normal(size=(16, 8, 8, 2)).astype("float32")
        y = rng.integers(0, 3, size=16)
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        return model.predict(x, verbose=0)

    default = step_result()
    use_lean_graph_optimization(force=True)
    lean = step_result()
    np.testing.assert_allclose(lean, default, rtol=1e-5, atol=1e-5)
