"""Cost accounting for binary neural networks: parameters, model size, BOPs, FLOPs, OPs.

Works on any Keras/Larq model (functional, sequential, subclassed, nested models and layers
nested inside custom layers); it knows nothing of how the model was made.

Counting rules (Larq's `lq.models.summary` is the reference; the deviations are listed):

* **Parameters.** Every weight of the model counts, trainable or not (BatchNorm moving
  statistics included), each variable once even when shared. A weight's bit width is its
  quantizer's precision (Larq marks binary kernels with ``precision == 1``), else 32 bits.
  *Binary params* are the 1-bit weights, *real params* all others. As in Larq, a
  BatchNormalization layer folds (beta, moving_mean) and (gamma, moving_variance) into one
  offset and one scale per channel at inference, so it counts 2 params per channel.
  Weights owned by a quantizer (e.g. a learnable threshold) count towards the layer that
  holds the quantizer.
* **Model size** = sum over weights of bit width x count, in KB of 8 x 1024 bits (Larq's
  "Memory" column and "Model size").
* **MACs.** For every Conv (1D/2D/3D, grouped, depthwise, separable, transposed) and Dense
  layer, including Larq's Quant* variants, each call costs
  ``kernel.size x output positions`` multiply-accumulates per example (input positions for
  transposed convs), i.e. ``out_h * out_w * k_h * k_w * c_in * c_out / groups`` for a 2D
  conv; a separable conv adds its depthwise and pointwise kernels. Biases, BatchNorm,
  activations, pooling and additions are not counted. One MAC (a multiply plus an add)
  counts as ONE operation, which is Larq's convention for its "MACs" columns.
* **BOPs** are the MACs of layers whose input quantizer AND kernel quantizer are both
  1-bit (XNOR-popcount in LCE); **FLOPs** are the MACs of every other such layer: stem,
  classifier, real shortcut convs, and a QuantConv2D with a real-valued input (stage-1
  networks with binary weights and real activations count as FLOPs).
* **OPs** = BOPs / 64 + FLOPs (the usual BNN convention, e.g. Bi-Real Net, ReActNet).

Output shapes come from one traced forward pass (batch 1, inputs of zeros) in which the
`call` of every MAC layer is wrapped to record its input and output shapes, so layers
nested inside custom layers are seen, and a layer called several times is charged per call.

Deviations from `lq.models.summary`: Larq counts a custom layer's nested weights without the
BatchNorm folding and lists only top-level layers; larq's own function-form quantizers
(``larq.quantizers.ste_sign`` passed as a function, which has no ``precision`` attribute)
count as 1-bit here but 32-bit in Larq's summary.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from typing import Any

import larq as lq
import numpy as np
import tensorflow as tf

from ubnas_tf import io_utils
from ubnas_tf.tables import text_table

__all__ = [
    "CostReport",
    "LayerCost",
    "iter_layers",
    "model_cost",
    "quantizer_precision",
    "is_binary_quantizer",
]

# Larq's sign quantizers in function form carry no `precision` attribute.
_LARQ_1BIT_FUNCTIONS = frozenset({"ste_sign", "approx_sign", "swish_sign", "ste_heaviside"})

_CONV_TYPES = (
    tf.keras.layers.Conv1D,
    tf.keras.layers.Conv2D,
    tf.keras.layers.Conv3D,
    tf.keras.layers.DepthwiseConv1D,
    tf.keras.layers.DepthwiseConv2D,
    tf.keras.layers.SeparableConv1D,
    tf.keras.layers.SeparableConv2D,
)
_TRANSPOSE_TYPES = (
    tf.keras.layers.Conv1DTranspose,
    tf.keras.layers.Conv2DTranspose,
    tf.keras.layers.Conv3DTranspose,
)
_MAC_TYPES = (*_CONV_TYPES, tf.keras.layers.Dense)
# (kernel attribute, quantizer attribute) of the weights that are multiplied per position.
_KERNELS = (
    ("kernel", "kernel_quantizer"),
    ("depthwise_kernel", "depthwise_quantizer"),
    ("pointwise_kernel", "pointwise_quantizer"),
)

OPS_PER_BOP = 1.0 / 64.0


# --------------------------------------------------------------------------- quantizers


def quantizer_precision(quantizer: Any) -> int | None:
    """Bit width a Larq quantizer (string, dict, object or function) declares, or None."""
    if quantizer is None:
        return None
    if isinstance(quantizer, str | dict):
        quantizer = lq.quantizers.get(quantizer)
    precision = getattr(quantizer, "precision", None)
    if precision is None:
        name = getattr(quantizer, "__name__", None)
        module = getattr(quantizer, "__module__", "") or ""
        if name in _LARQ_1BIT_FUNCTIONS and module.startswith("larq"):
            return 1
    return precision


def is_binary_quantizer(quantizer: Any) -> bool:
    """True for a 1-bit quantizer that actually quantizes (Larq's `NoOp` only declares)."""
    if isinstance(quantizer, str | dict):
        quantizer = lq.quantizers.get(quantizer)
    return quantizer_precision(quantizer) == 1 and not isinstance(quantizer, lq.quantizers.NoOp)


def _weight_precision(layer: tf.keras.layers.Layer, weight: tf.Variable) -> int:
    precision = getattr(weight, "precision", None)
    if precision is None:
        # Mixed-precision wrappers may hide the QuantizedVariable: ask the layer's quantizer.
        for kernel_attr, quantizer_attr in _KERNELS:
            kernel = getattr(layer, kernel_attr, None)
            if kernel is not None and _same_variable(kernel, weight):
                precision = quantizer_precision(getattr(layer, quantizer_attr, None))
                break
    return int(precision) if precision else 32


def _same_variable(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return a.handle is b.handle
    except AttributeError:
        return False


# --------------------------------------------------------------------------- traversal


def iter_layers(model: tf.keras.layers.Layer) -> Iterator[tuple[str, tf.keras.layers.Layer]]:
    """Yields ``(path, layer)`` for every layer nested in `model`, each layer once, children
    before their parent (post-order). Quantizers and metrics are not yielded: they are part
    of the layer that holds them. `model` itself is not yielded."""
    seen: set[int] = set()

    def children(layer: tf.keras.layers.Layer) -> list[tf.keras.layers.Layer]:
        return [
            c
            for c in layer._flatten_layers(include_self=False, recursive=False)
            if not isinstance(c, lq.quantizers.Quantizer | tf.keras.metrics.Metric)
        ]

    def walk(layer: tf.keras.layers.Layer, prefix: str):
        for child in children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}/{child.name}" if prefix else child.name
            yield from walk(child, path)
            yield path, child

    yield from walk(model, "")


# --------------------------------------------------------------------------- report


@dataclasses.dataclass
class LayerCost:
    """Cost of one layer (summed over its calls in the traced forward pass)."""

    name: str
    type: str
    output_shape: list[int | None] | None
    calls: int
    binary_params: int
    real_params: int
    memory_bits: int
    bops: int
    flops: int
    input_precision: int | None = None
    traced: bool = True

    @property
    def memory_kb(self) -> float:
        return self.memory_bits / (8 * 1024)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["memory_kb"] = self.memory_kb
        return d


@dataclasses.dataclass
class CostReport:
    """Per-layer rows and totals; see the module docstring for the counting rules."""

    model_name: str
    layers: list[LayerCost]
    input_shapes: list[list[int | None]]

    @property
    def binary_params(self) -> int:
        return sum(r.binary_params for r in self.layers)

    @property
    def real_params(self) -> int:
        return sum(r.real_params for r in self.layers)

    @property
    def total_params(self) -> int:
        return self.binary_params + self.real_params

    @property
    def memory_bits(self) -> int:
        return sum(r.memory_bits for r in self.layers)

    @property
    def memory_kb(self) -> float:
        """Model size in KB (8 x 1024 bits), binary weights at 1 bit, real ones at 32."""
        return self.memory_bits / (8 * 1024)

    @property
    def float32_memory_kb(self) -> float:
        return 32 * self.total_params / (8 * 1024)

    @property
    def bops(self) -> int:
        return sum(r.bops for r in self.layers)

    @property
    def flops(self) -> int:
        return sum(r.flops for r in self.layers)

    @property
    def ops(self) -> float:
        """OPs = BOPs / 64 + FLOPs."""
        return self.bops * OPS_PER_BOP + self.flops

    @property
    def untraced_layers(self) -> list[str]:
        """MAC layers the traced forward pass never called (their BOPs/FLOPs are 0)."""
        return [r.name for r in self.layers if not r.traced]

    def totals(self) -> dict[str, Any]:
        return {
            "binary_params": self.binary_params,
            "real_params": self.real_params,
            "total_params": self.total_params,
            "memory_bits": self.memory_bits,
            "memory_kb": self.memory_kb,
            "float32_memory_kb": self.float32_memory_kb,
            "bops": self.bops,
            "flops": self.flops,
            "ops": self.ops,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "input_shapes": self.input_shapes,
            "conventions": {
                "ops": "OPs = BOPs/64 + FLOPs",
                "mac": "one multiply-accumulate counts as one operation (Larq's MAC convention)",
                "bops": "MACs of layers with 1-bit input and 1-bit kernel quantizers",
                "flops": "MACs of every other conv/dense layer",
                "memory": "1 bit per binary weight, quantizer precision or 32 bits otherwise;"
                " KB = 8 * 1024 bits",
                "batchnorm": "2 params per channel (Larq's folding)",
            },
            "totals": self.totals(),
            "untraced_layers": self.untraced_layers,
            "layers": [r.to_dict() for r in self.layers],
        }

    def table(self) -> str:
        """A printable fixed-width table with one row per layer and a totals row."""
        header = [
            "Layer",
            "Type",
            "Output",
            "In bits",
            "Bin params",
            "Real params",
            "Mem (KB)",
            "BOPs",
            "FLOPs",
        ]
        rows = [
            [
                r.name + ("" if r.calls <= 1 else f" (x{r.calls})"),
                r.type,
                _shape_str(r.output_shape),
                "-" if r.input_precision is None else str(r.input_precision),
                f"{r.binary_params:,}",
                f"{r.real_params:,}",
                f"{r.memory_kb:.2f}",
                f"{r.bops:,}",
                f"{r.flops:,}",
            ]
            for r in self.layers
        ]
        total = [
            "Total",
            "",
            "",
            "",
            f"{self.binary_params:,}",
            f"{self.real_params:,}",
            f"{self.memory_kb:.2f}",
            f"{self.bops:,}",
            f"{self.flops:,}",
        ]
        lines = [f"{self.model_name} cost",
                 text_table(header, rows, left=2, footer=[total], framed=True)]
        lines += [
            f"Params: {self.total_params:,} ({self.binary_params:,} binary, "
            f"{self.real_params:,} real)",
            f"Model size: {self.memory_kb:.2f} KB (float32: {self.float32_memory_kb:.2f} KB)",
            f"BOPs: {self.bops:,} = {self.bops / 1e6:.2f} M",
            f"FLOPs: {self.flops:,} = {self.flops / 1e6:.2f} M (1 MAC = 1 FLOP)",
            f"OPs = BOPs/64 + FLOPs: {self.ops / 1e6:.3f} M",
        ]
        if self.untraced_layers:
            lines.append(
                "Not called in the traced forward pass (no ops counted): "
                + ", ".join(self.untraced_layers)
            )
        return "\n".join(lines)

    def save(self, path: str) -> None:
        """Writes `to_dict()` as JSON atomically (temp file in the same folder + rename)."""
        io_utils.atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def _shape_str(shape: list[int | None] | None) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join("-1" if d is None else str(d) for d in shape) + ")"


# --------------------------------------------------------------------------- tracing


def _as_list(shape: Any) -> list[int | None] | None:
    try:
        return tf.TensorShape(shape).as_list()
    except (TypeError, ValueError):
        return None


def _first_tensor_shape(x: Any) -> list[int | None] | None:
    for t in tf.nest.flatten(x):
        if hasattr(t, "shape"):
            return _as_list(t.shape)
    return None


def _model_input_shapes(
    model: tf.keras.Model, input_shape: Any
) -> tuple[list[list[int | None]], list[tf.DType]]:
    if input_shape is not None:
        shapes = input_shape if isinstance(input_shape[0], list | tuple) else [input_shape]
        shapes = [list(s) for s in shapes]
        # An input shape without the batch dimension is the common way to write it.
        return shapes, [tf.float32] * len(shapes)
    if getattr(model, "inputs", None):
        return [t.shape.as_list()[1:] for t in model.inputs], [t.dtype for t in model.inputs]
    build_shape = getattr(model, "_build_input_shape", None)
    if build_shape is not None:
        if isinstance(build_shape, list | tuple) and isinstance(
            build_shape[0], list | tuple | tf.TensorShape
        ):
            shapes = [tf.TensorShape(s).as_list()[1:] for s in build_shape]
        else:
            shapes = [tf.TensorShape(build_shape).as_list()[1:]]
        return shapes, [tf.float32] * len(shapes)
    raise ValueError(
        f"Cannot tell the input shape of model {model.name!r}: build it, give it an Input, "
        "or pass input_shape=(H, W, C) to model_cost."
    )


def _trace(
    model: tf.keras.Model,
    layers: Sequence[tf.keras.layers.Layer],
    input_shapes: list[list[int | None]],
    dtypes: list[tf.DType],
    training: bool,
) -> dict[int, list[tuple[list[int | None] | None, list[int | None] | None]]]:
    """Runs one batch-1 forward pass, recording (input shape, output shape) of each call of
    each of `layers`."""
    records: dict[int, list] = {id(layer): [] for layer in layers}
    for layer in layers:
        original = layer.call

        def wrapped(*args, __original=original, __key=id(layer), **kwargs):
            out = __original(*args, **kwargs)
            in_shape = _first_tensor_shape(args[0] if args else kwargs.get("inputs"))
            records[__key].append((in_shape, _first_tensor_shape(out)))
            return out

        # object.__setattr__ bypasses Keras attribute tracking; Layer.__call__ looks up
        # `self.call` on the instance, so the wrapper sees every call, nested or not.
        object.__setattr__(layer, "call", wrapped)
    try:
        inputs = []
        for shape, dtype in zip(input_shapes, dtypes, strict=True):
            if any(d is None for d in shape):
                raise ValueError(
                    f"Model {model.name!r} has a dynamic input shape {shape}; pass "
                    "input_shape=... to model_cost to count its operations."
                )
            inputs.append(tf.zeros([1, *shape], dtype=dtype))
        model(inputs[0] if len(inputs) == 1 else inputs, training=training)
    finally:
        for layer in layers:
            if "call" in vars(layer):
                object.__delattr__(layer, "call")
    return records


def _positions(layer: tf.keras.layers.Layer, shape: list[int | None] | None) -> int | None:
    """Spatial positions of a feature map of `shape` (batch first), 1 for a flat vector."""
    if shape is None or len(shape) < 2:
        return None
    if getattr(layer, "data_format", "channels_last") == "channels_first" and len(shape) > 2:
        spatial = shape[2:]
    else:
        spatial = shape[1:-1]
    if any(d is None for d in spatial):
        return None
    return int(np.prod(spatial)) if spatial else 1


def _layer_macs(
    layer: tf.keras.layers.Layer,
    calls: list[tuple[list[int | None] | None, list[int | None] | None]],
) -> tuple[int, int]:
    """(binary MACs, real MACs) of all recorded calls of a conv/dense layer."""
    input_precision = quantizer_precision(getattr(layer, "input_quantizer", None))
    bops = flops = 0
    for in_shape, out_shape in calls:
        shape = in_shape if isinstance(layer, _TRANSPOSE_TYPES) else out_shape
        positions = _positions(layer, shape)
        if positions is None:
            continue
        for kernel_attr, _ in _KERNELS:
            kernel = getattr(layer, kernel_attr, None)
            if kernel is None:
                continue
            macs = int(np.prod(kernel.shape.as_list())) * positions
            if input_precision == 1 and _weight_precision(layer, kernel) == 1:
                bops += macs
            else:
                flops += macs
    return bops, flops


def _param_counts(layer: tf.keras.layers.Layer, weights: list[tf.Variable]) -> tuple[int, int, int]:
    """(binary params, real params, memory bits) of `weights` owned by `layer`."""
    if isinstance(layer, tf.keras.layers.BatchNormalization):
        # Larq's folding: beta with moving_mean, gamma with moving_variance.
        names = [w.name.split("/")[-1].split(":")[0] for w in weights]
        drop = {
            names.index(a)
            for a, b in (("beta", "moving_mean"), ("gamma", "moving_variance"))
            if a in names and b in names
        }
        weights = [w for i, w in enumerate(weights) if i not in drop]
    binary = real = bits = 0
    for w in weights:
        count = int(np.prod(w.shape.as_list()))
        precision = _weight_precision(layer, w)
        if precision == 1:
            binary += count
        else:
            real += count
        bits += precision * count
    return binary, real, bits


def model_cost(
    model: tf.keras.Model,
    input_shape: Sequence[int | None] | Sequence[Sequence[int | None]] | None = None,
    training: bool = False,
) -> CostReport:
    """Counts parameters, model size, BOPs, FLOPs and OPs of `model` (see module docstring).

    Args:
        model: a built Keras/Larq model (any style, nested layers included).
        input_shape: per-example input shape(s) without the batch dimension; only needed
            when the model has no `inputs` and no recorded build shape, or a dynamic shape.
        training: the `training` flag of the traced forward pass (layers reached only in
            training mode, e.g. an auxiliary head, are counted only with `training=True`).

    Returns:
        A CostReport with one row per layer that has weights or multiply-accumulates.
    """
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built; call it or build it first.")
    input_shapes, dtypes = _model_input_shapes(model, input_shape)
    layers = list(iter_layers(model))
    # Trace the layers that get a row: conv/dense layers and any layer holding weights.
    traced = [layer for _, layer in layers if isinstance(layer, _MAC_TYPES) or layer.weights]
    records = _trace(model, traced, input_shapes, dtypes, training)

    seen_weights: set[int] = set()
    rows: list[LayerCost] = []
    # The model's own weights (rare) go to a final row named after the model.
    for path, layer in [*layers, (model.name, model)]:
        # Post-order: children have claimed theirs, so what is left is this layer's own
        # (a quantizer's weights, e.g. a learnable threshold, land on its holder).
        own = []
        for w in layer.weights:
            key = id(getattr(w, "_variable", w))  # unwrap mixed-precision AutoCastVariable
            if key not in seen_weights:
                seen_weights.add(key)
                own.append(w)
        binary, real, bits = _param_counts(layer, own)
        is_mac = isinstance(layer, _MAC_TYPES)
        calls = records.get(id(layer), [])
        bops, flops = _layer_macs(layer, calls) if is_mac else (0, 0)
        if not (own or is_mac):
            continue
        if layer is model and not own:
            continue
        out_shape = calls[-1][1] if calls else _static_output_shape(layer)
        if out_shape:
            out_shape = [None, *out_shape[1:]]  # the traced batch of 1 is not a property
        rows.append(
            LayerCost(
                name=path,
                type=type(layer).__name__,
                output_shape=out_shape,
                calls=len(calls),
                binary_params=binary,
                real_params=real,
                memory_bits=bits,
                bops=bops,
                flops=flops,
                input_precision=quantizer_precision(getattr(layer, "input_quantizer", None)),
                traced=bool(calls) or not is_mac,
            )
        )
    return CostReport(model_name=model.name, layers=rows, input_shapes=input_shapes)


def _static_output_shape(layer: tf.keras.layers.Layer) -> list[int | None] | None:
    try:
        return _as_list(layer.output_shape)
    except (AttributeError, RuntimeError, ValueError, TypeError):
        return None
