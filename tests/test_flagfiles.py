"""Every shipped flagfile parses with its tool's flags and passes the tool's flag validation.

A typo in a flagfile (an unknown or renamed flag, K that does not divide the width, a
misspelt dataset) would otherwise surface only when a user runs it, possibly after an hour of
data preparation. The check runs in a subprocess per tool (absl flags are process-global)
and needs no dataset: the training-set size comes from the dataset's metadata.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags
from tool_runs import REPO

FLAGFILES = sorted((REPO / "flags").glob("*.flags"))
GENOTYPE = REPO / "genotypes" / "fashion_mnist_full.json"


def _tool(flagfile: Path) -> str:
    return "train" if flagfile.stem.endswith("_train") else "search"


_CHECK = r"""
import importlib, json, sys
from absl import flags
tool, genotype, files = sys.argv[1], sys.argv[2], sys.argv[3:]
import ubnas_commands
importlib.import_module(ubnas_commands.COMMANDS[tool])  # defines the tool's flags
from ubnas_tf import flags as ub
if tool == "search":
    from ubnas_tf.cli.search import validate_flags  # the search's, its budget included
else:
    validate_flags = ub.validate_train_flags
from ubnas_tf.data import get_info
FLAGS = flags.FLAGS
results = {}
for path in files:
    FLAGS.unparse_flags()
    argv = ["tool", f"--flagfile={path}"] + ([f"--genotype={genotype}"] if tool == "train" else [])
    try:
        FLAGS(argv)
        ub.validate_run_flags()
        n = get_info(FLAGS.dataset).num_train
        n = min(n, FLAGS.max_examples) if FLAGS.max_examples else n
        validate_flags(n)
        results[path] = {"ok": True, "output_dir": FLAGS.output_dir, "seed": FLAGS.seed}
    except Exception as err:
        results[path] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def checked() -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = {}
    for tool in ("search", "train"):
        files = [str(f) for f in FLAGFILES if _tool(f) == tool]
        res = subprocess.run([sys.executable, "-c", _CHECK, tool, str(GENOTYPE), *files],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        lines = [line for line in res.stdout.splitlines() if line.startswith("RESULTS ")]
        assert res.returncode == 0 and lines, res.stdout[-2000:] + res.stderr[-3000:]
        results.update(json.loads(lines[-1][len("RESULTS "):]))
    return results


def test_flagfiles_exist_for_both_tools():
    names = {f.name for f in FLAGFILES}
    assert {"fashion_mnist.flags", "cifar10.flags", "fashion_mnist_train.flags",
            "cifar10_train.flags", "imagenet_train.flags"} <= names
    assert GENOTYPE.exists(), "the genotype behind the README's retraining result is missing"


@pytest.mark.parametrize("flagfile", FLAGFILES, ids=[f.name for f in FLAGFILES])
def test_flagfile_is_valid(checked, flagfile: Path):
    result = checked[str(flagfile)]
    assert result["ok"], f"{flagfile.name} is rejected: {result.get('error')}"
    # Each flagfile writes its own run directory under runs/ and fixes the seed.
    assert result["output_dir"].startswith("runs/"), result
    assert result["seed"] is not None


def test_written_flagfile_reproduces_values_with_spaces(tmp_path):
    # deferred: loads TensorFlow, which no other test of this module needs
    from ubnas_tf.rundir import write_flagfile

    fv = flags.FlagValues()
    flags.DEFINE_string("note", None, "", flag_values=fv)
    flags.DEFINE_list("primitives", None, "", flag_values=fv)
    flags.DEFINE_bool("augment", True, "", flag_values=fv)
    flags.DEFINE_float("target_mops", None, "", flag_values=fv)
    values = {"note": "two words, and 'quotes'", "primitives": ["bconv_3x3", "none"],
              "augment": False, "target_mops": 1.5}
    path = tmp_path / "flags.txt"
    write_flagfile(str(path), values)
    fv(["tool", f"--flagfile={path}"])
    assert {name: fv[name].value for name in values} == values
    with pytest.raises(ValueError, match="--note=.*line break"):
        write_flagfile(str(tmp_path / "bad.txt"), {"note": "a\nb"})
    assert not (tmp_path / "bad.txt").exists()
