"""European XFEL run files: written by ExdfRunWriter, read back by the real EXtra-data
and checked by the real extra-data-validate, and against the spec's rules directly."""
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from extra_data import H5File, RunDirectory, by_id

from tpx3lib.dtypes import CENTROID_DTYPE, EVENT_DTYPE  # noqa: E402
from tpx3lib.errors import ConfigError  # noqa: E402
from tpx3lib.exdf import (ExdfDtypeError, ExdfRunWriter, ExdfValueError, RunExistsError,  # noqa: E402
                          TrainOrderError, write_trains)
from tpx3lib.trainid import (EXTRAPOLATED, TRIGGER_TRAIN_DTYPE, CountingTrainIdSource,  # noqa: E402
                             TrainIdAssigner)

SRC = "TPX3/CAM/1:daqOutput"
CTRL = "TPX3/CAM/1"
FIRST_TID = 1_200_000_000
N_TRAINS = 30
SUSPECT_TRAINS = {FIRST_TID + 7}
T_NS = 1_700_000_000_000_000_000
SETTINGS = {"bias_voltage": 50.0, "mode": "ToA_ToT", "dac": {"Ibias_Preamp_ON": 128, "Vthreshold_fine": 255},
            "polarity_positive": True, "chip_ids": [3, 1, 4]}


def hits_of(i, tid):
    """Deterministic hits of the i-th train (every 4th train empty)."""
    n = 0 if i % 4 == 3 else (i * 37) % 50 + 1
    h = np.zeros(n, EVENT_DTYPE)
    k = np.arange(n)
    h["event"] = 2 * i + 1
    h["train_id"] = tid if i % 2 else 0                # 0 is allowed too
    h["x"], h["y"] = (k * 7 + i) % 256, (k * 3 + 2 * i) % 256
    h["tot"] = 25 * (k % 40 + 1)
    h["chip"] = k % 4
    h["toa"] = 10**12 + i * 16_384_000_000 + k * 4096
    h["tof"] = k * 4096 + 17
    return h


def centroids_of(i, tid):
    """Centroids for trains with i % 3 != 2 (else None: no centroids)."""
    if i % 3 == 2:
        return None
    n = (i * 11) % 9
    c = np.zeros(n, CENTROID_DTYPE)
    k = np.arange(n)
    c["event"], c["train_id"], c["chip"] = 2 * i + 1, tid, 0
    c["x"], c["y"] = k + 0.25, k * 2 + 0.5
    c["toa"], c["toa_first"] = 1e12 + k * 1.5, 10**12 + k
    c["tof"], c["tof_first"] = k * 100.5, k * 100
    c["tot_sum"], c["tot_mean"], c["tot_max"], c["size"] = 100 * (k + 1), 25.5, 50, k + 1
    return c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("exdf") / "r0042"
    w = ExdfRunWriter(d, 42, proposal=900123, sequence_max_bytes=6000, settings=SETTINGS,
                      units={"bias_voltage": "V", "dac.Ibias_Preamp_ON": ""}, run_type="test", sample="Ne gas",
                      buffer_bytes=3000, chunk_entries=256)
    for i in range(N_TRAINS):
        tid = FIRST_TID + i
        if i == 20:
            w.update_settings({"bias_voltage": 60.0, "mode": "ToT"})
        w.write_train(tid, T_NS + i * 100_000_000, hits_of(i, tid), centroids_of(i, tid),
                      flag=0 if tid in SUSPECT_TRAINS else 1)
    w.close()
    w.close()   # twice is fine
    return d


def test_file_names_and_several_sequences(run_dir):
    names = sorted(p.name for p in run_dir.glob("*.h5"))
    assert len(names) >= 3
    assert names == [f"RAW-R0042-TPX01-S{s:05d}.h5" for s in range(len(names))]


def test_extra_data_validate_finds_no_problems(run_dir):
    exe = Path(sys.executable).with_name("extra-data-validate")
    res = subprocess.run([str(exe), str(run_dir)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "No problems found" in res.stdout
    one_file = sorted(run_dir.glob("*.h5"))[1]     # a single file on its own too
    res = subprocess.run([str(exe), str(one_file)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "No problems found" in res.stdout, res.stdout


def test_run_directory_reads_every_train_back(run_dir):
    run = RunDirectory(str(run_dir))
    assert list(run.train_ids) == [FIRST_TID + i for i in range(N_TRAINS)]     # empty trains included
    assert run.instrument_sources == {SRC} and run.control_sources == {CTRL}
    counts = run[SRC].data_counts(index_group="data")
    assert counts.values.tolist() == [hits_of(i, 0).size for i in range(N_TRAINS)]
    # The whole run, key by key: every entry with the train EXtra-data says it belongs to.
    all_hits = np.concatenate([hits_of(i, FIRST_TID + i) for i in range(N_TRAINS)])
    hit_tids = np.concatenate([np.full(hits_of(i, 0).size, FIRST_TID + i) for i in range(N_TRAINS)])
    for field in ("event", "x", "y", "tot", "chip", "toa", "tof"):
        kd = run[SRC, f"data.{field}"]
        assert kd.dtype == EVENT_DTYPE[field]
        np.testing.assert_array_equal(kd.ndarray(), all_hits[field], err_msg=f"data.{field}")
        np.testing.assert_array_equal(kd.train_id_coordinates(), hit_tids)
    cents = [(i, centroids_of(i, FIRST_TID + i)) for i in range(N_TRAINS)]
    all_cen = np.concatenate([c for _, c in cents if c is not None])
    for field in ("event", "chip", "x", "y", "toa", "toa_first", "tof", "tof_first", "tot_sum", "tot_mean",
                  "tot_max", "size"):
        np.testing.assert_array_equal(run[SRC, f"centroids.{field}"].ndarray(), all_cen[field])
    # Single trains by ID: the first, an empty one, one with no centroids, the last.
    for i in (0, 3, 2, N_TRAINS - 1):
        tid = FIRST_TID + i
        x = run[SRC, "data.x"].select_trains(by_id[[tid]]).ndarray()
        np.testing.assert_array_equal(x, hits_of(i, tid)["x"])
        cx = run[SRC, "centroids.x"].select_trains(by_id[[tid]]).ndarray()
        c = centroids_of(i, tid)
        np.testing.assert_array_equal(cx, c["x"] if c is not None else np.empty(0))


def test_train_from_id_gives_one_train(run_dir):
    run = RunDirectory(str(run_dir))
    i = 4
    tid, data = run.select(SRC, "*").train_from_id(FIRST_TID + i)
    assert tid == FIRST_TID + i
    np.testing.assert_array_equal(data[SRC]["data.x"], hits_of(i, tid)["x"])
    np.testing.assert_array_equal(data[SRC]["centroids.size"], centroids_of(i, tid)["size"])
    # an empty train is there, with no entries
    tid, data = run.train_from_id(FIRST_TID + 3)
    assert "data.x" not in data[SRC]
    assert data[CTRL]["bias_voltage.value"] == 50.0


def test_control_and_run_values(run_dir):
    run = RunDirectory(str(run_dir))
    assert run.get_run_value(CTRL, "bias_voltage") == 50.0
    assert run.get_run_value(CTRL, "mode") == "ToA_ToT"
    assert run.get_run_value(CTRL, "dac.Vthreshold_fine") == 255
    assert bool(run.get_run_value(CTRL, "polarity_positive")) is True
    np.testing.assert_array_equal(run.get_run_value(CTRL, "chip_ids"), [3, 1, 4])
    bias = run[CTRL, "bias_voltage.value"].ndarray()
    assert bias.tolist() == [50.0] * 20 + [60.0] * 10
    assert run[CTRL, "mode.value"].ndarray().tolist() == ["ToA_ToT"] * 20 + ["ToT"] * 10
    assert run[CTRL, "chip_ids.value"].ndarray().shape == (N_TRAINS, 3)
    assert run[CTRL, "bias_voltage.value"].units == "V"
    assert run[CTRL, "bias_voltage.value"].units_name == "volt"
    assert run[SRC, "data.tot"].units == "ns"
    ts = run[CTRL, "bias_voltage.timestamp"].ndarray()
    assert ts[0] == T_NS and ts[20] == T_NS + 20 * 100_000_000 and np.all(np.diff(ts.astype(np.int64)) >= 0)


def test_flags_timestamps_and_metadata(run_dir):
    run = RunDirectory(str(run_dir))
    good = RunDirectory(str(run_dir), inc_suspect_trains=False)
    assert set(run.train_ids) - set(good.train_ids) == SUSPECT_TRAINS
    stamps = run.train_timestamps()
    assert stamps[0] == np.datetime64(T_NS, "ns") and stamps[-1] == np.datetime64(T_NS + 29 * 10**8, "ns")
    meta = run.run_metadata()
    assert meta["dataFormatVersion"] == "1.3"
    assert meta["proposalNumber"] == 900123 and meta["runNumber"] == 42
    assert meta["runType"] == "test" and meta["sample"] == "Ne gas"
    f = H5File(str(sorted(run_dir.glob("*.h5"))[1]))
    assert f.run_metadata()["sequenceNumber"] == 1


def test_layout_follows_the_spec(run_dir):
    """The rules of spec/euxfel-hdf5.md checked on the HDF5 directly (not through EXtra-data)."""
    seen = []
    for seq, path in enumerate(sorted(run_dir.glob("*.h5"))):
        with h5py.File(path, "r") as f:
            for name, ds in f["METADATA"].items():
                if isinstance(ds, h5py.Dataset):
                    assert ds.ndim == 1 and ds.shape[0] >= 1, name
            assert f["METADATA/dataFormatVersion"][0] == b"1.3"
            assert f["METADATA/sequenceNumber"][0] == seq and f["METADATA/sequenceNumber"].dtype == np.uint32
            for k in ("creationDate", "updateDate"):
                assert len(f[f"METADATA/{k}"][0]) == 16 and f[f"METADATA/{k}"][0].endswith(b"Z")
            src_ids = [s.decode() for s in f["METADATA/dataSources/dataSourceId"][:]]
            roots = [s.decode() for s in f["METADATA/dataSources/root"][:]]
            devs = [s.decode() for s in f["METADATA/dataSources/deviceId"][:]]
            assert [r + "/" + d for r, d in zip(roots, devs)] == src_ids
            assert set(src_ids) == {f"CONTROL/{CTRL}", f"INSTRUMENT/{SRC}/data", f"INSTRUMENT/{SRC}/centroids"}
            tids = f["INDEX/trainId"][:]
            assert tids.dtype == np.uint64 and np.all(np.diff(tids.astype(np.int64)) > 0)
            assert f["INDEX/flag"].dtype == np.int32 and f["INDEX/origin"][:].tolist() == [-1] * tids.size
            assert f["INDEX/timestamp"].dtype == np.uint64
            seen += tids.tolist()
            for grp in (f"{SRC}/data", f"{SRC}/centroids", CTRL):
                first, count = f[f"INDEX/{grp}/first"][:], f[f"INDEX/{grp}/count"][:]
                assert first.dtype == count.dtype == np.uint64 and first.size == count.size == tids.size
                assert first.tolist() == [0] + np.cumsum(count)[:-1].tolist()
            n_hits = int(f[f"INDEX/{SRC}/data/count"][:].sum())
            x = f[f"INSTRUMENT/{SRC}/data/x"]
            assert x.shape == (n_hits,) and x.chunks is not None and x.compression == "gzip"
            assert f[f"CONTROL/{CTRL}/bias_voltage/value"].shape == (tids.size,)
            assert f[f"RUN/{CTRL}/bias_voltage/value"].shape == (1,)
            assert f[f"CONTROL/{CTRL}/bias_voltage"].attrs["unitSymbol"] == "V"
    assert seen == [FIRST_TID + i for i in range(N_TRAINS)]      # no train in two files


def make_writer(tmp_path, **kw):
    return ExdfRunWriter(tmp_path / "run", 1, sequence_max_bytes=1 << 20, **kw)


def hits(n, tid=0):
    h = np.zeros(n, EVENT_DTYPE)
    h["train_id"] = tid
    h["x"] = np.arange(n)
    return h


def test_non_increasing_train_ids_refused_and_nothing_written(tmp_path):
    w = make_writer(tmp_path)
    w.write_train(100, T_NS, hits(3))
    w.write_train(101, T_NS + 1, hits(2))
    for bad in (101, 50, 0):
        with pytest.raises(TrainOrderError) as info:
            w.write_train(bad, T_NS + 2, hits(5))
        assert isinstance(info.value, ValueError)
    assert w.counters["trains"] == 2 and w.counters["hits"] == 5
    w.write_train(102, T_NS + 3, hits(1))
    w.close()
    run = RunDirectory(str(tmp_path / "run"))
    assert list(run.train_ids) == [100, 101, 102]
    assert run[SRC, "data.x"].ndarray().tolist() == [0, 1, 2, 0, 1, 0]


def test_invalid_records_refused(tmp_path):
    w = make_writer(tmp_path)
    with pytest.raises(ExdfDtypeError) as info:
        w.write_train(1, T_NS, np.zeros(3, CENTROID_DTYPE))
    assert isinstance(info.value, TypeError)
    with pytest.raises(ExdfDtypeError):
        w.write_train(1, T_NS, hits(2), centroids=hits(2))
    with pytest.raises(ExdfDtypeError):
        w.write_train(1, T_NS, [(0, 0, 1, 2, 3, 0, 0, 0)])
    with pytest.raises(ExdfValueError):
        w.write_train(1, T_NS, hits(2, tid=7))               # records of another train
    with pytest.raises(ExdfValueError):
        w.write_train(1, T_NS, hits(2), flag=2)
    with pytest.raises(ExdfValueError):
        w.write_train(1, T_NS, hits(4).reshape(2, 2))
    assert w.counters["trains"] == 0
    w.close()
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").iterdir())   # no train, no file
    with pytest.raises(Exception, match="closed"):
        w.write_train(5, T_NS, hits(1))


def test_bad_configuration_refused(tmp_path):
    for kw in (dict(source="TPX3/CAM/1"), dict(source="TPX3/CAM:out"), dict(control_source="A/B/C:x"),
               dict(settings={"a": {"b": [[1, 2]]}}), dict(settings={"value": 1}), dict(units={"nope": "V"}),
               dict(aggregator="TPX 1"), dict(compression="zstd")):
        with pytest.raises(ConfigError):
            make_writer(tmp_path, **kw)
    with pytest.raises(ConfigError):
        ExdfRunWriter(tmp_path, 10000)
    w = make_writer(tmp_path, settings={"bias": 1.0, "mode": "ToT"})
    with pytest.raises(ConfigError):
        w.update_settings({"bias": "high"})                   # type changes
    with pytest.raises(ConfigError):
        w.update_settings({"new_key": 1})
    w.close()


def test_existing_run_refused_unless_overwrite(tmp_path):
    with make_writer(tmp_path) as w:
        w.write_train(5, T_NS, hits(1))
    with pytest.raises(RunExistsError) as info:
        make_writer(tmp_path)
    assert isinstance(info.value, FileExistsError)
    with make_writer(tmp_path, overwrite=True) as w:
        w.write_train(9, T_NS, hits(2))
    assert list(RunDirectory(str(tmp_path / "run")).train_ids) == [9]


def test_oversized_train_gets_its_own_file(tmp_path):
    with ExdfRunWriter(tmp_path, 3, sequence_max_bytes=1000, with_centroids=False) as w:
        w.write_train(10, T_NS, hits(5))
        w.write_train(11, T_NS, hits(500))          # 15 kB > 1000 bytes: alone in the next file
        w.write_train(12, T_NS, hits(5))
    assert [p.name for p in w.files] == [f"RAW-R0003-TPX01-S0000{i}.h5" for i in range(3)]
    run = RunDirectory(str(tmp_path))
    assert run[SRC].data_counts().values.tolist() == [5, 500, 5]
    assert run.instrument_sources == {SRC} and "centroids.x" not in run[SRC].keys()


def test_write_trains_from_assigned_triggers(tmp_path):
    # Triggers of trains 801, 802, (803 missed), 804, 805 decided by counting; hits of 801 and 804 only.
    p = 16_384_000_000
    a = TrainIdAssigner(CountingTrainIdSource(801, board_time_origin=1_700_000_000.0))
    from tpx3lib.dtypes import TDC1_RISING, TDC_DTYPE
    tdcs = np.zeros(4, TDC_DTYPE)
    tdcs["kind"], tdcs["tdc"], tdcs["rising"] = TDC1_RISING, 1, 1
    tdcs["counter"] = [1, 3, 5, 7]
    tdcs["time"] = [p, 2 * p, 4 * p, 5 * p]
    triggers = a.feed(tdcs)
    triggers["flags"][3] |= EXTRAPOLATED                       # pretend train 805's ID is suspect
    ev = np.zeros(5, EVENT_DTYPE)
    ev["event"] = [1, 1, 5, 5, 99]                               # counter 99: no trigger known
    ev["x"] = [1, 2, 3, 4, 5]
    assert a.apply(ev) == 1
    with ExdfRunWriter(tmp_path, 8) as w:
        stats = write_trains(w, triggers, ev)
    assert stats["trains"] == 4 and stats["empty_trains"] == 2 and stats["hits_without_train"] == 1
    assert stats["suspect_trains"] == 1
    run = RunDirectory(str(tmp_path))
    assert list(run.train_ids) == [801, 802, 804, 805]
    assert run[SRC].data_counts(index_group="data").values.tolist() == [2, 0, 2, 0]
    assert list(RunDirectory(str(tmp_path), inc_suspect_trains=False).train_ids) == [801, 802, 804]
    stamps = run.train_timestamps()
    assert stamps[0] == np.datetime64(int(1_700_000_000.1e9), "ns")
    with pytest.raises(ExdfDtypeError):
        write_trains(w, np.zeros(1, TRIGGER_TRAIN_DTYPE), np.zeros(1, CENTROID_DTYPE))
