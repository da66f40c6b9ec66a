"""Errors of the capture layer.

They subclass the project's :class:`~tpx3lib.errors.Tpx3Error` and the builtin
they refine. (Candidates to move into ``tpx3lib/errors.py``; kept here so the
capture package does not edit a shared file.)
"""
from __future__ import annotations

from ..errors import ConfigError, Tpx3Error

__all__ = ["CaptureError", "CaptureFault", "RingError", "ConfigError"]


class CaptureError(Tpx3Error, RuntimeError):
    """A receiver process could not start (port in use, bad address) or the capture is misused."""


class CaptureFault(CaptureError):
    """A receiver process died or failed while capturing; ``chip``, ``exitcode`` and ``reason`` say how."""

    def __init__(self, chip: int, exitcode: int | None, reason: str):
        self.chip = chip
        self.exitcode = exitcode
        self.reason = reason
        super().__init__(f"receiver of chip {chip} failed (exit code {exitcode}): {reason}")


class RingError(Tpx3Error, RuntimeError):
    """A shared-memory ring cannot be created or attached, or is used wrongly (no free reader slot, closed)."""
