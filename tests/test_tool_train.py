"""tools/train.py as a user meets it (run as a subprocess).

* Bad inputs fail fast (before any data is read or model built) with a message that names the
  flag or file at fault and, where the code knows it, what is accepted; `--help` lists every
  flag with a help sentence (the checks of every tool, `tool_runs.ToolTests`, on its command
  lines in `tool_runs.BAD_INPUTS`).
* Run directories: a run killed with SIGKILL resumes to exactly the result of an
  uninterrupted one, also when killed between the end of training and its summary.
* Shared clusters: SIGTERM in stage 2 saves the step under way and exits 75, the re-run
  continues mid-epoch to exactly the uninterrupted result; every file a run writes has the
  mode of a plain file.

The resume tests (`slow`) run real tiny trainings on Fashion-MNIST, one process at a time, on
its first 200 training and 500 test images (conftest's `fashion_mnist_small`).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from tool_runs import (
    Proc,
    ToolTests,
    assert_ok,
    assert_plain_file_modes,
    check_start_up_noise,
    tensorflow,
)


class TestTrain(ToolTests):
    tool = "train"
    key_flags = frozenset({"genotype", "stage1_epochs", "cutout", "allow_unaligned_widths"})


def test_tensorflow_start_up_noise_is_hidden_by_default(tmp_path):
    check_start_up_noise(["ubnas-train"], tmp_path)  # the console script, run from elsewhere


# ------------------------------------------------------------------------------------------
# Resume after SIGKILL (real tiny runs)
# ------------------------------------------------------------------------------------------

# Every kind of op but none, in two nodes a cell (tool_runs.GENOTYPE has four): building
# and tracing the network is most of a tiny training's time, and it grows with the edges.
TRAIN_GENOTYPE = {
    "format": "ubnas-genotype/1",
    "normal": [["bconv_3x3", 0], ["skip_connect", 1], ["bdil_conv_3x3", 0], ["max_pool_3x3", 2]],
    "normal_concat": [2, 3],
    "reduce": [["max_pool_3x3", 0], ["bconv_5x5", 1], ["avg_pool_3x3", 0], ["bdil_conv_5x5", 2]],
    "reduce_concat": [2, 3],
}
TRAIN_ARGS = ("--max_examples=200", "--validation_examples=40", "--layers=3",
              "--init_channels=32", "--stem_strides=2", "--stage1_epochs=2", "--epochs=2",
              "--batch_size=16", "--verbose=0", "--seed=1")


@pytest.fixture(scope="module")
def train_runs(tmp_path_factory, fashion_mnist_small):
    """A: uninterrupted. B: SIGKILLed once stage 1 is complete (or stage 2 has begun), then
    resumed; the resumption must hand the stage-1 weights over to stage 2 as A did. C: a copy
    of finished A whose state says training is done but not evaluated (no summary yet)."""
    base = tmp_path_factory.mktemp("train_runs")
    genotype = base / "genotype.json"
    genotype.write_text(json.dumps(TRAIN_GENOTYPE))
    a, b = base / "A", base / "B"

    def args(out):
        return [f"--output_dir={out}", f"--genotype={genotype}",
                f"--data_dir={fashion_mnist_small}", *TRAIN_ARGS]

    # One run at a time, each single-threaded (subprocess_env): exact comparisons need it.
    res_a = Proc("train", args(a), base / "A.log").wait()
    assert_ok(res_a, "training A")

    def stage1_done(state):
        return (state.get("stage") == 1 and state.get("completed_epochs", 0) >= 2
                or state.get("stage") == 2)

    run_b = Proc("train", args(b), base / "B.log")
    killed = run_b.kill_when(b / "state.json", stage1_done, "at the end of stage 1")

    # C: finished A killed after its last stage, before the final evaluation and summary.
    c = base / "C"
    shutil.copytree(a, c)
    flags = json.loads((c / "flags.json").read_text())
    flags["flags"]["output_dir"] = str(c)
    (c / "flags.json").write_text(json.dumps(flags))
    state = json.loads((c / "state.json").read_text())
    assert state["stage"] == 2 and state["stage_finished"] and state.pop("finished")
    state["checkpoint"] = str(c / "checkpoints" / "stage2" / Path(state["checkpoint"]).name)
    (c / "state.json").write_text(json.dumps(state))
    for name in ("summary.json", "model_final.keras", "cost.json"):
        (c / name).unlink()

    res_b = Proc("train", args(b), base / "B.log").wait()
    res_c = Proc("train", args(c), base / "C.log").wait()
    return {"dirs": {"A": a, "B": b, "C": c}, "killed_state": killed, "A": res_a,
            "B": res_b, "C": res_c, "data_dir": fashion_mnist_small}


@pytest.mark.slow


def test_train_resumes_exactly_after_sigkill(train_runs):
    tf = tensorflow()
    a, b = train_runs["dirs"]["A"], train_runs["dirs"]["B"]
    res_b = train_runs["B"]
    assert_ok(res_b, "resumed training B")
    killed = train_runs["killed_state"]
    assert not killed.get("finished")
    if killed["stage"] == 2:
        assert re.search(r"Resuming stage 2 from \S*stage2/ckpt-\d", res_b.stdout)
    else:
        assert "Stage 2 starts from the stage-1 weights." in res_b.stdout.split("=== SIGKILL ===")[-1]

    summary_a = json.loads((a / "summary.json").read_text())
    summary_b = json.loads((b / "summary.json").read_text())
    for key in ("test_accuracy", "test_loss", "best_model_test_accuracy", "best_val_accuracy"):
        np.testing.assert_allclose(summary_b[key], summary_a[key], rtol=0, atol=1e-6,
                                   err_msg=f"{key}; B was killed with state {killed}")
    # The best model is chosen on stage 2's validation accuracy (a real number, not inf).
    assert 0.0 <= summary_a["best_val_accuracy"] <= 1.0
    hist_a = json.loads((a / "history.json").read_text())["epochs"]
    hist_b = json.loads((b / "history.json").read_text())["epochs"]
    assert [(r["epoch"], r["stage"]) for r in hist_b] == [(r["epoch"], r["stage"]) for r in hist_a]
    assert [r["stage"] for r in hist_a] == [1, 1, 2, 2]
    for rec_a, rec_b in zip(hist_a, hist_b, strict=True):
        for key, value in rec_a["logs"].items():
            np.testing.assert_allclose(rec_b["logs"][key], value, rtol=1e-6, atol=1e-6,
                                       err_msg=f"{key} of epoch {rec_a['epoch']}")
    # The best validation accuracy is kept in the last stage's checkpoint, not in state.json.
    state_a = json.loads((a / "state.json").read_text())
    assert "best_val_accuracy" not in state_a
    best = tf.train.load_checkpoint(state_a["checkpoint"]).get_tensor(
        "best_val_accuracy/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_allclose(best, summary_a["best_val_accuracy"], rtol=0, atol=1e-6)

    for name in ("model_final.keras", "model_best.keras"):
        _assert_same_weights(tf, a / name, b / name)


def _assert_same_weights(tf, path_a: Path, path_b: Path) -> None:
    weights_a = tf.keras.models.load_model(path_a, compile=False).get_weights()
    weights_b = tf.keras.models.load_model(path_b, compile=False).get_weights()
    assert len(weights_a) == len(weights_b) > 0
    for i, (wa, wb) in enumerate(zip(weights_a, weights_b, strict=True)):
        np.testing.assert_allclose(wb, wa, rtol=0, atol=1e-6, err_msg=f"{path_b} weight {i}")


@pytest.mark.slow


def test_train_resumed_after_last_stage_keeps_trained_model(train_runs):
    """Killed between the end of training and the summary: the resumed run must evaluate
    and export the trained network (reloaded from the last stage's checkpoint), not a fresh one."""
    tf = tensorflow()
    a, c = train_runs["dirs"]["A"], train_runs["dirs"]["C"]
    res = train_runs["C"]
    assert_ok(res, "training C")
    assert "Stage 1:" not in res.stdout and "Stage 2:" not in res.stdout  # nothing retrained
    summary_a = json.loads((a / "summary.json").read_text())
    summary_c = json.loads((c / "summary.json").read_text())
    for key in ("test_accuracy", "test_loss", "best_model_test_accuracy", "best_val_accuracy"):
        np.testing.assert_allclose(summary_c[key], summary_a[key], rtol=0, atol=1e-6, err_msg=key)
    _assert_same_weights(tf, a / "model_final.keras", c / "model_final.keras")
    assert json.loads((c / "state.json").read_text())["finished"]


# ------------------------------------------------------------------------------------------
# Shared clusters: SIGTERM (pre-emption), mid-epoch checkpoints, file modes
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def preempted_train(train_runs, tmp_path_factory):
    """P: SIGTERMed in stage 2 once 3 steps of an epoch are saved (--checkpoint_every_steps=3),
    then re-run without the flag. Compared with train_runs' uninterrupted A."""
    base = tmp_path_factory.mktemp("preempted_train")
    genotype = train_runs["dirs"]["A"].parent / "genotype.json"
    p = base / "P"
    args = [f"--output_dir={p}", f"--genotype={genotype}",
            f"--data_dir={train_runs['data_dir']}", *TRAIN_ARGS]
    first = Proc("train", [*args, "--checkpoint_every_steps=3"], base / "P.log")
    state = first.kill_when(p / "state.json", lambda s: s.get("stage") == 2
                            and s.get("epoch_step") == 3, "3 steps into a stage-2 epoch",
                            sig=signal.SIGTERM)
    returncode = first.returncode
    res = Proc("train", args, base / "P.log").wait()
    return {"A": train_runs["dirs"]["A"], "P": p, "state": state, "returncode": returncode,
            "res": res}


@pytest.mark.slow


def test_train_resumed_mid_epoch_after_sigterm_ends_exactly_as_uninterrupted(preempted_train):
    tf = tensorflow()
    a, p, res, state = (preempted_train[k] for k in ("A", "P", "res", "state"))
    assert preempted_train["returncode"] == 75, res.stdout[-3000:]
    # 11 steps per epoch: 180 training images (20 held out for validation), batches of 16.
    assert state["stage"] == 2 and 3 <= state["epoch_step"] < 11, state
    first_run = res.stdout.split("=== SIGTERM ===")[0]
    assert re.search(r"train\.py: stopped by SIGTERM; the state is saved \(stage 2, \d steps "
                     r"into epoch \d / checkpoint checkpoints/stage2/steps/ckpt-\d+\)", first_run)
    assert_ok(res, "training P resumed")
    epoch, step = state["completed_epochs"], state["epoch_step"]
    assert re.search(rf"Resuming stage 2 from \S*stage2/steps/ckpt-{epoch * 11 + step} "
                     rf"\(epoch {epoch}, step {step} of 11\)", res.stdout), res.stdout[-3000:]
    summary_a = json.loads((a / "summary.json").read_text())
    summary_p = json.loads((p / "summary.json").read_text())
    for key in ("test_accuracy", "test_loss", "best_model_test_accuracy", "best_val_accuracy"):
        assert summary_p[key] == summary_a[key], key
    hist_a = json.loads((a / "history.json").read_text())["epochs"]
    hist_p = json.loads((p / "history.json").read_text())["epochs"]
    assert hist_p == hist_a  # the resumed epoch's figures too
    for name in ("model_final.keras", "model_best.keras"):
        _assert_same_weights(tf, a / name, p / name)


@pytest.mark.slow


def test_run_files_get_the_mode_of_a_plain_open(train_runs):
    """Everything a training writes (JSON, plots, TF checkpoints, TensorBoard events, .keras
    models) is readable by others as a plain file would be: 0666 less the umask, not the 0600
    of a temporary file."""
    assert_plain_file_modes(train_runs["dirs"]["A"])
    assert (train_runs["dirs"]["A"] / "model_best.keras").exists()
