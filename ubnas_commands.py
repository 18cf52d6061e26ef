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


def _run(module: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    importlib.import_module(module).run()


def search() -> None:
    """``ubnas-search``: `ubnas_tf.cli.search`."""
    _run("ubnas_tf.cli.search")


def train() -> None:
    """``ubnas-train``: `ubnas_tf.cli.train`."""
    _run("ubnas_tf.cli.train")


def convert() -> None:
    """``ubnas-convert``: `ubnas_tf.cli.convert`."""
    _run("ubnas_tf.cli.convert")


def summary() -> None:
    """``ubnas-summary``: `ubnas_tf.cli.summary`."""
    _run("ubnas_tf.cli.summary")


def plot() -> None:
    """``ubnas-plot``: `ubnas_tf.cli.plot`."""
    _run("ubnas_tf.cli.plot")


def compare_modules() -> None:
    """``ubnas-compare-modules``: `ubnas_tf.cli.compare_modules`."""
    _run("ubnas_tf.cli.compare_modules")


def latency_table() -> None:
    """``ubnas-latency-table``: `ubnas_tf.cli.latency_table`."""
    _run("ubnas_tf.cli.latency_table")


def bench_latency() -> None:
    """``ubnas-bench-latency``: `ubnas_tf.experiments.inference_latency`."""
    _run("ubnas_tf.experiments.inference_latency")


def bench_latency_prediction() -> None:
    """``ubnas-bench-latency-prediction``: `ubnas_tf.experiments.latency_prediction`."""
    _run("ubnas_tf.experiments.latency_prediction")


def bench_throughput() -> None:
    """``ubnas-bench-throughput``: `ubnas_tf.experiments.search_throughput`."""
    _run("ubnas_tf.experiments.search_throughput")


def bench_input() -> None:
    """``ubnas-bench-input``: `ubnas_tf.experiments.input_pipeline`."""
    _run("ubnas_tf.experiments.input_pipeline")


def bench_search_vs_random() -> None:
    """``ubnas-bench-search-vs-random``: `ubnas_tf.experiments.search_vs_random`."""
    _run("ubnas_tf.experiments.search_vs_random")


def studies() -> None:
    """``ubnas-studies``: `ubnas_tf.experiments.studies`."""
    _run("ubnas_tf.experiments.studies")


def bench_train() -> None:
    """``ubnas-bench-train``: `ubnas_tf.experiments.train_throughput`."""
    _run("ubnas_tf.experiments.train_throughput")


def evidence() -> None:
    """``ubnas-evidence``: `ubnas_tf.evidence.cli`."""
    _run("ubnas_tf.evidence.cli")
