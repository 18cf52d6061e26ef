"""One-shot accuracy and log-probability of a genotype under a supernet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from ubnas_tf.genotype import Genotype
from ubnas_tf.search import SearchNetwork
from ubnas_tf.search.one_shot import (
    genotype_architecture,
    genotype_log_prob,
    one_shot_accuracy,
)

PRIMITIVES = ("none", "skip_connect", "max_pool_3x3", "bconv_3x3", "bconv_5x5")
# Every edge is skip_connect or bconv_3x3: max_pool_3x3 and bconv_5x5 are not used.
CELL = (("bconv_3x3", 0), ("skip_connect", 1), ("bconv_3x3", 1), ("skip_connect", 2),
        ("skip_connect", 0), ("bconv_3x3", 3), ("bconv_3x3", 2), ("skip_connect", 4))
GENOTYPE = Genotype(CELL, (2, 3, 4, 5), CELL, (2, 3, 4, 5))


@pytest.fixture(scope="module")
def supernet():
    tf.keras.utils.set_random_seed(1)
    model = SearchNetwork(3, init_channels=8, layers=3, primitives=PRIMITIVES, k_normal=2,
                          k_reduce=2, seed=1)
    model.build_network((8, 8, 1))
    images = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
    return model, images


def _logits(model, images, architecture=None):
    return model.forward(tf.constant(images), training=True, architecture=architecture).numpy()


def _perturb(model, name_part: str) -> None:
    variables = [v for v in model.trainable_variables if name_part in v.name]
    assert variables, name_part
    for v in variables:
        v.assign(v + tf.random.normal(v.shape, stddev=1.0, seed=3))


def test_one_shot_logits_use_only_the_genotypes_ops(supernet):
    model, images = supernet
    architecture = genotype_architecture(GENOTYPE, PRIMITIVES)
    before = _logits(model, images, architecture)
    mixed_before = _logits(model, images)
    _perturb(model, "kernel_5x5")  # an op the genotype does not use
    np.testing.assert_array_equal(_logits(model, images, architecture), before)
    assert not np.allclose(_logits(model, images), mixed_before)  # the supernet uses it
    _perturb(model, "kernel_3x3")  # an op it does use: the test can fail
    assert not np.allclose(_logits(model, images, architecture), before)


def test_genotype_architecture_is_one_hot_on_its_edges():
    ops, edges = genotype_architecture(GENOTYPE, PRIMITIVES)["normal"]
    ops, edges = ops.numpy(), edges.numpy()
    # Node 0 reads states 0 and 1 (edges 0, 1); node 1 reads 1 and 2 (edges 3, 4); ...
    # Each kept edge weighs 1/2: a node's weights sum to 1, as softmax(beta) does.
    np.testing.assert_array_equal(edges, 0.5 * np.array([1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 0, 1,
                                                          0, 1]))
    assert ops.sum() == 8 and ops[0, PRIMITIVES.index("bconv_3x3")] == 1
    assert ops[1, PRIMITIVES.index("skip_connect")] == 1 and ops[2].sum() == 0


def test_one_shot_accuracy_leaves_the_model_unchanged(supernet):
    model, images = supernet
    labels = np.argmax(_logits(model, images, genotype_architecture(GENOTYPE, PRIMITIVES)), -1)
    before = [v.numpy() for v in model.variables]
    # The labels are the restricted supernet's own predictions: accuracy 1.
    assert one_shot_accuracy(model, GENOTYPE, images, labels, batch_size=16) == 1.0
    for v, value in zip(model.variables, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), value)


def test_log_prob_under_uniform_weights_is_the_count_of_choices():
    zeros = {"alpha_normal": np.zeros((14, 5)), "alpha_reduce": np.zeros((14, 5)),
             "beta_normal": np.zeros(14), "beta_reduce": np.zeros(14)}
    # Per cell: 8 ops, each 1 of 5; per node i two of its i + 2 inputs, each weight 1/(i+2).
    per_cell = 8 * -math.log(5) + sum(2 * -math.log(i + 2) for i in range(4))
    assert genotype_log_prob(GENOTYPE, zeros, PRIMITIVES) == pytest.approx(2 * per_cell)
    assert genotype_log_prob(GENOTYPE, zeros, PRIMITIVES, searched_reduction=False) == \
        pytest.approx(per_cell)
    # Raising the logit of the genotype's op on edge 0 by log 2 doubles that op's weight
    # among 5: p goes from 1/5 to 2/6.
    favoured = {**zeros, "alpha_normal": zeros["alpha_normal"].copy()}
    favoured["alpha_normal"][0, PRIMITIVES.index("bconv_3x3")] = math.log(2)
    assert genotype_log_prob(GENOTYPE, favoured, PRIMITIVES) - \
        genotype_log_prob(GENOTYPE, zeros, PRIMITIVES) == pytest.approx(math.log(5 / 3))


def test_one_shot_is_the_supernet_whose_alpha_and_beta_have_decided_on_the_genotype(supernet):
    """The restriction is what the mixed supernet computes once softmax(alpha) is one-hot
    on the genotype's ops and softmax(beta) puts all of a node's weight on its two kept
    inputs: the scale the supernet was trained at (a plain sum doubles every node)."""
    model, images = supernet
    ops, edges = genotype_architecture(GENOTYPE, PRIMITIVES)["normal"]
    saved = [(v, v.numpy()) for v in (model.alpha_normal, model.alpha_reduce,
                                      model.beta_normal, model.beta_reduce)]
    try:
        for alpha in (model.alpha_normal, model.alpha_reduce):
            alpha.assign(60.0 * ops.numpy() - 30.0)
        for beta in (model.beta_normal, model.beta_reduce):
            beta.assign(np.where(edges.numpy() > 0, 30.0, -30.0))
        np.testing.assert_allclose(_logits(model, images),
                                   _logits(model, images, genotype_architecture(GENOTYPE,
                                                                                PRIMITIVES)),
                                   rtol=1e-4, atol=1e-4)
    finally:
        for v, value in saved:
            v.assign(value)
