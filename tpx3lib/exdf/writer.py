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

Trains are buffered in memory (up to ``buffer_bytes``) and appended in blocks;
:meth:`ExdfRunWriter.flush` forces the buffer out, :meth:`ExdfRunWriter.close`
ends the run. A run with no train writes no file.
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
from .settings import SettingSpec, check_value, normalise_settings, setting_spec

__all__ = ["ExdfRunWriter", "DAQ_LIBRARY"]

DAQ_LIBRARY = "tpx3lib.exdf 0.1"
_VLEN_ASCII = h5py.string_dtype("ascii")
_INDEX_ROW_BYTES = 8 + 8 + 4 + 4


def _utc_now() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


class _Group:
    """One instrument index group: record dtype, stored fields, pending entries."""

    def __init__(self, name: str, dtype: np.dtype, fields: tuple[str, ...]):
        self.name, self.dtype, self.fields = name, dtype, fields
        self.entry_bytes = sum(dtype[f].itemsize for f in fields)
        self.pending: list[np.ndarray] = []
        self.counts: list[int] = []
        self.file_entries = 0          # entries already in the current file


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
    compression : h5py filter for data ("gzip", "lzf" or None); ``compression_level`` for gzip.
    chunk_entries : chunk length of instrument datasets (entries); control/index use 1/64 of it.
    buffer_bytes : trains held in memory before a block write.
    overwrite : replace existing files of this run and aggregator instead of refusing.
    """

    def __init__(self, run_dir: str | os.PathLike, run_number: int, *, proposal: int = 0,
                 sequence_max_bytes: int = 1 << 30, source: str = DEFAULT_SOURCE,
                 control_source: str | None = None, settings: Mapping[str, Any] | None = None,
                 units: Mapping[str, str] | None = None, with_centroids: bool = True,
                 aggregator: str = "TPX01", category: str = "RAW", run_type: str = "",
                 sample: str = "", compression: str | None = "gzip", compression_level: int = 1,
                 chunk_entries: int = 1 << 16, buffer_bytes: int = 16 << 20, overwrite: bool = False):
        if not 0 <= int(run_number) <= 9999:
            raise ConfigError(f"run number must be 0..9999, not {run_number}")
        if not 0 <= int(proposal) < 1 << 32:
            raise ConfigError(f"proposal number must fit uint32, not {proposal}")
        if int(sequence_max_bytes) < 1:
            raise ConfigError("sequence_max_bytes must be >= 1")
        if compression not in ("gzip", "lzf", None):
            raise ConfigError(f"compression must be 'gzip', 'lzf' or None, not {compression!r}")
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
        self._pending_train: list[tuple[int, int, int]] = []   # (train_id, timestamp_ns, flag)
        self._pending_control: list[dict[str, Any]] = []
        self._pending_control_ts: list[dict[str, int]] = []
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
        ``flag``: 1 = train ID from the timing system, 0 = suspect.
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

        train_bytes = _INDEX_ROW_BYTES + 16 * (len(self._groups) + 1)
        train_bytes += sum(g.entry_bytes * a.size for g, a in zip(self._groups, per_group))
        train_bytes += sum(s.row_bytes for s in self._specs.values())
        if self._file_trains and self._file_payload + train_bytes > self.sequence_max_bytes:
            self._flush()
            self._close_file()
        if self._run_start_ns is None:
            self._run_start_ns = ts
        if self._file is None:
            self._open_file()

        for g, a in zip(self._groups, per_group):
            g.pending.append(a.copy())        # the caller may reuse its buffers
            g.counts.append(a.size)
        row_ts = {}
        for k, t in self._value_times.items():
            if t is None:
                t = self._value_times[k] = ts
            # Control timestamps must not decrease (extra-data-validate checks it).
            row_ts[k] = self._last_row_ts[k] = max(t, self._last_row_ts.get(k, 0))
        self._pending_control.append(dict(self._values))
        self._pending_control_ts.append(row_ts)
        self._pending_train.append((train_id, ts, int(flag)))
        self._pending_bytes += train_bytes
        self._file_payload += train_bytes
        self._file_trains += 1
        self._last_train = train_id
        k = self.counters
        k["trains"] += 1
        k["hits"] += hits.size
        k["centroids"] += per_group[1].size
        k["empty_trains"] += hits.size == 0
        k["suspect_trains"] += flag == 0
        if self._pending_bytes >= self.buffer_bytes:
            self._flush()

    def flush(self) -> None:
        """Write buffered trains to the current file and flush it to disk."""
        self._check_open()
        self._flush()
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Write what is buffered and close the current file (safe to call twice)."""
        if self._closed:
            return
        try:
            self._flush()
        finally:
            self._close_file()
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
            raise ExdfValueError(f"{int(bad.sum())} {what} of train {train_id} carry another train ID "
                                 f"(e.g. {int(tids[bad][0])})")
        return a

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
            grp = f.create_group(f"INSTRUMENT/{self.source}/{g.name}")
            for field in g.fields:
                self._make(grp, field, g.dtype[field], chunk=self.chunk_entries, attrs=FIELD_ATTRS.get(field))

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
        if self._file is None:
            return
        f = self._file
        self._file = None
        try:
            f["METADATA/updateDate"][0] = _utc_now()
        finally:
            f.close()

    @staticmethod
    def _append(ds: h5py.Dataset, values) -> None:
        values = np.asarray(values) if not isinstance(values, list) else values
        n0 = ds.shape[0]
        n = len(values)
        if n == 0:
            return
        ds.resize(n0 + n, axis=0)
        ds[n0:n0 + n] = values

    def _flush(self) -> None:
        if not self._pending_train or self._file is None:
            return
        f = self._file
        rows = self._pending_train
        n = len(rows)
        self._append(f["INDEX/trainId"], np.array([r[0] for r in rows], np.uint64))
        self._append(f["INDEX/timestamp"], np.array([r[1] for r in rows], np.uint64))
        self._append(f["INDEX/flag"], np.array([r[2] for r in rows], np.int32))
        self._append(f["INDEX/origin"], np.full(n, -1, np.int32))

        for g in self._groups:
            counts = np.array(g.counts, np.uint64)
            first = g.file_entries + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.uint64)
            self._append(f[f"INDEX/{self.source}/{g.name}/first"], first)
            self._append(f[f"INDEX/{self.source}/{g.name}/count"], counts)
            grp = f[f"INSTRUMENT/{self.source}/{g.name}"]
            for field in g.fields:
                # one copy per field, straight into a contiguous array
                column = np.concatenate([p[field] for p in g.pending]) if g.pending else \
                    np.empty(0, g.dtype[field])
                self._append(grp[field], column)
            g.file_entries += int(counts.sum())
            g.pending.clear()
            g.counts.clear()

        first = self._control_rows + np.arange(n, dtype=np.uint64)
        self._append(f[f"INDEX/{self.control_source}/first"], first)
        self._append(f[f"INDEX/{self.control_source}/count"], np.ones(n, np.uint64))
        ctrl = f[f"CONTROL/{self.control_source}"]
        for key, spec in self._specs.items():
            values = [row[key] for row in self._pending_control]
            if h5py.check_string_dtype(spec.dtype) is None:
                values = np.array(values, dtype=spec.dtype).reshape((n,) + spec.shape)
            else:
                values = np.array(values, dtype=object)
            self._append(ctrl[f"{spec.path}/value"], values)
            self._append(ctrl[f"{spec.path}/timestamp"],
                         np.array([row[key] for row in self._pending_control_ts], np.uint64))
        self._control_rows += n
        self._pending_train.clear()
        self._pending_control.clear()
        self._pending_control_ts.clear()
        self._pending_bytes = 0
