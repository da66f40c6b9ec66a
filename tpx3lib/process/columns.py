"""Events as one array per field (what the segment workers produce).

The record dtype ``EVENT_DTYPE`` is what the clustering, timewalk and the run-file
writer take; its packed layout makes field access slow, so the hot path builds
separate, aligned arrays with a numba kernel and makes records only when a stage
needs them (:meth:`EventColumns.to_records`). Code reads fields by name
(``events["x"]``), the same way for both, so layouts take either.
"""
from __future__ import annotations

import numpy as np

from tpx3lib.dtypes import EVENT_DTYPE

__all__ = ["EventColumns", "as_records"]


class EventColumns:
    """The fields of ``EVENT_DTYPE`` (except ``train_id``, 0 unless set) as separate arrays."""

    __slots__ = ("_cols", "size")

    #: the fields kept, with the dtype of EVENT_DTYPE
    FIELDS = tuple(n for n in EVENT_DTYPE.names if n != "train_id")

    def __init__(self, cols: dict[str, np.ndarray]):
        sizes = {a.shape[0] for a in cols.values()}
        if len(sizes) > 1:
            raise ValueError(f"columns of different lengths: {sorted(sizes)}")
        self._cols = dict(cols)
        self.size = sizes.pop() if sizes else 0

    @classmethod
    def empty(cls, n: int) -> "EventColumns":
        """Uninitialised columns for ``n`` events."""
        return cls({f: np.empty(n, EVENT_DTYPE[f]) for f in cls.FIELDS})

    @classmethod
    def from_records(cls, records: np.ndarray) -> "EventColumns":
        cols = cls({f: np.ascontiguousarray(records[f]) for f in cls.FIELDS})
        if np.any(records["train_id"]):
            cols._cols["train_id"] = np.ascontiguousarray(records["train_id"])
        return cols

    @property
    def dtype(self) -> np.dtype:
        return EVENT_DTYPE

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        if isinstance(key, str):
            if key == "train_id" and key not in self._cols:
                return np.zeros(self.size, EVENT_DTYPE["train_id"])
            return self._cols[key]
        return EventColumns({f: a[key] for f, a in self._cols.items()})

    def __setitem__(self, key: str, value) -> None:
        if key not in EVENT_DTYPE.names:
            raise KeyError(key)
        arr = np.empty(self.size, EVENT_DTYPE[key])
        arr[...] = value
        self._cols[key] = arr

    def to_records(self) -> np.ndarray:
        out = np.empty(self.size, EVENT_DTYPE)
        for f in EVENT_DTYPE.names:
            out[f] = self[f]
        return out


def as_records(events) -> np.ndarray:
    """``EVENT_DTYPE`` records of events given as records or :class:`EventColumns`."""
    if isinstance(events, EventColumns):
        return events.to_records()
    return events
