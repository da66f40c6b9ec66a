"""Every board operation against the simulated board over TCP."""
from __future__ import annotations

import pytest

from tpx3lib.errors import ConfigError
from tpx3lib.spidr import (
    CLOSED_SHUTTER_TRIGGER, OPEN_SHUTTER_TRIGGER, ReadoutSpeed, Reg, ShutterMode, TriggerConfig,
)


def sent(sim, name):
    return [w for n, _, w in sim.command_log if n == name]


def test_identity(board):
    # The simulator reports the versions of the real SPIDR recorded in the SoPhy fixture's hardware info.
    assert board.software_version == 402790656 and board.firmware_version == 402792457
    assert board.chipboard_id == 33554519
    assert board.device_count == 2 and len(board) == 2
    assert board.device_ids == (0x1C68, 0x1C69)
    assert isinstance(board.board_id, int)
    board.nop()
    assert board.link_counts == 8


def test_monitoring_units(board, sim):
    # the board reports milli-degrees C; the library returns degrees C
    assert board.fpga_temperature == 40.75
    assert board.local_temperature == 38.25
    assert board.remote_temperature == 43.25
    assert board.humidity == 32 and board.pressure == 1013
    for reading in (board.avdd, board.dvdd, board.vdd, board.avdd_now, board.dvdd_now, board.vdd_now):
        mv, ma, mw = reading
        assert mv == 1500 and ma > 0 and mw == mv * ma // 1000
        assert reading.volts == 1.5 and reading.watts == mw / 1000
    board.enable_tpx_power(False)
    assert board.avdd.milliamps == 0
    board.enable_tpx_power(True)
    assert board.avdd.milliamps > 0


def test_fans(board):
    assert board.chipboard_fan_speed == 3000 and board.spidr_fan_speed == 4200
    board.set_fan_speed(0, 80)
    assert board.fan_speed(0) == 4800  # the simulator's fans turn 60 rpm per percent
    with pytest.raises(ConfigError):
        board.set_fan_speed(0, 101)
    with pytest.raises(ConfigError):
        board.fan_speed(2)


def test_bias_enable_and_value(board, sim):
    board.enable_bias(True)
    board.bias_voltage = 50
    assert sent(sim, "BIAS_SUPPLY_ENA")[-1] == (1,)
    assert sent(sim, "SET_BIAS_ADJUST")[-1] == (0x69B,)   # spec: 50 V -> 0x69B
    assert sent(sim, "GET_SPIDR_ADC") == []
    assert board.bias_voltage == pytest.approx(50, abs=0.1)
    assert sent(sim, "GET_SPIDR_ADC")[-1] == (1,)          # read back through ADC channel 1
    board.bias_voltage = 104
    assert board.bias_voltage == pytest.approx(104, abs=0.1)
    n = len(sent(sim, "SET_BIAS_ADJUST"))
    with pytest.raises(ConfigError, match=r"bias voltage 105 V is outside the supply's range \[12, 104\] V"):
        board.bias_voltage = 105                             # pymepix clamps silently; we refuse
    assert len(sent(sim, "SET_BIAS_ADJUST")) == n
    board.enable_bias(False)
    assert board.bias_voltage < 0.2


def test_trigger_config_and_shutter(board, sim):
    cfg = TriggerConfig(ShutterMode.EXT_RISING_TIMER, 500, 20, 7, 100)
    board.trigger_config = cfg
    assert board.trigger_config == cfg
    assert board.get_register(Reg.SHUTTERTRIG_CNT) == 7 and board.get_register(Reg.SHUTTERTRIG_CTRL) == 2
    sim.clear_command_log()
    board.open_shutter()
    assert [(n, w) for n, _, w in sim.command_log] == [("SET_TRIGCONFIG", (4, 0, 10, 1)), ("AUTOTRIG_START", (0,))]
    assert board.trigger_config == OPEN_SHUTTER_TRIGGER and sim.shutter_open
    board.close_shutter()
    assert not sim.shutter_open and board.shutter_counter == 1
    board.trigger_config = CLOSED_SHUTTER_TRIGGER
    assert sent(sim, "SET_TRIGCONFIG")[-1] == (0, 10000, 5, 1)
    assert board.ext_shutter_counter == 0
    board.reset_counters()
    assert board.shutter_counter == 0


def test_readout_modes_and_decoders(board, sim):
    board.datadriven_readout()
    assert sim.readout_mode == "ddriven"
    board.sequential_readout(64, now=True)
    assert sim.readout_mode == "sequential" and sent(sim, "SEQ_READOUT")[-1] == (0x80000040,)
    board.pause_readout()
    assert sim.readout_paused
    board.enable_decoders(True)
    assert sim.decoders_enabled
    board.enable_power_pulsing(True)
    assert sim.power_pulsing


def test_registers_and_clock_source(board, sim):
    board.set_register(0x1000, 0xDEADBEEF)
    assert board.get_register(0x1000) == 0xDEADBEEF
    board.use_external_clock(True)
    assert board.cpu2tpx & (1 << 25)
    board.use_external_clock(False)
    assert not board.cpu2tpx & (1 << 25)
    assert board.cpu2tpx & (1 << 24)          # other bits untouched by the read-modify-write
    board.enable_tdc(0)
    assert board.get_register(Reg.TDC_ENABLE) == 0


def test_packet_counters_without_data(board):
    assert board.udp_packet_counter == 0 and board.tdc_trigger_counter == 0
    assert board.udpmon_packet_counter == 0 and board.udppause_packet_counter == 0
    board.reset_packet_counters()
    assert board.udp_packet_counter == 0


def test_resets_and_housekeeping(board, sim):
    board[0].set_dac("Vfbk", 1)
    board[1].set_dac("Vfbk", 2)
    board.reset_devices()
    assert board[0].get_dac("Vfbk") == 128 and board[1].get_dac("Vfbk") == 128
    board[1].set_dac("Vfbk", 2)
    board.reinit_devices()
    assert board[1].get_dac("Vfbk") == 128
    board.reset_module(ReadoutSpeed.HIGH)
    assert sent(sim, "RESET_MODULE")[-1] == (0x89ABCDEF,)
    with pytest.raises(ConfigError):
        board.reset_module(42)
    board.set_busy()
    assert sim.busy
    board.clear_busy()
    assert not sim.busy
    board.set_log_level(2)
    board.display_info()
    board.set_time_of_day(1_700_000_000.25)
    assert sim.time_of_day == (1_700_000_000, 250000)
    board.select_chipboard(0)
    assert board.spidr_adc(3) == 0x800
