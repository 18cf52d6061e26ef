"""Shared test set-up: TensorFlow runs as the tools run it, and the fixtures several test
modules use. Plain helpers (tool subprocesses, shared data) are in tool_runs.py."""

import os

# As `ubnas_tf/__init__.py` sets it for the tools; here before any test module imports
# TensorFlow, so in-process and subprocess runs use the same kernels.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from pathlib import Path

import pytest
from tool_runs import (
    FASHION_DIR,
    FASHION_SKIP_REASON,
    HAVE_FASHION,
    ToolRun,
    ToolRuns,
    write_fashion_subset,
)


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    """The real Fashion-MNIST's directory; the test (or fixture) is skipped without it."""
    if not HAVE_FASHION:
        pytest.skip(FASHION_SKIP_REASON)
    return FASHION_DIR


# The subset of `fashion_mnist_small`: as many training images as the tiny trainings take
# (--max_examples=200), a twentieth of the test set.
SMALL_TRAIN, SMALL_TEST = 200, 500


@pytest.fixture(scope="session")
def fashion_mnist_small(fashion_mnist, tmp_path_factory) -> Path:
    """A data_dir with the first SMALL_TRAIN training and SMALL_TEST test images of the real
    Fashion-MNIST (`tool_runs.write_fashion_subset`), for tiny trainings (--max_examples <=
    SMALL_TRAIN: the same training images) whose checks do not need all 10,000 test images."""
    return write_fashion_subset(tmp_path_factory.mktemp("fashion_mnist_small"), SMALL_TRAIN,
                                SMALL_TEST)


@pytest.fixture(scope="module")
def cli(request, tmp_path_factory):
    """The results of the tool command lines (`tool_runs.ToolRun`) that this module's
    selected tests take as parameters, all started together when the first is needed
    (`tool_runs.ToolRuns`, a few at a time): importing TensorFlow dominates a failing tool's
    run time, so one after another they would take minutes. Each test inspects its own."""
    runs: dict[str, ToolRun] = {}
    for item in request.session.items:
        if item.module is request.module and "cli" in item.fixturenames:
            params = getattr(item, "callspec", None)
            for value in (params.params.values() if params else ()):
                if isinstance(value, ToolRun):
                    runs.setdefault(value.id, value)
    runner = ToolRuns(tmp_path_factory.mktemp("tool_runs"), list(runs.values()))
    yield runner
    runner.close()

