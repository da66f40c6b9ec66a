"""Typed errors of the train-ID sources (subclassing builtins, like :mod:`tpx3lib.errors`)."""
from __future__ import annotations

from ..errors import Tpx3Error

__all__ = ["TrainIdSourceError"]


class TrainIdSourceError(Tpx3Error, ConnectionError):
    """A train-ID source could not be reached (serial port, Tango device)."""
