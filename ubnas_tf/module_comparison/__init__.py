"""Comparing binary module structures by short proxy runs, driven by keras-tuner.

The structure of a binary module (`ubnas_tf.modules.ModuleConfig`: BN position, activation
after the add, stride-2 shortcut pooling, weight scaling, activation quantizer, binary or
real cell preprocessing) is chosen by comparison, not fixed. This is not `ubnas_tf.search`
(the differentiable search of a cell's ops): every structure is trained on its own, once.
The keras-tuner roles:

* **HyperModel** (`hypermodel.ModuleHyperModel`): from ``hp`` it picks a module structure,
  either one of the named variants in `MODULE_CONFIGS` (mode ``"named"``) or one value per
  `ModuleConfig` field (mode ``"fields"``), and builds and compiles a small evaluation
  network of a fixed proxy genotype with it. The comparison's settings are ``hp.Fixed``
  hyperparameters, so the oracle saves them.
* **Oracle**: a grid oracle that resumes (`oracle.ResumableGridOracle`; keras-tuner's own
  cannot) in named mode, every variant once; keras-tuner's random oracle in fields mode,
  ``max_trials`` random field combinations, no repeats.
* **Tuner** (`tuner.ModuleGridSearch`, `tuner.ModuleRandomSearch`): ``run_trial`` fits the
  proxy network and returns its objective (``val_accuracy``, the best epoch's), cost and
  wall time; the per-epoch logs go into the same trial record.
* **Results** (`results`): the trial records read back, ranked, as a table.

`compare.compare_modules` ties them together. A comparison's directory holds::

    OUTPUT_DIR/tuner/             keras-tuner's project: oracle.json (the search space,
                                  settings included), trial_*/trial.json (a trial's
                                  structure and settings, score, cost and per-epoch logs)
    OUTPUT_DIR/comparison.json    the one results file: ranked results, the winner's
                                  ModuleConfig, failed trials, the settings

Re-running the same comparison resumes it (keras-tuner reloads its oracle); a re-run with
other settings is refused, since the saved search space differs from the declared one.
"""

from ubnas_tf.module_comparison.compare import RESULTS_FILE, compare_modules
from ubnas_tf.module_comparison.hypermodel import (
    FIELD_CHOICES,
    MODES,
    PROXY_GENOTYPE,
    ModuleComparisonError,
    ModuleHyperModel,
    fields_label,
    matching_variant,
)
from ubnas_tf.module_comparison.oracle import ResumableGridOracle
from ubnas_tf.module_comparison.results import ModuleResult, rank_trials, results_table
from ubnas_tf.module_comparison.tuner import ModuleGridSearch, ModuleRandomSearch

__all__ = [
    "FIELD_CHOICES",
    "MODES",
    "PROXY_GENOTYPE",
    "RESULTS_FILE",
    "ModuleComparisonError",
    "ModuleGridSearch",
    "ModuleHyperModel",
    "ModuleRandomSearch",
    "ModuleResult",
    "ResumableGridOracle",
    "compare_modules",
    "fields_label",
    "matching_variant",
    "rank_trials",
    "results_table",
]
