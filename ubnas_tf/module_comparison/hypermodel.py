"""The HyperModel of the comparison: a module structure from ``hp``, the proxy network with it.

Two kinds of hyperparameters, both in the oracle's search space:

* the **choice** of module structure: ``hp.Choice("module_config", variants)`` (mode
  ``"named"``), or one choice per `ModuleConfig` field (mode ``"fields"``, `FIELD_CHOICES`);
* the comparison's **settings** (proxy network, genotype, data, training length, first
  seed and number of seeds), each a ``hp.Fixed``. They never vary, but keras-tuner saves the search space in its oracle and
  every trial's values in its trial record, so the settings a comparison was made with are
  kept where its results are, and a re-run with other settings can be told apart from a
  resumption (`ubnas_tf.module_comparison.tuner.ModuleTunerMixin.settings_differences`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import keras_tuner
import tensorflow as tf

from ubnas_tf.errors import ModuleComparisonError
from ubnas_tf.genotype import Genotype
from ubnas_tf.modules import MODULE_CONFIGS, REDUCTIONS, ModuleConfig
from ubnas_tf.nets.eval_network import EvalNetworkConfig, build_eval_network
from ubnas_tf.nets.training import smoothed_sparse_crossentropy
from ubnas_tf.quantizers import ACTIVATION_QUANTIZERS, KERNEL_QUANTIZERS

__all__ = [
    "FIELD_CHOICES",
    "MODES",
    "PROXY_GENOTYPE",
    "ModuleComparisonError",
    "ModuleHyperModel",
    "fields_label",
    "matching_variant",
    "resolve_genotype",
    "resolve_variants",
]

MODES = ("named", "fields")

# What ``hp.Fixed`` can hold; a setting that is None is not recorded (absent).
Setting = int | float | str | bool


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
        "reduction": REDUCTIONS,
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


def _structure(config: ModuleConfig) -> dict[str, Any]:
    d = config.to_dict()
    d.pop("name")
    return d


def fields_label(fields: Mapping[str, Any]) -> str:
    """A readable name for a field combination: its differences from `universal`."""
    base = _structure(MODULE_CONFIGS["universal"])
    diffs = [f"{k}={fields[k]}" for k in FIELD_CHOICES if fields[k] != base[k]]
    return "universal" if not diffs else "+".join(diffs)


def matching_variant(config: ModuleConfig | Mapping[str, Any]) -> str | None:
    """The name in `MODULE_CONFIGS` with the same structure as `config` (ignoring its name)."""
    fields = _structure(config) if isinstance(config, ModuleConfig) else {
        k: v for k, v in config.items() if k != "name"}
    for name, variant in MODULE_CONFIGS.items():
        if _structure(variant) == fields:
            return name
    return None


def resolve_genotype(genotype: str | os.PathLike | Mapping | Genotype | None) -> Genotype:
    """The proxy genotype from a `Genotype`, a genotype.json path or dict; None: the default."""
    if genotype is None:
        return PROXY_GENOTYPE
    if isinstance(genotype, Genotype):
        return genotype.validate()
    if isinstance(genotype, Mapping):
        return Genotype.from_dict(dict(genotype))
    return Genotype.load(genotype)


def resolve_variants(variants: Sequence[str] | None) -> list[str]:
    """The named variants to compare (default: all of `MODULE_CONFIGS`, in registry order)."""
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
        seed: the first seed: every trial's execution i initialises its weights (and
            orders its data, `ModuleTunerMixin.run_trial`) with ``seed + i``, the same
            seeds for every structure. None: unseeded.
        seeds: executions per trial, each with its own seed (keras-tuner's
            ``executions_per_trial``); a trial is scored by their mean.
        recorded: further settings of the comparison that the hypermodel does not use but
            that decide its results (the data, the batch size), recorded with its own
            settings (see `settings`).
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, mode: str = "named",
                 variants: Sequence[str] | None = None,
                 genotype: str | os.PathLike | Mapping | Genotype | None = None,
                 net_config: EvalNetworkConfig | None = None, epochs: int = 2,
                 steps_per_epoch: int = 100, learning_rate: float = 2e-3,
                 label_smoothing: float = 0.1, seed: int | None = 0, seeds: int = 1,
                 recorded: Mapping[str, Setting | None] | None = None, **kwargs):
        super().__init__(name="module_hypermodel", **kwargs)
        if mode not in MODES:
            raise ModuleComparisonError(f"mode={mode!r} is unknown; use one of {list(MODES)}.")
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.mode = mode
        self.variants = resolve_variants(variants)
        self.genotype = resolve_genotype(genotype)
        self.net_config = net_config or EvalNetworkConfig(layers=3, init_channels=32)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.learning_rate = float(learning_rate)
        self.label_smoothing = float(label_smoothing)
        self.seed = seed
        if int(seeds) < 1:
            raise ModuleComparisonError(f"seeds={seeds} must be >= 1.")
        self.seeds = int(seeds)
        self.recorded = dict(recorded or {})
        clash = sorted(set(self.recorded) & set(self._own_settings()))
        if clash:
            raise ValueError(f"recorded settings {clash} are the hypermodel's own settings.")

    def _own_settings(self) -> dict[str, Setting | None]:
        return {
            "input_shape": "x".join(str(d) for d in self.input_shape),
            "num_classes": self.num_classes,
            # One line, so that keras-tuner's per-trial table stays readable.
            "genotype": str(self.genotype).replace("\n", " | "),
            **dataclasses.asdict(self.net_config),
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "learning_rate": self.learning_rate,
            "label_smoothing": self.label_smoothing,
            "seed": self.seed,
            "seeds": self.seeds,
        }

    @property
    def execution_seeds(self) -> list[int | None]:
        """The seed of each execution of a trial: ``seed, seed + 1, ...`` (None: unseeded)."""
        if self.seed is None:
            return [None] * self.seeds
        return [int(self.seed) + i for i in range(self.seeds)]

    @property
    def settings(self) -> dict[str, Setting]:
        """The constants every trial shares, declared as ``hp.Fixed`` (None ones left out)."""
        merged = {**self._own_settings(), **self.recorded}
        return {name: value for name, value in merged.items() if value is not None}

    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> None:
        """Declares the search space (choices first, then the settings) without building."""
        self.module_config(hp)
        for name, value in self.settings.items():
            hp.Fixed(name, value)

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
        """The compiled proxy network of the first execution (`build_seeded`)."""
        return self.build_seeded(hp, self.execution_seeds[0])

    def build_seeded(self, hp: keras_tuner.HyperParameters, seed: int | None) -> tf.keras.Model:
        """The compiled proxy network, its weights initialised from `seed` (None: unseeded);
        its `module_config` and `execution_seed` attributes are the structure and seed."""
        config = self.module_config(hp)
        if seed is not None:
            tf.keras.utils.set_random_seed(int(seed))
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
        model.execution_seed = seed
        return model
