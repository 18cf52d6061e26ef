"""Comparing binary module structures by short proxy runs, driven by keras-tuner.

DESIGN.md idea 3: the structure of a binary module (`ubnas_tf.modules.ModuleConfig`: BN
position, activation after the add, stride-2 shortcut pooling, weight scaling, activation
quantizer, binary or real cell preprocessing) is explored, not fixed. The keras-tuner roles:

* **HyperModel** (`ModuleHyperModel`): from ``hp`` it picks a module structure, either one of
  the named variants in `MODULE_CONFIGS` (``hp.Choice("module_config", names)``, mode
  ``"named"``) or one value per `ModuleConfig` field (mode ``"fields"``), and builds and
  compiles a small evaluation network of a fixed proxy genotype with it.
* **Oracle**: keras-tuner's grid oracle (named mode: every variant once) or random oracle
  (fields mode: ``max_trials`` random field combinations, no repeats).
* **Tuner** (`ModuleGridSearch`, `ModuleRandomSearch`): runs a trial (build, ``fit`` for the
  proxy epochs, objective ``val_accuracy``: the best epoch's) and records the trial's cost
  (`ubnas_tf.cost.model_cost`) and history beside keras-tuner's ``trial.json``.

`compare_modules` ties them together. Everything lives in one output directory::

    OUTPUT_DIR/spec.json          the comparison's settings (a re-run must match them)
    OUTPUT_DIR/tuner/             the keras-tuner project (oracle.json, trial_*/trial.json,
                                  trial_*/module_result.json: config, cost, per-epoch logs)
    OUTPUT_DIR/comparison.json    the ranked results and the winner's ModuleConfig

Re-running the same comparison resumes it: finished trials are not retrained (keras-tuner
reloads its oracle, ``overwrite=False``), a trial interrupted mid-way is run again.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from collections.abc import Sequence
from typing import Any

import keras_tuner
import numpy as np
import tensorflow as tf

from ubnas_tf.data import DatasetInfo, eval_dataset, get_info, load_arrays, train_dataset
from ubnas_tf.genotype import Genotype
from ubnas_tf.io_utils import atomic_write_json, read_json
from ubnas_tf.modules import MODULE_CONFIGS, ModuleConfig
from ubnas_tf.nets.eval_network import EvalNetworkConfig, build_eval_network
from ubnas_tf.nets.training import smoothed_sparse_crossentropy
from ubnas_tf.quantizers import ACTIVATION_QUANTIZERS, KERNEL_QUANTIZERS
from ubnas_tf.tables import text_table

__all__ = [
    "MODES",
    "FIELD_CHOICES",
    "PROXY_GENOTYPE",
    "ModuleComparisonError",
    "ModuleHyperModel",
    "ModuleGridSearch",
    "ModuleRandomSearch",
    "ModuleResult",
    "compare_modules",
    "fields_label",
    "matching_variant",
    "results_table",
]

MODES = ("named", "fields")
OBJECTIVE = "val_accuracy"
TUNER_PROJECT = "tuner"
RESULT_FILE = "module_result.json"
DEFAULT_FIELDS_TRIALS = 10



def _field_choices() -> dict[str, tuple]:
    """Per-field choices of the "fields" mode, the `universal` value first (the default).

    Candidates are the known values plus every value a registered variant uses, kept where
    `ModuleConfig` accepts them. keras-tuner choices cannot be None: activation None is
    spelled "none"; real (None) quantizers are left out (they are not binary modules).
    """
    universal = MODULE_CONFIGS["universal"]
    candidates = {
        "bn_before_sign": (True, False),
        "activation": (None, "prelu"),
        "downsample_shortcut": ("avg_pool", "max_pool"),
        "activation_quantizer": ACTIVATION_QUANTIZERS,
        "kernel_quantizer": KERNEL_QUANTIZERS,
        "preprocess": ("binary_shortcut", "binary", "real"),
    }
    choices = {}
    for field, values in candidates.items():
        seen = [getattr(universal, field), *values,
                *(getattr(c, field) for c in MODULE_CONFIGS.values())]
        kept = []
        for value in dict.fromkeys(seen):
            if value is None and field != "activation":
                continue
            try:
                ModuleConfig(**{field: value})
            except ValueError:
                continue
            kept.append("none" if value is None else value)
        choices[field] = tuple(kept)
    return choices


FIELD_CHOICES: dict[str, tuple] = _field_choices()

# The fixed proxy genotype: binary 3x3 convs everywhere plus skips. In the reduction cell
# the edges from the cell inputs run at stride 2, so the stride-2 module and shortcut (and
# the reducing preprocess) are exercised too.
_PROXY_EDGES = (("bconv_3x3", 0), ("bconv_3x3", 1), ("bconv_3x3", 1), ("bconv_3x3", 2),
                ("bconv_3x3", 2), ("skip_connect", 0), ("bconv_3x3", 3), ("skip_connect", 1))
PROXY_GENOTYPE = Genotype(_PROXY_EDGES, (2, 3, 4, 5), _PROXY_EDGES, (2, 3, 4, 5))


class ModuleComparisonError(ValueError):
    """Settings that cannot work, or an output directory holding a different comparison."""


def _universal_fields() -> dict[str, Any]:
    d = MODULE_CONFIGS["universal"].to_dict()
    d.pop("name")
    return d


def _structure(config: ModuleConfig) -> dict[str, Any]:
    d = config.to_dict()
    d.pop("name")
    return d


def fields_label(fields: dict[str, Any]) -> str:
    """A readable name for a field combination: its differences from `universal`."""
    base = _universal_fields()
    diffs = [f"{k}={fields[k]}" for k in FIELD_CHOICES if fields[k] != base[k]]
    return "universal" if not diffs else "+".join(diffs)


def matching_variant(config: ModuleConfig | dict) -> str | None:
    """The name in `MODULE_CONFIGS` with the same structure as `config` (ignoring its name)."""
    fields = _structure(config) if isinstance(config, ModuleConfig) else {
        k: v for k, v in config.items() if k != "name"}
    for name, variant in MODULE_CONFIGS.items():
        if _structure(variant) == fields:
            return name
    return None


def _resolve_genotype(genotype: str | os.PathLike | dict | Genotype | None) -> Genotype:
    if genotype is None:
        return PROXY_GENOTYPE
    if isinstance(genotype, Genotype):
        return genotype.validate()
    if isinstance(genotype, dict):
        return Genotype.from_dict(genotype)
    return Genotype.load(genotype)


def _resolve_variants(variants: Sequence[str] | None) -> list[str]:
    names = list(MODULE_CONFIGS) if not variants else list(dict.fromkeys(variants))
    unknown = [n for n in names if n not in MODULE_CONFIGS]
    if unknown:
        raise ModuleComparisonError(
            f"Unknown module config variant(s) {unknown}; known variants: {sorted(MODULE_CONFIGS)}.")
    return names


class ModuleHyperModel(keras_tuner.HyperModel):
    """Picks a module structure from ``hp`` and builds the compiled proxy network with it.

    Args:
        input_shape: image shape (H, W, C).
        num_classes: classifier width.
        mode: ``"named"``: ``hp.Choice("module_config", variants)``; ``"fields"``: one
            choice per `ModuleConfig` field (see `FIELD_CHOICES`).
        variants: names in `MODULE_CONFIGS` for the named mode (default: all, in registry
            order; the first is the grid's first trial).
        genotype: the fixed proxy genotype (a `Genotype`, a genotype.json path or dict;
            default `PROXY_GENOTYPE`).
        net_config: the proxy network's size (`EvalNetworkConfig`; default: 3 cells of
            width 32, stem stride 1).
        epochs, steps_per_epoch: the proxy run's length, for the cosine learning-rate decay.
        learning_rate: peak Adam learning rate.
        label_smoothing: of the cross-entropy.
        seed: weights are initialised from this seed in every trial (same start for all).
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, mode: str = "named",
                 variants: Sequence[str] | None = None,
                 genotype: str | os.PathLike | dict | Genotype | None = None,
                 net_config: EvalNetworkConfig | None = None, epochs: int = 2,
                 steps_per_epoch: int = 100, learning_rate: float = 2e-3,
                 label_smoothing: float = 0.1, seed: int | None = 0, **kwargs):
        super().__init__(name="module_hypermodel", **kwargs)
        if mode not in MODES:
            raise ModuleComparisonError(f"mode={mode!r} is unknown; use one of {list(MODES)}.")
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.mode = mode
        self.variants = _resolve_variants(variants)
        self.genotype = _resolve_genotype(genotype)
        self.net_config = net_config or EvalNetworkConfig(layers=3, init_channels=32)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.learning_rate = float(learning_rate)
        self.label_smoothing = float(label_smoothing)
        self.seed = seed

    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> None:
        """Declares the search space without building a model."""
        self.module_config(hp)

    def module_config(self, hp: keras_tuner.HyperParameters) -> ModuleConfig:
        """The `ModuleConfig` that ``hp`` selects (registering the choices in ``hp``)."""
        if self.mode == "named":
            return MODULE_CONFIGS[hp.Choice("module_config", self.variants, default=self.variants[0])]
        fields = {}
        for field, choices in FIELD_CHOICES.items():
            if field == "bn_before_sign":
                fields[field] = hp.Boolean(field, default=choices[0])
            else:
                fields[field] = hp.Choice(field, list(choices), default=choices[0])
        if fields["activation"] == "none":
            fields["activation"] = None
        return ModuleConfig(name=fields_label(fields), **fields)

    def build(self, hp: keras_tuner.HyperParameters) -> tf.keras.Model:
        config = self.module_config(hp)
        if self.seed is not None:
            tf.keras.utils.set_random_seed(int(self.seed))
        model = build_eval_network(self.genotype, self.input_shape, self.num_classes,
                                   self.net_config, module_config=config,
                                   allow_unaligned=True,
                                   name=re.sub(r"[^A-Za-z0-9_.-]", "_", f"proxy_{config.name}")[:120])
        total_steps = max(1, self.epochs * self.steps_per_epoch)
        schedule = tf.keras.optimizers.schedules.CosineDecay(self.learning_rate, total_steps)
        model.compile(
            tf.keras.optimizers.Adam(schedule),
            loss=smoothed_sparse_crossentropy(self.label_smoothing, self.num_classes),
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        model.module_config = config
        return model


class _ModuleTunerMixin:
    """The run_trial of both tuners: build, fit, and record the trial's config and cost.

    Unlike keras-tuner's default it keeps no model checkpoints: a proxy run is only there
    for its validation accuracy.
    """

    def run_trial(self, trial, *args, **kwargs):
        t0 = time.time()
        hp = trial.hyperparameters
        tf.keras.backend.clear_session()
        model = self.hypermodel.build(hp)
        config = model.module_config
        print(f"Trial {trial.trial_id}: module structure {config.name!r}", flush=True)
        history = self.hypermodel.fit(hp, model, *args, **kwargs)
        from ubnas_tf.cost import model_cost

        record = {
            "trial_id": trial.trial_id,
            "module_config": config.to_dict(),
            "cost": model_cost(model).totals(),
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
            "wall_time_s": round(time.time() - t0, 2),
        }
        atomic_write_json(os.path.join(self.get_trial_dir(trial.trial_id), RESULT_FILE), record)
        return history


class ModuleGridSearch(_ModuleTunerMixin, keras_tuner.GridSearch):
    """Grid search over module structures (named mode: every variant once)."""


class ModuleRandomSearch(_ModuleTunerMixin, keras_tuner.RandomSearch):
    """Random search over module-structure fields (fields mode)."""


@dataclasses.dataclass
class ModuleResult:
    """One finished trial of a comparison, as ranked in comparison.json."""

    rank: int
    trial_id: str
    name: str
    config: dict[str, Any]
    val_accuracy: float
    cost: dict[str, Any]
    val_accuracy_per_epoch: list[float]
    wall_time_s: float | None

    @property
    def params(self) -> int:
        return int(self.cost["total_params"])

    @property
    def ops(self) -> float:
        return float(self.cost["ops"])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def _check_spec(output_dir: str, spec: dict, overwrite: bool) -> None:
    """Starts afresh (overwrite), resumes a matching comparison, or refuses a different one."""
    path = os.path.join(output_dir, "spec.json")
    recorded = read_json(path) if os.path.exists(path) else None
    tuner_dir = os.path.join(output_dir, TUNER_PROJECT)
    if overwrite:
        for name in (TUNER_PROJECT, "comparison.json", "spec.json"):
            target = os.path.join(output_dir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.unlink(target)
    elif recorded is not None:
        import json

        spec_rt = json.loads(json.dumps(spec))
        diffs = [f"{k}: directory has {recorded.get(k)!r}, now {spec_rt.get(k)!r}"
                 for k in sorted(set(recorded) | set(spec_rt)) if recorded.get(k) != spec_rt.get(k)]
        if diffs:
            raise ModuleComparisonError(
                f"{output_dir} holds a module comparison made with other settings:\n  "
                + "\n  ".join(diffs)
                + "\nRe-run with the same settings to resume it, choose another output "
                "directory, or overwrite it.")
    elif os.path.isdir(tuner_dir):
        raise ModuleComparisonError(
            f"{tuner_dir} exists but {path} does not: not a comparison this code can resume; "
            "choose another output directory or overwrite it.")
    atomic_write_json(path, spec)


def _collect(tuner, hypermodel: ModuleHyperModel) -> tuple[list[ModuleResult], list[dict]]:

    results, failed = [], []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        config = hypermodel.module_config(trial.hyperparameters.copy())
        if trial.status != "COMPLETED" or trial.score is None:
            failed.append({"trial_id": trial_id, "name": config.name, "status": trial.status,
                           "message": getattr(trial, "message", None)})
            continue
        # run_trial writes this file before the oracle records the trial as completed.
        record = read_json(os.path.join(tuner.get_trial_dir(trial_id), RESULT_FILE))
        cost, history, wall = record["cost"], record["history"], record.get("wall_time_s")
        results.append(ModuleResult(
            rank=0, trial_id=trial_id, name=config.name, config=config.to_dict(),
            val_accuracy=float(trial.score), cost=cost,
            val_accuracy_per_epoch=[float(v) for v in history.get(OBJECTIVE, [])],
            wall_time_s=wall))
    # Best accuracy first; ties go to the cheaper structure, then to the earlier trial (the
    # grid's first trial is the first variant listed, by default `universal`).
    results.sort(key=lambda r: (-r.val_accuracy, r.ops, r.trial_id))
    for i, r in enumerate(results):
        r.rank = i + 1
    return results, failed


def compare_modules(
    output_dir: str,
    *,
    dataset: str = "fashion_mnist",
    data_dir: str | None = None,
    max_examples: int | None = 4000,
    validation_examples: int = 1000,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    info: DatasetInfo | None = None,
    mode: str = "named",
    variants: Sequence[str] | None = None,
    max_trials: int | None = None,
    epochs: int = 2,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    label_smoothing: float = 0.1,
    augment: bool = False,
    layers: int = 3,
    init_channels: int = 32,
    stem_multiplier: int = 3,
    stem_strides: int = 1,
    genotype: str | os.PathLike | dict | Genotype | None = None,
    seed: int = 0,
    overwrite: bool = False,
    verbose: int = 1,
) -> list[ModuleResult]:
    """Compares module structures by short proxy runs; returns them ranked (best first).

    Every trial trains the proxy network (`genotype`, default `PROXY_GENOTYPE`, at
    `layers` cells of width `init_channels`) from the same initial seed on the same batches
    for `epochs` epochs (Adam, cosine decay, label smoothing) and scores it by its best
    validation accuracy. Also writes ``OUTPUT_DIR/comparison.json`` (atomically).

    Args:
        output_dir: the comparison's directory; re-running with the same settings resumes.
        dataset, data_dir, max_examples: the training images (`ubnas_tf.data.load_arrays`);
            `validation_examples` of them (at most a quarter) are held out to score trials.
        arrays: instead of a dataset, ``(x_train, y_train, x_val, y_val)`` uint8 NHWC images
            and integer labels; `info` describes them (default: derived from the arrays).
        mode: ``"named"`` (grid over `variants`, default all of `MODULE_CONFIGS`) or
            ``"fields"`` (random search over `FIELD_CHOICES`, `max_trials` trials, default
            10).
        max_trials: at most this many trials (named mode: default every variant once).
        overwrite: discard an existing comparison in `output_dir` and start afresh.
        verbose: keras-tuner and ``fit`` progress output (0, 1 or 2).

    Raises:
        ModuleComparisonError: bad settings, or `output_dir` holds a comparison made with
            other settings (and not `overwrite`).
    """
    if mode not in MODES:
        raise ModuleComparisonError(f"mode={mode!r} is unknown; use one of {list(MODES)}.")
    names = _resolve_variants(variants)
    if mode == "fields" and variants:
        raise ModuleComparisonError("variants apply to the named mode only.")
    if max_trials is not None and max_trials < 1:
        raise ModuleComparisonError(f"max_trials={max_trials} must be >= 1.")
    if mode == "fields" and max_trials is None:
        max_trials = DEFAULT_FIELDS_TRIALS
    if epochs < 1 or batch_size < 1:
        raise ModuleComparisonError(f"epochs={epochs} and batch_size={batch_size} must be >= 1.")
    geno = _resolve_genotype(genotype)
    net_config = EvalNetworkConfig(layers=layers, init_channels=init_channels,
                                   stem_multiplier=stem_multiplier, stem_strides=stem_strides)

    if arrays is not None:
        x_tr, y_tr, x_val, y_val = (np.asarray(a) for a in arrays)
        info = info or _arrays_info(x_tr, y_tr, y_val)
        data_spec = {"arrays": {"train": len(x_tr), "validation": len(x_val),
                                "image_shape": list(info.image_shape),
                                "num_classes": info.num_classes}}
    else:
        info = get_info(dataset)
        data_spec = {"dataset": dataset, "max_examples": max_examples,
                     "validation_examples": validation_examples}
    spec = {
        "format": "ubnas-module-comparison/1",
        "mode": mode,
        "variants": names if mode == "named" else None,
        "field_choices": {k: list(v) for k, v in FIELD_CHOICES.items()} if mode == "fields" else None,
        "max_trials": max_trials,
        "objective": OBJECTIVE,
        "data": data_spec,
        "genotype": geno.to_dict(),
        "network": dataclasses.asdict(net_config),
        "training": {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
                     "label_smoothing": label_smoothing, "augment": augment, "seed": seed},
    }
    os.makedirs(output_dir, exist_ok=True)
    _check_spec(output_dir, spec, overwrite)

    if arrays is None:
        x, y = load_arrays(dataset, "train", data_dir, max_examples)
        x_tr, y_tr, x_val, y_val = _split(x, y, validation_examples, seed)
    steps = len(x_tr) // batch_size
    if steps < 1:
        raise ModuleComparisonError(
            f"batch_size={batch_size} is larger than the {len(x_tr)} training images.")
    if verbose:
        print(f"Module comparison ({mode}): {len(x_tr)} training, {len(x_val)} validation "
              f"images, {epochs} epoch(s) of {steps} steps per trial", flush=True)
    train_ds = train_dataset(x_tr, y_tr, info, batch_size, seed, augment=augment, start_epoch=0)
    val_ds = eval_dataset(x_val, y_val, info, 256)

    hypermodel = ModuleHyperModel(
        info.image_shape, info.num_classes, mode=mode, variants=names, genotype=geno,
        net_config=net_config, epochs=epochs, steps_per_epoch=steps,
        learning_rate=learning_rate, label_smoothing=label_smoothing, seed=seed)
    tuner_cls = ModuleGridSearch if mode == "named" else ModuleRandomSearch
    tuner = tuner_cls(
        hypermodel=hypermodel,
        objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
        max_trials=max_trials,
        seed=seed,
        directory=output_dir,
        project_name=TUNER_PROJECT,
        overwrite=False,
    )
    tuner.search(train_ds, epochs=epochs, steps_per_epoch=steps, validation_data=val_ds,
                 verbose=verbose)

    results, failed = _collect(tuner, hypermodel)
    winner = results[0] if results else None
    summary = {
        "format": "ubnas-module-comparison/1",
        "mode": mode,
        "objective": OBJECTIVE,
        "data": {**data_spec, "train_images": len(x_tr), "validation_images": len(x_val)},
        "network": dataclasses.asdict(net_config),
        "training": spec["training"],
        "results": [r.to_dict() for r in results],
        "failed": failed,
        "winner": None if winner is None else {
            "name": winner.name,
            "registered_name": matching_variant(winner.config),
            "val_accuracy": winner.val_accuracy,
            "module_config": ModuleConfig.from_dict(winner.config).to_dict(),
        },
    }
    atomic_write_json(os.path.join(output_dir, "comparison.json"), summary)
    return results


def results_table(results: Sequence[ModuleResult]) -> str:
    """A plain-text table of ranked results."""
    header = ("structure", "rank", "val_acc", "params", "binary", "real", "KB", "OPs (M)", "time s")
    rows = [
        (r.name, str(r.rank), f"{r.val_accuracy:.4f}", str(r.cost["total_params"]),
         str(r.cost["binary_params"]), str(r.cost["real_params"]), f"{r.cost['memory_kb']:.1f}",
         f"{r.ops / 1e6:.2f}", "-" if r.wall_time_s is None else f"{r.wall_time_s:.0f}")
        for r in results
    ]
    return text_table(header, rows)
