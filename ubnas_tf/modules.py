"""Binary building blocks ("modules") and their configurable structure.

A binary convolution module (Bi-Real Net style, docs/design.md idea 2) computes

    y = act( BN_post( bconv( q( BN_pre(x) ) ) ) + shortcut(x) )

where ``q`` is an ApproxSign activation quantizer, ``bconv`` a Larq `QuantConv2D` with
binary weights, ``pad_values=1.0`` and no bias (an `OnesPaddedQuantConv2D`, which trains
without materialising the padding), ``shortcut`` the real-valued identity (or a
parameter-free 2x2 pool at stride 2), and ``act`` optional. Which variant is used is a
`ModuleConfig` (docs/design.md idea 3); the ``universal`` config is the default.

The search and the evaluation network build their ops from these same layers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf
from larq import utils

from ubnas_tf.padded_conv import OnesPaddedQuantConv2D
from ubnas_tf.quantizers import (
    ACTIVATION_QUANTIZERS,
    KERNEL_QUANTIZERS,
    get_activation_quantizer,
    get_kernel_quantizer,
)

__all__ = [
    "ModuleConfig",
    "MODULE_CONFIGS",
    "get_module_config",
    "BinaryConvModule",
    "PoolModule",
    "SkipModule",
    "ZeroModule",
    "BinaryPreprocess",
    "RealPreprocess",
    "FixedReduction",
    "REDUCTIONS",
    "channel_shuffle",
]

# How the reduction cells are made (`ModuleConfig.reduction`): searched, or a fixed block.
REDUCTIONS = ("searched", "real", "binary")


@dataclasses.dataclass(frozen=True)
class ModuleConfig:
    """The structure of a binary module, explored by `tools/compare_modules.py`.

    Attributes:
        name: a label for reports.
        bn_before_sign: put a BatchNorm before the activation quantizer (pre-activation BN).
        activation: ``None`` or ``"prelu"``: non-linearity after the shortcut add.
        downsample_shortcut: ``"avg_pool"`` or ``"max_pool"``: the parameter-free 2x2 pool
            used as the real-valued shortcut of a stride-2 module.
        activation_quantizer: a name in `ubnas_tf.quantizers.ACTIVATION_QUANTIZERS`, or
            ``None`` for real activations (stage 1 of two-stage retraining).
        kernel_quantizer: a name in `ubnas_tf.quantizers.KERNEL_QUANTIZERS` (weight scaling
            is ``magnitude_aware_sign``; plain ``ste_sign`` has none), or ``None`` for latent
            real weights (the search's ``--search_weights=real``).
        preprocess: how a cell maps its inputs to its width: ``"binary_shortcut"`` (binary
            1x1 conv plus a parameter-free real shortcut: the mean over channel groups, so
            real-valued information crosses every cell boundary, as Bi-Real Net asks of every
            binary conv), ``"binary"`` (binary 1x1 conv only) or ``"real"`` (real 1x1 conv,
            counted as FLOPs).
        reduction: what the network's reduction cells are (docs/design.md idea 3, reduction-cell
            design). ``"searched"``: a cell of the genotype, as DARTS (the supernet searches
            alpha_reduce/beta_reduce for it). The fixed designs replace that cell, in the
            evaluation network and in the supernet alike, with one downsampling block
            (`FixedReduction`) on the previous cell's output; the reduce genotype and
            alpha_reduce/beta_reduce are then unused. ``"real"``: Bi-Real Net's and
            ReActNet's real-valued downsampling shortcut on its own, 2x2 pool -> real 1x1
            conv -> BN (its MACs count as FLOPs); ``"binary"``: a binary 3x3 stride-2
            module widening to the cell's output width, with the parameter-free pooled
            input (repeated across the wider output) as its real shortcut, as ReActNet's
            reduction blocks keep real information on the shortcut without any FLOPs.
    """

    name: str = "universal"
    bn_before_sign: bool = True
    activation: str | None = None
    downsample_shortcut: str = "avg_pool"
    activation_quantizer: str = "approx_sign"
    kernel_quantizer: str = "magnitude_aware_sign"
    preprocess: str = "binary_shortcut"
    reduction: str = "searched"

    def __post_init__(self):
        choices = {
            "activation": (None, "prelu"),
            "downsample_shortcut": ("avg_pool", "max_pool"),
            "activation_quantizer": (*ACTIVATION_QUANTIZERS, None),
            "kernel_quantizer": (*KERNEL_QUANTIZERS, None),
            "preprocess": ("binary_shortcut", "binary", "real"),
            "reduction": REDUCTIONS,
        }
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"ModuleConfig.{field}={getattr(self, field)!r} is not one of {list(allowed)}."
                )

    @property
    def searched_reduction(self) -> bool:
        """True when the reduction cells are genotype cells (searched), not a fixed block."""
        return self.reduction == "searched"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModuleConfig:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown ModuleConfig fields {sorted(unknown)}.")
        return cls(**data)


MODULE_CONFIGS: dict[str, ModuleConfig] = {
    "universal": ModuleConfig(),
    "bireal": ModuleConfig(name="bireal", kernel_quantizer="ste_sign"),
    "reactnet": ModuleConfig(
        name="reactnet",
        activation="prelu",
        activation_quantizer="learnable_threshold_approx_sign",
    ),
    "real_preprocess": ModuleConfig(name="real_preprocess", preprocess="real"),
    "binary_preprocess": ModuleConfig(name="binary_preprocess", preprocess="binary"),
    "maxpool_shortcut": ModuleConfig(name="maxpool_shortcut", downsample_shortcut="max_pool"),
    "no_pre_bn": ModuleConfig(name="no_pre_bn", bn_before_sign=False),
    "universal_real_reduction": ModuleConfig(name="universal_real_reduction", reduction="real"),
    "universal_binary_reduction": ModuleConfig(name="universal_binary_reduction",
                                               reduction="binary"),
    # The four single-field changes that each beat universal in the module comparison
    # (docs/studies.md), together: ReActNet's block (no BN before its learnable-threshold
    # sign, PReLU after the add), plain binary preprocessing and a max-pool shortcut.
    "combined": ModuleConfig(
        name="combined",
        bn_before_sign=False,
        activation="prelu",
        activation_quantizer="learnable_threshold_approx_sign",
        downsample_shortcut="max_pool",
        preprocess="binary",
    ),
}


def get_module_config(config: str | dict | ModuleConfig | None) -> ModuleConfig:
    """Resolves a config name, dict or instance; ``None`` gives ``universal``."""
    if config is None:
        return MODULE_CONFIGS["universal"]
    if isinstance(config, ModuleConfig):
        return config
    if isinstance(config, dict):
        return ModuleConfig.from_dict(config)
    if config not in MODULE_CONFIGS:
        raise ValueError(f"Unknown module config {config!r}; expected one of {sorted(MODULE_CONFIGS)}.")
    return MODULE_CONFIGS[config]


def _batch_norm(affine: bool, name: str | None = None) -> tf.keras.layers.BatchNormalization:
    # Search ops use non-affine BN (as DARTS does) so op outputs stay comparable.
    return tf.keras.layers.BatchNormalization(
        momentum=0.9, epsilon=1e-5, center=affine, scale=affine, name=name
    )


def _pool(kind: str, size: int, strides: int) -> tf.keras.layers.Layer:
    cls = tf.keras.layers.AveragePooling2D if kind == "avg_pool" else tf.keras.layers.MaxPool2D
    return cls(pool_size=size, strides=strides, padding="same")


def channel_shuffle(x: tf.Tensor, groups: int) -> tf.Tensor:
    """ShuffleNet/PC-DARTS channel shuffle: ``[g, C/g]`` channel blocks become ``[C/g, g]``."""
    if groups == 1:
        return x
    shape = tf.shape(x)
    channels = x.shape[-1]
    y = tf.reshape(x, tf.concat([shape[:-1], [groups, channels // groups]], 0))
    y = tf.transpose(y, [0, 1, 2, 4, 3])
    return tf.reshape(y, shape)


@utils.register_keras_custom_object
class BinaryConvModule(tf.keras.layers.Layer):
    """Binary convolution module with a real-valued shortcut.

    Maps ``C`` input channels to ``fan_out * C`` output channels: ``fan_out`` independent
    copies of the module (each with its own binary kernel and BN statistics) evaluated as
    one convolution. The search uses ``fan_out > 1`` to evaluate the same op on every edge
    leaving one node at once; the evaluation network uses ``fan_out=1``.

    A dilated module at stride 2 is evaluated as a dense ``kxk`` binary conv on the
    ``[::2, ::2]``-subsampled input: with dilation 2 and symmetric padding, every tap of a
    stride-2 output lands on an even pixel, so the two are the same function (and Keras,
    unlike this form, refuses stride > 1 together with dilation > 1).
    """

    def __init__(
        self,
        kernel_size: int,
        strides: int = 1,
        dilation_rate: int = 1,
        fan_out: int = 1,
        affine: bool = True,
        config: str | dict | ModuleConfig | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, got {strides}.")
        if dilation_rate not in (1, 2):
            raise ValueError(f"dilation_rate must be 1 or 2, got {dilation_rate}.")
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.dilation_rate = int(dilation_rate)
        self.fan_out = int(fan_out)
        self.affine = bool(affine)
        self.config = get_module_config(config)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        cfg = self.config
        self.pre_bn = _batch_norm(self.affine, "pre_bn") if cfg.bn_before_sign else None
        subsample = self.strides == 2 and self.dilation_rate == 2
        self.subsample_input = subsample
        self.conv = OnesPaddedQuantConv2D(
            channels * self.fan_out,
            self.kernel_size,
            strides=1 if subsample else self.strides,
            dilation_rate=1 if subsample else self.dilation_rate,
            padding="same",
            pad_values=1.0,
            use_bias=False,
            input_quantizer=get_activation_quantizer(cfg.activation_quantizer),
            kernel_quantizer=get_kernel_quantizer(cfg.kernel_quantizer),
            kernel_constraint="weight_clip",
            kernel_initializer="glorot_normal",
            name="bconv",
        )
        self.post_bn = _batch_norm(self.affine, "post_bn")
        self.shortcut_pool = (
            _pool(cfg.downsample_shortcut, 2, 2) if self.strides == 2 else None
        )
        self.act = (
            tf.keras.layers.PReLU(shared_axes=[1, 2], alpha_initializer=tf.keras.initializers.Constant(0.25))
            if cfg.activation == "prelu"
            else None
        )
        super().build(input_shape)

    def call(self, inputs, training=None):
        h = self.pre_bn(inputs, training=training) if self.pre_bn is not None else inputs
        if self.subsample_input:
            h = h[:, ::2, ::2, :]
        h = self.post_bn(self.conv(h), training=training)
        shortcut = self.shortcut_pool(inputs) if self.shortcut_pool is not None else inputs
        if self.fan_out > 1:
            shortcut = tf.tile(shortcut, [1, 1, 1, self.fan_out])
        out = h + shortcut
        return self.act(out) if self.act is not None else out

    def get_config(self):
        return {
            **super().get_config(),
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "dilation_rate": self.dilation_rate,
            "fan_out": self.fan_out,
            "affine": self.affine,
            "config": self.config.to_dict(),
        }


@utils.register_keras_custom_object
class PoolModule(tf.keras.layers.Layer):
    """3x3 max or average pooling, optionally followed by a (non-affine) BatchNorm."""

    def __init__(self, pool_type: str, strides: int = 1, batch_norm: bool = False,
                 affine: bool = False, **kwargs):
        super().__init__(**kwargs)
        if pool_type not in ("max_pool", "avg_pool"):
            raise ValueError(f"pool_type must be 'max_pool' or 'avg_pool', got {pool_type!r}.")
        self.pool_type = pool_type
        self.strides = int(strides)
        self.batch_norm = bool(batch_norm)
        self.affine = bool(affine)
        self.pool = _pool(pool_type, 3, self.strides)
        self.bn = _batch_norm(affine, "bn") if batch_norm else None

    def call(self, inputs, training=None):
        out = self.pool(inputs)
        return self.bn(out, training=training) if self.bn is not None else out

    def get_config(self):
        return {**super().get_config(), "pool_type": self.pool_type, "strides": self.strides,
                "batch_norm": self.batch_norm, "affine": self.affine}


@utils.register_keras_custom_object
class SkipModule(tf.keras.layers.Layer):
    """Identity at stride 1; the module's parameter-free downsampling shortcut at stride 2."""

    def __init__(self, strides: int = 1, config: str | dict | ModuleConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        self.strides = int(strides)
        self.config = get_module_config(config)
        self.pool = _pool(self.config.downsample_shortcut, 2, 2) if self.strides == 2 else None

    def call(self, inputs):
        return self.pool(inputs) if self.pool is not None else inputs

    def get_config(self):
        return {**super().get_config(), "strides": self.strides, "config": self.config.to_dict()}


@utils.register_keras_custom_object
class ZeroModule(tf.keras.layers.Layer):
    """The ``none`` op: zeros of the output shape (never evaluated by the search cell)."""

    def __init__(self, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.strides = int(strides)

    def call(self, inputs):
        if self.strides == 2:
            inputs = inputs[:, ::2, ::2, :]
        return tf.zeros_like(inputs)

    def get_config(self):
        return {**super().get_config(), "strides": self.strides}


class _Preprocess(tf.keras.layers.Layer):
    """What the two preprocess layers share: their arguments, kept as the config that saved
    models record (``filters``, ``reduce``, ``affine``, ``config``)."""

    def __init__(self, filters: int, reduce: bool = False, affine: bool = True,
                 config: str | dict | ModuleConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.reduce = bool(reduce)
        self.affine = bool(affine)
        self.config = get_module_config(config)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "reduce": self.reduce,
                "affine": self.affine, "config": self.config.to_dict()}


@utils.register_keras_custom_object
class BinaryPreprocess(_Preprocess):
    """Maps a cell input to the cell width: BN -> sign -> binary 1x1 conv -> BN.

    With ``reduce=True`` (the input comes from before a reduction) a 2x2 pool first halves
    the resolution, the binary counterpart of DARTS' FactorizedReduce. With the
    ``binary_shortcut`` preprocess, the (pooled) input averaged over ``C_in / filters``
    channel groups is added as a real-valued shortcut; for a cell output (the concat of its
    nodes) that is the mean of the nodes. When ``filters`` does not divide ``C_in`` there is
    no shortcut (choose widths so it does).
    """

    def __init__(self, filters: int, reduce: bool = False, affine: bool = True,
                 config: str | dict | ModuleConfig | None = None, **kwargs):
        super().__init__(filters, reduce, affine, config, **kwargs)
        cfg = self.config
        self.pool = _pool(cfg.downsample_shortcut, 2, 2) if self.reduce else None
        self.pre_bn = _batch_norm(affine, "pre_bn") if cfg.bn_before_sign else None
        self.conv = OnesPaddedQuantConv2D(
            self.filters, 1, padding="same", pad_values=1.0, use_bias=False,
            input_quantizer=get_activation_quantizer(cfg.activation_quantizer),
            kernel_quantizer=get_kernel_quantizer(cfg.kernel_quantizer),
            kernel_constraint="weight_clip", kernel_initializer="glorot_normal", name="bconv",
        )
        self.post_bn = _batch_norm(affine, "post_bn")

    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        use = self.config.preprocess == "binary_shortcut" and in_channels % self.filters == 0
        self.shortcut_groups = in_channels // self.filters if use else 0
        super().build(input_shape)

    def call(self, inputs, training=None):
        x = self.pool(inputs) if self.pool is not None else inputs
        h = self.pre_bn(x, training=training) if self.pre_bn is not None else x
        out = self.post_bn(self.conv(h), training=training)
        if self.shortcut_groups:
            shape = tf.shape(x)
            groups = tf.reshape(x, tf.concat([shape[:3], [self.shortcut_groups, self.filters]], 0))
            out = out + tf.reduce_mean(groups, axis=3)
        return out


@utils.register_keras_custom_object
class RealPreprocess(_Preprocess):
    """Maps a cell input to the cell width with a real 1x1 conv + BN (counted as FLOPs)."""

    def __init__(self, filters: int, reduce: bool = False, affine: bool = True,
                 config: str | dict | ModuleConfig | None = None, **kwargs):
        super().__init__(filters, reduce, affine, config, **kwargs)
        self.conv = tf.keras.layers.Conv2D(
            self.filters, 1, strides=2 if self.reduce else 1, use_bias=False, name="conv"
        )
        self.bn = _batch_norm(affine, "bn")

    def call(self, inputs, training=None):
        return self.bn(self.conv(inputs), training=training)


def preprocess_layer(filters: int, reduce: bool, affine: bool, config: ModuleConfig,
                     name: str) -> tf.keras.layers.Layer:
    cls = RealPreprocess if config.preprocess == "real" else BinaryPreprocess
    return cls(filters, reduce=reduce, affine=affine, config=config, name=name)


@utils.register_keras_custom_object
class FixedReduction(tf.keras.layers.Layer):
    r"""A reduction cell of fixed design (`ModuleConfig.reduction` ``"real"`` or ``"binary"``).

    It replaces the genotype's reduction cell: it reads only the previous cell's output
    \(x\) (``C_in`` channels, resolution H x W) and returns `filters` channels at
    \(\lceil H/2 \rceil \times \lceil W/2 \rceil\), the width the replaced cell would
    have had (the caller passes it). The next cell takes it as its input 1, and the output of
    the cell before as its input 0, which it pools as after any reduction.

    * ``"real"`` (Bi-Real Net / ReActNet's downsampling shortcut):
      \(y = BN(W_{1x1} * P(x))\) with \(P\) the config's 2x2 stride-2 pool
      (``downsample_shortcut``, average by default) and a real 1x1 conv; it costs
      \(\lceil H/2 \rceil \lceil W/2 \rceil C_{in} \cdot filters\) FLOPs and
      converts to a float ``CONV_2D``. Linear: the information goes through in full
      precision, at a FLOP cost.
    * ``"binary"``: a binary module as `BinaryConvModule` but widening,
      \(y = act(BN_{post}(bconv_{3x3,s2}(q(BN_{pre}(x)))) + R(P(x)))\) with
      \(R\) repeating the ``C_in`` pooled channels up to `filters` (ReActNet's reduction
      duplicates its input the same way), so the real shortcut costs no FLOPs; it
      costs \(\lceil H/2 \rceil \lceil W/2 \rceil \cdot 9 C_{in} \cdot filters\) BOPs
      and converts to ``LceBconv2d``. Quantizers, BN position and activation follow the
      config as in every binary module.
    """

    def __init__(self, filters: int, kind: str | None = None, affine: bool = True,
                 config: str | dict | ModuleConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        self.config = get_module_config(config)
        self.kind = kind or self.config.reduction
        if self.kind not in ("real", "binary"):
            raise ValueError(f"FixedReduction kind must be 'real' or 'binary', got {self.kind!r} "
                             "(a 'searched' reduction is a genotype cell).")
        self.filters = int(filters)
        self.affine = bool(affine)

    @property
    def reduction(self) -> bool:
        """Always a reduction (as `SearchCell.reduction`)."""
        return True

    @property
    def channels(self) -> int:
        return self.filters

    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        cfg = self.config
        self.pool = _pool(cfg.downsample_shortcut, 2, 2)
        if self.kind == "real":
            self.conv = tf.keras.layers.Conv2D(self.filters, 1, use_bias=False, name="conv")
            self.bn = _batch_norm(self.affine, "bn")
        else:
            self.pre_bn = _batch_norm(self.affine, "pre_bn") if cfg.bn_before_sign else None
            self.conv = OnesPaddedQuantConv2D(
                self.filters, 3, strides=2, padding="same", pad_values=1.0, use_bias=False,
                input_quantizer=get_activation_quantizer(cfg.activation_quantizer),
                kernel_quantizer=get_kernel_quantizer(cfg.kernel_quantizer),
                kernel_constraint="weight_clip", kernel_initializer="glorot_normal",
                name="bconv",
            )
            self.post_bn = _batch_norm(self.affine, "post_bn")
            self.repeats = -(-self.filters // in_channels)  # ceil
            self.act = (
                tf.keras.layers.PReLU(shared_axes=[1, 2],
                                      alpha_initializer=tf.keras.initializers.Constant(0.25))
                if cfg.activation == "prelu" else None
            )
        super().build(input_shape)

    def call(self, inputs, training=None):
        pooled = self.pool(inputs)
        if self.kind == "real":
            return self.bn(self.conv(pooled), training=training)
        h = self.pre_bn(inputs, training=training) if self.pre_bn is not None else inputs
        h = self.post_bn(self.conv(h), training=training)
        shortcut = tf.tile(pooled, [1, 1, 1, self.repeats]) if self.repeats > 1 else pooled
        if shortcut.shape[-1] != self.filters:
            shortcut = shortcut[..., :self.filters]
        out = h + shortcut
        return self.act(out) if self.act is not None else out

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kind": self.kind,
                "affine": self.affine, "config": self.config.to_dict()}


STEM_STRIDES = (1, 2, 4, 8)


def real_stem_layers(filters: int, strides: int, prefix: str,
                     epsilon: float = 1e-3) -> list[tf.keras.layers.Layer]:
    """The real stem of the supernet and the evaluation network, in order of application:
    one 3x3 conv + BN per halving of the resolution (a single stride-1 conv + BN when
    `strides` is 1), ReLU between them; stride 8 is DARTS' / PC-DARTS' ImageNet stem.

    Layers are named ``{prefix}conv``, ``{prefix}bn``, ``{prefix}relu1``, ``{prefix}conv1``, ...
    """
    if strides not in STEM_STRIDES:
        raise ValueError(f"stem_strides must be one of {STEM_STRIDES}, got {strides}.")
    layers: list[tf.keras.layers.Layer] = []
    for i in range(max(1, strides.bit_length() - 1)):
        suffix = str(i) if i else ""
        if i:
            layers.append(tf.keras.layers.ReLU(name=f"{prefix}relu{suffix}"))
        layers.append(tf.keras.layers.Conv2D(filters, 3, strides=2 if strides > 1 else 1,
                                             padding="same", use_bias=False,
                                             name=f"{prefix}conv{suffix}"))
        layers.append(tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=epsilon,
                                                         name=f"{prefix}bn{suffix}"))
    return layers
