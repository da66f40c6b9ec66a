"""The receiver process: one UDP socket of one chip, straight into that chip's ring.

:func:`receiver_main` is the target of the per-chip process that
:class:`~tpx3lib.capture.Capture` starts (spawn start method). It binds the
socket, asks for a large receive buffer, then loops: reserve ring slots, receive
a batch of datagrams into them (``recvmmsg`` on Linux, so the kernel copies each
datagram directly into the shared memory; else one ``recv_into`` per datagram),
write the record headers, publish. Stop is a byte (or EOF) on a pipe from the
parent: the receiver then drains what the socket still holds and exits. If the
parent dies the pipe reaches EOF and the receiver exits too.

Datagrams whose length is not a multiple of 8 bytes are kept as received,
flagged ``FLAG_MALFORMED`` and counted (``malformed``); ``words`` counts only
whole words. A datagram longer than ``max_datagram`` is truncated by the kernel,
flagged ``FLAG_TRUNCATED`` and counted (``truncated``).
"""
from __future__ import annotations

import dataclasses
import select
import signal
import socket
import sys
import time

import numpy as np

from . import _linux
from .errors import ConfigError
from .ring import FLAG_MALFORMED, FLAG_TRUNCATED, HEADER_BYTES, RingWriter, COUNTER_NAMES

__all__ = ["ReceiverConfig", "receiver_main", "open_udp_socket"]

_I = {name: i for i, name in enumerate(COUNTER_NAMES)}
#: How long a stopping receiver keeps draining a socket that is still being fed.
_DRAIN_LIMIT_S = 2.0


@dataclasses.dataclass(frozen=True)
class ReceiverConfig:
    """What one receiver process needs (picklable; passed at spawn)."""

    chip: int
    ring_name: str
    host: str = "127.0.0.1"
    port: int = 8192
    rcvbuf_bytes: int = 256 << 20
    rcvbuf_force: bool = False
    max_datagram: int = 9216
    batch: int = 64
    method: str = "auto"              # "recvmmsg", "recv_into" or "auto" (recvmmsg where available)
    kernel_timestamps: bool = True    # SO_TIMESTAMPNS receive times (recvmmsg path)
    drops_poll_s: float = 1.0         # how often /proc/net/udp is read for the socket's drop count

    def resolved_method(self) -> str:
        if self.method == "auto":
            return "recvmmsg" if _linux.HAVE_MMSG else "recv_into"
        if self.method not in ("recvmmsg", "recv_into"):
            raise ConfigError(f"receive method must be 'auto', 'recvmmsg' or 'recv_into', got {self.method!r}")
        if self.method == "recvmmsg" and not _linux.HAVE_MMSG:
            raise ConfigError("recvmmsg is not available on this platform; use method='recv_into'")
        return self.method


def open_udp_socket(host: str, port: int, rcvbuf_bytes: int, force: bool = False,
                    kernel_timestamps: bool = False) -> tuple[socket.socket, dict]:
    """A bound, non-blocking UDP socket with the largest receive buffer the system grants.

    Returns the socket and a dict: ``rcvbuf_requested``, ``rcvbuf_granted`` (as
    the kernel reports it; Linux reports twice the usable size), ``rmem_max``,
    ``rcvbuf_capped`` (1 if the kernel gave less than asked), ``port`` (the bound one).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        forced = False
        if force and _linux.IS_LINUX:
            try:   # needs CAP_NET_ADMIN; ignores net.core.rmem_max
                sock.setsockopt(socket.SOL_SOCKET, _linux.SO_RCVBUFFORCE, rcvbuf_bytes)
                forced = True
            except OSError:
                forced = False
        if not forced:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        # Linux doubles the value it stores (bookkeeping overhead) and reports that.
        usable = granted // 2 if _linux.IS_LINUX else granted
        if _linux.IS_LINUX:
            sock.setsockopt(socket.SOL_SOCKET, _linux.SO_RXQ_OVFL, 1)
            if kernel_timestamps:
                sock.setsockopt(socket.SOL_SOCKET, _linux.SO_TIMESTAMPNS, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    info = {
        "rcvbuf_requested": int(rcvbuf_bytes), "rcvbuf_granted": int(granted),
        "rmem_max": int(_linux.read_rmem_max() or 0),
        "rcvbuf_capped": int(usable < rcvbuf_bytes), "port": int(sock.getsockname()[1]),
    }
    return sock, info


class _Receiver:
    """The receive loop of one socket into one ring writer."""

    def __init__(self, cfg: ReceiverConfig, stop_conn):
        self.cfg = cfg
        self.stop_conn = stop_conn
        self.stopping = False
        self.writer: RingWriter | None = None
        self.sock: socket.socket | None = None
        self.method = cfg.resolved_method()
        self.max_payload = (int(cfg.max_datagram) + 7) & ~7
        self.slot = HEADER_BYTES + self.max_payload
        self.last_drops = 0
        self.next_drops_poll = 0.0

    # -- stop signalling ----------------------------------------------------------
    def stop_requested(self) -> bool:
        if not self.stopping:
            try:
                if self.stop_conn.poll(0):
                    self.stopping = True   # a byte or EOF (parent gone): either way, stop
            except (OSError, EOFError):
                self.stopping = True
        return self.stopping

    # -- setup -------------------------------------------------------------------
    def open(self) -> None:
        self.writer = RingWriter(self.cfg.ring_name, abort=self.stop_requested)
        if self.writer.capacity < 4 * self.slot:
            raise ConfigError(f"ring of {self.writer.capacity} bytes is too small for datagrams of up to "
                              f"{self.cfg.max_datagram} bytes: make it at least {4 * self.slot} bytes")
        want_ts = self.cfg.kernel_timestamps and self.method == "recvmmsg"
        self.sock, info = open_udp_socket(self.cfg.host, self.cfg.port, self.cfg.rcvbuf_bytes,
                                          self.cfg.rcvbuf_force, want_ts)
        for k, v in info.items():
            self.writer.set_counter(k, v)
        self.poller = select.poll()
        self.poller.register(self.sock.fileno(), select.POLLIN)
        self.poller.register(self.stop_conn.fileno(), select.POLLIN)
        self.writer.mark_running()

    def discard_queued(self) -> None:
        """Count (and drop) what the socket still holds: only left when stopped while blocked."""
        scratch = bytearray(65536)
        n = nbytes = 0
        for _ in range(1_000_000):
            try:
                got = self.sock.recv_into(scratch, len(scratch), _linux.MSG_TRUNC if _linux.IS_LINUX else 0)
            except (BlockingIOError, InterruptedError):
                break
            n += 1
            nbytes += got
        self.writer.count("stop_discarded", n)
        self.writer.count("stop_discarded_bytes", nbytes)

    def close(self) -> None:
        if self.sock is not None:
            if self.writer is not None:
                self.discard_queued()
            self.poll_kernel_drops(force=True)
            self.sock.close()
            self.sock = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # -- counters --------------------------------------------------------------------
    def poll_kernel_drops(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next_drops_poll:
            return
        self.next_drops_poll = now + self.cfg.drops_poll_s
        d = _linux.socket_kernel_drops(self.sock)
        if d is not None and d > self.last_drops:
            self.last_drops = d
        self.writer.counts[_I["kernel_drops"]] = self.last_drops
        self.writer.publish()

    def account(self, n: int, nbytes: int, nwords: int, times_first: int, times_last: int,
                n_malformed: int, n_truncated: int) -> None:
        c = self.writer.counts
        c[_I["datagrams"]] += n
        c[_I["bytes"]] += nbytes
        c[_I["words"]] += nwords
        c[_I["malformed"]] += n_malformed
        c[_I["truncated"]] += n_truncated
        c[_I["recv_calls"]] += 1
        c[_I["kernel_drops"]] = self.last_drops
        if c[_I["first_recv_ns"]] == 0:
            c[_I["first_recv_ns"]] = times_first
        c[_I["last_recv_ns"]] = times_last

    # -- loops -----------------------------------------------------------------------
    def idle_wait(self) -> None:
        """Nothing to read: sleep until data or a stop request (checking drops now and then)."""
        self.poll_kernel_drops()
        self.poller.poll(int(self.cfg.drops_poll_s * 1000))
        self.stop_requested()

    def run(self) -> None:
        if self.method == "recvmmsg":
            self.run_recvmmsg()
        else:
            self.run_recv_into()

    def run_recvmmsg(self) -> None:
        w, slot, fd = self.writer, self.slot, self.sock.fileno()
        vec = _linux.MMsgVector(self.cfg.batch, control=True)
        base = w.data.ctypes.data
        rel = np.arange(self.cfg.batch, dtype=np.uint64) * np.uint64(slot) + np.uint64(HEADER_BYTES)
        next_stop_check = 0.0
        drain_until = None
        while True:
            off, n = w.reserve(slot, self.cfg.batch)
            if n == 0:           # blocked on a reader and asked to stop
                return
            vec.set_buffers(rel[:n] + np.uint64(base + off), self.max_payload)
            got = vec.recv(fd, n)
            now_ns = time.time_ns()
            if got == 0:
                if self.stopping:
                    return       # drained
                self.idle_wait()
                if self.stopping:
                    drain_until = time.monotonic() + _DRAIN_LIMIT_S
                continue
            lengths = vec.lengths[:got].astype(np.int64)
            nbytes = int(lengths.sum())
            odd = lengths & 7
            trunc = vec.msg_flags[:got] & _linux.MSG_TRUNC
            if odd.any() or trunc.any():      # rare: build per-record flags
                n_mal, n_trunc = int(np.count_nonzero(odd)), int(np.count_nonzero(trunc))
                flags = np.where(odd, FLAG_MALFORMED, 0) | np.where(trunc, FLAG_TRUNCATED, 0)
                nwords = int((lengths >> 3).sum())
            else:
                n_mal = n_trunc = flags = 0
                nwords = nbytes >> 3
            if self.cfg.kernel_timestamps:
                times, drops = vec.parse_control(got, now_ns)
                if drops is not None and int(drops.max()) > self.last_drops:
                    dmax = int(drops.max())
                    drops = np.maximum.accumulate(np.maximum(drops, self.last_drops))
                    self.last_drops = dmax
                else:
                    drops = self.last_drops
                # Kernel timestamps follow the queue order; first/last are the batch's extremes.
                t_first, t_last = int(times[0]), int(times[-1])
            else:
                times, drops, t_first, t_last = now_ns, self.last_drops, now_ns, now_ns
            self.account(got, nbytes, nwords, t_first, t_last, n_mal, n_trunc)
            w.commit(off, got, lengths, times, slot_bytes=slot, flags=flags, drops=drops)
            mono = time.monotonic()
            if mono >= next_stop_check:   # busy: still look at the stop pipe every 50 ms
                next_stop_check = mono + 0.05
                self.poll_kernel_drops()
                if self.stop_requested() and drain_until is None:
                    drain_until = mono + _DRAIN_LIMIT_S
            if drain_until is not None and mono > drain_until:
                return

    def run_recv_into(self) -> None:
        w, slot, sock = self.writer, self.slot, self.sock
        room = self.max_payload
        view = memoryview(w.data)
        recv_into = sock.recv_into
        trunc_flag = _linux.MSG_TRUNC if _linux.IS_LINUX else 0
        next_stop_check = 0.0
        drain_until = None
        try:
            while True:
                off, n = w.reserve(slot, 1)
                if n == 0:
                    return
                p = off + HEADER_BYTES
                try:
                    # MSG_TRUNC: Linux returns the datagram's real length even when it did not fit.
                    got = recv_into(view[p:p + room], room, trunc_flag)
                except BlockingIOError:
                    if self.stopping:
                        return
                    self.idle_wait()
                    if self.stopping:
                        drain_until = time.monotonic() + _DRAIN_LIMIT_S
                    continue
                now_ns = time.time_ns()
                flag = 0
                truncated = got > room
                if truncated:
                    got, flag = room, FLAG_TRUNCATED
                if got & 7:
                    flag |= FLAG_MALFORMED
                self.account(1, got, got >> 3, now_ns, now_ns, int(bool(got & 7)), int(truncated))
                w.commit(off, 1, got, now_ns, slot_bytes=slot, flags=flag, drops=self.last_drops)
                mono = time.monotonic()
                if mono >= next_stop_check:
                    next_stop_check = mono + 0.05
                    self.poll_kernel_drops()
                    if self.stop_requested() and drain_until is None:
                        drain_until = mono + _DRAIN_LIMIT_S
                if drain_until is not None and mono > drain_until:
                    return
        finally:
            view.release()


def receiver_main(cfg: ReceiverConfig, stop_conn) -> None:
    """Entry point of a receiver process: capture until told to stop; exit code 1 on failure.

    The failure reason is written into the ring's control block for the parent.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle
    rx = _Receiver(cfg, stop_conn)
    code = 0
    try:
        rx.open()
        rx.run()
    except BaseException as exc:   # report every failure, including SystemExit from a signal handler
        code = 1
        where = f"{cfg.host}:{cfg.port}"
        reason = f"{type(exc).__name__}: {exc} (chip {cfg.chip}, {where})"
        if rx.writer is not None:
            rx.writer.fail(reason)
        else:
            print(f"tpx3 capture receiver: {reason}", file=sys.stderr)
    finally:
        try:
            rx.close()
        except Exception as exc:  # pragma: no cover - closing must not hide the first error
            print(f"tpx3 capture receiver: error while closing: {exc}", file=sys.stderr)
            code = code or 1
    sys.stderr.flush()
    if code:
        sys.exit(code)
