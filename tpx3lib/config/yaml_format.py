"""Chip configuration files in YAML.

Schema (``format: tpx3lib.chip-config``, ``version: 1``)::

    format: tpx3lib.chip-config
    version: 1
    name: W0028_H06              # optional
    bias_voltage: 50.0           # optional, informational
    dacs:                        # any subset; missing DACs take the common defaults
      Ibias_Preamp_ON: 128
      Vthreshold_fine: 150
      ...
    general:                     # optional; GeneralConfig fields
      polarity: positive         # positive | negative
      operation_mode: toa_tot    # toa_tot | toa | event_itot
      gray_counter: true
      superpixel: true
      test_pulse: false
    pll_config: 286              # optional, default 0x11E
    pixels:                      # optional; matrices indexed [x, y]
      mask: ...                  # 1 = pixel switched off
      threshold: ...             # 0..15
      test: ...                  # 0/1

Each pixel matrix is written in one of three forms:

* a number: every pixel has that value (``threshold: 8``);
* a sparse form: ``{fill: 0, value: 1, pixels: [[x, y], ...]}`` - every pixel
  is ``fill`` except the listed ones, which are ``value``;
* a dense form: a list of 256 strings, one per column ``x``, each of 256 hex
  digits, digit ``y`` being pixel (x, y).

The writer picks the shortest. Any problem raises ConfigError naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from tpx3lib.errors import ConfigError
from tpx3lib.spidr.genconfig import GeneralConfig
from tpx3lib.spidr.pixels import MATRIX_SHAPE

from .chip_config import ChipConfig, _general_dict

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "load_yaml", "save_yaml", "config_to_dict", "config_from_dict"]

FORMAT_NAME = "tpx3lib.chip-config"
FORMAT_VERSION = 1
_SPARSE_LIMIT = 2048  # list pixels individually up to this many

_HEX = np.array(list("0123456789abcdef"))


def _encode_matrix(a: np.ndarray):
    a = np.asarray(a).astype(np.uint8)
    values, counts = np.unique(a, return_counts=True)
    if len(values) == 1:
        return int(values[0])
    if len(values) == 2:
        fill = int(values[np.argmax(counts)])
        other = int(values[np.argmin(counts)])
        idx = np.argwhere(a != fill)
        if len(idx) <= _SPARSE_LIMIT:
            return {"fill": fill, "value": other, "pixels": [[int(x), int(y)] for x, y in idx]}
    return ["".join(_HEX[col]) for col in a]


def _decode_matrix(obj, name: str, maximum: int) -> np.ndarray:
    if isinstance(obj, bool):
        obj = int(obj)
    if isinstance(obj, int):
        if not 0 <= obj <= maximum:
            raise ConfigError(f"pixels.{name} = {obj} is outside [0, {maximum}]")
        return np.full(MATRIX_SHAPE, obj, dtype=np.uint8)
    if isinstance(obj, dict):
        unknown = set(obj) - {"fill", "value", "pixels"}
        if unknown:
            raise ConfigError(f"pixels.{name}: unknown keys {sorted(unknown)} (expected fill, value, pixels)")
        fill = obj.get("fill", 0)
        value = obj.get("value", 1)
        for what, v in (("fill", fill), ("value", value)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= maximum:
                raise ConfigError(f"pixels.{name}.{what} must be an integer in [0, {maximum}], got {v!r}")
        out = np.full(MATRIX_SHAPE, fill, dtype=np.uint8)
        pixels = obj.get("pixels") or []
        if not isinstance(pixels, list):
            raise ConfigError(f"pixels.{name}.pixels must be a list of [x, y] pairs")
        for i, p in enumerate(pixels):
            if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(
                    isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in p)):
                raise ConfigError(f"pixels.{name}.pixels[{i}] must be [x, y] with 0 <= x, y <= 255, got {p!r}")
            out[p[0], p[1]] = value
        return out
    if isinstance(obj, list):
        if len(obj) != 256:
            raise ConfigError(f"pixels.{name} must list 256 columns, got {len(obj)}")
        out = np.empty(MATRIX_SHAPE, dtype=np.uint8)
        for x, col in enumerate(obj):
            if not isinstance(col, str) or len(col) != 256:
                raise ConfigError(f"pixels.{name}[{x}] must be a string of 256 hex digits")
            try:
                out[x] = np.frombuffer(bytes.fromhex("".join("0" + c for c in col)), dtype=np.uint8)
            except ValueError:
                raise ConfigError(f"pixels.{name}[{x}] holds a character that is not a hex digit") from None
        if out.max() > maximum:
            raise ConfigError(f"pixels.{name} holds values above {maximum}")
        return out
    raise ConfigError(f"pixels.{name} must be a number, a {{fill, value, pixels}} mapping or 256 hex strings")


def config_to_dict(config: ChipConfig) -> dict:
    """The YAML document for a configuration (plain Python types)."""
    general = {}
    for k, v in _general_dict(config.general).items():
        if k == "polarity" or k == "operation_mode":
            general[k] = v.name.lower()
        elif k == "extra_bits":
            if v:
                general[k] = int(v)
        else:
            general[k] = bool(v)
    doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
    if config.name:
        doc["name"] = config.name
    if config.bias_voltage is not None:
        doc["bias_voltage"] = float(config.bias_voltage)
    doc["dacs"] = {k: int(v) for k, v in config.dacs.items()}
    doc["general"] = general
    doc["pll_config"] = int(config.pll_config)
    doc["pixels"] = {
        "mask": _encode_matrix(config.mask),
        "threshold": _encode_matrix(config.threshold),
        "test": _encode_matrix(config.test),
    }
    return doc


def config_from_dict(doc, source: str | None = None) -> ChipConfig:
    """Build a ChipConfig from a parsed YAML document (ConfigError on any problem)."""
    if not isinstance(doc, dict):
        raise ConfigError("the file is not a YAML mapping")
    fmt = doc.get("format", FORMAT_NAME)
    if fmt != FORMAT_NAME:
        raise ConfigError(f"format is {fmt!r}, expected {FORMAT_NAME!r}")
    version = doc.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ConfigError(f"version {version!r} is not supported (this library reads version {FORMAT_VERSION})")
    known = {"format", "version", "name", "bias_voltage", "dacs", "general", "pll_config", "pixels"}
    unknown = set(doc) - known
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)}; expected some of {sorted(known)}")
    dacs = doc.get("dacs") or {}
    if not isinstance(dacs, dict):
        raise ConfigError("dacs must be a mapping of DAC name to value")
    general = doc.get("general") or {}
    if not isinstance(general, dict):
        raise ConfigError("general must be a mapping")
    gfields = set(_general_dict(GeneralConfig()))
    bad = set(general) - gfields
    if bad:
        raise ConfigError(f"general: unknown keys {sorted(bad)}; expected some of {sorted(gfields)}")
    pixels = doc.get("pixels") or {}
    if not isinstance(pixels, dict) or set(pixels) - {"mask", "threshold", "test"}:
        raise ConfigError("pixels must be a mapping with keys mask, threshold, test")
    kw = {}
    for name, maximum in (("mask", 1), ("threshold", 15), ("test", 1)):
        if name in pixels:
            kw[name] = _decode_matrix(pixels[name], name, maximum)
    return ChipConfig(
        dacs=dacs, general=GeneralConfig(**general), pll_config=doc.get("pll_config", 0x11E),
        name=doc.get("name"), bias_voltage=doc.get("bias_voltage"), source=source, **kw,
    )


class _Dumper(yaml.SafeDumper):
    """Block style everywhere except short integer lists ([x, y] pixel pairs), which stay inline."""


def _represent_list(dumper, data):
    flow = len(data) <= 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def load_yaml(path) -> ChipConfig:
    """Read a chip configuration YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return config_from_dict(doc, source=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def save_yaml(config: ChipConfig, path) -> Path:
    """Write a configuration as YAML (atomically: a temporary file renamed into place)."""
    path = Path(path)
    doc = config_to_dict(config)
    header = ("# Timepix3 chip configuration (tpx3lib). Pixel matrices are indexed [x, y]:\n"
              "# dense form = one string per column x, hex digit y is pixel (x, y).\n")
    text = header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
