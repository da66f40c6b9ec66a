"""The live pipeline over real UDP sockets, against the simulator's truth.

Data come from the simulator's UDP streamer (the same code the simulated SPIDR board
runs) sending to the pipeline's receivers on 127.0.0.1; what the pipeline decodes is
compared with what the generator says it sent.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest

from simulators.clock import BoardClock
from simulators.physics import HitGenerator, PhysicsModel, TofPeak
from simulators.udp_stream import DataFaults, UdpDataStreamer
from tpx3lib.capture import CaptureError
from tpx3lib.files import open_raw
from tpx3lib.messages import MessageRing, MessageType
from tpx3lib.pipeline import ChipProcessor, LivePipeline, PipelineState, ProcessedChunk, ProcessingConfig
from tpx3lib.pipeline.live import PipelineError, recording_paths
from tpx3lib.pipeline.sinks import CallbackSink, Sink
from tpx3lib.trainid import CountingTrainIdSource


@pytest.fixture(autouse=True)
def _loaded_kernels(sim_kernels):
    """These tests stream simulated data: load the generator first (see conftest.sim_kernels)."""

pytestmark = pytest.mark.timeout(300)

RING = {"ring_bytes": 32 << 20}


def model(**kw):
    base = dict(hit_rate_hz=20_000, trigger_rate_hz=200, noise_f0_hz=0, seed=3,
                tof_peaks=(TofPeak(20e-6, 1e-6, 0.6), TofPeak(60e-6, 2e-6, 0.4)))
    base.update(kw)
    return PhysicsModel(**base)


def stream(pipe, seconds, faults=None, n_chips=1, **kw):
    """Send ``seconds`` of simulated data to the pipeline; return the stopped streamer."""
    gen = HitGenerator(model(**kw), n_chips=n_chips)
    st = UdpDataStreamer(gen, BoardClock(), [("127.0.0.1", p) for p in pipe.ports], faults=faults,
                         collect_truth=True)
    st.start()
    time.sleep(seconds)
    st.stop()
    st.close()
    return st


def wait_for_fault(pipe, timeout=10.0):
    deadline = time.monotonic() + timeout
    while pipe.state is not PipelineState.FAULT and time.monotonic() < deadline:
        time.sleep(0.05)


def run_into_fault(pipe):
    """Start, stream until the pipeline reports a FAULT, stop (which returns, leaving FAULT)."""
    pipe.start()
    try:
        stream(pipe, 0.5)
        wait_for_fault(pipe)
    finally:
        pipe.stop()
    assert pipe.state is PipelineState.FAULT


class Collect(Sink):
    """Keeps every chunk's arrays (thread-safe, per chip)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.parts: dict[tuple[int, str], list] = {}
        self.started = self.stopped = 0
        self.raw: dict[int, list] = {}

    def start(self, info):
        self.started += 1
        self.info = info

    def on_raw(self, chip, words, recv_time_ns):
        with self.lock:
            self.raw.setdefault(chip, []).append(words.copy())

    def on_chunk(self, chunk):
        with self.lock:
            for f in ("pixels", "triggers", "events", "centroids"):
                self.parts.setdefault((chunk.chip, f), []).append(getattr(chunk, f))

    def stop(self):
        self.stopped += 1

    def get(self, chip, field):
        return np.concatenate(self.parts[(chip, field)])


def hit_keys(arr, tot="tot"):
    """Sortable (toa, x, y, tot) rows: compares hit sets independent of arrival order."""
    keys = np.stack([arr["toa"].astype(np.int64), arr["x"].astype(np.int64), arr["y"].astype(np.int64),
                     arr[tot].astype(np.int64)], axis=1)
    return keys[np.lexsort(keys.T[::-1])]


def test_moderate_rate_loses_nothing_two_chips():
    sink = Collect()
    pipe = LivePipeline(chips=[0, 1], ports=[0, 0], processing=ProcessingConfig(products=("events",)),
                        sinks=[sink], capture_options=RING)
    pipe.start()
    try:
        st = stream(pipe, 1.5, n_chips=2)
        sent = [c.datagrams for c in st.counters]
    finally:
        summary = pipe.stop()
    truth = st.truth()
    assert pipe.state is PipelineState.IDLE and sink.started == sink.stopped == 1
    for chip in (0, 1):
        t = truth.for_chip(chip)
        assert len(t.hits) > 10_000
        c = summary["chips"][chip]
        # generator truth == received == decoded, datagram for datagram and hit for hit
        assert c["capture"]["datagrams"] == sent[chip] == c["processed"]["datagrams"]
        assert c["capture"]["kernel_drops"] == 0 and c["capture"]["overruns"] == 0
        px = sink.get(chip, "pixels")
        np.testing.assert_array_equal(hit_keys(px), hit_keys(t.hits))
        trig = sink.get(chip, "triggers")
        np.testing.assert_array_equal(np.sort(trig["time"]), np.sort(t.triggers["time"]))
    assert summary["totals"]["unprocessed_datagrams"] == 0
    assert summary["totals"]["hits"] == len(truth.hits)
    # every truth hit inside its trigger's window (0..1 ms) became an event of that trigger
    ev = sink.get(0, "events")
    t0 = truth.for_chip(0)
    trig = t0.triggers[(t0.triggers["tdc"] == 1) & (t0.triggers["rising"] == 1)]
    hits = t0.hits[t0.hits["event"] > 0]
    idx = np.searchsorted(trig["counter"], hits["event"])
    tof = hits["toa"] - trig["time"][idx]
    expected = hits[(tof >= 0) & (tof <= round(1e-3 / (25e-9 / 4096)))]
    assert expected.size > 1000
    np.testing.assert_array_equal(hit_keys(ev), hit_keys(expected))
    stats = pipe.statistics()
    assert stats["hits_total"] == len(truth.hits)
    assert stats["packets_received"] == sum(sent)
    assert pipe.hit_map().sum() == len(truth.hits)


def test_injected_datagram_loss_is_counted_exactly():
    drops = frozenset({2, 5, 9, 17})
    sink = Collect()
    gen_counts = {}
    pipe = LivePipeline(chips=[0], ports=[0], processing=ProcessingConfig(products=("pixels",)),
                        sinks=[sink], capture_options=RING,
                        board_packets=lambda: dict(gen_counts))
    gen_counts[0] = 0
    pipe.start()
    try:
        st = stream(pipe, 1.0, faults=DataFaults(drop_indices=drops))
        gen_counts[0] = st.counters[0].generated_datagrams    # what the board says it sent
    finally:
        summary = pipe.stop()
    truth = st.truth()
    assert st.counters[0].dropped_datagrams == len(drops)
    assert summary["lost_datagrams"] == {0: len(drops)}
    assert summary["totals"]["lost_datagrams"] == len(drops)
    assert pipe.statistics()["packets_lost"] == len(drops)
    # the hits that arrived are exactly the ones the truth says were sent
    sent = truth.hits[truth.hits["sent"] > 0]
    assert 0 < sent.size < truth.hits.size
    np.testing.assert_array_equal(hit_keys(sink.get(0, "pixels")), hit_keys(sent))


@pytest.mark.parametrize("split", [True, False], ids=["split-stages", "one-thread"])
def test_centroids_and_train_ids_reach_the_poll_ring(split):
    ring = MessageRing(100_000)
    trains = []
    pipe = LivePipeline(chips=[0], ports=[0], processing=ProcessingConfig(products=("events", "centroids")),
                        split_stages=split,
                        sinks=[CallbackSink(("centroids", "triggers"), buffer=ring)], capture_options=RING,
                        train_id_source=lambda chip: CountingTrainIdSource(5000, period_s=1 / 200, grid_tolerance_s=1e-3),
                        listener=lambda kind, v: trains.append(v) if kind == "train" else None)
    pipe.start()
    try:
        st = stream(pipe, 1.0)
    finally:
        pipe.stop()
    truth = st.truth()
    n_trig = int(np.count_nonzero((truth.triggers["tdc"] == 1) & (truth.triggers["rising"] == 1)))
    kinds = {}
    while len(ring):
        kind, data = ring.pop()
        kinds.setdefault(kind, []).append(data)
    cen = np.concatenate(kinds[MessageType.CENTROIDS])
    # one centroid per generated cluster inside the windows (clusters may merge or split rarely)
    in_win = truth.clusters[truth.clusters["trigger"] > 0]
    assert abs(cen.size - in_win.size) <= 0.05 * in_win.size
    assert cen["train_id"].min() >= 5000 and cen["train_id"].max() <= 5000 + n_trig
    rising = truth.triggers[(truth.triggers["tdc"] == 1) & (truth.triggers["rising"] == 1)]["counter"]
    expected_tid = 5000 + np.searchsorted(rising, cen["event"])       # the i-th trigger is train 5000 + i
    assert np.isin(cen["event"], rising).all()
    np.testing.assert_array_equal(cen["train_id"], expected_tid)
    # every trigger became a train, announced in order with consecutive IDs
    assert trains == list(range(5000, 5000 + n_trig))
    assert pipe.statistics()["current_train_id"] == 5000 + n_trig - 1


def test_split_stages_deliver_what_one_offline_processor_makes():
    """Clustering in its own thread, small chunks: the same events and centroids, in the same
    order, as one ChipProcessor fed the received words in one piece."""
    sink = Collect()
    cfg = ProcessingConfig(products=("events", "centroids"))
    pipe = LivePipeline(chips=[0], ports=[0], processing=cfg, sinks=[sink], capture_options=RING,
                        split_stages=True, read_bytes=64 << 10)
    pipe.start()
    try:
        stream(pipe, 1.0, hit_rate_hz=100_000)
    finally:
        summary = pipe.stop()
    assert summary["chips"][0]["processed"]["chunks"] > 20        # many hand-overs between the threads
    offline = ChipProcessor(cfg)
    expect = ProcessedChunk.concat([offline.feed(np.concatenate(sink.raw[0])), offline.flush()])
    assert expect.centroids.size > 1000
    np.testing.assert_array_equal(sink.get(0, "events"), expect.events)
    np.testing.assert_array_equal(sink.get(0, "centroids"), expect.centroids)


def test_a_slow_sink_shows_as_backlog_and_loses_nothing():
    class Slow(Sink):
        def on_chunk(self, chunk):
            time.sleep(0.05)

    pipe = LivePipeline(chips=[0], ports=[0], sinks=[Slow()], capture_options=RING, read_bytes=16 << 10)
    pipe.start()
    seen = []
    try:
        gen = HitGenerator(model(hit_rate_hz=100_000), n_chips=1)
        st = UdpDataStreamer(gen, BoardClock(), [("127.0.0.1", pipe.ports[0])], collect_truth=True)
        st.start()
        for _ in range(20):
            time.sleep(0.05)
            seen.append(pipe.statistics()["backlog_datagrams"])
        st.stop()
        st.close()
    finally:
        summary = pipe.stop(timeout=60)
    assert max(seen) > 0, seen                      # visible while processing lags
    assert pipe.statistics()["backlog_datagrams"] == 0
    t = summary["totals"]
    assert t["lost_datagrams"] == t["ring_overruns"] == t["unprocessed_datagrams"] == 0
    assert t["processed_datagrams"] == t["datagrams"] == st.counters[0].datagrams
    assert t["hits"] == len(st.truth().hits)


def test_a_failing_cluster_stage_is_a_fault_naming_it_and_reset_recovers(monkeypatch):
    calls = []
    real = ChipProcessor.cluster_stage

    def cluster_stage(self, part):      # a fault the simulator cannot cause: the stage's own bug
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("cluster kernel exploded")
        return real(self, part)

    monkeypatch.setattr(ChipProcessor, "cluster_stage", cluster_stage)
    before = set(threading.enumerate())
    pipe = LivePipeline(chips=[0], ports=[0], capture_options=RING, split_stages=True, read_bytes=64 << 10)
    run_into_fault(pipe)
    assert pipe.fault_reason == "clustering of chip 0: RuntimeError: cluster kernel exploded"
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not any(n.startswith(("tpx3-process", "tpx3-cluster")) for n in left), left
    monkeypatch.setattr(ChipProcessor, "cluster_stage", real)
    pipe.reset()
    pipe.start()
    try:
        st = stream(pipe, 0.3)
    finally:
        summary = pipe.stop()
    assert pipe.state is PipelineState.IDLE
    assert summary["totals"]["hits"] == len(st.truth().hits)


def _shm_segments():
    """This process's ring segments (names carry the creator's pid: test runs of other
    checkouts on the same machine make their own)."""
    mine = f"tpx3r_{os.getpid()}_"
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(mine)}
    except FileNotFoundError:
        return set()


def test_twenty_start_stop_cycles_leave_nothing_behind():
    me = psutil.Process()
    pipe = LivePipeline(chips=[0, 1], ports=[0, 0], capture_options={"ring_bytes": 4 << 20})
    pipe.start()
    assert _shm_segments()                        # the rings are seen while running
    pipe.stop()                                   # the first run loads numba and the spawn machinery
    children, shm, fds = len(me.children(recursive=True)), _shm_segments(), me.num_fds()
    conns = len(me.net_connections(kind="udp"))
    for i in range(20):
        pipe.start()
        assert len(me.children(recursive=True)) >= children + 2      # two receivers run
        summary = pipe.stop() if i % 2 else pipe.abort()
        assert pipe.state is PipelineState.IDLE, summary
    assert pipe.runs == 21
    assert len(me.children(recursive=True)) == children
    assert _shm_segments() == shm
    assert len(me.net_connections(kind="udp")) == conns
    assert me.num_fds() <= fds + 2


def test_recording_during_a_run_holds_a_contiguous_part_of_the_live_stream(tmp_path):
    sink = Collect()
    pipe = LivePipeline(chips=[0], ports=[0], processing=ProcessingConfig(products=("pixels",)),
                        sinks=[sink, CallbackSink(("raw",), callback=lambda k, d: None)], capture_options=RING)
    pipe.start()
    gen = HitGenerator(model(), n_chips=1)
    st = UdpDataStreamer(gen, BoardClock(), [("127.0.0.1", pipe.ports[0])])
    st.start()
    try:
        time.sleep(0.5)
        path = pipe.start_recording(tmp_path / "part.tpx3raw", header={"user": {"sample": "test"}})
        assert pipe.recording and pipe.recording_path == path
        with pytest.raises(PipelineError):
            pipe.start_recording(tmp_path / "again.tpx3raw")
        time.sleep(0.6)
        rec = pipe.stop_recording()
        assert not pipe.recording
        time.sleep(0.3)
    finally:
        st.stop()
        st.close()
        pipe.stop()
    live = np.concatenate(sink.raw[0])
    with open_raw(path, "rb") as f:
        assert f.header["user"] == {"sample": "test"}
        recorded = np.concatenate([ch.words for ch in f])
    assert rec[0]["error"] is None and recorded.size > 1000
    assert 0 < recorded.size < live.size
    # the file is an exact, contiguous piece of what the live pipeline processed
    start = np.flatnonzero(live == recorded[0])
    assert any(np.array_equal(live[s:s + recorded.size], recorded) for s in start)


def test_recording_that_cannot_open_its_file_raises_and_leaves_the_run_going(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    pipe = LivePipeline(chips=[0], ports=[0], capture_options=RING)
    with pytest.raises(PipelineError):
        pipe.start_recording(tmp_path / "x.raw")            # not running
    pipe.start()
    try:
        with pytest.raises(OSError):
            pipe.start_recording(blocker / "sub" / "x.raw")  # a file where a directory should be
        assert pipe.running and not pipe.recording
    finally:
        pipe.stop()
    assert pipe.state is PipelineState.IDLE


def test_a_killed_receiver_is_a_fault_and_reset_recovers():
    states = []
    pipe = LivePipeline(chips=[0], ports=[0], capture_options=RING,
                        listener=lambda k, v: states.append(v) if k == "state" else None)
    pipe.start()
    pid = pipe._capture.pids[0]
    os.kill(pid, signal.SIGKILL)
    wait_for_fault(pipe)
    assert pipe.state is PipelineState.FAULT
    assert "receiver of chip 0" in pipe.fault_reason and "SIGKILL" in pipe.fault_reason
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    pipe.stop()                                    # returns, stays in FAULT
    with pytest.raises(PipelineError, match="FAULT"):
        pipe.start()
    pipe.reset()
    assert pipe.state is PipelineState.IDLE
    pipe.start()
    pipe.stop()
    assert states == [PipelineState.RUNNING, PipelineState.FAULT, PipelineState.IDLE,
                      PipelineState.RUNNING, PipelineState.IDLE]


def test_a_failing_sink_is_a_fault_naming_it():
    class Broken(Sink):
        def on_chunk(self, chunk):
            if chunk.pixels.size:
                raise ValueError("disk on fire")

    pipe = LivePipeline(chips=[0], ports=[0], sinks=[Broken()], capture_options=RING)
    run_into_fault(pipe)
    assert pipe.fault_reason == "sink Broken: ValueError: disk on fire"


def test_port_in_use_is_a_clear_error_and_nothing_stays_started():
    first = LivePipeline(chips=[0], ports=[0], capture_options=RING)
    first.start()
    try:
        me = psutil.Process()
        before = len(me.children(recursive=True))
        second = LivePipeline(chips=[0], ports=first.ports, capture_options=RING)
        with pytest.raises(CaptureError, match="did not start"):
            second.start()
        assert second.state is PipelineState.IDLE
        assert len(me.children(recursive=True)) == before
    finally:
        first.stop()


def test_bad_arguments_are_refused():
    from tpx3lib.errors import ConfigError
    with pytest.raises(ConfigError):
        LivePipeline(chips=[0, 0])
    with pytest.raises(ConfigError):
        LivePipeline(chips=[0, 1], ports=[1])
    with pytest.raises(ConfigError):
        LivePipeline(chips=[0, 1], processing={0: ProcessingConfig()})
    assert recording_paths("/d/run.raw", [0]) == {0: __import__("pathlib").Path("/d/run.raw")}
    assert str(recording_paths("/d/run.raw", [0, 2])[2]) == "/d/run_chip2.raw"


def test_high_level_api_polls_what_the_live_pipeline_delivers(sim):
    from tpx3lib.api import PollBufferEmpty, Tpx3Connection
    with Tpx3Connection(("127.0.0.1", sim.port), configure=True) as conn:
        pipe = LivePipeline(chips=range(len(conn)), ports=[0] * len(conn), capture_options=RING,
                            processing=ProcessingConfig(products=("pixels", "triggers", "events")))
        conn.attach_pipeline(pipe)
        conn.start()
        assert [conn[c].destination[1] for c in range(len(conn))] == pipe.ports   # told where to send
        time.sleep(0.6)
        conn.stop()
        assert pipe.state is PipelineState.IDLE
        got = {}
        while True:
            try:
                kind, data = conn.poll()
            except PollBufferEmpty:
                break
            got.setdefault(kind, []).append(data)
    assert set(got) >= {MessageType.RAW, MessageType.TRIGGERS}
    trig = np.concatenate(got[MessageType.TRIGGERS])
    assert set(trig["chip"]) == {0, 1}            # both chips' streams arrived and were decoded
    n_rising = int(np.count_nonzero((trig["tdc"] == 1) & (trig["rising"] == 1)))
    assert n_rising == pipe.counters()["totals"]["triggers"] // 2 > 0


def test_disk_full_is_a_clear_recording_error_and_the_run_goes_on():
    """/dev/full fails every write with ENOSPC: a real disk-full, no mock. (A disk that fills
    up mid-recording is tested on the recorder itself, tests/test_capture_recorder.py.)"""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    from tpx3lib.files.exceptions import RawWriteError
    sink = Collect()
    pipe = LivePipeline(chips=[0], ports=[0], sinks=[sink], capture_options=RING,
                        processing=ProcessingConfig(products=("pixels",)))
    pipe.start()
    try:
        with pytest.raises(RawWriteError, match="disk full"):
            pipe.start_recording("/dev/full")
        assert not pipe.recording and pipe.state is PipelineState.RUNNING
        st = stream(pipe, 0.5)
    finally:
        summary = pipe.stop()
    assert pipe.state is PipelineState.IDLE
    assert summary["chips"][0]["capture"]["datagrams"] == st.counters[0].datagrams   # nothing lost
    np.testing.assert_array_equal(hit_keys(sink.get(0, "pixels")), hit_keys(st.truth().hits))
