"""Every exception ubnas-tf raises of its own, in one hierarchy (as keras-tuner's `errors`).

`UbnasError` is the base: ``except UbnasError`` catches whatever the project raised on
purpose, and lets a bug in it (a plain `TypeError`, `KeyError`, ...) through. Each error also
keeps the builtin it has always been, so ``except ValueError`` (or `RuntimeError`, `OSError`)
still catches it:

    UbnasError
    ├── ValueError: input that cannot work; the message says what and why
    │   ├── FlagError              a flag value or combination
    │   ├── GenotypeError          a genotype or its JSON file
    │   ├── DatasetError           a dataset missing or corrupt
    │   ├── IdxError               an IDX file missing, truncated or not IDX
    │   ├── LatencyTableError      a latency table, parts manifest or timings file
    │   ├── LedgerError            an evidence ledger file or row
    │   └── ModuleComparisonError  a module comparison's settings or output directory
    ├── RuntimeError: a run that cannot go on
    │   ├── NonFiniteError         NaN or Inf in a loss, gradient or architecture value
    │   ├── ResumeError            checkpoints that cannot be resumed
    │   ├── Preempted              stopped by SIGTERM once its state was saved
    │   └── ConversionError        a model LCE cannot convert, or converts wrongly
    ├── OSError
    │   └── DiskFullError          a write that failed on a full disk (or quota)
    └── StepStopped                a tool run of an experiment stopped on SIGTERM

The modules that raise them import them from here (``from ubnas_tf.genotype import
GenotypeError`` still works). This module imports nothing of the project, so that any module
can import it.
"""

from __future__ import annotations

import errno

__all__ = [
    "ConversionError",
    "DatasetError",
    "DiskFullError",
    "FlagError",
    "GenotypeError",
    "IdxError",
    "LatencyTableError",
    "LedgerError",
    "ModuleComparisonError",
    "NonFiniteError",
    "Preempted",
    "ResumeError",
    "StepStopped",
    "UbnasError",
]


class UbnasError(Exception):
    """The base of every exception ubnas-tf raises of its own (see the module's docstring)."""


# ----------------------------------------------------------------------- input (ValueError)


class FlagError(UbnasError, ValueError):
    """A flag value (or combination) that cannot work; the message says which and why.

    Tools print it as ``<tool>.py: error: <message>`` and exit with status 2.
    """


class GenotypeError(UbnasError, ValueError):
    """A genotype (or its JSON file) is malformed or does not match the search space."""


class DatasetError(UbnasError, ValueError):
    """A dataset is missing or corrupt. The message names the place looked at and how to get it."""


class IdxError(UbnasError, ValueError):
    """An IDX file is missing, truncated or not in the IDX format. The message names the file."""


class LatencyTableError(UbnasError, ValueError):
    """A latency table, parts manifest or timings file that cannot be read as one, or that
    was measured for another network or search space than the one at hand."""


class LedgerError(UbnasError, ValueError):
    """A ledger file that cannot be read as one, or a row that does not fit it."""


class ModuleComparisonError(UbnasError, ValueError):
    """Settings that cannot work, or an output directory holding a different comparison."""


# ------------------------------------------------------------------- runs (RuntimeError)


class NonFiniteError(UbnasError, RuntimeError):
    """A loss, gradient or architecture value became NaN or Inf."""


class ResumeError(UbnasError, RuntimeError):
    """A run directory whose checkpoints cannot be resumed (damaged, or written by another
    version of the code); the message says to pass --overwrite."""


class Preempted(UbnasError, RuntimeError):
    """The run received SIGTERM and stopped once its state was saved; the message says what
    was saved. Re-running the same command resumes from there."""


class ConversionError(UbnasError, RuntimeError):
    """A model failed to convert, or its converted form is not what the Keras model does."""


# ------------------------------------------------------------------------------- OSError


class DiskFullError(UbnasError, OSError):
    """A write that failed because the disk (or the user's quota) is full.

    ``path`` is the file that was being written, as the caller names it; whatever the write
    left (a temporary file) has been removed, and the file at ``path``, if it existed, is the
    old one, whole.
    """

    def __init__(self, path: str, reason: str, code: int = errno.ENOSPC):
        super().__init__(code, reason, path)
        self.path = path
        self.reason = reason

    def __reduce__(self):
        # OSError's would call DiskFullError(errno, strerror, filename): the wrong order.
        return type(self), (self.path, self.reason, self.errno)

    def __str__(self) -> str:
        return f"{self.reason} while writing {self.path}"


# ------------------------------------------------------------------------------ experiments


class StepStopped(UbnasError):
    """A tool run of an experiment stopped on SIGTERM with its state saved: re-run the same
    command to resume."""
