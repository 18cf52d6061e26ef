"""`compare_modules`: the settings (`ComparisonConfig`), the data, the tuner and the results
file of one comparison."""

from __future__ import annotations

import dataclasses
import os

import keras_tuner
import numpy as np

from ubnas_tf.config import FitConfig, option
from ubnas_tf.data import DatasetInfo, eval_dataset, get_info, load_arrays, train_dataset
from ubnas_tf.genotype import Genotype
from ubnas_tf.io_utils import atomic_write_json, atomic_write_text
from ubnas_tf.module_comparison.hypermodel import (
    FIELD_CHOICES,
    MODES,
    ModuleComparisonError,
    ModuleHyperModel,
    matching_variant,
    resolve_genotype,
    resolve_variants,
)
from ubnas_tf.module_comparison.results import (
    OBJECTIVE,
    ModuleResult,
    decision,
    rank_trials,
    results_csv,
    results_markdown,
)
from ubnas_tf.module_comparison.tuner import ModuleGridSearch, ModuleRandomSearch
from ubnas_tf.modules import ModuleConfig
from ubnas_tf.nets.eval_network import EvalNetworkConfig

__all__ = ["RESULTS_CSV", "RESULTS_FILE", "RESULTS_MARKDOWN", "TUNER_PROJECT", "ComparisonConfig",
           "compare_modules"]

RESULTS_FILE = "comparison.json"
RESULTS_CSV = "comparison.csv"
RESULTS_MARKDOWN = "comparison.md"
TUNER_PROJECT = "tuner"
FORMAT = "ubnas-module-comparison/2"
DEFAULT_FIELDS_TRIALS = 10


def _split(x: np.ndarray, y: np.ndarray, validation_examples: int, seed: int):
    n_val = min(int(validation_examples), len(x) // 4)
    if n_val < 1:
        raise ModuleComparisonError(
            f"No validation examples: validation_examples={validation_examples} with "
            f"{len(x)} training images (at most a quarter is held out).")
    perm = np.random.default_rng(seed).permutation(len(x))
    return x[perm[n_val:]], y[perm[n_val:]], x[perm[:n_val]], y[perm[:n_val]]


def _arrays_info(x: np.ndarray, y: np.ndarray, y_val: np.ndarray) -> DatasetInfo:
    pixels = np.asarray(x, np.float64).reshape(-1, x.shape[-1]) / 255.0
    return DatasetInfo(name="arrays", image_shape=tuple(int(d) for d in x.shape[1:]),
                       num_classes=int(max(np.max(y), np.max(y_val))) + 1, num_train=len(x),
                       num_test=0, mean=tuple(float(m) for m in pixels.mean(0)),
                       std=tuple(float(max(s, 1e-3)) for s in pixels.std(0)))


@dataclasses.dataclass(kw_only=True)
class ComparisonConfig(FitConfig):
    """The settings of a module comparison: `FitConfig` (the data, batch, epochs, first seed,
    progress output) with a proxy's defaults, the proxy network and its recipe, and what is
    compared. Each option is also a flag of tools/compare_modules.py
    (`ubnas_tf.flags.define_comparison_flags`), with the default and help text given here.

    Attributes (beyond the help texts):
        dataset, data_dir, max_examples: the training images (`ubnas_tf.data.load_arrays`);
            `validation_examples` of them (at most a quarter) are held out to score trials.
        mode: ``"named"`` (grid over `variants`, default all of `MODULE_CONFIGS`) or
            ``"fields"`` (random search over `FIELD_CHOICES`, `max_trials` trials, default
            10).
        max_trials: at most this many trials (named mode: default every variant once).
        genotype: the proxy architecture: a `Genotype`, a genotype.json path or dict; None:
            `PROXY_GENOTYPE`.
        seed, seeds: the first seed and the number of seeds (executions) per structure;
            `seed` also draws the validation split.
        label_smoothing, stem_multiplier: the proxy's recipe and stem (no flags).
        verbose: keras-tuner and ``fit`` progress output (0, 1 or 2).
    """

    max_examples: int | None = option(
        4000, "Use only the first N training images (validation images included).",
        lower_bound=1)
    validation_examples: int = option(
        1000, "Training images held out to score each structure (at most a quarter).",
        lower_bound=0)
    mode: str = option("named", "named: grid over the registered variants; fields: random "
                                "search over ModuleConfig fields.", choices=MODES)
    variants: tuple[str, ...] | None = option(
        None, "Comma-separated variant names to compare in named mode (default: all "
              "registered ones). Appending names extends an existing comparison.")
    max_trials: int | None = option(
        None, "At most this many structures (default: every variant in named mode, 10 in "
              "fields mode).", lower_bound=1)
    epochs: int = option(2, "Proxy epochs per structure (cosine decay over them).",
                         lower_bound=1)
    learning_rate: float = option(2e-3, "Peak Adam learning rate (cosine decay per stage).")
    label_smoothing: float = 0.1
    augment: bool = option(False, "Random crop and flip in the proxy runs.")
    layers: int = option(3, "Cells of the proxy network (reductions at 1/3 and 2/3).",
                         lower_bound=3)
    init_channels: int = option(32, "Width of the proxy network's first cells.", lower_bound=1)
    stem_multiplier: int = 3
    stem_strides: int = option(
        1, "Total stride of the real stem: 1, 2, 4 or 8 (one stride-2 conv each).")
    genotype: str | os.PathLike | dict | Genotype | None = option(
        None, "A genotype.json to use as the proxy architecture (default: binary 3x3 convs "
              "everywhere plus skips).")
    seeds: int = option(
        3, "Runs per structure, run i with seed --seed + i (weights and data order); a "
           "structure scores the mean of its runs' best validation accuracies, reported with "
           "their standard deviation.", lower_bound=1)


def compare_modules(
    output_dir: str,
    config: ComparisonConfig | None = None,
    *,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    info: DatasetInfo | None = None,
    overwrite: bool = False,
    **settings,
) -> list[ModuleResult]:
    """Compares module structures by short proxy runs; returns them ranked (best first).

    Every trial trains the proxy network (`genotype`, default `PROXY_GENOTYPE`, at
    `layers` cells of width `init_channels`) `seeds` times, execution i with seed
    ``seed + i`` for its initial weights and its data order (the same seeds for every
    structure), for `epochs` epochs (Adam, cosine decay, label smoothing). A run is scored
    by its best validation accuracy, a structure by the mean over its seeds (reported with
    the sample standard deviation, `ubnas_tf.module_comparison.results`). The validation
    images are the same for every run. The directory holds keras-tuner's project
    (``OUTPUT_DIR/tuner``: the oracle, and per trial its settings, score, spread, cost,
    per-execution and per-epoch logs, and each finished execution as a file) and the
    results, rewritten atomically after every trial and at the end (``pending``: the trials
    not yet run): ``OUTPUT_DIR/comparison.json`` (everything, including whether the
    comparison decides, `decision`), and the ranked table as ``comparison.csv`` and
    ``comparison.md``.

    Re-running with the same settings resumes: finished trials are not retrained, a trial
    interrupted mid-way is run again with only its unfinished seeds. `max_trials` is a
    budget, not a setting: a re-run with a larger one adds trials; `seeds` is a setting.
    `variants` that append new names to the recorded ones extend the comparison: the new
    structures run, the finished ones are kept (likewise new field values in fields mode).

    Args:
        output_dir: the comparison's directory.
        config: the settings (`ComparisonConfig`; default: its defaults).
        arrays: instead of a dataset, ``(x_train, y_train, x_val, y_val)`` uint8 NHWC images
            and integer labels; `info` describes them (default: derived from the arrays).
        overwrite: discard an existing comparison in `output_dir` and start afresh.
        **settings: fields of `ComparisonConfig` that replace `config`'s.

    Raises:
        ModuleComparisonError: bad settings, or `output_dir` holds a comparison made with
            other settings (and not `overwrite`).
    """
    cfg = dataclasses.replace(config or ComparisonConfig(), **settings)
    mode, max_trials, batch_size = cfg.mode, cfg.max_trials, cfg.batch_size
    if mode not in MODES:
        raise ModuleComparisonError(f"mode={mode!r} is unknown; use one of {list(MODES)}.")
    names = resolve_variants(cfg.variants)
    if mode == "fields" and cfg.variants:
        raise ModuleComparisonError("variants apply to the named mode only.")
    if max_trials is not None and max_trials < 1:
        raise ModuleComparisonError(f"max_trials={max_trials} must be >= 1.")
    if mode == "fields" and max_trials is None:
        max_trials = DEFAULT_FIELDS_TRIALS
    if cfg.seeds < 1:
        raise ModuleComparisonError(f"seeds={cfg.seeds} must be >= 1.")
    if cfg.epochs < 1 or batch_size < 1:
        raise ModuleComparisonError(f"epochs={cfg.epochs} and batch_size={batch_size} must "
                                    "be >= 1.")
    geno = resolve_genotype(cfg.genotype)
    net_config = EvalNetworkConfig(layers=cfg.layers, init_channels=cfg.init_channels,
                                   stem_multiplier=cfg.stem_multiplier,
                                   stem_strides=cfg.stem_strides)

    if arrays is not None:
        x_tr, y_tr, x_val, y_val = (np.asarray(a) for a in arrays)
        info = info or _arrays_info(x_tr, y_tr, y_val)
    else:
        info = get_info(cfg.dataset)
        x, y = load_arrays(cfg.dataset, "train", cfg.data_dir, cfg.max_examples)
        x_tr, y_tr, x_val, y_val = _split(x, y, cfg.validation_examples, cfg.seed)
    steps = len(x_tr) // batch_size
    if steps < 1:
        raise ModuleComparisonError(
            f"batch_size={batch_size} is larger than the {len(x_tr)} training images.")
    data = {"dataset": "arrays" if arrays is not None else cfg.dataset,
            "train_images": len(x_tr), "validation_images": len(x_val)}
    training = {"epochs": cfg.epochs, "batch_size": batch_size,
                "learning_rate": cfg.learning_rate, "label_smoothing": cfg.label_smoothing,
                "augment": cfg.augment, "seed": cfg.seed, "seeds": cfg.seeds}

    hypermodel = ModuleHyperModel(
        info.image_shape, info.num_classes, mode=mode, variants=names, genotype=geno,
        net_config=net_config, epochs=cfg.epochs, steps_per_epoch=steps,
        learning_rate=cfg.learning_rate, label_smoothing=cfg.label_smoothing, seed=cfg.seed,
        seeds=cfg.seeds, recorded={**data, "batch_size": batch_size, "augment": cfg.augment})
    training["execution_seeds"] = hypermodel.execution_seeds
    results_path = os.path.join(output_dir, RESULTS_FILE)
    if overwrite:
        for name in (RESULTS_FILE, RESULTS_CSV, RESULTS_MARKDOWN):
            if os.path.exists(os.path.join(output_dir, name)):
                os.unlink(os.path.join(output_dir, name))
    tuner_cls = ModuleGridSearch if mode == "named" else ModuleRandomSearch
    tuner = tuner_cls(
        hypermodel=hypermodel,
        objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
        max_trials=max_trials,
        seed=cfg.seed,
        directory=output_dir,
        project_name=TUNER_PROJECT,
        overwrite=overwrite,
    )
    diffs = tuner.settings_differences()
    if diffs:
        raise ModuleComparisonError(
            f"{output_dir} holds a module comparison made with other settings:\n  "
            + "\n  ".join(diffs)
            + "\nRe-run with the same settings to resume it, choose another output "
            "directory, or overwrite it.")
    added = tuner.extend_space()
    if added and cfg.verbose:
        print("Extending the comparison in " + output_dir + ": "
              + "; ".join(f"{name} adds {values}" for name, values in added.items()), flush=True)

    if cfg.verbose:
        print(f"Module comparison ({mode}): {len(x_tr)} training, {len(x_val)} validation "
              f"images, {cfg.epochs} epoch(s) of {steps} steps per run, {cfg.seeds} run(s) per "
              f"structure (seeds {hypermodel.execution_seeds})", flush=True)

    def train_data(run_seed: int | None):
        # Each execution's own data order (keyed by its seed, as its initial weights).
        return train_dataset(x_tr, y_tr, info, batch_size,
                             cfg.seed if run_seed is None else run_seed, augment=cfg.augment,
                             start_epoch=0)

    planned = len(names) if mode == "named" else max_trials
    if mode == "named" and max_trials is not None:
        planned = min(planned, max_trials)

    def write_results() -> list[ModuleResult]:
        # After every trial, so a comparison stopped half-way shows its table so far.
        results, failed = rank_trials(tuner.oracle.trials, hypermodel.module_config)
        winner = results[0] if results else None
        pending = max(0, planned - len(results) - len(failed))
        atomic_write_json(results_path, {
            "format": FORMAT,
            "mode": mode,
            "objective": OBJECTIVE,
            "variants": names if mode == "named" else None,
            "field_choices": ({k: list(v) for k, v in FIELD_CHOICES.items()}
                              if mode == "fields" else None),
            "max_trials": max_trials,
            "data": data,
            "genotype": geno.to_dict(),
            "network": dataclasses.asdict(net_config),
            "training": training,
            "pending": pending,
            "results": [r.to_dict() for r in results],
            "failed": failed,
            "decision": decision(results),
            "winner": None if winner is None else {
                "name": winner.name,
                "registered_name": matching_variant(winner.config),
                "val_accuracy_mean": winner.val_accuracy_mean,
                "val_accuracy_std": winner.val_accuracy_std,
                "module_config": ModuleConfig.from_dict(winner.config).to_dict(),
            },
        })
        atomic_write_text(os.path.join(output_dir, RESULTS_CSV), results_csv(results))
        atomic_write_text(os.path.join(output_dir, RESULTS_MARKDOWN),
                          results_markdown(results, data, training, failed, pending))
        return results

    tuner.report = write_results
    val_ds = eval_dataset(x_val, y_val, info, 256)
    tuner.search(train_data, epochs=cfg.epochs, steps_per_epoch=steps, validation_data=val_ds,
                 verbose=cfg.verbose)
    results = write_results()
    return results
