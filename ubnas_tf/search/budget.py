r"""The expected cost of the network a search will derive, and the budget term on it.

No binary NAS publishes a cost-aware search; FBNet, ProxylessNAS and TF-NAS do it for float
networks by charging the architecture loss with the expected latency or FLOPs of the
sampled network. Here the cost is the project's OPs (BOPs/64 + FLOPs, `ubnas_tf.cost`)
of the *evaluation network* the genotype will be retrained as, so the number the search
aims at is the one `tools/summary.py` prints for the retrained model.

Per-op costs. For every cell \\(c\\) of the evaluation network, edge \\(e = (j \to i)\\) and
op \\(o\\), \\(\kappa_{c,e,o}\\) is the OPs of op o built exactly as the evaluation network
builds it (`build_op(..., search=False)`, at cell c's width and resolution, stride 2 on the
input edges of a reduction cell), counted by `model_cost`. Cells of one type share alpha and
beta, so their costs add: \\(K^{t}_{e,o} = \sum_{c \text{ of type } t} \kappa_{c,e,o}\\).
Everything else (stem, preprocessing, classifier) does not depend on the genotype; it is
\\(B\\) = OPs of the network of a reference genotype minus that genotype's op costs.

Expected cost. The derivation never keeps ``none``, so an edge's op distribution is
renormalised over the other ops, \\(q_{e,o} = p_{e,o} / r_e\\) with
\\(r_e = \sum_{o' \ne none} p_{e,o'}\\). Each node keeps 2 of its incoming edges, ranked by
edge weight times op weight (`derive_cell`). An edge's share of the node's derivable op
weight is \\(s_{ij} = w_{ij} r_{ij} / \sum_{j'} w_{ij'} r_{ij'}\\), with
\\(w_{ij} = \mathrm{softmax}_j(\beta_{ij})\\), and it counts with a soft "is kept"
\\(\kappa_{ij} = \min(1, t_i s_{ij})\\), where \\(t_i\\) makes \\(\sum_j \kappa_{ij} = 2\\)
(the capped simplex; in closed form \\(\kappa = 2s\\) when no input holds more than half,
else 1 for the strongest input and \\(s_{ij} / (1 - \max_j s_{ij})\\) for the others):

\\[ E = B + \sum_{t \in \{normal, reduce\}} \sum_i \sum_j \kappa^t_{ij}
      \sum_{o \ne none} q^t_{ij,o} K^t_{ij,o}. \\]

A node with only 2 inputs (the first) keeps both, and indeed gets \\(\kappa = 1\\) for each.

Two simpler weightings were tried and fell into loopholes the derived network did not
share. Weighting by \\(w\\) alone: an edge whose ``none`` holds 0.99 of the weight is never
kept, yet with a large \\(w\\) and expensive ops in its \\(q\\) it made \\(E\\) meet a
1.5 MOPs budget that the derived network (0.90) did not. Weighting by \\(2 s\\): a decided
pair of inputs at (0.8, 0.2) counts 1.6 times the first edge's cost and 0.4 times the
second's, while the derived cell pays both in full, so the search put the dear op on the
weaker edge (3 MOPs target: E ended at 3.34, the derived network at 3.66).

For a one-hot architecture (each kept edge's op at weight 1, the two kept inputs of every
node holding all of the node's weight) E equals the OPs of the derived network exactly.

A fixed reduction (`ModuleConfig.reduction` ``"real"`` or ``"binary"``) has no ops to
choose: its block (`ubnas_tf.modules.FixedReduction`, counted by the same `model_cost`,
its real 1x1 conv as FLOPs, its binary 3x3 conv as BOPs) is part of \(B\), \(K^{reduce}\)
is 0 and the reduce term drops out of E, so alpha_reduce and beta_reduce are not charged.

Budget term (TF-NAS' two-sided form, squared): \\(\lambda\,(E/T - 1)^2\\). Two-sided, so a
budget is also a floor: the search spends what the user allows rather than drifting to the
cheapest cell; squared, so its pull vanishes at the budget and the held-out loss decides
among architectures of about that cost.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import warnings
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from ubnas_tf.cost import OPS_PER_BOP, model_cost
from ubnas_tf.data import get_info
from ubnas_tf.deploy.latency import LatencyTable, op_key
from ubnas_tf.errors import LatencyTableError
from ubnas_tf.genotype import NONE_OP, Genotype, edge_index, node_inputs, num_edges
from ubnas_tf.modules import ModuleConfig, get_module_config
from ubnas_tf.nets.eval_network import EvalNetworkConfig, build_eval_network, op_places
from ubnas_tf.ops import build_op, resolve_primitives
from ubnas_tf.search.decisiveness import derivable_op_weights

__all__ = ["CostTable", "build_cost_table", "budget_loss", "dataset_cost_table",
           "kept_weights", "latency_cost_table"]


@dataclasses.dataclass(frozen=True)
class CostTable:
    """Per-op costs of an evaluation network (see the module docstring), in `unit`: MOPs
    (`build_cost_table`) or measured LCE milliseconds (`latency_cost_table`).

    Attributes:
        base: \\(B\\), the genotype-independent part.
        normal, reduce: \\(K^t\\), ``[num_edges, len(primitives)]``, summed over the cells of
            that type (0 for ``none``).
        primitives, steps: the search space the table is indexed by.
        preprocess: ``[2, 2]``: the preprocessing of cell input j (column) in the normal
            (row 0) and reduction (row 1) cells, summed over the cells, included in
            `base`. A derived cell always uses both inputs (its first node takes
            states 0 and 1); a hand-made cell that never reads input 0 has no such layer
            (Keras leaves it out of the model), and `genotype_cost` leaves its cost out too.
        searched_reduction: False when the network's reduction cells are fixed blocks
            (`ModuleConfig.reduction`): their cost is in `base`, `reduce` is all zeros
            and the reduce cell of alpha/beta and of a genotype is not charged.
        unit: ``"MOPs"`` or ``"ms"``; a budget on the table is in the same unit.
    """

    base: float
    normal: np.ndarray
    reduce: np.ndarray
    primitives: tuple[str, ...]
    steps: int = 4
    preprocess: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((2, 2)))
    searched_reduction: bool = True
    unit: str = "MOPs"

    @property
    def key(self) -> str:
        """The unit as a name suffix: ``target_mops`` / ``target_latency_ms`` and the like in
        flags, logs and a search's summary."""
        return {"MOPs": "mops", "ms": "latency_ms"}[self.unit]

    def _cell_expected(self, alpha, beta, costs: np.ndarray, keep: int) -> tf.Tensor:
        q, real = derivable_op_weights(alpha, self.primitives)  # real: derivable weight
        edge_cost = tf.reduce_sum(q * tf.constant(costs, tf.float32), axis=-1)  # [E]
        total = tf.zeros(())
        for _, inputs in node_inputs(self.steps):
            w = tf.nn.softmax(tf.cast(beta[inputs], tf.float32))
            share = w * real[inputs]
            kept = kept_weights(share / tf.reduce_sum(share), keep)
            total += tf.reduce_sum(kept * edge_cost[inputs])
        return total

    def expected(self, alpha_normal, beta_normal, alpha_reduce, beta_reduce,
                      keep: int = 2) -> tf.Tensor:
        """\\(E\\) in `unit`, differentiable in alpha and beta (raw logits)."""
        total = self.base + self._cell_expected(alpha_normal, beta_normal, self.normal, keep)
        if self.searched_reduction:
            total += self._cell_expected(alpha_reduce, beta_reduce, self.reduce, keep)
        return total

    def genotype_cost(self, genotype: Genotype) -> float:
        """The cost (in `unit`) of the evaluation network of `genotype`, from the table.

        Exact for genotypes whose cells concatenate all their nodes and read input 1 (every
        derived genotype does); raises ValueError for others. With a fixed reduction the
        genotype's reduce cell is not built, so it is not charged (nor checked).
        """
        total = self.base
        full = tuple(range(2, self.steps + 2))
        cells = [(self.normal, genotype.normal, genotype.normal_concat)]
        if self.searched_reduction:
            cells.append((self.reduce, genotype.reduce, genotype.reduce_concat))
        for row, (costs, edges, concat) in enumerate(cells):
            used = {source for _, source in edges}
            if genotype.steps != self.steps or tuple(concat) != full or 1 not in used:
                raise ValueError("The cost table covers genotypes of "
                                 f"{self.steps} nodes that concatenate all of them and read "
                                 "cell input 1.")
            if 0 not in used:
                total -= float(self.preprocess[row, 0])
            for k, (op, source) in enumerate(edges):
                total += float(costs[edge_index(k // 2, source), self.primitives.index(op)])
        return total

    def cost_range(self) -> tuple[float, float]:
        """The cheapest and the dearest derivable network (each edge's cheapest/dearest
        non-``none`` op; every node keeps its 2 cheapest/dearest inputs)."""
        usable = [k for k, p in enumerate(self.primitives) if p != NONE_OP]
        lo = hi = self.base
        for costs in (self.normal, self.reduce) if self.searched_reduction else (self.normal,):
            for _, inputs in node_inputs(self.steps):
                block = costs[inputs][:, usable]
                lo += float(np.sort(block.min(axis=1))[:2].sum())
                hi += float(np.sort(block.max(axis=1))[-2:].sum())
        return lo, hi


def kept_weights(share: tf.Tensor, keep: int = 2) -> tf.Tensor:
    r"""The soft "is kept" of a node's inputs: \\(\kappa_j = \min(1, t\, s_j)\\) with \\(t\\)
    such that \\(\sum_j \kappa_j = \min(keep, n)\\), for shares `share` (\\(s\\), summing to 1).

    With the inputs sorted by share, if the `m` strongest are capped at 1 the others get
    \\((keep - m)\, s_j / \sum_{j' \text{ not capped}} s_{j'}\\); the smallest `m` for which
    no uncapped input exceeds 1 is the answer (`m = keep - 1` always qualifies). Continuous
    and piecewise differentiable in `share`; exactly 1 on a decided pair, whatever its split.
    """
    share = tf.convert_to_tensor(share, tf.float32)
    n = int(share.shape[0])
    if n <= keep:
        return tf.ones_like(share)
    order = tf.argsort(share, direction="DESCENDING", stable=True)
    ranked = tf.gather(share, order)
    kept = None
    for capped in reversed(range(keep)):
        scale = (keep - capped) / tf.maximum(tf.reduce_sum(ranked[capped:]), 1e-12)
        candidate = tf.concat([tf.ones([capped]), scale * ranked[capped:]], 0)
        fits = scale * ranked[capped] <= 1.0
        kept = candidate if kept is None else tf.where(fits, candidate, kept)
    return tf.gather(kept, tf.argsort(order))


def _op_mops(name: str, channels: int, height: int, width: int, strides: int,
             config: ModuleConfig) -> float:
    inputs = tf.keras.Input((height, width, channels))
    layer = build_op(name, channels, strides, config, search=False)
    model = tf.keras.Model(inputs, layer(inputs))
    return model_cost(model).ops / 1e6


def build_cost_table(primitives: Sequence[str], input_shape: tuple[int, int, int],
                     num_classes: int, eval_config: EvalNetworkConfig,
                     module_config: str | dict | ModuleConfig | None = None,
                     steps: int = 4) -> CostTable:
    """Measures every op of the evaluation network `eval_config` with `model_cost`.

    Takes a few seconds (one tiny model per distinct op, width, resolution and stride, and
    one full network for the base cost). With a fixed reduction
    (``module_config.reduction``), the reduction cells have no per-op costs: their blocks
    are measured with the rest of the network, in the base cost.
    """
    primitives = tuple(primitives)
    cfg = get_module_config(module_config)
    searched_reduction = cfg.searched_reduction
    n_e = num_edges(steps)
    tables = {False: np.zeros((n_e, len(primitives))), True: np.zeros((n_e, len(primitives)))}
    cache: dict[tuple, float] = {}

    for place in op_places(tuple(input_shape), eval_config, cfg, steps):
        for o, name in enumerate(primitives):
            if name == NONE_OP:
                continue
            key = (name, place.channels, place.height, place.width, place.strides)
            if key not in cache:
                cache[key] = _op_mops(*key, cfg)
            tables[place.reduction][place.edge, o] += cache[key]

    usable = next(p for p in primitives if p != NONE_OP)
    concat = tuple(range(2, steps + 2))
    cell = tuple((usable, j) for _ in range(steps) for j in (0, 1))
    reference = Genotype(cell, concat, cell, concat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unaligned widths only matter for LCE, not counting
        net = build_eval_network(reference, tuple(input_shape), num_classes, eval_config, cfg,
                                 allow_unaligned=True)
    report = model_cost(net)
    preprocess = np.zeros((2, 2))
    reductions = {eval_config.layers // 3, 2 * eval_config.layers // 3}
    for row in report.layers:
        match = re.match(r"cell_(\d+)/preprocess([01])(/|$)", row.name)
        if match:
            cell, j = int(match.group(1)), int(match.group(2))
            preprocess[int(cell in reductions), j] += (row.bops * OPS_PER_BOP + row.flops) / 1e6
    partial = CostTable(0.0, tables[False], tables[True], primitives, steps, preprocess,
                        searched_reduction)
    return dataclasses.replace(partial,
                               base=report.ops / 1e6 - partial.genotype_cost(reference))


def latency_cost_table(table: LatencyTable, primitives: Sequence[str] | None = None
                       ) -> CostTable:
    """The `CostTable` (in ms) of a measured latency table (`ubnas_tf.deploy.latency`):
    \\(K^t_{e,o}\\) sums the table's time of op o at every place of edge e in the cells of
    type t; \\(B\\) is the empty model's time plus the stem, the classifier, every cell's
    preprocessing, node sums and concatenation, and any fixed reduction block. So the table's
    prediction for a genotype is the sum of its parts' times (exact, by construction, for a
    one-hot architecture). `primitives` (default: the table's) is the search space; every one
    of them must be in the table."""
    primitives = tuple(primitives or table.network.primitives)
    spec = table.network
    missing = [p for p in primitives if p != NONE_OP and p not in spec.primitives]
    if missing:
        raise LatencyTableError(f"the latency table has no times for the primitives {missing}; "
                                "measure it with them (tools/latency_table.py --primitives).")
    cfg = get_module_config(spec.module_config)
    n_e = num_edges(spec.steps)
    tables = {False: np.zeros((n_e, len(primitives))), True: np.zeros((n_e, len(primitives)))}
    for place in op_places(spec.input_shape, spec.eval_config, cfg, spec.steps):
        for o, name in enumerate(primitives):
            if name != NONE_OP:
                key = op_key(name, place.channels, place.height, place.width, place.strides)
                tables[place.reduction][place.edge, o] += table.entries[key]
    preprocess = np.zeros((2, 2))
    reductions = {spec.layers // 3, 2 * spec.layers // 3}
    base = table.overhead_ms
    for key, ms in table.entries.items():
        if key.startswith("op/"):
            continue
        base += ms
        match = re.fullmatch(r"cell_(\d+)/preprocess([01])", key)
        if match:
            preprocess[int(int(match.group(1)) in reductions), int(match.group(2))] += ms
    return CostTable(base, tables[False], tables[True], primitives, spec.steps, preprocess,
                     cfg.searched_reduction, unit="ms")


@functools.lru_cache(maxsize=4)
def dataset_cost_table(dataset: str, primitives: tuple[str, ...] | None,
                       eval_config: EvalNetworkConfig, module_config: str | None = None,
                       steps: int = 4) -> CostTable:
    """`build_cost_table` for `dataset`'s images and classes and `primitives` (None: the
    default search space), kept for the next call with the same arguments: a search
    tool builds it once to check its budget and once to search with it."""
    info = get_info(dataset)
    return build_cost_table(resolve_primitives(primitives), info.image_shape, info.num_classes,
                            eval_config, module_config, steps)


def budget_loss(expected: tf.Tensor, target: float, weight: float) -> tf.Tensor:
    """\\(\\lambda (E/T - 1)^2\\) (see the module docstring)."""
    return weight * tf.square(expected / target - 1.0)
