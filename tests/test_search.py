"""The search: primitive registry, binary modules, partial-channel mixed ops, cells, the supernet
with its bilevel `train_step`, and the search callbacks.

Tracing the supernet is the slow part (about 10 s per `tf.function` on 2 cores), so the
graph-mode tests share one small supernet (`graph_net`: 2 nodes per cell, 4 primitives) whose
variables are restored before each test, and are ordered so that it is traced once with and
once without the architecture step. The default search space (8 primitives, 4 nodes) is
checked on `full_net` in eager mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import larq as lq
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config
from tool_runs import DESIGN_PRIMITIVES, REPO, SMALL_PRIMITIVES, needs_fashion, subprocess_env

from ubnas_tf import ops
from ubnas_tf.genotype import Genotype, edge_index
from ubnas_tf.modules import BinaryConvModule, FixedReduction, PoolModule, SkipModule, ZeroModule
from ubnas_tf.ops import (
    DEFAULT_PRIMITIVES,
    build_op,
    get_primitive,
    register_primitive,
    registered_primitives,
    resolve_primitives,
)
from ubnas_tf.rundir import NonFiniteError, RunDirectory
from ubnas_tf.search import (
    ArchitectureFigures,
    ArchitectureWarmup,
    GenotypeEarlyStopping,
    GenotypeHistory,
    PartialChannelMixedOp,
    SearchCell,
    SearchNetwork,
    default_arch_optimizer,
)
from ubnas_tf.search.callbacks import parameter_free_share
from ubnas_tf.search.cell import node_edge_weights
from ubnas_tf.search.decisiveness import FIGURES, cell_figures
from ubnas_tf.search.runner import SearchConfig, run_search

PRIMS = list(DESIGN_PRIMITIVES)
ARCH_NAMES = ("alpha_normal", "beta_normal", "alpha_reduce", "beta_reduce")


def _images(seed: int, n: int = 4, hw: int = 8, channels: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, hw, hw, channels)).astype("float32")
    y = rng.integers(0, 10, size=n).astype("int64")
    return x, y


def _values(variables) -> list[np.ndarray]:
    return [np.array(v.numpy(), copy=True) for v in variables]


def _restore(variables, values) -> None:
    for v, value in zip(variables, values, strict=True):
        v.assign(value)


def _arch(model) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in model.arch_values().items()}


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _shuffle_perm(channels: int, k: int) -> list[int]:
    """PC-DARTS channel_shuffle(x, K): output channel a*K + g is input channel g*(C/K) + a."""
    part = channels // k
    return [g * part + a for a in range(part) for g in range(k)]


def _pool2x2(x: np.ndarray, kind: str) -> np.ndarray:
    """2x2/stride-2 pooling with 'same' padding (ceil size; padding ignored) in numpy."""
    b, h, w, c = x.shape
    hp, wp = -(-h // 2) * 2, -(-w // 2) * 2
    padded = np.full((b, hp, wp, c), np.nan, dtype=np.float64)
    padded[:, :h, :w] = x
    blocks = padded.reshape(b, hp // 2, 2, wp // 2, 2, c)
    reduce = np.nanmax if kind == "max" else np.nanmean
    return reduce(blocks, axis=(2, 4))


def _binarised(kernel: np.ndarray) -> np.ndarray:
    """Larq's magnitude-aware sign: sign(w) times the mean |w| of each output channel."""
    scale = np.abs(kernel).mean(axis=(0, 1, 2))
    return np.where(kernel >= 0, 1.0, -1.0) * scale


# ---------------------------------------------------------------------------------------------
# 1. The primitive registry
# ---------------------------------------------------------------------------------------------


def test_default_registry_is_exactly_the_design_primitives():
    assert DEFAULT_PRIMITIVES == DESIGN_PRIMITIVES
    assert resolve_primitives(None) == DESIGN_PRIMITIVES
    assert tuple(registered_primitives()[:8]) == DESIGN_PRIMITIVES
    # A fresh interpreter: nothing but the 8 defaults is registered on import.
    code = "import json; from ubnas_tf.ops import registered_primitives as r; print(json.dumps(r()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=subprocess_env(single_thread=False), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == list(DESIGN_PRIMITIVES)


def test_primitive_flags():
    assert get_primitive("none").zero and not get_primitive("none").parametric
    for name in ("skip_connect", "max_pool_3x3", "avg_pool_3x3"):
        spec = get_primitive(name)
        assert not spec.parametric and not spec.binary and not spec.zero
    for name in ("bconv_3x3", "bconv_5x5", "bdil_conv_3x3", "bdil_conv_5x5"):
        spec = get_primitive(name)
        assert spec.parametric and spec.binary and not spec.zero
    assert ops.parameter_free(PRIMS) == ["skip_connect", "max_pool_3x3", "avg_pool_3x3"]


def test_resolve_primitives():
    assert resolve_primitives("bconv_3x3,skip_connect") == ("bconv_3x3", "skip_connect")
    assert resolve_primitives(" bconv_3x3 , skip_connect ,") == ("bconv_3x3", "skip_connect")
    assert resolve_primitives(["none", "bconv_5x5"]) == ("none", "bconv_5x5")
    with pytest.raises(ValueError) as err:
        resolve_primitives("bconv_3x3,bconv_7x7")
    message = str(err.value)
    assert "bconv_7x7" in message
    for name in DESIGN_PRIMITIVES:
        assert name in message
    with pytest.raises(ValueError, match="more than once"):
        resolve_primitives("bconv_3x3,bconv_3x3")
    with pytest.raises(ValueError, match="other than 'none'"):
        resolve_primitives("none")
    with pytest.raises(ValueError, match="known primitives"):
        get_primitive("sep_conv_3x3")


@pytest.mark.parametrize("name", DESIGN_PRIMITIVES)
@pytest.mark.parametrize("strides", [1, 2])
def test_primitive_maps_channels_and_stride(name, strides):
    x = tf.random.normal([2, 8, 8, 8], seed=1)
    out = build_op(name, 8, strides, search=True)(x, training=True)
    side = 8 // strides
    assert out.shape == (2, side, side, 8)
    if get_primitive(name).parametric:
        # One independent copy per edge leaving a node.
        fused = build_op(name, 8, strides, search=True, fan_out=3)(x, training=True)
        assert fused.shape == (2, side, side, 24)
    if name == "none":
        assert np.all(out.numpy() == 0.0)


@pytest.mark.parametrize("name,size,dilation", [
    ("bconv_3x3", 3, 1), ("bconv_5x5", 5, 1), ("bdil_conv_3x3", 3, 2), ("bdil_conv_5x5", 5, 2),
])
def test_binary_conv_primitives_are_larq_binary_convs(name, size, dilation):
    layer = build_op(name, 8, 1, search=True)
    layer(tf.zeros([1, 8, 8, 8]))
    assert isinstance(layer, BinaryConvModule)
    convs = [m for m in layer.submodules if isinstance(m, lq.layers.QuantConv2D)]
    assert len(convs) == 1
    conv = convs[0]
    assert conv.pad_values == 1.0
    assert conv.use_bias is False
    assert conv.padding == "same"
    assert isinstance(conv.input_quantizer, lq.quantizers.ApproxSign)
    assert isinstance(conv.kernel_quantizer, lq.quantizers.MagnitudeAwareSign)
    assert conv.kernel_size == (size, size)
    assert conv.dilation_rate == (dilation, dilation)
    # Search ops use non-affine BatchNorm, the evaluation network affine.
    assert not layer.pre_bn.scale and not layer.post_bn.center
    evaluation = build_op(name, 8, 1, search=False)
    evaluation(tf.zeros([1, 8, 8, 8]))
    assert evaluation.pre_bn.scale and evaluation.post_bn.center


def test_pool_primitives_get_batch_norm_only_in_search():
    search = build_op("avg_pool_3x3", 8, 1, search=True)
    assert isinstance(search, PoolModule) and search.bn is not None
    assert not search.bn.scale and not search.bn.center
    assert build_op("max_pool_3x3", 8, 1, search=False).bn is None
    assert isinstance(build_op("skip_connect", 8, 2), SkipModule)
    assert isinstance(build_op("none", 8, 2), ZeroModule)


def test_register_primitive_is_usable_by_search_network(monkeypatch):
    # A private copy of the registry: the op does not leak into other tests.
    monkeypatch.setattr(ops, "_REGISTRY", dict(ops._REGISTRY))
    built = []

    def build(channels, strides, config, search, fan_out):
        built.append((channels, strides, search, fan_out))
        return SkipModule(strides, config)

    register_primitive("test_identity_op", build, parametric=False, overwrite=True)
    register_primitive("test_identity_op", build, parametric=False, overwrite=True)
    with pytest.raises(ValueError, match="already registered"):
        register_primitive("test_identity_op", build, parametric=False)
    with pytest.raises(ValueError, match="Invalid primitive name"):
        register_primitive("a,b", build, parametric=False, overwrite=True)
    assert "test_identity_op" in registered_primitives()
    assert resolve_primitives("test_identity_op,bconv_3x3") == ("test_identity_op", "bconv_3x3")
    assert "test_identity_op" in ops.parameter_free(registered_primitives())

    prims = ["none", "test_identity_op", "bconv_3x3"]
    model = SearchNetwork(10, init_channels=4, layers=3, steps=2, primitives=prims,
                          k_normal=2, k_reduce=2, seed=0)
    assert model.primitives == tuple(prims)
    assert model.alpha_normal.shape == (5, 3)
    logits = model(tf.random.normal([2, 8, 8, 1], seed=0), training=False)
    assert logits.shape == (2, 10)
    assert np.all(np.isfinite(logits.numpy()))
    # Built once per edge group (3 per cell: the states 0..2 feeding a 2-node cell's edges) of
    # all 3 cells, on C/K channels (parameter-free: fan_out 1).
    assert len(built) == 9
    assert {b[0] for b in built} == {2, 4, 8}  # C/K of the cell widths 4, 8 and 16
    assert {b[1] for b in built} == {1, 2}
    assert all(b[2] and b[3] == 1 for b in built)
    # The new op is derivable.
    alpha = np.zeros((5, 3), np.float32)
    alpha[:, 1] = 4.0
    model.alpha_normal.assign(alpha)
    genotype = model.genotype()
    assert {op for op, _ in genotype.normal} == {"test_identity_op"}
    genotype.validate(model.primitives)


# ---------------------------------------------------------------------------------------------
# 2. The dilated stride-2 binary conv
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_dilated_stride2_module_equals_explicit_dilated_conv(kernel_size):
    channels = 4
    layer = BinaryConvModule(kernel_size, strides=2, dilation_rate=2)
    x = tf.random.normal([2, 8, 8, channels], seed=3)
    out = layer(x, training=False).numpy()  # default BN stats: BN = x / sqrt(1 + eps)
    assert out.shape == (2, 4, 4, channels)

    eps = layer.pre_bn.epsilon
    signs = np.where(x.numpy() / np.sqrt(1 + eps) >= 0, 1.0, -1.0).astype("float32")
    kernel = _binarised(layer.conv.kernel.numpy()).astype("float32")
    pad = kernel_size - 1  # dilation 2: half of the dilated extent 2 * (k - 1) + 1
    padded = np.pad(signs, [(0, 0), (pad, pad), (pad, pad), (0, 0)], constant_values=1.0)
    conv = tf.nn.conv2d(padded, kernel, strides=2, padding="VALID", dilations=2).numpy()
    shortcut = _pool2x2(x.numpy(), "avg")
    reference = conv / np.sqrt(1 + eps) + shortcut
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-4)

    # Equivalently: the stride-1 dilated conv (pad_values=1), sampled at even positions.
    dense = tf.nn.conv2d(padded, kernel, strides=1, padding="VALID", dilations=2).numpy()
    np.testing.assert_allclose(conv, dense[:, ::2, ::2], rtol=1e-6, atol=1e-5)
    # The module is not the (asymmetrically padded) TF 'same' stride-2 conv with zero padding.
    assert layer.subsample_input and layer.conv.strides == (1, 1)


def test_dilated_stride1_module_equals_explicit_dilated_conv():
    layer = BinaryConvModule(3, strides=1, dilation_rate=2)
    x = tf.random.normal([2, 8, 8, 4], seed=4)
    out = layer(x, training=False).numpy()
    eps = layer.pre_bn.epsilon
    signs = np.where(x.numpy() >= 0, 1.0, -1.0).astype("float32")
    kernel = _binarised(layer.conv.kernel.numpy()).astype("float32")
    padded = np.pad(signs, [(0, 0), (2, 2), (2, 2), (0, 0)], constant_values=1.0)
    conv = tf.nn.conv2d(padded, kernel, strides=1, padding="VALID", dilations=2).numpy()
    np.testing.assert_allclose(out, conv / np.sqrt(1 + eps) + x.numpy(), rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# 3. The partial-channel mixed op
# ---------------------------------------------------------------------------------------------


def _one_hot(name: str, prims=PRIMS, fan_out: int = 1) -> tf.Tensor:
    w = np.zeros((fan_out, len(prims)), np.float32)
    w[:, prims.index(name)] = 1.0
    return tf.constant(w)


def test_channel_shuffle_permutation_literal():
    assert _shuffle_perm(8, 4) == [0, 2, 4, 6, 1, 3, 5, 7]
    assert _shuffle_perm(8, 2) == [0, 4, 1, 5, 2, 6, 3, 7]


def test_mixed_op_skip_one_hot_is_pc_darts_channel_shuffle():
    op = PartialChannelMixedOp(8, PRIMS, k=4, strides=1)
    x = tf.random.normal([2, 6, 6, 8], seed=5)
    out = op(x, _one_hot("skip_connect"), training=False).numpy()
    xn = x.numpy()
    # Equal up to a permutation of the channels ...
    np.testing.assert_array_equal(np.sort(out.reshape(-1, 8).sum(0)), np.sort(xn.reshape(-1, 8).sum(0)))
    # ... and that permutation is PC-DARTS' channel_shuffle with K groups.
    np.testing.assert_array_equal(out, xn[..., _shuffle_perm(8, 4)])


@pytest.mark.parametrize("fuse_convs", [False, True])
def test_mixed_op_transforms_only_first_c_over_k_channels(fuse_convs):
    c, k = 8, 4
    op = PartialChannelMixedOp(c, PRIMS, k=k, strides=1, fuse_convs=fuse_convs)
    x = tf.random.normal([2, 6, 6, c], seed=6)
    out = op(x, _one_hot("bconv_3x3"), training=False).numpy()
    xn = x.numpy()
    perm = _shuffle_perm(c, k)
    if fuse_convs:  # the bank's bconv_3x3 as a module of its own
        bconv = BinaryConvModule(3, affine=False)
        bconv(x[..., : c // k])
        bconv.conv.kernel.assign(op.conv_bank.latent_kernels()["bconv_3x3"])
    else:
        bconv = next(layer for i, _, layer in op.ops if PRIMS[i] == "bconv_3x3")
    transformed = bconv(x[..., : c // k], training=False).numpy()
    assert not np.allclose(transformed, xn[..., : c // k])
    for j, src in enumerate(perm):
        if src < c // k:
            np.testing.assert_allclose(out[..., j], transformed[..., src], rtol=1e-6, atol=1e-6)
        else:  # bypass channels reach the output unchanged
            np.testing.assert_array_equal(out[..., j], xn[..., src])


@pytest.mark.parametrize("hw", [8, 5])
def test_mixed_op_stride2_max_pools_the_bypass(hw):
    c, k = 8, 4
    op = PartialChannelMixedOp(c, PRIMS, k=k, strides=2)
    x = tf.random.normal([2, hw, hw, c], seed=7)
    out = op(x, _one_hot("skip_connect"), training=False).numpy()
    side = -(-hw // 2)
    assert out.shape == (2, side, side, c)
    xn = x.numpy()
    perm = _shuffle_perm(c, k)
    maxed, averaged = _pool2x2(xn, "max"), _pool2x2(xn, "avg")
    for j, src in enumerate(perm):
        if src < c // k:  # skip_connect at stride 2: the module's 2x2 average-pool shortcut
            np.testing.assert_allclose(out[..., j], averaged[..., src], rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_allclose(out[..., j], maxed[..., src], rtol=0, atol=0)


def test_mixed_op_channels_not_divisible_by_k():
    with pytest.raises(ValueError, match=r"K=4"):
        PartialChannelMixedOp(6, PRIMS, k=4)
    with pytest.raises(ValueError, match="K must be >= 1"):
        PartialChannelMixedOp(8, PRIMS, k=0)


def test_mixed_op_never_evaluates_none():
    op = PartialChannelMixedOp(8, PRIMS, k=2, strides=2, fan_out=3)
    x = tf.random.normal([2, 8, 8, 8], seed=8)
    outs = op(x, _one_hot("none", fan_out=3), training=False)
    assert not any(isinstance(m, ZeroModule) for m in op.submodules)
    evaluated = [PRIMS[i] for i, _, _ in op.ops] + [name for name, _, _ in op.conv_bank.ops]
    assert sorted(evaluated) == sorted(p for p in PRIMS if p != "none")
    perm = _shuffle_perm(8, 2)
    for out in outs:  # the 'none' weight contributes exact zeros to the mixed channels
        out = out.numpy()
        for j, src in enumerate(perm):
            if src < 4:
                assert np.all(out[..., j] == 0.0)


@pytest.mark.parametrize("strides", [1, 2])
def test_fused_fan_out_equals_separate_mixed_ops(strides):
    c, k, fan = 8, 2, 3
    part = c // k
    rng = np.random.default_rng(9)
    x = tf.constant(rng.normal(size=(2, 8, 8, c)).astype("float32"))
    weights = _softmax(rng.normal(size=(fan, len(PRIMS)))).astype("float32")
    # Module by module; tests/test_conv_bank.py shows the bank equals this.
    fused = PartialChannelMixedOp(c, PRIMS, k=k, strides=strides, fan_out=fan, fuse_convs=False)
    fused(x, weights, training=False)
    # Non-trivial BN statistics, so inference mode tests that they are split per edge too.
    for v in fused.non_trainable_weights:
        if "moving_mean" in v.name:
            v.assign(rng.normal(size=v.shape).astype("float32"))
        elif "moving_variance" in v.name:
            v.assign(rng.uniform(0.5, 2.0, size=v.shape).astype("float32"))

    separate = []
    for t in range(fan):
        op = PartialChannelMixedOp(c, PRIMS, k=k, strides=strides, fan_out=1, fuse_convs=False)
        op(x, weights[t : t + 1], training=False)
        copied = 0
        for (i_f, _, lf), (i_s, _, ls) in zip(fused.ops, op.ops, strict=True):
            assert i_f == i_s
            for vf, vs in zip(lf.weights, ls.weights, strict=True):
                assert vf.name.split("/")[-1] == vs.name.split("/")[-1]
                if vf.shape == vs.shape:  # shared by the edges (pre-BN, parameter-free ops)
                    vs.assign(vf)
                else:  # one slice of fan_out * C/K output channels per edge
                    assert vf.shape[-1] == fan * vs.shape[-1] == fan * part
                    vs.assign(vf[..., t * part : (t + 1) * part])
                copied += 1
        assert copied > 0
        separate.append(op)

    for training in (False, True):
        outs = fused(x, weights, training=training)
        assert len(outs) == fan
        for t in range(fan):
            expected = separate[t](x, weights[t : t + 1], training=training)
            np.testing.assert_allclose(outs[t].numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
        # The edges have their own kernels and weights: their outputs differ.
        assert not np.allclose(outs[0].numpy(), outs[1].numpy())
    kernels = [v for v in fused.trainable_weights if "kernel" in v.name]
    assert len(kernels) == 4 and all(v.shape[-1] == fan * part for v in kernels)


# ---------------------------------------------------------------------------------------------
# 4. Cells and the supernet
# ---------------------------------------------------------------------------------------------


def test_node_edge_weights_are_softmax_per_node():
    beta = tf.constant(np.arange(14, dtype=np.float32) / 7)
    weights = node_edge_weights(beta, 4)
    assert [w.shape[0] for w in weights] == [2, 3, 4, 5]
    start = 0
    for node, w in enumerate(weights):
        np.testing.assert_allclose(w.numpy(), _softmax(beta.numpy()[start : start + node + 2]),
                                   rtol=1e-6)
        start += node + 2


@pytest.mark.parametrize("reduction,reduction_prev,in0,in1,out", [
    (False, False, 8, 8, 8),
    (True, False, 8, 8, 4),
    (False, True, 8, 4, 4),
])
def test_search_cell_output_shape(reduction, reduction_prev, in0, in1, out):
    cell = SearchCell(8, reduction, reduction_prev, PRIMS, k=4)
    rng = np.random.default_rng(10)
    s0 = tf.constant(rng.normal(size=(2, in0, in0, 12)).astype("float32"))
    s1 = tf.constant(rng.normal(size=(2, in1, in1, 6)).astype("float32"))
    alpha = tf.nn.softmax(rng.normal(size=(14, 8)).astype("float32"))
    beta = tf.constant(rng.normal(size=14).astype("float32"))
    y = cell([s0, s1], alpha, beta, training=True)
    assert y.shape == (2, out, out, 4 * 8)  # concat of 4 nodes of the cell width
    assert np.all(np.isfinite(y.numpy()))
    assert cell.num_edges == 14
    assert [len(targets) for targets, _, _ in cell.edge_groups] == [4, 4, 3, 2, 1]


def test_cell_width_not_divisible_by_k_names_the_flag():
    with pytest.raises(ValueError, match="--k_normal=4"):
        SearchNetwork(10, init_channels=6, layers=3, k_normal=4, k_reduce=4, seed=0)
    with pytest.raises(ValueError, match="--k_reduce=3"):
        SearchNetwork(10, init_channels=4, layers=3, k_normal=2, k_reduce=3, seed=0)
    with pytest.raises(ValueError, match="--k_reduce=5"):
        SearchCell(8, True, False, PRIMS, k=5)


@pytest.fixture(scope="module")
def full_net():
    """The default search space (8 primitives, 4 nodes), 3 cells, 4 initial channels."""
    tf.keras.utils.set_random_seed(0)
    model = SearchNetwork(10, init_channels=4, layers=3, k_normal=2, k_reduce=2, seed=0)
    model.compile()
    model.build_network((8, 8, 1))
    return model


def test_search_network_output_shapes(full_net):
    assert full_net(tf.zeros([3, 8, 8, 1]), training=False).shape == (3, 10)
    assert [c.reduction for c in full_net.cells] == [False, True, True]
    assert [c.channels for c in full_net.cells] == [4, 8, 16]
    assert [c.k for c in full_net.cells] == [2, 2, 2]


def test_search_network_odd_resolution():
    # 10x10 -> 5x5 -> 3x3: the stride-2 ops and the max-pooled bypass agree on ceil(H/2).
    model = SearchNetwork(10, init_channels=4, layers=3, steps=1, primitives=SMALL_PRIMITIVES,
                          k_normal=2, k_reduce=2, seed=0)
    assert model(tf.zeros([1, 10, 10, 1]), training=False).shape == (1, 10)


def test_arch_and_weight_variables(full_net):
    arch = full_net.arch_variables
    assert [v.name.split(":")[0].split("/")[-1] for v in arch] == list(ARCH_NAMES)
    assert [tuple(v.shape) for v in arch] == [(14, 8), (14,), (14, 8), (14,)]
    assert all(v.trainable for v in arch)
    arch_refs = {v.ref() for v in arch}
    weight_refs = [v.ref() for v in full_net.weight_variables]
    assert len(weight_refs) == len(set(weight_refs))
    assert not arch_refs & set(weight_refs)
    trainable = {v.ref() for v in full_net.trainable_variables}
    assert trainable == arch_refs | set(weight_refs)
    assert len(full_net.trainable_variables) == len(weight_refs) + 4
    # No other variable is named like an architecture parameter.
    named = [v for v in full_net.variables
             if v.name.split(":")[0].split("/")[-1] in ARCH_NAMES]
    assert len(named) == 4
    # BN moving statistics are in neither set.
    moving = [v for v in full_net.variables if "moving_" in v.name]
    assert moving and not {v.ref() for v in moving} & trainable
    # Each optimiser has slots for its own variables only (Adam: m and v, plus iterations).
    assert len(full_net.optimizer.variables) == 1 + 2 * len(weight_refs)
    assert len(full_net.arch_optimizer.variables) == 1 + 2 * 4


def test_genotype_is_valid_and_follows_alpha(full_net):
    saved = _values(full_net.arch_variables)
    try:
        genotype = full_net.genotype()
        assert isinstance(genotype, Genotype)
        genotype.validate(full_net.primitives)
        assert len(genotype.normal) == len(genotype.reduce) == 8
        assert genotype.normal_concat == genotype.reduce_concat == (2, 3, 4, 5)
        assert "none" not in genotype.ops_used()
        Genotype.from_dict(genotype.to_dict(), primitives=full_net.primitives)

        alpha = np.zeros((14, 8), np.float32)
        alpha[:, PRIMS.index("none")] = 9.0  # 'none' is never derived ...
        alpha[:, PRIMS.index("bdil_conv_5x5")] = 3.0  # ... the best other op is
        full_net.alpha_normal.assign(alpha)
        beta = np.zeros(14, np.float32)
        beta[edge_index(3, 4)] = 5.0  # node 3 prefers state 4 ...
        beta[edge_index(3, 0)] = 4.0  # ... then state 0
        full_net.beta_normal.assign(beta)
        genotype = full_net.genotype()
        assert {op for op, _ in genotype.normal} == {"bdil_conv_5x5"}
        assert [j for _, j in genotype.normal[6:]] == [0, 4]
    finally:
        _restore(full_net.arch_variables, saved)


def test_eager_step_with_default_arch_optimizer(full_net):
    """docs/design.md's arch Adam on the full search space: only alpha/beta move when the weight
    learning rate is 0; with the default optimisers in warm-up only the weights move."""
    all_vars = full_net.variables
    saved = _values(all_vars)
    xt, yt = _images(11)
    xv, yv = _images(12)
    ds = tf.data.Dataset.from_tensors(((xt, yt), (xv, yv)))
    try:
        full_net.compile(optimizer=tf.keras.optimizers.SGD(0.0),
                         arch_optimizer=default_arch_optimizer(), run_eagerly=True)
        full_net.set_arch_updates(True)
        arch0, weights0 = _arch(full_net), _values(full_net.weight_variables)
        logs = full_net.make_train_function()(iter(ds))
        assert {"loss", "accuracy", "arch_loss", "arch_accuracy"} <= set(logs)
        for name, value in _arch(full_net).items():
            assert np.all(value != arch0[name]), name  # Adam moves every logit
        for before, v in zip(weights0, full_net.weight_variables, strict=True):
            np.testing.assert_array_equal(v.numpy(), before, err_msg=v.name)

        full_net.compile(run_eagerly=True)  # default optimisers
        full_net.set_arch_updates(False)
        arch0, weights0 = _arch(full_net), _values(full_net.weight_variables)
        logs = full_net.make_train_function()(iter(ds))
        assert "arch_loss" not in logs and "arch_accuracy" not in logs
        for name, value in _arch(full_net).items():
            np.testing.assert_array_equal(value, arch0[name])
        kernels = [(b, v) for b, v in zip(weights0, full_net.weight_variables, strict=True)
                   if "kernel" in v.name]
        assert len(kernels) > 20
        for before, v in kernels:
            assert not np.array_equal(v.numpy(), before), v.name
    finally:
        full_net.set_arch_updates(False)
        full_net.compile()
        _restore(all_vars, saved)


# ---------------------------------------------------------------------------------------------
# 5. The bilevel step in graph mode (one small supernet, variables restored per test)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph_net_module():
    tf.keras.utils.set_random_seed(1)
    model = SearchNetwork(10, init_channels=4, layers=3, steps=2, primitives=SMALL_PRIMITIVES,
                          k_normal=2, k_reduce=2, seed=1)
    # SGD: an update is exactly -lr * gradient. The learning rates are variables, so tests
    # change them without retracing.
    model.compile(optimizer=tf.keras.optimizers.SGD(0.0),
                  arch_optimizer=tf.keras.optimizers.SGD(0.0))
    model.build_network((8, 8, 1))
    state = [*model.variables, *model.optimizer.variables, *model.arch_optimizer.variables]
    return model, state, _values(state)


@pytest.fixture
def graph_net(graph_net_module):
    model, state, values = graph_net_module
    _restore(state, values)
    model.stop_training = False
    yield model
    model.optimizer.learning_rate = 0.0
    model.arch_optimizer.learning_rate = 0.0


def _graph_step(model, train, heldout, arch: bool) -> dict:
    model.set_arch_updates(arch)
    ds = tf.data.Dataset.from_tensors((train, heldout))
    logs = model.make_train_function()(iter(ds))
    return {k: float(v) for k, v in logs.items()}


def _gradients(model, x, y, variables) -> list[np.ndarray]:
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(
            tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
    grads = tape.gradient(loss, variables)
    return [np.zeros(v.shape, np.float32) if g is None else g.numpy() for v, g in zip(variables, grads, strict=True)]


def test_weight_step_changes_weights_not_arch(graph_net):
    graph_net.optimizer.learning_rate = 0.05
    graph_net.arch_optimizer.learning_rate = 0.1  # would move alpha if the arch step ran
    arch0, weights0 = _arch(graph_net), _values(graph_net.weight_variables)
    logs = _graph_step(graph_net, _images(1), _images(2), arch=False)
    assert "arch_loss" not in logs and "arch_accuracy" not in logs
    assert np.isfinite(logs["loss"])
    for name, value in _arch(graph_net).items():
        np.testing.assert_array_equal(value, arch0[name], err_msg=name)
    kernels = [(b, v) for b, v in zip(weights0, graph_net.weight_variables, strict=True)
               if "kernel" in v.name]
    assert len(kernels) >= 10
    for before, v in kernels:
        assert not np.array_equal(v.numpy(), before), v.name


def test_warmup_freezes_arch_then_updates_from_next_epoch(graph_net):
    graph_net.optimizer.learning_rate = 0.01
    graph_net.arch_optimizer.learning_rate = 0.1
    xt, yt = _images(3, n=8)
    xv, yv = _images(4, n=8)
    ds = tf.data.Dataset.from_tensor_slices(((xt, yt), (xv, yv))).batch(4)  # 2 steps/epoch

    def record(store):
        return tf.keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: store.append(
                (_arch(graph_net), graph_net.arch_updates_enabled)))

    arch0, weights0 = _arch(graph_net), _values(graph_net.weight_variables)
    seen = []
    history = graph_net.fit(ds, epochs=2, verbose=0,
                            callbacks=[ArchitectureWarmup(2), record(seen)])
    assert [enabled for _, enabled in seen] == [False, False]
    for values, _ in seen:
        for name in ARCH_NAMES:
            np.testing.assert_array_equal(values[name], arch0[name])
    assert "arch_loss" not in history.history
    assert any(not np.array_equal(v.numpy(), b)
               for b, v in zip(weights0, graph_net.weight_variables, strict=True))

    seen = []
    history = graph_net.fit(ds, epochs=2, verbose=0,
                            callbacks=[ArchitectureWarmup(1), record(seen)])
    assert [enabled for _, enabled in seen] == [False, True]
    (epoch1, _), (epoch2, _) = seen
    for name in ARCH_NAMES:
        np.testing.assert_array_equal(epoch1[name], arch0[name])
        assert np.all(epoch2[name] != epoch1[name]), name
    assert len(history.history["arch_loss"]) == 1  # logged in the second epoch only
    assert np.isfinite(history.history["arch_loss"][0])


def test_arch_step_changes_arch_not_weights(graph_net):
    graph_net.arch_optimizer.learning_rate = 0.1
    arch0 = _arch(graph_net)
    weights0 = _values(graph_net.weight_variables)
    moving0 = _values([v for v in graph_net.variables if "moving_" in v.name])
    logs = _graph_step(graph_net, _images(1), _images(2), arch=True)
    assert {"loss", "accuracy", "arch_loss", "arch_accuracy"} <= set(logs)
    for name, value in _arch(graph_net).items():
        assert not np.array_equal(value, arch0[name]), name
        assert np.mean(value != arch0[name]) > 0.9, name
    for before, v in zip(weights0, graph_net.weight_variables, strict=True):
        np.testing.assert_array_equal(v.numpy(), before, err_msg=v.name)
    # BN statistics (non-trainable) do follow the forward passes.
    moving1 = _values([v for v in graph_net.variables if "moving_" in v.name])
    assert any(not np.array_equal(a, b) for a, b in zip(moving0, moving1, strict=True))


def test_arch_update_uses_heldout_batch(graph_net):
    lr = 1.0
    graph_net.arch_optimizer.learning_rate = lr
    model_state = [*graph_net.variables, *graph_net.optimizer.variables,
                   *graph_net.arch_optimizer.variables]
    start = _values(model_state)
    arch0 = _values(graph_net.arch_variables)
    train1, train2 = _images(21), _images(22)
    held1, held2 = _images(31), _images(32)

    def delta(train, heldout):
        _restore(model_state, start)
        _graph_step(graph_net, train, heldout, arch=True)
        return [v.numpy() - a for v, a in zip(graph_net.arch_variables, arch0, strict=True)]

    d11, d12, d21 = delta(train1, held1), delta(train1, held2), delta(train2, held1)
    # Same held-out batch, different training batches: identical architecture updates.
    for a, b in zip(d11, d21, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    # Different held-out batches: different updates.
    assert any(not np.allclose(a, b, rtol=1e-3, atol=1e-7) for a, b in zip(d11, d12, strict=True))

    # The update is exactly one SGD step on the held-out loss.
    _restore(model_state, start)
    g_held = _gradients(graph_net, *held1, graph_net.arch_variables)
    g_train = _gradients(graph_net, *train1, graph_net.arch_variables)
    for d, g in zip(d11, g_held, strict=True):
        np.testing.assert_allclose(d, -lr * g, rtol=1e-3, atol=2e-6)
    assert any(not np.allclose(d, -lr * g, rtol=1e-2, atol=1e-5)
               for d, g in zip(d11, g_train, strict=True))


def test_both_steps_call_one_traced_forward(graph_net):
    _graph_step(graph_net, _images(1), _images(2), arch=True)
    ds = tf.data.Dataset.from_tensors((_images(1), _images(2)))
    graph = graph_net.train_function.get_concrete_function(iter(ds)).graph
    calls = [op.get_attr("f").name for op in graph.get_operations()
             if op.type in ("PartitionedCall", "StatefulPartitionedCall")]
    # The architecture and the weight step call the same forward function and the same
    # backward function, rather than inlining two copies of the supernet and its gradient.
    forward = [c for c in calls if c.startswith("__forward")]
    backward = [c for c in calls if "backward" in c]
    assert len(forward) == len(backward) == 2 and len(set(calls)) == 2, calls
    assert not any(op.type == "Conv2D" for op in graph.get_operations())


def test_weight_update_uses_training_batch(graph_net):
    lr = 0.01
    graph_net.optimizer.learning_rate = lr
    graph_net.arch_optimizer.learning_rate = 0.0
    weights = graph_net.weight_variables
    start = _values(weights)
    train, heldout = _images(41), _images(42)
    g_train = _gradients(graph_net, *train, weights)
    g_held = _gradients(graph_net, *heldout, weights)
    _restore(weights, start)
    arch0 = _arch(graph_net)
    _graph_step(graph_net, train, heldout, arch=True)
    for name, value in _arch(graph_net).items():
        np.testing.assert_array_equal(value, arch0[name])
    after = _values(weights)
    assert all(np.abs(w).max() < 1.0 for w, v in zip(after, weights, strict=True)
               if v.constraint is not None)  # no weight clipping in play
    for w, w0, g, v in zip(after, start, g_train, weights, strict=True):
        np.testing.assert_allclose(w, w0 - lr * g, rtol=1e-4, atol=1e-6, err_msg=v.name)
    assert any(not np.allclose(w, w0 - lr * g, rtol=1e-3, atol=1e-5)
               for w, w0, g in zip(after, start, g_held, strict=True))


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import tensorflow as tf

    from ubnas_tf.distribute import make_strategy, split_cpu
    from ubnas_tf.search import SearchNetwork

    split_cpu(2)  # before anything initialises TF's devices
    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    tf.keras.utils.set_random_seed(0)
    with strategy.scope():
        model = SearchNetwork(10, init_channels=4, layers=3, steps=1,
                              primitives=["none", "skip_connect", "bconv_3x3"],
                              k_normal=2, k_reduce=2, seed=0)
        model.compile()  # docs/design.md's optimisers
        model.build_network((8, 8, 1))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=16)
    ds = tf.data.Dataset.from_tensor_slices(((x[:8], y[:8]), (x[8:], y[8:]))).batch(8)
    before = {k: v.copy() for k, v in model.arch_values().items()}
    model.set_arch_updates(True)
    history = model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0)
    after = model.arch_values()
    for name in before:
        assert not np.array_equal(before[name], after[name]), name
        assert np.all(np.isfinite(after[name])), name
    assert np.isfinite(history.history["arch_loss"][0])
    # Mirrored: one copy per replica, kept in sync by the all-reduced update.
    for var in model.arch_variables:
        copies = [c.numpy() for c in var.values]
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1])
    print("MIRRORED_OK", strategy.num_replicas_in_sync)
    """
)


@pytest.mark.slow
def test_bilevel_step_under_mirrored_strategy_on_two_logical_cpus():
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True,
                          text=True, env=subprocess_env(single_thread=False), cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    assert "MIRRORED_OK 2" in proc.stdout


# ---------------------------------------------------------------------------------------------
# 6. Early stopping, driven by scripted architecture values
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arch_net():
    """An unbuilt supernet: the callbacks only read its alpha/beta."""
    return SearchNetwork(10, init_channels=4, layers=3, k_normal=2, k_reduce=2, seed=0)


def _set_arch(model, normal, reduce="bconv_3x3", logit=3.0, beta_normal=None):
    """Every edge's `normal` (`reduce`) op gets `logit` over 0; beta zeros unless given."""
    for var, op in ((model.alpha_normal, normal), (model.alpha_reduce, reduce)):
        alpha = np.zeros(var.shape, np.float32)
        alpha[:, PRIMS.index(op)] = logit
        var.assign(alpha)
    model.beta_normal.assign(np.zeros(14, np.float32) if beta_normal is None else beta_normal)
    model.beta_reduce.assign(np.zeros(14, np.float32))
    return model.genotype()


def _stopper(model, patience, max_epochs=10, **kwargs):
    cb = GenotypeEarlyStopping(patience, max_epochs, verbose=False, **kwargs)
    cb.set_model(model)
    model.stop_training = False
    model.arch_updates_enabled = True
    return cb


def test_early_stopping_after_exactly_patience_unchanged_epochs(arch_net):
    cb = _stopper(arch_net, patience=2, max_epochs=10)
    assert cb.epochs_run == 0 and cb.epochs_saved == 10
    genotype = _set_arch(arch_net, "bconv_3x3")
    for epoch in range(2):
        cb.on_epoch_end(epoch)
        assert not arch_net.stop_training
        assert cb.unchanged == epoch
    cb.on_epoch_end(2)
    assert arch_net.stop_training
    assert cb.stop_reason == "genotype_stable"
    assert cb.stopped_epoch == 2
    assert cb.final_genotype == genotype
    assert cb.epochs_run == 3 and cb.epochs_saved == 7


def test_early_stopping_counter_resets_on_change(arch_net):
    cb = _stopper(arch_net, patience=2)
    script = ["bconv_3x3", "bconv_3x3", "bconv_5x5", "bconv_5x5"]
    for epoch, op in enumerate(script):
        _set_arch(arch_net, op)
        cb.on_epoch_end(epoch)
        assert not arch_net.stop_training
    assert cb.unchanged == 1
    cb.on_epoch_end(4)
    assert arch_net.stop_training and cb.stopped_epoch == 4


def test_patience_zero_never_stops_on_a_stable_genotype(arch_net):
    cb = _stopper(arch_net, patience=0, max_epochs=6)
    genotype = _set_arch(arch_net, "bconv_3x3")
    for epoch in range(6):
        cb.on_epoch_end(epoch)
        assert not arch_net.stop_training
    assert cb.stop_reason == "max_epochs" and cb.stopped_epoch is None
    assert cb.final_genotype == genotype and cb.epochs_saved == 0


def test_no_stop_while_genotype_keeps_changing(arch_net):
    cb = _stopper(arch_net, patience=1, max_epochs=8)
    for epoch in range(8):
        _set_arch(arch_net, "bconv_3x3" if epoch % 2 else "bdil_conv_3x3")
        cb.on_epoch_end(epoch)
        assert not arch_net.stop_training
        assert cb.unchanged == 0
    assert cb.stop_reason == "max_epochs" and cb.stopped_epoch is None
    assert cb.epochs_run == 8 and cb.epochs_saved == 0


def test_warmup_epochs_never_count(arch_net):
    cb = _stopper(arch_net, patience=2)
    genotype = _set_arch(arch_net, "bconv_5x5")
    arch_net.arch_updates_enabled = False
    for epoch in range(5):
        cb.on_epoch_end(epoch)
        assert not arch_net.stop_training
        assert cb.unchanged == 0 and cb.previous is None
    assert cb.final_genotype == genotype
    # Skip-dominated alphas during warm-up are not a collapse either.
    _set_arch(arch_net, "skip_connect", logit=6.0)
    cb.on_epoch_end(5)
    assert not arch_net.stop_training and cb.stop_reason == "max_epochs"

    _set_arch(arch_net, "bconv_5x5")
    arch_net.arch_updates_enabled = True
    cb.on_epoch_end(6)  # first counted epoch: nothing to compare with yet
    cb.on_epoch_end(7)
    assert not arch_net.stop_training and cb.unchanged == 1
    cb.on_epoch_end(8)
    assert arch_net.stop_training and cb.stop_reason == "genotype_stable"
    assert cb.stopped_epoch == 8 and cb.epochs_run == 9 and cb.epochs_saved == 1


def test_collapse_stops_and_keeps_last_good_genotype(arch_net):
    cb = _stopper(arch_net, patience=5)
    good = _set_arch(arch_net, "bconv_3x3")
    cb.on_epoch_end(0)
    collapsed = _set_arch(arch_net, "skip_connect", logit=5.0)
    assert {op for op, _ in collapsed.normal} == {"skip_connect"}
    v = arch_net.arch_values()
    assert parameter_free_share(v["alpha_normal"], v["beta_normal"], PRIMS) > 2 * 3 / 4
    cb.on_epoch_end(1)
    assert arch_net.stop_training
    assert cb.stop_reason == "collapse"
    assert cb.stopped_epoch == 1
    assert cb.final_genotype == good != collapsed
    assert cb.epochs_run == 2 and cb.epochs_saved == 8


def test_collapse_on_first_counted_epoch_keeps_that_genotype(arch_net):
    cb = _stopper(arch_net, patience=5)
    collapsed = _set_arch(arch_net, "max_pool_3x3", logit=5.0)
    cb.on_epoch_end(0)
    assert cb.stop_reason == "collapse" and cb.final_genotype == collapsed


def test_near_uniform_alpha_with_parameter_free_cell_is_not_collapse(arch_net):
    cb = _stopper(arch_net, patience=3)
    # A tie-break at near-uniform alphas: every normal edge derives skip_connect ...
    genotype = _set_arch(arch_net, "skip_connect", logit=1e-2)
    assert sum(op == "skip_connect" for op, _ in genotype.normal) == 8 > cb.max_parameter_free
    # ... but the parameter-free weight share is barely above its uniform value of 3/4.
    v = arch_net.arch_values()
    share = parameter_free_share(v["alpha_normal"], v["beta_normal"], PRIMS)
    assert share == pytest.approx((np.exp(1e-2) + 2) / 4, rel=1e-5)
    assert share < cb.collapse_factor * 3 / 4
    for epoch in range(3):
        cb.on_epoch_end(epoch)
        assert not arch_net.stop_training
        assert cb.stop_reason == "max_epochs"
    assert cb.last_good == genotype
    cb.on_epoch_end(3)  # unchanged for 3 epochs, but a tie-break is not a decision
    assert not arch_net.stop_training and cb.unchanged == 3
    cb.decided_threshold = 0.1  # a threshold that near-uniform weights (0.126) pass
    cb.on_epoch_end(4)
    assert cb.stop_reason == "genotype_stable"


def test_early_stopping_counters_resume_from_the_checkpoint(arch_net, tmp_path):
    cb = _stopper(arch_net, patience=3)
    first = _set_arch(arch_net, "bconv_3x3")
    cb.on_epoch_end(0)
    genotype = _set_arch(arch_net, "bdil_conv_5x5")
    cb.on_epoch_end(1)
    cb.on_epoch_end(2)
    assert cb.unchanged == 1 and cb.previous == genotype and first != genotype
    # As run_search saves it: in the run's checkpoint, next to the weights.
    path = tf.train.Checkpoint(early_stopping=cb).save(str(tmp_path / "running"))

    resumed = _stopper(arch_net, patience=3)
    tf.train.Checkpoint(early_stopping=resumed).restore(path).assert_consumed()
    assert resumed.unchanged == 1 and resumed.epochs_run == 3
    assert resumed.previous == genotype and resumed.last_good == genotype
    resumed.on_epoch_end(3)
    assert not arch_net.stop_training and resumed.unchanged == 2
    resumed.on_epoch_end(4)
    assert arch_net.stop_training and resumed.stop_reason == "genotype_stable"
    assert resumed.stopped_epoch == 4
    path = tf.train.Checkpoint(early_stopping=resumed).save(str(tmp_path / "stopped"))

    # A search killed after it stopped, before its summary: the stop is in the checkpoint.
    again = GenotypeEarlyStopping(3, 10, verbose=False)
    tf.train.Checkpoint(early_stopping=again).restore(path).assert_consumed()
    assert again.stopped_epoch == 4 and again.stop_reason == "genotype_stable"
    assert again.final_genotype == genotype and again.epochs_run == 5
    assert again.stop_message == resumed.stop_message and again.stop_figures == resumed.stop_figures


def test_early_stopping_fallback_to_an_older_checkpoint_gets_its_counters(arch_net, tmp_path):
    cb = _stopper(arch_net, patience=2)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(early_stopping=cb), str(tmp_path),
                                         max_to_keep=2)
    genotype = _set_arch(arch_net, "bconv_3x3")
    cb.on_epoch_end(0)
    cb.on_epoch_end(1)
    older = manager.save(checkpoint_number=2)
    cb.on_epoch_end(2)  # unchanged for 2 epochs and decided: stops
    assert arch_net.stop_training and cb.stopped_epoch == 2
    newest = manager.save(checkpoint_number=3)
    data = f"{newest}.data-00000-of-00001"
    os.truncate(data, os.path.getsize(data) // 2)

    # The damaged newest checkpoint is passed over; the older one brings epoch 2's counters,
    # not the stop of epoch 3.
    resumed = _stopper(arch_net, patience=2)
    checkpoint = tf.train.Checkpoint(early_stopping=resumed)
    run = RunDirectory(str(tmp_path), "search")
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=2)
    assert run.restore(checkpoint, manager, wanted=newest) == older
    assert resumed.stopped_epoch is None and resumed.stop_reason == "max_epochs"
    assert resumed.stop_message is None and resumed.stop_figures is None
    assert resumed.unchanged == 1 and resumed.previous == genotype and resumed.epochs_run == 2
    arch_net.stop_training = False
    resumed.on_epoch_end(2)
    assert arch_net.stop_training and resumed.stopped_epoch == 2


@pytest.mark.slow
@needs_fashion
def test_run_search_resumes_an_early_stop_from_its_checkpoint(tmp_path):
    """Killed after an early stop, before its summary: the stop comes back with the weights
    (the counters live in the checkpoint; state.json only names it), so nothing runs again."""
    # alpha and beta never move (arch_lr 0), so the genotype of the second architecture epoch
    # equals the first's and the search stops after epoch 3 of 4.
    cfg = SearchConfig(output_dir=str(tmp_path), max_examples=64, epochs=4, batch_size=8,
                       layers=3, init_channels=4, primitives=SMALL_PRIMITIVES, k_normal=2,
                       k_reduce=2, arch_warmup_epochs=1, patience=1, decided_threshold=0.0,
                       arch_lr=0.0, verbose=0)
    run = RunDirectory(str(tmp_path), "search")
    try:
        summary = run_search(cfg, run)
        assert summary["stop_reason"] == "genotype_stable" and summary["stopped_epoch"] == 3
        state = run.read_state()
        assert set(state) == {"completed_epochs", "checkpoint", "finished"}
        for epoch in (2, 3):
            reader = tf.train.load_checkpoint(run.join("checkpoints", f"ckpt-{epoch}"))
            saved = json.loads(reader.get_tensor("early_stopping/.ATTRIBUTES/py_state"))
            assert saved["last_epoch"] == epoch - 1 and saved["unchanged"] == epoch - 2

        del state["finished"]
        run.write_state(state)
        os.remove(run.join("summary.json"))
        resumed = run_search(cfg, run)
    finally:
        tf_config.disable_op_determinism()  # run_search turns it on for the whole process
    assert resumed["resumed_from_epoch"] == 3 and resumed["epochs_run"] == 3
    for key in ("stop_reason", "stopped_epoch", "stop_rule", "stop_figures", "genotype"):
        assert resumed[key] == summary[key], key
    history = json.loads((tmp_path / "arch_history.json").read_text())["epochs"]
    assert [r["epoch"] for r in history] == [0, 1, 2]  # epoch 4 never ran


def test_early_stopping_epoch_arithmetic(arch_net):
    cb = _stopper(arch_net, patience=1, max_epochs=3)
    assert (cb.epochs_run, cb.epochs_saved) == (0, 3)
    _set_arch(arch_net, "bconv_3x3")
    arch_net.arch_updates_enabled = False
    cb.on_epoch_end(0)
    assert (cb.epochs_run, cb.epochs_saved) == (1, 2)
    cb.on_epoch_end(5)  # past max_epochs (a resumed run with a smaller budget)
    assert (cb.epochs_run, cb.epochs_saved) == (6, 0)
    with pytest.raises(ValueError, match="patience must be >= 0"):
        GenotypeEarlyStopping(-1, 10)


def test_parameter_free_share_hand_computed():
    beta = np.zeros(14)
    assert parameter_free_share(np.zeros((14, 8)), beta, PRIMS) == pytest.approx(0.75)
    # Any beta: with the same alpha on every edge the node weights sum out.
    rng = np.random.default_rng(0)
    assert parameter_free_share(np.zeros((14, 8)), rng.normal(size=14), PRIMS) == pytest.approx(0.75)
    # skip_connect at logit ln 3 on every edge: p = 3/10, others 1/10 -> (3+1+1)/(4*1) = 1.25.
    alpha = np.zeros((14, 8))
    alpha[:, 1] = np.log(3.0)
    assert parameter_free_share(alpha, beta, PRIMS) == pytest.approx(1.25)
    # Node 0 weights its edges 3:1 (beta ln 3, 0); only edge 0 has the skip logit.
    alpha = np.zeros((14, 8))
    alpha[0, 1] = np.log(3.0)
    beta = np.zeros(14)
    beta[0] = np.log(3.0)
    free = 0.75 * 0.5 + 0.25 * 3 / 8 + 3 * 3 / 8
    binary = 0.75 * 0.4 + 0.25 * 4 / 8 + 3 * 4 / 8
    assert parameter_free_share(alpha, beta, PRIMS) == pytest.approx(free / binary)
    # 'none' counts on neither side; a space without binary convs has no share.
    alpha = np.zeros((5, 3))
    assert parameter_free_share(alpha, np.zeros(5), ["none", "skip_connect", "bconv_3x3"],
                                steps=2) == pytest.approx(1.0)
    assert parameter_free_share(alpha, np.zeros(5), ["none", "skip_connect", "max_pool_3x3"],
                                steps=2) == 0.0


# ---------------------------------------------------------------------------------------------
# 7. Genotype history
# ---------------------------------------------------------------------------------------------


def test_genotype_history_records_one_entry_per_epoch(arch_net, tmp_path, capsys):
    path = tmp_path / "arch_history.json"
    cb = GenotypeHistory(str(path), verbose=False)
    cb.set_model(arch_net)
    arch_net.arch_updates_enabled = False
    g0 = _set_arch(arch_net, "bconv_3x3")
    v0 = _arch(arch_net)
    cb.on_epoch_end(0, logs={"loss": np.float32(2.5), "accuracy": tf.constant(0.25)})
    arch_net.arch_updates_enabled = True
    _set_arch(arch_net, "bconv_5x5", reduce="avg_pool_3x3")
    cb.on_epoch_end(1, logs={"loss": 2.0, "arch_loss": 2.25})
    g1 = _set_arch(arch_net, "bdil_conv_3x3", reduce="avg_pool_3x3")
    v1 = _arch(arch_net)
    cb.on_epoch_end(1, logs={"loss": 1.5, "arch_loss": 1.75})  # same epoch again: replaces
    assert capsys.readouterr().out == ""

    data = json.loads(path.read_text())
    assert data["primitives"] == PRIMS and data["steps"] == 4
    records = data["epochs"]
    assert [r["epoch"] for r in records] == [0, 1]
    assert [r["arch_updates"] for r in records] == [False, True]
    for record, genotype, values in ((records[0], g0, v0), (records[1], g1, v1)):
        assert Genotype.from_dict(record["genotype"], primitives=PRIMS) == genotype
        for name, shape in (("alpha_normal", (14, 8)), ("alpha_reduce", (14, 8)),
                            ("beta_normal", (14,)), ("beta_reduce", (14,))):
            array = np.asarray(record[name])
            assert array.shape == shape
            np.testing.assert_allclose(array, values[name], rtol=1e-6)
        assert isinstance(record["time"], float)
    assert records[0]["logs"] == {"loss": 2.5, "accuracy": 0.25}
    assert records[1]["logs"] == {"loss": 1.5, "arch_loss": 1.75}

    # Resuming at epoch 1 drops that epoch and later ones.
    resumed = GenotypeHistory(str(path), verbose=False)
    resumed.load(before_epoch=1)
    assert [r["epoch"] for r in resumed.records] == [0]
    # verbose prints the genotype
    loud = GenotypeHistory(str(tmp_path / "other.json"))
    loud.set_model(arch_net)
    loud.on_epoch_end(0)
    assert "Epoch 1 genotype" in capsys.readouterr().out


def test_genotype_history_stops_on_non_finite_architecture(arch_net, tmp_path):
    path = tmp_path / "arch_history.json"
    cb = GenotypeHistory(str(path), verbose=False)
    cb.set_model(arch_net)
    _set_arch(arch_net, "bconv_3x3")
    saved = arch_net.beta_reduce.numpy().copy()
    try:
        arch_net.beta_reduce.assign(np.full_like(saved, np.nan))
        with pytest.raises(NonFiniteError, match=r"beta_reduce.*epoch 3"):
            cb.on_epoch_end(2, logs={"loss": 1.0})
        assert not path.exists()  # nothing written for the bad epoch
    finally:
        arch_net.beta_reduce.assign(saved)


# ---------------------------------------------------------------------------------------------
# 8. A fixed reduction (ModuleConfig.reduction): only the normal cell is searched
# ---------------------------------------------------------------------------------------------


def test_supernet_with_fixed_reduction_searches_only_the_normal_cell(tmp_path, capsys):
    tf.keras.utils.set_random_seed(0)
    model = SearchNetwork(10, init_channels=4, layers=3, steps=2, primitives=SMALL_PRIMITIVES,
                          k_normal=2, k_reduce=3, seed=0, config="universal_binary_reduction")
    model.compile(optimizer=tf.keras.optimizers.SGD(0.0), arch_optimizer=default_arch_optimizer(),
                  run_eagerly=True)
    model.build_network((8, 8, 1))
    # k_reduce=3 divides no reduction width: no searched reduction cell is built to refuse it.
    assert [type(c) for c in model.cells] == [SearchCell, FixedReduction, FixedReduction]
    assert [c.reduction for c in model.cells] == [False, True, True]
    assert [c.filters for c in model.cells[1:]] == [2 * 8, 2 * 16]  # steps x cell width
    assert model(tf.zeros([2, 8, 8, 1]), training=False).shape == (2, 10)
    # The only mixed ops are the normal cell's (one per source state: steps + 1).
    mixed = [layer for layer in model._flatten_layers() if isinstance(layer, PartialChannelMixedOp)]
    assert len(mixed) == 3
    assert [op for _, _, op in model.cells[0].edge_groups] == mixed

    # alpha/beta_reduce exist (one checkpoint layout) but are neither trained nor weights.
    assert not model.searched_reduction
    assert [v.ref() for v in model.arch_variables] == [model.alpha_normal.ref(),
                                                        model.beta_normal.ref()]
    assert not model.alpha_reduce.trainable and not model.beta_reduce.trainable
    unused = {model.alpha_reduce.ref(), model.beta_reduce.ref()}
    assert not unused & {v.ref() for v in model.weight_variables}
    assert not unused & {v.ref() for v in model.trainable_variables}
    assert len(model.arch_optimizer.variables) == 1 + 2 * 2

    # An architecture step moves the normal cell's logits, never the reduce ones.
    xt, yt = _images(11)
    xv, yv = _images(12)
    model.set_arch_updates(True)
    arch0 = _arch(model)
    logs = model.make_train_function()(iter(tf.data.Dataset.from_tensors(((xt, yt), (xv, yv)))))
    arch1 = _arch(model)
    assert np.all(arch1["alpha_normal"] != arch0["alpha_normal"])
    for name in ("alpha_reduce", "beta_reduce"):
        np.testing.assert_array_equal(arch1[name], arch0[name])
    # The figures the epoch's end logs are the normal cell's alone (a step logs none).
    normal = cell_figures(model.alpha_normal, model.beta_normal, model.primitives, model.steps)
    epoch_logs = {k: float(v) for k, v in logs.items()}
    assert set(epoch_logs) == {"loss", "accuracy", "arch_loss", "arch_accuracy"}
    figures = ArchitectureFigures()
    figures.set_model(model)
    figures.on_epoch_end(0, epoch_logs)
    for name in FIGURES:
        assert float(model.decisiveness()[name]) == pytest.approx(float(normal[name]), abs=1e-6)
        assert epoch_logs[name] == pytest.approx(float(normal[name]), abs=1e-6)

    # The derived genotype's reduce cell is a copy of the normal cell, and says so in words.
    genotype = model.genotype()
    assert genotype.reduce == genotype.normal
    text = model.describe_genotype(genotype)
    assert "reduce: not searched; fixed 'binary' reduction block" in text
    assert str(genotype).splitlines()[0] in text

    # The history records no reduce logits or figures and names the reduction.
    cb = GenotypeHistory(str(tmp_path / "arch_history.json"))
    cb.set_model(model)
    cb.on_epoch_end(0, logs={"loss": 1.0})
    printed = capsys.readouterr().out
    assert "not searched" in printed and "the reduction is fixed" in printed
    data = json.loads((tmp_path / "arch_history.json").read_text())
    assert data["reduction"] == "binary"
    record = data["epochs"][0]
    assert record["alpha_reduce"] is None and record["beta_reduce"] is None
    assert np.asarray(record["alpha_normal"]).shape == (5, len(SMALL_PRIMITIVES))
    assert not [k for k in record["decisiveness"] if k.startswith("reduce/")]
    assert record["decisiveness"]["op_max_kept"] == record["decisiveness"]["normal/op_max_kept"]
    stopper = GenotypeEarlyStopping(1, 5, verbose=False)
    stopper.set_model(model)
    stopper.on_epoch_end(0)
    assert not [k for k in stopper.figures if k.startswith("reduce/")]
    model.set_arch_updates(False)
