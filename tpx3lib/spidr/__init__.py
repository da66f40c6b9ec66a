"""SPIDR board control: protocol, controller, board and chip operations.

    from tpx3lib.spidr import SpidrBoard
    with SpidrBoard.connect(("127.0.0.1", 50000)) as board:
        print(board.firmware_version, board[0].name)
        board[0].set_dac("Vthreshold_fine", 150)

See docs/spidr.md.
"""
from __future__ import annotations

from .board import (
    BIAS_MAX_V, BIAS_MIN_V, CLOSED_SHUTTER_TRIGGER, OPEN_SHUTTER_TRIGGER, PowerReading, SpidrBoard,
    TriggerConfig, bias_dac_from_voltage, bias_voltage_from_adc,
)
from .chip import LinkStatus, PixelVerifyError, SpidrChip, device_id_from_name, device_name
from .controller import DEFAULT_TIMEOUT, ControllerStats, Reply, SpidrController
from .dacs import DAC_NAMES, DACS, Dac, DacInfo, check_dac_value, default_dacs, resolve_dac
from .genconfig import DEFAULT_PLL_CONFIG, GenConfigBit, GeneralConfig, OperationMode, Polarity
from .protocol import (
    CMD_NOREPLY, CMD_REPLY, DEFAULT_PORT, DEFAULT_UDP_BASE_PORT, Cmd, ErrorCode, ReadoutSpeed, Reg,
    ShutterMode, Tpx3HwError, make_error_code,
)

__all__ = [
    "SpidrController", "SpidrBoard", "SpidrChip", "Reply", "ControllerStats", "DEFAULT_TIMEOUT",
    "LinkStatus", "PixelVerifyError", "device_name", "device_id_from_name",
    "PowerReading", "TriggerConfig", "OPEN_SHUTTER_TRIGGER", "CLOSED_SHUTTER_TRIGGER",
    "BIAS_MIN_V", "BIAS_MAX_V", "bias_dac_from_voltage", "bias_voltage_from_adc",
    "Dac", "DacInfo", "DACS", "DAC_NAMES", "default_dacs", "resolve_dac", "check_dac_value",
    "GeneralConfig", "Polarity", "OperationMode", "GenConfigBit", "DEFAULT_PLL_CONFIG",
    "Cmd", "Reg", "ErrorCode", "Tpx3HwError", "ShutterMode", "ReadoutSpeed", "make_error_code",
    "CMD_REPLY", "CMD_NOREPLY", "DEFAULT_PORT", "DEFAULT_UDP_BASE_PORT",
]
