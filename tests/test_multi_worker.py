"""--distribute=multi_worker: two worker processes on localhost (TF_CONFIG, free ports).

* TF_CONFIG is checked before any heavy work: a bad one is one line naming TF_CONFIG, what is
  wrong and what is accepted, exit status 2, and no run directory.
* A search killed (SIGKILL, both workers) after its first epoch resumes from the chief's
  checkpoint; a training whose non-chief worker alone gets SIGTERM stops on both workers at
  the same step (exit 75) and resumes mid-epoch. Both workers exit 0 and end with the same
  weights (the digest each prints, and the chief's summary.json).
* Only the chief writes the run directory: the non-chief worker runs with an audit hook that
  reports any write under it (Python file operations, TensorFlow checkpoints and summaries),
  works in a temporary directory of its own (seen while it runs) and removes it at the end.

The runs are tiny; most of their time is TensorFlow's start-up and tracing the step with its
collective ops, on 2 cores shared by the two workers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tool_runs import REPO, RUN_TIMEOUT, Result, read_json, run_tool, subprocess_env

from ubnas_tf.distribute import parse_tf_config
from ubnas_tf.errors import FlagError

SEARCH_ARGS = ("--distribute=multi_worker", "--dataset=fashion_mnist", "--max_examples=64",
               "--batch_size=16", "--layers=3", "--init_channels=4", "--k_normal=2",
               "--k_reduce=2", "--primitives=none,skip_connect,max_pool_3x3,bconv_3x3",
               "--epochs=2", "--arch_warmup_epochs=1", "--patience=10", "--verbose=2",
               "--seed=3")
TRAIN_ARGS = ("--distribute=multi_worker", "--max_examples=200", "--validation_examples=40",
              "--layers=3", "--init_channels=32", "--stem_strides=2", "--stage1_epochs=0",
              "--epochs=1", "--batch_size=16", "--verbose=2", "--seed=1")
# Two nodes a cell: building and tracing the network (and its collective ops) is most of the
# training's time, and it grows with the edges.
GENOTYPE = {
    "format": "ubnas-genotype/1",
    "normal": [["bconv_3x3", 0], ["skip_connect", 1], ["bconv_3x3", 0], ["max_pool_3x3", 2]],
    "normal_concat": [2, 3],
    "reduce": [["max_pool_3x3", 0], ["bconv_3x3", 1], ["avg_pool_3x3", 0], ["bconv_3x3", 2]],
    "reduce_concat": [2, 3],
}

# Run in the non-chief worker before the tool: reports (on stderr, "WORKER WROTE ...") every
# write under the run directory: Python's file operations (audit events: open for writing,
# rename/replace, remove, mkdir, rmtree, copies) and TensorFlow's own writers (checkpoints,
# summaries), whose files are written by C++.
AUDIT_PRELUDE = r"""
import os, sys
_RUN = os.path.realpath(os.environ["UBNAS_TEST_RUN_DIR"])
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.rename": (0, 1), "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,),
                "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,),
                "shutil.move": (1,), "os.truncate": (0,), "os.symlink": (1,), "os.link": (1,),
                "os.chmod": (0,)}

def _inside(path):
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        return False
    path = os.path.realpath(path)
    return path == _RUN or path.startswith(_RUN + os.sep)

def _report(event, path):
    if _inside(path):
        os.write(2, f"WORKER WROTE {event} {path}\n".encode())

def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        if (flags or 0) & _WRITE_FLAGS or (mode and any(c in str(mode) for c in "wax+")):
            _report(event, path)
    elif event in _PATH_EVENTS:
        for i in _PATH_EVENTS[event]:
            if i < len(args):
                _report(event, args[i])

sys.addaudithook(_hook)
import tensorflow as tf
_save = tf.train.CheckpointManager.save
def _checkpoint_save(self, *args, **kwargs):
    _report("CheckpointManager.save", self.directory)
    return _save(self, *args, **kwargs)
tf.train.CheckpointManager.save = _checkpoint_save
_writer = tf.summary.create_file_writer
def _create_file_writer(logdir, *args, **kwargs):
    _report("create_file_writer", logdir)
    return _writer(logdir, *args, **kwargs)
tf.summary.create_file_writer = _create_file_writer
"""


# ------------------------------------------------------------------------------------------
# TF_CONFIG
# ------------------------------------------------------------------------------------------

WORKERS = ["localhost:1001", "localhost:1002"]


def _config(**overrides) -> str:
    config = {"cluster": {"worker": WORKERS}, "task": {"type": "worker", "index": 0}}
    config.update(overrides)
    return json.dumps(config)


@pytest.mark.parametrize("text, role", [
    (_config(), ("worker", 0, 2, True)),
    (_config(task={"type": "worker", "index": 1}), ("worker", 1, 2, False)),
    (json.dumps({"cluster": {"chief": ["h:1"], "worker": ["h:2"]},
                 "task": {"type": "worker", "index": 0}}), ("worker", 0, 2, False)),
    (json.dumps({"cluster": {"chief": ["h:1"], "worker": ["h:2"]},
                 "task": {"type": "chief", "index": 0}, "rpc_layer": "grpc"}),
     ("chief", 0, 2, True)),
])
def test_tf_config_gives_the_role(text, role):
    parsed = parse_tf_config(text)
    assert (parsed.task_type, parsed.task_index, parsed.num_processes, parsed.is_chief) == role


@pytest.mark.parametrize("text, pattern", [
    (None, r"TF_CONFIG is not set"),
    ("  ", r"TF_CONFIG is not set"),
    ('{"cluster": ', r"TF_CONFIG is not valid JSON \(Expecting value at character 12"),
    ("[1, 2]", r"TF_CONFIG is a JSON list, not an object with \"cluster\" and \"task\""),
    (json.dumps({"task": {"type": "worker", "index": 0}}), r'TF_CONFIG has no "cluster" object'),
    (_config(cluster={"chief": ["h:1"]}), r"TF_CONFIG has no cluster\.worker list"),
    (_config(cluster={"worker": []}), r"cluster\.worker = \[\]: it must be a non-empty list"),
    (_config(cluster={"worker": "h:1,h:2"}), r'cluster\.worker = "h:1,h:2": it must be a non-empty list'),
    (_config(cluster={"worker": ["h:1", "h"]}), r'has "h" in cluster\.worker: every address must '
     r'be "host:port"'),
    (_config(cluster={"worker": ["h:1", "h:99999"]}), r"port from 1 to 65535"),
    (_config(cluster={"worker": ["h:1", "h:1"]}), r"lists \['h:1'\] more than once"),
    (_config(cluster={"worker": WORKERS, "ps": ["h:3"]}), r"job type\(s\) \['ps'\]: "
     r"MultiWorkerMirroredStrategy runs \"worker\" tasks"),
    (_config(cluster={"worker": WORKERS, "chief": ["h:3", "h:4"]}), r"lists 2 addresses in "
     r"cluster\.chief"),
    (_config(task=None), r'TF_CONFIG has no "task" object'),
    (_config(task={"type": "evaluator", "index": 0}), r'task type "evaluator"; this cluster '
     r'accepts "worker"'),
    (_config(task={"type": "chief", "index": 0}), r'task type "chief"; this cluster accepts '
     r'"worker"$|task type "chief"; this cluster accepts "worker"\.'),
    (_config(task={"type": "worker", "index": 2}), r"task index 2: cluster\.worker lists 2 "
     r"addresses, so the index must be an integer from 0 to 1"),
    (_config(task={"type": "worker", "index": -1}), r"task index -1"),
    (_config(task={"type": "worker", "index": "0"}), r'task index "0"'),
    (_config(task={"type": "worker"}), r"task index null"),
])
def test_bad_tf_config_says_what_is_wrong_and_what_is_accepted(text, pattern):
    with pytest.raises(FlagError) as info:
        parse_tf_config(text)
    message = str(info.value)
    assert re.search(pattern, message), message
    assert "--distribute=multi_worker reads the cluster" in message
    assert '"task": {"type": "worker", "index": 0}' in message  # an example of what works


def test_tools_refuse_a_bad_tf_config_before_any_work(tmp_path):
    bad_index = subprocess_env()
    bad_index["TF_CONFIG"] = _config(task={"type": "worker", "index": 2})
    unset = subprocess_env()
    unset.pop("TF_CONFIG", None)
    with ThreadPoolExecutor(2) as pool:
        search = pool.submit(run_tool, "search", [f"--output_dir={tmp_path / 's'}",
                                                   "--distribute=multi_worker"], bad_index)
        train = pool.submit(run_tool, "train", [f"--output_dir={tmp_path / 't'}",
                                                 "--distribute=multi_worker",
                                                 f"--genotype={tmp_path / 'g.json'}"], unset)
    for res, tool, what in ((search.result(), "search", r"has task index 2: cluster\.worker "
                             r"lists 2 addresses, so the index must be an integer from 0 to 1"),
                            (train.result(), "train", r"is not set \(or empty\)")):
        assert res.returncode == 2, str(res)
        lines = res.stderr.strip().splitlines()
        assert re.fullmatch(rf"{tool}\.py: error: TF_CONFIG {what}\. --distribute=multi_worker "
                            r"reads the cluster .*", lines[-1]), str(res)
        assert "Traceback" not in res.output
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()


# ------------------------------------------------------------------------------------------
# Two workers on localhost
# ------------------------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class _Cluster:
    """One run of `tool` on two worker processes (worker 0 is the chief; worker 1 runs with
    AUDIT_PRELUDE); each with its own TMPDIR, output to a log file per worker (appended)."""

    def __init__(self, tool: str, args: list[str], run_dir: Path, base: Path):
        self.tool, self.run_dir, self.base = tool, run_dir, base
        ports = _free_ports(2)
        self.logs = [base / f"{tool}.worker{i}.log" for i in range(2)]
        self.tmpdirs = [base / f"tmp{i}" for i in range(2)]
        self.returncodes: list[int | None] = [None, None]
        self._files, self.procs = [], []
        self.start = time.monotonic()
        for i in range(2):
            self.tmpdirs[i].mkdir(exist_ok=True)
            env = subprocess_env()
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                                           "task": {"type": "worker", "index": i}})
            env["TMPDIR"] = str(self.tmpdirs[i])
            env["UBNAS_TEST_RUN_DIR"] = str(run_dir)
            command = [sys.executable, f"tools/{tool}.py", *args]
            if i:
                command = [sys.executable, "-c", f"{AUDIT_PRELUDE}\nsys.argv[0] = 'tools/{tool}.py'\n"
                           f"from ubnas_tf.cli.{tool} import run\nrun()\n", *args]
            fh = open(self.logs[i], "ab")  # closed in _finish
            self._files.append(fh)
            self.procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=fh,
                                               stderr=subprocess.STDOUT))

    def wait(self, timeout: float = RUN_TIMEOUT, grace: float = 120) -> list[Result]:
        """Waits for both; one that is left alone (the other failed) is killed after `grace`."""
        deadline = time.monotonic() + timeout
        first_end = None
        while any(p.poll() is None for p in self.procs):
            now = time.monotonic()
            if first_end is None and any(p.poll() is not None for p in self.procs):
                first_end = now
            if now > deadline or first_end is not None and now - first_end > grace:
                for p in self.procs:
                    if p.poll() is None:
                        p.kill()
                break
            time.sleep(0.1)
        return self._finish()

    def again(self, args: list[str], mark: str) -> _Cluster:
        """The tool again on `args` in the same run directory, once this run's logs end with
        ``=== MARK ===`` (what the new run writes follows it: `_last_part`)."""
        for log in self.logs:
            with open(log, "a") as fh:
                fh.write(f"\n=== {mark} ===\n")
        return _Cluster(self.tool, args, self.run_dir, self.base)

    def signal_when(self, state_path: Path, ready, what: str, sig: signal.Signals,
                    workers=(0, 1), also=lambda: True) -> dict:
        """Sends `sig` to `workers` as soon as the chief's state.json satisfies `ready` (and
        `also()` holds); returns that state (the runs go on: `wait` for them)."""
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                results = self.wait(grace=30)
                pytest.fail(f"a worker ended before it could be stopped {what}; make the run "
                            f"longer.\n{results[0]}\n{results[1]}")
            state = read_json(state_path)
            if state is not None and ready(state) and also():
                for i in workers:
                    os.kill(self.procs[i].pid, sig)
                return state
            time.sleep(0.05)
        self.wait(timeout=0, grace=0)
        pytest.fail(f"state.json never showed {what}")

    def _finish(self) -> list[Result]:
        results = []
        for i, (proc, fh) in enumerate(zip(self.procs, self._files, strict=True)):
            self.returncodes[i] = proc.wait()
            fh.close()
            results.append(Result(self.returncodes[i], self.logs[i].read_text(errors="replace"),
                                  "", time.monotonic() - self.start))
        return results


def _ours(tmpdir: Path) -> list[str]:
    """What ubnas-tf left in a TMPDIR (TensorFlow's autograph leaves its own files there)."""
    return sorted(name for name in os.listdir(tmpdir) if name.startswith("ubnas-"))


def _scratch_dirs(tmpdir: Path, tool: str) -> list[Path]:
    return sorted(tmpdir.glob(f"ubnas-{tool}-worker1-*"))


def _last_part(log: str, marker: str) -> str:
    return log.split(marker)[-1]


def _digest(output: str) -> str:
    found = re.findall(r"^Weights digest: ([0-9a-f]{16})$", output, re.M)
    assert len(found) == 1, output[-3000:]
    return found[0]


def _assert_chief_only(run_dir: Path, results: list[Result], tool: str) -> None:
    """Nothing of the non-chief worker's in the run directory."""
    assert "WORKER WROTE" not in results[1].stdout, re.findall(r"WORKER WROTE .*", results[1].stdout)
    leftovers = [p for p in run_dir.rglob("*") if re.search(r"workertemp|ubnas-|\.tmp-", p.name)]
    assert leftovers == []
    assert "This worker's copy of the run is deleted; the chief wrote the results to " \
           f"{run_dir}." in results[1].stdout
    assert "This worker's copy" not in results[0].stdout


@pytest.fixture(scope="module")
def search_cluster(tmp_path_factory, fashion_mnist):
    """A search on two workers, both SIGKILLed once the chief has saved epoch 1; then the
    same command again, to the end."""
    base = tmp_path_factory.mktemp("mw_search")
    run_dir = base / "run"
    args = [f"--output_dir={run_dir}", *SEARCH_ARGS]
    first = _Cluster("search", args, run_dir, base)

    def worker_saved_epoch_1() -> bool:  # in its own copy of the run
        return any((read_json(d / "state.json") or {}).get("completed_epochs", 0) >= 1
                   for d in _scratch_dirs(first.tmpdirs[1], "search"))

    killed = first.signal_when(run_dir / "state.json", lambda s: s.get("completed_epochs", 0) >= 1,
                               "after epoch 1", signal.SIGKILL, also=worker_saved_epoch_1)
    first.wait(timeout=120, grace=120)
    # The worker's own copy of the run, left behind by SIGKILL: what it wrote instead.
    scratch = _scratch_dirs(first.tmpdirs[1], "search")
    scratch_files = sorted(str(p.relative_to(scratch[0])) for p in scratch[0].rglob("*")) if scratch else []
    second = first.again(args, "SIGKILL")
    results = second.wait()
    return {"run": run_dir, "killed": killed, "first": first, "results": results,
            "scratch": scratch, "scratch_files": scratch_files,
            "tmp_after": _ours(second.tmpdirs[1])}


@pytest.mark.slow
def test_multi_worker_search_resumes_after_both_are_killed(search_cluster):
    results, run_dir = search_cluster["results"], search_cluster["run"]
    for i, res in enumerate(results):
        assert res.returncode == 0, f"worker {i}:\n{res.stdout[-5000:]}"
        after = _last_part(res.stdout, "=== SIGKILL ===")
        assert re.search(r"Resuming from \S*/run/checkpoints/ckpt-1 \(epoch 1\)", after), after[-3000:]
    assert search_cluster["first"].returncodes == [-signal.SIGKILL, -signal.SIGKILL]
    assert search_cluster["killed"]["completed_epochs"] == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from_epoch"] == 1 and summary["epochs_run"] == 2
    state = json.loads((run_dir / "state.json").read_text())
    assert state["finished"] and state["completed_epochs"] == 2
    assert Path(state["checkpoint"]) == run_dir / "checkpoints" / "ckpt-2"
    assert (run_dir / "checkpoints" / "ckpt-2.index").is_file()
    assert json.loads((run_dir / "genotype.json").read_text()) == summary["genotype"]
    history = json.loads((run_dir / "arch_history.json").read_text())["epochs"]
    assert [r["epoch"] for r in history] == [0, 1]
    # The logs are the cluster's figures, not summed over the workers.
    for record in history:
        for name in ("accuracy", "op_max_kept", "edge_kept_mass"):
            assert 0.0 <= record["logs"][name] <= 1.0, (name, record["logs"])
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "arch_history.json", "checkpoints", "flags.json", "flags.txt", "genotype.json", "plots",
        "state.json", "summary.json", "tensorboard"]


@pytest.mark.slow
def test_multi_worker_search_ends_with_the_same_weights_on_both_workers(search_cluster):
    results, run_dir = search_cluster["results"], search_cluster["run"]
    digests = [_digest(_last_part(r.stdout, "=== SIGKILL ===")) for r in results]
    assert digests[0] == digests[1] == json.loads((run_dir / "summary.json").read_text())["weights_digest"]


@pytest.mark.slow
def test_multi_worker_search_only_the_chief_writes_the_run_directory(search_cluster):
    run_dir = search_cluster["run"]
    results = [Result(r.returncode, r.stdout, "", 0) for r in search_cluster["results"]]
    _assert_chief_only(run_dir, results, "search")
    # While it ran, the worker wrote its own copy of the run in its TMPDIR (kept by SIGKILL).
    assert len(search_cluster["scratch"]) == 1
    files = search_cluster["scratch_files"]
    for name in ("flags.json", "state.json", "arch_history.json", "checkpoints/ckpt-1.index"):
        assert name in files, files
    assert any(f.startswith("tensorboard/") for f in files)
    # The finished run removed the copy it made (only the killed run's is left).
    assert search_cluster["tmp_after"] == [search_cluster["scratch"][0].name]


@pytest.fixture(scope="module")
def train_cluster(tmp_path_factory, fashion_mnist_small):
    """A training (one epoch of stage 2 only) on two workers whose non-chief worker alone gets
    SIGTERM in the middle of it; then the same command again, to the end. On the first 200
    training and 500 test images (the chief evaluates the test set)."""
    base = tmp_path_factory.mktemp("mw_train")
    genotype = base / "genotype.json"
    genotype.write_text(json.dumps(GENOTYPE))
    run_dir = base / "run"
    args = [f"--output_dir={run_dir}", f"--genotype={genotype}",
            f"--data_dir={fashion_mnist_small}", *TRAIN_ARGS]
    # Each save reads every BatchNorm statistic across the workers: only the first run saves
    # within the epoch (--checkpoint_every_steps may change when resuming).
    first = _Cluster("train", [*args, "--checkpoint_every_steps=2"], run_dir, base)
    # Once the chief has saved step 2: far from the epoch's end, where a stop would save the
    # epoch instead.
    signalled = first.signal_when(
        run_dir / "state.json", lambda s: s.get("stage") == 2 and s.get("epoch_step", 0) >= 2,
        "2 steps into the epoch", signal.SIGTERM, workers=(1,))
    stopped = first.wait()
    state = read_json(run_dir / "state.json")
    step_checkpoints = sorted(os.listdir(run_dir / "checkpoints" / "stage2" / "steps"))
    second = first.again(args, "SIGTERM")
    results = second.wait()
    return {"run": run_dir, "signalled": signalled, "stopped": stopped, "state": state,
            "step_checkpoints": step_checkpoints,
            "results": results, "tmp_after": [_ours(d) for d in second.tmpdirs]}


@pytest.mark.slow
def test_multi_worker_sigterm_to_one_worker_stops_both_at_the_same_step(train_cluster):
    stopped, state = train_cluster["stopped"], train_cluster["state"]
    assert [r.returncode for r in stopped] == [75, 75], f"{stopped[0]}\n{stopped[1]}"
    # 11 steps per epoch (180 training images, 20 held out, batches of 16). The workers agree
    # on a stop after a step; the chief had saved step 2 when the signal was sent: step 3 at least.
    assert state["stage"] == 2 and state["completed_epochs"] == 0 and 3 <= state["epoch_step"] < 11
    ckpt = f"checkpoints/stage2/steps/ckpt-{state['epoch_step']}"
    saved = (f"the state is saved (stage 2, {state['epoch_step']} steps into epoch 1 / "
             f"checkpoint {ckpt}); re-run the same command to resume.")
    assert f"train.py: stopped because another worker of the cluster received SIGTERM; {saved}" \
        in stopped[0].stdout, stopped[0].stdout[-3000:]
    assert f"train.py: stopped by SIGTERM; {saved}" in stopped[1].stdout, stopped[1].stdout[-3000:]
    assert f"{Path(ckpt).name}.index" in train_cluster["step_checkpoints"]


@pytest.mark.slow
def test_multi_worker_training_resumes_mid_epoch_and_chief_writes_everything(train_cluster):
    results, run_dir, state = train_cluster["results"], train_cluster["run"], train_cluster["state"]
    for i, res in enumerate(results):
        assert res.returncode == 0, f"worker {i}:\n{res.stdout[-5000:]}"
        after = _last_part(res.stdout, "=== SIGTERM ===")
        assert re.search(rf"Resuming stage 2 from \S*/run/checkpoints/stage2/steps/ckpt-"
                         rf"{state['epoch_step']} \(epoch 0, step {state['epoch_step']} of 11\)",
                         after), after[-3000:]
        # The resumed epoch's figures continue the saved totals (summed over the workers).
        assert "cover only the steps run since the resume" not in after
    digests = [_digest(_last_part(r.stdout, "=== SIGTERM ===")) for r in results]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert digests[0] == digests[1] == summary["weights_digest"]
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and 0.0 <= summary["best_val_accuracy"] <= 1.0
    final_state = json.loads((run_dir / "state.json").read_text())
    assert final_state["finished"] and final_state["stage"] == 2
    history = json.loads((run_dir / "history.json").read_text())["epochs"]
    assert [(r["epoch"], r["stage"]) for r in history] == [(0, 2)]
    for record in history:  # the cluster's figures (not summed over the workers)
        for name in ("accuracy", "val_accuracy"):
            assert 0.0 <= record["logs"][name] <= 1.0, (name, record)
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoints", "cost.json", "flags.json", "flags.txt", "genotype.json", "history.json",
        "model_best.keras", "model_final.keras", "plots", "state.json", "summary.json",
        "tensorboard"]
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["stage2"]
    _assert_chief_only(run_dir, results, "train")
    assert train_cluster["tmp_after"][1] == []  # the worker removed its copy
