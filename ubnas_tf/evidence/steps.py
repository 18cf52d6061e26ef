"""One step of an experiment: a committed tool run as a subprocess, measured and resumable.

A step is ``python -m MODULE ARGS`` in the checkout the package runs from, with its own run
directory. `run_step` skips a step whose run directory has finished, resumes one that has
not (the tools resume from their last checkpoint), records each session's wall time and the
child's peak resident memory in ``timing.json``, and turns the tools' SIGTERM exit
(`STOPPED_BY_SIGTERM`) into `ubnas_tf.errors.StepStopped`, so that a whole experiment stops
and resumes with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from ubnas_tf.errors import StepStopped
from ubnas_tf.io_utils import atomic_write_json, read_json

__all__ = ["REPO", "STOPPED_BY_SIGTERM", "finished", "mark_running", "record_session",
           "run_step", "run_tool"]

# The checkout the package runs from (an editable install): flagfile paths are recorded
# relative to it, and the tools run in it, as the README quotes them.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs module argv[1] as __main__ and, at exit, writes the process's peak resident memory
# (VmHWM: the high-water mark of this process's own address space, which exec starts afresh;
# ru_maxrss would also count the parent's pages at fork time) to the file in argv[2].
_MEASURED = r"""
import atexit, runpy, sys
module, peak_file = sys.argv[1], sys.argv[2]

def _write_peak():
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(peak_file, "w") as f:
        f.write(str(kb))

atexit.register(_write_peak)
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


# The tools' exit status after SIGTERM, once their state is saved (`ubnas_tf.errors.Preempted`).
STOPPED_BY_SIGTERM = 75


def repo_path(path: str) -> str:
    """`path` relative to the code's checkout if it lies inside it (as the tools, run there,
    and the ledger's recipes name it), else absolute."""
    path = os.path.abspath(path)
    inside = os.path.commonpath([path, REPO]) == REPO
    return os.path.relpath(path, REPO) if inside else path


def run_tool(args: Sequence[str]) -> tuple[int, float, float | None]:
    """Runs ``python -m ARGS`` (output passes through); returns (exit code, wall s, peak
    resident memory in MB of that process alone, None if it could not report it).

    SIGTERM to the experiment is passed on to the tool, which saves its state and exits with
    `STOPPED_BY_SIGTERM`, rather than leaving it running unattended."""
    t0 = time.time()
    fd, peak_file = tempfile.mkstemp(prefix="ubnas-peak-")
    os.close(fd)
    try:
        proc = subprocess.Popen([sys.executable, "-c", _MEASURED, args[0], peak_file, *args[1:]],
                                cwd=REPO)
        previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
        try:
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        with open(peak_file) as f:
            text = f.read().strip()
    finally:
        os.remove(peak_file)
    return code, time.time() - t0, int(text) / 1024 if text else None


def record_session(timing_path: str, step: str, wall_s: float, peak_mb: float | None) -> None:
    """Adds one session of `step` to timing.json (wall time summed, peak memory maximised)."""
    timing = read_json(timing_path) if os.path.exists(timing_path) else {}
    t = timing.setdefault(step, {"wall_s": 0.0, "peak_rss_mb": 0.0, "sessions": 0})
    t.pop("running_since", None)
    t["wall_s"] += wall_s
    if peak_mb is not None:
        t["peak_rss_mb"] = max(t["peak_rss_mb"], peak_mb)
    t["sessions"] += 1
    atomic_write_json(timing_path, timing)


def mark_running(timing_path: str, step: str, run_dir: str) -> None:
    """Notes when a session of `step` starts. A session killed with the experiment (SIGKILL, a
    machine shut down) never reports; the next one credits it with the time up to the last
    state it saved (what it lost after that is redone, and counted, by the next session)."""
    timing = read_json(timing_path) if os.path.exists(timing_path) else {}
    since = timing.get(step, {}).get("running_since")
    if since is not None:
        state = os.path.join(run_dir, "state.json")
        saved = os.path.getmtime(state) if os.path.exists(state) else since
        record_session(timing_path, step, max(0.0, saved - since), None)
        timing = read_json(timing_path)
    timing.setdefault(step, {"wall_s": 0.0, "peak_rss_mb": 0.0, "sessions": 0})
    timing[step]["running_since"] = time.time()
    atomic_write_json(timing_path, timing)


def finished(run_dir: str) -> bool:
    state = os.path.join(run_dir, "state.json")
    return (os.path.exists(os.path.join(run_dir, "summary.json")) and os.path.exists(state)
            and bool(read_json(state).get("finished")))


def run_step(cell: str, step: str, label: str, args: Sequence[str]) -> None:
    """Runs (or resumes) one tool run of a cell unless it has finished; records its timing."""
    if finished(os.path.join(cell, step)):
        return
    print(f"\n=== {label}: {step} ===", flush=True)
    timing = os.path.join(cell, "timing.json")
    mark_running(timing, step, os.path.join(cell, step))
    code, wall, peak = run_tool(args)
    # A tool stopped before its SIGTERM handler was installed (while it started) dies of the
    # signal: nothing of it was saved since its last state, so it resumes as well.
    if code in (STOPPED_BY_SIGTERM, -signal.SIGTERM):  # the session's work is saved
        record_session(timing, step, wall, peak)
        raise StepStopped(f"{label}: the {step} stopped on SIGTERM with its state saved")
    if code != 0:
        raise RuntimeError(f"{label}: the {step} exited {code}: python -m {' '.join(args)}")
    record_session(timing, step, wall, peak)
