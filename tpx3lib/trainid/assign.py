"""Giving every trigger its train ID and every event or centroid the train ID of its trigger.

- :class:`TrainIdAssigner` selects the trigger edges from decoded TDC edges (same
  choice as :class:`~tpx3lib.decode.EventBuilder`: TDC1 rising by default), feeds
  them to a source and keeps the table trigger counter -> train ID.
- :func:`apply_train_ids` fills the ``train_id`` field of ``EVENT_DTYPE`` or
  ``CENTROID_DTYPE`` records from their ``event`` field (the trigger counter);
  records whose trigger has no train ID (yet) keep 0 and are counted.
- :func:`split_by_train` cuts records into per-train pieces (for one Karabo Bridge
  message or one run-file train each).
"""
from __future__ import annotations

import numpy as np

from ..dtypes import TDC_DTYPE
from ..errors import ConfigError
from .base import TrainIdSource
from .flags import TRIGGER_TRAIN_DTYPE, run_file_flag

__all__ = ["TrainIdAssigner", "apply_train_ids", "lookup_train_ids", "split_by_train", "train_table"]


def train_table(decided) -> np.ndarray:
    """A lookup table (``TRIGGER_TRAIN_DTYPE`` sorted by counter) from decided
    records or a ``{counter: train_id}`` mapping."""
    if isinstance(decided, dict):
        table = np.zeros(len(decided), TRIGGER_TRAIN_DTYPE)
        table["counter"] = np.fromiter(decided.keys(), np.int64, len(decided))
        table["train_id"] = np.fromiter(decided.values(), np.uint64, len(decided))
        table["host_time"] = np.nan
    else:
        table = np.asarray(decided)
        if table.dtype != TRIGGER_TRAIN_DTYPE:
            raise TypeError(f"expected TRIGGER_TRAIN_DTYPE records or a dict, not {table.dtype}")
    if table.size > 1 and np.any(np.diff(table["counter"]) < 0):
        table = table[np.argsort(table["counter"], kind="stable")]
    return table


def lookup_train_ids(counters, table) -> np.ndarray:
    """Train IDs (uint64, 0 = unknown) of trigger ``counters`` in a :func:`train_table`."""
    counters = np.asarray(counters, dtype=np.int64)
    out = np.zeros(counters.shape, np.uint64)
    if table.size == 0 or counters.size == 0:
        return out
    idx = np.searchsorted(table["counter"], counters)
    idx_c = np.minimum(idx, table.size - 1)
    hit = table["counter"][idx_c] == counters
    out[hit] = table["train_id"][idx_c[hit]]
    return out


def apply_train_ids(records: np.ndarray, mapping) -> int:
    """Fill ``records["train_id"]`` in place from ``records["event"]``.

    ``mapping`` is a :func:`train_table`, decided ``TRIGGER_TRAIN_DTYPE`` records,
    a ``{counter: train_id}`` dict or a :class:`TrainIdAssigner`. Returns how many
    records are left with train ID 0 (no train ID known for their trigger).
    """
    names = records.dtype.names or ()
    if "event" not in names or "train_id" not in names:
        raise TypeError(f"records need 'event' and 'train_id' fields, not {records.dtype}")
    if isinstance(mapping, TrainIdAssigner):
        table = mapping.table
    else:
        table = train_table(mapping)
    records["train_id"] = lookup_train_ids(records["event"], table)
    return int(np.count_nonzero(records["train_id"] == 0))


def split_by_train(records: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``[(train_id, records of that train), ...]`` in increasing train ID.

    Records already in non-decreasing train ID give views; otherwise a stable sort
    (keeping time order within a train) gives copies. Train ID 0 (unknown) forms
    its own group, first.
    """
    tid = records["train_id"]
    if tid.size == 0:
        return []
    if np.any(tid[1:] < tid[:-1]):
        records = records[np.argsort(tid, kind="stable")]
        tid = records["train_id"]
    cuts = np.flatnonzero(tid[1:] != tid[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [tid.size]])
    return [(int(tid[s]), records[s:e]) for s, e in zip(starts.tolist(), ends.tolist())]


class TrainIdAssigner:
    """Trigger edges in, train IDs out, plus the table to label events with.

    Parameters
    ----------
    source : a :class:`~tpx3lib.trainid.base.TrainIdSource`.
    tdc, edge : which TDC edges are the train triggers (as the EventBuilder's).
    chip : only edges of this chip (several chips see the same trigger), or None.
    keep : how many decided triggers the table keeps (the oldest are forgotten).
    """

    def __init__(self, source: TrainIdSource, *, tdc: int = 1, edge: str = "rising",
                 chip: int | None = None, keep: int = 1 << 16):
        if tdc not in (1, 2):
            raise ConfigError(f"trigger TDC must be 1 or 2, not {tdc!r}")
        if edge not in ("rising", "falling"):
            raise ConfigError(f"trigger edge must be 'rising' or 'falling', not {edge!r}")
        if keep < 1:
            raise ConfigError("keep must be >= 1")
        self.source = source
        self.tdc, self.edge, self.chip, self.keep = tdc, edge, chip, int(keep)
        self._table = np.empty(0, TRIGGER_TRAIN_DTYPE)

    @property
    def table(self) -> np.ndarray:
        """Decided triggers kept (TRIGGER_TRAIN_DTYPE, by counter)."""
        return self._table

    @property
    def counters(self) -> dict[str, int]:
        return self.source.stats()

    def select_triggers(self, tdcs: np.ndarray) -> np.ndarray:
        """The trigger edges among ``tdcs`` (TDC_DTYPE)."""
        if tdcs.dtype != TDC_DTYPE:
            raise TypeError(f"tdcs must have TDC_DTYPE, not {tdcs.dtype}")
        sel = (tdcs["tdc"] == self.tdc) & (tdcs["rising"] == (1 if self.edge == "rising" else 0))
        if self.chip is not None:
            sel &= tdcs["chip"] == self.chip
        return tdcs[sel]

    def feed(self, tdcs: np.ndarray, now: float | None = None) -> np.ndarray:
        """Give the source the trigger edges among ``tdcs``; return the triggers decided now."""
        trig = self.select_triggers(tdcs)
        return self._keep(self.source.assign(trig["counter"], trig["time"], now=now))

    def flush(self) -> np.ndarray:
        """Decide every held trigger (end of stream)."""
        return self._keep(self.source.flush())

    def train_ids_of(self, event_counters) -> np.ndarray:
        """Train IDs for trigger counters (0 = unknown or not yet decided)."""
        return lookup_train_ids(event_counters, self._table)

    def apply(self, records: np.ndarray) -> int:
        """:func:`apply_train_ids` with this assigner's table."""
        return apply_train_ids(records, self)

    def train_flags(self, train_ids) -> np.ndarray:
        """EXDF ``INDEX/flag`` per train ID: 1 if every trigger in the table with that
        ID is free of SUSPECT flags, 0 if any is suspect or the ID is not in the table."""
        train_ids = np.asarray(train_ids, np.uint64)
        out = np.zeros(train_ids.shape, np.int32)
        if self._table.size == 0 or train_ids.size == 0:
            return out
        order = np.argsort(self._table["train_id"], kind="stable")
        tids = self._table["train_id"][order]
        flags = self._table["flags"][order].astype(np.int64)
        uniq, starts = np.unique(tids, return_index=True)
        merged = np.bitwise_or.reduceat(flags, starts)
        idx = np.minimum(np.searchsorted(uniq, train_ids), uniq.size - 1)
        hit = uniq[idx] == train_ids
        out[hit] = run_file_flag(merged[idx[hit]])
        return out

    def _keep(self, decided: np.ndarray) -> np.ndarray:
        if decided.size:
            table = np.concatenate([self._table, decided])
            table = table[np.argsort(table["counter"], kind="stable")]
            self._table = table[-self.keep:]
        return decided
