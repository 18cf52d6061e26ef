"""Plots a search or training run directory into RUN_DIR/plots/.

Usage:
  python tools/plot.py RUN_DIR
  python tools/plot.py --run_dir=RUN_DIR [--nocells]

Writes, depending on the files RUN_DIR holds:
  genotype.json      -> plots/normal.png, plots/reduce.png  (cell graphs; need Graphviz `dot`)
  arch_history.json  -> plots/alpha_normal.png, plots/alpha_reduce.png  (softmax(alpha) per edge)
  history.json, else arch_history.json -> plots/curves.png  (loss and accuracy per epoch)

Prints the paths written, one per line. Exits 1 with a message on stderr if the directory is
missing or holds none of these files, if a file is malformed, or if `dot` is missing (install
graphviz, or pass --nocells); exits 1 with usage help on bad arguments.
"""

from __future__ import annotations

import os
import subprocess
import sys

from absl import app, flags

from ubnas_tf import viz
from ubnas_tf.flags import program_name, run_main

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "run_dir", None,
    "Run directory to plot (holding genotype.json, arch_history.json and/or history.json). "
    "May instead be given as the single positional argument; plots go to RUN_DIR/plots/.")
flags.DEFINE_boolean(
    "cells", True,
    "Draw the normal/reduction cell graphs from genotype.json (needs the Graphviz `dot` "
    "executable). Use --nocells to plot only the alpha evolution and the curves.")


def _run_dir(argv: list[str]) -> str:
    """The run directory from the positional argument or --run_dir (not conflicting)."""
    positional = argv[1:]
    if len(positional) > 1:
        raise app.UsageError(f"Expected one RUN_DIR argument; got {len(positional)}: {positional}.")
    if positional and FLAGS.run_dir and os.path.abspath(positional[0]) != os.path.abspath(FLAGS.run_dir):
        raise app.UsageError(
            f"RUN_DIR given twice with different values: {positional[0]!r} and "
            f"--run_dir={FLAGS.run_dir!r}.")
    run_dir = positional[0] if positional else FLAGS.run_dir
    if not run_dir:
        raise app.UsageError("Give the run directory: python tools/plot.py RUN_DIR (or --run_dir).")
    return run_dir


def main(argv: list[str]) -> int:
    run_dir = _run_dir(argv)
    try:
        written = viz.plot_run(run_dir, cells=FLAGS.cells)
    except RuntimeError as err:  # Graphviz `dot` missing (or a plotting backend failure).
        message = str(err)
        if message.startswith(viz.DOT_MISSING_MESSAGE):
            message = f"{viz.DOT_MISSING_MESSAGE}; or pass --nocells to skip the cell graphs."
        print(f"{program_name()}: error: {message}", file=sys.stderr)
        return 1
    except (OSError, ValueError, subprocess.CalledProcessError) as err:
        # Missing dir/files (FileNotFoundError), malformed JSON or genotype, `dot` failing.
        print(f"{program_name()}: error: {err}", file=sys.stderr)
        return 1
    if not written:
        print(f"{program_name()}: nothing plotted: the files in {run_dir!r} record no epochs yet.",
              file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def run() -> None:
    """The ``ubnas-plot`` console script (and ``python tools/plot.py``)."""
    run_main(__name__, main)


if __name__ == "__main__":
    run()
