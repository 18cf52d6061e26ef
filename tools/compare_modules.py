"""Compare binary module structures by short proxy runs (keras-tuner drives the comparison).

    python tools/compare_modules.py --variants=universal,bireal,reactnet --epochs=1

Trains a small evaluation network of a fixed proxy genotype once per module structure (the
named variants of ubnas_tf.modules.MODULE_CONFIGS, or random combinations of ModuleConfig
fields with --mode=fields), ranks them by validation accuracy and writes
OUTPUT_DIR/comparison.json. Re-running the same command resumes an interrupted comparison
without retraining finished trials. Use the winner with --module_config=NAME in
tools/search.py and tools/train.py.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide TF's CUDA start-up errors on CPUs

from absl import app, flags  # noqa: E402

from ubnas_tf import flags as ub_flags  # noqa: E402

flags.DEFINE_string("dataset", "fashion_mnist",
                    f"Dataset name; one of {', '.join(ub_flags.DATASET_NAMES)}.")
flags.DEFINE_string("data_dir", None,
                    "Where the dataset lives: the IDX files for fashion_mnist (default "
                    "/usr/share/datasets/fashion-mnist), else a tensorflow-datasets data_dir.")
flags.DEFINE_integer("max_examples", 4000,
                     "Use only the first N training images (validation images included).")
flags.DEFINE_integer("validation_examples", 1000,
                     "Training images held out to score each structure (at most a quarter).")
flags.DEFINE_integer("epochs", 2, "Proxy epochs per structure (cosine decay over them).")
flags.DEFINE_integer("batch_size", 64, "Examples per training batch.")
flags.DEFINE_float("learning_rate", 2e-3, "Peak Adam learning rate of every proxy run.")
flags.DEFINE_bool("augment", False, "Random crop and flip in the proxy runs.")
flags.DEFINE_integer("seed", 0, "Random seed: data split, batch order and initial weights "
                     "(the same for every structure).")
flags.DEFINE_string("output_dir", "runs/compare_modules",
                    "Comparison directory (keras-tuner project, comparison.json); re-running "
                    "the same command resumes it.")
flags.DEFINE_bool("overwrite", False,
                  "Start afresh in --output_dir even if it holds a comparison made with other flags.")
flags.DEFINE_enum("mode", "named", ["named", "fields"],
                  "named: grid over the registered variants; fields: random search over "
                  "ModuleConfig fields.")
flags.DEFINE_list("variants", None,
                  "Comma-separated variant names to compare in named mode (default: all "
                  "registered ones).")
flags.DEFINE_integer("max_trials", None,
                     "At most this many structures (default: every variant in named mode, "
                     "10 in fields mode).")
flags.DEFINE_integer("layers", 3, "Cells of the proxy network (reductions at 1/3 and 2/3).")
flags.DEFINE_integer("init_channels", 32, "Width of the proxy network's first cells.")
flags.DEFINE_integer("stem_strides", 1,
                     "Total stride of the proxy network's real stem: 1, 2, 4 or 8.")
flags.DEFINE_string("genotype", None,
                    "A genotype.json to use as the proxy architecture (default: binary 3x3 "
                    "convs everywhere plus skips).")
flags.DEFINE_integer("verbose", 1,
                     "Progress output: 0 silent, 1 progress bars, 2 one line per epoch.")
FLAGS = flags.FLAGS

TOOL_FLAGS = ("dataset", "data_dir", "max_examples", "validation_examples", "epochs",
              "batch_size", "learning_rate", "augment", "seed", "output_dir", "overwrite",
              "mode", "variants", "max_trials", "layers", "init_channels", "stem_strides",
              "genotype", "verbose")


def validate_comparison_flags() -> None:
    """Checks the flags that need no data (before `validate_data_flags`); raises FlagError."""
    from ubnas_tf.data import get_info
    from ubnas_tf.genotype import Genotype, GenotypeError
    from ubnas_tf.modules import MODULE_CONFIGS

    if FLAGS.variants:
        unknown = [v for v in FLAGS.variants if v not in MODULE_CONFIGS]
        if unknown:
            raise ub_flags.FlagError(f"--variants: unknown variant(s) {unknown}; known "
                                     f"variants: {', '.join(MODULE_CONFIGS)}.")
        if FLAGS.mode == "fields":
            raise ub_flags.FlagError("--variants applies to --mode=named only; --mode=fields "
                                     "searches the ModuleConfig fields.")
    if FLAGS.max_trials is not None and FLAGS.max_trials < 1:
        raise ub_flags.FlagError(f"--max_trials={FLAGS.max_trials} is invalid; it must be >= 1.")
    if FLAGS.layers < 3:
        raise ub_flags.FlagError(f"--layers={FLAGS.layers} is invalid; it must be >= 3 (one "
                                 "normal and two reduction cells).")
    if FLAGS.init_channels < 1:
        raise ub_flags.FlagError(f"--init_channels={FLAGS.init_channels} must be >= 1.")
    if FLAGS.stem_strides not in (1, 2, 4, 8):
        raise ub_flags.FlagError(f"--stem_strides={FLAGS.stem_strides} is invalid; use 1, 2, 4 or 8.")
    if FLAGS.dataset not in ub_flags.DATASET_NAMES:
        raise ub_flags.FlagError(f"--dataset={FLAGS.dataset!r} is unknown; use one of "
                                 f"{list(ub_flags.DATASET_NAMES)}.")
    side = get_info(FLAGS.dataset).image_shape[0]
    if side // FLAGS.stem_strides < 4:
        raise ub_flags.FlagError(f"--stem_strides={FLAGS.stem_strides} leaves "
                                 f"{side // FLAGS.stem_strides} px of the {side} px images: too "
                                 "small for two reductions.")
    if FLAGS.learning_rate <= 0:
        raise ub_flags.FlagError(f"--learning_rate={FLAGS.learning_rate} must be > 0.")
    if FLAGS.validation_examples < 1:
        raise ub_flags.FlagError(f"--validation_examples={FLAGS.validation_examples} must be >= 1: "
                                 "the structures are scored on held-out images.")
    if FLAGS.genotype:
        try:
            Genotype.load(FLAGS.genotype)
        except (GenotypeError, OSError) as err:
            raise ub_flags.FlagError(f"--genotype: {err}") from err


def validate_size_flags(num_train: int) -> None:
    """Checks the flags that depend on the number of training images; raises FlagError."""
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
        if FLAGS.verbose not in (0, 1, 2):
            raise ub_flags.FlagError(f"--verbose={FLAGS.verbose} is invalid; use 0, 1 or 2.")
        if not FLAGS.output_dir or not FLAGS.output_dir.strip():
            raise ub_flags.FlagError("--output_dir must name a directory.")
        if os.path.exists(FLAGS.output_dir) and not os.path.isdir(FLAGS.output_dir):
            raise ub_flags.FlagError(f"--output_dir={FLAGS.output_dir!r} exists and is not a "
                                     "directory.")
        validate_comparison_flags()
        validate_size_flags(ub_flags.validate_data_flags())
        from ubnas_tf.rundir import RunDirectory

        run = RunDirectory(FLAGS.output_dir, "compare_modules")
        run.prepare(ub_flags.flag_values(TOOL_FLAGS), FLAGS.overwrite)
    except ub_flags.FlagError as err:
        print(f"compare_modules.py: error: {err}", file=sys.stderr)
        return 2

    from ubnas_tf.module_comparison import (
        RESULTS_FILE,
        ModuleComparisonError,
        compare_modules,
        matching_variant,
        results_table,
    )
    from ubnas_tf.modules import ModuleConfig

    try:
        results = compare_modules(
            run.path, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
            max_examples=FLAGS.max_examples, validation_examples=FLAGS.validation_examples,
            mode=FLAGS.mode, variants=FLAGS.variants, max_trials=FLAGS.max_trials,
            epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
            augment=FLAGS.augment, layers=FLAGS.layers, init_channels=FLAGS.init_channels,
            stem_strides=FLAGS.stem_strides, genotype=FLAGS.genotype, seed=FLAGS.seed,
            verbose=FLAGS.verbose)
    except ModuleComparisonError as err:
        print(f"compare_modules.py: error: {err}", file=sys.stderr)
        return 2

    print("\nModule structures ranked by validation accuracy "
          f"({FLAGS.epochs} proxy epoch(s) each):")
    print(results_table(results))
    from ubnas_tf.io_utils import read_json

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
    print(f"\nWinner: {best.name} (val_accuracy {best.val_accuracy:.4f}, "
          f"{best.cost['total_params']} params, {best.ops / 1e6:.2f} M OPs).")
    if name is not None:
        print(f"Use it with --module_config={name} in tools/search.py and tools/train.py.")
    else:
        config = ModuleConfig.from_dict(best.config)
        fields = ", ".join(f"{k}={v!r}" for k, v in config.to_dict().items() if k != "name")
        print("It is not a registered variant: add it to MODULE_CONFIGS in ubnas_tf/modules.py,\n"
              f"  MODULE_CONFIGS[NAME] = ModuleConfig(name=NAME, {fields})\n"
              "then use --module_config=NAME in tools/search.py and tools/train.py.")
    print(f"Results: {run.join(RESULTS_FILE)}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
