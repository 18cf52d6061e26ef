"""Search callbacks: architecture warm-up, the architecture's figures in the epoch logs,
per-epoch genotype history, early stopping."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import tensorflow as tf

from ubnas_tf.genotype import Genotype, edge_weights, softmax
from ubnas_tf.io_utils import atomic_write_json, read_json
from ubnas_tf.ops import get_primitive, parameter_free
from ubnas_tf.rundir import NonFiniteError
from ubnas_tf.search.decisiveness import architecture_figures

__all__ = ["ArchitectureFigures", "ArchitectureWarmup", "GenotypeHistory", "GenotypeEarlyStopping",
           "parameter_free_share"]


class ArchitectureWarmup(tf.keras.callbacks.Callback):
    """Keeps alpha/beta frozen for the first `warmup_epochs` epochs, then enables their step."""

    def __init__(self, warmup_epochs: int):
        super().__init__()
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
        self.warmup_epochs = int(warmup_epochs)

    def on_epoch_begin(self, epoch, logs=None):
        self.model.set_arch_updates(epoch >= self.warmup_epochs)


class ArchitectureFigures(tf.keras.callbacks.Callback):
    """Adds how decided the architecture is and, with a budget, what it costs to each
    epoch's logs: the mean figures of `SearchNetwork.decisiveness` (``op_max_kept``,
    ``op_max``, ``op_entropy``, ``edge_max``, ``edge_entropy``, ``edge_kept_mass``) and
    ``expected_mops`` (``expected_latency_ms`` with a latency table).

    They depend on alpha/beta alone, so once per epoch is enough: the search step logs its
    losses and accuracies only, which keeps its progress line short. The callbacks listed
    after this one (`GenotypeHistory` records the figures with the epoch, TensorBoard writes
    them) and fit's History see them in the logs, as Keras' `ReduceLROnPlateau` adds ``lr``.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs.update({name: float(value) for name, value in self.model.decisiveness().items()})
        expected = self.model.expected_cost()
        if expected is not None:
            logs[f"expected_{self.model.arch_objective.cost_table.key}"] = float(expected)


def _to_float(value) -> float:
    return float(np.asarray(value))


class GenotypeHistory(tf.keras.callbacks.Callback):
    """Records, after every epoch, the derived genotype, raw alpha/beta, how decided they are
    and the epoch's logs.

    The record is `path` (``arch_history.json``), rewritten atomically each epoch:
    ``{"primitives": [...], "steps": 4, "epochs": [{"epoch", "arch_updates", "genotype",
    "alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce", "decisiveness",
    "expected_cost", "cost_unit", "logs", "time"}]}``; ``decisiveness`` holds the figures of
    `ubnas_tf.search.decisiveness.architecture_figures` (per cell type and their mean),
    ``expected_cost`` the expected cost when the search has a budget (else null), in
    ``cost_unit`` (``"MOPs"``, or ``"ms"`` with a latency table).
    On resume, epochs at or after the resumed `initial_epoch` are dropped first.

    The file also names the supernet's ``reduction`` (`ModuleConfig.reduction`). When it is
    a fixed block, the reduce cell is not searched: ``alpha_reduce`` and ``beta_reduce`` are
    null, the figures are the normal cell's, and the printed genotype names the block
    instead of the reduce cell's placeholder.
    """

    def __init__(self, path: str, verbose: bool = True):
        super().__init__()
        self.path = path
        self.verbose = verbose
        self.records: list[dict] = []

    def load(self, before_epoch: int) -> None:
        if os.path.exists(self.path):
            self.records = [r for r in read_json(self.path)["epochs"] if r["epoch"] < before_epoch]

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        for name, value in model.arch_values().items():
            if not np.all(np.isfinite(value)):
                raise NonFiniteError(
                    f"Architecture parameter {name} holds NaN/Inf at the end of epoch "
                    f"{epoch + 1}; the run stops and the last good checkpoint is kept."
                )
        genotype = model.genotype()
        values = model.arch_values()
        searched = _searched_reduction(model)
        figures = architecture_figures(values["alpha_normal"], values["beta_normal"],
                                       values["alpha_reduce"], values["beta_reduce"],
                                       model.primitives, model.steps,
                                       searched_reduction=searched)
        expected = model.expected_cost()
        record = {
            "epoch": int(epoch),
            "arch_updates": bool(model.arch_updates_enabled),
            "genotype": genotype.to_dict(),
            **{k: None if not searched and k.endswith("_reduce") else v.tolist()
               for k, v in values.items()},
            "decisiveness": figures,
            "expected_cost": None if expected is None else float(expected),
            "cost_unit": None if expected is None else model.arch_objective.cost_table.unit,
            "logs": {k: _to_float(v) for k, v in (logs or {}).items()},
            "time": time.time(),
        }
        self.records = [r for r in self.records if r["epoch"] < epoch] + [record]
        reduction = getattr(getattr(model, "module_config", None), "reduction", "searched")
        atomic_write_json(self.path, {"primitives": list(model.primitives), "steps": model.steps,
                                      "reduction": reduction, "epochs": self.records})
        if self.verbose:
            cost = "" if expected is None else (
                f", expected {float(expected):.3f} {model.arch_objective.cost_table.unit}")
            text = model.describe_genotype(genotype) if hasattr(model, "describe_genotype") \
                else str(genotype)
            per_cell = (f"normal {figures['normal/op_max_kept']:.3f}, reduce "
                        f"{figures['reduce/op_max_kept']:.3f}" if searched else
                        "normal cell only; the reduction is fixed")
            print(f"\nEpoch {epoch + 1} genotype:\n{text}\n"
                  f"Decided: derived-op weight on kept edges {figures['op_max_kept']:.3f} "
                  f"({per_cell}), op entropy {figures['op_entropy']:.3f}, "
                  f"kept-edge mass {figures['edge_kept_mass']:.3f}, edge entropy "
                  f"{figures['edge_entropy']:.3f}{cost}", flush=True)


def parameter_free_share(alpha: np.ndarray, beta: np.ndarray, primitives, steps: int = 4) -> float:
    """Ratio of parameter-free to binary-conv op weight in a cell, edge-normalised.

    ``sum_e w_e sum_{o param-free} p_{e,o} / sum_e w_e sum_{o binary} p_{e,o}`` with
    \\(p = \\mathrm{softmax}(\\alpha_e)\\) and \\(w\\) the per-node softmax of beta.
    """
    p = softmax(alpha, axis=-1)
    w = edge_weights(beta, steps)
    free = [primitives.index(n) for n in parameter_free(primitives)]
    binary = [i for i, n in enumerate(primitives) if get_primitive(n).binary]
    if not free or not binary:
        return 0.0
    return float((w * p[:, free].sum(-1)).sum() / (w * p[:, binary].sum(-1)).sum())


def _searched_reduction(model) -> bool:
    """Whether `model` searches its reduction cell (a supernet without the notion does)."""
    return bool(getattr(model, "searched_reduction", True))


def _genotype_to_dict(genotype: Genotype | None) -> dict | None:
    return genotype.to_dict() if genotype is not None else None


def _genotype_from_dict(data: dict | None) -> Genotype | None:
    return Genotype.from_dict(data, source="early-stopping checkpoint") if data else None


class GenotypeEarlyStopping(tf.keras.callbacks.Callback, tf.train.experimental.PythonState):
    """Stops the search when the architecture has settled, or when it collapses.

    Only epochs with architecture updates (after warm-up) count. At the end of each:

    * **stable and decided**: the derived genotype equals the previous epoch's for
      `patience` consecutive epochs *and* the architecture is decided: the mean weight of
      the derived op on the kept edges (``op_max_kept`` of
      `ubnas_tf.search.decisiveness`) is at least `decided_threshold`. Then the search stops
      (``stop_reason="genotype_stable"``). An unchanged but undecided genotype is an argmax
      over near-ties, not a result, so it does not stop the search.
    * **collapse** (DARTS' known failure, parameter-free ops crowding out convs): the
      search stops (``stop_reason="collapse"``) when both hold for the normal cell:
      (a) the derived cell keeps more than `max_parameter_free` parameter-free ops
      (skip/pool; DARTS+ uses 2), and (b) the edge-normalised op weight of parameter-free
      ops relative to binary convs (`parameter_free_share`) exceeds `collapse_factor` times
      its value at uniform alphas (``n_free / n_binary``), so a random tie-break at
      near-uniform alphas cannot trigger it. The genotype kept is then the last one before
      the collapse (``final_genotype``). With ``collapse_guard=False`` (a search with a
      budget, whose two-sided cost term sets the share of cheap ops and keeps it from
      collapsing below the budget) this rule is off.

    `stop_figures` holds the decisiveness figures of the epoch that stopped the search.

    The stopper is a `tf.train.experimental.PythonState`: attached to the run's
    `tf.train.Checkpoint` (and listed before the callback that saves it), its counters, the
    epoch they belong to and any stop are written into every epoch's checkpoint and restored
    with the weights. A resumed run that falls back to an older checkpoint therefore gets
    that epoch's counters, with no record of them kept anywhere else. They go in as JSON
    (genotypes and figures are Python values), serialised when the checkpoint is written.
    """

    def __init__(self, patience: int, max_epochs: int, max_parameter_free: int = 2,
                 collapse_factor: float = 2.0, decided_threshold: float = 0.6,
                 collapse_guard: bool = True, verbose: bool = True):
        super().__init__()
        if patience < 0:
            raise ValueError(f"patience must be >= 0 (0: never stop on a stable genotype), "
                             f"got {patience}.")
        if not 0.0 <= decided_threshold <= 1.0:
            raise ValueError(f"decided_threshold must be in [0, 1], got {decided_threshold}.")
        self.decided_threshold = float(decided_threshold)
        self.collapse_guard = bool(collapse_guard)
        self.stop_figures: dict | None = None
        self.stop_message: str | None = None
        self.figures: dict | None = None
        self.patience = int(patience)
        self.max_epochs = int(max_epochs)
        self.max_parameter_free = int(max_parameter_free)
        self.collapse_factor = float(collapse_factor)
        self.verbose = verbose
        self.previous: Genotype | None = None
        self.last_good: Genotype | None = None
        self.unchanged = 0
        self.stopped_epoch: int | None = None
        self.stop_reason = "max_epochs"
        self.final_genotype: Genotype | None = None
        self.last_epoch: int | None = None

    def serialize(self) -> str:
        """The state a resumed run needs, as JSON (`tf.train.experimental.PythonState`)."""
        return json.dumps({
            "last_epoch": self.last_epoch,
            "previous": _genotype_to_dict(self.previous),
            "last_good": _genotype_to_dict(self.last_good),
            "unchanged": self.unchanged,
            "stopped_epoch": self.stopped_epoch,
            "stop_reason": self.stop_reason,
            "final_genotype": _genotype_to_dict(self.final_genotype),
            "stop_figures": self.stop_figures,
            "stop_message": self.stop_message,
        })

    def deserialize(self, string_value: bytes | str) -> None:
        """Takes the counters of a restored checkpoint (`tf.train.experimental.PythonState`)."""
        state = json.loads(string_value)
        self.last_epoch = state["last_epoch"]
        self.previous = _genotype_from_dict(state["previous"])
        self.last_good = _genotype_from_dict(state["last_good"])
        self.unchanged = int(state["unchanged"])
        self.stopped_epoch = state["stopped_epoch"]
        self.stop_reason = state["stop_reason"]
        self.final_genotype = _genotype_from_dict(state["final_genotype"])
        self.stop_figures = state["stop_figures"]
        self.stop_message = state["stop_message"]

    def _collapsed(self, genotype: Genotype) -> bool:
        model = self.model
        prims = model.primitives
        n_free = len(parameter_free([op for op, _ in genotype.normal]))
        if n_free <= self.max_parameter_free:
            return False
        free = parameter_free(prims)
        binary = [n for n in prims if get_primitive(n).binary]
        if not free or not binary:
            return False
        v = model.arch_values()
        share = parameter_free_share(v["alpha_normal"], v["beta_normal"], prims, model.steps)
        return share > self.collapse_factor * len(free) / len(binary)

    def on_epoch_end(self, epoch, logs=None):
        self.last_epoch = int(epoch)
        model = self.model
        genotype = model.genotype()
        self.final_genotype = genotype
        v = model.arch_values()
        self.figures = architecture_figures(v["alpha_normal"], v["beta_normal"], v["alpha_reduce"],
                                            v["beta_reduce"], model.primitives, model.steps,
                                            searched_reduction=_searched_reduction(model))
        if not model.arch_updates_enabled:
            return
        if self.collapse_guard and self._collapsed(genotype):
            self.stop_reason = "collapse"
            self.final_genotype = self.last_good or genotype
            self._stop(epoch, "parameter-free ops are crowding out the binary convs")
            return
        self.last_good = genotype
        self.unchanged = self.unchanged + 1 if genotype == self.previous else 0
        self.previous = genotype
        if not self.patience:
            return
        decided = self.figures["op_max_kept"] >= self.decided_threshold
        if self.unchanged >= self.patience and decided:
            self.stop_reason = "genotype_stable"
            self._stop(epoch, f"genotype unchanged for {self.unchanged} epochs and decided "
                              f"(derived-op weight {self.figures['op_max_kept']:.3f} >= "
                              f"{self.decided_threshold})")
        elif self.unchanged >= self.patience and self.verbose:
            print(f"\nGenotype unchanged for {self.unchanged} epochs but undecided (derived-op "
                  f"weight {self.figures['op_max_kept']:.3f} < {self.decided_threshold}); "
                  "the search goes on.", flush=True)

    def _stop(self, epoch: int, why: str) -> None:
        self.stopped_epoch = int(epoch)
        self.stop_figures = self.figures
        self.stop_message = why
        self.model.stop_training = True
        if self.verbose:
            saved = self.max_epochs - (epoch + 1)
            print(f"\nSearch stopped after epoch {epoch + 1}: {why}; {saved} epochs saved.",
                  flush=True)

    @property
    def epochs_run(self) -> int:
        return 0 if self.last_epoch is None else self.last_epoch + 1

    @property
    def epochs_saved(self) -> int:
        return max(0, self.max_epochs - self.epochs_run)
