"""``tpx3 serve``: a raw recording and the run written from it replay as the same Karabo Bridge
trains, read by karabo_bridge.Client over tcp://127.0.0.1; pacing checked with a fake clock."""
from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from karabo_bridge import Client
from simulators.files import write_simulated_file
from simulators.physics import PhysicsModel
from tpx3lib.cli import main
from tpx3lib.dtypes import EVENT_DTYPE, CENTROID_DTYPE, TOA_UNIT_S
from tpx3lib.pipeline.exdf_sink import ExdfSink
from tpx3lib.pipeline.trains import Train, train_from_message
from tpx3lib.replay import RawProcessing, RawTrains, RunTrains, open_trains, processed_chunks, replay

PERIOD = 0.01
START_ID = 2_000_000
SRC = "TPX3/CAM/1:daqOutput"
OPTS = RawProcessing(start_id=START_ID, period_s=PERIOD)
RAW_ARGS = ["--start-id", str(START_ID), "--period", str(PERIOD)]


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """A two-chip .tpx3 recording, the trains it gives and a run written from it by ExdfSink."""
    d = tmp_path_factory.mktemp("serve")
    raw = d / "two_chips.tpx3"
    write_simulated_file(raw, 15_000, fmt="tpx3", n_chips=2, seed=4, truth_path=d / "truth.npz",
                         model=PhysicsModel(hit_rate_hz=3000.0, trigger_rate_hz=1 / PERIOD))
    trains = list(RawTrains(raw, OPTS))
    info, chunks = processed_chunks(raw, OPTS)
    sink = ExdfSink(d / "r0003", 3)
    sink.start(info)
    for ch in chunks:
        sink.on_chunk(ch)
    sink.stop()
    return raw, d / "r0003", trains


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(argv, n, sock="REQ"):
    """Run ``tpx3 serve`` in a thread and receive ``n`` trains; (exit code, [(data, meta)])."""
    port = free_port()
    rc = []
    th = threading.Thread(target=lambda: rc.append(main(["serve", *argv, "--endpoint", f"tcp://127.0.0.1:{port}"])))
    th.start()
    got = []
    try:
        with Client(f"tcp://127.0.0.1:{port}", sock=sock, timeout=30) as client:
            for _ in range(n):
                got.append(client.next())
    finally:
        th.join(60)
    return rc[0], got


def test_raw_trains_are_the_recordings_triggers(recording):
    raw, _, trains = recording
    trig = np.load(raw.parent / "truth.npz")["triggers"]
    trig = trig[(trig["tdc"] == 1) & (trig["rising"] == 1)]
    chip0 = trig[trig["chip"] == 0]["counter"].tolist()
    assert len(trains) == len(chip0) >= 30
    assert [t.trigger for t in trains] == chip0
    assert [t.train_id for t in trains] == list(range(START_ID, START_ID + len(trains)))
    # the file holds a fixed number of hits, so one chip's recording may end a little earlier
    both = set(chip0) & set(trig[trig["chip"] == 1]["counter"].tolist())
    assert [t.chips_triggered for t in trains] == [2 if t.trigger in both else 1 for t in trains]
    assert sum(t.n_hits for t in trains) > 10_000 and sum(t.n_centroids for t in trains) > 1000


def test_serve_raw_file_and_its_run_give_the_same_trains(recording):
    raw, run_dir, trains = recording
    n = len(trains)
    rc1, from_raw = serve([str(raw), "--rate", "0", "--trains", str(n), *RAW_ARGS], n)
    rc2, from_run = serve([str(run_dir), "--rate", "0", "--trains", str(n)], n)
    assert rc1 == rc2 == 0
    for (d1, m1), (d2, m2), exp in zip(from_raw, from_run, trains):
        a, b = train_from_message(d1, m1, SRC), train_from_message(d2, m2, SRC)
        assert a.same_data(exp, timestamp=False), (a, exp)
        assert b.same_data(exp, timestamp=False), (b, exp)
        assert sorted(d1[SRC]) == sorted(d2[SRC])                 # one layout, live or replayed


def test_run_trains_equal_the_raw_trains(recording):
    _, run_dir, trains = recording
    back = list(RunTrains(run_dir))
    assert len(back) == len(trains)
    assert all(a.same_data(b) for a, b in zip(trains, back))
    assert [t.index for t in back] == list(range(len(back)))
    assert isinstance(open_trains(run_dir), RunTrains)
    assert isinstance(open_trains(run_dir / "RAW-R0003-TPX01-S00000.h5"), RunTrains)


def test_native_recording_gives_its_header_start_id(tmp_path):
    from simulators.physics import HitGenerator
    from tpx3lib.files import make_header, open_raw
    gen = HitGenerator(PhysicsModel(hit_rate_hz=2000.0, trigger_rate_hz=1 / PERIOD, seed=8))
    path = tmp_path / "native.raw"
    header = make_header(chips=[{"index": 0}], trigger={"first_train_id": 7_000_000})
    with open_raw(path, "wb", header=header) as w:
        for a in range(0, 4_000_000, 1_000_000):                 # 0.1 s of board time in 4 pieces
            w.write_chunk(0, gen.generate(a, a + 1_000_000).words[0])
    trains = list(RawTrains(path, period_s=PERIOD))
    assert len(trains) >= 8
    assert [t.train_id for t in trains] == list(range(7_000_000, 7_000_000 + len(trains)))
    assert [t.train_id for t in RawTrains(path, start_id=5, period_s=PERIOD)][:2] == [5, 6]


def test_runs_without_trigger_keys_give_the_trigger_of_the_hits(tmp_path):
    from tpx3lib.exdf import ExdfRunWriter
    hits = np.zeros(3, EVENT_DTYPE)
    hits["event"], hits["toa"], hits["tof"], hits["x"] = 17, [1000, 1500, 1800], [100, 600, 900], [1, 2, 3]
    with ExdfRunWriter(tmp_path / "r9", 9) as w:          # no per-train control keys
        w.write_train(500, 1_700_000_000_000_000_000, hits, None)
        w.write_train(501, 0, np.empty(0, EVENT_DTYPE), None)
    a, b = list(RunTrains(tmp_path / "r9"))
    assert (a.train_id, a.trigger, a.trigger_time, a.n_hits, a.n_centroids) == (500, 17, 900, 3, 0)
    assert a.timestamp_ns == 1_700_000_000_000_000_000 and a.hits["x"].tolist() == [1, 2, 3]
    assert np.all(a.hits["train_id"] == 500)
    assert (b.train_id, b.trigger, b.trigger_time, b.n_hits) == (501, 0, 0, 0)


def test_loop_keeps_train_ids_increasing_over_push(recording):
    _, run_dir, trains = recording
    n = len(trains)
    rc, got = serve([str(run_dir), "--rate", "0", "--loop", "--trains", str(n + 3), "--sock", "PUSH"], n + 3,
                    sock="PULL")
    assert rc == 0
    tids = [m[SRC]["timestamp.tid"] for _, m in got]
    assert tids == list(range(START_ID, START_ID + n + 3))
    second = train_from_message(*got[n], SRC)
    assert second.trigger == trains[0].trigger and np.array_equal(second.hits["x"], trains[0].hits["x"])
    assert np.all(second.hits["train_id"] == START_ID + n)


def test_serve_errors_are_messages(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing.raw")]) == 1
    assert "nothing.raw" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--endpoint", "tcp://127.0.0.1:0"]) == 1      # no run files here


# ----------------------------------------------------------------------------- pacing (fake clock)
class FakeSender:
    def __init__(self, clock):
        self.clock, self.sent = clock, []

    def send(self, data, metadata=None, timeout=None):
        self.sent.append((self.clock.now, metadata))


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def fake_trains(times_units, tids):
    return [Train(tid, k, t, 0, np.empty(0, EVENT_DTYPE), np.empty(0, CENTROID_DTYPE))
            for k, (t, tid) in enumerate(zip(times_units, tids))]


def test_original_pace_follows_the_trigger_times():
    clock = FakeClock()
    sender = FakeSender(clock)
    times_s = [5.0, 5.1, 5.2, 5.45, 5.55]
    trains = fake_trains([int(round(t / TOA_UNIT_S)) for t in times_s], range(10, 15))
    stats = replay(trains, sender, clock=clock, sleep=clock.sleep)
    sent_at = [t - 100.0 for t, _ in sender.sent]
    np.testing.assert_allclose(sent_at, [t - 5.0 for t in times_s], atol=1e-6)
    assert stats.trains_sent == 5 and stats.stopped_by == "end"


def test_fixed_rate_and_loop_with_a_fake_clock():
    clock = FakeClock()
    sender = FakeSender(clock)
    trains = fake_trains([1, 2, 3], [7, 8, 9])
    stats = replay(trains, sender, rate=4.0, loop=True, max_trains=7, clock=clock, sleep=clock.sleep)
    sent_at = [t - 100.0 for t, _ in sender.sent]
    np.testing.assert_allclose(sent_at, [k / 4.0 for k in range(7)], atol=1e-6)
    assert [m[SRC]["timestamp.tid"] for _, m in sender.sent] == [7, 8, 9, 10, 11, 12, 13]
    assert stats.passes == 3 and stats.stopped_by == "max_trains"


def test_rate_must_be_sensible():
    from tpx3lib.errors import ConfigError
    with pytest.raises(ConfigError):
        replay([], FakeSender(FakeClock()), rate=-1)
