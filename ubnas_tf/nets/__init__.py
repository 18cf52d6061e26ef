"""The evaluation (retraining) network built from a searched genotype."""

from ubnas_tf.nets.eval_network import (
    EvalNetworkConfig,
    build_eval_network,
    check_lce_alignment,
    inference_model,
)
from ubnas_tf.nets.layers import DropPath, DropPathSchedule

__all__ = ["DropPath", "DropPathSchedule", "EvalNetworkConfig", "build_eval_network",
           "check_lce_alignment", "inference_model"]
