"""Thin ctypes bindings to the Linux calls the capture layer uses.

Nothing here is required: every caller checks the ``HAVE_*`` flags and falls
back to portable code (``socket.recv_into``, sleeping waits, no kernel drop
counts) where a call is missing. Only constants of the generic Linux ABI
(x86-64, aarch64, ...) are defined; exotic ABIs (MIPS, SPARC, PA-RISC) number
the socket options differently and simply get the portable path.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import socket
import sys

import numpy as np

__all__ = [
    "IS_LINUX", "HAVE_FUTEX", "HAVE_MMSG",
    "SO_RCVBUFFORCE", "SO_TIMESTAMPNS", "SO_RXQ_OVFL", "MSG_DONTWAIT", "MSG_TRUNC",
    "futex_wait", "futex_wake", "MMsgVector",
    "read_rmem_max", "socket_kernel_drops",
]

IS_LINUX = sys.platform.startswith("linux")
_MACHINE = platform.machine().lower()
_GENERIC_ABI = IS_LINUX and _MACHINE in ("x86_64", "amd64", "aarch64", "arm64", "riscv64")

# Socket option numbers of the generic Linux ABI (asm-generic/socket.h).
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35       # SO_TIMESTAMPNS_OLD: struct timespec of two longs (64-bit on 64-bit ABIs)
SO_RXQ_OVFL = 40          # ancillary u32: the socket's cumulative drop count
MSG_TRUNC = 0x20
MSG_DONTWAIT = 0x40
_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98}.get(_MACHINE)
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1   # not the _PRIVATE variants: the word is shared between processes

_libc = None
if IS_LINUX:
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:  # pragma: no cover - no libc is not a Linux we know
        _libc = None

HAVE_FUTEX = bool(_libc is not None and _SYS_FUTEX is not None and _GENERIC_ABI
                  and ctypes.sizeof(ctypes.c_long) == 8)
HAVE_MMSG = bool(_libc is not None and _GENERIC_ABI and hasattr(_libc, "recvmmsg")
                 and ctypes.sizeof(ctypes.c_void_p) == 8)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


if HAVE_FUTEX:
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long


def futex_wait(addr: int, expected: int, timeout_s: float) -> None:
    """Sleep while the 32-bit word at ``addr`` equals ``expected``, at most ``timeout_s``.

    Returns on a wake-up, a changed value, a timeout or a signal: callers always
    re-check their condition, so the reason does not matter.
    """
    ts = _Timespec(int(timeout_s), int((timeout_s % 1.0) * 1e9))
    _syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(_FUTEX_WAIT),
             ctypes.c_uint32(expected & 0xFFFFFFFF), ctypes.byref(ts), None, ctypes.c_int(0))


def futex_wake(addr: int) -> None:
    """Wake every process sleeping in :func:`futex_wait` on the word at ``addr``."""
    _syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(_FUTEX_WAKE),
             ctypes.c_int(0x7FFFFFFF), None, None, ctypes.c_int(0))


# struct iovec {void *base; size_t len;}                                    16 bytes
# struct msghdr {void *name; socklen_t namelen; struct iovec *iov; size_t iovlen;
#                void *control; size_t controllen; int flags;}              56 bytes
# struct mmsghdr {struct msghdr hdr; unsigned int len;}                     64 bytes
_MMSG_DTYPE = np.dtype([
    ("name", "u8"), ("namelen", "u4"), ("_p0", "u4"), ("iov", "u8"), ("iovlen", "u8"),
    ("control", "u8"), ("controllen", "u8"), ("flags", "i4"), ("_p1", "u4"),
    ("len", "u4"), ("_p2", "u4"),
])
assert _MMSG_DTYPE.itemsize == 64
_IOV_DTYPE = np.dtype([("base", "u8"), ("len", "u8")])
#: Control buffer per message: a timestamp cmsg (16 + 16 bytes) then an overflow cmsg (16 + 4, padded to 24).
CONTROL_BYTES = 64
_SOL_SOCKET = socket.SOL_SOCKET
_KEY_TS = np.uint64(_SOL_SOCKET | (SO_TIMESTAMPNS << 32))     # cmsg level | type << 32 as one u64
_KEY_OVFL = np.uint64(_SOL_SOCKET | (SO_RXQ_OVFL << 32))


class MMsgVector:
    """A reusable vector of ``struct mmsghdr`` for ``recvmmsg``/``sendmmsg``.

    Every message has one iovec; callers point the iovecs anywhere (e.g. straight
    into the shared-memory ring) with :meth:`set_buffers`, call :meth:`recv` or
    :meth:`send`, then read ``lengths``/``msg_flags`` and the parsed control data.
    """

    def __init__(self, n: int, control: bool = True):
        self.n = int(n)
        self.mm = np.zeros(self.n, _MMSG_DTYPE)
        self.iov = np.zeros(self.n, _IOV_DTYPE)
        self.mm["iov"] = self.iov.ctypes.data + np.arange(self.n, dtype=np.uint64) * _IOV_DTYPE.itemsize
        self.mm["iovlen"] = 1
        self.control = np.zeros((self.n, CONTROL_BYTES // 8), np.uint64) if control else None
        if control:
            self.mm["control"] = self.control.ctypes.data + np.arange(self.n, dtype=np.uint64) * CONTROL_BYTES
        self._mm_ptr = ctypes.c_void_p(self.mm.ctypes.data)
        # Field views made once: creating them costs about a microsecond each.
        self._controllen = self.mm["controllen"]
        self._len = self.mm["len"]
        self._flags = self.mm["flags"]
        self._iov_base = self.iov["base"]
        self._iov_len = self.iov["len"]
        self._recvmmsg = _libc.recvmmsg
        self._recvmmsg.restype = ctypes.c_int
        self._sendmmsg = _libc.sendmmsg
        self._sendmmsg.restype = ctypes.c_int

    def set_buffers(self, addrs, lengths) -> None:
        """Point the first ``len(addrs)`` messages' iovecs at ``addrs[i]`` with room ``lengths`` (array or scalar)."""
        k = len(addrs)
        self._iov_base[:k] = addrs
        self._iov_len[:k] = lengths

    def recv(self, fd: int, n: int, flags: int = MSG_DONTWAIT) -> int:
        """``recvmmsg`` up to ``n`` datagrams; returns the count, 0 when none is waiting.

        Raises OSError on a real error. ``EAGAIN``/``EINTR`` return 0.
        """
        if self.control is not None:
            self._controllen[:n] = CONTROL_BYTES   # the kernel overwrites it with the used length
        got = self._recvmmsg(ctypes.c_int(fd), self._mm_ptr, ctypes.c_uint(n), ctypes.c_int(flags), None)
        if got < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(err, f"recvmmsg: {os.strerror(err)}")
        return got

    def send(self, fd: int, n: int, flags: int = 0) -> int:
        """``sendmmsg`` the first ``n`` messages to the socket's connected peer; returns how many left."""
        got = self._sendmmsg(ctypes.c_int(fd), self._mm_ptr, ctypes.c_uint(n), ctypes.c_int(flags))
        if got < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ENOBUFS):
                return 0
            raise OSError(err, f"sendmmsg: {os.strerror(err)}")
        return got

    @property
    def lengths(self) -> np.ndarray:
        """Bytes received per message (``msg_len``)."""
        return self._len

    @property
    def msg_flags(self) -> np.ndarray:
        return self._flags

    def parse_control(self, n: int, default_time_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-message receive time (ns since the epoch) and cumulative socket drop count (or None).

        The kernel writes SCM_TIMESTAMPNS first and SO_RXQ_OVFL second (the latter only
        once the socket has dropped something), so both sit at fixed offsets; the
        level/type words are checked and a message without a timestamp gets
        ``default_time_ns``. Drops are -1 where the kernel sent none, and None
        when no message of the batch carried the count.
        """
        c = self.control[:n]
        used = self._controllen[:n]
        lvl_type0 = c[:, 1]
        has_ts = lvl_type0 == _KEY_TS
        if has_ts.all():      # the usual case: every message has its timestamp first
            times = c[:, 2].astype(np.int64) * 1_000_000_000 + c[:, 3].astype(np.int64)
        else:
            has_ts &= used >= 32
            times = np.where(has_ts, c[:, 2].astype(np.int64) * 1_000_000_000 + c[:, 3].astype(np.int64),
                             np.int64(default_time_ns))
        if not (used > 32).any() and not (lvl_type0 == _KEY_OVFL).any():
            return times, None   # no overflow cmsg: the socket has dropped nothing yet
        # The overflow cmsg follows the timestamp (offset 32) or, without one, comes first.
        second = (used >= 52) & (c[:, 5] == _KEY_OVFL)
        first = (~has_ts) & (used >= 20) & (lvl_type0 == _KEY_OVFL)
        drops = np.where(second, (c[:, 6] & np.uint64(0xFFFFFFFF)).astype(np.int64),
                         np.where(first, (c[:, 2] & np.uint64(0xFFFFFFFF)).astype(np.int64), np.int64(-1)))
        return times, drops


def read_rmem_max() -> int | None:
    """The ``net.core.rmem_max`` sysctl in bytes, or None where it cannot be read."""
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def socket_kernel_drops(sock: socket.socket) -> int | None:
    """The drops column of ``/proc/net/udp`` (or ``udp6``) for this socket, found by inode.

    None when the file or the socket's line cannot be found (not Linux, other namespace).
    """
    if not IS_LINUX:
        return None
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
    except OSError:
        return None
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f, None)   # column titles
                for line in f:
                    cols = line.split()
                    if len(cols) >= 13 and cols[9] == inode:
                        return int(cols[12])
        except (OSError, ValueError):
            continue
    return None
