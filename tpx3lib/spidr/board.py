"""Operations on a SPIDR board as a whole, and its chips.

    board = SpidrBoard.connect(("127.0.0.1", 50000))
    board.fpga_temperature        # degrees C
    board.bias_voltage = 50       # enables nothing by itself; see enable_bias()
    chip = board[0]               # a SpidrChip

Units: temperatures arrive in milli-degrees C and are returned in degrees C;
AVDD/DVDD/VDD arrive as (mV, mA, mW) and are returned as :class:`PowerReading`
with those units; fan speeds in rpm; humidity in %; pressure in mbar.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

from tpx3lib.errors import ConfigError

from .chip import SpidrChip
from .controller import DEFAULT_TIMEOUT, SpidrController
from .protocol import CPU2TPX_EXT_REFCLK_BIT, Cmd, ReadoutSpeed, Reg, ShutterMode

__all__ = [
    "SpidrBoard", "PowerReading", "TriggerConfig", "BIAS_MIN_V", "BIAS_MAX_V",
    "bias_dac_from_voltage", "bias_voltage_from_adc", "OPEN_SHUTTER_TRIGGER", "CLOSED_SHUTTER_TRIGGER",
]

BIAS_MIN_V = 12.0
BIAS_MAX_V = 104.0


def bias_dac_from_voltage(volts: float) -> int:
    """SET_BIAS_ADJUST value for a bias voltage: ``int((V - 12) * 4095 / 92)``; 50 V -> 0x69B.

    Unlike pymepix (which silently clamps), a voltage outside [12, 104] V is a ConfigError.
    """
    if isinstance(volts, bool) or not isinstance(volts, numbers.Real) or not math.isfinite(volts):
        raise ConfigError(f"bias voltage must be a number of volts, got {volts!r}")
    if not BIAS_MIN_V <= volts <= BIAS_MAX_V:
        raise ConfigError(f"bias voltage {volts} V is outside the supply's range [{BIAS_MIN_V:g}, {BIAS_MAX_V:g}] V")
    return int((volts - BIAS_MIN_V) * 4095 / (BIAS_MAX_V - BIAS_MIN_V))


def bias_voltage_from_adc(adc: int) -> float:
    """Bias read-back from GET_SPIDR_ADC channel 1: ``((adc & 0xFFF) * 1500 + 4095) / 4096 / 10`` volts."""
    return ((int(adc) & 0xFFF) * 1500 + 4095) / 4096 / 10


class PowerReading(NamedTuple):
    """One supply reading as the board reports it."""

    millivolts: int
    milliamps: int
    milliwatts: int

    @property
    def volts(self) -> float:
        return self.millivolts / 1000

    @property
    def amps(self) -> float:
        return self.milliamps / 1000

    @property
    def watts(self) -> float:
        return self.milliwatts / 1000


@dataclass(frozen=True)
class TriggerConfig:
    """Shutter/trigger configuration (SET/GET_TRIGCONFIG).

    ``frequency`` is the auto-trigger rate in the unit the board firmware uses
    (Hz for the firmware the spec describes; some firmware takes mHz).
    """

    mode: ShutterMode = ShutterMode.AUTO
    length_us: int = 0
    frequency: int = 10
    count: int = 1
    delay_ns: int = 0

    def __post_init__(self):
        try:
            object.__setattr__(self, "mode", ShutterMode(self.mode))
        except ValueError:
            raise ConfigError(f"shutter mode must be 0..6, got {self.mode!r}") from None
        for name in ("length_us", "frequency", "count", "delay_ns"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v <= 0xFFFFFFFF:
                raise ConfigError(f"trigger config {name} must be an unsigned 32-bit integer, got {v!r}")

    def words(self) -> list[int]:
        """The SET_TRIGCONFIG payload (the delay word only when non-zero, as pymepix sends it)."""
        w = [int(self.mode), int(self.length_us), int(self.frequency), int(self.count)]
        if self.delay_ns:
            w.append(int(self.delay_ns))
        return w


#: "Open shutter": auto trigger, length 0, 10 Hz, 1 trigger (then AUTOTRIG_START).
OPEN_SHUTTER_TRIGGER = TriggerConfig(ShutterMode.AUTO, 0, 10, 1)
#: What pymepix's stop sequence sets before AUTOTRIG_STOP.
CLOSED_SHUTTER_TRIGGER = TriggerConfig(ShutterMode.EXT_RISING_FALLING, 10000, 5, 1)


class SpidrBoard:
    """A SPIDR board and its chips, over one :class:`SpidrController`.

    ``SpidrBoard(controller)`` asks the board how many chips it has
    (GET_DEVICECOUNT); ``board[i]`` is chip i, ``len(board)`` the count.
    """

    def __init__(self, controller: SpidrController, *, n_chips: int | None = None):
        self.controller = controller
        count = self.device_count if n_chips is None else int(n_chips)
        self.chips = [SpidrChip(controller, i) for i in range(count)]

    @classmethod
    def connect(cls, address=("127.0.0.1", 50000), timeout: float = DEFAULT_TIMEOUT) -> "SpidrBoard":
        """Open a controller to ``address`` and wrap it."""
        return cls(SpidrController(address, timeout))

    def __repr__(self) -> str:
        return f"<SpidrBoard {len(self.chips)} chip(s) via {self.controller!r}>"

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, index: int) -> SpidrChip:
        return self.chips[index]

    def __iter__(self):
        return iter(self.chips)

    def close(self) -> None:
        self.controller.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # short-hands for board-level requests (dev_nr 0, errors say "on the board")
    def _get(self, cmd, arg=0) -> int:
        return self.controller.get_int(cmd, None, arg)

    def _set(self, cmd, value=0) -> None:
        self.controller.set_int(cmd, None, value)

    # ------------------------------------------------------------------ identity
    @property
    def software_version(self) -> int:
        return self._get(Cmd.GET_SOFTWVERSION)

    @property
    def firmware_version(self) -> int:
        return self._get(Cmd.GET_FIRMWVERSION)

    @property
    def device_count(self) -> int:
        """Number of chip slots the board reports (GET_DEVICECOUNT)."""
        return self._get(Cmd.GET_DEVICECOUNT)

    @property
    def device_ids(self) -> tuple[int, ...]:
        """Device ids of all chips (GET_DEVICEIDS)."""
        return self.controller.get_ints(Cmd.GET_DEVICEIDS, None, None)

    @property
    def board_id(self) -> int:
        return self._get(Cmd.GET_BOARDID)

    @property
    def chipboard_id(self) -> int:
        return self._get(Cmd.GET_CHIPBOARDID)

    def nop(self) -> None:
        """NOP: a round trip that changes nothing."""
        self.controller.request(Cmd.NOP, None, [0])

    # ------------------------------------------------------------------ monitoring
    @property
    def local_temperature(self) -> float:
        """Board temperature sensor, degrees C."""
        return self._signed(self._get(Cmd.GET_LOCALTEMP)) / 1000

    @property
    def remote_temperature(self) -> float:
        """Remote (chip board) temperature sensor, degrees C."""
        return self._signed(self._get(Cmd.GET_REMOTETEMP)) / 1000

    @property
    def fpga_temperature(self) -> float:
        """FPGA temperature, degrees C."""
        return self._signed(self._get(Cmd.GET_FPGATEMP)) / 1000

    @staticmethod
    def _signed(v: int) -> int:
        return v - (1 << 32) if v & 0x80000000 else v

    @property
    def humidity(self) -> int:
        """Relative humidity, %."""
        return self._get(Cmd.GET_HUMIDITY)

    @property
    def pressure(self) -> int:
        """Pressure, mbar."""
        return self._get(Cmd.GET_PRESSURE)

    def fan_speed(self, fan: int = 0) -> int:
        """Fan speed in rpm: fan 0 the chip board's, 1 the SPIDR board's."""
        if fan not in (0, 1):
            raise ConfigError(f"fan must be 0 (chip board) or 1 (SPIDR), got {fan!r}")
        return self._get(Cmd.GET_FANSPEED, fan)

    @property
    def chipboard_fan_speed(self) -> int:
        return self.fan_speed(0)

    @property
    def spidr_fan_speed(self) -> int:
        return self.fan_speed(1)

    def set_fan_speed(self, fan: int, percent: int) -> None:
        """SET_FANSPEED: ``fan << 16 | percent`` (0..100 %)."""
        if fan not in (0, 1):
            raise ConfigError(f"fan must be 0 (chip board) or 1 (SPIDR), got {fan!r}")
        if isinstance(percent, bool) or not isinstance(percent, numbers.Integral) or not 0 <= percent <= 100:
            raise ConfigError(f"fan speed is a percentage 0..100, got {percent!r}")
        self._set(Cmd.SET_FANSPEED, (fan << 16) | int(percent))

    def _power(self, cmd) -> PowerReading:
        mv, ma, mw = self.controller.get_ints(cmd, None, 3)
        return PowerReading(mv, ma, mw)

    @property
    def avdd(self) -> PowerReading:
        return self._power(Cmd.GET_AVDD)

    @property
    def dvdd(self) -> PowerReading:
        return self._power(Cmd.GET_DVDD)

    @property
    def vdd(self) -> PowerReading:
        return self._power(Cmd.GET_VDD)

    @property
    def avdd_now(self) -> PowerReading:
        return self._power(Cmd.GET_AVDD_NOW)

    @property
    def dvdd_now(self) -> PowerReading:
        return self._power(Cmd.GET_DVDD_NOW)

    @property
    def vdd_now(self) -> PowerReading:
        return self._power(Cmd.GET_VDD_NOW)

    def spidr_adc(self, channel: int, samples: int = 1) -> int:
        """GET_SPIDR_ADC: ``channel | samples << 16`` -> raw ADC value."""
        if not 0 <= int(channel) <= 0xFFFF or not 1 <= int(samples) <= 0xFFFF:
            raise ConfigError("ADC channel must be 0..65535 and samples 1..65535")
        arg = int(channel) if samples == 1 else (int(channel) | (int(samples) << 16))
        return self._get(Cmd.GET_SPIDR_ADC, arg)

    def chip_adc(self, chip: int, samples: int = 1) -> int:
        """GET_ADC of a chip's sense output (after :meth:`SpidrChip.set_sense_dac`)."""
        return self.controller.get_int(Cmd.GET_ADC, chip, samples)

    # ------------------------------------------------------------------ bias
    def enable_bias(self, enable: bool = True) -> None:
        """BIAS_SUPPLY_ENA on or off."""
        self._set(Cmd.BIAS_SUPPLY_ENA, 1 if enable else 0)

    @property
    def bias_voltage(self) -> float:
        """Bias read back through the SPIDR ADC (channel 1), volts."""
        return bias_voltage_from_adc(self.spidr_adc(1))

    @bias_voltage.setter
    def bias_voltage(self, volts: float) -> None:
        self._set(Cmd.SET_BIAS_ADJUST, bias_dac_from_voltage(volts))

    # ------------------------------------------------------------------ shutter, trigger, readout
    @property
    def trigger_config(self) -> TriggerConfig:
        mode, length, freq, count, delay = self.controller.get_ints(Cmd.GET_TRIGCONFIG, None, 5)
        return TriggerConfig(ShutterMode(mode), length, freq, count, delay)

    @trigger_config.setter
    def trigger_config(self, config: TriggerConfig) -> None:
        if not isinstance(config, TriggerConfig):
            raise ConfigError(f"trigger_config takes a TriggerConfig, got {type(config).__name__}")
        self.controller.set_ints(Cmd.SET_TRIGCONFIG, None, config.words())

    def start_autotrigger(self) -> None:
        self._set(Cmd.AUTOTRIG_START)

    def stop_autotrigger(self) -> None:
        self._set(Cmd.AUTOTRIG_STOP)

    def open_shutter(self) -> None:
        """Trigger config [4, 0, 10, 1] then AUTOTRIG_START."""
        with self.controller.lock:
            self.trigger_config = OPEN_SHUTTER_TRIGGER
            self.start_autotrigger()

    def close_shutter(self) -> None:
        """AUTOTRIG_STOP."""
        self.stop_autotrigger()

    def datadriven_readout(self) -> None:
        """DDRIVEN_READOUT: pixels are sent as they are hit."""
        self._set(Cmd.DDRIVEN_READOUT)

    def sequential_readout(self, tokens: int = 128, now: bool = False) -> None:
        """SEQ_READOUT (frame-based); ``now`` sets bit 31."""
        tokens = int(tokens)
        if not 0 <= tokens <= 0x7FFFFFFF:
            raise ConfigError(f"tokens must be 0..2^31-1, got {tokens}")
        self._set(Cmd.SEQ_READOUT, tokens | (0x80000000 if now else 0))

    def pause_readout(self) -> None:
        self._set(Cmd.PAUSE_READOUT)

    def enable_decoders(self, enable: bool = True) -> None:
        """DECODERS_ENA: let the FPGA remove the gray code of ToA."""
        self._set(Cmd.DECODERS_ENA, 1 if enable else 0)

    def enable_tpx_power(self, enable: bool = True) -> None:
        self._set(Cmd.TPX_POWER_ENA, 1 if enable else 0)

    def enable_power_pulsing(self, enable: bool = True) -> None:
        self._set(Cmd.PWRPULSE_ENA, 1 if enable else 0)

    def set_busy(self) -> None:
        self._set(Cmd.SET_BUSY)

    def clear_busy(self) -> None:
        self._set(Cmd.CLEAR_BUSY)

    def set_log_level(self, level: int) -> None:
        self._set(Cmd.SET_LOGLEVEL, int(level))

    def display_info(self) -> None:
        self._set(Cmd.DISPLAY_INFO)

    def set_time_of_day(self, seconds: int | None = None) -> None:
        """SET_TIMEOFDAY with [seconds, microseconds] (default: now)."""
        import time as _time
        t = _time.time() if seconds is None else float(seconds)
        self.controller.set_ints(Cmd.SET_TIMEOFDAY, None, [int(t), int((t % 1) * 1e6)])

    def select_chipboard(self, index: int) -> None:
        self._set(Cmd.SELECT_CHIPBOARD, int(index))

    # ------------------------------------------------------------------ resets and timers
    def reset_module(self, speed: ReadoutSpeed = ReadoutSpeed.DEFAULT) -> None:
        """RESET_MODULE with a readout speed magic number."""
        try:
            speed = ReadoutSpeed(speed)
        except ValueError:
            raise ConfigError(f"readout speed must be one of {[s.name for s in ReadoutSpeed]}, got {speed!r}") from None
        self._set(Cmd.RESET_MODULE, int(speed))

    def reset_devices(self) -> None:
        self._set(Cmd.RESET_DEVICES)

    def reinit_devices(self) -> None:
        self._set(Cmd.REINIT_DEVICES)

    def reset_timers(self) -> None:
        """RESET_TIMER addressed to the board: all timers to zero."""
        self._set(Cmd.RESET_TIMER)

    def restart_timers(self) -> None:
        """RESTART_TIMERS: restart SPIDR and chip timers together."""
        self._set(Cmd.RESTART_TIMERS)

    def reset_counters(self) -> None:
        """RESET_COUNTERS: shutter counters and packet counters to zero."""
        self._set(Cmd.RESET_COUNTERS)

    @property
    def shutter_counter(self) -> int:
        return self._get(Cmd.GET_SHUTTERCNTR)

    @property
    def ext_shutter_counter(self) -> int:
        return self._get(Cmd.GET_EXTSHUTTERCNTR)

    # ------------------------------------------------------------------ registers
    def get_register(self, address: int) -> int:
        return self.controller.get_register(address)

    def set_register(self, address: int, value: int) -> None:
        self.controller.set_register(address, value)

    @property
    def cpu2tpx(self) -> int:
        return self.get_register(Reg.CPU2TPX_WR)

    def use_external_clock(self, external: bool) -> None:
        """Read-modify-write CPU2TPX bit 25: external (True) or internal (False) reference clock."""
        bit = 1 << CPU2TPX_EXT_REFCLK_BIT
        if external:
            self.controller.read_modify_write(Reg.CPU2TPX_WR, set_=bit)
        else:
            self.controller.read_modify_write(Reg.CPU2TPX_WR, clear=bit)

    def enable_tdc(self, value: int) -> None:
        """Write the TDC enable register (0x2B8)."""
        self.set_register(Reg.TDC_ENABLE, value)

    @property
    def udp_packet_counter(self) -> int:
        """UDP packets the board sent since the counters were reset."""
        return self.get_register(Reg.UDP_PKTCOUNTER)

    @property
    def udpmon_packet_counter(self) -> int:
        return self.get_register(Reg.UDPMON_PKTCOUNTER)

    @property
    def udppause_packet_counter(self) -> int:
        return self.get_register(Reg.UDPPAUSE_PKTCOUNTER)

    @property
    def tdc_trigger_counter(self) -> int:
        return self.get_register(Reg.TDC_TRIGGERCOUNTER)

    def reset_packet_counters(self) -> None:
        """Zero the UDP, monitor and pause packet counters and every chip's pixel packet counter."""
        with self.controller.lock:
            for reg in (Reg.UDP_PKTCOUNTER, Reg.UDPMON_PKTCOUNTER, Reg.UDPPAUSE_PKTCOUNTER):
                self.set_register(reg, 0)
            for chip in self.chips:
                self.set_register(Reg.PIXEL_PKTCOUNTER + 4 * chip.index, 0)

    @property
    def link_counts(self) -> int:
        """Links per chip from DEVICES_AND_PORTS: ``((v & 0xF00) >> 8) + 1``."""
        return ((self.get_register(Reg.DEVICES_AND_PORTS) & 0xF00) >> 8) + 1
