"""Trains: per-trigger bundles of hits and centroids, assembled from processed chunks,
and the one key layout in which every publisher sends them.

One European XFEL train is one trigger (a TDC edge, by default TDC1 rising) and
everything the chips recorded in its event window. :class:`TrainAssembler` collects
:class:`~tpx3lib.pipeline.processor.ProcessedChunk` s of several chips (from several
threads) into :class:`Train` objects and hands each complete train to a callback, in
trigger-time order, as soon as every chip's ``complete_until`` has passed the train's
window end. :func:`train_message` turns a train into a Karabo Bridge message; the live
publisher (:mod:`.bridge_sink`), the replay (:mod:`tpx3lib.replay`) and the run-file
writer (:mod:`.exdf_sink`) all use the names defined here. Helpers for sinks:
:class:`TrainQueue` (bounded hand-off from the processing threads to a sink's thread,
with a drop or block policy) and :class:`BufferPool` (message memory reused once sent).
With ``output="columns"`` the assembler splits each chunk's records once into per-field
columns (:func:`split_columns`, a numba kernel) and trains carry those columns, which
:func:`train_message` sends without copying (the Karabo Bridge publisher does this).

Message layout (source default ``TPX3/CAM/1:daqOutput``), one message per train:

=========================  =========  ===============================================
key                        type       meaning
=========================  =========  ===============================================
``data.hits.<field>``      arrays     the train's hits (EVENT_DTYPE fields but
                                      ``train_id``): event, x, y, tot, chip, toa, tof
``data.centroids.<field>`` arrays     its centroids (CENTROID_DTYPE fields but ``train_id``)
``data.nHits``             int        number of hits
``data.nCentroids``        int        number of centroids
``data.trigger``           int        extended hardware counter of the trigger
``data.triggerTime``       int        board time of the trigger (time units)
``data.trainFlags``        int        train-ID flags (:mod:`tpx3lib.trainid.flags`)
``data.nChipsTriggered``   int        chips whose trigger was matched to this one
``data.complete``          bool       False if the stream ended before every chip
                                      covered the train's window
``data.timeUnit``          float      seconds per time unit: 25/4096 ns
``counters.<name>``        int        running counters of the publisher (optional)
=========================  =========  ===============================================

Units are those of the records and of the run files (docs/exdf.md), so a train is the
same number for number live, replayed and read from a file: ``toa``, ``tof``,
``triggerTime``, ``toa_first``, ``tof_first`` in 25/4096 ns units (integers, exact;
centroid ``toa``/``tof`` ToT-weighted floats) - multiply by ``data.timeUnit`` for
seconds; ``tot*`` in ns; ``x``, ``y`` in pixels. Metadata: ``timestamp.tid`` is the train
ID (0 if it is not known), ``timestamp*`` the train start from the train-ID source when
known, else the time the message was made.

In a run file the same arrays are ``data.<field>`` and ``centroids.<field>`` of the
instrument source (:data:`FILE_KEYS`), and the per-train trigger values are control keys
(:data:`TRIGGER_CONTROL_KEYS`) of the control source.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import sys
import threading
import time
from typing import Callable, Iterable, Mapping

import numba as nb
import numpy as np

from ..dtypes import CENTROID_DTYPE, EVENT_DTYPE, TDC_DTYPE, TOA_UNIT_S
from ..errors import ConfigError, Tpx3Error
from ..exdf.layout import CENTROID_FIELDS, CENTROIDS_GROUP, DEFAULT_SOURCE, HIT_FIELDS, HITS_GROUP
from ..trainid.flags import UNKNOWN, run_file_flag

__all__ = [
    "Train", "TrainAssembler", "TrainAssemblyError", "train_message", "train_from_message", "merge_trains",
    "DEFAULT_SOURCE", "HIT_KEYS", "CENTROID_KEYS", "SCALAR_KEYS", "TIME_UNIT_KEY", "COUNTERS_PREFIX",
    "FILE_KEYS", "TRIGGER_CONTROL_KEYS", "TrainQueue", "WHEN_FULL", "BufferPool", "split_columns",
    "split_columns_numpy", "records_from_columns",
]

_INT64_MIN = int(np.iinfo(np.int64).min)
_INT64_MAX = int(np.iinfo(np.int64).max)

# ----------------------------------------------------------------------------- the key layout
#: ``data.hits.<field>`` for every stored hit field
HIT_KEYS = {f: f"data.hits.{f}" for f in HIT_FIELDS}
#: ``data.centroids.<field>`` for every stored centroid field
CENTROID_KEYS = {f: f"data.centroids.{f}" for f in CENTROID_FIELDS}
#: Train attribute -> message key of the per-train scalars
SCALAR_KEYS = {
    "n_hits": "data.nHits",
    "n_centroids": "data.nCentroids",
    "trigger": "data.trigger",
    "trigger_time": "data.triggerTime",
    "flags": "data.trainFlags",
    "chips_triggered": "data.nChipsTriggered",
    "complete": "data.complete",
}
#: seconds per unit of toa/tof/triggerTime
TIME_UNIT_KEY = "data.timeUnit"
#: running counters go under ``counters.<name>``
COUNTERS_PREFIX = "counters"
#: message key -> run-file key (instrument source) of the same array
FILE_KEYS = {**{HIT_KEYS[f]: f"{HITS_GROUP}.{f}" for f in HIT_FIELDS},
             **{CENTROID_KEYS[f]: f"{CENTROIDS_GROUP}.{f}" for f in CENTROID_FIELDS}}
#: Train attribute -> control key (one row per train) in run files
TRIGGER_CONTROL_KEYS = {
    "trigger": "trigger.counter",
    "trigger_time": "trigger.time",
    "flags": "trigger.flags",
    "chips_triggered": "trigger.chips",
}


class TrainAssemblyError(Tpx3Error, RuntimeError):
    """The assembler was used wrongly (a chip it does not know, data after the end)."""


# ----------------------------------------------------------------------------- Train
class _Records:
    """``Train.hits`` / ``Train.centroids``: the records given, or (given None) built from
    the train's columns on first use and kept. A dataclass field with this descriptor as its
    "default" stays a required ``__init__`` argument (``__get__`` on the class raises)."""

    def __init__(self, dtype: np.dtype, fields: tuple, columns_attr: str):
        self.dtype, self.fields, self.columns_attr = dtype, fields, columns_attr

    def __set_name__(self, owner, name):
        self.name, self.slot = name, "_" + name

    def __get__(self, obj, objtype=None):
        if obj is None:
            raise AttributeError(self.name)
        d = obj.__dict__
        recs = d.get(self.slot)
        if recs is None:
            cols = d.get(self.columns_attr)
            recs = (np.empty(0, self.dtype) if cols is None
                    else records_from_columns(cols, self.dtype, self.fields, d.get("train_id", 0)))
            d[self.slot] = recs
        return recs

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = value


@dataclasses.dataclass(eq=False)
class Train:
    """One train: a trigger and what every chip recorded in its event window.

    ``hits`` (EVENT_DTYPE, all chips, ordered by toa) and ``centroids``
    (CENTROID_DTYPE, ordered by toa_first) may be empty; their ``train_id`` field is
    the train's. ``train_id`` 0 means no train ID was decided (``flags`` then has
    UNKNOWN). ``trigger`` is the reference chip's trigger counter, ``trigger_time``
    its board time (25/4096 ns units); ``timestamp_ns`` the train start in ns since
    the epoch (0 = unknown). ``index`` counts the trains of a stream from 0;
    ``chips_triggered`` is how many chips saw this trigger; ``complete`` is False when
    the stream ended before every chip had delivered the whole window.

    Columns: a train may instead hold its data as one C-contiguous array per field,
    ``hit_columns`` (``{field: array}`` for every :data:`HIT_FIELDS` name) and
    ``centroid_columns`` (:data:`CENTROID_FIELDS`), as a :class:`TrainAssembler` with
    ``output="columns"`` makes them; give ``hits=None`` / ``centroids=None`` then, and the
    records are built from the columns (with the train's ``train_id``) the first time they
    are read. :func:`train_message` sends columns as they are (no copy). Records given
    take precedence: columns given beside them are dropped (so ``dataclasses.replace(t,
    hits=...)`` stays consistent).

    The arrays may be views of the processed chunks' arrays, or of pooled message memory
    (no copy when a train came whole in one chunk): treat them as read-only
    (:meth:`with_train_id` gives a relabelled train).
    """

    train_id: int
    trigger: int
    trigger_time: int
    flags: int
    hits: np.ndarray = _Records(EVENT_DTYPE, HIT_FIELDS, "hit_columns")
    centroids: np.ndarray = _Records(CENTROID_DTYPE, CENTROID_FIELDS, "centroid_columns")
    timestamp_ns: int = 0
    index: int = -1
    chips_triggered: int = 1
    complete: bool = True
    hit_columns: Mapping[str, np.ndarray] | None = None
    centroid_columns: Mapping[str, np.ndarray] | None = None

    def __post_init__(self):
        d = self.__dict__
        for slot, attr, fields in (("_hits", "hit_columns", HIT_FIELDS),
                                   ("_centroids", "centroid_columns", CENTROID_FIELDS)):
            cols = d[attr]
            if cols is None:
                continue
            if d.get(slot) is not None:
                d[attr] = None                      # records given: they are the train's data
                continue
            if set(cols) != set(fields):
                raise ValueError(f"{attr} must have exactly the fields {fields}, not {tuple(cols)}")
            if len({np.shape(c) for c in cols.values()}) != 1 or np.ndim(cols[fields[0]]) != 1:
                raise ValueError(f"{attr}: the columns must be 1-D arrays of one length")

    def _size(self, slot: str, attr: str, first_field: str) -> int:
        d = self.__dict__
        recs = d.get(slot)
        if recs is None and d.get(attr) is not None:
            return int(d[attr][first_field].size)
        return int(getattr(self, slot[1:]).size)

    @property
    def n_hits(self) -> int:
        return self._size("_hits", "hit_columns", HIT_FIELDS[0])

    @property
    def n_centroids(self) -> int:
        return self._size("_centroids", "centroid_columns", CENTROID_FIELDS[0])

    @property
    def empty(self) -> bool:
        return self.n_hits == 0 and self.n_centroids == 0

    @property
    def run_file_flag(self) -> int:
        """EXDF ``INDEX/flag``: 1 if the train ID is not suspect, else 0."""
        return 0 if self.train_id == 0 else int(run_file_flag(self.flags))

    def with_train_id(self, train_id: int) -> "Train":
        """This train with another train ID: relabelled copies of the records, or (a
        train of columns, which hold no train ID) the same columns."""
        tid = int(train_id)
        d = self.__dict__
        kw = {}
        for name, attr in (("hits", "hit_columns"), ("centroids", "centroid_columns")):
            if d[attr] is not None:
                kw[name], kw[attr] = None, d[attr]
            else:
                kw[name] = _relabelled(getattr(self, name), tid)
        return Train(train_id=tid, trigger=self.trigger, trigger_time=self.trigger_time, flags=self.flags,
                     timestamp_ns=self.timestamp_ns, index=self.index, chips_triggered=self.chips_triggered,
                     complete=self.complete, **kw)

    def same_data(self, other: "Train", *, timestamp: bool = True) -> bool:
        """Same train ID, trigger, flags and arrays (and timestamp unless told not to)."""
        scalars = ("train_id", "trigger", "trigger_time", "flags", "chips_triggered", "complete")
        if any(getattr(self, a) != getattr(other, a) for a in scalars):
            return False
        if timestamp and self.timestamp_ns != other.timestamp_ns:
            return False
        return (self.hits.dtype == other.hits.dtype and np.array_equal(self.hits, other.hits)
                and self.centroids.dtype == other.centroids.dtype
                and np.array_equal(self.centroids, other.centroids))

    def __repr__(self) -> str:
        return (f"Train(train_id={self.train_id}, trigger={self.trigger}, trigger_time={self.trigger_time}, "
                f"flags={self.flags:#x}, n_hits={self.n_hits}, n_centroids={self.n_centroids}, "
                f"index={self.index})")


def merge_trains(trains: Iterable[Train]) -> Train:
    """Several triggers of one train ID (DUPLICATE triggers) as one train: the first
    trigger's values, flags OR-ed, hits and centroids joined in time order."""
    trains = list(trains)
    if not trains:
        raise ValueError("merge_trains needs at least one train")
    if len(trains) == 1:
        return trains[0]
    first = trains[0]
    if any(t.train_id != first.train_id for t in trains):
        raise ValueError("merge_trains: the trains have different train IDs")
    hits = _join({0: [t.hits for t in trains]}, trains[0].hits.dtype, "toa", first.train_id)
    cen = _join({0: [t.centroids for t in trains]}, trains[0].centroids.dtype, "toa_first", first.train_id)
    flags = 0
    for t in trains:
        flags |= int(t.flags)
    return dataclasses.replace(first, flags=flags, hits=hits, centroids=cen,
                               chips_triggered=max(t.chips_triggered for t in trains),
                               complete=all(t.complete for t in trains))


# ----------------------------------------------------------------------------- columns
# Packed records (EVENT_DTYPE: 39 bytes) copied field by field with numpy cost 20-40 ns per
# row and field; the kernels below read each record once and write every field's column,
# near the speed of a plain memcpy of the records, and find the runs of one trigger
# (``event``) on the way.
_ALIGN = 64


@nb.njit(inline="always", nogil=True)
def _mark_run(i, e, t, pe, pt, starts, run_sorted, nruns, ordered):  # pragma: no cover - numba
    """Runs of one trigger: a run starts where ``event`` changes (``ordered`` turns False
    if it goes back); a run is marked unsorted where the time goes back inside it."""
    if i == 0 or e != pe:
        if i > 0 and e < pe:
            ordered = False
        starts[nruns] = i
        run_sorted[nruns] = 1
        nruns += 1
    elif t < pt:
        run_sorted[nruns - 1] = 0
    return nruns, ordered


@nb.njit(cache=True, nogil=True)
def _hit_columns_kernel(rec, event, x, y, tot, chip, toa, tof, starts, run_sorted):  # pragma: no cover - numba
    n = rec.shape[0]
    nruns = 0
    ordered = True
    pe = np.int64(0)
    pt = np.int64(0)
    for i in range(n):
        r = rec[i]
        e = r.event
        t = r.toa
        nruns, ordered = _mark_run(i, e, t, pe, pt, starts, run_sorted, nruns, ordered)
        event[i] = e
        x[i] = r.x
        y[i] = r.y
        tot[i] = r.tot
        chip[i] = r.chip
        toa[i] = t
        tof[i] = r.tof
        pe = e
        pt = t
    starts[nruns] = n
    return nruns, ordered


@nb.njit(cache=True, nogil=True)
def _centroid_columns_kernel(rec, event, chip, x, y, toa, toa_first, tof, tof_first, tot_sum, tot_mean,
                             tot_max, size, starts, run_sorted):  # pragma: no cover - numba
    n = rec.shape[0]
    nruns = 0
    ordered = True
    pe = np.int64(0)
    pt = np.int64(0)
    for i in range(n):
        r = rec[i]
        e = r.event
        t = r.toa_first
        nruns, ordered = _mark_run(i, e, t, pe, pt, starts, run_sorted, nruns, ordered)
        event[i] = e
        chip[i] = r.chip
        x[i] = r.x
        y[i] = r.y
        toa[i] = r.toa
        toa_first[i] = t
        tof[i] = r.tof
        tof_first[i] = r.tof_first
        tot_sum[i] = r.tot_sum
        tot_mean[i] = r.tot_mean
        tot_max[i] = r.tot_max
        size[i] = r.size
        pe = e
        pt = t
    starts[nruns] = n
    return nruns, ordered


class _Kind:
    """What the column code needs to know of hits or centroids."""

    def __init__(self, dtype: np.dtype, fields: tuple, key: str, kernel):
        self.dtype, self.fields, self.key, self.kernel = dtype, fields, key, kernel
        self.itemsizes = tuple(dtype[f].itemsize for f in fields)
        empty = {f: np.empty(0, dtype[f]) for f in fields}
        for a in empty.values():
            a.flags.writeable = False
        self.empty = empty

    def nbytes(self, n: int) -> int:
        """Bytes of one buffer holding every column of ``n`` rows (each 64-byte aligned)."""
        return sum(-(-n * s // _ALIGN) * _ALIGN for s in self.itemsizes)

    def columns(self, n: int, alloc=None) -> dict[str, np.ndarray]:
        """Uninitialised columns of ``n`` rows, views of one buffer (``alloc(nbytes)`` or new)."""
        if n == 0:
            return dict(self.empty)
        total = self.nbytes(n)
        buf = np.empty(total, np.uint8) if alloc is None else alloc(total)
        out, off = {}, 0
        for f, s in zip(self.fields, self.itemsizes):
            out[f] = buf[off:off + n * s].view(self.dtype[f])
            off += -(-n * s // _ALIGN) * _ALIGN
        return out


_HITS = _Kind(EVENT_DTYPE, HIT_FIELDS, "toa", _hit_columns_kernel)
_CENTROIDS = _Kind(CENTROID_DTYPE, CENTROID_FIELDS, "toa_first", _centroid_columns_kernel)
_KINDS = {EVENT_DTYPE: _HITS, CENTROID_DTYPE: _CENTROIDS}


def _kind_of(dtype: np.dtype) -> _Kind:
    kind = _KINDS.get(dtype)
    if kind is None:
        raise TypeError(f"records must have EVENT_DTYPE or CENTROID_DTYPE, not {dtype}")
    return kind


def split_columns(recs: np.ndarray, alloc: Callable[[int], np.ndarray] | None = None):
    """Records (EVENT_DTYPE or CENTROID_DTYPE) as columns, and where each trigger's run starts.

    Returns ``(columns, starts, run_sorted)``: ``columns`` maps every stored field
    (:data:`HIT_FIELDS` / :data:`CENTROID_FIELDS`) to a C-contiguous array (views of one
    buffer, ``alloc(nbytes)`` or new), the records ordered by ``event`` (stably: records of
    one trigger keep their order); run ``i`` (rows ``starts[i]:starts[i + 1]``) holds one
    trigger's records, ``run_sorted[i]`` says whether they are ordered by time (``toa``,
    centroids ``toa_first``). One pass of a numba kernel over the records when they already
    come ordered by ``event`` (the usual case); :func:`split_columns_numpy` is its numpy twin.
    """
    kind = _kind_of(recs.dtype)
    recs = np.ascontiguousarray(recs)
    n = recs.size
    if n == 0:
        return dict(kind.empty), np.zeros(1, np.int64), np.zeros(0, bool)
    cols = kind.columns(n, alloc)
    starts = np.empty(n + 1, np.int64)
    run_sorted = np.empty(n, np.uint8)
    nruns, ordered = kind.kernel(recs, *(cols[f] for f in kind.fields), starts, run_sorted)
    if not ordered:
        # triggers interleaved (overlapping windows): stable sort by trigger, then the same pass
        recs = _take(recs, np.argsort(cols["event"], kind="stable"))
        nruns, ordered = kind.kernel(recs, *(cols[f] for f in kind.fields), starts, run_sorted)
    return cols, starts[:nruns + 1], run_sorted[:nruns].astype(bool)


def split_columns_numpy(recs: np.ndarray):
    """The numpy twin of :func:`split_columns` (same results; slow: for tests)."""
    kind = _kind_of(recs.dtype)
    if recs.size > 1 and np.any(recs["event"][1:] < recs["event"][:-1]):
        recs = recs[np.argsort(recs["event"], kind="stable")]
    cols = {f: np.ascontiguousarray(recs[f]) for f in kind.fields}
    ev = cols["event"]
    starts = np.concatenate([[0], np.flatnonzero(ev[1:] != ev[:-1]) + 1, [ev.size]]) if ev.size \
        else np.zeros(1, np.int64)
    key = cols[kind.key]
    run_sorted = np.array([not np.any(np.diff(key[a:b]) < 0) for a, b in zip(starts[:-1], starts[1:])], bool)
    return cols, starts.astype(np.int64), run_sorted


def records_from_columns(columns: Mapping[str, np.ndarray], dtype: np.dtype, fields=None,
                         train_id: int = 0) -> np.ndarray:
    """New records of ``dtype`` from columns (``fields``: default all but ``train_id``),
    ``train_id`` filled in."""
    if fields is None:
        fields = tuple(n for n in dtype.names if n != "train_id")
    n = int(np.shape(columns[fields[0]])[0])
    out = np.zeros(n, dtype)
    for f in fields:
        out[f] = columns[f]
    out["train_id"] = train_id
    return out


class _Part:
    """Rows ``a:b`` of a chunk's columns: one trigger's records of one chip (lazy slices)."""

    __slots__ = ("cols", "a", "b", "ordered")

    def __init__(self, cols, a: int, b: int, ordered: bool):
        self.cols, self.a, self.b, self.ordered = cols, a, b, ordered

    @property
    def size(self) -> int:
        return self.b - self.a

    def columns(self) -> dict[str, np.ndarray]:
        a, b = self.a, self.b
        return {f: c[a:b] for f, c in self.cols.items()}


def _column_groups(recs: np.ndarray, alloc) -> list[tuple[int, _Part]]:
    """:func:`_groups` for the columns output: ``[(trigger counter, _Part), ...]``."""
    cols, starts, run_sorted = split_columns(recs, alloc)
    ev = cols["event"]
    bounds = starts.tolist()
    counters = ev[starts[:-1]].tolist()
    return [(c, _Part(cols, a, b, bool(s)))
            for c, a, b, s in zip(counters, bounds[:-1], bounds[1:], run_sorted.tolist())]


def _join_columns(parts: dict[int, list], kind: _Kind, alloc) -> dict[str, np.ndarray]:
    """:func:`_join` for columns: chips in index order, then arrival order, then stably sorted
    by time. One part already in time order is used as it is (views: no copy)."""
    plist = [p for chip in sorted(parts) for p in parts[chip]]
    if not plist:
        return dict(kind.empty)
    if len(plist) == 1 and plist[0].ordered:
        return plist[0].columns()
    n = sum(p.size for p in plist)
    cols = kind.columns(n, alloc)
    if n == 0:
        return cols
    for f, out in cols.items():
        pos = 0
        for p in plist:
            out[pos:pos + p.size] = p.cols[f][p.a:p.b]
            pos += p.size
    key = cols[kind.key]
    if not _is_sorted(key):
        order = np.argsort(key, kind="stable")
        moved = kind.columns(n, alloc)
        for f, out in moved.items():
            np.take(cols[f], order, out=out)
        cols = moved
    return cols


def warm_up_kernels() -> None:
    """Compile (or load from the numba cache) the column kernels now, not on the first train."""
    for kind in (_HITS, _CENTROIDS):
        split_columns(np.zeros(2, kind.dtype))


# ----------------------------------------------------------------------------- messages
def plain_scalar(v):
    """``v`` as a plain Python bool, int, float or str (numpy scalars included); TypeError otherwise."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, str):
        return v
    raise TypeError(f"counter values must be numbers or strings, not {type(v).__name__}")


class BufferPool:
    """Reusable byte buffers for columns and messages (``alloc=`` of :func:`train_message`,
    :func:`split_columns`, :class:`TrainAssembler`), safe to use from several threads.

    A fresh array costs a page fault per 4 kB when first written (~1 ms per MB on a
    virtual machine); a pooled one does not. Fresh buffers are faulted in page by page
    before use (somewhat cheaper than faulting during the copies), and :meth:`reserve`
    lets an idle sink prepare the next one off the latency path. A buffer is reused once
    nothing but the pool refers to it any more - the columns and the message's arrays are
    views of it, and ZeroMQ holds them until the bytes are sent - so the pool never hands
    out memory still in use. The smallest free buffer that fits is taken (a small request
    does not tie up a big buffer while a big one would need a new one). At most
    ``max_buffers`` are kept; beyond, fresh arrays are handed out. Requests below
    ``min_bytes`` get fresh arrays (small allocations reuse the C heap anyway).
    """

    def __init__(self, max_buffers: int = 8, min_bytes: int = 0):
        self.max_buffers = int(max_buffers)
        self.min_bytes = int(min_bytes)
        self._bufs: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._recent: collections.deque = collections.deque(maxlen=16)
        self.reused = 0
        self.allocated = 0

    @property
    def recent_max(self) -> int:
        """The largest of the last 16 requests (bytes; 0 before any)."""
        return max(self._recent, default=0)

    def _free(self) -> list[int]:
        # 2 = the list's reference and getrefcount's argument: nothing else uses it
        return [i for i in range(len(self._bufs)) if sys.getrefcount(self._bufs[i]) == 2]

    def _best(self, free: list[int], nbytes: int) -> tuple[int | None, bool]:
        """(index of the free buffer to use, whether it is large enough)."""
        fits = [i for i in free if self._bufs[i].size >= nbytes]
        if fits:
            return min(fits, key=lambda i: self._bufs[i].size), True
        if free:
            return max(free, key=lambda i: self._bufs[i].size), False
        return None, False

    def __call__(self, nbytes: int) -> np.ndarray:
        nbytes = int(nbytes)
        with self._lock:
            self._recent.append(nbytes)
            if nbytes < self.min_bytes or nbytes == 0:
                return np.empty(nbytes, np.uint8)
            bufs = self._bufs
            i, fits = self._best(self._free(), nbytes)
            if i is not None:
                if not fits:
                    bufs[i] = _touched(np.empty(max(nbytes, 2 * bufs[i].size), np.uint8))
                    self.allocated += 1
                else:
                    self.reused += 1
                return bufs[i][:nbytes]
            self.allocated += 1
            buf = _touched(np.empty(nbytes, np.uint8))
            if len(bufs) < self.max_buffers:
                bufs.append(buf)
            return buf[:nbytes]

    def reserve(self, nbytes: int, count: int = 1) -> bool:
        """Make sure ``count`` free buffers of at least ``nbytes`` are ready, their pages
        already touched, so that the next requests of that size pay no page faults (call it
        while idle, e.g. after a send, or before a run). Returns True if it had to grow or
        add a buffer; False if enough were free already or the pool is full (all
        ``max_buffers`` in use)."""
        nbytes = int(nbytes)
        if nbytes <= 0 or nbytes < self.min_bytes:
            return False
        changed = False
        with self._lock:
            bufs = self._bufs
            free = self._free()
            ready = [i for i in free if bufs[i].size >= nbytes]
            small = sorted((i for i in free if bufs[i].size < nbytes), key=lambda i: -bufs[i].size)
            need = max(0, int(count) - len(ready))
            for i in small[:need]:
                bufs[i] = _touched(np.empty(max(nbytes, 2 * bufs[i].size), np.uint8))
                self.allocated += 1
                changed = True
                need -= 1
            while need > 0 and len(bufs) < self.max_buffers:
                bufs.append(_touched(np.empty(nbytes, np.uint8)))
                self.allocated += 1
                changed = True
                need -= 1
        return changed


def _touched(buf: np.ndarray) -> np.ndarray:
    """``buf`` with every page written once (faulted in now rather than by the next copy)."""
    buf[::4096] = 0
    return buf


def train_message(train: Train, source: str = DEFAULT_SOURCE, counters: Mapping[str, object] | None = None,
                  *, alloc: Callable[[int], np.ndarray] | None = None) -> tuple[dict, dict]:
    """The Karabo Bridge ``(data, metadata)`` of one train (layout in the module docstring).

    ``counters``: running counters to add as ``counters.<name>`` (numbers or strings).
    A train of columns (:class:`Train` ``hit_columns``/``centroid_columns``, e.g. from a
    :class:`TrainAssembler` with ``output="columns"``) is sent as it is: the message's
    arrays are its columns (no copy). Records are copied into C-contiguous arrays, views of
    one buffer (new, or ``alloc(nbytes)``, e.g. a :class:`BufferPool`). Either way the
    message stays valid whatever happens to ``train`` afterwards (columns are never written
    once a train is made).
    """
    from karabo_bridge import make_metadata

    d: dict[str, object] = {}
    kinds = ((_HITS, HIT_KEYS, "hit_columns", "hits"), (_CENTROIDS, CENTROID_KEYS, "centroid_columns", "centroids"))
    # records: copied into one buffer for all arrays (a large allocation gets huge pages,
    # numpy advises them from 4 MB, where one fresh array per field faults per 4 kB)
    copies = {attr: getattr(train, rec) for _, _, attr, rec in kinds if train.__dict__.get(attr) is None}
    total = sum(kind.nbytes(copies[attr].size) for kind, _, attr, _ in kinds if attr in copies)
    buf = None if not total else (np.empty(total, np.uint8) if alloc is None else alloc(total))
    off = 0
    for kind, keys, attr, _ in kinds:
        if attr in copies:
            nb_ = kind.nbytes(copies[attr].size)
            cols = _copy_columns(copies[attr], kind, buf[off:off + nb_] if nb_ else None)
            off += nb_
        else:
            cols = train.__dict__[attr]
        for f in kind.fields:
            d[keys[f]] = cols[f]
    for attr, key in SCALAR_KEYS.items():
        d[key] = plain_scalar(getattr(train, attr))
    d[TIME_UNIT_KEY] = TOA_UNIT_S
    if counters:
        for name, value in counters.items():
            d[f"{COUNTERS_PREFIX}.{name}"] = plain_scalar(value)
    ts = int(train.timestamp_ns)
    meta = make_metadata(source, int(train.train_id), ts if ts > 10**15 else None)
    return {source: d}, {source: meta}


def _copy_columns(recs: np.ndarray, kind: _Kind, buf: np.ndarray | None) -> dict[str, np.ndarray]:
    """The record fields as C-contiguous columns in ``buf`` (``kind.nbytes(recs.size)``
    bytes; one pass of the kernel for the usual dtypes)."""
    n = recs.size
    cols = kind.columns(n, None if buf is None else (lambda nbytes: buf))
    if recs.dtype == kind.dtype:
        if n:
            # (the kernel's runs are a by-product here)
            kind.kernel(np.ascontiguousarray(recs), *(cols[f] for f in kind.fields),
                        np.empty(n + 1, np.int64), np.empty(n, np.uint8))
        return cols
    for f in kind.fields:            # another record layout with these fields: numpy copies
        cols[f][...] = recs[f]
    return cols


def _records(dtype: np.dtype, fields, keys: Mapping[str, str], src: Mapping, tid: int) -> np.ndarray:
    n = None
    for f in fields:
        if keys[f] not in src:
            raise KeyError(f"message lacks {keys[f]!r}")
        size = np.asarray(src[keys[f]]).size
        if n is not None and size != n:
            raise ValueError(f"{keys[f]!r} has {size} entries, other keys {n}")
        n = size
    out = np.zeros(n or 0, dtype)
    for f in fields:
        out[f] = src[keys[f]]
    out["train_id"] = tid
    return out


def train_from_message(data: Mapping, metadata: Mapping | None = None, source: str = DEFAULT_SOURCE) -> Train:
    """The :class:`Train` of a message in this layout (e.g. as a Karabo Bridge client
    received it); the inverse of :func:`train_message` (``index`` is -1)."""
    if source not in data:
        raise KeyError(f"no source {source!r} in the message (sources: {sorted(data)})")
    src = data[source]
    meta = (metadata or {}).get(source) or src.get("metadata") or {}
    tid = int(meta.get("timestamp.tid", 0) or 0)
    ts = 0
    if "timestamp.sec" in meta and "timestamp.frac" in meta:
        ts = int(meta["timestamp.sec"]) * 1_000_000_000 + int(str(meta["timestamp.frac"])[:9].ljust(9, "0"))
    hits = _records(EVENT_DTYPE, HIT_FIELDS, HIT_KEYS, src, tid)
    cen = _records(CENTROID_DTYPE, CENTROID_FIELDS, CENTROID_KEYS, src, tid)
    s = {attr: src[key] for attr, key in SCALAR_KEYS.items() if key in src}
    return Train(train_id=tid, trigger=int(s.get("trigger", 0)), trigger_time=int(s.get("trigger_time", 0)),
                 flags=int(s.get("flags", 0)), hits=hits, centroids=cen, timestamp_ns=ts,
                 chips_triggered=int(s.get("chips_triggered", 1)), complete=bool(s.get("complete", True)))


# ----------------------------------------------------------------------------- assembly
class _Slot:
    """A reference trigger not yet handed out."""

    __slots__ = ("counter", "time", "train_id", "flags", "timestamp_ns", "decided", "hits", "centroids", "chips")

    def __init__(self, counter: int, time: int):
        self.counter, self.time = counter, time
        self.train_id, self.flags, self.timestamp_ns, self.decided = 0, 0, 0, False
        self.hits: dict[int, list] = {}
        self.centroids: dict[int, list] = {}
        self.chips: set[int] = set()


_EMITTED = "emitted"          # a chip trigger whose reference train is already out
_UNMATCHED = "unmatched"      # a chip trigger no reference trigger matches


def _groups(recs: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``[(trigger counter, records), ...]`` (views when already ordered by counter;
    a stable sort keeps the time order within a trigger)."""
    ev = np.ascontiguousarray(recs["event"])
    if ev.size > 1 and np.any(ev[1:] < ev[:-1]):
        order = np.argsort(ev, kind="stable")
        recs, ev = _take(recs, order), ev[order]
    cuts = np.flatnonzero(ev[1:] != ev[:-1]) + 1
    bounds = [0, *cuts.tolist(), ev.size]
    return [(int(ev[a]), recs[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _rows(a: np.ndarray) -> np.ndarray:
    """A record array as a 2-D byte array (one row per record): numpy copies and gathers
    packed records field by field, ten times slower than whole rows of bytes."""
    a = a if a.flags.c_contiguous else np.ascontiguousarray(a)
    return a.view(np.uint8).reshape(a.size, a.dtype.itemsize)


def _relabelled(a: np.ndarray, train_id: int) -> np.ndarray:
    """A new array of the records with ``train_id``."""
    out = np.empty(a.size, a.dtype)
    if a.size:
        out.view(np.uint8).reshape(a.size, a.dtype.itemsize)[:] = _rows(a)
    out["train_id"] = train_id
    return out


def _take(a: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``a[order]`` for packed records, by rows of bytes."""
    return _rows(a).take(order, axis=0).view(a.dtype).reshape(order.size)


def _is_sorted(t: np.ndarray) -> bool:
    return t.size < 2 or not np.any(t[1:] < t[:-1])


def _join(parts: dict[int, list], dtype: np.dtype, key: str, train_id: int) -> np.ndarray:
    """The records of a slot with ``train_id``: chips in index order, then sorted by ``key``
    (stable: ties keep chip order, then arrival order). One part already in order and
    labelled is returned as it is (a view of the chunk's array: no copy); otherwise the
    result is a new array."""
    arrays = [a for chip in sorted(parts) for a in parts[chip]]
    if len(arrays) == 1:
        a = arrays[0]
        if _is_sorted(a[key]) and not np.any(a["train_id"] != train_id):
            return a
    n = sum(a.size for a in arrays)
    out = np.empty(n, dtype)
    if n == 0:
        return out
    rows = out.view(np.uint8).reshape(n, dtype.itemsize)
    pos = 0
    for a in arrays:
        rows[pos:pos + a.size] = _rows(a)
        pos += a.size
    if not _is_sorted(out[key]):
        out = _take(out, np.argsort(out[key], kind="stable"))
    out["train_id"] = train_id
    return out


class TrainAssembler:
    """Assembles :class:`Train` s from the processed chunks of several chips.

    Parameters
    ----------
    chips : the chip indices whose chunks will come (a train waits for all of them).
    event_window_s : ``(min, max)`` time of flight of the events (as the processors'),
        or None when events have no window (a trigger's events then end at the next trigger).
    on_train : ``callable(Train)``, called with each train, in trigger-time order. It is
        called from whichever thread's :meth:`add` completed the train, with the
        assembler's lock held: it must be quick (hand the train to a queue) and must not
        call back into the assembler.
    reference_chip : the chip whose trigger list defines the trains (default the lowest
        index: all chips see the same trigger cable).
    trigger_tdc, trigger_edge : which TDC edges are triggers (as the processors').
    margin_s : added to the window end before a train counts as complete (room for
        timewalk corrections that move hits later; see :meth:`from_info`).
    wait_for_train_ids : hold a complete train until its train ID is decided (it comes in
        ``chunk.trains``), at most ``train_id_timeout_s`` of board time past the window
        end; then it goes out with train ID 0 and UNKNOWN (counted ``trains_id_timeout``).
        False: never wait (no train-ID source; every train gets 0).
    trigger_tolerance_s : how far another chip's trigger time may be from the reference
        chip's to be the same trigger (None: match trigger counters only).
    output : ``"records"`` (default): trains hold ``hits``/``centroids`` records (views of
        the chunks' arrays when a train came whole in one chunk); ``"columns"``: each
        chunk's records are split into per-field columns once, when added (one pass of a
        numba kernel, outside the lock), and trains hold ``hit_columns``/``centroid_columns``
        (slices of them, or joined when a train came in several parts), which
        :func:`train_message` sends without copying; their records are built only if read.
    alloc : ``callable(nbytes) -> uint8 array`` for the columns' memory (e.g. a
        :class:`BufferPool`); default new arrays.

    Counters (:attr:`counters`): ``triggers`` (reference triggers), ``trains`` (handed
    out), ``trains_empty`` (no hit), ``trains_without_id`` (train ID 0),
    ``trains_id_timeout``, ``trains_incomplete`` (flushed before all chips covered them),
    ``trains_missing_chips`` (a chip did not see the trigger), ``hits``, ``centroids``
    (handed out), ``hits_late``/``centroids_late`` (came after their train went out),
    ``hits_unmatched``/``centroids_unmatched`` (their chip's trigger matches no
    reference trigger, or came before the assembler's first chunk), ``triggers_late``
    (a reference trigger older than a train already out: its hits count as late),
    ``triggers_unmatched`` (another chip's trigger with no reference trigger),
    ``trigger_counter_mismatch`` (matched by time but with another counter),
    ``triggers_repeated``, ``train_id_disagreements`` (two decisions for one trigger
    differ; the first is kept), ``decisions_late`` (a train ID decided after its train
    went out with 0). Every hit and centroid added ends up
    in ``hits``, ``hits_late`` or ``hits_unmatched`` (same for centroids) once flushed.
    """

    def __init__(self, chips: Iterable[int], event_window_s: tuple[float, float] | None,
                 on_train: Callable[[Train], None], *, reference_chip: int | None = None,
                 trigger_tdc: int = 1, trigger_edge: str = "rising", margin_s: float = 1e-6,
                 wait_for_train_ids: bool = True, train_id_timeout_s: float = 1.0,
                 trigger_tolerance_s: float | None = 1e-6, keep: int = 4096, output: str = "records",
                 alloc: Callable[[int], np.ndarray] | None = None):
        if output not in ("records", "columns"):
            raise ConfigError(f"output must be 'records' or 'columns', not {output!r}")
        if alloc is not None and not callable(alloc):
            raise ConfigError("alloc must be callable")
        chips = sorted({int(c) for c in chips})
        if not chips:
            raise ConfigError("a train assembler needs at least one chip")
        if reference_chip is None:
            reference_chip = chips[0]
        if reference_chip not in chips:
            raise ConfigError(f"reference chip {reference_chip} is not among the chips {chips}")
        if trigger_tdc not in (1, 2):
            raise ConfigError(f"trigger TDC must be 1 or 2, not {trigger_tdc!r}")
        if trigger_edge not in ("rising", "falling"):
            raise ConfigError(f"trigger edge must be 'rising' or 'falling', not {trigger_edge!r}")
        if event_window_s is not None:
            lo, hi = (float(v) for v in event_window_s)
            if not lo <= hi:
                raise ConfigError(f"event window min {lo} s is above max {hi} s")
            event_window_s = (lo, hi)
        if not callable(on_train):
            raise ConfigError("on_train must be callable")
        if margin_s < 0 or train_id_timeout_s < 0 or (trigger_tolerance_s is not None and trigger_tolerance_s < 0):
            raise ConfigError("margin_s, train_id_timeout_s and trigger_tolerance_s must be >= 0")
        self.chips = chips
        self.output = output
        self.alloc = alloc
        self.reference_chip = int(reference_chip)
        self.event_window_s = event_window_s
        self.on_train = on_train
        self.trigger_tdc, self.trigger_edge = int(trigger_tdc), trigger_edge
        self.margin_s = float(margin_s)
        self.wait_for_train_ids = bool(wait_for_train_ids)
        self.train_id_timeout_s = float(train_id_timeout_s)
        self.trigger_tolerance_s = trigger_tolerance_s
        self._win_end = (None if event_window_s is None
                         else int(round(event_window_s[1] / TOA_UNIT_S)) + int(math.ceil(self.margin_s / TOA_UNIT_S)))
        self._id_timeout = int(round(self.train_id_timeout_s / TOA_UNIT_S))
        self._tol = None if trigger_tolerance_s is None else int(round(trigger_tolerance_s / TOA_UNIT_S))
        self._keep = max(16, int(keep))
        self._lock = threading.Lock()
        self._until = dict.fromkeys(chips, _INT64_MIN)
        self._slots: dict[int, _Slot] = {}
        self._order: list[_Slot] | None = []
        self._emitted: collections.OrderedDict[int, tuple[int, int]] = collections.OrderedDict()
        self._decisions: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        self._chip_map = {c: collections.OrderedDict() for c in chips if c != self.reference_chip}
        self._chip_triggers: dict[int, list[tuple[int, int]]] = {c: [] for c in self._chip_map}
        self._orphans: list[tuple[int, int, np.ndarray, str]] = []
        self._first_counter: dict[int, int | None] = dict.fromkeys(chips)   # first trigger seen per chip
        self._frontier = _INT64_MIN        # trigger time of the last train handed out
        self._next_index = 0
        self._flushed = False
        self.counters: dict[str, int] = dict(
            triggers=0, trains=0, trains_empty=0, trains_without_id=0, trains_id_timeout=0,
            trains_incomplete=0, trains_missing_chips=0, hits=0, centroids=0, hits_late=0,
            centroids_late=0, hits_unmatched=0, centroids_unmatched=0, triggers_late=0,
            triggers_unmatched=0, trigger_counter_mismatch=0, triggers_repeated=0,
            train_id_disagreements=0, decisions_late=0)

    # ------------------------------------------------------------------ construction from pipeline info
    @classmethod
    def from_info(cls, info: Mapping, on_train: Callable[[Train], None], **overrides) -> "TrainAssembler":
        """An assembler for a pipeline's ``start(info)``: chips, event window, trigger
        edge and a timewalk margin from ``info["config"]``; ``info["train_ids"]`` (if
        given) sets ``wait_for_train_ids``. Keyword arguments override."""
        chips = [int(c) for c in info.get("chips", ())]
        configs = {int(k): v for k, v in (info.get("config") or {}).items()}
        kw: dict = {}
        windows = [cfg.get("event_window_s", (0.0, 1e-3)) for cfg in configs.values()]
        if windows:
            if any(w is None for w in windows):
                kw["event_window_s"] = None
            else:
                kw["event_window_s"] = (min(w[0] for w in windows), max(w[1] for w in windows))
        else:
            kw["event_window_s"] = info.get("event_window_s", (0.0, 1e-3))
        if chips:
            ref = overrides.get("reference_chip", min(chips))
            cfg = configs.get(ref, {})
            edges = {(c.get("trigger_tdc", 1), c.get("trigger_edge", "rising")) for c in configs.values()}
            if len(edges) > 1:
                raise ConfigError(f"the chips use different trigger edges {sorted(edges)}: one train "
                                  "trigger is needed for all")
            kw["trigger_tdc"] = cfg.get("trigger_tdc", 1)
            kw["trigger_edge"] = cfg.get("trigger_edge", "rising")
        margin = 1e-6
        for cfg in configs.values():
            if cfg.get("timewalk_path"):
                from ..cluster import TimewalkTable
                lowest = float(np.min(TimewalkTable.load(cfg["timewalk_path"]).delay_ns))
                margin = max(margin, 1e-6 - lowest * 1e-9)
        kw["margin_s"] = margin
        if "train_ids" in info:
            kw["wait_for_train_ids"] = bool(info["train_ids"])
        kw.update(overrides)
        window = kw.pop("event_window_s")
        return cls(chips, window, on_train, **kw)

    # ------------------------------------------------------------------ public
    @property
    def pending(self) -> int:
        """Trains (reference triggers) not yet handed out."""
        return len(self._slots)

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters plus ``pending`` trains. Not locked (a monitor must
        not wait for an ``on_train`` that blocks): taken during an :meth:`add`, the
        counters of that chunk may be partly counted."""
        return dict(self.counters, pending=len(self._slots))

    def add(self, chunk) -> None:
        """Take one :class:`~tpx3lib.pipeline.processor.ProcessedChunk` (any chip, any
        thread; per chip in order). Complete trains go to ``on_train`` before it returns."""
        chip = int(chunk.chip)
        if chip not in self._until:
            raise TrainAssemblyError(f"chunk of chip {chip}, but the assembler was made for chips {self.chips}")
        hit_groups = cen_groups = None
        if self.output == "columns":
            # the one pass over the records, outside the lock (chips in parallel: nogil kernel)
            if chunk.events.size:
                hit_groups = _column_groups(chunk.events, self.alloc)
            if chunk.centroids.size:
                cen_groups = _column_groups(chunk.centroids, self.alloc)
        else:
            if chunk.events.size:
                hit_groups = _groups(chunk.events)
            if chunk.centroids.size:
                cen_groups = _groups(chunk.centroids)
        with self._lock:
            if self._flushed:
                raise TrainAssemblyError("chunk added after flush(): the stream has ended")
            if chunk.triggers.size:
                trig = self._select(chunk.triggers)
                if trig.size:
                    self._add_triggers(chip, trig)
            if chunk.trains.size:
                self._add_decisions(chunk.trains)
            for counter, part in hit_groups or ():
                self._place(chip, counter, part, "hits")
            for counter, part in cen_groups or ():
                self._place(chip, counter, part, "centroids")
            if chunk.complete_until > self._until[chip]:
                self._until[chip] = int(chunk.complete_until)
            if self._chip_map or self._orphans:
                self._resolve_unmatched()
            self._emit_ready(force=False)

    def flush(self) -> None:
        """End of stream: hand out every train still held (those some chip did not cover
        are marked incomplete) and count what could not be placed. Later :meth:`add`
        calls raise :class:`TrainAssemblyError`."""
        with self._lock:
            if self._flushed:
                return
            self._resolve_unmatched(final=True)
            self._emit_ready(force=True)
            self._flushed = True

    # ------------------------------------------------------------------ triggers
    def _select(self, tdcs: np.ndarray) -> np.ndarray:
        if tdcs.dtype != TDC_DTYPE:
            raise TypeError(f"chunk triggers must have TDC_DTYPE, not {tdcs.dtype}")
        sel = (tdcs["tdc"] == self.trigger_tdc) & (tdcs["rising"] == (1 if self.trigger_edge == "rising" else 0))
        return tdcs[sel]

    def _close(self, a: int, b: int) -> bool:
        return self._tol is None or abs(a - b) <= self._tol

    def _add_triggers(self, chip: int, trig: np.ndarray) -> None:
        pairs = list(zip(trig["counter"].tolist(), trig["time"].tolist()))
        if self._first_counter[chip] is None:
            self._first_counter[chip] = min(c for c, _ in pairs)
        if chip != self.reference_chip:
            self._chip_triggers[chip].extend(pairs)
            return
        for c, t in pairs:
            if c in self._slots or c in self._emitted:
                self.counters["triggers_repeated"] += 1
                continue
            if t <= self._frontier:
                # older than a train already out: cannot be handed out in order
                self.counters["triggers_late"] += 1
                self._remember_emitted(c, t, 0)
                continue
            slot = _Slot(c, t)
            slot.chips.add(chip)
            self._slots[c] = slot
            self._order = None
            self.counters["triggers"] += 1
            d = self._decisions.pop(c, None)
            if d is not None:
                self._decide(slot, d)

    def _remember_emitted(self, counter: int, time: int, train_id: int) -> None:
        self._emitted[counter] = (time, train_id)
        while len(self._emitted) > self._keep:
            self._emitted.popitem(last=False)

    def _find_reference(self, c: int, t: int):
        """The reference slot (or _EMITTED) of another chip's trigger, and whether only
        its time matched; (None, False) if no reference trigger matches (yet)."""
        slot = self._slots.get(c)
        if slot is not None and self._close(slot.time, t):
            return slot, False
        got = self._emitted.get(c)
        if got is not None and self._close(got[0], t):
            return _EMITTED, False
        if self._tol is not None:
            for s in self._slots.values():
                if abs(s.time - t) <= self._tol:
                    return s, True
            for time, _ in self._emitted.values():
                if abs(time - t) <= self._tol:
                    return _EMITTED, True
        return None, False

    def _resolve_unmatched(self, final: bool = False) -> None:
        """Match other chips' triggers to reference triggers, then place their waiting data."""
        ref_until = self._until[self.reference_chip]
        progress = bool(self._orphans and self._slots)      # new reference triggers may have come
        for chip, waiting in self._chip_triggers.items():
            if not waiting:
                continue
            left = []
            for c, t in waiting:
                target, by_time = self._find_reference(c, t)
                if target is None:
                    tol = self._tol or 0
                    if final or ref_until > t + tol:
                        # the reference chip has delivered past this time without such a trigger
                        target = _UNMATCHED
                        self.counters["triggers_unmatched"] += 1
                    else:
                        left.append((c, t))
                        continue
                elif by_time:
                    self.counters["trigger_counter_mismatch"] += 1
                if isinstance(target, _Slot):
                    target.chips.add(chip)
                    target = target.counter
                cmap = self._chip_map[chip]
                cmap[c] = target
                while len(cmap) > self._keep:
                    cmap.popitem(last=False)
                progress = True
            self._chip_triggers[chip] = left
        if (progress or final) and self._orphans:
            orphans, self._orphans = self._orphans, []
            for chip, counter, part, kind in orphans:
                self._place(chip, counter, part, kind, final=final)

    # ------------------------------------------------------------------ decisions
    def _add_decisions(self, recs: np.ndarray) -> None:
        for c, t, tid, flags, host in zip(recs["counter"].tolist(), recs["time"].tolist(),
                                          recs["train_id"].tolist(), recs["flags"].tolist(),
                                          recs["host_time"].tolist()):
            d = (t, tid, flags, host)
            slot = self._slots.get(c)
            if slot is not None and self._close(slot.time, t):
                if slot.decided:
                    if slot.train_id != tid:
                        self.counters["train_id_disagreements"] += 1
                else:
                    self._decide(slot, d)
                continue
            got = self._emitted.get(c)
            if got is not None and self._close(got[0], t):
                if got[1] == 0 and tid != 0:
                    self.counters["decisions_late"] += 1
                elif got[1] != tid:
                    self.counters["train_id_disagreements"] += 1
                continue
            if c in self._decisions and self._decisions[c][1] != tid:
                self.counters["train_id_disagreements"] += 1
                continue
            self._decisions[c] = d
            while len(self._decisions) > self._keep:
                self._decisions.popitem(last=False)

    def _decide(self, slot: _Slot, d: tuple) -> None:
        t, tid, flags, host = d
        if not self._close(slot.time, t):
            self.counters["train_id_disagreements"] += 1
            return
        slot.train_id, slot.flags, slot.decided = int(tid), int(flags), True
        slot.timestamp_ns = int(round(host * 1e9)) if math.isfinite(host) and host > 0 else 0

    # ------------------------------------------------------------------ data
    def _place(self, chip: int, counter: int, part: np.ndarray, kind: str, final: bool = False) -> None:
        first = self._first_counter[chip]
        if first is None or counter < first:
            # a trigger from before this chip's first chunk here (the assembler started mid-stream)
            self.counters[f"{kind}_unmatched"] += part.size
            return
        if chip == self.reference_chip:
            target = counter
        else:
            target = self._chip_map[chip].get(counter)
            if target is None:
                if final:
                    self.counters[f"{kind}_unmatched"] += part.size
                else:
                    self._orphans.append((chip, counter, part, kind))
                return
            if target == _UNMATCHED:
                self.counters[f"{kind}_unmatched"] += part.size
                return
            if target == _EMITTED:
                self.counters[f"{kind}_late"] += part.size
                return
        slot = self._slots.get(target)
        if slot is not None:
            getattr(slot, kind).setdefault(chip, []).append(part)
        elif target in self._emitted:
            self.counters[f"{kind}_late"] += part.size
        elif final:
            self.counters[f"{kind}_unmatched"] += part.size
        else:
            self._orphans.append((chip, counter, part, kind))

    # ------------------------------------------------------------------ emission
    def _emit_ready(self, force: bool) -> None:
        if not self._slots:
            return
        if self._order is None:
            self._order = sorted(self._slots.values(), key=lambda s: (s.time, s.counter))
        order = self._order
        low = min(self._until.values())
        final = low == _INT64_MAX
        n_out = 0
        for i, slot in enumerate(order):
            complete, timed_out = True, False
            if not final:
                if self._win_end is not None:
                    end = slot.time + self._win_end
                elif i + 1 < len(order):
                    end = order[i + 1].time       # no window: events end at the next trigger
                else:
                    end = None
                if end is None or low <= end:     # some chip has not delivered the whole window
                    if not force:
                        break
                    complete = False
                elif not slot.decided and self.wait_for_train_ids:
                    if low > end + self._id_timeout:
                        timed_out = True
                    elif not force:
                        break
            self._emit(slot, complete=complete, timed_out=timed_out)
            n_out += 1
        if n_out:
            del order[:n_out]

    def _emit(self, slot: _Slot, complete: bool, timed_out: bool) -> None:
        del self._slots[slot.counter]
        tid = slot.train_id if slot.decided else 0
        flags = slot.flags if slot.decided else UNKNOWN
        if self.output == "columns":
            hcols = _join_columns(slot.hits, _HITS, self.alloc)
            ccols = _join_columns(slot.centroids, _CENTROIDS, self.alloc)
            n_hits, n_cen = hcols["event"].size, ccols["event"].size
            train = Train(train_id=tid, trigger=slot.counter, trigger_time=slot.time, flags=flags, hits=None,
                          centroids=None, timestamp_ns=slot.timestamp_ns, index=self._next_index,
                          chips_triggered=len(slot.chips), complete=complete, hit_columns=hcols,
                          centroid_columns=ccols)
        else:
            hits = _join(slot.hits, EVENT_DTYPE, "toa", tid)
            cen = _join(slot.centroids, CENTROID_DTYPE, "toa_first", tid)
            n_hits, n_cen = hits.size, cen.size
            train = Train(train_id=tid, trigger=slot.counter, trigger_time=slot.time, flags=flags, hits=hits,
                          centroids=cen, timestamp_ns=slot.timestamp_ns, index=self._next_index,
                          chips_triggered=len(slot.chips), complete=complete)
        self._next_index += 1
        self._frontier = max(self._frontier, slot.time)
        self._remember_emitted(slot.counter, slot.time, tid)
        k = self.counters
        k["trains"] += 1
        k["trains_empty"] += n_hits == 0
        k["trains_without_id"] += tid == 0
        k["trains_id_timeout"] += timed_out
        k["trains_incomplete"] += not complete
        k["trains_missing_chips"] += len(slot.chips) < len(self.chips)
        k["hits"] += n_hits
        k["centroids"] += n_cen
        self.on_train(train)


# ----------------------------------------------------------------------------- hand-off
#: What a :class:`TrainQueue` does when full: drop the oldest queued train, or wait.
WHEN_FULL = ("drop", "block")


class TrainQueue:
    """A bounded FIFO between the thread that completes trains (a processing thread,
    inside :class:`TrainAssembler`'s ``on_train``) and a sink's own thread.

    ``when_full="drop"``: a new train pushes out the oldest waiting one (a live view
    prefers fresh trains; order is kept), counted in ``dropped``. ``"block"``: the
    caller waits for room, which holds up every chip's processing (back-pressure onto
    the capture, whose ring counts what it loses); after ``block_timeout`` seconds (None:
    no limit) the new train is dropped and counted instead. Items are
    ``(train, perf_counter time of completion)``.
    """

    def __init__(self, maxlen: int = 10, when_full: str = "drop", block_timeout: float | None = None):
        if int(maxlen) < 1:
            raise ConfigError(f"queue length must be >= 1, not {maxlen!r}")
        if when_full not in WHEN_FULL:
            raise ConfigError(f"when_full must be one of {', '.join(WHEN_FULL)}, not {when_full!r}")
        self.maxlen = int(maxlen)
        self.when_full = when_full
        self.block_timeout = block_timeout
        self._dq: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.put_count = 0
        self.dropped = 0
        self.high_water = 0

    def __len__(self) -> int:
        with self._cv:
            return len(self._dq)

    def put(self, train: Train) -> bool:
        """Queue a train; False if this train was dropped (queue closed or still full)."""
        item = (train, time.perf_counter())
        with self._cv:
            if self._closed:
                self.dropped += 1
                return False
            if len(self._dq) >= self.maxlen:
                if self.when_full == "drop":
                    self._dq.popleft()
                    self.dropped += 1
                else:
                    deadline = None if self.block_timeout is None else time.monotonic() + self.block_timeout
                    while len(self._dq) >= self.maxlen and not self._closed:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            break
                        self._cv.wait(left)
                    if len(self._dq) >= self.maxlen or self._closed:
                        self.dropped += 1
                        return False
            self._dq.append(item)
            self.put_count += 1
            self.high_water = max(self.high_water, len(self._dq))
            self._cv.notify_all()
            return True

    def get(self, timeout: float | None = None):
        """The oldest ``(train, t_done)``; None once closed and empty; raises
        ``TimeoutError`` when nothing came within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while not self._dq:
                if self._closed:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("no train queued")
                self._cv.wait(left)
            item = self._dq.popleft()
            self._cv.notify_all()
            return item

    def close(self) -> None:
        """No more trains: :meth:`get` returns what is queued, then None."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def clear(self) -> int:
        """Remove everything queued; returns how many trains that was."""
        with self._cv:
            n = len(self._dq)
            self._dq.clear()
            self._cv.notify_all()
            return n
