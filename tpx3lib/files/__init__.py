"""Files: raw recordings (native, pymepix, ASI/Serval .tpx3) and processed HDF5.

``open_raw(path, "rb")`` reads any raw format (detected by content);
``open_raw(path, "wb", header=...)`` writes the native self-describing format
(docs/raw-format.md). ``load(path)`` reads a processed HDF5 file back.
"""
from __future__ import annotations

from .chunk import DEFAULT_CHUNK_WORDS, RawChunk, RawReader
from .detect import detect_format, open_raw
from .exceptions import CorruptChunkWarning, RawFileWarning, RawWriteError, TruncatedFileWarning
from .header import make_header, validate_header
from .native import NativeReader, RawWriter
from .pymepix_raw import PymepixReader
from .serval_tpx3 import Tpx3Reader

__all__ = [
    "open_raw", "load", "detect_format", "make_header", "validate_header",
    "RawChunk", "RawReader", "RawWriter", "NativeReader", "PymepixReader", "Tpx3Reader",
    "RawWriteError", "RawFileWarning", "TruncatedFileWarning", "CorruptChunkWarning",
    "DEFAULT_CHUNK_WORDS",
]


def load(path, *, pandas: bool = False):
    """Read a processed HDF5 file back as header plus tables (see :mod:`tpx3lib.files.processed`)."""
    from .processed import load as _load
    return _load(path, pandas=pandas)
