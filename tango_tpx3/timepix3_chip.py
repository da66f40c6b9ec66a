"""Timepix3Chip: one Timepix3 chip of a SPIDR board (DACs, modes, test pulses, pixel matrix).

The device holds the chip's configuration as a :class:`tpx3lib.config.ChipConfig` (plus the
test-pulse settings) and keeps the chip in step with it:

- at start-up the ``ConfigFile`` property (.spx or .yaml) is loaded, then Tango restores the
  memorized attribute values (DACs, modes, test pulses) on top of it;
- once the board is connected - and after every reconnection - the whole configuration is
  sent: DACs, general configuration, PLL, test pulses, and the pixel matrix (uploaded and
  read back), in the device's worker thread (State RUNNING meanwhile);
- a DAC/mode write goes to the chip at once (Tango refuses values outside the chip's range);
  pixel matrices written to PixelMask/PixelThreshold are sent by ``UploadPixels``.

Pixel images are Tango images with rows = y and columns = x (``image[y, x]``), i.e. the
transpose of tpx3lib's ``[x, y]`` matrices.
"""
from __future__ import annotations

import enum
import logging
import os

import numpy as np
import tango
from tango import AttrWriteType, DevState
from tango.server import attribute, command, device_property

from tpx3lib.config import ChipConfig, load_config, save_config
from tpx3lib.errors import ConfigError
from tpx3lib.spidr import DACS, GeneralConfig, OperationMode, Polarity

from tango_tpx3 import board_link
from tango_tpx3.common import memorize, translate_errors, validate_device_name
from tango_tpx3.linked_device import LinkedDevice

__all__ = ["Timepix3Chip", "OperationModeEnum", "PolarityEnum"]

log = logging.getLogger(__name__)


class OperationModeEnum(enum.IntEnum):
    """Timepix3 readout modes (labels of the Tango enum; UPPER_CASE, as ophyd-async requires)."""

    TOA_TOT = 0
    TOA = 1
    EVENT_ITOT = 2


_MODE_TO_LIB = {OperationModeEnum.TOA_TOT: OperationMode.TOA_TOT, OperationModeEnum.TOA: OperationMode.TOA,
                OperationModeEnum.EVENT_ITOT: OperationMode.EVENT_ITOT}
_MODE_FROM_LIB = {v: k for k, v in _MODE_TO_LIB.items()}


class PolarityEnum(enum.IntEnum):
    """Charge collected: Positive (holes, e.g. n-on-p... as SoPhy calls it) or Negative (electrons)."""

    POSITIVE = 0
    NEGATIVE = 1


#: General-configuration switches exposed as boolean attributes: attribute -> GeneralConfig field
_GENERAL_FLAGS = {
    "GrayCounter": ("gray_counter", "gray counter", "count ToA in gray code (the board's decoders remove it)"),
    "Superpixel": ("superpixel", "superpixel", "superpixel VCO for the fine ToA"),
    "TestPulseEnabled": ("test_pulse", "test pulses", "enable the test-pulse injection"),
    "TestPulseDigital": ("test_pulse_digital", "digital test pulses", "inject test pulses digitally"),
    "ExternalTestPulse": ("ext_test_pulse", "external test pulses", "use the external test-pulse generator"),
    "TimerOverflowStop": ("timer_overflow_stop", "timer overflow stop", "stop the timer at overflow"),
}


def _dac_attribute(info) -> attribute:
    name = info.name

    def fget(self):
        return self._chip_call(lambda chip: chip.get_dac(name))

    def fset(self, value):
        self._set_dac(name, int(value))

    fget.__name__, fset.__name__ = f"read_{name}", f"write_{name}"
    return attribute(name=name, fget=fget, fset=fset, dtype=int, access=AttrWriteType.READ_WRITE,
                     memorized=True, hw_memorized=True, min_value=info.minimum, max_value=info.maximum,
                     format="%d", label=name, doc=f"DAC {int(info.dac)} ({info.minimum}..{info.maximum}, "
                                                   f"common default {info.default})")


def _flag_attribute(attr_name: str) -> attribute:
    field, label, doc = _GENERAL_FLAGS[attr_name]

    def fget(self):
        return bool(getattr(self._chip_call(lambda chip: chip.general_config), field))

    def fset(self, value):
        self._set_general(**{field: bool(value)})

    fget.__name__, fset.__name__ = f"read_{attr_name}", f"write_{attr_name}"
    return attribute(name=attr_name, fget=fget, fset=fset, dtype=bool, access=AttrWriteType.READ_WRITE,
                     memorized=True, hw_memorized=True, label=label, doc=doc)


class Timepix3Chip(LinkedDevice):
    """A Timepix3 chip: configuration and pixel matrix."""

    Board = device_property(dtype=str, mandatory=True, doc="name of the SpidrBoard device this chip is read out by")
    Board.tpx3_validate = validate_device_name
    ChipIndex = device_property(dtype=int, default_value=0, doc="index of the chip on the board (0..)")
    ConfigFile = device_property(dtype=str, default_value="",
                                 doc="optional .spx/.yaml chip configuration loaded at start-up "
                                     "(memorized attribute values are applied on top)")

    ChipName = attribute(dtype=str, label="chip name", doc="name from the chip's device id, e.g. W0028_H06")
    ChipId = attribute(dtype=int, label="device id", format="0x%08X", doc="the chip's device id")
    ConfigSource = attribute(dtype=str, label="configuration source",
                             doc="file the configuration was last loaded from ('defaults' if none)")

    for _info in DACS.values():
        locals()[_info.name] = _dac_attribute(_info)
    del _info

    OperationMode = attribute(dtype=OperationModeEnum, access=AttrWriteType.READ_WRITE, memorized=True,
                              hw_memorized=True, label="operation mode",
                              doc="ToaTot: time of arrival and time over threshold; Toa: arrival only; "
                                  "EventItot: event count and integral ToT")
    Polarity = attribute(dtype=PolarityEnum, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
                         label="polarity", doc="Positive: collect holes; Negative: collect electrons")
    GrayCounter = _flag_attribute("GrayCounter")
    Superpixel = _flag_attribute("Superpixel")
    TestPulseEnabled = _flag_attribute("TestPulseEnabled")
    TestPulseDigital = _flag_attribute("TestPulseDigital")
    ExternalTestPulse = _flag_attribute("ExternalTestPulse")
    TimerOverflowStop = _flag_attribute("TimerOverflowStop")
    TestPulsePeriod = attribute(dtype=int, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
                                min_value=0, max_value=0xFFFF, format="%d", label="test pulse period",
                                doc="test-pulse period (chip units)")
    TestPulsePhase = attribute(dtype=int, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
                               min_value=0, max_value=15, format="%d", label="test pulse phase",
                               doc="test-pulse phase (0..15)")
    TestPulseCount = attribute(dtype=int, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
                               min_value=0, max_value=0xFFFFFFFF, format="%d", label="test pulses",
                               doc="number of test pulses")

    PixelMask = attribute(dtype=((np.uint8,),), access=AttrWriteType.READ_WRITE, max_dim_x=256, max_dim_y=256,
                          min_value=0, max_value=1, label="pixel mask",
                          doc="1 = pixel switched off; image[y, x]; sent by UploadPixels")
    PixelThreshold = attribute(dtype=((np.uint8,),), access=AttrWriteType.READ_WRITE, max_dim_x=256,
                               max_dim_y=256, min_value=0, max_value=15, label="pixel threshold",
                               doc="per-pixel threshold adjustment 0..15; image[y, x]; sent by UploadPixels")
    PixelTest = attribute(dtype=((np.uint8,),), access=AttrWriteType.READ_WRITE, max_dim_x=256, max_dim_y=256,
                          min_value=0, max_value=1, label="pixel test bits",
                          doc="per-pixel test bit as sent; image[y, x]; sent by UploadPixels")
    MaskedPixels = attribute(dtype=int, label="masked pixels", format="%d",
                             doc="number of pixels switched off in PixelMask")
    PixelsUploaded = attribute(dtype=bool, label="pixels uploaded",
                               doc="True when the chip holds the pixel matrices shown (read back after upload)")
    LinksEnabled = attribute(dtype=int, label="links enabled", format="0x%02X",
                             doc="bit mask of the chip's enabled output links")
    LinksLocked = attribute(dtype=int, label="links locked", format="0x%02X",
                            doc="bit mask of the chip's locked output links")
    LinksUsable = attribute(dtype=bool, label="links usable",
                            doc="at least one link enabled and every enabled link locked")

    # ================================================================ life cycle
    def _link_address(self) -> str:
        validate_device_name(self.Board)
        if int(self.ChipIndex) < 0:
            raise ConfigError(f"ChipIndex must be 0 or more, got {self.ChipIndex}")
        return board_link.address_of_board(self.Board)

    def _link_timeout(self) -> float:
        return board_link.timeout_of_board(self.Board)

    def _setup(self):
        self._config = ChipConfig()
        self._config_source = "defaults"
        self._tp = {"period": 0, "phase": 0, "count": 0}
        self._pixels_uploaded = False
        self._config_file_error = ""
        if self.ConfigFile:
            try:
                self._config = load_config(self.ConfigFile, chip=0)
                self._config_source = os.path.abspath(self.ConfigFile)
            except Exception as exc:  # noqa: BLE001 - reported as FAULT; LoadConfig/Init recover
                self._config_file_error = f"ConfigFile {self.ConfigFile!r} not applied: {exc}"

    def _compute_state(self):
        state, status = super()._compute_state()
        if state == DevState.ON and self._config_file_error:
            return DevState.FAULT, (f"{self._config_file_error}. LoadConfig a good file, "
                                    "or correct the ConfigFile property and Init.")
        return state, status

    def _describe(self) -> str:
        return f"{self.get_name()} (chip {self.ChipIndex} of {self.Board})"

    # ================================================================ board access
    def _chip(self, board):
        index = int(self.ChipIndex)
        if index >= len(board):
            raise ConfigError(f"the board has {len(board)} chip(s); ChipIndex {index} does not exist")
        return board[index]

    def _chip_call(self, fn):
        return self._board_call(lambda board: fn(self._chip(board)))

    def _send_config(self, board=None, upload_pixels: bool = True) -> None:
        """Send the whole configuration; each item under the settings lock (see LinkedDevice).

        Every step addresses the board the link holds *now*, so a reconnection in between
        cannot send to a closed connection.
        """
        call = self._link.call
        for name in list(self._config.dacs):
            with self._settings_lock:
                call(lambda b: self._chip(b).set_dac(name, self._config.dacs[name]))
        with self._settings_lock:
            call(lambda b: setattr(self._chip(b), "general_config", self._config.general))
            call(lambda b: setattr(self._chip(b), "pll_config", self._config.pll_config))
            call(lambda b: self._chip(b).set_tp_period_phase(self._tp["period"], self._tp["phase"]))
            call(lambda b: setattr(self._chip(b), "tp_number", self._tp["count"]))
        if upload_pixels:
            self._upload()

    def _upload(self, board=None) -> None:
        with self._settings_lock:
            config = self._config
            mask, threshold, test = config.mask.copy(), config.threshold.copy(), config.test.copy()
            self._pixels_uploaded = False
        self._link.call(lambda b: self._chip(b).upload_pixels(mask, threshold, test, verify=True))
        with self._settings_lock:
            if (np.array_equal(mask, self._config.mask) and np.array_equal(threshold, self._config.threshold)
                    and np.array_equal(test, self._config.test)):
                self._pixels_uploaded = True

    def _apply_settings(self, board) -> None:
        self._send_config(board, upload_pixels=True)

    def _set_dac(self, name: str, value: int) -> None:
        def store():
            self._config.dacs[name] = value
        self._write_setting(lambda b: self._chip(b).set_dac(name, value), store)

    def _set_general(self, **changes) -> None:
        with self._settings_lock:
            fields = {f: getattr(self._config.general, f) for f in self._config.general.__dataclass_fields__}
            fields.update(changes)
            general = GeneralConfig(**fields)

            def store():
                self._config.general = general
            self._write_setting(lambda b: setattr(self._chip(b), "general_config", general), store)

    def _memorized_view(self) -> dict[str, object]:
        g = self._config.general
        values: dict[str, object] = dict(self._config.dacs)
        values["OperationMode"] = int(_MODE_FROM_LIB[g.operation_mode])
        values["Polarity"] = int(g.polarity)
        for attr_name, (field, _l, _d) in _GENERAL_FLAGS.items():
            values[attr_name] = bool(getattr(g, field))
        return values

    # ================================================================ identity and links
    def read_ChipName(self):
        return self._chip_call(lambda chip: chip.name)

    def read_ChipId(self):
        return self._chip_call(lambda chip: chip.device_id)

    def read_ConfigSource(self):
        return self._config_source

    def read_LinksEnabled(self):
        return self._chip_call(lambda chip: chip.link_status().enabled)

    def read_LinksLocked(self):
        return self._chip_call(lambda chip: chip.link_status().locked)

    def read_LinksUsable(self):
        return self._chip_call(lambda chip: chip.link_status().usable)

    # ================================================================ modes and test pulses
    def read_OperationMode(self):
        return _MODE_FROM_LIB[self._chip_call(lambda chip: chip.general_config).operation_mode]

    @translate_errors
    def write_OperationMode(self, value):
        self._set_general(operation_mode=_MODE_TO_LIB[OperationModeEnum(int(value))])

    def read_Polarity(self):
        return PolarityEnum(int(self._chip_call(lambda chip: chip.general_config).polarity))

    @translate_errors
    def write_Polarity(self, value):
        self._set_general(polarity=Polarity(int(value)))

    def read_TestPulsePeriod(self):
        return self._chip_call(lambda chip: chip.tp_period_phase)[0]

    @translate_errors
    def write_TestPulsePeriod(self, value):
        self._set_tp(period=int(value))

    def read_TestPulsePhase(self):
        return self._chip_call(lambda chip: chip.tp_period_phase)[1]

    @translate_errors
    def write_TestPulsePhase(self, value):
        self._set_tp(phase=int(value))

    def _set_tp(self, **changes) -> None:
        with self._settings_lock:
            tp = {**self._tp, **changes}

            def store():
                self._tp = tp
            self._write_setting(lambda b: self._chip(b).set_tp_period_phase(tp["period"], tp["phase"]), store)

    def read_TestPulseCount(self):
        return self._chip_call(lambda chip: chip.tp_number)

    @translate_errors
    def write_TestPulseCount(self, value):
        value = int(value)

        def store():
            self._tp = {**self._tp, "count": value}
        self._write_setting(lambda b: setattr(self._chip(b), "tp_number", value), store)

    # ================================================================ pixel matrix
    def _image(self, matrix) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(matrix, dtype=np.uint8).T)

    def _set_matrix(self, field: str, image, maximum: int) -> None:
        arr = np.asarray(image)
        if arr.shape != (256, 256):
            raise ConfigError(f"{field} must be a 256 x 256 image, got {arr.shape[1] if arr.ndim > 1 else '?'} x "
                              f"{arr.shape[0]} (width x height)")
        if arr.size and int(arr.max()) > maximum:
            raise ConfigError(f"{field} values must lie in [0, {maximum}], got up to {int(arr.max())}")
        matrix = np.ascontiguousarray(arr.T)
        with self._settings_lock:
            config = self._config.copy()
            setattr(config, field, matrix)
            config.validate()
            self._config = config
            self._pixels_uploaded = False

    def read_PixelMask(self):
        return self._image(self._config.mask)

    @translate_errors
    def write_PixelMask(self, value):
        self._set_matrix("mask", value, 1)

    def read_PixelThreshold(self):
        return self._image(self._config.threshold)

    @translate_errors
    def write_PixelThreshold(self, value):
        self._set_matrix("threshold", value, 15)

    def read_PixelTest(self):
        return self._image(self._config.test)

    @translate_errors
    def write_PixelTest(self, value):
        self._set_matrix("test", value, 1)

    def read_MaskedPixels(self):
        return self._config.n_masked

    def read_PixelsUploaded(self):
        return self._pixels_uploaded

    # ================================================================ commands
    def _not_busy(self) -> bool:
        return self.get_state() != DevState.RUNNING

    @command(dtype_in=str, doc_in="load a .spx or .yaml configuration and send it to the chip "
                                  "(returns at once; State is RUNNING until done)")
    @translate_errors
    def LoadConfig(self, path):
        path = str(path).strip()
        if not path:
            raise ConfigError("LoadConfig needs the path of a .spx or .yaml file")
        config = load_config(path, chip=0)   # a bad file raises here: nothing changes
        link = self._link
        if link is None or not (link.connected or link.state is board_link.LinkState.CONNECTING):
            self.board  # raises the reason
        with self._settings_lock:
            self._config = config
            self._config_source = os.path.abspath(path)
            self._config_file_error = ""
            self._pixels_uploaded = False
            memorize(self, self._memorized_view())
        if link.connected:
            self._start_job(f"loading {os.path.basename(path)}", self._send_config, link.board)

    def is_LoadConfig_allowed(self):
        return self._not_busy()

    @command(dtype_in=str, doc_in="save the configuration (DACs, modes, pixel matrices) to a .yaml file",
             dtype_out=str, doc_out="the file written")
    @translate_errors
    def SaveConfig(self, path):
        path = str(path).strip()
        if not path:
            raise ConfigError("SaveConfig needs the path of a .yaml file")
        with self._settings_lock:
            config = self._config.copy()
        name = None
        if self.link_connected:
            try:
                name = self._chip_call(lambda chip: chip.name)
            except tango.DevFailed:
                name = None
        if name:
            config.name = name
        return str(save_config(config, path))

    @command(doc_in="upload PixelMask/PixelThreshold/PixelTest to the chip and read them back "
                    "(returns at once; State is RUNNING until done)")
    @translate_errors
    def UploadPixels(self):
        board = self.board
        self._start_job("uploading pixels", self._upload, board)

    def is_UploadPixels_allowed(self):
        return self._not_busy()

    @command(doc_in="RESET_PIXELS: unmask every pixel, thresholds and test bits to 0 (chip and device)")
    @translate_errors
    def ResetPixels(self):
        def reset(board):
            self._chip(board).reset_pixels()
        with self._settings_lock:
            self._board_call(reset)
            config = self._config.copy()
            config.mask = np.zeros((256, 256), bool)
            config.threshold = np.zeros((256, 256), np.uint8)
            config.test = np.zeros((256, 256), bool)
            config.validate()
            self._config = config
            self._pixels_uploaded = True

    def is_ResetPixels_allowed(self):
        return self._not_busy()
