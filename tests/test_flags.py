"""ubnas_tf.flags: absl's own checks, reported as one clear line each (`explain_flag_error`),
and the flags defined from the configs' options (`define_config_flags`), read back in one call
(`config_from_flags`): every tool's flag defaults are its config's."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from absl import flags
from tool_runs import subprocess_env

from ubnas_tf.config import CHOICES, LOWER_BOUND, UPPER_BOUND, option
from ubnas_tf.errors import FlagError
from ubnas_tf.evidence import cli as evidence_cli
from ubnas_tf.evidence.chance import ChanceSettings, recipe_network
from ubnas_tf.evidence.ledger import Recipe
from ubnas_tf.evidence.options import (
    DEFAULT_LEDGER,
    DEFAULT_RECIPE,
    METRICS,
    OPS_TOLERANCE,
)
from ubnas_tf.experiments import search_vs_random, studies
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

# Command (`ubnas_commands.COMMANDS`) -> its config, and the function that defines its flags.
CONFIGS = {"search": SearchConfig, "train": TrainConfig, "compare_modules": ComparisonConfig,
           "studies": studies.Settings, "evidence": evidence_cli.EvidenceConfig,
           "bench_search_vs_random": search_vs_random.SearchVsRandomConfig}
DEFINE = {"search": define_search_flags, "train": define_train_flags,
          "compare_modules": define_comparison_flags, "studies": studies.define_flags,
          "evidence": evidence_cli.define_flags,
          "bench_search_vs_random": search_vs_random.define_flags}
# The options a command requires (a value for the tests that parse a command line).
REQUIRED = {"train": {"genotype": "g.json"}, "studies": {"study": "k_ratio"},
            "bench_search_vs_random": {"genotype": "g.json"}}


def _options(config: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config) if "help" in f.metadata}


_TOOL_FLAGS = r"""
import importlib, json, sys
from absl import flags
import ubnas_commands
module = importlib.import_module(ubnas_commands.COMMANDS[sys.argv[1]])  # defines the tool's flags
if hasattr(module, "define_flags"):  # or defines them when run, not on import
    module.define_flags()
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


def _other_value(flag: flags.Flag, hint):
    """A valid value of `flag` (of a field annotated `hint`) other than its default."""
    parser, default = flag.parser, flag.default
    if isinstance(parser, flags.EnumParser):
        return next(v for v in parser.enum_values if v != default)
    if isinstance(parser, flags.BooleanParser):
        return not default
    if isinstance(parser, flags.ListParser):
        return [2, 3] if int in typing.get_args(hint) else ["a", "b"]
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
    hints = typing.get_type_hints(config)
    values = {name: _other_value(fv[name], hints[name]) for name in names}
    fv(["prog", "--output_dir=out"] + [
        f"--{n}={','.join(map(str, v)) if isinstance(v, list) else v}"
        for n, v in values.items()])
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
    required = REQUIRED.get(tool, {})
    fv(["prog", *(f"--{k}={v}" for k, v in required.items())])  # the defaults pass every check
    made = config_from_flags(config, fv)
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


# -- the experiments' configs -------------------------------------------------------------------


def test_an_integer_list_option_is_checked_and_read_as_integers():
    @dataclasses.dataclass(kw_only=True)
    class Seeds:
        seeds: tuple[int, ...] = option((0,), "Seeds.", lower_bound=0, upper_bound=9)
        names: tuple[str, ...] = option(("a",), "Names.")

    fv = flags.FlagValues()
    define_config_flags(Seeds, fv)
    for bad in ("1,x", "3,10", "-1"):
        with pytest.raises(flags.Error) as err:
            fv(["prog", f"--seeds={bad}"])
        assert explain_flag_error(err.value, fv) == \
            "--seeds must be comma-separated integers in [0, 9]."
        fv.unparse_flags()
    fv(["prog", "--seeds=3,1"])
    assert config_from_flags(Seeds, fv) == Seeds(seeds=(3, 1))
    fv.unparse_flags()
    # An emptied list is empty: the option had a default, and the user took it away.
    fv(["prog", "--seeds=", "--names="])
    assert config_from_flags(Seeds, fv) == Seeds(seeds=(), names=())


@pytest.mark.parametrize("name, default, metadata", [
    ("ledger", DEFAULT_LEDGER, {}),
    ("commit", False, {}),
    ("metric", METRICS[0], {CHOICES: METRICS}),
    ("ops_tolerance", OPS_TOLERANCE, {LOWER_BOUND: 0.001}),
    ("recipe", DEFAULT_RECIPE, {}),
    ("train_seed", 0, {LOWER_BOUND: 0, UPPER_BOUND: 2**32 - 1}),
    ("sample_seed", 0, {LOWER_BOUND: 0}),
])
def test_an_option_the_experiments_share_is_the_same_in_each(name, default, metadata):
    experiments = ("studies", "evidence", "bench_search_vs_random")
    having = [CONFIGS[tool] for tool in experiments if name in _options(CONFIGS[tool])]
    assert len(having) >= 2, name
    for config in having:
        field = _options(config)[name]
        assert field.default == default, (config, name)
        assert {k: field.metadata[k] for k in metadata} == metadata, (config, name)
    # The studies' retraining recipe is the evidence's default recipe too.
    assert _options(studies.Settings)["train_flagfile"].default == DEFAULT_RECIPE


def test_the_studies_settings_come_from_the_command_line_in_one_call():
    fv = flags.FlagValues()
    studies.define_flags(fv)
    with pytest.raises(flags.Error) as err:
        fv(["prog"])
    assert explain_flag_error(err.value, fv).startswith("--study is required: <k_ratio|")
    fv(["prog", "--study=k_ratio", "--seeds=1,0,1", "--variants=k4_4",
        f"--search_flagfile={REPO / 'flags' / 'fashion_mnist.flags'}"])
    settings = studies.settings_from_flags(fv)
    # A seed given twice is searched once; a flagfile in the checkout is named relative to it.
    assert settings == studies.Settings(study="k_ratio", seeds=(1, 0), variants=("k4_4",),
                                        search_flagfile="flags/fashion_mnist.flags")


def test_the_evidence_config_is_the_experiment_and_where_it_goes():
    fv = flags.FlagValues()
    evidence_cli.define_flags(fv)
    fv(["prog", "--recipe_overrides=epochs=2", "--search_seeds=3", "--hand=", "--arms=hand"])
    config = config_from_flags(evidence_cli.EvidenceConfig, fv)
    assert isinstance(config, ChanceSettings)
    assert config.retraining_recipe == Recipe(DEFAULT_RECIPE, ("epochs=2",))
    assert (config.search_seeds, config.hand, config.arms) == ((3,), (), ("hand",))
    fv.unparse_flags()
    for argv, expected in ((["--arms=random,dance"], "--arms must list some of random, hand"),
                           (["--search_overrides=k_normal=8"], "--search_overrides needs a "
                                                               "--variant name")):
        with pytest.raises(flags.Error) as err:
            fv(["prog", *argv])
        assert explain_flag_error(err.value, fv).startswith(expected)
        fv.unparse_flags()


def test_a_recipes_network_is_read_by_the_train_flagfile_parser(tmp_path):
    recipe = Recipe(DEFAULT_RECIPE, ("module_config=bireal", "layers=8"))
    assert recipe_network(recipe, str(REPO)) == {
        "dataset": "fashion_mnist", "layers": 8, "init_channels": 32, "stem_multiplier": 4,
        "stem_strides": 2, "module_config": "bireal", "allow_unaligned_widths": False}
    (tmp_path / "narrow.flags").write_text("--init_channels=24\n")
    with pytest.raises(FlagError, match=r"^--recipe=.*narrow\.flags.*: --init_channels=24 is "
                                        r"not a multiple of 32"):
        recipe_network(Recipe("narrow.flags"), str(tmp_path))
    (tmp_path / "narrow.flags").write_text("--init_channels=24\n--allow_unaligned_widths\n")
    assert recipe_network(Recipe("narrow.flags"), str(tmp_path))["init_channels"] == 24
