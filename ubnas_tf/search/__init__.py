"""Differentiable binary architecture search: mixed ops, cells, the supernet, callbacks,
decisiveness figures and the budget (expected cost) term."""

from ubnas_tf.search.budget import CostTable, budget_loss, build_cost_table
from ubnas_tf.search.callbacks import (
    ArchitectureFigures,
    ArchitectureWarmup,
    GenotypeEarlyStopping,
    GenotypeHistory,
)
from ubnas_tf.search.cell import SearchCell
from ubnas_tf.search.decisiveness import architecture_figures, discretization_loss
from ubnas_tf.search.mixed_op import PartialChannelMixedOp
from ubnas_tf.search.network import (
    ArchitectureObjective,
    SearchNetwork,
    arch_learning_rate,
    default_arch_optimizer,
    default_weight_optimizer,
)

__all__ = [
    "ArchitectureFigures",
    "ArchitectureObjective",
    "ArchitectureWarmup",
    "CostTable",
    "GenotypeEarlyStopping",
    "GenotypeHistory",
    "PartialChannelMixedOp",
    "SearchCell",
    "SearchNetwork",
    "arch_learning_rate",
    "architecture_figures",
    "budget_loss",
    "build_cost_table",
    "default_arch_optimizer",
    "default_weight_optimizer",
    "discretization_loss",
]
