"""Reader of pymepix raw files: UDP payloads concatenated, no framing.

Layout (spec section 5): an optional 8-byte little-endian ``time.time_ns()``
start stamp, then 64-bit little-endian words. The stamp is recognised by
content: a Timepix3 word's top nibble is 0x4, 0x5, 0x6, 0x7, 0xA or 0xB, while
a time_ns stamp between the years 2000 and 2100 has top nibble 0x0..0x3. A file
is taken for pymepix data when at least 90 % of its first 4096 words have the
header byte of a known word type.
Datagram boundaries and receive times are not in these files.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .chunk import RawChunk, RawReader
from .header import iso_utc

__all__ = ["PymepixReader", "looks_like_pymepix", "stamp_of", "WORD_NIBBLES", "DATA_HEADER_BYTES"]

#: Top nibbles of valid Timepix3/SPIDR words: global time 4, packet id 5, TDC 6,
#: end of command 7, pixel 0xA (sequential/iToT) and 0xB (data driven).
WORD_NIBBLES = frozenset({0x4, 0x5, 0x6, 0x7, 0xA, 0xB})
#: Header bytes of the words real data consist of (pixels, TDC edges, global time,
#: end of command, packet id): the content check counts these, so text is not taken for data.
DATA_HEADER_BYTES = frozenset([*range(0xA0, 0xC0), 0x6F, 0x6A, 0x6E, 0x6B, 0x44, 0x45, 0x71,
                               *range(0x50, 0x60)])
_STAMP_MIN = 946_684_800 * 10**9      # 2000-01-01
_STAMP_MAX = 4_102_444_800 * 10**9    # 2100-01-01
_SAMPLE_WORDS = 4096
_MIN_VALID_FRACTION = 0.9


def stamp_of(first8: bytes) -> int | None:
    """The start stamp if ``first8`` is one (rather than a data word), else None."""
    if len(first8) < 8:
        return None
    v = int.from_bytes(first8[:8], "little")
    if (v >> 60) in WORD_NIBBLES:
        return None
    return v if _STAMP_MIN <= v < _STAMP_MAX else None


def looks_like_pymepix(head: bytes) -> bool:
    """True if ``head`` (the start of a file) reads as pymepix raw data."""
    if len(head) < 8:
        return False
    stamp = stamp_of(head)
    start = 8 if stamp is not None else 0
    n = min(_SAMPLE_WORDS, (len(head) - start) // 8)
    if n == 0:
        return stamp is not None      # a recording that got nothing but its stamp
    words = np.frombuffer(head, "<u8", count=n, offset=start)
    header_bytes = (words >> np.uint64(56)).astype(np.uint8)
    valid = np.isin(header_bytes, list(DATA_HEADER_BYTES))
    return bool(valid[0]) and valid.mean() >= _MIN_VALID_FRACTION


class PymepixReader(RawReader):
    """Raw words of a pymepix file, yielded in blocks of words (chip 0)."""

    format = "pymepix"

    def __init__(self, path, *, strict: bool = False, warn: bool = True, block_words: int | None = None):
        super().__init__(path, strict=strict, warn=warn)
        first = self._read_at(0, 8)
        self.stamp_ns = stamp_of(first)
        self._data_start = 8 if self.stamp_ns is not None else 0
        if block_words:
            self._block_hint = int(block_words)
        self.header = {
            "format": "pymepix",
            "start_stamp": self.stamp_ns is not None,
            "start_time_ns": self.stamp_ns,
            "start_time": iso_utc(self.stamp_ns) if self.stamp_ns is not None else None,
            "chips": [{"index": 0}],
        }

    def _scan(self, pos: int, final: bool) -> Iterator[RawChunk]:
        block_bytes = 8 * max(1, self._block_hint)
        size = self._file_size()
        while True:
            whole = (size - pos) // 8 * 8
            if whole <= 0:
                self._stop_state = ("partial" if size > pos else "eof", pos)
                return
            n = min(block_bytes, whole)
            buf = self._read_array_at(pos, n)
            if len(buf) < n:          # the file shrank under us
                self._stop_state = ("partial", pos)
                return
            yield RawChunk(0, None, buf.view("<u8"), pos, None)
            pos += n
            if pos + block_bytes > size:
                size = self._file_size()
