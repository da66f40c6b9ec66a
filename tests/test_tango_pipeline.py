"""Tpx3Pipeline with the live pipeline, through DeviceProxy, against the simulator's own counts.

A real sqlite Tango database process, a real ``Tpx3Server`` process and the SPIDR simulator
(TCP control, UDP data to the pipeline's receiver processes on 127.0.0.1); the pipeline
publishes on a Karabo Bridge PUSH endpoint that a ``karabo_bridge.Client`` pulls from.
Expectations come from outside the device: the simulator's streamer counters (hits and
datagrams that left its socket), the board's own counters, the Karabo Bridge messages as
received, and ``tpx3 process`` run on the recorded file.
"""
from __future__ import annotations

import json
import threading
import time

import h5py
import numpy as np
import psutil
import pytest
import tango
from tango import DevState

from karabo_bridge import Client
from tango_tpx3.testing import EventCollector, free_tcp_port, process_tree, tango_system, wait_for_state
from tpx3lib import cli
from tpx3lib.demo import warm_up
from tpx3lib.dtypes import TOA_UNIT_S

pytestmark = pytest.mark.timeout(180)

SOURCE = "TPX3/CAM/1:daqOutput"
#: The simulated chip fires on particles (not noise) with these thresholds and the bias on.
QUIET_THRESHOLD = {"Vthreshold_coarse": 6, "Vthreshold_fine": 420}


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    # numba kernels into the on-disk cache first, so the server loads rather than compiles them
    # mid-acquisition (on a fresh clone run alone, e.g. `make test-tango`)
    warm_up(out=lambda *_: None)
    props = {"BridgeEndpoint": f"tcp://127.0.0.1:{free_tcp_port()}", "BridgeSocketType": "PUSH",
             "SourceName": SOURCE}
    with tango_system(tmp_path_factory.mktemp("tango-live"), instance="live", hit_rate_hz=2000.0,
                      pipeline_properties=props) as s:
        s.bridge_endpoint = props["BridgeEndpoint"]
        # A Karabo Bridge consumer stays connected (as at a beamline); tests clear what it got.
        s.consumer = BridgeConsumer(s.bridge_endpoint)
        try:
            yield s
        finally:
            s.consumer.close()


@pytest.fixture
def live(system):
    """Devices ON, bias on, a threshold above the noise, settings as the tests expect."""
    s = system
    s.sim.faults.clear()
    p = s.pipeline
    if p.state() == DevState.RUNNING:
        p.Abort()
        wait_for_state(p, (DevState.ON, DevState.FAULT), timeout=30)
    for dev in (s.board, s.chip, p):
        if dev.state() == DevState.FAULT:
            dev.Init()
    s.wait_all_on()
    s.board.BiasVoltage = 50.0
    s.board.BiasEnabled = True
    for name, value in QUIET_THRESHOLD.items():
        s.chip.write_attribute(name, value)
    p.FrameCount = 1
    p.TrainIdSource = "OFF"
    p.OutputEvents = True
    p.OutputCentroids = True
    p.EventWindowStart = 0.0
    p.EventWindowEnd = 1e-3
    if p.Recording:
        p.StopRecording()
    s.consumer.clear()
    yield s
    s.sim.faults.clear()


def desc(excinfo) -> str:
    return " ".join(e.desc for e in excinfo.value.args)


def finished(p, timeout=60.0):
    """Wait until the acquisition is over; it must have ended in ON (else the Status says why)."""
    state = wait_for_state(p, (DevState.ON, DevState.FAULT), timeout=timeout)
    assert state == DevState.ON, p.status()


def wait_until(predicate, timeout=30.0, what="condition"):
    """Wait for a condition; the timeout is a safety net, not a measurement."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached"
        time.sleep(0.01)


class BridgeConsumer:
    """Pulls every train from the pipeline's Karabo Bridge endpoint in a thread."""

    def __init__(self, endpoint):
        self.client = Client(endpoint, sock="PULL", timeout=0.2, hwm=10_000)
        self.trains: list[tuple[dict, dict]] = []
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def clear(self):
        self.trains = []

    def _run(self):
        try:
            while not self._stop.is_set():
                try:
                    data, meta = self.client.next()
                except TimeoutError:
                    continue
                self.trains.append((data[SOURCE], meta[SOURCE]))
        except Exception as exc:   # reported by drain()
            self.error = exc

    def drain(self, expected: int, timeout=30.0):
        """Wait for ``expected`` trains (the publisher sends them while the pipeline drains)."""
        wait_until(lambda: len(self.trains) >= expected or self.error is not None, timeout,
                   f"{expected} Karabo Bridge trains (got {len(self.trains)})")
        assert self.error is None, f"the Karabo Bridge client failed: {self.error!r}"

    def close(self):
        self._stop.set()
        self._thread.join()
        self.client.close()

    def total(self, key):
        return sum(int(d[key]) for d, _ in self.trains)


class StreamerWatch:
    """Keeps the simulator's UDP streamer of the shutter window (its counters say what left the
    socket; the simulator drops the object when the shutter closes)."""

    def __init__(self, sim):
        self.sim = sim
        self.streamers = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            st = self.sim.streamer
            if st is not None and all(st is not s for s in self.streamers):
                self.streamers.append(st)
            time.sleep(0.005)

    def close(self):
        self._stop.set()
        self._thread.join()

    def sent(self, field):
        return sum(getattr(st.counters[0], field) for st in self.streamers)


def process(raw, out, *args):
    """``tpx3 process`` as a user runs it; returns the HDF5 file's counts."""
    assert cli.main(["process", str(raw), "-o", str(out), "--no-progress", *args]) == 0
    with h5py.File(out, "r") as f:
        counters = json.loads(f.attrs["counters"])
        events = f["raw/x"].shape[0]
        centroids = f["centroided/x"].shape[0] if "centroided" in f else 0
    return events, centroids, counters


# ----------------------------------------------------------------------------- the data path

def test_full_acquisition_bridge_recording_and_offline_agree(live, tmp_path):
    s, p, sim = live, live.pipeline, live.sim
    p.AcquisitionTime = 2.0
    p.EventWindowEnd = 0.1                 # the whole 10 Hz period: every hit after a trigger is an event
    p.TrainIdSource = "INTERNAL"
    p.TrainIdStart = 5000
    p.ClusterRadius = 1                    # tpx3 process's default clustering, to compare with it
    p.ClusterTimeWindow = 200e-9
    p.Prepare()                            # binds the Karabo Bridge endpoint
    raw = tmp_path / "run.tpx3raw"
    assert p.StartRecording(str(raw)) == str(raw)   # armed: records the whole next acquisition
    assert p.Recording and p.RecordingPath == str(raw)
    consumer = s.consumer
    watch = StreamerWatch(sim)
    try:
        p.Start()
        finished(p)
        n = p.TrainsPublished
        consumer.drain(n)
    finally:
        watch.close()
    assert not sim.shutter_open and len(watch.streamers) == 1
    sent_hits, sent_datagrams = watch.sent("hits"), watch.sent("datagrams")
    assert sent_hits > 1000

    # Everything the simulated board sent was received and decoded, hit for hit.
    assert p.PacketsReceived == sent_datagrams and p.PacketsLost == 0 and p.PacketsBacklog == 0
    assert p.HitsTotal == sent_hits
    assert int(p.HitMap.sum()) == sent_hits
    assert not p.Recording and p.RecordingPath == str(raw)

    # Karabo Bridge: one message per trigger (10 Hz for 2 s), consecutive train IDs from 5000.
    ids = [m["timestamp.tid"] for _, m in consumer.trains]
    assert len(ids) == n >= 15 and ids == list(range(5000, 5000 + n))
    assert p.CurrentTrainId == ids[-1] and p.TrainsDropped == 0
    bridge_hits = consumer.total("data.nHits")
    bridge_centroids = consumer.total("data.nCentroids")
    assert 0 < bridge_hits <= sent_hits and bridge_centroids > 0
    for data, _ in consumer.trains:
        assert data["data.hits.x"].size == data["data.nHits"]
        tof_s = data["data.hits.tof"] * TOA_UNIT_S
        assert np.all((tof_s >= 0) & (tof_s < 0.1))
    # Every event hit the pipeline made is accounted for by the publisher (its counters ride
    # along in each message): in a train, or counted as late / unmatched.
    counters = consumer.trains[-1][0]
    assert counters["counters.hits"] == bridge_hits
    assert counters["counters.trains_incomplete"] == 0 and counters["counters.trains_dropped"] == 0
    # The counters ride in each message, so a hit found late after the last train went out is
    # in no message's snapshot; the device attributes have the publisher's final counts.
    assert p.HitsLate >= counters["counters.hits_late"] and p.HitsUnmatched >= counters["counters.hits_unmatched"]
    accounted = bridge_hits + p.HitsLate + p.HitsUnmatched
    # ToF histogram over the event window: every event hit is in it
    assert int(p.TofHistogram.sum()) == accounted

    # The recording, post-processed offline, holds exactly the same data.
    events, centroids, file_counts = process(raw, tmp_path / "run.h5", "--centroid", "--cluster-method",
                                             "components", "--event-window", "0", "0.1")
    assert file_counts["words"]["pixel"] == sent_hits       # the file holds every hit the simulator sent
    assert events == accounted
    assert centroids == bridge_centroids + counters["counters.centroids_late"] + \
        counters["counters.centroids_unmatched"]


def test_live_statistics_reset_and_recording_during_a_run(live, tmp_path):
    s, p = live, live.pipeline
    p.AcquisitionTime = 0                  # until Stop
    hits = Events(p, "HitsTotal")
    try:
        p.Start()
        wait_until(lambda: p.HitsTotal > 500, what="hits")
        # Rates while running: hits, 10 Hz triggers, bytes.
        wait_until(lambda: p.HitRate > 0 and p.TriggerRate > 0 and p.DataRate > 0, what="rates")
        assert p.HitMap.sum() > 0 and p.PacketsReceived > 0
        before = p.HitsTotal
        p.ResetCounters()
        assert p.HitsTotal < before
        raw = p.StartRecording(str(tmp_path))         # a directory: the device names the file
        assert raw.startswith(str(tmp_path)) and raw.endswith(".tpx3raw")
        assert p.Recording and p.RecordingPath == raw
        wait_until(lambda: p.HitsTotal > 200, what="hits after the reset")
        p.StopRecording()
        assert not p.Recording and p.RecordingPath == raw
        p.Stop()
        finished(p)
        final = p.HitsTotal
        assert p.HitRate == 0 and p.TriggerRate == 0   # idle: no rate
        # Change events: rate-limited while running, the final value always pushed.
        assert hits.wait(lambda e: e.values() and e.values()[-1] == final)
    finally:
        hits.close()
    # The file holds part of what was counted since the reset (recording started after it).
    events, _, file_counts = process(raw, tmp_path / "part.h5", "--event-window", "0", "0.1")
    assert 0 < events <= final


def test_run_files_in_output_directory_match_the_bridge(live, tmp_path):
    """OutputDirectory: each acquisition writes a European XFEL run (read back with EXtra-data)."""
    from extra_data import RunDirectory

    s, p = live, live.pipeline
    db = tango.Database(s.db.host, s.db.port)
    name = p.dev_name()
    runs = tmp_path / "runs"
    try:
        db.put_device_property(name, {"OutputDirectory": [str(runs)], "FileCompression": ["zip"]})
        p.Init()
        assert p.state() == DevState.FAULT and "FileCompression must be one of gzip, lzf, none" in p.status()
        db.put_device_property(name, {"FileCompression": ["GZIP"]})     # the default is lzf
        p.Init()
        wait_for_state(p, DevState.ON)
        p.AcquisitionTime = 1.0
        p.TrainIdSource = "INTERNAL"
        p.TrainIdStart = 777
        p.Prepare()
        consumer = s.consumer
        p.Start()
        finished(p)
        consumer.drain(p.TrainsPublished)
        assert "Run files" in p.status() and str(runs / "r0001") in p.status()
        run = RunDirectory(str(runs / "r0001"))
        bridge = {m["timestamp.tid"]: d for d, m in consumer.trains}
        assert list(run.train_ids) == sorted(bridge) and len(bridge) == p.TrainsPublished
        counts = run[SOURCE].data_counts(index_group="data")
        for tid, n in counts.items():
            assert n == bridge[tid]["data.nHits"]
        x = run[SOURCE, "data.x"].ndarray()
        assert np.array_equal(x, np.concatenate([bridge[t]["data.hits.x"] for t in sorted(bridge)]))
        with h5py.File(next((runs / "r0001").glob("*.h5"))) as f:
            assert f[f"INSTRUMENT/{SOURCE}/data/x"].compression == "gzip"
        # the next acquisition is the next run
        p.AcquisitionTime = 0.3
        p.Start()
        finished(p)
        assert (runs / "r0002").is_dir()
        # without train IDs there are no run files, and the Status says why
        p.TrainIdSource = "OFF"
        p.Prepare()
        assert "no run files" in p.status()
    finally:
        db.delete_device_property(name, ["OutputDirectory", "FileCompression"])
        p.Init()
    wait_for_state(p, DevState.ON)


def test_a_recording_that_cannot_be_written_is_an_error_not_a_fault(live, tmp_path):
    s, p = live, live.pipeline
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    bad = str(blocker / "run.tpx3raw")               # its directory cannot be made
    p.AcquisitionTime = 0
    p.Start()
    wait_until(lambda: s.sim.shutter_open, what="shutter open")
    with pytest.raises(tango.DevFailed) as exc:
        p.StartRecording(bad)
    assert "a-file" in desc(exc)
    assert p.state() == DevState.RUNNING and not p.Recording
    p.Stop()
    finished(p)
    # Armed for the next run: the run goes on without it and the Status says why.
    p.StartRecording(bad)
    p.AcquisitionTime = 0.3
    p.Start()
    finished(p)
    assert not p.Recording and "could not start" in p.status() and "a-file" in p.status()
    assert p.HitsTotal > 0


# ----------------------------------------------------------------------------- failures and processes

def receivers(server_pid):
    """The capture's receiver processes below the server (not multiprocessing's resource tracker)."""
    out = []
    for pid in process_tree(server_pid):
        try:
            cmd = " ".join(psutil.Process(pid).cmdline())
        except psutil.NoSuchProcess:
            continue
        if "resource_tracker" not in cmd:
            out.append(pid)
    return out


def test_a_dying_stage_is_a_fault_with_its_reason_and_init_recovers(live):
    s, p, sim = live, live.pipeline, live.sim
    p.AcquisitionTime = 0
    p.Start()
    wait_until(lambda: sim.shutter_open, what="shutter open")
    victims = receivers(s.server.pid)
    assert len(victims) == 1                       # one receiver process for the one chip
    psutil.Process(victims[0]).kill()
    wait_for_state(p, DevState.FAULT, timeout=30)
    status = p.status()
    assert "capture" in status and "SIGKILL" in status, status
    assert p.acq_status == "Fault"
    wait_until(lambda: not sim.shutter_open, what="shutter closed")   # the board was told to stop
    with pytest.raises(tango.DevFailed):
        p.Start()
    assert receivers(s.server.pid) == []
    p.Init()
    wait_for_state(p, DevState.ON)
    p.AcquisitionTime = 0.5
    p.Start()
    finished(p)
    assert p.HitsTotal > 0 and p.PacketsLost == 0


def test_start_stop_cycles_leave_no_processes(live):
    s, p, sim = live, live.pipeline, live.sim
    p.AcquisitionTime = 0
    before = None
    for cycle in range(3):
        p.Start()
        wait_until(lambda: sim.shutter_open, what="shutter open")
        assert len(receivers(s.server.pid)) == 1
        p.Stop()
        finished(p)
        assert not sim.shutter_open and receivers(s.server.pid) == []
        tree = process_tree(s.server.pid)         # at most multiprocessing's resource tracker
        if before is None:
            before = tree
        assert tree == before and len(tree) <= 1


def test_board_that_stops_answering_mid_acquisition(live):
    s, p, sim = live, live.pipeline, live.sim
    p.AcquisitionTime = 0
    p.Start()
    wait_until(lambda: sim.shutter_open, what="shutter open")
    sim.faults.drop_reply(times=None)               # the board goes silent
    wait_for_state(p, DevState.FAULT, timeout=30)
    assert "does not answer" in p.status() or "not available" in p.status()
    assert receivers(s.server.pid) == []            # the pipeline was stopped
    sim.faults.clear()
    s.board.Reconnect()
    wait_for_state(s.board, DevState.ON)
    assert p.state() == DevState.FAULT          # the failed acquisition stays visible until cleared
    p.Prepare()
    wait_for_state(p, DevState.ON)
    p.AcquisitionTime = 0.3
    p.Start()
    finished(p)
    assert p.PacketsReceived > 0


def test_scan_set_dac_acquire_read_repeat(live):
    """What a sequencer does (LImA names): per point set a DAC, acquire, read counters."""
    s, p, sim = live, live.pipeline, live.sim
    results = []
    for fine in (420, 400, 380):
        s.chip.Vthreshold_fine = fine
        p.acq_expo_time = 0.5
        p.acq_nb_frames = 1
        watch = StreamerWatch(sim)
        try:
            p.prepareAcq()
            p.startAcq()
            assert p.acq_status == "Running"
            finished(p)
        finally:
            watch.close()
        assert p.acq_status == "Ready" and p.last_image_ready == 0
        # Counters are per acquisition: what the simulator sent during this point.
        assert p.HitsTotal == watch.sent("hits") > 0
        results.append(p.HitsTotal)
        assert sim.chips[0].dacs[6] == fine
    assert len(results) == 3


def test_trains_nobody_takes_are_counted_as_dropped(live):
    s, p = live, live.pipeline
    s.consumer.close()                     # no consumer on the PUSH endpoint for a while
    try:
        p.AcquisitionTime = 0.5
        p.Start()
        finished(p)
        assert p.TrainsPublished > 0 and p.TrainsDropped == p.TrainsPublished
        p.ResetCounters()
        assert p.TrainsDropped == 0 and p.TrainsPublished == 0
    finally:
        s.consumer = BridgeConsumer(s.bridge_endpoint)


def test_board_counters_backend_stays_selectable(live):
    s, p = live, live.pipeline
    db = tango.Database(s.db.host, s.db.port)
    name = p.dev_name()
    try:
        db.put_device_property(name, {"PipelineBackend": ["board-counters"]})
        p.Init()
        wait_for_state(p, DevState.ON)
        assert p.Backend == "board-counters" and "board-counters" in p.status()
        p.AcquisitionTime = 0.2
        p.Start()
        finished(p)
        assert p.PacketsReceived > 0 and int(p.HitMap.sum()) == 0    # counted by the board, not received
        with pytest.raises(tango.DevFailed) as exc:
            p.StartRecording("x.tpx3raw")
        assert "cannot record" in desc(exc)
        db.put_device_property(name, {"PipelineBackend": ["nonsense"]})
        p.Init()
        wait_for_state(p, DevState.FAULT)
        assert "nonsense" in p.status() and "live" in p.status()
    finally:
        db.delete_device_property(name, ["PipelineBackend"])
        p.Init()
    wait_for_state(p, DevState.ON)
    assert p.Backend == "live"


def test_ophyd_async_discovers_typed_signals(live):
    """ophyd-async's TangoDevice builds bluesky signals from the typed attributes and commands."""
    import ophyd_async.tango.core  # noqa: F401 - in the test extra: missing must fail, not skip
    import asyncio

    from ophyd_async.tango.core import TangoDevice

    def trl(proxy):
        return f"tango://{live.db.tango_host}/{proxy.dev_name()}"

    async def main():
        devices = {}
        for key, proxy in (("board", live.board), ("chip", live.chip), ("pipeline", live.pipeline)):
            dev = TangoDevice(trl(proxy), name=key)
            await dev.connect(timeout=10)          # every attribute and command becomes a signal
            devices[key] = dict(dev.children())
            for attr in proxy.get_attribute_list():
                assert attr in devices[key], (key, attr)
        pipe = devices["pipeline"]
        for name in ("Prepare", "Start", "Stop", "prepareAcq", "startAcq"):
            assert name in pipe, name
        await pipe["AcquisitionTime"].set(0.25)
        await pipe["TrainIdSource"].set("INTERNAL")
        mode = await devices["chip"]["OperationMode"].get_value()
        return (await pipe["HitsTotal"].get_value(), await pipe["HitMap"].get_value(),
                await pipe["TrainIdSource"].get_value(), mode)

    hits, hit_map, source, mode = asyncio.run(main())
    p = live.pipeline
    assert p.AcquisitionTime == pytest.approx(0.25) and p.TrainIdSource == 1     # INTERNAL
    assert source == "INTERNAL" and mode == "TOA_TOT"
    assert int(hits) == p.HitsTotal and np.asarray(hit_map).shape == (256, 256)


Events = EventCollector
