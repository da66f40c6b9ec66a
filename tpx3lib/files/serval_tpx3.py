"""Reader of ASI/Serval ``.tpx3`` files: words in chunks with 8-byte chunk headers.

Chunk header (one little-endian 64-bit word): bytes 0..3 ``b"TPX3"``, byte 4
chip index, byte 5 mode, bytes 6..7 (u16) size in bytes of the words that
follow. There is no checksum: a header that is not ``TPX3`` or has a size that
is not a multiple of 8 is damage, and reading resumes at the next plausible
header. A last chunk cut short yields its whole words and sets ``truncated``.
"""
from __future__ import annotations

import struct
from typing import Iterator


from tpx3lib.errors import TruncatedFileError

from .chunk import RawChunk, RawReader
from .exceptions import TruncatedFileWarning

__all__ = ["Tpx3Reader", "TPX3_MAGIC"]

TPX3_MAGIC = b"TPX3"
_CHUNK_HEADER = struct.Struct("<4sBBH")
_RESYNC_BLOCK = 1 << 20


class Tpx3Reader(RawReader):
    """Chunks of an ASI/Serval ``.tpx3`` file, one :class:`RawChunk` per file chunk."""

    format = "tpx3"

    def __init__(self, path, *, strict: bool = False, warn: bool = True):
        super().__init__(path, strict=strict, warn=warn)
        self.header = {"format": "tpx3"}
        self._chips: list[int] | None = None

    def _valid_header_at(self, data: bytes, i: int, base: int, size: int) -> bool:
        if data[i:i + 4] != TPX3_MAGIC or len(data) < i + 8:
            return False
        _, _, _, n = _CHUNK_HEADER.unpack_from(data, i)
        if n % 8:
            return False
        nxt = base + i + 8 + n
        if nxt >= size:
            return True
        return self._read_at(nxt, 4) == TPX3_MAGIC

    def _resync(self, pos: int) -> int | None:
        size = self._file_size()
        while pos < size:
            block = self._read_at(pos, _RESYNC_BLOCK + 8)
            i = block.find(TPX3_MAGIC)
            while 0 <= i < _RESYNC_BLOCK:
                if self._valid_header_at(block, i, pos, size):
                    return pos + i
                i = block.find(TPX3_MAGIC, i + 1)
            if len(block) <= _RESYNC_BLOCK:
                return None
            pos += _RESYNC_BLOCK
        return None

    def _scan(self, pos: int, final: bool) -> Iterator[RawChunk]:
        while True:
            raw = self._read_at(pos, 8)
            if len(raw) < 8:
                self._stop_state = ("eof" if not raw else "partial", pos)
                return
            magic, chip, _mode, n = _CHUNK_HEADER.unpack(raw)
            if magic != TPX3_MAGIC or n % 8:
                nxt = self._resync(pos + 1)
                end = self._file_size() if nxt is None else nxt
                why = "no 'TPX3' chunk header" if magic != TPX3_MAGIC else f"chunk size {n} not a multiple of 8"
                self._report(f"damaged data: {why} at offset {pos}; {end - pos} bytes skipped"
                             + ("" if nxt is None else f" to the next chunk at offset {nxt}"), pos, final=final)
                if nxt is None:
                    self._stop_state = ("corrupt", end)
                    return
                pos = nxt
                continue
            buf = self._read_array_at(pos + 8, n)
            if len(buf) < n:
                if not final:
                    self._stop_state = ("partial", pos)
                    return
                whole = len(buf) // 8 * 8
                if whole:
                    yield RawChunk(chip, None, buf[:whole].view("<u8"), pos, None)
                self.truncated = True
                self.truncated_offset = pos + 8 + whole
                self._report(f"file is cut short: the chunk at offset {pos} declares {n} bytes but "
                             f"{len(buf)} remain; its {whole // 8} whole words were read",
                             pos, kind=TruncatedFileError, warning=TruncatedFileWarning)
                self._stop_state = ("cut", pos + 8 + whole)
                return
            yield RawChunk(chip, None, buf.view("<u8"), pos, None)
            pos += 8 + n

    def _after_full_scan(self, state: str, offset: int) -> None:
        if state != "cut":
            super()._after_full_scan(state, offset)

    @property
    def chips(self) -> list[int]:
        """Chip indices found in the chunk headers (a quick pass over the headers)."""
        if self._chips is None:
            found = set()
            pos, size = 0, self._file_size()
            while pos + 8 <= size:
                magic, chip, _mode, n = _CHUNK_HEADER.unpack(self._read_at(pos, 8))
                if magic != TPX3_MAGIC:
                    nxt = self._resync(pos + 1)
                    if nxt is None:
                        break
                    pos = nxt
                    continue
                found.add(chip)
                pos += 8 + n
            self._chips = sorted(found) or [0]
        return self._chips
