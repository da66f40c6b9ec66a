"""The SPIDR TCP control protocol: command ids, registers, error codes and framing.

Every message is a sequence of 32-bit **big-endian** words.

Request::

    [cmd, total_length_bytes, 0, dev_nr, payload words..., payload bytes...]

Reply::

    [cmd | CMD_REPLY, total_length_bytes, error_code, dev_nr, data...]

``total_length_bytes`` counts the 16-byte header. ``dev_nr`` is 0 for board
commands and the chip index (from 0) for chip commands. A few commands carry raw
bytes after their first payload word (``SET_PIXCONF``, ``UPLOAD_PACKET``,
``SET_CTPR``) or return bytes after their first data word (``GET_PIXCONF``).

This module is pure data and byte packing: no sockets. The controller
(:mod:`tpx3lib.spidr.controller`) and the simulated board both build on it.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = [
    "CMD_REPLY", "CMD_NOREPLY", "CMD_MASK", "HEADER_SIZE", "MAX_MESSAGE_SIZE", "DEFAULT_PORT",
    "DEFAULT_UDP_BASE_PORT",
    "CPU2TPX_EXT_REFCLK_BIT", "Cmd", "Reg", "ErrorCode", "Tpx3HwError", "ShutterMode", "ReadoutSpeed",
    "make_error_code", "command_name",
    "Header", "encode_request", "encode_reply", "parse_header", "words_to_bytes", "bytes_to_words",
    "ip_to_int", "int_to_ip",
]

#: Flag bits of the command word.
CMD_REPLY = 0x00010000
CMD_NOREPLY = 0x00080000
CMD_MASK = 0x0000FFFF

#: Every request and reply starts with four 32-bit words.
HEADER_SIZE = 16
#: Largest message either side accepts (a SET_PIXCONF of 4 columns is 788 bytes;
#: GET_PIXCONF replies are 276). Anything bigger is a framing error.
MAX_MESSAGE_SIZE = 16384
#: The board's TCP control port.
DEFAULT_PORT = 50000
#: Chip i streams UDP to this port + i unless told otherwise.
DEFAULT_UDP_BASE_PORT = 8192


class Cmd(enum.IntEnum):
    """SPIDR command ids (the low 16 bits of the command word)."""

    # board / info
    NOP = 0x000
    GET_SOFTWVERSION = 0x901
    GET_FIRMWVERSION = 0x902
    GET_HEADERFILTER = 0x905
    SET_HEADERFILTER = 0x906
    RESET_MODULE = 0x907
    SET_BUSY = 0x908
    CLEAR_BUSY = 0x909
    SET_LOGLEVEL = 0x90A
    DISPLAY_INFO = 0x90B
    SET_TIMEOFDAY = 0x90C
    GET_DEVICECOUNT = 0x90D
    GET_BOARDID = 0x90E
    GET_CHIPBOARDID = 0x90F
    # chip
    GET_DEVICEID = 0x110
    GET_DEVICEIDS = 0x111
    GET_IPADDR_SRC = 0x112
    SET_IPADDR_SRC = 0x113
    GET_IPADDR_DEST = 0x114
    SET_IPADDR_DEST = 0x115
    GET_DEVICEPORT = 0x116
    GET_SERVERPORT = 0x117
    SET_SERVERPORT = 0x119
    GET_DAC = 0x11A
    SET_DAC = 0x11B
    SET_DACS_DFLT = 0x11F
    CONFIG_CTPR = 0x120
    SET_CTPR = 0x121
    GET_CTPR = 0x122
    RESET_DEVICE = 0x124
    RESET_DEVICES = 0x125
    REINIT_DEVICE = 0x126
    REINIT_DEVICES = 0x127
    GET_EFUSES = 0x128
    # pixels
    SET_PIXCONF = 0x22A
    GET_PIXCONF = 0x22D
    RESET_PIXELS = 0x22E
    # test pulses / configuration
    GET_TPPERIODPHASE = 0x330
    SET_TPPERIODPHASE = 0x331
    SET_TPNUMBER = 0x332
    GET_TPNUMBER = 0x333
    GET_GENCONFIG = 0x334
    SET_GENCONFIG = 0x335
    GET_PLLCONFIG = 0x336
    SET_PLLCONFIG = 0x337
    SET_SENSEDAC = 0x338
    SET_EXTDAC = 0x33A
    UPLOAD_PACKET = 0x33B
    GET_OUTBLOCKCONFIG = 0x33C
    SET_OUTBLOCKCONFIG = 0x33D
    GET_SLVSCONFIG = 0x33E
    SET_SLVSCONFIG = 0x33F
    # shutter / readout
    GET_TRIGCONFIG = 0x440
    SET_TRIGCONFIG = 0x441
    AUTOTRIG_START = 0x442
    AUTOTRIG_STOP = 0x443
    SEQ_READOUT = 0x445
    DDRIVEN_READOUT = 0x446
    PAUSE_READOUT = 0x447
    # monitoring
    GET_ADC = 0x548
    GET_REMOTETEMP = 0x549
    GET_LOCALTEMP = 0x54A
    GET_AVDD = 0x54B
    GET_DVDD = 0x54C
    GET_AVDD_NOW = 0x54D
    GET_SPIDR_ADC = 0x54E
    GET_DVDD_NOW = 0x54F
    GET_FPGATEMP = 0x568
    GET_FANSPEED = 0x569
    SET_FANSPEED = 0x56A
    SELECT_CHIPBOARD = 0x56B
    GET_VDD = 0x56C
    GET_VDD_NOW = 0x56D
    GET_HUMIDITY = 0x56E
    GET_PRESSURE = 0x56F
    # timers and counters
    RESTART_TIMERS = 0x550
    RESET_TIMER = 0x551
    GET_TIMER = 0x552
    SET_TIMER = 0x553
    GET_SHUTTERSTART = 0x554
    GET_SHUTTEREND = 0x555
    GET_EXTSHUTTERCNTR = 0x556
    GET_SHUTTERCNTR = 0x557
    RESET_COUNTERS = 0x558
    # power / bias / readout
    GET_PWRPULSECONFIG = 0x55B
    SET_PWRPULSECONFIG = 0x55C
    PWRPULSE_ENA = 0x55D
    TPX_POWER_ENA = 0x55E
    BIAS_SUPPLY_ENA = 0x55F
    SET_BIAS_ADJUST = 0x560
    DECODERS_ENA = 0x561
    SET_OUTPUTMASK = 0x562
    SET_READOUTSPEED = 0x563
    GET_READOUTSPEED = 0x564
    T0_SYNC = 0x565
    # registers / GPIO
    GET_GPIO = 0x780
    SET_GPIO = 0x781
    SET_GPIO_PIN = 0x782
    GET_SPIDRREG = 0x783
    SET_SPIDRREG = 0x784
    # flash storage (store / erase / valid), 0x670..0x67F. The spec gives only the
    # range; the individual names follow the SPIDR software's naming.
    STORE_ADDRPORTS = 0x670
    STORE_DACS = 0x671
    STORE_REGISTERS = 0x672
    STORE_PIXCONF = 0x673
    STORE_STARTOPTS = 0x674
    GET_STARTOPTS = 0x675
    WRITE_FLASH = 0x676
    READ_FLASH = 0x677
    ERASE_ADDRPORTS = 0x678
    ERASE_DACS = 0x679
    ERASE_REGISTERS = 0x67A
    ERASE_PIXCONF = 0x67B
    VALID_ADDRPORTS = 0x67C
    VALID_DACS = 0x67D
    VALID_REGISTERS = 0x67E
    VALID_PIXCONF = 0x67F


class Reg(enum.IntEnum):
    """SPIDR FPGA register addresses (for GET_SPIDRREG / SET_SPIDRREG)."""

    CPU2TPX_WR = 0x1C8
    SHUTTERTRIG_CTRL = 0x290
    SHUTTERTRIG_CNT = 0x294
    SHUTTERTRIG_FREQ = 0x298
    SHUTTERTRIG_LENGTH = 0x29C
    SHUTTERTRIG_DELAY = 0x2AC
    TDC_ENABLE = 0x2B8
    DEVICES_AND_PORTS = 0x2C0
    TDC_TRIGGERCOUNTER = 0x2F8
    FE_GTX_CTRL_STAT = 0x300  # + 4 * chip: link status
    PIXEL_PKTCOUNTER = 0x340  # + 4 * chip (see docs/spidr.md)
    IPMUX_CONFIG = 0x380
    UDP_PKTCOUNTER = 0x384
    UDPMON_PKTCOUNTER = 0x388
    UDPPAUSE_PKTCOUNTER = 0x38C
    PIXEL_FILTER = 0x394


#: Bit of CPU2TPX_WR that selects the external reference clock (cleared = internal).
CPU2TPX_EXT_REFCLK_BIT = 25


class ErrorCode(enum.IntEnum):
    """``code & 0xFF`` of a reply's error field (names as tpx3lib.errors.SPIDR_ERRORS)."""

    NO_ERROR = 0
    ERR_UNKNOWN_CMD = 1
    ERR_MSG_LENGTH = 2
    ERR_SEQUENCE = 3
    ERR_ILLEGAL_PAR = 4
    ERR_NOT_IMPLEMENTED = 5
    ERR_TPX3_HARDW = 6
    ERR_ADC_HARDW = 7
    ERR_DAC_HARDW = 8
    ERR_MON_HARDW = 9
    ERR_FLASH_STORAGE = 10
    ERR_MONITOR = 11


class Tpx3HwError(enum.IntEnum):
    """``(code >> 8) & 0xFF`` when the main code is ERR_TPX3_HARDW."""

    NO_ERROR = 0
    SC_ILLEGAL = 1
    SC_STATE = 2
    SC_ERRSTATE = 3
    SC_WORDS = 4
    TX_TIMEOUT = 5
    EMPTY = 6
    NOTEMPTY = 7
    FULL = 8
    UNEXP_REPLY = 9
    UNEXP_HEADER = 10
    LINKS_UNLOCKED = 11


class ShutterMode(enum.IntEnum):
    """First word of SET_TRIGCONFIG."""

    EXT_RISING_FALLING = 0
    EXT_FALLING_RISING = 1
    EXT_RISING_TIMER = 2
    EXT_FALLING_TIMER = 3
    AUTO = 4
    PULSE_COUNTER = 5
    OPEN = 6


class ReadoutSpeed(enum.IntEnum):
    """Magic numbers of RESET_MODULE."""

    DEFAULT = 0
    HIGH = 0x89ABCDEF
    LOW = 0x12345678


def make_error_code(main: int, sub: int = 0) -> int:
    """Compose a reply error field: ``main | sub << 8`` (sub only matters for ERR_TPX3_HARDW)."""
    return (int(main) & 0xFF) | ((int(sub) & 0xFF) << 8)


def command_name(cmd: int) -> str:
    """``SET_DAC`` for 0x11B; ``CMD_0x123`` for ids this module does not know."""
    try:
        return Cmd(cmd & CMD_MASK).name
    except ValueError:
        return f"CMD_0x{cmd & CMD_MASK:03X}"


@dataclass(frozen=True)
class Header:
    """The four header words of a request or a reply.

    ``status`` is the third word: 0 in requests, the error code in replies.
    """

    cmd: int
    length: int
    status: int
    dev: int

    @property
    def command(self) -> int:
        """The command id without flag bits."""
        return self.cmd & CMD_MASK

    @property
    def is_reply(self) -> bool:
        return bool(self.cmd & CMD_REPLY)


_HEADER = struct.Struct(">4I")


def words_to_bytes(words) -> bytes:
    """Pack 32-bit unsigned words big-endian (values are masked to 32 bits)."""
    words = [int(w) & 0xFFFFFFFF for w in words]
    return struct.pack(f">{len(words)}I", *words)


def bytes_to_words(data: bytes) -> tuple[int, ...]:
    """Unpack big-endian 32-bit words; ``len(data)`` must be a multiple of 4."""
    if len(data) % 4:
        raise ValueError(f"{len(data)} bytes is not a whole number of 32-bit words")
    return struct.unpack(f">{len(data) // 4}I", data)


def encode_request(cmd: int, dev: int = 0, words=(), data: bytes = b"") -> bytes:
    """Build a request message: header, payload words, then raw payload bytes."""
    body = words_to_bytes(words) + bytes(data)
    return _HEADER.pack(int(cmd) & 0xFFFFFFFF, HEADER_SIZE + len(body), 0, int(dev) & 0xFFFFFFFF) + body


def encode_reply(cmd: int, dev: int = 0, error: int = 0, words=(), data: bytes = b"") -> bytes:
    """Build a reply message (used by the simulated board): echo with CMD_REPLY set."""
    body = words_to_bytes(words) + bytes(data)
    return _HEADER.pack((int(cmd) | CMD_REPLY) & 0xFFFFFFFF, HEADER_SIZE + len(body), int(error) & 0xFFFFFFFF,
                        int(dev) & 0xFFFFFFFF) + body


def parse_header(data: bytes) -> Header:
    """Decode the first 16 bytes of a message."""
    if len(data) < HEADER_SIZE:
        raise ValueError(f"a SPIDR header is {HEADER_SIZE} bytes, got {len(data)}")
    return Header(*_HEADER.unpack_from(data, 0))


def ip_to_int(ip: str) -> int:
    """``"192.168.1.10"`` -> ``a<<24 | b<<16 | c<<8 | d`` (as GET/SET_IPADDR_* carry it)."""
    parts = str(ip).strip().split(".")
    if len(parts) != 4 or not all(p.isdigit() and 0 <= int(p) <= 255 for p in parts):
        raise ValueError(f"not a dotted IPv4 address: {ip!r}")
    a, b, c, d = (int(p) for p in parts)
    return (a << 24) | (b << 16) | (c << 8) | d


def int_to_ip(value: int) -> str:
    """Inverse of :func:`ip_to_int`."""
    v = int(value) & 0xFFFFFFFF
    return f"{v >> 24 & 0xFF}.{v >> 16 & 0xFF}.{v >> 8 & 0xFF}.{v & 0xFF}"
