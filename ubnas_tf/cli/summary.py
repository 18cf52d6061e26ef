"""Prints the cost of a saved Keras/Larq model: binary/real params, size, BOPs, FLOPs, OPs.

    python tools/summary.py --model=runs/x/model.keras --output=runs/x/cost.json

Counting rules: `ubnas_tf.cost` (OPs = BOPs/64 + FLOPs, one MAC = one operation).
"""

from __future__ import annotations

import sys

import larq  # noqa: F401  (registers Larq layers and quantizers for load_model)
from absl import app, flags, logging

from ubnas_tf.cli._stops import EXIT_FLAG_ERROR
from ubnas_tf.cost import model_cost
from ubnas_tf.deploy.convert import load_saved_model
from ubnas_tf.errors import FlagError
from ubnas_tf.flags import check_output_file, program_name, run_main

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model", None, "Saved model to account for: a .keras/.h5 file or a SavedModel directory."
)
flags.DEFINE_string("output", None, "If set, the cost report is also written to this JSON file.")
flags.DEFINE_list(
    "input_shape",
    None,
    "Per-example input shape such as 32,32,3, needed only for models without a fixed input shape.",
)
flags.DEFINE_bool(
    "training",
    False,
    "Trace the model in training mode, so that layers used only in training (an auxiliary head) are counted.",
)
flags.mark_flag_as_required("model")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        if FLAGS.output:  # before loading the model: a bad path is refused up front
            check_output_file(FLAGS.output)
    except FlagError as err:
        print(f"{program_name()}: error: {err}", file=sys.stderr)
        return EXIT_FLAG_ERROR
    logging.set_verbosity(logging.WARNING)  # TF's SavedModel INFO lines drown the progress
    print(f"loading {FLAGS.model}...", flush=True)
    try:
        model = load_saved_model(FLAGS.model)
    except ValueError as err:
        raise SystemExit(f"Error: {err}") from None
    shape = [int(d) for d in FLAGS.input_shape] if FLAGS.input_shape else None
    report = model_cost(model, input_shape=shape, training=FLAGS.training)
    print(report.table())
    if FLAGS.output:
        report.save(FLAGS.output)
        print(f"wrote {FLAGS.output}")
    return 0


def run() -> None:
    """The ``ubnas-summary`` console script (and ``python tools/summary.py``)."""
    run_main(__name__, main)


if __name__ == "__main__":
    run()
