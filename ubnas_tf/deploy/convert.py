"""Conversion of Keras/Larq models with the Larq Compute Engine (LCE), and its verification.

A binary conv that LCE does not recognise (e.g. a quantizer written with ``tf.sign``
instead of ``larq.math.sign``) silently stays a float CONV_2D whose outputs are identical,
so a converted model is checked two ways: the op names in the flatbuffer must include one
``LceBconv2d`` per binary conv, and the LCE interpreter's top-1 predictions must agree with
Keras on real inputs. Works on any Keras/Larq model; knows nothing of how it was made.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any

import larq as lq
import numpy as np
import tensorflow as tf

import ubnas_tf  # noqa: F401  (registers the custom objects load_saved_model needs)
from ubnas_tf.cost import is_binary_quantizer, iter_layers
from ubnas_tf.errors import ConversionError

__all__ = [
    "ConversionError",
    "VerificationReport",
    "binary_conv_layers",
    "check_binary_ops",
    "convert_model",
    "flatbuffer_op_counts",
    "float32_clone",
    "lce_interpreter",
    "uses_reduced_precision",
    "verify_conversion",
]

# Quantizers LCE turns into LceQuantize/LceBconv2d (they compute larq.math.sign).
_LCE_SIGN_QUANTIZERS = (
    lq.quantizers.SteSign,
    lq.quantizers.ApproxSign,
    lq.quantizers.SwishSign,
    lq.quantizers.MagnitudeAwareSign,
)
_LCE_SIGN_FUNCTIONS = frozenset({"ste_sign", "approx_sign", "swish_sign"})
# Float ops a binary conv falls back to.
_FLOAT_FALLBACK_OPS = frozenset(
    {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SIGN", "TRANSPOSE_CONV"}
)
_FALLBACK_HINT = (
    "Usual causes: a quantizer written with tf.sign (use larq.math.sign, or a larq sign "
    "quantizer such as 'ste_sign'/'approx_sign'); a binary depthwise or separable conv, or a "
    "QuantDense (LCE has no binary kernel for them: use a 1x1 QuantConv2D); a grouped binary "
    "conv with fewer than 32 input channels per group; a NoOp input quantizer with no sign "
    "before it."
)


@dataclasses.dataclass
class VerificationReport:
    """What `verify_conversion` checked.

    Attributes:
        n_binary_convs: binary conv layers in the Keras model (`binary_conv_layers`).
        n_lce_bconv: `LceBconv2d` operators in the flatbuffer.
        op_counts: operator name -> count, over all subgraphs.
        n_examples: examples compared.
        n_disagree: examples whose top-1 class differs between Keras and LCE.
        agreement: fraction of examples with the same top-1 class.
        max_abs_diff: largest absolute difference between Keras and LCE outputs.
        size_kb: flatbuffer size in KB (1024 bytes).
        reference: what the LCE outputs were compared with (the Keras model, or for a
            mixed-precision model its float32 clone, which is what LCE converted).
        keras_accuracy, lce_accuracy: top-1 accuracies when labels were given, else None.
    """

    n_binary_convs: int
    n_lce_bconv: int
    op_counts: dict[str, int]
    n_examples: int
    n_disagree: int
    agreement: float
    max_abs_diff: float
    size_kb: float
    reference: str = "keras model"
    keras_accuracy: float | None = None
    lce_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- conversion


def uses_reduced_precision(model: tf.keras.Model) -> bool:
    """True when the model or any nested layer computes in float16/bfloat16."""
    if getattr(model, "dtype_policy", None) is not None and model.dtype_policy.name != "float32":
        return True
    return any(
        getattr(layer, "compute_dtype", "float32") in ("float16", "bfloat16")
        for _, layer in iter_layers(model)
    )


def _float32_config(obj: Any) -> Any:
    """Recursively replaces every mixed/float16 `dtype` entry of a Keras config by float32."""
    if isinstance(obj, list | tuple):
        return type(obj)(_float32_config(v) for v in obj)
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        if key == "dtype" and _is_reduced_dtype(value):
            out[key] = "float32"
        else:
            out[key] = _float32_config(value)
    return out


def _is_reduced_dtype(value: Any) -> bool:
    if isinstance(value, str):
        return value in ("float16", "bfloat16") or value.startswith("mixed_")
    if isinstance(value, dict) and value.get("class_name") in ("Policy", "DTypePolicy"):
        name = value.get("config", {}).get("name", "")
        return name in ("float16", "bfloat16") or name.startswith("mixed_")
    return False


def _from_config(model: tf.keras.Model, config: dict) -> tf.keras.Model:
    """A new model of `model`'s class from `config`, with the classes of all its (nested)
    layers available as custom objects."""
    custom_objects = {type(layer).__name__: type(layer) for _, layer in iter_layers(model)}
    with tf.keras.utils.custom_object_scope(custom_objects):
        return type(model).from_config(config)


def float32_clone(model: tf.keras.Model) -> tf.keras.Model:
    """A float32 copy of a (mixed-precision) model with the same weights.

    Rebuilt from the model's config with every float16/mixed dtype policy replaced by
    float32 (and float32 as the global policy while rebuilding, for sublayers that custom
    layers create without a dtype). Needs a model with a config (functional or Sequential,
    custom layers implementing `get_config`).
    """
    try:
        config = model.get_config()
    except NotImplementedError as err:
        raise ConversionError(
            f"Model {model.name!r} uses a mixed-precision policy, which LCE rejects, and "
            "cannot be cloned as float32 because it has no config (subclassed model). "
            "Rebuild it under tf.keras.mixed_precision.set_global_policy('float32') and copy "
            "the weights with set_weights()."
        ) from err
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("float32")
    try:
        clone = _from_config(model, _float32_config(config))
    except Exception as err:
        raise ConversionError(
            f"Could not rebuild mixed-precision model {model.name!r} as float32 for LCE: "
            f"{type(err).__name__}: {err}"
        ) from err
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    weights = model.get_weights()
    if len(weights) != len(clone.weights):
        raise ConversionError(
            f"float32 clone of {model.name!r} has {len(clone.weights)} weights, the model "
            f"{len(weights)}; cannot copy them."
        )
    clone.set_weights(weights)
    if uses_reduced_precision(clone):
        raise ConversionError(
            f"float32 clone of {model.name!r} still has a non-float32 dtype policy "
            f"({clone.dtype_policy.name}); LCE converts float32 models only."
        )
    return clone


_QUANTIZER_KEYS = frozenset({"input_quantizer", "kernel_quantizer", "depthwise_quantizer",
                             "pointwise_quantizer", "activation_quantizer"})


def _without_quantizers(obj: Any) -> Any:
    """Recursively sets every quantizer entry of a Keras config (Larq layers, ubnas_tf module
    configs) to None."""
    if isinstance(obj, list | tuple):
        return type(obj)(_without_quantizers(v) for v in obj)
    if not isinstance(obj, dict):
        return obj
    return {key: None if key in _QUANTIZER_KEYS else _without_quantizers(value)
            for key, value in obj.items()}


def float_architecture(model: tf.keras.Model) -> tf.keras.Model:
    """The same architecture in full precision: every quantizer removed, weights kept.

    This is the float baseline of a binary network (its size and plain-TFLite latency), with
    the latent real weights copied over; when removing the quantizers also removes weights
    (a learnable threshold), the clone keeps its fresh initial values instead, which changes
    neither its size nor its latency.
    """
    clone = _from_config(model, _without_quantizers(_float32_config(model.get_config())))
    clone._name = f"{model.name}_float"
    weights = model.get_weights()
    if [w.shape for w in weights] == [tuple(w.shape) for w in clone.weights]:
        clone.set_weights(weights)
    return clone


def load_saved_model(path: str, flag: str = "model") -> tf.keras.Model:
    """Loads a `.keras`/`.h5` file or SavedModel directory (all ubnas_tf and Larq custom
    objects registered), or raises `ValueError` naming `--flag` and what is accepted."""
    if not path or not os.path.exists(path):
        raise ValueError(f"--{flag}={path}: no such file or directory; give a .keras/.h5 file "
                         "or a SavedModel directory (e.g. RUN_DIR/model_best.keras).")
    try:
        return tf.keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for a file that is not a model
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"--{flag}={path} could not be loaded as a Keras model "
                         f"({type(err).__name__}: {first}); give a .keras/.h5 file or a "
                         "SavedModel directory written by tools/train.py or model.save.") from err


def convert_model(model: tf.keras.Model) -> bytes:
    """Converts `model` to a TFLite flatbuffer with LCE's `convert_keras_model`.

    A mixed-precision (float16 compute) model is first cloned as float32 with the same
    weights (`float32_clone`), because LCE's converter rejects float16 models.
    """
    # deferred: larq_compute_engine (0.2 s) loads only when a model is converted or run
    from larq_compute_engine import convert_keras_model

    if uses_reduced_precision(model):
        model = float32_clone(model)
    try:
        return convert_keras_model(model)
    except Exception as err:
        raise ConversionError(
            f"LCE failed to convert model {model.name!r}: {type(err).__name__}: {err}"
        ) from err


# --------------------------------------------------------------------------- inspection


def _builtin_names() -> dict[int, str]:
    # deferred: larq_compute_engine (0.2 s) loads only when a model is converted or run
    from larq_compute_engine.mlir.python import tflite_schema

    return {
        value: name
        for name, value in vars(tflite_schema.BuiltinOperator).items()
        if not name.startswith("_") and isinstance(value, int)
    }


def _operator_names(flatbuffer: bytes) -> list[str]:
    """Name of each operator code of the model (custom code, or builtin enum name)."""
    # deferred: larq_compute_engine (0.2 s) loads only when a model is converted or run
    from larq_compute_engine.mlir.python import tflite_schema

    model = tflite_schema.Model.GetRootAs(flatbuffer, 0)
    builtin = _builtin_names()
    names = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        custom = code.CustomCode()
        if custom:
            names.append(custom.decode("utf-8"))
        else:
            # TFLite schema >= 3a: builtin_code holds codes > 127, deprecated_builtin_code
            # the older ones; the larger of the two is the real code.
            value = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            names.append(builtin.get(value, f"BUILTIN_{value}"))
    return names


def flatbuffer_op_counts(flatbuffer: bytes) -> collections.Counter[str]:
    """How many operators of each kind the flatbuffer runs, over all its subgraphs.

    Custom ops are named by their custom code ("LceBconv2d", "LceQuantize", ...), builtins
    by their BuiltinOperator name ("CONV_2D", "ADD", ...). Operator codes that no operator
    uses are not counted.
    """
    # deferred: larq_compute_engine (0.2 s) loads only when a model is converted or run
    from larq_compute_engine.mlir.python import tflite_schema

    model = tflite_schema.Model.GetRootAs(flatbuffer, 0)
    names = _operator_names(flatbuffer)
    counts: collections.Counter[str] = collections.Counter()
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for j in range(subgraph.OperatorsLength()):
            counts[names[subgraph.Operators(j).OpcodeIndex()]] += 1
    return counts


def _float_op_tensor_names(flatbuffer: bytes) -> set[str]:
    """Name segments ("a/b;c/d" -> {a, b, c, d}) of tensors touched by float conv ops."""
    # deferred: larq_compute_engine (0.2 s) loads only when a model is converted or run
    from larq_compute_engine.mlir.python import tflite_schema

    model = tflite_schema.Model.GetRootAs(flatbuffer, 0)
    names = _operator_names(flatbuffer)
    segments: set[str] = set()
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for j in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(j)
            if names[op.OpcodeIndex()] not in _FLOAT_FALLBACK_OPS:
                continue
            tensors = [*op.InputsAsNumpy().tolist(), *op.OutputsAsNumpy().tolist()]
            for t in tensors:
                if t < 0:
                    continue
                name = (subgraph.Tensors(t).Name() or b"").decode("utf-8", "replace")
                for part in name.split(";"):
                    segments.update(part.split("/"))
    return segments


def binary_conv_layers(model: tf.keras.Model) -> list[tf.keras.layers.Layer]:
    """Every Larq binary conv nested anywhere in `model` (nested models and custom layers).

    A binary conv is a `QuantConv2D` (grouped and dilated ones included), or a
    `QuantDepthwiseConv2D`/`QuantSeparableConv2D`, whose input quantizer and kernel
    quantizer(s) are both 1-bit (``precision == 1``, Larq's `NoOp` excluded since it does not
    quantize). LCE should turn each into one `LceBconv2d`; the depthwise/separable ones it
    cannot, so listing them makes `verify_conversion` report them as float fallbacks.
    """
    found = []
    for _, layer in iter_layers(model):
        if isinstance(layer, lq.layers.QuantConv2D):
            kernel_quantizers = [layer.kernel_quantizer]
        elif isinstance(layer, lq.layers.QuantDepthwiseConv2D):
            kernel_quantizers = [layer.depthwise_quantizer]
        elif isinstance(layer, lq.layers.QuantSeparableConv2D):
            kernel_quantizers = [layer.depthwise_quantizer, layer.pointwise_quantizer]
        else:
            continue
        if isinstance(layer, tf.keras.layers.Conv2DTranspose):
            continue  # a transposed conv is not a QuantConv2D in LCE's sense
        if is_binary_quantizer(layer.input_quantizer) and all(
            is_binary_quantizer(q) for q in kernel_quantizers
        ):
            found.append(layer)
    return found


def _likely_fallbacks(
    layers: list[tf.keras.layers.Layer], flatbuffer: bytes
) -> tuple[list[str], str]:
    """Names of the binary layers that most probably stayed float, and how we know."""
    segments = _float_op_tensor_names(flatbuffer)
    by_name = [layer.name for layer in layers if layer.name in segments]
    if by_name:
        return by_name, "their names appear on float CONV_2D/SIGN/... operators"

    def suspicious(layer: tf.keras.layers.Layer) -> bool:
        if not isinstance(layer, lq.layers.QuantConv2D):
            return True  # depthwise / separable
        quantizers = [layer.input_quantizer, layer.kernel_quantizer]
        for q in quantizers:
            name = getattr(q, "__name__", None)
            if not (isinstance(q, _LCE_SIGN_QUANTIZERS) or name in _LCE_SIGN_FUNCTIONS):
                return True
        return False

    by_kind = [layer.name for layer in layers if suspicious(layer)]
    if by_kind:
        return by_kind, "their layer type or quantizer is not one LCE accelerates"
    return [layer.name for layer in layers], "could not tell which; all binary convs listed"


# --------------------------------------------------------------------------- verification


def check_binary_ops(model: tf.keras.Model, flatbuffer: bytes) -> tuple[int, int, dict[str, int]]:
    """Checks that every binary conv of `model` became an `LceBconv2d` in `flatbuffer`.

    Returns ``(binary convs in the model, LceBconv2d ops, op counts)``; raises
    ConversionError naming the layers that probably fell back to float when
    ``op_counts["LceBconv2d"] < len(binary_conv_layers(model))``.
    """
    counts = flatbuffer_op_counts(flatbuffer)
    layers = binary_conv_layers(model)
    n_bconv = counts.get("LceBconv2d", 0)
    if n_bconv < len(layers):
        names, how = _likely_fallbacks(layers, flatbuffer)
        raise ConversionError(
            f"{len(layers)} binary convs in the Keras model but {n_bconv} LceBconv2d ops in "
            f"the flatbuffer: {len(layers) - n_bconv} ran as float convs. Probably: "
            f"{', '.join(names)} ({how}). {_FALLBACK_HINT}"
        )
    return len(layers), n_bconv, dict(sorted(counts.items()))


def lce_interpreter(
    flatbuffer: bytes,
    num_threads: int = 1,
    use_indirect_bgemm: bool = True,
    use_xnnpack: bool = False,
) -> Any:
    """LCE's Python interpreter with its optimised (non-reference) binary kernels.

    `use_indirect_bgemm=True` is several times faster on x86 (see docs/speed.md)."""
    # deferred: larq_compute_engine (0.2 s) loads only when a model is converted or run
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    return Interpreter(
        flatbuffer,
        num_threads=num_threads,
        use_reference_bconv=False,
        use_indirect_bgemm=use_indirect_bgemm,
        use_xnnpack=use_xnnpack,
    )


def verify_conversion(
    model: tf.keras.Model,
    flatbuffer: bytes,
    x: np.ndarray,
    min_agreement: float = 0.99,
    num_threads: int = 1,
    y: np.ndarray | None = None,
) -> VerificationReport:
    """Checks that `flatbuffer` is a faithful, binary-accelerated form of `model`.

    1. Every binary conv (`binary_conv_layers`) became an `LceBconv2d`:
       ``op_counts["LceBconv2d"] >= len(binary_conv_layers(model))``, else ConversionError
       naming the layers that probably fell back to float (`check_binary_ops`).
    2. The LCE interpreter's top-1 class agrees with Keras `model.predict` on at least
       `min_agreement` of the examples in `x` (batch first), else ConversionError saying how
       many of how many disagreed. LCE fixes the batch size of the converted model to 1, so
       the interpreter runs one example at a time. A mixed-precision model is compared
       through its float32 clone (what was converted).

    With labels `y` (class indices or one-hot), the report also gives both top-1 accuracies.
    """
    x = np.asarray(x, dtype=np.float32)
    n_binary, n_bconv, counts = check_binary_ops(model, flatbuffer)
    if len(x) == 0:
        raise ValueError("verify_conversion needs at least one example in x")

    # A float16 model was converted through its float32 clone (LCE rejects float16); the
    # conversion is checked against that clone, so float16 rounding is not blamed on LCE.
    reference = "keras model"
    if uses_reduced_precision(model):
        model = float32_clone(model)
        reference = "float32 clone of the keras model"
    interpreter = lce_interpreter(flatbuffer, num_threads=num_threads)
    if len(interpreter.input_shapes) != 1 or len(interpreter.output_shapes) != 1:
        raise ConversionError("verify_conversion handles single-input, single-output models")
    lce_out = np.asarray(interpreter.predict(x), dtype=np.float32).reshape(len(x), -1)
    keras_out = np.asarray(model.predict(x, batch_size=64, verbose=0), dtype=np.float32)
    keras_out = keras_out.reshape(len(x), -1)
    if lce_out.shape != keras_out.shape:
        raise ConversionError(
            f"LCE output shape {lce_out.shape} differs from Keras output {keras_out.shape}"
        )
    lce_top1, keras_top1 = lce_out.argmax(-1), keras_out.argmax(-1)
    disagree = int(np.sum(lce_top1 != keras_top1))
    agreement = 1.0 - disagree / len(x)
    report = VerificationReport(
        n_binary_convs=n_binary,
        n_lce_bconv=n_bconv,
        op_counts=counts,
        n_examples=len(x),
        n_disagree=disagree,
        agreement=agreement,
        max_abs_diff=float(np.max(np.abs(lce_out - keras_out))),
        size_kb=len(flatbuffer) / 1024,
        reference=reference,
    )
    if y is not None:
        labels = np.asarray(y)
        labels = labels.argmax(-1) if labels.ndim > 1 else labels.astype(np.int64)
        labels = labels[: len(x)]
        report.keras_accuracy = float(np.mean(keras_top1 == labels))
        report.lce_accuracy = float(np.mean(lce_top1 == labels))
    if agreement < min_agreement:
        raise ConversionError(
            f"LCE and Keras disagree on the top-1 class of {disagree} of {len(x)} examples "
            f"(agreement {agreement:.4f} < {min_agreement}; max |diff| "
            f"{report.max_abs_diff:.3g})."
        )
    return report
