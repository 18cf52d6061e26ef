"""absl flag definitions shared by the tools, and their up-front validation.

Each tool calls the ``define_*`` functions it needs at import time and runs with
``app.run(main, flags_parser=parse_command_line)``. What a flag's value alone
decides is absl's job: bounds, enums, required flags and (multi-flag) validators, checked
while the command line is parsed; `parse_command_line` turns absl's errors into one line that
names the flag and what is accepted, and exit status 2. What needs the file system, the
dataset or a registry is checked by `validate_*` in ``main``, before any data is read or
model built; those raise `FlagError`, which the tools print the same way.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Iterable, Sequence

from absl import flags

from ubnas_tf.errors import FlagError
from ubnas_tf.rundir import RunDirectory

FLAGS = flags.FLAGS

DATASET_NAMES = ("fashion_mnist", "cifar10", "cifar100", "imagenet2012")
# Only strategies that tests run (say in --distribute's help how far); TPUStrategy is not
# offered: nothing here could exercise it.
DISTRIBUTE_CHOICES = ("none", "mirrored", "multi_worker")


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


def _check(ok: bool, message: str) -> bool:
    """For multi-flag validators whose message needs the values."""
    if not ok:
        raise flags.ValidationError(message)
    return True


# -- definitions --------------------------------------------------------------------------------


def define_run_flags(default_output_dir: str) -> None:
    """Where a run goes, its seed and how much it prints (every tool that writes a run)."""
    flags.DEFINE_string("output_dir", default_output_dir,
                        "Run directory: flags, checkpoints, logs and results are written here "
                        "(see WORKSPACE.md); re-running the same command resumes it.")
    flags.DEFINE_integer("seed", 0, "Random seed; with the same seed a CPU run repeats exactly "
                         "when TensorFlow runs single-threaded (TF_NUM_INTRAOP_THREADS=1, see "
                         "WORKSPACE.md).", lower_bound=0, upper_bound=2**32 - 1)
    flags.DEFINE_bool("overwrite", False,
                      "Start afresh in --output_dir even if it holds a run made with other flags.")
    flags.DEFINE_integer("verbose", 1,
                         "Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch.")
    flags.register_validator("verbose", lambda v: v in (0, 1, 2),
                             message="is invalid; use 0, 1 or 2.")


def define_device_flags() -> None:
    """How the run uses the hardware: strategy, CPU split, precision, steps per call."""
    flags.DEFINE_enum("distribute", "none", DISTRIBUTE_CHOICES,
                      "tf.distribute strategy: none (one device); mirrored (all local GPUs, or "
                      "the --logical_cpus CPU devices; tested only for the search's training "
                      "step on 2 logical CPUs, not for whole runs of the tools); multi_worker "
                      "(MultiWorkerMirroredStrategy over the cluster that the TF_CONFIG "
                      "environment variable describes, one process per worker, all with the "
                      "same flags and an --output_dir on a shared filesystem, which only the "
                      "chief writes; tested with tools/search.py and tools/train.py on two "
                      "local CPU workers; see the README, 'More than one machine').")
    flags.DEFINE_integer("logical_cpus", 0,
                         "Split the CPU into this many logical devices (for testing "
                         "--distribute=mirrored without GPUs); 0 leaves the CPU whole.",
                         lower_bound=0)
    flags.DEFINE_bool("mixed_precision", False,
                      "Compute in float16 with float32 variables (Keras mixed_float16 policy).")
    flags.DEFINE_integer("steps_per_execution", 1,
                         "Training steps run per tf.function call (fewer Python round trips).",
                         lower_bound=1)


def define_common_flags(default_output_dir: str) -> None:
    """The run, device and checkpoint flags of tools/search.py and tools/train.py."""
    define_run_flags(default_output_dir)
    define_device_flags()
    flags.DEFINE_integer("checkpoint_every_steps", 0,
                         "Also save a checkpoint every N training steps within an epoch, so a "
                         "run killed in a long epoch resumes from that step (same batches as "
                         "an uninterrupted run); 0 saves at epoch ends only. SIGTERM always "
                         "saves one at the next step and exits with status 75. May change "
                         "when resuming.", lower_bound=0)


def define_data_flags(default_dataset: str = "fashion_mnist", streamable: bool = True) -> None:
    """--dataset, --data_dir, --max_examples, --batch_size, --epochs and, for tools that can
    stream the data (`streamable`), --input_pipeline."""
    flags.DEFINE_enum("dataset", default_dataset, DATASET_NAMES, "Dataset name.")
    flags.DEFINE_string("data_dir", None,
                        "Where the dataset lives: the IDX files for fashion_mnist (default "
                        "/usr/share/datasets/fashion-mnist), else a tensorflow-datasets data_dir.")
    flags.DEFINE_integer("max_examples", None,
                         "Use only the first N training examples (quick runs); default: all.",
                         lower_bound=1)
    if streamable:
        flags.DEFINE_enum("input_pipeline", "auto", ("auto", "memory", "stream"),
                          "How the data are read: memory (decoded once into RAM; fast for small "
                          "datasets), stream (read, decoded and augmented on the fly from "
                          "tensorflow-datasets, flat memory; not for the Fashion-MNIST IDX "
                          "files) or auto (stream imagenet2012, keep the others in memory).")
    flags.DEFINE_integer("batch_size", 64, "Examples per training batch (per step, all replicas).",
                         lower_bound=1)
    flags.DEFINE_integer("epochs", 50, "Maximum number of epochs.", lower_bound=1)


def define_search_flags() -> None:
    """The search's flags (after `define_data_flags`, whose --epochs they are checked with)."""
    flags.DEFINE_integer("layers", 8, "Number of cells in the supernet (reductions at 1/3, 2/3).",
                         lower_bound=3)
    flags.DEFINE_integer("init_channels", 16, "Width (channels) of the first cells.",
                         lower_bound=1)
    flags.DEFINE_integer("stem_strides", 1,
                         "Total stride of the supernet's real stem: 1, 2, 4 or 8, one stride-2 "
                         "3x3 conv per halving (8 for 224x224 ImageNet, as PC-DARTS).")
    flags.register_validator("stem_strides", lambda v: v in (1, 2, 4, 8),
                             message="is invalid; use 1, 2, 4 or 8.")
    flags.DEFINE_integer("heldout_examples", None,
                         "Training images held out for the architecture steps (the rest train "
                         "the weights); default: half of them. Smaller than the weight half in "
                         "a PC-DARTS-style proxy search, where it cycles.", lower_bound=1)
    flags.DEFINE_list("primitives", None,
                      "Comma-separated candidate ops to search (default: all of "
                      "none, skip_connect, max_pool_3x3, avg_pool_3x3, bconv_3x3, bconv_5x5, "
                      "bdil_conv_3x3, bdil_conv_5x5).")
    flags.DEFINE_integer("k_normal", 8,
                         "Channel sampling ratio K of normal cells: 1/K of the channels go "
                         "through the candidate ops. 8 and 4 retrain equally well, 8 searches "
                         "faster (docs/studies.md).", lower_bound=1)
    flags.DEFINE_integer("k_reduce", 4,
                         "Channel sampling ratio K of reduction cells. 4 retrains about half a "
                         "point better than 8 (docs/studies.md).", lower_bound=1)
    flags.register_multi_flags_validator(
        ["k_normal", "init_channels"],
        lambda d: _check(d["init_channels"] % d["k_normal"] == 0,
                         f"--k_normal={d['k_normal']} does not divide --init_channels="
                         f"{d['init_channels']}; the normal cells need a width divisible by K."))
    flags.register_multi_flags_validator(
        ["k_reduce", "init_channels"],
        lambda d: _check((2 * d["init_channels"]) % d["k_reduce"] == 0,
                         f"--k_reduce={d['k_reduce']} does not divide the first reduction cell "
                         f"width 2 x --init_channels = {2 * d['init_channels']}."))
    flags.DEFINE_integer("arch_warmup_epochs", 15,
                         "Epochs of weight-only training before the architecture starts to move.",
                         lower_bound=0)
    flags.register_multi_flags_validator(
        ["arch_warmup_epochs", "epochs"],
        lambda d: _check(d["arch_warmup_epochs"] < d["epochs"],
                         f"--arch_warmup_epochs={d['arch_warmup_epochs']} must be smaller than "
                         f"--epochs={d['epochs']}, or the architecture never moves."))
    flags.DEFINE_integer("patience", 5,
                         "Stop once the derived genotype has not changed for this many epochs "
                         "(and is decided, see --decided_threshold); 0: never stop early on a "
                         "stable genotype.", lower_bound=0)
    flags.DEFINE_integer("max_parameter_free", 2,
                         "Collapse guard: stop when the normal cell keeps more parameter-free "
                         "ops than this (and their weight has doubled relative to uniform). "
                         "Off with --target_mops: the budget then sets the share of cheap ops.",
                         lower_bound=0)
    flags.DEFINE_string("module_config", "universal",
                        "Binary module structure (a name in ubnas_tf.modules.MODULE_CONFIGS).")
    flags.DEFINE_enum("search_weights", "binary", ["binary", "real"],
                      "Binary weights in the search ops (default) or latent real ones (EBNAS).")
    flags.DEFINE_float("weight_lr", 2e-3, "Peak learning rate of the network weights (cosine decay).")
    flags.register_validator("weight_lr", lambda v: v > 0, message="must be > 0.")
    flags.DEFINE_float("arch_lr", None,
                       "Learning rate of the architecture Adam optimiser; default: "
                       "--arch_travel divided by the number of architecture steps "
                       "(ubnas_tf.search.arch_learning_rate).")
    flags.register_validator("arch_lr", lambda v: v is None or v > 0, message="must be > 0.")
    flags.DEFINE_float("arch_travel", 6.0,
                       "How far (in logits) Adam may move alpha over the whole search when "
                       "--arch_lr is not given: lr = travel / architecture steps. 6 is what "
                       "DARTS' own schedule allows (3e-4 x 19,550 steps).")
    flags.register_multi_flags_validator(
        ["arch_travel", "arch_lr"],
        lambda d: _check(d["arch_lr"] is not None or d["arch_travel"] > 0,
                         f"--arch_travel={d['arch_travel']} must be > 0 (or give --arch_lr)."))
    flags.DEFINE_float("discretization_weight", 1.5,
                       "Weight of EBNAS' discretisation loss on alpha and beta, ramped in "
                       "linearly over the architecture steps (EBNAS uses 1.5); 0 disables it.",
                       lower_bound=0.0)
    flags.DEFINE_float("decided_threshold", 0.6,
                       "Early stopping needs a decided architecture: the mean weight of the "
                       "derived op on the kept edges, among the ops that can be derived (all "
                       "but none), must reach this (uniform over 7 such ops: 0.143).",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("target_mops", None,
                       "Budget in MOPs (BOPs/64 + FLOPs, as tools/summary.py counts) of the "
                       "evaluation network given by --target_train_flagfile; adds the "
                       "differentiable expected-cost term cost_weight * (E/target - 1)^2 to the "
                       "architecture loss. Default: no budget.")
    flags.register_validator("target_mops", lambda v: v is None or v > 0,
                             message="must be > 0 (MOPs).")
    flags.DEFINE_string("target_train_flagfile", None,
                        "The retraining flagfile (tools/train.py) whose network --target_mops "
                        "refers to: its --layers, --init_channels, --stem_multiplier and "
                        "--stem_strides are read; the module structure is the search's "
                        "--module_config (a flagfile naming another one is refused).")
    flags.register_multi_flags_validator(["target_mops", "target_train_flagfile"], _budget_pair)
    flags.DEFINE_float("cost_weight", 50.0,
                       "Weight of the budget term (with --target_mops); see "
                       "ubnas_tf.search.ArchitectureObjective for why 50.", lower_bound=0.0)
    flags.DEFINE_bool("augment", False, "Random crop and flip on both search halves.")


def _budget_pair(d: dict) -> bool:
    _check(d["target_mops"] is None or d["target_train_flagfile"],
           "--target_mops needs --target_train_flagfile: the tools/train.py flagfile of the "
           "network the budget refers to (e.g. flags/fashion_mnist_train.flags).")
    return _check(d["target_train_flagfile"] is None or d["target_mops"] is not None,
                  "--target_train_flagfile is only used with --target_mops; give a budget or "
                  "drop it.")


TRAIN_FLAG_NAMES = ("genotype", "layers", "init_channels", "stem_multiplier", "stem_strides",
                    "stage1_epochs", "validation_examples", "learning_rate", "weight_decay",
                    "label_smoothing", "cutout", "augment", "auxiliary_weight", "drop_path",
                    "module_config", "calibrate_thresholds", "allow_unaligned_widths")


def define_train_flags(flag_values: flags.FlagValues = FLAGS,
                       only: Sequence[str] = TRAIN_FLAG_NAMES) -> None:
    """The retraining flags (the evaluation network and its recipe); `only` picks some of
    them, for a tool that trains the same network in another way (tools/compare_modules.py)."""
    unknown = set(only) - set(TRAIN_FLAG_NAMES)
    if unknown:
        raise ValueError(f"not training flags: {sorted(unknown)}")
    fv = flag_values

    def define(kind, name, default, help_text, **kwargs):
        if name in only:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=fv, **kwargs)

    def validate(name, checker, message):
        if name in only:
            flags.register_validator(name, checker, message=message, flag_values=fv)

    define("string", "genotype", None, "The genotype.json of a search run, to retrain.")
    define("integer", "layers", 8, "Number of cells in the evaluation network.", lower_bound=3)
    define("integer", "init_channels", 32,
           "Width of the first cells; every cell width must be a multiple of 32 (LCE bit "
           "packing) unless --allow_unaligned_widths.", lower_bound=1)
    define("integer", "stem_multiplier", 3, "The real stem outputs this many times "
           "--init_channels.", lower_bound=1)
    define("integer", "stem_strides", 1,
           "Total stride of the real stem: 1, 2, 4 or 8 (one stride-2 conv each).")
    validate("stem_strides", lambda v: v in (1, 2, 4, 8), "is invalid; use 1, 2, 4 or 8.")
    define("integer", "stage1_epochs", 0,
           "Epochs of stage 1 (real activations, binary weights); 0 skips it.", lower_bound=0)
    define("integer", "validation_examples", 5000,
           "Training examples held out to pick the best model (not the test set).",
           lower_bound=0)
    define("float", "learning_rate", 2e-3, "Peak Adam learning rate (cosine decay per stage).")
    validate("learning_rate", lambda v: v > 0, "must be > 0.")
    define("float", "weight_decay", 0.0,
           "Decoupled weight decay on real weights (never on latent binary weights).",
           lower_bound=0.0)
    define("float", "label_smoothing", 0.1, "Label smoothing of the cross-entropy.")
    validate("label_smoothing", lambda v: 0 <= v < 1, "must be in [0, 1).")
    define("integer", "cutout", 0, "Side of the cutout square in pixels; 0 disables cutout.",
           lower_bound=0)
    define("bool", "augment", True, "Random crop (padding = image size / 8) and flip.")
    define("float", "auxiliary_weight", 0.0,
           "Weight of the auxiliary head's loss; 0 builds no auxiliary head.", lower_bound=0.0)
    define("float", "drop_path", 0.0, "Maximum drop-path rate, ramped linearly over each stage.")
    validate("drop_path", lambda v: 0 <= v < 1, "must be in [0, 1).")
    define("string", "module_config", "universal",
           "Binary module structure (a name in ubnas_tf.modules.MODULE_CONFIGS).")
    define("bool", "calibrate_thresholds", True,
           "Start stage 2's learnable sign thresholds (module structures with "
           "learnable_threshold_approx_sign) at the mean of their inputs on one training "
           "batch, instead of at 0; no effect on other structures or without stage 1.")
    define("bool", "allow_unaligned_widths", False,
           "Accept binary convs whose input channels are not multiples of 32 (warns).")
    if {"init_channels", "allow_unaligned_widths"} <= set(only):
        flags.register_multi_flags_validator(
            ["init_channels", "allow_unaligned_widths"],
            lambda d: _check(d["allow_unaligned_widths"] or d["init_channels"] % 32 == 0,
                             f"--init_channels={d['init_channels']} is not a multiple of 32: "
                             "LCE packs binary activations in 32s. Use 32, 64, ... or pass "
                             "--allow_unaligned_widths."),
            flag_values=fv)


# -- validation of what absl cannot see ---------------------------------------------------------


def check_module_config(name: str) -> None:
    from ubnas_tf.modules import MODULE_CONFIGS

    if name not in MODULE_CONFIGS:
        raise FlagError(f"--module_config={name!r} is unknown; use one of "
                        f"{sorted(MODULE_CONFIGS)}.")


def validate_train_flags(num_train: int) -> None:
    """The genotype file, the module registry and the batch against the data; raises FlagError."""
    from ubnas_tf.genotype import Genotype, GenotypeError

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


def validate_distribute_flags():
    """--distribute=multi_worker: TF_CONFIG must describe a cluster this process is part of
    (`ubnas_tf.distribute.parse_tf_config`); returns its `ClusterRole`, None for the other
    strategies. Raises FlagError."""
    from ubnas_tf.distribute import parse_tf_config

    if FLAGS.distribute == "multi_worker":
        return parse_tf_config(os.environ.get("TF_CONFIG"))
    if os.environ.get("TF_CONFIG", "").strip():
        print(f"{program_name()}: warning: TF_CONFIG is set but --distribute={FLAGS.distribute}: "
              "this process trains alone and ignores the cluster; pass "
              "--distribute=multi_worker to train on it.", file=sys.stderr)
    return None


def validate_data_flags() -> int:
    """Checks that the dataset is present; returns the training-set size (after --max_examples)."""
    from ubnas_tf.data import DatasetError, check_available, get_info

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
    from ubnas_tf.data.datasets import DEFAULT_FASHION_MNIST_DIR, idx_files_present

    return idx_files_present(FLAGS.data_dir or DEFAULT_FASHION_MNIST_DIR)


def validate_search_flags(num_train: int) -> None:
    """The primitives and module registries, the budget and the batch; raises FlagError."""
    from ubnas_tf.ops import resolve_primitives

    try:
        resolve_primitives(FLAGS.primitives)
    except ValueError as err:
        raise FlagError(f"--primitives: {err}") from err
    check_module_config(FLAGS.module_config)
    if FLAGS.target_mops is not None:
        _check_budget()
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


def read_eval_network(path: str, module_config: str | None = None):
    """The evaluation network a retraining flagfile describes.

    Returns ``(EvalNetworkConfig, module_config)`` from the flagfile's ``--layers``,
    ``--init_channels``, ``--stem_multiplier``, ``--stem_strides`` and ``--module_config``
    (tools/train.py's defaults for any it omits); other flags in it are ignored. Given
    `module_config` (the search's structure, which its genotype will be retrained with),
    that is the network's structure; a flagfile naming another one is refused, since a
    budget counted on it would be for a network the search does not build.
    """
    from ubnas_tf.nets.eval_network import EvalNetworkConfig

    if not os.path.isfile(path):
        raise FlagError(f"--target_train_flagfile={path!r} is not a file; give a tools/train.py "
                        "flagfile such as flags/fashion_mnist_train.flags.")
    fv = flags.FlagValues()
    define_train_flags(fv)
    try:
        fv(["train", f"--flagfile={path}"], known_only=True)
    except flags.Error as err:
        raise FlagError(f"--target_train_flagfile={path!r}: {explain_flag_error(err, fv)}") from err
    config = EvalNetworkConfig(layers=fv.layers, init_channels=fv.init_channels,
                               stem_multiplier=fv.stem_multiplier, stem_strides=fv.stem_strides)
    if module_config is None:
        return config, fv.module_config
    if fv["module_config"].present and fv.module_config != module_config:
        raise FlagError(f"--module_config={module_config} but --target_train_flagfile={path!r} "
                        f"retrains with --module_config={fv.module_config}: the budget would "
                        "count another network than the one searched; make them the same (or "
                        "leave --module_config out of the flagfile).")
    return config, module_config


@functools.lru_cache(maxsize=4)
def search_cost_table(dataset: str, primitives: tuple[str, ...] | None, eval_flagfile: str,
                      steps: int = 4, module_config: str | None = None):
    """The `ubnas_tf.search.budget.CostTable` of `eval_flagfile`'s network on `dataset`, with
    the search's `module_config` (`read_eval_network`)."""
    from ubnas_tf.data import get_info
    from ubnas_tf.ops import resolve_primitives
    from ubnas_tf.search.budget import build_cost_table

    config, module_config = read_eval_network(eval_flagfile, module_config)
    info = get_info(dataset)
    return build_cost_table(resolve_primitives(primitives), info.image_shape, info.num_classes,
                            config, module_config, steps)


def _check_budget() -> None:
    """--target_mops within what the network of --target_train_flagfile can cost."""
    primitives = tuple(FLAGS.primitives) if FLAGS.primitives else None
    table = search_cost_table(FLAGS.dataset, primitives, FLAGS.target_train_flagfile,
                              module_config=FLAGS.module_config)
    low, high = table.range_mops()
    if not low <= FLAGS.target_mops <= high:
        raise FlagError(f"--target_mops={FLAGS.target_mops} is outside what the network of "
                        f"{FLAGS.target_train_flagfile} can cost with these primitives: "
                        f"{low:.3f} to {high:.3f} MOPs.")


# -- run directories ----------------------------------------------------------------------------

# Flags that do not change a run's result, so they are not recorded in its directory.
NOT_RECORDED = frozenset({"logical_cpus", "verbose", "steps_per_execution", "overwrite",
                          "checkpoint_every_steps"})
# Flags that may differ between the processes of a multi-worker run.
PER_PROCESS = frozenset({"output_dir", "verbose", "overwrite"})


def prepare_run(tool: str, validate_tool, absolute_paths: Iterable[str] = ()):
    """Validates the common, data and tool flags (``validate_tool(num_train)``), splits the
    CPU if asked, creates the --distribute strategy, and prepares ``--output_dir`` as the
    `tool`'s run directory.

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
    validate_run_flags()
    role = validate_distribute_flags()
    num_train = validate_data_flags()
    from ubnas_tf.distribute import make_strategy, same_on_every_worker, split_cpu

    split_cpu(FLAGS.logical_cpus)
    strategy = make_strategy(FLAGS.distribute)
    _on_every_worker(strategy, lambda: validate_tool(num_train))
    everything = {f.name for f in FLAGS.get_flags_for_module(__name__)}
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


def _on_every_worker(strategy, action):
    """Runs `action` (which may raise FlagError) and, in a multi-worker run, waits for every
    worker to run its own: a FlagError on any worker stops all of them (a collective)."""
    from ubnas_tf.distribute import agree_all

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


# -- recording ----------------------------------------------------------------------------------


def flag_values(names: Iterable[str]) -> dict:
    """The current values of `names`, JSON-serialisable."""
    return {n: FLAGS[n].value for n in names}
