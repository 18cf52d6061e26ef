"""Run directories: recorded flags, resumable state and crash-safe checkpoints.

Layout (see WORKSPACE.md): ``flags.json`` + ``flags.txt`` (the flags that made the run),
``state.json`` (last completed epoch and tool state), ``checkpoints/`` (tf.train checkpoints
of the model and optimisers, written by `tf.train.CheckpointManager`, whose index update
is atomic), ``tensorboard/`` and the tool's results.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterable

import tensorflow as tf

from ubnas_tf.errors import FlagError
from ubnas_tf.io_utils import atomic_write_json, atomic_write_text, read_json

__all__ = ["RunDirectory", "CheckpointCallback", "NonFiniteError", "diff_flags", "write_flagfile"]

# Flags that may change between a run and its resumption without changing its result.
RESUME_IGNORED_FLAGS = ("overwrite", "verbose", "steps_per_execution")


def write_flagfile(path: str, values: dict) -> None:
    """Writes an absl flagfile that reproduces `values` (atomically).

    absl reads each line of a flagfile verbatim as one argument (no shell quoting), so values
    are written as they are; a value with a line break cannot be written and is refused.
    """
    lines = []
    for name, value in sorted(values.items()):
        if value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"--{name}" if value else f"--no{name}")
        elif isinstance(value, (list, tuple)):
            lines.append(f"--{name}={','.join(map(str, value))}")
        else:
            lines.append(f"--{name}={value}")
        if "\n" in lines[-1] or "\r" in lines[-1]:
            raise ValueError(f"--{name}={value!r}: a flagfile cannot hold a line break")
    atomic_write_text(path, "\n".join(lines) + "\n")


def diff_flags(recorded: dict, current: dict, ignore: Iterable[str] = ()) -> list[str]:
    """Human-readable differences between two flag dicts (after a JSON round trip)."""
    ignore = set(ignore)
    current = json.loads(json.dumps(current))
    out = []
    for name in sorted(set(recorded) | set(current)):
        if name in ignore:
            continue
        if recorded.get(name) != current.get(name):
            out.append(f"--{name}: run directory has {recorded.get(name)!r}, now {current.get(name)!r}")
    return out


class NonFiniteError(RuntimeError):
    """A loss, gradient or architecture value became NaN or Inf."""


class ResumeError(RuntimeError):
    """A run directory whose checkpoints cannot be resumed (damaged, or written by another
    version of the code); the message says to pass --overwrite."""


class RunDirectory:
    """One tool run's directory; refuses to mix runs made with different flags."""

    def __init__(self, path: str, tool: str):
        self.path = os.path.abspath(path)
        self.tool = tool

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def checkpoint_dir(self) -> str:
        return self.join("checkpoints")

    def prepare(self, flag_values: dict, overwrite: bool) -> None:
        """Checks recorded flags against `flag_values` (or starts afresh), then records them."""
        recorded_path = self.join("flags.json")
        if os.path.exists(recorded_path):
            try:
                recorded = read_json(recorded_path)
            except ValueError as err:
                raise FlagError(f"{recorded_path} is unreadable ({err}); use --overwrite.") from err
            if recorded.get("tool") != self.tool and not overwrite:
                raise FlagError(f"--output_dir={self.path} holds a {recorded.get('tool')!r} run, "
                                f"not a {self.tool!r} run; choose another directory or --overwrite.")
            diffs = diff_flags(recorded.get("flags", {}), flag_values, RESUME_IGNORED_FLAGS)
            if diffs and not overwrite:
                raise FlagError(
                    f"--output_dir={self.path} holds a run made with different flags:\n  "
                    + "\n  ".join(diffs)
                    + "\nRe-run with the same flags to resume it, choose another --output_dir, "
                    "or pass --overwrite to start afresh."
                )
            if overwrite:
                shutil.rmtree(self.path)
        elif overwrite and os.path.isdir(self.path) and os.listdir(self.path):
            # Not a run directory (no flags.json): never delete it (think --output_dir=.).
            raise FlagError(f"--output_dir={self.path} is not empty and holds no flags.json, so "
                            "it is not a run directory; --overwrite deletes only run directories. "
                            "Choose another --output_dir.")
        os.makedirs(self.path, exist_ok=True)
        atomic_write_json(recorded_path, {"tool": self.tool, "flags": flag_values,
                                          "argv": sys.argv})
        write_flagfile(self.join("flags.txt"), flag_values)

    def read_state(self) -> dict | None:
        path = self.join("state.json")
        if not os.path.exists(path):
            return None
        return read_json(path)

    def write_state(self, state: dict) -> None:
        atomic_write_json(self.join("state.json"), state)

    def restore(self, checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager,
                wanted: str | None = None) -> str | None:
        """Restores the newest loadable checkpoint (preferring `wanted`); returns its path.

        A checkpoint that fails to load is reported and the previous one is tried.
        """
        candidates = list(reversed(manager.checkpoints))
        if wanted and wanted in candidates:
            candidates.remove(wanted)
            candidates.insert(0, wanted)
        for path in candidates:
            try:
                # Read every tensor first: a truncated file raises IndexError ("Read less bytes
                # than requested"), and values restored later (optimizer slots, created lazily)
                # would otherwise fail in the middle of training instead of here.
                reader = tf.train.load_checkpoint(path)
                for key in reader.get_variable_to_shape_map():
                    reader.get_tensor(key)
                # Optimizer slots not yet created are restored when they are (deferred);
                # a completed stage's optimizer never creates them, hence expect_partial.
                checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
                return path
            except (tf.errors.OpError, AssertionError, ValueError, IndexError, OSError) as err:
                print(f"WARNING: checkpoint {path} failed to load ({type(err).__name__}: "
                      f"{str(err).splitlines()[0]}); trying the previous one.", flush=True)
        return None


class CheckpointCallback(tf.keras.callbacks.Callback):
    """Saves a checkpoint after every epoch, then records the run state pointing at it.

    The state is written only after the checkpoint is complete, so a SIGKILL at any moment
    leaves ``state.json`` naming a whole checkpoint. `extra_state` is a callable returning
    tool state to store alongside (e.g. the training stage). State that must match the
    weights (counters, best values) belongs in the checkpoint instead: a resume that falls
    back to an older checkpoint restores it with that checkpoint, while ``state.json`` always
    describes the newest one.
    """

    def __init__(self, run: RunDirectory, checkpoint: tf.train.Checkpoint,
                 manager: tf.train.CheckpointManager, extra_state=None):
        super().__init__()
        self.run = run
        self.checkpoint = checkpoint
        self.manager = manager
        self.extra_state = extra_state

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            if not tf.math.is_finite(float(value)):
                raise NonFiniteError(
                    f"Non-finite {name}={float(value)} at the end of epoch {epoch + 1}; the run "
                    f"stops and the last good checkpoint ({self.manager.latest_checkpoint}) "
                    "is kept. Lower the learning rate or check the data."
                )
        path = self.manager.save(checkpoint_number=epoch + 1)
        state = {"completed_epochs": epoch + 1, "checkpoint": path}
        if self.extra_state is not None:
            state.update(self.extra_state())
        self.run.write_state(state)


class NonFiniteGuard(tf.keras.callbacks.Callback):
    """Stops at the first batch whose loss is NaN/Inf, naming where it appeared."""

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        for name in ("loss", "arch_loss"):
            if logs and name in logs and not tf.math.is_finite(float(logs[name])):
                raise NonFiniteError(
                    f"Non-finite {name} ({float(logs[name])}) in epoch {self.epoch + 1}, batch "
                    f"{batch + 1}; the run stops and the last good checkpoint is kept. Lower the "
                    "learning rate or check the data."
                )
