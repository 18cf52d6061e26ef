"""ubnas-tf: binary neural architecture search (UBNAS) on Keras and Larq.

Importing the package registers its Keras custom objects (quantizers, modules, cells), so
saved models load without a ``custom_objects`` argument.
"""

from ubnas_tf import genotype, modules, ops, quantizers
from ubnas_tf.genotype import Genotype, GenotypeError, derive_genotype
from ubnas_tf.modules import MODULE_CONFIGS, ModuleConfig
from ubnas_tf.ops import DEFAULT_PRIMITIVES, register_primitive, registered_primitives
from ubnas_tf.quantizers import LearnableThresholdApproxSign

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PRIMITIVES",
    "Genotype",
    "GenotypeError",
    "LearnableThresholdApproxSign",
    "MODULE_CONFIGS",
    "ModuleConfig",
    "derive_genotype",
    "genotype",
    "modules",
    "ops",
    "quantizers",
    "register_primitive",
    "registered_primitives",
]
