"""ExdfSink: trains written to a European XFEL run directory as they complete, read back by the
real EXtra-data and checked by the real extra-data-validate; the same trains over the bridge."""
from __future__ import annotations

import functools
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from extra_data import RunDirectory, by_id

from karabo_bridge import Client  # noqa: E402
from simulators.physics import HitGenerator, PhysicsModel  # noqa: E402
from tpx3lib.dtypes import EVENT_DTYPE, TDC_DTYPE  # noqa: E402
from tpx3lib.exdf import RunExistsError  # noqa: E402
from tpx3lib.pipeline import ChipProcessor, ProcessedChunk, ProcessingConfig  # noqa: E402
from tpx3lib.pipeline.bridge_sink import KaraboBridgeSink  # noqa: E402
from tpx3lib.pipeline.exdf_sink import ExdfSink, settings_from_info  # noqa: E402
from tpx3lib.pipeline.trains import FILE_KEYS, TRIGGER_CONTROL_KEYS, TrainAssembler  # noqa: E402
from tpx3lib.trainid import DUPLICATE, TRIGGER_TRAIN_DTYPE, CountingTrainIdSource, TrainIdAssigner  # noqa: E402

TICKS = 40_000_000
WINDOW = (0.0, 1e-3)
PERIOD = 0.01
START_ID = 1_300_000_000
SRC = "TPX3/CAM/1:daqOutput"
CTRL = "TPX3/CAM/1"
ORIGIN = 1_700_000_000.0            # host time of board time 0 (gives trains timestamps)


@functools.lru_cache(maxsize=None)
def stream(n_chips=2, seconds=0.3, seed=13, with_ids=True):
    gen = HitGenerator(PhysicsModel(hit_rate_hz=3000.0, trigger_rate_hz=1 / PERIOD, seed=seed), n_chips=n_chips)
    edges = np.linspace(0, int(seconds * TICKS), 7).astype(np.int64)
    cfgs = {c: ProcessingConfig(chip=c, event_window_s=WINDOW, products=("events", "centroids"))
            for c in range(n_chips)}
    procs = {c: ChipProcessor(cfg, train_ids=TrainIdAssigner(CountingTrainIdSource(
        START_ID, period_s=PERIOD, grid_tolerance_s=PERIOD / 10, board_time_origin=ORIGIN)) if with_ids else None)
        for c, cfg in cfgs.items()}
    chunks = []
    for a, b in zip(edges[:-1], edges[1:]):
        words = gen.generate(int(a), int(b)).words
        for c in range(n_chips):
            chunks.append(procs[c].feed(words[c]))
    chunks += [procs[c].flush() for c in range(n_chips)]
    info = {"chips": list(range(n_chips)), "products": ("events", "centroids"),
            "config": {c: cfg.to_dict() for c, cfg in cfgs.items()}, "start_time_ns": 1_700_000_000_000_000_000,
            "event_window_s": WINDOW, "settings": {"bias_voltage": 50.0}}
    return info, tuple(chunks)


def expected_trains(**kw):
    info, chunks = stream(**kw)
    out = []
    asm = TrainAssembler.from_info(info, out.append, **({} if kw.get("with_ids", True)
                                                         else {"wait_for_train_ids": False}))
    for ch in chunks:
        asm.add(ch)
    asm.flush()
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A run written by ExdfSink while KaraboBridgeSink published the same chunks."""
    run_dir = tmp_path_factory.mktemp("exdf_sink") / "r0007"
    info, chunks = stream()
    n = len(expected_trains())
    got, errors = [], []
    exdf = ExdfSink(run_dir, 7, proposal=900001, units={"bias_voltage": "V"}, sequence_max_bytes=40_000)
    with KaraboBridgeSink("tcp://127.0.0.1:0", sock="PUSH", source=SRC, when_full="block") as bridge:
        def receive():
            try:
                with Client(bridge.endpoint, sock="PULL", timeout=20) as client:
                    for _ in range(n):
                        got.append(client.next())
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        th = threading.Thread(target=receive)
        th.start()
        for sink in (exdf, bridge):
            sink.start(info)
        for ch in chunks:
            exdf.on_chunk(ch)
            bridge.on_chunk(ch)
        exdf.stop()
        bridge.stop()
        th.join(60)
    assert not errors, errors
    return run_dir, got, exdf.counters()


def test_run_opens_and_holds_every_train(written):
    run_dir, _, counters = written
    expected = expected_trains()
    run = RunDirectory(str(run_dir))
    assert list(run.train_ids) == [t.train_id for t in expected]
    assert list(run.train_ids) == list(range(START_ID, START_ID + len(expected)))
    assert len(sorted(run_dir.glob("RAW-R0007-TPX01-S*.h5"))) >= 2          # several sequence files
    counts = run[SRC].data_counts(index_group="data")
    assert counts.values.tolist() == [t.n_hits for t in expected]
    ccounts = run[SRC].data_counts(index_group="centroids")
    assert ccounts.values.tolist() == [t.n_centroids for t in expected]
    assert counters["trains_written"] == len(expected) and counters["hits_written"] == sum(t.n_hits for t in expected)
    assert counters["hits_not_written"] == counters["trains_without_id"] == counters["trains_dropped"] == 0
    # every hit of the run with its train
    all_x = np.concatenate([t.hits["x"] for t in expected])
    np.testing.assert_array_equal(run[SRC, "data.x"].ndarray(), all_x)
    # timestamps from the train-ID source (board time origin + trigger time)
    ts = run.train_timestamps()
    exp_ts = np.array([t.timestamp_ns for t in expected], "datetime64[ns]")
    np.testing.assert_array_equal(ts, exp_ts)
    assert all(t.timestamp_ns > 0 for t in expected)


def test_extra_data_validate_is_clean(written):
    run_dir = written[0]
    exe = Path(sys.executable).with_name("extra-data-validate")
    res = subprocess.run([str(exe), str(run_dir)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "No problems found" in res.stdout


def test_a_train_read_with_extra_data_equals_the_train_received_over_the_bridge(written):
    run_dir, got, _ = written
    run = RunDirectory(str(run_dir))
    by_tid = {m[SRC]["timestamp.tid"]: d for d, m in got}
    assert sorted(by_tid) == list(run.train_ids)
    busiest = max(got, key=lambda dm: dm[0][SRC]["data.nHits"])[1][SRC]["timestamp.tid"]
    for tid in (run.train_ids[0], busiest, run.train_ids[-1]):
        _, fdata = run.select(SRC, "*").train_from_id(tid)
        bdata = by_tid[tid][SRC]
        for bkey, fkey in FILE_KEYS.items():
            if bdata[bkey].size:
                np.testing.assert_array_equal(fdata[SRC][fkey], bdata[bkey], err_msg=f"{tid} {fkey}")
            else:
                assert fkey not in fdata[SRC] or fdata[SRC][fkey].size == 0
        # per-train trigger values as control data
        for attr, key in TRIGGER_CONTROL_KEYS.items():
            v = run[CTRL, f"{key}.value"].select_trains(by_id[[tid]]).ndarray()
            msg_key = {"trigger": "data.trigger", "trigger_time": "data.triggerTime", "flags": "data.trainFlags",
                       "chips_triggered": "data.nChipsTriggered"}[attr]
            assert v.tolist() == [bdata[msg_key]]


def test_run_settings_come_from_the_pipeline_info(written):
    run = RunDirectory(str(written[0]))
    assert run.get_run_value(CTRL, "bias_voltage") == 50.0
    assert run[CTRL, "bias_voltage.value"].units == "V"
    assert run.get_run_value(CTRL, "chip1.orientation") == "up"
    assert run.get_run_value(CTRL, "products") == "events,centroids"
    np.testing.assert_array_equal(run.get_run_value(CTRL, "chip0.event_window_s"), [0.0, 1e-3])
    first = expected_trains()[0]
    assert run.get_run_value(CTRL, "trigger.counter") == first.trigger


def test_settings_from_info_leaves_out_what_a_file_cannot_hold():
    s = settings_from_info({"chips": [0], "products": ("events",), "config": {0: {"longtime": None,
                            "offset": (0, 256), "cluster": {"radius": 1, "method": "components"}}}})
    assert s == {"chips": [0], "products": "events", "chip0.offset": [0, 256], "chip0.cluster.radius": 1,
                 "chip0.cluster.method": "components"}


def test_trains_without_train_id_are_counted_not_written(tmp_path):
    info, chunks = stream(n_chips=1, with_ids=False)
    sink = ExdfSink(tmp_path / "r1", 1, assembler_options={"wait_for_train_ids": False})
    sink.start(info)
    for ch in chunks:
        sink.on_chunk(ch)
    sink.stop()
    c = sink.counters()
    expected = expected_trains(n_chips=1, with_ids=False)
    assert c["trains_written"] == 0 and c["trains_without_id"] == len(expected) > 0
    assert c["hits_not_written"] == sum(t.n_hits for t in expected) > 0
    assert list((tmp_path / "r1").glob("*.h5")) == []


def _chunk(chip, triggers, events, until, decided):
    ch = ProcessedChunk.empty(chip)
    t = np.zeros(len(triggers), TDC_DTYPE)
    t["tdc"], t["rising"], t["chip"] = 1, 1, chip
    t["counter"], t["time"] = np.array(triggers).T
    ev = np.zeros(len(events), EVENT_DTYPE)
    ev["event"], ev["toa"] = np.array(events).T
    d = np.zeros(len(decided), TRIGGER_TRAIN_DTYPE)
    d["counter"], d["time"], d["train_id"], d["flags"] = np.array(decided).T
    d["host_time"] = np.nan
    ch.triggers, ch.events, ch.trains, ch.complete_until = t, ev, d, until
    return ch


def test_duplicate_triggers_are_merged_into_one_train_and_empty_trains_written(tmp_path):
    info = {"chips": [0], "products": ("events",), "event_window_s": WINDOW,
            "config": {0: ProcessingConfig(event_window_s=WINDOW).to_dict()}}
    sink = ExdfSink(tmp_path / "r2", 2)
    sink.start(info)
    step = 10**9
    sink.on_chunk(_chunk(0, triggers=[(1, step), (2, 2 * step), (3, 3 * step), (4, 4 * step)],
                         events=[(1, step + 5), (2, 2 * step + 7), (2, 2 * step + 8), (4, 4 * step + 1)],
                         until=np.iinfo(np.int64).max,
                         decided=[(1, step, 100, 0), (2, 2 * step, 100, DUPLICATE), (3, 3 * step, 101, 0),
                                  (4, 4 * step, 102, 0)]))
    sink.stop()
    c = sink.counters()
    assert c["trains_merged"] == 1 and c["trains_written"] == 3
    run = RunDirectory(str(tmp_path / "r2"))
    assert list(run.train_ids) == [100, 101, 102]
    assert run[SRC].data_counts(index_group="data").values.tolist() == [3, 0, 1]
    assert run[SRC, "data.event"].ndarray().tolist() == [1, 2, 2, 4]
    assert run[CTRL, "trigger.flags.value"].ndarray().tolist() == [DUPLICATE, 0, 0]
    assert (run[SRC, "data.x"].select_trains(by_id[[101]]).ndarray()).size == 0
    # flag 0 for the suspect (DUPLICATE) train
    assert RunDirectory(str(tmp_path / "r2"), inc_suspect_trains=False).train_ids == [101, 102]


def test_an_existing_run_is_refused_at_start(written):
    sink = ExdfSink(written[0], 7)
    with pytest.raises(RunExistsError):
        sink.start(stream()[0])
