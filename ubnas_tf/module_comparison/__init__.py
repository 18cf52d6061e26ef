"""Comparing binary module structures by short proxy runs, driven by keras-tuner.

The structure of a binary module (`ubnas_tf.modules.ModuleConfig`: BN position, activation
after the add, stride-2 shortcut pooling, weight scaling, activation quantizer, binary or
real cell preprocessing, searched or fixed reduction cell) is chosen by comparison, not
fixed. This is not `ubnas_tf.search` (the differentiable search of a cell's ops): every
structure is trained on its own, once per seed (``seeds`` runs, seeds ``seed + i``), and
scored by the mean of the runs' best validation accuracies; the standard deviation over
the seeds says whether a difference between structures is more than reseeding moves it
(`results.decision`). The keras-tuner roles:

* **HyperModel** (`hypermodel.ModuleHyperModel`): from ``hp`` it picks a module structure,
  either one of the named variants in `MODULE_CONFIGS` (mode ``"named"``) or one value per
  `ModuleConfig` field (mode ``"fields"``), and builds and compiles a small evaluation
  network of a fixed proxy genotype with it. The comparison's settings are ``hp.Fixed``
  hyperparameters, so the oracle saves them.
* **Oracle**: a grid oracle that resumes (`oracle.ResumableGridOracle`; keras-tuner's own
  cannot) in named mode, every variant once; keras-tuner's random oracle in fields mode,
  ``max_trials`` random field combinations, no repeats.
* **Tuner** (`tuner.ModuleGridSearch`, `tuner.ModuleRandomSearch`): ``run_trial`` fits the
  proxy network once per seed (keras-tuner's ``executions_per_trial``) and returns the
  objective (``val_accuracy_mean``), its standard deviation, cost and wall time; the
  per-execution and per-epoch logs go into the same trial record.
* **Results** (`results`): the trial records read back, ranked, as a table with mean and
  standard deviation, and whether the comparison decides. Only structures within
  `OPS_TOLERANCE` (15 %) of the reference's OPs (`universal`) compete; dearer or cheaper
  ones are reported after them, never chosen.

`compare.compare_modules` ties them together, with the settings of a
`compare.ComparisonConfig`. A comparison's directory holds::

    OUTPUT_DIR/tuner/             keras-tuner's project: oracle.json (the search space,
                                  settings included), trial_*/trial.json (a trial's
                                  structure and settings, score, spread, cost, per-execution
                                  and per-epoch logs), trial_*/execution_<i>.json (each
                                  finished seed, what an interrupted trial resumes from)
    OUTPUT_DIR/comparison.json    the results: ranked results, the winner's ModuleConfig,
                                  failed trials, the settings
    OUTPUT_DIR/comparison.csv     the ranked table, one structure per row
    OUTPUT_DIR/comparison.md      the same as a markdown page, with the decision

Re-running the same comparison resumes it (keras-tuner reloads its oracle and runs an
interrupted trial again, which trains only its unfinished seeds); a re-run with other
settings (the number of seeds included) is refused, since the saved search space differs
from the declared one.
"""

from ubnas_tf.module_comparison.compare import (
    RESULTS_CSV,
    RESULTS_FILE,
    RESULTS_MARKDOWN,
    ComparisonConfig,
    compare_modules,
)
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
from ubnas_tf.module_comparison.results import (
    OPS_TOLERANCE,
    Execution,
    ModuleResult,
    decision,
    mean_std,
    rank_trials,
    results_csv,
    results_markdown,
    results_table,
)
from ubnas_tf.module_comparison.tuner import ModuleGridSearch, ModuleRandomSearch

__all__ = [
    "FIELD_CHOICES",
    "MODES",
    "OPS_TOLERANCE",
    "PROXY_GENOTYPE",
    "Execution",
    "RESULTS_CSV",
    "RESULTS_FILE",
    "RESULTS_MARKDOWN",
    "ComparisonConfig",
    "ModuleComparisonError",
    "ModuleGridSearch",
    "ModuleHyperModel",
    "ModuleRandomSearch",
    "ModuleResult",
    "ResumableGridOracle",
    "compare_modules",
    "decision",
    "fields_label",
    "matching_variant",
    "mean_std",
    "rank_trials",
    "results_csv",
    "results_markdown",
    "results_table",
]
