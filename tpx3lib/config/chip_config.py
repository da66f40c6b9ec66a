"""One Timepix3 chip's configuration as plain data.

:class:`ChipConfig` holds everything that is loaded into a chip: the 18 DACs,
the general configuration (polarity, operation mode, gray counter,
superpixel, test pulses), the PLL configuration and the three pixel matrices.

Pixel matrices are numpy arrays of shape (256, 256) indexed ``[x, y]``:
``x`` is the column (the x of decoded hits before orientation), ``y`` the row.
So ``config.mask[10, 200]`` is the pixel at column 10, row 200 and
``config.threshold[x]`` is one whole column.

* ``mask``: bool, True = pixel switched off (the chip's mask bit 1);
* ``threshold``: uint8 0..15, the per-pixel threshold adjustment;
* ``test``: bool, the pixel's test bit exactly as it is sent (SoPhy stores 1
  for every pixel of a normal data-taking configuration).

The configuration is data only; :mod:`tpx3lib.spidr` and :mod:`tpx3lib.api`
send it to a chip.
"""
from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass, field, fields

import numpy as np

from tpx3lib.errors import ConfigError
from tpx3lib.spidr.dacs import DAC_NAMES, check_dac_value, default_dacs
from tpx3lib.spidr.genconfig import DEFAULT_PLL_CONFIG, GeneralConfig, OperationMode, Polarity
from tpx3lib.spidr.pixels import MATRIX_SHAPE, compose_pixel_words

__all__ = ["ChipConfig"]


def _zeros(dtype):
    return lambda: np.zeros(MATRIX_SHAPE, dtype=dtype)


def _as_matrix(value, name: str, dtype, maximum: int) -> np.ndarray:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) or isinstance(value, (bool, np.bool_)):
        value = np.full(MATRIX_SHAPE, int(value))
    arr = np.asarray(value)
    if arr.shape != MATRIX_SHAPE:
        raise ConfigError(f"{name} must be a (256, 256) matrix indexed [x, y], got shape {arr.shape}")
    if arr.dtype != bool and arr.dtype.kind not in "iu":
        raise ConfigError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.dtype != bool and arr.size and (arr.min() < 0 or arr.max() > maximum):
        raise ConfigError(f"{name} values must lie in [0, {maximum}], got [{arr.min()}, {arr.max()}]")
    return arr.astype(dtype)


@dataclass(eq=False)
class ChipConfig:
    """Configuration of one Timepix3 chip (see the module docstring for index order)."""

    #: DAC name -> value; all 18 always present (missing ones take the common defaults).
    dacs: dict = field(default_factory=default_dacs)
    general: GeneralConfig = field(default_factory=GeneralConfig)
    pll_config: int = DEFAULT_PLL_CONFIG
    mask: np.ndarray = field(default_factory=_zeros(bool))
    threshold: np.ndarray = field(default_factory=_zeros(np.uint8))
    test: np.ndarray = field(default_factory=_zeros(bool))
    #: Chip name this configuration was made for (e.g. "W0028_H06"); informational.
    name: str | None = None
    #: Bias voltage the file was made at (volts); informational, the board sets bias.
    bias_voltage: float | None = None
    #: Where the configuration came from (a path), for messages.
    source: str | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check and normalise every field; raises ConfigError naming the problem."""
        if not isinstance(self.dacs, dict):
            raise ConfigError(f"dacs must be a mapping of DAC name to value, got {type(self.dacs).__name__}")
        merged = default_dacs()
        for key, value in self.dacs.items():
            dac, v = check_dac_value(key, value)
            merged[dac.name] = v
        self.dacs = merged
        if isinstance(self.general, dict):
            try:
                self.general = GeneralConfig(**self.general)
            except TypeError as exc:
                raise ConfigError(f"general: {exc}") from None
        if not isinstance(self.general, GeneralConfig):
            raise ConfigError(f"general must be a GeneralConfig, got {type(self.general).__name__}")
        if isinstance(self.pll_config, bool) or not isinstance(self.pll_config, numbers.Integral) \
                or not 0 <= self.pll_config <= 0xFFFFFFFF:
            raise ConfigError(f"pll_config must be an unsigned 32-bit integer, got {self.pll_config!r}")
        self.pll_config = int(self.pll_config)
        self.mask = _as_matrix(self.mask, "mask", bool, 1)
        self.threshold = _as_matrix(self.threshold, "threshold", np.uint8, 15)
        self.test = _as_matrix(self.test, "test", bool, 1)
        if self.bias_voltage is not None:
            if isinstance(self.bias_voltage, bool) or not isinstance(self.bias_voltage, numbers.Real):
                raise ConfigError(f"bias_voltage must be a number of volts, got {self.bias_voltage!r}")
            self.bias_voltage = float(self.bias_voltage)

    # ---------------------------------------------------------------- conveniences
    @property
    def polarity(self) -> Polarity:
        return self.general.polarity

    @polarity.setter
    def polarity(self, value) -> None:
        self.general = GeneralConfig(**{**_general_dict(self.general), "polarity": value})

    @property
    def operation_mode(self) -> OperationMode:
        return self.general.operation_mode

    @operation_mode.setter
    def operation_mode(self, value) -> None:
        self.general = GeneralConfig(**{**_general_dict(self.general), "operation_mode": value})

    @property
    def n_masked(self) -> int:
        """How many pixels are switched off."""
        return int(self.mask.sum())

    def dac_codes(self) -> list[tuple[int, int]]:
        """``[(code, value), ...]`` in code order (what SET_DAC sends)."""
        return [(check_dac_value(n, v)[0].value, v) for n, v in self.dacs.items()]

    def pixel_words(self, *, reverse_threshold: bool = False) -> np.ndarray:
        """The (256, 256) [x, y] matrix of 6-bit pixel words to upload."""
        return compose_pixel_words(self.mask, self.threshold, self.test, reverse_threshold=reverse_threshold)

    def copy(self) -> "ChipConfig":
        return copy.deepcopy(self)

    def __eq__(self, other) -> bool:
        if not isinstance(other, ChipConfig):
            return NotImplemented
        for f in fields(self):
            if f.name == "source":
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray):
                if not np.array_equal(a, b):
                    return False
            elif a != b:
                return False
        return True

    def summary(self) -> str:
        """One line for logs: name, key DACs, mode, masked pixels."""
        thr = self.threshold
        return (f"{self.name or 'chip'}: Vthreshold_fine={self.dacs['Vthreshold_fine']} "
                f"Vthreshold_coarse={self.dacs['Vthreshold_coarse']} {self.general.polarity.name.lower()} "
                f"{self.general.operation_mode.name.lower()}, {self.n_masked} masked, "
                f"threshold {int(thr.min())}..{int(thr.max())}, test bits {int(self.test.sum())}")


def _general_dict(g: GeneralConfig) -> dict:
    return {f.name: getattr(g, f.name) for f in fields(g)}


assert len(DAC_NAMES) == 18
