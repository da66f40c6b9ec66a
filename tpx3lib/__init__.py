"""tpx3lib: Timepix3 detectors read out by a SPIDR board.

Decoding, events, clustering, SPIDR control, capture, files and train IDs.
Heavier parts are imported lazily so ``import tpx3lib`` stays cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY = {
    "StreamDecoder": "tpx3lib.decode.stream",
    "decode_words": "tpx3lib.decode.stream",
    "EventBuilder": "tpx3lib.decode.events",
    "open_raw": "tpx3lib.files",
    "load": "tpx3lib.files",
    "Tpx3Connection": "tpx3lib.api",
    "PollBufferEmpty": "tpx3lib.api",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'tpx3lib' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)
