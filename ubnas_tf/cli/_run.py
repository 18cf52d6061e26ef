"""How tools/search.py and tools/train.py start a run: the common, data and tool flags
validated, the CPU split and the --distribute strategy made, and --output_dir prepared as the
tool's run directory (the flags recorded there), on every worker of a multi-worker run."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable

from absl import flags

from ubnas_tf import flags as ub_flags
from ubnas_tf.cli._stops import EXIT_FLAG_ERROR, report_stop
from ubnas_tf.distribute import agree_all, make_strategy, same_on_every_worker, split_cpu
from ubnas_tf.errors import FlagError
from ubnas_tf.rundir import RunDirectory

FLAGS = flags.FLAGS

# Flags that do not change a run's result, so they are not recorded in its directory.
NOT_RECORDED = frozenset({"logical_cpus", "verbose", "steps_per_execution", "overwrite",
                          "checkpoint_every_steps"})
# Flags that may differ between the processes of a multi-worker run.
PER_PROCESS = frozenset({"output_dir", "verbose", "overwrite"})


def flag_values(names: Iterable[str]) -> dict:
    """The current values of `names`, JSON-serialisable (what a run directory records)."""
    return {n: FLAGS[n].value for n in names}


def prepare_run(tool: str, validate_tool: Callable[[int], None],
                absolute_paths: Iterable[str] = ()) -> RunDirectory:
    """Validates the common, data and tool flags (``validate_tool(num_train)``), splits the
    CPU if asked, creates the --distribute strategy, and prepares ``--output_dir`` as the
    `tool`'s run directory, recording the flags defined by `ubnas_tf.flags`.

    Returns the `ubnas_tf.rundir.RunDirectory`; raises `FlagError` before any heavy work.
    Flags named in `absolute_paths` are recorded as absolute paths.

    The strategy comes before any other TensorFlow op (`validate_tool` may build models):
    MultiWorkerMirroredStrategy must, and the logical CPUs must be set before it. In a
    multi-worker run (TF_CONFIG checked first) every process validates its flags, they must
    be the same on all (but `PER_PROCESS`), the chief prepares the run directory and every
    other worker makes its own copy of it (`RunDirectory.worker_copy`, removed by
    `RunDirectory.remove_worker_copy`). A refusal on any process stops all of them, each
    with exit status 2, the refusing one saying why; none waits for the others for ever.
    """
    ub_flags.validate_run_flags()
    role = ub_flags.validate_distribute_flags()
    num_train = ub_flags.validate_data_flags()
    split_cpu(FLAGS.logical_cpus)
    strategy = make_strategy(FLAGS.distribute)
    _on_every_worker(strategy, lambda: validate_tool(num_train))
    everything = {f.name for f in FLAGS.get_flags_for_module(ub_flags.__name__)}
    if not same_on_every_worker(strategy, repr(sorted(flag_values(everything - PER_PROCESS).items()))):
        raise FlagError("the processes of the TF_CONFIG cluster were started with different "
                        "flags; start every one with the same command (only TF_CONFIG's task "
                        f"differs; {', '.join('--' + n for n in sorted(PER_PROCESS))} may).")
    values = flag_values(sorted(everything - NOT_RECORDED))
    for name in absolute_paths:
        if values.get(name):
            values[name] = os.path.abspath(values[name])
    run = RunDirectory(FLAGS.output_dir, tool)
    defaults = {n: FLAGS[n].default for n in values}
    if role is None or role.is_chief:
        _on_every_worker(strategy, lambda: run.prepare(values, FLAGS.overwrite, defaults))
    else:
        _on_every_worker(strategy, lambda: None)  # the chief prepares the directory
    if role is not None:
        # Every process must see the chief's run directory (a shared filesystem).
        try:
            with open(run.join("flags.json"), "rb") as fh:
                recorded = fh.read()
        except OSError:
            recorded = b""
        if not same_on_every_worker(strategy, recorded.decode(errors="replace")):
            raise FlagError(
                f"--output_dir={run.path}: "
                + ("this process does not see the run directory that the chief prepared"
                   if not role.is_chief else "a worker does not see this run directory")
                + f" (TF_CONFIG: {role.describe()}); it must be on a filesystem that every "
                "worker shares.")
        if not role.is_chief:
            run = _on_every_worker(strategy, lambda: RunDirectory.worker_copy(
                FLAGS.output_dir, tool, f"{role.task_type}{role.task_index}"))
        else:
            _on_every_worker(strategy, lambda: None)  # while the workers copy it
    return run


def run_in_directory(tool: str, validate_tool: Callable[[int], None],
                     work: Callable[[RunDirectory], int],
                     absolute_paths: Iterable[str] = ()) -> int:
    """A run tool's main: `prepare_run`, then ``work(run)``; returns the exit status. A bad
    flag prints one line and gives `EXIT_FLAG_ERROR`; a pre-emption or a full disk prints one
    line and gives its status (`report_stop`); anything else is raised. A multi-worker run's
    non-chief worker removes its own copy of the run directory at the end, whatever happened."""
    run = None
    try:
        run = prepare_run(tool, validate_tool, absolute_paths=absolute_paths)
        return work(run)
    except FlagError as err:
        print(f"{ub_flags.program_name()}: error: {err}", file=sys.stderr)
        return EXIT_FLAG_ERROR
    except Exception as err:
        status = report_stop(err, run, ub_flags.program_name())
        if status is None:
            raise
        return status
    finally:
        if run is not None:
            run.remove_worker_copy()


def _on_every_worker(strategy, action):
    """Runs `action` (which may raise FlagError) and, in a multi-worker run, waits for every
    worker to run its own: a FlagError on any worker stops all of them (a collective)."""
    error, result = None, None
    try:
        result = action()
    except FlagError as err:
        error = err
    if not agree_all(strategy, error is None):
        raise error or FlagError("another process of the TF_CONFIG cluster refused its flags "
                                 "or the run directory (its output says why); this one stops "
                                 "with it.")
    return result
