"""Progress output that fits a terminal (issue #27, point 5): a search step logs and prints its
losses and accuracies only, within 120 columns; the architecture's figures and expected cost
reach each epoch's logs (History, TensorBoard); an error that interrupts a progress bar
starts a line of its own."""

from __future__ import annotations

import glob
import io
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from tool_runs import SMALL_PRIMITIVES

from ubnas_tf import progress
from ubnas_tf.cli._stops import EXIT_DISK_FULL, report_stop
from ubnas_tf.errors import DiskFullError
from ubnas_tf.genotype import num_edges
from ubnas_tf.progress import ProgressBar, eta_text, progress_line, took_text
from ubnas_tf.rundir import CheckpointCallback, RunCheckpoints, RunDirectory, fit_resumable
from ubnas_tf.search import ArchitectureFigures, ArchitectureWarmup, SearchNetwork
from ubnas_tf.search.budget import CostTable
from ubnas_tf.search.decisiveness import FIGURES, architecture_figures
from ubnas_tf.search.network import ArchitectureObjective

STEP_LOGS = {"loss", "accuracy", "arch_loss", "arch_accuracy"}


class _Terminal(io.StringIO):
    """A stream that says it is a terminal: `ProgressBar` redraws its line there with ``\\r``."""

    def isatty(self):
        return True


def _screen_lines(text: str) -> list[str]:
    """Every line as drawn: the text between two line ends or redraws, blanks stripped."""
    parts = [part.rstrip() for line in text.split("\n") for part in line.split("\r")]
    return [part for part in parts if part]


@pytest.fixture(autouse=True)
def _no_open_line():
    yield
    progress._open_stream = None  # a failed test must not leave its stream to the next


# ---------------------------------------------------------------------------------------------
# The line


@pytest.mark.parametrize("step,eta,loss,acc", [
    (1, 5095.0, 2.7325, 0.0469),  # the quick start's first step: tracing makes the ETA 1:24:55
    (1, 5095.0, 12.3456, 0.0),  # a loss over 10 and no hit yet
    (37, 81.0, 0.8123, 0.7031),
])
def test_a_quick_start_step_fits_120_columns_with_its_four_values(step, eta, loss, acc):
    """flags/fashion_mnist.flags: 62 steps per epoch, all four losses and accuracies."""
    values = {"loss": loss, "accuracy": acc, "arch_loss": loss, "arch_accuracy": acc}
    line = progress_line(step, 62, values, eta_text(eta))
    assert len(line) <= 120, line
    assert line.startswith(f"{step:2d}/62 [") and "] - ETA: " in line
    for name, value in values.items():
        assert f" - {name}: {value:.4f}" in line, line
    final = progress_line(62, 62, values, took_text(123.4, 62))
    assert len(final) <= 120 and final.startswith("62/62 [====")
    assert " - 123s 2s/step - loss: " in final and final.endswith(f"arch_accuracy: {acc:.4f}")


def test_the_bar_takes_the_room_that_is_left_up_to_keras_width():
    short = progress_line(31, 62, {"loss": 0.5}, eta_text(30))
    assert short == "31/62 [==============>...............] - ETA: 30s - loss: 0.5000"
    values = {name: 0.5 for name in STEP_LOGS}
    wide = progress_line(31, 62, values, eta_text(30))
    assert len(wide) == 120
    assert wide.split(" - ")[0] == "31/62 [" + "=" * 10 + ">" + "." * 12 + "]"  # 23 wide


def test_a_narrow_line_drops_the_bar_then_values_from_the_end():
    values = {"loss": 2.5, "accuracy": 0.25, "arch_loss": 2.5, "arch_accuracy": 0.25}
    line = progress_line(7, 62, values, eta_text(100), columns=60)
    assert line == " 7/62 - ETA: 1:40 - loss: 2.5000 - accuracy: 0.2500"
    assert len(progress_line(7, 62, values, eta_text(100), columns=8)) == 8


# ---------------------------------------------------------------------------------------------
# In fit


def _tiny_model():
    tf.keras.utils.set_random_seed(1)
    x = np.random.default_rng(0).normal(size=(40, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = tf.keras.Sequential([tf.keras.layers.Dense(2, input_shape=(4,))])
    model.compile("sgd", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model, x, y


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_fit_verbose_applies_and_a_log_file_gets_whole_lines(verbose):
    model, x, y = _tiny_model()
    log = io.StringIO()  # not a terminal: nothing is redrawn
    model.fit(x, y, batch_size=10, epochs=2, validation_data=(x, y), verbose=verbose,
              callbacks=[ProgressBar(stream=log, interval=0)])
    lines = log.getvalue().splitlines()
    if verbose == 0:
        assert lines == []
        return
    assert "\r" not in log.getvalue() and lines.count("Epoch 2/2") == 1
    final = r"4/4 {}- \d+m?s \d+[mu]?s/step - loss: \d\.\d{{4}} - accuracy: \d\.\d{{4}} - " \
            r"val_loss: \d\.\d{{4}} - val_accuracy: \d\.\d{{4}}"
    if verbose == 1:
        assert [line[:11] for line in lines[:5]] == [
            "Epoch 1/2", "1/4 [======", "2/4 [======", "3/4 [======", "4/4 [======"]
        assert re.fullmatch(final.format(r"\[=+\] "), lines[4]), lines[4]
    else:
        assert lines[0] == "Epoch 1/2" and re.fullmatch(final.format(""), lines[1]), lines[1]
        assert len(lines) == 4


# ---------------------------------------------------------------------------------------------
# A search with a budget, in fit


class _Record(tf.keras.callbacks.Callback):
    """Each step's log keys, and each epoch's logs with the architecture they were taken at."""

    def __init__(self):
        super().__init__()
        self.step_keys: list[set[str]] = []
        self.epochs: list[tuple[dict, dict]] = []

    def on_train_batch_end(self, batch, logs=None):
        self.step_keys.append(set(logs))

    def on_epoch_end(self, epoch, logs=None):
        values = {k: np.array(v, copy=True) for k, v in self.model.arch_values().items()}
        self.epochs.append(({k: float(v) for k, v in logs.items()}, values))


def _table(steps: int) -> CostTable:
    rng = np.random.default_rng(0)
    costs = rng.uniform(0.1, 1.0, size=(2, num_edges(steps), len(SMALL_PRIMITIVES)))
    costs[:, :, SMALL_PRIMITIVES.index("none")] = 0.0
    return CostTable(base=0.5, normal=costs[0], reduce=costs[1], primitives=SMALL_PRIMITIVES, steps=steps)


def _scalars(log_dir) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "train", "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return out


def test_search_steps_log_losses_and_accuracies_and_epochs_add_the_figures(tmp_path):
    table = _table(steps=2)
    tf.keras.utils.set_random_seed(0)
    model = SearchNetwork(10, init_channels=4, layers=3, steps=2, primitives=SMALL_PRIMITIVES, k_normal=2,
                          k_reduce=2, seed=0)
    objective = ArchitectureObjective(discretization_weight=1.0, cost_table=table,
                                      target=1.0)
    model.compile(arch_optimizer=tf.keras.optimizers.Adam(0.1), arch_objective=objective,
                  run_eagerly=True)  # no tracing: a few eager steps are quicker
    model.build_network((8, 8, 1))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=16)
    ds = tf.data.Dataset.from_tensor_slices(((x[:8], y[:8]), (x[8:], y[8:]))).batch(4)
    screen, record = _Terminal(), _Record()
    history = model.fit(ds, epochs=2, verbose=1, callbacks=[
        ArchitectureWarmup(1), ProgressBar(stream=screen, interval=0), ArchitectureFigures(),
        record, tf.keras.callbacks.TensorBoard(str(tmp_path), profile_batch=0, write_graph=False)])

    # A step logs its losses and accuracies, the held-out ones once the architecture moves.
    assert record.step_keys == [{"loss", "accuracy"}] * 2 + [STEP_LOGS] * 2
    # The epoch's logs have the figures and the expected cost of the architecture it ends
    # with, for the callbacks after ArchitectureFigures and for fit's History.
    for epoch, (logs, arch) in enumerate(record.epochs):
        figures = architecture_figures(arch["alpha_normal"], arch["beta_normal"],
                                       arch["alpha_reduce"], arch["beta_reduce"], SMALL_PRIMITIVES, 2)
        expected = float(table.expected(arch["alpha_normal"], arch["beta_normal"],
                                             arch["alpha_reduce"], arch["beta_reduce"]))
        assert set(logs) == {"loss", "accuracy", *FIGURES, "expected_mops"} | (
            {"arch_loss", "arch_accuracy"} if epoch else set())
        for name in FIGURES:
            assert logs[name] == pytest.approx(figures[name], rel=1e-5), name
            assert history.history[name][epoch] == logs[name]
        assert logs["expected_mops"] == pytest.approx(expected, rel=1e-5)
        assert history.history["expected_mops"][epoch] == logs["expected_mops"]
    assert record.epochs[1][0]["op_max_kept"] != record.epochs[0][0]["op_max_kept"]  # it moved
    # ... and so has TensorBoard.
    scalars = _scalars(tmp_path)
    for name in (*FIGURES, "expected_mops", "loss", "arch_accuracy"):
        logged = [logs[name] for logs, _ in record.epochs if name in logs]
        assert scalars[f"epoch_{name}"] == pytest.approx(logged, rel=1e-6), name

    # The screen: every line within 120 columns, losses and accuracies only.
    lines = _screen_lines(screen.getvalue())
    assert all(len(line) <= 120 for line in lines)
    bars = [line for line in lines if "/2 " in line]
    assert len(bars) == 4  # one redraw after the first step, the last line of each epoch
    assert not any(name in line for line in bars for name in (*FIGURES, "mops"))
    assert "loss: " in bars[1] and "arch_" not in bars[1]  # warm-up
    assert bars[3].startswith("2/2 [====") and " - arch_accuracy: " in bars[3]
    widths = [line.index("]") - line.index("[") for line in bars]
    assert widths[0] >= widths[1] and widths[2] >= widths[3]  # never wider within an epoch
    assert lines[0] == "Epoch 1/2" and lines[1] == bars[0]
    assert progress._open_stream is None  # the last line was ended


# ---------------------------------------------------------------------------------------------
# An error mid-epoch


def test_a_full_disk_mid_epoch_is_reported_on_a_line_of_its_own(tmp_path, monkeypatch):
    """As tools/search.py: the state write of a step checkpoint fails while the bar is drawn;
    `fit_resumable` ends its line, so `report_stop`'s one line starts a line of its own."""
    model, x, y = _tiny_model()
    run = RunDirectory(str(tmp_path / "run"), "tiny")
    os.makedirs(run.path)
    checkpoints = RunCheckpoints(run.checkpoint_dir, {"model": model}, steps_per_epoch=8)
    checkpointing = CheckpointCallback(run, checkpoints, every_steps=3)

    def full_disk(state):
        raise DiskFullError(run.join("state.json"), "no space left on device")

    monkeypatch.setattr(run, "write_state", full_disk)
    screen = _Terminal()
    monkeypatch.setattr("sys.stdout", screen)
    monkeypatch.setattr("sys.stderr", screen)  # one terminal, as for a user
    with pytest.raises(DiskFullError) as caught:
        fit_resumable(model, lambda epoch, step: tf.data.Dataset.from_tensor_slices((x, y))
                      .batch(5).repeat(), epochs=2, initial_epoch=0, initial_step=0,
                      steps_per_epoch=8, callbacks=[ProgressBar(interval=0), checkpointing],
                      checkpoint_callback=checkpointing, verbose=1)
    assert report_stop(caught.value, run, "search.py") == EXIT_DISK_FULL

    *_, bar, message, end = screen.getvalue().split("\n")
    assert bar.split("\r")[-1].rstrip().startswith("3/8 [")  # the step that failed to save
    assert message == (f"search.py: error: no space left on device while writing "
                       f"{run.join('state.json')}; no epoch was completed yet; free space and "
                       "re-run the same command.")
    assert end == ""
