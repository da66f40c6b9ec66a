"""The run writer's fast paths: ``ExdfRunWriter.write_block`` (trains as columns with counts)
gives the same files as ``write_train`` train by train, whose values read back with plain h5py
are the input records; instrument chunks compressed outside h5py stay readable by h5py's own
filters; ``flush`` puts a partial chunk in the file that later rows complete; and the offline
layout (``tpx3 process --layout exdf``) assembles trains - triggers of one ID merged, records
out of trigger order, blocks cut anywhere - as an independent reading of its input says."""
from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest

from extra_data import RunDirectory

from tpx3lib.dtypes import CENTROID_DTYPE, EVENT_DTYPE, TDC1_RISING, TDC_DTYPE  # noqa: E402
from tpx3lib.errors import ConfigError  # noqa: E402
from tpx3lib.exdf import ExdfDtypeError, ExdfRunWriter, ExdfValueError, TrainOrderError  # noqa: E402
from tpx3lib.exdf.layout import CENTROID_FIELDS, HIT_FIELDS  # noqa: E402
from tpx3lib.process import ProcessOptions  # noqa: E402
from tpx3lib.process.columns import EventColumns  # noqa: E402
from tpx3lib.process.exdf_layout import ExdfWriter  # noqa: E402
from tpx3lib.trainid import SUSPECT, CountingTrainIdSource, TrainIdAssigner  # noqa: E402
from h5_helpers import run_datasets

SRC = "TPX3/CAM/1:daqOutput"
CTRL = "TPX3/CAM/1"
T_NS = 1_700_000_000_000_000_000
PERIOD = 16_384_000_000              # 100 ms in 25/4096 ns units


def make_trains(n_trains=40, seed=3):
    """Trains of random records (some empty, some large enough to span chunks)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_trains):
        n = 0 if i % 7 == 3 else int(rng.integers(1, 300)) if i % 5 else int(rng.integers(300, 900))
        h = np.zeros(n, EVENT_DTYPE)
        h["event"] = 10 + i
        h["x"], h["y"] = rng.integers(0, 512, n), rng.integers(0, 512, n)
        h["tot"] = rng.integers(0, 1000, n)
        h["chip"] = rng.integers(0, 4, n)
        h["toa"] = np.sort(rng.integers(0, 1 << 40, n)) + i * (1 << 41)
        h["tof"] = rng.integers(0, 1 << 20, n)
        m = int(rng.integers(0, 40))
        c = np.zeros(m, CENTROID_DTYPE)
        c["event"], c["chip"] = 10 + i, rng.integers(0, 4, m)
        for f in ("x", "y", "toa", "tof"):
            c[f] = rng.random(m) * 1000
        c["toa_first"], c["tof_first"] = rng.integers(0, 1 << 40, m), rng.integers(0, 1 << 20, m)
        c["tot_sum"], c["tot_mean"] = rng.integers(0, 10_000, m), rng.random(m) * 100
        c["tot_max"], c["size"] = rng.integers(0, 1000, m), rng.integers(1, 20, m)
        out.append(dict(tid=1000 + 2 * i + (i > 20), ts=T_NS + i * 100_000_000, hits=h, cents=c,
                        flag=0 if i % 11 == 4 else 1, counter=10 + i, mode="ToT" if i > 25 else "ToA"))
    return out


def writer(path, compression, **kw):
    opts = dict(settings={"bias_voltage": 50.0, "trigger": {"counter": 0}, "mode": "ToA"},
                units={"bias_voltage": "V"}, sequence_max_bytes=60_000, chunk_entries=256, buffer_bytes=2000,
                compression=compression)
    opts.update(kw)
    return ExdfRunWriter(path, 7, **opts)


def pieces_of(records, fields, cuts):
    """Columns of ``records`` cut into consecutive pieces at ``cuts`` (not train boundaries)."""
    edges = [0, *[c for c in cuts if 0 < c < records.size], records.size]
    return [{f: np.ascontiguousarray(records[f][a:b]) for f in fields} for a, b in zip(edges[:-1], edges[1:])]


@pytest.mark.parametrize("compression", ["gzip", "lzf", None])
def test_write_block_equals_write_train_and_reads_back_as_the_input(tmp_path, compression):
    trains = make_trains()
    with writer(tmp_path / "one", compression) as w:
        for t in trains:
            w.update_settings({"trigger.counter": t["counter"], "mode": t["mode"]})
            w.write_train(t["tid"], t["ts"], t["hits"], t["cents"], flag=t["flag"])
    files = list(w.files)
    assert len(files) >= 3                                         # sequence files split by size
    pool = ThreadPoolExecutor(2)
    with writer(tmp_path / "block", compression, executor=pool, max_pending=2) as w:
        for part in (trains[:3], trains[3:17], trains[17:]):      # blocks, data cut across trains
            hits = np.concatenate([t["hits"] for t in part])
            cents = np.concatenate([t["cents"] for t in part])
            w.write_block([t["tid"] for t in part], [t["ts"] for t in part], [t["flag"] for t in part],
                          pieces_of(hits, HIT_FIELDS, [5, 700, 701, 2000]), [t["hits"].size for t in part],
                          pieces_of(cents, CENTROID_FIELDS, [30]), [t["cents"].size for t in part],
                          control={"trigger.counter": [t["counter"] for t in part],
                                   "mode": [t["mode"] for t in part]})
    pool.shutdown()
    a, b = run_datasets(tmp_path / "one"), run_datasets(tmp_path / "block")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key

    # the values, read with plain h5py, are the input records, file by file and train by train
    seen = []
    for p in files:
        with h5py.File(p, "r") as f:
            tids = f["INDEX/trainId"][()].tolist()
            seen += tids
            mine = [t for t in trains if t["tid"] in tids]
            assert f["INDEX/flag"][()].tolist() == [t["flag"] for t in mine]
            assert f["INDEX/timestamp"][()].tolist() == [t["ts"] for t in mine]
            assert f[f"CONTROL/{CTRL}/trigger/counter/value"][()].tolist() == [t["counter"] for t in mine]
            assert [v.decode() for v in f[f"CONTROL/{CTRL}/mode/value"][()]] == [t["mode"] for t in mine]
            for grp, key, fields in (("data", "hits", HIT_FIELDS), ("centroids", "cents", CENTROID_FIELDS)):
                count = f[f"INDEX/{SRC}/{grp}/count"][()]
                assert count.tolist() == [t[key].size for t in mine]
                want = np.concatenate([t[key] for t in mine])
                for field in fields:
                    ds = f[f"INSTRUMENT/{SRC}/{grp}/{field}"]
                    assert ds.dtype == want.dtype[field] and np.array_equal(ds[()], want[field]), (p.name, field)
                    assert ds.compression == compression and ds.chunks == (256,)
    assert seen == [t["tid"] for t in trains]
    run = RunDirectory(str(tmp_path / "block"))
    assert run.train_ids == seen
    assert run[SRC].data_counts(index_group="data").tolist() == [t["hits"].size for t in trains]


def test_flush_puts_a_partial_chunk_in_the_file_and_later_rows_complete_it(tmp_path):
    trains = make_trains(6)
    w = writer(tmp_path, "lzf", sequence_max_bytes=1 << 30)
    w.write_train(trains[0]["tid"], trains[0]["ts"], trains[0]["hits"][:100], trains[0]["cents"])
    w.flush()
    shutil.copy(w.files[0], tmp_path / "copy.h5")                 # the file on disk, as it is now
    with h5py.File(tmp_path / "copy.h5", "r") as f:
        assert np.array_equal(f[f"INSTRUMENT/{SRC}/data/toa"][()], trains[0]["hits"]["toa"][:100])
        assert f["INDEX/trainId"][()].tolist() == [trains[0]["tid"]]
    for t in trains[1:]:
        w.write_train(t["tid"], t["ts"], t["hits"], t["cents"])
    w.close()
    want = np.concatenate([trains[0]["hits"][:100]] + [t["hits"] for t in trains[1:]])
    with h5py.File(w.files[0], "r") as f:
        for field in HIT_FIELDS:
            assert np.array_equal(f[f"INSTRUMENT/{SRC}/data/{field}"][()], want[field]), field


def test_write_block_refuses_bad_input_and_keeps_nothing(tmp_path):
    t = make_trains(3)
    hits = np.concatenate([x["hits"] for x in t])
    cols = {f: np.ascontiguousarray(hits[f]) for f in HIT_FIELDS}
    counts = [x["hits"].size for x in t]
    w = writer(tmp_path, "gzip", with_centroids=False)
    good = dict(train_ids=[5, 6, 7], timestamps_ns=[T_NS] * 3, flags=[1, 1, 0], hits=cols, hit_counts=counts)
    bad_cases = [
        (TrainOrderError, dict(train_ids=[5, 5, 7])),
        (TrainOrderError, dict(train_ids=[0, 6, 7])),
        (ExdfValueError, dict(flags=[1, 2, 1])),
        (ExdfValueError, dict(hit_counts=[counts[0], counts[1], counts[2] + 1])),
        (ExdfValueError, dict(hit_counts=[1, 2])),
        (ExdfDtypeError, dict(hits={**cols, "x": cols["x"].astype(np.int64)})),
        (ExdfValueError, dict(hits={f: c for f, c in cols.items() if f != "tof"})),
        (ExdfValueError, dict(centroids={}, centroid_counts=[0, 0, 0])),       # no centroids group
        (ConfigError, dict(control={"nope": [1, 2, 3]})),
        (ConfigError, dict(control={"trigger.counter": [1, 2]})),
        (ConfigError, dict(control={"trigger.counter": [1.5, 2, 3]})),
        (ConfigError, dict(control={"mode": [1, 2, 3]})),
    ]
    for exc, change in bad_cases:
        with pytest.raises(exc):
            w.write_block(**{**good, **change})
    assert w.counters["trains"] == 0 and not w.files
    w.write_block(**good, control={"trigger.counter": np.array([1, 2, 3], np.uint8)})
    with pytest.raises(TrainOrderError):
        w.write_block(**good)                                  # IDs not above the last one
    w.close()
    with h5py.File(w.files[0], "r") as f:
        assert f["INDEX/trainId"][()].tolist() == [5, 6, 7] and f["INDEX/flag"][()].tolist() == [1, 1, 0]
        assert f[f"CONTROL/{CTRL}/trigger/counter/value"][()].tolist() == [1, 2, 3]
        assert np.array_equal(f[f"INSTRUMENT/{SRC}/data/toa"][()], hits["toa"])


# ---------------------------------------------------------------------------- the offline layout
def layout_input():
    """Triggers (two pairs inside one 100 ms period: one train ID each) and events and
    centroids per trigger, some records out of trigger order, a merged train whose joined
    records are out of time order, and records of a trigger that does not exist."""
    times = np.array([0, 1, 2, 2.3, 3, 5, 6, 6.4, 7, 8, 9]) * PERIOD + 1_000_000
    tdcs = np.zeros(times.size, TDC_DTYPE)
    tdcs["kind"], tdcs["tdc"], tdcs["rising"] = TDC1_RISING, 1, 1
    tdcs["counter"] = np.arange(times.size) * 2 + 100
    tdcs["time"] = times.astype(np.int64)
    rng = np.random.default_rng(5)
    ev, cen = [], []
    for i, (c, t) in enumerate(zip(tdcs["counter"], tdcs["time"])):
        n = 0 if i == 4 else 20 + 3 * i
        e = np.zeros(n, EVENT_DTYPE)
        e["event"], e["x"], e["tot"] = c, rng.integers(0, 256, n), rng.integers(0, 500, n)
        e["toa"] = t + np.sort(rng.integers(0, 10**6, n))
        if i == 7:
            e["toa"] -= PERIOD // 2                 # before trigger 6's records: the merged train is re-sorted
        e["tof"] = e["toa"] - t
        ev.append(e)
        m = i % 3
        k = np.zeros(m, CENTROID_DTYPE)
        k["event"], k["toa_first"], k["x"], k["size"] = c, t + np.arange(m) * 10, rng.random(m), m + 1
        cen.append(k)
    stray = np.zeros(2, EVENT_DTYPE)
    stray["event"], stray["toa"] = 103, times[1] + 5            # counter 103: no such trigger
    return tdcs, ev, cen, stray


def expected_trains(tdcs, ev, cen):
    """Train ID -> (first trigger, flags, hits, centroids) from an independent train-ID assignment:
    records of the train's triggers in trigger order, stably sorted by time (hits toa, centroids
    toa_first)."""
    decided = TrainIdAssigner(CountingTrainIdSource(500), keep=1 << 20).feed(tdcs)
    trains = {}
    for d, e, k in zip(decided, ev, cen):
        tid = int(d["train_id"])
        t = trains.setdefault(tid, dict(counter=int(d["counter"]), time=int(d["time"]), flags=0, hits=[], cents=[]))
        t["flags"] |= int(d["flags"])
        t["hits"].append(e)
        t["cents"].append(k)
    for t in trains.values():
        h, c = np.concatenate(t["hits"]), np.concatenate(t["cents"])
        t["hits"] = h[np.argsort(h["toa"], kind="stable")]
        t["cents"] = c[np.argsort(c["toa_first"], kind="stable")]
    return trains


@pytest.mark.parametrize("workers", [1, 2])
def test_layout_assembles_trains_from_any_cut_of_the_stream(tmp_path, workers):
    tdcs, ev, cen, stray = layout_input()
    want = expected_trains(tdcs, ev, cen)
    assert len(want) == 9 and sum(t["flags"] & SUSPECT != 0 for t in want.values()) == 2

    options = ProcessOptions(layout="exdf", train_id_start=500, centroid=True, workers=workers).to_dict()
    options["chip"] = 0
    pool = ThreadPoolExecutor(2) if workers > 1 else None
    out = tmp_path / "run"
    out.mkdir()
    w = ExdfWriter(str(out), sources=[{"header": {}, "start_time_ns": T_NS}], options=options,
                   compression="lzf", executor=pool)
    w.write_tdcs(tdcs)
    # segments: events as columns and as records; a segment whose records are not in trigger
    # order (triggers 6 and 5 swapped); segment ends between the two triggers of one train
    segments = [([0, 1], int(tdcs["time"][2])), ([2], int(tdcs["time"][3])), ([3, 4], int(tdcs["time"][5])),
                ([6, 5], int(tdcs["time"][7]) + 1), ([7, 8, 9], int(tdcs["time"][10])), ([10], None)]
    for idx, t_hi in segments:
        e = np.concatenate([ev[i] for i in idx])
        if idx == [0, 1]:
            e = np.concatenate([e, stray])              # records of no trigger, after trigger 1's
            w.write_events(ExdfWriter.prepare_events(EventColumns.from_records(e)))
        else:
            w.write_events(e)
        w.write_centroids(ExdfWriter.prepare_centroids(np.concatenate([cen[i] for i in idx])))
        w.segment_done(t_hi)
    counters = {}
    w.close(counters)
    if pool:
        pool.shutdown()
    ex = counters["exdf"]
    assert ex["trains_written"] == 9 and ex["trains_merged"] == 2 and ex["suspect_trains"] == 2
    assert ex["events_without_train"] == 2 and ex["centroids_without_train"] == 0
    assert ex["hits_written"] == sum(e.size for e in ev)

    (path,) = out.glob("*.h5")
    with h5py.File(path, "r") as f:
        tids = f["INDEX/trainId"][()].tolist()
        assert tids == sorted(want)
        assert f["INDEX/flag"][()].tolist() == [int(want[t]["flags"] & SUSPECT == 0) for t in tids]
        assert f[f"CONTROL/{CTRL}/trigger/counter/value"][()].tolist() == [want[t]["counter"] for t in tids]
        assert f[f"CONTROL/{CTRL}/trigger/flags/value"][()].tolist() == [want[t]["flags"] for t in tids]
        t0 = np.array([want[t]["time"] for t in tids])
        assert f["INDEX/timestamp"][()].tolist() == (T_NS + (t0 // 4096) * 25 + ((t0 % 4096) * 25 + 2048) // 4096
                                                     ).tolist()
        for grp, key, fields in (("data", "hits", HIT_FIELDS), ("centroids", "cents", CENTROID_FIELDS)):
            assert f[f"INDEX/{SRC}/{grp}/count"][()].tolist() == [want[t][key].size for t in tids]
            rows = np.concatenate([want[t][key] for t in tids])
            for field in fields:
                assert np.array_equal(f[f"INSTRUMENT/{SRC}/{grp}/{field}"][()], rows[field]), (grp, field)
