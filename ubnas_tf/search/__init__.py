"""Differentiable binary architecture search: mixed ops, cells, the supernet, callbacks."""

from ubnas_tf.search.callbacks import (
    ArchitectureWarmup,
    GenotypeEarlyStopping,
    GenotypeHistory,
)
from ubnas_tf.search.cell import SearchCell
from ubnas_tf.search.mixed_op import PartialChannelMixedOp
from ubnas_tf.search.network import SearchNetwork, default_arch_optimizer, default_weight_optimizer

__all__ = [
    "ArchitectureWarmup",
    "GenotypeEarlyStopping",
    "GenotypeHistory",
    "PartialChannelMixedOp",
    "SearchCell",
    "SearchNetwork",
    "default_arch_optimizer",
    "default_weight_optimizer",
]
