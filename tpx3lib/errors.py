"""Typed errors of the library.

Each subclasses the builtin it refines, so callers that catch ``ValueError`` or
``ConnectionError`` keep working, and carries what a person needs to act.
"""
from __future__ import annotations

__all__ = [
    "Tpx3Error",
    "SpidrError",
    "ProtocolError",
    "SpidrTimeoutError",
    "SpidrConnectionError",
    "ConfigError",
    "FileFormatError",
    "TruncatedFileError",
    "DecodeError",
    "SPIDR_ERRORS",
    "TPX3_HW_ERRORS",
    "describe_spidr_error",
]

#: ``code & 0xFF`` of a SPIDR reply's error field.
SPIDR_ERRORS = (
    "NO_ERROR", "ERR_UNKNOWN_CMD", "ERR_MSG_LENGTH", "ERR_SEQUENCE", "ERR_ILLEGAL_PAR",
    "ERR_NOT_IMPLEMENTED", "ERR_TPX3_HARDW", "ERR_ADC_HARDW", "ERR_DAC_HARDW",
    "ERR_MON_HARDW", "ERR_FLASH_STORAGE", "ERR_MONITOR",
)
#: ``(code >> 8) & 0xFF`` when the main code is ERR_TPX3_HARDW.
TPX3_HW_ERRORS = (
    "NO_ERROR", "SC_ILLEGAL", "SC_STATE", "SC_ERRSTATE", "SC_WORDS", "TX_TIMEOUT", "EMPTY",
    "NOTEMPTY", "FULL", "UNEXP_REPLY", "UNEXP_HEADER", "LINKS_UNLOCKED",
)


def describe_spidr_error(code: int) -> str:
    """Turn a SPIDR reply error code into words, e.g. ``ERR_TPX3_HARDW/EMPTY``."""
    main = code & 0xFF
    name = SPIDR_ERRORS[main] if main < len(SPIDR_ERRORS) else f"ERR_0x{main:02X}"
    if main == 6:
        sub = (code >> 8) & 0xFF
        subname = TPX3_HW_ERRORS[sub] if sub < len(TPX3_HW_ERRORS) else f"0x{sub:02X}"
        name = f"{name}/{subname}"
    return name


class Tpx3Error(Exception):
    """Base of every error this project raises on purpose."""


class SpidrError(Tpx3Error, RuntimeError):
    """The SPIDR board refused a command; ``code`` is the raw error field."""

    def __init__(self, command: str, chip: int | None, code: int, detail: str = ""):
        self.command = command
        self.chip = chip
        self.code = code
        self.error_name = describe_spidr_error(code)
        where = "on the board" if chip is None else f"on chip {chip}"
        msg = f"{command} {where} refused: {self.error_name} (code 0x{code:X})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class ProtocolError(Tpx3Error, ValueError):
    """A peer sent something that breaks the wire protocol (bad echo, length, framing)."""


class SpidrTimeoutError(Tpx3Error, TimeoutError):
    """No (complete) reply within the request timeout."""


class SpidrConnectionError(Tpx3Error, ConnectionError):
    """The control connection could not be made or was lost."""


class ConfigError(Tpx3Error, ValueError):
    """A configuration value or file is invalid (name, range, format)."""


class FileFormatError(Tpx3Error, ValueError):
    """A data file is not of the expected format or is corrupted; ``offset`` says where."""

    def __init__(self, message: str, path: str | None = None, offset: int | None = None):
        self.path = path
        self.offset = offset
        where = []
        if path is not None:
            where.append(str(path))
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


class TruncatedFileError(FileFormatError):
    """A file ends in the middle of a record (e.g. a crash while writing)."""


class DecodeError(Tpx3Error, ValueError):
    """Input to the decoder cannot be decoded at all (e.g. not a whole number of words)."""
