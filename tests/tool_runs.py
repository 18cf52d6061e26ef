"""Shared by the tests that run tools and benchmarks as subprocesses: their environment and
what they keep of a finished command."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def subprocess_env(repo_on_path: bool = True, single_thread: bool = True) -> dict[str, str]:
    """The environment of a tool or benchmark subprocess: quiet TensorFlow, no GPU, no display.

    `repo_on_path` puts the repository on PYTHONPATH; without it the script must find the
    repository by itself, as when a user runs it. `single_thread`: bit-exact comparisons
    (resume vs uninterrupted) need single-threaded kernels, since with 2+ intra-op threads
    some sums depend on scheduling and binary training amplifies the last-bit differences
    (see WORKSPACE.md); it also keeps parallel subprocesses from fighting over 2 cores.
    """
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["MPLBACKEND"] = "Agg"
    env["CUDA_VISIBLE_DEVICES"] = ""
    if single_thread:
        env["TF_NUM_INTRAOP_THREADS"] = "1"
        env["TF_NUM_INTEROP_THREADS"] = "1"
    if repo_on_path:
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    else:
        env.pop("PYTHONPATH", None)
    return env


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def output(self) -> str:
        return self.stderr + "\n" + self.stdout

    def __str__(self) -> str:
        return (f"exit {self.returncode} after {self.elapsed:.1f} s\n--- stderr (tail) ---\n"
                f"{self.stderr[-3000:]}\n--- stdout (tail) ---\n{self.stdout[-3000:]}")


# Runs a tool's console entry inside `tfds.testing.mock_data`: the real tool code path, with
# tensorflow-datasets serving random examples of the real dataset's features.
_MOCK_LAUNCHER = """
import sys
import tensorflow_datasets as tfds
from ubnas_tf.cli import {tool} as tool
sys.argv = ["tools/{tool}.py", *sys.argv[1:]]
with tfds.testing.mock_data(num_examples={num_examples}):
    tool.run()
"""


def mock_data_command(tool: str, num_examples: int) -> list[str]:
    """``python -c ...`` that runs `tool` (search, train, convert, ...) with the arguments
    appended to it, on `tfds.testing.mock_data(num_examples=...)`."""
    import sys

    return [sys.executable, "-c", _MOCK_LAUNCHER.format(tool=tool, num_examples=num_examples)]
