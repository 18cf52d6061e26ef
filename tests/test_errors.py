"""The project's exceptions form one hierarchy, all in `ubnas_tf.errors`."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
from tool_runs import REPO, subprocess_env

from ubnas_tf import data, errors, genotype, io_utils, rundir
from ubnas_tf.data import datasets, idx
from ubnas_tf.deploy import convert
from ubnas_tf.evidence import ledger

# Each error and the builtin it has always been: `except ValueError` etc. still catch it.
BUILTIN_BASES = {
    "FlagError": ValueError,
    "GenotypeError": ValueError,
    "DatasetError": ValueError,
    "IdxError": ValueError,
    "LatencyTableError": ValueError,
    "LedgerError": ValueError,
    "ModuleComparisonError": ValueError,
    "NonFiniteError": RuntimeError,
    "ResumeError": RuntimeError,
    "Preempted": RuntimeError,
    "ConversionError": RuntimeError,
    "DiskFullError": OSError,
    "StepStopped": Exception,
}

# Imports every module of ubnas_tf (in a process of its own: the tools' modules define absl
# flags at import, several of them the same ones) and prints, as JSON, every exception class
# found in them that ubnas_tf defines, and the modules that could not be imported.
_WALK = r"""
import importlib, inspect, json, pkgutil
from absl import flags
import ubnas_tf
from ubnas_tf.errors import UbnasError

def forget_project_flags():
    names = {flag.name for module, defined in flags.FLAGS.flags_by_module_dict().items()
             if module.startswith("ubnas_tf") for flag in defined}
    for name in names:
        delattr(flags.FLAGS, name)

found, missing, modules = {}, {}, []
for info in pkgutil.walk_packages(ubnas_tf.__path__, "ubnas_tf."):
    try:
        try:
            module = importlib.import_module(info.name)
        except flags.DuplicateFlagError:  # another tool's module defined the same flag
            forget_project_flags()
            module = importlib.import_module(info.name)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] == "ubnas_tf":
            raise
        missing[info.name] = e.name  # an optional package this machine does not have
        continue
    modules.append(info.name)
    for obj in vars(module).values():
        if (inspect.isclass(obj) and issubclass(obj, BaseException)
                and obj.__module__.split(".")[0] == "ubnas_tf"):
            found[f"{obj.__module__}.{obj.__qualname__}"] = issubclass(obj, UbnasError)
print("WALK " + json.dumps({"found": found, "missing": missing, "modules": modules}))
"""


@pytest.fixture(scope="module")
def walk() -> dict:
    proc = subprocess.run([sys.executable, "-c", _WALK], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("WALK ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("WALK "):])


def test_every_exception_of_the_project_is_in_errors_and_under_the_base(walk):
    assert len(walk["modules"]) >= 40, walk  # the walk reached the package's modules
    assert "ubnas_tf.cli.search" in walk["modules"] and "ubnas_tf.cli.train" in walk["modules"]
    elsewhere = sorted(name for name in walk["found"] if not name.startswith("ubnas_tf.errors."))
    assert not elsewhere, f"exceptions defined outside ubnas_tf/errors.py: {elsewhere}"
    outside = sorted(name for name, under in walk["found"].items()
                     if not under and name != "ubnas_tf.errors.UbnasError")
    assert not outside, f"exceptions not derived from UbnasError: {outside}"
    # errors.py lists each of them in its __all__.
    defined = {name.rsplit(".", 1)[1] for name in walk["found"]}
    assert defined == set(errors.__all__), defined ^ set(errors.__all__)


def test_the_hierarchy_keeps_each_errors_builtin():
    assert set(BUILTIN_BASES) | {"UbnasError"} == set(errors.__all__)
    assert errors.UbnasError.__bases__ == (Exception,)
    for name, builtin in BUILTIN_BASES.items():
        cls = getattr(errors, name)
        assert cls.__module__ == "ubnas_tf.errors"
        assert issubclass(cls, errors.UbnasError) and issubclass(cls, builtin), name
        assert cls.__doc__ and cls.__doc__.strip(), f"{name} has no docstring"
    # The module docstring's tree, where a reader looks for them, names every one.
    tree = errors.__doc__.split("UbnasError\n", 1)[1]
    missing = sorted(name for name in BUILTIN_BASES if f" {name} " not in tree)
    assert not missing, f"not in errors.py's hierarchy tree: {missing}"


def test_the_defining_modules_still_export_their_errors():
    assert genotype.GenotypeError is errors.GenotypeError
    assert data.DatasetError is datasets.DatasetError is errors.DatasetError
    assert data.IdxError is idx.IdxError is errors.IdxError
    assert io_utils.DiskFullError is errors.DiskFullError
    assert (rundir.NonFiniteError, rundir.ResumeError, rundir.Preempted) == (
        errors.NonFiniteError, errors.ResumeError, errors.Preempted)
    assert convert.ConversionError is errors.ConversionError
    assert ledger.LedgerError is errors.LedgerError


@pytest.mark.parametrize("name", sorted(BUILTIN_BASES))
def test_errors_survive_pickling(name):
    cls = getattr(errors, name)
    err = cls("/run/state.json", "no space left on device") if cls is errors.DiskFullError \
        else cls("the message")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is cls and str(copy) == str(err) and copy.args == err.args


def test_disk_full_error_keeps_its_fields_through_pickling():
    err = errors.DiskFullError("/run/state.json", "disk quota exceeded", 122)
    assert isinstance(err, OSError) and (err.errno, err.filename) == (122, "/run/state.json")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.reason, copy.errno, copy.filename, copy.strerror) == (
        "/run/state.json", "disk quota exceeded", 122, "/run/state.json", "disk quota exceeded")
    assert str(copy) == "disk quota exceeded while writing /run/state.json"
