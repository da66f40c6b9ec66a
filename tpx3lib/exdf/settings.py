"""Detector settings as control data: checking values and giving them an HDF5 form.

A setting is a dotted key (``dac.Ibias_Preamp_ON``, ``bias_voltage``, ``mode``)
with a value that keeps its type and shape for the whole run: a bool, integer,
float, string, or a 1-D sequence of numbers of fixed length. Integers are stored
as int64 (uint64 above 2**63-1), floats as float64, bools as HDF5 booleans,
strings as variable-length UTF-8.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import h5py
import numpy as np

from ..errors import ConfigError
from .layout import check_key

__all__ = ["SettingSpec", "setting_spec", "check_value", "normalise_settings"]

_STR = h5py.string_dtype("utf-8")


@dataclasses.dataclass(frozen=True)
class SettingSpec:
    """How one setting is stored: dtype and per-row shape."""

    key: str
    parts: tuple[str, ...]
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def path(self) -> str:
        return "/".join(self.parts)

    @property
    def row_bytes(self) -> int:
        n = int(np.prod(self.shape)) if self.shape else 1
        return n * (16 if self.dtype == _STR else self.dtype.itemsize)


def _as_array(key: str, value: Any) -> np.ndarray:
    if isinstance(value, (str, bytes)):
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        return np.array(value, dtype=object)
    arr = np.asarray(value)
    if arr.dtype.kind == "U":
        if arr.ndim:
            raise ConfigError(f"setting {key!r}: arrays of strings are not supported")
        return np.array(str(arr), dtype=object)
    if arr.dtype.kind not in "biuf" or arr.ndim > 1:
        raise ConfigError(f"setting {key!r}: {value!r} is not a bool, number, string "
                          "or 1-D sequence of numbers")
    return arr


def setting_spec(key: str, value: Any) -> SettingSpec:
    """The storage of a setting from its first (run-start) value."""
    parts = tuple(check_key(key))
    arr = _as_array(key, value)
    if arr.dtype == object:
        dtype = _STR
    elif arr.dtype.kind == "b":
        dtype = np.dtype(bool)
    elif arr.dtype.kind == "u" and arr.dtype.itemsize == 8:
        dtype = np.dtype(np.uint64)
    elif arr.dtype.kind in "iu":
        dtype = np.dtype(np.int64)
    else:
        dtype = np.dtype(np.float64)
    return SettingSpec(key, parts, dtype, arr.shape)


def check_value(spec: SettingSpec, value: Any):
    """A new value of an existing setting, converted to its stored form."""
    arr = _as_array(spec.key, value)
    new = setting_spec(spec.key, value)
    if arr.shape != spec.shape or (new.dtype == _STR) != (spec.dtype == _STR) or \
            (spec.dtype.kind == "b") != (new.dtype.kind == "b"):
        raise ConfigError(f"setting {spec.key!r} changed type or shape: {value!r} "
                          f"(stored as {spec.dtype} {spec.shape})")
    if spec.dtype == _STR:
        return str(arr.item())
    if spec.dtype.kind in "iu" and arr.dtype.kind == "f":
        raise ConfigError(f"setting {spec.key!r} is an integer; got {value!r}")
    return arr.astype(spec.dtype)


def normalise_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Flatten nested dicts to dotted keys."""
    out: dict[str, Any] = {}

    def walk(prefix: str, m: Mapping):
        for k, v in m.items():
            if not isinstance(k, str):
                raise ConfigError(f"settings keys must be strings, not {k!r}")
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, Mapping):
                walk(key, v)
            else:
                out[key] = v
    walk("", settings or {})
    return out
