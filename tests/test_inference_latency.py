"""benchmarks/inference_latency.py: the larq-zoo references are converted on equal terms."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ubnas_tf.experiments import inference_latency


def _batch_norms(model):
    return [layer for layer in model.submodules
            if isinstance(layer, tf.keras.layers.BatchNormalization) and layer.gamma is not None]


def test_zoo_reference_gets_trained_like_batch_norm():
    norms = _batch_norms(inference_latency.zoo_model("QuickNetSmall", input_size=32))
    assert norms
    for layer in norms:  # as for our networks: not the initial gamma = 1, beta = 0
        assert not np.allclose(layer.gamma.numpy(), 1.0), layer.name
        assert not np.allclose(layer.beta.numpy(), 0.0), layer.name
    again = _batch_norms(inference_latency.zoo_model("QuickNetSmall", input_size=32))  # same seed
    for a, b in zip(norms, again, strict=True):
        np.testing.assert_array_equal(a.gamma.numpy(), b.gamma.numpy())
