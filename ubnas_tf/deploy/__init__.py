"""Deployment of any Keras/Larq model: LCE conversion and its verification, cost accounting.

Knows nothing of the architecture search: everything here takes a plain `tf.keras.Model`.
"""

from ubnas_tf.deploy.convert import (
    ConversionError,
    VerificationReport,
    binary_conv_layers,
    convert_model,
    flatbuffer_op_counts,
    float32_clone,
    float_architecture,
    lce_interpreter,
    load_saved_model,
    verify_conversion,
)
from ubnas_tf.deploy.cost import CostReport, LayerCost, model_cost

__all__ = [
    "ConversionError",
    "CostReport",
    "LayerCost",
    "VerificationReport",
    "binary_conv_layers",
    "convert_model",
    "flatbuffer_op_counts",
    "float32_clone",
    "float_architecture",
    "lce_interpreter",
    "load_saved_model",
    "model_cost",
    "verify_conversion",
]
