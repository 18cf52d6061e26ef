"""Weighting op outputs in the supernet with few graph nodes (its trace time is per node)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

__all__ = ["mix_ops", "regroup_rows"]


def mix_ops(features: tf.Tensor, weights: tf.Tensor, per_edge: bool) -> tf.Tensor:
    r"""The weighted sums of op outputs for every edge, as one 1x1 convolution.

    `features` is ``[B, H, W, O * G * C]``: O ops' outputs side by side, each with G = T
    blocks of C channels (``per_edge``: one per edge, as a fan-out conv gives) or G = 1
    (an output shared by all T edges); `weights` is ``[O, T]``. Returns
    ``[B, H, W, T * C]``, edge t's block being \(y_t = \sum_o w_{o,t}\, x_{o,t}\)
    (\(x_{o,t} = x_o\) when shared).

    The mixing matrix is the weights times a constant 0/1 pattern, so this is one GEMM, far
    cheaper on a CPU than broadcasting the weights over 5-d tensors and reducing.
    """
    n_ops, edges = weights.shape
    channels = features.shape[-1] // (n_ops * (edges if per_edge else 1))
    w = tf.cast(weights, features.dtype)
    if per_edge:  # M[(o, t), c, (t', c')] = w[o, t] [t = t'] [c = c']
        pattern = np.eye(edges * channels).reshape(edges, channels, edges * channels)
        matrix = tf.reshape(w, [n_ops, edges, 1, 1]) * tf.constant(pattern[None], w.dtype)
    else:  # M[o, c, t, c'] = w[o, t] [c = c']
        pattern = np.eye(channels).reshape(1, channels, 1, channels)
        matrix = tf.reshape(w, [n_ops, 1, edges, 1]) * tf.constant(pattern, w.dtype)
    kernel = tf.reshape(matrix, [1, 1, features.shape[-1], edges * channels])
    return tf.nn.conv2d(features, kernel, 1, "VALID")


def regroup_rows(rows: tf.Tensor, order: Sequence[int], sizes: Sequence[int]) -> list[tf.Tensor]:
    """``rows[order]`` split into pieces of `sizes`: a split alone when `order` is a run of
    consecutive rows, else a constant permutation matrix product (a gather's gradient costs
    about ten graph nodes more)."""
    order = list(order)
    n = rows.shape[0]
    if order == list(range(order[0], order[0] + len(order))):
        pieces = tf.split(rows, [order[0], *sizes, n - order[0] - len(order)])
        return pieces[1:-1]
    permutation = np.zeros((len(order), n), np.float32)
    permutation[np.arange(len(order)), order] = 1.0
    matrix = tf.constant(permutation, rows.dtype)
    if rows.shape.rank == 1:
        return tf.split(tf.linalg.matvec(matrix, rows), list(sizes))
    return tf.split(tf.matmul(matrix, rows), list(sizes))
