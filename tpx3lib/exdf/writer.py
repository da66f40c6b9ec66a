"""Writing European XFEL run directories (``RAW-R0042-TPX01-S00000.h5``, ...).

:class:`ExdfRunWriter` takes one train at a time, in strictly increasing train-ID
order, and writes the layout of :mod:`tpx3lib.exdf.layout` (rules in
docs/exdf.md and the shared spec): METADATA, INDEX (trainId, timestamp, flag,
origin; first/count per source and index group, zero-count trains included),
INSTRUMENT (hits and centroids), CONTROL (settings, one row per train) and RUN
(settings at run start, in every sequence file).

Sequence files: a train is never split; a new file starts before a train that
would take the current file's payload (the uncompressed bytes of its entries,
control rows and index rows) past ``sequence_max_bytes``, unless the file is
still empty. The files on disk are smaller (gzip), plus a little HDF5 overhead.

Instrument data (hits, centroids) does not wait: it goes into chunk-sized column
buffers, and every full chunk is compressed on its own (shuffle + LZF or deflate,
by :class:`tpx3lib.process.h5chunks.ColumnTable`, in ``executor``'s threads when one is
given, without the GIL) and written with ``write_direct_chunk`` - not through h5py's
filters, which compress one dataset at a time holding the GIL. The small per-train rows
(INDEX, CONTROL) are buffered (up to ``buffer_bytes``) and appended in blocks.
:meth:`ExdfRunWriter.flush` puts everything in the file, :meth:`ExdfRunWriter.close`
ends the run. A run with no train writes no file.

Two ways in: :meth:`ExdfRunWriter.write_train` takes one train's records (the live
run-file sink), :meth:`ExdfRunWriter.write_block` many trains at once as columns with
per-train counts (offline processing: no per-train Python work, no record copies).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from ..dtypes import CENTROID_DTYPE, EVENT_DTYPE
from ..errors import ConfigError
from .errors import ExdfDtypeError, ExdfError, ExdfValueError, RunExistsError, TrainOrderError
from .layout import (CENTROID_FIELDS, CENTROIDS_GROUP, DATA_FORMAT_VERSION, DEFAULT_SOURCE, FIELD_ATTRS,
                     HIT_FIELDS, HITS_GROUP, check_category_aggregator, check_control_source,
                     check_instrument_source, file_name, unit_attrs)
from .settings import _STR, SettingSpec, check_value, normalise_settings, setting_spec
from ..process.h5chunks import ColumnTable

__all__ = ["ExdfRunWriter", "DAQ_LIBRARY"]

DAQ_LIBRARY = "tpx3lib.exdf 0.1"
_VLEN_ASCII = h5py.string_dtype("ascii")
_INDEX_ROW_BYTES = 8 + 8 + 4 + 4


def _utc_now() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


class _Group:
    """One instrument index group: record dtype, stored fields, its table in the current
    file and the per-train counts whose INDEX rows are not written yet."""

    def __init__(self, name: str, dtype: np.dtype, fields: tuple[str, ...]):
        self.name, self.dtype, self.fields = name, dtype, fields
        self.entry_bytes = sum(dtype[f].itemsize for f in fields)
        self.counts: list[np.ndarray] = []      # per-train entry counts, INDEX rows pending
        self.file_entries = 0                   # entries whose INDEX rows are in the current file
        self.table: ColumnTable | None = None   # the current file's datasets


def slice_pieces(pieces: list[dict], lo: int, hi: int) -> list[dict]:
    """Rows ``lo:hi`` of the concatenation of ``pieces`` (column dicts), as views."""
    out, pos = [], 0
    for p in pieces:
        n = len(next(iter(p.values())))
        a, b = max(lo - pos, 0), min(hi - pos, n)
        if a < b:
            out.append(p if (a, b) == (0, n) else {f: c[a:b] for f, c in p.items()})
        pos += n
        if pos >= hi:
            break
    return out


class ExdfRunWriter:
    """Writes one run (one aggregator) of European XFEL HDF5 files.

    Parameters
    ----------
    run_dir : directory (created if missing).
    run_number : 0..9999.
    proposal : proposal number (METADATA/proposalNumber).
    sequence_max_bytes : payload bytes per sequence file (see the module docstring).
    source : instrument source, ``DOMAIN/TYPE/MEMBER:channel``.
    control_source : control source of the settings; default the device part of ``source``.
    settings : run-start settings, ``{dotted key: value}`` or nested dicts (may be empty).
    units : ``{settings key: unit symbol}`` (e.g. ``"V"``, ``"mV"``, ``""`` for counts).
    with_centroids : write the ``centroids`` index group.
    aggregator, category : file name parts (``TPX01``, ``RAW``).
    run_type, sample : METADATA strings.
    compression : filter of all datasets ("gzip", "lzf" or None); ``compression_level`` for gzip.
    chunk_entries : chunk length of instrument datasets (entries); control/index use 1/64 of it.
    buffer_bytes : INDEX and CONTROL rows held in memory before a block write (instrument
        data is written chunk by chunk as it comes).
    overwrite : replace existing files of this run and aggregator instead of refusing.
    executor : a ``concurrent.futures`` executor compressing instrument chunks (None: the
        calling thread compresses them); ``max_pending`` chunk sets per index group may
        wait there before the writer waits for the oldest.
    """

    def __init__(self, run_dir: str | os.PathLike, run_number: int, *, proposal: int = 0,
                 sequence_max_bytes: int = 1 << 30, source: str = DEFAULT_SOURCE,
                 control_source: str | None = None, settings: Mapping[str, Any] | None = None,
                 units: Mapping[str, str] | None = None, with_centroids: bool = True,
                 aggregator: str = "TPX01", category: str = "RAW", run_type: str = "",
                 sample: str = "", compression: str | None = "gzip", compression_level: int = 1,
                 chunk_entries: int = 1 << 16, buffer_bytes: int = 16 << 20, overwrite: bool = False,
                 executor=None, max_pending: int = 4):
        if not 0 <= int(run_number) <= 9999:
            raise ConfigError(f"run number must be 0..9999, not {run_number}")
        if not 0 <= int(proposal) < 1 << 32:
            raise ConfigError(f"proposal number must fit uint32, not {proposal}")
        if int(sequence_max_bytes) < 1:
            raise ConfigError("sequence_max_bytes must be >= 1")
        if compression not in ("gzip", "lzf", None):
            raise ConfigError(f"compression must be 'gzip', 'lzf' or None, not {compression!r}")
        if not 0 <= int(compression_level) <= 9:
            raise ConfigError(f"compression_level must be 0..9, not {compression_level!r}")
        if chunk_entries < 64 or buffer_bytes < 0:
            raise ConfigError("chunk_entries must be >= 64 and buffer_bytes >= 0")
        check_instrument_source(source)
        control_source = control_source or source.partition(":")[0]
        check_control_source(control_source)
        check_category_aggregator(category, aggregator)
        self.run_dir = Path(run_dir)
        self.run_number = int(run_number)
        self.proposal = int(proposal)
        self.sequence_max_bytes = int(sequence_max_bytes)
        self.source = source
        self.control_source = control_source
        self.aggregator, self.category = aggregator, category
        self.run_type, self.sample = str(run_type), str(sample)
        self.compression = compression
        self.compression_level = int(compression_level)
        self.chunk_entries = int(chunk_entries)
        self.chunk_trains = max(16, self.chunk_entries // 64)
        self.buffer_bytes = int(buffer_bytes)
        self.executor = executor
        self.max_pending = max(1, int(max_pending))

        flat = normalise_settings(settings)
        self._specs: dict[str, SettingSpec] = {k: setting_spec(k, v) for k, v in flat.items()}
        self._values = {k: check_value(self._specs[k], v) for k, v in flat.items()}
        self._run_values = dict(self._values)
        self._value_times: dict[str, int | None] = dict.fromkeys(flat)
        self._units = dict(units or {})
        unknown = set(self._units) - set(self._specs)
        if unknown:
            raise ConfigError(f"units given for keys that are not settings: {sorted(unknown)}")
        paths = [s.path for s in self._specs.values()]
        for p in paths:
            if any(q.startswith(p + "/") for q in paths):
                raise ConfigError(f"setting {p.replace('/', '.')!r} is also the parent of another setting")

        self._groups = [_Group(HITS_GROUP, EVENT_DTYPE, HIT_FIELDS)]
        if with_centroids:
            self._groups.append(_Group(CENTROIDS_GROUP, CENTROID_DTYPE, CENTROID_FIELDS))
        self.with_centroids = bool(with_centroids)
        # bytes of a train besides its entries: index rows, first/count of every group, control rows
        self._fixed_train_bytes = (_INDEX_ROW_BYTES + 16 * (len(self._groups) + 1)
                                   + sum(s.row_bytes for s in self._specs.values()))

        self.run_dir.mkdir(parents=True, exist_ok=True)
        pattern = f"{category}-R{self.run_number:04d}-{aggregator}-S*.h5"
        existing = sorted(self.run_dir.glob(pattern))
        if existing:
            if not overwrite:
                raise RunExistsError(f"{self.run_dir} already holds run {self.run_number} of {aggregator}: "
                                     f"{existing[0].name} (pass overwrite=True to replace)")
            for p in existing:
                p.unlink()

        self._file: h5py.File | None = None
        self._sequence = -1
        self._file_payload = 0
        self._file_trains = 0
        # INDEX and CONTROL rows not yet written (arrays, one entry per block of trains)
        self._pending_index: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []   # train IDs, stamps, flags
        self._pending_control: dict[str, list[np.ndarray]] = {k: [] for k in self._specs}
        self._pending_control_ts: dict[str, list[np.ndarray]] = {k: [] for k in self._specs}
        self._pending_bytes = 0
        self._last_train: int | None = None
        self._run_start_ns: int | None = None     # timestamp of the first train
        self._control_rows = 0
        self._last_row_ts: dict[str, int] = {}
        self._closed = False
        self.files: list[Path] = []
        self.counters = dict(trains=0, hits=0, centroids=0, empty_trains=0, suspect_trains=0, sequences=0)

    # ---------------------------------------------------------------- public
    @property
    def last_train_id(self) -> int | None:
        return self._last_train

    @property
    def control_keys(self) -> list[str]:
        return list(self._specs)

    def update_settings(self, settings: Mapping[str, Any], timestamp_ns: int | None = None) -> None:
        """Change settings from the next train on (keys fixed at construction).

        ``timestamp_ns``: when they changed (default: the next train's timestamp)."""
        self._check_open()
        flat = normalise_settings(settings)
        unknown = set(flat) - set(self._specs)
        if unknown:
            raise ConfigError(f"settings not declared at run start cannot be added: {sorted(unknown)}")
        converted = {k: check_value(self._specs[k], v) for k, v in flat.items()}
        self._values.update(converted)
        for k in converted:
            self._value_times[k] = None if timestamp_ns is None else int(timestamp_ns)

    def write_train(self, train_id: int, timestamp_ns: int | None, hits: np.ndarray,
                    centroids: np.ndarray | None = None, flag: int = 1) -> None:
        """Add one train (all checks happen before anything is kept).

        ``hits``: EVENT_DTYPE (may be empty); ``centroids``: CENTROID_DTYPE or None
        (no centroids for this train); their ``train_id`` field must be 0 or
        ``train_id``. ``timestamp_ns``: train start, ns since the epoch (None = now).
        ``flag``: 1 = train ID from the timing system, 0 = suspect. The records are
        copied before the call returns (the caller may reuse its buffers).
        """
        self._check_open()
        train_id = self._check_train_id(train_id)
        ts = time.time_ns() if timestamp_ns is None else int(timestamp_ns)
        if not 0 <= ts < 1 << 64:
            raise ExdfValueError(f"timestamp {ts} ns does not fit uint64")
        if flag not in (0, 1) or isinstance(flag, float):
            raise ExdfValueError(f"flag must be 1 (good) or 0 (suspect), not {flag!r}")
        hits = self._check_records(hits, EVENT_DTYPE, "hits", train_id)
        if centroids is not None:
            if not self.with_centroids:
                raise ExdfValueError("centroids given to a writer made with with_centroids=False")
            centroids = self._check_records(centroids, CENTROID_DTYPE, "centroids", train_id)
        per_group = [hits, centroids if centroids is not None else np.empty(0, CENTROID_DTYPE)]
        data = []
        for g, a in zip(self._groups, per_group):
            # field views of the records: the tables copy them into their chunk buffers
            data.append(([{f: a[f] for f in g.fields}] if a.size else [], np.array([a.size], np.int64)))
        self._add(np.array([train_id], np.uint64), np.array([ts], np.uint64), np.array([int(flag)], np.int32),
                  data, {})

    def write_block(self, train_ids, timestamps_ns, flags, hits, hit_counts, centroids=None,
                    centroid_counts=None, control: Mapping[str, Any] | None = None) -> None:
        """Add many trains at once, their data as columns (all checks happen before
        anything is kept).

        ``train_ids`` (strictly increasing, above the last train written), ``timestamps_ns``
        (ns since the epoch), ``flags`` (1 good, 0 suspect): one value per train.
        ``hits``: the trains' hits one after the other, as a mapping ``{field: 1-D array}``
        with every stored field (:data:`~tpx3lib.exdf.layout.HIT_FIELDS`, dtypes of
        EVENT_DTYPE; e.g. an :class:`~tpx3lib.process.columns.EventColumns`) or a list of
        such mappings (consecutive pieces, not copied to one array); ``hit_counts``: hits per
        train. ``centroids``/``centroid_counts`` the same for the centroids
        (:data:`~tpx3lib.exdf.layout.CENTROID_FIELDS`; None: none). ``control``:
        ``{settings key: one value per train}`` for settings that change with every train
        (as :meth:`update_settings` before each train would); the others keep their values.
        The arrays are copied before the call returns.
        """
        self._check_open()
        tids = self._check_ids(train_ids)
        n = tids.size
        ts = self._check_per_train(timestamps_ns, n, "timestamps_ns", np.uint64)
        flags = self._check_per_train(flags, n, "flags", np.int32)
        if np.any((flags != 0) & (flags != 1)):
            raise ExdfValueError("flags must be 1 (good) or 0 (suspect)")
        if centroids is not None and not self.with_centroids:
            raise ExdfValueError("centroids given to a writer made with with_centroids=False")
        data = [self._check_columns(self._groups[0], hits, hit_counts, n, "hits")]
        if self.with_centroids:
            data.append(self._check_columns(self._groups[1], centroids, centroid_counts, n, "centroids"))
        ctrl = {}
        for key, values in (control or {}).items():
            spec = self._specs.get(key)
            if spec is None:
                raise ConfigError(f"settings not declared at run start cannot be added: {key!r}")
            ctrl[key] = self._check_control(spec, values, n)
        if n:
            self._add(tids, ts, flags, data, ctrl)

    def flush(self) -> None:
        """Write everything given so far to the current file and flush it to disk."""
        self._check_open()
        self._flush()
        if self._file is not None:
            for g in self._groups:
                g.table.sync()
            self._file.flush()

    def close(self) -> None:
        """Write what is buffered and close the current file (safe to call twice)."""
        if self._closed:
            return
        try:
            self._close_file()
        finally:
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -------------------------------------------------------------- checks
    def _check_open(self) -> None:
        if self._closed:
            raise ExdfError(f"the writer of run {self.run_number} is closed")

    def _check_train_id(self, train_id) -> int:
        if isinstance(train_id, (bool, float)) or not hasattr(train_id, "__index__"):
            raise ExdfValueError(f"train ID must be an integer, not {train_id!r}")
        train_id = int(train_id)
        if not 0 <= train_id < 1 << 64:
            raise ExdfValueError(f"train ID {train_id} does not fit uint64")
        if train_id == 0 or (self._last_train is not None and train_id <= self._last_train):
            raise TrainOrderError(train_id, self._last_train)
        return train_id

    def _check_ids(self, train_ids) -> np.ndarray:
        a = np.asarray(train_ids)
        if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
            raise ExdfValueError(f"train_ids must be a 1-D array of integers, not {a.dtype} {a.shape}")
        if a.size == 0:
            return a.astype(np.uint64)
        if a.dtype.kind == "i" and a.min() < 0:
            raise ExdfValueError(f"train ID {int(a.min())} does not fit uint64")
        a = a.astype(np.uint64)
        if a.size > 1 and np.any(a[1:] <= a[:-1]):
            i = int(np.flatnonzero(a[1:] <= a[:-1])[0])
            raise TrainOrderError(int(a[i + 1]), int(a[i]))
        if a[0] == 0 or (self._last_train is not None and int(a[0]) <= self._last_train):
            raise TrainOrderError(int(a[0]), self._last_train)
        return a

    @staticmethod
    def _check_per_train(values, n: int, what: str, dtype) -> np.ndarray:
        a = np.asarray(values)
        if a.shape != (n,) or (n and a.dtype.kind not in "iu"):
            raise ExdfValueError(f"{what} must be {n} integers, not {a.dtype} {a.shape}")
        if n and a.dtype.kind == "i" and a.min() < 0 and dtype == np.uint64:
            raise ExdfValueError(f"{what}: {int(a.min())} does not fit uint64")
        return a.astype(dtype)

    def _check_columns(self, g: _Group, cols, counts, n: int, what: str):
        """(pieces, counts) of one group's block data, checked."""
        c = np.zeros(n, np.int64) if counts is None and cols is None else np.asarray(counts)
        if c.shape != (n,) or (n and c.dtype.kind not in "iu") or (n and c.min() < 0):
            raise ExdfValueError(f"{what}: counts must be {n} non-negative integers")
        c = c.astype(np.int64)
        pieces = [] if cols is None else ([cols] if isinstance(cols, Mapping) or hasattr(cols, "dtype")
                                          else list(cols))
        out = []
        total = 0
        for p in pieces:
            try:
                arrays = {f: np.asarray(p[f]) for f in g.fields}
            except (KeyError, ValueError, IndexError) as exc:
                raise ExdfValueError(f"{what} need the fields {g.fields}: {exc!r}") from None
            sizes = {a.shape for a in arrays.values()}
            if len(sizes) != 1 or len(next(iter(sizes))) != 1:
                raise ExdfValueError(f"{what}: the columns must be 1-D arrays of one length, not {sizes}")
            for f, a in arrays.items():
                if a.dtype != g.dtype[f]:
                    raise ExdfDtypeError(f"{what}[{f!r}] must be {g.dtype[f]}, not {a.dtype}")
            k = next(iter(sizes))[0]
            if k:
                out.append(arrays)
                total += k
        if total != int(c.sum()):
            raise ExdfValueError(f"{what}: {total} rows given for counts summing to {int(c.sum())}")
        return out, c

    @staticmethod
    def _check_control(spec: SettingSpec, values, n: int) -> np.ndarray:
        """Per-train values of one setting, converted to its stored form."""
        if spec.dtype == _STR:
            vals = list(values)
            if len(vals) != n:
                raise ConfigError(f"setting {spec.key!r}: {len(vals)} values for {n} trains")
            return np.array([check_value(spec, v) for v in vals], dtype=object)
        a = np.asarray(values)
        if a.shape != (n,) + spec.shape:
            raise ConfigError(f"setting {spec.key!r}: values of shape {a.shape}, not {(n,) + spec.shape}")
        kind = spec.dtype.kind
        if (kind == "b") != (a.dtype.kind == "b") or a.dtype.kind not in "biuf" or \
                (kind in "iu" and a.dtype.kind == "f"):
            raise ConfigError(f"setting {spec.key!r} is stored as {spec.dtype}; got {a.dtype}")
        if kind in "iu" and a.size and a.dtype != spec.dtype:
            info = np.iinfo(spec.dtype)
            if int(a.min()) < info.min or int(a.max()) > info.max:
                raise ConfigError(f"setting {spec.key!r}: values out of the range of {spec.dtype}")
        return a.astype(spec.dtype)

    @staticmethod
    def _check_records(a, dtype: np.dtype, what: str, train_id: int) -> np.ndarray:
        if not isinstance(a, np.ndarray) or a.dtype != dtype:
            got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            name = "EVENT_DTYPE" if dtype == EVENT_DTYPE else "CENTROID_DTYPE"
            raise ExdfDtypeError(f"{what} must be a numpy array of {name}, not {got}")
        if a.ndim != 1:
            raise ExdfValueError(f"{what} must be 1-D, not of shape {a.shape}")
        tids = a["train_id"]
        bad = (tids != 0) & (tids != train_id)
        if bad.any():
            raise ExdfValueError(f"{what} of train {train_id}: {int(bad.sum())} carry another train ID "
                                 f"(e.g. {int(tids[bad][0])})")
        return a

    # ---------------------------------------------------------------- adding trains
    def _add(self, tids: np.ndarray, ts: np.ndarray, flags: np.ndarray, data: list, control: dict) -> None:
        """Trains checked: split them over sequence files, data to the tables, rows pending."""
        n = tids.size
        counts = [c for _, c in data]
        train_bytes = np.full(n, self._fixed_train_bytes, np.int64)
        for g, c in zip(self._groups, counts):
            train_bytes += g.entry_bytes * c
        cum = np.cumsum(train_bytes)
        offsets = [np.concatenate([[0], np.cumsum(c)]) for c in counts]
        if self._run_start_ns is None:
            self._run_start_ns = int(ts[0])
        ctrl_values, ctrl_ts = self._control_rows_of(ts, control)

        start = 0
        while start < n:
            base = int(cum[start - 1]) if start else 0
            if self._file is None:
                self._open_file()
            # trains start..stop-1 fit the current file; an empty file takes at least one
            stop = int(np.searchsorted(cum, self.sequence_max_bytes - self._file_payload + base, side="right"))
            stop = max(stop, start + 1) if self._file_trains == 0 else max(stop, start)
            if stop == start:
                self._close_file()               # the next train starts a new file
                continue
            for g, (pieces, c), off in zip(self._groups, data, offsets):
                lo, hi = int(off[start]), int(off[stop])
                if hi > lo:
                    for p in slice_pieces(pieces, lo, hi):
                        g.table.append(**p)
                g.counts.append(c[start:stop])
            self._pending_index.append((tids[start:stop], ts[start:stop], flags[start:stop]))
            for k in self._specs:
                self._pending_control[k].append(ctrl_values[k][start:stop])
                self._pending_control_ts[k].append(ctrl_ts[k][start:stop])
            m = stop - start
            self._pending_bytes += self._fixed_train_bytes * m
            self._file_payload += int(cum[stop - 1]) - base
            self._file_trains += m
            self._last_train = int(tids[stop - 1])
            k = self.counters
            k["trains"] += m
            k["hits"] += int(offsets[0][stop] - offsets[0][start])
            if self.with_centroids:
                k["centroids"] += int(offsets[1][stop] - offsets[1][start])
            k["empty_trains"] += int(np.count_nonzero(counts[0][start:stop] == 0))
            k["suspect_trains"] += int(np.count_nonzero(flags[start:stop] == 0))
            if self._pending_bytes >= self.buffer_bytes:
                self._flush()
            start = stop

    def _control_rows_of(self, ts: np.ndarray, control: dict) -> tuple[dict, dict]:
        """Every setting's value and timestamp for each train of a block: per-train values
        from ``control``, taking effect at their train; the others the current values, since
        the time they took effect (the block's first train for a change without a time).
        Control timestamps never decrease (extra-data-validate checks it)."""
        n = ts.size
        values, stamps = {}, {}
        for k, spec in self._specs.items():
            last = self._last_row_ts.get(k, 0)
            if k in control:
                vals = control[k]
                t = np.maximum.accumulate(np.maximum(ts, np.uint64(last)))
                self._values[k] = str(vals[-1]) if spec.dtype == _STR else np.asarray(vals[-1])
                self._value_times[k] = int(ts[-1])
            else:
                if self._value_times[k] is None:
                    self._value_times[k] = int(ts[0])
                v = self._values[k]
                vals = np.broadcast_to(np.array(v, dtype=object) if spec.dtype == _STR else v,
                                       (n,) + spec.shape)
                t = np.full(n, max(self._value_times[k], last), np.uint64)
            values[k] = vals
            stamps[k] = t
            self._last_row_ts[k] = int(t[-1])
        return values, stamps

    # --------------------------------------------------------------- files
    def _make(self, parent: h5py.Group, name: str, dtype, row_shape=(), chunk: int | None = None,
              attrs: Mapping[str, str] | None = None) -> h5py.Dataset:
        """An empty, growable, chunked dataset (compressed unless it holds strings)."""
        row_shape = tuple(row_shape)
        opts: dict[str, Any] = dict(chunks=(chunk or self.chunk_trains,) + row_shape,
                                    maxshape=(None,) + row_shape)
        if self.compression and h5py.check_string_dtype(np.dtype(dtype)) is None:
            opts.update(compression=self.compression, shuffle=True)
            if self.compression == "gzip":
                opts["compression_opts"] = self.compression_level
        ds = parent.create_dataset(name, shape=(0,) + row_shape, dtype=dtype, **opts)
        for k, v in (attrs or {}).items():
            ds.attrs[k] = v
        return ds

    def _open_file(self) -> None:
        self._sequence += 1
        path = self.run_dir / file_name(self.category, self.run_number, self.aggregator, self._sequence)
        f = h5py.File(path, "w")
        f.attrs["writer"] = DAQ_LIBRARY
        self._file = f
        self.files.append(path)
        self.counters["sequences"] += 1
        self._file_payload = 0
        self._file_trains = 0
        for g in self._groups:
            g.file_entries = 0
        self._control_rows = 0

        now = _utc_now()
        meta = f.create_group("METADATA")
        ids = [f"CONTROL/{self.control_source}"] + [f"INSTRUMENT/{self.source}/{g.name}" for g in self._groups]
        ds_grp = meta.create_group("dataSources")
        ds_grp.create_dataset("dataSourceId", data=np.array(ids, dtype=object), dtype=_VLEN_ASCII)
        ds_grp.create_dataset("root", data=np.array([i.split("/", 1)[0] for i in ids], dtype=object),
                              dtype=_VLEN_ASCII)
        ds_grp.create_dataset("deviceId", data=np.array([i.split("/", 1)[1] for i in ids], dtype=object),
                              dtype=_VLEN_ASCII)
        for name, value in [("dataFormatVersion", DATA_FORMAT_VERSION), ("creationDate", now),
                            ("updateDate", now), ("daqLibrary", DAQ_LIBRARY), ("karaboFramework", "none"),
                            ("runType", self.run_type), ("sample", self.sample)]:
            meta.create_dataset(name, data=np.array([value], dtype=object), dtype=_VLEN_ASCII)
        for name, value in [("proposalNumber", self.proposal), ("runNumber", self.run_number),
                            ("sequenceNumber", self._sequence)]:
            meta.create_dataset(name, data=np.array([value], dtype=np.uint32))

        index = f.create_group("INDEX")
        self._make(index, "trainId", np.uint64)
        self._make(index, "timestamp", np.uint64, attrs=dict(description="train start, ns since the epoch"))
        self._make(index, "flag", np.int32,
                   attrs=dict(description="1: train ID from the timing system, 0: suspect"))
        self._make(index, "origin", np.int32, attrs=dict(description="-1: timing system"))
        for g in self._groups:
            grp = index.create_group(f"{self.source}/{g.name}")
            self._make(grp, "first", np.uint64)
            self._make(grp, "count", np.uint64)
        cgrp = index.create_group(self.control_source)
        self._make(cgrp, "first", np.uint64)
        self._make(cgrp, "count", np.uint64)

        for g in self._groups:
            f.create_group(f"INSTRUMENT/{self.source}/{g.name}")
            g.table = ColumnTable(f[f"INSTRUMENT/{self.source}"], g.name,
                                  [(field, g.dtype[field], FIELD_ATTRS.get(field)) for field in g.fields],
                                  compression=self.compression or "none", compression_level=self.compression_level,
                                  chunk_rows=self.chunk_entries, executor=self.executor,
                                  max_pending=self.max_pending)
            g.table.create()

        ctrl = f.create_group(f"CONTROL/{self.control_source}")
        run = f.create_group(f"RUN/{self.control_source}")
        for key, spec in self._specs.items():
            attrs = unit_attrs(self._units[key]) if key in self._units else {}
            for root in (ctrl, run):
                kg = root.create_group(spec.path)
                for a, v in attrs.items():
                    kg.attrs[a] = v
            self._make(ctrl[spec.path], "value", spec.dtype, spec.shape)
            self._make(ctrl[spec.path], "timestamp", np.uint64)
            rv = run[spec.path].create_dataset("value", shape=(1,) + spec.shape, dtype=spec.dtype)
            rv[0] = self._run_values[key]
            run[spec.path].create_dataset("timestamp", data=np.array([self._run_start_ns], np.uint64))

    def _close_file(self) -> None:
        """Write the pending rows and the tables' last chunks, and close the file."""
        if self._file is None:
            return
        f = self._file
        ok = False
        try:
            self._flush()
            for g in self._groups:
                g.table.flush(create_empty=True)
            ok = True
        finally:
            for g in self._groups:
                if not ok and g.table is not None:
                    g.table.abandon()
                g.table = None
            self._file = None
            try:
                if ok:
                    f["METADATA/updateDate"][0] = _utc_now()
            finally:
                f.close()

    @staticmethod
    def _append(ds: h5py.Dataset, values) -> None:
        n0 = ds.shape[0]
        n = len(values)
        if n == 0:
            return
        ds.resize(n0 + n, axis=0)
        ds[n0:n0 + n] = values

    def _flush(self) -> None:
        """Write the pending INDEX and CONTROL rows (instrument data is in the tables)."""
        if not self._pending_index or self._file is None:
            return
        f = self._file
        tids, stamps, flags = (np.concatenate(a) for a in zip(*self._pending_index))
        n = tids.size
        self._append(f["INDEX/trainId"], tids)
        self._append(f["INDEX/timestamp"], stamps)
        self._append(f["INDEX/flag"], flags)
        self._append(f["INDEX/origin"], np.full(n, -1, np.int32))

        for g in self._groups:
            counts = np.concatenate(g.counts).astype(np.uint64)
            first = np.empty(n, np.uint64)
            first[0] = g.file_entries
            np.cumsum(counts[:-1], out=first[1:])
            first[1:] += np.uint64(g.file_entries)
            self._append(f[f"INDEX/{self.source}/{g.name}/first"], first)
            self._append(f[f"INDEX/{self.source}/{g.name}/count"], counts)
            g.file_entries += int(counts.sum())
            g.counts.clear()

        first = self._control_rows + np.arange(n, dtype=np.uint64)
        self._append(f[f"INDEX/{self.control_source}/first"], first)
        self._append(f[f"INDEX/{self.control_source}/count"], np.ones(n, np.uint64))
        ctrl = f[f"CONTROL/{self.control_source}"]
        for key, spec in self._specs.items():
            self._append(ctrl[f"{spec.path}/value"], np.concatenate(self._pending_control[key]))
            self._append(ctrl[f"{spec.path}/timestamp"], np.concatenate(self._pending_control_ts[key]))
            self._pending_control[key].clear()
            self._pending_control_ts[key].clear()
        self._control_rows += n
        self._pending_index.clear()
        self._pending_bytes = 0
