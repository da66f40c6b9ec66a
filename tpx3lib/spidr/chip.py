"""Operations on one Timepix3 chip behind a SPIDR board.

A :class:`SpidrChip` is a thin, stateless view: every property reads the board,
every setter writes it. Values are checked before anything is sent (DACs by
name and range, general configuration fields, pixel matrices), so bad input
raises :class:`~tpx3lib.errors.ConfigError` and leaves the chip untouched.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tpx3lib.errors import ConfigError, ProtocolError

from .controller import SpidrController
from .dacs import DAC_NAMES, DACS, check_dac_value, resolve_dac
from .genconfig import GeneralConfig
from .pixels import (
    MATRIX_SHAPE, N_COLUMNS, N_ROWS, compose_pixel_words, pixconf_messages, split_pixel_words,
)
from .protocol import Cmd, Reg, int_to_ip, ip_to_int

__all__ = ["SpidrChip", "LinkStatus", "PixelVerifyError", "device_name", "device_id_from_name"]

log = logging.getLogger(__name__)


def device_name(device_id: int) -> str:
    """Chip name from its device id: wafer = id>>8 & 0xFFF, row = id>>4 & 0xF, col = id & 0xF;
    ``"W%04d_%s%02d" % (wafer, chr(ord('A') + col - 1), row)``, e.g. 0x1C68 -> ``W0028_H06``."""
    device_id = int(device_id)
    wafer = (device_id >> 8) & 0xFFF
    row = (device_id >> 4) & 0xF
    col = device_id & 0xF
    return "W%04d_%s%02d" % (wafer, chr(ord("A") + col - 1), row)


def device_id_from_name(name: str) -> int:
    """Inverse of :func:`device_name` (``"W0028_H06"`` -> 0x1C68)."""
    text = str(name).strip().lstrip("_")
    try:
        wafer_part, pos = text.split("_")
        if not wafer_part.upper().startswith("W"):
            raise ValueError
        wafer = int(wafer_part[1:])
        col = ord(pos[0].upper()) - ord("A") + 1
        row = int(pos[1:])
    except (ValueError, IndexError):
        raise ConfigError(f"not a Timepix3 chip name like W0028_H06: {name!r}") from None
    if not (0 <= wafer <= 0xFFF and 1 <= col <= 15 and 0 <= row <= 15):
        raise ConfigError(f"chip name {name!r} is outside the device-id fields")
    return (wafer << 8) | (row << 4) | col


@dataclass(frozen=True)
class LinkStatus:
    """Link status register (0x300 + 4*chip): enabled = ~v & 0xFF, locked = v >> 16 & 0xFF."""

    raw: int

    @property
    def enabled(self) -> int:
        return (~self.raw) & 0xFF

    @property
    def locked(self) -> int:
        return (self.raw >> 16) & 0xFF

    @property
    def usable(self) -> bool:
        """At least one link enabled and every enabled link locked."""
        return self.enabled != 0 and self.locked == self.enabled


class PixelVerifyError(ProtocolError):
    """The pixel configuration read back differs from what was uploaded."""

    def __init__(self, chip: int, mismatches: int, first: list[tuple[int, int, int, int]]):
        self.chip = chip
        self.mismatches = mismatches
        self.first = first
        shown = ", ".join(f"(x={x}, y={y}: sent 0x{a:02X}, read 0x{b:02X})" for x, y, a, b in first)
        super().__init__(f"pixel configuration of chip {chip} does not read back: {mismatches} pixels differ, "
                         f"first {shown}")


def _u32(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    value = int(value)
    if not 0 <= value <= 0xFFFFFFFF:
        raise ConfigError(f"{what} = {value} does not fit in 32 bits")
    return value


class SpidrChip:
    """One chip of a board: ``SpidrChip(controller, index)``.

    ``reverse_threshold_bits``: send the 4 threshold bits of each pixel in
    reverse order (see docs/spidr.md; off by default, as in the spec).
    """

    def __init__(self, controller: SpidrController, index: int, *, reverse_threshold_bits: bool = False):
        self.controller = controller
        self.index = int(index)
        self.reverse_threshold_bits = bool(reverse_threshold_bits)

    def __repr__(self) -> str:
        return f"<SpidrChip {self.index} of {self.controller!r}>"

    # short-hands: every chip request addresses dev_nr = index
    def _get(self, cmd, arg=0) -> int:
        return self.controller.get_int(cmd, self.index, arg)

    def _set(self, cmd, value=0) -> None:
        self.controller.set_int(cmd, self.index, value)

    # ------------------------------------------------------------------ identity and links
    @property
    def device_id(self) -> int:
        """The chip's device id (GET_DEVICEID)."""
        return self._get(Cmd.GET_DEVICEID)

    @property
    def name(self) -> str:
        """The chip name derived from the device id, e.g. ``W0028_H06``."""
        return device_name(self.device_id)

    def link_status(self) -> LinkStatus:
        """Read the link status register of this chip."""
        return LinkStatus(self.controller.get_register(Reg.FE_GTX_CTRL_STAT + 4 * self.index))

    @property
    def efuses(self) -> int:
        return self._get(Cmd.GET_EFUSES)

    def reset(self) -> None:
        """RESET_DEVICE."""
        self._set(Cmd.RESET_DEVICE)

    def reinit(self) -> None:
        """REINIT_DEVICE (reset and re-initialise the chip's links)."""
        self._set(Cmd.REINIT_DEVICE)

    # ------------------------------------------------------------------ DACs
    def get_dac(self, dac) -> int:
        """Read one DAC by name or code; checks the board echoes the code."""
        d = resolve_dac(dac)
        value = self._get(Cmd.GET_DAC, int(d))
        code = (value >> 16) & 0xFFFF
        if code != int(d):
            raise ProtocolError(f"GET_DAC on chip {self.index}: asked for {d.name} (code {int(d)}), "
                                f"reply is for code {code}")
        return value & 0xFFFF

    def set_dac(self, dac, value) -> None:
        """Write one DAC by name or code (ConfigError before sending when invalid)."""
        d, v = check_dac_value(dac, value)
        self._set(Cmd.SET_DAC, (int(d) << 16) | v)

    def get_dacs(self) -> dict[str, int]:
        """All 18 DACs, name -> value, in code order."""
        return {d.name: self.get_dac(d) for d in DACS}

    def set_dacs(self, values: dict) -> None:
        """Write several DACs; all are validated before the first is sent."""
        checked = [check_dac_value(k, v) for k, v in dict(values).items()]
        for d, v in checked:
            self._set(Cmd.SET_DAC, (int(d) << 16) | v)

    def set_dacs_default(self) -> None:
        """SET_DACS_DFLT: the board's defaults for every DAC."""
        self._set(Cmd.SET_DACS_DFLT)

    dac_names = DAC_NAMES

    # ------------------------------------------------------------------ configuration registers
    @property
    def gen_config_word(self) -> int:
        """The raw GENCONFIG register."""
        return self._get(Cmd.GET_GENCONFIG)

    @gen_config_word.setter
    def gen_config_word(self, value: int) -> None:
        self._set(Cmd.SET_GENCONFIG, _u32(value, "GENCONFIG"))

    @property
    def general_config(self) -> GeneralConfig:
        """GENCONFIG decoded into a :class:`GeneralConfig`."""
        return GeneralConfig.from_word(self.gen_config_word)

    @general_config.setter
    def general_config(self, config: GeneralConfig) -> None:
        if not isinstance(config, GeneralConfig):
            raise ConfigError(f"general_config takes a GeneralConfig, got {type(config).__name__}")
        self._set(Cmd.SET_GENCONFIG, config.to_word())

    def update_general_config(self, **fields) -> GeneralConfig:
        """Read GENCONFIG, change the named fields (e.g. ``polarity="negative"``), write it back."""
        with self.controller.lock:
            current = self.general_config
            values = {k: getattr(current, k) for k in current.__dataclass_fields__}
            unknown = set(fields) - set(values)
            if unknown:
                raise ConfigError(f"unknown general config field(s) {sorted(unknown)}; valid: {sorted(values)}")
            values.update(fields)
            new = GeneralConfig(**values)
            self.general_config = new
            return new

    @property
    def pll_config(self) -> int:
        return self._get(Cmd.GET_PLLCONFIG)

    @pll_config.setter
    def pll_config(self, value: int) -> None:
        self._set(Cmd.SET_PLLCONFIG, _u32(value, "PLL config"))

    @property
    def outblock_config(self) -> int:
        return self._get(Cmd.GET_OUTBLOCKCONFIG)

    @outblock_config.setter
    def outblock_config(self, value: int) -> None:
        self._set(Cmd.SET_OUTBLOCKCONFIG, _u32(value, "output block config"))

    @property
    def slvs_config(self) -> int:
        return self._get(Cmd.GET_SLVSCONFIG)

    @slvs_config.setter
    def slvs_config(self, value: int) -> None:
        self._set(Cmd.SET_SLVSCONFIG, _u32(value, "SLVS config"))

    @property
    def power_pulse_config(self) -> int:
        return self._get(Cmd.GET_PWRPULSECONFIG)

    @power_pulse_config.setter
    def power_pulse_config(self, value: int) -> None:
        self._set(Cmd.SET_PWRPULSECONFIG, _u32(value, "power pulse config"))

    @property
    def readout_speed(self) -> int:
        """Link speed in Mbit/s (GET/SET_READOUTSPEED)."""
        return self._get(Cmd.GET_READOUTSPEED)

    @readout_speed.setter
    def readout_speed(self, mbits: int) -> None:
        self._set(Cmd.SET_READOUTSPEED, _u32(mbits, "readout speed"))

    def set_output_mask(self, mask: int) -> None:
        """SET_OUTPUTMASK: which of the 8 output links are used (bit per link)."""
        mask = _u32(mask, "output mask")
        if mask > 0xFF:
            raise ConfigError(f"output mask 0x{mask:X} has more than 8 links")
        self._set(Cmd.SET_OUTPUTMASK, mask)

    def set_sense_dac(self, dac) -> None:
        """Route a DAC to the sense output (SET_SENSEDAC)."""
        self._set(Cmd.SET_SENSEDAC, int(resolve_dac(dac)))

    def set_ext_dac(self, dac, value: int) -> None:
        """SET_EXTDAC: ``(code << 16) | value`` for the external DAC."""
        d = resolve_dac(dac)
        value = _u32(value, "external DAC value")
        if value > 0xFFFF:
            raise ConfigError("external DAC value must fit 16 bits")
        self._set(Cmd.SET_EXTDAC, (int(d) << 16) | value)

    # ------------------------------------------------------------------ test pulses
    @property
    def tp_period_phase(self) -> tuple[int, int]:
        """(period, phase) of the test pulses."""
        v = self._get(Cmd.GET_TPPERIODPHASE)
        return v & 0xFFFF, (v >> 16) & 0xFFFF

    def set_tp_period_phase(self, period: int, phase: int) -> None:
        period, phase = _u32(period, "period"), _u32(phase, "phase")
        if period > 0xFFFF or phase > 0xF:
            raise ConfigError(f"test pulse period must be 0..65535 and phase 0..15, got {period}, {phase}")
        self._set(Cmd.SET_TPPERIODPHASE, (phase << 16) | period)

    @property
    def tp_number(self) -> int:
        return self._get(Cmd.GET_TPNUMBER)

    @tp_number.setter
    def tp_number(self, value: int) -> None:
        self._set(Cmd.SET_TPNUMBER, _u32(value, "number of test pulses"))

    @property
    def ctpr(self) -> bytes:
        """The 256-bit column test pulse register as 32 bytes."""
        return self.controller.get_bytes(Cmd.GET_CTPR, self.index, 32)

    @ctpr.setter
    def ctpr(self, value: bytes) -> None:
        value = bytes(value)
        if len(value) != 32:
            raise ConfigError(f"the column test pulse register is 32 bytes, got {len(value)}")
        self.controller.set_int_bytes(Cmd.SET_CTPR, self.index, 0, value)

    def upload_packet(self, packet: bytes) -> None:
        """UPLOAD_PACKET: raw bytes for the chip (expert use)."""
        self.controller.set_int_bytes(Cmd.UPLOAD_PACKET, self.index, len(packet), bytes(packet))

    # ------------------------------------------------------------------ UDP destination and filters
    @property
    def header_filter(self) -> tuple[int, int]:
        """(eth_mask, cpu_mask): which packet headers go to Ethernet / the CPU."""
        v = self._get(Cmd.GET_HEADERFILTER)
        return v & 0xFFFF, (v >> 16) & 0xFFFF

    def set_header_filter(self, eth_mask: int, cpu_mask: int = 0) -> None:
        eth_mask, cpu_mask = _u32(eth_mask, "eth mask"), _u32(cpu_mask, "cpu mask")
        if eth_mask > 0xFFFF or cpu_mask > 0xFFFF:
            raise ConfigError("header filter masks are 16 bits each")
        self._set(Cmd.SET_HEADERFILTER, eth_mask | (cpu_mask << 16))

    @property
    def ip_dest(self) -> str:
        """Where this chip's UDP data goes (dotted IPv4)."""
        return int_to_ip(self._get(Cmd.GET_IPADDR_DEST))

    @ip_dest.setter
    def ip_dest(self, ip: str) -> None:
        try:
            value = ip_to_int(ip)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._set(Cmd.SET_IPADDR_DEST, value)

    @property
    def ip_src(self) -> str:
        """The board's source address for this chip's UDP data."""
        return int_to_ip(self._get(Cmd.GET_IPADDR_SRC))

    @ip_src.setter
    def ip_src(self, ip: str) -> None:
        try:
            value = ip_to_int(ip)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._set(Cmd.SET_IPADDR_SRC, value)

    @property
    def server_port(self) -> int:
        """Destination UDP port of this chip's data."""
        return self._get(Cmd.GET_SERVERPORT)

    @server_port.setter
    def server_port(self, port: int) -> None:
        port = _u32(port, "UDP port")
        if not 1 <= port <= 65535:
            raise ConfigError(f"UDP port must be 1..65535, got {port}")
        self._set(Cmd.SET_SERVERPORT, port)

    @property
    def device_port(self) -> int:
        """The board's source UDP port for this chip."""
        return self._get(Cmd.GET_DEVICEPORT)

    @property
    def destination(self) -> tuple[str, int]:
        """(ip, port) this chip sends UDP data to."""
        return self.ip_dest, self.server_port

    def set_destination(self, ip: str, port: int) -> None:
        """Set both parts of the UDP destination (checked before sending)."""
        try:
            ip_to_int(ip)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        port = _u32(port, "UDP port")
        if not 1 <= port <= 65535:
            raise ConfigError(f"UDP port must be 1..65535, got {port}")
        self.ip_dest = ip
        self.server_port = port

    # ------------------------------------------------------------------ timers
    @property
    def timer(self) -> int:
        """The 48-bit timer in 25 ns ticks (GET_TIMER: lsb, msb)."""
        lsb, msb = self.controller.get_ints(Cmd.GET_TIMER, self.index, 2)
        return ((msb & 0xFFFF) << 32) | lsb

    def set_timer(self, ticks: int) -> None:
        """SET_TIMER to a 48-bit value."""
        ticks = int(ticks)
        if not 0 <= ticks < 1 << 48:
            raise ConfigError(f"the timer is 48 bits, got {ticks}")
        self.controller.set_ints(Cmd.SET_TIMER, self.index, [ticks & 0xFFFFFFFF, ticks >> 32])

    def reset_timer(self) -> None:
        """RESET_TIMER addressed to this chip."""
        self._set(Cmd.RESET_TIMER)

    def t0_sync(self) -> None:
        """T0_SYNC: restart the timer at the next T0."""
        self._set(Cmd.T0_SYNC)

    @property
    def shutter_start(self) -> int:
        """Timer value (25 ns ticks) at the last shutter opening."""
        lsb, msb = self.controller.get_ints(Cmd.GET_SHUTTERSTART, self.index, 2)
        return ((msb & 0xFFFF) << 32) | lsb

    @property
    def shutter_end(self) -> int:
        """Timer value (25 ns ticks) at the last shutter closing."""
        lsb, msb = self.controller.get_ints(Cmd.GET_SHUTTEREND, self.index, 2)
        return ((msb & 0xFFFF) << 32) | lsb

    @property
    def pixel_packet_counter(self) -> int:
        """Pixel packets this chip sent (register PIXEL_PKTCOUNTER + 4*chip)."""
        return self.controller.get_register(Reg.PIXEL_PKTCOUNTER + 4 * self.index)

    # ------------------------------------------------------------------ pixel matrix
    def reset_pixels(self) -> None:
        """RESET_PIXELS: all pixels unmasked, threshold 0, test bit 0."""
        self._set(Cmd.RESET_PIXELS)

    def upload_pixel_words(self, words, *, columns_per_message: int = 3, verify: bool = True) -> None:
        """Upload a (256, 256) [x, y] matrix of 6-bit words: RESET_PIXELS then SET_PIXCONF.

        With ``verify`` the matrix is read back column by column (GET_PIXCONF)
        and a difference raises :class:`PixelVerifyError`.
        """
        w = np.asarray(words)
        if w.shape != MATRIX_SHAPE or w.dtype.kind not in "iu" or (w.size and (w.min() < 0 or w.max() > 0x3F)):
            raise ConfigError(f"pixel words must be a {MATRIX_SHAPE} integer matrix of values 0..63")
        w = w.astype(np.uint8)
        messages = list(pixconf_messages(w, columns_per_message))  # pack before sending anything
        with self.controller.lock:
            self.reset_pixels()
            for first, data in messages:
                self.controller.set_int_bytes(Cmd.SET_PIXCONF, self.index, first, data)
            if verify:
                self.verify_pixel_words(w)

    def upload_pixels(self, mask, threshold, test=None, **kw) -> None:
        """Upload mask (True = off), threshold (0..15) and test bits, all [x, y] (256, 256)."""
        if test is None:
            test = np.zeros(MATRIX_SHAPE, dtype=np.uint8)
        words = compose_pixel_words(mask, threshold, test, reverse_threshold=self.reverse_threshold_bits)
        self.upload_pixel_words(words, **kw)

    def read_pixel_column(self, x: int) -> np.ndarray:
        """GET_PIXCONF of column x: 256 words for y = 0..255; checks the column echo."""
        x = int(x)
        if not 0 <= x < N_COLUMNS:
            raise ConfigError(f"column must be 0..255, got {x}")
        col, data = self.controller.get_int_bytes(Cmd.GET_PIXCONF, self.index, N_ROWS, x)
        if col != x:
            raise ProtocolError(f"GET_PIXCONF on chip {self.index}: asked for column {x}, reply is for {col}")
        return np.frombuffer(data, dtype=np.uint8).copy()

    def read_pixel_words(self) -> np.ndarray:
        """The whole (256, 256) [x, y] matrix of 6-bit words as the board holds it."""
        out = np.empty(MATRIX_SHAPE, dtype=np.uint8)
        with self.controller.lock:
            for x in range(N_COLUMNS):
                out[x] = self.read_pixel_column(x)
        return out

    def read_pixels(self):
        """(mask bool, threshold uint8, test bool), each (256, 256) [x, y]."""
        return split_pixel_words(self.read_pixel_words(), reverse_threshold=self.reverse_threshold_bits)

    def verify_pixel_words(self, expected) -> None:
        """Read the matrix back and raise :class:`PixelVerifyError` on any difference."""
        expected = np.asarray(expected, dtype=np.uint8)
        got = self.read_pixel_words()
        diff = np.argwhere(got != expected)
        if len(diff):
            first = [(int(x), int(y), int(expected[x, y]), int(got[x, y])) for x, y in diff[:5]]
            raise PixelVerifyError(self.index, len(diff), first)
        log.debug("chip %d: pixel configuration verified", self.index)
