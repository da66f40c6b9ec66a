"""pymepix .raw and ASI/Serval .tpx3 files through the same reader API; detection by content."""
from __future__ import annotations

import struct
import warnings

import h5py
import numpy as np
import pytest

from tpx3lib.errors import FileFormatError, TruncatedFileError
from tpx3lib.files import detect_format, open_raw

FIXTURE_STAMP = 1_667_991_101_711_283_699       # 2022-11-09 10:51:41 UTC (fixtures/README.md)
FIRST_PIXEL = 0xB649B61040720841


@pytest.fixture(scope="module")
def fixture_bytes(data_dir):
    return (data_dir / "centroid_pipeline_test.raw").read_bytes()


def _words(b: bytes) -> np.ndarray:
    return np.frombuffer(b, "<u8")


def test_pymepix_with_stamp(data_dir, fixture_bytes):
    path = data_dir / "centroid_pipeline_test.raw"
    assert detect_format(path) == "pymepix"
    with open_raw(path) as r:
        assert r.format == "pymepix" and r.stamp_ns == FIXTURE_STAMP
        assert r.header["start_time"] == "2022-11-09T10:51:41.711284Z" and r.header["start_stamp"]
        chunks = list(r)
        words = np.concatenate([c.words for c in chunks])
        assert len(words) == 4095 and int(words[0]) == FIRST_PIXEL
        assert chunks[0].offset == 8 and chunks[0].chip == 0 and chunks[0].datagram_sizes is None
        assert not r.truncated and r.errors == [] and r.closing is None and r.counters is None
        assert np.array_equal(words, _words(fixture_bytes[8:]))
        batches = list(r.iter_words(chunk_words=1000))
        assert [len(b) for b in batches] == [1000, 1000, 1000, 1000, 95]


def test_pymepix_without_stamp(tmp_path, fixture_bytes):
    path = tmp_path / "nostamp.dat"
    path.write_bytes(fixture_bytes[8:])
    with open_raw(path) as r:
        assert r.format == "pymepix" and r.stamp_ns is None and not r.header["start_stamp"]
        words = np.concatenate([c.words for c in r])
        assert len(words) == 4095 and int(words[0]) == FIRST_PIXEL


def test_pymepix_starting_with_heartbeat(tmp_path):
    words = np.array([0x440002A7BF410A9E, 0x714400001C6A0A9E, 0x4500000000000A9F, FIRST_PIXEL], np.uint64)
    path = tmp_path / "hb.raw"
    path.write_bytes(words.tobytes())
    with open_raw(path) as r:
        assert r.stamp_ns is None and np.array_equal(np.concatenate([c.words for c in r]), words)


def test_pymepix_with_partial_last_word(tmp_path, fixture_bytes):
    path = tmp_path / "cut.raw"
    path.write_bytes(fixture_bytes[:8 + 8 * 100 + 5])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_raw(path) as r:
            words = np.concatenate([c.words for c in r])
            assert len(words) == 100 and r.truncated and r.truncated_offset == 808
    assert caught
    with open_raw(path, strict=True) as r, pytest.raises(TruncatedFileError):
        list(r)


def _tpx3_chunk(chip: int, words: np.ndarray, mode: int = 0) -> bytes:
    return b"TPX3" + struct.pack("<BBH", chip, mode, words.nbytes) + words.astype("<u8").tobytes()


def _two_chip_file(fixture_bytes):
    w = _words(fixture_bytes[8:])
    parts = [(0, w[:1000]), (1, w[1000:1500]), (0, w[1500:2000]), (1, w[2000:4095])]
    # .tpx3 chunk sizes are 16-bit: split large parts
    chunks = []
    for chip, a in parts:
        for s in range(0, len(a), 8000):
            chunks.append((chip, a[s:s + 8000]))
    return chunks, b"".join(_tpx3_chunk(chip, a) for chip, a in chunks)


def test_tpx3_two_chips(tmp_path, fixture_bytes):
    chunks, blob = _two_chip_file(fixture_bytes)
    path = tmp_path / "run.raw"            # extension says nothing: content decides
    path.write_bytes(blob)
    assert detect_format(path) == "tpx3"
    with open_raw(path) as r:
        assert r.format == "tpx3" and r.chips == [0, 1]
        got = list(r)
        assert [(c.chip, len(c.words)) for c in got] == [(chip, len(a)) for chip, a in chunks]
        offsets = np.cumsum([0] + [8 + a.nbytes for _, a in chunks])[:-1]
        assert [c.offset for c in got] == offsets.tolist()
        for c, (_, a) in zip(got, chunks):
            assert np.array_equal(c.words, a)
        w = _words(fixture_bytes[8:])
        chip1 = np.concatenate(list(r.iter_words(chunk_words=300, chip=1)))
        assert np.array_equal(chip1, np.concatenate([w[1000:1500], w[2000:4095]]))
        split = {}
        for chip, b in r.iter_chip_words(chunk_words=700):
            split.setdefault(chip, []).append(b)
        assert np.array_equal(np.concatenate(split[0]), np.concatenate([w[:1000], w[1500:2000]]))
        assert not r.truncated and r.errors == []


def test_tpx3_damaged_header_and_cut_last_chunk(tmp_path, fixture_bytes):
    chunks, blob = _two_chip_file(fixture_bytes)
    sizes = [8 + a.nbytes for _, a in chunks]
    data = bytearray(blob)
    data[sizes[0]:sizes[0] + 4] = b"XXXX"            # second chunk's header destroyed
    data = bytes(data[:-12])                         # last chunk cut: 1.5 words short
    path = tmp_path / "bad.tpx3"
    path.write_bytes(data)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with open_raw(path) as r:
            got = list(r)
    assert [c.chip for c in got] == [chunks[0][0]] + [c for c, _ in chunks[2:]]
    assert len(got[-1].words) == len(chunks[-1][1]) - 2
    assert r.errors[0].offset == sizes[0] and r.truncated
    assert isinstance(r.errors[-1], TruncatedFileError)


@pytest.mark.parametrize("content", [
    b"",
    b"hello, this is a text file and not detector data\n" * 20,
    b"not detector data at all" * 10,
    bytes(4096),
    np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    b"\x89TPX",                                             # a native magic cut short
])
def test_unknown_content_is_rejected(tmp_path, content):
    path = tmp_path / "x.raw"
    path.write_bytes(content)
    with pytest.raises(FileFormatError) as ei:
        with open_raw(path) as r:
            list(r)
    assert ei.value.path == str(path) and ei.value.offset is not None


def test_hdf5_is_recognised_and_redirected(tmp_path):
    path = tmp_path / "processed.raw"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    assert detect_format(path) == "hdf5"
    with pytest.raises(FileFormatError, match="HDF5"):
        open_raw(path)


def test_native_named_like_pymepix_is_read_as_native(tmp_path, fixture_bytes):
    path = tmp_path / "looks.tpx3"
    with open_raw(path, "wb", header={"chips": [{"index": 0}]}) as w:
        w.write_chunk(0, _words(fixture_bytes[8:]))
    with open_raw(path) as r:
        assert r.format == "native" and len(next(iter(r)).words) == 4095
