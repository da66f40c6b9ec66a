"""Pre-compressed chunks: what :mod:`tpx3lib.process.lzf` / :mod:`.h5chunks` write is decoded by
h5py's own LZF (and HDF5's deflate) filter to exactly the data, for any byte pattern."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest

from tpx3lib.process.h5chunks import ColumnTable, encode
from tpx3lib.process.lzf import MAX_RUN, shuffle_bytes

C = 4096


def _patterns():
    rng = np.random.default_rng(7)
    n = C
    yield "zeros", np.zeros(n, np.uint64)
    yield "random u8", rng.integers(0, 2**63, n, dtype=np.uint64)
    yield "random u1", rng.integers(0, 256, n).astype(np.uint8)
    yield "counter", np.arange(n, dtype=np.int64) * 3 + 10**12
    yield "slow counter", (np.arange(n) // 37).astype(np.uint32)
    yield "small values", rng.integers(0, 4, n).astype(np.uint16)
    yield "tof-like f8", np.cumsum(rng.integers(0, 3, n)) * 25 / 4096 * 1e-9 + 1e-4
    runs = np.repeat(rng.integers(0, 256, 400), rng.integers(1, 2 * MAX_RUN + 5, 400))[:n]
    yield "runs of every length", runs.astype(np.uint8)
    exact = np.concatenate([np.full(k, k % 251, np.uint8) for k in (1, 2, 3, 4, 5, 31, 32, 33, 263, 264, 265,
                                                                     266, 267, 528, 529, 530)])
    yield "run lengths at the limits", np.resize(exact, n)
    mixed = rng.integers(0, 2**32, n, dtype=np.uint64) | (np.uint64(7) << np.uint64(56))
    yield "mixed planes", mixed
    yield "bools-ish", (rng.random(n) < 0.02).astype(np.uint8)


@pytest.mark.parametrize("compression", ["lzf", "gzip", "none"])
def test_every_pattern_reads_back(compression, tmp_path):
    path = tmp_path / "c.h5"
    data = dict(_patterns())
    with h5py.File(path, "w") as f:
        for name, a in data.items():
            shuffle = compression != "none" and a.dtype.itemsize > 1
            ds = f.create_dataset(name, shape=(a.size,), dtype=a.dtype, chunks=(C,),
                                  compression=None if compression == "none" else compression, shuffle=shuffle)
            stored, mask = encode(a, compression, shuffle)
            ds.id.write_direct_chunk((0,), stored, filter_mask=mask)
            if compression == "lzf" and name in ("zeros", "counter", "slow counter"):
                assert mask == 0 and len(stored) < a.nbytes / 4, name          # compressible: compressed
            if compression == "lzf" and name == "random u1":
                assert mask == 1 and len(stored) == a.nbytes                    # not: stored as it is
    with h5py.File(path, "r") as f:
        for name, a in data.items():
            assert np.array_equal(f[name][()], a), name


@pytest.mark.parametrize("n", [1, 2, 3, 7, 33, 100, 1000])
def test_short_and_odd_chunks(n, tmp_path):
    rng = np.random.default_rng(n)
    cases = {"const": np.full(n, 9, np.uint32), "rand": rng.integers(0, 5, n).astype(np.uint16)}
    with h5py.File(tmp_path / "s.h5", "w") as f:
        for name, a in cases.items():
            ds = f.create_dataset(name, shape=(n,), dtype=a.dtype, chunks=(n,), compression="lzf", shuffle=True)
            stored, mask = encode(a, "lzf", True)
            ds.id.write_direct_chunk((0,), stored, filter_mask=mask)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        for name, a in cases.items():
            assert np.array_equal(f[name][()], a), name


def test_shuffle_is_hdf5_shuffle():
    a = np.arange(24, dtype=np.uint32) * 0x01020304
    out = np.empty(a.nbytes, np.uint8)
    shuffle_bytes(a.view(np.uint8), 4, out)
    assert np.array_equal(out, a.view(np.uint8).reshape(-1, 4).T.ravel())
    odd = np.frombuffer(bytes(range(30)), np.uint8)[1:25]          # unaligned input: the slow path
    out2 = np.empty(24, np.uint8)
    shuffle_bytes(odd, 8, out2)
    assert np.array_equal(out2, odd.reshape(-1, 8).T.ravel())


@pytest.mark.parametrize("workers", [0, 2])
def test_column_table_appends_in_any_pieces(workers, tmp_path):
    """Rows appended in pieces of any size land in order; the last chunk is partial; the
    datasets are ordinary lzf+shuffle datasets."""
    rng = np.random.default_rng(3)
    total = 5 * C + 123
    want = {"a": np.cumsum(rng.integers(0, 3, total)).astype(np.int64), "b": rng.integers(0, 256, total).astype(np.uint8),
            "c": rng.random(total)}
    pool = ThreadPoolExecutor(workers) if workers else None
    try:
        with h5py.File(tmp_path / "t.h5", "w") as f:
            t = ColumnTable(f, "tab", [("a", "i8", {"unit": "s"}), ("b", "u1", {}), ("c", "f8", {})],
                            chunk_rows=C, executor=pool, max_pending=2, description="test")
            pos = 0
            for size in rng.integers(0, 3 * C, 100):
                size = min(int(size), total - pos)
                t.append(**{k: v[pos:pos + size] for k, v in want.items()})
                pos += size
                if pos == total:
                    break
            t.flush()
            assert t.rows == total
        with h5py.File(tmp_path / "t.h5", "r") as f:
            g = f["tab"]
            assert list(g) == ["a", "b", "c"] and g.attrs["description"] == "test"
            assert g["a"].attrs["unit"] == "s" and g["a"].compression == "lzf" and g["a"].shuffle
            assert not g["b"].shuffle and g["a"].chunks == (C,)
            for k, v in want.items():
                assert np.array_equal(g[k][()], v), k
    finally:
        if pool is not None:
            pool.shutdown()


def test_column_table_never_appended_is_not_created(tmp_path):
    with h5py.File(tmp_path / "e.h5", "w") as f:
        t = ColumnTable(f, "tab", [("a", "i8", {})], chunk_rows=C)
        t.flush()
        assert "tab" not in f
        t.flush(create_empty=True)
        assert f["tab/a"].shape == (0,)
