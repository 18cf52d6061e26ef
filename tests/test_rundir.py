"""ubnas_tf.rundir in process, on a tiny Keras model: mid-epoch checkpoints, SIGTERM turned into
a checkpoint and a clean stop, resuming mid-epoch to exactly the uninterrupted result, a full
disk while writing the state or a checkpoint, the modes of the files a run writes, and
--overwrite (and the refusal of a run directory made with other flags).

The real tools get the same checks as subprocesses in tests/test_tool_search.py and
tests/test_tool_train.py (slow)."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from ubnas_tf import data, io_utils
from ubnas_tf.cli._stops import EXIT_DISK_FULL, report_stop
from ubnas_tf.errors import FlagError
from ubnas_tf.nets.training import save_model_atomic
from ubnas_tf.rundir import (
    CheckpointCallback,
    NonFiniteGuard,
    Preempted,
    RunCheckpoints,
    RunDirectory,
    _merge_metric_state,
    _metric_state,
    fit_resumable,
)

INFO = data.DatasetInfo("tiny", (4, 4, 1), 3, 40, 0, (0.5,), (0.25,))
BATCH, EPOCHS = 5, 3
STEPS = 40 // BATCH  # 8 steps per epoch


@pytest.fixture(autouse=True)
def _deterministic():
    tf.config.experimental.enable_op_determinism()
    yield
    tf_config.disable_op_determinism()


class _Logs(tf.keras.callbacks.Callback):
    """Epoch logs, as the run's history files keep them."""

    def __init__(self):
        super().__init__()
        self.epochs: dict[int, dict] = {}

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[epoch] = {k: float(v) for k, v in logs.items()}


class _SigtermAt(tf.keras.callbacks.Callback):
    """Sends this process SIGTERM at the end of one step, as a cluster pre-empting it would."""

    def __init__(self, epoch: int, step: int):
        super().__init__()
        self.at, self.epoch = (epoch, step), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch + 1) == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def _arrays():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 4, 4, 1), dtype=np.uint8), rng.integers(0, 3, 40).astype(np.int32)


def _tiny_run(path, every_steps=0, extra_callbacks=(), initial=None):
    """A model, its run directory and checkpoints (restored if `initial`), and a function that
    fits it with `fit_resumable` as the tools do; returns (model, run, checkpoints, logs, fit)."""
    tf.keras.utils.set_random_seed(1)
    x, y = _arrays()
    model = tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=INFO.image_shape),
                                 tf.keras.layers.Dense(8, activation="relu"),
                                 tf.keras.layers.Dense(INFO.num_classes)])
    schedule = tf.keras.optimizers.schedules.CosineDecay(0.05, EPOCHS * STEPS)
    model.compile(tf.keras.optimizers.Adam(schedule),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    model.optimizer.build(model.trainable_variables)
    run = RunDirectory(str(path), "tiny")
    os.makedirs(run.path, exist_ok=True)
    checkpoints = RunCheckpoints(run.checkpoint_dir, {"model": model, "optimizer": model.optimizer},
                                 STEPS)
    position = (0, 0)
    if initial is not None:
        restored = checkpoints.restore(initial)
        assert restored is not None
        position = restored[1:]
    logs = _Logs()
    checkpointing = CheckpointCallback(run, checkpoints, every_steps=every_steps)
    callbacks = [NonFiniteGuard(), *extra_callbacks, logs, checkpointing]

    def make_dataset(start_epoch, start_step):
        return data.train_dataset(x, y, INFO, BATCH, seed=3, start_epoch=start_epoch,
                                  start_step=start_step)

    def fit():
        fit_resumable(model, make_dataset, epochs=EPOCHS, initial_epoch=position[0],
                      initial_step=position[1], steps_per_epoch=STEPS, callbacks=callbacks,
                      checkpoint_callback=checkpointing, verbose=0)

    return model, run, checkpoints, logs, fit


def _weights(model):
    return [v.numpy() for v in model.weights]


def test_sigterm_mid_epoch_saves_stops_and_the_resumed_run_matches(tmp_path):
    model_a, _, _, logs_a, fit_a = _tiny_run(tmp_path / "A")
    fit_a()

    # Pre-empted after 5 of epoch 2's 8 steps, with step checkpoints every 3 steps.
    handler_before = signal.getsignal(signal.SIGTERM)
    model_b, run_b, _, logs_b, fit_b = _tiny_run(tmp_path / "B", every_steps=3,
                                                 extra_callbacks=[_SigtermAt(1, 5)])
    with pytest.raises(Preempted, match=r"stopped by SIGTERM; the state is saved \(5 steps "
                                        r"into epoch 2 / checkpoint checkpoints/steps/ckpt-13\)"):
        fit_b()
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the previous handler is back
    state = run_b.read_state()
    assert state == {"completed_epochs": 1, "epoch_step": 5,
                     "checkpoint": run_b.join("checkpoints", "steps", "ckpt-13")}
    # Epoch 1's checkpoint; the step checkpoints of epoch 1 (3, 6) were deleted at its end.
    assert sorted(os.listdir(run_b.join("checkpoints", "steps"))) == [
        "checkpoint", "ckpt-11.data-00000-of-00001", "ckpt-11.index",
        "ckpt-13.data-00000-of-00001", "ckpt-13.index"]
    assert os.path.exists(run_b.join("checkpoints", "ckpt-1.index"))
    assert int(model_b.optimizer.iterations) == STEPS + 5

    # The re-run resumes 5 steps into epoch 2, with the batches and schedule of run A.
    model_c, _, checkpoints_c, logs_c, fit_c = _tiny_run(tmp_path / "B", initial=state["checkpoint"])
    assert checkpoints_c.progress.epoch == 1 and checkpoints_c.progress.step == 5
    fit_c()
    assert int(model_c.optimizer.iterations) == int(model_a.optimizer.iterations) == EPOCHS * STEPS
    for wa, wc in zip(_weights(model_a), _weights(model_c), strict=True):
        np.testing.assert_array_equal(wc, wa)
    # The resumed epoch reports the figures of the whole epoch, exactly (restored totals).
    assert logs_c.epochs == {1: logs_a.epochs[1], 2: logs_a.epochs[2]}
    assert logs_b.epochs == {0: logs_a.epochs[0]}
    assert run_b.read_state()["completed_epochs"] == EPOCHS and "epoch_step" not in run_b.read_state()
    assert not os.path.exists(run_b.join("checkpoints", "steps"))


def test_step_checkpoints_restore_newest_and_fall_back(tmp_path, capsys):
    """Every `every_steps` steps a checkpoint and a state naming it; a damaged newest one falls
    back to the previous, whichever kind it is."""
    # Stopped in epoch 2 after step 7 (SIGTERM): what is there?
    _, run, checkpoints, _, fit = _tiny_run(tmp_path / "run", every_steps=3,
                                            extra_callbacks=[_SigtermAt(1, 7)])
    with pytest.raises(Preempted):
        fit()
    state = run.read_state()
    assert state["completed_epochs"] == 1 and state["epoch_step"] == 7
    candidates = [(os.path.relpath(p, run.path), n) for p, n in checkpoints.candidates()]
    assert candidates == [("checkpoints/steps/ckpt-15", 15), ("checkpoints/steps/ckpt-14", 14),
                          ("checkpoints/ckpt-1", 8)]
    data_file = run.join("checkpoints", "steps", "ckpt-15.data-00000-of-00001")
    os.truncate(data_file, os.path.getsize(data_file) // 2)
    _, _, resumed, _, _ = _tiny_run(tmp_path / "run", initial=state["checkpoint"])
    assert "ckpt-15 failed to load" in capsys.readouterr().out
    assert (resumed.progress.epoch, resumed.progress.step) == (1, 6)


def test_a_workers_copy_restores_the_run_directorys_checkpoints_and_writes_only_itself(
        tmp_path, monkeypatch):
    """A multi-worker run's other workers: a temporary copy of the run's top-level files,
    checkpoints restored from the run directory, everything written into the copy."""
    model, run, _, _, fit = _tiny_run(tmp_path / "run", every_steps=3,
                                      extra_callbacks=[_SigtermAt(1, 7)])
    with pytest.raises(Preempted):
        fit()
    (tmp_path / "run" / "history.json").write_text("{}")
    (tmp_path / "run" / ".tmp-state-x.json").write_text("half")
    before = sorted(str(p.relative_to(tmp_path / "run")) for p in (tmp_path / "run").rglob("*"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))

    worker = RunDirectory.worker_copy(str(tmp_path / "run"), "tiny", "worker1")
    assert worker.is_worker_copy and not run.is_worker_copy
    assert os.path.dirname(worker.path) == str(tmp_path / "tmp")
    assert os.path.basename(worker.path).startswith("ubnas-tiny-worker1-")
    assert worker.shared_path == run.path and worker.shared("checkpoints") == run.checkpoint_dir
    assert sorted(os.listdir(worker.path)) == ["history.json", "state.json"]
    assert worker.read_state() == run.read_state()
    assert worker.describe_state() == run.describe_state()  # paths relative to each copy

    checkpoints = RunCheckpoints(worker.checkpoint_dir, {"model": model,
                                                         "optimizer": model.optimizer},
                                 STEPS, restore_from=worker.shared("checkpoints"))
    state = worker.read_state()
    assert checkpoints.restore(state["checkpoint"]) == (state["checkpoint"], 1, 7)
    assert state["checkpoint"].startswith(run.checkpoint_dir + os.sep)
    saved = checkpoints.save_epoch(2)
    assert saved == os.path.join(worker.checkpoint_dir, "ckpt-2")
    worker.write_state({"completed_epochs": 2, "checkpoint": saved})
    after = sorted(str(p.relative_to(tmp_path / "run")) for p in (tmp_path / "run").rglob("*"))
    assert after == before  # the run directory is as it was

    worker.remove_worker_copy()
    run.remove_worker_copy()  # the run directory itself: nothing
    assert os.listdir(tmp_path / "tmp") == [] and os.path.isdir(run.path)


def test_metric_totals_are_merged_once_even_if_a_model_lists_a_tracker_twice():
    """SearchNetwork lists its held-out trackers in `metrics` although Keras' layer tracking
    lists them already; the saved totals must still be added once."""

    class _Net(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = tf.keras.layers.Dense(1)
            self.tracker = tf.keras.metrics.Mean(name="arch_loss")

        def call(self, x):
            return self.dense(x)

        @property
        def metrics(self):
            return [*super().metrics, self.tracker]

    net = _Net()
    assert [m.name for m in net.metrics].count("arch_loss") == 2
    net.tracker.update_state([1.0, 2.0, 3.0])
    saved = _metric_state(net)
    assert saved == [["arch_loss", [6.0, 3.0]]]
    net.tracker.reset_state()
    net.tracker.update_state([4.0])
    assert _merge_metric_state(net, saved) == []
    assert (float(net.tracker.total), float(net.tracker.count)) == (10.0, 4.0)


def _fail_writes_of(monkeypatch, basename_prefix: str, after: int = 0):
    """The next writes of files named `basename_prefix`* (after `after` successful ones) fail
    half-way with ENOSPC, as on a full disk."""
    real_open = open
    count = {"n": 0}

    class _FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode and os.path.basename(path).startswith(f".tmp-{basename_prefix}"):
            count["n"] += 1
            if count["n"] > after:
                return _FullDisk(f)
        return f

    monkeypatch.setattr(io_utils, "open", fake_open, raising=False)


def test_full_disk_writing_the_state_keeps_the_last_good_state(tmp_path, monkeypatch, capsys):
    _, run, _, _, fit = _tiny_run(tmp_path / "run")
    _fail_writes_of(monkeypatch, "state-", after=1)  # epoch 1's state is written, epoch 2's not
    with pytest.raises(io_utils.DiskFullError) as caught:
        fit()
    assert caught.value.path == run.join("state.json")
    assert run.read_state() == {"completed_epochs": 1, "checkpoint": run.join("checkpoints", "ckpt-1")}
    assert not [f for f in os.listdir(run.path) if f.startswith(".tmp-")]  # temporary removed
    monkeypatch.undo()

    assert report_stop(caught.value, run, "search.py") == EXIT_DISK_FULL
    err = capsys.readouterr().err
    assert err == (f"search.py: error: no space left on device while writing "
                   f"{run.join('state.json')}; the last good state (epoch 1 / checkpoint "
                   "checkpoints/ckpt-1) is kept; free space and re-run the same command to "
                   "resume.\n")
    # ... and it is: the re-run resumes from it.
    _tiny_run(tmp_path / "run", initial=run.read_state()["checkpoint"])


def test_full_disk_saving_a_checkpoint_removes_it_and_keeps_the_last_good_state(
        tmp_path, monkeypatch):
    _, run, _, _, fit = _tiny_run(tmp_path / "run", every_steps=3)
    real_save = tf.train.CheckpointManager.save

    def save(self, checkpoint_number=None, **kwargs):
        if checkpoint_number == 11:  # the first step checkpoint of epoch 2
            prefix = os.path.join(self.directory, f"ckpt-{checkpoint_number}")
            os.makedirs(prefix + "_temp", exist_ok=True)
            part = prefix + "_temp/part-00000-of-00001.data-00000-of-00001.tempstate123"
            with open(part, "wb") as f:
                f.write(b"x" * 100)
            raise tf.errors.ResourceExhaustedError(None, None, f"{part}; No space left on device")
        return real_save(self, checkpoint_number=checkpoint_number, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    with pytest.raises(io_utils.DiskFullError) as caught:
        fit()
    assert caught.value.path == run.join("checkpoints", "steps", "ckpt-11")
    assert str(caught.value) == f"no space left on device while writing {caught.value.path}"
    assert not [f for f in os.listdir(run.join("checkpoints", "steps")) if "ckpt-11" in f]
    assert run.read_state() == {"completed_epochs": 1, "checkpoint": run.join("checkpoints", "ckpt-1")}
    assert run.describe_state() == "epoch 1 / checkpoint checkpoints/ckpt-1"


def test_run_files_get_the_mode_of_a_plain_open(tmp_path):
    """JSON state, TF checkpoints, TensorBoard events and a .keras export: 0666 less the
    umask, as any file a program writes (not the 0600 of a temporary file)."""
    old = os.umask(0o027)
    try:
        model, run, _, _, fit = _tiny_run(
            tmp_path / "run", every_steps=3,
            extra_callbacks=[tf.keras.callbacks.TensorBoard(str(tmp_path / "run" / "tb"),
                                                            profile_batch=0)])
        fit()
        save_model_atomic(model, run.join("model.keras"))
        io_utils.atomic_write_json(run.join("summary.json"), {"ok": True})
    finally:
        os.umask(old)
    files = [os.path.join(d, f) for d, _, names in os.walk(run.path) for f in names]
    assert any(f.endswith(".index") for f in files) and any("tfevents" in f for f in files)
    modes = {os.path.relpath(f, run.path): oct(stat.S_IMODE(os.stat(f).st_mode)) for f in files}
    assert set(modes.values()) == {"0o640"}, modes


def test_rundir_overwrite_and_refusal(tmp_path):
    path = tmp_path / "run"
    run = RunDirectory(str(path), "search")
    run.prepare({"epochs": 4, "seed": 3, "verbose": 0}, overwrite=False)
    recorded = json.loads((path / "flags.json").read_text())
    assert recorded["tool"] == "search" and recorded["flags"]["epochs"] == 4
    assert "--epochs=4" in (path / "flags.txt").read_text()
    run.write_state({"completed_epochs": 1, "checkpoint": str(path / "checkpoints" / "ckpt-1")})
    (path / "checkpoints").mkdir()

    # Same flags (or ones that may change on resumption) resume: nothing is removed.
    run.prepare({"epochs": 4, "seed": 3, "verbose": 2}, overwrite=False)
    assert run.read_state()["completed_epochs"] == 1

    with pytest.raises(FlagError, match=r"--epochs: run directory has 4, now 5") as err:
        run.prepare({"epochs": 5, "seed": 3, "verbose": 0}, overwrite=False)
    assert "--seed" not in str(err.value) and "--overwrite" in str(err.value)
    assert run.read_state()["completed_epochs"] == 1

    with pytest.raises(FlagError, match=r"holds a 'search' run, not a 'train' run"):
        RunDirectory(str(path), "train").prepare({"epochs": 4}, overwrite=False)

    # A flag the tool checks itself is recorded anew, not compared; the others still are.
    run.prepare({"epochs": 4, "seed": 3, "verbose": 0, "variants": ["a"]}, overwrite=False,
                checked_elsewhere=("variants",))
    run.prepare({"epochs": 4, "seed": 3, "verbose": 0, "variants": ["a", "b"]}, overwrite=False,
                checked_elsewhere=("variants",))
    assert json.loads((path / "flags.json").read_text())["flags"]["variants"] == ["a", "b"]
    with pytest.raises(FlagError, match=r"--seed: run directory has 3, now 4"):
        run.prepare({"epochs": 4, "seed": 4, "verbose": 0, "variants": ["a"]}, overwrite=False,
                    checked_elsewhere=("variants",))
    assert run.read_state()["completed_epochs"] == 1

    # --overwrite starts afresh: the old state and checkpoints are gone, the new flags recorded.
    run.prepare({"epochs": 5, "seed": 3, "verbose": 0}, overwrite=True)
    assert run.read_state() is None and not (path / "checkpoints").exists()
    assert json.loads((path / "flags.json").read_text())["flags"]["epochs"] == 5

    # --overwrite on a directory that is not a run directory never deletes it.
    other = tmp_path / "not_a_run"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(FlagError, match=r"not a run directory"):
        RunDirectory(str(other), "search").prepare({"epochs": 4}, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"
    # An empty directory (or none) is fine.
    RunDirectory(str(tmp_path / "fresh"), "search").prepare({"epochs": 4}, overwrite=True)
    assert (tmp_path / "fresh" / "flags.json").exists()
