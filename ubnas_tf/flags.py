"""absl flag definitions shared by the tools, and their up-front validation.

A tool's settings are a config dataclass whose options carry their defaults and help texts
(`ubnas_tf.config`): `define_config_flags` defines one flag per option from them, and
`config_from_flags` builds the config back from the parsed flags in one call, so no
default or help text is written twice. Each tool calls the ``define_*`` functions it needs
at import time and runs with ``run_main(__name__, main)``. What a flag's value alone
decides is absl's job: bounds, enums, required flags and (multi-flag) validators, checked
while the command line is parsed; `parse_command_line` turns absl's errors into one line that
names the flag and what is accepted, and exit status 2. What needs the file system, the
dataset or a registry is checked by `validate_*` in ``main``, before any data is read or
model built; those raise `FlagError`, which the tools print the same way.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from absl import app, flags

from ubnas_tf.config import CHOICES, HELP, LOWER_BOUND, UPPER_BOUND
from ubnas_tf.data import DatasetError, check_available, get_info
from ubnas_tf.data.datasets import DEFAULT_FASHION_MNIST_DIR, idx_files_present
from ubnas_tf.distribute import parse_tf_config
from ubnas_tf.errors import FlagError
from ubnas_tf.genotype import Genotype, GenotypeError
from ubnas_tf.modules import MODULE_CONFIGS
from ubnas_tf.nets.training import TrainConfig
from ubnas_tf.ops import resolve_primitives
from ubnas_tf.search.runner import SearchConfig

FLAGS = flags.FLAGS


# -- absl errors, explained ---------------------------------------------------------------------

_ONE_FLAG = re.compile(r"flag --(\w+)=(.*?): (.*)", re.S)
_SEVERAL_FLAGS = re.compile(r"flags [\w]+=.*?: (--.*)", re.S)


def explain_flag_error(err: flags.Error, flag_values: flags.FlagValues = FLAGS) -> str:
    """absl's message for a rejected command line, as ``--name=value is invalid; ...``.

    absl reports a failed bound as ``flag --x=0: 0 is not a positive integer``, an enum as
    ``value should be one of <a|b>`` and a validator as ``flag --x=v: MESSAGE``; our validator
    messages either start with the flag (``--a must ...``, used as they are) or continue
    ``--x=v`` (``must be > 0.``).
    """
    out = []
    for line in str(err).split("\n"):  # absl joins the failures of several validators
        one, several = _ONE_FLAG.fullmatch(line), _SEVERAL_FLAGS.fullmatch(line)
        if one and one.group(1) in flag_values:
            out.append(_explain_one(flag_values[one.group(1)], one.group(2), one.group(3)))
        elif several:
            out.append(several.group(1))
        else:
            out.append(line)
    return "\n".join(out)


def _explain_one(flag: flags.Flag, value: str, message: str) -> str:
    name, parser = flag.name, flag.parser
    if message == f"Flag --{name} must have a value other than None.":
        return f"--{name} is required: {flag.help}"
    if isinstance(parser, flags.EnumParser):
        return f"--{name}={value!r} is unknown; use one of {list(parser.enum_values)}."
    if isinstance(parser, (flags.IntegerParser, flags.FloatParser)):
        try:
            parser.parse(value)
        except ValueError:  # not a number, or out of bounds: say what is accepted
            kind = "an integer" if isinstance(parser, flags.IntegerParser) else "a number"
            low, high = parser.lower_bound, parser.upper_bound
            if low is not None and high is not None:
                accepted = f"{kind} in [{low}, {high}]"
            elif low is not None:
                accepted = f"{kind} >= {low}"
            elif high is not None:
                accepted = f"{kind} <= {high}"
            else:
                accepted = kind
            return f"--{name}={value} is invalid; it must be {accepted}."
    return message if message.startswith("--") else f"--{name}={value} {message}"


def program_name() -> str:
    """How the user called the program (``search.py``, ``ubnas-search``), for messages."""
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "ubnas"


def present_as_main(module_name: str) -> None:
    """``--help`` of the running program shows `module_name`'s docstring and key flags.

    absl's help shows the main script's; a console script or a tools/ wrapper only calls
    the module's ``run()``, so it has neither."""
    for flag in FLAGS.get_key_flags_for_module(module_name):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    main = sys.modules.get("__main__")
    if main is not None and main.__name__ != module_name:
        main.__doc__ = sys.modules[module_name].__doc__


def parse_command_line(argv: list[str]) -> list[str]:
    """A ``flags_parser`` for `absl.app.run`: a rejected flag prints ``PROGRAM: error: ...``
    (see `explain_flag_error`) and exits with status 2, as a `FlagError` does."""
    try:
        return FLAGS(argv)
    except flags.Error as err:
        print(f"{program_name()}: error: {explain_flag_error(err)}", file=sys.stderr)
        sys.exit(2)


def run_main(module_name: str, main: Callable[[list[str]], int | None]) -> None:
    """Runs the command `module_name` (a console script's ``run()``): absl runs `main` on the
    command line as `parse_command_line` parses it, and exits with what `main` returns; its
    --help shows the module's docstring and key flags (`present_as_main`)."""
    present_as_main(module_name)
    app.run(main, flags_parser=parse_command_line)


def _check(ok: bool, message: str) -> bool:
    """For multi-flag validators whose message needs the values."""
    if not ok:
        raise flags.ValidationError(message)
    return True


# -- definitions --------------------------------------------------------------------------------

# Checks of one flag's value beyond its bounds or choices, by flag name: whichever config
# defines a flag of that name gets its check (one meaning per name across the tools).
_VALIDATORS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "verbose": (lambda v: v in (0, 1, 2), "is invalid; use 0, 1 or 2."),
    "stem_strides": (lambda v: v in (1, 2, 4, 8), "is invalid; use 1, 2, 4 or 8."),
    "weight_lr": (lambda v: v > 0, "must be > 0."),
    "arch_lr": (lambda v: v is None or v > 0, "must be > 0."),
    "target_mops": (lambda v: v is None or v > 0, "must be > 0 (MOPs)."),
    "target_latency_ms": (lambda v: v is None or v > 0, "must be > 0 (milliseconds)."),
    "learning_rate": (lambda v: v > 0, "must be > 0."),
    "label_smoothing": (lambda v: 0 <= v < 1, "must be in [0, 1)."),
    "drop_path": (lambda v: 0 <= v < 1, "must be in [0, 1)."),
}

ConfigT = TypeVar("ConfigT")


def _members(hint: Any) -> list:
    """The types of a field annotated `hint`, without the None of an optional one."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return [m for m in typing.get_args(hint) if m is not type(None)] if union else [hint]


def _flag_kind(hint: Any) -> str:
    """The absl flag type of a field annotated `hint`: bool, integer, float, list (a tuple
    or list of str or of int) or string (a union with str: a path, the other types being
    the library's); None in a union only makes the flag optional."""
    members = _members(hint)
    if str in members:
        return "string"
    if len(members) == 1:
        member = typing.get_origin(members[0]) or members[0]
        kinds = {bool: "bool", int: "integer", float: "float", tuple: "list", list: "list"}
        if member in kinds:
            return kinds[member]
    raise TypeError(f"no flag type for a field of type {hint}")


def _integer_items(hint: Any) -> bool:
    """Whether a list field annotated `hint` holds integers (``tuple[int, ...]``): its flag is
    a comma-separated list like any other, each item checked and read as an int."""
    return any(int in typing.get_args(m) for m in _members(hint))


def _integers_within(values: list, low: float | None, high: float | None) -> bool:
    try:
        numbers = [int(v) for v in values]
    except (TypeError, ValueError):
        return False
    return all((low is None or n >= low) and (high is None or n <= high) for n in numbers)


def _bounds_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    return "" if high is None else f" <= {high}"


def define_config_flags(config: type, flag_values: flags.FlagValues = FLAGS) -> list[str]:
    """Defines a flag for every option of the dataclass `config` (a field with help text,
    `ubnas_tf.config.option`): same name, the field's default (None for a required option),
    its help text, bounds or choices, and the `_VALIDATORS` check of that name. Returns
    the names defined; `config_from_flags` reads them back."""
    hints = typing.get_type_hints(config)
    names = []
    for field in dataclasses.fields(config):
        meta = field.metadata
        if HELP not in meta:
            continue  # a setting of the library alone
        name, help_text = field.name, meta[HELP]
        default = None if field.default is dataclasses.MISSING else field.default
        kind = _flag_kind(hints[name])
        if CHOICES in meta:
            flags.DEFINE_enum(name, default, meta[CHOICES], help_text, flag_values=flag_values)
        elif kind == "list":
            flags.DEFINE_list(name, None if default is None else list(default), help_text,
                              flag_values=flag_values)
            if _integer_items(hints[name]):  # the bounds apply to each item
                low, high = meta.get(LOWER_BOUND), meta.get(UPPER_BOUND)
                flags.register_validator(
                    name, lambda v, low=low, high=high: v is None or _integers_within(v, low, high),
                    message=f"--{name} must be comma-separated integers{_bounds_text(low, high)}.",
                    flag_values=flag_values)
        elif kind in ("integer", "float"):
            getattr(flags, f"DEFINE_{kind}")(
                name, default, help_text, lower_bound=meta.get(LOWER_BOUND),
                upper_bound=meta.get(UPPER_BOUND), flag_values=flag_values)
        else:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=flag_values)
        if name in _VALIDATORS:
            checker, message = _VALIDATORS[name]
            flags.register_validator(name, checker, message=message, flag_values=flag_values)
        names.append(name)
    return names


def config_from_flags(config: type[ConfigT], flag_values: flags.FlagValues = FLAGS,
                      **values: Any) -> ConfigT:
    """The dataclass `config` from the parsed command line, in one call.

    Each field named like a flag takes the flag's value (a list flag's as a tuple, of ints
    for a ``tuple[int, ...]`` field; an empty one as None where that is the field's default:
    an optional list left empty is not given); `values` give the fields that have no flag or
    are derived from several (they win over a flag); the other fields keep their defaults.
    """
    hints = typing.get_type_hints(config)
    kwargs = {}
    for field in dataclasses.fields(config):
        if field.name in values or field.name not in flag_values:
            continue
        value = flag_values[field.name].value
        if isinstance(value, list):
            items = [int(v) for v in value] if _integer_items(hints[field.name]) else value
            value = None if not items and field.default is None else tuple(items)
        kwargs[field.name] = value
    return config(**kwargs, **values)


def define_run_flags(default_output_dir: str, flag_values: flags.FlagValues = FLAGS) -> None:
    """Where a run goes (every tool that writes a run directory): not settings of the run,
    so they belong to no config (see `ubnas_tf.config.RunConfig.output_dir`)."""
    flags.DEFINE_string("output_dir", default_output_dir,
                        "Run directory: flags, checkpoints, logs and results are written here "
                        "(see WORKSPACE.md); re-running the same command resumes it.",
                        flag_values=flag_values)
    flags.DEFINE_bool("overwrite", False,
                      "Start afresh in --output_dir even if it holds a run made with other flags.",
                      flag_values=flag_values)


def define_device_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """How this process sees the CPU (tools/search.py and tools/train.py; the other device
    settings are `ubnas_tf.config.RunConfig`'s)."""
    flags.DEFINE_integer("logical_cpus", 0,
                         "Split the CPU into this many logical devices (for testing "
                         "--distribute=mirrored without GPUs); 0 leaves the CPU whole.",
                         lower_bound=0, flag_values=flag_values)


def define_search_flags(flag_values: flags.FlagValues = FLAGS) -> list[str]:
    """The flags of `ubnas_tf.search.runner.SearchConfig`, and the checks that need several;
    returns their names."""
    names = define_config_flags(SearchConfig, flag_values)
    for pair, check in (
        (["k_normal", "init_channels"],
         lambda d: _check(d["init_channels"] % d["k_normal"] == 0,
                          f"--k_normal={d['k_normal']} does not divide --init_channels="
                          f"{d['init_channels']}; the normal cells need a width divisible by K.")),
        (["k_reduce", "init_channels"],
         lambda d: _check((2 * d["init_channels"]) % d["k_reduce"] == 0,
                          f"--k_reduce={d['k_reduce']} does not divide the first reduction cell "
                          f"width 2 x --init_channels = {2 * d['init_channels']}.")),
        (["arch_warmup_epochs", "epochs"],
         lambda d: _check(d["arch_warmup_epochs"] < d["epochs"],
                          f"--arch_warmup_epochs={d['arch_warmup_epochs']} must be smaller than "
                          f"--epochs={d['epochs']}, or the architecture never moves.")),
        (["arch_travel", "arch_lr"],
         lambda d: _check(d["arch_lr"] is not None or d["arch_travel"] > 0,
                          f"--arch_travel={d['arch_travel']} must be > 0 (or give --arch_lr).")),
        (["target_mops", "target_latency_ms", "latency_table", "target_train_flagfile"],
         _budget_flags),
    ):
        flags.register_multi_flags_validator(pair, check, flag_values=flag_values)
    return names


def _budget_flags(d: dict) -> bool:
    _check(d["target_mops"] is None or d["target_latency_ms"] is None,
           "--target_mops and --target_latency_ms are two budgets; give one of them.")
    budget = "--target_mops" if d["target_latency_ms"] is None else "--target_latency_ms"
    has_budget = d["target_mops"] is not None or d["target_latency_ms"] is not None
    _check(not has_budget or d["target_train_flagfile"],
           f"{budget} needs --target_train_flagfile: the tools/train.py flagfile of the "
           "network the budget refers to (e.g. flags/fashion_mnist_train.flags).")
    _check((d["target_latency_ms"] is None) == (d["latency_table"] is None),
           "--target_latency_ms and --latency_table go together: the budget in ms and the "
           "table (tools/latency_table.py) that predicts the network's ms.")
    return _check(d["target_train_flagfile"] is None or has_budget,
                  "--target_train_flagfile is only used with --target_mops or "
                  "--target_latency_ms; give a budget or drop it.")


def define_train_flags(flag_values: flags.FlagValues = FLAGS) -> list[str]:
    """The flags of `ubnas_tf.nets.training.TrainConfig` (its --genotype is required by
    tools/train.py, not here: a retraining flagfile read for its network has none), and the
    checks that need several; returns their names."""
    names = define_config_flags(TrainConfig, flag_values)
    flags.register_multi_flags_validator(
        ["init_channels", "allow_unaligned_widths"],
        lambda d: _check(d["allow_unaligned_widths"] or d["init_channels"] % 32 == 0,
                         f"--init_channels={d['init_channels']} is not a multiple of 32: "
                         "LCE packs binary activations in 32s. Use 32, 64, ... or pass "
                         "--allow_unaligned_widths."),
        flag_values=flag_values)
    return names


def define_comparison_flags(flag_values: flags.FlagValues = FLAGS) -> list[str]:
    """The flags of `ubnas_tf.module_comparison.compare.ComparisonConfig`, and the checks
    that need several; returns their names."""
    # deferred: module_comparison loads keras_tuner (0.2 s), which only compare_modules needs
    from ubnas_tf.module_comparison.compare import ComparisonConfig

    names = define_config_flags(ComparisonConfig, flag_values)
    flags.register_multi_flags_validator(
        ["variants", "mode"], lambda d: not d["variants"] or d["mode"] == "named",
        message="--variants applies to --mode=named only; --mode=fields searches the "
                "ModuleConfig fields.", flag_values=flag_values)
    return names


def parse_train_flagfile(path: str, flag: str,
                         overrides: Sequence[str] = ()) -> flags.FlagValues:
    """The flags of a retraining flagfile (tools/train.py's defaults for any it omits; flags
    unknown to tools/train.py ignored), then `overrides` (``name=value``, last wins as on a
    command line). `flag` names the file in a FlagError: the one parser of every tool that
    reads a network or a recipe from a tools/train.py flagfile."""
    if not os.path.isfile(path):
        raise FlagError(f"{flag}={path!r} is not a file; give a tools/train.py flagfile such as "
                        "flags/fashion_mnist_train.flags.")
    fv = flags.FlagValues()
    define_train_flags(fv)
    try:
        fv(["train", f"--flagfile={path}", *(f"--{o}" for o in overrides)], known_only=True)
    except flags.Error as err:
        raise FlagError(f"{flag}={path!r}: {explain_flag_error(err, fv)}") from err
    return fv


# -- validation of what absl cannot see ---------------------------------------------------------


def check_module_config(name: str) -> None:
    if name not in MODULE_CONFIGS:
        raise FlagError(f"--module_config={name!r} is unknown; use one of "
                        f"{sorted(MODULE_CONFIGS)}.")


def validate_train_flags(num_train: int) -> None:
    """The genotype file, the module registry and the batch against the data; raises FlagError."""
    try:
        Genotype.load(FLAGS.genotype)
    except GenotypeError as err:
        raise FlagError(f"--genotype: {err}") from err
    check_module_config(FLAGS.module_config)
    n_train = num_train - min(FLAGS.validation_examples, num_train // 10)
    if FLAGS.batch_size > n_train:
        raise FlagError(f"--batch_size={FLAGS.batch_size} is larger than the {n_train} "
                        "training examples; lower it or raise --max_examples.")


def validate_run_flags() -> None:
    """--output_dir must be a directory or nothing yet."""
    if FLAGS.output_dir is None or not FLAGS.output_dir.strip():
        raise FlagError("--output_dir must name a directory.")
    check_output_dir(FLAGS.output_dir)


def check_output_dir(path: str, flag: str = "--output_dir") -> None:
    """Raises FlagError unless `path` is a directory, or can be made one: its nearest existing
    ancestor must be a writable directory (not a regular file)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise FlagError(f"{flag}={path!r} exists and is not a directory.")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise FlagError(f"{flag}={path!r} cannot be created: {parent!r} is a file, not a "
                        "directory. Choose a path under a directory.")
    if not os.path.exists(path) and not os.access(parent, os.W_OK | os.X_OK):
        raise FlagError(f"{flag}={path!r} cannot be created: {parent!r} is not writable.")


def check_output_file(path: str, flag: str = "--output") -> None:
    """Raises FlagError unless a file can be written at `path`: it is not a directory, and
    its directory exists or can be made (`check_output_dir`). Checked before the heavy work,
    so that a bad path is refused in one line, not by a traceback once the work is done."""
    if os.path.isdir(path):
        raise FlagError(f"{flag}={path!r} is a directory; give the path of a file.")
    check_output_dir(os.path.dirname(os.path.abspath(path)), f"{flag}'s directory")


def validate_distribute_flags():
    """--distribute=multi_worker: TF_CONFIG must describe a cluster this process is part of
    (`ubnas_tf.distribute.parse_tf_config`); returns its `ClusterRole`, None for the other
    strategies. Raises FlagError."""
    if FLAGS.distribute == "multi_worker":
        return parse_tf_config(os.environ.get("TF_CONFIG"))
    if os.environ.get("TF_CONFIG", "").strip():
        print(f"{program_name()}: warning: TF_CONFIG is set but --distribute={FLAGS.distribute}: "
              "this process trains alone and ignores the cluster; pass "
              "--distribute=multi_worker to train on it.", file=sys.stderr)
    return None


def validate_data_flags() -> int:
    """Checks that the dataset is present; returns the training-set size (after --max_examples)."""
    if FLAGS.data_dir is not None and not os.path.isdir(FLAGS.data_dir):
        raise FlagError(f"--data_dir={FLAGS.data_dir!r} is not a directory.")
    try:
        check_available(FLAGS.dataset, FLAGS.data_dir)
    except DatasetError as err:
        raise FlagError(f"--dataset={FLAGS.dataset}: {err}") from err
    streamed = "input_pipeline" in FLAGS and FLAGS.input_pipeline == "stream"
    if streamed and FLAGS.dataset == "fashion_mnist" and _idx_data():
        raise FlagError("--input_pipeline=stream reads tensorflow-datasets, but fashion_mnist "
                        "comes from IDX files here; use --input_pipeline=memory (or auto), or "
                        "--data_dir=<a tensorflow-datasets data dir>.")
    n = get_info(FLAGS.dataset).num_train
    return min(n, FLAGS.max_examples) if FLAGS.max_examples else n


def _idx_data() -> bool:
    return idx_files_present(FLAGS.data_dir or DEFAULT_FASHION_MNIST_DIR)


def validate_search_flags(num_train: int) -> None:
    """The primitives and module registries and the batch; raises FlagError. (The budget is
    checked once its network's cost table is built, `validate_budget_flags`.)"""
    try:
        resolve_primitives(FLAGS.primitives)
    except ValueError as err:
        raise FlagError(f"--primitives: {err}") from err
    check_module_config(FLAGS.module_config)
    heldout = FLAGS.heldout_examples or num_train // 2
    if FLAGS.heldout_examples is not None and heldout >= num_train:
        raise FlagError(f"--heldout_examples={heldout} leaves no training images of the "
                        f"{num_train}; lower it (or raise --max_examples).")
    train = num_train - heldout if FLAGS.heldout_examples else num_train // 2
    for what, n in (("training", train), ("held-out", heldout)):
        if FLAGS.batch_size > n:
            raise FlagError(f"--batch_size={FLAGS.batch_size} is larger than the search's {what} "
                            f"half ({n} examples of {num_train}); lower it or raise "
                            f"--max_examples.")


def validate_budget_flags(cost_table) -> None:
    """--target_mops (or --target_latency_ms) within what the network of
    --target_train_flagfile can cost: `cost_table` is that network's
    (`ubnas_tf.cli._budget.budget_cost_table`), None without a budget. Raises FlagError."""
    if cost_table is None:
        return
    name = f"target_{cost_table.key}"
    target = FLAGS[name].value
    low, high = cost_table.cost_range()
    if not low <= target <= high:
        raise FlagError(f"--{name}={target} is outside what the network of "
                        f"{FLAGS.target_train_flagfile} can cost with these primitives: "
                        f"{low:.3f} to {high:.3f} {cost_table.unit}.")
