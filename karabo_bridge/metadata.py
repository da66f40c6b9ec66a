"""Per-source metadata of a train: timestamps and train IDs.

The metadata of one source is a dict with (all optional on the wire, but
expected by most consumers):

==================  =======  ==============================================
``source``          str      the source name
``timestamp``       float    Unix seconds
``timestamp.sec``   str      integer seconds as a decimal string
``timestamp.frac``  str      18-digit fraction of a second (attoseconds)
``timestamp.tid``   int      the European XFEL train ID
``ignored_keys``    list     optional
==================  =======  ==============================================
"""
from __future__ import annotations

import time

__all__ = ["timestamp_fields", "make_metadata", "train_id_of"]


def timestamp_fields(t_ns: int | None = None) -> dict:
    """The ``timestamp``, ``timestamp.sec`` and ``timestamp.frac`` entries for
    a time given in integer nanoseconds since the epoch (default: now)."""
    if t_ns is None:
        t_ns = time.time_ns()
    t_ns = int(t_ns)
    sec, ns = divmod(t_ns, 1_000_000_000)
    return {
        "timestamp": t_ns / 1e9,
        "timestamp.sec": str(sec),
        "timestamp.frac": f"{ns:09d}" + "0" * 9,
    }


def make_metadata(source: str, train_id: int, timestamp: float | int | None = None) -> dict:
    """Metadata dict of one source for one train.

    ``timestamp`` is Unix seconds (float) or, if an ``int`` larger than 1e15,
    nanoseconds; default: now.
    """
    if timestamp is None:
        t_ns = time.time_ns()
    elif isinstance(timestamp, int) and timestamp > 10**15:
        t_ns = timestamp
    else:
        t_ns = round(float(timestamp) * 1e9)
    meta = {"source": str(source)}
    meta.update(timestamp_fields(t_ns))
    meta["timestamp.tid"] = int(train_id)
    return meta


def train_id_of(metadata: dict) -> int | None:
    """The train ID of a train's metadata (``{source: {...}}``): the
    ``timestamp.tid`` of the first source that has one, else ``None``."""
    for meta in metadata.values():
        if isinstance(meta, dict):
            tid = meta.get("timestamp.tid")
            if tid is not None:
                return int(tid)
    return None
