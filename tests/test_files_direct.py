"""The native raw writer with direct I/O (``RawWriter(direct=True)``, tpx3lib.files.direct):
the same file as buffered writes, visible after flush, and disk-full handled the same way."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from tpx3lib.files import RawWriteError, TruncatedFileWarning, native, open_raw
from tpx3lib.files.direct import ALIGN

HEADER = {"chips": [{"index": 0}, {"index": 1}]}


def _chunks(n=60, seed=0):
    """(chip, words, recv time, datagram sizes): small ones, some over the 64 KiB buffer."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        big = i % 9 == 4
        sizes = [8 * int(k) for k in rng.integers(1, 3000 if big else 400, size=int(rng.integers(1, 12)))]
        words = rng.integers(0, 2**63, size=sum(sizes) // 8, dtype=np.uint64)
        out.append((i % 2, words, 1_700_000_000_000_000_000 + i, sizes))
    return out


def _write(path, chunks, *, direct, flush_every=0, buffer_size=64 << 10):
    w = open_raw(path, "wb", header=HEADER, direct=direct, buffer_size=buffer_size)
    if direct:
        assert w.direct_io, "this filesystem refused direct I/O"
    for i, (chip, words, t, sizes) in enumerate(chunks):
        w.write_chunk(chip, words, recv_time_ns=t, datagram_sizes=sizes)
        if flush_every and i % flush_every == flush_every - 1:
            w.flush()
    return w


def _read(path):
    with open_raw(path, "rb") as r:
        return [(c.chip, c.recv_time_ns, list(c.datagram_sizes), c.words.copy()) for c in r]


def test_direct_file_equals_the_buffered_file(tmp_path):
    chunks = _chunks()
    writers = {direct: _write(tmp_path / f"{direct}.raw", chunks, direct=direct, flush_every=7)
               for direct in (False, True)}
    for w in writers.values():
        w.flush()
    a, b = ((tmp_path / f"{d}.raw").read_bytes()[writers[d].data_offset:] for d in (False, True))
    assert len(a) > 500_000 and a == b           # the records, byte for byte (the headers hold their times)
    for w in writers.values():
        w.close(counters={"datagrams": 1})
    got = _read(tmp_path / "True.raw")
    assert len(got) == len(chunks)
    for (chip, t, sizes, words), (c0, w0, t0, s0) in zip(got, chunks):
        assert (chip, t, sizes) == (c0, t0, s0) and np.array_equal(words, w0)


def test_everything_written_is_in_the_file_after_flush(tmp_path):
    path = tmp_path / "live.raw"
    chunks = _chunks(20, seed=3)
    w = _write(path, chunks, direct=True)
    if w.offset % ALIGN == 0:                         # end inside a page: the buffered rest is exercised
        w.write_chunk(0, np.ones(1, np.uint64), recv_time_ns=chunks[-1][2] + 1)
        chunks.append((0, np.ones(1, np.uint64), chunks[-1][2] + 1, [8]))
    w.flush()
    assert path.stat().st_size == w.offset and w.offset % ALIGN
    with pytest.warns(TruncatedFileWarning, match="without its closing record"):
        got = _read(path)
    assert [g[1] for g in got] == [c[2] for c in chunks]
    # the file keeps growing correctly after a flush that left an unaligned end
    more = _chunks(5, seed=4)
    for chip, words, t, sizes in more:
        w.write_chunk(chip, words, recv_time_ns=t + 1000, datagram_sizes=sizes)
    w.close()
    got = _read(path)
    assert len(got) == len(chunks) + 5
    assert all(np.array_equal(g[3], c[1]) for g, c in zip(got, chunks + more))


def test_disk_full_with_direct_io_leaves_the_file_readable_to_its_last_whole_chunk(tmp_path, monkeypatch):
    path = tmp_path / "full.raw"
    chunks = _chunks(60, seed=5)
    budget = {"left": 300_000}
    real = native._os_pwrite

    def full_disk(fd, data, offset):                  # the disk fills up after ~300 kB
        if budget["left"] < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        budget["left"] -= len(data)
        return real(fd, data, offset)

    monkeypatch.setattr(native, "_os_pwrite", full_disk)
    w = open_raw(path, "wb", header=HEADER, direct=True, buffer_size=64 << 10)
    assert w.direct_io
    written = 0
    with pytest.raises(RawWriteError) as ei:
        for chip, words, t, sizes in chunks:
            w.write_chunk(chip, words, recv_time_ns=t, datagram_sizes=sizes)
            written += 1
        w.flush()
    err = ei.value
    assert err.errno == errno.ENOSPC and "disk full" in str(err)
    with pytest.raises(RawWriteError):
        w.write_chunk(0, chunks[0][1])
    w.close()                                         # no exception: nothing more can be written
    monkeypatch.undo()
    assert path.stat().st_size == err.readable_until
    with pytest.warns(TruncatedFileWarning):
        got = _read(path)
    assert 0 < len(got) <= written
    for (chip, t, sizes, words), (c0, w0, t0, s0) in zip(got, chunks):
        assert (chip, t, sizes) == (c0, t0, s0) and np.array_equal(words, w0)
    assert err.chunks_lost >= 1


def test_without_direct_io_the_writer_falls_back_to_buffered_writes(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "O_DIRECT", raising=False)     # a platform without it
    path = tmp_path / "fallback.raw"
    chunks = _chunks(10, seed=6)
    w = open_raw(path, "wb", header=HEADER, direct=True, buffer_size=64 << 10)
    assert not w.direct_io
    for chip, words, t, sizes in chunks:
        w.write_chunk(chip, words, recv_time_ns=t, datagram_sizes=sizes)
    w.close()
    assert [g[1] for g in _read(path)] == [c[2] for c in chunks]
