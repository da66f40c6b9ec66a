"""Names, keys and attributes of the run files this package writes (see docs/exdf.md).

One instrument source (default ``TPX3/CAM/1:daqOutput``) with two index groups:

- ``data``: one entry per hit: ``data.event`` (trigger counter), ``data.x``,
  ``data.y``, ``data.tot`` (ns), ``data.chip``, ``data.toa``, ``data.tof`` (25/4096 ns units);
- ``centroids``: one entry per cluster, the CENTROID_DTYPE fields under ``centroids.``.

The ``train_id`` field of the records is not stored per entry: INDEX gives every
entry its train. One control source (default: the instrument source's device,
``TPX3/CAM/1``) holds the detector settings, one row per train in CONTROL and the
run-start value in RUN.
"""
from __future__ import annotations

import re

from ..dtypes import CENTROID_DTYPE, EVENT_DTYPE, TOA_UNIT_S
from ..errors import ConfigError

__all__ = [
    "DATA_FORMAT_VERSION", "DEFAULT_SOURCE", "HITS_GROUP", "CENTROIDS_GROUP", "HIT_FIELDS",
    "CENTROID_FIELDS", "FIELD_ATTRS", "UNIT_NAMES", "file_name", "check_instrument_source",
    "check_control_source", "check_category_aggregator", "check_key", "unit_attrs",
]

DATA_FORMAT_VERSION = "1.3"
DEFAULT_SOURCE = "TPX3/CAM/1:daqOutput"
HITS_GROUP = "data"
CENTROIDS_GROUP = "centroids"

#: Stored fields of each group (every record field except train_id), in dtype order.
HIT_FIELDS = tuple(n for n in EVENT_DTYPE.names if n != "train_id")
CENTROID_FIELDS = tuple(n for n in CENTROID_DTYPE.names if n != "train_id")

_TIME_DESC = ("time in units of 25/4096 ns (multiply by {:.6e} for seconds), "
              "counted by the board's timer").format(TOA_UNIT_S)
_NS = dict(unitSymbol="s", unitName="second", metricPrefixSymbol="n", metricPrefixName="nano")

#: Attributes of the stored keys (Karabo key attributes, format 1.3).
FIELD_ATTRS = {
    "event": dict(description="extended hardware trigger counter of the hit's trigger"),
    "x": dict(description="column (pixels, after orientation)"),
    "y": dict(description="row (pixels, after orientation)"),
    "chip": dict(description="chip index"),
    "tot": dict(_NS, description="time over threshold"),
    "toa": dict(description="time of arrival, " + _TIME_DESC),
    "tof": dict(description="time of flight (toa - trigger time), " + _TIME_DESC),
    "toa_first": dict(description="toa of the earliest hit, " + _TIME_DESC),
    "tof_first": dict(description="tof of the earliest hit, " + _TIME_DESC),
    "tot_sum": dict(_NS, description="sum of the hits' time over threshold"),
    "tot_mean": dict(_NS, description="mean time over threshold"),
    "tot_max": dict(_NS, description="largest time over threshold"),
    "size": dict(description="number of hits in the cluster"),
}

#: unitName for the unit symbols commonly used in settings.
UNIT_NAMES = {"V": "volt", "A": "ampere", "s": "second", "Hz": "hertz", "K": "kelvin",
              "degC": "degree_celsius", "%": "percent", "W": "watt", "Ohm": "ohm", "F": "farad"}
_PREFIXES = {"n": "nano", "u": "micro", "m": "milli", "k": "kilo", "M": "mega", "G": "giga", "p": "pico"}

_NAME_PART = re.compile(r"^[A-Za-z0-9_-]+$")
_AGGREGATOR = re.compile(r"^\w+$")
_CATEGORY = re.compile(r"^[A-Z]+$")


def file_name(category: str, run: int, aggregator: str, sequence: int) -> str:
    """``RAW-R0042-TPX01-S00000.h5``."""
    return f"{category}-R{run:04d}-{aggregator}-S{sequence:05d}.h5"


def check_category_aggregator(category: str, aggregator: str) -> None:
    if not _CATEGORY.match(category):
        raise ConfigError(f"file category must be upper-case letters (e.g. RAW), not {category!r}")
    if not _AGGREGATOR.match(aggregator):
        raise ConfigError(f"aggregator must be letters, digits or '_' (e.g. TPX01), not {aggregator!r}")


def _check_device(name: str, what: str) -> None:
    parts = name.split("/")
    if len(parts) != 3 or not all(_NAME_PART.match(p) for p in parts):
        raise ConfigError(f"{what} must look like DOMAIN/TYPE/MEMBER, not {name!r}")


def check_instrument_source(name: str) -> None:
    """An instrument source is ``DOMAIN/TYPE/MEMBER:channel``."""
    device, sep, channel = name.partition(":")
    if not sep or not _NAME_PART.match(channel):
        raise ConfigError(f"instrument source must be DOMAIN/TYPE/MEMBER:channel, not {name!r}")
    _check_device(device, "instrument source device")


def check_control_source(name: str) -> None:
    """A control source is ``DOMAIN/TYPE/MEMBER`` (no ':')."""
    _check_device(name, "control source")


def check_key(key: str) -> list[str]:
    """A settings key: dotted names (``dac.Ibias_Preamp_ON``); returns its parts."""
    if not isinstance(key, str):
        raise ConfigError(f"settings keys must be strings, not {key!r}")
    parts = key.split(".")
    if not all(_NAME_PART.match(p) for p in parts) or parts[-1] in ("value", "timestamp"):
        raise ConfigError(f"invalid settings key {key!r}: dotted names of letters, digits, '_' or '-'")
    return parts


def unit_attrs(unit: str) -> dict[str, str]:
    """Karabo unit attributes for a symbol like "V", "mV", "ns" or "" (a plain number)."""
    if unit in UNIT_NAMES or unit == "":
        prefix, symbol = "", unit
    elif len(unit) > 1 and unit[0] in _PREFIXES and unit[1:] in UNIT_NAMES:
        prefix, symbol = unit[0], unit[1:]
    else:
        prefix, symbol = "", unit
    attrs = dict(unitSymbol=symbol, unitName=UNIT_NAMES.get(symbol, symbol or "number"))
    if prefix:
        attrs.update(metricPrefixSymbol=prefix, metricPrefixName=_PREFIXES[prefix])
    return attrs
