"""Errors a user's input can cause, shared by the flag checks and the run directories."""

from __future__ import annotations

__all__ = ["FlagError"]


class FlagError(ValueError):
    """A flag value (or combination) that cannot work; the message says which and why.

    Tools print it as ``<tool>.py: error: <message>`` and exit with status 2.
    """
