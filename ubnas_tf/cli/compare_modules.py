"""Compare binary module structures by short proxy runs (keras-tuner drives the comparison).

    python tools/compare_modules.py --variants=universal,bireal,reactnet --epochs=1

Trains a small evaluation network of a fixed proxy genotype --seeds times per module
structure (the named variants of ubnas_tf.modules.MODULE_CONFIGS, reduction-cell designs
included, or random combinations of ModuleConfig fields with --mode=fields), run i with seed
--seed + i for its weights and data order; ranks the structures by mean validation accuracy,
prints mean and standard deviation, OPs and wall time per run, says whether the best one's
lead exceeds the seed-to-seed spread, and writes OUTPUT_DIR/comparison.json (with the
table as comparison.csv and comparison.md). Re-running the same command resumes an
interrupted comparison without retraining finished trials or finished seeds; appending
names to --variants extends a comparison with more structures. Use the winner with
--module_config=NAME in tools/search.py and tools/train.py.
"""

from __future__ import annotations

import sys

from absl import app, flags

from ubnas_tf import flags as ub_flags
from ubnas_tf.cli._run import flag_values
from ubnas_tf.data import get_info
from ubnas_tf.genotype import Genotype, GenotypeError
from ubnas_tf.io_utils import read_json
from ubnas_tf.module_comparison import (
    OPS_TOLERANCE,
    RESULTS_CSV,
    RESULTS_FILE,
    RESULTS_MARKDOWN,
    ModuleComparisonError,
    compare_modules,
    matching_variant,
    results_table,
)
from ubnas_tf.module_comparison.compare import ComparisonConfig
from ubnas_tf.modules import MODULE_CONFIGS, ModuleConfig
from ubnas_tf.rundir import RunDirectory

FLAGS = flags.FLAGS

ub_flags.define_run_flags(default_output_dir="runs/compare_modules")
# Recorded in the comparison's directory: where it goes and the options of ComparisonConfig.
TOOL_FLAGS = ("output_dir", "overwrite", *ub_flags.define_comparison_flags())
flags.adopt_module_key_flags(ub_flags)  # list them under --help, not only --helpfull


def validate_comparison_flags(num_train: int) -> None:
    """What absl cannot check: the registry, the genotype file, the data; raises FlagError."""
    unknown = [v for v in FLAGS.variants or () if v not in MODULE_CONFIGS]
    if unknown:
        raise ub_flags.FlagError(f"--variants: unknown variant(s) {unknown}; known "
                                 f"variants: {', '.join(MODULE_CONFIGS)}.")
    side = get_info(FLAGS.dataset).image_shape[0]
    if side // FLAGS.stem_strides < 4:
        raise ub_flags.FlagError(f"--stem_strides={FLAGS.stem_strides} leaves "
                                 f"{side // FLAGS.stem_strides} px of the {side} px images: too "
                                 "small for two reductions.")
    if FLAGS.validation_examples < 1:
        raise ub_flags.FlagError(f"--validation_examples={FLAGS.validation_examples} must be >= 1: "
                                 "the structures are scored on held-out images.")
    if FLAGS.genotype:
        try:
            Genotype.load(FLAGS.genotype)
        except (GenotypeError, OSError) as err:
            raise ub_flags.FlagError(f"--genotype: {err}") from err
    n_val = min(FLAGS.validation_examples, num_train // 4)
    if n_val < 1:
        raise ub_flags.FlagError(f"--max_examples={FLAGS.max_examples} leaves no validation "
                                 "images (a quarter at most is held out); raise it.")
    if FLAGS.batch_size > num_train - n_val:
        raise ub_flags.FlagError(f"--batch_size={FLAGS.batch_size} is larger than the "
                                 f"{num_train - n_val} training images; lower it or raise "
                                 "--max_examples.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        ub_flags.validate_run_flags()
        validate_comparison_flags(ub_flags.validate_data_flags())
        run = RunDirectory(FLAGS.output_dir, "compare_modules")
        # The tuner compares --variants with its saved search space: a longer list extends.
        run.prepare(flag_values(TOOL_FLAGS), FLAGS.overwrite,
                    checked_elsewhere=("variants",))
    except ub_flags.FlagError as err:
        print(f"{ub_flags.program_name()}: error: {err}", file=sys.stderr)
        return 2

    try:
        results = compare_modules(run.path, ub_flags.config_from_flags(ComparisonConfig))
    except ModuleComparisonError as err:
        print(f"{ub_flags.program_name()}: error: {err}", file=sys.stderr)
        return 2

    print("\nModule structures ranked by mean validation accuracy over "
          f"{FLAGS.seeds} seed(s), those within +-{OPS_TOLERANCE:.0%} of the reference's OPs "
          f"first ({FLAGS.epochs} proxy epoch(s) per run; std: sample standard deviation over "
          "the seeds; x ref: OPs over the reference's, * = other OPs, not competing; time: "
          "wall time per run):")
    print(results_table(results))
    failed = read_json(run.join(RESULTS_FILE))["failed"]
    if failed:
        print(f"{len(failed)} trial(s) failed: " + ", ".join(f["name"] for f in failed)
              + " (keras-tuner's output above says why; --overwrite retries them).",
              file=sys.stderr)
    if not results:
        print("No trial finished.", file=sys.stderr)
        return 1
    best = results[0]
    name = matching_variant(best.config)
    spread = "" if best.val_accuracy_std is None else f" +- {best.val_accuracy_std:.4f}"
    print(f"\nWinner: {best.name} (val_accuracy {best.val_accuracy_mean:.4f}{spread} over "
          f"{best.n} seed(s), {best.cost['total_params']} params, {best.ops / 1e6:.3f} M OPs).")
    if name is not None:
        print(f"Use it with --module_config={name} in tools/search.py and tools/train.py.")
    else:
        config = ModuleConfig.from_dict(best.config)
        fields = ", ".join(f"{k}={v!r}" for k, v in config.to_dict().items() if k != "name")
        print("It is not a registered variant: add it to MODULE_CONFIGS in ubnas_tf/modules.py,\n"
              f"  MODULE_CONFIGS[NAME] = ModuleConfig(name=NAME, {fields})\n"
              "then use --module_config=NAME in tools/search.py and tools/train.py.")
    print(f"Results: {run.join(RESULTS_FILE)} (table: {run.join(RESULTS_CSV)}, "
          f"{run.join(RESULTS_MARKDOWN)})")
    return 0


def run() -> None:
    """The ``ubnas-compare-modules`` console script (and ``python tools/compare_modules.py``)."""
    ub_flags.run_main(__name__, main)


if __name__ == "__main__":
    run()
