"""Reading SoPhy ``.spx`` chip configurations.

An .spx file is a ZIP archive:

* ``__data.xml``: SoPhy's metadata tree. Per chip (``sophy.medipix.Timepix3Chip``
  under ``chips``) it holds a ``DACs`` collection (``SPMPXDACCollection``: map
  entries whose key names the DAC and whose ``data`` holds the value) and a
  ``masks`` set whose ``maskBits``, ``testBits`` and ``thlAdj`` entries name
  the archive members holding the pixel arrays (``externalObject``).
  Elsewhere: ``polarityPositive``, ``pixelMode``, hardware info (chip names,
  chip ids, bias) which we read as information.
* one member per array: a Java-serialized primitive array (``AC ED 00 05``,
  TC_ARRAY, class descriptor ``[S`` for short[], element count), then the
  elements **big-endian**.

How the pixel arrays map to [x, y] (established on the real file
tests/data/W0028_H06_50V.spx, see docs/spidr.md): element ``k`` is pixel
``x = k % 256, y = k // 256``. Evidence: the threshold adjustments alternate
with the parity of ``k % 256`` (mean 7.26 on even, 7.67 on odd values; the two
columns of a Timepix3 double column are mirror images) and show no parity
pattern along ``k // 256``; SoPhy's own metadata declares no flip or rotation.
The mask array holds 1 for an *enabled* pixel; threshold values are stored as
plain numbers 0..15 (their histogram is the bell shape an equalisation makes).
pymepix reads these arrays little-endian (which loses the test bits),
transposes, flips y and bit-reverses the thresholds; we do none of that.
"""
from __future__ import annotations

import logging
import struct
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np

from tpx3lib.errors import ConfigError
from tpx3lib.spidr.dacs import DAC_NAMES
from tpx3lib.spidr.genconfig import GeneralConfig, OperationMode, Polarity

from .chip_config import ChipConfig

__all__ = ["load_spx", "read_java_array", "SpxInfo", "read_spx_info"]

log = logging.getLogger(__name__)

_JAVA_MAGIC = b"\xac\xed\x00\x05"
_TC_ARRAY, _TC_CLASSDESC, _TC_ENDBLOCKDATA, _TC_NULL = 0x75, 0x72, 0x78, 0x70
_JAVA_TYPES = {"[S": ">i2", "[I": ">i4", "[F": ">f4", "[D": ">f8", "[J": ">i8", "[B": ">i1"}

_PIXEL_MODES = {"TOA_TOT": OperationMode.TOA_TOT, "TOT_TOA": OperationMode.TOA_TOT, "TOA": OperationMode.TOA,
                "EVENT_ITOT": OperationMode.EVENT_ITOT, "ITOT_EVENT": OperationMode.EVENT_ITOT,
                "EVENT_TOT": OperationMode.EVENT_ITOT}


def read_java_array(blob: bytes, what: str = "array") -> np.ndarray:
    """Decode one Java-serialized primitive array (ObjectOutputStream of a short[], int[] ...).

    Layout: magic AC ED 00 05, TC_ARRAY 0x75, TC_CLASSDESC 0x72, u16 name length,
    class name (``[S``), 8-byte serialVersionUID, flags byte, u16 field count (0),
    TC_ENDBLOCKDATA 0x78, superclass TC_NULL 0x70, s32 element count, elements
    big-endian.
    """
    try:
        if blob[:4] != _JAVA_MAGIC:
            raise ValueError("it does not start with the Java serialization magic AC ED 00 05")
        if blob[4] != _TC_ARRAY or blob[5] != _TC_CLASSDESC:
            raise ValueError("it is not a serialized array")
        (name_len,) = struct.unpack_from(">H", blob, 6)
        cls = blob[8:8 + name_len].decode("ascii")
        pos = 8 + name_len + 8 + 1  # serialVersionUID, flags
        (n_fields,) = struct.unpack_from(">H", blob, pos)
        pos += 2
        if n_fields != 0:
            raise ValueError(f"array class descriptor declares {n_fields} fields")
        if blob[pos] != _TC_ENDBLOCKDATA or blob[pos + 1] != _TC_NULL:
            raise ValueError("unexpected class annotation or superclass")
        pos += 2
        (count,) = struct.unpack_from(">i", blob, pos)
        pos += 4
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: truncated Java array header ({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    dtype = _JAVA_TYPES.get(cls)
    if dtype is None:
        raise ConfigError(f"{what}: Java array of class {cls!r} is not a supported primitive array")
    size = np.dtype(dtype).itemsize * count
    if count < 0 or len(blob) - pos != size:
        raise ConfigError(f"{what}: header says {count} elements ({size} bytes) but {len(blob) - pos} bytes follow")
    return np.frombuffer(blob, dtype=dtype, count=count, offset=pos)


def _entries(map_elem):
    """(key, entry element) pairs of a serialized java.util.Map (``data`` with ``element`` children)."""
    data = map_elem.find("data")
    if data is None:
        return
    for el in data.findall("element"):
        key, entry = el.find("key"), el.find("entry")
        if key is not None and entry is not None:
            yield key.get("value"), entry


def _value(entry):
    d = entry.find("data")
    return None if d is None else d.get("value")


class SpxInfo(dict):
    """Metadata read from an .spx file (plain dict with a few helpers)."""


def _find_chips(root):
    chips = {}
    for cs in root.iter("entry"):
        if cs.get("class") == "sophy.medipix.SPMPXChipSet":
            for key, entry in _entries(cs):
                try:
                    chips[int(key)] = entry
                except (TypeError, ValueError):
                    continue
    return chips


def _hw_info(root) -> dict:
    info = {}
    for entry in root.iter("entry"):
        if entry.get("class") == "sophy.medipix.HwInfoMetaItem":
            name = entry.find("name")
            d = entry.find("data")
            if name is not None and d is not None:
                info[name.get("value")] = d.get("value") if d.get("value") is not None else d.get("externalObject")
    return info


def _named_value(root, name: str):
    for entry in root.iter("entry"):
        n = entry.find("name")
        if n is not None and n.get("value") == name:
            return _value(entry)
    return None


def read_spx_info(path) -> SpxInfo:
    """Metadata of an .spx file: chip indices, names, ids, polarity, pixel mode, bias."""
    with _open(path) as (zf, root):
        return _info(path, zf, root)


def _info(path, zf, root) -> SpxInfo:
    hw = _hw_info(root)
    info = SpxInfo(chips=sorted(_find_chips(root)), hw=hw)
    names = hw.get("ChipNames")
    info["chip_names"] = [n.strip() for n in names.split(",")] if names else []
    ids_member = hw.get("ChipID")
    info["chip_ids"] = []
    if ids_member and ids_member in zf.namelist():
        info["chip_ids"] = [int(v) for v in read_java_array(zf.read(ids_member), f"{path}: {ids_member}")]
    pol = _named_value(root, "polarityPositive")
    info["polarity"] = None if pol is None else (Polarity.POSITIVE if pol.lower() == "true" else Polarity.NEGATIVE)
    mode = _named_value(root, "pixelMode")
    info["operation_mode"] = _PIXEL_MODES.get(mode.upper()) if mode else None
    info["pixel_mode_text"] = mode
    bias_on = hw.get("BiasSupplyEnabled")
    bias = hw.get("BiasAdjust")
    try:
        info["bias_voltage"] = float(bias) if bias is not None and (bias_on or "true").lower() == "true" else None
    except ValueError:
        info["bias_voltage"] = None
    return info


class _open:
    """Context manager: (ZipFile, XML root) with ConfigError for anything that is not an .spx."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        try:
            self.zf = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise ConfigError(f"{self.path}: no such file") from None
        except zipfile.BadZipFile:
            raise ConfigError(f"{self.path}: not a SoPhy .spx file (not a ZIP archive)") from None
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        try:
            xml = self.zf.read("__data.xml")
        except KeyError:
            self.zf.close()
            raise ConfigError(f"{self.path}: not a SoPhy .spx file (no __data.xml in the archive)") from None
        except (zipfile.BadZipFile, OSError) as exc:
            self.zf.close()
            raise ConfigError(f"{self.path}: damaged archive: {exc}") from None
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            self.zf.close()
            raise ConfigError(f"{self.path}: __data.xml is not valid XML: {exc}") from None
        return self.zf, root

    def __exit__(self, *exc):
        self.zf.close()


def load_spx(path, chip: int = 0) -> ChipConfig:
    """Read the configuration of chip ``chip`` (default 0) from a SoPhy .spx file."""
    path = Path(path)
    with _open(path) as (zf, root):
        info = _info(path, zf, root)
        chips = _find_chips(root)
        if chip not in chips:
            raise ConfigError(f"{path}: has no chip {chip} (chips in the file: {sorted(chips) or 'none'})")
        chip_entry = chips[chip]
        dacs = _read_dacs(path, chip_entry, root)
        mask, test, threshold = _read_pixels(path, zf, chip_entry)
    general = GeneralConfig(
        polarity=info["polarity"] if info["polarity"] is not None else Polarity.POSITIVE,
        operation_mode=info["operation_mode"] if info["operation_mode"] is not None else OperationMode.TOA_TOT,
    )
    if info["pixel_mode_text"] and info["operation_mode"] is None:
        log.warning("%s: pixel mode %r is not known; using ToA+ToT", path, info["pixel_mode_text"])
    name = info["chip_names"][chip] if chip < len(info["chip_names"]) else None
    try:
        return ChipConfig(dacs=dacs, general=general, mask=mask, threshold=threshold, test=test, name=name,
                          bias_voltage=info["bias_voltage"], source=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _read_dacs(path, chip_entry, root) -> dict:
    coll = None
    for key, entry in _entries(chip_entry):
        if entry.get("class") == "sophy.medipix.SPMPXDACCollection" or key == "DACs":
            coll = entry
            break
    if coll is None:  # older files: only the global DAC group
        for entry in root.iter("entry"):
            if entry.get("class") == "sophy.medipix.SPMPXDACCollection":
                coll = entry
                break
    if coll is None:
        raise ConfigError(f"{path}: no DAC collection (sophy.medipix.SPMPXDACCollection) in __data.xml")
    dacs = {}
    for key, entry in _entries(coll):
        raw = _value(entry)
        if key not in DAC_NAMES:
            log.warning("%s: ignoring unknown DAC %r = %r", path, key, raw)
            continue
        try:
            dacs[key] = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: DAC {key} has value {raw!r}, not an integer") from None
    missing = [n for n in DAC_NAMES if n not in dacs]
    if missing:
        raise ConfigError(f"{path}: DACs missing from the file: {', '.join(missing)}")
    return dacs


def _read_pixels(path, zf, chip_entry):
    masks = None
    for key, entry in _entries(chip_entry):
        if key == "masks" or entry.get("class") == "sophy.medipix.SPMPXPixelConfigMaskSet":
            masks = entry
            break
    if masks is None:
        raise ConfigError(f"{path}: the chip has no pixel configuration (masks) in __data.xml")
    members = {}
    for key, entry in _entries(masks):
        inner = entry.find("data")
        arr = inner.find("data") if inner is not None else None
        if arr is not None and arr.get("externalObject"):
            members[key] = (arr.get("externalObject"), entry)
    out = {}
    for key, maximum in (("maskBits", 1), ("testBits", 1), ("thlAdj", 15)):
        if key not in members:
            raise ConfigError(f"{path}: pixel configuration has no {key} array")
        member, entry = members[key]
        try:
            blob = zf.read(member)
        except KeyError:
            raise ConfigError(f"{path}: __data.xml names {member} for {key} but the archive lacks it") from None
        values = read_java_array(blob, f"{path}: {member}")
        if values.dtype != np.dtype(">i2"):
            raise ConfigError(f"{path}: {key} is a Java {values.dtype} array, expected short[]")
        if values.size != 65536:
            raise ConfigError(f"{path}: {key} holds {values.size} values, expected 65536")
        if values.min() < 0 or values.max() > maximum:
            raise ConfigError(f"{path}: {key} values span {values.min()}..{values.max()}, expected 0..{maximum}")
        bit_size = entry.find("bitSize")
        if key == "thlAdj" and bit_size is not None:
            log.debug("%s: thlAdj bitSize %s (SoPhy's own bit order on the wire)", path, bit_size.get("value"))
        # element k is pixel (x = k % 256, y = k // 256): reshape gives [y, x], transpose to [x, y]
        out[key] = values.reshape(256, 256).T.astype(np.uint8)
    mask = out["maskBits"] == 0  # file: 1 = enabled
    test = out["testBits"].astype(bool)
    return mask, test, out["thlAdj"]
