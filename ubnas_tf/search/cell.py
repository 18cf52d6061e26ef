"""The search cell: 2 inputs, `steps` intermediate nodes, all edges mixed ops."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
from larq import utils

from ubnas_tf.genotype import edge_index, node_inputs, num_edges
from ubnas_tf.modules import ModuleConfig, channel_shuffle, get_module_config, preprocess_layer
from ubnas_tf.search.mixed_op import PartialChannelMixedOp
from ubnas_tf.search.mixing import regroup_rows

__all__ = ["SearchCell", "node_edge_weights"]


def node_edge_weights(beta: tf.Tensor, steps: int) -> list[tf.Tensor]:
    """Edge normalisation: softmax of beta over the inputs of each node (list per node)."""
    return [tf.nn.softmax(beta[edges]) for _, edges in node_inputs(steps)]


@utils.register_keras_custom_object
class SearchCell(tf.keras.layers.Layer):
    r"""A DARTS cell whose 14 edges (for 4 nodes) are partial-channel mixed ops.

    Node \\(i\\) is \\(n_i = \sum_{j < i+2} w_{ij} f_{ij}(s_j)\\) with \\(w_{i\cdot} =
    \mathrm{softmax}(\beta_{i\cdot})\\) the edge-normalisation weights and \\(f_{ij}\\) the
    mixed op of edge \\((j \to i)\\); the output concatenates the nodes. The edges leaving
    state \\(j\\) share one `PartialChannelMixedOp` with ``fan_out`` = their number, and each
    node is channel-shuffled once after summing its edges (the shuffle is linear).

    Call as ``cell([s0, s1], alpha, beta)`` with ``alpha`` the op weights (softmaxed,
    ``[14, n_ops]``) and ``beta`` the raw edge logits (``[14]``).
    """

    def __init__(
        self,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        primitives: Sequence[str],
        k: int,
        steps: int = 4,
        config: str | dict | ModuleConfig | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.reduction = bool(reduction)
        self.reduction_prev = bool(reduction_prev)
        self.primitives = tuple(primitives)
        self.k = int(k)
        self.steps = int(steps)
        self.config = get_module_config(config)
        if self.channels % self.k:
            kind = "reduction" if self.reduction else "normal"
            flag = "--k_reduce" if self.reduction else "--k_normal"
            raise ValueError(
                f"{self.name}: the {kind} cell width {self.channels} is not divisible by "
                f"{flag}={self.k}; pick K dividing {self.channels} or change --init_channels."
            )
        self.preprocess0 = preprocess_layer(self.channels, self.reduction_prev, False, self.config,
                                            "preprocess0")
        self.preprocess1 = preprocess_layer(self.channels, False, False, self.config, "preprocess1")
        self.edge_groups = []
        for source in range(self.steps + 1):
            targets = [i for i in range(self.steps) if source < i + 2]
            strides = 2 if self.reduction and source < 2 else 1
            op = PartialChannelMixedOp(self.channels, self.primitives, self.k, strides, fan_out=len(targets),
                                       config=self.config, name=f"edges_from_{source}")
            indices = [edge_index(i, source) for i in targets]
            self.edge_groups.append((targets, indices, op))

    @property
    def num_edges(self) -> int:
        return num_edges(self.steps)

    def call(self, inputs, alpha, beta, training=None, edge_weights=None):
        """``edge_weights`` (``[14]``), if given, replace ``softmax(beta)`` per node: a
        one-shot evaluation passes 1 on a genotype's edges and 0 on the others."""
        s0, s1 = inputs
        states = [self.preprocess0(s0, training=training), self.preprocess1(s1, training=training)]
        # w_ij f_ij = sum_o (w_ij p_o) o: the edge weight is folded into the op weights, so
        # the mixed parts arrive weighted. Rows are regrouped by source edge group.
        edge_w = (tf.cast(edge_weights, alpha.dtype) if edge_weights is not None
                  else tf.concat(node_edge_weights(beta, self.steps), 0))
        order = [i for _, indices, _ in self.edge_groups for i in indices]
        sizes = [len(indices) for _, indices, _ in self.edge_groups]
        op_w = regroup_rows(alpha * tf.reshape(edge_w, [-1, 1]), order, sizes)
        # The bypass channels (K > 1) are weighted by w_ij alone.
        bypass_w = (regroup_rows(tf.cast(edge_w, states[0].dtype), order, sizes)
                    if self.k > 1 else None)
        incoming = [[] for _ in range(self.steps)]

        def emit(source):
            targets, _, op = self.edge_groups[source]
            mixed, bypass = op.partial_outputs(states[source], op_w[source], training=training)
            parts = tf.split(mixed, len(targets), axis=-1)
            if bypass is None:
                bypassed = [None] * len(targets)
            else:
                bypassed = [w * bypass for w in tf.unstack(bypass_w[source])]
            for node, part, weighted in zip(targets, parts, bypassed, strict=True):
                incoming[node].append((part, weighted))

        emit(0)
        emit(1)
        for node in range(self.steps):
            state = tf.add_n([m for m, _ in incoming[node]])
            if self.k > 1:
                bypass_sum = tf.add_n([b for _, b in incoming[node]])
                state = channel_shuffle(tf.concat([state, bypass_sum], -1), self.k)
            states.append(state)
            if node + 2 <= self.steps:
                emit(node + 2)
        return tf.concat(states[2:], axis=-1)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "reduction": self.reduction,
                "reduction_prev": self.reduction_prev, "primitives": list(self.primitives),
                "k": self.k, "steps": self.steps, "config": self.config.to_dict()}
