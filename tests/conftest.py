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
    (`tool_runs.ToolRuns`, a few at a time, each in its own process forked after one import
    of TensorFlow): importing TensorFlow dominates a failing tool's run time, so with one
    interpreter each they would take minutes. Each test inspects its own."""
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


# The test files that take longest under the README's `-n 2 --dist loadfile` (CI, 2 cores),
# longest first (each 4-7 min on CI, the last three 2-3): most of their time is tools run
# as subprocesses (tiny searches and trainings, their resumptions). xdist hands files out by
# number of tests, so a long file with few tests (test_mock_end_to_end.py: 2) came last and
# ran alone while the other worker idled; handed out first, the short files fill in at the
# end instead.
LONGEST_FILES = (
    "test_mock_end_to_end.py",
    "test_tool_search.py",
    "test_search_vs_random.py",
    "test_tool_train.py",
    "test_multi_worker.py",
    "test_module_comparison.py",
    "test_nets.py",
    "test_search.py",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, with the files of LONGEST_FILES handed out first (then xdist's own
    order: most tests first)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling  # deferred: xdist is optional (-n runs)

    class LongestFilesFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            if not getattr(self, "_ordered", False):  # the first assignment: the queue is full
                self._ordered = True
                rank = {name: i for i, name in enumerate(LONGEST_FILES)}
                order = sorted(self.workqueue, key=lambda scope: rank.get(
                    Path(scope).name, len(rank)))  # stable: the rest keep xdist's order
                self.workqueue = type(self.workqueue)(
                    (scope, self.workqueue[scope]) for scope in order)
            super()._assign_work_unit(node)

    return LongestFilesFirst(config, log)
