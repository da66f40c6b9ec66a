"""A shared-memory ring of variable-size records: one writer, several readers.

Layout of the segment (``multiprocessing.shared_memory``)::

    [control block: ctrl_bytes, a whole number of pages][data area: capacity bytes]

The data area holds records back to back. A record is a 32-byte header
(:data:`HEADER_DTYPE`: sequence number, receive time, payload length, stride to
the next record, chip, flags, socket drop count) followed by the payload; a
record's stride is a multiple of 8, so every header and payload is 8-byte
aligned and a payload can be viewed as ``uint64`` words without a copy. A
record never wraps: when it does not fit before the end of the data area the
writer fills the rest with a PAD record (or, when fewer than 32 bytes remain,
with nothing - both sides skip such a tail) and continues at offset 0.

Positions (``write_pos``, ``tail``, each reader's ``read_pos``) are byte counts
that only grow; the offset in the data area is ``pos % capacity``.

Coordination without pickling or locks on the hot path
------------------------------------------------------
Every cursor and counter is an aligned 8-byte integer in the control block with
exactly one process that stores to it (the writer, or the reader owning a
slot). On x86-64 an aligned 8-byte load or store is a single atomic instruction
and the memory model is TSO: stores become visible in program order and loads
are not reordered with other loads. So the writer writes payload and headers,
then stores ``write_pos``; a reader loads ``write_pos``, then reads the headers
and payloads before it - and sees them complete. The same holds for the
``tail`` (oldest record kept) that the writer stores *before* it overwrites
old records: a reader that reads a record and then finds ``tail`` not past it
knows the record was intact. numpy/memoryview scalar access compiles to such
plain loads and stores. Weakly ordered CPUs (ARM) would need fences; this
module assumes x86-64 (documented in docs/capture.md).

Rare, multi-party events - a reader attaching or detaching, the writer moving
``tail`` (reclaiming space, evicting a lagging reader) - take an ``flock`` on
the segment's file descriptor, which serialises them across processes and is
released by the kernel if a process dies.

Wake-ups: readers sleep on a futex word (Linux, via ctypes) that the writer
bumps after each commit and wakes only when a reader has said it is waiting; a
blocked writer sleeps on the slowest reader's release word. Sleeps are capped
(tens of ms) so a missed wake-up costs latency, never a hang. Elsewhere readers
poll with 1 ms sleeps.

Policies when the slowest reader is a whole ring behind:

* ``"block"``: the writer waits (backpressure) until the reader releases space;
  with ``block_timeout`` set it then evicts that reader (counted as overrun).
  A reader whose process has died is detected and stops blocking the writer.
* ``"overrun"``: the writer reclaims the oldest records at once; every live
  reader that had not read them gets them counted as overruns in its slot.

With no reader attached the writer reclaims old records as needed and counts
them as ``unread_discarded``; a reader that attaches with ``start="oldest"``
still gets whatever is left.

Zero-copy: :meth:`RingReader.read` returns a :class:`RecordBatch` of numpy
views into the ring; they stay valid until :meth:`RingReader.release`. Under
``"overrun"`` a reader that holds views while falling a whole ring behind can
have them overwritten; ``release`` then returns how many were.

Lifetime: :class:`SharedRing` (the owner) creates and unlinks the segment; it is
registered with multiprocessing's resource tracker, which unlinks it should the
owner die. Attachers (writer, readers) map it without registering, so their exit
never removes it; their mappings stay valid after the owner unlinks.
"""
from __future__ import annotations

import bisect
import contextlib
import fcntl
import itertools
import mmap
import os
import secrets
import struct
import time
from multiprocessing import shared_memory
from typing import Callable, Iterator

import numpy as np

from . import _linux
from .errors import ConfigError, RingError

__all__ = [
    "HEADER_BYTES", "HEADER_DTYPE", "FLAG_PAD", "FLAG_MALFORMED", "FLAG_TRUNCATED",
    "POLICIES", "COUNTER_NAMES", "WRITER_NEW", "WRITER_RUNNING", "WRITER_CLOSED", "WRITER_FAILED",
    "SharedRing", "RingWriter", "RingReader", "RecordBatch", "Record", "record_bytes",
]

HEADER_BYTES = 32
_HEADER = struct.Struct("<QqIIHHI")
#: The record header as stored in the ring (little-endian, 32 bytes).
HEADER_DTYPE = np.dtype([
    ("seq", "<u8"), ("recv_time_ns", "<i8"), ("length", "<u4"), ("stride", "<u4"),
    ("chip", "<u2"), ("flags", "<u2"), ("drops", "<u4"),
])
assert HEADER_DTYPE.itemsize == HEADER_BYTES == _HEADER.size

FLAG_PAD = 1          # filler to the end of the data area; not a record
FLAG_MALFORMED = 2    # payload length is not a multiple of 8 (kept as received)
FLAG_TRUNCATED = 4    # the datagram was longer than the receive buffer

POLICIES = {"block": 0, "overrun": 1}
WRITER_NEW, WRITER_RUNNING, WRITER_CLOSED, WRITER_FAILED = 0, 1, 2, 3
_STATE_NAMES = {0: "new", 1: "running", 2: "closed", 3: "failed"}

_MAGIC = 0x31474E4952585054  # b"TPXRING1" little-endian
_VERSION = 1
_FOREVER = 0xFFFFFFFFFFFFFFFF

# --- control block: u64 word indices -------------------------------------------
# line 0: fixed at creation
_MAGIC_W, _VERSION_W, _CTRL_BYTES, _CAPACITY, _MAX_READERS, _CHIP, _POLICY, _BLOCK_TIMEOUT_NS = range(8)
# line 1: writer cursor (writer-owned; EPOCH changes under the flock only)
_WRITE_POS, _TAIL, _NEXT_SEQ, _DATA_FUTEX, _WRITER_STATE, _WRITER_PID, _WRITER_WAITING, _EPOCH = range(8, 16)
# lines 2..: counters under a seqlock (writer-owned)
_COUNTERS_SEQ = 16
#: Counters kept in the control block, readable at any time by any process.
COUNTER_NAMES = (
    "records", "record_bytes",                     # written to the ring
    "datagrams", "bytes", "words", "malformed", "truncated", "kernel_drops",
    "overruns", "overrun_bytes",                   # records evicted before a live reader read them
    "unread_discarded", "unread_discarded_bytes",  # reclaimed while no reader was attached
    "block_waits", "blocked_ns", "dead_readers",
    "first_recv_ns", "last_recv_ns",
    "rcvbuf_requested", "rcvbuf_granted", "rmem_max", "rcvbuf_capped",
    "port", "recv_calls",
    "stop_discarded", "stop_discarded_bytes",      # left in the socket when a blocked receiver was stopped
)
_C = {name: i for i, name in enumerate(COUNTER_NAMES)}
_COUNTERS_FIRST = 17
assert _COUNTERS_FIRST + len(COUNTER_NAMES) <= 64
# bytes 512..1023: error text of a failed writer
_ERR_LEN_W = 64
_ERR_TEXT_BYTE, _ERR_TEXT_MAX = 520, 500
# bytes 1024..: reader slots of 16 words
_SLOT_FIRST_W, _SLOT_WORDS = 128, 16
# reader-owned
_S_ACTIVE, _S_GEN, _S_PID, _S_READ_POS, _S_WAITING, _S_RELEASE_FUTEX, _S_RECORDS, _S_BYTES = range(8)
_S_OVERRUN_BASE, _S_OVERRUN_BYTES_BASE = 8, 9
# writer-owned
_S_OVERRUNS, _S_OVERRUN_BYTES, _S_DEAD_GEN = 12, 13, 14

_names = itertools.count()


def record_bytes(payload_len: int) -> int:
    """Bytes a record with ``payload_len`` payload bytes takes in the ring (header + payload, 8-aligned)."""
    return HEADER_BYTES + ((payload_len + 7) & ~7)


def _ctrl_bytes(max_readers: int) -> int:
    need = _SLOT_FIRST_W * 8 + _SLOT_WORDS * 8 * max_readers
    return (need + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (dead, not yet reaped by its parent) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class _Mapping:
    """A mapping of a ring segment: control words, data views, flock and futex addresses."""

    def __init__(self, name: str, fd: int, mm, size: int):
        self.name = name
        self._fd = fd
        self._mm = mm
        head = np.frombuffer(mm, np.uint64, count=_SLOT_FIRST_W) if size >= 8 * _SLOT_FIRST_W else None
        if head is None or int(head[_MAGIC_W]) != _MAGIC or int(head[_VERSION_W]) != _VERSION:
            del head
            mm.close()
            os.close(fd)
            raise RingError(f"shared memory {name!r} is not a capture ring (bad magic/version)")
        self.ctrl_bytes = int(head[_CTRL_BYTES])
        self.capacity = int(head[_CAPACITY])
        self.max_readers = int(head[_MAX_READERS])
        del head
        if self.ctrl_bytes + self.capacity > size:
            mm.close()
            os.close(fd)
            raise RingError(f"shared memory {name!r} is shorter than its header says")
        self._ctrl_mv = memoryview(mm)[: self.ctrl_bytes]
        self.ctrl = self._ctrl_mv.cast("Q")           # fast scalar loads/stores of aligned u64
        self.ctrl_np = np.frombuffer(mm, np.uint64, count=self.ctrl_bytes // 8)
        self.data = np.frombuffer(mm, np.uint8, count=self.capacity, offset=self.ctrl_bytes)
        self.data_words = self.data.view(np.uint64)
        self._d32 = self.data.view(np.uint32)
        self._d16 = self.data.view(np.uint16)
        self._base = self.ctrl_np.ctypes.data
        self.closed = False

    # -- helpers shared by owner, writer and reader views ---------------------------
    def _slot_w(self, i: int) -> int:
        return _SLOT_FIRST_W + _SLOT_WORDS * i

    def _addr_of_word(self, w: int) -> int:
        return self._base + 8 * w

    @contextlib.contextmanager
    def _lock(self):
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def counters(self) -> dict:
        """A consistent snapshot of the ring's counters (a seqlock read)."""
        ctrl = self.ctrl
        for _ in range(10000):
            s1 = ctrl[_COUNTERS_SEQ]
            if s1 & 1:
                time.sleep(0)
                continue
            vals = self.ctrl_np[_COUNTERS_FIRST:_COUNTERS_FIRST + len(COUNTER_NAMES)].tolist()
            if ctrl[_COUNTERS_SEQ] == s1:
                break
        out = dict(zip(COUNTER_NAMES, vals))
        out["write_pos"] = ctrl[_WRITE_POS]
        out["writer_state"] = _STATE_NAMES.get(ctrl[_WRITER_STATE], "?")
        out["writer_pid"] = ctrl[_WRITER_PID]
        return out

    def readers(self) -> list[dict]:
        """One dict per attached reader: slot, pid, lag in bytes, records read, overruns since it attached."""
        out = []
        w = self.ctrl[_WRITE_POS]
        for i in range(self.max_readers):
            s = self._slot_w(i)
            c = self.ctrl
            if c[s + _S_ACTIVE] != 1:
                continue
            out.append({
                "slot": i, "pid": c[s + _S_PID], "lag_bytes": max(0, w - c[s + _S_READ_POS]),
                "records_read": c[s + _S_RECORDS], "bytes_read": c[s + _S_BYTES],
                "overruns": c[s + _S_OVERRUNS] - c[s + _S_OVERRUN_BASE],
                "overrun_bytes": c[s + _S_OVERRUN_BYTES] - c[s + _S_OVERRUN_BYTES_BASE],
                "dead": c[s + _S_DEAD_GEN] == c[s + _S_GEN],
            })
        return out

    @property
    def write_pos(self) -> int:
        """The writer's published position (bytes since creation; grows only)."""
        return self.ctrl[_WRITE_POS]

    @property
    def writer_state(self) -> str:
        return _STATE_NAMES.get(self.ctrl[_WRITER_STATE], "?")

    @property
    def writer_error(self) -> str:
        n = min(self.ctrl[_ERR_LEN_W], _ERR_TEXT_MAX)
        return bytes(self._mm[_ERR_TEXT_BYTE:_ERR_TEXT_BYTE + n]).decode("utf-8", "replace")

    @property
    def policy(self) -> str:
        return "overrun" if self.ctrl[_POLICY] == POLICIES["overrun"] else "block"

    @property
    def chip(self) -> int:
        return self.ctrl[_CHIP]

    def _unmap(self) -> None:
        """Drop our views and unmap; if a caller still holds views, the mapping lives until they go."""
        if self.closed:
            return
        self.closed = True
        self.ctrl.release()
        self._ctrl_mv.release()
        for attr in ("ctrl_np", "data", "data_words", "_d32", "_d16"):
            setattr(self, attr, None)
        try:
            self._mm.close()
        except BufferError:
            pass   # views handed out are still alive; the mmap is freed with the last of them
        self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _attach(name: str) -> tuple[int, mmap.mmap, int]:
    """Map an existing segment without registering it with the resource tracker."""
    try:
        import _posixshmem
        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
    except ImportError:  # pragma: no cover - only where _posixshmem is missing
        fd = os.open(os.path.join("/dev/shm", name), os.O_RDWR)
    except FileNotFoundError:
        raise RingError(f"no capture ring named {name!r} (not created, or already unlinked)") from None
    try:
        size = os.fstat(fd).st_size
        mm = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd, mm, size


class SharedRing(_Mapping):
    """The owner of a ring: creates the segment, reads counters, unlinks it on :meth:`close`.

    ``capacity`` is the data area in bytes (rounded up to a multiple of 8);
    ``policy`` ``"block"`` or ``"overrun"``; ``block_timeout`` seconds a blocked
    writer waits for a reader before evicting it (None: wait as long as it takes).
    """

    def __init__(self, capacity: int, *, name: str | None = None, max_readers: int = 8, chip: int = 0,
                 policy: str = "block", block_timeout: float | None = None):
        if policy not in POLICIES:
            raise ConfigError(f"ring policy must be one of {sorted(POLICIES)}, got {policy!r}")
        capacity = (int(capacity) + 7) & ~7
        if capacity < 4096:
            raise ConfigError(f"ring capacity {capacity} bytes is too small (minimum 4096)")
        if not 1 <= max_readers <= 64:
            raise ConfigError(f"max_readers must be 1..64, got {max_readers}")
        ctrl_bytes = _ctrl_bytes(max_readers)
        name = name or f"tpx3r_{os.getpid()}_{next(_names)}_{secrets.token_hex(3)}"
        try:
            self._shm = shared_memory.SharedMemory(name=name, create=True, size=ctrl_bytes + capacity)
        except FileExistsError:
            raise RingError(f"a shared-memory segment named {name!r} already exists") from None
        c = np.frombuffer(self._shm.buf, np.uint64, count=_SLOT_FIRST_W)
        c[_CTRL_BYTES], c[_CAPACITY], c[_MAX_READERS], c[_CHIP] = ctrl_bytes, capacity, max_readers, chip
        c[_POLICY] = POLICIES[policy]
        c[_BLOCK_TIMEOUT_NS] = _FOREVER if block_timeout is None else int(block_timeout * 1e9)
        c[_VERSION_W] = _VERSION
        c[_MAGIC_W] = _MAGIC    # last: an attacher that sees the magic sees the rest
        del c
        # The owner keeps its own mapping for counters; attach() maps independently.
        fd, mm, size = _attach(name)
        super().__init__(name, fd, mm, size)
        self._unlinked = False

    def close(self) -> None:
        """Unmap and unlink the segment (idempotent). Attached processes keep their mappings."""
        self._unmap()
        if self._shm is not None:
            self._shm.close()
            if not self._unlinked:
                self._unlinked = True
                with contextlib.suppress(FileNotFoundError):
                    self._shm.unlink()
            self._shm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


class RingWriter(_Mapping):
    """The single writer of a ring (attached by name, typically in the receiver process).

    ``abort`` is polled while the writer blocks (``"block"`` policy); when it
    returns True :meth:`reserve` gives up and returns ``(-1, 0)``.
    """

    def __init__(self, name: str, *, abort: Callable[[], bool] | None = None):
        fd, mm, size = _attach(name)
        super().__init__(name, fd, mm, size)
        c = self.ctrl
        if c[_WRITER_STATE] == WRITER_RUNNING and _pid_alive(c[_WRITER_PID]) and c[_WRITER_PID] != os.getpid():
            pid = c[_WRITER_PID]
            self._unmap()
            raise RingError(f"ring {name!r} already has a running writer (pid {pid})")
        self._abort = abort or (lambda: False)
        self._policy = c[_POLICY]
        tmo = c[_BLOCK_TIMEOUT_NS]
        self._block_timeout = None if tmo == _FOREVER else tmo / 1e9
        self._w = c[_WRITE_POS]
        self._tail = c[_TAIL]
        self._seq = c[_NEXT_SEQ]
        self._chip = c[_CHIP]
        #: Counters as a local array; :meth:`publish` copies them to the ring under the seqlock.
        self.counts = self.ctrl_np[_COUNTERS_FIRST:_COUNTERS_FIRST + len(COUNTER_NAMES)].copy()
        self._live: list[int] = []      # slot word indices of live readers (refreshed under the lock)
        self._waiting_w: list[int] = []
        self._epoch = -1
        c[_WRITER_PID] = os.getpid()

    # -- state -----------------------------------------------------------------
    def mark_running(self) -> None:
        """Tell the owner the writer is ready (e.g. its socket is bound)."""
        self.publish()
        self.ctrl[_WRITER_STATE] = WRITER_RUNNING

    def fail(self, reason: str) -> None:
        """Record why the writer failed, for the owner to report."""
        raw = reason.encode("utf-8", "replace")[:_ERR_TEXT_MAX]
        self._mm[_ERR_TEXT_BYTE:_ERR_TEXT_BYTE + len(raw)] = raw
        self.ctrl[_ERR_LEN_W] = len(raw)
        self.publish()
        self.ctrl[_WRITER_STATE] = WRITER_FAILED
        self._wake_all()

    def close(self) -> None:
        """Publish the final counters, mark the ring closed (readers see end of data) and unmap."""
        if self.closed:
            return
        self.publish()
        if self.ctrl[_WRITER_STATE] != WRITER_FAILED:
            self.ctrl[_WRITER_STATE] = WRITER_CLOSED
        self._wake_all()
        self._unmap()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def count(self, name: str, delta: int = 1) -> None:
        """Add ``delta`` to a counter (published with the next :meth:`publish`/commit)."""
        self.counts[_C[name]] += delta

    def set_counter(self, name: str, value: int) -> None:
        self.counts[_C[name]] = value

    def publish(self) -> None:
        """Copy the local counters into the control block (seqlock: odd while writing)."""
        c = self.ctrl
        s = c[_COUNTERS_SEQ]
        c[_COUNTERS_SEQ] = s + 1
        self.ctrl_np[_COUNTERS_FIRST:_COUNTERS_FIRST + len(COUNTER_NAMES)] = self.counts
        c[_COUNTERS_SEQ] = s + 2

    # -- space -----------------------------------------------------------------
    def reserve(self, slot_bytes: int, n_max: int = 1) -> tuple[int, int]:
        """Make room for up to ``n_max`` records of ``slot_bytes`` each (header included), contiguous.

        Returns ``(offset, n)``: the data-area offset of the first slot and how many
        slots are free there (``n >= 1``), or ``(-1, 0)`` if ``abort`` stopped a block.
        Fill payloads at ``offset + i*slot_bytes + HEADER_BYTES``, then :meth:`commit`.
        """
        C = self.capacity
        slot = (int(slot_bytes) + 7) & ~7
        w = self._w
        off = w % C
        room = C - off
        pad = room if room < slot else 0
        n_target = min(n_max, (C - (0 if pad else off)) // slot, (C - pad) // slot)
        if n_target < 1:
            raise RingError(f"a record of {slot} bytes does not fit a ring of {C} bytes")
        base = w + pad - C
        if base + n_target * slot > self._tail and not self._make_room(base + slot, base + n_target * slot):
            return -1, 0
        if pad:
            if room >= HEADER_BYTES:
                _HEADER.pack_into(self.data, off, self._seq, 0, 0, room, self._chip, FLAG_PAD, 0)
            self._w = w = w + pad
        free = C - (w - self._tail)
        return w % C, max(1, min(n_target, free // slot))

    def _scan_live(self, check_pids: bool) -> list[int]:
        """Slot word indices of live readers (call under the lock)."""
        c = self.ctrl
        live = []
        for i in range(self.max_readers):
            s = self._slot_w(i)
            if c[s + _S_ACTIVE] != 1 or c[s + _S_DEAD_GEN] == c[s + _S_GEN]:
                continue
            if check_pids and not _pid_alive(c[s + _S_PID]):
                c[s + _S_DEAD_GEN] = c[s + _S_GEN]    # writer-owned: stop waiting for a dead reader
                self.counts[_C["dead_readers"]] += 1
                continue
            live.append(s)
        self._live = live
        self._waiting_w = [s + _S_WAITING for s in live]
        self._epoch = c[_EPOCH]
        return live

    def _make_room(self, need_min: int, need_full: int) -> bool:
        """Advance ``tail`` to ``need_full`` if readers allow, else at least ``need_min``.

        Reclaims what every live reader has released; then evicts (overrun policy,
        no live reader, or block timeout passed) up to ``need_full``, or waits for
        the slowest reader until ``need_min`` is free (block policy).
        """
        c = self.ctrl
        waited_since = None
        last_pid_check = time.monotonic()
        check_pids = False
        try:
            while True:
                with self._lock():
                    live = self._scan_live(check_pids)
                    check_pids = False
                    if live:
                        slowest = min(c[s + _S_READ_POS] for s in live)
                        if slowest > self._tail:
                            self._tail = min(slowest, self._w)
                            c[_TAIL] = self._tail
                    if self._tail >= need_full:
                        return True
                    timed_out = (waited_since is not None and self._block_timeout is not None
                                 and time.monotonic() - waited_since >= self._block_timeout)
                    if not live or self._policy == POLICIES["overrun"] or timed_out:
                        self._evict(need_full, live)
                        return True
                    if self._tail >= need_min:
                        return True
                    blocker = min(live, key=lambda s: c[s + _S_READ_POS])
                # Block: sleep on the slowest reader's release word, lock not held.
                now = time.monotonic()
                if waited_since is None:
                    waited_since = now
                    self.counts[_C["block_waits"]] += 1
                    c[_WRITER_WAITING] = 1
                if self._abort():
                    return False
                if now - last_pid_check > 0.5:
                    check_pids, last_pid_check = True, now
                rel_w = blocker + _S_RELEASE_FUTEX
                v = c[rel_w]
                if c[blocker + _S_READ_POS] < need_min and c[blocker + _S_ACTIVE] == 1:
                    if _linux.HAVE_FUTEX:
                        _linux.futex_wait(self._addr_of_word(rel_w), v, 0.01)
                    else:
                        time.sleep(0.001)
        finally:
            if waited_since is not None:
                c[_WRITER_WAITING] = 0
                self.counts[_C["blocked_ns"]] += int((time.monotonic() - waited_since) * 1e9)

    def _evict(self, need_tail: int, live: list[int]) -> None:
        """Reclaim whole records from ``tail`` up to ``need_tail`` (under the lock), counting who lost them."""
        C, d32, d16, c = self.capacity, self._d32, self._d16, self.ctrl
        t = old = self._tail
        starts, lens = [], []
        while t < need_tail:
            off = t % C
            room = C - off
            if room < HEADER_BYTES:
                t += room
                continue
            stride = int(d32[(off + 20) >> 2])
            if stride < HEADER_BYTES or stride > room or stride & 7:
                raise RingError(f"ring {self.name!r} corrupted: record at position {t} has stride {stride}")
            if not d16[(off + 26) >> 1] & FLAG_PAD:
                starts.append(t)
                lens.append(int(d32[(off + 16) >> 2]))
            t += stride
        self._tail = t
        c[_TAIL] = t          # before the data is overwritten: readers validate against it
        if not starts:
            return
        counts = self.counts
        if not live:
            counts[_C["unread_discarded"]] += len(starts)
            counts[_C["unread_discarded_bytes"]] += sum(lens)
            return
        cum = list(itertools.accumulate(lens, initial=0))
        first_missed = len(starts)
        for s in live:
            k = bisect.bisect_left(starts, max(c[s + _S_READ_POS], old))
            if k < len(starts):
                c[s + _S_OVERRUNS] = c[s + _S_OVERRUNS] + (len(starts) - k)
                c[s + _S_OVERRUN_BYTES] = c[s + _S_OVERRUN_BYTES] + (cum[-1] - cum[k])
                first_missed = min(first_missed, k)
        counts[_C["overruns"]] += len(starts) - first_missed
        counts[_C["overrun_bytes"]] += cum[-1] - cum[first_missed]

    # -- commit ------------------------------------------------------------------
    def commit(self, offset: int, n: int, lengths, recv_time_ns, *, slot_bytes: int,
               flags=0, drops=0) -> None:
        """Write the headers of ``n`` records filled at ``offset + i*slot_bytes`` and publish them.

        ``lengths`` (payload bytes), ``recv_time_ns``, ``flags``, ``drops`` are arrays
        of ``n`` or scalars. Every record but the last keeps the full slot as its
        stride; the last is trimmed to its length, so the next reservation follows it.
        """
        slot = (int(slot_bytes) + 7) & ~7
        if n == 1:
            length = int(lengths if np.ndim(lengths) == 0 else lengths[0])
            stride = record_bytes(length)
            _HEADER.pack_into(self.data, offset, self._seq,
                              int(recv_time_ns if np.ndim(recv_time_ns) == 0 else recv_time_ns[0]),
                              length, stride, self._chip,
                              int(flags if np.ndim(flags) == 0 else flags[0]),
                              int(drops if np.ndim(drops) == 0 else drops[0]) & 0xFFFFFFFF)
            total = length
        else:
            lengths = np.asarray(lengths[:n]) if np.ndim(lengths) else np.full(n, lengths, np.int64)
            # The n headers as rows of four u64 words, strided by the slot size, written in one go:
            # seq | recv_time_ns | length + stride << 32 | chip + flags << 16 + drops << 32
            hv = np.ndarray((n, 4), np.uint64, buffer=self.data, offset=offset, strides=(slot, 8))
            rows = np.empty((n, 4), np.uint64)
            rows[:, 0] = np.arange(self._seq, self._seq + n, dtype=np.uint64)
            rows[:, 1] = np.asarray(recv_time_ns if np.ndim(recv_time_ns) == 0 else recv_time_ns[:n]).astype(np.uint64)
            stride = record_bytes(int(lengths[-1]))
            strides = np.full(n, slot << 32, np.uint64)
            strides[-1] = stride << 32
            rows[:, 2] = strides | lengths.astype(np.uint64)
            fl = np.asarray(flags if np.ndim(flags) == 0 else flags[:n]).astype(np.uint64)
            dr = np.asarray(drops if np.ndim(drops) == 0 else drops[:n]).astype(np.int64).astype(np.uint64)
            rows[:, 3] = (self._chip | (fl << np.uint64(16))) | ((dr & np.uint64(0xFFFFFFFF)) << np.uint64(32))
            hv[:] = rows
            total = int(lengths.sum(dtype=np.int64))
            del hv, rows
        self._seq += n
        self._w += (n - 1) * slot + stride
        counts = self.counts
        counts[_C["records"]] += n
        counts[_C["record_bytes"]] += total
        c = self.ctrl
        c[_NEXT_SEQ] = self._seq
        c[_WRITE_POS] = self._w          # publish: everything above is now visible to readers
        self.publish()
        c[_DATA_FUTEX] = (c[_DATA_FUTEX] + 1) & 0xFFFFFFFF
        if c[_EPOCH] != self._epoch:
            with self._lock():
                self._scan_live(False)
        for ww in self._waiting_w:
            if c[ww]:
                self._wake_all()
                break

    def write(self, payload, recv_time_ns: int | None = None, *, flags: int = 0, drops: int = 0) -> bool:
        """Copy one record into the ring (a convenience path; the receiver fills slots in place).

        Returns False if ``abort`` stopped a blocked write.
        """
        buf = np.frombuffer(payload, np.uint8) if not isinstance(payload, np.ndarray) else payload.view(np.uint8).ravel()
        slot = record_bytes(buf.size)
        off, n = self.reserve(slot, 1)
        if n == 0:
            return False
        self.data[off + HEADER_BYTES: off + HEADER_BYTES + buf.size] = buf
        self.commit(off, 1, buf.size, time.time_ns() if recv_time_ns is None else recv_time_ns,
                    slot_bytes=slot, flags=flags, drops=drops)
        return True

    def _wake_all(self) -> None:
        if _linux.HAVE_FUTEX and not self.closed:
            _linux.futex_wake(self._addr_of_word(_DATA_FUTEX))

    @property
    def position(self) -> int:
        """The writer's position (bytes written since creation, including padding)."""
        return self._w


class Record:
    """One record of a :class:`RecordBatch`: header fields and a zero-copy payload view."""

    __slots__ = ("seq", "recv_time_ns", "chip", "flags", "drops", "payload")

    def __init__(self, seq, recv_time_ns, chip, flags, drops, payload):
        self.seq, self.recv_time_ns, self.chip, self.flags, self.drops = seq, recv_time_ns, chip, flags, drops
        self.payload = payload

    @property
    def words(self) -> np.ndarray:
        """The whole 64-bit little-endian words of the payload (a view; a trailing partial word is left out)."""
        return self.payload[: self.payload.size & ~7].view("<u8")

    @property
    def malformed(self) -> bool:
        return bool(self.flags & FLAG_MALFORMED)

    def __repr__(self) -> str:
        return f"Record(seq={self.seq}, len={self.payload.size}, chip={self.chip}, flags={self.flags})"


class RecordBatch:
    """Records read in one :meth:`RingReader.read`, as views into the ring (valid until released).

    Arrays: ``seq``, ``recv_time_ns``, ``lengths``, ``flags``, ``drops``, ``offsets``
    (data-area offsets of the payloads). ``word_offsets``/``word_counts`` index
    :attr:`RingReader.data_words` directly, for numba kernels that take a whole batch.
    """

    def __init__(self, reader: "RingReader", rows: list, start_pos: int, end_pos: int):
        self._data = reader.data
        self.start_pos, self.end_pos = start_pos, end_pos
        self.chip = reader.chip
        n = len(rows)
        if n:
            cols = list(zip(*rows))
            self._starts = list(cols[0])
            self.offsets = np.fromiter(cols[1], np.int64, n)
            self.seq = np.fromiter(cols[2], np.uint64, n)
            self.recv_time_ns = np.fromiter(cols[3], np.int64, n)
            self.lengths = np.fromiter(cols[4], np.int64, n)
            self.flags = np.fromiter(cols[5], np.uint16, n)
            self.drops = np.fromiter(cols[6], np.int64, n)
        else:
            self._starts = []
            self.offsets = np.zeros(0, np.int64)
            self.seq = np.zeros(0, np.uint64)
            self.recv_time_ns = np.zeros(0, np.int64)
            self.lengths = np.zeros(0, np.int64)
            self.flags = np.zeros(0, np.uint16)
            self.drops = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return self.offsets.size

    @property
    def nbytes(self) -> int:
        """Payload bytes in the batch."""
        return int(self.lengths.sum())

    @property
    def word_offsets(self) -> np.ndarray:
        return self.offsets >> 3

    @property
    def word_counts(self) -> np.ndarray:
        return self.lengths >> 3

    def payload(self, i: int) -> np.ndarray:
        """Record ``i``'s payload bytes (a uint8 view into the ring)."""
        o = int(self.offsets[i])
        return self._data[o:o + int(self.lengths[i])]

    def words(self, i: int) -> np.ndarray:
        """Record ``i``'s whole 64-bit words (a ``<u8`` view into the ring)."""
        o = int(self.offsets[i])
        return self._data[o:o + (int(self.lengths[i]) & ~7)].view("<u8")

    def __getitem__(self, i: int) -> Record:
        return Record(int(self.seq[i]), int(self.recv_time_ns[i]), self.chip, int(self.flags[i]),
                      int(self.drops[i]), self.payload(i))

    def __iter__(self) -> Iterator[Record]:
        return (self[i] for i in range(len(self)))

    def concat(self) -> np.ndarray:
        """All payloads back to back in a new uint8 array (a copy; boundaries are ``lengths``)."""
        if not len(self):
            return np.zeros(0, np.uint8)
        return np.concatenate([self.payload(i) for i in range(len(self))])


class RingReader(_Mapping):
    """A reader of a ring, attached by name from any process, with its own cursor.

    ``start="oldest"`` begins at the oldest record still in the ring, ``"newest"``
    at the next record written. Not thread-safe: one reader per thread.
    """

    def __init__(self, name: str, *, start: str = "oldest"):
        if start not in ("oldest", "newest"):
            raise ConfigError(f"start must be 'oldest' or 'newest', got {start!r}")
        fd, mm, size = _attach(name)
        super().__init__(name, fd, mm, size)
        c = self.ctrl
        # Attach under the lock: the writer moves ``tail`` and counts evictions only under it,
        # so the starting position and the overrun baseline below are consistent.
        with self._lock():
            slot = None
            for i in range(self.max_readers):
                s = self._slot_w(i)
                if (c[s + _S_ACTIVE] != 1 or c[s + _S_DEAD_GEN] == c[s + _S_GEN]
                        or not _pid_alive(c[s + _S_PID])):
                    slot = i
                    break
            if slot is not None:
                self._claim(slot, start)
        if slot is None:
            self._unmap()
            raise RingError(f"ring {name!r} has no free reader slot (max_readers={self.max_readers})")
        self._next_seq = None
        self._records = 0
        self._bytes = 0
        #: Records missing from the sequence numbers this reader saw (a cross-check of ``overruns``).
        self.seq_gaps = 0
        self._held: list[RecordBatch] = []

    def _claim(self, slot: int, start: str) -> None:
        """Take reader slot ``slot`` (under the lock) at the start position."""
        c = self.ctrl
        s = self._s = self._slot_w(slot)
        self.slot = slot
        c[s + _S_ACTIVE] = 0
        c[s + _S_GEN] = c[s + _S_GEN] + 1
        c[s + _S_PID] = os.getpid()
        c[s + _S_WAITING] = 0
        c[s + _S_RECORDS] = 0
        c[s + _S_BYTES] = 0
        pos = c[_TAIL] if start == "oldest" else c[_WRITE_POS]
        c[s + _S_READ_POS] = pos
        c[s + _S_OVERRUN_BASE] = c[s + _S_OVERRUNS]
        c[s + _S_OVERRUN_BYTES_BASE] = c[s + _S_OVERRUN_BYTES]
        c[s + _S_ACTIVE] = 1
        c[_EPOCH] = c[_EPOCH] + 1
        self._peek = pos
        self._released = pos

    # -- reading -----------------------------------------------------------------
    def read(self, max_records: int = 4096, max_bytes: int | None = None,
             timeout: float = 0.0) -> RecordBatch:
        """The next records after the last ones read (possibly none), as zero-copy views.

        Waits up to ``timeout`` seconds for at least one record (0: do not wait,
        None: until data or the writer closes). Call :meth:`release` when done with
        the views so the writer may reuse the space.
        """
        if self.closed:
            raise RingError(f"reader of ring {self.name!r} is closed")
        c, C = self.ctrl, self.capacity
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pos = self._peek
            tail = c[_TAIL]
            if pos < tail:
                pos = tail        # overrun: the writer reclaimed what we had not read
            w = c[_WRITE_POS]
            if pos >= w:
                state = c[_WRITER_STATE]
                if state in (WRITER_CLOSED, WRITER_FAILED) and c[_WRITE_POS] <= pos:
                    self._peek = pos
                    return RecordBatch(self, [], pos, pos)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._peek = pos
                    return RecordBatch(self, [], pos, pos)
                self._wait(pos, 0.05 if remaining is None else remaining)
                continue
            rows, p, torn, gaps = self._parse(pos, w, max_records, max_bytes)
            if torn or c[_TAIL] > pos:
                self._peek = max(pos, c[_TAIL])   # evicted while we parsed: retry from the tail
                continue
            self.seq_gaps += gaps
            break
        self._peek = p
        if rows:
            first = rows[0][2]
            if self._next_seq is not None and first != self._next_seq:
                self.seq_gaps += first - self._next_seq
            self._next_seq = rows[-1][2] + 1
        batch = RecordBatch(self, rows, pos, p)
        self._held.append(batch)
        return batch

    def _parse(self, pos: int, w: int, max_records: int, max_bytes: int | None):
        C, data = self.capacity, self.data
        unpack = _HEADER.unpack_from
        rows = []
        nbytes = 0
        p = pos
        prev_seq = None
        gaps = 0
        while p < w and len(rows) < max_records:
            off = p % C
            room = C - off
            if room < HEADER_BYTES:
                p += room
                continue
            seq, t, length, stride, chip, flags, drops = unpack(data, off)
            if stride < HEADER_BYTES or stride > room or stride & 7 or length > stride - HEADER_BYTES:
                return rows, p, True, 0
            if flags & FLAG_PAD:
                p += stride
                continue
            if max_bytes is not None and rows and nbytes + length > max_bytes:
                break
            if prev_seq is not None and seq != prev_seq + 1:
                gaps += seq - prev_seq - 1
            prev_seq = seq
            rows.append((p, off + HEADER_BYTES, seq, t, length, flags, drops))
            nbytes += length
            p += stride
        return rows, p, False, gaps

    def _wait(self, pos: int, timeout: float) -> None:
        c = self.ctrl
        if not _linux.HAVE_FUTEX:
            time.sleep(min(timeout, 0.001))
            return
        c[self._s + _S_WAITING] = 1
        v = c[_DATA_FUTEX]
        if c[_WRITE_POS] <= pos and c[_WRITER_STATE] in (WRITER_NEW, WRITER_RUNNING):
            _linux.futex_wait(self._addr_of_word(_DATA_FUTEX), v, min(timeout, 0.05))
        c[self._s + _S_WAITING] = 0

    def release(self, batch: RecordBatch | None = None) -> int:
        """Give the space of ``batch`` (and every batch read before it) back to the writer.

        Without ``batch``: everything read so far. Returns how many released
        records the writer had already overwritten while they were held (always 0
        under the ``"block"`` policy; under ``"overrun"`` their views were unreliable).
        """
        if self.closed:
            return 0
        end = self._peek if batch is None else batch.end_pos
        c, s = self.ctrl, self._s
        tail = c[_TAIL]
        overwritten = 0
        keep = []
        for b in self._held:
            if b.end_pos <= end:
                overwritten += bisect.bisect_left(b._starts, tail)
                self._records += len(b)
                self._bytes += b.nbytes
            else:
                keep.append(b)
        self._held = keep
        if end > self._released:
            self._released = end
            c[s + _S_READ_POS] = end
            c[s + _S_RECORDS] = self._records
            c[s + _S_BYTES] = self._bytes
            c[s + _S_RELEASE_FUTEX] = (c[s + _S_RELEASE_FUTEX] + 1) & 0xFFFFFFFF
            if c[_WRITER_WAITING] and _linux.HAVE_FUTEX:
                _linux.futex_wake(self._addr_of_word(s + _S_RELEASE_FUTEX))
        return overwritten

    def __iter__(self) -> Iterator[Record]:
        """Every record until the writer closes, releasing each batch before reading the next."""
        while True:
            batch = self.read(timeout=None)
            if not len(batch):
                if self.eof:
                    return
                continue
            yield from batch
            self.release(batch)

    # -- state -----------------------------------------------------------------
    @property
    def eof(self) -> bool:
        """True once the writer has closed (or failed) and every record was read."""
        c = self.ctrl
        return c[_WRITER_STATE] in (WRITER_CLOSED, WRITER_FAILED) and max(self._peek, c[_TAIL]) >= c[_WRITE_POS]

    @property
    def overruns(self) -> int:
        """Records the writer reclaimed before this reader read them, since it attached."""
        s = self._s
        return self.ctrl[s + _S_OVERRUNS] - self.ctrl[s + _S_OVERRUN_BASE]

    @property
    def overrun_bytes(self) -> int:
        s = self._s
        return self.ctrl[s + _S_OVERRUN_BYTES] - self.ctrl[s + _S_OVERRUN_BYTES_BASE]

    @property
    def lag_bytes(self) -> int:
        """Bytes written but not yet released by this reader."""
        return max(0, self.ctrl[_WRITE_POS] - self._released)

    @property
    def records_released(self) -> int:
        return self._records

    def close(self) -> None:
        """Detach (the slot is freed and the writer no longer waits for us) and unmap."""
        if self.closed:
            return
        c, s = self.ctrl, self._s
        with self._lock():
            c[s + _S_ACTIVE] = 0
            c[_EPOCH] = c[_EPOCH] + 1
        c[s + _S_RELEASE_FUTEX] = (c[s + _S_RELEASE_FUTEX] + 1) & 0xFFFFFFFF
        if _linux.HAVE_FUTEX:
            _linux.futex_wake(self._addr_of_word(s + _S_RELEASE_FUTEX))
        self._held = []
        self._unmap()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()
