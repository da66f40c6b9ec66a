"""The 18 Timepix3 DACs: codes, names, ranges and common defaults.

SET_DAC carries ``(code << 16) | value``; GET_DAC takes the code and answers an
int whose upper 16 bits echo the code. Every value is checked here, before
anything is sent, so a typo or an out-of-range number raises
:class:`~tpx3lib.errors.ConfigError` and never reaches the board.
"""
from __future__ import annotations

import difflib
import enum
import numbers
from dataclasses import dataclass

from tpx3lib.errors import ConfigError

__all__ = ["Dac", "DacInfo", "DACS", "DAC_NAMES", "default_dacs", "resolve_dac", "check_dac_value"]


class Dac(enum.IntEnum):
    """Timepix3 DAC codes, named as in the chip manual, SoPhy and pymepix."""

    Ibias_Preamp_ON = 1
    Ibias_Preamp_OFF = 2
    VPreamp_NCAS = 3
    Ibias_Ikrum = 4
    Vfbk = 5
    Vthreshold_fine = 6
    Vthreshold_coarse = 7
    Ibias_DiscS1_ON = 8
    Ibias_DiscS1_OFF = 9
    Ibias_DiscS2_ON = 10
    Ibias_DiscS2_OFF = 11
    Ibias_PixelDAC = 12
    Ibias_TPbufferIn = 13
    Ibias_TPbufferOut = 14
    VTP_coarse = 15
    VTP_fine = 16
    Ibias_CP_PLL = 17
    PLL_Vcntrl = 18


@dataclass(frozen=True)
class DacInfo:
    """One DAC: its code, inclusive range and common default."""

    dac: Dac
    minimum: int
    maximum: int
    default: int

    @property
    def name(self) -> str:
        return self.dac.name


_TABLE = [
    # code, max, default (minimum is 0 for all)
    (Dac.Ibias_Preamp_ON, 255, 128),
    (Dac.Ibias_Preamp_OFF, 15, 8),
    (Dac.VPreamp_NCAS, 255, 128),
    (Dac.Ibias_Ikrum, 255, 5),
    (Dac.Vfbk, 255, 128),
    (Dac.Vthreshold_fine, 511, 420),
    (Dac.Vthreshold_coarse, 15, 6),
    (Dac.Ibias_DiscS1_ON, 255, 84),
    (Dac.Ibias_DiscS1_OFF, 15, 8),
    (Dac.Ibias_DiscS2_ON, 255, 128),
    (Dac.Ibias_DiscS2_OFF, 15, 8),
    (Dac.Ibias_PixelDAC, 255, 192),
    (Dac.Ibias_TPbufferIn, 255, 128),
    (Dac.Ibias_TPbufferOut, 255, 128),
    (Dac.VTP_coarse, 255, 128),
    (Dac.VTP_fine, 511, 256),
    (Dac.Ibias_CP_PLL, 255, 128),
    (Dac.PLL_Vcntrl, 255, 128),
]

#: Dac -> DacInfo, in code order.
DACS: dict[Dac, DacInfo] = {d: DacInfo(d, 0, mx, dflt) for d, mx, dflt in _TABLE}
#: DAC names in code order.
DAC_NAMES: tuple[str, ...] = tuple(d.name for d in DACS)
_BY_LOWER = {d.name.lower(): d for d in DACS}


def default_dacs() -> dict[str, int]:
    """A fresh name -> value dict of the common defaults, in code order."""
    return {info.name: info.default for info in DACS.values()}


def resolve_dac(key) -> Dac:
    """Turn a name (case-insensitive), a code or a :class:`Dac` into a :class:`Dac`.

    Raises ConfigError naming the valid choices (and the closest match) otherwise.
    """
    if isinstance(key, Dac):
        return key
    if isinstance(key, str):
        dac = _BY_LOWER.get(key.strip().lower())
        if dac is not None:
            return dac
        close = difflib.get_close_matches(key, DAC_NAMES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown DAC {key!r}{hint}; valid names: {', '.join(DAC_NAMES)}")
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        try:
            return Dac(int(key))
        except ValueError:
            raise ConfigError(f"unknown DAC code {key}; valid codes are 1..18") from None
    raise ConfigError(f"a DAC is named by its name or code, not {type(key).__name__} {key!r}")


def check_dac_value(key, value) -> tuple[Dac, int]:
    """Validate one DAC setting; returns ``(dac, int value)`` or raises ConfigError."""
    dac = resolve_dac(key)
    info = DACS[dac]
    if isinstance(value, bool):
        raise ConfigError(f"{dac.name} must be an integer, got {value!r}")
    if not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{dac.name} must be an integer, got {value!r}")
    value = int(value)
    if not info.minimum <= value <= info.maximum:
        raise ConfigError(f"{dac.name} = {value} is out of range [{info.minimum}, {info.maximum}]")
    return dac, value
