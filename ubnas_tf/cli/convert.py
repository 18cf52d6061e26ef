"""Converts a saved Keras/Larq model to a .tflite with the Larq Compute Engine, and checks it.

    python tools/convert.py --model=runs/x/model.keras --output=runs/x/model.tflite

Checks (`ubnas_tf.deploy.verify_conversion`): every binary conv became an LCE `LceBconv2d`,
and the LCE interpreter's top-1 predictions agree with Keras on --verify_examples inputs
(from --verify_data, else random normal inputs). The .tflite is written, atomically, only
when the checks pass, with the mode of a plain file (0666 less the umask); otherwise, or when
the disk is full, the reason is printed and the exit status is 1.
"""

from __future__ import annotations

import sys
import time

import larq  # noqa: F401  (registers Larq layers and quantizers for load_model)
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from ubnas_tf import io_utils
from ubnas_tf.cli._stops import EXIT_FLAG_ERROR
from ubnas_tf.data import DatasetError, get_info, load_arrays, normalize
from ubnas_tf.deploy.convert import (
    ConversionError,
    binary_conv_layers,
    check_binary_ops,
    convert_model,
    load_saved_model,
    verify_conversion,
)
from ubnas_tf.errors import FlagError
from ubnas_tf.flags import check_output_file, program_name, run_main

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model", None, "Saved model to convert: a .keras/.h5 file or a SavedModel directory."
)
flags.DEFINE_string("output", None, "Path of the .tflite to write (only once the checks pass).")
flags.DEFINE_integer(
    "verify_examples",
    256,
    "How many examples to compare LCE and Keras predictions on (0 checks the op names only).",
    lower_bound=0,
)
flags.DEFINE_string(
    "verify_data",
    None,
    "An .npz with arrays x (inputs) and optionally y (labels) to verify on; random normal inputs when unset.",
)
flags.DEFINE_float(
    "min_agreement",
    0.99,
    "Smallest fraction of examples whose LCE and Keras top-1 classes must agree.",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.DEFINE_integer(
    "num_threads", 1, "Threads of the LCE interpreter used for verification.", lower_bound=1
)
flags.DEFINE_integer("seed", 0, "Seed of the random normal verification inputs.",
                     lower_bound=0, upper_bound=2**32 - 1)
flags.DEFINE_bool("allow_float", False,
                  "Convert a model that has no binary conv (a float network) instead of "
                  "refusing it: LCE would have nothing to binarise.")
flags.DEFINE_string(
    "dataset",
    None,
    "Verify on the first --verify_examples held-out test images of this dataset "
    "(e.g. fashion_mnist), normalised as in training; overrides random inputs.",
)
flags.DEFINE_string("data_dir", None, "Where --dataset lives (as for tools/train.py).")
flags.mark_flags_as_required(["model", "output"])


def _verification_inputs(
    model: tf.keras.Model, n: int
) -> tuple[np.ndarray, np.ndarray | None, str]:
    if FLAGS.verify_data:
        with np.load(FLAGS.verify_data) as data:
            x = data["x"][:n].astype(np.float32)
            y = data["y"][:n] if "y" in data else None
        return x, y, f"{len(x)} examples of {FLAGS.verify_data}"
    if FLAGS.dataset:
        try:
            info = get_info(FLAGS.dataset)
            x, y = load_arrays(FLAGS.dataset, "test", FLAGS.data_dir, max_examples=n)
        except (DatasetError, ValueError) as err:
            raise app.UsageError(f"--dataset={FLAGS.dataset}: {err}") from err
        return normalize(x, info).numpy(), y, f"the first {len(x)} {FLAGS.dataset} test images"
    shape = model.inputs[0].shape.as_list()[1:]
    if any(d is None for d in shape):
        raise app.UsageError(f"Model input shape {shape} is not fixed; pass --verify_data.")
    x = np.random.default_rng(FLAGS.seed).normal(size=(n, *shape)).astype(np.float32)
    return x, None, f"{n} random normal inputs of shape {tuple(shape)} (no --verify_data)"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        check_output_file(FLAGS.output)  # before converting: a bad path is refused up front
    except FlagError as err:
        print(f"{program_name()}: error: {err}", file=sys.stderr)
        return EXIT_FLAG_ERROR
    logging.set_verbosity(logging.WARNING)  # TF's SavedModel INFO lines drown the progress
    print(f"loading {FLAGS.model}...", flush=True)
    try:
        model = load_saved_model(FLAGS.model)
    except ValueError as err:
        raise SystemExit(f"Error: {err}") from None
    if not binary_conv_layers(model) and not FLAGS.allow_float:
        raise SystemExit(
            f"Error: --model={FLAGS.model} has no binary conv (a Larq QuantConv2D with 1-bit "
            "input and kernel quantizers), so LCE has nothing to binarise and the .tflite "
            "would be a float network. Give a model built by tools/train.py, or pass "
            "--allow_float to convert it anyway.")
    try:
        print("converting...", flush=True)
        start = time.perf_counter()
        flatbuffer = convert_model(model)
        seconds = time.perf_counter() - start
        print(f"converted in {seconds:.1f} s, {len(flatbuffer) / 1024:.1f} KB")
        n_binary, n_bconv, counts = check_binary_ops(model, flatbuffer)
        print("op counts: " + ", ".join(f"{name}={n}" for name, n in counts.items()))
        print(f"binary convs: {n_binary} in Keras, {n_bconv} LceBconv2d in the flatbuffer")
        if FLAGS.verify_examples:
            x, y, source = _verification_inputs(model, FLAGS.verify_examples)
            print(f"verifying on {len(x)} examples: {source}...", flush=True)
            report = verify_conversion(
                model,
                flatbuffer,
                x,
                min_agreement=FLAGS.min_agreement,
                num_threads=FLAGS.num_threads,
                y=y,
            )
            print(
                f"top-1 agreement {report.agreement:.4f} ({report.n_disagree} of "
                f"{report.n_examples} differ), max |LCE - Keras| {report.max_abs_diff:.3g}"
            )
            if report.lce_accuracy is not None:
                print(
                    f"top-1 accuracy: Keras {report.keras_accuracy:.4f}, LCE {report.lce_accuracy:.4f}"
                )
        else:
            print("verification of predictions skipped (--verify_examples=0)")
    except ConversionError as err:
        raise SystemExit(f"conversion failed: {err}") from err
    try:
        io_utils.atomic_write_bytes(FLAGS.output, flatbuffer)
    except io_utils.DiskFullError as err:  # one line, no traceback; nothing half-written is left
        raise SystemExit(f"{program_name()}: error: {err}; nothing was written; free space "
                         "and re-run the same command.") from None
    print(f"wrote {FLAGS.output} ({len(flatbuffer) / 1024:.1f} KB)")
    return 0


def run() -> None:
    """The ``ubnas-convert`` console script (and ``python tools/convert.py``)."""
    run_main(__name__, main)


if __name__ == "__main__":
    run()
