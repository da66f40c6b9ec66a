"""Simulated files: headers parse, words equal the generated words, truth matches, exact hit counts."""
from __future__ import annotations

import numpy as np
import pytest

from simulators.clock import BoardClock
from simulators.files import (MAX_CHUNK_WORDS, parse_tpx3_chunk_header, tpx3_chunk_header,
                              write_simulated_file)
from simulators.physics import ChipState, PhysicsModel
from tpx3lib.errors import ConfigError
from test_sim_data_refdecoder import decode_ref


def collect():
    slices = []
    return slices, slices.append


def read_tpx3(path):
    """Split a .tpx3 file into per-chip word arrays, checking every chunk header on the way."""
    raw = np.fromfile(path, "<u8")
    per_chip, modes, i, nchunks = {}, set(), 0, 0
    while i < len(raw):
        chip, mode, size = parse_tpx3_chunk_header(int(raw[i]))
        assert size % 8 == 0 and 0 < size <= 0xFFFF
        n = size // 8
        assert i + 1 + n <= len(raw), "chunk runs past the end of the file"
        per_chip.setdefault(chip, []).append(raw[i + 1:i + 1 + n])
        modes.add(mode)
        i += 1 + n
        nchunks += 1
    return {c: np.concatenate(v) for c, v in per_chip.items()}, modes, nchunks


def test_chunk_header_bytes():
    h = tpx3_chunk_header(3, 0, 65528)
    b = np.array([h], "<u8").tobytes()
    assert b[:4] == b"TPX3" and b[4] == 3 and b[5] == 0 and int.from_bytes(b[6:8], "little") == 65528
    assert parse_tpx3_chunk_header(h) == (3, 0, 65528)
    with pytest.raises(ValueError):
        parse_tpx3_chunk_header(0x1234)
    with pytest.raises(ValueError):
        tpx3_chunk_header(0, 0, 65536)


def test_pymepix_raw_file(tmp_path):
    slices, cb = collect()
    path, truth_path = tmp_path / "run.raw", tmp_path / "run_truth.npz"
    s = write_simulated_file(path, 123_457, "pymepix", seed=3, truth_path=truth_path, stamp_ns=1_667_991_101_000_000_000,
                             slice_hits=40_000, on_slice=cb)
    raw = np.fromfile(path, "<u8")
    assert raw[0] == 1_667_991_101_000_000_000                 # the little-endian time_ns stamp
    words = raw[1:]
    np.testing.assert_array_equal(words, np.concatenate([sl.words[0] for sl in slices]))
    assert len(slices) >= 3                                     # made in slices
    assert s["n_hits"] == 123_457 and s["n_words"] == len(words) and s["n_bytes"] == path.stat().st_size
    # the file starts with a heartbeat (0x44 0x71 0x45 0x71)
    assert [int(w) >> 56 for w in words[:4]] == [0x44, 0x71, 0x45, 0x71]
    px, td, hb = decode_ref(words)
    assert len(px) == 123_457
    z = np.load(truth_path)
    hits = z["hits"]
    np.testing.assert_array_equal(px["toa"], hits["toa"])
    np.testing.assert_array_equal(px["x"], hits["x"])
    np.testing.assert_array_equal(px["tot_ns"], hits["tot"])
    np.testing.assert_array_equal(td["counter"], z["triggers"]["counter"])
    np.testing.assert_array_equal(hb, z["heartbeats"]["timer"])
    assert len(z["clusters"]) == s["n_clusters"] and "seed" in str(z["meta"])
    assert set(np.unique(hits["cluster"][hits["cluster"] >= 0])) <= set(z["clusters"]["id"])


def test_tpx3_file_several_chips_with_h5_truth(tmp_path):
    import h5py
    slices, cb = collect()
    path, truth_path = tmp_path / "run.tpx3", tmp_path / "truth.h5"
    s = write_simulated_file(path, 200_001, "tpx3", seed=4, n_chips=2, truth_path=truth_path,
                             chunk_words=3000, slice_hits=60_000, on_slice=cb)
    per_chip, modes, nchunks = read_tpx3(path)
    assert modes == {0} and nchunks == s["chunks"] and set(per_chip) == {0, 1}
    for chip in (0, 1):
        np.testing.assert_array_equal(per_chip[chip], np.concatenate([sl.words[chip] for sl in slices]))
    with h5py.File(truth_path, "r") as f:
        hits = f["hits"][:]
        assert len(hits) == 200_001 == s["n_hits"]
        for chip in (0, 1):
            px, _, _ = decode_ref(per_chip[chip])
            h = hits[hits["chip"] == chip]
            np.testing.assert_array_equal(px["toa"], h["toa"])
            np.testing.assert_array_equal(px["y"], h["y"])
        assert "n_chips" in f.attrs["meta"]


def test_default_chunks_are_as_large_as_allowed(tmp_path):
    s = write_simulated_file(tmp_path / "a.tpx3", 50_000, "tpx3", model=PhysicsModel(hit_rate_hz=200_000))
    raw = np.fromfile(tmp_path / "a.tpx3", "<u8")
    assert parse_tpx3_chunk_header(int(raw[0]))[2] == 8 * MAX_CHUNK_WORDS
    assert s["n_bytes"] == raw.nbytes


def test_crossing_the_wrap_in_a_file(tmp_path):
    path, tp = tmp_path / "wrap.raw", tmp_path / "wrap.npz"
    write_simulated_file(path, 60_000, model=PhysicsModel(hit_rate_hz=30_000), truth_path=tp,
                         start_ticks=BoardClock.ticks_before_wrap(0.2), slice_hits=10_000)
    hits = np.load(tp)["hits"]
    assert hits["toa"].min() // 4096 < 2 ** 30 < hits["toa"].max() // 4096
    px, _, _ = decode_ref(np.fromfile(path, "<u8")[1:])
    np.testing.assert_array_equal(px["toa"], hits["toa"])


def test_configuration_errors(tmp_path):
    with pytest.raises(ConfigError):
        write_simulated_file(tmp_path / "x", 10, "hdf5")
    with pytest.raises(ConfigError):
        write_simulated_file(tmp_path / "x", 10, "pymepix", n_chips=2)
    st = ChipState()
    st.mask[:] = True
    with pytest.raises(ConfigError, match="no hits"):
        write_simulated_file(tmp_path / "x", 10, "pymepix", chip_states=[st],
                             model=PhysicsModel(hot_pixel_fraction=0.0, heartbeat_period_s=0))


def test_zero_hits_is_an_empty_file(tmp_path):
    s = write_simulated_file(tmp_path / "e.raw", 0, stamp_ns=5)
    assert s["n_hits"] == 0 and (tmp_path / "e.raw").stat().st_size == 8
