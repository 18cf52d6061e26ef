"""Genotypes to compare a search with: random draws at a budget, hand designs, and their OPs.

OPs = BOPs/64 + FLOPs of the evaluation network a recipe retrains, exactly as
`tools/summary.py` counts them (`eval_network_ops`). Rejection sampling screens many thousands
of uniform draws with a per-edge cost table (`table_ops`) and measures only the draws that pass
(Li & Talwalkar's random baseline, at equal cost).

`settings` below is a dict of the recipe's network fields: ``dataset``, ``layers``,
``init_channels``, ``stem_multiplier``, ``stem_strides``, ``module_config`` and
``allow_unaligned_widths`` (`ubnas_tf.evidence.chance.recipe_network`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from ubnas_tf.cost import model_cost
from ubnas_tf.data import get_info
from ubnas_tf.errors import FlagError
from ubnas_tf.genotype import Genotype, random_genotype
from ubnas_tf.nets.eval_network import EvalNetworkConfig, build_eval_network
from ubnas_tf.search.budget import build_cost_table

__all__ = ["OP_CODES", "SamplingStats", "draw_within", "eval_network_ops", "hand_designs",
           "network_config", "sample_random_genotypes", "short_genotype", "table_ops"]

OP_CODES = {"none": "--", "skip_connect": "sk", "max_pool_3x3": "mp", "avg_pool_3x3": "ap",
            "bconv_3x3": "c3", "bconv_5x5": "c5", "bdil_conv_3x3": "d3", "bdil_conv_5x5": "d5"}


def network_config(settings: dict):
    return EvalNetworkConfig(settings["layers"], settings["init_channels"],
                             settings["stem_multiplier"], settings["stem_strides"])


def eval_network_ops(genotype, settings: dict) -> float:
    """OPs (BOPs/64 + FLOPs) of the inference network, as tools/summary.py counts them."""
    info = get_info(settings["dataset"])
    model = build_eval_network(genotype, info.image_shape, info.num_classes,
                               network_config(settings), settings["module_config"],
                               settings["allow_unaligned_widths"])
    ops = float(model_cost(model).ops)
    del model
    tf.keras.backend.clear_session()
    return ops


def table_ops(settings: dict, primitives: Sequence[str], steps: int) -> Callable[[object], float]:
    """The OPs of a genotype's evaluation network from `ubnas_tf.search.budget`'s cost table
    (one tiny model per op, width, resolution and stride, measured once): a look-up per edge,
    which makes rejection sampling over many thousands of draws cheap. Exact for genotypes
    that concatenate all their nodes and read cell input 1 (random and hand-designed ones
    do); in OPs, like `eval_network_ops` (the table counts MOPs)."""
    info = get_info(settings["dataset"])
    table = build_cost_table(primitives, info.image_shape, info.num_classes,
                             network_config(settings), settings["module_config"], steps)
    tf.keras.backend.clear_session()
    return lambda genotype: table.genotype_cost(genotype) * 1e6


def _uniform_cell(steps: int, pick: Callable[[int], tuple[tuple[str, int], tuple[str, int]]]):
    return tuple(e for node in range(steps) for e in pick(node))


def hand_designs(primitives: Sequence[str], steps: int, binary_ops: Sequence[str]) -> dict:
    """Named hand-designed genotypes using only `primitives` (both cells alike, all nodes
    concatenated): for each binary conv K in `binary_ops`,

    * ``all_K``: every edge K; node 2 on the cell inputs (0, 1), node n on the two previous
      states (n-2, n-1);
    * ``res_K`` (ResNet-like): node n = K(state n-1) + skip_connect(state n-1);
    * ``pool_K``: node n = max_pool_3x3(older of the two previous states) + K(newer one).

    Returns name -> (Genotype, description).
    """
    concat = tuple(range(2, steps + 2))
    out = {}
    for k in binary_ops:
        if k not in primitives:
            continue
        designs = {
            f"all_{k}": (lambda n, k=k: ((k, n), (k, n + 1)),
                         f"every edge {k}, each node on the two previous states"),
        }
        if "skip_connect" in primitives:
            designs[f"res_{k}"] = (lambda n, k=k: ((k, n + 1), ("skip_connect", n + 1)),
                                   f"ResNet-like: node = {k}(previous) + skip_connect(previous)")
        if "max_pool_3x3" in primitives:
            designs[f"pool_{k}"] = (lambda n, k=k: (("max_pool_3x3", n), (k, n + 1)),
                                    f"node = max_pool_3x3(older) + {k}(newer previous state)")
        for name, (pick, description) in designs.items():
            cell = _uniform_cell(steps, pick)
            out[name] = (Genotype(cell, concat, cell, concat), description)
    return out


@dataclasses.dataclass
class SamplingStats:
    draws: int = 0
    duplicates: int = 0
    accepted: int = 0
    ops_min: float = math.inf
    ops_max: float = -math.inf


def draw_within(primitives: Sequence[str], steps: int, rng, predict: Callable[[object], float],
                target: float, tolerance: float, max_tries: int, exclude=(),
                stats: SamplingStats | None = None) -> Iterator[tuple[object, float]]:
    """Yields random genotypes (and their predicted OPs) within `tolerance` of `target`,
    never repeating one nor yielding one in `exclude`, until `max_tries` draws are spent."""
    stats = stats if stats is not None else SamplingStats()
    seen = set(exclude)
    while stats.draws < max_tries:
        genotype = random_genotype(primitives, steps, rng)
        stats.draws += 1
        if genotype in seen:
            stats.duplicates += 1
            continue
        seen.add(genotype)
        ops = predict(genotype)
        stats.ops_min, stats.ops_max = min(stats.ops_min, ops), max(stats.ops_max, ops)
        if abs(ops - target) <= tolerance * target:
            stats.accepted += 1
            yield genotype, ops


def sample_random_genotypes(primitives: Sequence[str], steps: int, seed: int, wanted: int,
                            target: float, tolerance: float, max_tries: int,
                            predict: Callable[[object], float],
                            measure: Callable[[object], float] | None = None,
                            exclude=()) -> tuple[list[tuple[object, float, float]], SamplingStats]:
    """Seeded rejection sampling: `wanted` distinct random genotypes whose OPs are within
    `tolerance` (relative) of `target`.

    `predict` screens every draw cheaply; `measure` (default: `predict`) gives the OPs that
    decide, for the draws that pass the screen. Returns ``[(genotype, predicted, measured)]``
    in draw order and the sampling statistics.

    Raises:
        FlagError: fewer than `wanted` found in `max_tries` draws (names the flags).
    """
    measure = measure or predict
    rng = np.random.default_rng(seed)
    stats = SamplingStats()
    found = []
    for genotype, predicted in draw_within(primitives, steps, rng, predict, target, tolerance,
                                           max_tries, exclude, stats):
        measured = measure(genotype)
        if abs(measured - target) <= tolerance * target:
            found.append((genotype, predicted, measured))
            if len(found) == wanted:
                return found, stats
        else:
            print(f"  WARNING: predicted {predicted:.0f} OPs but measured {measured:.0f}; "
                  "rejected.", flush=True)
    raise FlagError(
        f"Found only {len(found)} of --random={wanted} random genotypes within "
        f"--ops_tolerance={tolerance} of {target / 1e6:.3f} MOPs after {max_tries} draws "
        f"({stats.duplicates} duplicates); the draws ranged over "
        f"{stats.ops_min / 1e6:.3f}-{stats.ops_max / 1e6:.3f} MOPs. Raise --ops_tolerance or "
        "choose a target inside that range.")


def short_genotype(genotype) -> str:
    """Op codes per node, e.g. ``N d5d5 mpmp | R apc5 apmp`` (inputs: see the JSON files)."""
    def cell(edges):
        return " ".join("".join(OP_CODES.get(op, op) for op, _ in edges[k:k + 2])
                        for k in range(0, len(edges), 2))

    return f"N {cell(genotype.normal)} | R {cell(genotype.reduce)}"
