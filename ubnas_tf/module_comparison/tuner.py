"""The tuners of the comparison: a grid and a random search sharing one trial runner.

Only keras-tuner's public hooks are used: ``run_trial`` builds and fits through the
HyperModel, once per seed (keras-tuner's ``executions_per_trial``), and returns the trial's
metrics (keras-tuner reports them to the oracle, which saves them in the trial's record);
``HyperModel.declare_hyperparameters`` declares the space; a custom oracle overrides
``Oracle.populate_space``. A resumption is told from a different comparison by the search
space the oracle saved (`ModuleTunerMixin.settings_differences`); a choice whose options
grow by new ones at the end extends the comparison instead (`ModuleTunerMixin.extend_space`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import keras_tuner
import tensorflow as tf

from ubnas_tf.cost import model_cost
from ubnas_tf.io_utils import atomic_write_json, read_json
from ubnas_tf.module_comparison.oracle import ResumableGridOracle
from ubnas_tf.module_comparison.results import Execution, record_executions, trial_metrics

__all__ = ["ModuleGridSearch", "ModuleRandomSearch", "ModuleTunerMixin", "added_values",
           "space_differences"]


def _describe(hp: keras_tuner.engine.hyperparameters.HyperParameter) -> Any:
    """A hyperparameter as a message shows it: a setting's value, or a choice's options."""
    config = hp.get_config()
    if "value" in config:  # hp.Fixed
        return config["value"]
    return {k: v for k, v in config.items() if k not in ("name", "conditions")}


def added_values(recorded: keras_tuner.engine.hyperparameters.HyperParameter,
                 declared: keras_tuner.engine.hyperparameters.HyperParameter) -> list | None:
    """The options `declared` appends to the choice `recorded`, if that is all it changes.

    Only an extension keeps every finished trial meaningful and the grid's order of the old
    options (default first, then the rest in order); anything else, including ``[]`` for an
    identical choice, is not one. Returns None when `declared` is not such an extension.
    """
    old, new = recorded.get_config(), declared.get_config()
    if not isinstance(recorded, keras_tuner.engine.hyperparameters.Choice) or type(
            recorded) is not type(declared):
        return None
    n = len(old["values"])
    if new["values"][:n] != old["values"] or len(new["values"]) == n:
        return None
    if {**new, "values": old["values"]} != old:  # the default, name, ordering unchanged
        return None
    return new["values"][n:]


def space_differences(recorded: keras_tuner.HyperParameters,
                      declared: keras_tuner.HyperParameters) -> list[str]:
    """How a saved search space differs from a declared one, one line per hyperparameter.

    Compares the whole declaration (a choice's options as well as a setting's value), so
    a different list of variants is a different comparison too, except a choice extended
    by new options at the end (`added_values`): that continues the comparison.
    """
    old = {hp.name: hp for hp in recorded.space}
    new = {hp.name: hp for hp in declared.space}
    diffs = []
    for name in [*new, *(n for n in old if n not in new)]:
        if name not in old:
            diffs.append(f"{name}: directory has nothing, now {_describe(new[name])!r}")
        elif name not in new:
            diffs.append(f"{name}: directory has {_describe(old[name])!r}, now nothing")
        elif (old[name].get_config() != new[name].get_config()
              and added_values(old[name], new[name]) is None):
            diffs.append(f"{name}: directory has {_describe(old[name])!r}, "
                         f"now {_describe(new[name])!r}")
    return diffs


EXECUTION_FILE = "execution_{index}.json"


class ModuleTunerMixin:
    """The trial runner of both tuners: per seed build, fit, record; report the aggregate.

    Unlike keras-tuner's default it keeps no model checkpoints: a proxy run is only there
    for its validation accuracy and cost, which go into the trial's record. What it keeps
    instead is each finished execution (``trial_*/execution_<i>.json``), so that a trial
    interrupted after some of its seeds (keras-tuner runs an interrupted trial again, with
    the same id) trains only the seeds it has not finished.
    """

    # Called after every finished trial (`compare_modules` writes the results so far).
    report: Callable[[], Any] | None = None

    def on_trial_end(self, trial) -> None:
        super().on_trial_end(trial)
        if self.report is not None:
            self.report()

    def execution_path(self, trial_id: str, index: int) -> str:
        """Where execution `index` of trial `trial_id` is kept."""
        return os.path.join(self.get_trial_dir(trial_id), EXECUTION_FILE.format(index=index))

    def finished_execution(self, trial_id: str, index: int, structure: dict[str, Any],
                           seed: int | None) -> Execution | None:
        """The saved execution `index` of a trial, if it is of `structure` and `seed`."""
        path = self.execution_path(trial_id, index)
        if not os.path.exists(path):
            return None
        try:
            data = read_json(path)
            if data.get("structure") != structure or data.get("seed") != seed:
                return None
            return Execution.from_dict(data)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable: train it again

    def run_trial(self, trial, train_data: Callable[[int | None], Any] | Any, *args,
                  **kwargs) -> dict[str, float]:
        """Trains the trial's proxy network once per seed; returns the aggregate metrics.

        `train_data` is the training data of ``fit``, or a function of the seed that returns
        it (so that every execution has its own data order). Execution i uses seed
        ``hypermodel.execution_seeds[i]`` for the weights and the data; its logs, cost and
        wall time (build + fit) are saved as soon as it ends and recorded in the trial's
        metrics at the end (`record_executions`).
        """
        hp = trial.hyperparameters
        seeds = self.hypermodel.execution_seeds
        if len(seeds) != self.executions_per_trial:
            raise ValueError(f"executions_per_trial={self.executions_per_trial} but the "
                             f"hypermodel has {len(seeds)} seeds.")
        config = self.hypermodel.module_config(hp.copy())
        structure = config.to_dict()
        executions = []
        for index, seed in enumerate(seeds):
            label = (f"Trial {trial.trial_id}: module structure {config.name!r}, seed {seed} "
                     f"({index + 1}/{len(seeds)})")
            done = self.finished_execution(trial.trial_id, index, structure, seed)
            if done is not None:
                print(f"{label}: finished before (val_accuracy {done.val_accuracy:.4f}), "
                      "not trained again", flush=True)
                executions.append(done)
                continue
            print(label, flush=True)
            t0 = time.time()
            tf.keras.backend.clear_session()
            model = self.hypermodel.build_seeded(hp, seed)
            data = train_data(seed) if callable(train_data) else train_data
            history = self.hypermodel.fit(hp, model, data, *args, **kwargs).history
            wall_time = time.time() - t0
            execution = Execution.from_fit(seed, history, model_cost(model).totals(), wall_time)
            atomic_write_json(self.execution_path(trial.trial_id, index),
                              {"structure": structure, **execution.to_dict()})
            executions.append(execution)
        # Saved with the metrics returned, when keras-tuner reports them to the oracle.
        record_executions(self.oracle.get_trial(trial.trial_id).metrics, executions)
        return trial_metrics(executions)

    def settings_differences(self) -> list[str]:
        """How the oracle's saved search space differs from the hypermodel's (empty: none).

        A tuner reloaded from its directory keeps the space it saved, so this tells a
        resumption (no differences) from a comparison made with other settings.
        """
        return space_differences(self.oracle.get_space(), self._declared_space())

    def extend_space(self) -> dict[str, list]:
        """Adopts the options the hypermodel adds to saved choices; returns them by name.

        keras-tuner keeps a reloaded oracle's saved space (declaring a known choice again
        does not change its options), so new options are put into the oracle here and saved;
        the grid then runs them after the combinations already tried. Call it only when
        `settings_differences` is empty.
        """
        recorded, declared = self.oracle.get_space(), self._declared_space()
        old = {hp.name: hp for hp in recorded.space}
        added = {hp.name: values for hp in declared.space if hp.name in old
                 and (values := added_values(old[hp.name], hp))}
        if added:
            self.oracle.hyperparameters = declared
            self.oracle.save()
        return added

    def _declared_space(self) -> keras_tuner.HyperParameters:
        declared = keras_tuner.HyperParameters()
        self.hypermodel.declare_hyperparameters(declared)
        return declared


class ModuleGridSearch(ModuleTunerMixin, keras_tuner.Tuner):
    """Grid search over module structures (named mode: every variant once, in order).

    keras-tuner's own `GridSearch` cannot resume (see `ResumableGridOracle`), hence its
    oracle here. Other keyword arguments are `keras_tuner.Tuner`'s.
    """

    def __init__(self, hypermodel: keras_tuner.HyperModel, objective: keras_tuner.Objective,
                 max_trials: int | None = None, seed: int | None = None, **kwargs):
        oracle = ResumableGridOracle(objective=objective, max_trials=max_trials, seed=seed)
        kwargs.setdefault("executions_per_trial", len(hypermodel.execution_seeds))
        super().__init__(oracle, hypermodel, **kwargs)


class ModuleRandomSearch(ModuleTunerMixin, keras_tuner.RandomSearch):
    """Random search over module-structure fields (fields mode)."""

    def __init__(self, hypermodel: keras_tuner.HyperModel, **kwargs):
        kwargs.setdefault("executions_per_trial", len(hypermodel.execution_seeds))
        super().__init__(hypermodel, **kwargs)
