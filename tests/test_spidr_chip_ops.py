"""Every chip operation against the simulated board over TCP."""
from __future__ import annotations

import numpy as np
import pytest

from tpx3lib.errors import ConfigError, SpidrError
from tpx3lib.spidr import DACS, GeneralConfig, OperationMode, PixelVerifyError, Polarity, Reg


def sent(sim, name):
    """Payload words of every request ``name`` the board received, in order."""
    return [w for n, _, w in sim.command_log if n == name]


def test_identity_and_links(board, sim):
    c0, c1 = board
    # the simulator's chip 0 is W0028_H06: wafer 28, row 6, column H (8) -> 0x1C68
    assert c0.device_id == 0x1C68 and c0.name == "W0028_H06"
    assert c1.name == "W0028_I06"
    st = c0.link_status()
    assert (st.raw, st.enabled, st.locked, st.usable) == (0x00FF0000, 0xFF, 0xFF, True)
    board.set_register(Reg.FE_GTX_CTRL_STAT + 4, 0x00070000)  # chip 1: only 3 of 8 links locked
    assert not c1.link_status().usable and c0.link_status().usable
    assert c0.efuses != 0


def test_dacs_by_name_with_range_checks_before_sending(board, sim):
    chip = board[1]
    values = {info.name: (i * 7) % (info.maximum + 1) for i, info in enumerate(DACS.values())}
    chip.set_dacs(values)
    assert chip.get_dacs() == values
    chip.set_dac("Vthreshold_fine", 150)
    assert sent(sim, "SET_DAC")[-1] == ((6 << 16) | 150,)
    assert chip.get_dac("Vthreshold_fine") == 150 and chip.get_dac(6) == 150
    n_before = len(sent(sim, "SET_DAC"))
    with pytest.raises(ConfigError, match=r"Vthreshold_coarse = 16 is out of range \[0, 15\]"):
        chip.set_dac("Vthreshold_coarse", 16)
    with pytest.raises(ConfigError, match="unknown DAC"):
        chip.set_dacs({"Vfbk": 1, "Vfbk_typo": 2})  # nothing is sent when any value is bad
    assert len(sent(sim, "SET_DAC")) == n_before
    assert chip.get_dac("Vfbk") == values["Vfbk"]
    chip.set_dacs_default()
    assert chip.get_dac("Vthreshold_fine") == 420
    assert board[0].get_dac("Vthreshold_fine") == 420  # chip 0 untouched throughout


def test_general_and_pll_config(board, sim):
    chip = board[0]
    chip.general_config = GeneralConfig(Polarity.NEGATIVE, OperationMode.TOA, gray_counter=True, superpixel=True)
    assert chip.gen_config_word == 0x1 | 0x2 | 0x8 | 0x40
    assert sim.chip_state(0).polarity == 1 and sim.chip_state(0).operation_mode == 2
    new = chip.update_general_config(polarity="positive", test_pulse=True)
    assert chip.gen_config_word == 0x2 | 0x8 | 0x20 | 0x40 and new == chip.general_config
    with pytest.raises(ConfigError):
        chip.update_general_config(colour="red")
    with pytest.raises(SpidrError, match="SET_GENCONFIG on chip 0 refused: ERR_ILLEGAL_PAR"):
        chip.gen_config_word = 0x6  # mode field 6 is no mode: the board refuses
    chip.pll_config = 0x11E
    assert chip.pll_config == 0x11E
    chip.outblock_config, chip.slvs_config, chip.power_pulse_config = 0x901, 0x3, 0x15
    assert (chip.outblock_config, chip.slvs_config, chip.power_pulse_config) == (0x901, 0x3, 0x15)
    chip.readout_speed = 320
    assert chip.readout_speed == 320
    chip.set_output_mask(0x0F)
    chip.set_sense_dac("Vthreshold_fine")
    chip.set_ext_dac("VTP_fine", 100)
    assert sent(sim, "SET_EXTDAC")[-1] == ((16 << 16) | 100,)
    assert board.chip_adc(0) == 420 * 4095 // 511  # sense output of the default Vthreshold_fine


def test_test_pulse_settings(board):
    chip = board[0]
    chip.set_tp_period_phase(200, 3)
    assert chip.tp_period_phase == (200, 3)
    chip.tp_number = 1000
    assert chip.tp_number == 1000
    ctpr = bytes(range(32))
    chip.ctpr = ctpr
    assert chip.ctpr == ctpr
    with pytest.raises(ConfigError):
        chip.ctpr = b"short"
    with pytest.raises(ConfigError):
        chip.set_tp_period_phase(1, 16)
    chip.upload_packet(b"\x01\x02\x03")


def test_pixel_upload_verify_and_read_back(board, sim):
    rng = np.random.default_rng(3)
    mask = rng.random((256, 256)) < 0.05
    thr = rng.integers(0, 16, (256, 256))
    test = rng.random((256, 256)) < 0.5
    sim.clear_command_log()
    board[1].upload_pixels(mask, thr, test)
    names = [n for n, _, _ in sim.command_log]
    assert names[0] == "RESET_PIXELS" and names[1:87] == ["SET_PIXCONF"] * 86
    assert names[87:] == ["GET_PIXCONF"] * 256
    assert [w[0] for w in sent(sim, "SET_PIXCONF")] == [*range(0, 255, 3), 255]
    m, t, s = board[1].read_pixels()
    assert np.array_equal(m, mask) and np.array_equal(t, thr) and np.array_equal(s, test)
    # the physics view of the chip follows (x, y order preserved)
    assert np.array_equal(sim.chip_state(1).mask, mask)
    assert not board[0].read_pixels()[0].any()
    board[1].reset_pixels()
    assert board[1].read_pixel_words().max() == 0


def test_pixel_verification_catches_a_flipped_bit(board, sim):
    chip = board[0]
    words = np.full((256, 256), 0x0A, np.uint8)
    chip.upload_pixel_words(words)
    flipped = sim.chips[0].pixel_words.copy()
    flipped[12, 34] ^= 0x01  # the board's copy loses a bit
    sim.chips[0].pixel_words = flipped
    with pytest.raises(PixelVerifyError, match=r"1 pixels differ, first \(x=12, y=34: sent 0x0A, read 0x0B\)"):
        chip.verify_pixel_words(words)
    with pytest.raises(ConfigError):
        chip.upload_pixel_words(np.full((256, 256), 64))  # 7 bits: refused before sending


def test_reversed_threshold_bits_option(board, sim):
    chip = board[0]
    chip.reverse_threshold_bits = True
    thr = np.zeros((256, 256), np.uint8)
    thr[0, 0] = 1
    chip.upload_pixels(np.zeros((256, 256), bool), thr)
    assert sim.chips[0].pixel_words[0, 0] == 0b1000 << 1  # 1 -> 8 on the wire
    assert chip.read_pixels()[1][0, 0] == 1


def test_header_filter_and_destination(board, sim):
    chip = board[1]
    chip.set_header_filter(0xFFFF, 0x00F0)
    assert chip.header_filter == (0xFFFF, 0x00F0)
    assert sent(sim, "SET_HEADERFILTER")[-1] == (0x00F0FFFF,)
    assert chip.destination == ("127.0.0.1", 8193)  # default 8192 + chip
    chip.set_destination("127.0.0.2", 9001)
    assert chip.destination == ("127.0.0.2", 9001)
    assert sent(sim, "SET_IPADDR_DEST")[-1] == (0x7F000002,)
    with pytest.raises(SpidrError, match="SET_IPADDR_DEST on chip 1 refused: ERR_ILLEGAL_PAR"):
        chip.ip_dest = "192.168.1.1"  # the simulator only sends to loopback
    assert chip.ip_dest == "127.0.0.2"
    with pytest.raises(ConfigError):
        chip.set_destination("localhost:1", 9000)
    with pytest.raises(ConfigError):
        chip.server_port = 70000
    chip.ip_src = "127.0.0.1"
    assert chip.ip_src == "127.0.0.1" and chip.device_port == 8193


def test_timer_set_read_reset_and_t0(board):
    chip = board[0]
    big = (1 << 40) + 12345
    chip.set_timer(big)
    assert chip.timer >= big
    chip.reset_timer()
    assert chip.timer < big
    chip.set_timer(big)
    chip.t0_sync()
    assert chip.timer < big
    board.reset_timers()
    board.restart_timers()
    assert chip.timer < big
    with pytest.raises(ConfigError):
        chip.set_timer(1 << 48)


def test_shutter_timestamps_and_packet_counter(board, sim):
    chip = board[0]
    board.trigger_config = board.trigger_config  # round trip
    board.start_autotrigger()
    board.stop_autotrigger()
    assert chip.shutter_end >= chip.shutter_start
    assert chip.pixel_packet_counter == 0  # no data-driven readout: nothing sent


def test_reset_and_reinit_restore_defaults(board):
    chip = board[0]
    chip.set_dac("Vthreshold_fine", 10)
    chip.reset()
    assert chip.get_dac("Vthreshold_fine") == 420
    chip.set_dac("Vthreshold_fine", 10)
    chip.reinit()
    assert chip.get_dac("Vthreshold_fine") == 420
