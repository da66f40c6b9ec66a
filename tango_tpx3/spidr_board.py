"""SpidrBoard: one SPIDR readout board (housekeeping, bias, shutter, timers, counters).

Every attribute and command is one call of :class:`tpx3lib.spidr.SpidrBoard` on the
connection this server shares between the devices of the board (:mod:`tango_tpx3.board_link`).

State: INIT while connecting, ON when connected, FAULT with the reason when the board does
not answer (detected by any request, e.g. the polled housekeeping); ``Init`` or
``Reconnect`` connects again.
"""
from __future__ import annotations

import enum
import time

import tango
from tango import AttrQuality, AttrWriteType, DevState, DispLevel
from tango.server import attribute, command, device_property

from tpx3lib.spidr import BIAS_MAX_V, BIAS_MIN_V, TriggerConfig
from tpx3lib.spidr import ShutterMode as SpidrShutterMode

from tango_tpx3.common import translate_errors, validate_address
from tango_tpx3.linked_device import LinkedDevice

__all__ = ["SpidrBoard", "ShutterModeEnum"]

#: Housekeeping polling period (ms): archive events follow from it.
HOUSEKEEPING_POLL_MS = 3000
#: Counter polling period (ms): change events follow from it.
COUNTER_POLL_MS = 1000


class ShutterModeEnum(enum.IntEnum):
    """The SPIDR shutter modes (SET_TRIGCONFIG word 0), as Tango enum labels.

    Labels are UPPER_CASE identifiers: ophyd-async's TangoDevice turns enum labels into
    Python enum member names and refuses any other spelling."""

    EXTERNAL_RISING_FALLING = SpidrShutterMode.EXT_RISING_FALLING
    EXTERNAL_FALLING_RISING = SpidrShutterMode.EXT_FALLING_RISING
    EXTERNAL_RISING_TIMER = SpidrShutterMode.EXT_RISING_TIMER
    EXTERNAL_FALLING_TIMER = SpidrShutterMode.EXT_FALLING_TIMER
    AUTO = SpidrShutterMode.AUTO
    PULSE_COUNTER = SpidrShutterMode.PULSE_COUNTER
    OPEN = SpidrShutterMode.OPEN


def _housekeeping(getter, *, unit: str, label: str, doc: str, fmt: str = "%.1f", change: float = 0.5,
                  dtype=float, **kw) -> attribute:
    """A read-only, polled housekeeping attribute with archive events."""
    def fget(self):
        return self._board_call(getter)

    return attribute(fget=fget, dtype=dtype, unit=unit, label=label, doc=doc, format=fmt,
                     polling_period=HOUSEKEEPING_POLL_MS, archive_abs_change=change,
                     archive_period=600_000, abs_change=change, **kw)


def _counter(getter, *, label: str, doc: str) -> attribute:
    def fget(self):
        return int(self._board_call(getter))

    return attribute(fget=fget, dtype=int, label=label, doc=doc, format="%d",
                     polling_period=COUNTER_POLL_MS, abs_change=1, archive_abs_change=1)


def _power(which: str, part: str):
    return lambda b: getattr(getattr(b, which), part)


class SpidrBoard(LinkedDevice):
    """A SPIDR readout board with its Timepix3 chips."""

    SpidrAddress = device_property(dtype=str, mandatory=True,
                                   doc="host:port of the board's TCP control interface, e.g. 192.168.1.10:50000")
    SpidrAddress.tpx3_validate = validate_address
    RequestTimeout = device_property(dtype=float, default_value=2.0,
                                     doc="seconds to wait for each reply before the board counts as not answering")

    # ---------------------------------------------------------------- identity
    FirmwareVersion = attribute(dtype=str, label="firmware version", doc="SPIDR firmware version (hex)")
    SoftwareVersion = attribute(dtype=str, label="software version", doc="SPIDR software version (hex)")
    ChipCount = attribute(dtype=int, label="chips", format="%d", doc="number of chips the board reports")
    ChipNames = attribute(dtype=(str,), max_dim_x=16, label="chip names",
                          doc="chip names from their device ids, e.g. W0028_H06")
    Address = attribute(dtype=str, label="address", doc="host:port of the control connection",
                        display_level=DispLevel.EXPERT)

    # ---------------------------------------------------------------- housekeeping (polled, archive events)
    FpgaTemperature = _housekeeping(lambda b: b.fpga_temperature, unit="degC", label="FPGA temperature",
                                    doc="FPGA temperature", max_warning=70, max_alarm=80)
    LocalTemperature = _housekeeping(lambda b: b.local_temperature, unit="degC", label="board temperature",
                                     doc="SPIDR board temperature sensor", max_warning=60, max_alarm=70)
    RemoteTemperature = _housekeeping(lambda b: b.remote_temperature, unit="degC", label="chip board temperature",
                                      doc="chip board (remote) temperature sensor", max_warning=60, max_alarm=70)
    Humidity = _housekeeping(lambda b: b.humidity, unit="%", label="humidity", doc="relative humidity",
                             fmt="%d", change=1, dtype=int)
    Pressure = _housekeeping(lambda b: b.pressure, unit="mbar", label="pressure", doc="air pressure",
                             fmt="%d", change=1, dtype=int)
    ChipboardFanSpeed = _housekeeping(lambda b: b.chipboard_fan_speed, unit="rpm", label="chip board fan",
                                      doc="chip board fan speed", fmt="%d", change=50, dtype=int)
    SpidrFanSpeed = _housekeeping(lambda b: b.spidr_fan_speed, unit="rpm", label="SPIDR fan",
                                  doc="SPIDR board fan speed", fmt="%d", change=50, dtype=int)
    AvddVoltage = _housekeeping(_power("avdd", "volts"), unit="V", label="AVDD voltage",
                                doc="analog supply voltage", fmt="%.3f", change=0.01)
    AvddCurrent = _housekeeping(_power("avdd", "amps"), unit="A", label="AVDD current",
                                doc="analog supply current", fmt="%.3f", change=0.01)
    AvddPower = _housekeeping(_power("avdd", "watts"), unit="W", label="AVDD power",
                              doc="analog supply power", fmt="%.3f", change=0.01)
    DvddVoltage = _housekeeping(_power("dvdd", "volts"), unit="V", label="DVDD voltage",
                                doc="digital supply voltage", fmt="%.3f", change=0.01)
    DvddCurrent = _housekeeping(_power("dvdd", "amps"), unit="A", label="DVDD current",
                                doc="digital supply current", fmt="%.3f", change=0.01)
    DvddPower = _housekeeping(_power("dvdd", "watts"), unit="W", label="DVDD power",
                              doc="digital supply power", fmt="%.3f", change=0.01)
    VddVoltage = _housekeeping(_power("vdd", "volts"), unit="V", label="VDD voltage",
                               doc="board supply voltage", fmt="%.3f", change=0.01)
    VddCurrent = _housekeeping(_power("vdd", "amps"), unit="A", label="VDD current",
                               doc="board supply current", fmt="%.3f", change=0.01)
    VddPower = _housekeeping(_power("vdd", "watts"), unit="W", label="VDD power",
                             doc="board supply power", fmt="%.3f", change=0.01)

    # ---------------------------------------------------------------- bias
    BiasVoltage = attribute(
        dtype=float, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
        unit="V", format="%.2f", min_value=BIAS_MIN_V, max_value=BIAS_MAX_V, label="bias voltage",
        doc="sensor bias: reads the supply's ADC read-back, writes the set point "
            f"({BIAS_MIN_V:g}..{BIAS_MAX_V:g} V); the supply is switched by BiasEnabled",
        polling_period=HOUSEKEEPING_POLL_MS, archive_abs_change=0.5, abs_change=0.5, archive_period=600_000)
    BiasEnabled = attribute(
        dtype=bool, access=AttrWriteType.READ_WRITE, label="bias enabled",
        doc="bias supply on/off as last commanded through this device (the board cannot report it; "
            "INVALID until set). Not memorized: a restart never switches the bias on by itself.")

    # ---------------------------------------------------------------- shutter
    ShutterMode = attribute(dtype=ShutterModeEnum, access=AttrWriteType.READ_WRITE, label="shutter mode",
                            doc="how the shutter opens and closes (external edges, auto trigger, ...)")
    ShutterLength = attribute(dtype=int, access=AttrWriteType.READ_WRITE, unit="us", format="%d",
                              min_value=0, max_value=0xFFFFFFFF, label="shutter length",
                              doc="shutter open time of the auto trigger (0 = until CloseShutter)")
    ShutterFrequency = attribute(dtype=int, access=AttrWriteType.READ_WRITE, unit="Hz", format="%d",
                                 min_value=0, max_value=0xFFFFFFFF, label="shutter frequency",
                                 doc="auto-trigger rate")
    ShutterCount = attribute(dtype=int, access=AttrWriteType.READ_WRITE, format="%d", min_value=0,
                             max_value=0xFFFFFFFF, label="shutter count",
                             doc="number of auto-trigger shutters (0 = unlimited)")

    # ---------------------------------------------------------------- counters (polled, change events)
    ShutterCounter = _counter(lambda b: b.shutter_counter, label="shutters",
                              doc="shutters opened since the counters were reset")
    ExtShutterCounter = _counter(lambda b: b.ext_shutter_counter, label="external shutters",
                                 doc="external shutter signals since the counters were reset")
    TriggerCounter = _counter(lambda b: b.tdc_trigger_counter, label="triggers",
                              doc="TDC trigger counter of the board")
    UdpPacketCounter = _counter(lambda b: b.udp_packet_counter, label="UDP packets",
                                doc="UDP data packets the board sent since the counters were reset")
    UdpMonPacketCounter = _counter(lambda b: b.udpmon_packet_counter, label="UDP monitor packets",
                                   doc="UDP monitor packets the board sent")
    UdpPausePacketCounter = _counter(lambda b: b.udppause_packet_counter, label="UDP pause packets",
                                     doc="UDP pause packets the board received")

    # ================================================================ life cycle
    def _link_address(self) -> str:
        validate_address(self.SpidrAddress)
        return self.SpidrAddress

    def _link_timeout(self) -> float:
        return float(self.RequestTimeout)

    def init_device(self):
        self._bias_setpoint: float | None = None
        self._bias_enabled: bool | None = None
        super().init_device()

    def _apply_settings(self, board) -> None:
        with self._settings_lock:
            if self._bias_setpoint is not None:
                self._link.call(lambda b: setattr(b, "bias_voltage", self._bias_setpoint))
            if self._bias_enabled is not None:
                self._link.call(lambda b: b.enable_bias(self._bias_enabled))

    # ================================================================ identity
    @translate_errors
    def read_FirmwareVersion(self):
        return f"0x{self._board_call(lambda b: b.firmware_version):08X}"

    @translate_errors
    def read_SoftwareVersion(self):
        return f"0x{self._board_call(lambda b: b.software_version):08X}"

    def read_ChipCount(self):
        return self._board_call(len)

    def read_ChipNames(self):
        return self._board_call(lambda b: [chip.name for chip in b])

    def read_Address(self):
        return self._link.address if self._link is not None else self.SpidrAddress

    # ================================================================ bias
    def read_BiasVoltage(self):
        return self._board_call(lambda b: b.bias_voltage)

    @translate_errors
    def write_BiasVoltage(self, value):
        value = float(value)

        def store():
            self._bias_setpoint = value
        self._write_setting(lambda b: setattr(b, "bias_voltage", value), store)

    def read_BiasEnabled(self):
        if self._bias_enabled is None:
            return False, time.time(), AttrQuality.ATTR_INVALID
        return self._bias_enabled

    @translate_errors
    def write_BiasEnabled(self, value):
        value = bool(value)

        def store():
            self._bias_enabled = value
        self._write_setting(lambda b: b.enable_bias(value), store)

    # ================================================================ shutter
    def _trigger(self) -> TriggerConfig:
        return self._board_call(lambda b: b.trigger_config)

    def _update_trigger(self, **changes) -> None:
        def send(b):
            with b.controller.lock:
                current = b.trigger_config
                fields = dict(mode=current.mode, length_us=current.length_us, frequency=current.frequency,
                              count=current.count, delay_ns=current.delay_ns)
                fields.update(changes)
                b.trigger_config = TriggerConfig(**fields)
        self._board_call(send)

    def read_ShutterMode(self):
        return ShutterModeEnum(int(self._trigger().mode))

    @translate_errors
    def write_ShutterMode(self, value):
        self._update_trigger(mode=SpidrShutterMode(int(value)))

    def read_ShutterLength(self):
        return self._trigger().length_us

    @translate_errors
    def write_ShutterLength(self, value):
        self._update_trigger(length_us=int(value))

    def read_ShutterFrequency(self):
        return self._trigger().frequency

    @translate_errors
    def write_ShutterFrequency(self, value):
        self._update_trigger(frequency=int(value))

    def read_ShutterCount(self):
        return self._trigger().count

    @translate_errors
    def write_ShutterCount(self, value):
        self._update_trigger(count=int(value))

    # ================================================================ commands
    def _connected_allowed(self) -> bool:
        return self.get_state() in (DevState.ON, DevState.ALARM, DevState.RUNNING)

    @command(doc_in="reset the board's timers to zero (RESET_TIMER)")
    def ResetTimers(self):
        self._board_call(lambda b: b.reset_timers())

    def is_ResetTimers_allowed(self):
        return self._connected_allowed()

    @command(doc_in="restart the SPIDR and chip timers together (RESTART_TIMERS)")
    def RestartTimers(self):
        self._board_call(lambda b: b.restart_timers())

    def is_RestartTimers_allowed(self):
        return self._connected_allowed()

    @command(doc_in="restart every chip's timer at the next T0 signal (T0_SYNC)")
    def T0Sync(self):
        self._board_call(lambda b: [chip.t0_sync() for chip in b])

    def is_T0Sync_allowed(self):
        return self._connected_allowed()

    @command(doc_in="zero the shutter and packet counters (RESET_COUNTERS)")
    def ResetCounters(self):
        self._board_call(lambda b: b.reset_counters())

    def is_ResetCounters_allowed(self):
        return self._connected_allowed()

    @command(doc_in="open the shutter until CloseShutter (auto trigger [4, 0, 10, 1], AUTOTRIG_START)")
    def OpenShutter(self):
        self._board_call(lambda b: b.open_shutter())

    def is_OpenShutter_allowed(self):
        return self._connected_allowed()

    @command(doc_in="close the shutter (AUTOTRIG_STOP)")
    def CloseShutter(self):
        self._board_call(lambda b: b.close_shutter())

    def is_CloseShutter_allowed(self):
        return self._connected_allowed()

    @command(doc_in="drop the control connection and connect again (returns at once; State is INIT meanwhile)")
    def Reconnect(self):
        if self._link is None:
            tango.Except.throw_exception("TPX3_NotConfigured", self._init_error or "no board link",
                                         "SpidrBoard.Reconnect")
        self._link.reconnect()
