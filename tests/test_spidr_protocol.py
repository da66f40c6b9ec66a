"""SPIDR protocol facts, checked against hand-worked bytes and the spec's tables (no sockets)."""
from __future__ import annotations

import numpy as np
import pytest

from tpx3lib.errors import ConfigError, SpidrError
from tpx3lib.spidr import (
    Cmd, Dac, GeneralConfig, OperationMode, Polarity, Reg, bias_dac_from_voltage, bias_voltage_from_adc,
    check_dac_value, device_id_from_name, device_name, make_error_code,
)
from tpx3lib.spidr.board import TriggerConfig
from tpx3lib.spidr.chip import LinkStatus
from tpx3lib.spidr.pixels import (
    compose_pixel_words, pack_pixel_words, pixconf_messages, split_pixel_words, unpack_pixel_words,
)
from tpx3lib.spidr.protocol import (
    CMD_MASK, CMD_NOREPLY, CMD_REPLY, encode_reply, encode_request, int_to_ip, ip_to_int, parse_header,
)

# The command table of spec section 2, typed from the spec text.
SPEC_COMMANDS = {
    "NOP": 0x000, "GET_SOFTWVERSION": 0x901, "GET_FIRMWVERSION": 0x902, "GET_HEADERFILTER": 0x905,
    "SET_HEADERFILTER": 0x906, "RESET_MODULE": 0x907, "SET_BUSY": 0x908, "CLEAR_BUSY": 0x909,
    "SET_LOGLEVEL": 0x90A, "DISPLAY_INFO": 0x90B, "SET_TIMEOFDAY": 0x90C, "GET_DEVICECOUNT": 0x90D,
    "GET_BOARDID": 0x90E, "GET_CHIPBOARDID": 0x90F,
    "GET_DEVICEID": 0x110, "GET_DEVICEIDS": 0x111, "GET_IPADDR_SRC": 0x112, "SET_IPADDR_SRC": 0x113,
    "GET_IPADDR_DEST": 0x114, "SET_IPADDR_DEST": 0x115, "GET_DEVICEPORT": 0x116, "GET_SERVERPORT": 0x117,
    "SET_SERVERPORT": 0x119, "GET_DAC": 0x11A, "SET_DAC": 0x11B, "SET_DACS_DFLT": 0x11F, "CONFIG_CTPR": 0x120,
    "SET_CTPR": 0x121, "GET_CTPR": 0x122, "RESET_DEVICE": 0x124, "RESET_DEVICES": 0x125,
    "REINIT_DEVICE": 0x126, "REINIT_DEVICES": 0x127, "GET_EFUSES": 0x128,
    "SET_PIXCONF": 0x22A, "GET_PIXCONF": 0x22D, "RESET_PIXELS": 0x22E,
    "GET_TPPERIODPHASE": 0x330, "SET_TPPERIODPHASE": 0x331, "SET_TPNUMBER": 0x332, "GET_TPNUMBER": 0x333,
    "GET_GENCONFIG": 0x334, "SET_GENCONFIG": 0x335, "GET_PLLCONFIG": 0x336, "SET_PLLCONFIG": 0x337,
    "SET_SENSEDAC": 0x338, "SET_EXTDAC": 0x33A, "UPLOAD_PACKET": 0x33B, "GET_OUTBLOCKCONFIG": 0x33C,
    "SET_OUTBLOCKCONFIG": 0x33D, "GET_SLVSCONFIG": 0x33E, "SET_SLVSCONFIG": 0x33F,
    "GET_TRIGCONFIG": 0x440, "SET_TRIGCONFIG": 0x441, "AUTOTRIG_START": 0x442, "AUTOTRIG_STOP": 0x443,
    "SEQ_READOUT": 0x445, "DDRIVEN_READOUT": 0x446, "PAUSE_READOUT": 0x447,
    "GET_ADC": 0x548, "GET_REMOTETEMP": 0x549, "GET_LOCALTEMP": 0x54A, "GET_AVDD": 0x54B, "GET_DVDD": 0x54C,
    "GET_AVDD_NOW": 0x54D, "GET_SPIDR_ADC": 0x54E, "GET_DVDD_NOW": 0x54F, "GET_FPGATEMP": 0x568,
    "GET_FANSPEED": 0x569, "SET_FANSPEED": 0x56A, "SELECT_CHIPBOARD": 0x56B, "GET_VDD": 0x56C,
    "GET_VDD_NOW": 0x56D, "GET_HUMIDITY": 0x56E, "GET_PRESSURE": 0x56F,
    "RESTART_TIMERS": 0x550, "RESET_TIMER": 0x551, "GET_TIMER": 0x552, "SET_TIMER": 0x553,
    "GET_SHUTTERSTART": 0x554, "GET_SHUTTEREND": 0x555, "GET_EXTSHUTTERCNTR": 0x556, "GET_SHUTTERCNTR": 0x557,
    "RESET_COUNTERS": 0x558,
    "GET_PWRPULSECONFIG": 0x55B, "SET_PWRPULSECONFIG": 0x55C, "PWRPULSE_ENA": 0x55D, "TPX_POWER_ENA": 0x55E,
    "BIAS_SUPPLY_ENA": 0x55F, "SET_BIAS_ADJUST": 0x560, "DECODERS_ENA": 0x561, "SET_OUTPUTMASK": 0x562,
    "SET_READOUTSPEED": 0x563, "GET_READOUTSPEED": 0x564, "T0_SYNC": 0x565,
    "GET_GPIO": 0x780, "SET_GPIO": 0x781, "SET_GPIO_PIN": 0x782, "GET_SPIDRREG": 0x783, "SET_SPIDRREG": 0x784,
}

SPEC_REGISTERS = {
    "CPU2TPX_WR": 0x1C8, "SHUTTERTRIG_CTRL": 0x290, "SHUTTERTRIG_CNT": 0x294, "SHUTTERTRIG_FREQ": 0x298,
    "SHUTTERTRIG_LENGTH": 0x29C, "SHUTTERTRIG_DELAY": 0x2AC, "TDC_ENABLE": 0x2B8, "DEVICES_AND_PORTS": 0x2C0,
    "TDC_TRIGGERCOUNTER": 0x2F8, "FE_GTX_CTRL_STAT": 0x300, "PIXEL_PKTCOUNTER": 0x340, "IPMUX_CONFIG": 0x380,
    "UDP_PKTCOUNTER": 0x384, "UDPMON_PKTCOUNTER": 0x388, "UDPPAUSE_PKTCOUNTER": 0x38C, "PIXEL_FILTER": 0x394,
}

SPEC_DACS = [  # code, name, max, default (spec section 2)
    (1, "Ibias_Preamp_ON", 255, 128), (2, "Ibias_Preamp_OFF", 15, 8), (3, "VPreamp_NCAS", 255, 128),
    (4, "Ibias_Ikrum", 255, 5), (5, "Vfbk", 255, 128), (6, "Vthreshold_fine", 511, 420),
    (7, "Vthreshold_coarse", 15, 6), (8, "Ibias_DiscS1_ON", 255, 84), (9, "Ibias_DiscS1_OFF", 15, 8),
    (10, "Ibias_DiscS2_ON", 255, 128), (11, "Ibias_DiscS2_OFF", 15, 8), (12, "Ibias_PixelDAC", 255, 192),
    (13, "Ibias_TPbufferIn", 255, 128), (14, "Ibias_TPbufferOut", 255, 128), (15, "VTP_coarse", 255, 128),
    (16, "VTP_fine", 511, 256), (17, "Ibias_CP_PLL", 255, 128), (18, "PLL_Vcntrl", 255, 128),
]


def test_every_spec_command_id():
    for name, value in SPEC_COMMANDS.items():
        assert Cmd[name] == value, name
    # the flash range 0x670..0x67F is fully named
    assert {int(c) for c in Cmd if 0x670 <= c <= 0x67F} == set(range(0x670, 0x680))


def test_every_spec_register_and_flags():
    for name, value in SPEC_REGISTERS.items():
        assert Reg[name] == value, name
    assert (CMD_REPLY, CMD_NOREPLY, CMD_MASK) == (0x00010000, 0x00080000, 0x0000FFFF)


def test_dac_table_matches_spec():
    from tpx3lib.spidr import DACS
    for code, name, maximum, default in SPEC_DACS:
        info = DACS[Dac(code)]
        assert (info.name, info.minimum, info.maximum, info.default) == (name, 0, maximum, default)


def test_set_dac_frame_hand_worked():
    # SET_DAC Vthreshold_fine (code 6) = 150 on chip 0: [0x11B, 20, 0, 0, (6 << 16) | 150]
    frame = encode_request(Cmd.SET_DAC, 0, [(6 << 16) | 150])
    assert frame == bytes.fromhex("0000011B" "00000014" "00000000" "00000000" "00060096")


def test_reply_frame_and_header():
    frame = encode_reply(Cmd.GET_DAC, 1, 0, [(6 << 16) | 150])
    assert frame == bytes.fromhex("0001011A" "00000014" "00000000" "00000001" "00060096")
    h = parse_header(frame)
    assert (h.cmd, h.length, h.status, h.dev, h.command, h.is_reply) == (0x1011A, 20, 0, 1, 0x11A, True)


def test_error_names_decode():
    assert str(SpidrError("SET_DAC", 0, 4)) == "SET_DAC on chip 0 refused: ERR_ILLEGAL_PAR (code 0x4)"
    assert make_error_code(6, 6) == 0x606
    assert SpidrError("RESET_PIXELS", 0, 0x606).error_name == "ERR_TPX3_HARDW/EMPTY"


def test_pack_hand_worked_groups():
    assert pack_pixel_words([1, 2, 3, 4]) == bytes([0x04, 0x20, 0xC4])
    assert pack_pixel_words([0x3F, 0x00, 0x2A, 0x15]) == bytes([0xFC, 0x0A, 0x95])
    assert list(unpack_pixel_words(bytes([0xFC, 0x0A, 0x95]))) == [0x3F, 0x00, 0x2A, 0x15]


def test_hand_made_column_in_set_pixconf_message():
    mask = np.zeros((256, 256), bool)
    thr = np.zeros((256, 256), np.uint8)
    test = np.zeros((256, 256), bool)
    mask[7, 0] = True                     # word 0x01
    thr[7, 1] = 5                         # word 0x0A
    test[7, 2] = True                     # word 0x20
    mask[7, 3], thr[7, 3], test[7, 3] = True, 15, True  # word 0x3F
    words = compose_pixel_words(mask, thr, test)
    assert list(words[7, :4]) == [0x01, 0x0A, 0x20, 0x3F]
    messages = list(pixconf_messages(words))
    first, data = messages[2]  # columns 6, 7, 8
    assert first == 6 and len(data) == 3 * 192
    # b0 = 0x01<<2 | 0x0A>>4 = 0x04; b1 = 0xA0 | 0x20>>2 = 0xA8; b2 = 0 | 0x3F
    assert data[192:195] == bytes([0x04, 0xA8, 0x3F])
    assert data[:192] == bytes(192) and data[195:] == bytes(192 * 2 - 3)
    frame = encode_request(Cmd.SET_PIXCONF, 0, [first], data)
    assert len(frame) == 596 and frame[:20] == bytes.fromhex("0000022A" "00000254" "00000000" "00000000" "00000006")


def test_pymepix_split_85_plus_1():
    words = np.zeros((256, 256), np.uint8)
    messages = list(pixconf_messages(words))
    assert len(messages) == 86
    assert [f for f, _ in messages[:85]] == list(range(0, 255, 3))
    assert all(len(d) + 20 == 596 for _, d in messages[:85])
    assert messages[85][0] == 255 and len(messages[85][1]) + 20 == 212


def test_compose_split_round_trip_and_bit_reversal():
    rng = np.random.default_rng(1)
    mask = rng.random((256, 256)) < 0.1
    thr = rng.integers(0, 16, (256, 256)).astype(np.uint8)
    test = rng.random((256, 256)) < 0.5
    for rev in (False, True):
        m, t, s = split_pixel_words(compose_pixel_words(mask, thr, test, reverse_threshold=rev), reverse_threshold=rev)
        assert np.array_equal(m, mask) and np.array_equal(t, thr) and np.array_equal(s, test)
    one = np.zeros((256, 256), np.uint8)
    one[0, 0] = 1  # threshold 0b0001 reversed is 0b1000 -> word 8 << 1
    assert compose_pixel_words(np.zeros((256, 256), bool), one, np.zeros((256, 256), bool),
                               reverse_threshold=True)[0, 0] == 0x10


def test_compose_rejects_bad_matrices():
    z = np.zeros((256, 256), np.uint8)
    with pytest.raises(ConfigError, match="threshold"):
        compose_pixel_words(z, np.full((256, 256), 16), z)
    with pytest.raises(ConfigError, match="shape"):
        compose_pixel_words(np.zeros((255, 256)), z, z)
    with pytest.raises(ConfigError, match="mask"):
        compose_pixel_words(np.full((256, 256), 2), z, z)


def test_dac_checks():
    assert check_dac_value("Vthreshold_fine", 150) == (Dac.Vthreshold_fine, 150)
    assert check_dac_value("vthreshold_FINE", 511)[1] == 511
    assert check_dac_value(7, 15) == (Dac.Vthreshold_coarse, 15)
    with pytest.raises(ConfigError, match=r"Vthreshold_fine = 512 is out of range \[0, 511\]"):
        check_dac_value("Vthreshold_fine", 512)
    with pytest.raises(ConfigError, match="did you mean Vthreshold_fine"):
        check_dac_value("Vthreshold_fin", 1)
    with pytest.raises(ConfigError, match="integer"):
        check_dac_value("Vfbk", 1.5)
    with pytest.raises(ConfigError, match="integer"):
        check_dac_value("Vfbk", True)
    with pytest.raises(ConfigError, match="code"):
        check_dac_value(19, 0)


def test_device_name_formula():
    # wafer 28, row 6, col 8 -> W0028_H06; the SoPhy fixture's ChipID array holds 7272 = 0x1C68
    assert device_name(0x1C68) == "W0028_H06" == device_name(7272)
    # pymepix's example chip W0026_K08: wafer 26, row 8, col 11 (K)
    assert device_name((26 << 8) | (8 << 4) | 11) == "W0026_K08"
    assert device_id_from_name("W0026_K08") == (26 << 8) | (8 << 4) | 11
    assert device_id_from_name("_W0028_H06") == 0x1C68
    with pytest.raises(ConfigError):
        device_id_from_name("chip7")


def test_link_status_decoding():
    healthy = LinkStatus(0x00FF0000)
    assert (healthy.enabled, healthy.locked, healthy.usable) == (0xFF, 0xFF, True)
    half = LinkStatus(0x000F00F0)  # links 0..3 enabled, 0..3 locked
    assert (half.enabled, half.locked, half.usable) == (0x0F, 0x0F, True)
    unlocked = LinkStatus(0x00070000)
    assert (unlocked.enabled, unlocked.locked, unlocked.usable) == (0xFF, 0x07, False)
    assert not LinkStatus(0x000000FF).usable  # nothing enabled


def test_bias_formulas_both_ways():
    assert bias_dac_from_voltage(50) == 0x69B          # int(38 * 4095 / 92) = 1691
    assert bias_dac_from_voltage(12) == 0
    assert bias_dac_from_voltage(104) == 4095
    # (1362 * 1500 + 4095) / 4096 / 10 = 2047095 / 40960
    assert bias_voltage_from_adc(1362) == pytest.approx(2047095 / 40960)
    assert bias_voltage_from_adc(0x1000 | 1362) == bias_voltage_from_adc(1362)  # 12 bits only
    for bad in (11.9, 104.5, float("nan"), "50", True):
        with pytest.raises(ConfigError):
            bias_dac_from_voltage(bad)


def test_general_config_bits():
    g = GeneralConfig(polarity="negative", operation_mode="toa", gray_counter=True, superpixel=True)
    assert g.to_word() == 0x1 | 0x2 | 0x8 | 0x40
    assert GeneralConfig.from_word(0x4 | 0x20 | 0x200 | 0x400 | 0x800 | 0x80) == GeneralConfig(
        Polarity.POSITIVE, OperationMode.EVENT_ITOT, gray_counter=False, test_pulse=True, superpixel=False,
        timer_overflow_stop=True, test_pulse_digital=True, ext_test_pulse=True, toa_clock_system=True)
    assert GeneralConfig.from_word(0x10).extra_bits == 0x10 and GeneralConfig.from_word(0x10).to_word() == 0x10
    with pytest.raises(ConfigError):
        GeneralConfig.from_word(0x6)
    with pytest.raises(ConfigError, match="polarity"):
        GeneralConfig(polarity="sideways")


def test_trigger_config_words():
    assert TriggerConfig(4, 0, 10, 1).words() == [4, 0, 10, 1]
    assert TriggerConfig(0, 10000, 5, 1, 250).words() == [0, 10000, 5, 1, 250]
    with pytest.raises(ConfigError):
        TriggerConfig(7)
    with pytest.raises(ConfigError):
        TriggerConfig(4, -1)


def test_ip_packing():
    assert ip_to_int("192.168.1.10") == (192 << 24) | (168 << 16) | (1 << 8) | 10
    assert int_to_ip(0x7F000001) == "127.0.0.1"
    with pytest.raises(ValueError):
        ip_to_int("256.0.0.1")
