r"""A comparison's results: what a trial records in keras-tuner's trial record, read back ranked.

Every structure is trained \\(n\\) times (``seeds``; keras-tuner's ``executions_per_trial``),
execution \\(i\\) with its own seed \\(s_0 + i\\) for the weight initialisation and the data
order. Execution \\(i\\) scores \\(a_i\\), its best epoch's validation accuracy. A trial is
scored by the mean \\(\bar a = \frac1n \sum_i a_i\\) (the objective keras-tuner ranks by, as
its own multi-execution tuners average the executions) and reported with the sample
standard deviation \\(s = \sqrt{\frac{1}{n-1} \sum_i (a_i - \bar a)^2}\\) (ddof = 1; none
for \\(n = 1\\)). Wall time per run is aggregated the same way. OPs and the other cost
figures do not depend on the seed.

keras-tuner keeps every trial in its oracle (saved as ``trial_*/trial.json``). A finished
trial's record holds:

* its hyperparameters: the module structure and the comparison's settings
  (`ubnas_tf.module_comparison.hypermodel`), the number of seeds among them;
* the objective ``val_accuracy_mean`` (keras-tuner's score of the trial), and
  ``val_accuracy_std``, ``executions``, ``wall_time_s`` (mean per run), ``wall_time_s_std``;
* the proxy network's cost (the totals of `ubnas_tf.cost.model_cost`) as scalar metrics;
* per execution \\(i\\), as series with step \\(i\\): ``execution_seed``,
  ``execution_val_accuracy``, ``execution_wall_time_s`` (`record_executions`);
* every epoch's logs as a series ``<log>_per_epoch``, one step per epoch and one value per
  execution at each step, in execution order (how keras-tuner itself records the
  executions of a trial).

Beside the record, each execution is saved in the trial's directory as soon as it ends
(``trial_*/execution_<i>.json``, `Execution`), so that a trial interrupted after some of its
seeds resumes with the others.

`rank_trials` reads the records back into `ModuleResult`\ s, best first; `results_table`
prints them, `results_csv` and `results_markdown` write them, and `decision` says whether
the ranking is decided by more than the seed-to-seed spread.

Structures are compared like with like: only those whose OPs are within
\\(\pm\\)`OPS_TOLERANCE` (15 %) of the reference's (the default structure, `universal`,
when it is among the results) compete for first place. A structure of other OPs (real
cell preprocessing costs several times the OPs) is ranked after them and reported, not
chosen: more operations buying more accuracy says nothing about the structure.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras_tuner
from keras_tuner.engine.metrics_tracking import infer_metric_direction

from ubnas_tf.modules import ModuleConfig
from ubnas_tf.tables import markdown_table, mean_std, text_table

__all__ = ["COST_METRICS", "OBJECTIVE", "OPS_TOLERANCE", "Execution", "ModuleResult", "decision",
           "mean_std", "rank_trials", "record_executions", "results_csv", "results_markdown",
           "results_table", "trial_metrics"]

OBJECTIVE = "val_accuracy_mean"
# What one run logs and is scored by (the best epoch's value).
RUN_OBJECTIVE = "val_accuracy"
# The totals of `ubnas_tf.cost.ModelCost`; counts come back from the record as integers.
COST_METRICS = ("binary_params", "real_params", "total_params", "memory_bits", "memory_kb",
                "float32_memory_kb", "bops", "flops", "ops")
_COUNTS = frozenset({"binary_params", "real_params", "total_params", "memory_bits", "bops",
                     "flops"})
WALL_TIME = "wall_time_s"
PER_EPOCH = "_per_epoch"
EXECUTION_SEED = "execution_seed"
EXECUTION_SCORE = "execution_val_accuracy"
EXECUTION_TIME = "execution_wall_time_s"
# Structures compete only within this fraction of the reference's OPs (the brief's equal-OPs rule).
OPS_TOLERANCE = 0.15


@dataclasses.dataclass
class Execution:
    """One training run of a structure, with one seed (a trial holds `seeds` of them)."""

    seed: int | None
    history: dict[str, list[float]]
    cost: dict[str, float]
    wall_time_s: float

    @property
    def val_accuracy(self) -> float:
        """The best epoch's validation accuracy (the run's score)."""
        values = self.history.get(RUN_OBJECTIVE)
        if not values:
            raise ValueError(f"The run logged no {RUN_OBJECTIVE!r} (logs: {sorted(self.history)}).")
        return max(float(v) for v in values)

    @classmethod
    def from_fit(cls, seed: int | None, history: Mapping[str, Sequence[float]],
                 cost: Mapping[str, Any], wall_time_s: float) -> Execution:
        """From ``fit``'s ``History.history`` and `ubnas_tf.cost` totals."""
        execution = cls(seed=None if seed is None else int(seed),
                        history={k: [float(v) for v in vs] for k, vs in history.items()},
                        cost={name: float(cost[name]) for name in COST_METRICS},
                        wall_time_s=round(float(wall_time_s), 2))
        execution.val_accuracy  # noqa: B018  (raises if the run logged no validation accuracy)
        return execution

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Execution:
        return cls(seed=data["seed"], history={k: list(v) for k, v in data["history"].items()},
                   cost=dict(data["cost"]), wall_time_s=float(data["wall_time_s"]))


def trial_metrics(executions: Sequence[Execution]) -> dict[str, float]:
    """The scalar metrics of a finished trial, as ``run_trial`` returns them to keras-tuner.

    The objective is the mean over the executions of each one's best validation accuracy;
    a dict rather than the ``History`` objects, so that the spread and the cost go into
    the same record. The cost is the first execution's (it does not depend on the seed).
    """
    if not executions:
        raise ValueError("A trial needs at least one execution.")
    acc_mean, acc_std = mean_std([e.val_accuracy for e in executions])
    time_mean, time_std = mean_std([e.wall_time_s for e in executions])
    metrics = {OBJECTIVE: acc_mean, "executions": float(len(executions)),
               **{name: float(executions[0].cost[name]) for name in COST_METRICS},
               WALL_TIME: round(time_mean, 2)}
    if acc_std is not None:
        metrics["val_accuracy_std"] = acc_std
        metrics[WALL_TIME + "_std"] = round(time_std, 2)
    return metrics


def _register(metrics, name: str, direction: str) -> None:
    if not metrics.exists(name):
        metrics.register(name, direction=direction)


def record_executions(metrics, executions: Sequence[Execution]) -> None:
    """Adds the executions to a trial's metrics: per-execution series, per-epoch logs.

    `metrics` is the oracle's record of the trial (``oracle.get_trial(trial_id).metrics``);
    keras-tuner saves it when the trial's result is reported. ``execution_seed``,
    ``execution_val_accuracy`` and ``execution_wall_time_s`` have one step per execution;
    ``<log>_per_epoch`` one step per epoch holding one value per execution (keras-tuner's
    own way of recording several executions), named apart from the objective, which holds
    only the score.
    """
    _register(metrics, EXECUTION_SEED, "max")
    _register(metrics, EXECUTION_SCORE, "max")
    _register(metrics, EXECUTION_TIME, "min")
    for i, execution in enumerate(executions):
        metrics.update(EXECUTION_SEED, float(-1 if execution.seed is None else execution.seed),
                       step=i)
        metrics.update(EXECUTION_SCORE, execution.val_accuracy, step=i)
        metrics.update(EXECUTION_TIME, execution.wall_time_s, step=i)
        for log, values in execution.history.items():
            name = log + PER_EPOCH
            _register(metrics, name, infer_metric_direction(log) or "min")
            for epoch, value in enumerate(values):
                metrics.update(name, float(value), step=epoch)


@dataclasses.dataclass
class ModuleResult:
    """One finished trial of a comparison (all its seeds), as ranked in comparison.json.

    Attributes:
        val_accuracy_mean, val_accuracy_std: over the executions of each one's best-epoch
            validation accuracy (`mean_std`; std None for one execution).
        n: the number of executions (seeds); `seeds` and `val_accuracies` per execution.
        cost: the proxy network's cost totals (the same for every seed).
        wall_time_s_mean, wall_time_s_std: wall time of one run (build + fit), over the
            executions; `wall_times_s` per execution.
        val_accuracy_per_epoch: per execution, the validation accuracy of every epoch.
        ops_ratio: OPs over the reference structure's (`rank_trials`); equal_ops: within
            `OPS_TOLERANCE` of them, so competing for first place.
    """

    rank: int
    trial_id: str
    name: str
    config: dict[str, Any]
    n: int
    seeds: list[int | None]
    val_accuracy_mean: float
    val_accuracy_std: float | None
    val_accuracies: list[float]
    cost: dict[str, Any]
    wall_time_s_mean: float
    wall_time_s_std: float | None
    wall_times_s: list[float]
    val_accuracy_per_epoch: list[list[float]]
    ops_ratio: float = 1.0
    equal_ops: bool = True

    @property
    def val_accuracy(self) -> float:
        """The trial's score: the mean over the seeds."""
        return self.val_accuracy_mean

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
        """The result of a completed trial, from its record (see the module docstring).

        Mean and standard deviation are recomputed from the per-execution series, so they
        are those of the recorded runs whatever the scalar metrics say.
        """
        metrics = trial.metrics
        cost = {}
        for name in COST_METRICS:
            value = metrics.get_last_value(name)
            cost[name] = int(round(value)) if name in _COUNTS else float(value)

        def series(name: str) -> list[float]:
            return [float(obs.mean()) for obs in metrics.get_history(name)]

        scores, times = series(EXECUTION_SCORE), series(EXECUTION_TIME)
        seeds = [None if s < 0 else int(round(s)) for s in series(EXECUTION_SEED)]
        n = len(scores)
        per_epoch = [[] for _ in range(n)]
        for obs in metrics.get_history(RUN_OBJECTIVE + PER_EPOCH):
            for i, value in enumerate(obs.value[:n]):
                per_epoch[i].append(float(value))
        acc_mean, acc_std = mean_std(scores)
        time_mean, time_std = mean_std(times)
        return cls(rank=rank, trial_id=trial.trial_id, name=config.name,
                   config=config.to_dict(), n=n, seeds=seeds, val_accuracy_mean=acc_mean,
                   val_accuracy_std=acc_std, val_accuracies=scores, cost=cost,
                   wall_time_s_mean=round(time_mean, 2),
                   wall_time_s_std=None if time_std is None else round(time_std, 2),
                   wall_times_s=times, val_accuracy_per_epoch=per_epoch)


def _is_default_structure(config: Mapping[str, Any]) -> bool:
    default = ModuleConfig().to_dict()
    return all(config.get(k) == v for k, v in default.items() if k != "name")


def rank_trials(
    trials: Mapping[str, keras_tuner.engine.trial.Trial],
    module_config: Callable[[keras_tuner.HyperParameters], ModuleConfig],
    ops_tolerance: float = OPS_TOLERANCE,
) -> tuple[list[ModuleResult], list[dict[str, Any]]]:
    r"""The completed trials ranked best first, and the others (failed or unfinished; only
    the latest trial of a structure, and none of a structure that has completed since).

    `module_config` maps a trial's hyperparameters to its structure
    (`ModuleHyperModel.module_config`). The reference is the default structure
    (`ModuleConfig()`, `universal`) if it finished, else the earliest trial. A result with
    \\(|\mathrm{OPs}/\mathrm{OPs}_{ref} - 1| \le\\) `ops_tolerance` is at equal OPs.
    Ranking: results at equal OPs first, then the others; within each group best mean
    validation accuracy first, ties to the cheaper structure (OPs), then to the earlier
    trial. So the first result is the best structure at the reference's cost.
    """
    def completed(trial) -> bool:
        return trial.status == "COMPLETED" and trial.score is not None

    done = [t.hyperparameters.values for t in trials.values() if completed(t)]
    results, unfinished = [], {}
    for trial_id, trial in sorted(trials.items()):
        config = module_config(trial.hyperparameters.copy())
        if not completed(trial):
            if trial.hyperparameters.values not in done:  # a later retry replaces it
                unfinished[json.dumps(trial.hyperparameters.values, sort_keys=True)] = {
                    "trial_id": trial_id, "name": config.name, "status": trial.status,
                    "message": trial.message}
            continue
        results.append(ModuleResult.from_trial(trial, config))
    failed = list(unfinished.values())
    if results:
        reference = next((r for r in results if _is_default_structure(r.config)), results[0])
        for r in results:
            r.ops_ratio = r.ops / reference.ops if reference.ops > 0 else 1.0
            r.equal_ops = abs(r.ops_ratio - 1.0) <= ops_tolerance + 1e-12
    results.sort(key=lambda r: (not r.equal_ops, -r.val_accuracy_mean, r.ops, r.trial_id))
    for i, r in enumerate(results):
        r.rank = i + 1
    return results, failed


def decision(results: Sequence[ModuleResult]) -> dict[str, Any] | None:
    r"""Whether the comparison decides: among the structures at equal OPs
    (`ModuleResult.equal_ops`), the best one's lead over the second,
    \\(\bar a_1 - \bar a_2\\), against the larger of their standard deviations,
    \\(\max(s_1, s_2)\\).

    A lead within one seed-to-seed standard deviation is what reseeding alone moves a
    structure by, so the order of the two is not established; a larger lead is (loosely:
    not a significance test, but a difference the proxy resolves). Structures at other OPs
    are listed (``other_ops``) and never chosen, however accurate. None with fewer than two
    results; with a single seed there is no spread and the comparison does not decide.
    """
    if len(results) < 2:
        return None
    ranked = sorted(results, key=lambda r: r.rank)
    matched = [r for r in ranked if r.equal_ops]
    others = [r for r in ranked if not r.equal_ops]
    other_ops = [{"name": r.name, "ops_ratio": r.ops_ratio,
                  "val_accuracy_mean": r.val_accuracy_mean} for r in others]
    note = ""
    if others:
        note = (f" Not ranked against them, at other OPs (beyond +-{OPS_TOLERANCE:.0%} of the "
                "reference's): " + ", ".join(
                    f"{r.name} ({r.ops_ratio:.2f}x the OPs, {r.val_accuracy_mean:.4f})"
                    for r in others) + ".")
    if len(matched) < 2:
        best = matched[0].name if matched else None
        return {"best": best, "second": None, "lead": None, "spread": None,
                "decides": False, "other_ops": other_ops,
                "text": f"No other structure has {best}'s OPs (+-{OPS_TOLERANCE:.0%}): "
                        "nothing to compare at equal cost." + note}
    first, second = matched[:2]
    lead = first.val_accuracy_mean - second.val_accuracy_mean
    stds = (first.val_accuracy_std, second.val_accuracy_std)
    spread = None if None in stds else max(stds)
    decides = spread is not None and lead > spread
    if spread is None:
        text = (f"{first.name} leads {second.name} by {lead:.4f}, but with one seed there is "
                "no spread to compare the lead with: the comparison does not decide (use "
                "--seeds of 2 or more).")
    elif decides:
        text = (f"The comparison decides: at equal OPs, {first.name} leads {second.name} by "
                f"{lead:.4f}, more than the larger of their standard deviations "
                f"({spread:.4f}).")
    else:
        text = (f"The comparison does NOT decide: at equal OPs, {first.name} leads "
                f"{second.name} by {lead:.4f}, within the larger of their standard deviations "
                f"({spread:.4f}); more seeds or a larger proxy (more images, more epochs) "
                "would be needed.")
    return {"best": first.name, "second": second.name, "lead": lead, "spread": spread,
            "decides": decides, "other_ops": other_ops, "text": text + note}


def _pm(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


_HEADER = ("structure", "rank", "n", "val_acc mean", "std", "params", "binary", "real", "KB",
           "OPs (M)", "x ref", "time s", "std")


def _cells(r: ModuleResult) -> tuple[str, ...]:
    """One result's row of `_HEADER`, formatted (the text and the markdown table share it)."""
    return (r.name, str(r.rank), str(r.n), f"{r.val_accuracy_mean:.4f}",
            _pm(r.val_accuracy_std, ".4f"), str(r.cost["total_params"]),
            str(r.cost["binary_params"]), str(r.cost["real_params"]),
            f"{r.cost['memory_kb']:.1f}", f"{r.ops / 1e6:.3f}",
            f"{r.ops_ratio:.2f}" + ("" if r.equal_ops else "*"), f"{r.wall_time_s_mean:.0f}",
            _pm(r.wall_time_s_std, ".0f"))


def results_table(results: Sequence[ModuleResult]) -> str:
    """A plain-text table of ranked results, with the decision (`decision`) as its footer."""
    table = text_table(_HEADER, [_cells(r) for r in results])
    verdict = decision(results)
    return table if verdict is None else f"{table}\n{verdict['text']}"


CSV_COLUMNS = ("rank", "structure", "n", "seeds", "val_acc_mean", "val_acc_std", "val_accs",
               "total_params", "binary_params", "real_params", "memory_kb", "mops",
               "ops_ratio", "equal_ops", "wall_time_s_mean", "wall_time_s_std", "wall_times_s")


def results_csv(results: Sequence[ModuleResult]) -> str:
    """The ranked results as CSV, one structure per row, full precision; per-seed figures
    (``seeds``, ``val_accs``, ``wall_times_s``) are space-separated in seed order."""
    def joined(values: Sequence[Any]) -> str:
        return " ".join("" if v is None else str(v) for v in values)

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in results:
        writer.writerow((r.rank, r.name, r.n, joined(r.seeds), r.val_accuracy_mean,
                         "" if r.val_accuracy_std is None else r.val_accuracy_std,
                         joined(r.val_accuracies), r.cost["total_params"],
                         r.cost["binary_params"], r.cost["real_params"], r.cost["memory_kb"],
                         r.ops / 1e6, r.ops_ratio, int(r.equal_ops), r.wall_time_s_mean,
                         "" if r.wall_time_s_std is None else r.wall_time_s_std,
                         joined(r.wall_times_s)))
    return buf.getvalue()


def results_markdown(results: Sequence[ModuleResult], data: Mapping[str, Any],
                     training: Mapping[str, Any], failed: Sequence[Mapping[str, Any]] = (),
                     pending: int = 0) -> str:
    """The ranked results as a markdown page: the proxy's settings, the table, the decision
    (and, while `pending` trials are still to run, that it is partial)."""
    seeds = training.get("execution_seeds") or []
    parts = [
        "# Module comparison", "",
        f"{data['train_images']} training and {data['validation_images']} validation images "
        f"of `{data['dataset']}`; {training['epochs']} proxy epoch(s) per run, batch "
        f"{training['batch_size']}, augment {training['augment']}; {training['seeds']} run(s) "
        f"per structure (seeds {', '.join(map(str, seeds))}). A run scores its best epoch's "
        "validation accuracy; `val_acc mean` and `std` are the mean and sample standard "
        "deviation over the runs, `time s` the wall time per run on this machine; OPs = "
        "BOPs/64 + FLOPs of the proxy network, `x ref` the OPs over the reference "
        "structure's. Only structures within "
        f"+-{OPS_TOLERANCE:.0%} of the reference's OPs compete; the others (`*`) are ranked "
        "after them.", "",
        markdown_table(_HEADER, [_cells(r) for r in results]),
    ]
    verdict = decision(results)
    if verdict is not None:
        parts += ["", verdict["text"]]
    if pending:
        parts += ["", f"**Partial**: {len(results)} structure(s) finished, {pending} still to "
                  "run; re-run the same command to resume the comparison."]
    if failed:
        parts += ["", "Not finished: " + ", ".join(f"{f['name']} ({f['status']})" for f in failed)
                  + "."]
    return "\n".join(parts) + "\n"
