"""ubnas-tf: binary neural architecture search (UBNAS) on Keras and Larq.

Importing the package registers its Keras custom objects (quantizers, modules, cells), so
saved models load without a ``custom_objects`` argument.
"""

import os as _os
import sys as _sys

# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512-class features.
# On an AVX2 CPU the Eigen fallback has no gradient for the search's dilated binary convs,
# and retrains 1.75 to 1.8x slower (docs/speed.md). A user's own TF_ENABLE_ONEDNN_OPTS wins.
if "tensorflow" not in _sys.modules:
    _os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# `nets` registers DropPath (in models trained with --drop_path), so they load too.
from ubnas_tf import genotype, modules, nets, ops, quantizers  # noqa: E402
from ubnas_tf.genotype import Genotype, GenotypeError, derive_genotype  # noqa: E402
from ubnas_tf.modules import MODULE_CONFIGS, ModuleConfig  # noqa: E402
from ubnas_tf.ops import DEFAULT_PRIMITIVES, register_primitive, registered_primitives  # noqa: E402
from ubnas_tf.quantizers import LearnableThresholdApproxSign  # noqa: E402

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
    "nets",
    "ops",
    "quantizers",
    "register_primitive",
    "registered_primitives",
]
