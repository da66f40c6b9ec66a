"""Live capture: UDP datagrams from SPIDR into shared-memory rings, one receiver process per chip.

- :class:`Capture` starts and stops the receivers and owns the rings;
- :class:`RingReader` attaches to a ring by name (from any process) and reads
  records as zero-copy views; :class:`SharedRing`/:class:`RingWriter` are the
  owner and writer sides (used by :class:`Capture` and the receiver processes);
- :class:`UdpSender` is a loopback test sender.

See docs/capture.md for the design, the counters and the policies.
"""
from __future__ import annotations

from .capture import DEFAULT_BASE_PORT, Capture
from .errors import CaptureError, CaptureFault, RingError
from .ring import (
    COUNTER_NAMES, FLAG_MALFORMED, FLAG_PAD, FLAG_TRUNCATED, HEADER_BYTES, HEADER_DTYPE,
    Record, RecordBatch, RingReader, RingWriter, SharedRing, record_bytes,
)
from .sender import UdpSender

__all__ = [
    "Capture", "DEFAULT_BASE_PORT", "CaptureError", "CaptureFault", "RingError",
    "SharedRing", "RingWriter", "RingReader", "RecordBatch", "Record", "record_bytes",
    "COUNTER_NAMES", "HEADER_BYTES", "HEADER_DTYPE", "FLAG_PAD", "FLAG_MALFORMED", "FLAG_TRUNCATED",
    "UdpSender",
]
