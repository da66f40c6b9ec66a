"""Small helpers shared by the device classes: error translation, property validators, events.

No detector logic here: this is the glue between Python exceptions and Tango's DevFailed.
"""
from __future__ import annotations

import functools
import logging
import re
import threading
from typing import Callable

import tango

from tpx3lib.errors import (
    ConfigError, FileFormatError, ProtocolError, SpidrConnectionError, SpidrError,
    SpidrTimeoutError, Tpx3Error,
)

__all__ = [
    "memorize", "parse_address", "validate_address", "validate_device_name", "raise_devfailed",
    "translate_errors", "reason_for", "ensure_omni_thread",
]

_ADDRESS = re.compile(r"^\s*([A-Za-z0-9_\-\.]+|\[[0-9A-Fa-f:]+\])\s*:\s*(\d{1,5})\s*$")
_DEVICE = re.compile(r"^[A-Za-z0-9_\-\.]+/[A-Za-z0-9_\-\.]+/[A-Za-z0-9_\-\.]+$")


def parse_address(text: str, default_port: int = 50000) -> tuple[str, int]:
    """``"host:port"`` (or a bare host, meaning port ``default_port``) -> ``(host, port)``."""
    text = str(text).strip()
    if text and ":" not in text.strip("[]"):
        text = f"{text}:{default_port}"
    m = _ADDRESS.match(text)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ConfigError(f"a SPIDR address must look like host:port (e.g. 192.168.1.10:50000), got {text!r}")
    return m.group(1).strip("[]"), int(m.group(2))


def validate_address(text: str) -> None:
    parse_address(text)


def validate_device_name(text: str) -> None:
    if not _DEVICE.match(str(text).strip()):
        raise ConfigError(f"expected a Tango device name domain/family/member, got {text!r}")


def reason_for(exc: BaseException) -> str:
    """A DevFailed ``reason`` naming the kind of failure, for programs that react to it."""
    for klass, reason in (
        (SpidrTimeoutError, "TPX3_BoardTimeout"),
        (SpidrConnectionError, "TPX3_BoardConnection"),
        (SpidrError, "TPX3_BoardRefused"),
        (ProtocolError, "TPX3_Protocol"),
        (FileFormatError, "TPX3_FileFormat"),
        (ConfigError, "TPX3_Config"),
        (Tpx3Error, "TPX3_Error"),
        (FileNotFoundError, "TPX3_FileNotFound"),
        (PermissionError, "TPX3_Permission"),
        (OSError, "TPX3_OS"),
        (ValueError, "TPX3_InvalidValue"),
    ):
        if isinstance(exc, klass):
            return reason
    return "TPX3_Internal"


def raise_devfailed(exc: BaseException, origin: str) -> None:
    """Re-raise ``exc`` as a DevFailed whose description is the exception's own message."""
    if isinstance(exc, tango.DevFailed):
        raise exc
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    if reason_for(exc) == "TPX3_Internal":
        text = f"{type(exc).__name__}: {text}"
    tango.Except.throw_exception(reason_for(exc), text, origin)


def translate_errors(func: Callable) -> Callable:
    """Decorator for attribute/command methods: typed errors become clear DevFailed messages."""
    @functools.wraps(func)
    def wrapper(self, *args, **kwargs):
        try:
            return func(self, *args, **kwargs)
        except tango.DevFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - every error leaves as a readable DevFailed
            raise_devfailed(exc, f"{type(self).__name__}.{func.__name__}")
    return wrapper


def ensure_omni_thread(target: Callable) -> Callable:
    """Wrap a thread target so it may talk to Tango (push events, use proxies)."""
    @functools.wraps(target)
    def run(*args, **kwargs):
        with tango.EnsureOmniThread():
            return target(*args, **kwargs)
    return run


class RateLimiter:
    """Decides whether a changed value is pushed now; the final value is pushed by the caller."""

    def __init__(self, min_interval: float):
        self.min_interval = min_interval
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def due(self, key: str, now: float) -> bool:
        with self._lock:
            last = self._last.get(key)
            if last is None or now - last >= self.min_interval:
                self._last[key] = now
                return True
            return False


def memorize(device, values: dict) -> None:
    """Make ``values`` the memorized values of memorized attributes of ``device``, as a client
    write would: the set-point Tango re-applies at Init, and the database value it applies at
    the next start. For values the device set itself (LoadConfig, LImA aliases)."""
    attrs = device.get_device_attr()
    for name, value in values.items():
        attrs.get_w_attr_by_name(name).set_write_value(value)
    if not tango.Util._UseDb:   # a -nodb server has nowhere to memorize into
        return
    text = {name: {"__value": [("true" if v else "false") if isinstance(v, bool) else str(v)]}
            for name, v in values.items()}
    try:
        tango.Database().put_device_attribute_property(device.get_name(), text)
    except tango.DevFailed as exc:
        logging.getLogger(__name__).warning("%s: could not store memorized values: %s", device.get_name(),
                                            exc.args[0].desc if exc.args else exc)
