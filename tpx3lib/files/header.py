"""The JSON header of a native raw recording: building and validating it.

A header is a plain JSON object. The writer fills in what it knows (format
version, software version, start time) and checks the keys a reader relies on;
everything else, including the free ``user`` dict, is kept as given.

Keys (see docs/raw-format.md for the full table):

``chips`` (required)
    list of objects, one per chip recorded, each with an integer ``index``
    (0..254, the chip index used in the chunk records) and optionally ``id``
    (int, the eFuse device id), ``name`` (e.g. ``"W0028_H06"``), ``dacs``
    (object name -> int), ``operation_mode`` (``"ToA+ToT"``, ``"ToA"``,
    ``"Event+iToT"``), ``polarity``, ``pixel_config_digest`` (string, e.g.
    ``"sha256:..."``), ``orientation``, ``position``.
``board``      object: ``id``, ``name``, ``ip``, ``firmware``, ``software`` ...
``bias_v``     number or null: sensor bias in volts.
``trigger``    object: trigger and train-ID setup (source, start train id ...).
``user``       object: anything JSON-able.
``start_time`` / ``start_time_ns``  ISO 8601 UTC string / int ns since the epoch (filled in).
``software``   ``{"name": "tpx3lib", "version": ...}`` (filled in).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import time
from typing import Any

from tpx3lib.errors import ConfigError

__all__ = ["make_header", "validate_header", "header_to_json", "iso_utc"]

_OPTIONAL_OBJECTS = ("board", "trigger", "user")


def iso_utc(time_ns: int) -> str:
    """``time_ns`` (ns since the Unix epoch) as ISO 8601 UTC with microseconds."""
    t = _dt.datetime.fromtimestamp(time_ns / 1e9, tz=_dt.timezone.utc)
    return t.isoformat(timespec="microseconds").replace("+00:00", "Z")


def make_header(chips: list[dict] | None = None, *, board: dict | None = None,
                bias_v: float | None = None, trigger: dict | None = None,
                user: dict | None = None, start_time_ns: int | None = None,
                **extra: Any) -> dict:
    """Build a header dict; keyword names match the header keys.

    ``chips`` defaults to one chip with index 0. Extra keyword arguments are
    added as top-level keys. The result is validated (see :func:`validate_header`).
    """
    header: dict[str, Any] = {
        "chips": [{"index": 0}] if chips is None else chips,
        "board": board or {},
        "bias_v": bias_v,
        "trigger": trigger or {},
        "user": user or {},
        **extra,
    }
    if start_time_ns is not None:
        header["start_time_ns"] = int(start_time_ns)
    return validate_header(header)


def _check_json_able(obj: Any, where: str) -> None:
    if obj is None or isinstance(obj, (str, bool, int)):
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ConfigError(f"header: {where} is {obj!r}; JSON has no NaN/inf (use null)")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ConfigError(f"header: {where} has a non-string key {k!r}")
            _check_json_able(v, f"{where}.{k}")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_json_able(v, f"{where}[{i}]")
        return
    # numpy scalars are common in configuration code: accept them as their Python value
    item = getattr(obj, "item", None)
    if callable(item) and getattr(obj, "shape", None) == ():
        _check_json_able(item(), where)
        return
    raise ConfigError(f"header: {where} = {obj!r} ({type(obj).__name__}) is not JSON-able")


def _plain(obj: Any) -> Any:
    """Copy of ``obj`` with tuples as lists and numpy scalars as Python values."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():
        return obj.item()
    return obj


def validate_header(header: dict, *, fill: bool = True) -> dict:
    """Check a header and return a normalised copy.

    Raises :class:`~tpx3lib.errors.ConfigError` naming the offending key. With
    ``fill`` the software version and start time are filled in when missing.
    """
    if not isinstance(header, dict):
        raise ConfigError(f"header must be a dict, not {type(header).__name__}")
    _check_json_able(header, "header")
    h = _plain(header)
    chips = h.get("chips")
    if not isinstance(chips, list) or not chips:
        raise ConfigError("header: 'chips' is required: a non-empty list of {'index': int, ...}")
    seen = set()
    for i, chip in enumerate(chips):
        if not isinstance(chip, dict):
            raise ConfigError(f"header: chips[{i}] must be an object")
        idx = chip.get("index")
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx <= 254:
            raise ConfigError(f"header: chips[{i}].index must be an int in 0..254, got {idx!r}")
        if idx in seen:
            raise ConfigError(f"header: chip index {idx} appears twice")
        seen.add(idx)
        if "id" in chip and chip["id"] is not None and (isinstance(chip["id"], bool) or not isinstance(chip["id"], int)):
            raise ConfigError(f"header: chips[{i}].id must be an int or null")
        for key in ("name", "operation_mode", "pixel_config_digest"):
            if chip.get(key) is not None and not isinstance(chip[key], str):
                raise ConfigError(f"header: chips[{i}].{key} must be a string or null")
        dacs = chip.get("dacs")
        if dacs is not None:
            if not isinstance(dacs, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                     for v in dacs.values()):
                raise ConfigError(f"header: chips[{i}].dacs must be an object of name -> int")
    for key in _OPTIONAL_OBJECTS:
        if key in h and h[key] is not None and not isinstance(h[key], dict):
            raise ConfigError(f"header: '{key}' must be an object (dict)")
    bias = h.get("bias_v")
    if bias is not None and (isinstance(bias, bool) or not isinstance(bias, (int, float))):
        raise ConfigError("header: 'bias_v' must be a number or null")
    if "start_time_ns" in h and (isinstance(h["start_time_ns"], bool) or not isinstance(h["start_time_ns"], int)):
        raise ConfigError("header: 'start_time_ns' must be an int (ns since the Unix epoch)")
    if fill:
        from tpx3lib import __version__
        h.setdefault("software", {"name": "tpx3lib", "version": __version__})
        if "start_time_ns" not in h:
            h["start_time_ns"] = time.time_ns()
        h.setdefault("start_time", iso_utc(h["start_time_ns"]))
    return h


def header_to_json(header: dict) -> bytes:
    """Serialise a validated header to UTF-8 JSON bytes (strict JSON, no NaN)."""
    return json.dumps(header, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
