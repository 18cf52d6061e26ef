"""tools/search.py as a user meets it (run as a subprocess).

* Bad inputs fail fast (before any data is read or model built) with a message that names the
  flag or file at fault and, where the code knows it, what is accepted; `--help` lists every
  flag with a help sentence (the checks of every tool, `tool_runs.ToolTests`, on its command
  lines in `tool_runs.BAD_INPUTS`).
* Run directories: a run killed with SIGKILL resumes to exactly the result of an
  uninterrupted one, a damaged newest checkpoint falls back to the previous one, a NaN stops
  the run naming where it appeared.
* Shared clusters: SIGTERM saves the step under way and exits 75, the re-run continues
  mid-epoch to exactly the uninterrupted result, a full disk is one line (exit 74) that keeps
  the last good state, and every file a run writes has the mode of a plain file.

The resume tests (`slow`) run real tiny searches on Fashion-MNIST, one process at a time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from tool_runs import (
    SMALL_PRIMITIVES,
    Proc,
    Result,
    ToolTests,
    assert_ok,
    assert_plain_file_modes,
    check_start_up_noise,
    read_json,
    tensorflow,
)


class TestSearch(ToolTests):
    tool = "search"
    key_flags = frozenset({"dataset", "k_normal", "primitives", "output_dir", "arch_warmup_epochs"})


def test_tensorflow_start_up_noise_is_hidden_by_default(tmp_path):
    check_start_up_noise(["tools/search.py"], tmp_path)


# ------------------------------------------------------------------------------------------
# Resume after SIGKILL, damaged checkpoints, NaN (real tiny runs)
# ------------------------------------------------------------------------------------------

# All 4 epochs, whatever the trajectory: --patience=10 keeps a stable genotype from stopping
# the search, and --max_parameter_free=8 (all 8 kept edges of a cell) turns the collapse guard
# off, which a 48-image search with an arch lr of 0.33 can otherwise trip by chance. Four
# primitives (tool_runs.SMALL_PRIMITIVES: one binary conv).
SEARCH_ARGS = ("--dataset=fashion_mnist", "--max_examples=96", "--batch_size=8", "--layers=3",
               "--init_channels=4", "--k_normal=2", "--k_reduce=2", "--epochs=4",
               "--arch_warmup_epochs=1", "--patience=10", "--max_parameter_free=8",
               f"--primitives={','.join(SMALL_PRIMITIVES)}", "--verbose=0", "--seed=3")
# NaN on purpose: alpha/beta overflow to inf within two architecture steps (epoch 2, after
# epoch 1's checkpoint). Fewer examples and epochs: it comes at batch 2 anyway.
NAN_ARGS = ("--dataset=fashion_mnist", "--max_examples=32", "--batch_size=8", "--layers=3",
            "--init_channels=4", "--k_normal=2", "--k_reduce=2", "--epochs=2",
            "--arch_warmup_epochs=1", "--patience=10", "--verbose=0", "--seed=3",
            f"--primitives={','.join(SMALL_PRIMITIVES)}", "--arch_lr=1e38")


def _last_arch(run: Path) -> dict:
    return json.loads((run / "arch_history.json").read_text())["epochs"][-1]


ARCH_KEYS = ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce")


@pytest.fixture(scope="module")
def search_runs(tmp_path_factory, fashion_mnist):
    """A: uninterrupted. B: SIGKILLed after epoch >= 2, then resumed. C: a copy of finished A
    whose newest checkpoint is truncated and whose state says 4 epochs, not finished.
    N: a search that goes NaN. One process at a time."""
    base = tmp_path_factory.mktemp("search_runs")
    a, b, c, n = (base / x for x in "ABCN")
    # One run at a time: exact comparisons need the CPU to themselves.
    res_a = Proc("search", [f"--output_dir={a}", *SEARCH_ARGS], base / "A.log").wait()
    assert_ok(res_a, "search A")
    run_b = Proc("search", [f"--output_dir={b}", *SEARCH_ARGS], base / "B.log")
    killed = run_b.kill_when(b / "state.json", lambda s: s.get("completed_epochs", 0) >= 2,
                             "after epoch 2")

    shutil.copytree(a, c)
    flags = json.loads((c / "flags.json").read_text())
    flags["flags"]["output_dir"] = str(c)  # the copy's own path, or it is refused as different
    (c / "flags.json").write_text(json.dumps(flags))
    state = json.loads((c / "state.json").read_text())
    assert state["completed_epochs"] == 4 and state["finished"]
    state.pop("finished")
    state["checkpoint"] = str(c / "checkpoints" / "ckpt-4")
    (c / "state.json").write_text(json.dumps(state))
    for name in ("summary.json", "genotype.json"):
        (c / name).unlink()
    newest = c / "checkpoints" / "ckpt-4.data-00000-of-00001"
    os.truncate(newest, newest.stat().st_size // 2)

    res_b = Proc("search", [f"--output_dir={b}", *SEARCH_ARGS], base / "B.log").wait()
    res_c = Proc("search", [f"--output_dir={c}", *SEARCH_ARGS], base / "C.log").wait()
    res_n = Proc("search", [f"--output_dir={n}", *NAN_ARGS], base / "N.log").wait()
    return {"dirs": {"A": a, "B": b, "C": c, "N": n}, "killed_state": killed,
            "A": res_a, "B": res_b, "C": res_c, "N": res_n}


@pytest.mark.slow


def test_search_reports_how_decided_it_is(search_runs):
    a = search_runs["dirs"]["A"]
    assert_ok(search_runs["A"], "search A")
    summary = json.loads((a / "summary.json").read_text())
    history = json.loads((a / "arch_history.json").read_text())
    figures = ("op_max_kept", "op_max", "op_entropy", "edge_max", "edge_entropy", "edge_kept_mass")
    for name in figures:
        assert 0.0 <= summary["decisiveness"][name] <= 1.0
        assert summary["decisiveness"][f"normal/{name}"] >= 0.0
        assert name in summary["final_logs"]  # the epoch's logs: TensorBoard and History too
        assert all(name in r["decisiveness"] for r in history["epochs"])
    assert summary["decisiveness"] == history["epochs"][-1]["decisiveness"]
    # Uniform over the primitives after the warm-up epoch.
    assert history["epochs"][0]["decisiveness"]["op_max"] == pytest.approx(
        1 / len(SMALL_PRIMITIVES), abs=1e-3)
    assert summary["stop_reason"] in ("max_epochs", "genotype_stable", "collapse")
    assert summary["stop_rule"] and summary["decided_threshold"] == 0.6
    assert summary["arch_steps"] == 3 * 6 and summary["arch_lr"] == pytest.approx(6 / 18)


@pytest.mark.slow


def test_search_resumes_exactly_after_sigkill(search_runs):
    a, b = search_runs["dirs"]["A"], search_runs["dirs"]["B"]
    killed = search_runs["killed_state"]
    res_b = search_runs["B"]
    assert_ok(res_b, "resumed search B")
    resumed_from = killed["completed_epochs"]
    assert 2 <= resumed_from < 4 and not killed.get("finished")
    assert re.search(rf"Resuming from \S*ckpt-{resumed_from} \(epoch {resumed_from}\)",
                     res_b.stdout), res_b.stdout[-3000:]
    assert "=== SIGKILL ===" in res_b.stdout
    summary_b = json.loads((b / "summary.json").read_text())
    summary_a = json.loads((a / "summary.json").read_text())
    assert summary_b["resumed_from_epoch"] == resumed_from
    assert summary_a["resumed_from_epoch"] is None
    assert summary_b["epochs_run"] == summary_a["epochs_run"] == 4
    assert summary_b["stop_reason"] == summary_a["stop_reason"]

    assert json.loads((b / "genotype.json").read_text()) == json.loads((a / "genotype.json").read_text())
    hist_a = json.loads((a / "arch_history.json").read_text())["epochs"]
    hist_b = json.loads((b / "arch_history.json").read_text())["epochs"]
    assert [r["epoch"] for r in hist_b] == [r["epoch"] for r in hist_a] == [0, 1, 2, 3]
    for rec_a, rec_b in zip(hist_a, hist_b, strict=True):
        assert rec_a["genotype"] == rec_b["genotype"], rec_a["epoch"]
        assert rec_a["arch_updates"] == rec_b["arch_updates"]
        for key in ARCH_KEYS:
            np.testing.assert_allclose(rec_b[key], rec_a[key], rtol=0, atol=1e-6,
                                       err_msg=f"{key} of epoch {rec_a['epoch']}")
        for key, value in rec_a["logs"].items():
            np.testing.assert_allclose(rec_b["logs"][key], value, rtol=1e-6, atol=1e-7,
                                       err_msg=f"{key} of epoch {rec_a['epoch']}")
    # Exactly, in fact: same batches (keyed by seed and epoch), same restored optimiser state.
    for key in ARCH_KEYS:
        assert hist_b[-1][key] == hist_a[-1][key], key
    # The early-stopping counters live in the checkpoint, beside the weights.
    assert _early_stopping_state(b) == _early_stopping_state(a)


def _early_stopping_state(run_dir: Path) -> dict:
    """`GenotypeEarlyStopping`'s state in the run's newest checkpoint."""
    tf = tensorflow()
    path = json.loads((run_dir / "state.json").read_text())["checkpoint"]
    raw = tf.train.load_checkpoint(path).get_tensor("early_stopping/.ATTRIBUTES/py_state")
    return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))


@pytest.mark.slow


def test_search_damaged_checkpoint_falls_back(search_runs):
    a, c = search_runs["dirs"]["A"], search_runs["dirs"]["C"]
    res = search_runs["C"]
    assert_ok(res, "search C (damaged newest checkpoint)")
    assert re.search(r"WARNING: checkpoint \S*ckpt-4 failed to load \(\w+: .+\); trying the "
                     r"previous one", res.stdout), res.stdout[-3000:]
    assert re.search(r"Resuming from \S*ckpt-3 \(epoch 3\)", res.stdout), res.stdout[-3000:]
    summary = json.loads((c / "summary.json").read_text())
    assert summary["resumed_from_epoch"] == 3  # the epoch actually restored, not state.json's 4
    assert summary["epochs_run"] == 4
    assert json.loads((c / "genotype.json").read_text()) == json.loads((a / "genotype.json").read_text())
    last_a, last_c = _last_arch(a), _last_arch(c)
    assert last_c["epoch"] == 3
    for key in ARCH_KEYS:
        np.testing.assert_allclose(last_c[key], last_a[key], rtol=0, atol=1e-6, err_msg=key)
    state = json.loads((c / "state.json").read_text())
    assert state["finished"] and state["completed_epochs"] == 4
    assert Path(state["checkpoint"]).name == "ckpt-4"
    assert Path(state["checkpoint"] + ".index").exists()
    # Early stopping resumed with epoch 3's counters (restored with ckpt-3, not ckpt-4's), so
    # the re-run epoch 4 ends with the same counters as the uninterrupted run.
    assert _early_stopping_state(c) == _early_stopping_state(a)
    assert "early_stopping" not in state and "early_stopping_by_epoch" not in state


@pytest.mark.slow


def test_search_nan_stops_naming_where(search_runs):
    n = search_runs["dirs"]["N"]
    res = search_runs["N"]
    assert res.returncode == 3, res.stdout[-3000:]
    m = re.search(r"search\.py: error: Non-finite (\w+) \((nan|inf|-inf)\) in epoch (\d+), "
                  r"batch (\d+)", res.stdout)
    assert m, res.stdout[-3000:]
    assert "last good checkpoint is kept" in res.stdout
    assert "Traceback" not in res.stdout
    state = read_json(n / "state.json")
    epoch = int(m[3])
    assert epoch == 2, "expected the NaN after epoch 1's checkpoint (the architecture step)"
    assert state is not None and state["completed_epochs"] == epoch - 1
    assert not state.get("finished")
    assert Path(state["checkpoint"] + ".index").exists()
    assert list(Path(n, "checkpoints").glob(Path(state["checkpoint"]).name + ".data-*"))
    assert not (n / "summary.json").exists()


# ------------------------------------------------------------------------------------------
# Shared clusters: SIGTERM (pre-emption), mid-epoch checkpoints, a full disk, file modes
# ------------------------------------------------------------------------------------------

# Run in the tool's process: from its first try on, every write of state.json fails half-way
# with ENOSPC, as on a full disk (io_utils' `open` is the one the atomic writer uses).
FULL_DISK_PRELUDE = """
import errno, os
import ubnas_tf.io_utils as io_utils
_open = open


class _Full:
    def __init__(self, f): self.f = f
    def __enter__(self): return self
    def __exit__(self, *exc): self.f.close()
    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_open(path, mode="r", *args, **kwargs):
    f = _open(path, mode, *args, **kwargs)
    if "w" in mode and os.path.basename(path).startswith(".tmp-state-"):
        return _Full(f)
    return f
io_utils.open = _full_open
"""


@pytest.fixture(scope="module")
def preempted_search(search_runs, tmp_path_factory):
    """P, with --checkpoint_every_steps=2: (1) SIGTERM once 2 steps of epoch 2 are saved;
    (2) re-run on a full disk: its first state write fails; (3) re-run without the flag, to
    the end. Compared with search_runs' uninterrupted A."""
    base = tmp_path_factory.mktemp("preempted_search")
    p = base / "P"
    args = [f"--output_dir={p}", *SEARCH_ARGS, "--checkpoint_every_steps=2"]
    first = Proc("search", args, base / "P1.log")
    state1 = first.kill_when(p / "state.json", lambda s: s.get("completed_epochs", 0) >= 1
                             and s.get("epoch_step") == 2, "2 steps into epoch 2", sig=signal.SIGTERM)
    res1 = Result(first.returncode, (base / "P1.log").read_text(), "", 0.0)
    saved1 = sorted(os.listdir(p / "checkpoints" / "steps"))
    res2 = Proc("search", args, base / "P2.log", prelude=FULL_DISK_PRELUDE).wait()
    state2 = read_json(p / "state.json")
    leftovers = sorted(f for f in os.listdir(p) if f.startswith(".tmp-"))
    res3 = Proc("search", [f"--output_dir={p}", *SEARCH_ARGS], base / "P3.log").wait()
    return {"A": search_runs["dirs"]["A"], "P": p, "state1": state1, "res1": res1,
            "saved1": saved1, "state2": state2, "res2": res2, "leftovers": leftovers, "res3": res3}


@pytest.mark.slow


def test_search_sigterm_saves_the_step_and_exits_75(preempted_search):
    res, state = preempted_search["res1"], preempted_search["state1"]
    assert res.returncode == 75, res.stdout[-3000:]
    assert "SIGTERM received: saving a checkpoint at the end of this step" in res.stdout
    epoch = state["completed_epochs"]
    m = re.search(rf"search\.py: stopped by SIGTERM; the state is saved \((\d) steps into epoch "
                  rf"{epoch + 1} / checkpoint checkpoints/steps/ckpt-(\d+)\); re-run the same "
                  r"command to resume\.", res.stdout)
    assert m, res.stdout[-3000:]
    assert "Traceback" not in res.stdout
    step = int(m[1])
    assert 2 <= step < 6  # the step under way when the signal came, mid-epoch (6 per epoch)
    assert epoch >= 1 and state["epoch_step"] == step
    assert Path(state["checkpoint"]).name == f"ckpt-{6 * epoch + step}" == f"ckpt-{m[2]}"
    assert f"ckpt-{m[2]}.index" in preempted_search["saved1"]


@pytest.mark.slow


def test_search_full_disk_is_one_line_and_keeps_the_last_good_state(preempted_search):
    p, res = preempted_search["P"], preempted_search["res2"]
    state1 = preempted_search["state1"]
    assert res.returncode == 74, res.stdout[-3000:]
    assert "Traceback" not in res.stdout
    line = (f"search.py: error: no space left on device while writing {p / 'state.json'}; the "
            f"last good state ({state1['epoch_step']} steps into epoch "
            f"{state1['completed_epochs'] + 1} / checkpoint "
            f"checkpoints/steps/{Path(state1['checkpoint']).name}) is kept; free space and "
            "re-run the same command to resume.")
    assert line in res.stdout.splitlines(), res.stdout[-3000:]
    assert preempted_search["state2"] == state1  # untouched, and it still loads (below)
    assert preempted_search["leftovers"] == []  # the half-written temporary file is removed


@pytest.mark.slow


def test_search_resumed_mid_epoch_ends_exactly_as_uninterrupted(preempted_search):
    a, p, res = preempted_search["A"], preempted_search["P"], preempted_search["res3"]
    epoch, step = (preempted_search["state1"][k] for k in ("completed_epochs", "epoch_step"))
    assert_ok(res, "search P resumed")
    assert re.search(rf"Resuming from \S*steps/ckpt-{6 * epoch + step} \(epoch {epoch}, step "
                     rf"{step} of 6\)", res.stdout), res.stdout[-3000:]
    summary = json.loads((p / "summary.json").read_text())
    assert (summary["resumed_from_epoch"], summary["resumed_from_step"]) == (epoch, step)
    assert json.loads((p / "genotype.json").read_text()) == json.loads((a / "genotype.json").read_text())
    hist_a = json.loads((a / "arch_history.json").read_text())["epochs"]
    hist_p = json.loads((p / "arch_history.json").read_text())["epochs"]
    assert [r["epoch"] for r in hist_p] == [0, 1, 2, 3]
    for rec_a, rec_p in zip(hist_a, hist_p, strict=True):
        for key in (*ARCH_KEYS, "genotype", "arch_updates", "decisiveness"):
            assert rec_p[key] == rec_a[key], f"{key} of epoch {rec_a['epoch']}"
        # The resumed epoch's figures cover all its steps (the totals come with the checkpoint).
        assert rec_p["logs"] == rec_a["logs"], f"logs of epoch {rec_a['epoch']}"
    assert _early_stopping_state(p) == _early_stopping_state(a)
    assert not (p / "checkpoints" / "steps").exists()  # dropped once epoch 2 was saved


@pytest.mark.slow


def test_run_files_get_the_mode_of_a_plain_open(search_runs):
    """Everything a search writes (JSON, plots, TF checkpoints, TensorBoard events) is
    readable by others as a plain file would be: 0666 less the umask, not the 0600 of a
    temporary file."""
    assert_plain_file_modes(search_runs["dirs"]["A"])
