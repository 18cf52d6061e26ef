"""ubnas-tf: binary neural architecture search (UBNAS) on Keras and Larq.

Importing the package registers its Keras custom objects (quantizers, modules, cells), so
saved models load without a ``custom_objects`` argument.
"""

import os as _os
import sys as _sys


def _is_our_command() -> bool:
    """True in the ``ubnas-*`` console scripts and the files under tools/ and benchmarks/."""
    prog = _os.path.abspath(_sys.argv[0]) if _sys.argv and _sys.argv[0] else ""
    repo = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    return (_os.path.basename(prog).startswith("ubnas-")
            or _os.path.dirname(_os.path.dirname(prog)) == repo
            and _os.path.basename(_os.path.dirname(prog)) in ("tools", "benchmarks"))


# Our commands hide TensorFlow's start-up noise on CPU-only machines (CUDA factory
# registration errors), unless the user chose a level; this must happen before TensorFlow
# loads. A program that imports ubnas_tf as a library keeps TensorFlow's own default.
if "tensorflow" not in _sys.modules and _is_our_command():
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

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
