"""Plots of a search or training run: cell graphs, architecture-weight evolution, curves.

Everything here reads the JSON files a run directory holds and writes image files; nothing
imports TensorFlow. Matplotlib is used through `matplotlib.figure.Figure` directly (no
`pyplot`, so no global backend state and no display needed); cell graphs use the `graphviz`
Python package, which needs the Graphviz `dot` executable.

Every file is written to a temporary name in its destination directory and then
`os.replace`-d into place, so a reader never sees a partially written image.

Run-directory files understood by `plot_run`:

* ``genotype.json``: the final `Genotype` (``Genotype.to_dict`` format);
* ``arch_history.json``: per-epoch architecture logits written by the search tool
  (``{"primitives": [...], "steps": 4, "epochs": [{"epoch", "arch_updates", "genotype",
  "alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce", "logs"}, ...]}``);
* ``history.json``: per-epoch training logs of a (re)training run
  (``{"epochs": [{"epoch", "logs"}, ...]}``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import zlib
from collections.abc import Sequence
from typing import Any

import graphviz
import numpy as np

from ubnas_tf.genotype import NONE_OP, Genotype, GenotypeError, edge_weights, num_edges, softmax
from ubnas_tf.io_utils import atomic_output, read_json

__all__ = [
    "GENOTYPE_FILE",
    "ARCH_HISTORY_FILE",
    "HISTORY_FILE",
    "PLOTS_DIR",
    "op_color",
    "plot_cell",
    "plot_alpha_evolution",
    "plot_curves",
    "plot_run",
]

log = logging.getLogger(__name__)

GENOTYPE_FILE = "genotype.json"
ARCH_HISTORY_FILE = "arch_history.json"
HISTORY_FILE = "history.json"
PLOTS_DIR = "plots"

DOT_MISSING_MESSAGE = (
    "The Graphviz 'dot' executable was not found on PATH; it is needed to draw cell graphs: "
    "install graphviz (apt-get install graphviz)"
)

# Op families of the built-in primitives, matched by prefix in this order (so "bdil_conv"
# wins over "bconv"); ops added with `register_primitive` get a stable fallback colour.
# Hex colours so the same values work for Graphviz and matplotlib.
_OP_FAMILIES: tuple[tuple[str, str], ...] = (
    (NONE_OP, "#9e9e9e"),
    ("skip_connect", "#424242"),
    ("max_pool", "#1f77b4"),
    ("avg_pool", "#17becf"),
    ("bdil_conv", "#ff7f0e"),
    ("bconv", "#d62728"),
)
_FALLBACK_COLORS = ("#e377c2", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")
_KERNEL_LINESTYLES = {1: ":", 3: "-", 5: "--", 7: "-."}

_ACCURACY_KEYS = ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def op_color(op: str) -> str:
    """Colour (hex) of an op's family, e.g. every ``bconv_*`` op shares one colour."""
    for prefix, color in _OP_FAMILIES:
        if op == prefix or op.startswith(prefix):
            return color
    return _FALLBACK_COLORS[zlib.crc32(op.encode("utf-8")) % len(_FALLBACK_COLORS)]


def _op_linestyle(op: str) -> str:
    """Line style by kernel size (``3x3`` solid, ``5x5`` dashed, ...) to tell family members apart."""
    match = re.search(r"(\d+)x\d+", op)
    if not match:
        return "-"
    return _KERNEL_LINESTYLES.get(int(match.group(1)), "-")


def _save_figure(fig: Any, path: str) -> str:
    """Saves a matplotlib `Figure` atomically; the format comes from `path`'s extension."""
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=110, bbox_inches="tight")
    return path


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # deferred: matplotlib is slow to import (0.4 s)

    return Figure(figsize=(width, height), layout="constrained")


def _epochs(history: Any, what: str) -> list[tuple[int, dict]]:
    """``(epoch, record)`` pairs of a history dict's ``epochs`` list, sorted by epoch.

    A record without ``epoch`` counts as its list position; on repeated epochs (e.g. a resumed
    run) the last record wins.
    """
    if not isinstance(history, dict) or not isinstance(history.get("epochs"), list):
        raise ValueError(f"{what}: expected a JSON object with an 'epochs' list.")
    by_epoch: dict[int, dict] = {}
    for i, entry in enumerate(history["epochs"]):
        if not isinstance(entry, dict):
            raise ValueError(f"{what}: epochs[{i}] is not a JSON object.")
        epoch = entry.get("epoch", i)
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise ValueError(f"{what}: epochs[{i}] has a non-integer 'epoch' ({epoch!r}).")
        by_epoch[epoch] = entry
    return sorted(by_epoch.items())


def _number(value: Any) -> float:
    """A logged value as a float; NaN where missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _spans(xs: Sequence[int], mask: Sequence[bool]) -> list[tuple[float, float]]:
    """Merged ``[x - 0.5, x + 0.5]`` intervals of the epochs where `mask` is true."""
    spans: list[tuple[float, float]] = []
    for x, m in zip(xs, mask, strict=True):
        if not m:
            continue
        if spans and spans[-1][1] >= x - 0.5:
            spans[-1] = (spans[-1][0], x + 0.5)
        else:
            spans.append((x - 0.5, x + 0.5))
    return spans


def _steps_for(n_edges: int, declared: Any, what: str) -> int:
    """Number of intermediate nodes: the declared ``steps`` or the one matching `n_edges`."""
    if declared is not None:
        if not isinstance(declared, int) or isinstance(declared, bool) or declared < 1:
            raise ValueError(f"{what}: 'steps' must be a positive integer; got {declared!r}.")
        if num_edges(declared) != n_edges:
            raise ValueError(
                f"{what}: 'steps' = {declared} implies {num_edges(declared)} edges, "
                f"but the alphas have {n_edges} rows."
            )
        return declared
    for steps in range(1, 64):
        if num_edges(steps) == n_edges:
            return steps
    raise ValueError(f"{what}: {n_edges} alpha rows do not match any number of cell nodes.")


# --------------------------------------------------------------------------------------------
# Cell graph
# --------------------------------------------------------------------------------------------


def _state_node(state: int) -> str:
    """Graph node id of a cell state (0, 1 = cell inputs; 2.. = intermediate nodes 0..)."""
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(state, str(state - 2))


def plot_cell(genotype: Genotype, reduction: bool, path_without_ext: str, fmt: str = "png") -> str:
    """Draws the normal (or reduction) cell of `genotype` with Graphviz.

    Nodes are the cell inputs ``c_{k-2}``, ``c_{k-1}``, the intermediate nodes ``0 ..
    steps-1`` and the output ``c_{k}`` (the concatenation of the ``*_concat`` states). Each
    edge is labelled with its op and coloured by op family (see `op_color`).

    Writes ``path_without_ext + "." + fmt`` atomically and returns that path. Raises
    `RuntimeError` if the Graphviz ``dot`` executable is missing.
    """
    if shutil.which("dot") is None:
        raise RuntimeError(DOT_MISSING_MESSAGE)
    edges, concat = genotype.cell(reduction)
    steps = len(edges) // 2
    name = "reduction cell" if reduction else "normal cell"

    g = graphviz.Digraph(name=name, format=fmt)
    g.attr(rankdir="LR", label=name, labelloc="t", fontsize="16", fontname="helvetica")
    g.attr("node", style="filled,rounded", shape="box", fontname="helvetica", fontsize="14",
           penwidth="1.5", height="0.5", width="0.5")
    g.attr("edge", fontname="helvetica", fontsize="11", penwidth="1.5", arrowsize="0.8")

    with g.subgraph(name="inputs") as inputs:
        inputs.attr(rank="same")
        for state in (0, 1):
            inputs.node(_state_node(state), fillcolor="#a6cee3")
    for node in range(steps):
        g.node(str(node), fillcolor="#ffffb3", shape="circle")
    g.node("c_{k}", fillcolor="#b2df8a")

    for k, (op, source) in enumerate(edges):
        color = op_color(op)
        g.edge(_state_node(source), str(k // 2), label=op, color=color, fontcolor=color)
    for state in concat:
        g.edge(_state_node(state), "c_{k}", color="#7f7f7f", style="dashed")

    final = f"{path_without_ext}.{fmt}"
    with atomic_output(final) as tmp:
        # graphviz writes the DOT source at `stem` and the image at `stem.fmt`; cleanup=True
        # deletes the source. Render to the temporary name, then rename over the target.
        stem = tmp[: -len(f".{fmt}")]
        try:
            rendered = g.render(filename=os.path.basename(stem), directory=os.path.dirname(stem),
                                format=fmt, cleanup=True)
        except graphviz.ExecutableNotFound as err:
            raise RuntimeError(DOT_MISSING_MESSAGE) from err
        finally:
            if os.path.exists(stem):
                os.unlink(stem)
        if os.path.abspath(rendered) != os.path.abspath(tmp):
            os.replace(rendered, tmp)
    return final


# --------------------------------------------------------------------------------------------
# Architecture-weight evolution
# --------------------------------------------------------------------------------------------


def _kept_edges(genotype: Any, cell: str, steps: int) -> set[tuple[int, int]]:
    """(node, source) pairs the genotype dict keeps in `cell`; empty if it cannot be read."""
    try:
        pairs = genotype[cell]
        return {(k // 2, int(pair[1])) for k, pair in enumerate(pairs) if k // 2 < steps}
    except (KeyError, IndexError, TypeError, ValueError):
        return set()


def plot_alpha_evolution(history: dict, path: str, cell: str = "normal") -> str:
    """Plots how the op weights of every edge of one cell type evolve over the search.

    One small subplot per edge, laid out as a grid with a row per intermediate node and a
    column per input state (titled ``node i <- state j``; states 0 and 1 are the cell inputs
    ``c_{k-2}``, ``c_{k-1}``, state j >= 2 is node j-2). Each line is ``softmax(alpha)`` of one
    op over epochs (colour = op family, line style = kernel size); if the history records
    ``beta_<cell>``, a black dotted line shows the edge-normalisation weight (softmax of
    beta over the node's inputs). Epochs without architecture updates (warm-up) are shaded,
    and edges kept by the last recorded genotype are marked with ``*`` and a heavier frame.

    `history` is the content of ``arch_history.json``; `cell` is ``"normal"`` or
    ``"reduce"``. Writes `path` atomically (format from its extension) and returns it.
    """
    if cell not in ("normal", "reduce"):
        raise ValueError(f"cell must be 'normal' or 'reduce'; got {cell!r}.")
    what = "arch history"
    records = _epochs(history, what)
    primitives = history.get("primitives")
    if not (isinstance(primitives, list) and primitives and all(isinstance(p, str) for p in primitives)):
        raise ValueError(f"{what}: 'primitives' must be a non-empty list of op names.")
    key, beta_key = f"alpha_{cell}", f"beta_{cell}"
    records = [(x, e) for x, e in records if e.get(key) is not None]
    if not records:
        raise ValueError(f"{what}: no epoch records '{key}'.")

    alphas = []
    for _, entry in records:
        try:
            alpha = np.asarray(entry[key], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{what}: epoch {entry.get('epoch')}: '{key}' is not numeric ({err}).") from err
        if alpha.ndim != 2 or alpha.shape[1] != len(primitives):
            raise ValueError(
                f"{what}: epoch {entry.get('epoch')}: '{key}' has shape {alpha.shape}; expected "
                f"[num_edges, {len(primitives)}] (one column per primitive)."
            )
        if alphas and alpha.shape != alphas[0].shape:
            raise ValueError(
                f"{what}: epoch {entry.get('epoch')}: '{key}' has shape {alpha.shape}, "
                f"unlike earlier epochs ({alphas[0].shape})."
            )
        alphas.append(alpha)
    n_edges = alphas[0].shape[0]
    steps = _steps_for(n_edges, history.get("steps"), what)
    xs = [x for x, _ in records]
    epochs = [e for _, e in records]
    weights = softmax(np.stack(alphas), axis=-1)  # [epochs, edges, ops]

    # Edge-normalisation weights, NaN where an epoch lacks a usable beta.
    edge_w = np.full((len(epochs), n_edges), np.nan)
    for t, entry in enumerate(epochs):
        try:
            beta = np.asarray(entry.get(beta_key), dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if beta.shape != (n_edges,):
            continue
        edge_w[t] = edge_weights(beta, steps)
    has_beta = bool(np.isfinite(edge_w).any())

    warmup = _spans(xs, [e.get("arch_updates") is False for e in epochs])
    kept = _kept_edges(epochs[-1].get("genotype"), cell, steps)
    marker = "o" if len(xs) <= 25 else None

    rows, cols = steps, steps + 1
    fig = _new_figure(2.5 * cols, 2.0 * rows + 0.8)
    grid = fig.add_gridspec(rows, cols)
    handles: dict[str, Any] = {}
    for node in range(steps):
        for source in range(node + 2):
            e = sum(2 + i for i in range(node)) + source
            ax = fig.add_subplot(grid[node, source])
            for x0, x1 in warmup:
                handles.setdefault("no arch updates", ax.axvspan(x0, x1, color="0.9", lw=0))
            for o, op in enumerate(primitives):
                (line,) = ax.plot(xs, weights[:, e, o], color=op_color(op),
                                  linestyle=_op_linestyle(op), marker=marker, markersize=2.5,
                                  linewidth=1.3)
                handles.setdefault(op, line)
            if has_beta:
                (line,) = ax.plot(xs, edge_w[:, e], color="black", linestyle=":", linewidth=1.5)
                handles.setdefault("edge weight softmax(β)", line)
            is_kept = (node, source) in kept
            ax.set_title(f"node {node} <- state {source}" + (" *" if is_kept else ""),
                         fontsize=8, fontweight="bold" if is_kept else "normal")
            if is_kept:
                for spine in ax.spines.values():
                    spine.set_linewidth(2.0)
            ax.set_ylim(-0.02, 1.02)
            ax.tick_params(labelsize=7)
            ax.xaxis.get_major_locator().set_params(integer=True)
            if source == 0:
                ax.set_ylabel("weight", fontsize=8)
            if node == steps - 1 or source == node + 1:
                ax.set_xlabel("epoch", fontsize=8)

    _plot_decisiveness(fig, grid, steps, xs, epochs, cell, warmup)

    title = f"{'Normal' if cell == 'normal' else 'Reduction'} cell: softmax(alpha) per edge"
    subtitle = "states 0, 1 = c_{k-2}, c_{k-1}; state j >= 2 = node j-2"
    if kept:
        subtitle += "; * = edge kept in the last recorded genotype"
    fig.suptitle(f"{title}\n{subtitle}", fontsize=10)
    labels = list(handles)
    if cols - 2 >= 1 and rows >= 1:
        # Row 0 uses only the first two columns: put the shared legend in the free space.
        legend_ax = fig.add_subplot(grid[0, 2:])
        legend_ax.axis("off")
        legend_ax.legend([handles[k] for k in labels], labels, loc="center",
                         ncol=2 if len(labels) > 5 else 1, fontsize=8, frameon=False)
    else:
        fig.legend([handles[k] for k in labels], labels, loc="outside lower center",
                   ncol=min(len(labels), 4), fontsize=8, frameon=False)
    return _save_figure(fig, path)


_DECISIVENESS_LINES = (
    ("op_max_kept", "derived-op weight, kept edges", "tab:red", "-"),
    ("op_max", "largest op weight", "tab:orange", "--"),
    ("op_entropy", "op entropy (normalised)", "tab:blue", "-"),
    ("edge_kept_mass", "kept-edge mass", "tab:green", "-"),
    ("edge_entropy", "edge entropy (normalised)", "tab:green", ":"),
)


def _plot_decisiveness(fig: Any, grid: Any, steps: int, xs: Sequence[int], epochs: Sequence[dict],
                       cell: str, warmup: Sequence[tuple[float, float]]) -> None:
    """How decided the cell is per epoch (``decisiveness`` of arch_history.json), drawn in
    the free cells of the edge grid's second row; nothing for histories without it."""
    if steps < 2:
        return
    series = {}
    for key, *_ in _DECISIVENESS_LINES:
        values = [(e.get("decisiveness") or {}).get(f"{cell}/{key}") for e in epochs]
        if any(v is not None for v in values):
            series[key] = [np.nan if v is None else _number(v) for v in values]
    if not series:
        return
    ax = fig.add_subplot(grid[1, 3:] if steps + 1 > 3 else grid[1, -1])
    for x0, x1 in warmup:
        ax.axvspan(x0, x1, color="0.9", lw=0)
    for key, label, color, style in _DECISIVENESS_LINES:
        if key in series:
            ax.plot(xs, series[key], color=color, linestyle=style, marker="o", markersize=2.5,
                    linewidth=1.3, label=label)
    last = series.get("op_max_kept", [np.nan])[-1]
    ax.set_title(f"How decided (last: derived-op weight {last:.2f})", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.tick_params(labelsize=7)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch", fontsize=8)
    ax.legend(fontsize=6, frameon=False, loc="best")


# --------------------------------------------------------------------------------------------
# Loss / accuracy curves
# --------------------------------------------------------------------------------------------


def plot_curves(history: dict, path: str) -> str:
    """Plots loss and accuracy per epoch: train (solid) and validation (dashed) where logged.

    Works for both ``arch_history.json`` (search) and ``history.json`` (training): each has
    an ``epochs`` list whose entries carry ``epoch`` and a ``logs`` dict. The accuracy key is
    the first of ``accuracy``, ``acc``, ``sparse_categorical_accuracy``,
    ``categorical_accuracy`` that is logged. Search epochs without architecture updates are
    shaded. Writes `path` atomically (format from its extension) and returns it.
    """
    what = "history"
    records = _epochs(history, what)
    if not records:
        raise ValueError(f"{what}: no epochs recorded yet.")
    xs = [x for x, _ in records]
    epochs = [e for _, e in records]
    logs = [e.get("logs") if isinstance(e.get("logs"), dict) else {} for e in epochs]
    logged = set().union(*(log_.keys() for log_ in logs))
    acc_key = next((k for k in _ACCURACY_KEYS if k in logged or f"val_{k}" in logged), None)
    if "loss" not in logged and "val_loss" not in logged and acc_key is None:
        raise ValueError(
            f"{what}: no epoch logs 'loss', 'val_loss' or an accuracy "
            f"({', '.join(_ACCURACY_KEYS)}); logged keys: {sorted(logged)}."
        )
    warmup = _spans(xs, [e.get("arch_updates") is False for e in epochs])
    marker = "o" if len(xs) <= 25 else None

    fig = _new_figure(10.0, 4.0)
    panels = (("loss", "loss"), (acc_key, "accuracy"))
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for x0, x1 in warmup:
            ax.axvspan(x0, x1, color="0.92", lw=0,
                       label="no arch updates" if (x0, x1) == warmup[0] else None)
        drawn = False
        if key is not None:
            for prefix, name, style, color in (("", "train", "-", "C0"), ("val_", "val", "--", "C1")):
                ys = np.array([_number(log_.get(prefix + key)) for log_ in logs])
                if np.isfinite(ys).any():
                    ax.plot(xs, ys, linestyle=style, color=color, marker=marker, markersize=3,
                            label=f"{name} {key}")
                    drawn = True
        if not drawn:
            ax.text(0.5, 0.5, f"no {label} logged", ha="center", va="center",
                    transform=ax.transAxes, color="0.5")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, alpha=0.3)
        if drawn or warmup:
            ax.legend(fontsize=8)
    return _save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# Whole run directory
# --------------------------------------------------------------------------------------------


def _load_json(path: str) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read {path!r}: {err}") from err


def _load_genotype(path: str, primitives: Sequence[str] | None) -> Genotype:
    """Loads ``genotype.json`` validating its structure; op names are checked against
    `primitives` if given (from ``arch_history.json``), else only for being non-``none``
    strings, so plotting does not depend on the op registry."""
    data = _load_json(path)
    if primitives is None:
        ops: list[str] = []
        if isinstance(data, dict):
            for cell in ("normal", "reduce"):
                pairs = data.get(cell)
                for pair in pairs if isinstance(pairs, list) else []:
                    if isinstance(pair, list | tuple) and pair and isinstance(pair[0], str):
                        ops.append(pair[0])
        primitives = sorted(set(ops))
    try:
        return Genotype.from_dict(data, source=path, primitives=primitives)
    except GenotypeError:
        raise
    except Exception as err:  # Defensive: a malformed file must give a readable error.
        raise GenotypeError(f"{path}: malformed genotype ({err}).") from err


def plot_run(run_dir: str, cells: bool = True) -> list[str]:
    """Writes every plot the files in `run_dir` allow into ``run_dir/plots/``.

    * ``genotype.json`` -> ``normal.png``, ``reduce.png`` (cell graphs; needs Graphviz
      ``dot``; skipped when `cells` is False);
    * ``arch_history.json`` -> ``alpha_normal.png``, ``alpha_reduce.png``;
    * ``history.json`` (preferred) or else ``arch_history.json`` -> ``curves.png``.

    A search whose ``arch_history.json`` names a fixed ``reduction`` (not ``"searched"``)
    gets no ``reduce.png`` and no ``alpha_reduce.png``: its reduce cell was not searched.

    A history with no epochs yet is skipped with a warning. Each file is written under a
    temporary name and renamed into place. Returns the paths written, in the order above.
    Raises `FileNotFoundError` if `run_dir` is missing or holds none of the files above,
    `RuntimeError` if a cell graph is wanted but ``dot`` is missing (before writing
    anything), and `ValueError` (`GenotypeError` included) for malformed files.
    """
    run_dir = os.fspath(run_dir)
    looked_for = (GENOTYPE_FILE, ARCH_HISTORY_FILE, HISTORY_FILE)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(
            f"Run directory {run_dir!r} does not exist (looked for {', '.join(looked_for)})."
        )
    found = {name: os.path.join(run_dir, name) for name in looked_for
             if os.path.isfile(os.path.join(run_dir, name))}
    if not found:
        raise FileNotFoundError(
            f"Run directory {run_dir!r} holds none of {', '.join(looked_for)}; nothing to plot."
        )
    draw_cells = cells and GENOTYPE_FILE in found
    if draw_cells and shutil.which("dot") is None:
        raise RuntimeError(f"{DOT_MISSING_MESSAGE}; or pass cells=False to skip the cell graphs.")

    out_dir = os.path.join(run_dir, PLOTS_DIR)
    os.makedirs(out_dir, exist_ok=True)
    written: list[str] = []

    arch_history = _load_json(found[ARCH_HISTORY_FILE]) if ARCH_HISTORY_FILE in found else None
    primitives = None
    if isinstance(arch_history, dict) and isinstance(arch_history.get("primitives"), list):
        primitives = arch_history["primitives"]

    fixed_reduction = isinstance(arch_history, dict) and arch_history.get(
        "reduction", "searched") != "searched"
    cell_types = ("normal",) if fixed_reduction else ("normal", "reduce")
    if draw_cells:
        genotype = _load_genotype(found[GENOTYPE_FILE], primitives)
        for name, reduction in (("normal", False), ("reduce", True))[:len(cell_types)]:
            written.append(plot_cell(genotype, reduction, os.path.join(out_dir, name), "png"))

    if arch_history is not None:
        if _epochs(arch_history, found[ARCH_HISTORY_FILE]):
            for cell in cell_types:
                written.append(plot_alpha_evolution(
                    arch_history, os.path.join(out_dir, f"alpha_{cell}.png"), cell=cell))
        else:
            log.warning("%s records no epochs yet; skipping the alpha plots.",
                        found[ARCH_HISTORY_FILE])

    curves_source = HISTORY_FILE if HISTORY_FILE in found else ARCH_HISTORY_FILE
    if curves_source in found:
        history = arch_history if curves_source == ARCH_HISTORY_FILE else _load_json(found[curves_source])
        if _epochs(history, found[curves_source]):
            written.append(plot_curves(history, os.path.join(out_dir, "curves.png")))
        else:
            log.warning("%s records no epochs yet; skipping the curves.", found[curves_source])
    return written
