"""Send the generated word streams as UDP datagrams, one destination port per chip, in real time.

A sending thread wakes every ``tick_s``, generates the board time that has passed
(:class:`simulators.clock.BoardClock`) with a :class:`simulators.physics.HitGenerator`, cuts each
chip's words into datagrams of ``datagram_words`` 64-bit little-endian words (jumbo frames; no
header, as the SPIDR sends them) and sends them. A partly filled datagram waits at most
``flush_s`` before it goes out. A slice covers at most ``max_slice_s`` of board time and is
expected to hold at most ``max_slice_hits`` pixel hits (shorter inside time-of-flight bursts), so
generating one never takes long. If generation falls more than ``max_lag_s`` behind the clock
(rates beyond what the machine can generate), board time is skipped without data; the
``skipped_s`` and ``worst_lag_s`` attributes say how much.

``stop()`` returns promptly at any rate: the thread finishes the slice in hand, generates what is
left up to the moment of stopping only while ``stop_budget_s`` lasts, sends everything generated
and ends. Board time it had no time to generate is not sent and not in the truth: it is counted in
``stop_skipped_s`` (and logged). So what was generated is exactly what was sent (faults aside).

Faults (:class:`DataFaults`) are applied per datagram and can be changed while running. Every
datagram is counted: generated = sent - duplicated + dropped, per chip (:class:`ChipCounters`).
With ``collect_truth=True`` the streamer keeps the truth of what it sent; :meth:`truth` marks
each hit with the number of copies that left (0 dropped, 2 duplicated).

Only loopback destinations are accepted: this is a test tool, it must not spray a network.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import threading
import time

import numpy as np

from tpx3lib.errors import ConfigError

from .clock import TICKS_PER_SECOND, BoardClock
from .physics import HitGenerator, warm_up
from .truth import Truth

__all__ = ["DataFaults", "ChipCounters", "UdpDataStreamer", "check_loopback", "DEFAULT_DATAGRAM_WORDS"]

log = logging.getLogger(__name__)

#: 1024 words = 8192-byte payloads, a jumbo frame like the SPIDR's.
DEFAULT_DATAGRAM_WORDS = 1024

_TDC_BYTES = (0x6F, 0x6A, 0x6E, 0x6B)


@dataclasses.dataclass
class DataFaults:
    """Faults applied to the datagrams of the chips in ``chips`` (None = all).

    Indices count each chip's datagrams from 0 in generation order (before faults).
    ``reorder``: the datagram is held back and sent right after the next one.
    ``stop_heartbeats``: 0x44/0x45 words and their 0x71 markers are removed before packing.
    Random choices use ``seed``, so a run is repeatable.
    """

    drop_fraction: float = 0.0
    drop_indices: frozenset = frozenset()
    duplicate_fraction: float = 0.0
    duplicate_indices: frozenset = frozenset()
    reorder_fraction: float = 0.0
    reorder_indices: frozenset = frozenset()
    stop_heartbeats: bool = False
    chips: frozenset | None = None
    seed: int = 0

    def applies_to(self, chip: int) -> bool:
        return self.chips is None or chip in self.chips


@dataclasses.dataclass
class ChipCounters:
    """What happened to one chip's stream. ``datagrams``/``bytes``/``words``/``hits``/``tdcs``/
    ``heartbeats`` count what left the socket (duplicates included)."""

    generated_datagrams: int = 0
    generated_words: int = 0
    generated_hits: int = 0
    datagrams: int = 0
    bytes: int = 0
    words: int = 0
    hits: int = 0
    tdcs: int = 0
    heartbeats: int = 0
    dropped_datagrams: int = 0
    dropped_words: int = 0
    dropped_hits: int = 0
    duplicated_datagrams: int = 0
    duplicated_words: int = 0
    reordered_datagrams: int = 0
    suppressed_heartbeat_words: int = 0
    send_errors: int = 0          # sendto failed: counted as dropped too

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_loopback(host: str, port: int) -> tuple:
    """Resolve ``host`` and return a socket address, refusing anything but loopback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve UDP destination {host!r}: {exc}") from exc
    for family, _, _, _, addr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and ipaddress.ip_address(addr[0].split("%")[0]).is_loopback:
            return family, addr
    raise ConfigError(f"refusing to send simulated data to {host}:{port}: only loopback destinations "
                      "(127.0.0.0/8, ::1) are allowed")


class _ChipSender:
    """Per-chip packing, faults and bookkeeping (used only by the sending thread)."""

    def __init__(self, chip: int, family: int, addr: tuple, datagram_words: int, collect: bool):
        self.chip = chip
        self.addr = addr
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        except OSError:
            pass
        self.dgw = datagram_words
        self.collect = collect
        self.counters = ChipCounters()
        # pending words and running totals (since start of stream) of hits/TDCs/heartbeats at each word
        self.pend = np.empty(0, np.uint64)
        self.cum = np.zeros((0, 3), np.int64)
        self.base = np.zeros(3, np.int64)      # totals before pend[0]
        self.pend_since = None                 # monotonic time of the oldest pending word
        self.seq = 0
        self.held = None                       # datagram held back by a reorder fault
        # per datagram: (first hit index, n hits, first tdc, n tdc, first hb, n hb, copies)
        self.log: list[tuple] = []

    def add(self, words: np.ndarray, now: float) -> None:
        if len(words) == 0:
            return
        top = (words >> np.uint64(56)).astype(np.uint8)
        cls = np.zeros((len(words), 3), np.int64)
        cls[:, 0] = (top >> 4) >= 0xA                 # 0xA?/0xB? pixel words
        cls[:, 1] = np.isin(top, _TDC_BYTES)
        cls[:, 2] = top == 0x44
        cum = np.cumsum(cls, axis=0) + (self.cum[-1] if len(self.cum) else self.base)
        self.pend = np.concatenate([self.pend, words])
        self.cum = np.concatenate([self.cum, cum])
        self.counters.generated_words += len(words)
        self.counters.generated_hits += int(cls[:, 0].sum())
        if self.pend_since is None:
            self.pend_since = now

    def pump(self, faults: DataFaults | None, rng: np.random.Generator, force: bool, now: float,
             flush_s: float) -> None:
        """Send full datagrams; the partial rest too when ``force`` or it has waited ``flush_s``."""
        n = len(self.pend)
        full = n // self.dgw
        cut = full * self.dgw
        if n > cut and (force or (self.pend_since is not None and now - self.pend_since >= flush_s)):
            cut = n
        if cut == 0:
            return
        starts = list(range(0, cut, self.dgw))
        for s in starts:
            e = min(s + self.dgw, cut)
            first = self.cum[s - 1] if s > 0 else self.base
            totals = self.cum[e - 1] - first
            self._datagram(self.pend[s:e], first, totals, faults, rng)
        self.base = self.cum[cut - 1].copy()
        self.pend = self.pend[cut:]
        self.cum = self.cum[cut:]
        self.pend_since = now if len(self.pend) else None
        if force and self.held is not None:
            self._send_held()

    def _datagram(self, words, first, totals, faults, rng):
        c = self.counters
        seq = self.seq
        self.seq += 1
        c.generated_datagrams += 1
        f = faults if (faults is not None and faults.applies_to(self.chip)) else None
        drop = dup = reorder = False
        if f is not None:
            drop = seq in f.drop_indices or (f.drop_fraction > 0 and rng.random() < f.drop_fraction)
            if not drop:
                dup = seq in f.duplicate_indices or (f.duplicate_fraction > 0 and rng.random() < f.duplicate_fraction)
                reorder = seq in f.reorder_indices or (f.reorder_fraction > 0 and rng.random() < f.reorder_fraction)
        payload = words.astype("<u8", copy=False).tobytes()
        entry = [int(first[0]), int(totals[0]), int(first[1]), int(totals[1]), int(first[2]), int(totals[2]), 0]
        if drop:
            c.dropped_datagrams += 1
            c.dropped_words += len(words)
            c.dropped_hits += int(totals[0])
        else:
            copies = 2 if dup else 1
            if dup:
                c.duplicated_datagrams += 1
                c.duplicated_words += len(words)
            if reorder and self.held is None:
                c.reordered_datagrams += 1
                self.held = (payload, totals, copies, entry)
            else:
                self._send(payload, totals, copies, entry)
                if self.held is not None:
                    self._send_held()
        if self.collect:
            self.log.append(entry)

    def _send_held(self):
        payload, totals, copies, entry = self.held
        self.held = None
        self._send(payload, totals, copies, entry)

    def _send(self, payload, totals, copies, entry):
        c = self.counters
        for _ in range(copies):
            try:
                self.sock.sendto(payload, self.addr)
            except OSError as exc:
                c.send_errors += 1
                c.dropped_datagrams += 1
                c.dropped_words += len(payload) // 8
                c.dropped_hits += int(totals[0])
                log.warning("chip %d: sendto %s failed: %s", self.chip, self.addr, exc)
                continue
            entry[6] += 1
            c.datagrams += 1
            c.bytes += len(payload)
            c.words += len(payload) // 8
            c.hits += int(totals[0])
            c.tdcs += int(totals[1])
            c.heartbeats += int(totals[2])

    def close(self):
        self.sock.close()


#: How long start() waits for the generator's kernels to load before streaming asynchronously.
WARM_UP_WAIT_S = 1.0


class UdpDataStreamer:
    """Streams ``generator``'s words for board time from ``clock`` to ``destinations`` over UDP.

    ``destinations``: one (host, port) per chip, or a single one meaning port + chip index for
    chip i (the SPIDR default, 8192 + i). Hosts must be loopback.
    """

    def __init__(self, generator: HitGenerator, clock: BoardClock, destinations: list[tuple[str, int]],
                 faults: DataFaults | None = None, *, datagram_words: int = DEFAULT_DATAGRAM_WORDS,
                 tick_s: float = 0.002, flush_s: float = 0.01, max_slice_s: float = 0.01,
                 max_lag_s: float = 1.0, collect_truth: bool = False, max_slice_hits: int = 100_000,
                 stop_budget_s: float = 0.2):
        if not 1 <= datagram_words <= 8191:
            raise ConfigError("datagram_words must be in 1..8191 (UDP payload < 64 kB)")
        self.generator = generator
        self.clock = clock
        self.destinations, resolved = self._resolve(destinations, generator.n_chips)
        self.datagram_words = int(datagram_words)
        self.tick_s = float(tick_s)
        self.flush_s = float(flush_s)
        self.max_slice_ticks = max(1, int(max_slice_s * TICKS_PER_SECOND))
        self.max_lag_ticks = max(1, int(max_lag_s * TICKS_PER_SECOND))
        if max_slice_hits < 1 or stop_budget_s < 0:
            raise ConfigError("max_slice_hits must be >= 1 and stop_budget_s >= 0")
        self.max_slice_hits = int(max_slice_hits)
        self.stop_budget_s = float(stop_budget_s)
        self.collect_truth = bool(collect_truth)
        self._faults = faults
        self._rng = np.random.default_rng(faults.seed if faults else 0)
        self._senders = [_ChipSender(i, fam, addr, self.datagram_words, self.collect_truth)
                         for i, (fam, addr) in enumerate(resolved)]
        self._lock = threading.Lock()          # guards counters/truth snapshots against the thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: int | None = None
        self._truth_parts: list[Truth] = []
        self.worst_lag_s = 0.0                 # how far generation fell behind real time
        self.skipped_s = 0.0                   # board time skipped (no data) to catch up, see _step
        self.stop_skipped_s = 0.0              # board time not generated at stop (budget spent), see _finish
        self._warming = False                  # the thread is loading the kernels (see _run)
        self._abandoned: threading.Thread | None = None   # a thread stopped while warming up
        self._stop_tick: int | None = None     # board time of the stop request
        self.slices = 0
        self.error: BaseException | None = None

    @staticmethod
    def _resolve(destinations, n):
        dests = list(destinations)
        if len(dests) == 1 and n > 1:
            host, port = dests[0]
            dests = [(host, int(port) + i) for i in range(n)]
        if len(dests) != n:
            raise ConfigError(f"{len(dests)} destinations for {n} chips")
        dests = [(h, int(p)) for h, p in dests]
        return dests, [check_loopback(h, p) for h, p in dests]

    def set_destinations(self, destinations: list[tuple[str, int]]) -> None:
        """Send to other (loopback) ports from now on, e.g. after SET_SERVERPORT / SET_IPADDR_DEST."""
        dests, resolved = self._resolve(destinations, self.generator.n_chips)
        with self._lock:
            for sender, (family, addr) in zip(self._senders, resolved):
                if sender.sock.family != family:
                    sender.sock.close()
                    sender.sock = socket.socket(family, socket.SOCK_DGRAM)
                sender.addr = addr
            self.destinations = dests

    # ------------------------------------------------------------ control
    @property
    def faults(self) -> DataFaults | None:
        return self._faults

    @faults.setter
    def faults(self, value: DataFaults | None) -> None:
        with self._lock:
            self._faults = value
            if value is not None:
                self._rng = np.random.default_rng(value.seed)

    def set_faults(self, faults: DataFaults | None) -> None:
        """Change the faults while running (same as assigning ``faults``)."""
        self.faults = faults

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start streaming from the clock's current time (again after a stop: a new run)."""
        if self.running:
            return
        old = self._abandoned
        if old is not None:              # a run stopped while its kernels were still loading
            old.join()
            self._abandoned = None
        # Load the generator's kernels: usually well under a second (numba's cache), and start()
        # waits for that so the stream starts with the shutter. A first compile (cold cache) takes
        # several seconds: then start() returns after WARM_UP_WAIT_S (the board must answer
        # AUTOTRIG_START in time) and the thread starts streaming when the kernels are ready.
        loader = threading.Thread(target=warm_up, name="tpx3-sim-warm-up", daemon=True)
        loader.start()
        loader.join(WARM_UP_WAIT_S)
        self._stop.clear()
        self._stop_tick = None
        self._warming = True
        self._last = self.clock.now_ticks()
        self.error = None
        self._thread = threading.Thread(target=self._run, name="tpx3-sim-udp", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop: generate up to now (within ``stop_budget_s``; the rest is counted in
        ``stop_skipped_s``), send everything generated and wait for the thread to end.
        Returns within about the budget plus one slice's generation, whatever the rate."""
        t = self._thread
        if t is None:
            return
        if self._stop_tick is None:
            self._stop_tick = self.clock.now_ticks()
        self._stop.set()
        if self._warming:
            # Still loading the kernels (cold numba cache): nothing was generated yet and nothing
            # will be; the thread counts the whole run as skipped and ends by itself. Do not make
            # the caller (the board's AUTOTRIG_STOP reply) wait for a compile.
            self._abandoned, self._thread = t, None
            return
        t.join(timeout)
        if t.is_alive():
            raise TimeoutError("the UDP sending thread did not finish")
        self._thread = None
        if self.error is not None:
            raise RuntimeError("the UDP sending thread failed") from self.error

    def close(self) -> None:
        """Stop and close the sockets."""
        try:
            self.stop()
        finally:
            for s in self._senders:
                s.close()

    def __enter__(self) -> "UdpDataStreamer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ results
    @property
    def counters(self) -> list[ChipCounters]:
        """A snapshot of the per-chip counters."""
        with self._lock:
            return [dataclasses.replace(s.counters) for s in self._senders]

    def totals(self) -> ChipCounters:
        """The counters summed over chips."""
        tot = ChipCounters()
        for c in self.counters:
            for f in dataclasses.fields(tot):
                setattr(tot, f.name, getattr(tot, f.name) + getattr(c, f.name))
        return tot

    def truth(self) -> Truth:
        """Truth of everything generated so far (needs ``collect_truth=True``).

        Hits carry ``sent`` = copies that left the socket (0 dropped or still pending, 1, 2 duplicated);
        triggers and heartbeats are listed if at least one copy was sent. Per chip, hits are in
        generation (stream) order; with reorder faults the arrival order differs.
        """
        if not self.collect_truth:
            raise ConfigError("UdpDataStreamer(collect_truth=True) is needed for truth()")
        with self._lock:
            truth = Truth.concat(self._truth_parts)
            logs = [list(s.log) for s in self._senders]
        hits = truth.hits.copy()
        keep_trig = np.ones(len(truth.triggers), bool)
        keep_hb = np.ones(len(truth.heartbeats), bool)
        for chip, entries in enumerate(logs):
            hsel = np.flatnonzero(hits["chip"] == chip)
            tsel = np.flatnonzero(truth.triggers["chip"] == chip)
            bsel = np.flatnonzero(truth.heartbeats["chip"] == chip)
            sent_h = np.zeros(len(hsel), np.uint8)
            sent_t = np.zeros(len(tsel), np.uint8)
            sent_b = np.zeros(len(bsel), np.uint8)
            for h0, nh, t0, nt, b0, nb, copies in entries:
                sent_h[h0:h0 + nh] = copies
                sent_t[t0:t0 + nt] = copies
                sent_b[b0:b0 + nb] = copies
            hits["sent"][hsel] = sent_h
            keep_trig[tsel] = sent_t > 0
            keep_hb[bsel] = sent_b > 0
        return Truth(hits, truth.clusters, truth.triggers[keep_trig], truth.heartbeats[keep_hb])

    # ------------------------------------------------------------ the sending thread
    def _run(self) -> None:
        try:
            # Load the kernels here, not in start(): start() runs in the board's reply to
            # AUTOTRIG_START, and a first compile (cold numba cache) would outlast the client's
            # timeout. Board time that passes meanwhile is skipped and counted (skipped_s), like
            # any other lag beyond max_lag_s.
            warm_up()
            self._warming = False
            if self._stop.is_set() and self._thread is not threading.current_thread():
                left = max(0, self._stop_tick - self._last) / TICKS_PER_SECOND
                self.stop_skipped_s += left
                log.warning("stopped while loading the generator's kernels: %.3f s of board time "
                            "not generated; it is not in the stream nor in the truth", left)
                return
            while not self._stop.wait(self.tick_s):
                self._step()
            self._finish()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            log.exception("UDP streamer failed")
            self.error = exc

    def _generate_until(self, end_tick: int, deadline: float | None = None,
                        max_slice_ticks: int | None = None) -> None:
        """Generate and send slices from ``_last`` up to ``end_tick``. Without a ``deadline`` (running):
        return early when a stop is requested or when generation has fallen more than ``max_lag_s``
        behind the clock (the next step skips). With one (stopping): return at that monotonic time."""
        while self._last < end_tick:
            if deadline is None:
                if self._stop.is_set() or self.clock.now_ticks() - self._last > self.max_lag_ticks:
                    return
            elif time.monotonic() >= deadline:
                return
            end = min(end_tick, self._last + (max_slice_ticks or self.max_slice_ticks))
            end = self.generator.slice_end(self._last, end, self.max_slice_hits)
            sl = self.generator.generate(self._last, end)
            self._last = end
            self.slices += 1
            self._release(sl)
            self._pump(force=False)

    def _pump(self, force: bool) -> None:
        t = time.monotonic()
        faults = self._faults
        with self._lock:
            for s in self._senders:
                s.pump(faults, self._rng, force, t, self.flush_s)

    def _finish(self) -> None:
        """After a stop request: generate up to the stop time while the budget lasts, count the
        board time left over, send everything generated."""
        stop_tick = self._stop_tick if self._stop_tick is not None else self.clock.now_ticks()
        if stop_tick < self._last or stop_tick - self._last > 60 * TICKS_PER_SECOND:
            stop_tick = self._last        # the timer was reset or set: nothing to generate
        # no delivery latency to keep now: slices as long as their expected hits allow
        self._generate_until(stop_tick, deadline=time.monotonic() + self.stop_budget_s,
                             max_slice_ticks=max(self.max_slice_ticks, TICKS_PER_SECOND // 10))
        if self._last < stop_tick:
            left = (stop_tick - self._last) / TICKS_PER_SECOND
            self.stop_skipped_s += left
            log.warning("stop: %.3f s of board time before the stop not generated (no time left); "
                        "it is not in the stream nor in the truth", left)
            self._last = stop_tick
        self._pump(force=True)

    def _step(self) -> None:
        now = self.clock.now_ticks()
        if now < self._last or now - self._last > 60 * TICKS_PER_SECOND:
            # the timer was reset or set: continue from the new value (nothing to generate for the jump)
            self._last = now
        elif now - self._last > self.max_lag_ticks:
            # Generation cannot keep up with real time. Rather than drift ever further behind the
            # board timer (data older than GET_TIMER by > 2^28 ticks would be mis-extended), skip
            # board time with no data, counted and logged.
            skip = now - self._last - self.max_lag_ticks // 2
            self.skipped_s += skip / TICKS_PER_SECOND
            log.warning("generation %.2f s behind real time: skipping %.2f s of board time",
                        (now - self._last) / TICKS_PER_SECOND, skip / TICKS_PER_SECOND)
            self._last += skip
        self._generate_until(now)
        self.worst_lag_s = max(self.worst_lag_s, (self.clock.now_ticks() - now) / TICKS_PER_SECOND)
        self._pump(force=False)

    def _release(self, sl) -> None:
        faults = self._faults
        truth = sl.truth
        t = time.monotonic()
        with self._lock:
            for chip, words in enumerate(sl.words):
                if faults is not None and faults.stop_heartbeats and faults.applies_to(chip) and len(words):
                    top = words >> np.uint64(56)
                    sub = (words >> np.uint64(48)) & np.uint64(0xFF)
                    hb = (top == 0x44) | (top == 0x45) | ((top == 0x71) & ((sub == 0x44) | (sub == 0x45)))
                    if hb.any():
                        self._senders[chip].counters.suppressed_heartbeat_words += int(hb.sum())
                        words = words[~hb]
                        if self.collect_truth:
                            hbt = truth.heartbeats
                            truth = Truth(truth.hits, truth.clusters, truth.triggers, hbt[hbt["chip"] != chip])
                self._senders[chip].add(words, t)
            if self.collect_truth:
                self._truth_parts.append(truth)
