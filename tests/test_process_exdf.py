"""``tpx3 process --layout exdf``: a European XFEL run directory checked by the real EXtra-data and
extra-data-validate, hits per train against the simulator's truth, workers giving identical files,
settings from the raw header, sequence files, and bad output/options refused cleanly."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from extra_data import RunDirectory

import tpx3lib  # noqa: E402
from simulators.files import write_simulated_file  # noqa: E402
from tpx3lib.cli import main  # noqa: E402
from tpx3lib.dtypes import TOA_UNIT_S  # noqa: E402
from tpx3lib.errors import ConfigError  # noqa: E402
from tpx3lib.process import ProcessOptions, process_files  # noqa: E402
from h5_helpers import run_datasets

SRC, CTRL = "TPX3/CAM/1:daqOutput", "TPX3/CAM/1"
START_ID = 1_300_000_000
STAMP = 1_700_000_000_000_000_000
SMALL = ["--segment-words", "32768", "--margin-words", "4096"]      # many segments on a small file


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A simulator-written pymepix file (about 8 s of 10 Hz triggers) and its truth."""
    d = tmp_path_factory.mktemp("exdf_sim")
    info = write_simulated_file(d / "sim.raw", 400_000, fmt="pymepix", seed=11, truth_path=d / "truth.npz",
                                stamp_ns=STAMP)
    truth = np.load(d / "truth.npz")
    return d / "sim.raw", {k: truth[k] for k in ("hits", "triggers")}, info


def _expected_trains(truth, window_s=(0.0, 1e-3), start=START_ID):
    """Train ID -> number of hits, from the generator's truth alone: each TDC1 rising edge is a
    train (ID counted at 10 Hz from ``start``), each hit belongs to the latest trigger at or
    before it, kept if its time of flight is in the (inclusive) window."""
    trig = truth["triggers"]
    trig = trig[(trig["tdc"] == 1) & (trig["rising"] == 1)]
    trig = trig[np.argsort(trig["time"], kind="stable")]
    period = 0.1 / TOA_UNIT_S
    ids = start + np.round((trig["time"] - trig["time"][0]) / period).astype(np.int64)
    hits = truth["hits"]
    hits = hits[hits["event"] >= 0]
    t_of = dict(zip(trig["counter"].tolist(), trig["time"].tolist()))
    tof = hits["toa"] - np.array([t_of[c] for c in hits["event"].tolist()], np.int64)
    if window_s is not None:
        lo, hi = (int(round(v / TOA_UNIT_S)) for v in window_s)
        hits = hits[(tof >= lo) & (tof <= hi)]
    id_of = dict(zip(trig["counter"].tolist(), ids.tolist()))
    counts = dict.fromkeys(ids.tolist(), 0)
    for c, n in zip(*np.unique(hits["event"], return_counts=True)):
        counts[id_of[int(c)]] += int(n)
    return counts, trig, ids


def _validate(run_dir):
    res = subprocess.run([os.path.join(os.path.dirname(sys.executable), "extra-data-validate"), str(run_dir)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "No problems found" in res.stdout, res.stdout + res.stderr


@pytest.fixture(scope="module")
def runs(sim, tmp_path_factory):
    path = sim[0]
    d = tmp_path_factory.mktemp("exdf_runs")
    out = {}
    for w in (1, 2):
        out[w] = d / f"r{w}"
        assert main(["process", str(path), "-o", str(out[w]), "--layout", "exdf", "--run", "42",
                     "--train-id-start", str(START_ID), "--workers", str(w), "--no-progress", *SMALL]) == 0
    return out


def test_run_opens_validates_and_matches_the_truth(runs, sim):
    _, truth, _ = sim
    run_dir = runs[1]
    assert sorted(p.name for p in run_dir.iterdir()) == ["RAW-R0042-TPX01-S00000.h5"]
    _validate(run_dir)
    run = RunDirectory(str(run_dir))
    want, trig, ids = _expected_trains(truth)
    assert len(want) > 50
    assert run.train_ids == sorted(want)
    counts = run[SRC].data_counts(index_group="data")
    assert dict(zip(counts.index.tolist(), counts.tolist())) == want
    # the hits themselves: train by train, the truth's pixels and times
    hits = truth["hits"]
    x = run[SRC, "data.x"].ndarray()
    tids = run[SRC, "data.x"].train_id_coordinates()
    toa = run[SRC, "data.toa"].ndarray()
    tof = run[SRC, "data.tof"].ndarray()
    ev = run[SRC, "data.event"].ndarray()
    k = len(want) // 2
    tid, counter, t0 = int(ids[k]), int(trig["counter"][k]), int(trig["time"][k])
    sel = tids == tid
    h = hits[hits["event"] == counter]
    h = h[(h["toa"] - t0 >= 0) & (h["toa"] - t0 <= int(round(1e-3 / TOA_UNIT_S)))]
    assert sorted(zip(x[sel].tolist(), toa[sel].tolist())) == sorted(zip(h["x"].tolist(), h["toa"].tolist()))
    assert np.all(tof[sel] == toa[sel] - t0) and np.all(ev[sel] == counter)
    assert np.all(np.diff(toa[sel]) >= 0)                       # ToA order within a train
    # units and trigger control keys as the live sink writes them
    assert run[SRC, "data.tot"].units == "ns"
    assert run[CTRL, "trigger.counter.value"].ndarray().tolist() == trig["counter"].tolist()
    assert run[CTRL, "trigger.time.value"].ndarray().tolist() == trig["time"].tolist()
    with h5py.File(run_dir / "RAW-R0042-TPX01-S00000.h5", "r") as f:
        stamps = f["INDEX/timestamp"][()]
        flags = f["INDEX/flag"][()]
        about = json.loads(f.attrs["tpx3_process"])
    t = trig["time"]
    assert np.array_equal(stamps, STAMP + (t // 4096) * 25 + ((t % 4096) * 25 + 2048) // 4096)
    assert np.all(flags == 1)
    c = about["counters"]
    assert c["exdf"]["trains_written"] == len(want) and c["exdf"]["hits_written"] == sum(want.values())
    assert c["exdf"]["events_without_train"] == 0
    # every pixel is accounted for: in a train, before the first trigger or outside the window
    n_before = int(np.count_nonzero(hits["event"] < 0))
    assert c["pixels_before_first_trigger"] == n_before
    assert c["pixels"] == hits.size == sum(want.values()) + n_before + c["pixels_outside_event_window"]


def test_workers_give_identical_runs(runs):
    a, b = run_datasets(runs[1]), run_datasets(runs[2])
    assert a.keys() == b.keys() and len(a) > 30
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_no_window_every_hit_after_the_first_trigger(sim, tmp_path):
    path, truth, _ = sim
    out = tmp_path / "r"
    s = process_files(path, out, ProcessOptions(layout="exdf", event_window_s=None, train_id_start=START_ID,
                                                segment_words=32768, margin_words=4096))
    want, _, _ = _expected_trains(truth, window_s=None)
    counts = RunDirectory(str(out))[SRC].data_counts(index_group="data")
    assert dict(zip(counts.index.tolist(), counts.tolist())) == want
    assert s.events == sum(want.values()) == truth["hits"].size - s.counters["pixels_before_first_trigger"]


def test_settings_units_and_sequence_files(sim, tmp_path):
    """A native recording with detector settings in its header: DACs, bias, mode in RUN/CONTROL with
    units; a small sequence size splits the run into files, each train in exactly one."""
    path, truth, _ = sim
    words = np.fromfile(path, "<u8")[1:]
    native = tmp_path / "native.raw"
    dacs = {"Vthreshold_fine": 255, "Vthreshold_coarse": 7, "Ibias_Preamp_ON": 128}
    header = {"chips": [{"index": 0, "name": "W0028_H06", "dacs": dacs, "operation_mode": "ToA+ToT",
                         "id": 1234}], "bias_v": 50.0, "trigger": {"first_train_id": 77_000}}
    with tpx3lib.open_raw(native, "wb", header=header) as w:
        for i in range(0, words.size, 8192):
            w.write_chunk(0, words[i:i + 8192])
    out = tmp_path / "seq"
    assert main(["process", str(native), "-o", str(out), "--layout", "exdf", "--centroid", "--run", "3",
                 "--sequence-size", "400K", "--compression", "lzf", "--no-progress", *SMALL]) == 0
    files = sorted(p.name for p in out.glob("*.h5"))
    assert len(files) >= 3 and files[0] == "RAW-R0003-TPX01-S00000.h5"
    _validate(out)
    run = RunDirectory(str(out))
    want, _, _ = _expected_trains(truth, start=77_000)            # first train ID from the header
    seen = []
    for p in sorted(out.glob("*.h5")):
        with h5py.File(p, "r") as f:
            seen += f["INDEX/trainId"][()].tolist()
            assert f["INSTRUMENT/TPX3/CAM/1:daqOutput/data/x"].compression == "lzf"
    assert seen == sorted(want)                                   # each train exactly once
    counts = run[SRC].data_counts(index_group="data")
    assert dict(zip(counts.index.tolist(), counts.tolist())) == want
    assert run.get_run_value(CTRL, "bias_voltage") == 50.0
    assert run[CTRL, "bias_voltage.value"].units == "V"
    assert run.get_run_value(CTRL, "dac.Vthreshold_fine") == 255
    assert run.get_run_value(CTRL, "mode") == "ToA+ToT" and run.get_run_value(CTRL, "chip_name") == "W0028_H06"
    assert run.get_run_value(CTRL, "processing.event_window_max") == 1e-3
    n_cen = run[SRC].data_counts(index_group="centroids")
    assert n_cen.sum() > 1000 and (n_cen.index == counts.index).all()


@pytest.mark.parametrize("case", ["not_empty", "run_too_big", "run_negative", "is_file", "sequence_numbers",
                                  "swmr", "bad_source"])
def test_bad_output_and_options_are_messages(case, sim, tmp_path, capsys):
    path = sim[0]
    out = tmp_path / "run"
    extra = []
    if case == "not_empty":
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
        want = "not empty"
    elif case == "run_too_big":
        extra, want = ["--run", "10000"], "run number"
    elif case == "run_negative":
        extra, want = ["--run", "-1"], "run number"
    elif case == "is_file":
        out.write_text("keep me")
        want = "not a directory"
    elif case == "sequence_numbers":
        extra, want = ["--trigger-numbers", "sequence"], "trigger counter"
    elif case == "swmr":
        extra, want = ["--swmr"], "SWMR"
    else:
        extra, want = ["--source", "no-colon"], "instrument source"
    assert main(["process", str(path), "-o", str(out), "--layout", "exdf", "--no-progress", *extra]) == 1
    err = capsys.readouterr().err
    assert want in err and "Traceback" not in err, err
    if case == "not_empty":
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    elif case == "is_file":
        assert out.read_text() == "keep me"
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


def test_overwrite_replaces_only_this_runs_files(sim, tmp_path):
    path = sim[0]
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    other = out / "RAW-R0009-TPX01-S00000.h5"
    other.write_bytes(b"another run")
    stale = out / "RAW-R0001-TPX01-S00007.h5"
    stale.write_bytes(b"an old sequence file of run 1")
    with pytest.raises(ConfigError, match="not empty"):
        process_files(path, out, ProcessOptions(layout="exdf"))
    s = process_files(path, out, ProcessOptions(layout="exdf", run=1), overwrite=True)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["RAW-R0001-TPX01-S00000.h5", "RAW-R0009-TPX01-S00000.h5", "notes.txt"]
    assert other.read_bytes() == b"another run" and (out / "notes.txt").read_text() == "keep me"
    assert RunDirectory(str(out), include="*R0001*").train_ids[0] == 1         # default start ID
    assert s.counters["exdf"]["files"] == ["RAW-R0001-TPX01-S00000.h5"]


def test_failure_leaves_nothing_behind(sim, tmp_path, monkeypatch):
    import tpx3lib.process.runner as runner

    def boom(job, cfg):
        raise RuntimeError("worker failed")

    monkeypatch.setattr(runner, "run_segment", boom)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        process_files(sim[0], out, ProcessOptions(layout="exdf"))
    assert list(tmp_path.iterdir()) == []


def test_no_trigger_no_train(tmp_path):
    """A stream without triggers: every hit is counted before the first trigger, no train, no file."""
    from test_process_synth import make_stream
    words, _ = make_stream(50, seed=2)
    hdr = words >> np.uint64(56)
    words = words[(hdr != 0x6F) & (hdr != 0x6A)]
    src = tmp_path / "notrig.raw"
    words.tofile(src)
    out = tmp_path / "run"
    s = process_files(src, out, ProcessOptions(layout="exdf"))
    assert out.is_dir() and list(out.iterdir()) == []
    assert s.counters["pixels_before_first_trigger"] == s.pixels > 0
    assert any("no train" in w for w in s.warnings)
    shutil.rmtree(out)
