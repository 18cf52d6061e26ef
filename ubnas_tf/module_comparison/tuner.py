"""The tuners of the comparison: a grid and a random search sharing one trial runner.

Only keras-tuner's public hooks are used: ``run_trial`` builds and fits through the
HyperModel and returns the trial's metrics (keras-tuner reports them to the oracle, which
saves them in the trial's record); ``HyperModel.declare_hyperparameters`` declares the
space; a custom oracle overrides ``Oracle.populate_space``. A resumption is told from a
different comparison by the search space the oracle saved
(`ModuleTunerMixin.settings_differences`).
"""

from __future__ import annotations

import time
from typing import Any

import keras_tuner
import tensorflow as tf

from ubnas_tf.cost import model_cost
from ubnas_tf.module_comparison.oracle import ResumableGridOracle
from ubnas_tf.module_comparison.results import record_epochs, trial_metrics

__all__ = ["ModuleGridSearch", "ModuleRandomSearch", "ModuleTunerMixin", "space_differences"]


def _describe(hp: keras_tuner.engine.hyperparameters.HyperParameter) -> Any:
    """A hyperparameter as a message shows it: a setting's value, or a choice's options."""
    config = hp.get_config()
    if "value" in config:  # hp.Fixed
        return config["value"]
    return {k: v for k, v in config.items() if k not in ("name", "conditions")}


def space_differences(recorded: keras_tuner.HyperParameters,
                      declared: keras_tuner.HyperParameters) -> list[str]:
    """How a saved search space differs from a declared one, one line per hyperparameter.

    Compares the whole declaration (a choice's options as well as a setting's value), so
    a different list of variants is a different comparison too.
    """
    old = {hp.name: hp for hp in recorded.space}
    new = {hp.name: hp for hp in declared.space}
    diffs = []
    for name in [*new, *(n for n in old if n not in new)]:
        if name not in old:
            diffs.append(f"{name}: directory has nothing, now {_describe(new[name])!r}")
        elif name not in new:
            diffs.append(f"{name}: directory has {_describe(old[name])!r}, now nothing")
        elif old[name].get_config() != new[name].get_config():
            diffs.append(f"{name}: directory has {_describe(old[name])!r}, "
                         f"now {_describe(new[name])!r}")
    return diffs


class ModuleTunerMixin:
    """The trial runner of both tuners: build, fit, report accuracy, cost and history.

    Unlike keras-tuner's default it keeps no model checkpoints: a proxy run is only there
    for its validation accuracy and cost, which go into the trial's record.
    """

    def run_trial(self, trial, *args, **kwargs) -> dict[str, float]:
        """Trains the trial's proxy network; returns its metrics for keras-tuner to record."""
        t0 = time.time()
        hp = trial.hyperparameters
        tf.keras.backend.clear_session()
        model = self.hypermodel.build(hp)
        print(f"Trial {trial.trial_id}: module structure {model.module_config.name!r}",
              flush=True)
        history = self.hypermodel.fit(hp, model, *args, **kwargs).history
        metrics = trial_metrics(history, model_cost(model).totals(), time.time() - t0)
        # Saved with the metrics above, when keras-tuner reports them to the oracle.
        record_epochs(self.oracle.get_trial(trial.trial_id).metrics, history)
        return metrics

    def settings_differences(self) -> list[str]:
        """How the oracle's saved search space differs from the hypermodel's (empty: none).

        A tuner reloaded from its directory keeps the space it saved, so this tells a
        resumption (no differences) from a comparison made with other settings.
        """
        declared = keras_tuner.HyperParameters()
        self.hypermodel.declare_hyperparameters(declared)
        return space_differences(self.oracle.get_space(), declared)


class ModuleGridSearch(ModuleTunerMixin, keras_tuner.Tuner):
    """Grid search over module structures (named mode: every variant once, in order).

    keras-tuner's own `GridSearch` cannot resume (see `ResumableGridOracle`), hence its
    oracle here. Other keyword arguments are `keras_tuner.Tuner`'s.
    """

    def __init__(self, hypermodel: keras_tuner.HyperModel, objective: keras_tuner.Objective,
                 max_trials: int | None = None, seed: int | None = None, **kwargs):
        oracle = ResumableGridOracle(objective=objective, max_trials=max_trials, seed=seed)
        super().__init__(oracle, hypermodel, **kwargs)


class ModuleRandomSearch(ModuleTunerMixin, keras_tuner.RandomSearch):
    """Random search over module-structure fields (fields mode)."""
