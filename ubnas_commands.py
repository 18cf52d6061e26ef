"""The entry of ubnas-tf's commands: the ``ubnas-*`` console scripts and the files under
tools/ and benchmarks/ call a function here.

Each one hides TensorFlow's start-up noise on CPU-only machines (CUDA factory registration
errors) unless the user chose a level, then imports its command's module and runs it. That
must happen before TensorFlow loads, hence a module outside the package: importing
`ubnas_tf` loads TensorFlow (to register its Keras objects), and a program that imports
`ubnas_tf` as a library keeps TensorFlow's own default.
"""

from __future__ import annotations

import importlib
import os

# Command (the function's name; a tools/ file's name for the tools) -> its module, which
# defines the command's flags on import and has run().
COMMANDS = {
    "search": "ubnas_tf.cli.search",
    "train": "ubnas_tf.cli.train",
    "convert": "ubnas_tf.cli.convert",
    "summary": "ubnas_tf.cli.summary",
    "plot": "ubnas_tf.cli.plot",
    "compare_modules": "ubnas_tf.cli.compare_modules",
    "latency_table": "ubnas_tf.cli.latency_table",
    "bench_latency": "ubnas_tf.experiments.inference_latency",
    "bench_latency_prediction": "ubnas_tf.experiments.latency_prediction",
    "bench_throughput": "ubnas_tf.experiments.search_throughput",
    "bench_input": "ubnas_tf.experiments.input_pipeline",
    "bench_search_vs_random": "ubnas_tf.experiments.search_vs_random",
    "studies": "ubnas_tf.experiments.studies",
    "bench_train": "ubnas_tf.experiments.train_throughput",
    "evidence": "ubnas_tf.evidence.cli",
}


def _run(command: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    importlib.import_module(COMMANDS[command]).run()


def search() -> None:
    """``ubnas-search``."""
    _run("search")


def train() -> None:
    """``ubnas-train``."""
    _run("train")


def convert() -> None:
    """``ubnas-convert``."""
    _run("convert")


def summary() -> None:
    """``ubnas-summary``."""
    _run("summary")


def plot() -> None:
    """``ubnas-plot``."""
    _run("plot")


def compare_modules() -> None:
    """``ubnas-compare-modules``."""
    _run("compare_modules")


def latency_table() -> None:
    """``ubnas-latency-table``."""
    _run("latency_table")


def bench_latency() -> None:
    """``ubnas-bench-latency``."""
    _run("bench_latency")


def bench_latency_prediction() -> None:
    """``ubnas-bench-latency-prediction``."""
    _run("bench_latency_prediction")


def bench_throughput() -> None:
    """``ubnas-bench-throughput``."""
    _run("bench_throughput")


def bench_input() -> None:
    """``ubnas-bench-input``."""
    _run("bench_input")


def bench_search_vs_random() -> None:
    """``ubnas-bench-search-vs-random``."""
    _run("bench_search_vs_random")


def studies() -> None:
    """``ubnas-studies``."""
    _run("studies")


def bench_train() -> None:
    """``ubnas-bench-train``."""
    _run("bench_train")


def evidence() -> None:
    """``ubnas-evidence``."""
    _run("evidence")
