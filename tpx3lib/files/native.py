"""The native raw recording format: writer and reader.

Byte-level description: docs/raw-format.md. In short (all little-endian)::

    file header  magic "\\x89TPX3RAW", u16 major, u16 minor, u32 json_len,
                 u32 json_crc32, u32 data_offset, JSON header, zero pad to data_offset
    record*      sync "\\xa5TPXREC\\x00", u8 type, u8 chip, u16 flags, u32 n_datagrams,
                 u64 recv_time_ns, u32 payload_len, u32 body_crc32, u32 seq, u32 header_crc32,
                 [u32 datagram sizes if n_datagrams > 1, pad 8], payload, pad 8

Record type 1 holds words as received; type 2 (the closing record) holds a
JSON object with the counters. Every record is 8-byte aligned and checksummed;
the sync marker lets a reader find the next record after damage.
"""
from __future__ import annotations

import errno as _errno
import json
import logging
import os
import struct
import time
import zlib
from typing import Iterator

import numpy as np

from tpx3lib.errors import FileFormatError, TruncatedFileError

from .chunk import RawChunk, RawReader
from .exceptions import RawWriteError, TruncatedFileWarning
from .header import header_to_json, iso_utc, validate_header

__all__ = [
    "MAGIC", "SYNC", "VERSION", "FILE_HEADER", "RECORD_HEADER",
    "RECORD_DATA", "RECORD_CLOSING", "CLOSING_CHIP",
    "RawWriter", "NativeReader",
]

MAGIC = b"\x89TPX3RAW"
SYNC = b"\xa5TPXREC\x00"
#: (major, minor) written by this version. Readers accept any minor of their major.
VERSION = (1, 0)
#: magic, major, minor, json_len, json_crc32, data_offset
FILE_HEADER = struct.Struct("<8sHHIII")
#: sync, type, chip, flags, n_datagrams, recv_time_ns, payload_len, body_crc32, seq, header_crc32
RECORD_HEADER = struct.Struct("<8sBBHIQIIII")
RECORD_DATA = 1
RECORD_CLOSING = 2
#: chip byte of records that belong to no chip (the closing record)
CLOSING_CHIP = 0xFF

_HDR_CRC_SPAN = RECORD_HEADER.size - 4
_ZEROS = bytes(8)
_RESYNC_BLOCK = 1 << 20
_DEFAULT_BUFFER = 4 << 20

log = logging.getLogger(__name__)


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def _as_bytes_view(data) -> memoryview:
    """A flat byte view of words/bytes without copying (little-endian words)."""
    if isinstance(data, np.ndarray):
        if data.dtype.byteorder == ">" or (data.dtype.byteorder == "=" and not np.little_endian):
            data = data.astype(data.dtype.newbyteorder("<"))
        data = np.ascontiguousarray(data)
        return memoryview(data).cast("B")
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 and view.contiguous else view.cast("B")


def _os_write(fd: int, data) -> int:
    """os.write, kept as a module function so tests can simulate a full disk."""
    return os.write(fd, data)


def _os_pwrite(fd: int, data, offset: int) -> int:
    """os.pwrite (the writes of ``direct=True``), kept as a module function so tests can simulate a full disk."""
    return os.pwrite(fd, data, offset)


class RawWriter:
    """Append-only writer of a native raw recording.

    Obtain with ``tpx3lib.open_raw(path, "wb", header=...)`` (or ``"xb"`` to
    refuse an existing file). Chunks are gathered in a buffer of
    ``buffer_size`` bytes and handed to the OS as whole records, so a reader
    never sees half a chunk except at the very end; a chunk larger than the
    buffer is written directly. ``flush()`` pushes the buffer to the OS (and
    ``fsync`` s if asked). On an ``OSError`` the writer cuts the file back to its
    last complete chunk, stops accepting data and raises :class:`RawWriteError`.

    For speed, pass many datagrams per call (``datagram_sizes`` keeps their
    boundaries): the per-call cost is a few microseconds.

    ``direct=True`` writes with direct I/O (:class:`~tpx3lib.files.direct.DirectAppender`:
    two aligned buffers of ``buffer_size``, written by a thread, no page cache), for
    recording at line rate: the file then grows a buffer at a time (a reader may see it end
    inside a chunk) and holds everything after ``flush()``/``close()``. Where the platform or
    the filesystem has no direct I/O the writer uses buffered writes (``direct_io`` says
    which).

    Counters it keeps: ``chunks_written``, ``datagrams_written``, ``bytes_written``
    (payload bytes), ``offset`` (file size including buffered data).
    """

    def __init__(self, path, header: dict | None = None, *, exclusive: bool = False,
                 fsync: bool = False, buffer_size: int = _DEFAULT_BUFFER, direct: bool = False):
        self.path = os.fspath(path)
        checked = validate_header({"chips": [{"index": 0}]} if header is None else header)
        checked.pop("format", None)
        checked.pop("format_version", None)
        self.header = {"format": "tpx3lib-raw", "format_version": list(VERSION), **checked}
        self.fsync = bool(fsync)
        self.chunks_written = 0
        self.datagrams_written = 0
        self.bytes_written = 0
        self._seq = 0
        hjson = header_to_json(self.header)
        data_offset = _pad8(FILE_HEADER.size + len(hjson))
        self.buffer_size = max(int(buffer_size), data_offset, 4096)
        self._buf = bytearray(self.buffer_size)
        self._mv = memoryview(self._buf)
        self._fill = 0                       # bytes used in the buffer
        self._pending_ends: list[int] = []   # file offsets where buffered records end
        self._durable = 0                    # bytes handed to the OS
        self._failed: RawWriteError | None = None
        self._closed = False
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
        try:
            self._fd = os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise RawWriteError(f"cannot create the recording: {exc.strerror}", self.path,
                                errno=exc.errno, offset=0, readable_until=None) from exc
        head = FILE_HEADER.pack(MAGIC, VERSION[0], VERSION[1], len(hjson), zlib.crc32(hjson), data_offset)
        self._buf[:data_offset] = head + hjson + bytes(data_offset - len(head) - len(hjson))
        self._fill = data_offset
        self._pending_ends.append(data_offset)
        self.data_offset = data_offset
        self._direct = None
        self.flush()   # readers can open the file from now on
        self._complete_end = self._durable   # (direct I/O) end of the last record wholly in the file
        if direct:
            self._open_direct()

    def _open_direct(self) -> None:
        from .direct import DirectAppender
        try:
            # looked up at each call, so a replaced module hook (a test's full disk) applies
            self._direct = DirectAppender(self.path, self._fd, self._durable, block_bytes=self.buffer_size,
                                          pwrite=lambda fd, data, offset: _os_pwrite(fd, data, offset))
        except OSError as exc:
            log.info("%s: no direct I/O here (%s); buffered writes", self.path, exc.strerror or exc)

    @property
    def direct_io(self) -> bool:
        """Whether the data are written with direct I/O."""
        return self._direct is not None

    # ------------------------------------------------------------------ writing
    @property
    def offset(self) -> int:
        """Size the file will have once the buffer is flushed."""
        return self._durable + self._fill

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closed:
            raise ValueError(f"{self.path}: write to a closed raw writer")

    def _append_record(self, rtype: int, chip: int, n_datagrams: int, recv_time_ns: int,
                       table: bytes, payload: memoryview) -> int:
        table_len = len(table)
        plen = len(payload)
        tpad = _pad8(table_len)
        rec_len = RECORD_HEADER.size + tpad + _pad8(plen)
        body_crc = zlib.crc32(payload, zlib.crc32(table)) if table_len else zlib.crc32(payload)
        if self._direct is not None:
            return self._append_direct(rtype, chip, n_datagrams, recv_time_ns, table, payload, body_crc)
        if self._fill + rec_len > self.buffer_size:
            self.flush(fsync=False)
        start = self.offset
        if rec_len > self.buffer_size:
            # too big for the buffer (which is empty now): write the parts directly
            head = self._record_head(rtype, chip, n_datagrams, recv_time_ns, plen, body_crc)
            self._pending_ends.append(start + rec_len)
            parts = [head, table + _ZEROS[: tpad - table_len], payload, _ZEROS[: _pad8(plen) - plen]]
            self._write_parts(parts)
            return start
        seq = self._seq & 0xFFFFFFFF
        self._seq += 1
        mv, at = self._mv, self._fill
        RECORD_HEADER.pack_into(mv, at, SYNC, rtype, chip, 0, n_datagrams, recv_time_ns, plen, body_crc, seq, 0)
        struct.pack_into("<I", mv, at + _HDR_CRC_SPAN, zlib.crc32(mv[at:at + _HDR_CRC_SPAN]))
        at += RECORD_HEADER.size
        if table_len:
            mv[at:at + table_len] = table
            mv[at + table_len:at + tpad] = _ZEROS[: tpad - table_len]
            at += tpad
        mv[at:at + plen] = payload
        at += plen
        end = start + rec_len
        self._fill = end - self._durable
        if self._fill > at:
            mv[at:self._fill] = _ZEROS[: self._fill - at]
        self._pending_ends.append(end)
        return start

    def _record_head(self, rtype, chip, n_datagrams, recv_time_ns, plen, body_crc) -> bytearray:
        head = bytearray(RECORD_HEADER.pack(SYNC, rtype, chip, 0, n_datagrams, recv_time_ns, plen,
                                            body_crc, self._seq & 0xFFFFFFFF, 0))
        self._seq += 1
        struct.pack_into("<I", head, _HDR_CRC_SPAN, zlib.crc32(memoryview(head)[:_HDR_CRC_SPAN]))
        return head

    def _append_direct(self, rtype, chip, n_datagrams, recv_time_ns, table, payload, body_crc) -> int:
        ap = self._direct
        plen, tlen = len(payload), len(table)
        start = ap.end
        self._pending_ends.append(start + RECORD_HEADER.size + _pad8(tlen) + _pad8(plen))
        try:
            ap.append(self._record_head(rtype, chip, n_datagrams, recv_time_ns, plen, body_crc))
            if tlen:
                ap.append(table + _ZEROS[: _pad8(tlen) - tlen])
            ap.append(payload)
            if _pad8(plen) - plen:
                ap.append(_ZEROS[: _pad8(plen) - plen])
        except OSError as exc:
            self._fail(exc, 0)
            raise self._failed from exc
        self._direct_progress()
        return start

    def _direct_progress(self) -> None:
        """Bookkeeping after direct appends: what is in the file, what only in the buffers."""
        ap = self._direct
        self._durable, self._fill = ap.on_disk, ap.end - ap.on_disk
        ends = self._pending_ends
        while ends and ends[0] <= self._durable:
            self._complete_end = ends.pop(0)

    def write_chunk(self, chip: int, words_or_bytes, recv_time_ns: int | None = None,
                    datagram_sizes=None) -> int:
        """Append one chunk of words from ``chip`` as received; return its file offset.

        ``words_or_bytes``: a ``np.uint64`` array (any contiguous array or
        bytes-like object is taken as its raw little-endian bytes); length a
        multiple of 8. ``recv_time_ns``: host receive time (ns since the Unix
        epoch; default now). ``datagram_sizes``: sizes in bytes of the datagrams
        concatenated in this chunk (each a multiple of 8, summing to the
        payload); None means one datagram.
        """
        self._check_open()
        chip = int(chip)
        if not 0 <= chip <= 254:
            raise ValueError(f"chip index {chip} outside 0..254")
        payload = _as_bytes_view(words_or_bytes)
        plen = len(payload)
        if plen % 8:
            raise ValueError(f"chunk of {plen} bytes is not a whole number of 64-bit words")
        if plen >= 1 << 32:
            raise ValueError("chunk larger than 4 GiB: split it")
        if datagram_sizes is None:
            n_dg, table = 1, b""
        else:
            sizes = np.asarray(datagram_sizes, dtype=np.int64).ravel()
            if sizes.size == 0 and plen == 0:
                n_dg, table = 0, b""
            else:
                if (sizes <= 0).any() or (sizes % 8).any():
                    raise ValueError("datagram sizes must be positive multiples of 8 bytes")
                if int(sizes.sum()) != plen:
                    raise ValueError(f"datagram sizes sum to {int(sizes.sum())} bytes, payload has {plen}")
                n_dg = int(sizes.size)
                table = sizes.astype("<u4").tobytes() if n_dg > 1 else b""
        if recv_time_ns is None:
            recv_time_ns = time.time_ns()
        offset = self._append_record(RECORD_DATA, chip, n_dg, int(recv_time_ns), table, payload)
        self.chunks_written += 1
        self.datagrams_written += n_dg
        self.bytes_written += plen
        return offset

    def _write_parts(self, parts) -> None:
        """Write the buffer contents then ``parts`` fully; on OSError fail cleanly."""
        done = 0
        try:
            for part in parts:
                view = memoryview(part).cast("B") if not isinstance(part, memoryview) else part
                n_part = len(view)
                at = 0
                while at < n_part:
                    n = _os_write(self._fd, view[at:])
                    if n <= 0:
                        raise OSError(_errno.EIO, "the operating system accepted no bytes")
                    at += n
                    done += n
        except OSError as exc:
            self._fail(exc, done)
            raise self._failed from exc
        self._durable += done
        self._fill = 0
        self._pending_ends.clear()

    def flush(self, fsync: bool | None = None) -> None:
        """Hand buffered chunks to the OS; ``fsync`` (default: the writer's option) also syncs the disk."""
        if self._failed is not None:
            raise self._failed
        if self._direct is not None:
            try:
                self._direct.sync()
            except OSError as exc:
                self._fail(exc, 0)
                raise self._failed from exc
            self._direct_progress()
        elif self._fill:
            self._write_parts([self._mv[:self._fill]])
        if fsync if fsync is not None else self.fsync:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._fail(exc, 0)
                raise self._failed from exc

    def _fail(self, exc: OSError, done: int) -> None:
        """Cut the file back to the last complete record and remember the error."""
        on_disk = self._durable + done
        good = self._durable
        if self._direct is not None:       # stop its thread first: nothing may write after the cut
            self._direct.close()
            on_disk, good = self._direct.on_disk, self._complete_end
        complete = 0
        for end in self._pending_ends:
            if end <= on_disk:
                good, complete = end, complete + 1
        lost = len(self._pending_ends) - complete
        try:
            os.ftruncate(self._fd, good)
        except OSError:
            pass
        what = exc.strerror or str(exc)
        if exc.errno == _errno.ENOSPC:
            what = "disk full (" + what + ")"
        self._failed = RawWriteError(
            f"write failed at offset {on_disk}: {what}; the file is readable up to offset {good}"
            f" (last complete chunk), {lost} accepted chunk(s) were not written; no further data accepted",
            self.path, errno=exc.errno, offset=on_disk, readable_until=good, chunks_lost=lost)
        self._fill = 0
        self._pending_ends.clear()
        self._durable = good
        self._direct = None

    def close(self, counters: dict | None = None, **extra) -> None:
        """Write the closing record (``counters``: what the receiver counted, e.g.
        datagrams, bytes, losses; any JSON-able dict), flush and close. Idempotent."""
        if self._closed:
            return
        try:
            if self._failed is None:
                now = time.time_ns()
                closing = {
                    "stop_time_ns": now,
                    "stop_time": iso_utc(now),
                    "written": {"chunks": self.chunks_written, "datagrams": self.datagrams_written,
                                "bytes": self.bytes_written},
                    "counters": dict(counters or {}),
                    **extra,
                }
                payload = json.dumps(closing, allow_nan=False, default=_json_default).encode()
                self._append_record(RECORD_CLOSING, CLOSING_CHIP, 0, now, b"", memoryview(payload))
                self.flush(fsync=self.fsync)
        finally:
            self._closed = True
            if self._direct is not None:
                self._direct.close()
                self._direct = None
            os.close(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and self._failed is None and not self._closed:
            try:
                self.close(status="aborted", error=f"{exc_type.__name__}: {exc}")
            except OSError:
                pass
        else:
            self.close()

    def __repr__(self) -> str:
        return f"<RawWriter {self.path!r} chunks={self.chunks_written} bytes={self.bytes_written}>"


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{obj!r} is not JSON-able")


class NativeReader(RawReader):
    """Reader of the native format (see :mod:`tpx3lib.files.native`)."""

    format = "native"

    def __init__(self, path, *, strict: bool = False, warn: bool = True):
        super().__init__(path, strict=strict, warn=warn)
        try:
            self._read_file_header()
        except BaseException:
            self.close()
            raise
        self._closing: dict | None = None
        self.chunks_lost = 0
        self._find_closing_at_tail()

    def _read_file_header(self) -> None:
        head = self._read_at(0, FILE_HEADER.size)
        if len(head) < FILE_HEADER.size:
            raise TruncatedFileError("file ends inside the file header", self.path, len(head))
        magic, major, minor, hlen, hcrc, data_offset = FILE_HEADER.unpack(head)
        if magic != MAGIC:
            raise FileFormatError("not a native tpx3lib raw recording (bad magic)", self.path, 0)
        self.version = (major, minor)
        if major != VERSION[0]:
            raise FileFormatError(f"format version {major}.{minor} cannot be read by this tpx3lib "
                                  f"(reads {VERSION[0]}.x)", self.path, 8)
        if data_offset < FILE_HEADER.size + hlen or data_offset % 8:
            raise FileFormatError(f"bad data offset {data_offset} in the file header", self.path, 20)
        hjson = self._read_at(FILE_HEADER.size, hlen)
        if len(hjson) < hlen:
            raise TruncatedFileError("file ends inside the JSON header", self.path, FILE_HEADER.size + len(hjson))
        self._data_start = data_offset
        header = None
        if zlib.crc32(hjson) != hcrc:
            self._report("the JSON header fails its checksum", FILE_HEADER.size)
        try:
            header = json.loads(hjson.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._report(f"the JSON header cannot be parsed: {exc}", FILE_HEADER.size)
        self.header = header if isinstance(header, dict) else {}

    def _find_closing_at_tail(self) -> None:
        """Cheap check at open: is the last record a valid closing record ending at EOF?"""
        size = self._file_size()
        start = max(self._data_start, size - (1 << 20))
        tail = self._read_at(start, size - start)
        pos = len(tail)
        while True:
            pos = tail.rfind(SYNC, 0, pos)
            if pos < 0:
                break
            rec = self._parse_header(tail[pos:pos + RECORD_HEADER.size])
            if rec is not None and rec[1] == RECORD_CLOSING:
                body_len = _pad8(rec[6])
                if pos + RECORD_HEADER.size + body_len == len(tail):
                    body = tail[pos + RECORD_HEADER.size:]
                    if zlib.crc32(body[:rec[6]]) == rec[7]:
                        self._closing = self._parse_closing(body[:rec[6]], start + pos)
                        break
        self.truncated = self._closing is None

    @staticmethod
    def _parse_header(raw: bytes):
        if len(raw) < RECORD_HEADER.size:
            return None
        rec = RECORD_HEADER.unpack(raw)
        if rec[0] != SYNC or zlib.crc32(raw[:_HDR_CRC_SPAN]) != rec[9]:
            return None
        return rec

    def _parse_closing(self, payload, offset: int) -> dict | None:
        try:
            obj = json.loads(bytes(payload).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._report(f"closing record cannot be parsed: {exc}", offset)
            return None
        return obj if isinstance(obj, dict) else None

    def _resync(self, pos: int) -> int | None:
        """Offset of the next valid record header at or after ``pos``, None if none."""
        while True:
            block = self._read_at(pos, _RESYNC_BLOCK + RECORD_HEADER.size)
            if len(block) < RECORD_HEADER.size:
                return None
            i = 0
            limit = len(block) - RECORD_HEADER.size + 1
            while True:
                i = block.find(SYNC, i, limit + len(SYNC) - 1)
                if i < 0 or i >= limit:
                    break
                if self._parse_header(block[i:i + RECORD_HEADER.size]) is not None:
                    return pos + i
                i += 1
            if len(block) < _RESYNC_BLOCK + RECORD_HEADER.size:
                return None
            pos += _RESYNC_BLOCK

    def _scan(self, pos: int, final: bool) -> Iterator[RawChunk]:
        hsize = RECORD_HEADER.size
        last_seq = None
        while True:
            raw = self._read_at(pos, hsize)
            if len(raw) < hsize:
                self._stop_state = ("eof" if not raw else "partial", pos)
                return
            rec = self._parse_header(raw)
            if rec is None:
                nxt = self._resync(pos + 1)
                if nxt is None:
                    size = self._file_size()
                    if not final and size - pos < hsize + 8:
                        self._stop_state = ("partial", pos)
                        return
                    self._report(f"damaged data: no valid chunk header from offset {pos} to the end of "
                                 f"the file ({size - pos} bytes skipped)", pos, final=final)
                    self._stop_state = ("corrupt", pos if not final else size)
                    return
                self._report(f"damaged data: invalid chunk header at offset {pos}; {nxt - pos} bytes "
                             f"skipped to the next valid chunk at offset {nxt}", pos, final=final)
                pos = nxt
                continue
            _, rtype, chip, _flags, n_dg, recv_ns, plen, body_crc, seq, _ = rec
            table_len = 4 * n_dg if n_dg > 1 else 0
            tpad = _pad8(table_len)
            body_len = tpad + _pad8(plen)
            body = self._read_array_at(pos + hsize, body_len)
            if len(body) < body_len:
                self._stop_state = ("partial", pos)
                return
            payload = body[tpad:tpad + plen]
            crc = zlib.crc32(payload, zlib.crc32(body[:table_len])) if table_len else zlib.crc32(payload)
            if last_seq is not None:
                self.chunks_lost += (seq - last_seq - 1) & 0xFFFFFFFF
            last_seq = seq
            if crc != body_crc:
                self._report(f"damaged chunk #{seq} (chip {chip}, {plen} bytes) at offset {pos}: checksum "
                             f"mismatch; chunk skipped", pos, final=final)
                pos += hsize + body_len
                continue
            if rtype == RECORD_DATA:
                sizes = None
                if n_dg == 1:
                    sizes = np.array([plen], dtype=np.uint32)
                elif n_dg > 1:
                    sizes = body[:table_len].view("<u4")
                if plen % 8 or (sizes is not None and int(sizes.sum(dtype=np.int64)) != plen):
                    self._report(f"chunk #{seq} at offset {pos}: payload of {plen} bytes does not match its "
                                 f"datagram sizes; chunk skipped", pos, final=final)
                else:
                    yield RawChunk(chip, recv_ns or None, payload.view("<u8"), pos, sizes)
            elif rtype == RECORD_CLOSING:
                closing = self._parse_closing(payload, pos)
                if closing is not None:
                    self._closing = closing
            # other record types: unknown to this minor version, skipped (forward compatible)
            pos += hsize + body_len

    def chunks(self) -> Iterator[RawChunk]:
        self.chunks_lost = 0
        yield from super().chunks()

    def _after_full_scan(self, state: str, offset: int) -> None:
        super()._after_full_scan(state, offset)
        if state != "partial" and self._closing is None:
            self.truncated = True
            self.truncated_offset = offset
            self._report(f"file ends without its closing record at offset {offset} (recording interrupted, "
                         f"or still being written); all complete chunks were read", offset,
                         kind=TruncatedFileError, warning=TruncatedFileWarning)

    @property
    def closing(self) -> dict | None:
        return self._closing
