"""Plain helpers shared by the test modules, imported by name (``from tool_runs import ...``;
the fixtures are in conftest.py): how tools and benchmarks run as subprocesses (their
environment, what a finished command leaves, a run in the background), what several
modules share (the repository's path `REPO`, Fashion-MNIST and its skip `needs_fashion`, the
design's primitives and the small search space of tiny runs), and what the tools' tests
check of every tool (the bad command lines of `BAD_INPUTS`, `--help`, TensorFlow's start-up
noise)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The real Fashion-MNIST (Debian's dataset-fashion-mnist); tests that need it are skipped
# without it (`needs_fashion`, or conftest's `fashion_mnist` fixture).
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
HAVE_FASHION = all((FASHION_DIR / f"{b}.gz").is_file() or (FASHION_DIR / b).is_file()
                   for b in FASHION_FILES)
FASHION_SKIP_REASON = (f"Fashion-MNIST IDX files not in {FASHION_DIR} "
                       "(apt-get install dataset-fashion-mnist)")
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason=FASHION_SKIP_REASON)


def tensorflow():
    """TensorFlow, with the package's Keras objects registered (for `load_model`).

    Imported when a test needs it, not at the top: this module, conftest and the tool tests'
    modules (test_tool_*.py) load no TensorFlow, so their quick tests, whose tools run in
    subprocesses, do not pay its start-up (~5 s) in pytest's process as well."""
    import tensorflow as tf  # deferred: see the docstring

    import ubnas_tf  # noqa: F401  # deferred: see the docstring
    return tf


def write_fashion_subset(dst: Path, n_train: int, n_test: int) -> Path:
    """A Fashion-MNIST data_dir in `dst` (made if missing) holding the first `n_train` training
    and the first `n_test` test images of the real one, as gzip IDX files; returns `dst`.

    The first n training images are what ``--max_examples=n`` selects from the full dataset,
    so a run on the subset trains on the same images. A smaller test set is for runs whose
    checks do not need all 10,000 test images: evaluating them (twice, final and best model)
    is most of a tiny training's time."""
    from ubnas_tf.data import idx  # deferred: loads TensorFlow (see `tensorflow`)

    dst.mkdir(parents=True, exist_ok=True)
    for base in FASHION_FILES:
        src = FASHION_DIR / f"{base}.gz"
        if not src.is_file():
            src = FASHION_DIR / base
        magic = idx.IMAGES_MAGIC if "images" in base else idx.LABELS_MAGIC
        n = n_train if base.startswith("train") else n_test
        idx.write_idx(dst / f"{base}.gz", idx.read_idx(src, magic, max_items=n))
    return dst

# docs/design.md, idea 2: these names are API (the order is the registry's).
DESIGN_PRIMITIVES = (
    "none",
    "skip_connect",
    "max_pool_3x3",
    "avg_pool_3x3",
    "bconv_3x3",
    "bconv_5x5",
    "bdil_conv_3x3",
    "bdil_conv_5x5",
)

# A small search space for tiny searches and supernets: one op of each kind (zero,
# parameter-free, pool, binary conv). Tracing the steps is most of a tiny search's time, and
# it grows with the ops of the supernet.
SMALL_PRIMITIVES = ("none", "skip_connect", "max_pool_3x3", "bconv_3x3")
# Its ops a derived genotype can hold (a genotype never keeps "none").
SMALL_GENOTYPE_OPS = SMALL_PRIMITIVES[1:]

# A genotype for the tools' tests (every kind of op but none).
GENOTYPE = {
    "format": "ubnas-genotype/1",
    "normal": [["bconv_3x3", 0], ["skip_connect", 1], ["bconv_3x3", 0], ["max_pool_3x3", 1],
               ["bconv_5x5", 2], ["skip_connect", 0], ["bdil_conv_3x3", 1], ["avg_pool_3x3", 3]],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [["max_pool_3x3", 0], ["bconv_3x3", 1], ["avg_pool_3x3", 0], ["bconv_5x5", 2],
               ["bdil_conv_5x5", 1], ["skip_connect", 2], ["max_pool_3x3", 0], ["bconv_3x3", 4]],
    "reduce_concat": [2, 3, 4, 5],
}

TOOLS = ("search", "train", "convert", "summary", "plot")
# A real tiny search or training (and its resumption) ends well within this.
RUN_TIMEOUT = 900


# ------------------------------------------------------------------------------------------
# Subprocesses
# ------------------------------------------------------------------------------------------


def subprocess_env(repo_on_path: bool = True, single_thread: bool = True) -> dict[str, str]:
    """The environment of a tool or benchmark subprocess: quiet TensorFlow, no GPU, no display.

    `repo_on_path` puts the repository on PYTHONPATH; without it the script must find the
    repository by itself, as when a user runs it. `single_thread`: bit-exact comparisons
    (resume vs uninterrupted) need single-threaded kernels, since with 2+ intra-op threads
    some sums depend on scheduling and binary training amplifies the last-bit differences
    (see WORKSPACE.md); it also keeps parallel subprocesses from fighting over 2 cores.
    """
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["MPLBACKEND"] = "Agg"
    env["CUDA_VISIBLE_DEVICES"] = ""
    if single_thread:
        env["TF_NUM_INTRAOP_THREADS"] = "1"
        env["TF_NUM_INTEROP_THREADS"] = "1"
    if repo_on_path:
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    else:
        env.pop("PYTHONPATH", None)
    return env


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def output(self) -> str:
        return self.stderr + "\n" + self.stdout

    def __str__(self) -> str:
        return (f"exit {self.returncode} after {self.elapsed:.1f} s\n--- stderr (tail) ---\n"
                f"{self.stderr[-3000:]}\n--- stdout (tail) ---\n{self.stdout[-3000:]}")


def run_command(command: list[str], cwd: Path | str = REPO, env: dict[str, str] | None = None,
                timeout: float = 300) -> Result:
    """Runs `command` to its end (in `subprocess_env()` unless `env` is given)."""
    start = time.monotonic()
    proc = subprocess.run(command, cwd=cwd, env=subprocess_env() if env is None else env,
                          capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def run_tool(tool: str, args: list[str], env: dict[str, str] | None = None,
             timeout: float = 300) -> Result:
    """Runs ``tools/<tool>.py ARGS`` from the repository, as a user does."""
    return run_command([sys.executable, f"tools/{tool}.py", *args], env=env, timeout=timeout)


# Runs a tool's console entry inside `tfds.testing.mock_data`: the real tool code path, with
# tensorflow-datasets serving random examples of the real dataset's features.
_MOCK_LAUNCHER = """
import sys
import tensorflow_datasets as tfds
from ubnas_tf.cli import {tool} as tool
sys.argv = ["tools/{tool}.py", *sys.argv[1:]]
with tfds.testing.mock_data(num_examples={num_examples}):
    tool.run()
"""


def mock_data_command(tool: str, num_examples: int) -> list[str]:
    """``python -c ...`` that runs `tool` (search, train, convert, ...) with the arguments
    appended to it, on `tfds.testing.mock_data(num_examples=...)`."""
    return [sys.executable, "-c", _MOCK_LAUNCHER.format(tool=tool, num_examples=num_examples)]


def read_json(path: Path) -> dict | None:
    """The JSON file at `path`, or None while it is missing or half-written."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def assert_ok(res: Result, what: str) -> None:
    assert res.returncode == 0, f"{what} failed:\n{res.stdout[-5000:]}"


class Proc:
    """A tool run in the background, output to a log file (no pipe to fill up). `prelude`:
    Python code run in the tool's process before the tool (e.g. a writer that fails)."""

    def __init__(self, tool: str, args: list[str], log: Path, prelude: str | None = None):
        self.log = log
        self._fh = open(log, "ab")  # closed in wait() / kill_when()
        self.start = time.monotonic()
        self.returncode: int | None = None
        command = [sys.executable, f"tools/{tool}.py", *args]
        if prelude:
            command = [sys.executable, "-c", f"{prelude}\nimport sys\n"
                       f"sys.argv[0] = 'tools/{tool}.py'\nfrom ubnas_tf.cli.{tool} import run\n"
                       "run()\n", *args]
        self.proc = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=self._fh,
                                     stderr=subprocess.STDOUT)

    def wait(self, timeout: float = RUN_TIMEOUT) -> Result:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = -9
        self._fh.close()
        text = self.log.read_text(errors="replace")
        return Result(rc, text, "", time.monotonic() - self.start)

    def kill_when(self, state_path: Path, ready, what: str, timeout: float = RUN_TIMEOUT,
                  sig: signal.Signals = signal.SIGKILL) -> dict:
        """Sends `sig` to the run as soon as its state.json satisfies `ready`, waits for it to
        end (its exit status in `returncode`); returns the state it left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                res = self.wait()
                pytest.fail(f"the run ended (exit {res.returncode}) before it could be killed "
                            f"{what}; make it longer.\n{res.stdout[-3000:]}")
            state = read_json(state_path)
            if state is not None and ready(state):
                os.kill(self.proc.pid, sig)
                try:
                    self.returncode = self.proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.returncode = self.proc.wait()
                self._fh.close()
                with open(self.log, "a") as fh:
                    fh.write(f"\n=== {sig.name} ===\n")
                return read_json(state_path)
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        pytest.fail(f"state.json never showed {what} within {timeout} s")


def assert_plain_file_modes(run: Path) -> None:
    """Everything in the run directory `run` (JSON, plots, TF checkpoints, TensorBoard events,
    .keras models) is readable by others as a plain file would be: 0666 less the umask, not
    the 0600 of a temporary file."""
    umask = os.umask(0)
    os.umask(umask)
    files = [Path(d) / f for d, _, names in os.walk(run) for f in names]
    kinds = {f.suffix for f in files}
    assert {".json", ".png", ".index", ".txt"} <= kinds, kinds
    wrong = {str(f.relative_to(run)): oct(f.stat().st_mode & 0o777) for f in files
             if f.stat().st_mode & 0o777 != 0o666 & ~umask}
    assert not wrong, f"expected {oct(0o666 & ~umask)}: {wrong}"


def check_start_up_noise(command: list[str], tmp_path: Path) -> None:
    """`command` (a tool's path, or a console script) with --help prints none of TensorFlow's
    start-up noise, in a user's environment."""
    env = subprocess_env(repo_on_path=False)  # the installed package, as a user runs it
    del env["TF_CPP_MIN_LOG_LEVEL"]  # as a user's shell has it
    if command[0].startswith("ubnas-"):  # a console script, run from elsewhere
        args, cwd = [str(Path(sys.executable).parent / command[0]), "--help"], tmp_path
    else:
        args, cwd = [sys.executable, *command, "--help"], REPO
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1) and "--output" in proc.stdout + proc.stderr, proc.stderr[-2000:]
    for noise in ("Unable to register", "cuda_", "TensorRT", "cpu_feature_guard"):
        assert noise not in proc.stderr + proc.stdout, noise


# ------------------------------------------------------------------------------------------
# Quick tool runs: bad inputs and --help, run together by conftest's `cli` fixture
# ------------------------------------------------------------------------------------------

# A failing tool must stop before heavy work. Alone it takes ~5-10 s, nearly all of it the
# interpreter's start-up and the TensorFlow import; so a module's quick runs share one start-up
# (`ForkedRuns`) and run this many at a time.
PARALLEL = 3
# A quick run that takes longer than this is killed (and its test fails).
QUICK_TIMEOUT = 300

# `ForkedRuns`' runner (argv: the jobs' JSON file, how many at a time, the timeout of one):
# imports TensorFlow and the package once, then forks one process per job, which runs the
# job's script as __main__ with its own argv, stdout and stderr, as `python SCRIPT ARGS` does
# from the runner's directory (sys.path[0] is the script's directory; a tool's flags are its
# own: its module is imported in its process only). Each job's exit status and time go to
# its status file.
_FORKING_RUNNER = r"""
import json, os, runpy, sys, time, traceback

import ubnas_tf  # noqa: F401  (TensorFlow and the package: the start-up all the runs share)

jobs, parallel, timeout = json.load(open(sys.argv[1])), int(sys.argv[2]), float(sys.argv[3])


def child(job):
    code = 1
    try:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.argv = [job["script"], *job["args"]]
        sys.path[0] = os.path.dirname(os.path.abspath(job["script"]))
        try:
            runpy.run_path(job["script"], run_name="__main__")
            code = 0
        except SystemExit as stop:  # as the interpreter treats it
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def finish(pid, returncode):
    job, start = running.pop(pid)
    with open(job["status"], "w") as f:
        json.dump({"returncode": returncode, "elapsed": time.monotonic() - start}, f)


running, pending = {}, list(jobs)
while pending or running:
    while pending and len(running) < parallel:
        job = pending.pop(0)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(job)
        running[pid] = (job, time.monotonic())
    pid, status = os.waitpid(-1, os.WNOHANG)
    if pid:
        finish(pid, os.waitstatus_to_exitcode(status))
        continue
    for pid, (job, start) in list(running.items()):
        if time.monotonic() - start > timeout:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            with open(job["stderr"], "a") as f:
                f.write(f"\nkilled after {timeout:.0f} s\n")
            finish(pid, -9)
    time.sleep(0.02)
"""


class ForkedRuns:
    """Command lines ``python SCRIPT ARGS`` (`commands`: key -> (SCRIPT, ARGS)), each run in a
    process of its own from `cwd` in `env` (default `subprocess_env()`), `parallel` at a time.
    The processes are forked by one runner once it has imported TensorFlow and the package,
    the start-up they would each repeat (~5 s). Their outputs and statuses go to `base`/KEY/;
    `result(key)` waits for all of them."""

    def __init__(self, base: Path, commands: dict[str, tuple[str, list[str]]],
                 cwd: Path | str = REPO, env: dict[str, str] | None = None,
                 parallel: int = PARALLEL):
        self.base = base
        jobs = []
        for key, (script, args) in commands.items():
            (base / key).mkdir(parents=True, exist_ok=True)
            jobs.append({"script": str(script), "args": list(args), **self._files(key)})
        (base / "jobs.json").write_text(json.dumps(jobs))
        self._log = open(base / "runner.log", "wb")  # closed in _wait()
        self.proc = None if not jobs else subprocess.Popen(
            [sys.executable, "-c", _FORKING_RUNNER, str(base / "jobs.json"), str(parallel),
             str(QUICK_TIMEOUT)], cwd=cwd, env=subprocess_env() if env is None else env,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.deadline = time.monotonic() + 120 + QUICK_TIMEOUT * len(jobs) / parallel

    def _files(self, key: str) -> dict[str, str]:
        return {name: str(self.base / key / name) for name in ("stdout", "stderr", "status")}

    def _wait(self) -> None:
        if self.proc is None:
            self._log.close()
        elif self.proc.returncode is None:
            try:
                self.proc.wait(max(self.deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self._log.close()

    def result(self, key: str) -> Result:
        self._wait()
        files = self._files(key)
        status = read_json(Path(files["status"]))
        if status is None:
            log = (self.base / "runner.log").read_text(errors="replace")
            raise AssertionError(f"{key}: no result (runner exit "
                                 f"{self.proc and self.proc.returncode}):\n{log[-5000:]}")
        return Result(status["returncode"], Path(files["stdout"]).read_text(errors="replace"),
                      Path(files["stderr"]).read_text(errors="replace"), status["elapsed"])

    def close(self) -> None:
        self._wait()


@dataclass(frozen=True)
class ToolRun:
    """One command line of a tool that a test inspects the result of; a test takes it as a
    parameter, and conftest's `cli` fixture runs it. `args` may use the placeholders of
    `_paths`."""

    id: str
    tool: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Bad(ToolRun):
    """One bad command line. `args`/`patterns` may use the placeholders of `_paths`;
    in patterns they stand for the escaped path. `data`: gets past the dataset check (needs
    Fashion-MNIST). `setup`: a run-directory preset written into {out} first (see `_setup`).
    `absent`: paths that must not exist afterwards (no heavy work was started). `status`:
    the exit status, where not the one `check_bad_input` expects of every search and train
    refusal."""

    patterns: tuple[str, ...]
    data: bool = False
    setup: str | None = None
    absent: tuple[str, ...] = ("{out}/checkpoints",)
    not_patterns: tuple[str, ...] = ()
    status: int | None = None


def _search(*args: str) -> tuple[str, ...]:
    return ("--output_dir={out}", *args)


def _train(*args: str, genotype: str | None = "{genotype}") -> tuple[str, ...]:
    base = ["--output_dir={out}", "--max_examples=200", "--validation_examples=40",
            "--batch_size=16", "--layers=3"]
    if genotype:
        base.append(f"--genotype={genotype}")
    return (*base, *args)


SEARCH_ERR = r"search\.py: error: "
TRAIN_ERR = r"train\.py: error: "

# Every tool's bad command lines; each tool's tests take its own (`bad_inputs(tool)`).
BAD_INPUTS = [
    # -- search.py: common and data flags (fail before the dataset is looked at) -----------
    Bad("search-dataset-unknown", "search", _search("--dataset=mnist"),
        (SEARCH_ERR + r"--dataset='mnist' is unknown",
         r"use one of \['fashion_mnist', 'cifar10', 'cifar100', 'imagenet2012'\]")),
    Bad("search-batch-size-zero", "search", _search("--batch_size=0"),
        (SEARCH_ERR + r"--batch_size=0 is invalid", r"integer >= 1")),
    Bad("search-epochs-zero", "search", _search("--epochs=0"),
        (SEARCH_ERR + r"--epochs=0 is invalid", r"integer >= 1")),
    Bad("search-max-examples-zero", "search", _search("--max_examples=0"),
        (SEARCH_ERR + r"--max_examples=0 is invalid", r"integer >= 1")),
    Bad("search-verbose", "search", _search("--verbose=7"),
        (SEARCH_ERR + r"--verbose=7 is invalid", r"use 0, 1 or 2")),
    Bad("search-data-dir-missing", "search", _search("--data_dir={missing}"),
        (SEARCH_ERR + r"--data_dir='{missing}' is not a directory",)),
    Bad("search-output-dir-is-file", "search", ("--output_dir={file}",),
        (SEARCH_ERR + r"--output_dir='{file}' exists and is not a directory",),
        absent=()),
    Bad("search-output-dir-under-a-file", "search", ("--output_dir={file}/run",),
        (SEARCH_ERR + r"--output_dir='{file}/run' cannot be created: '{file}' is a file, not "
         r"a directory\. Choose a path under a directory\.",), absent=()),
    Bad("search-fashion-mnist-absent", "search", _search("--data_dir={empty}"),
        (SEARCH_ERR + r"--dataset=fashion_mnist: fashion_mnist: no IDX files",
         r"train-images-idx3-ubyte", r"in {empty}",
         r"apt-get install -y dataset-fashion-mnist", r"--data_dir=DIR")),
    Bad("search-cifar10-unprepared", "search", _search("--dataset=cifar10", "--data_dir={empty}"),
        (SEARCH_ERR + r"--dataset=cifar10: cifar10: no prepared tensorflow-datasets copy "
         r"found in {empty}", r"cannot download", r"download_and_prepare\(\)",
         r"--data_dir=")),
    Bad("search-seed-negative", "search", _search("--seed=-5"),
        (SEARCH_ERR + r"--seed=-5 is invalid; it must be an integer in \[0, 4294967295\]",)),
    Bad("search-batch-size-not-a-number", "search", _search("--batch_size=many"),
        (SEARCH_ERR + r"--batch_size=many is invalid; it must be an integer >= 1\.",)),
    Bad("search-distribute-tpu", "search", _search("--distribute=tpu"),
        (SEARCH_ERR + r"--distribute='tpu' is unknown; use one of \['none', 'mirrored', "
         r"'multi_worker'\]",)),
    Bad("search-unexpected-argument", "search", _search("stray_positional"),
        (r"Unexpected arguments: \['stray_positional'\]",)),
    # -- search.py: search flags (after the dataset check) ----------------------------------
    Bad("search-batch-size-over-half", "search", _search("--max_examples=100", "--batch_size=64"),
        (SEARCH_ERR + r"--batch_size=64 is larger than the search's training half "
         r"\(50 examples of 100\)", r"lower it or raise --max_examples"), data=True),
    Bad("search-k-normal", "search", _search("--init_channels=16", "--k_normal=3"),
        (SEARCH_ERR + r"--k_normal=3 does not divide --init_channels=16",
         r"width divisible by K"), data=True),
    Bad("search-k-reduce", "search", _search("--init_channels=12", "--k_normal=4", "--k_reduce=16"),
        (SEARCH_ERR + r"--k_reduce=16 does not divide",
         r"2 x --init_channels = 24"), data=True),
    Bad("search-primitive-unknown", "search", _search("--primitives=bconv_3x3,bconv_7x7"),
        (SEARCH_ERR + r"--primitives: Unknown primitive\(s\) \['bconv_7x7'\]",
         r"known primitives: .*'bconv_3x3'.*'bdil_conv_5x5'"), data=True),
    Bad("search-primitives-none-only", "search", _search("--primitives=none"),
        (SEARCH_ERR + r"--primitives: .*\['none'\]", r"at least one op other than 'none'"),
        data=True),
    Bad("search-layers", "search", _search("--layers=2"),
        (SEARCH_ERR + r"--layers=2 is invalid", r"integer >= 3"), data=True),
    Bad("search-warmup-not-below-epochs", "search", _search("--epochs=5", "--arch_warmup_epochs=5"),
        (SEARCH_ERR + r"--arch_warmup_epochs=5 must be smaller than --epochs=5",), data=True),
    Bad("search-module-config", "search", _search("--module_config=bogus"),
        (SEARCH_ERR + r"--module_config='bogus' is unknown", r"use one of \[.*'universal'"),
        data=True),
    Bad("search-patience-negative", "search", _search("--patience=-1"),
        (SEARCH_ERR + r"--patience=-1 is invalid", r"integer >= 0"), data=True),
    Bad("search-weight-lr-negative", "search", _search("--weight_lr=-1"),
        (SEARCH_ERR + r"--weight_lr=-1\.0 must be > 0\.", ), data=True),
    Bad("search-budget-without-network", "search", _search("--target_mops=1.5"),
        (SEARCH_ERR + r"--target_mops needs --target_train_flagfile",
         r"flags/fashion_mnist_train\.flags"), data=True),
    Bad("search-budget-network-missing", "search",
        _search("--target_mops=1.5", "--target_train_flagfile={out}/none.flags"),
        (SEARCH_ERR + r"--target_train_flagfile=.*none\.flags' is not a file",), data=True),
    Bad("search-budget-out-of-range", "search",
        _search("--target_mops=0.01", "--target_train_flagfile=flags/fashion_mnist_train.flags"),
        (SEARCH_ERR + r"--target_mops=0\.01 is outside what the network of .* can cost",
         r"\d+\.\d{3} to \d+\.\d{3} MOPs"), data=True),
    Bad("search-network-without-budget", "search",
        _search("--target_train_flagfile=flags/fashion_mnist_train.flags"),
        (SEARCH_ERR + r"--target_train_flagfile is only used with --target_mops",), data=True),
    # -- search.py: the run directory -------------------------------------------------------
    Bad("search-dir-of-other-tool", "search", _search(),
        (SEARCH_ERR + r"--output_dir=.* holds a 'train' run, not a 'search' run",
         r"choose another directory or --overwrite"), data=True, setup="train_run"),
    Bad("search-dir-different-flags", "search", _search("--epochs=40", "--seed=3", "--verbose=2"),
        (SEARCH_ERR + r"--output_dir=.* holds a run made with different flags",
         r"--epochs: run directory has 99, now 40",
         r"Re-run with the same flags to resume it.*--overwrite"),
        data=True, setup="search_run_epochs99",
        # Equal flags are not listed, nor flags that may change on resumption (--verbose).
        not_patterns=(r"--seed:", r"--verbose:")),
    Bad("search-dir-unreadable-flags", "search", _search(),
        (SEARCH_ERR + r"{out}/flags\.json is unreadable", r"use --overwrite"),
        data=True, setup="garbage_flags"),
    # -- train.py ---------------------------------------------------------------------------
    Bad("train-genotype-missing", "train", _train(genotype=None),
        (TRAIN_ERR + r"--genotype is required", r"genotype\.json of a search run"), data=True),
    Bad("train-genotype-nonexistent", "train", _train(genotype="{missing}"),
        (TRAIN_ERR + r"--genotype: Genotype file '{missing}' does not exist",), data=True),
    Bad("train-genotype-malformed-json", "train", _train(genotype="{bad_json}"),
        (TRAIN_ERR + r"--genotype: {bad_json}: not valid JSON",), data=True),
    Bad("train-genotype-unknown-op", "train", _train(genotype="{unknown_op}"),
        (TRAIN_ERR + r"--genotype: {unknown_op}: 'normal' edge 0 uses unknown op 'bconv_9x9'",
         r"expected one of \[.*'bconv_3x3'.*\]"), data=True),
    Bad("train-init-channels-unaligned", "train", _train("--init_channels=24"),
        (TRAIN_ERR + r"--init_channels=24 is not a multiple of 32",
         r"Use 32, 64, \.\.\. or pass --allow_unaligned_widths"), data=True),
    Bad("train-stem-strides", "train", _train("--stem_strides=3"),
        (TRAIN_ERR + r"--stem_strides=3 is invalid", r"use 1, 2, 4 or 8"), data=True),
    Bad("train-label-smoothing", "train", _train("--label_smoothing=1.5"),
        (TRAIN_ERR + r"--label_smoothing=1\.5 must be in \[0, 1\)",), data=True),
    Bad("train-cutout-negative", "train", _train("--cutout=-1"),
        (TRAIN_ERR + r"--cutout=-1 is invalid", r"integer >= 0"), data=True),
    Bad("train-learning-rate-zero", "train", _train("--learning_rate=0"),
        (TRAIN_ERR + r"--learning_rate=0\.0 must be > 0",), data=True),
    Bad("train-batch-size-over-train-set", "train", _train("--max_examples=100", "--batch_size=128"),
        (TRAIN_ERR + r"--batch_size=128 is larger than the 90 training examples",
         r"lower it or raise --max_examples"), data=True),
    Bad("train-output-dir-under-a-file", "train", ("--output_dir={file}/run", "--genotype={genotype}"),
        (TRAIN_ERR + r"--output_dir='{file}/run' cannot be created: '{file}' is a file, not "
         r"a directory\. Choose a path under a directory\.",), absent=()),
    Bad("train-dir-different-flags", "train", _train(),
        (TRAIN_ERR + r"--output_dir={out} holds a run made with different flags",
         r"--layers: run directory has 8, now 3", r"--overwrite"),
        data=True, setup="train_run"),
    # -- convert.py, summary.py, plot.py ----------------------------------------------------
    Bad("convert-model-missing", "convert",
        ("--model={missing}.keras", "--output={out}/model.tflite"),
        (r"Error: --model={missing}\.keras: no such file or directory",
         r"give a \.keras/\.h5 file or a SavedModel directory"),
        absent=("{out}/model.tflite",)),
    Bad("convert-model-not-a-model", "convert", ("--model={bad_json}", "--output={out}/model.tflite"),
        (r"Error: --model={bad_json} could not be loaded as a Keras model",),
        absent=("{out}/model.tflite",)),
    Bad("convert-float-model", "convert", ("--model={float_model}", "--output={out}/model.tflite"),
        (r"Error: --model={float_model} has no binary conv", r"LCE has nothing to binarise",
         r"pass --allow_float"),
        absent=("{out}/model.tflite",)),
    Bad("convert-output-missing", "convert", ("--model={missing}.keras",),
        (r"convert\.py: error: --output is required: Path of the \.tflite",)),
    # A bad --output is refused before the model is even loaded (here it does not exist).
    Bad("convert-output-under-a-file", "convert", ("--model={missing}.keras",
                                                   "--output={file}/model.tflite"),
        (r"(?m)^convert\.py: error: --output's directory='{file}' exists and is not a "
         r"directory\.$",), not_patterns=(r"--model",), status=2),
    Bad("convert-output-a-directory", "convert", ("--model={missing}.keras", "--output={empty}"),
        (r"(?m)^convert\.py: error: --output='{empty}' is a directory; give the path of a "
         r"file\.$",), status=2),
    Bad("summary-model-missing", "summary", ("--model={missing}.keras",),
        (r"Error: --model={missing}\.keras: no such file or directory",)),
    Bad("summary-output-under-a-file", "summary", ("--model={missing}.keras",
                                                   "--output={file}/sub/cost.json"),
        (r"(?m)^summary\.py: error: --output's directory='{file}/sub' cannot be created: '{file}' "
         r"is a file, not a directory\. Choose a path under a directory\.$",),
        not_patterns=(r"--model",), status=2),
    Bad("plot-run-dir-missing", "plot", ("{missing}",),
        (r"plot\.py: error: Run directory '{missing}' does not exist",
         r"looked for genotype\.json, arch_history\.json, history\.json")),
    Bad("plot-run-dir-empty", "plot", ("{empty}",),
        (r"plot\.py: error: .*{empty}", r"history\.json")),
]

HELP = {tool: ToolRun(f"help-{tool}", tool, ("--help",)) for tool in TOOLS}


def tool_run_params(runs: list[ToolRun]) -> list:
    """`runs` as pytest parameters: named by their id, skipped without Fashion-MNIST if they
    need it."""
    return [pytest.param(run, id=run.id, marks=[needs_fashion] if getattr(run, "data", False)
                         else []) for run in runs]


def bad_inputs(tool: str) -> list:
    """The parameters of `tool`'s bad command lines in `BAD_INPUTS`."""
    return tool_run_params([case for case in BAD_INPUTS if case.tool == tool])


def _paths(base: Path, case_id: str) -> dict[str, str]:
    shared = base / "shared"
    return {
        "out": str(base / case_id / "run"),
        "empty": str(shared / "empty"),
        "file": str(shared / "a_file.txt"),
        "missing": str(shared / "does_not_exist"),
        "genotype": str(shared / "genotype.json"),
        "bad_json": str(shared / "bad.json"),
        "unknown_op": str(shared / "unknown_op.json"),
        "float_model": str(shared / "float.keras"),
    }


def _write_shared(base: Path, float_model: bool) -> None:
    shared = base / "shared"
    (shared / "empty").mkdir(parents=True)
    (shared / "a_file.txt").write_text("not a directory\n")
    (shared / "genotype.json").write_text(json.dumps(GENOTYPE))
    (shared / "bad.json").write_text('{"normal": [["bconv_3x3", 0],\n')
    unknown = json.loads(json.dumps(GENOTYPE))
    unknown["normal"][0][0] = "bconv_9x9"
    (shared / "unknown_op.json").write_text(json.dumps(unknown))
    if not float_model:  # only convert.py's runs need it (and TensorFlow here to write it)
        return
    tf = tensorflow()
    inputs = tf.keras.Input((8, 8, 1))
    outputs = tf.keras.layers.Dense(10)(tf.keras.layers.Flatten()(
        tf.keras.layers.Conv2D(4, 3)(inputs)))
    tf.keras.Model(inputs, outputs).save(shared / "float.keras")


def _setup(kind: str, out: Path) -> None:
    out.mkdir(parents=True)
    if kind == "train_run":
        record = {"tool": "train", "flags": {"layers": 8, "seed": 0}, "argv": []}
    elif kind == "search_run_epochs99":
        record = {"tool": "search", "flags": {"epochs": 99, "seed": 3, "verbose": 0}, "argv": []}
    elif kind == "garbage_flags":
        (out / "flags.json").write_text("{not json")
        return
    else:
        raise ValueError(kind)
    (out / "flags.json").write_text(json.dumps(record))


def _fill(text: str, paths: dict[str, str], escape: bool) -> str:
    for key, value in paths.items():
        text = text.replace("{" + key + "}", re.escape(value) if escape else value)
    return text


class ToolRuns:
    """Starts `runs` (the `ToolRun`s of a test module) in `base`, each in a process of its
    own (`ForkedRuns`, PARALLEL at a time); each test then takes its own `result`. A `Bad` run
    that needs Fashion-MNIST is left out without it (its test is skipped)."""

    def __init__(self, base: Path, runs: list[ToolRun]):
        self.base = base
        self.setup_files: dict[str, bytes] = {}
        runs = [run for run in runs if not (getattr(run, "data", False) and not HAVE_FASHION)]
        _write_shared(base, float_model=any("{float_model}" in a for run in runs for a in run.args))
        commands = {}
        for run in runs:
            paths = _paths(base, run.id)
            (base / run.id).mkdir()
            if getattr(run, "setup", None):
                _setup(run.setup, Path(paths["out"]))
                self.setup_files[run.id] = (Path(paths["out"]) / "flags.json").read_bytes()
            commands[run.id] = (f"tools/{run.tool}.py",
                                [_fill(a, paths, escape=False) for a in run.args])
            if run == HELP[run.tool]:  # and the flags its --help must list (`defined_flags`)
                list_flags = base / "list_flags.py"
                list_flags.write_text(_LIST_FLAGS)
                commands[f"flags-{run.tool}"] = (str(list_flags), [run.tool])
        self.runs = ForkedRuns(base / "results", commands)

    def result(self, key: str) -> Result:
        return self.runs.result(key)

    def close(self) -> None:
        self.runs.close()


def check_bad_input(cli: ToolRuns, case: Bad) -> None:
    """`case` failed fast (before any data or model) and said why."""
    res = cli.result(case.id)
    paths = _paths(cli.base, case.id)
    assert res.returncode != 0, f"{case.id} was accepted:\n{res}"
    if case.tool in ("search", "train"):
        # Rejected flags print "<tool>.py: error: ..." and exit 2 (absl's errors are
        # explained by ubnas_tf.flags.parse_command_line); a stray argument is a usage error (1).
        expected = 1 if case.id.endswith("unexpected-argument") else 2
        assert res.returncode == expected, str(res)
    if case.status is not None:
        assert res.returncode == case.status, str(res)
    for pattern in case.patterns:
        regex = _fill(pattern, paths, escape=True)
        assert re.search(regex, res.output, re.S), f"missing /{regex}/ in:\n{res}"
    for pattern in case.not_patterns:
        assert not re.search(pattern, res.output), f"unexpected /{pattern}/ in:\n{res}"
    assert "Traceback" not in res.output, str(res)
    for path in case.absent:
        assert not os.path.exists(_fill(path, paths, escape=False)), (
            f"{path} was created: heavy work started before the input was rejected")
    if case.tool in ("search", "train") and case.id not in cli.setup_files:
        # Rejected before the run directory is even recorded, so before any data or model
        # (a structural check: wall-clock limits are flaky on a loaded 2-core machine).
        assert not os.path.exists(Path(paths["out"]) / "flags.json"), (
            f"{case.id}: the run directory was prepared before the input was rejected")
    if case.id in cli.setup_files:  # a refused run directory is left as it was
        flags_json = Path(paths["out"]) / "flags.json"
        assert flags_json.read_bytes() == cli.setup_files[case.id]
        assert sorted(os.listdir(paths["out"])) == ["flags.json"]


_FLAG_LINE = re.compile(r"^  (?:-\S+,)?--(?:\[no\])?(\w+):(.*)$")
_TYPE_LINE = re.compile(r"^\((default: |an? |a comma|repeat this)")


def _help_entries(text: str) -> dict[str, str]:
    """flag name -> help text, from absl's --help/--helpfull output."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = _FLAG_LINE.match(line)
        if m:
            current = m[1]
            entries[current] = re.sub(r"^\s*<[^>]*>:", "", m[2]).strip()
        elif current and line.startswith("    "):
            stripped = line.strip()
            if not _TYPE_LINE.match(stripped):
                entries[current] = (entries[current] + " " + stripped).strip()
        else:
            current = None
    return entries


_LIST_FLAGS = r"""
import importlib, sys
from absl import flags
import ubnas_commands
importlib.import_module(ubnas_commands.COMMANDS[sys.argv[1]])  # defines the tool's flags
by_module = flags.FLAGS.flags_by_module_dict()
ours = [m for m in by_module if m in (ubnas_commands.COMMANDS[sys.argv[1]], "ubnas_tf.flags")
        or m.startswith("ubnas_tf.cli.")]
names = {f.name for m in ours for f in by_module[m]}
print("FLAGS " + " ".join(sorted(names)))
"""


def defined_flags(tool: str, res: Result | None = None) -> set[str]:
    """Flags defined by the tool's own module and by the ubnas_tf.flags functions it calls
    (the tool's module is loaded in a process of its own: absl flags are process-global).
    `res`: the output of `_LIST_FLAGS` for `tool` if it has run (`ToolRuns` runs it beside
    each --help), else it is run here."""
    if res is None:
        res = run_command([sys.executable, "-c", _LIST_FLAGS, tool], timeout=120)
    lines = [line for line in res.stdout.splitlines() if line.startswith("FLAGS ")]
    assert res.returncode == 0 and lines, res.stdout[-2000:] + res.stderr[-3000:]
    return set(lines[-1].split()[1:])


def check_help(res: Result, tool: str, expected: set[str]) -> None:
    """`res`, the tool's --help, lists each flag of `expected` with a help sentence."""
    assert len(expected) >= 2
    assert res.returncode in (0, 1), str(res)
    entries = _help_entries(res.stdout + "\n" + res.stderr)
    # --help lists the tool's key flags: all of its own, also those defined in ubnas_tf.flags
    # (not only under --helpfull).
    missing = sorted(expected - set(entries))
    assert not missing, f"{tool}.py --help does not list {missing}:\n{res}"
    for name in expected:
        text = entries[name]
        assert re.search(r"[A-Za-z]{3,}.*[A-Za-z]", text) and "no help available" not in text, (
            f"--{name} of {tool}.py has no help sentence: {text!r}")


class ToolTests:
    """The tests every tool gets: a tool's test module subclasses this as ``Test<Tool>`` with
    its `tool`. Each of the tool's bad command lines in `BAD_INPUTS` fails fast and says why,
    and --help lists every flag the tool defines (`key_flags` among them) with a help
    sentence. conftest's `cli` fixture runs these command lines, together."""

    tool: str
    key_flags: frozenset[str] = frozenset()

    def pytest_generate_tests(self, metafunc):
        if "case" in metafunc.fixturenames:
            metafunc.parametrize("case", bad_inputs(self.tool))
        if "run" in metafunc.fixturenames:
            metafunc.parametrize("run", tool_run_params([HELP[self.tool]]))

    def test_bad_input_fails_fast_and_says_why(self, cli, case: Bad):
        check_bad_input(cli, case)

    def test_help_documents_every_flag(self, cli, run: ToolRun):
        expected = defined_flags(self.tool, cli.result(f"flags-{self.tool}"))
        assert self.key_flags <= expected
        check_help(cli.result(run.id), self.tool, expected)
