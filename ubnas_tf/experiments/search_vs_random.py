"""Does the searched genotype beat chance? Searched vs random vs hand-designed cells at equal OPs.

Retrains, with ONE recipe and ONE seed, (a) the searched genotype (`--genotype`), (b)
`--random` genotypes drawn uniformly from the same primitives and kept within
`--ops_tolerance` of the searched genotype's OPs (seeded rejection sampling), and (c) the
hand-designed cell whose OPs are closest to the searched ones, then prints a table and a
verdict: is the searched accuracy above the random mean + 2 sample standard deviations, and
above the hand design?

    python benchmarks/search_vs_random.py --genotype=genotypes/fashion_mnist_full.json

OPs = BOPs/64 + FLOPs of the evaluation network, exactly as tools/summary.py counts them
(`model_cost(build_eval_network(...)).ops`). The default recipe is the evaluation network
and optimiser of flags/fashion_mnist_train.flags on a shorter schedule: 20,000 training
images (2,000 of them held out for validation), 1 epoch with real activations + 3 binary,
evaluated on the whole Fashion-MNIST test set. `--train_flagfile` takes the network and
optimiser flags from another training flagfile instead.

Everything goes to --output_dir: `flags.json`/`flags.txt` (the settings; a directory made
with other settings is refused unless --overwrite), `genotypes/NAME.json` (searched copy,
random draws, hand design), one tools/train.py run directory per genotype (`NAME/`;
`tools/train.py --flagfile=NAME/flags.txt` repeats it) and `results.json` (all written
atomically). Re-running the same command resumes: finished trainings are skipped, a
half-finished one resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from absl import app, flags

from ubnas_tf.flags import present_as_main
from ubnas_tf.tables import text_table

FLAGS = flags.FLAGS
TOOL = "search_vs_random"
RESULTS_FORMAT = "ubnas-search-vs-random/1"
DATASET_NAMES = ("fashion_mnist", "cifar10", "cifar100", "imagenet2012")

# Flags a --train_flagfile may set (the network and the optimiser: the recipe). Its schedule
# and paths are not taken: the benchmark's own --epochs etc. apply.
RECIPE_FLAGS = ("dataset", "data_dir", "seed", "layers", "init_channels", "stem_multiplier",
                "stem_strides", "batch_size", "learning_rate", "weight_decay", "label_smoothing",
                "cutout", "augment", "auxiliary_weight", "drop_path", "module_config",
                "allow_unaligned_widths")
IGNORED_TRAIN_FLAGS = ("output_dir", "genotype", "epochs", "stage1_epochs", "max_examples",
                       "validation_examples", "overwrite", "verbose", "distribute",
                       "logical_cpus", "mixed_precision", "steps_per_execution")
# Flags that do not change the benchmark's result (not recorded, free to change on resume).
NOT_RECORDED = ("overwrite", "verbose", "train_flagfile", "metric")
_OWN_FLAGS: list[str] = []  # names defined by define_flags()

OP_CODES = {"none": "--", "skip_connect": "sk", "max_pool_3x3": "mp", "avg_pool_3x3": "ap",
            "bconv_3x3": "c3", "bconv_5x5": "c5", "bdil_conv_3x3": "d3", "bdil_conv_5x5": "d5"}


class BenchmarkError(ValueError):
    """A setting that cannot work; the message names the flag."""


# -- flags ---------------------------------------------------------------------------------------


def define_flags() -> None:
    """Defines the benchmark's absl flags (called when run as a script, not on import)."""
    before = set(FLAGS)
    flags.DEFINE_string("genotype", None, "The searched genotype.json to test against chance.")
    flags.mark_flag_as_required("genotype")
    flags.register_validator("genotype", lambda v: v is None or os.path.isfile(v),
                             message="--genotype must name an existing genotype.json file.")
    flags.DEFINE_string("output_dir", "runs/search_vs_random",
                        "Benchmark directory: genotypes, one training run per genotype, "
                        "results.json; re-running the same command resumes it.")
    flags.DEFINE_bool("overwrite", False,
                      "Start afresh in --output_dir even if it holds a benchmark made with other "
                      "settings (deletes it).")
    flags.DEFINE_integer("random", 3, "Number of random genotypes to retrain (>= 2 for a "
                         "sample standard deviation; 3 or more recommended).", lower_bound=2)
    flags.DEFINE_list("primitives", None,
                      "Ops the random genotypes are drawn from (uniformly, never 'none'); "
                      "default: the non-'none' ops of ubnas_tf.ops.DEFAULT_PRIMITIVES. Hand "
                      "designs are limited to these ops too.")
    flags.DEFINE_float("ops_tolerance", 0.15,
                       "Random genotypes (and, if it can, the hand design) must have OPs within "
                       "this relative distance of the searched genotype's OPs.",
                       lower_bound=0.0, upper_bound=10.0)
    flags.register_validator("ops_tolerance", lambda v: v > 0,
                             message="--ops_tolerance must be > 0 (a relative distance).")
    flags.DEFINE_integer("max_tries", 100_000,
                         "Random genotypes drawn at most before giving up on finding --random of "
                         "them within --ops_tolerance.", lower_bound=1)
    flags.DEFINE_integer("sample_seed", 0, "Seed of the random-genotype draws.", lower_bound=0)
    flags.DEFINE_string("hand_design", "closest",
                        "Hand-designed cell to retrain: 'closest' (of all the designs below, the "
                        "one whose OPs are closest to the searched genotype's) or a design: "
                        "all_K (every edge K), res_K (ResNet-like: K + skip_connect per node) or "
                        "pool_K (K + max_pool_3x3 per node) for a binary conv K among "
                        "--primitives, e.g. all_bconv_3x3.")
    flags.DEFINE_enum("metric", "best", ["best", "final"],
                      "Accuracy compared in the verdict: the test accuracy of the best-validation "
                      "model (model_best.keras) or of the model after the last epoch.")
    flags.DEFINE_string("train_flagfile", None,
                        "Take the network and optimiser flags (" + ", ".join(RECIPE_FLAGS) + ") "
                        "from this tools/train.py flagfile, e.g. flags/fashion_mnist_train.flags; "
                        "flags given on the command line win. Its schedule and paths are ignored.")
    # The recipe: the evaluation network and optimiser of flags/fashion_mnist_train.flags.
    flags.DEFINE_enum("dataset", "fashion_mnist", DATASET_NAMES, "Dataset to retrain on.")
    flags.DEFINE_string("data_dir", None,
                        "Where the dataset lives (fashion_mnist: the IDX files, default "
                        "/usr/share/datasets/fashion-mnist; else a tensorflow-datasets data_dir).")
    flags.DEFINE_integer("seed", 0, "Training seed (the same for every genotype).")
    flags.DEFINE_integer("max_examples", 20_000,
                         "Training images used (the first N; 0: all); --validation_examples of "
                         "them are held out for validation.", lower_bound=0)
    flags.DEFINE_integer("validation_examples", 2000,
                         "Training images held out to pick the best-validation model (at most a "
                         "tenth of the training images).", lower_bound=0)
    flags.DEFINE_integer("stage1_epochs", 1,
                         "Epochs of stage 1 (real activations, binary weights); 0 skips it.",
                         lower_bound=0)
    flags.DEFINE_integer("epochs", 3, "Epochs of stage 2 (fully binary).", lower_bound=1)
    flags.DEFINE_integer("batch_size", 128, "Training batch size.", lower_bound=1)
    flags.DEFINE_integer("layers", 5, "Cells of the evaluation network.", lower_bound=3)
    flags.DEFINE_integer("init_channels", 32, "Width of the first cells (a multiple of 32 unless "
                         "--allow_unaligned_widths).", lower_bound=1)
    flags.DEFINE_integer("stem_multiplier", 4, "The real stem outputs this many times "
                         "--init_channels.", lower_bound=1)
    flags.DEFINE_integer("stem_strides", 2, "Total stride of the real stem: 1, 2, 4 or 8.")
    flags.register_validator("stem_strides", lambda v: v in (1, 2, 4, 8),
                             message="--stem_strides must be 1, 2, 4 or 8.")
    flags.DEFINE_float("learning_rate", 2e-3, "Peak Adam learning rate (cosine decay per stage).")
    flags.register_validator("learning_rate", lambda v: v > 0,
                             message="--learning_rate must be > 0.")
    flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay on real weights.",
                       lower_bound=0.0)
    flags.DEFINE_float("label_smoothing", 0.05, "Label smoothing of the cross-entropy, in [0, 1).",
                       lower_bound=0.0)
    flags.register_validator("label_smoothing", lambda v: v < 1,
                             message="--label_smoothing must be in [0, 1).")
    flags.DEFINE_integer("cutout", 0, "Cutout square side in pixels; 0 disables it.",
                         lower_bound=0)
    flags.DEFINE_bool("augment", False, "Random crop and flip.")
    flags.DEFINE_float("auxiliary_weight", 0.0, "Weight of the auxiliary head's loss (0: none).",
                       lower_bound=0.0)
    flags.DEFINE_float("drop_path", 0.0, "Maximum drop-path rate, in [0, 1).", lower_bound=0.0)
    flags.register_validator("drop_path", lambda v: v < 1, message="--drop_path must be in [0, 1).")
    flags.DEFINE_string("module_config", "universal",
                        "Binary module structure (a name in ubnas_tf.modules.MODULE_CONFIGS).")
    flags.DEFINE_bool("allow_unaligned_widths", False,
                      "Accept binary convs whose input channels are not multiples of 32.")
    flags.register_multi_flags_validator(
        ["init_channels", "allow_unaligned_widths"],
        lambda d: d["allow_unaligned_widths"] or d["init_channels"] % 32 == 0,
        message="--init_channels must be a multiple of 32 (LCE packs binary activations in "
                "32s) unless --allow_unaligned_widths.")
    flags.DEFINE_integer("verbose", 1, "Keras progress output: 0 silent, 1 progress bar, 2 one "
                         "line per epoch.", lower_bound=0, upper_bound=2)
    _OWN_FLAGS[:] = sorted(set(FLAGS) - before)


def read_train_flagfile(path: str) -> list[tuple[str, str]]:
    """(name, raw value) pairs of an absl flagfile; booleans as 'true'/'false'."""
    if not os.path.isfile(path):
        raise BenchmarkError(f"--train_flagfile={path!r} does not exist.")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith(("#", "//")):
                continue
            m = re.fullmatch(r"--?([A-Za-z_][\w]*)(?:=(.*))?", line)
            if not m:
                raise BenchmarkError(f"--train_flagfile={path}: line {lineno} ({line!r}) is not "
                                     "a --name=value flag.")
            name, value = m.group(1), m.group(2)
            if value is None:
                # --flag / --noflag (booleans)
                if name.startswith("no") and name[2:] in RECIPE_FLAGS + IGNORED_TRAIN_FLAGS:
                    name, value = name[2:], "false"
                else:
                    value = "true"
            pairs.append((name, value.strip().strip("'\"")))
    return pairs


def apply_train_flagfile(path: str) -> tuple[list[str], list[str]]:
    """Sets the recipe flags from `path` unless given on the command line.

    Returns (taken, ignored) flag names; raises BenchmarkError naming --train_flagfile.
    """
    taken, ignored = [], []
    for name, value in read_train_flagfile(path):
        if name in RECIPE_FLAGS:
            if FLAGS[name].present:
                ignored.append(f"{name} (given on the command line)")
                continue
            try:
                FLAGS[name].parse(value)
            except (flags.IllegalFlagValueError, ValueError) as err:
                raise BenchmarkError(f"--train_flagfile={path}: --{name}={value}: {err}") from err
            taken.append(name)
        elif name in IGNORED_TRAIN_FLAGS:
            ignored.append(name)
        elif name == "flagfile":
            raise BenchmarkError(f"--train_flagfile={path}: nested --flagfile is not supported.")
        else:
            raise BenchmarkError(f"--train_flagfile={path}: unknown training flag --{name}.")
    try:
        FLAGS.validate_all_flags()
    except flags.IllegalFlagValueError as err:
        raise BenchmarkError(f"--train_flagfile={path}: {err}") from err
    return taken, ignored


def recorded_settings() -> dict:
    """The flag values that define the benchmark (recorded in --output_dir/flags.json)."""
    values = {n: FLAGS[n].value for n in _OWN_FLAGS if n not in NOT_RECORDED}
    values["genotype"] = os.path.abspath(values["genotype"])
    if values["data_dir"]:
        values["data_dir"] = os.path.abspath(values["data_dir"])
    return values


# -- OPs ---------------------------------------------------------------------------------------


def _network_config(settings: dict):
    from ubnas_tf.nets.eval_network import EvalNetworkConfig

    return EvalNetworkConfig(settings["layers"], settings["init_channels"],
                             settings["stem_multiplier"], settings["stem_strides"])


def eval_network_ops(genotype, settings: dict) -> float:
    """OPs (BOPs/64 + FLOPs) of the inference network, as tools/summary.py counts them."""
    import tensorflow as tf

    from ubnas_tf.cost import model_cost
    from ubnas_tf.data import get_info
    from ubnas_tf.nets.eval_network import build_eval_network

    info = get_info(settings["dataset"])
    model = build_eval_network(genotype, info.image_shape, info.num_classes,
                               _network_config(settings), settings["module_config"],
                               settings["allow_unaligned_widths"])
    ops = float(model_cost(model).ops)
    del model
    tf.keras.backend.clear_session()
    return ops


def table_ops(settings: dict, primitives: Sequence[str], steps: int) -> Callable[[object], float]:
    """The OPs of a genotype's evaluation network from `ubnas_tf.search.budget`'s cost table
    (one tiny model per op, width, resolution and stride, measured once): a look-up per edge,
    which makes rejection sampling over many thousands of draws cheap. Exact for genotypes
    that concatenate all their nodes and read cell input 1 (random and hand-designed ones
    do); in OPs, like `eval_network_ops` (the table counts MOPs)."""
    import tensorflow as tf

    from ubnas_tf.data import get_info
    from ubnas_tf.search.budget import build_cost_table

    info = get_info(settings["dataset"])
    table = build_cost_table(primitives, info.image_shape, info.num_classes,
                             _network_config(settings), settings["module_config"], steps)
    tf.keras.backend.clear_session()
    return lambda genotype: table.genotype_mops(genotype) * 1e6


# -- genotypes ----------------------------------------------------------------------------------


def _uniform_cell(steps: int, pick: Callable[[int], tuple[tuple[str, int], tuple[str, int]]]):
    return tuple(e for node in range(steps) for e in pick(node))


def hand_designs(primitives: Sequence[str], steps: int, binary_ops: Sequence[str]) -> dict:
    """Named hand-designed genotypes using only `primitives` (both cells alike, all nodes
    concatenated): for each binary conv K in `binary_ops`,

    * ``all_K``: every edge K; node 2 on the cell inputs (0, 1), node n on the two previous
      states (n-2, n-1);
    * ``res_K`` (ResNet-like): node n = K(state n-1) + skip_connect(state n-1);
    * ``pool_K``: node n = max_pool_3x3(older of the two previous states) + K(newer one).

    Returns name -> (Genotype, description).
    """
    from ubnas_tf.genotype import Genotype

    concat = tuple(range(2, steps + 2))
    out = {}
    for k in binary_ops:
        if k not in primitives:
            continue
        designs = {
            f"all_{k}": (lambda n, k=k: ((k, n), (k, n + 1)),
                         f"every edge {k}, each node on the two previous states"),
        }
        if "skip_connect" in primitives:
            designs[f"res_{k}"] = (lambda n, k=k: ((k, n + 1), ("skip_connect", n + 1)),
                                   f"ResNet-like: node = {k}(previous) + skip_connect(previous)")
        if "max_pool_3x3" in primitives:
            designs[f"pool_{k}"] = (lambda n, k=k: (("max_pool_3x3", n), (k, n + 1)),
                                    f"node = max_pool_3x3(older) + {k}(newer previous state)")
        for name, (pick, description) in designs.items():
            cell = _uniform_cell(steps, pick)
            out[name] = (Genotype(cell, concat, cell, concat), description)
    return out


@dataclasses.dataclass
class SamplingStats:
    draws: int = 0
    duplicates: int = 0
    accepted: int = 0
    ops_min: float = math.inf
    ops_max: float = -math.inf


def draw_within(primitives: Sequence[str], steps: int, rng, predict: Callable[[object], float],
                target: float, tolerance: float, max_tries: int, exclude=(),
                stats: SamplingStats | None = None) -> Iterator[tuple[object, float]]:
    """Yields random genotypes (and their predicted OPs) within `tolerance` of `target`,
    never repeating one nor yielding one in `exclude`, until `max_tries` draws are spent."""
    from ubnas_tf.genotype import random_genotype

    stats = stats if stats is not None else SamplingStats()
    seen = set(exclude)
    while stats.draws < max_tries:
        genotype = random_genotype(primitives, steps, rng)
        stats.draws += 1
        if genotype in seen:
            stats.duplicates += 1
            continue
        seen.add(genotype)
        ops = predict(genotype)
        stats.ops_min, stats.ops_max = min(stats.ops_min, ops), max(stats.ops_max, ops)
        if abs(ops - target) <= tolerance * target:
            stats.accepted += 1
            yield genotype, ops


def sample_random_genotypes(primitives: Sequence[str], steps: int, seed: int, wanted: int,
                            target: float, tolerance: float, max_tries: int,
                            predict: Callable[[object], float],
                            measure: Callable[[object], float] | None = None,
                            exclude=()) -> tuple[list[tuple[object, float, float]], SamplingStats]:
    """Seeded rejection sampling: `wanted` distinct random genotypes whose OPs are within
    `tolerance` (relative) of `target`.

    `predict` screens every draw cheaply; `measure` (default: `predict`) gives the OPs that
    decide, for the draws that pass the screen. Returns ``[(genotype, predicted, measured)]``
    in draw order and the sampling statistics.

    Raises:
        BenchmarkError: fewer than `wanted` found in `max_tries` draws (names the flags).
    """
    import numpy as np

    measure = measure or predict
    rng = np.random.default_rng(seed)
    stats = SamplingStats()
    found = []
    for genotype, predicted in draw_within(primitives, steps, rng, predict, target, tolerance,
                                           max_tries, exclude, stats):
        measured = measure(genotype)
        if abs(measured - target) <= tolerance * target:
            found.append((genotype, predicted, measured))
            if len(found) == wanted:
                return found, stats
        else:
            print(f"  WARNING: predicted {predicted:.0f} OPs but measured {measured:.0f}; "
                  "rejected.", flush=True)
    raise BenchmarkError(
        f"Found only {len(found)} of --random={wanted} random genotypes within "
        f"--ops_tolerance={tolerance} of the searched {target / 1e6:.3f} MOPs after "
        f"--max_tries={max_tries} draws ({stats.duplicates} duplicates); the draws ranged over "
        f"{stats.ops_min / 1e6:.3f}-{stats.ops_max / 1e6:.3f} MOPs. Raise --ops_tolerance or "
        "--max_tries, or change --primitives.")


def short_genotype(genotype) -> str:
    """Op codes per node, e.g. ``N d5d5 mpmp | R apc5 apmp`` (inputs: see the JSON files)."""
    def cell(edges):
        return " ".join("".join(OP_CODES.get(op, op) for op, _ in edges[k:k + 2])
                        for k in range(0, len(edges), 2))

    return f"N {cell(genotype.normal)} | R {cell(genotype.reduce)}"


# -- planning -----------------------------------------------------------------------------------


def plan_benchmark(settings: dict, searched, primitives: Sequence[str], out_dir: str) -> dict:
    """Measures the searched OPs, draws the random genotypes, picks the hand design; writes
    their genotype files. Returns the plan (the start of results.json)."""
    from ubnas_tf.ops import get_primitive

    steps = searched.steps
    tol = settings["ops_tolerance"]
    print(f"Measuring the OPs of the searched genotype ({settings['layers']} cells, "
          f"{settings['init_channels']} channels) ...", flush=True)
    searched_ops = eval_network_ops(searched, settings)
    print(f"  searched: {searched_ops / 1e6:.3f} MOPs", flush=True)

    # The per-op cost table screens the hand designs and the random draws.
    print(f"Tabulating the OPs of {len(primitives)} ops in every cell ...", flush=True)
    predict = table_ops(settings, primitives, steps)

    # (c) hand designs: the closest by the table; the chosen one is measured below.
    binary_ops = [p for p in primitives if get_primitive(p).binary]
    designs = hand_designs(primitives, steps, binary_ops)
    considered = []
    for name, (genotype, description) in designs.items():
        predicted = predict(genotype)
        considered.append({"name": name, "description": description, "predicted_ops": predicted,
                           "rel_diff": (predicted - searched_ops) / searched_ops})
    if settings["hand_design"] == "closest":
        chosen = min(considered, key=lambda d: abs(d["rel_diff"]))
    else:
        chosen = next(d for d in considered if d["name"] == settings["hand_design"])
    print("Hand designs, OPs vs the searched genotype: "
          + ", ".join(f"{d['name']} {d['rel_diff']:+.1%}" for d in considered)
          + f"; retraining {chosen['name']}.", flush=True)
    hand_genotype = designs[chosen["name"]][0]

    # (b) random genotypes: seeded rejection sampling screened by the cost table, decided
    # by the OPs of the real network.
    print(f"Drawing {settings['random']} random genotypes from {list(primitives)} within "
          f"{tol:.0%} of {searched_ops / 1e6:.3f} MOPs (seed {settings['sample_seed']}) ...",
          flush=True)
    randoms, stats = sample_random_genotypes(
        primitives, steps, settings["sample_seed"], settings["random"], searched_ops, tol,
        settings["max_tries"], predict, lambda g: eval_network_ops(g, settings),
        exclude=(searched, hand_genotype))
    print(f"  accepted {len(randoms)} after {stats.draws} draws "
          f"(acceptance rate {stats.accepted / max(stats.draws, 1):.2%}; drawn OPs ranged over "
          f"{stats.ops_min / 1e6:.3f}-{stats.ops_max / 1e6:.3f} MOPs)", flush=True)

    hand_ops = eval_network_ops(hand_genotype, settings)
    entries = [_entry("searched", "searched", searched, searched_ops, None, searched_ops)]
    for i, (genotype, predicted, exact) in enumerate(randoms, 1):
        entries.append(_entry(f"random_{i}", "random", genotype, exact, predicted, searched_ops))
    hand_name = f"hand_{chosen['name']}"
    entries.append(_entry(hand_name, "hand", hand_genotype, hand_ops, chosen["predicted_ops"],
                          searched_ops, description=designs[chosen["name"]][1]))
    for entry in entries:
        genotype = entry.pop("_genotype")
        genotype.save(os.path.join(out_dir, entry["genotype_file"]))
    return {
        "format": RESULTS_FORMAT,
        "searched_genotype": settings["genotype"],
        "searched_ops": searched_ops,
        "ops_tolerance": tol,
        "primitives": list(primitives),
        "sampling": {"seed": settings["sample_seed"], "draws": stats.draws,
                     "duplicates": stats.duplicates, "accepted_by_model": stats.accepted,
                     "drawn_ops_min": stats.ops_min, "drawn_ops_max": stats.ops_max},
        "hand_designs_considered": considered,
        "hand_design": {"name": chosen["name"], "rule": settings["hand_design"],
                        "within_tolerance": abs(hand_ops - searched_ops) <= tol * searched_ops},
        "entries": entries,
    }


def _entry(name: str, kind: str, genotype, ops: float, predicted: float | None,
           searched_ops: float, description: str | None = None) -> dict:
    entry = {
        "name": name,
        "kind": kind,
        "genotype_file": os.path.join("genotypes", f"{name}.json"),
        "short": short_genotype(genotype),
        "ops": ops,
        "predicted_ops": predicted,
        "ops_rel_diff": (ops - searched_ops) / searched_ops,
        "run_dir": name,
        "status": "pending",
        "_genotype": genotype,
    }
    if description:
        entry["description"] = description
    return entry


# -- training -----------------------------------------------------------------------------------


def train_config_values(settings: dict, genotype_path: str, run_dir: str) -> dict:
    """TrainConfig fields (also the flags a tools/train.py run directory records)."""
    from ubnas_tf.nets.training import TrainConfig

    values = {
        "genotype": os.path.abspath(genotype_path),
        "output_dir": os.path.abspath(run_dir),
        "max_examples": settings["max_examples"] or None,
        "distribute": "none",
        "mixed_precision": False,
    }
    for name in TrainConfig.__dataclass_fields__:
        if name not in values and name in settings and name != "verbose":
            values[name] = settings[name]
    return values


def train_entry(entry: dict, settings: dict, out_dir: str, verbose: int) -> dict:
    """Trains (or resumes, or skips) one genotype's run; returns its summary.json."""
    import tensorflow as tf

    from ubnas_tf.io_utils import read_json
    from ubnas_tf.nets.training import TrainConfig, run_training
    from ubnas_tf.rundir import RunDirectory

    run = RunDirectory(os.path.join(out_dir, entry["run_dir"]), "train")
    values = train_config_values(settings, os.path.join(out_dir, entry["genotype_file"]), run.path)
    run.prepare(values, overwrite=False)
    state = run.read_state() or {}
    if state.get("finished") and os.path.exists(run.join("summary.json")):
        print(f"\n== {entry['name']}: already trained, skipped ({run.path})", flush=True)
        return read_json(run.join("summary.json"))
    what = "resuming" if state.get("completed_epochs") or state.get("stage_finished") else "training"
    print(f"\n== {entry['name']}: {what} ({entry['short']}; {entry['ops'] / 1e6:.3f} MOPs) "
          f"in {run.path}", flush=True)
    tf.keras.backend.clear_session()
    cfg = TrainConfig(**values, verbose=verbose)
    return run_training(cfg, run)


# -- report -------------------------------------------------------------------------------------


def compare(results: dict, metric: str) -> dict:
    """Random mean/std (ddof=1), z-score of the searched accuracy, differences, verdict."""
    import numpy as np

    key = "best_model_test_accuracy" if metric == "best" else "test_accuracy"
    done = {e["name"]: e for e in results["entries"] if e["status"] == "done"}
    searched = done.get("searched")
    hand = next((e for e in done.values() if e["kind"] == "hand"), None)
    random_acc = [e[key] for e in done.values() if e["kind"] == "random"]
    out: dict = {"metric": key, "random_n": len(random_acc)}
    if len(random_acc) >= 1:
        out["random_mean"] = float(np.mean(random_acc))
    if len(random_acc) >= 2:
        out["random_std"] = float(np.std(random_acc, ddof=1))
    if searched is None or len(random_acc) < 2 or hand is None:
        out["verdict"] = "incomplete: not every training finished"
        out["complete"] = False
        return out
    s = searched[key]
    mean, std = out["random_mean"], out["random_std"]
    out["searched"] = s
    out["searched_minus_random_mean"] = s - mean
    out["z_random_std"] = (s - mean) / std if std > 0 else (
        math.copysign(math.inf, s - mean) if s != mean else 0.0)
    out["hand"] = hand[key]
    out["searched_minus_hand"] = s - hand[key]
    out["beats_random"] = bool(s > mean + 2 * std)
    out["beats_hand"] = bool(s > hand[key])
    out["complete"] = True
    parts = [("beats" if out["beats_random"] else "does NOT beat")
             + " chance (random mean + 2 std = " + f"{mean + 2 * std:.4f})",
             ("beats" if out["beats_hand"] else "does NOT beat")
             + f" the hand design {hand['name']} ({hand[key]:.4f})"]
    out["verdict"] = f"the searched genotype ({s:.4f}) " + " and ".join(parts)
    return out


def print_report(results: dict, metric: str) -> None:
    header = ("name", "genotype (ops per node: N normal | R reduce)", "MOPs", "vs srch",
              "acc best-val", "acc final", "wall")
    rows = []
    for e in results["entries"]:
        done = e["status"] == "done"
        rows.append((
            e["name"], e["short"], f"{e['ops'] / 1e6:.3f}", f"{e['ops_rel_diff']:+.1%}",
            f"{e['best_model_test_accuracy']:.4f}" if done else e["status"],
            f"{e['test_accuracy']:.4f}" if done else "",
            f"{e['wall_time_s'] / 60:.1f} min" if done else "",
        ))
    print()
    print(text_table(header, rows, left=2))
    tol = results["ops_tolerance"]
    print(f"\nTest accuracy on the whole test set: 'acc best-val' = the best-validation model "
          f"(model_best.keras), 'acc final' = after the last epoch; the comparison uses "
          f"{'best-val' if metric == 'best' else 'final'}. Wall time: the session that finished "
          "each training. Random genotypes are within "
          f"{tol:.0%} of the searched OPs.")
    hand = next(e for e in results["entries"] if e["kind"] == "hand")
    inside = results["hand_design"]["within_tolerance"]
    how = (f"the closest to the searched OPs of {len(results['hand_designs_considered'])} designs"
           if results["hand_design"]["rule"] == "closest" else "chosen by --hand_design")
    print(f"Hand design {results['hand_design']['name']} ({hand.get('description', '')}), "
          f"{how}: {hand['ops_rel_diff']:+.1%} OPs, {'WITHIN' if inside else 'OUTSIDE'} the "
          f"+-{tol:.0%} tolerance.")
    c = results["comparison"]
    if c.get("complete"):
        z = c["z_random_std"]
        print(f"searched - random mean = {c['searched_minus_random_mean'] * 100:+.2f} points = "
              f"{z:+.2f} random std (mean {c['random_mean']:.4f}, std {c['random_std']:.4f}, "
              f"ddof=1, n={c['random_n']})")
        print(f"searched - hand-designed = {c['searched_minus_hand'] * 100:+.2f} points")
        print(f"VERDICT: searched > random mean + 2 std: {'YES' if c['beats_random'] else 'NO'}; "
              f"searched > hand-designed: {'YES' if c['beats_hand'] else 'NO'} -- "
              f"{c['verdict']}.")
    else:
        print(f"VERDICT: {c['verdict']}.")


# -- main ---------------------------------------------------------------------------------------


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    t0 = time.time()
    try:
        if FLAGS.train_flagfile:
            taken, ignored = apply_train_flagfile(FLAGS.train_flagfile)
            print(f"From --train_flagfile={FLAGS.train_flagfile}: {', '.join(taken) or 'nothing'}"
                  + (f"; ignored: {', '.join(ignored)}" if ignored else ""), flush=True)
        settings = recorded_settings()
        searched, primitives = check_settings(settings)
        from ubnas_tf.rundir import RunDirectory

        run = RunDirectory(settings["output_dir"], TOOL)
        run.prepare(settings, FLAGS.overwrite)
    except ValueError as err:  # BenchmarkError, ubnas_tf.flags.FlagError
        print(f"search_vs_random.py: error: {err}", file=sys.stderr)
        return 2

    from ubnas_tf.genotype import Genotype
    from ubnas_tf.io_utils import atomic_write_json, read_json
    from ubnas_tf.rundir import NonFiniteError

    results_path = run.join("results.json")
    results = read_json(results_path) if os.path.exists(results_path) else None
    if results is not None:
        recorded = Genotype.load(run.join("genotypes", "searched.json"))
        if recorded != searched:
            print(f"search_vs_random.py: error: --genotype={FLAGS.genotype} is not the genotype "
                  f"this --output_dir={run.path} was made with (genotypes/searched.json); choose "
                  "another --output_dir or pass --overwrite.", file=sys.stderr)
            return 2
        print(f"Resuming the benchmark in {run.path} (genotypes drawn before are reused).")
    else:
        try:
            results = plan_benchmark(settings, searched, primitives, run.path)
        except BenchmarkError as err:
            # Nothing was trained: forget the recorded settings, so that the next attempt
            # (e.g. with a larger --ops_tolerance) is not refused as a different benchmark.
            for name in ("flags.json", "flags.txt"):
                if os.path.exists(run.join(name)):
                    os.remove(run.join(name))
            print(f"search_vs_random.py: error: {err}", file=sys.stderr)
            return 2
        atomic_write_json(results_path, results)
        print(f"Wrote the genotypes to {run.join('genotypes')}", flush=True)

    for entry in results["entries"]:
        try:
            summary = train_entry(entry, settings, run.path, FLAGS.verbose)
        except (NonFiniteError, ValueError) as err:
            print(f"WARNING: training {entry['name']} failed: {err}", file=sys.stderr)
            entry.update(status="failed", error=str(err))
        else:
            entry.update(status="done", test_accuracy=summary["test_accuracy"],
                         best_model_test_accuracy=summary["best_model_test_accuracy"],
                         best_val_accuracy=summary["best_val_accuracy"],
                         wall_time_s=summary["wall_time_s"])
        results["comparison"] = compare(results, FLAGS.metric)
        atomic_write_json(results_path, results)
    print_report(results, FLAGS.metric)
    print(f"\nResults: {results_path} ({time.time() - t0:.0f} s this session)")
    return 0 if results["comparison"].get("complete") else 1


def check_settings(settings: dict):
    """Checks what absl's validators cannot (files, registries, data); returns
    (searched genotype, primitives). Raises BenchmarkError naming the flag."""
    out = settings["output_dir"]
    if out is None or not out.strip():
        raise BenchmarkError("--output_dir must name a directory.")
    from ubnas_tf.errors import FlagError
    from ubnas_tf.flags import check_output_dir

    try:
        check_output_dir(out)
    except FlagError as err:
        raise BenchmarkError(str(err)) from err
    from ubnas_tf.data import DatasetError, check_available, get_info
    from ubnas_tf.genotype import Genotype, GenotypeError
    from ubnas_tf.modules import MODULE_CONFIGS
    from ubnas_tf.ops import get_primitive, resolve_primitives

    try:
        primitives = resolve_primitives(settings["primitives"])
    except ValueError as err:
        raise BenchmarkError(f"--primitives: {err}") from err
    primitives = tuple(p for p in primitives if p != "none")
    try:
        searched = Genotype.load(settings["genotype"])
    except GenotypeError as err:
        raise BenchmarkError(f"--genotype: {err}") from err
    outside = sorted(searched.ops_used() - set(primitives))
    if outside:
        raise BenchmarkError(f"--genotype={settings['genotype']} uses {outside}, which are not in "
                             f"--primitives={','.join(primitives)}; the random genotypes must be "
                             "drawn from the searched genotype's space.")
    designs = hand_designs(primitives, searched.steps,
                           [p for p in primitives if get_primitive(p).binary])
    if not designs:
        raise BenchmarkError(f"--primitives={','.join(primitives)} allow no hand design: they "
                             "need at least one binary conv (bconv_*, bdil_conv_*).")
    if settings["hand_design"] not in ("closest", *designs):
        raise BenchmarkError(f"--hand_design={settings['hand_design']!r} is unknown; use "
                             f"'closest' or one of {sorted(designs)}.")
    if settings["module_config"] not in MODULE_CONFIGS:
        raise BenchmarkError(f"--module_config={settings['module_config']!r} is unknown; use one "
                             f"of {sorted(MODULE_CONFIGS)}.")
    if settings["data_dir"] is not None and not os.path.isdir(settings["data_dir"]):
        raise BenchmarkError(f"--data_dir={settings['data_dir']!r} is not a directory.")
    try:
        check_available(settings["dataset"], settings["data_dir"])
    except DatasetError as err:
        raise BenchmarkError(f"--dataset={settings['dataset']}: {err}") from err
    n = get_info(settings["dataset"]).num_train
    n = min(n, settings["max_examples"]) if settings["max_examples"] else n
    n_train = n - min(settings["validation_examples"], n // 10)
    if settings["batch_size"] > n_train:
        raise BenchmarkError(f"--batch_size={settings['batch_size']} is larger than the {n_train} "
                             "training images; lower it or raise --max_examples.")
    return searched, primitives


def run() -> None:
    """The ``ubnas-bench-search-vs-random`` console script (and ``python benchmarks/search_vs_random.py``)."""
    define_flags()
    present_as_main(__name__)
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
