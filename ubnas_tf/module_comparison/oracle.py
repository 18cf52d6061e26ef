"""A grid oracle that resumes: the next combination follows from the trials on record.

keras-tuner 1.4.8's `GridSearchOracle` keeps its place in the grid in memory only (its
ordered trial ids and its queue are not part of the oracle's saved state), so a grid search
reloaded from its directory either stops at once, with combinations never tried, or fails
on its first finished trial (keras-tuner issue #1055). `ResumableGridOracle` keeps no
position: the next combination is the first one, in grid order, that no trial on record
has, and keras-tuner saves and reloads the trials on record itself. A trial that failed in an
earlier session does not count as tried, so the next session runs it again (a failure is
usually a bug since fixed, or a machine that ran out of memory).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import keras_tuner
from keras_tuner.engine.trial import TrialStatus

__all__ = ["ResumableGridOracle", "grid"]


def grid(space: keras_tuner.HyperParameters) -> Iterator[dict[str, Any]]:
    """Every combination of a finite search space, in keras-tuner's grid order.

    As keras-tuner's grid: each hyperparameter's default first, then its other values in
    order; the last hyperparameter varies fastest, so with the choices declared first the
    first trial is the all-defaults one. Conditional hyperparameters are not supported.
    """
    names, axes = [], []
    for hp in space.space:
        if hp.conditions:
            raise ValueError(f"Hyperparameter {hp.name!r} is conditional; the grid has none.")
        values = list(hp.values)
        names.append(hp.name)
        axes.append([hp.default, *(v for v in values if v != hp.default)])
    for combination in itertools.product(*axes):
        yield dict(zip(names, combination, strict=True))


class ResumableGridOracle(keras_tuner.Oracle):
    """Tries every combination of the search space once (`grid`), also across reloads.

    A trial that failed in this session counts as tried (keras-tuner's
    ``max_retries_per_trial`` decides about retries at once); one that failed in an earlier
    session does not: its combination is tried again, as a new trial. A trial interrupted
    mid-way is run again by keras-tuner itself (it is still the tuner's ongoing trial when
    the oracle is reloaded).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._failed_here: set[str] = set()  # not saved: a new session retries them

    @keras_tuner.synchronized
    def end_trial(self, trial) -> None:
        super().end_trial(trial)
        if self.trials[trial.trial_id].status == TrialStatus.FAILED:
            self._failed_here.add(trial.trial_id)

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        """The first untried combination; ``IDLE`` while others run, ``STOPPED`` when done."""
        tried = [trial.hyperparameters.values for trial in self.trials.values()
                 if trial.status != TrialStatus.FAILED or trial.trial_id in self._failed_here]
        for values in grid(self.get_space()):
            if values not in tried:
                return {"status": TrialStatus.RUNNING, "values": values}
        if self.ongoing_trials:
            return {"status": TrialStatus.IDLE, "values": None}
        return {"status": TrialStatus.STOPPED, "values": None}
