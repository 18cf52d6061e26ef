"""Errors a user's input can cause, shared by the flag checks and the run directories."""

from __future__ import annotations

__all__ = ["FlagError", "StepStopped"]


class FlagError(ValueError):
    """A flag value (or combination) that cannot work; the message says which and why.

    Tools print it as ``<tool>.py: error: <message>`` and exit with status 2.
    """


class StepStopped(Exception):
    """A tool run of an experiment stopped on SIGTERM with its state saved: re-run the same
    command to resume."""
