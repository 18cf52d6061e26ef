"""absl flag definitions shared by the tools, and their up-front validation.

Each tool calls the ``define_*`` functions it needs at import time, then `validate_*` in
``main`` before any data is read or model built. Validation errors are `FlagError`\\ s whose
message names the flag and what is accepted; tools print them and exit with status 2.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable

from absl import flags

from ubnas_tf.errors import FlagError
from ubnas_tf.rundir import RunDirectory

FLAGS = flags.FLAGS

DATASET_NAMES = ("fashion_mnist", "cifar10", "cifar100", "imagenet2012")
DISTRIBUTE_CHOICES = ("none", "mirrored", "multi_worker", "tpu")


# -- definitions --------------------------------------------------------------------------------


def define_common_flags(default_output_dir: str) -> None:
    flags.DEFINE_string("output_dir", default_output_dir,
                        "Run directory: flags, checkpoints, logs and results are written here "
                        "(see WORKSPACE.md); re-running the same command resumes it.")
    flags.DEFINE_integer("seed", 0, "Random seed; with the same seed a CPU run repeats exactly "
                         "when TensorFlow runs single-threaded (TF_NUM_INTRAOP_THREADS=1, see WORKSPACE.md).",
                         lower_bound=0, upper_bound=2**32 - 1)
    flags.DEFINE_bool("overwrite", False,
                      "Start afresh in --output_dir even if it holds a run made with other flags.")
    flags.DEFINE_enum("distribute", "none", DISTRIBUTE_CHOICES,
                      "tf.distribute strategy: none (one device), mirrored (all local GPUs), "
                      "multi_worker (TF_CONFIG cluster) or tpu.")
    flags.DEFINE_integer("logical_cpus", 0,
                         "Split the CPU into this many logical devices (for testing "
                         "--distribute=mirrored without GPUs); 0 leaves the CPU whole.")
    flags.DEFINE_bool("mixed_precision", False,
                      "Compute in float16 with float32 variables (Keras mixed_float16 policy).")
    flags.DEFINE_integer("steps_per_execution", 1,
                         "Training steps run per tf.function call (fewer Python round trips).")
    flags.DEFINE_integer("verbose", 1,
                         "Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch.")


def define_data_flags(default_dataset: str = "fashion_mnist") -> None:
    flags.DEFINE_string("dataset", default_dataset,
                        f"Dataset name; one of {', '.join(DATASET_NAMES)}.")
    flags.DEFINE_string("data_dir", None,
                        "Where the dataset lives: the IDX files for fashion_mnist (default "
                        "/usr/share/datasets/fashion-mnist), else a tensorflow-datasets data_dir.")
    flags.DEFINE_integer("max_examples", None,
                         "Use only the first N training examples (quick runs); default: all.")
    flags.DEFINE_integer("batch_size", 64, "Examples per training batch (per step, all replicas).")
    flags.DEFINE_integer("epochs", 50, "Maximum number of epochs.")


def define_search_flags() -> None:
    flags.DEFINE_integer("layers", 8, "Number of cells in the supernet (reductions at 1/3, 2/3).")
    flags.DEFINE_integer("init_channels", 16, "Width (channels) of the first cells.")
    flags.DEFINE_list("primitives", None,
                      "Comma-separated candidate ops to search (default: all of "
                      "none, skip_connect, max_pool_3x3, avg_pool_3x3, bconv_3x3, bconv_5x5, "
                      "bdil_conv_3x3, bdil_conv_5x5).")
    flags.DEFINE_integer("k_normal", 8,
                         "Channel sampling ratio K of normal cells: 1/K of the channels go "
                         "through the candidate ops.")
    flags.DEFINE_integer("k_reduce", 4, "Channel sampling ratio K of reduction cells.")
    flags.DEFINE_integer("arch_warmup_epochs", 15,
                         "Epochs of weight-only training before the architecture starts to move.")
    flags.DEFINE_integer("patience", 5,
                         "Stop once the derived genotype has not changed for this many epochs "
                         "(and is decided, see --decided_threshold); 0: never stop early on a "
                         "stable genotype.")
    flags.DEFINE_integer("max_parameter_free", 2,
                         "Collapse guard: stop when the normal cell keeps more parameter-free "
                         "ops than this (and their weight has doubled relative to uniform). "
                         "Off with --target_mops: the budget then sets the share of cheap ops.")
    flags.DEFINE_string("module_config", "universal",
                        "Binary module structure (a name in ubnas_tf.modules.MODULE_CONFIGS).")
    flags.DEFINE_enum("search_weights", "binary", ["binary", "real"],
                      "Binary weights in the search ops (default) or latent real ones (EBNAS).")
    flags.DEFINE_float("weight_lr", 2e-3, "Peak learning rate of the network weights (cosine decay).")
    flags.DEFINE_float("arch_lr", None,
                       "Learning rate of the architecture Adam optimiser; default: "
                       "--arch_travel divided by the number of architecture steps "
                       "(ubnas_tf.search.arch_learning_rate).", lower_bound=0.0)
    flags.DEFINE_float("arch_travel", 6.0,
                       "How far (in logits) Adam may move alpha over the whole search when "
                       "--arch_lr is not given: lr = travel / architecture steps. 6 is what "
                       "DARTS' own schedule allows (3e-4 x 19,550 steps).", lower_bound=0.0)
    flags.DEFINE_float("discretization_weight", 1.5,
                       "Weight of EBNAS' discretisation loss on alpha and beta, ramped in "
                       "linearly over the architecture steps (EBNAS uses 1.5); 0 disables it.",
                       lower_bound=0.0)
    flags.DEFINE_float("decided_threshold", 0.6,
                       "Early stopping needs a decided architecture: the mean weight of the "
                       "derived op on the kept edges, among the ops that can be derived (all "
                       "but none), must reach this (uniform over 7 such ops: 0.143).", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("target_mops", None,
                       "Budget in MOPs (BOPs/64 + FLOPs, as tools/summary.py counts) of the "
                       "evaluation network given by --target_train_flagfile; adds the "
                       "differentiable expected-cost term cost_weight * (E/target - 1)^2 to the "
                       "architecture loss. Default: no budget.", lower_bound=0.0)
    flags.DEFINE_string("target_train_flagfile", None,
                        "The retraining flagfile (tools/train.py) whose network --target_mops "
                        "refers to: its --layers, --init_channels, --stem_multiplier, "
                        "--stem_strides and --module_config are read.")
    flags.DEFINE_float("cost_weight", 50.0,
                       "Weight of the budget term (with --target_mops); see "
                       "ubnas_tf.search.ArchitectureObjective for why 50.", lower_bound=0.0)
    flags.DEFINE_bool("augment", False, "Random crop and flip on both search halves.")


def define_train_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    fv = flag_values
    flags.DEFINE_string("genotype", None, "Path of the genotype.json to retrain (from a search run).", flag_values=fv)
    flags.DEFINE_integer("layers", 8, "Number of cells in the evaluation network.", flag_values=fv)
    flags.DEFINE_integer("init_channels", 32,
                         "Width of the first cells; every cell width must be a multiple of 32 "
                         "(LCE bit packing) unless --allow_unaligned_widths.", flag_values=fv)
    flags.DEFINE_integer("stem_multiplier", 3, "The real stem outputs this many times --init_channels.", flag_values=fv)
    flags.DEFINE_integer("stem_strides", 1,
                         "Total stride of the real stem: 1, 2, 4 or 8 (one stride-2 conv each).", flag_values=fv)
    flags.DEFINE_integer("stage1_epochs", 0,
                         "Epochs of stage 1 (real activations, binary weights); 0 skips it.", flag_values=fv)
    flags.DEFINE_integer("validation_examples", 5000,
                         "Training examples held out to pick the best model (not the test set).", flag_values=fv)
    flags.DEFINE_float("learning_rate", 2e-3, "Peak Adam learning rate (cosine decay per stage).", flag_values=fv)
    flags.DEFINE_float("weight_decay", 0.0,
                       "Decoupled weight decay on real weights (never on latent binary weights).", flag_values=fv)
    flags.DEFINE_float("label_smoothing", 0.1, "Label smoothing of the cross-entropy.", flag_values=fv)
    flags.DEFINE_integer("cutout", 0, "Side of the cutout square in pixels; 0 disables cutout.", flag_values=fv)
    flags.DEFINE_bool("augment", True, "Random crop (padding = image size / 8) and flip.", flag_values=fv)
    flags.DEFINE_float("auxiliary_weight", 0.0,
                       "Weight of the auxiliary head's loss; 0 builds no auxiliary head.", flag_values=fv)
    flags.DEFINE_float("drop_path", 0.0, "Maximum drop-path rate, ramped linearly over each stage.", flag_values=fv)
    flags.DEFINE_string("module_config", "universal",
                        "Binary module structure (a name in ubnas_tf.modules.MODULE_CONFIGS).", flag_values=fv)
    flags.DEFINE_bool("allow_unaligned_widths", False,
                      "Accept binary convs whose input channels are not multiples of 32 (warns).", flag_values=fv)


def validate_train_flags(num_train: int) -> None:
    from ubnas_tf.genotype import Genotype, GenotypeError
    from ubnas_tf.modules import MODULE_CONFIGS

    if not FLAGS.genotype:
        raise FlagError("--genotype is required: the genotype.json of a search run.")
    try:
        Genotype.load(FLAGS.genotype)
    except GenotypeError as err:
        raise FlagError(f"--genotype: {err}") from err
    _positive("layers", FLAGS.layers, 3)
    _positive("init_channels", FLAGS.init_channels)
    _positive("stem_multiplier", FLAGS.stem_multiplier)
    _positive("stage1_epochs", FLAGS.stage1_epochs, 0)
    _positive("validation_examples", FLAGS.validation_examples, 0)
    _positive("cutout", FLAGS.cutout, 0)
    if FLAGS.stem_strides not in (1, 2, 4, 8):
        raise FlagError(f"--stem_strides={FLAGS.stem_strides} is invalid; use 1, 2, 4 or 8.")
    if FLAGS.learning_rate <= 0:
        raise FlagError(f"--learning_rate={FLAGS.learning_rate} must be > 0.")
    for name in ("weight_decay", "auxiliary_weight"):
        if FLAGS[name].value < 0:
            raise FlagError(f"--{name}={FLAGS[name].value} must be >= 0.")
    for name in ("label_smoothing", "drop_path"):
        if not 0 <= FLAGS[name].value < 1:
            raise FlagError(f"--{name}={FLAGS[name].value} must be in [0, 1).")
    if FLAGS.module_config not in MODULE_CONFIGS:
        raise FlagError(f"--module_config={FLAGS.module_config!r} is unknown; use one of "
                        f"{sorted(MODULE_CONFIGS)}.")
    if not FLAGS.allow_unaligned_widths and FLAGS.init_channels % 32:
        raise FlagError(f"--init_channels={FLAGS.init_channels} is not a multiple of 32: LCE "
                        "packs binary activations in 32s. Use 32, 64, ... or pass "
                        "--allow_unaligned_widths.")
    n_train = num_train - min(FLAGS.validation_examples, num_train // 10)
    if FLAGS.batch_size > n_train:
        raise FlagError(f"--batch_size={FLAGS.batch_size} is larger than the {n_train} "
                        "training examples; lower it or raise --max_examples.")


# -- validation ---------------------------------------------------------------------------------


def _positive(name: str, value, minimum: int = 1) -> None:
    if value is None or value < minimum:
        raise FlagError(f"--{name}={value} is invalid; it must be an integer >= {minimum}.")


def validate_common_flags() -> None:
    _positive("steps_per_execution", FLAGS.steps_per_execution)
    if FLAGS.verbose not in (0, 1, 2):
        raise FlagError(f"--verbose={FLAGS.verbose} is invalid; use 0, 1 or 2.")
    if FLAGS.logical_cpus < 0:
        raise FlagError(f"--logical_cpus={FLAGS.logical_cpus} is invalid; use 0 or more.")
    if FLAGS.output_dir is None or not FLAGS.output_dir.strip():
        raise FlagError("--output_dir must name a directory.")
    if os.path.exists(FLAGS.output_dir) and not os.path.isdir(FLAGS.output_dir):
        raise FlagError(f"--output_dir={FLAGS.output_dir!r} exists and is not a directory.")
    if FLAGS.mixed_precision and FLAGS.distribute == "tpu":
        raise FlagError("--mixed_precision uses float16; on TPUs use bfloat16 (not supported here).")


def validate_data_flags() -> int:
    """Checks the data flags and that the dataset is present; returns the training-set size."""
    from ubnas_tf.data import DatasetError, check_available, get_info

    if FLAGS.dataset not in DATASET_NAMES:
        raise FlagError(f"--dataset={FLAGS.dataset!r} is unknown; use one of {list(DATASET_NAMES)}.")
    _positive("batch_size", FLAGS.batch_size)
    _positive("epochs", FLAGS.epochs)
    if FLAGS.max_examples is not None:
        _positive("max_examples", FLAGS.max_examples)
    if FLAGS.data_dir is not None and not os.path.isdir(FLAGS.data_dir):
        raise FlagError(f"--data_dir={FLAGS.data_dir!r} is not a directory.")
    try:
        check_available(FLAGS.dataset, FLAGS.data_dir)
    except DatasetError as err:
        raise FlagError(f"--dataset={FLAGS.dataset}: {err}") from err
    n = get_info(FLAGS.dataset).num_train
    return min(n, FLAGS.max_examples) if FLAGS.max_examples else n


def validate_search_flags(num_train: int) -> None:
    from ubnas_tf.modules import MODULE_CONFIGS
    from ubnas_tf.ops import resolve_primitives

    _positive("layers", FLAGS.layers, 3)
    _positive("init_channels", FLAGS.init_channels)
    _positive("k_normal", FLAGS.k_normal)
    _positive("k_reduce", FLAGS.k_reduce)
    _positive("patience", FLAGS.patience, 0)
    _positive("arch_warmup_epochs", FLAGS.arch_warmup_epochs, 0)
    _positive("max_parameter_free", FLAGS.max_parameter_free, 0)
    if FLAGS.weight_lr <= 0 or (FLAGS.arch_lr is not None and FLAGS.arch_lr <= 0):
        raise FlagError(f"--weight_lr and --arch_lr must be > 0 (got {FLAGS.weight_lr}, "
                        f"{FLAGS.arch_lr}).")
    if FLAGS.arch_lr is None and FLAGS.arch_travel <= 0:
        raise FlagError(f"--arch_travel={FLAGS.arch_travel} must be > 0.")
    try:
        resolve_primitives(FLAGS.primitives)
    except ValueError as err:
        raise FlagError(f"--primitives: {err}") from err
    if FLAGS.module_config not in MODULE_CONFIGS:
        raise FlagError(f"--module_config={FLAGS.module_config!r} is unknown; use one of "
                        f"{sorted(MODULE_CONFIGS)}.")
    c = FLAGS.init_channels
    if c % FLAGS.k_normal:
        raise FlagError(f"--k_normal={FLAGS.k_normal} does not divide --init_channels={c}; the "
                        f"normal cells need a width divisible by K.")
    if (2 * c) % FLAGS.k_reduce:
        raise FlagError(f"--k_reduce={FLAGS.k_reduce} does not divide the first reduction cell "
                        f"width 2 x --init_channels = {2 * c}.")
    if FLAGS.arch_warmup_epochs >= FLAGS.epochs:
        raise FlagError(f"--arch_warmup_epochs={FLAGS.arch_warmup_epochs} must be smaller than "
                        f"--epochs={FLAGS.epochs}, or the architecture never moves.")
    if FLAGS.target_train_flagfile is not None and FLAGS.target_mops is None:
        raise FlagError("--target_train_flagfile is only used with --target_mops; give a budget "
                        "or drop it.")
    if FLAGS.target_mops is not None:
        _check_budget()
    half = num_train // 2
    if FLAGS.batch_size > half:
        raise FlagError(f"--batch_size={FLAGS.batch_size} is larger than the search's training "
                        f"half ({half} examples of {num_train}); lower it or raise --max_examples.")


def read_eval_network(path: str):
    """The evaluation network a retraining flagfile describes.

    Returns ``(EvalNetworkConfig, module_config)`` from the flagfile's ``--layers``,
    ``--init_channels``, ``--stem_multiplier``, ``--stem_strides`` and ``--module_config``
    (tools/train.py's defaults for any it omits); other flags in it are ignored.
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
        raise FlagError(f"--target_train_flagfile={path!r}: {err}") from err
    config = EvalNetworkConfig(layers=fv.layers, init_channels=fv.init_channels,
                               stem_multiplier=fv.stem_multiplier, stem_strides=fv.stem_strides)
    return config, fv.module_config


@functools.lru_cache(maxsize=4)
def search_cost_table(dataset: str, primitives: tuple[str, ...] | None, eval_flagfile: str,
                      steps: int = 4):
    """The `ubnas_tf.search.budget.CostTable` of `eval_flagfile`'s network on `dataset`."""
    from ubnas_tf.data import get_info
    from ubnas_tf.ops import resolve_primitives
    from ubnas_tf.search.budget import build_cost_table

    config, module_config = read_eval_network(eval_flagfile)
    info = get_info(dataset)
    return build_cost_table(resolve_primitives(primitives), info.image_shape, info.num_classes,
                            config, module_config, steps)


def _check_budget() -> None:
    if not FLAGS.target_train_flagfile:
        raise FlagError("--target_mops needs --target_train_flagfile: the tools/train.py flagfile "
                        "of the network the budget refers to (e.g. flags/fashion_mnist_train.flags).")
    if FLAGS.target_mops <= 0:
        raise FlagError(f"--target_mops={FLAGS.target_mops} must be > 0 (MOPs).")
    primitives = tuple(FLAGS.primitives) if FLAGS.primitives else None
    table = search_cost_table(FLAGS.dataset, primitives, FLAGS.target_train_flagfile)
    low, high = table.range_mops()
    if not low <= FLAGS.target_mops <= high:
        raise FlagError(f"--target_mops={FLAGS.target_mops} is outside what the network of "
                        f"{FLAGS.target_train_flagfile} can cost with these primitives: "
                        f"{low:.3f} to {high:.3f} MOPs.")


# -- run directories ----------------------------------------------------------------------------

# Flags that do not change a run's result, so they are not recorded in its directory.
NOT_RECORDED = frozenset({"logical_cpus", "verbose", "steps_per_execution", "overwrite"})


def prepare_run(tool: str, validate_tool, absolute_paths: Iterable[str] = ()):
    """Validates the common, data and tool flags (``validate_tool(num_train)``), splits the
    CPU if asked, and prepares ``--output_dir`` as the `tool`'s run directory.

    Returns the `ubnas_tf.rundir.RunDirectory`; raises `FlagError` before any heavy work.
    Flags named in `absolute_paths` are recorded as absolute paths.
    """
    validate_common_flags()
    num_train = validate_data_flags()
    validate_tool(num_train)
    from ubnas_tf.distribute import split_cpu

    split_cpu(FLAGS.logical_cpus)
    names = {f.name for f in FLAGS.get_flags_for_module(__name__)} - NOT_RECORDED
    values = flag_values(sorted(names))
    for name in absolute_paths:
        if values.get(name):
            values[name] = os.path.abspath(values[name])
    run = RunDirectory(FLAGS.output_dir, tool)
    run.prepare(values, FLAGS.overwrite)
    return run


# -- recording ----------------------------------------------------------------------------------


def flag_values(names: Iterable[str]) -> dict:
    """The current values of `names`, JSON-serialisable."""
    return {n: FLAGS[n].value for n in names}
