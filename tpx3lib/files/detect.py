"""``open_raw``: open a raw recording for reading (format detected by content) or writing."""
from __future__ import annotations

import os

from tpx3lib.errors import FileFormatError

from .chunk import RawReader
from .native import MAGIC, NativeReader, RawWriter
from .pymepix_raw import PymepixReader, looks_like_pymepix
from .serval_tpx3 import TPX3_MAGIC, Tpx3Reader

__all__ = ["open_raw", "detect_format", "READERS", "HDF5_SIGNATURE"]

#: format name -> reader class
READERS: dict[str, type[RawReader]] = {
    "native": NativeReader,
    "pymepix": PymepixReader,
    "tpx3": Tpx3Reader,
}
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SNIFF_BYTES = 64 * 1024


def detect_format(path) -> str:
    """Name the format of a file from its content: "native", "tpx3", "pymepix" or "hdf5".

    Raises :class:`FileFormatError` (offset 0) for anything else, including empty files.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head:
        raise FileFormatError("empty file: no raw data", path, 0)
    if head.startswith(MAGIC[: min(len(head), len(MAGIC))]):
        return "native"
    if head.startswith(TPX3_MAGIC):
        return "tpx3"
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    if looks_like_pymepix(head):
        return "pymepix"
    raise FileFormatError(
        "unknown content: not a native tpx3lib recording (starts with \\x89TPX3RAW), not an ASI/Serval "
        ".tpx3 file (starts with 'TPX3'), not a pymepix raw file (64-bit words with known header bytes "
        f"0xA0-0xBF, 0x6X, 0x44, 0x45, 0x71, 0x5X after an optional time stamp); first bytes: {head[:16].hex(' ')}", path, 0)


def open_raw(path, mode: str = "rb", *, header: dict | None = None, strict: bool = False,
             warn: bool = True, format: str | None = None, fsync: bool = False, buffer_size: int = 4 << 20,
             direct: bool = False):
    """Open a raw recording, in the spirit of :func:`open`.

    ``mode="rb"``: return a reader (:class:`~tpx3lib.files.chunk.RawReader`) for
    a native, pymepix or ASI/Serval .tpx3 file, detected by content (or forced
    with ``format``). ``strict=True`` raises on damage instead of reporting it;
    ``warn=False`` records damage in ``reader.errors`` without warnings.

    ``mode="wb"`` (replace) or ``"xb"`` (must not exist): return a
    :class:`~tpx3lib.files.native.RawWriter` for a native recording with
    ``header`` (a dict, validated; see :mod:`tpx3lib.files.header`); ``direct=True``:
    direct I/O where the filesystem has it (see the writer).
    """
    if mode in ("rb", "r"):
        if header is not None:
            raise ValueError("header= is only for writing")
        fmt = format or detect_format(path)
        if fmt == "hdf5":
            raise FileFormatError("this is an HDF5 file (processed data?), not a raw recording: use "
                                  "tpx3lib.load() or 'tpx3 info'", os.fspath(path), 0)
        cls = READERS.get(fmt)
        if cls is None:
            raise ValueError(f"unknown raw format {fmt!r}; choose from {', '.join(READERS)}")
        return cls(path, strict=strict, warn=warn)
    if mode in ("wb", "w", "xb", "x"):
        if format not in (None, "native"):
            raise ValueError("only the native format can be written")
        return RawWriter(path, header, exclusive=mode.startswith("x"), fsync=fsync, buffer_size=buffer_size,
                         direct=direct)
    raise ValueError(f"mode must be 'rb', 'wb' or 'xb', not {mode!r}")
