"""Search a binary architecture with UBNAS.

    python tools/search.py --flagfile=flags/fashion_mnist.flags

Writes the run directory described in WORKSPACE.md; re-running the same command resumes an
interrupted run from its last checkpoint (an epoch's end, or a step with
--checkpoint_every_steps). SIGTERM saves a checkpoint at the next step and exits with status
75; a full disk exits with status 74 and one line naming the file (see WORKSPACE.md).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from ubnas_tf import flags as ub_flags
from ubnas_tf.cli._budget import budget_cost_table
from ubnas_tf.cli._run import run_in_directory
from ubnas_tf.cli._stops import EXIT_FLAG_ERROR, EXIT_NON_FINITE, report_weights
from ubnas_tf.genotype import Genotype
from ubnas_tf.io_utils import read_json
from ubnas_tf.rundir import NonFiniteError, ResumeError
from ubnas_tf.search.network import describe_genotype
from ubnas_tf.search.runner import SearchConfig, run_search
from ubnas_tf.viz import plot_run

ub_flags.define_run_flags(default_output_dir="runs/search")
ub_flags.define_device_flags()
ub_flags.define_search_flags()  # the options of SearchConfig
flags.adopt_module_key_flags(ub_flags)  # list them under --help, not only --helpfull
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    return run_in_directory("search", validate_flags, _search,
                            absolute_paths=["target_train_flagfile", "latency_table"])


def validate_flags(num_train: int) -> None:
    """What absl cannot check of the search's flags: the registries, the batch against the
    data and --target_mops against its network's cost; raises FlagError."""
    ub_flags.validate_search_flags(num_train)
    ub_flags.validate_budget_flags(budget_cost_table())


def _search(run) -> int:
    state = run.read_state() or {}
    if state.get("finished") and os.path.exists(run.join("summary.json")):
        summary = read_json(run.join("summary.json"))
        print(f"The search in {run.shared_path} is already complete "
              f"({summary['epochs_run']} epochs, {summary['stop_reason']}).")
    else:
        cfg = ub_flags.config_from_flags(SearchConfig, cost_table=budget_cost_table())
        try:
            summary = run_search(cfg, run)
        except NonFiniteError as err:
            print(f"{ub_flags.program_name()}: error: {err}", file=sys.stderr)
            return EXIT_NON_FINITE
        except ResumeError as err:
            print(f"{ub_flags.program_name()}: error: {err}", file=sys.stderr)
            return EXIT_FLAG_ERROR
    if not run.is_worker_copy:
        _make_plots(run.path)
    genotype = Genotype.from_dict(summary["genotype"], primitives=None)
    print("\nDerived genotype:")
    print(describe_genotype(genotype, FLAGS.module_config))
    figures = summary.get("decisiveness") or {}
    if figures:
        print(f"Decisiveness: derived-op weight on kept edges {figures['op_max_kept']:.3f}, "
              f"op entropy {figures['op_entropy']:.3f}, kept-edge mass "
              f"{figures['edge_kept_mass']:.3f}, edge entropy {figures['edge_entropy']:.3f}")
    for key, unit in (("mops", "MOPs"), ("latency_ms", "ms")):
        if summary.get(f"target_{key}") is not None:
            print(f"Budget {summary[f'target_{key}']} {unit}: derived network "
                  f"{summary[f'genotype_{key}']:.3f} {unit} (expected "
                  f"{summary[f'expected_{key}']:.3f})")
    print(f"\nEpochs run: {summary['epochs_run']} of {summary['max_epochs']} "
          f"(stop reason: {summary['stop_reason']}; {summary['epochs_saved']} epochs saved). "
          f"Wall time {summary['wall_time_s']:.0f} s, {summary['images_per_second']} images/s.")
    report_weights(summary, run)
    if not run.is_worker_copy:
        print(f"Genotype: {run.join('genotype.json')}\nSummary:  {run.join('summary.json')}")
    return 0


def _make_plots(run_dir: str) -> None:
    try:
        paths = plot_run(run_dir)
        print("Plots: " + ", ".join(os.path.relpath(p, run_dir) for p in paths))
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        print(f"WARNING: plots not written: {err}", file=sys.stderr)


def run() -> None:
    """The ``ubnas-search`` console script (and ``python tools/search.py``)."""
    ub_flags.run_main(__name__, main)


if __name__ == "__main__":
    run()
