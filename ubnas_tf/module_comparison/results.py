"""A comparison's results: what a trial records in keras-tuner's trial record, read back ranked.

keras-tuner keeps every trial in its oracle (saved as ``trial_*/trial.json``); the comparison
keeps nothing beside it. A finished trial's record holds:

* its hyperparameters: the module structure and the comparison's settings
  (`ubnas_tf.module_comparison.hypermodel`);
* the objective ``val_accuracy`` (the best epoch's; keras-tuner's score of the trial);
* the proxy network's cost (the totals of `ubnas_tf.cost.model_cost`) and the trial's wall
  time, as scalar metrics (`trial_metrics`, what ``run_trial`` returns);
* every epoch's logs as a series ``<log>_per_epoch``, one step per epoch (`record_epochs`).

`rank_trials` reads them back into `ModuleResult`s, best first; `results_table` prints them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras_tuner
from keras_tuner.engine.metrics_tracking import infer_metric_direction

from ubnas_tf.modules import ModuleConfig
from ubnas_tf.tables import text_table

__all__ = ["COST_METRICS", "OBJECTIVE", "ModuleResult", "rank_trials", "record_epochs",
           "results_table", "trial_metrics"]

OBJECTIVE = "val_accuracy"
# The totals of `ubnas_tf.cost.ModelCost`; counts come back from the record as integers.
COST_METRICS = ("binary_params", "real_params", "total_params", "memory_bits", "memory_kb",
                "float32_memory_kb", "bops", "flops", "ops")
_COUNTS = frozenset({"binary_params", "real_params", "total_params", "memory_bits", "bops",
                     "flops"})
WALL_TIME = "wall_time_s"
PER_EPOCH = "_per_epoch"


def trial_metrics(history: Mapping[str, Sequence[float]], cost: Mapping[str, Any],
                  wall_time_s: float) -> dict[str, float]:
    """The scalar metrics of a finished trial, as ``run_trial`` returns them to keras-tuner.

    The objective is the best epoch's validation accuracy (what keras-tuner scores a
    ``History`` by); a dict rather than the ``History`` itself, so that the cost goes into
    the same record.
    """
    if not history.get(OBJECTIVE):
        raise ValueError(f"The trial logged no {OBJECTIVE!r} (logs: {sorted(history)}).")
    return {OBJECTIVE: max(float(v) for v in history[OBJECTIVE]),
            **{name: float(cost[name]) for name in COST_METRICS},
            WALL_TIME: round(float(wall_time_s), 2)}


def record_epochs(metrics, history: Mapping[str, Sequence[float]]) -> None:
    """Adds every log of ``fit`` to a trial's metrics as a series, one step per epoch.

    `metrics` is the oracle's record of the trial (``oracle.get_trial(trial_id).metrics``);
    keras-tuner saves it when the trial's result is reported. The series are named
    ``<log>_per_epoch``: the objective's own name holds only the score.
    """
    for log, values in history.items():
        name = log + PER_EPOCH
        if not metrics.exists(name):
            metrics.register(name, direction=infer_metric_direction(log) or "min")
        for epoch, value in enumerate(values):
            metrics.update(name, float(value), step=epoch)


@dataclasses.dataclass
class ModuleResult:
    """One finished trial of a comparison, as ranked in comparison.json."""

    rank: int
    trial_id: str
    name: str
    config: dict[str, Any]
    val_accuracy: float
    cost: dict[str, Any]
    val_accuracy_per_epoch: list[float]
    wall_time_s: float

    @property
    def params(self) -> int:
        return int(self.cost["total_params"])

    @property
    def ops(self) -> float:
        return float(self.cost["ops"])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_trial(cls, trial: keras_tuner.engine.trial.Trial, config: ModuleConfig,
                   rank: int = 0) -> ModuleResult:
        """The result of a completed trial, from its record (see the module docstring)."""
        metrics = trial.metrics
        cost = {}
        for name in COST_METRICS:
            value = metrics.get_last_value(name)
            cost[name] = int(round(value)) if name in _COUNTS else float(value)
        return cls(rank=rank, trial_id=trial.trial_id, name=config.name,
                   config=config.to_dict(), val_accuracy=float(trial.score), cost=cost,
                   val_accuracy_per_epoch=[float(obs.mean()) for obs in
                                           metrics.get_history(OBJECTIVE + PER_EPOCH)],
                   wall_time_s=float(metrics.get_last_value(WALL_TIME)))


def rank_trials(
    trials: Mapping[str, keras_tuner.engine.trial.Trial],
    module_config: Callable[[keras_tuner.HyperParameters], ModuleConfig],
) -> tuple[list[ModuleResult], list[dict[str, Any]]]:
    """The completed trials ranked best first, and the others (failed or unfinished).

    `module_config` maps a trial's hyperparameters to its structure
    (`ModuleHyperModel.module_config`). Ranking: best validation accuracy first; ties go to
    the cheaper structure (OPs), then to the earlier trial (the grid's first trial is the
    first variant listed, by default `universal`).
    """
    results, failed = [], []
    for trial_id, trial in sorted(trials.items()):
        config = module_config(trial.hyperparameters.copy())
        if trial.status != "COMPLETED" or trial.score is None:
            failed.append({"trial_id": trial_id, "name": config.name, "status": trial.status,
                           "message": trial.message})
            continue
        results.append(ModuleResult.from_trial(trial, config))
    results.sort(key=lambda r: (-r.val_accuracy, r.ops, r.trial_id))
    for i, r in enumerate(results):
        r.rank = i + 1
    return results, failed


def results_table(results: Sequence[ModuleResult]) -> str:
    """A plain-text table of ranked results."""
    header = ("structure", "rank", "val_acc", "params", "binary", "real", "KB", "OPs (M)", "time s")
    rows = [
        (r.name, str(r.rank), f"{r.val_accuracy:.4f}", str(r.cost["total_params"]),
         str(r.cost["binary_params"]), str(r.cost["real_params"]), f"{r.cost['memory_kb']:.1f}",
         f"{r.ops / 1e6:.2f}", f"{r.wall_time_s:.0f}")
        for r in results
    ]
    return text_table(header, rows)
