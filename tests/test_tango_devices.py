"""SpidrBoard, Timepix3Chip and Tpx3Pipeline through DeviceProxy, as a facility runs them.

One real sqlite Tango database process, one real ``Tpx3Server test`` process started with
TANGO_HOST, and the SPIDR simulator over TCP are shared by every test of this module (see
tango_tpx3.testing.tango_system). Expectations come from the simulator's own state (what the board
really holds), the fixture files' documented contents and the Tango attribute
configuration - never from the device code under test.
"""
from __future__ import annotations

import time

import h5py
import numpy as np
import psutil
import pytest
import tango
from tango import DevState

from tango_tpx3.testing import EventCollector, tango_system, wait_for_state
from tpx3lib.config import load_config
from tpx3lib.demo import warm_up
from tpx3lib.spidr.protocol import ShutterMode

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    warm_up(out=lambda *_: None)      # numba kernels cached before the server's first acquisition
    with tango_system(tmp_path_factory.mktemp("tango")) as s:
        yield s


#: A threshold well above the simulated noise floor (160 * coarse + fine > 1310 DAC steps in the
#: simulator's model): lower thresholds make the simulated chip fire on noise everywhere.
QUIET_THRESHOLD = {"Vthreshold_coarse": 6, "Vthreshold_fine": 420}


@pytest.fixture
def quiet(on):
    for name, value in QUIET_THRESHOLD.items():
        on.chip.write_attribute(name, value)
    return on


@pytest.fixture
def on(system):
    """Every test starts (and leaves the next one) with all devices ON and no faults armed."""
    system.sim.faults.clear()
    for p in (system.board, system.chip, system.pipeline):
        if p.state() == DevState.RUNNING:
            wait_for_state(p, (DevState.ON, DevState.FAULT))
        if p.state() == DevState.FAULT:
            p.Init()
    system.wait_all_on()
    yield system
    system.sim.faults.clear()


def desc(excinfo) -> str:
    return " ".join(e.desc for e in excinfo.value.args)


def wait_until(predicate, timeout=15.0):
    """Wait for a condition (the timeout is a safety net, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


Events = EventCollector


# ----------------------------------------------------------------------------- the server itself

def test_server_runs_as_a_facility_runs_it(on):
    s = on
    info = tango.Database(s.db.host, s.db.port).get_device_info(s.board.dev_name())
    assert info.ds_full_name == "Tpx3Server/test" and info.exported
    assert psutil.Process(s.server.pid).name().startswith("Tpx3Server")
    listening = [c.laddr for c in psutil.Process(s.server.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    # The three devices share one control connection: the simulator admits one client only.
    assert s.sim.client_connected and s.sim.refused_clients == 0


def test_no_devencoded_and_typed_images(on):
    for p in (on.board, on.chip, on.pipeline):
        for cfg in p.attribute_list_query():
            assert cfg.data_type != tango.CmdArgType.DevEncoded, (p.dev_name(), cfg.name)
    hit_map = on.pipeline.read_attribute("HitMap")
    assert hit_map.type == tango.CmdArgType.DevULong and hit_map.data_format == tango.AttrDataFormat.IMAGE
    assert hit_map.value.shape == (256, 256)
    mask_cfg = on.chip.get_attribute_config("PixelMask")
    assert mask_cfg.data_format == tango.AttrDataFormat.IMAGE and mask_cfg.writable == tango.AttrWriteType.READ_WRITE


# ----------------------------------------------------------------------------- SpidrBoard

def test_board_identity_and_housekeeping(on):
    from simulators.spidr_board import DEFAULT_FIRMWARE_VERSION, DEFAULT_SOFTWARE_VERSION
    b = on.board
    assert b.FirmwareVersion == f"0x{DEFAULT_FIRMWARE_VERSION:08X}"
    assert b.SoftwareVersion == f"0x{DEFAULT_SOFTWARE_VERSION:08X}"
    assert b.ChipCount == 1 and list(b.ChipNames) == ["W0028_H06"]
    assert b.get_attribute_config("FpgaTemperature").unit == "degC"
    assert -20 < b.FpgaTemperature < 100
    # The simulator's supplies read 1500 mV on each rail.
    assert b.AvddVoltage == pytest.approx(1.5) and b.DvddVoltage == pytest.approx(1.5)
    assert b.get_attribute_config("AvddVoltage").unit == "V"
    assert b.get_attribute_poll_period("FpgaTemperature") > 0
    assert b.get_attribute_config("FpgaTemperature").events.arch_event.archive_abs_change not in ("", "Not specified")


def test_housekeeping_archive_events(on):
    temps = Events(on.board, "FpgaTemperature", tango.EventType.ARCHIVE_EVENT)
    try:
        # The subscription's first event carries the current value (polled, so from the cache).
        assert temps.wait(lambda e: e.values())
        assert -20 < temps.values()[0] < 100
    finally:
        temps.close()


def test_bias_voltage_limits_enforced_by_tango(on):
    b, sim = on.board, on.sim
    b.BiasEnabled = True
    assert sim.bias_enabled
    b.BiasVoltage = 50.0
    # What the board holds: SET_BIAS_ADJUST int((50 - 12) * 4095 / 92) = 0x69B (spec section 2).
    assert sim.bias_dac == 0x69B
    assert b.BiasVoltage == pytest.approx(50.0, abs=0.2)
    for bad in (200.0, 11.0):
        with pytest.raises(tango.DevFailed) as exc:
            b.BiasVoltage = bad
        assert "above the maximum" in desc(exc) or "below the minimum" in desc(exc) or "out of" in desc(exc)
    assert sim.bias_dac == 0x69B
    assert b.state() == DevState.ON
    b.BiasEnabled = False
    assert not sim.bias_enabled and b.BiasEnabled is False


def test_shutter_settings_and_commands(quiet):
    b, sim = quiet.board, quiet.sim
    b.ShutterMode = "AUTO"
    b.ShutterLength = 2000
    b.ShutterFrequency = 7
    b.ShutterCount = 3
    assert sim.trigger[:4] == [int(ShutterMode.AUTO), 2000, 7, 3]
    assert b.ShutterMode == int(ShutterMode.AUTO)
    before = b.ShutterCounter
    b.OpenShutter()
    assert sim.shutter_open
    b.CloseShutter()
    assert not sim.shutter_open
    assert b.ShutterCounter == before + 1 == sim.shutter_counter
    b.ResetTimers()
    b.RestartTimers()
    b.T0Sync()
    with pytest.raises(tango.DevFailed):
        b.ShutterMode = 9   # not a label of the enum


# ----------------------------------------------------------------------------- Timepix3Chip

def test_chip_identity_and_links(on):
    c = on.chip
    assert c.ChipName == "W0028_H06"
    assert c.LinksUsable and c.LinksEnabled == 0xFF and c.LinksLocked == 0xFF


def test_dac_writes_reach_the_chip_and_limits_are_enforced(on):
    c, sim = on.chip, on.sim
    c.Vthreshold_fine = 300
    assert sim.chips[0].dacs[6] == 300 and c.Vthreshold_fine == 300
    cfg = c.get_attribute_config("Vthreshold_fine")
    assert (cfg.min_value, cfg.max_value) == ("0", "511")
    with pytest.raises(tango.DevFailed):
        c.Vthreshold_fine = 512
    with pytest.raises(tango.DevFailed):
        c.Vthreshold_coarse = 16
    with pytest.raises(tango.DevFailed):
        c.Ibias_Preamp_OFF = -1
    assert sim.chips[0].dacs[6] == 300 and sim.chips[0].dacs[7] == c.Vthreshold_coarse
    assert c.state() == DevState.ON
    assert len([a for a in c.get_attribute_list() if a.startswith(("Ibias", "V", "PLL"))]) >= 18


def test_modes_reach_the_general_configuration(on):
    c, sim = on.chip, on.sim
    c.OperationMode = "TOA"
    c.Polarity = "NEGATIVE"
    word = sim.chips[0].gen_config
    assert word & 0x6 == 0x2 and word & 0x1 == 1        # ToA only, negative (spec bit layout)
    assert c.OperationMode == 1 and c.Polarity == 1
    c.OperationMode = "TOA_TOT"
    c.Polarity = "POSITIVE"
    assert sim.chips[0].gen_config & 0x7 == 0


def test_pixel_matrix_upload_in_the_background(on):
    c, sim = on.chip, on.sim
    mask = np.zeros((256, 256), np.uint8)
    mask[200, 10] = 1            # image[y, x]: column 10, row 200
    mask[0, 255] = 1
    thr = np.full((256, 256), 7, np.uint8)
    c.PixelMask = mask
    c.PixelThreshold = thr
    assert c.MaskedPixels == 2 and not c.PixelsUploaded
    c.UploadPixels()
    wait_for_state(c, DevState.ON)
    assert c.PixelsUploaded
    words = sim.chips[0].pixel_words            # the board's [x, y] matrix of 6-bit words
    assert words[10, 200] & 1 == 1 and words[255, 0] & 1 == 1 and words[200, 10] & 1 == 0
    assert int((words & 1).sum()) == 2
    assert np.all((words >> 1) & 0xF == 7)
    with pytest.raises(tango.DevFailed):
        c.PixelThreshold = np.full((256, 256), 16, np.uint8)
    with pytest.raises(tango.DevFailed) as exc:
        c.PixelMask = np.zeros((10, 10), np.uint8)
    assert "256 x 256" in desc(exc)
    c.ResetPixels()
    assert int(sim.chips[0].pixel_words.sum()) == 0 and c.MaskedPixels == 0


def test_load_and_save_config(on, data_dir, tmp_path):
    c, sim = on.chip, on.sim
    c.LoadConfig(str(data_dir / "W0028_H06_50V.spx"))
    wait_for_state(c, DevState.ON, timeout=30)
    # The fixture's documented content: Ibias_Ikrum 20, Vthreshold_fine 150, Ibias_PixelDAC 150, 160 masked.
    assert c.Ibias_Ikrum == 20 and c.Vthreshold_fine == 150 and c.Ibias_PixelDAC == 150
    assert sim.chips[0].dacs[4] == 20 and sim.chips[0].dacs[6] == 150
    assert c.MaskedPixels == 160 and int((sim.chips[0].pixel_words & 1).sum()) == 160
    assert c.ConfigSource.endswith("W0028_H06_50V.spx")
    out = c.SaveConfig(str(tmp_path / "saved.yaml"))
    saved = load_config(out)
    assert saved.dacs["Ibias_Ikrum"] == 20 and saved.n_masked == 160 and saved.name == "W0028_H06"


def test_bad_config_files_give_clear_errors_and_the_chip_stays_usable(on, tmp_path):
    c = on.chip
    before = c.Vthreshold_fine
    with pytest.raises(tango.DevFailed) as exc:
        c.LoadConfig(str(tmp_path / "missing.spx"))
    assert "missing.spx" in desc(exc)
    broken = tmp_path / "broken.yaml"
    broken.write_text("dacs:\n  Vthreshold_fine: 9999\n")
    with pytest.raises(tango.DevFailed) as exc:
        c.LoadConfig(str(broken))
    assert "Vthreshold_fine" in desc(exc) and "9999" in desc(exc)
    garbage = tmp_path / "garbage.spx"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(tango.DevFailed):
        c.LoadConfig(str(garbage))
    with pytest.raises(tango.DevFailed) as exc:
        c.LoadConfig(str(tmp_path / "config.txt"))
    assert c.state() == DevState.ON and c.Vthreshold_fine == before
    c.Vthreshold_fine = before + 1
    assert c.Vthreshold_fine == before + 1


# ----------------------------------------------------------------------------- faults and recovery

def test_board_that_stops_answering_goes_to_fault_and_recovers(on):
    s = on
    states = Events(s.board, "State")
    s.sim.faults.drop_reply(times=None)          # the board executes but never answers again
    # Nobody touches the devices: the polled housekeeping finds out.
    wait_for_state(s.board, DevState.FAULT, timeout=20)
    assert "does not answer" in s.board.status()
    assert states.wait(lambda e: DevState.FAULT in e.values())
    states.close()
    for cmd in ("OpenShutter", "ResetTimers", "T0Sync"):
        with pytest.raises(tango.DevFailed) as exc:
            s.board.command_inout(cmd)
        assert "not allowed" in desc(exc).lower()
    wait_for_state(s.chip, DevState.FAULT)
    wait_for_state(s.pipeline, DevState.FAULT)
    assert "not available" in s.pipeline.status()
    with pytest.raises(tango.DevFailed) as exc:
        s.board.FirmwareVersion
    assert "127.0.0.1" in desc(exc)
    with pytest.raises(tango.DevFailed):
        s.pipeline.Start()
    s.sim.faults.clear()
    s.board.Reconnect()
    s.wait_all_on()
    assert s.board.FpgaTemperature > 0


def test_closed_connection_fault_recovered_by_init(on):
    s = on
    s.chip.Vthreshold_fine = 444
    s.sim.faults.close_connection(times=None)
    with pytest.raises(tango.DevFailed):
        s.chip.Vthreshold_fine    # the request meets a closed connection
    wait_for_state(s.board, DevState.FAULT)
    assert "connection" in s.board.status().lower()
    s.sim.faults.clear()
    s.sim.chips[0].dacs[6] = 1          # the chip lost its setting meanwhile (e.g. power cycle)
    s.board.Init()
    s.wait_all_on()
    # After reconnecting, the chip device sent its configuration again.
    assert s.sim.chips[0].dacs[6] == 444 and s.chip.Vthreshold_fine == 444


def test_server_restart_keeps_memorized_settings(on):
    s = on
    s.chip.Vthreshold_fine = 433
    s.chip.Ibias_Ikrum = 17
    s.chip.OperationMode = "EVENT_ITOT"
    s.board.BiasVoltage = 60.0
    s.pipeline.AcquisitionTime = 0.75
    s.pipeline.acq_nb_frames = 4
    s.restart_server()
    # The board forgets nothing by itself; make sure the values come from the devices.
    s.sim.chips[0].dacs[6] = 5
    s.sim.chips[0].dacs[4] = 5
    s.board.Reconnect()
    s.wait_all_on()
    assert s.chip.Vthreshold_fine == 433 and s.sim.chips[0].dacs[6] == 433
    assert s.chip.Ibias_Ikrum == 17 and s.sim.chips[0].dacs[4] == 17
    assert s.chip.OperationMode == 2 and s.sim.chips[0].gen_config & 0x6 == 0x4
    assert s.sim.bias_dac == int((60 - 12) * 4095 / 92)
    assert s.pipeline.AcquisitionTime == pytest.approx(0.75) and s.pipeline.FrameCount == 4
    s.chip.OperationMode = "TOA_TOT"
    s.pipeline.FrameCount = 1


# ----------------------------------------------------------------------------- Tpx3Pipeline

def test_timed_acquisition_returns_to_on_by_itself_with_events(quiet):
    on = quiet
    p, sim = on.pipeline, on.sim
    p.AcquisitionTime = 0.3
    p.FrameCount = 2
    p.TrainIdSource = "INTERNAL"
    p.TrainIdStart = 1000
    states = Events(p, "State")
    trains = Events(p, "TrainsPublished")
    ready = Events(p, "HitMap", tango.EventType.DATA_READY_EVENT)
    try:
        shutters = sim.shutter_counter
        udp_before = on.board.UdpPacketCounter
        p.Prepare()
        p.Start()
        assert p.state() == DevState.RUNNING       # until the pipeline says it is done
        assert p.acq_status == "Running"
        wait_for_state(p, DevState.ON, timeout=30)
        # One shutter window of 2 x 0.3 s, closed again.
        assert sim.shutter_counter == shutters + 1 and not sim.shutter_open
        assert p.last_image_ready == 1
        # The simulator triggers at 10 Hz: trains are triggers, numbered from TrainIdStart.
        n = p.TrainsPublished
        assert n >= 1 and p.CurrentTrainId == 1000 + n - 1
        assert states.wait(lambda e: DevState.RUNNING in e.values() and e.values()[-1] == DevState.ON)
        assert trains.wait(lambda e: e.values() and e.values()[-1] == n)   # the final value is always pushed
        assert ready.wait(lambda e: len(e.counters()) == n)                # one data-ready event per train
        assert ready.counters() == list(range(1, n + 1))
        assert p.acq_status == "Ready"
        # Every datagram the board sent (its own counter) was received.
        sent = on.board.UdpPacketCounter - udp_before
        assert sent > 0 and p.PacketsReceived == sent and p.PacketsLost == 0
    finally:
        for ev in (states, trains, ready):
            ev.close()


def test_commands_in_every_state(quiet):
    on = quiet
    p = on.pipeline
    p.AcquisitionTime = 0             # until stopped
    p.startAcq()
    assert p.state() == DevState.RUNNING
    wait_until(lambda: on.sim.shutter_open)   # Start returns at once; the shutter opens moments later
    with pytest.raises(tango.DevFailed):
        p.Start()
    with pytest.raises(tango.DevFailed):
        p.Prepare()
    with pytest.raises(tango.DevFailed) as exc:
        p.AcquisitionTime = 1.0
    assert "not allowed" in desc(exc).lower() or "RUNNING" in desc(exc)
    p.ResetCounters()
    p.stopAcq()
    wait_for_state(p, DevState.ON)
    assert not on.sim.shutter_open and p.FrameCount >= 1
    p.Stop()                          # harmless when idle
    p.Abort()
    # A long timed acquisition aborted early.
    p.acq_expo_time = 30
    assert p.AcquisitionTime == 30
    p.Start()
    p.abortAcq()
    wait_for_state(p, DevState.ON)
    assert not on.sim.shutter_open
    p.AcquisitionTime = 0.2


def test_bad_settings_are_refused_and_the_device_stays_usable(quiet, tmp_path):
    on = quiet
    p = on.pipeline
    p.EventWindowStart = 2e-3
    p.EventWindowEnd = 1e-3
    with pytest.raises(tango.DevFailed) as exc:
        p.Prepare()
    assert "event window" in desc(exc)
    assert p.state() == DevState.ON
    p.EventWindowStart = 0
    p.OutputPixels = p.OutputEvents = p.OutputCentroids = False
    with pytest.raises(tango.DevFailed) as exc:
        p.Start()
    assert "output product" in desc(exc)
    p.OutputCentroids = True
    with pytest.raises(tango.DevFailed):
        p.AcquisitionTime = -1
    existing = tmp_path / "taken.tpx3raw"
    existing.write_bytes(b"")
    with pytest.raises(tango.DevFailed) as exc:
        p.StartRecording(str(existing))
    assert "exists" in desc(exc)
    p.TrainIdSource = "INTERNAL"
    p.TrainIdStart = 0                 # a train ID is >= 1
    with pytest.raises(tango.DevFailed) as exc:
        p.Prepare()
    assert "TrainIdStart" in desc(exc)
    p.TrainIdSource = "OFF"
    p.ClusterRadius = 1.5              # the clustering links whole pixel distances
    with pytest.raises(tango.DevFailed) as exc:
        p.Prepare()
    assert "ClusterRadius" in desc(exc)
    p.ClusterRadius = 1
    p.TimewalkTable = str(tmp_path / "no-such-table.npy")
    with pytest.raises(tango.DevFailed) as exc:
        p.Prepare()
    assert "no-such-table.npy" in desc(exc)
    p.TimewalkTable = ""
    assert p.state() == DevState.ON and not p.Recording
    p.AcquisitionTime = 0.1
    p.Start()
    wait_for_state(p, DevState.ON)


def test_temperature_alarm_puts_the_board_in_alarm(on):
    b = on.board
    cfg = b.get_attribute_config("FpgaTemperature")
    original = cfg.alarms.max_alarm
    try:
        cfg.alarms.max_alarm = str(b.FpgaTemperature - 10)   # the simulator's FPGA is warmer than this
        b.set_attribute_config(cfg)
        wait_for_state(b, DevState.ALARM)
        assert b.read_attribute("FpgaTemperature").quality == tango.AttrQuality.ATTR_ALARM
    finally:
        cfg.alarms.max_alarm = original
        b.set_attribute_config(cfg)
    wait_for_state(b, DevState.ON)


def test_chip_switches_and_test_pulses(on):
    c, sim = on.chip, on.sim
    c.GrayCounter = False
    c.TestPulseEnabled = True
    word = sim.chips[0].gen_config
    assert word & 0x8 == 0 and word & 0x20 == 0x20        # gray counter 0x8 off, test pulse 0x20 on
    c.TestPulsePeriod = 1000
    c.TestPulsePhase = 5
    c.TestPulseCount = 12
    assert sim.chips[0].tp_period_phase == (5 << 16) | 1000 and sim.chips[0].tp_number == 12
    assert (c.TestPulsePeriod, c.TestPulsePhase, c.TestPulseCount) == (1000, 5, 12)
    with pytest.raises(tango.DevFailed):
        c.TestPulsePhase = 16
    c.GrayCounter = True
    c.TestPulseEnabled = False


def test_config_file_property_applied_at_init(on, data_dir):
    s = on
    db = tango.Database(s.db.host, s.db.port)
    name = s.chip.dev_name()
    try:
        db.put_device_property(name, {"ConfigFile": [str(data_dir / "no-such-file.spx")]})
        s.chip.Init()
        wait_for_state(s.chip, DevState.FAULT)
        assert "ConfigFile" in s.chip.status() and "no-such-file.spx" in s.chip.status()
        # Still usable: a good configuration recovers it.
        s.chip.LoadConfig(str(data_dir / "W0028_H06_50V.spx"))
        wait_for_state(s.chip, DevState.ON, timeout=30)
        db.put_device_property(name, {"ConfigFile": [str(data_dir / "W0028_H06_50V.spx")]})
        s.sim.chips[0].dacs[4] = 99
        s.chip.Init()
        wait_for_state(s.chip, DevState.ON, timeout=30)
        assert s.sim.chips[0].dacs[4] == 20 and s.chip.MaskedPixels == 160
        assert s.chip.ConfigSource.endswith("W0028_H06_50V.spx")
    finally:
        db.delete_device_property(name, ["ConfigFile"])
        s.chip.Init()
    wait_for_state(s.chip, DevState.ON, timeout=30)


def test_the_demo_runs_end_to_end_and_cleans_up(tmp_path, capsys):
    """``make demo`` (shortened): Tango acquisition, Karabo Bridge, recording, HDF5, PNG."""
    from tpx3lib.demo import main

    assert main(["--seconds", "1.5", "--output", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "ON -> RUNNING -> ON" in text and "none left" in text
    assert "(same as live)" in text and "0 train-ID gaps" in text
    png = tmp_path / "tpx3-demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with h5py.File(tmp_path / "demo-run.h5") as f:
        assert f["raw/x"].shape[0] > 0 and f["centroided/x"].shape[0] > 0


def test_lima_alias_writes_survive_init(on):
    p = on.pipeline
    p.acq_expo_time = 0.33
    p.acq_nb_frames = 3
    p.Init()
    wait_for_state(p, DevState.ON)
    assert p.AcquisitionTime == pytest.approx(0.33) and p.FrameCount == 3
    assert p.acq_expo_time == pytest.approx(0.33) and p.acq_nb_frames == 3
    p.FrameCount = 1


def test_acquisition_stage_dying_is_a_fault_that_prepare_clears(quiet):
    s = quiet
    p = s.pipeline
    p.AcquisitionTime = 0
    p.Start()
    assert p.state() == DevState.RUNNING
    s.sim.disconnect_client()                  # the control connection breaks mid-acquisition
    wait_for_state(p, DevState.FAULT, timeout=20)
    assert "fail" in p.status().lower() or "not available" in p.status().lower()
    assert p.acq_status == "Fault"
    with pytest.raises(tango.DevFailed):
        p.Start()
    s.board.Reconnect()
    wait_for_state(s.board, DevState.ON)
    wait_for_state(s.chip, DevState.ON)
    if p.state() == DevState.FAULT:            # the pipeline's own failure stays until cleared
        p.Prepare()
    wait_for_state(p, DevState.ON)
    p.AcquisitionTime = 0.1
    p.Start()
    wait_for_state(p, DevState.ON)
    assert not s.sim.shutter_open
