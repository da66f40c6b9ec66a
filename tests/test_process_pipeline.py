"""``process_files`` / pymepix layout: the fixture's expected hits, stitching, workers, live-pipeline equality."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import tpx3lib
from test_process_synth import expected_events, make_stream
from tpx3lib.dtypes import toa_seconds
from tpx3lib.errors import ConfigError, FileFormatError, TruncatedFileError
from tpx3lib.files import open_raw
from tpx3lib.process import ProcessOptions, process_files

SMALL = dict(segment_words=4096, margin_words=1024)   # many segments on small test files


@pytest.fixture(scope="module")
def fixture_raw(data_dir):
    return data_dir / "centroid_pipeline_test.raw"


@pytest.fixture(scope="module")
def expected(data_dir):
    return np.load(data_dir / "centroid_pipeline_test.expected.npz")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    words, truth = make_stream(2000, seed=1)
    path = tmp_path_factory.mktemp("synth") / "synth.raw"
    with open_raw(path, "wb", header={"chips": [{"index": 0, "name": "SIM"}]}) as w:
        for i in range(0, words.size, 1000):
            w.write_chunk(0, words[i:i + 1000], datagram_sizes=[8 * min(500, words.size - i - j)
                                                                for j in range(0, min(1000, words.size - i), 500)])
    return path, words, truth


def _tables(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out


def test_fixture_pymepix_layout_holds_the_expected_hits(fixture_raw, expected, tmp_path):
    out = tmp_path / "fixture.h5"
    s = process_files(fixture_raw, out, ProcessOptions(centroid=True, trigger_numbers="sequence"))
    assert (s.pixels, s.events, s.triggers, s.centroids) == (1858, 21, 14, 1)
    with h5py.File(out, "r") as f:
        raw = f["raw"]
        assert {k: raw[k].dtype.str for k in raw} == {"trigger nr": "<u8", "x": "|u1", "y": "|u1", "tof": "<f8",
                                                       "tot": "<u4"}
        assert raw["tof"].attrs["unit"] == "s" and raw["tot"].attrs["unit"] == "ns" and raw["x"].attrs["unit"] == "pixel"
        assert raw["tof"].compression == "lzf" and raw["tof"].chunks and raw["tof"].maxshape == (None,)
        got = np.sort(np.array(list(zip(raw["x"][()], raw["y"][()], raw["tof"][()], raw["tot"][()]))), axis=0)
        want = np.sort(np.array(list(zip(expected["ev_x"], expected["ev_y"], expected["ev_tof_s"],
                                         expected["ev_tot_ns"]))), axis=0)
        order_g = np.lexsort((got[:, 2], got[:, 1], got[:, 0]))
        order_w = np.lexsort((want[:, 2], want[:, 1], want[:, 0]))
        g, w = got[order_g], want[order_w]
        assert np.array_equal(g[:, [0, 1, 3]], w[:, [0, 1, 3]])
        # pymepix computes times at ~55835 s in float64 (ulp 7e-12 s): its tof carries that rounding
        assert np.allclose(g[:, 2], w[:, 2], rtol=0, atol=2e-11)
        assert (raw["trigger nr"][()] == expected["ev_trigger"]).all()          # pymepix numbers: 6
        cen = f["centroided"]
        assert all(cen[k].dtype == np.float64 for k in cen)
        row = [cen[k][0] for k in ("trigger nr", "x", "y", "tof", "tot avg", "tot max", "clustersize")]
        assert row == pytest.approx(expected["centroids"].ravel().tolist(), rel=1e-6)
        assert cen["tot avg"].attrs["unit"] == "ns" and cen["tof"].attrs["unit"] == "s"
        tp = f["timing/timepix"]
        assert tp["trigger nr"].dtype == np.int64 and tp["timestamp"].dtype == np.uint64
        assert tp["trigger nr"][()].tolist() == list(range(14))
        stamp = 1_667_991_101_711_283_699
        assert np.allclose(tp["timestamp"][()] - stamp, tp["event trigger"][()] * 1e9, atol=1)
        t1, t2 = f["triggers/trigger1/time"][()], f["triggers/trigger2/time"][()]
        assert t1.size == 28 and (t1 > 0).sum() == 14 and (t1 < 0).sum() == 14 and t2.size == 2201
        assert json.loads(f["source"].attrs["header"])["start_time_ns"] == stamp
        counters = json.loads(f.attrs["counters"])
        assert counters["words"]["pixel"] == 1858 and counters["pixels_outside_event_window"] == 1761
        assert counters["pixels_before_first_trigger"] == 76


def test_fixture_hardware_trigger_numbers(fixture_raw, tmp_path):
    out = tmp_path / "hw.h5"
    process_files(fixture_raw, out, ProcessOptions())
    data = tpx3lib.load(out)
    assert set(data["raw"]["trigger nr"].tolist()) == {31}     # the 7th TDC1 rising edge's counter
    assert data["timing/timepix"]["trigger nr"].tolist() == list(range(19, 46, 2))
    assert list(data["raw"].dtype.names) == ["trigger nr", "x", "y", "tof", "tot"]
    assert data.units["raw"]["tot"] == "ns" and data.header["format"] == "pymepix" and data.layout == "pymepix"


def test_output_matches_independent_truth(synth, tmp_path):
    path, _, truth = synth
    out = tmp_path / "truth.h5"
    process_files(path, out, ProcessOptions(**SMALL))
    raw = tpx3lib.load(out)["raw"]
    exp = expected_events(truth)
    got = np.stack([raw["x"], raw["y"], raw["tot"], raw["trigger nr"].astype(np.int64)], axis=1)
    want = np.stack([exp["x"], exp["y"], exp["tot"], 2 * exp["trigger"]], axis=1)
    order = np.argsort(exp["toa"], kind="stable")
    assert len(raw) == len(exp["x"]) > 30_000
    # hits come in ToA order; compare as sets row-wise (ties in ToA may differ in order)
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want[order].tolist()))
    assert np.allclose(np.sort(raw["tof"]), np.sort(toa_seconds(exp["tof"])), rtol=0, atol=1e-15)
    assert np.all(np.diff(raw["tof"]) == np.diff(raw["tof"]))   # no NaN


@pytest.mark.parametrize("centroid", [False, True])
def test_segments_and_workers_give_identical_files(synth, tmp_path, centroid):
    path = synth[0]
    runs = {
        "one segment": ProcessOptions(centroid=centroid),
        "small segments": ProcessOptions(centroid=centroid, **SMALL),
        "2 workers": ProcessOptions(centroid=centroid, workers=2, **SMALL),
        "3 workers": ProcessOptions(centroid=centroid, workers=3, segment_words=8192, margin_words=2048),
    }
    results = {}
    for name, opts in runs.items():
        out = tmp_path / f"{name.replace(' ', '_')}.h5"
        s = process_files(path, out, opts)
        assert s.warnings == [], name
        results[name] = _tables(out)
    base = results["one segment"]
    assert base["raw/x"].size > 30_000 and (not centroid or base["centroided/x"].size > 5_000)
    for name, tables in results.items():
        assert tables.keys() == base.keys()
        for k in base:
            assert np.array_equal(tables[k], base[k]), (name, k)


def test_wide_segments_use_the_argsort_path_with_the_same_result(synth, tmp_path, monkeypatch):
    """Segments whose ToA range does not fit the sort keys select by index and argsort: same file."""
    import tpx3lib.process.segment as segment
    path = synth[0]
    a, b = tmp_path / "keys.h5", tmp_path / "argsort.h5"
    process_files(path, a, ProcessOptions(centroid=True, **SMALL))
    monkeypatch.setattr(segment, "_KEY_BITS", 8)          # no segment fits: always the fallback
    process_files(path, b, ProcessOptions(centroid=True, **SMALL))
    ta, tb = _tables(a), _tables(b)
    assert ta.keys() == tb.keys() and ta["raw/x"].size > 30_000
    for k in ta:
        assert np.array_equal(ta[k], tb[k]), k


def test_same_as_the_live_pipeline(synth, tmp_path):
    """Offline output == ChipProcessor (what the live pipeline runs) fed the same words in chunks."""
    from tpx3lib.cluster import TimewalkTable
    from tpx3lib.pipeline import ChipProcessor, ProcessingConfig

    path, words, _ = synth
    lut = tmp_path / "tw.npy"
    TimewalkTable.from_model(200.0, 5.0, 0.0).save(lut)
    cluster = {"method": "components", "radius": 1, "time_window_ns": 200.0}
    out = tmp_path / "offline.h5"
    process_files(path, out, ProcessOptions(centroid=True, cluster=cluster, timewalk_path=str(lut), **SMALL))
    data = tpx3lib.load(out)
    proc = ChipProcessor(ProcessingConfig(products=("events", "centroids"), cluster=cluster, timewalk_path=str(lut)))
    parts = [proc.feed(words[i:i + 3000]) for i in range(0, words.size, 3000)] + [proc.flush()]
    ev = np.concatenate([p.events for p in parts])
    cen = np.concatenate([p.centroids for p in parts])
    raw = data["raw"]
    assert raw.size == ev.size
    assert np.array_equal(raw["x"], ev["x"]) and np.array_equal(raw["tot"], ev["tot"])
    assert np.array_equal(raw["trigger nr"], ev["event"].astype(np.uint64))
    assert np.array_equal(raw["tof"], toa_seconds(ev["tof"]))
    c = data["centroided"]
    assert c.size == cen.size and np.array_equal(c["x"], cen["x"]) and np.array_equal(c["tof"], toa_seconds(cen["tof"]))


def test_two_input_files_are_one_stream(synth, tmp_path):
    path, words, _ = synth
    cut = 17_777
    parts = [tmp_path / "part1.raw", tmp_path / "part2.raw"]
    for p, w in zip(parts, (words[:cut], words[cut:])):
        p.write_bytes(w.tobytes())                       # pymepix raw, no stamp
    a, b = tmp_path / "whole.h5", tmp_path / "split.h5"
    process_files(path, a, ProcessOptions(**SMALL))
    process_files(parts, b, ProcessOptions(**SMALL))
    ta, tb = _tables(a), _tables(b)
    for k in ta:
        if k != "timing/timepix/timestamp":        # camera time + start stamp: the split files have no stamp
            assert np.array_equal(ta[k], tb[k]), k
    assert [s["format"] for s in tpx3lib.load(b).sources] == ["pymepix", "pymepix"]


def test_multichip_needs_a_chip_choice(fixture_raw, tmp_path):
    words = np.fromfile(fixture_raw, "<u8")[1:]
    blob = b""
    for chip in (0, 1):
        for i in range(0, words.size, 1000):
            part = words[i:i + 1000]
            blob += b"TPX3" + bytes([chip, 0]) + part.nbytes.to_bytes(2, "little") + part.tobytes()
    src = tmp_path / "two.tpx3"
    src.write_bytes(blob)
    with pytest.raises(ConfigError, match="chips"):
        process_files(src, tmp_path / "x.h5")
    process_files(src, tmp_path / "c1.h5", ProcessOptions(chip=1))
    assert tpx3lib.load(tmp_path / "c1.h5")["raw"].size == 21
    with pytest.raises(ConfigError, match="chip 5"):
        process_files(src, tmp_path / "c5.h5", ProcessOptions(chip=5))


def test_truncated_input_refused_unless_allowed(synth, tmp_path):
    path = synth[0]
    cut = tmp_path / "cut.raw"
    cut.write_bytes(path.read_bytes()[:-5000])
    out = tmp_path / "o.h5"
    with pytest.raises(TruncatedFileError):
        process_files(cut, out)
    assert not out.exists() and not (tmp_path / "o.h5.part").exists()
    s = process_files(cut, out, ProcessOptions(allow_damaged=True))
    assert s.pixels > 0 and s.warnings
    inputs = json.loads(h5py.File(out, "r").attrs["counters"])["inputs"]
    assert inputs[0]["truncated"] and inputs[0]["problems"]


def test_output_rules(fixture_raw, tmp_path, monkeypatch):
    out = tmp_path / "o.h5"
    out.write_text("precious")
    with pytest.raises(ConfigError, match="overwrite"):
        process_files(fixture_raw, out)
    assert out.read_text() == "precious"
    with pytest.raises(ConfigError, match="input"):
        process_files(fixture_raw, fixture_raw, overwrite=True)
    # a failure half way leaves the old file untouched and no temporary file behind
    import tpx3lib.process.runner as runner

    def boom(job, cfg):
        raise RuntimeError("worker failed")

    monkeypatch.setattr(runner, "run_segment", boom)
    with pytest.raises(RuntimeError):
        process_files(fixture_raw, out, overwrite=True)
    assert out.read_text() == "precious" and not (tmp_path / "o.h5.part").exists()
    monkeypatch.undo()
    process_files(fixture_raw, out, overwrite=True)
    assert tpx3lib.load(out)["raw"].size == 21


def test_bad_input_and_options(tmp_path, fixture_raw):
    junk = tmp_path / "junk.raw"
    junk.write_bytes(b"definitely not detector data\n" * 50)
    with pytest.raises(FileFormatError, match="unknown content"):
        process_files(junk, tmp_path / "o.h5")
    bad_lut = tmp_path / "lut.txt"
    bad_lut.write_text("not a table\n")
    with pytest.raises((ConfigError, FileFormatError)):
        process_files(fixture_raw, tmp_path / "o.h5", ProcessOptions(centroid=True, timewalk_path=str(bad_lut)))
    with pytest.raises(ConfigError):
        ProcessOptions(event_window_s=(1e-3, 0))
    with pytest.raises(ConfigError):
        ProcessOptions(segment_words=1000, margin_words=1024)
    assert ProcessOptions(event_window_s=(-np.inf, np.inf)).event_window_s is None


def test_load_as_pandas(fixture_raw, tmp_path):
    import pandas as pd   # extra-data (test extra) depends on it
    out = tmp_path / "p.h5"
    process_files(fixture_raw, out, ProcessOptions(centroid=True))
    d = tpx3lib.load(out, pandas=True)
    assert isinstance(d["raw"], pd.DataFrame) and list(d["raw"].columns) == ["trigger nr", "x", "y", "tof", "tot"]
    assert len(d["centroided"]) == 1 and "centroided" in d
    with pytest.raises(FileFormatError):
        tpx3lib.load(fixture_raw)
