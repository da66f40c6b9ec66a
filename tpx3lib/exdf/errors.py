"""Typed errors of the European XFEL run-file writer (subclassing builtins)."""
from __future__ import annotations

from ..errors import Tpx3Error

__all__ = ["ExdfError", "ExdfValueError", "ExdfDtypeError", "TrainOrderError", "RunExistsError"]


class ExdfError(Tpx3Error):
    """Base of the run-file writer's errors."""


class ExdfValueError(ExdfError, ValueError):
    """A value given to the writer is not valid (shape, train ID in the records, flag...)."""


class ExdfDtypeError(ExdfError, TypeError):
    """Records of the wrong dtype (hits must be EVENT_DTYPE, centroids CENTROID_DTYPE)."""


class TrainOrderError(ExdfValueError):
    """A train ID that is zero or not above the previous one; nothing was written for it."""

    def __init__(self, train_id: int, previous: int | None):
        self.train_id = train_id
        self.previous = previous
        if train_id == 0:
            msg = "train ID 0 means 'unknown' and cannot be written"
        else:
            msg = (f"train ID {train_id} is not above the previous train {previous}: "
                   "trains must be written in strictly increasing order")
        super().__init__(msg)


class RunExistsError(ExdfError, FileExistsError):
    """The run directory already holds files of this run and aggregator."""
