"""What every raw-file reader shares: the chunk record and the reader base class.

A reader turns a file into a sequence of :class:`RawChunk` (the words of one
chip as received, with where they came from). Subclasses implement
``_scan(pos, final)``; this class adds full-file iteration with damage
reporting, tailing a file that is still being written, and re-batching into
fixed-size word arrays for streaming in bounded memory.
"""
from __future__ import annotations

import os
import time
import warnings
from typing import Iterator, NamedTuple

import numpy as np

from tpx3lib.errors import FileFormatError, TruncatedFileError

from .exceptions import CorruptChunkWarning, TruncatedFileWarning

__all__ = ["RawChunk", "RawReader", "DEFAULT_CHUNK_WORDS"]

#: Default size of the arrays ``iter_words`` yields (8 MiB of words).
DEFAULT_CHUNK_WORDS = 1 << 20


class RawChunk(NamedTuple):
    """One chunk of a raw file.

    ``chip``: chip index (0 for pymepix files); ``recv_time_ns``: host receive
    time in ns since the Unix epoch, or None when the format has none;
    ``words``: the 64-bit words (``np.uint64``, little-endian as in the file);
    ``offset``: byte offset of the chunk's record in the file;
    ``datagram_sizes``: sizes in bytes of the UDP datagrams the words came in
    (sums to ``words.nbytes``), or None when the format does not keep them.
    """

    chip: int
    recv_time_ns: int | None
    words: np.ndarray
    offset: int
    datagram_sizes: np.ndarray | None

    def datagrams(self) -> list[np.ndarray]:
        """The words split at the datagram boundaries (one array if unknown)."""
        if self.datagram_sizes is None or len(self.datagram_sizes) <= 1:
            return [self.words]
        ends = np.cumsum(np.asarray(self.datagram_sizes, dtype=np.int64) // 8)
        return np.split(self.words, ends[:-1])


class RawReader:
    """Base of the readers ``open_raw(path, "rb")`` returns.

    Attributes: ``path``, ``format`` ("native", "pymepix", "tpx3"), ``header``
    (dict), ``errors`` (list of :class:`FileFormatError` found by the last full
    read, each with ``path`` and ``offset``), ``truncated`` / ``truncated_offset``,
    ``closing`` and ``counters`` (native files only; None otherwise), ``chips``.

    Damage is reported, not fatal: with ``strict=False`` (default) a corrupted
    chunk is skipped and recorded in ``errors`` with a warning, and a file cut
    short reads up to its last complete chunk with ``truncated`` set. With
    ``strict=True`` the first problem raises (``TruncatedFileError`` for a cut);
    ``warn=False`` only records problems in ``errors``.
    """

    format: str = ""

    def __init__(self, path, *, strict: bool = False, warn: bool = True):
        self.path = os.fspath(path)
        self.strict = bool(strict)
        self.warn = bool(warn)
        self.errors: list[FileFormatError] = []
        self.header: dict = {}
        self.truncated: bool = False
        self.truncated_offset: int | None = None
        self._f = open(self.path, "rb", buffering=1 << 20)
        self._fpos = 0
        self._data_start = 0
        self._poll_pos: int | None = None
        self._reported: set[tuple[int, str]] = set()
        # set by _scan when it stops: ("eof" | "partial" | "corrupt", offset)
        self._stop_state: tuple[str, int] = ("eof", 0)

    # ----------------------------------------------------------------- plumbing
    def _read_at(self, pos: int, n: int) -> bytes:
        if pos != self._fpos:
            self._f.seek(pos)
        data = self._f.read(n)
        self._fpos = pos + len(data)
        return data

    def _read_array_at(self, pos: int, n: int) -> np.ndarray:
        """Read ``n`` bytes into a fresh uint8 array (shorter at end of file)."""
        if pos != self._fpos:
            self._f.seek(pos)
        buf = np.empty(n, np.uint8)
        got = self._f.readinto(buf) if n else 0
        self._fpos = pos + got
        return buf if got == n else buf[:got]

    def _file_size(self) -> int:
        return os.fstat(self._f.fileno()).st_size

    def _report(self, message: str, offset: int, *, kind=FileFormatError, warning=CorruptChunkWarning,
                final: bool = True) -> None:
        """Record (or in strict mode raise) a problem found at ``offset``."""
        key = (offset, message)
        if key in self._reported:
            return
        self._reported.add(key)
        err = kind(message, self.path, offset)
        if self.strict and final:
            raise err
        self.errors.append(err)
        if self.warn:
            warnings.warn(str(err), warning, stacklevel=4)

    def _scan(self, pos: int, final: bool) -> Iterator[RawChunk]:  # pragma: no cover - abstract
        """Yield chunks from ``pos``; set ``self._stop_state`` when done.

        ``final`` means the file is complete: damage and partial records are
        reported. Without it (tailing a live file) an incomplete record at the
        end is simply not yet there.
        """
        raise NotImplementedError

    def _after_full_scan(self, state: str, offset: int) -> None:
        """Set ``truncated`` from how a full scan ended; subclasses may extend."""
        if state == "partial":
            self.truncated = True
            self.truncated_offset = offset
            self._report(f"file is cut short: the data after offset {offset} is an incomplete chunk "
                         f"({self._file_size() - offset} bytes); read up to the last complete chunk",
                         offset, kind=TruncatedFileError, warning=TruncatedFileWarning)
        else:
            self.truncated = False
            self.truncated_offset = None

    # ------------------------------------------------------------------ public
    @property
    def closing(self) -> dict | None:
        """The closing record (native files), None if absent or not applicable."""
        return None

    @property
    def counters(self) -> dict | None:
        """Counters from the closing record (native files), else None."""
        closing = self.closing
        return None if closing is None else closing.get("counters")

    @property
    def chips(self) -> list[int]:
        """Chip indices in the file (from the header where it has them)."""
        return sorted({int(c["index"]) for c in self.header.get("chips", [])}) or [0]

    def chunks(self) -> Iterator[RawChunk]:
        """Iterate over all complete chunks from the start of the file.

        Each call reads the file afresh and resets ``errors``; at the end
        ``truncated`` is up to date (a warning, or ``TruncatedFileError`` when strict).
        """
        self.errors = []
        self._reported = set()
        yield from self._scan(self._data_start, True)
        state, offset = self._stop_state
        self._after_full_scan(state, offset)

    def __iter__(self) -> Iterator[RawChunk]:
        return self.chunks()

    def poll(self) -> list[RawChunk]:
        """Chunks completed since the previous ``poll`` (all so far on the first call).

        For a file still being written: never blocks, never reports the
        incomplete record at the end; call again later for more.
        """
        pos = self._data_start if self._poll_pos is None else self._poll_pos
        out = list(self._scan(pos, False))
        self._poll_pos = self._stop_state[1]
        return out

    def follow(self, poll_interval: float = 0.1, idle_timeout: float | None = None) -> Iterator[RawChunk]:
        """Yield chunks as a writer appends them, until the closing record is read
        (native) or no new data arrived for ``idle_timeout`` seconds."""
        last = time.monotonic()
        while True:
            new = self.poll()
            yield from new
            if self.closing is not None and self._poll_pos is not None and self._poll_pos >= self._file_size():
                return
            if new:
                last = time.monotonic()
            elif idle_timeout is not None and time.monotonic() - last >= idle_timeout:
                return
            else:
                time.sleep(poll_interval)

    def iter_words(self, chunk_words: int = DEFAULT_CHUNK_WORDS, chip: int | None = None) -> Iterator[np.ndarray]:
        """Stream the words as ``np.uint64`` arrays of ``chunk_words`` (the last one shorter).

        Memory stays bounded by about ``chunk_words`` plus one chunk whatever the
        file size. ``chip`` selects one chip; None yields every chip's words in
        file order (for multi-chip files use :meth:`iter_chip_words`).
        """
        chunk_words = int(chunk_words)
        if chunk_words <= 0:
            raise ValueError("chunk_words must be positive")
        self._block_hint = chunk_words
        pending: list[np.ndarray] = []
        n = 0
        for c in self.chunks():
            if chip is not None and c.chip != chip:
                continue
            w = c.words
            while len(w):
                if n == 0 and len(w) >= chunk_words:
                    yield w[:chunk_words]
                    w = w[chunk_words:]
                    continue
                take = min(chunk_words - n, len(w))
                pending.append(w[:take])
                n += take
                w = w[take:]
                if n == chunk_words:
                    yield np.concatenate(pending)
                    pending, n = [], 0
        if n:
            yield np.concatenate(pending)

    def iter_chip_words(self, chunk_words: int = DEFAULT_CHUNK_WORDS) -> Iterator[tuple[int, np.ndarray]]:
        """Stream ``(chip, words)`` pairs, each of one chip only, in that chip's order.

        A chip's words are yielded when ``chunk_words`` have gathered, and what
        is left of every chip at the end; memory is bounded by chips x chunk_words.
        """
        chunk_words = int(chunk_words)
        if chunk_words <= 0:
            raise ValueError("chunk_words must be positive")
        self._block_hint = chunk_words
        pending: dict[int, list[np.ndarray]] = {}
        counts: dict[int, int] = {}
        for c in self.chunks():
            lst = pending.setdefault(c.chip, [])
            lst.append(c.words)
            counts[c.chip] = counts.get(c.chip, 0) + len(c.words)
            if counts[c.chip] >= chunk_words:
                words = np.concatenate(lst) if len(lst) > 1 else lst[0]
                start = 0
                while len(words) - start >= chunk_words:
                    yield c.chip, words[start:start + chunk_words]
                    start += chunk_words
                rest = words[start:]
                pending[c.chip] = [rest] if len(rest) else []
                counts[c.chip] = len(rest)
        for chip in sorted(pending):
            if counts[chip]:
                lst = pending[chip]
                yield chip, (np.concatenate(lst) if len(lst) > 1 else lst[0])

    _block_hint: int = DEFAULT_CHUNK_WORDS

    def close(self) -> None:
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.format} {self.path!r}>"
