"""The search space: a registry of primitive ops.

Each primitive maps a name (part of the public API: flagfiles and genotypes use it) to a
factory ``build(channels, strides, config, search, fan_out) -> keras Layer`` producing a
layer from ``channels`` to ``fan_out * channels`` channels at the given stride. Adding an op
is one `register_primitive` call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import tensorflow as tf

from ubnas_tf.modules import (
    BinaryConvModule,
    ModuleConfig,
    PoolModule,
    SkipModule,
    ZeroModule,
    get_module_config,
)

__all__ = [
    "Primitive",
    "DEFAULT_PRIMITIVES",
    "register_primitive",
    "registered_primitives",
    "get_primitive",
    "resolve_primitives",
    "build_op",
]

OpFactory = Callable[[int, int, ModuleConfig, bool, int], tf.keras.layers.Layer]


@dataclasses.dataclass(frozen=True)
class Primitive:
    """A candidate op.

    Attributes:
        name: registry key.
        build: factory ``(channels, strides, config, search, fan_out) -> Layer``.
        parametric: has trainable weights (binary convs). Parameter-free ops are shared by
            all edges leaving a node in the search, so they are evaluated once.
        zero: the ``none`` op; the search cell skips evaluating it (its output is 0).
        binary: contains binary convolutions (counts against parameter-free crowding).
    """

    name: str
    build: OpFactory
    parametric: bool
    zero: bool = False
    binary: bool = False


_REGISTRY: dict[str, Primitive] = {}


def register_primitive(name: str, build: OpFactory, parametric: bool, zero: bool = False,
                       binary: bool = False, overwrite: bool = False) -> Primitive:
    """Adds an op to the search space."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"Primitive {name!r} is already registered.")
    if not name or "," in name:
        raise ValueError(f"Invalid primitive name {name!r}.")
    _REGISTRY[name] = Primitive(name, build, parametric, zero, binary)
    return _REGISTRY[name]


def registered_primitives() -> list[str]:
    return list(_REGISTRY)


def get_primitive(name: str) -> Primitive:
    if name not in _REGISTRY:
        raise ValueError(f"Unknown primitive {name!r}; known primitives: {registered_primitives()}.")
    return _REGISTRY[name]


def resolve_primitives(names: Iterable[str] | str | None) -> tuple[str, ...]:
    """Validates a primitive subset (``None``: the defaults); keeps registry order stable."""
    if names is None:
        return DEFAULT_PRIMITIVES
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise ValueError(
            f"Unknown primitive(s) {unknown}; known primitives: {registered_primitives()}."
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"Primitive(s) {dupes} listed more than once.")
    if not any(not _REGISTRY[n].zero for n in names):
        raise ValueError(f"The primitives {names} need at least one op other than 'none'.")
    return tuple(names)


def build_op(name: str, channels: int, strides: int = 1,
             config: str | dict | ModuleConfig | None = None, search: bool = False,
             fan_out: int = 1, layer_name: str | None = None) -> tf.keras.layers.Layer:
    """Builds the layer for primitive `name`."""
    layer = get_primitive(name).build(channels, strides, get_module_config(config), search, fan_out)
    if layer_name is not None:
        layer._name = layer_name  # Keras has no public setter before the layer is used.
    return layer


def _bconv(kernel_size: int, dilation_rate: int) -> OpFactory:
    def build(channels, strides, config, search, fan_out):
        return BinaryConvModule(kernel_size, strides, dilation_rate, fan_out=fan_out,
                                affine=not search, config=config)

    return build


def _pool_op(kind: str) -> OpFactory:
    def build(channels, strides, config, search, fan_out):
        return PoolModule(kind, strides, batch_norm=search, affine=False)

    return build


register_primitive("none", lambda c, s, cfg, search, f: ZeroModule(s), parametric=False, zero=True)
register_primitive("skip_connect", lambda c, s, cfg, search, f: SkipModule(s, cfg), parametric=False)
register_primitive("max_pool_3x3", _pool_op("max_pool"), parametric=False)
register_primitive("avg_pool_3x3", _pool_op("avg_pool"), parametric=False)
register_primitive("bconv_3x3", _bconv(3, 1), parametric=True, binary=True)
register_primitive("bconv_5x5", _bconv(5, 1), parametric=True, binary=True)
register_primitive("bdil_conv_3x3", _bconv(3, 2), parametric=True, binary=True)
register_primitive("bdil_conv_5x5", _bconv(5, 2), parametric=True, binary=True)

DEFAULT_PRIMITIVES: tuple[str, ...] = (
    "none",
    "skip_connect",
    "max_pool_3x3",
    "avg_pool_3x3",
    "bconv_3x3",
    "bconv_5x5",
    "bdil_conv_3x3",
    "bdil_conv_5x5",
)


def parameter_free(primitives: Sequence[str]) -> list[str]:
    """Ops with no binary conv and not ``none`` (they crowd out convs in DARTS collapse)."""
    return [p for p in primitives if not get_primitive(p).zero and not get_primitive(p).binary]
