"""The Timepix3 general configuration register (GET/SET_GENCONFIG) as data.

Bits: polarity bit 0 (0 positive, 1 negative); operation mode mask 0x6
(0 ToA+ToT, 2 ToA only, 4 Event+iToT); gray counter 0x8; test pulse 0x20;
superpixel 0x40; timer overflow stop 0x80; digital test pulse 0x200; external
test pulse generator 0x400; ToA clock = system clock 0x800.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from tpx3lib.errors import ConfigError

__all__ = ["Polarity", "OperationMode", "GenConfigBit", "GeneralConfig", "DEFAULT_PLL_CONFIG"]

#: The PLL configuration pymepix and SoPhy use (SET_PLLCONFIG).
DEFAULT_PLL_CONFIG = 0x11E


class Polarity(enum.IntEnum):
    """Which charge the pixels collect: holes (positive) or electrons (negative)."""

    POSITIVE = 0
    NEGATIVE = 1


class OperationMode(enum.IntEnum):
    """The chip's readout mode: the value of the 0x6 field of GENCONFIG."""

    TOA_TOT = 0x0
    TOA = 0x2
    EVENT_ITOT = 0x4


class GenConfigBit(enum.IntFlag):
    """Single-bit switches of GENCONFIG."""

    POLARITY_NEGATIVE = 0x1
    GRAY_COUNTER = 0x8
    TEST_PULSE = 0x20
    SUPERPIXEL = 0x40
    TIMER_OVERFLOW_STOP = 0x80
    TEST_PULSE_DIGITAL = 0x200
    EXT_TEST_PULSE = 0x400
    TOA_CLOCK_SYSTEM = 0x800


_MODE_MASK = 0x6
#: Every bit this module knows; others are kept in ``extra_bits`` so nothing is lost.
_KNOWN = _MODE_MASK | int(sum(GenConfigBit))


def _parse_enum(enum_cls, value, what):
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        key = value.strip().upper().replace("+", "_").replace("-", "_").replace(" ", "_")
        aliases = {"TOT_TOA": "TOA_TOT", "TOATOT": "TOA_TOT", "EVENT_ITOT": "EVENT_ITOT", "ITOT": "EVENT_ITOT",
                   "EVENTITOT": "EVENT_ITOT", "POS": "POSITIVE", "NEG": "NEGATIVE", "ONLY_TOA": "TOA",
                   "TOA_ONLY": "TOA"}
        key = aliases.get(key, key)
        try:
            return enum_cls[key]
        except KeyError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return enum_cls(value)
        except ValueError:
            pass
    names = ", ".join(m.name.lower() for m in enum_cls)
    raise ConfigError(f"{what} must be one of {names}, got {value!r}")


@dataclass
class GeneralConfig:
    """A decoded GENCONFIG word. Defaults are what pymepix's start sequence sets
    (positive, ToA+ToT, gray counter and superpixel on)."""

    polarity: Polarity = Polarity.POSITIVE
    operation_mode: OperationMode = OperationMode.TOA_TOT
    gray_counter: bool = True
    test_pulse: bool = False
    superpixel: bool = True
    timer_overflow_stop: bool = False
    test_pulse_digital: bool = False
    ext_test_pulse: bool = False
    toa_clock_system: bool = False
    #: Bits of the register this class has no name for, kept verbatim.
    extra_bits: int = 0

    def __post_init__(self):
        self.polarity = _parse_enum(Polarity, self.polarity, "polarity")
        self.operation_mode = _parse_enum(OperationMode, self.operation_mode, "operation_mode")
        for name in ("gray_counter", "test_pulse", "superpixel", "timer_overflow_stop", "test_pulse_digital",
                     "ext_test_pulse", "toa_clock_system"):
            v = getattr(self, name)
            if not isinstance(v, (bool, int)) or isinstance(v, int) and v not in (0, 1):
                raise ConfigError(f"{name} must be true or false, got {v!r}")
            setattr(self, name, bool(v))
        if self.extra_bits & _KNOWN or not 0 <= self.extra_bits <= 0xFFFF:
            raise ConfigError(f"extra_bits 0x{self.extra_bits:X} overlaps named bits or exceeds 16 bits")

    def to_word(self) -> int:
        """The GENCONFIG register value."""
        w = int(self.polarity) | int(self.operation_mode)
        flags = [
            (self.gray_counter, GenConfigBit.GRAY_COUNTER),
            (self.test_pulse, GenConfigBit.TEST_PULSE),
            (self.superpixel, GenConfigBit.SUPERPIXEL),
            (self.timer_overflow_stop, GenConfigBit.TIMER_OVERFLOW_STOP),
            (self.test_pulse_digital, GenConfigBit.TEST_PULSE_DIGITAL),
            (self.ext_test_pulse, GenConfigBit.EXT_TEST_PULSE),
            (self.toa_clock_system, GenConfigBit.TOA_CLOCK_SYSTEM),
        ]
        for on, bit in flags:
            if on:
                w |= int(bit)
        return w | self.extra_bits

    @classmethod
    def from_word(cls, word: int) -> "GeneralConfig":
        """Decode a GENCONFIG value (mode field 6 is not a valid mode: ConfigError)."""
        word = int(word)
        mode = word & _MODE_MASK
        if mode == 6:
            raise ConfigError(f"GENCONFIG 0x{word:X} has operation mode field 6, which is not a mode")
        return cls(
            polarity=Polarity(word & 1),
            operation_mode=OperationMode(mode),
            gray_counter=bool(word & GenConfigBit.GRAY_COUNTER),
            test_pulse=bool(word & GenConfigBit.TEST_PULSE),
            superpixel=bool(word & GenConfigBit.SUPERPIXEL),
            timer_overflow_stop=bool(word & GenConfigBit.TIMER_OVERFLOW_STOP),
            test_pulse_digital=bool(word & GenConfigBit.TEST_PULSE_DIGITAL),
            ext_test_pulse=bool(word & GenConfigBit.EXT_TEST_PULSE),
            toa_clock_system=bool(word & GenConfigBit.TOA_CLOCK_SYSTEM),
            extra_bits=word & ~_KNOWN & 0xFFFF,
        )
