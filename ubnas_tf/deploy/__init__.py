"""Deployment of any Keras/Larq model: LCE conversion and its verification.

Knows nothing of the architecture search: everything here takes a plain `tf.keras.Model`.
Cost accounting (BOPs, FLOPs, OPs) is `ubnas_tf.cost`, which the search and the training
use too; it is re-exported here because every deployment report includes it.
"""

from ubnas_tf.cost import CostReport, LayerCost, model_cost
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
