"""Measures a latency table: the LCE batch-1 time of every part of an evaluation network.

    python tools/latency_table.py --train_flagfile=flags/fashion_mnist_train.flags \\
        --output=runs/latency/fashion_mnist_x86.json
    python tools/search.py --flagfile=flags/fashion_mnist_latency.flags \\
        --latency_table=runs/latency/fashion_mnist_x86.json --target_latency_ms=1.5

Every searchable op at every place the network of --train_flagfile can run it, and the fixed
parts (stem, cell preprocessing, node sums and concatenation, classifier), are built as
one-input Keras models, converted by LCE and timed with LCE's interpreter at batch 1 with
--num_threads (see `ubnas_tf.deploy.latency`). An x86 table is for x86: LCE runs portable
kernels there, not its ARM ones.

For a phone: --export_dir also writes every part as a .tflite with a manifest. Time each file
on the phone with LCE's ``lce_benchmark_model`` and write a CSV ``file,ms``; then

    python tools/latency_table.py --manifest=DIR/manifest.json --import_timings=times.csv \\
        --device="Pixel 6, 1 thread" --num_threads=1 --output=pixel6.json

turns it into a table (docs/latency.md).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging

from ubnas_tf.cli._budget import eval_network_of, network_spec
from ubnas_tf.deploy.latency import (
    convert_parts,
    device_description,
    export_parts,
    lce_version,
    measure_parts,
    table_from_measurements,
    table_from_timings,
)
from ubnas_tf.errors import FlagError, LatencyTableError
from ubnas_tf.flags import (
    check_output_dir,
    parse_train_flagfile,
    program_name,
    run_main,
)
from ubnas_tf.search.budget import latency_cost_table
from ubnas_tf.tables import text_table

FLAGS = flags.FLAGS
flags.DEFINE_string("train_flagfile", None,
                    "The tools/train.py flagfile whose evaluation network (--dataset, --layers, "
                    "--init_channels, --stem_multiplier, --stem_strides, --module_config) "
                    "the table is for.")
flags.DEFINE_list("primitives", None, "The search space whose ops are measured (default: the "
                  "search's default primitives).")
flags.DEFINE_string("output", None, "The latency table (JSON) to write.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")
flags.DEFINE_integer("num_threads", 1, "Threads of LCE's interpreter.", lower_bound=1)
flags.DEFINE_integer("rounds", 10, "Rounds over all parts, each in a fresh random order; a "
                     "part's time is its fastest run of all rounds.", lower_bound=1)
flags.DEFINE_integer("runs", 20, "Timed inferences of a part per round.", lower_bound=1)
flags.DEFINE_integer("warmup", 10, "Untimed inferences of each part first.", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seed of the rounds' order.")
flags.DEFINE_string("export_dir", None, "Also write every part as a .tflite file, with a "
                    "manifest.json, to time on another device.")
flags.DEFINE_string("manifest", None, "With --import_timings: the manifest.json that "
                    "--export_dir wrote.")
flags.DEFINE_string("import_timings", None, "Build the table from another device's times: a "
                    "CSV with the columns `file` (a .tflite of --manifest) and `ms`; nothing "
                    "is measured here.")
flags.DEFINE_string("device", None, "With --import_timings: the device the times were "
                    "measured on (e.g. \"Pixel 6, Android 14\").")
flags.mark_flag_as_required("output")


def _check_flags() -> None:
    importing = FLAGS.import_timings is not None
    if importing:
        for name in ("manifest", "device"):
            if not FLAGS[name].value:
                raise FlagError(f"--import_timings needs --{name}.")
        for name in ("train_flagfile", "export_dir"):
            if FLAGS[name].value:
                raise FlagError(f"--{name} measures here; --import_timings builds the table from "
                                "another device's times. Give one of them.")
    elif not FLAGS.train_flagfile:
        raise FlagError("--train_flagfile is required (or --import_timings with --manifest): "
                        "the tools/train.py flagfile of the network to measure.")
    elif FLAGS.manifest or FLAGS.device:
        raise FlagError("--manifest and --device are only used with --import_timings.")
    if os.path.exists(FLAGS.output) and not FLAGS.overwrite:
        raise FlagError(f"--output={FLAGS.output} exists; pass --overwrite to replace it.")
    check_output_dir(os.path.dirname(os.path.abspath(FLAGS.output)), "--output's directory")
    if FLAGS.export_dir:
        check_output_dir(FLAGS.export_dir, "--export_dir")


def _spec():
    fv = parse_train_flagfile(FLAGS.train_flagfile, "--train_flagfile")
    try:
        return network_spec(fv.dataset, eval_network_of(fv), fv.module_config, FLAGS.primitives)
    except ValueError as err:
        raise FlagError(f"--primitives: {err}") from None


def _log(message: str) -> None:
    print(message, flush=True)


def _measure(spec):
    start = time.time()
    flatbuffers = convert_parts(spec, progress=_log)
    if FLAGS.export_dir:
        _log(f"wrote {export_parts(spec, flatbuffers, FLAGS.export_dir)}")
    load_before = os.getloadavg()
    measured = measure_parts(flatbuffers, FLAGS.num_threads, FLAGS.rounds, FLAGS.runs,
                             FLAGS.warmup, FLAGS.seed, progress=_log)
    measurement = {"rounds": FLAGS.rounds, "runs": FLAGS.runs, "warmup": FLAGS.warmup,
                   "seed": FLAGS.seed, "batch": 1,
                   "statistic": "minimum over all runs of shuffled rounds; the empty "
                                "model's time subtracted",
                   "load_average_before": list(load_before),
                   "load_average_after": list(os.getloadavg()),
                   "wall_s": round(time.time() - start, 1)}
    runtime = {"lce_version": lce_version(), "num_threads": FLAGS.num_threads,
               "use_indirect_bgemm": True, "use_xnnpack": False}
    return table_from_measurements(spec, measured, device_description(), runtime, measurement)


def _report(table) -> None:
    costs = latency_cost_table(table)
    fixed = {k: v for k, v in table.entries.items() if not k.startswith("op/") and v > 0}
    ops = {k: v for k, v in table.entries.items() if k.startswith("op/")}
    rows = [[k, f"{v:.4f}"] for k, v in sorted(fixed.items())]
    rows += [[k, f"{v:.4f}"] for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:8]]
    print(text_table(["part (fixed, then the 8 dearest ops)", "ms"], rows))
    low, high = costs.cost_range()
    print(f"Device: {table.device.get('processor') or table.device}; LCE "
          f"{table.runtime.get('lce_version')}, {table.runtime.get('num_threads')} thread(s); "
          f"overhead per inference {table.overhead_ms:.4f} ms")
    print(f"Derivable networks: {low:.3f} to {high:.3f} ms (fixed part {costs.base:.3f} ms)")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # TF's SavedModel INFO lines drown the progress
    try:
        _check_flags()
        if FLAGS.import_timings:
            table = table_from_timings(FLAGS.manifest, FLAGS.import_timings,
                                       {"description": FLAGS.device}, FLAGS.num_threads)
        else:
            table = _measure(_spec())
    except (FlagError, LatencyTableError) as err:
        print(f"{program_name()}: error: {err}", file=sys.stderr)
        return 2
    table.save(FLAGS.output)
    _report(table)
    print(f"wrote {FLAGS.output}")
    return 0


def run() -> None:
    """The ``ubnas-latency-table`` console script (and ``python tools/latency_table.py``)."""
    run_main(__name__, main)


if __name__ == "__main__":
    run()
