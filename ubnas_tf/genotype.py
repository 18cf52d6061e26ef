"""Cell genotypes: derivation from architecture weights and JSON I/O.

A cell has two inputs (states 0 and 1: the outputs of the two previous cells) and
`steps` intermediate nodes (states 2 .. steps+1). A genotype lists, for each intermediate
node, two ``(op_name, input_state)`` pairs, in node order; the cell output concatenates the
states listed in ``*_concat``. This is the DARTS/PC-DARTS convention.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence

import numpy as np

from ubnas_tf.errors import GenotypeError
from ubnas_tf.io_utils import atomic_write_text
from ubnas_tf.ops import registered_primitives

FORMAT = "ubnas-genotype/1"
NONE_OP = "none"

__all__ = ["Genotype", "GenotypeError", "derive_genotype", "derive_cell", "edge_index",
           "edge_weights", "node_inputs", "num_edges", "random_genotype", "softmax"]


def num_edges(steps: int = 4) -> int:
    """Number of mixed edges in a search cell: node i has i + 2 inputs."""
    return sum(2 + i for i in range(steps))


def node_inputs(steps: int = 4) -> Iterator[tuple[int, slice]]:
    """``(node, edges)`` for each intermediate node: the slice of the cell's edges that are
    its inputs (node i has i + 2: the cell's two inputs and the nodes before it)."""
    for node in range(steps):
        start = edge_index(node, 0)
        yield node, slice(start, start + node + 2)


def edge_index(node: int, source: int) -> int:
    """Index of the edge from state `source` into intermediate node `node` (0-based)."""
    if not 0 <= source < node + 2:
        raise ValueError(f"Node {node} has inputs 0..{node + 1}; got source {source}.")
    return sum(2 + i for i in range(node)) + source


@dataclasses.dataclass(frozen=True)
class Genotype:
    """A searched architecture: the normal and the reduction cell."""

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self):
        # Normalise lists (e.g. from JSON) to tuples so genotypes compare and hash by value.
        for name in ("normal", "reduce"):
            object.__setattr__(self, name, tuple((str(op), int(j)) for op, j in getattr(self, name)))
        for name in ("normal_concat", "reduce_concat"):
            object.__setattr__(self, name, tuple(int(j) for j in getattr(self, name)))

    @property
    def steps(self) -> int:
        return len(self.normal) // 2

    def cell(self, reduction: bool) -> tuple[tuple[tuple[str, int], ...], tuple[int, ...]]:
        return (self.reduce, self.reduce_concat) if reduction else (self.normal, self.normal_concat)

    def ops_used(self) -> set[str]:
        return {op for op, _ in self.normal + self.reduce}

    def validate(self, primitives: Sequence[str] | None = None, source: str = "genotype") -> Genotype:
        """Checks structure and op names; raises `GenotypeError` naming what is wrong."""
        if primitives is None:
            primitives = registered_primitives()
        allowed = [p for p in primitives if p != NONE_OP]
        for cell_name in ("normal", "reduce"):
            edges = getattr(self, cell_name)
            concat = getattr(self, f"{cell_name}_concat")
            if len(edges) == 0 or len(edges) % 2:
                raise GenotypeError(
                    f"{source}: '{cell_name}' must list 2 (op, input) pairs per node; "
                    f"got {len(edges)} pairs."
                )
            steps = len(edges) // 2
            for k, (op, j) in enumerate(edges):
                node = k // 2
                if op not in allowed:
                    raise GenotypeError(
                        f"{source}: '{cell_name}' edge {k} uses unknown op {op!r}; "
                        f"expected one of {allowed}."
                    )
                if not 0 <= j < node + 2:
                    raise GenotypeError(
                        f"{source}: '{cell_name}' edge {k} (node {node}) takes input {j}; "
                        f"node {node} may only take states 0..{node + 1}."
                    )
            bad = [j for j in concat if not 2 <= j < steps + 2]
            if bad or not concat:
                raise GenotypeError(
                    f"{source}: '{cell_name}_concat' = {list(concat)} must name intermediate "
                    f"states in 2..{steps + 1}."
                )
        if len(self.normal) != len(self.reduce):
            raise GenotypeError(f"{source}: normal and reduce cells must have the same number of nodes.")
        return self

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "normal": [list(e) for e in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [list(e) for e in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict, source: str = "genotype",
                  primitives: Sequence[str] | None = None) -> Genotype:
        if not isinstance(data, dict):
            raise GenotypeError(f"{source}: expected a JSON object, got {type(data).__name__}.")
        missing = [k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in data]
        if missing:
            raise GenotypeError(f"{source}: missing keys {missing}.")
        try:
            for cell_name in ("normal", "reduce"):
                for e in data[cell_name]:
                    if not (isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], str)
                            and isinstance(e[1], int) and not isinstance(e[1], bool)):
                        raise GenotypeError(
                            f"{source}: '{cell_name}' entries must be [op_name, input_index]; got {e!r}."
                        )
            genotype = cls(data["normal"], data["normal_concat"], data["reduce"], data["reduce_concat"])
        except (TypeError, ValueError) as err:
            if isinstance(err, GenotypeError):
                raise
            raise GenotypeError(f"{source}: malformed genotype ({err}).") from err
        return genotype.validate(primitives, source=source)

    @classmethod
    def from_json(cls, text: str, source: str = "genotype",
                  primitives: Sequence[str] | None = None) -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise GenotypeError(f"{source}: not valid JSON ({err}).") from err
        return cls.from_dict(data, source=source, primitives=primitives)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, primitives: Sequence[str] | None = None) -> Genotype:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise GenotypeError(f"Genotype file {path!r} does not exist.")
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read(), source=path, primitives=primitives)

    def __str__(self) -> str:
        def fmt(edges, concat):
            nodes = [
                f"n{k // 2 + 2}<-[{edges[k][0]}({edges[k][1]}), {edges[k + 1][0]}({edges[k + 1][1]})]"
                for k in range(0, len(edges), 2)
            ]
            return "; ".join(nodes) + f"; out=concat{list(concat)}"

        return (f"normal: {fmt(self.normal, self.normal_concat)}\n"
                f"reduce: {fmt(self.reduce, self.reduce_concat)}")


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64 (the op weights of alpha logits)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def edge_weights(beta: np.ndarray, steps: int = 4) -> np.ndarray:
    """PC-DARTS' edge normalisation: the softmax of `beta` over the inputs of each node,
    concatenated (shape ``[num_edges(steps)]``, summing to 1 per node)."""
    beta = np.asarray(beta, dtype=np.float64)
    return np.concatenate([softmax(beta[edges]) for _, edges in node_inputs(steps)])


def derive_cell(alpha: np.ndarray, beta: np.ndarray, primitives: Sequence[str],
                steps: int = 4, inputs_per_node: int = 2) -> tuple[tuple[str, int], ...]:
    """Derives one cell from its architecture logits.

    `alpha` has shape ``[num_edges, len(primitives)]`` and `beta` shape ``[num_edges]`` (raw
    logits). With \\(p_{e,o} = \\mathrm{softmax}_o(\\alpha_e)\\) and
    \\(w_e = \\mathrm{softmax}_{e \\in \\mathrm{in}(i)}(\\beta_e)\\) (edge normalisation over the
    inputs of node i), edge e scores \\(s_e = w_e \\max_{o \\ne none} p_{e,o}\\). Each node keeps
    its `inputs_per_node` best-scoring edges (ties: lower source first), each with its best
    non-`none` op.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    n_e = num_edges(steps)
    if alpha.shape != (n_e, len(primitives)) or beta.shape != (n_e,):
        raise ValueError(
            f"alpha must be [{n_e}, {len(primitives)}] and beta [{n_e}]; "
            f"got {alpha.shape} and {beta.shape}."
        )
    usable = [k for k, p in enumerate(primitives) if p != NONE_OP]
    if not usable:
        raise ValueError("The search space has no op other than 'none'.")
    op_w = softmax(alpha, axis=-1)
    edge_w = edge_weights(beta, steps)
    edges = []
    for node, inputs in node_inputs(steps):
        n_in = node + 2
        w, ops = edge_w[inputs], op_w[inputs]
        best_ops = [usable[int(np.argmax(ops[j, usable]))] for j in range(n_in)]
        scores = [w[j] * ops[j, best_ops[j]] for j in range(n_in)]
        # Stable sort: equal scores keep the lower source index.
        chosen = sorted(range(n_in), key=lambda j: -scores[j])[:inputs_per_node]
        for j in sorted(chosen):
            edges.append((primitives[best_ops[j]], j))
    return tuple(edges)


def derive_genotype(alpha_normal, beta_normal, alpha_reduce, beta_reduce,
                    primitives: Sequence[str], steps: int = 4) -> Genotype:
    """Derives the `Genotype` (both cells) from architecture logits; see `derive_cell`."""
    concat = tuple(range(2, steps + 2))
    return Genotype(
        derive_cell(alpha_normal, beta_normal, primitives, steps), concat,
        derive_cell(alpha_reduce, beta_reduce, primitives, steps), concat,
    )


def random_genotype(primitives: Sequence[str], steps: int = 4,
                    rng: np.random.Generator | int | None = None) -> Genotype:
    """Draws a genotype uniformly at random from the search space of `primitives`.

    For both cells, every intermediate node ``i`` (state ``i + 2``) takes two distinct input
    states drawn uniformly from ``0 .. i + 1`` (listed in ascending order, as
    `derive_cell` lists them), each through an op drawn uniformly from the non-``none``
    primitives; the cell output concatenates all intermediate nodes. This is the usual
    random-search baseline of differentiable NAS (e.g. Li & Talwalkar 2019).

    Args:
        primitives: the search space (``none`` may be listed; it is never drawn).
        steps: intermediate nodes per cell.
        rng: a ``numpy.random.Generator`` (advanced in place) or a seed; the same seed gives
            the same genotype.

    Raises:
        GenotypeError: `primitives` is empty, has no op other than ``none``, repeats a name
            or holds a non-string or empty name; or `steps` < 1.
    """
    if isinstance(primitives, str) or not isinstance(primitives, Sequence):
        raise GenotypeError(f"primitives must be a sequence of op names; got {primitives!r}.")
    bad = [p for p in primitives if not isinstance(p, str) or not p.strip()]
    if bad:
        raise GenotypeError(f"primitives must be non-empty op names; got {bad!r}.")
    dupes = sorted({p for p in primitives if list(primitives).count(p) > 1})
    if dupes:
        raise GenotypeError(f"primitives {dupes} are listed more than once (this would bias the "
                            "draw towards them).")
    ops = [p for p in primitives if p != NONE_OP]
    if not ops:
        raise GenotypeError(f"primitives {list(primitives)} have no op other than {NONE_OP!r} "
                            "to draw from.")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise GenotypeError(f"steps must be an integer >= 1; got {steps!r}.")
    rng = np.random.default_rng(rng)

    def cell() -> tuple[tuple[str, int], ...]:
        edges = []
        for node in range(steps):
            sources = np.sort(rng.choice(node + 2, size=2, replace=False))
            edges += [(ops[int(rng.integers(len(ops)))], int(j)) for j in sources]
        return tuple(edges)

    concat = tuple(range(2, steps + 2))
    normal = cell()
    return Genotype(normal, concat, cell(), concat).validate(primitives, source="random_genotype")
