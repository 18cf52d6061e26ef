"""Retrain a searched genotype with plain Keras `model.fit` (two-stage BNN recipe).

    python tools/train.py --flagfile=flags/fashion_mnist_train.flags \\
        --genotype=runs/fashion_mnist_search/genotype.json

Writes model_best.keras / model_final.keras (inference models), history.json, cost.json,
summary.json, checkpoints and TensorBoard logs to --output_dir (see WORKSPACE.md);
re-running the same command resumes an interrupted run (from an epoch's end, or a step with
--checkpoint_every_steps). SIGTERM saves a checkpoint at the next step and exits with status
75; a full disk exits with status 74 and one line naming the file.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from ubnas_tf import flags as ub_flags
from ubnas_tf.cli._run import run_in_directory
from ubnas_tf.cli._stops import EXIT_FLAG_ERROR, EXIT_NON_FINITE, report_weights
from ubnas_tf.io_utils import read_json
from ubnas_tf.nets.training import TrainConfig, run_training
from ubnas_tf.rundir import NonFiniteError, ResumeError
from ubnas_tf.viz import plot_run

ub_flags.define_run_flags(default_output_dir="runs/train")
ub_flags.define_device_flags()
ub_flags.define_train_flags()  # the options of TrainConfig
flags.mark_flag_as_required("genotype")
flags.adopt_module_key_flags(ub_flags)  # list them under --help, not only --helpfull
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    return run_in_directory("train", ub_flags.validate_train_flags, _train, absolute_paths=["genotype"])


def _train(run) -> int:
    state = run.read_state() or {}
    if state.get("finished") and os.path.exists(run.join("summary.json")):
        summary = read_json(run.join("summary.json"))
        print(f"The training in {run.shared_path} is already complete.")
    else:
        cfg = ub_flags.config_from_flags(TrainConfig)
        try:
            summary = run_training(cfg, run)
        except ResumeError as err:
            print(f"{ub_flags.program_name()}: error: {err}", file=sys.stderr)
            return EXIT_FLAG_ERROR
        except (NonFiniteError, ValueError) as err:
            print(f"{ub_flags.program_name()}: error: {err}", file=sys.stderr)
            return EXIT_NON_FINITE
    try:
        if not run.is_worker_copy:
            plot_run(run.path, cells=True)
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        print(f"WARNING: plots not written: {err}", file=sys.stderr)
    if "test_accuracy" in summary:  # not on a multi-worker run's other workers
        print(f"\nTest accuracy: final model {summary['test_accuracy']:.4f}, best-validation "
              f"model {summary['best_model_test_accuracy']:.4f}; wall time "
              f"{summary['wall_time_s']:.0f} s")
    report_weights(summary, run)
    if not run.is_worker_copy:
        print(f"Models: {run.join('model_best.keras')}, {run.join('model_final.keras')}")
    return 0


def run() -> None:
    """The ``ubnas-train`` console script (and ``python tools/train.py``)."""
    ub_flags.run_main(__name__, main)


if __name__ == "__main__":
    run()
