"""A loopback UDP test sender: known datagrams, batched with ``sendmmsg`` where available.

For tests and benchmarks of the capture layer (the SPIDR simulator has its own
data path). It refuses any destination that is not a loopback address.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from typing import Sequence

import numpy as np

from . import _linux
from .errors import ConfigError

__all__ = ["UdpSender"]


class UdpSender:
    """A connected UDP socket to ``host:port`` (loopback only) that sends whole lists of datagrams.

    :meth:`send` sends every datagram given (batched with ``sendmmsg`` on Linux),
    :meth:`send_paced` at a given rate without busy-waiting. ``sent`` and
    ``sent_bytes`` count what the kernel accepted.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", *, batch: int = 64, sndbuf: int = 4 << 20):
        if not ipaddress.ip_address(host).is_loopback:
            raise ConfigError(f"the test sender only sends to loopback, not {host}")
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.connect((host, port))
        self.batch = batch
        self._vec = _linux.MMsgVector(batch, control=False) if _linux.HAVE_MMSG else None
        self.sent = 0
        self.sent_bytes = 0

    def send(self, datagrams: Sequence) -> int:
        """Send every datagram (bytes-like); returns how many were sent."""
        if self._vec is None:
            for d in datagrams:
                self.sock.send(d)
                self.sent += 1
                self.sent_bytes += len(d)
            return len(datagrams)
        arrays = [np.frombuffer(d, np.uint8) if not isinstance(d, np.ndarray) else d for d in datagrams]
        i = 0
        while i < len(arrays):
            chunk = arrays[i:i + self.batch]
            self._send_chunk(chunk)
            i += len(chunk)
        return len(arrays)

    def _send_chunk(self, chunk) -> None:
        k = len(chunk)
        addrs = np.fromiter((a.ctypes.data for a in chunk), np.uint64, k)
        lens = np.fromiter((a.size for a in chunk), np.uint64, k)
        done = 0
        while done < k:
            self._vec.set_buffers(addrs[done:], lens[done:])
            got = self._vec.send(self.sock.fileno(), k - done)
            if got == 0:
                time.sleep(0.0005)     # the kernel had no buffer: wait a little and retry
                continue
            self.sent += got
            self.sent_bytes += int(lens[done:done + got].sum())
            done += got

    def send_paced(self, datagrams: Sequence, rate_per_s: float, burst: int | None = None) -> float:
        """Send ``datagrams`` at about ``rate_per_s`` (bursts of ``burst``, sleeping in between).

        Returns the achieved rate (datagrams/s). A rate of 0 or less means as fast as possible.
        """
        burst = burst or self.batch
        t0 = time.perf_counter()
        n = len(datagrams)
        for i in range(0, n, burst):
            if rate_per_s > 0:
                due = t0 + i / rate_per_s
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            self.send(datagrams[i:i + burst])
        dt = time.perf_counter() - t0
        return n / dt if dt > 0 else float("inf")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def paced_sender_main(conn, port: int, host: str = "127.0.0.1", payload_bytes: int = 8192,
                      distinct: int = 256, batch: int = 64) -> None:
    """A sender process for benchmarks: waits for ``(count, rate)`` on ``conn`` and sends.

    Payloads are preformatted (``distinct`` different ones, reused cyclically)
    so the loop is only ``sendmmsg`` calls and sleeps for pacing (rate <= 0:
    unpaced). Replies ``(sent, seconds)`` per request; ``None`` ends the process.
    """
    tx = UdpSender(port, host, batch=batch)
    distinct = max(batch, distinct // batch * batch)
    buf = np.random.default_rng(0).integers(0, 2**63, (distinct, payload_bytes // 8), dtype=np.uint64)
    addrs = buf.ctypes.data + np.arange(distinct, dtype=np.uint64) * np.uint64(buf.strides[0])
    fd = tx.sock.fileno()
    vec = tx._vec
    while True:
        req = conn.recv()
        if req is None:
            break
        count, rate = req
        sent = 0
        k = 0
        t0 = time.perf_counter()
        while sent < count:
            n = min(batch, count - sent)
            if rate > 0:
                delay = t0 + sent / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if vec is not None:
                vec.set_buffers(addrs[k:k + n], payload_bytes)
                got = vec.send(fd, n)
                if got == 0:
                    time.sleep(0.0002)
                    continue
            else:
                for j in range(n):
                    tx.sock.send(buf[k + j])
                got = n
            sent += got
            k = (k + batch) % distinct
        conn.send((sent, time.perf_counter() - t0))
    tx.close()
