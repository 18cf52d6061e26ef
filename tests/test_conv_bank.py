"""The search's binary conv bank: the same function as one `BinaryConvModule` per op."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tool_runs import DESIGN_PRIMITIVES

from ubnas_tf.modules import BinaryConvModule, PoolModule, get_module_config
from ubnas_tf.search.conv_bank import BinaryConvBank, same_padding
from ubnas_tf.search.mixed_op import PartialChannelMixedOp
from ubnas_tf.search.mixing import mix_ops, regroup_rows

PRIMS = DESIGN_PRIMITIVES


@pytest.mark.parametrize("per_edge", [True, False])
def test_mix_ops_is_the_weighted_sum_per_edge(per_edge):
    rng = np.random.default_rng(0)
    n_ops, edges, c = 3, 4, 5
    groups = edges if per_edge else 1
    x = rng.normal(size=(2, 3, 3, n_ops * groups * c)).astype("float32")
    w = rng.normal(size=(n_ops, edges)).astype("float32")
    out = mix_ops(tf.constant(x), tf.constant(w), per_edge=per_edge).numpy()
    assert out.shape == (2, 3, 3, edges * c)
    out = out.reshape(2, 3, 3, edges, c)
    blocks = x.reshape(2, 3, 3, n_ops, groups, c)
    for t in range(edges):
        expected = sum(w[o, t] * blocks[..., o, t if per_edge else 0, :] for o in range(n_ops))
        np.testing.assert_allclose(out[..., t, :], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", [[1, 2, 3, 4], [0, 1, 2, 3, 4, 5], [4, 0, 2, 5], [2, 1]])
def test_regroup_rows_is_indexing_then_split(order):
    rows = np.arange(6 * 3, dtype=np.float32).reshape(6, 3)
    sizes = [len(order) - 1, 1]
    for data in (rows, rows[:, 0]):
        pieces = regroup_rows(tf.constant(data), order, sizes)
        expected = np.split(data[order], np.cumsum(sizes)[:-1])
        assert [p.shape[0] for p in pieces] == sizes
        for piece, want in zip(pieces, expected, strict=True):
            np.testing.assert_array_equal(piece.numpy(), want)


@pytest.mark.parametrize("size", [5, 7, 8, 9])
@pytest.mark.parametrize("kernel,strides,dilation", [(3, 1, 1), (5, 1, 1), (3, 2, 1), (5, 2, 1),
                                                      (3, 1, 2), (5, 1, 2)])
def test_same_padding_matches_tensorflow_same(size, kernel, strides, dilation):
    x = tf.random.normal([1, size, size, 2], seed=1)
    k = tf.random.normal([kernel, kernel, 2, 3], seed=2)
    pads = [same_padding(size, kernel, strides, dilation)] * 2
    ours = tf.nn.conv2d(tf.pad(x, [[0, 0], *pads, [0, 0]]), k, strides, "VALID",
                        dilations=dilation)
    theirs = tf.nn.conv2d(x, k, strides, "SAME", dilations=dilation)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)


def _pair(config, strides, fan_out, channels=8, k=2):
    """A mixed op with the bank and one evaluating module by module, with equal weights."""
    rng = np.random.default_rng(3)
    fused = PartialChannelMixedOp(channels, PRIMS, k, strides, fan_out, config=config)
    plain = PartialChannelMixedOp(channels, PRIMS, k, strides, fan_out, config=config,
                                  fuse_convs=False)
    x = tf.zeros([2, 8, 8, channels])
    w = np.zeros((fan_out, len(PRIMS)), "float32")
    fused(x, w)
    plain(x, w)
    bank = fused.conv_bank
    assert bank is not None and not any(isinstance(op, BinaryConvModule) for _, _, op in fused.ops)
    # Non-trivial statistics, so inference mode checks that they line up too.
    for v in [*bank.non_trainable_weights, *fused.pool_bn.non_trainable_weights]:
        if "moving_mean" in v.name:
            v.assign(rng.normal(size=v.shape).astype("float32"))
        else:
            v.assign(rng.uniform(0.5, 2.0, size=v.shape).astype("float32"))
    for pool, (mean, variance) in zip(_pools(plain), _pool_bn_blocks(fused), strict=True):
        pool.bn.moving_mean.assign(mean)
        pool.bn.moving_variance.assign(variance)
    modules = {PRIMS[i]: op for i, _, op in plain.ops if isinstance(op, BinaryConvModule)}
    assert sorted(modules) == sorted(name for name, _, _ in bank.ops)
    latent = bank.latent_kernels()
    block = fan_out * (channels // k)
    for i, (name, _, _) in enumerate(bank.ops):  # the post-BN's channels: op after op
        module = modules[name]
        module.conv.kernel.assign(latent[name])
        if bank.pre_bn is not None:
            module.pre_bn.moving_mean.assign(bank.pre_bn.moving_mean)
            module.pre_bn.moving_variance.assign(bank.pre_bn.moving_variance)
        module.post_bn.moving_mean.assign(bank.post_bn.moving_mean[i * block:(i + 1) * block])
        module.post_bn.moving_variance.assign(
            bank.post_bn.moving_variance[i * block:(i + 1) * block])
    return fused, plain, modules


def _pools(op):
    """The pooling modules of a mixed op evaluated module by module, in pool_bn's order."""
    layers = {index: layer for index, _, layer in op.ops}
    return [layers[index] for index in sorted(layers) if isinstance(layers[index], PoolModule)]


def _pool_bn_blocks(fused):
    """pool_bn's (moving mean, moving variance), split into one block per pool."""
    n = len(fused.pooled_indices)
    return list(zip(tf.split(fused.pool_bn.moving_mean, n), tf.split(fused.pool_bn.moving_variance, n),
                    strict=True))


def _assert_close(a, b):
    """Equal up to float32 summation order (gradients here reach ~1e2)."""
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(b).max()))


@pytest.mark.parametrize("config", ["universal", "bireal", "no_pre_bn", "maxpool_shortcut"])
@pytest.mark.parametrize("strides,size", [(1, 8), (1, 5), (2, 8), (2, 7)])
def test_bank_equals_one_module_per_op(config, strides, size):
    fan_out = 3
    fused, plain, modules = _pair(config, strides, fan_out)
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(4, size, size, 8)).astype("float32"))
    w = tf.constant(rng.random((fan_out, len(PRIMS))).astype("float32"))
    bank = fused.conv_bank
    for training in (False, True):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x, w])
            outs = {"fused": fused(x, w, training=training),
                    "plain": plain(x, w, training=training)}
            # A loss that weighs every edge and position differently.
            losses = {key: sum(tf.reduce_sum(o * tf.sin(o) * (t + 1)) for t, o in enumerate(v))
                      for key, v in outs.items()}
        for a, b in zip(outs["fused"], outs["plain"], strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
        for source in (x, w):
            _assert_close(tape.gradient(losses["fused"], source),
                          tape.gradient(losses["plain"], source))
        grads = tape.gradient(losses["fused"], bank.kernels)
        for (_, members), grad in zip(bank.size_groups, grads, strict=True):
            for i, part in zip(members, tf.split(grad, len(members), axis=-1), strict=True):
                module_grad = tape.gradient(losses["plain"], modules[bank.ops[i][0]].conv.kernel)
                _assert_close(part, module_grad)
    # Training mode moved the statistics of both the same way.
    module = modules["bconv_3x3"]
    if bank.pre_bn is not None:
        np.testing.assert_allclose(bank.pre_bn.moving_mean.numpy(),
                                   module.pre_bn.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
    # The pools' shared BN moved like their own BNs, block by block.
    pools = _pools(plain)
    assert [pool.pool_type for pool in pools] == ["max_pool", "avg_pool"]
    assert fused.pooled_indices == sorted(fused.pooled_indices)
    for pool, (mean, variance) in zip(pools, _pool_bn_blocks(fused), strict=True):
        np.testing.assert_allclose(mean.numpy(), pool.bn.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(variance.numpy(), pool.bn.moving_variance.numpy(), rtol=1e-5,
                                   atol=1e-6)


def test_bank_with_real_weights_equals_modules():
    config = {**get_module_config("universal").to_dict(), "kernel_quantizer": None}
    fused, plain, _ = _pair(config, 1, 2)
    x = tf.random.normal([2, 6, 6, 8], seed=5)
    w = tf.random.uniform([2, len(PRIMS)], seed=6)
    for a, b in zip(fused(x, w, training=True), plain(x, w, training=True), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


def test_kernels_are_one_variable_per_kernel_size_with_per_op_init():
    op = PartialChannelMixedOp(16, PRIMS, 2, 1, fan_out=4)
    op(tf.zeros([1, 8, 8, 16]), tf.zeros([4, len(PRIMS)]))
    bank = op.conv_bank
    assert [(name, k, d) for name, k, d in bank.ops] == [
        ("bconv_3x3", 3, 1), ("bconv_5x5", 5, 1), ("bdil_conv_3x3", 3, 2), ("bdil_conv_5x5", 5, 2)]
    shapes = {v.name.split("/")[-1].split(":")[0]: tuple(v.shape) for v in bank.trainable_weights}
    assert shapes == {"kernel_3x3": (3, 3, 8, 2 * 4 * 8), "kernel_5x5": (5, 5, 8, 2 * 4 * 8)}
    # Each op's block has the Glorot-normal spread of a kernel of its own, 2 / (fan_in + fan_out).
    for k, variable in zip((3, 5), bank.kernels, strict=True):
        expected = np.sqrt(2.0 / (k * k * 8 + k * k * 32))  # Keras corrects for the truncation
        assert np.std(variable.numpy()) == pytest.approx(expected, rel=0.1)
    assert all(v.constraint is not None for v in bank.kernels)


def test_configs_with_per_op_state_are_evaluated_module_by_module():
    reactnet = get_module_config("reactnet")
    assert not BinaryConvBank.supports(reactnet)
    assert BinaryConvBank.supports(get_module_config("universal"))
    op = PartialChannelMixedOp(8, PRIMS, 2, 1, fan_out=2, config="reactnet")
    assert op.conv_bank is None
    outs = op(tf.random.normal([2, 6, 6, 8], seed=7), tf.random.uniform([2, len(PRIMS)]))
    assert [o.shape for o in outs] == [(2, 6, 6, 8)] * 2
    with pytest.raises(ValueError, match="reactnet"):
        BinaryConvBank([("bconv_3x3", 3, 1)], config=reactnet)


def test_bank_config_round_trip():
    bank = BinaryConvBank([("bdil_conv_5x5", 5, 2), ("bconv_3x3", 3, 1)], strides=2, fan_out=3,
                          config="bireal", name="bank")
    clone = BinaryConvBank.from_config(bank.get_config())
    assert clone.ops == bank.ops == [("bconv_3x3", 3, 1), ("bdil_conv_5x5", 5, 2)]
    assert (clone.strides, clone.fan_out, clone.config) == (2, 3, get_module_config("bireal"))


@pytest.mark.parametrize("k", [2, 4])  # 4 and 2 channels: the latter pooled batch-in-channels
@pytest.mark.parametrize("strides", [1, 2])
def test_pools_share_one_bn_whatever_the_primitive_order(strides, k):
    # The pools are not consecutive rows of the op weights here: the rows must be regrouped.
    prims = ["skip_connect", "avg_pool_3x3", "bconv_3x3", "none", "max_pool_3x3"]
    fused = PartialChannelMixedOp(8, prims, k, strides, fan_out=2)
    plain = PartialChannelMixedOp(8, prims, k, strides, fan_out=2, fuse_convs=False)
    assert plain.pool_bn is None and fused.pooled_indices == [1, 4]
    x = tf.random.normal([3, 7, 7, 8], seed=8)
    w = tf.random.uniform([2, len(prims)], seed=9)
    fused(x, w)
    plain(x, w)
    fused.conv_bank.kernels[0].assign(plain.ops[2][2].conv.kernel)  # bconv_3x3, index 2
    assert fused.pool_bn.moving_mean.shape == (2 * 8 // k,)
    assert all(not isinstance(layer, PoolModule) or layer.bn is None for _, _, layer in fused.ops)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outs = {key: op(x, w, training=True) for key, op in (("fused", fused), ("plain", plain))}
        losses = {key: sum(tf.reduce_sum(o * tf.sin(o) * (t + 1)) for t, o in enumerate(v))
                  for key, v in outs.items()}
    for a, b in zip(outs["fused"], outs["plain"], strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
    _assert_close(tape.gradient(losses["fused"], x), tape.gradient(losses["plain"], x))
