"""Where processed data goes: the sink interface and the built-in sinks.

A sink receives every :class:`~tpx3lib.pipeline.processor.ProcessedChunk` of
every chip, in order per chip, from the pipeline's processing threads. Sinks
must be quick (hand heavy work to their own thread) and must count what they
cannot keep rather than drop it silently.
"""
from __future__ import annotations

import collections
import threading
import time

import numpy as np

from ..dtypes import TOA_UNIT_S
from .processor import ProcessedChunk

__all__ = ["Sink", "StatisticsSink", "CallbackSink", "PollBuffer", "PollBufferEmpty"]


class Sink:
    """Base class: override what you need."""

    def start(self, info: dict) -> None:
        """Called once when an acquisition starts (info: chips, config, start time)."""

    def on_chunk(self, chunk: ProcessedChunk) -> None:
        """Called for every processed chunk."""

    def on_raw(self, chip: int, words: np.ndarray, recv_time_ns: int) -> None:
        """Called with raw words when the 'raw' product is requested."""

    def stop(self) -> None:
        """Called once when the acquisition has ended and all chunks were delivered."""


class StatisticsSink(Sink):
    """Live statistics readable at any time: rates over a sliding window, totals,
    a hit map per detector and a time-of-flight histogram."""

    def __init__(self, window_s: float = 1.0, shape=(256, 256), tof_range_s=(0.0, 1e-3), tof_bins: int = 500):
        self.window_s = float(window_s)
        self.shape = tuple(shape)
        self.tof_edges_s = np.linspace(tof_range_s[0], tof_range_s[1], tof_bins + 1)
        self._tof_edges_units = self.tof_edges_s / TOA_UNIT_S
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self.totals = collections.Counter()
            self.hit_map = np.zeros(self.shape, np.int64)
            self.tof_histogram = np.zeros(self.tof_edges_s.size - 1, np.int64)
            self._recent = collections.deque()  # (time, Counter of increments)
            self.started = time.time()

    def start(self, info: dict) -> None:
        self.reset()

    def on_raw(self, chip, words, recv_time_ns) -> None:
        self._add({"raw_bytes": words.nbytes})

    def on_chunk(self, chunk: ProcessedChunk) -> None:
        inc = {
            "hits": chunk.pixels.size,
            "triggers": int(np.count_nonzero(chunk.triggers["rising"])) if chunk.triggers.size else 0,
            "events": chunk.events.size,
            "centroids": chunk.centroids.size,
        }
        hits = chunk.pixels if chunk.pixels.size else chunk.events
        with self._lock:
            if hits.size:
                x = hits["x"].astype(np.intp)
                y = hits["y"].astype(np.intp)
                ok = (x < self.shape[0]) & (y < self.shape[1])
                np.add.at(self.hit_map, (x[ok], y[ok]), 1)
            if chunk.events.size:
                h, _ = np.histogram(chunk.events["tof"], bins=self._tof_edges_units)
                self.tof_histogram += h
        self._add(inc)

    def _add(self, inc: dict) -> None:
        now = time.monotonic()
        with self._lock:
            self.totals.update(inc)
            self._recent.append((now, inc))
            while self._recent and self._recent[0][0] < now - self.window_s:
                self._recent.popleft()

    def rates(self) -> dict:
        """Per-second rates over the last window."""
        now = time.monotonic()
        with self._lock:
            agg = collections.Counter()
            for t, inc in self._recent:
                if t >= now - self.window_s:
                    agg.update(inc)
        span = min(self.window_s, max(time.time() - self.started, 1e-3))
        return {f"{k}_per_s": v / span for k, v in agg.items()}

    def snapshot(self) -> dict:
        with self._lock:
            return {"totals": dict(self.totals), "rates": self.rates(),
                    "hit_map": self.hit_map.copy(), "tof_histogram": self.tof_histogram.copy(),
                    "tof_edges_s": self.tof_edges_s.copy()}


class PollBufferEmpty(LookupError):
    """Nothing to poll (subclasses LookupError, like queue.Empty's spirit of "no item")."""


class PollBuffer:
    """A bounded ring of (message type, data) for polling. When full the oldest
    message is dropped and counted in ``overflows`` (a live view must not stall
    the acquisition)."""

    def __init__(self, maxlen: int = 1000):
        self._dq = collections.deque(maxlen=int(maxlen))
        self._lock = threading.Lock()
        self.overflows = 0
        self.pushed = 0

    def push(self, kind: str, data) -> None:
        with self._lock:
            if len(self._dq) == self._dq.maxlen:
                self.overflows += 1
            self._dq.append((kind, data))
            self.pushed += 1

    def poll(self):
        with self._lock:
            if not self._dq:
                raise PollBufferEmpty("no data available")
            return self._dq.popleft()

    def __len__(self) -> int:
        return len(self._dq)


class CallbackSink(Sink):
    """Deliver the requested products to a callback ``fn(kind, data)`` and/or a
    :class:`PollBuffer`. ``kind`` is one of raw, pixels, triggers, events, centroids."""

    def __init__(self, products=("pixels", "triggers", "events", "centroids"), callback=None,
                 buffer: PollBuffer | None = None):
        self.products = tuple(products)
        self.callback = callback
        self.buffer = buffer
        self.callback_errors = 0

    def _deliver(self, kind, data) -> None:
        if self.buffer is not None:
            self.buffer.push(kind, data)
        if self.callback is not None:
            try:
                self.callback(kind, data)
            except Exception:  # a user's callback must not kill the acquisition; it is counted
                self.callback_errors += 1

    def on_raw(self, chip, words, recv_time_ns) -> None:
        if "raw" in self.products:
            self._deliver("raw", words.copy())

    def on_chunk(self, chunk: ProcessedChunk) -> None:
        for kind in ("pixels", "triggers", "events", "centroids"):
            arr = getattr(chunk, kind)
            if kind in self.products and arr.size:
                self._deliver(kind, arr)
