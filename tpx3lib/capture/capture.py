"""``Capture``: one receiver process and one shared-memory ring per chip, run from the parent.

    with Capture(chips=[0], ports=[0]) as cap:      # port 0: an ephemeral port
        reader = cap.ring(0)                          # attach a reader (any process can, by name)
        ... send to cap.ports[0] ...
        batch = reader.read(timeout=1.0)
        reader.release(batch)
    print(cap.counters[0]["datagrams"])               # still readable after stop

The parent never touches the sockets: each receiver process binds its own and
writes into the ring the parent created (and unlinks on :meth:`Capture.stop`).
Receivers use the spawn start method so a parent with threads or numba is safe.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import signal
import time
from typing import Sequence

from .errors import CaptureError, CaptureFault, ConfigError
from .receiver import ReceiverConfig, receiver_main
from .ring import POLICIES, RingReader, SharedRing

__all__ = ["Capture", "DEFAULT_BASE_PORT"]

log = logging.getLogger("tpx3lib.capture")

#: SPIDR sends chip ``i``'s data to UDP port ``8192 + i``.
DEFAULT_BASE_PORT = 8192


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Capture:
    """Live UDP capture of one or more chips into shared-memory rings.

    Parameters: ``chips`` chip indices; ``ports`` one UDP port per chip (default
    ``8192 + chip``; 0 picks a free one, see :attr:`ports` after start);
    ``host`` the address to bind (default loopback); ``ring_bytes`` data area of
    each ring; ``policy`` ``"block"`` (backpressure) or ``"overrun"`` (evict
    lagging readers, counted); ``block_timeout`` seconds before a blocked writer
    evicts its laggard (None: never); ``rcvbuf_bytes`` the SO_RCVBUF to ask for
    (``rcvbuf_force`` uses SO_RCVBUFFORCE where permitted); ``max_datagram`` the
    largest datagram kept whole; ``batch`` datagrams per ``recvmmsg``;
    ``method`` ``"auto"``/``"recvmmsg"``/``"recv_into"``.
    """

    def __init__(self, chips: Sequence[int] = (0,), ports: Sequence[int] | None = None,
                 host: str = "127.0.0.1", ring_bytes: int = 128 << 20, policy: str = "block", *,
                 block_timeout: float | None = None, rcvbuf_bytes: int = 256 << 20,
                 rcvbuf_force: bool = False, max_datagram: int = 9216, batch: int = 64,
                 method: str = "auto", kernel_timestamps: bool = True, max_readers: int = 8,
                 start_timeout: float = 60.0, stop_timeout: float = 5.0, start_method: str = "spawn"):
        chips = [int(c) for c in chips]
        if not chips or len(set(chips)) != len(chips) or any(not 0 <= c < 255 for c in chips):
            raise ConfigError(f"chips must be distinct indices 0..254, got {chips}")
        if ports is None:
            ports = [DEFAULT_BASE_PORT + c for c in chips]
        ports = [int(p) for p in ports]
        if len(ports) != len(chips) or any(not 0 <= p < 65536 for p in ports):
            raise ConfigError(f"need one port 0..65535 per chip: chips {chips}, ports {ports}")
        if policy not in POLICIES:
            raise ConfigError(f"policy must be one of {sorted(POLICIES)}, got {policy!r}")
        if start_method not in ("spawn", "forkserver"):
            raise ConfigError("start_method must be 'spawn' or 'forkserver' (fork is unsafe with threads/numba)")
        if not 1 <= int(batch) <= 1024:
            raise ConfigError(f"batch must be 1..1024, got {batch}")
        self.chips = chips
        self.host = host
        self.ring_bytes = int(ring_bytes)
        self.policy = policy
        self.block_timeout = block_timeout
        self.max_readers = max_readers
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._cfg_common = dict(host=host, rcvbuf_bytes=int(rcvbuf_bytes), rcvbuf_force=bool(rcvbuf_force),
                                max_datagram=int(max_datagram), batch=int(batch), method=method,
                                kernel_timestamps=bool(kernel_timestamps))
        ReceiverConfig(chip=0, ring_name="", **self._cfg_common).resolved_method()   # validate early
        self._requested_ports = dict(zip(chips, ports))
        self._ctx = multiprocessing.get_context(start_method)
        self._rings: dict[int, SharedRing] = {}
        self._procs: dict = {}
        self._stops: dict = {}
        self._final: dict[int, dict] = {}
        self._faults: dict[int, CaptureFault] = {}
        self._ports: dict[int, int] = {}
        self._running = False

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> "Capture":
        """Create the rings, start one receiver per chip and wait until every socket is bound.

        Raises :class:`CaptureError` (everything already started is stopped again)
        if a receiver cannot bind its port or does not come up in ``start_timeout``.
        """
        if self._running:
            raise CaptureError("capture already started")
        self._final, self._faults, self._ports = {}, {}, {}
        self._running = True
        try:
            for chip in self.chips:
                ring = SharedRing(self.ring_bytes, chip=chip, policy=self.policy,
                                  block_timeout=self.block_timeout, max_readers=self.max_readers)
                self._rings[chip] = ring
                cfg = ReceiverConfig(chip=chip, ring_name=ring.name, port=self._requested_ports[chip],
                                     **self._cfg_common)
                stop_r, stop_w = self._ctx.Pipe(duplex=False)
                proc = self._ctx.Process(target=receiver_main, args=(cfg, stop_r),
                                         name=f"tpx3-capture-chip{chip}", daemon=True)
                proc.start()
                stop_r.close()      # only the child keeps the read end: EOF reaches it if we die
                self._procs[chip], self._stops[chip] = proc, stop_w
            self._wait_started()
        except BaseException:
            self.stop()
            raise
        for chip, ring in self._rings.items():
            c = ring.counters()
            self._ports[chip] = c["port"]
            if c["rcvbuf_capped"]:
                log.warning(
                    "chip %d: UDP receive buffer capped by the kernel at %d bytes (asked %d); datagrams may "
                    "be dropped at high rates. Raise the limit: sysctl -w net.core.rmem_max=%d "
                    "(or pass rcvbuf_force=True when running with CAP_NET_ADMIN)",
                    chip, c["rcvbuf_granted"] // 2, c["rcvbuf_requested"], c["rcvbuf_requested"])
        return self

    def _wait_started(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        pending = set(self.chips)
        while pending:
            for chip in list(pending):
                ring, proc = self._rings[chip], self._procs[chip]
                state = ring.writer_state
                if state == "running":
                    pending.discard(chip)
                elif state == "failed" or not proc.is_alive():
                    proc.join(1.0)
                    reason = ring.writer_error or _describe_exit(proc.exitcode)
                    raise CaptureError(f"receiver of chip {chip} did not start: {reason}")
            if pending:
                if time.monotonic() > deadline:
                    raise CaptureError(f"receivers of chips {sorted(pending)} did not start within "
                                       f"{self.start_timeout} s")
                # Wait on the process sentinels (returns early if one dies) rather than spinning.
                multiprocessing.connection.wait([self._procs[c].sentinel for c in pending], 0.01)

    def stop(self, timeout: float | None = None) -> dict[int, dict]:
        """Stop every receiver (drain, then exit), free the rings and return the final counters.

        Always returns within about ``timeout`` (default ``stop_timeout``) + 2 s: a
        receiver that does not exit in time is terminated, then killed.
        """
        if not self._running:
            return self._final
        timeout = self.stop_timeout if timeout is None else timeout
        for chip, conn in self._stops.items():
            try:
                conn.send_bytes(b"s")
            except OSError:
                pass        # the receiver is already gone
            conn.close()
        deadline = time.monotonic() + timeout
        for chip, proc in self._procs.items():
            proc.join(max(0.0, deadline - time.monotonic()))
        for chip, proc in self._procs.items():
            if proc.is_alive():
                log.warning("chip %d: receiver (pid %s) did not stop in %.1f s; terminating", chip, proc.pid, timeout)
                proc.terminate()
                proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
        for chip in self.chips:
            self._note_fault(chip, stopping=True)
            ring = self._rings.get(chip)
            if ring is not None:
                final = ring.counters()
                final["readers"] = ring.readers()
                final["chip"] = chip
                final["alive"] = False
                self._final[chip] = final
                ring.close()
        for proc in self._procs.values():
            if proc.exitcode is not None:
                proc.close()
        self._rings, self._procs, self._stops = {}, {}, {}
        self._running = False
        return self._final

    def _note_fault(self, chip: int, stopping: bool = False) -> None:
        """Record a fault for ``chip`` if its receiver died or failed (not by our stop)."""
        if chip in self._faults:
            return
        proc, ring = self._procs.get(chip), self._rings.get(chip)
        if proc is None or ring is None:
            return
        state = ring.writer_state
        code = proc.exitcode
        if state == "failed":
            self._faults[chip] = CaptureFault(chip, code, ring.writer_error)
        elif code is not None and not (stopping and code == 0 and state == "closed"):
            if stopping and state == "running" and code in (-signal.SIGTERM, -signal.SIGKILL):
                reason = "did not stop in time; " + _describe_exit(code)
            else:
                reason = _describe_exit(code) + ("" if state == "closed" else " while capturing")
            self._faults[chip] = CaptureFault(chip, code, reason)

    def __enter__(self) -> "Capture":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):
        try:
            if self._running:
                self.stop(timeout=1.0)
        except Exception:
            pass

    # -- state -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._running

    @property
    def alive(self) -> bool:
        """True while running and every receiver process is alive."""
        return self._running and all(p.is_alive() for p in self._procs.values())

    @property
    def faults(self) -> dict[int, CaptureFault]:
        """Per chip, the fault of a receiver that died or failed (with exit code and reason)."""
        for chip in list(self._procs):
            self._note_fault(chip)
        return dict(self._faults)

    @property
    def fault(self) -> CaptureFault | None:
        """The first receiver fault, or None."""
        faults = self.faults
        return faults[min(faults)] if faults else None

    def check(self) -> None:
        """Raise the first :class:`CaptureFault`, if any."""
        f = self.fault
        if f is not None:
            raise f

    @property
    def ports(self) -> list[int]:
        """The UDP ports bound, per chip (known after start; the requested ones before)."""
        return [self._ports.get(c, self._requested_ports[c]) for c in self.chips]

    @property
    def pids(self) -> dict[int, int | None]:
        return {c: p.pid for c, p in self._procs.items()}

    @property
    def counters(self) -> dict[int, dict]:
        """Per chip: datagrams, bytes, words, malformed, truncated, kernel_drops, overruns, ...

        Live values while running (a consistent snapshot per chip), the final ones after stop.
        Each dict also has ``readers`` (per attached reader: lag, records read, overruns).
        """
        if not self._running:
            return dict(self._final)
        out = {}
        for chip, ring in self._rings.items():
            c = ring.counters()
            c["readers"] = ring.readers()
            c["chip"] = chip
            c["alive"] = self._procs[chip].is_alive()
            out[chip] = c
        return out

    def ring_name(self, chip: int) -> str:
        """Name of ``chip``'s ring, for :class:`RingReader` in another process."""
        try:
            return self._rings[chip].name
        except KeyError:
            raise CaptureError(f"no running capture ring for chip {chip}") from None

    def ring(self, chip: int, start: str = "oldest") -> RingReader:
        """Attach a new reader to ``chip``'s ring (close it when done)."""
        return RingReader(self.ring_name(chip), start=start)
