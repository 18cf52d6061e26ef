"""How tools/search.py and tools/train.py end: exit statuses, the one-line messages of a
pre-emption (SIGTERM) and of a full disk, and what every worker of a multi-worker run prints.

Exit statuses (also in WORKSPACE.md): 0 done; 2 bad flags or a run directory that cannot be
resumed; 3 non-finite values; 74 disk full (EX_IOERR); 75 stopped by SIGTERM after saving
its state (EX_TEMPFAIL: re-run the same command to resume); 1 anything else (with a traceback).
"""

from __future__ import annotations

import sys

from ubnas_tf.io_utils import disk_full_path, disk_full_reason
from ubnas_tf.rundir import Preempted

EXIT_FLAG_ERROR = 2
EXIT_NON_FINITE = 3
EXIT_DISK_FULL = 74
EXIT_PREEMPTED = 75


def report_stop(err: BaseException, run, program: str) -> int | None:
    """Prints the one line for a pre-emption or a full disk (`run`: the RunDirectory, or None
    if it was not prepared yet) and returns the exit status; None for any other error."""
    if isinstance(err, Preempted):
        print(f"{program}: {err}; re-run the same command to resume.", file=sys.stderr)
        return EXIT_PREEMPTED
    reason = disk_full_reason(err)
    if reason is None:
        return None
    path = disk_full_path(err) or "a file of the run"
    state = run.describe_state() if run is not None else None
    kept = (f"the last good state ({state}) is kept; free space and re-run the same command "
            "to resume" if state else "no epoch was completed yet; free space and re-run the "
            "same command")
    print(f"{program}: error: {reason} while writing {path}; {kept}.", file=sys.stderr)
    return EXIT_DISK_FULL


def report_weights(summary: dict, run) -> None:
    """Prints the weights digest of a finished run (equal on every worker of a multi-worker
    run) and, on a worker that is not the chief, where the results are."""
    if summary.get("weights_digest"):
        print(f"Weights digest: {summary['weights_digest']}")
    if run.is_worker_copy:
        print("This worker's copy of the run is deleted; the chief wrote the results to "
              f"{run.shared_path}.")
