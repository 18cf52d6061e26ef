"""A search that decides, within a budget: decisiveness figures, the discretisation loss, the
architecture learning rate, the expected cost of the derived network and early stopping
that needs a decided genotype. Hand-set values and brute-force checks."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import tensorflow as tf
from tool_runs import REPO

from ubnas_tf.cli._budget import read_eval_network
from ubnas_tf.cost import model_cost
from ubnas_tf.errors import FlagError
from ubnas_tf.genotype import Genotype, derive_cell, edge_index, num_edges, random_genotype
from ubnas_tf.nets.eval_network import EvalNetworkConfig, build_eval_network
from ubnas_tf.ops import DEFAULT_PRIMITIVES
from ubnas_tf.search import GenotypeEarlyStopping, SearchNetwork
from ubnas_tf.search.budget import budget_loss, build_cost_table, kept_weights
from ubnas_tf.search.decisiveness import (
    FIGURES,
    architecture_figures,
    cell_figures,
    discretization_loss,
)
from ubnas_tf.search.network import ArchitectureObjective, arch_learning_rate

PRIMS = list(DEFAULT_PRIMITIVES)
E = num_edges(4)
IN_DEGREES = [2, 3, 4, 5]


def _figures(alpha, beta, prims=PRIMS):
    return {k: float(v) for k, v in cell_figures(alpha, beta, prims).items()}


# ---------------------------------------------------------------------------------------------
# Decisiveness figures
# ---------------------------------------------------------------------------------------------


def test_figures_of_uniform_architecture():
    f = _figures(np.zeros((E, 8)), np.zeros(E))
    assert f["op_max"] == pytest.approx(1 / 8)
    assert f["op_max_kept"] == pytest.approx(1 / 7)  # among the 7 ops that can be derived
    assert f["op_entropy"] == pytest.approx(1.0, abs=1e-6)
    assert f["edge_entropy"] == pytest.approx(1.0, abs=1e-6)
    assert f["edge_max"] == pytest.approx(np.mean([1 / n for n in IN_DEGREES]))
    assert f["edge_kept_mass"] == pytest.approx(np.mean([min(2, n) / n for n in IN_DEGREES]))


def test_figures_of_one_hot_architecture():
    alpha = np.full((E, 8), -1e4)
    alpha[:, PRIMS.index("bconv_3x3")] = 0.0
    beta = np.full(E, -1e4)
    start = 0
    for n in IN_DEGREES:  # every node keeps its last two inputs, at 1/2 each
        beta[start + n - 2:start + n] = 0.0
        start += n
    f = _figures(alpha, beta)
    assert f["op_max"] == pytest.approx(1.0)
    assert f["op_max_kept"] == pytest.approx(1.0)
    assert f["op_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert f["edge_max"] == pytest.approx(0.5)
    assert f["edge_kept_mass"] == pytest.approx(1.0)
    assert f["edge_entropy"] == pytest.approx(np.mean([math.log(2) / math.log(n) for n in IN_DEGREES]))


def test_none_winning_an_edge_does_not_count_as_decided():
    alpha = np.zeros((E, 8))
    alpha[:, PRIMS.index("none")] = 10.0
    f = _figures(alpha, np.zeros(E))
    assert f["op_max"] > 0.99  # none holds almost everything ...
    # ... but among the ops the derivation can keep, nothing is chosen: 1/7 each.
    assert f["op_max_kept"] == pytest.approx(1 / 7, rel=1e-4)
    assert f["op_max_kept"] < 0.6


@pytest.mark.parametrize("seed", range(6))
def test_kept_edge_figure_matches_brute_force_derivation(seed):
    rng = np.random.default_rng(seed)
    alpha, beta = rng.normal(0, 2, (E, 8)), rng.normal(0, 2, E)
    p = np.exp(alpha - alpha.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    edges = derive_cell(alpha, beta, PRIMS)
    q = p / p[:, [i for i, name in enumerate(PRIMS) if name != "none"]].sum(1, keepdims=True)
    kept = [q[edge_index(k // 2, j), PRIMS.index(op)] for k, (op, j) in enumerate(edges)]
    f = _figures(alpha, beta)
    assert f["op_max_kept"] == pytest.approx(np.mean(kept), rel=1e-5)
    assert f["op_max"] == pytest.approx(p.max(1).mean(), rel=1e-5)
    entropy = -(p * np.log(p)).sum(1) / np.log(8)
    assert f["op_entropy"] == pytest.approx(entropy.mean(), rel=1e-5)


def test_architecture_figures_average_the_two_cells():
    rng = np.random.default_rng(0)
    a_n, a_r = rng.normal(size=(E, 8)), np.zeros((E, 8))
    b = np.zeros(E)
    f = architecture_figures(a_n, b, a_r, b, PRIMS)
    for name in FIGURES:
        assert f[name] == pytest.approx((f[f"normal/{name}"] + f[f"reduce/{name}"]) / 2)
    assert f["reduce/op_max"] == pytest.approx(1 / 8)


# ---------------------------------------------------------------------------------------------
# Discretisation loss and architecture learning rate
# ---------------------------------------------------------------------------------------------


def test_discretization_loss_values_and_direction():
    uniform = float(discretization_loss(tf.zeros((E, 8)), tf.zeros(E)))
    # Ops: 14 edges x (1 - 1/8); edges: nodes with 3, 4, 5 inputs leave 1/3, 1/2, 3/5 out.
    assert uniform == pytest.approx(14 * 7 / 8 + 1 / 3 + 1 / 2 + 3 / 5, rel=1e-6)
    one_hot = np.full((E, 8), -1e4, np.float32)
    one_hot[:, 4] = 0
    beta = np.full(E, -1e4, np.float32)
    start = 0
    for n in IN_DEGREES:
        beta[start:start + 2] = 0
        start += n
    assert float(discretization_loss(tf.constant(one_hot), tf.constant(beta))) == pytest.approx(0, abs=1e-6)
    # EBNAS' form -sum (1 - p)^2 differs from it by a constant: same gradient.
    alpha = tf.Variable(np.random.default_rng(1).normal(size=(E, 8)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        ours = discretization_loss(alpha, tf.zeros(E))
        p = tf.nn.softmax(alpha)
        ebnas = -tf.reduce_sum(tf.square(1 - p))
    np.testing.assert_allclose(tape.gradient(ours, alpha), tape.gradient(ebnas, alpha), atol=1e-6)
    # Descending it raises each edge's leading op.
    grad = tape.gradient(ours, alpha).numpy()
    leader = alpha.numpy().argmax(1)
    assert np.all(grad[np.arange(E), leader] < 0)


def test_discretization_loss_decides_the_ops_the_derivation_can_keep():
    none = PRIMS.index("none")
    # none leads every edge, the real ops are level: decided on p, undecided on q.
    alpha = np.zeros((E, 8), np.float32)
    alpha[:, none] = 10.0
    on_p = float(discretization_loss(tf.constant(alpha), tf.zeros(E)))
    on_q = float(discretization_loss(tf.constant(alpha), tf.zeros(E), primitives=PRIMS))
    edge_term = 1 / 3 + 1 / 2 + 3 / 5
    assert on_p < edge_term + 0.01
    assert on_q == pytest.approx(14 * (1 - 1 / 7) + edge_term, rel=1e-5)
    # Its gradient leaves none alone and raises each edge's leading real op.
    alpha[:, PRIMS.index("bconv_3x3")] = 0.5
    var = tf.Variable(alpha)
    with tf.GradientTape() as tape:
        loss = discretization_loss(var, tf.zeros(E), primitives=PRIMS)
    grad = tape.gradient(loss, var).numpy()
    np.testing.assert_allclose(grad[:, none], 0.0, atol=1e-7)
    assert np.all(grad[:, PRIMS.index("bconv_3x3")] < 0)
    assert np.all(np.delete(grad, [none, PRIMS.index("bconv_3x3")], axis=1) > 0)


def test_arch_learning_rate_spreads_the_travel_over_the_steps():
    assert arch_learning_rate(434, 6.0) == pytest.approx(6 / 434)
    assert arch_learning_rate(1) == 6.0
    for bad in ((0, 6.0), (10, 0.0)):
        with pytest.raises(ValueError):
            arch_learning_rate(*bad)


# ---------------------------------------------------------------------------------------------
# Expected cost of the derived network
# ---------------------------------------------------------------------------------------------

EVAL = EvalNetworkConfig(layers=3, init_channels=32, stem_multiplier=2, stem_strides=2)


@pytest.fixture(scope="module")
def table():
    return build_cost_table(PRIMS, (28, 28, 1), 10, EVAL)


def _one_hot_logits(edges):
    """alpha / beta logits of a one-hot cell: the genotype's op at 0, everything else -1e4."""
    alpha, beta = np.full((E, 8), -1e4, np.float32), np.full(E, -1e4, np.float32)
    for k, (op, j) in enumerate(edges):
        e = edge_index(k // 2, j)
        alpha[e, PRIMS.index(op)] = 0.0
        beta[e] = 0.0
    return alpha, beta


@pytest.mark.parametrize("seed", range(3))
def test_expected_cost_of_one_hot_architecture_equals_cost_accounting(table, seed):
    genotype = random_genotype(PRIMS, 4, np.random.default_rng(seed))
    a_n, b_n = _one_hot_logits(genotype.normal)
    a_r, b_r = _one_hot_logits(genotype.reduce)
    expected = float(table.expected(a_n, b_n, a_r, b_r))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_eval_network(genotype, (28, 28, 1), 10, EVAL, allow_unaligned=True)
    counted = model_cost(net).ops / 1e6
    assert expected == pytest.approx(counted, rel=1e-5)
    assert table.genotype_cost(genotype) == pytest.approx(counted, rel=1e-6)


def test_expected_cost_ignores_none_and_spans_the_derivable_range(table):
    low, high = table.cost_range()
    assert 0 < table.base <= low < high  # pools cost no OPs
    conv = PRIMS.index("bdil_conv_5x5")
    alpha = np.full((E, 8), -1e4, np.float32)
    alpha[:, conv] = 0
    dear = float(table.expected(alpha, np.zeros(E), alpha, np.zeros(E)))
    alpha[:, PRIMS.index("none")] = 5.0  # none never gets derived: it does not make a net cheaper
    assert float(table.expected(alpha, np.zeros(E), alpha, np.zeros(E))) == pytest.approx(dear, rel=1e-5)
    assert low < dear <= high + 1e-6


def test_budget_loss_is_zero_at_the_target_and_two_sided():
    assert float(budget_loss(tf.constant(2.0), 2.0, 5.0)) == 0.0
    assert float(budget_loss(tf.constant(3.0), 2.0, 5.0)) == pytest.approx(5 * 0.25)
    assert float(budget_loss(tf.constant(1.0), 2.0, 5.0)) == pytest.approx(5 * 0.25)


def test_arch_step_below_target_lowers_the_most_expensive_op(table):
    model = SearchNetwork(10, init_channels=8, layers=3, k_normal=2, k_reduce=2, seed=0)
    uniform = float(table.expected(np.zeros((E, 8)), np.zeros(E), np.zeros((E, 8)), np.zeros(E)))
    objective = ArchitectureObjective(cost_table=table, target=0.5 * uniform, cost_weight=50.0)
    model.compile(arch_objective=objective)
    model.build_network((28, 28, 1))
    model.arch_optimizer.learning_rate = 0.05
    model.set_arch_updates(True)
    rng = np.random.default_rng(0)
    batch = (tf.constant(rng.normal(size=(8, 28, 28, 1)), tf.float32),
             tf.constant(rng.integers(0, 10, 8), tf.int32))
    p0 = {n: tf.nn.softmax(v).numpy() for n, v in (("normal", model.alpha_normal), ("reduce", model.alpha_reduce))}
    before = float(model.expected_cost())
    logs = model.train_step((batch, batch))
    for name, costs in (("normal", table.normal), ("reduce", table.reduce)):
        var = model.alpha_normal if name == "normal" else model.alpha_reduce
        p1 = tf.nn.softmax(var).numpy()
        dearest = costs.argmax(1)  # per edge
        rows = np.arange(E)
        assert np.all(p1[rows, dearest] < p0[name][rows, dearest]), name
    after = float(model.expected_cost())
    assert after < before
    # A step logs its losses and accuracies; the epoch's end adds the cost (tests/test_progress.py).
    assert "expected_mops" not in logs


def test_objective_without_budget_adds_nothing_but_discretisation():
    model = SearchNetwork(10, init_channels=4, layers=3, k_normal=2, k_reduce=2, seed=0)
    model.compile(arch_objective=ArchitectureObjective(discretization_weight=2.0, ramp_steps=10))
    model.build_network((8, 8, 1))
    assert model.expected_cost() is None
    uniform = 14 * (1 - 1 / 7) + 1 / 3 + 1 / 2 + 3 / 5  # ops: over the 7 derivable ones
    # Ramp: step 1 of 10 -> 1/10 of the weight, for both cell types.
    assert float(model.arch_regularization()) == pytest.approx(2.0 * 0.1 * 2 * uniform, rel=1e-3)
    with pytest.raises(ValueError, match="cost_table"):
        ArchitectureObjective(target=1.0)


# ---------------------------------------------------------------------------------------------
# Early stopping needs a decided genotype
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arch_net():
    return SearchNetwork(10, init_channels=4, layers=3, k_normal=2, k_reduce=2, seed=0)


def _set(model, logit):
    for var in (model.alpha_normal, model.alpha_reduce):
        alpha = np.zeros(var.shape, np.float32)
        alpha[:, PRIMS.index("bconv_3x3")] = logit
        var.assign(alpha)
    for var in (model.beta_normal, model.beta_reduce):
        var.assign(np.zeros(E, np.float32))


def _stopper(model, **kwargs):
    cb = GenotypeEarlyStopping(2, 10, verbose=False, **kwargs)
    cb.set_model(model)
    model.stop_training = False
    model.arch_updates_enabled = True
    return cb


def test_stable_but_undecided_genotype_does_not_stop(arch_net):
    _set(arch_net, 0.05)  # same argmax every epoch, weight 0.15 of the 7 derivable ops
    cb = _stopper(arch_net, decided_threshold=0.6)
    for epoch in range(6):
        cb.on_epoch_end(epoch)
        assert not arch_net.stop_training
    assert cb.unchanged == 5 and cb.stop_reason == "max_epochs"
    assert cb.figures["op_max_kept"] < 0.6


def test_stable_and_decided_genotype_stops_and_reports_figures(arch_net, tmp_path):
    logit = math.log(0.7 * 6 / 0.3)  # derived op at 0.7 of the 7 derivable ops' weight
    _set(arch_net, logit)
    cb = _stopper(arch_net, decided_threshold=0.6)
    for epoch in range(2):
        cb.on_epoch_end(epoch)
        assert not arch_net.stop_training
    cb.on_epoch_end(2)
    assert arch_net.stop_training and cb.stop_reason == "genotype_stable"
    assert cb.stop_figures["op_max_kept"] == pytest.approx(0.7, rel=1e-5)
    assert "decided" in cb.stop_message and "0.700" in cb.stop_message
    path = tf.train.Checkpoint(early_stopping=cb).save(str(tmp_path / "ckpt"))
    again = GenotypeEarlyStopping(2, 10, verbose=False)
    tf.train.Checkpoint(early_stopping=again).restore(path).assert_consumed()
    assert again.stop_figures == cb.stop_figures and again.stop_message == cb.stop_message


def test_decided_threshold_is_checked():
    with pytest.raises(ValueError, match="decided_threshold"):
        GenotypeEarlyStopping(2, 10, decided_threshold=1.5)


# ---------------------------------------------------------------------------------------------
# Flags: the network a budget refers to
# ---------------------------------------------------------------------------------------------


def test_read_eval_network_from_train_flagfile(tmp_path):
    config, module_config = read_eval_network(os.path.join(REPO, "flags", "fashion_mnist_train.flags"))
    assert (config.layers, config.init_channels, config.stem_multiplier, config.stem_strides) == (5, 32, 4, 2)
    assert module_config == "universal"
    partial = tmp_path / "t.flags"
    partial.write_text("--layers=4\n--dataset=cifar10\n")
    config, _ = read_eval_network(str(partial))
    assert (config.layers, config.init_channels, config.stem_strides) == (4, 32, 1)  # train defaults
    with pytest.raises(FlagError, match="--target_train_flagfile"):
        read_eval_network(str(tmp_path / "missing.flags"))
    # The search's module structure is the budget network's; a flagfile naming another is refused.
    assert read_eval_network(str(partial), "reactnet")[1] == "reactnet"
    named = tmp_path / "named.flags"
    named.write_text("--module_config=bireal\n")
    assert read_eval_network(str(named), "bireal")[1] == "bireal"
    with pytest.raises(FlagError, match="--module_config=reactnet but --target_train_flagfile=.*"
                                        "named.flags.* retrains with --module_config=bireal"):
        read_eval_network(str(named), "reactnet")


def test_cost_table_leaves_out_the_preprocessing_of_an_unread_input(table):
    # A hand-made cell (not derivable) whose nodes never read input 0: Keras drops that
    # preprocessing layer, and the table's figure must follow.
    cell = (("bconv_3x3", 1), ("skip_connect", 1), ("bconv_3x3", 2), ("skip_connect", 1),
            ("bconv_3x3", 3), ("skip_connect", 1), ("bconv_3x3", 4), ("skip_connect", 1))
    genotype = Genotype(cell, (2, 3, 4, 5), cell, (2, 3, 4, 5))
    net = build_eval_network(genotype, (28, 28, 1), 10, EVAL)
    assert table.genotype_cost(genotype) == pytest.approx(model_cost(net).ops / 1e6, rel=1e-6)
    assert table.preprocess[:, 0].sum() > 0
    no_input_1 = tuple((op, 0 if j == 1 else j) for op, j in cell)
    with pytest.raises(ValueError, match="input 1"):
        table.genotype_cost(Genotype(no_input_1, (2, 3, 4, 5), cell, (2, 3, 4, 5)))


def test_an_edge_that_none_holds_adds_no_expected_cost(table):
    # Every edge one-hot on max_pool (0 OPs) except the first input edge of each node, where
    # none holds nearly all the weight and the rest sits on bdil_conv_5x5 (the dearest op)
    # behind a large edge weight. The derivation never keeps such an edge (it ranks edges
    # by edge weight x derivable op weight), so the expected cost must not count it, except
    # in the first node, which keeps both its inputs and so pays for bdil_conv_5x5.
    alpha = np.full((E, 8), -1e4, np.float32)
    alpha[:, PRIMS.index("max_pool_3x3")] = 0.0
    beta = np.zeros(E, np.float32)
    start = 0
    for n in IN_DEGREES:
        alpha[start, PRIMS.index("none")] = 16.0
        alpha[start, PRIMS.index("max_pool_3x3")] = -1e4
        alpha[start, PRIMS.index("bdil_conv_5x5")] = 0.0
        beta[start] = 5.0
        start += n
    expected = float(table.expected(alpha, beta, alpha, beta))
    conv = PRIMS.index("bdil_conv_5x5")
    derived = table.base + table.normal[0, conv] + table.reduce[0, conv]
    assert expected == pytest.approx(derived, rel=1e-3)
    a = alpha.astype(np.float64)
    genotype = Genotype(derive_cell(a, beta, PRIMS), (2, 3, 4, 5), derive_cell(a, beta, PRIMS),
                        (2, 3, 4, 5))
    assert table.genotype_cost(genotype) == pytest.approx(derived, rel=1e-6)


def _capped_simplex_by_bisection(share, keep=2):
    lo, hi = 0.0, 1e6
    for _ in range(200):
        t = (lo + hi) / 2
        lo, hi = (t, hi) if np.minimum(1, t * share).sum() < keep else (lo, t)
    return np.minimum(1, hi * share)


@pytest.mark.parametrize("seed", range(8))
def test_kept_weights_are_the_capped_simplex(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 6))
    share = rng.dirichlet(np.full(n, 0.3 if seed % 2 else 3.0))
    kept = kept_weights(tf.constant(share, tf.float32)).numpy()
    np.testing.assert_allclose(kept, _capped_simplex_by_bisection(share), atol=1e-5)
    assert kept.sum() == pytest.approx(2.0, abs=1e-5) and kept.max() <= 1 + 1e-6
    np.testing.assert_array_equal(kept_weights(tf.constant([0.7, 0.3])).numpy(), [1, 1])


def test_a_decided_but_unequal_pair_costs_both_edges_in_full(table):
    # Every node keeps the same two inputs (0 and 1), split 0.8 / 0.2 between them, with the
    # dear op on the weaker edge. The derived network pays for both edges fully; an expected
    # cost weighted by 2 x share would count the dear edge only 0.4 times.
    genotype_edges = tuple((op, j) for _ in range(4)
                           for op, j in (("max_pool_3x3", 0), ("bdil_conv_5x5", 1)))
    alpha, _ = _one_hot_logits(genotype_edges)
    beta = np.full(E, -1e4, np.float32)
    start = 0
    for n in IN_DEGREES:
        beta[start], beta[start + 1] = np.log(0.8), np.log(0.2)
        start += n
    genotype = Genotype(genotype_edges, (2, 3, 4, 5), genotype_edges, (2, 3, 4, 5))
    expected = float(table.expected(alpha, beta, alpha, beta))
    assert expected == pytest.approx(table.genotype_cost(genotype), rel=1e-5)


# ---- a fixed reduction (ModuleConfig.reduction) in the budget ----------------------------


@pytest.mark.parametrize("name", ["universal_real_reduction", "universal_binary_reduction"])
def test_cost_table_of_a_fixed_reduction_costs_the_block_not_reduce_ops(table, name):
    fixed = build_cost_table(PRIMS, (28, 28, 1), 10, EVAL, name)
    assert table.searched_reduction and not fixed.searched_reduction
    assert np.all(fixed.reduce == 0) and np.all(fixed.preprocess[1] == 0)
    np.testing.assert_allclose(fixed.normal, table.normal)  # the normal cells are the same

    genotype = random_genotype(PRIMS, 4, np.random.default_rng(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_eval_network(genotype, (28, 28, 1), 10, EVAL, name, allow_unaligned=True)
    report = model_cost(net)
    # The blocks by hand: 28x28 -> stem stride 2 -> 14x14; cell 1 maps 4 x 32 channels at
    # 14x14 to 4 x 64 at 7x7, cell 2 4 x 64 at 7x7 to 4 x 128 at 4x4.
    if name == "universal_real_reduction":  # real 1x1 convs at the pooled resolution: FLOPs
        block_mops = (7 * 7 * 128 * 256 + 4 * 4 * 256 * 512) / 1e6
    else:  # binary 3x3 stride-2 convs: BOPs / 64
        block_mops = (7 * 7 * 9 * 128 * 256 + 4 * 4 * 9 * 256 * 512) / 64 / 1e6
    rows = [r for r in report.layers if "fixed_reduction/" in r.name]
    assert sum(r.bops / 64 + r.flops for r in rows) / 1e6 == pytest.approx(block_mops)
    # They are in the base, in place of the reduction cells' preprocessing.
    assert fixed.base == pytest.approx(
        table.base - table.preprocess[1].sum() + block_mops, rel=1e-6)

    # A derived network's OPs, from the table and from one-hot logits, whatever alpha_reduce
    # holds: it is not charged.
    counted = report.ops / 1e6
    assert fixed.genotype_cost(genotype) == pytest.approx(counted, rel=1e-6)
    a_n, b_n = _one_hot_logits(genotype.normal)
    rng = np.random.default_rng(0)
    for a_r, b_r in (_one_hot_logits(genotype.reduce),
                     (rng.normal(size=(E, 8)).astype(np.float32), rng.normal(size=E))):
        assert float(fixed.expected(a_n, b_n, a_r, b_r)) == pytest.approx(counted, rel=1e-5)
    # Nor is a genotype's reduce cell checked (it is never built).
    odd = Genotype(genotype.normal, genotype.normal_concat, genotype.reduce[:2], (2,))
    assert fixed.genotype_cost(odd) == pytest.approx(counted, rel=1e-6)
    low, high = fixed.cost_range()
    t_low, t_high = table.cost_range()
    normal_span = (high - low)
    assert low >= fixed.base and normal_span < t_high - t_low


def test_search_and_budget_must_agree_on_a_fixed_reduction(table):
    fixed = build_cost_table(PRIMS, (28, 28, 1), 10, EVAL, "universal_real_reduction")
    for config, costs in (("universal", fixed), ("universal_real_reduction", table)):
        model = SearchNetwork(10, init_channels=4, layers=3, k_normal=2, k_reduce=2, seed=0,
                              config=config)
        with pytest.raises(ValueError, match="agree on whether the reduction cell is searched"):
            model.compile(arch_objective=ArchitectureObjective(cost_table=costs, target=1.0))
    model = SearchNetwork(10, init_channels=4, layers=3, k_normal=2, k_reduce=2, seed=0,
                          config="universal_binary_reduction")  # another fixed design: fine
    model.compile(arch_objective=ArchitectureObjective(cost_table=fixed, target=1.0))
