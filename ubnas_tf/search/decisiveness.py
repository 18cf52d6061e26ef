r"""How decided an architecture is, and the discretisation loss that makes it decide.

For one cell type with op weights \\(p_{e,o} = \mathrm{softmax}_o(\alpha_e)\\) (edge e, op o,
\\(n\\) ops) and edge weights \\(w_{ij} = \mathrm{softmax}_{j}(\beta_{ij})\\) over the inputs j
of node i (PC-DARTS' edge normalisation), the figures are

* ``op_max``: \\(\mathrm{mean}_e \max_o p_{e,o}\\) over all edges (\\(1/n\\) when uniform, 1
  when one-hot);
* ``op_entropy``: \\(\mathrm{mean}_e H(p_e) / \log n\\) (1 uniform, 0 one-hot);
* ``op_max_kept``: the mean, over the edges the derivation keeps, of the weight of the op it
  keeps there among the ops it can keep, \\(q_{e,o} = p_{e,o} / \sum_{o' \ne none}
  p_{e,o'}\\) (``none`` is never derived). This is the headline figure: it says how firmly
  the derived op is chosen; ``none`` winning an edge cannot inflate it (its q stays 1/7 if
  the other ops are level), and a kept edge that ``none`` dominates, as the first node's
  forced inputs can be, still counts by how clearly its derived op is chosen;
* ``edge_max``: \\(\mathrm{mean}_i \max_j w_{ij}\\), and ``edge_entropy``:
  \\(\mathrm{mean}_i H(w_i)/\log(\text{inputs of } i)\\), over all nodes;
* ``edge_kept_mass``: \\(\mathrm{mean}_i\\) of the weight of the `keep` strongest inputs of
  node i (1 when the two kept edges hold all the weight).

Everything is written with TensorFlow ops, so the figures of the supernet's variables
(`SearchNetwork.decisiveness`, which `ubnas_tf.search.callbacks.ArchitectureFigures` adds to
each epoch's logs for TensorBoard) and those of numpy arrays are the same numbers.
Edge selection ties break towards the lower source index, as in `derive_cell`
(`tf.math.top_k` keeps the lower index first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from ubnas_tf.genotype import NONE_OP, node_inputs

__all__ = ["FIGURES", "cell_figures", "architecture_figures", "discretization_loss", "mean_figures"]

FIGURES = ("op_max_kept", "op_max", "op_entropy", "edge_max", "edge_entropy", "edge_kept_mass")
_EPS = 1e-12


def _normalised_entropy(p: tf.Tensor, n: int) -> tf.Tensor:
    if n < 2:
        return tf.zeros(tf.shape(p)[:-1], p.dtype)
    return -tf.reduce_sum(p * tf.math.log(p + _EPS), axis=-1) / np.log(n)


def derivable_op_weights(alpha, primitives: Sequence[str]) -> tuple[tf.Tensor, tf.Tensor]:
    r"""``(q, r)``: the op weights renormalised over the ops the derivation can keep,
    \\(q_{e,o} = p_{e,o} / r_e\\) (0 for ``none``), and \\(r_e = \sum_{o \ne none} p_{e,o}\\),
    with \\(p = \mathrm{softmax}(\alpha)\\) for `alpha` ``[num_edges, len(primitives)]``."""
    p = tf.nn.softmax(tf.cast(alpha, tf.float32), axis=-1)
    usable = tf.constant([name != NONE_OP for name in primitives])
    p = tf.where(usable[None, :], p, 0.0)
    r = tf.reduce_sum(p, axis=-1)
    return p / r[:, None], r


def cell_figures(alpha, beta, primitives: Sequence[str], steps: int = 4,
                 keep: int = 2) -> dict[str, tf.Tensor]:
    """The decisiveness figures of one cell type (see the module docstring) as scalars.

    `alpha` is ``[num_edges, len(primitives)]`` and `beta` ``[num_edges]``, both raw logits.
    """
    alpha = tf.cast(tf.convert_to_tensor(alpha), tf.float32)
    beta = tf.cast(tf.convert_to_tensor(beta), tf.float32)
    n_ops = len(primitives)
    p = tf.nn.softmax(alpha, axis=-1)
    usable = tf.constant([name != NONE_OP for name in primitives])
    best = tf.reduce_max(tf.where(usable[None, :], p, -1.0), axis=-1)  # [E]: the op kept
    best_share = tf.reduce_max(derivable_op_weights(alpha, primitives)[0], axis=-1)
    edge_max, edge_entropy, kept_mass, kept_weights = [], [], [], []
    for node, inputs in node_inputs(steps):
        n_in = node + 2
        w = tf.nn.softmax(beta[inputs])
        k = min(keep, n_in)
        edge_max.append(tf.reduce_max(w))
        edge_entropy.append(_normalised_entropy(w, n_in))
        kept_mass.append(tf.reduce_sum(tf.math.top_k(w, k).values))
        chosen = tf.math.top_k(w * best[inputs], k).indices
        kept_weights.append(tf.gather(best_share[inputs], chosen))
    return {
        "op_max_kept": tf.reduce_mean(tf.concat(kept_weights, 0)),
        "op_max": tf.reduce_mean(tf.reduce_max(p, axis=-1)),
        "op_entropy": tf.reduce_mean(_normalised_entropy(p, n_ops)),
        "edge_max": tf.reduce_mean(tf.stack(edge_max)),
        "edge_entropy": tf.reduce_mean(tf.stack(edge_entropy)),
        "edge_kept_mass": tf.reduce_mean(tf.stack(kept_mass)),
    }


def architecture_figures(alpha_normal, beta_normal, alpha_reduce, beta_reduce,
                         primitives: Sequence[str], steps: int = 4,
                         searched_reduction: bool = True) -> dict[str, float]:
    """Figures of both cell types as Python floats: ``normal/<figure>``, ``reduce/<figure>``
    and their mean ``<figure>`` (both cells keep the same number of edges).

    With ``searched_reduction=False`` (a fixed reduction block, `ModuleConfig.reduction`)
    the reduce cell is not searched: there are no ``reduce/*`` figures and the mean is the
    normal cell's, so alpha_reduce's initial noise cannot hold the search back from being
    decided.
    """
    out: dict[str, float] = {}
    cells = [("normal", (alpha_normal, beta_normal))]
    if searched_reduction:
        cells.append(("reduce", (alpha_reduce, beta_reduce)))
    for cell, (a, b) in cells:
        for name, value in cell_figures(a, b, primitives, steps).items():
            out[f"{cell}/{name}"] = float(value)
    for name in FIGURES:
        out[name] = sum(out[f"{cell}/{name}"] for cell, _ in cells) / len(cells)
    return out


def mean_figures(alpha_normal, beta_normal, alpha_reduce, beta_reduce,
                 primitives: Sequence[str], steps: int = 4,
                 searched_reduction: bool = True) -> dict[str, tf.Tensor]:
    """The two cell types' figures averaged, as tensors (`SearchNetwork.decisiveness`); the
    normal cell's alone when the reduction is not searched."""
    n = cell_figures(alpha_normal, beta_normal, primitives, steps)
    if not searched_reduction:
        return {name: n[name] for name in FIGURES}
    r = cell_figures(alpha_reduce, beta_reduce, primitives, steps)
    return {name: (n[name] + r[name]) / 2 for name in FIGURES}


def discretization_loss(alpha, beta, steps: int = 4, keep: int = 2,
                        primitives: Sequence[str] | None = None) -> tf.Tensor:
    r"""EBNAS' discretisation loss for one cell type, summed over edges and nodes.

    EBNAS (``architect.py``) adds \\(-\sum_e\sum_o (1 - p_{e,o})^2\\) to the architecture
    loss. Since \\(\sum_o p_{e,o} = 1\\), \\(\sum_o (1 - p_{e,o})^2 = n - 2 + \sum_o p_{e,o}^2\\):
    up to a constant it is the Gini impurity \\(\sum_e (1 - \sum_o p_{e,o}^2)\\), which this
    returns (0 one-hot, \\(1 - 1/n\\) per edge uniform), so EBNAS' weight 1.5 carries over.
    Its gradient raises the leading op of each edge and lowers the others, in proportion to
    how far ahead it already is.

    When `primitives` has ``none``, the op term is taken over the ops the derivation can keep,
    \\(q_{e,o} = p_{e,o} / \sum_{o' \ne none} p_{e,o'}\\). On the full \\(p\\) an edge
    that ``none`` leads counts as decided while its real ops stay level; the first node must
    keep both its inputs, so such an edge is derived as a near-random op (measured: the
    reduction cell's kept ops held 0.75 of the weight, the normal cell's 0.99, and the budget's
    expectation, which is over q, missed the derived cost). Deciding q commits every edge's
    derivable op; whether an edge is kept is left to the loss, the budget and the edge term.

    Edges: each node keeps `keep` inputs, so the edge term is the weight left outside the
    `keep` strongest inputs, \\(\sum_i (1 - \mathrm{top}_k\, w_i)\\); it pushes a node
    towards a clear pair of inputs instead of one winner (which would leave the second kept
    edge to noise). The two terms are added.
    """
    if primitives is not None:
        p = derivable_op_weights(alpha, primitives)[0]  # none's column is 0: no Gini term
    else:
        p = tf.nn.softmax(alpha, axis=-1)
    total = tf.reduce_sum(1.0 - tf.reduce_sum(tf.square(p), axis=-1))
    for node, inputs in node_inputs(steps):
        if node + 2 > keep:
            w = tf.nn.softmax(beta[inputs])
            total += 1.0 - tf.reduce_sum(tf.math.top_k(w, keep).values)
    return total
