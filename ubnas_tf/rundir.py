"""Run directories: recorded flags, resumable state and crash-safe checkpoints.

Layout (see WORKSPACE.md): ``flags.json`` + ``flags.txt`` (the flags that made the run),
``state.json`` (last completed epoch and tool state), ``checkpoints/`` (tf.train checkpoints
of the model and optimisers, written by `tf.train.CheckpointManager`, whose index update
is atomic; ``checkpoints/steps/`` those taken within an epoch), ``tensorboard/`` and the
tool's results.

`fit_resumable` runs `model.fit` from wherever a run stopped, also in the middle of an epoch;
with `CheckpointCallback` it turns SIGTERM (what a pre-empted cluster job receives) into a
checkpoint at the next step and a `Preempted` exception.

Multi-worker runs: only the chief writes the run directory; every other worker runs the same
code on its own temporary copy (`RunDirectory.worker_copy`), so that it takes part in every
collective operation (a checkpoint save reads variables that are synchronised across the
workers), and restores from the run directory's checkpoints.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable

import numpy as np
import tensorflow as tf

from ubnas_tf.distribute import agree_any, in_multi_worker_mode
from ubnas_tf.errors import FlagError, NonFiniteError, Preempted, ResumeError
from ubnas_tf.io_utils import (
    DiskFullError,
    atomic_write_json,
    atomic_write_text,
    disk_full_reason,
    read_json,
)
from ubnas_tf.progress import errors_on_own_line

__all__ = ["RunDirectory", "RunCheckpoints", "CheckpointCallback", "NonFiniteError", "Preempted",
           "ResumeError", "diff_flags", "fit_resumable", "shard_by_batch", "write_flagfile"]

# Flags that may change between a run and its resumption without changing its result.
RESUME_IGNORED_FLAGS = ("overwrite", "verbose", "steps_per_execution", "checkpoint_every_steps")


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


def diff_flags(recorded: dict, current: dict, ignore: Iterable[str] = (),
               defaults: dict | None = None) -> list[str]:
    """Human-readable differences between two flag dicts (after a JSON round trip). A flag
    the recorded run lacks (added to the tool since) counts as its value in `defaults`."""
    ignore = set(ignore)
    current = json.loads(json.dumps(current))
    defaults = json.loads(json.dumps(defaults or {}))
    out = []
    for name in sorted(set(recorded) | set(current)):
        if name in ignore:
            continue
        before = recorded.get(name, defaults.get(name))
        if before != current.get(name):
            out.append(f"--{name}: run directory has {before!r}, now {current.get(name)!r}")
    return out


class RunDirectory:
    """One tool run's directory; refuses to mix runs made with different flags.

    In a multi-worker run only the chief writes the run directory. Every other worker works
    in a copy of it (`worker_copy`): `path` is then the worker's temporary directory, where it
    writes whatever the chief writes into the run directory (the same files, from the same
    collective computations), and `shared_path` the run directory, whose checkpoints it
    restores from.
    """

    def __init__(self, path: str, tool: str):
        self.path = os.path.abspath(path)
        self.tool = tool
        self.shared_path = self.path

    @classmethod
    def worker_copy(cls, shared_path: str, tool: str, label: str) -> RunDirectory:
        """A non-chief worker's copy of the run directory `shared_path` that the chief has
        prepared: a new temporary directory (under TMPDIR, on the worker's own machine,
        named after `label`) holding the run's top-level files (flags, state, histories,
        models; not the checkpoints, TensorBoard logs or plots). Delete it with
        `remove_worker_copy`."""
        shared_path = os.path.abspath(shared_path)
        scratch = tempfile.mkdtemp(prefix=f"ubnas-{tool}-{label}-")
        try:
            for name in os.listdir(shared_path):
                source = os.path.join(shared_path, name)
                if os.path.isfile(source) and not name.startswith(".tmp-"):
                    shutil.copyfile(source, os.path.join(scratch, name))
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        run = cls(scratch, tool)
        run.shared_path = shared_path
        return run

    @property
    def is_worker_copy(self) -> bool:
        """True in a non-chief worker of a multi-worker run (see `worker_copy`)."""
        return self.shared_path != self.path

    def remove_worker_copy(self) -> None:
        """Deletes a worker's copy (nothing for the run directory itself)."""
        if self.is_worker_copy:
            shutil.rmtree(self.path, ignore_errors=True)

    def join(self, *parts: str) -> str:
        """A path in the directory this process writes (the run's, or a worker's copy)."""
        return os.path.join(self.path, *parts)

    def shared(self, *parts: str) -> str:
        """A path in the run directory itself (where checkpoints are restored from)."""
        return os.path.join(self.shared_path, *parts)

    @property
    def checkpoint_dir(self) -> str:
        return self.join("checkpoints")

    def prepare(self, flag_values: dict, overwrite: bool, defaults: dict | None = None,
                checked_elsewhere: tuple[str, ...] = ()) -> None:
        """Checks recorded flags against `flag_values` (or starts afresh), then records them;
        a flag the recorded run lacks counts as its value in `defaults`. Flags in
        `checked_elsewhere` are recorded but not compared (the tool itself decides whether a
        new value continues the run)."""
        recorded_path = self.join("flags.json")
        if os.path.exists(recorded_path):
            try:
                recorded = read_json(recorded_path)
            except ValueError as err:
                raise FlagError(f"{recorded_path} is unreadable ({err}); use --overwrite.") from err
            if recorded.get("tool") != self.tool and not overwrite:
                raise FlagError(f"--output_dir={self.path} holds a {recorded.get('tool')!r} run, "
                                f"not a {self.tool!r} run; choose another directory or --overwrite.")
            diffs = diff_flags(recorded.get("flags", {}), flag_values,
                               (*RESUME_IGNORED_FLAGS, *checked_elsewhere), defaults)
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

    def describe_state(self) -> str | None:
        """The recorded state in words, e.g. ``epoch 3 / checkpoint checkpoints/ckpt-3`` or
        ``40 steps into epoch 4 / checkpoint checkpoints/steps/ckpt-400``; None if none."""
        try:
            state = self.read_state()
        except ValueError:
            state = None
        if not state:
            return None
        parts = []
        if state.get("finished"):
            parts.append("finished")
        if "stage" in state:
            parts.append(f"stage {state['stage']}" + (" finished" if state.get("stage_finished") else ""))
        if not state.get("stage_finished") and not state.get("finished"):
            epoch, step = int(state.get("completed_epochs", 0)), int(state.get("epoch_step", 0))
            parts.append(f"{step} step{'s' * (step != 1)} into epoch {epoch + 1}" if step
                         else f"epoch {epoch}")
        text = ", ".join(parts)
        if state.get("checkpoint"):
            # A worker's copy names the run directory's checkpoint until it saves its own.
            base = (self.shared_path if state["checkpoint"].startswith(self.shared_path + os.sep)
                    else self.path)
            text += f" / checkpoint {os.path.relpath(state['checkpoint'], base)}"
        return text

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
            if _try_restore(checkpoint, path):
                return path
        return None


def _try_restore(checkpoint: tf.train.Checkpoint, path: str) -> bool:
    """Restores `path` into `checkpoint`'s objects; False (with a warning) if it fails to load."""
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
        return True
    except (tf.errors.OpError, AssertionError, ValueError, IndexError, OSError) as err:
        print(f"WARNING: checkpoint {path} failed to load ({type(err).__name__}: "
              f"{str(err).splitlines()[0]}); trying the previous one.", flush=True)
        return False


class FitProgress(tf.train.experimental.PythonState):
    """Where within an epoch a mid-epoch checkpoint was taken, and the epoch's running metric
    totals then (so that the resumed epoch reports the figures of an uninterrupted one).

    Saved as JSON in the checkpoints under ``checkpoints/steps/`` (floats round-trip exactly).
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.epoch = 0  # completed epochs
        self.step = 0  # steps done of epoch `epoch` + 1
        self.metrics: list = []  # [[metric name, [variable values]], ...]

    def serialize(self) -> str:
        return json.dumps({"epoch": self.epoch, "step": self.step, "metrics": self.metrics})

    def deserialize(self, string_value: bytes | str) -> None:
        state = json.loads(string_value)
        self.epoch, self.step, self.metrics = int(state["epoch"]), int(state["step"]), state["metrics"]


class RunCheckpoints:
    """The checkpoints of a run (or of one training stage) in `directory`.

    * ``ckpt-E``: after epoch E (E epochs completed), at every epoch end;
    * ``steps/ckpt-G``: within an epoch, after G steps in all (``G = E * steps_per_epoch + k``,
      k steps into epoch E + 1), every ``--checkpoint_every_steps`` steps and on SIGTERM.
      They also hold a `FitProgress`. Once the epoch's own checkpoint is recorded they are
      deleted.

    Each kind has a `tf.train.CheckpointManager` keeping the newest `max_to_keep`. Every
    checkpoint holds `objects` (model, optimisers, counters ...). A save that fails because
    the disk is full removes what it wrote and raises `DiskFullError` naming the checkpoint.

    `restore_from`: where `restore` looks for checkpoints, if not in `directory` (a worker of
    a multi-worker run saves into its own copy of the run and restores the chief's,
    `RunDirectory.shared`).
    """

    def __init__(self, directory: str, objects: dict, steps_per_epoch: int, max_to_keep: int = 2,
                 restore_from: str | None = None):
        self.directory = directory
        self.restore_from = (None if restore_from is None or os.path.abspath(restore_from)
                             == os.path.abspath(directory) else restore_from)
        self.steps_per_epoch = int(steps_per_epoch)
        self.max_to_keep = max_to_keep
        self.progress = FitProgress()
        self._epoch_root = tf.train.Checkpoint(**objects)
        # A root of its own (same objects plus the progress), so that epoch checkpoints keep
        # the layout of earlier versions and still restore.
        self._step_root = tf.train.Checkpoint(**objects, progress=self.progress)
        self._make_managers()

    @property
    def steps_directory(self) -> str:
        return os.path.join(self.directory, "steps")

    def _make_managers(self) -> None:
        self.epoch_manager = tf.train.CheckpointManager(self._epoch_root, self.directory,
                                                        max_to_keep=self.max_to_keep)
        self.step_manager = tf.train.CheckpointManager(self._step_root, self.steps_directory,
                                                       max_to_keep=self.max_to_keep)

    def save_epoch(self, completed_epochs: int) -> str:
        return self._save(self.epoch_manager, completed_epochs)

    def save_step(self, completed_epochs: int, step: int, metrics: list) -> str:
        self.progress.epoch, self.progress.step, self.progress.metrics = completed_epochs, step, metrics
        return self._save(self.step_manager, completed_epochs * self.steps_per_epoch + step)

    @staticmethod
    def _save(manager: tf.train.CheckpointManager, number: int) -> str:
        prefix = os.path.join(manager.directory, f"ckpt-{number}")
        try:
            return manager.save(checkpoint_number=number)
        except Exception as err:
            reason = disk_full_reason(err)
            if reason is None:
                raise
            # What TF wrote of it (its temporary directory, a partial index or data file)
            # is of no use and takes the space a re-run needs.
            for leftover in glob.glob(glob.escape(prefix) + "_temp*") + glob.glob(glob.escape(prefix) + ".*"):
                if os.path.isdir(leftover):
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(leftover)
            raise DiskFullError(prefix, reason) from err

    def clear_steps(self) -> None:
        """Deletes the mid-epoch checkpoints (once an epoch's checkpoint is recorded)."""
        if os.path.isdir(self.steps_directory):
            shutil.rmtree(self.steps_directory, ignore_errors=True)
            self.step_manager = tf.train.CheckpointManager(self._step_root, self.steps_directory,
                                                           max_to_keep=self.max_to_keep)

    def reset(self) -> None:
        """Deletes every checkpoint (a stage that starts afresh)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        self._make_managers()

    def _listed(self) -> tuple[list[str], list[str]]:
        """The epoch and the mid-epoch checkpoints that `restore` can load."""
        if self.restore_from is None:
            return list(self.epoch_manager.checkpoints), list(self.step_manager.checkpoints)
        found = []
        for directory in (self.restore_from, os.path.join(self.restore_from, "steps")):
            state = tf.train.get_checkpoint_state(directory)
            found.append(list(state.all_model_checkpoint_paths) if state else [])
        return found[0], found[1]

    def candidates(self, wanted: str | None = None) -> list[tuple[str, int]]:
        """(path, steps done in all) of every checkpoint, newest first, `wanted` first."""
        spe = self.steps_per_epoch
        epoch_paths, step_paths = self._listed()
        # Positions never tie: a mid-epoch checkpoint is never at an epoch's end.
        found = [(p, _number(p) * spe) for p in epoch_paths]
        found += [(p, _number(p)) for p in step_paths]
        found.sort(key=lambda item: item[1], reverse=True)
        return sorted(found, key=lambda item: item[0] != wanted)  # stable: wanted first

    def restore(self, wanted: str | None = None) -> tuple[str, int, int] | None:
        """Restores the newest loadable checkpoint (preferring `wanted`, the one state.json
        names); returns (path, completed epochs, steps into the next epoch), or None."""
        step_paths = set(self._listed()[1])
        for path, _ in self.candidates(wanted):
            mid_epoch = path in step_paths
            if not _try_restore(self._step_root if mid_epoch else self._epoch_root, path):
                continue
            if not mid_epoch:
                self.progress.reset()
                return path, _number(path), 0
            return path, self.progress.epoch, self.progress.step
        return None


def _number(checkpoint_path: str) -> int:
    return int(checkpoint_path.rsplit("-", 1)[1])


def _unique_metrics(model: tf.keras.Model) -> list:
    """`model.metrics`, each once: a model that lists a tracker it holds as an attribute
    (`SearchNetwork`'s held-out trackers) gets it from Keras' layer tracking as well."""
    seen, unique = set(), []
    for metric in model.metrics:
        if id(metric) not in seen:
            seen.add(id(metric))
            unique.append(metric)
    return unique


def _metric_state(model: tf.keras.Model) -> list:
    return [[m.name, [np.asarray(v.numpy()).tolist() for v in m.variables]]
            for m in _unique_metrics(model)]


def _merge_metric_state(model: tf.keras.Model, saved: list, add_here: bool = True) -> list[str]:
    """Adds the saved running totals of an epoch's earlier steps to `model`'s metrics (which
    hold the steps run since); returns the names of metrics it could not merge.

    For sums and means (total, count) this is exactly the uninterrupted state: with one step
    run since, ``0 + v + saved`` and ``saved + v`` round alike. Under a strategy a metric's
    variables are summed over the replicas when read: the saved totals go into one replica's
    copy, and in a multi-worker run only where `add_here` (the chief), so they count once.
    """
    saved_by_name = {name: values for name, values in saved}
    skipped = []
    for metric in _unique_metrics(model):
        values = saved_by_name.get(metric.name)
        if (values is None or not isinstance(metric, (tf.keras.metrics.Mean, tf.keras.metrics.Sum))
                or len(values) != len(metric.variables)
                or any(isinstance(v, tf.distribute.DistributedValues)
                       and v.aggregation != tf.VariableAggregation.SUM for v in metric.variables)):
            skipped.append(metric.name)
            continue
        for var, value in zip(metric.variables, values, strict=True):
            value = np.asarray(value, dtype=var.dtype.as_numpy_dtype)
            if isinstance(var, tf.distribute.DistributedValues):
                if add_here:
                    copy = var.values[0]  # this process's first replica
                    copy.assign(copy.numpy() + value)
            else:
                var.assign(var.numpy() + value)
    return skipped


class CheckpointCallback(tf.keras.callbacks.Callback):
    """Saves a checkpoint after every epoch and, with `every_steps` > 0, every that many steps
    within an epoch; then records the run state pointing at it.

    The state is written only after the checkpoint is complete, so a SIGKILL at any moment
    leaves ``state.json`` naming a whole checkpoint (``completed_epochs``, and for a
    mid-epoch one ``epoch_step``, the steps done of the next epoch). `extra_state` is a
    callable returning tool state to store alongside (e.g. the training stage). State that
    must match the weights (counters, best values) belongs in the checkpoint instead: a
    resume that falls back to an older checkpoint restores it with that checkpoint, while
    ``state.json`` always describes the newest one.

    While `catching_sigterm` is active (`fit_resumable` does it), SIGTERM sets a flag instead
    of ending the process: at the end of the step under way the callback saves a mid-epoch
    checkpoint, records it and raises `Preempted`. If the signal comes during an epoch's last
    step or its validation, the epoch ends (and saves) first. (Raising, not
    ``model.stop_training``: that would end the epoch early and run every epoch-end callback,
    validation included, on a partial epoch.) In a multi-worker run the workers agree after
    every step whether any of them received SIGTERM (a small all-reduce), so all of them save
    the same step and stop together: none is left waiting for the others' next step.

    Why not Keras' own: ``BackupAndRestore(save_freq=N)`` restores the weights at a step but
    not the data position (the dataset restarts), keeps neither this run's counters nor its
    metric totals, and deletes its backup when `fit` ends; TF's
    ``PreemptionCheckpointHandler`` is for multi-worker clusters and exits the process itself.
    """

    def __init__(self, run: RunDirectory, checkpoints: RunCheckpoints, extra_state=None,
                 every_steps: int = 0):
        super().__init__()
        if every_steps < 0:
            raise ValueError(f"every_steps must be >= 0 (0: at epoch ends only), got {every_steps}")
        self.run = run
        self.checkpoints = checkpoints
        self.extra_state = extra_state
        self.every_steps = int(every_steps)
        self.sigterm_received = False
        self.sigterm_elsewhere = False  # another worker of a multi-worker run received it
        self._offset = 0  # steps of the current epoch run before this fit (a resumed epoch)
        self._pending_metrics: list | None = None
        self._epoch = 0
        self._done = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.checkpoints.steps_per_epoch

    def resume_within_epoch(self, step: int) -> None:
        """The next fit runs the rest of an epoch whose first `step` steps were restored."""
        self._offset = int(step)
        self._pending_metrics = self.checkpoints.progress.metrics or None

    @contextlib.contextmanager
    def catching_sigterm(self):
        """Within it, SIGTERM asks for a checkpoint and a stop instead of ending the process;
        the previous handler comes back on exit. (Only the main thread can set handlers.)"""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_sigterm(signum, frame):
            if not self.sigterm_received:
                # os.write: print() may be in the middle of writing the same stream.
                os.write(2, b"\nSIGTERM received: saving a checkpoint at the end of this step, "
                            b"then stopping.\n")
            self.sigterm_received = True

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _sigterm_agreed(self) -> bool:
        """Whether to stop for SIGTERM. In a multi-worker run: whether any worker received it,
        a collective that every worker runs at the same points (after each step, at each
        epoch's start and after `fit`), so that all stop at the same step."""
        strategy = self.model.distribute_strategy if self.model is not None else None
        if strategy is None or not in_multi_worker_mode(strategy):
            return self.sigterm_received
        if agree_any(strategy, self.sigterm_received) and not self.sigterm_received:
            self.sigterm_received = self.sigterm_elsewhere = True
        return self.sigterm_received

    def stop_if_asked(self, agreed: bool | None = None) -> None:
        """Raises `Preempted` if SIGTERM came (the state it names is already saved);
        `agreed`: the answer of `_sigterm_agreed` if already asked."""
        if agreed is None:
            agreed = self._sigterm_agreed()
        if agreed:
            saved = self.run.describe_state()
            how = ("stopped because another worker of the cluster received SIGTERM"
                   if self.sigterm_elsewhere else "stopped by SIGTERM")
            raise Preempted(f"{how}; the state is saved ({saved})" if saved else
                            f"{how} before its first step was done; nothing to save")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = int(epoch)
        self._done = self._offset
        self.stop_if_asked()

    def on_train_batch_end(self, batch, logs=None):
        done = self._offset + int(batch) + 1
        if self._pending_metrics is not None:
            skipped = _merge_metric_state(self.model, self._pending_metrics,
                                          add_here=not self.run.is_worker_copy)
            self._pending_metrics = None
            if skipped:
                print(f"\nWARNING: the figures {skipped} of epoch {self._epoch + 1} cover only "
                      "the steps run since the resume.", flush=True)
        previous, self._done = self._done, done
        if done >= self.steps_per_epoch:
            return  # the epoch's end saves
        due = self.every_steps and done // self.every_steps > previous // self.every_steps
        stop = self._sigterm_agreed()
        if due or stop:
            path = self.checkpoints.save_step(self._epoch, done, _metric_state(self.model))
            self._record(path, self._epoch, epoch_step=done)
        self.stop_if_asked(stop)

    def on_epoch_end(self, epoch, logs=None):
        self._offset = 0
        for name, value in (logs or {}).items():
            if not tf.math.is_finite(float(value)):
                raise NonFiniteError(
                    f"Non-finite {name}={float(value)} at the end of epoch {epoch + 1}; the run "
                    f"stops and the last good checkpoint ({self.run.describe_state()}) "
                    "is kept. Lower the learning rate or check the data."
                )
        path = self.checkpoints.save_epoch(epoch + 1)
        self._record(path, epoch + 1)
        self.checkpoints.clear_steps()

    def _record(self, path: str, completed_epochs: int, epoch_step: int = 0) -> None:
        state = {"completed_epochs": completed_epochs, "checkpoint": path}
        if epoch_step:
            state["epoch_step"] = epoch_step
        if self.extra_state is not None:
            state.update(self.extra_state())
        self.run.write_state(state)


def fit_resumable(model: tf.keras.Model, make_dataset: Callable[[int, int], tf.data.Dataset], *,
                  epochs: int, initial_epoch: int, initial_step: int, steps_per_epoch: int,
                  callbacks: list, checkpoint_callback: CheckpointCallback, **fit_kwargs) -> None:
    """`model.fit` from `initial_step` steps into epoch `initial_epoch` + 1 up to `epochs`,
    with SIGTERM turned into a checkpoint and `Preempted` (see `CheckpointCallback`, which
    must be in `callbacks`).

    ``make_dataset(start_epoch, start_step)`` gives the endless epoch-keyed training data
    from that step on (`ubnas_tf.data.search_dataset`, `train_dataset`), so a resumed run sees
    the batches an uninterrupted one would. The rest of a resumed epoch runs as a `fit` of its
    own (``steps_per_epoch - initial_step`` steps, its metrics continuing the restored totals),
    the following epochs as a second one. The optimisers' step counters come back with the
    checkpoint, so learning-rate schedules continue where they were.

    Under a multi-worker strategy every worker builds the same batches and takes its share
    of each one (`shard_by_batch`), so the cluster sees the batches of a single process; the
    logs are taken from the first replica (Keras' default for multi-worker sums them over the
    workers, but metric results are already reduced over all of them: the figures would be
    multiplied by the number of workers).
    """
    cb = checkpoint_callback
    if in_multi_worker_mode(model.distribute_strategy):
        model.distribute_reduction_method = "first"
        make_dataset = _sharded_by_batch(make_dataset)
        if isinstance(fit_kwargs.get("validation_data"), tf.data.Dataset):
            fit_kwargs["validation_data"] = shard_by_batch(fit_kwargs["validation_data"])
    # An error raised mid-epoch is printed on a line of its own, not after the progress bar.
    with cb.catching_sigterm(), errors_on_own_line():
        if initial_step:
            cb.resume_within_epoch(initial_step)
            model.fit(make_dataset(initial_epoch, initial_step), epochs=initial_epoch + 1,
                      initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch - initial_step,
                      callbacks=callbacks, **fit_kwargs)
            initial_epoch += 1
            if model.stop_training:  # an early stop at the end of that epoch
                cb.stop_if_asked()
                return
        if initial_epoch < epochs:
            model.fit(make_dataset(initial_epoch, 0), epochs=epochs, initial_epoch=initial_epoch,
                      steps_per_epoch=steps_per_epoch, callbacks=callbacks, **fit_kwargs)
        cb.stop_if_asked()


def shard_by_batch(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` for a multi-worker `fit`: every worker reads all of it and keeps its part of
    each batch (tf.data's DATA auto-sharding). The default would shard by input file where it
    can, giving the workers different data orders than the epoch-keyed one."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _sharded_by_batch(make_dataset: Callable[[int, int], tf.data.Dataset]):
    return lambda start_epoch, start_step: shard_by_batch(make_dataset(start_epoch, start_step))


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
