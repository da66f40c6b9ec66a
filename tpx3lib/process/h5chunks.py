"""Appending columns to HDF5 datasets in whole, pre-compressed chunks.

h5py compresses inside ``H5Dwrite`` with the GIL held, so with its filters one
thread does all the compression. :class:`ColumnTable` instead fills chunk-sized
buffers, has each full chunk encoded by a worker thread (numba LZF from
:mod:`.lzf`, or zlib, both without the GIL) and writes the encoded chunks, in
order, with ``write_direct_chunk``: the thread that owns the file only does I/O.

The datasets are ordinary chunked datasets with the standard filter pipeline
(``shuffle`` + ``lzf`` or ``shuffle`` + ``deflate``; ``shuffle`` only for
multi-byte types), so any h5py (lzf) or any HDF5 reader (gzip) reads them; a
chunk that would not get smaller is stored without the compression filter and
marked so in its filter mask, as HDF5 does for an optional filter. The last,
partial chunk is padded with zeros past the dataset's end.
"""
from __future__ import annotations

import collections
import threading
import zlib

import h5py
import numpy as np

from .lzf import encode_chunk, shuffle_bytes

__all__ = ["ColumnTable", "GZIP_LEVEL", "encode"]

#: deflate level of the gzip option (fast; the run-file writer uses 1 too)
GZIP_LEVEL = 1

_local = threading.local()


def _scratch(nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-thread shuffle buffer and LZF flag scratch of at least ``nbytes`` bytes."""
    sc = getattr(_local, "scratch", None)
    if sc is None or sc[0].size < nbytes:
        words = (nbytes + 7) // 8
        sc = (np.empty(words, np.uint64).view(np.uint8), np.empty(words + 3, np.uint64))
        _local.scratch = sc
    return sc


def encode(data: np.ndarray, compression: str, shuffle: bool, level: int = GZIP_LEVEL):
    """The stored bytes and filter mask of one chunk (``data``: the chunk's elements; the
    result may be ``data`` itself, so do not change it afterwards).

    Pipeline ``[shuffle,] lzf|deflate``; mask bit 0 = shuffle (when present), next bit
    the compression filter. Safe to call from any thread."""
    raw = data.view(np.uint8)
    itemsize = data.dtype.itemsize
    if compression == "none":
        return raw, 0
    if compression == "lzf":
        scratch, flags = _scratch(raw.size)
        dst = np.empty(raw.size, np.uint8)
        n, mask = encode_chunk(raw, itemsize, shuffle, scratch, dst, flags)
        if n > 0:
            return dst[:n], mask
        if shuffle and itemsize > 1:          # stored shuffled, not compressed
            dst[:] = scratch[:raw.size]
            return dst, mask
        return raw, mask                      # stored as it is (``data`` is not reused by the caller)
    if compression == "gzip":
        if shuffle and itemsize > 1:
            src = np.empty(raw.size, np.uint8)
            shuffle_bytes(raw, itemsize, src)
        else:
            src = raw
        return zlib.compress(src, level), 0      # deflate is not optional in HDF5: always applied
    raise ValueError(f"unknown compression {compression!r}")


class ColumnTable:
    """A group of 1-D datasets of equal length, appended to together.

    ``columns``: ``(name, dtype, attrs)``; ``compression``: ``"lzf"``, ``"gzip"`` or
    ``"none"``; ``executor``: where chunks are encoded (None: in the calling thread);
    ``max_pending``: encoded chunk sets waiting to be written before :meth:`append`
    waits for the oldest (bounds memory); ``compression_level``: the deflate level of
    ``"gzip"``. Datasets are created on the first rows (or by :meth:`create`), so a
    table never appended to does not exist in the file.
    """

    def __init__(self, parent: h5py.Group, name: str, columns, *, compression: str = "lzf",
                 chunk_rows: int = 1 << 16, executor=None, max_pending: int = 4,
                 description: str | None = None, on_write=None, compression_level: int = GZIP_LEVEL):
        if compression not in ("lzf", "gzip", "none"):
            raise ValueError(f"compression must be lzf, gzip or none, not {compression!r}")
        if not 0 <= int(compression_level) <= 9:
            raise ValueError(f"compression_level must be 0..9, not {compression_level!r}")
        self.parent, self.name = parent, name
        self.columns = [(n, np.dtype(dt), dict(attrs or {})) for n, dt, attrs in columns]
        self.compression = compression
        self.level = int(compression_level)
        self.chunk_rows = int(chunk_rows)
        self.executor = executor
        self.max_pending = max(1, int(max_pending))
        self.description = description
        self.on_write = on_write          # called after chunks were written (e.g. a SWMR flush)
        self.group: h5py.Group | None = None
        self.datasets: dict[str, h5py.Dataset] = {}
        # (not zeroed: a chunk is submitted only when full; the partial one is copied and padded)
        self._buf = {n: np.empty(self.chunk_rows, dt) for n, dt, _ in self.columns}
        self._fill = 0
        self._chunks = 0                  # chunks submitted (full ones)
        self._pending: collections.deque = collections.deque()   # (chunk index, {name: result or future})
        self.rows = 0                     # rows appended
        self.written_rows = 0             # rows in the file
        self._finished = False

    # ------------------------------------------------------------------ setup
    def create(self) -> None:
        """Create the group and its (empty) datasets now."""
        if self.group is not None:
            return
        g = self.parent.get(self.name)
        if g is None:           # track_order: columns keep the layout's order when read back
            g = self.parent.create_group(self.name, track_order=True)
        if self.description is not None:
            g.attrs["description"] = self.description
        for n, dt, attrs in self.columns:
            opts = {}
            if self.compression != "none":
                opts = {"compression": self.compression, "shuffle": dt.itemsize > 1}
                if self.compression == "gzip":
                    opts["compression_opts"] = self.level
            ds = g.create_dataset(n, shape=(0,), maxshape=(None,), dtype=dt, chunks=(self.chunk_rows,), **opts)
            for k, v in attrs.items():
                ds.attrs[k] = v
            self.datasets[n] = ds
        self.group = g

    # ------------------------------------------------------------------ data
    def append(self, **cols) -> None:
        """Add rows (one array per column, all the same length; cast to the column dtypes)."""
        arrays = [np.asarray(cols[n]) for n, _, _ in self.columns]
        total = arrays[0].shape[0] if arrays else 0
        if any(a.shape[0] != total for a in arrays):
            raise ValueError(f"{self.name}: columns of different lengths")
        if total == 0:
            return
        if self._finished:
            raise RuntimeError(f"{self.name}: rows appended after flush()")
        if self.group is None:
            self.create()
        done = 0
        C = self.chunk_rows
        while done < total:
            take = min(C - self._fill, total - done)
            for (n, _, _), a in zip(self.columns, arrays):
                self._buf[n][self._fill:self._fill + take] = a[done:done + take]
            self._fill += take
            done += take
            if self._fill == C:
                self._submit_full()
        self.rows += total
        self._write_ready(block=False)

    def _encode_set(self, bufs: dict) -> dict:
        shuffle = self.compression != "none"
        return {n: encode(b, self.compression, shuffle and b.dtype.itemsize > 1, self.level)
                for n, b in bufs.items()}

    def _submit_full(self) -> None:
        bufs = self._buf
        self._buf = {n: np.empty(self.chunk_rows, dt) for n, dt, _ in self.columns}
        self._fill = 0
        if self.executor is None:
            item = self._encode_set(bufs)
        else:
            item = self.executor.submit(self._encode_set, bufs)
        self._pending.append((self._chunks, item))
        self._chunks += 1

    def _write_ready(self, block: bool) -> None:
        """Write encoded chunks in order: those ready (and, to bound memory or when
        ``block``, wait for the oldest)."""
        ready = []
        while self._pending:
            idx, item = self._pending[0]
            if hasattr(item, "result"):
                if not (block or len(self._pending) > self.max_pending or item.done()):
                    break
                item = item.result()
            self._pending.popleft()
            ready.append((idx, item))
        if ready:
            self._write_chunks(ready, (ready[-1][0] + 1) * self.chunk_rows)

    def _write_chunks(self, items, rows: int) -> None:
        C = self.chunk_rows
        for n, ds in self.datasets.items():
            if ds.shape[0] < rows:
                ds.resize((rows,))
        for idx, enc in items:
            for n, (data, mask) in enc.items():
                self.datasets[n].id.write_direct_chunk((idx * C,), data, filter_mask=mask)
        self.written_rows = rows
        if self.on_write is not None:
            self.on_write(self)

    def flush(self, create_empty: bool = False) -> None:
        """Write everything (the last chunk partial, padded) and take no more rows;
        ``create_empty``: make the datasets even if no row came."""
        if self.group is None and (self.rows or create_empty):
            self.create()
        self._write_ready(block=True)
        self._finished = True
        if self._fill:
            bufs = {n: b.copy() for n, b in self._buf.items()}
            for b in bufs.values():
                b[self._fill:] = 0
            self._write_chunks([(self._chunks, self._encode_set(bufs))], self.rows)
            self._fill = 0
            self._chunks += 1

    def sync(self) -> None:
        """Put every row appended so far in the file now, and keep taking rows: the
        submitted chunks are written (waiting for them) and the partial chunk too, padded
        (it is written again, complete, when later rows fill it)."""
        if self._finished or self.group is None:
            return
        self._write_ready(block=True)
        if self._fill:
            bufs = {n: b.copy() for n, b in self._buf.items()}
            for b in bufs.values():
                b[self._fill:] = 0
            self._write_chunks([(self._chunks, self._encode_set(bufs))], self.rows)

    def drain(self) -> None:
        """Write every chunk already submitted (not the partial one)."""
        self._write_ready(block=True)

    def abandon(self) -> None:
        """Forget pending work (on failure)."""
        for _, item in self._pending:
            if hasattr(item, "cancel"):
                item.cancel()
        self._pending.clear()
