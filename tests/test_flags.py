"""ubnas_tf.flags: absl's own checks, reported as one clear line each (`explain_flag_error`),
and the flags defined from the configs' options (`define_config_flags`), read back in one call
(`config_from_flags`): every tool's flag defaults are its config's."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags
from tool_runs import subprocess_env

from ubnas_tf.flags import (
    _check,
    config_from_flags,
    define_comparison_flags,
    define_config_flags,
    define_device_flags,
    define_run_flags,
    define_search_flags,
    define_train_flags,
    explain_flag_error,
)
from ubnas_tf.module_comparison.compare import ComparisonConfig
from ubnas_tf.nets.training import TrainConfig
from ubnas_tf.search.runner import SearchConfig

REPO = Path(__file__).resolve().parents[1]


def _values() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_integer("batch_size", 64, "Batch.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed.", lower_bound=0, upper_bound=9, flag_values=fv)
    flags.DEFINE_float("rate", 0.5, "Rate.", upper_bound=1.0, flag_values=fv)
    flags.DEFINE_enum("dataset", "a", ["a", "b"], "Data.", flag_values=fv)
    flags.DEFINE_string("model", None, "The model to read.", flag_values=fv)
    flags.DEFINE_float("lr", 1.0, "Learning rate.", flag_values=fv)
    flags.register_validator("lr", lambda v: v > 0, message="must be > 0.", flag_values=fv)
    flags.DEFINE_integer("k", 1, "K.", flag_values=fv)
    flags.register_multi_flags_validator(
        ["k", "batch_size"], lambda d: _check(d["batch_size"] % d["k"] == 0,
                                              f"--k={d['k']} does not divide --batch_size."),
        flag_values=fv)
    return fv


@pytest.mark.parametrize("argv, expected", [
    (["--batch_size=0"], "--batch_size=0 is invalid; it must be an integer >= 1."),
    (["--batch_size=x"], "--batch_size=x is invalid; it must be an integer >= 1."),
    (["--seed=12"], "--seed=12 is invalid; it must be an integer in [0, 9]."),
    (["--rate=2"], "--rate=2 is invalid; it must be a number <= 1.0."),
    (["--dataset=c"], "--dataset='c' is unknown; use one of ['a', 'b']."),
    (["--lr=-1"], "--lr=-1.0 must be > 0."),
    (["--k=3"], "--k=3 does not divide --batch_size."),
])
def test_each_kind_of_absl_error_becomes_one_line_naming_the_flag(argv, expected):
    fv = _values()
    with pytest.raises(flags.Error) as err:
        fv(["prog", *argv])
    assert explain_flag_error(err.value, fv) == expected


def test_a_required_flag_is_explained_with_its_help():
    fv = _values()
    flags.mark_flag_as_required("model", flag_values=fv)
    with pytest.raises(flags.Error) as err:
        fv(["prog"])
    assert explain_flag_error(err.value, fv) == "--model is required: The model to read."


# -- flags from the configs ---------------------------------------------------------------------

CONFIGS = {"search": SearchConfig, "train": TrainConfig, "compare_modules": ComparisonConfig}
DEFINE = {"search": define_search_flags, "train": define_train_flags,
          "compare_modules": define_comparison_flags}


def _options(config: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config) if "help" in f.metadata}


_TOOL_FLAGS = r"""
import importlib, json, sys
from absl import flags
import ubnas_commands
importlib.import_module(ubnas_commands.COMMANDS[sys.argv[1]])  # defines the tool's flags
print("FLAGS " + json.dumps({f.name: [f.default, f.help] for f in flags.FLAGS.get_flags_for_module("ubnas_tf.flags")}))
"""


@pytest.mark.parametrize("tool", sorted(CONFIGS))
def test_every_flag_of_a_tool_is_its_config_option_with_the_same_default_and_help(tool):
    # The tool's own flags, as it defines them (in a subprocess: absl flags are global).
    res = subprocess.run([sys.executable, "-c", _TOOL_FLAGS, tool], cwd=REPO,
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
    lines = [line for line in res.stdout.splitlines() if line.startswith("FLAGS ")]
    assert res.returncode == 0 and lines, res.stdout[-2000:] + res.stderr[-3000:]
    defined = json.loads(lines[-1][len("FLAGS "):])
    options = _options(CONFIGS[tool])
    # Every option is a flag; the others are where the run goes (no config field's).
    assert set(defined) - set(options) <= {"output_dir", "overwrite", "logical_cpus"}
    assert set(options) <= set(defined)
    for name, field in options.items():
        default = None if field.default is dataclasses.MISSING else field.default
        if isinstance(default, tuple):
            default = list(default)
        flag_default, flag_help = defined[name]
        assert flag_default == default, name
        assert flag_help.endswith(field.metadata["help"]), name  # an enum's: "<a|b>: ..."


def _other_value(flag: flags.Flag):
    """A valid value of `flag` other than its default, as it would be typed."""
    parser, default = flag.parser, flag.default
    if isinstance(parser, flags.EnumParser):
        return next(v for v in parser.enum_values if v != default)
    if isinstance(parser, flags.BooleanParser):
        return not default
    if isinstance(parser, flags.ListParser):
        return ["a", "b"]
    if isinstance(parser, flags.IntegerParser):
        # Within the bounds and the checks (--verbose 0..2, --stem_strides 1, 2, 4, 8).
        return 2 if default in (None, 0, 1) else default + 1
    if isinstance(parser, flags.FloatParser):
        return 0.5 * default if default else 0.25
    return "other"


@pytest.mark.parametrize("tool", sorted(CONFIGS))
def test_config_from_flags_is_one_call_reproducing_every_field(tool):
    config = CONFIGS[tool]
    fv = flags.FlagValues()
    define_run_flags("runs/x", fv)
    names = define_config_flags(config, fv)  # without the checks that need several flags
    assert names == list(_options(config))
    values = {name: _other_value(fv[name]) for name in names}
    fv(["prog", "--output_dir=out"] + [
        f"--{n}={','.join(v) if isinstance(v, list) else v}" for n, v in values.items()])
    # A field without a flag is given (the comparison's label smoothing) or keeps its default.
    given = {"label_smoothing": 0.2} if tool == "compare_modules" else {}
    cfg = config_from_flags(config, fv, **given)
    for field in dataclasses.fields(cfg):
        got = getattr(cfg, field.name)
        if field.name == "output_dir":
            assert got == "out"
        elif field.name in values:
            want = values[field.name]
            assert got == (tuple(want) if isinstance(want, list) else want), field.name
        else:
            assert got == given.get(field.name, field.default), field.name


@pytest.mark.parametrize("tool", sorted(CONFIGS))
def test_the_default_flags_make_the_default_config(tool):
    config = CONFIGS[tool]
    fv = flags.FlagValues()
    define_run_flags("runs/x", fv)
    define_device_flags(fv)
    DEFINE[tool](fv)
    fv(["prog"])  # the defaults pass every check
    required = {"genotype": "g.json"} if tool == "train" else {}
    made = config_from_flags(config, fv, **required)
    expected = {"output_dir": "runs/x"} if "output_dir" in config.__dataclass_fields__ else {}
    assert made == config(**expected, **required)


def test_define_train_flags_defines_the_checks_of_one_and_of_several_flags():
    fv = flags.FlagValues()
    define_train_flags(fv)
    for argv, expected in ((["--learning_rate=0"], "--learning_rate=0.0 must be > 0."),
                           (["--init_channels=24"], "--init_channels=24 is not a multiple of 32"),
                           (["--stem_strides=3"], "--stem_strides=3 is invalid; use 1, 2, 4 or 8.")):
        with pytest.raises(flags.Error) as err:
            fv(["prog", *argv])
        assert explain_flag_error(err.value, fv).startswith(expected)
        fv.unparse_flags()
    fv(["prog", "--init_channels=24", "--allow_unaligned_widths"])
