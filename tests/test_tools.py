"""The command-line tools as a user meets them (`tools/*.py` run as subprocesses).

* Bad inputs fail fast (before any data is read or model built) with a message that names the
  flag or file at fault and, where the code knows it, what is accepted.
* Every flag has a help sentence, and `--help` lists each tool's own flags.
* Run directories: refused with different flags, `--overwrite` starts afresh, a run killed
  with SIGKILL resumes to exactly the result of an uninterrupted one, a damaged newest
  checkpoint falls back to the previous one, a NaN stops the run naming where it appeared.
* Shared clusters: SIGTERM saves the step under way and exits 75, the re-run continues
  mid-epoch to exactly the uninterrupted result, a full disk is one line (exit 74) that keeps
  the last good state, and every file a run writes has the mode of a plain file.

Importing TensorFlow dominates a failing tool's run time (about 5-10 s), so the bad-input
and help subprocesses are started together by a module fixture, a few at a time, and each test
only inspects its result. The resume tests (`slow`) run real tiny searches/trainings on
Fashion-MNIST, two processes at a time where they are independent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tool_runs import Result, subprocess_env

REPO = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
HAVE_FASHION = all((FASHION_DIR / f"{b}.gz").is_file() or (FASHION_DIR / b).is_file()
                   for b in FASHION_FILES)
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION,
    reason=f"Fashion-MNIST IDX files not in {FASHION_DIR} "
    "(apt-get install dataset-fashion-mnist)")

# A failing tool must stop before heavy work. Alone it takes ~5-10 s (the TensorFlow import);
# the bound leaves room for the PARALLEL subprocesses sharing 2 loaded cores.
PARALLEL = 3
TOOLS = ("search", "train", "convert", "summary", "plot")

GENOTYPE = {
    "format": "ubnas-genotype/1",
    "normal": [["bconv_3x3", 0], ["skip_connect", 1], ["bconv_3x3", 0], ["max_pool_3x3", 1],
               ["bconv_5x5", 2], ["skip_connect", 0], ["bdil_conv_3x3", 1], ["avg_pool_3x3", 3]],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [["max_pool_3x3", 0], ["bconv_3x3", 1], ["avg_pool_3x3", 0], ["bconv_5x5", 2],
               ["bdil_conv_5x5", 1], ["skip_connect", 2], ["max_pool_3x3", 0], ["bconv_3x3", 4]],
    "reduce_concat": [2, 3, 4, 5],
}


def _run_tool(tool: str, args: list[str], timeout: float = 300) -> Result:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, f"tools/{tool}.py", *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


# ------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One bad command line. `args`/`patterns` may use the placeholders of `_paths`;
    in patterns they stand for the escaped path. `data`: gets past the dataset check (needs
    Fashion-MNIST). `setup`: a run-directory preset written into {out} first (see `_setup`).
    `absent`: paths that must not exist afterwards (no heavy work was started)."""

    id: str
    tool: str
    args: tuple[str, ...]
    patterns: tuple[str, ...]
    data: bool = False
    setup: str | None = None
    absent: tuple[str, ...] = ("{out}/checkpoints",)
    not_patterns: tuple[str, ...] = ()


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
    Bad("summary-model-missing", "summary", ("--model={missing}.keras",),
        (r"Error: --model={missing}\.keras: no such file or directory",)),
    Bad("plot-run-dir-missing", "plot", ("{missing}",),
        (r"plot\.py: error: Run directory '{missing}' does not exist",
         r"looked for genotype\.json, arch_history\.json, history\.json")),
    Bad("plot-run-dir-empty", "plot", ("{empty}",),
        (r"plot\.py: error: .*{empty}", r"history\.json")),
]


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


def _write_shared(base: Path) -> None:
    shared = base / "shared"
    (shared / "empty").mkdir(parents=True)
    (shared / "a_file.txt").write_text("not a directory\n")
    (shared / "genotype.json").write_text(json.dumps(GENOTYPE))
    (shared / "bad.json").write_text('{"normal": [["bconv_3x3", 0],\n')
    unknown = json.loads(json.dumps(GENOTYPE))
    unknown["normal"][0][0] = "bconv_9x9"
    (shared / "unknown_op.json").write_text(json.dumps(unknown))
    import tensorflow as tf

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


def _help_commands() -> dict[str, tuple[str, list[str]]]:
    return {f"help:{tool}": (tool, ["--help"]) for tool in TOOLS}


class _Cli:
    """Starts the subprocesses of this module's fast tests, PARALLEL at a time."""

    def __init__(self, base: Path):
        self.base = base
        self.pool = ThreadPoolExecutor(PARALLEL)
        self.futures: dict[str, Future] = {}
        self.setup_files: dict[str, bytes] = {}
        _write_shared(base)
        for case in BAD_INPUTS:
            if case.data and not HAVE_FASHION:
                continue
            paths = _paths(base, case.id)
            (base / case.id).mkdir()
            if case.setup:
                _setup(case.setup, Path(paths["out"]))
                self.setup_files[case.id] = (Path(paths["out"]) / "flags.json").read_bytes()
            args = [_fill(a, paths, escape=False) for a in case.args]
            self.futures[case.id] = self.pool.submit(_run_tool, case.tool, args)
        for key, (tool, args) in _help_commands().items():
            self.futures[key] = self.pool.submit(_run_tool, tool, args)

    def result(self, key: str) -> Result:
        return self.futures[key].result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    runner = _Cli(tmp_path_factory.mktemp("tools_cli"))
    yield runner
    runner.close()


def test_bad_inputs_are_distinct():
    ids = [c.id for c in BAD_INPUTS]
    assert len(ids) == len(set(ids))
    assert len({(c.tool, c.args, c.setup) for c in BAD_INPUTS}) == len(BAD_INPUTS)
    assert len(BAD_INPUTS) >= 24
    assert {c.tool for c in BAD_INPUTS} == set(TOOLS)


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[needs_fashion] if c.data else []) for c in BAD_INPUTS])
def test_bad_input_fails_fast_and_says_why(cli, case: Bad):
    res = cli.result(case.id)
    paths = _paths(cli.base, case.id)
    assert res.returncode != 0, f"{case.id} was accepted:\n{res}"
    if case.tool in ("search", "train"):
        # Rejected flags print "<tool>.py: error: ..." and exit 2 (absl's errors are
        # explained by ubnas_tf.flags.parse_command_line); a stray argument is a usage error (1).
        expected = 1 if case.id.endswith("unexpected-argument") else 2
        assert res.returncode == expected, str(res)
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


# ------------------------------------------------------------------------------------------
# --help
# ------------------------------------------------------------------------------------------

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
import importlib.util, sys
from absl import flags
spec = importlib.util.spec_from_file_location("tool_under_test", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))  # defines the tool's flags
by_module = flags.FLAGS.flags_by_module_dict()
ours = [m for m in by_module if m in ("tool_under_test", "ubnas_tf.flags")
        or m.startswith("ubnas_tf.cli.")]
names = {f.name for m in ours for f in by_module[m]}
print("FLAGS " + " ".join(sorted(names)))
"""


def _defined_flags(tool: str) -> set[str]:
    """Flags defined by the tool's own module and by the ubnas_tf.flags functions it calls
    (the tool's module is loaded in a subprocess: absl flags are process-global)."""
    res = subprocess.run([sys.executable, "-c", _LIST_FLAGS, f"tools/{tool}.py"], cwd=REPO,
                         env=subprocess_env(), capture_output=True, text=True, timeout=120)
    lines = [line for line in res.stdout.splitlines() if line.startswith("FLAGS ")]
    assert res.returncode == 0 and lines, res.stdout[-2000:] + res.stderr[-3000:]
    return set(lines[-1].split()[1:])


@pytest.mark.parametrize("tool", TOOLS)
def test_help_documents_every_flag(cli, tool: str):
    expected = _defined_flags(tool)
    assert len(expected) >= 2
    if tool == "search":
        assert {"dataset", "k_normal", "primitives", "output_dir", "arch_warmup_epochs"} <= expected
    if tool == "train":
        assert {"genotype", "stage1_epochs", "cutout", "allow_unaligned_widths"} <= expected
    res = cli.result(f"help:{tool}")
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


# ------------------------------------------------------------------------------------------
# Run directories in-process: --overwrite
# ------------------------------------------------------------------------------------------


def test_rundir_overwrite_and_refusal(tmp_path):
    from ubnas_tf.flags import FlagError
    from ubnas_tf.rundir import RunDirectory

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


# ------------------------------------------------------------------------------------------
# Resume after SIGKILL, damaged checkpoints, NaN (real tiny runs)
# ------------------------------------------------------------------------------------------

# All 4 epochs, whatever the trajectory: --patience=10 keeps a stable genotype from stopping
# the search, and --max_parameter_free=8 (all 8 kept edges of a cell) turns the collapse guard
# off, which a 48-image search with an arch lr of 0.33 can otherwise trip by chance.
SEARCH_ARGS = ("--dataset=fashion_mnist", "--max_examples=96", "--batch_size=8", "--layers=3",
               "--init_channels=4", "--k_normal=2", "--k_reduce=2", "--epochs=4",
               "--arch_warmup_epochs=1", "--patience=10", "--max_parameter_free=8",
               "--verbose=0", "--seed=3")
# NaN on purpose: alpha/beta overflow to inf within two architecture steps (epoch 2, after
# epoch 1's checkpoint). Fewer examples and ops (quicker to trace): it comes at batch 2 anyway.
NAN_ARGS = ("--dataset=fashion_mnist", "--max_examples=32", "--batch_size=8", "--layers=3",
            "--init_channels=4", "--k_normal=2", "--k_reduce=2", "--epochs=2",
            "--arch_warmup_epochs=1", "--patience=10", "--verbose=0", "--seed=3",
            "--primitives=none,skip_connect,max_pool_3x3,bconv_3x3", "--arch_lr=1e38")
TRAIN_ARGS = ("--max_examples=200", "--validation_examples=40", "--layers=3",
              "--init_channels=32", "--stem_strides=2", "--stage1_epochs=2", "--epochs=2",
              "--batch_size=16", "--verbose=0", "--seed=1")
RUN_TIMEOUT = 900


class _Proc:
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
            state = _read_state(state_path)
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
                return _read_state(state_path)
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        pytest.fail(f"state.json never showed {what} within {timeout} s")


def _read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _assert_ok(res: Result, what: str) -> None:
    assert res.returncode == 0, f"{what} failed:\n{res.stdout[-5000:]}"


def _last_arch(run: Path) -> dict:
    return json.loads((run / "arch_history.json").read_text())["epochs"][-1]


ARCH_KEYS = ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce")


@pytest.fixture(scope="module")
def search_runs(tmp_path_factory):
    """A: uninterrupted. B: SIGKILLed after epoch >= 2, then resumed. C: a copy of finished A
    whose newest checkpoint is truncated and whose state says 4 epochs, not finished.
    N: a search that goes NaN. One process at a time."""
    if not HAVE_FASHION:
        pytest.skip(f"Fashion-MNIST IDX files not in {FASHION_DIR}")
    base = tmp_path_factory.mktemp("search_runs")
    a, b, c, n = (base / x for x in "ABCN")
    # One run at a time (see train_runs): exact comparisons need the CPU to themselves.
    res_a = _Proc("search", [f"--output_dir={a}", *SEARCH_ARGS], base / "A.log").wait()
    _assert_ok(res_a, "search A")
    run_b = _Proc("search", [f"--output_dir={b}", *SEARCH_ARGS], base / "B.log")
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

    res_b = _Proc("search", [f"--output_dir={b}", *SEARCH_ARGS], base / "B.log").wait()
    res_c = _Proc("search", [f"--output_dir={c}", *SEARCH_ARGS], base / "C.log").wait()
    res_n = _Proc("search", [f"--output_dir={n}", *NAN_ARGS], base / "N.log").wait()
    return {"dirs": {"A": a, "B": b, "C": c, "N": n}, "killed_state": killed,
            "A": res_a, "B": res_b, "C": res_c, "N": res_n}


@pytest.mark.slow
def test_search_reports_how_decided_it_is(search_runs):
    a = search_runs["dirs"]["A"]
    _assert_ok(search_runs["A"], "search A")
    summary = json.loads((a / "summary.json").read_text())
    history = json.loads((a / "arch_history.json").read_text())
    figures = ("op_max_kept", "op_max", "op_entropy", "edge_max", "edge_entropy", "edge_kept_mass")
    for name in figures:
        assert 0.0 <= summary["decisiveness"][name] <= 1.0
        assert summary["decisiveness"][f"normal/{name}"] >= 0.0
        assert name in summary["final_logs"]  # from train_step: progress bar and TensorBoard
        assert all(name in r["decisiveness"] for r in history["epochs"])
    assert summary["decisiveness"] == history["epochs"][-1]["decisiveness"]
    assert history["epochs"][0]["decisiveness"]["op_max"] == pytest.approx(1 / 8, abs=1e-3)  # warm-up
    assert summary["stop_reason"] in ("max_epochs", "genotype_stable", "collapse")
    assert summary["stop_rule"] and summary["decided_threshold"] == 0.6
    assert summary["arch_steps"] == 3 * 6 and summary["arch_lr"] == pytest.approx(6 / 18)


@pytest.mark.slow
def test_search_resumes_exactly_after_sigkill(search_runs):
    a, b = search_runs["dirs"]["A"], search_runs["dirs"]["B"]
    killed = search_runs["killed_state"]
    res_b = search_runs["B"]
    _assert_ok(res_b, "resumed search B")
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
    import tensorflow as tf

    path = json.loads((run_dir / "state.json").read_text())["checkpoint"]
    raw = tf.train.load_checkpoint(path).get_tensor("early_stopping/.ATTRIBUTES/py_state")
    return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))


@pytest.mark.slow
def test_search_damaged_checkpoint_falls_back(search_runs):
    a, c = search_runs["dirs"]["A"], search_runs["dirs"]["C"]
    res = search_runs["C"]
    _assert_ok(res, "search C (damaged newest checkpoint)")
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
    state = _read_state(n / "state.json")
    epoch = int(m[3])
    assert epoch == 2, "expected the NaN after epoch 1's checkpoint (the architecture step)"
    assert state is not None and state["completed_epochs"] == epoch - 1
    assert not state.get("finished")
    assert Path(state["checkpoint"] + ".index").exists()
    assert list(Path(n, "checkpoints").glob(Path(state["checkpoint"]).name + ".data-*"))
    assert not (n / "summary.json").exists()


@pytest.fixture(scope="module")
def train_runs(tmp_path_factory):
    """A: uninterrupted. B: SIGKILLed once stage 1 is complete (or stage 2 has begun), then
    resumed; the resumption must hand the stage-1 weights over to stage 2 as A did. C: a copy
    of finished A whose state says training is done but not evaluated (no summary yet)."""
    if not HAVE_FASHION:
        pytest.skip(f"Fashion-MNIST IDX files not in {FASHION_DIR}")
    base = tmp_path_factory.mktemp("train_runs")
    genotype = base / "genotype.json"
    genotype.write_text(json.dumps(GENOTYPE))
    a, b = base / "A", base / "B"

    def args(out):
        return [f"--output_dir={out}", f"--genotype={genotype}", *TRAIN_ARGS]

    # One run at a time, each single-threaded (_env): exact comparisons need it.
    res_a = _Proc("train", args(a), base / "A.log").wait()
    _assert_ok(res_a, "training A")

    def stage1_done(state):
        return (state.get("stage") == 1 and state.get("completed_epochs", 0) >= 2
                or state.get("stage") == 2)

    run_b = _Proc("train", args(b), base / "B.log")
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

    res_b = _Proc("train", args(b), base / "B.log").wait()
    res_c = _Proc("train", args(c), base / "C.log").wait()
    return {"dirs": {"A": a, "B": b, "C": c}, "killed_state": killed, "A": res_a,
            "B": res_b, "C": res_c}


@pytest.mark.slow
def test_train_resumes_exactly_after_sigkill(train_runs):
    import tensorflow as tf

    import ubnas_tf  # noqa: F401  (custom objects for load_model)

    a, b = train_runs["dirs"]["A"], train_runs["dirs"]["B"]
    res_b = train_runs["B"]
    _assert_ok(res_b, "resumed training B")
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
    import tensorflow as tf

    import ubnas_tf  # noqa: F401  (custom objects for load_model)

    a, c = train_runs["dirs"]["A"], train_runs["dirs"]["C"]
    res = train_runs["C"]
    _assert_ok(res, "training C")
    assert "Stage 1:" not in res.stdout and "Stage 2:" not in res.stdout  # nothing retrained
    summary_a = json.loads((a / "summary.json").read_text())
    summary_c = json.loads((c / "summary.json").read_text())
    for key in ("test_accuracy", "test_loss", "best_model_test_accuracy", "best_val_accuracy"):
        np.testing.assert_allclose(summary_c[key], summary_a[key], rtol=0, atol=1e-6, err_msg=key)
    _assert_same_weights(tf, a / "model_final.keras", c / "model_final.keras")
    assert json.loads((c / "state.json").read_text())["finished"]


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
    first = _Proc("search", args, base / "P1.log")
    state1 = first.kill_when(p / "state.json", lambda s: s.get("completed_epochs", 0) >= 1
                             and s.get("epoch_step") == 2, "2 steps into epoch 2", sig=signal.SIGTERM)
    res1 = Result(first.returncode, (base / "P1.log").read_text(), "", 0.0)
    saved1 = sorted(os.listdir(p / "checkpoints" / "steps"))
    res2 = _Proc("search", args, base / "P2.log", prelude=FULL_DISK_PRELUDE).wait()
    state2 = _read_state(p / "state.json")
    leftovers = sorted(f for f in os.listdir(p) if f.startswith(".tmp-"))
    res3 = _Proc("search", [f"--output_dir={p}", *SEARCH_ARGS], base / "P3.log").wait()
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
    _assert_ok(res, "search P resumed")
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


@pytest.fixture(scope="module")
def preempted_train(train_runs, tmp_path_factory):
    """P: SIGTERMed in stage 2 once 3 steps of an epoch are saved (--checkpoint_every_steps=3),
    then re-run without the flag. Compared with train_runs' uninterrupted A."""
    base = tmp_path_factory.mktemp("preempted_train")
    genotype = train_runs["dirs"]["A"].parent / "genotype.json"
    p = base / "P"
    args = [f"--output_dir={p}", f"--genotype={genotype}", *TRAIN_ARGS]
    first = _Proc("train", [*args, "--checkpoint_every_steps=3"], base / "P.log")
    state = first.kill_when(p / "state.json", lambda s: s.get("stage") == 2
                            and s.get("epoch_step") == 3, "3 steps into a stage-2 epoch",
                            sig=signal.SIGTERM)
    returncode = first.returncode
    res = _Proc("train", args, base / "P.log").wait()
    return {"A": train_runs["dirs"]["A"], "P": p, "state": state, "returncode": returncode,
            "res": res}


@pytest.mark.slow
def test_train_resumed_mid_epoch_after_sigterm_ends_exactly_as_uninterrupted(preempted_train):
    import tensorflow as tf

    import ubnas_tf  # noqa: F401  (custom objects for load_model)

    a, p, res, state = (preempted_train[k] for k in ("A", "P", "res", "state"))
    assert preempted_train["returncode"] == 75, res.stdout[-3000:]
    # 11 steps per epoch: 180 training images (20 held out for validation), batches of 16.
    assert state["stage"] == 2 and 3 <= state["epoch_step"] < 11, state
    first_run = res.stdout.split("=== SIGTERM ===")[0]
    assert re.search(r"train\.py: stopped by SIGTERM; the state is saved \(stage 2, \d steps "
                     r"into epoch \d / checkpoint checkpoints/stage2/steps/ckpt-\d+\)", first_run)
    _assert_ok(res, "training P resumed")
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
def test_run_files_get_the_mode_of_a_plain_open(search_runs, train_runs):
    """Everything a search and a training write (JSON, plots, TF checkpoints, TensorBoard
    events, .keras models) is readable by others as a plain file would be: 0666 less the
    umask, not the 0600 of a temporary file."""
    umask = os.umask(0)
    os.umask(umask)
    for run in (search_runs["dirs"]["A"], train_runs["dirs"]["A"]):
        files = [Path(d) / f for d, _, names in os.walk(run) for f in names]
        kinds = {f.suffix for f in files}
        assert {".json", ".png", ".index", ".txt"} <= kinds, kinds
        wrong = {str(f.relative_to(run)): oct(f.stat().st_mode & 0o777) for f in files
                 if f.stat().st_mode & 0o777 != 0o666 & ~umask}
        assert not wrong, f"expected {oct(0o666 & ~umask)}: {wrong}"
    assert (train_runs["dirs"]["A"] / "model_best.keras").exists()


@pytest.mark.parametrize("command", [["tools/search.py"], ["tools/summary.py"], ["ubnas-train"]],
                         ids=["search-by-path", "summary-by-path", "train-console-script"])
def test_tensorflow_start_up_noise_is_hidden_by_default(command: list[str], tmp_path):
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
