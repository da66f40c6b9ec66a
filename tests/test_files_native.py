"""Native raw format: round trip, hand-built bytes, truncation, corruption, live reading, write errors."""
from __future__ import annotations

import errno
import json
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tpx3lib
from tpx3lib.errors import ConfigError, FileFormatError, TruncatedFileError
from tpx3lib.files import (CorruptChunkWarning, RawWriteError, TruncatedFileWarning, make_header,
                           open_raw)
from tpx3lib.files import native

HEADER = {"chips": [{"index": 0, "name": "W0028_H06", "id": 0x1C86, "dacs": {"Vthreshold_fine": 150}},
                    {"index": 1}],
          "board": {"name": "spidr-sim", "id": 7}, "bias_v": 50.0,
          "trigger": {"source": "tdc1", "first_train_id": 1000},
          "user": {"sample": "N2", "nested": {"list": [1, 2.5, None]}}}


def _chunks(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(7):
        sizes = [8 * int(n) for n in rng.integers(1, 40, size=int(rng.integers(1, 5)))]
        words = rng.integers(0, 2**63, size=sum(sizes) // 8, dtype=np.uint64)
        out.append((i % 2, words, 1_700_000_000_000_000_000 + i, sizes))
    return out


def _write(path, chunks, close=True, **kw):
    w = open_raw(path, "wb", header=HEADER, **kw)
    offsets = [w.write_chunk(chip, words, recv_time_ns=t, datagram_sizes=sizes) for chip, words, t, sizes in chunks]
    if close:
        w.close(counters={"datagrams": 99, "bytes": 1234, "lost_datagrams": 2})
    return w, offsets


def _read_all(path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_raw(path, "rb", **kw) as r:
            got = list(r)
            return r, got, caught


def test_round_trip_chunks_boundaries_header_closing(tmp_path):
    path = tmp_path / "run.raw"
    chunks = _chunks()
    w, offsets = _write(path, chunks)
    assert w.chunks_written == 7 and w.bytes_written == sum(c[1].nbytes for c in chunks)
    r, got, caught = _read_all(path)
    assert not caught and r.errors == [] and not r.truncated
    assert r.format == "native" and r.version == (1, 0)
    assert len(got) == len(chunks)
    for (chip, words, t, sizes), c, off in zip(chunks, got, offsets):
        assert c.chip == chip and c.recv_time_ns == t and c.offset == off
        assert c.words.dtype == np.uint64 and np.array_equal(c.words, words)
        assert c.datagram_sizes.tolist() == sizes
        parts = c.datagrams()
        assert [p.nbytes for p in parts] == sizes
        assert np.array_equal(np.concatenate(parts), words)
    h = r.header
    assert h["chips"] == HEADER["chips"] and h["user"] == HEADER["user"] and h["bias_v"] == 50.0
    assert h["software"]["version"] == tpx3lib.__version__ and h["start_time"].endswith("Z")
    assert h["format_version"] == [1, 0]
    assert r.counters == {"datagrams": 99, "bytes": 1234, "lost_datagrams": 2}
    assert r.closing["written"] == {"chunks": 7, "datagrams": sum(len(c[3]) for c in chunks),
                                    "bytes": w.bytes_written}
    assert r.chips == [0, 1]


def test_bytes_input_and_single_datagram(tmp_path):
    path = tmp_path / "b.raw"
    words = np.array([0xB649B61040720841, 0x6F0130235706D160], dtype=np.uint64)
    with open_raw(path, "wb", header={"chips": [{"index": 3}]}) as w:
        w.write_chunk(3, words.tobytes(), recv_time_ns=5)
        w.write_chunk(3, bytearray(words.tobytes()))
        w.write_chunk(3, words.astype(">u8"))          # big-endian array: same values stored LE
    r, got, _ = _read_all(path)
    assert [c.words.tolist() for c in got] == [words.tolist()] * 3
    assert got[0].datagram_sizes.tolist() == [16] and got[0].recv_time_ns == 5
    assert r.closing is not None and not r.truncated


def test_reads_hand_built_file_and_writer_matches_it(tmp_path):
    """Build a file byte by byte from docs/raw-format.md, independent of the writer."""
    hjson = json.dumps({"format": "tpx3lib-raw", "chips": [{"index": 2}]}).encode()
    data_offset = (24 + len(hjson) + 7) // 8 * 8
    blob = bytearray(b"\x89TPX3RAW" + struct.pack("<HHIII", 1, 0, len(hjson), zlib.crc32(hjson), data_offset))
    blob += hjson + bytes(data_offset - 24 - len(hjson))

    def record(rtype, chip, n_dg, t, table: bytes, payload: bytes, seq):
        head = b"\xa5TPXREC\x00" + struct.pack("<BBHIQIII", rtype, chip, 0, n_dg, t, len(payload),
                                               zlib.crc32(table + payload), seq)
        head += struct.pack("<I", zlib.crc32(head))
        pad = lambda b: b + bytes(-len(b) % 8)  # noqa: E731
        return head + pad(table) + pad(payload)

    w1 = struct.pack("<3Q", 0xB000000000000001, 0xB000000000000002, 0x6F00000000000003)
    rec1 = record(1, 2, 3, 111, struct.pack("<3I", 8, 8, 8), w1, 0)
    rec2 = record(1, 2, 1, 222, b"", w1[:8], 1)
    blob += rec1 + rec2 + record(2, 0xFF, 0, 333, b"", b'{"counters": {"lost": 0}}', 2)
    path = tmp_path / "hand.bin"
    path.write_bytes(bytes(blob))
    r, got, caught = _read_all(path)
    assert not caught and not r.truncated and r.header["chips"] == [{"index": 2}]
    assert [(c.chip, c.recv_time_ns, c.datagram_sizes.tolist(), c.words.tolist()) for c in got] == [
        (2, 111, [8, 8, 8], [0xB000000000000001, 0xB000000000000002, 0x6F00000000000003]),
        (2, 222, [8], [0xB000000000000001])]
    assert got[0].offset == data_offset and got[1].offset == data_offset + len(rec1)
    assert r.counters == {"lost": 0}
    # the writer produces exactly these record bytes
    out = tmp_path / "written.raw"
    w = open_raw(out, "wb", header={"chips": [{"index": 2}]})
    w.write_chunk(2, np.frombuffer(w1, "<u8"), recv_time_ns=111, datagram_sizes=[8, 8, 8])
    w.write_chunk(2, w1[:8], recv_time_ns=222)
    w.close()
    written = out.read_bytes()
    start = w.data_offset
    assert written[start:start + len(rec1) + len(rec2)] == rec1 + rec2


def test_truncation_at_every_byte_of_the_last_chunk(tmp_path):
    chunks = _chunks(1)[:3]
    full = tmp_path / "full.raw"
    _, offsets = _write(full, chunks)
    data = full.read_bytes()
    last = offsets[-1]
    cut = tmp_path / "cut.raw"
    for end in range(last, len(data) + 1):
        cut.write_bytes(data[:end])
        r, got, caught = _read_all(cut)
        closing_end = len(data)
        n_expected = 3 if end >= _record_end(data, last) else 2
        assert len(got) == n_expected, end
        for (chip, words, _, _), c in zip(chunks, got):
            assert c.chip == chip and np.array_equal(c.words, words)
        if end == closing_end:
            assert not r.truncated and not caught and r.errors == []
            continue
        assert r.truncated, end
        assert any(issubclass(w.category, TruncatedFileWarning) for w in caught)
        assert all(isinstance(e, TruncatedFileError) for e in r.errors)
        # strict: the complete chunks come out, then TruncatedFileError
        with open_raw(cut, "rb", strict=True) as rs:
            seen = []
            with pytest.raises(TruncatedFileError) as ei:
                for c in rs:
                    seen.append(c)
            assert len(seen) == n_expected and ei.value.path == str(cut)


def _record_end(data: bytes, offset: int) -> int:
    _, _, _, n_dg, _, plen, _, _, _ = struct.unpack_from("<BBHIQIIII", data, offset + 8)
    table = 4 * n_dg if n_dg > 1 else 0
    return offset + 40 + (table + 7) // 8 * 8 + (plen + 7) // 8 * 8


@pytest.mark.parametrize("where", ["payload", "record_header", "sync", "table"])
def test_corrupted_middle_chunk_is_reported_and_the_rest_reads(tmp_path, where):
    chunks = _chunks(2)
    path = tmp_path / "c.raw"
    _, offsets = _write(path, chunks)
    data = bytearray(path.read_bytes())
    bad = 3
    pos = {"payload": _record_end(data, offsets[bad]) - 8, "record_header": offsets[bad] + 20,
           "sync": offsets[bad] + 2, "table": offsets[bad] + 40}[where]
    assert len(chunks[bad][3]) >= 2        # the chunk has a datagram table to corrupt
    data[pos] ^= 0x5A
    path.write_bytes(bytes(data))
    r, got, caught = _read_all(path)
    assert [c.offset for c in got] == [o for i, o in enumerate(offsets) if i != bad]
    for c, (chip, words, _, _) in zip(got, [c for i, c in enumerate(chunks) if i != bad]):
        assert c.chip == chip and np.array_equal(c.words, words)
    assert len(r.errors) == 1 and r.errors[0].offset == offsets[bad]
    assert str(offsets[bad]) in str(r.errors[0]) and r.errors[0].path == str(path)
    assert any(issubclass(w.category, CorruptChunkWarning) for w in caught)
    assert not r.truncated and r.counters["lost_datagrams"] == 2
    assert r.chunks_lost == (1 if where in ("record_header", "sync") else 0)
    with open_raw(path, "rb", strict=True) as rs, pytest.raises(FileFormatError) as ei:
        list(rs)
    assert ei.value.offset == offsets[bad]


def test_garbage_between_records_is_skipped(tmp_path):
    chunks = _chunks(3)[:2]
    path = tmp_path / "g.raw"
    _, offsets = _write(path, chunks)
    data = path.read_bytes()
    # a fake sync marker with a bad header CRC plus noise, inserted between the two chunks
    junk = b"\xa5TPXREC\x00" + bytes(range(37))
    data = data[:offsets[1]] + junk + data[offsets[1]:]
    path.write_bytes(data)
    r, got, _ = _read_all(path)
    assert len(got) == 2 and np.array_equal(got[1].words, chunks[1][1])
    assert got[1].offset == offsets[1] + len(junk)
    assert [e.offset for e in r.errors] == [offsets[1]] and r.closing is not None


def test_unknown_record_type_is_skipped(tmp_path):
    path = tmp_path / "u.raw"
    w = open_raw(path, "wb", header={"chips": [{"index": 0}]})
    w.write_chunk(0, np.arange(4, dtype=np.uint64))
    w._append_record(9, 0, 0, 0, b"", memoryview(b"future stuff")) # a record type from a later minor version
    w.write_chunk(0, np.arange(2, dtype=np.uint64))
    w.close()
    r, got, caught = _read_all(path)
    assert [len(c.words) for c in got] == [4, 2] and not caught and r.errors == []


def test_newer_major_version_is_refused(tmp_path):
    path = tmp_path / "v2.raw"
    _write(path, _chunks()[:1])
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 8, 2)
    path.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="version 2.0"):
        open_raw(path, "rb")


def test_readable_while_writing(tmp_path):
    path = tmp_path / "live.raw"
    w = open_raw(path, "wb", header=HEADER, fsync=True)
    r = open_raw(path, "rb")            # opened right after the header was written
    assert r.header["board"]["name"] == "spidr-sim" and r.poll() == []
    a = np.arange(100, dtype=np.uint64)
    w.write_chunk(0, a)
    w.write_chunk(1, a + 1)
    assert r.poll() == []                # still in the writer's buffer
    w.flush()
    got = r.poll()
    assert [c.chip for c in got] == [0, 1] and np.array_equal(got[1].words, a + 1)
    assert r.closing is None
    w.close(counters={"n": 3})
    assert r.poll() == [] and r.closing["counters"] == {"n": 3}
    assert list(r.follow(idle_timeout=0)) == []
    r.close()


def test_poll_sees_exactly_the_complete_chunks_of_a_growing_file(tmp_path):
    """Grow a file a few bytes at a time; each poll returns the chunks completed since the last."""
    chunks = _chunks(5)
    full = tmp_path / "full.raw"
    _, offsets = _write(full, chunks)
    data = full.read_bytes()
    ends = [_record_end(data, o) for o in offsets]
    live = tmp_path / "growing.raw"
    step = 13
    first = offsets[0]              # header complete, first record not yet
    live.write_bytes(data[:first])
    seen = []
    with open_raw(live, "rb") as r:
        for end in range(first, len(data) + step, step):
            end = min(end, len(data))
            with open(live, "ab") as f:
                f.write(data[live.stat().st_size:end])
            seen += r.poll()
            assert len(seen) == sum(e <= end for e in ends), end
            assert r.errors == []
        assert [c.offset for c in seen] == offsets
        assert all(np.array_equal(c.words, ch[1]) for c, ch in zip(seen, chunks))
        assert r.closing["counters"]["datagrams"] == 99


def test_follow_stops_at_closing_record(tmp_path):
    path = tmp_path / "f.raw"
    w = open_raw(path, "wb", header={"chips": [{"index": 0}]})
    for i in range(3):
        w.write_chunk(0, np.full(4, i, dtype=np.uint64))
    w.close()
    with open_raw(path, "rb") as r:
        assert [int(c.words[0]) for c in r.follow(poll_interval=0.01, idle_timeout=5)] == [0, 1, 2]


def test_disk_full_leaves_file_readable_up_to_last_complete_chunk(tmp_path, monkeypatch):
    path = tmp_path / "full.raw"
    w = open_raw(path, "wb", header={"chips": [{"index": 0}]}, buffer_size=1 << 30)
    words = [np.full(50 + i, i, dtype=np.uint64) for i in range(5)]
    for a in words:
        w.write_chunk(0, a)
    w.flush()
    for a in words:                      # five more sit in the buffer
        w.write_chunk(0, a + 100)
    budget = {"left": 2 * (40 + words[0].nbytes) + 100}   # room for two records and a bit more

    def full_disk(fd, data):
        if budget["left"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), budget["left"])
        budget["left"] -= n
        return native.os.write(fd, bytes(data[:n]))

    monkeypatch.setattr(native, "_os_write", full_disk)
    with pytest.raises(RawWriteError) as ei:
        w.flush()
    err = ei.value
    assert err.errno == errno.ENOSPC and "disk full" in str(err) and err.path == str(path)
    assert err.chunks_lost == 3 and err.readable_until == path.stat().st_size
    assert isinstance(err, OSError) and isinstance(err, tpx3lib.errors.Tpx3Error)
    with pytest.raises(RawWriteError):
        w.write_chunk(0, words[0])
    w.close()                            # no exception: nothing more can be written
    monkeypatch.undo()
    r, got, caught = _read_all(path)
    assert [int(c.words[0]) for c in got] == [0, 1, 2, 3, 4, 100, 101]
    assert r.truncated and r.errors and all(isinstance(e, TruncatedFileError) for e in r.errors)


def test_open_errors_are_clear(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RawWriteError, match="cannot create"):
        open_raw(tmp_path / "afile" / "sub.raw", "wb", header={"chips": [{"index": 0}]})
    with pytest.raises(RawWriteError) as ei:
        open_raw(tmp_path / "afile", "xb", header={"chips": [{"index": 0}]})
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(ValueError):
        open_raw(tmp_path / "y.raw", "ab")


def test_write_chunk_rejects_bad_input(tmp_path):
    with open_raw(tmp_path / "w.raw", "wb", header={"chips": [{"index": 0}]}) as w:
        with pytest.raises(ValueError, match="whole number"):
            w.write_chunk(0, b"1234567")
        with pytest.raises(ValueError, match="sum"):
            w.write_chunk(0, np.zeros(4, np.uint64), datagram_sizes=[8, 8])
        with pytest.raises(ValueError, match="multiples of 8"):
            w.write_chunk(0, np.zeros(4, np.uint64), datagram_sizes=[12, 20])
        with pytest.raises(ValueError, match="chip"):
            w.write_chunk(255, np.zeros(1, np.uint64))


def test_header_validation():
    with pytest.raises(ConfigError, match="chips"):
        make_header(chips=[])
    with pytest.raises(ConfigError, match="index"):
        make_header(chips=[{"name": "W0028_H06"}])
    with pytest.raises(ConfigError, match="twice"):
        make_header(chips=[{"index": 0}, {"index": 0}])
    with pytest.raises(ConfigError, match="NaN"):
        make_header(user={"x": float("nan")})
    with pytest.raises(ConfigError, match="JSON-able"):
        make_header(user={"x": object()})
    with pytest.raises(ConfigError, match="dacs"):
        make_header(chips=[{"index": 0, "dacs": {"Vfbk": "high"}}])
    h = make_header(chips=[{"index": np.uint8(1), "dacs": {"Vfbk": np.int64(128)}}], bias_v=np.float32(50),
                    user={"t": (1, 2)}, start_time_ns=1_667_991_101_711_283_699)
    assert h["chips"][0] == {"index": 1, "dacs": {"Vfbk": 128}} and h["user"] == {"t": [1, 2]}
    assert h["start_time"] == "2022-11-09T10:51:41.711284Z"
    json.dumps(h, allow_nan=False)


def test_iter_words_bounded_batches(tmp_path):
    chunks = _chunks(4)
    path = tmp_path / "it.raw"
    _write(path, chunks)
    with open_raw(path, "rb") as r:
        everything = np.concatenate([c[1] for c in chunks])
        for n in (1, 7, 64, 10_000):
            batches = list(r.iter_words(chunk_words=n))
            assert all(len(b) == n for b in batches[:-1]) and 0 < len(batches[-1]) <= n
            assert np.array_equal(np.concatenate(batches), everything)
        chip1 = np.concatenate([c[1] for c in chunks if c[0] == 1])
        assert np.array_equal(np.concatenate(list(r.iter_words(16, chip=1))), chip1)
        per_chip = {}
        for chip, b in r.iter_chip_words(16):
            assert len(b) <= 16
            per_chip.setdefault(chip, []).append(b)
        assert np.array_equal(np.concatenate(per_chip[1]), chip1)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.lists(st.integers(1, 6), min_size=1, max_size=4)),
                min_size=0, max_size=6))
def test_round_trip_property(tmp_path_factory, spec):
    path = tmp_path_factory.mktemp("prop") / "p.raw"
    rng = np.random.default_rng(len(spec))
    written = []
    with open_raw(path, "wb", header={"chips": [{"index": i} for i in range(4)]}, buffer_size=64) as w:
        for chip, sizes in spec:
            words = rng.integers(0, 2**64 - 1, size=sum(sizes), dtype=np.uint64)
            w.write_chunk(chip, words, datagram_sizes=[8 * s for s in sizes])
            written.append((chip, words, [8 * s for s in sizes]))
    with open_raw(path, "rb", strict=True) as r:
        got = list(r)
    assert [(c.chip, c.words.tolist(), c.datagram_sizes.tolist()) for c in got] == \
           [(chip, words.tolist(), sizes) for chip, words, sizes in written]
