"""Where processed data goes: the sink interface and the built-in sinks.

A sink receives every :class:`~tpx3lib.pipeline.processor.ProcessedChunk` of
every chip, in order per chip, from the pipeline's processing threads. Sinks
must be quick (hand heavy work to their own thread) and must count what they
cannot keep rather than drop it silently.
"""
from __future__ import annotations

import collections
import logging
import threading
import time

import numpy as np

from ..dtypes import TOA_UNIT_S
from ..messages import DataMessage, MessageRing, MessageType
from .processor import ProcessedChunk
from .stats_kernels import add_hit_map, add_histogram

log = logging.getLogger("tpx3lib.pipeline")

__all__ = ["Sink", "StatisticsSink", "CallbackSink"]


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
    """Live statistics readable at any time from any thread.

    Totals since the last :meth:`reset` (``hits``, ``triggers`` = trigger edges of any TDC
    that are rising, ``events``, ``centroids``, ``raw_bytes``), rates per second over the
    last ``window_s``, a hit map (an image: row = y, column = x, one ``shape`` for all
    chips summed) and a time-of-flight histogram over ``tof_range_s`` (of events when
    there are any, else of centroids).
    """

    def __init__(self, window_s: float = 1.0, shape=(256, 256), tof_range_s=(0.0, 1e-3), tof_bins: int = 500):
        if not window_s > 0:
            raise ValueError("window_s must be > 0")
        lo, hi = (float(v) for v in tof_range_s)
        if not hi > lo or int(tof_bins) < 1:
            raise ValueError(f"need tof_range_s min < max and tof_bins >= 1, got {tof_range_s}, {tof_bins}")
        self.window_s = float(window_s)
        self.shape = tuple(int(v) for v in shape)
        self.tof_edges_s = np.linspace(lo, hi, int(tof_bins) + 1)
        self._tof_edges_units = self.tof_edges_s / TOA_UNIT_S
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.totals = collections.Counter()
            self._hit_map = np.zeros(self.shape, np.int64)
            self._tof = np.zeros(self.tof_edges_s.size - 1, np.int64)
            self._recent: collections.deque = collections.deque()  # (monotonic time, increments)
            self._since = time.monotonic()

    def start(self, info: dict) -> None:
        self.reset()

    def on_raw(self, chip, words, recv_time_ns) -> None:
        self._add({"raw_bytes": int(words.nbytes)})

    def on_chunk(self, chunk: ProcessedChunk) -> None:
        tdc = chunk.triggers
        inc = {
            "hits": int(chunk.pixels.size),
            "triggers": int(np.count_nonzero(tdc["rising"])) if tdc.size else 0,
            "events": int(chunk.events.size),
            "centroids": int(chunk.centroids.size),
        }
        tof = chunk.events["tof"] if chunk.events.size else chunk.centroids["tof"]
        with self._lock:
            if chunk.pixels.size:
                add_hit_map(chunk.pixels, self._hit_map)
            if tof.size:
                add_histogram(tof, self._tof_edges_units, self._tof)
        self._add(inc)

    def _add(self, inc: dict) -> None:
        now = time.monotonic()
        with self._lock:
            self.totals.update(inc)
            self._recent.append((now, inc))
            while self._recent and self._recent[0][0] < now - self.window_s:
                self._recent.popleft()

    def rates(self) -> dict:
        """``<name>_per_s`` for every total, over the last ``window_s`` (or since reset, if shorter)."""
        now = time.monotonic()
        with self._lock:
            agg = collections.Counter({k: 0 for k in self.totals})
            for t, inc in self._recent:
                if t >= now - self.window_s:
                    agg.update(inc)
            span = min(self.window_s, max(now - self._since, 1e-3))
        return {f"{k}_per_s": v / span for k, v in agg.items()}

    def hit_map(self) -> np.ndarray:
        with self._lock:
            return self._hit_map.copy()

    def tof_histogram(self) -> np.ndarray:
        with self._lock:
            return self._tof.copy()

    def snapshot(self) -> dict:
        rates = self.rates()
        with self._lock:
            return {"totals": dict(self.totals), "rates": rates, "hit_map": self._hit_map.copy(),
                    "tof_histogram": self._tof.copy(), "tof_edges_s": self.tof_edges_s.copy()}


class CallbackSink(Sink):
    """Deliver the requested products as ``callback(MessageType, data)`` and/or into a
    :class:`~tpx3lib.messages.MessageRing` (the poll ring of the high-level API) as
    :class:`~tpx3lib.messages.DataMessage`. ``products`` names what to deliver: any of
    raw, pixels, triggers, events, centroids. An exception from the callback is counted
    in ``callback_errors`` (the first is logged) and never stops the acquisition; what
    the ring drops when full is counted by the ring (``overflows``)."""

    def __init__(self, products=("pixels", "triggers", "events", "centroids"), callback=None,
                 buffer: MessageRing | None = None):
        bad = [p for p in products if p.upper() not in MessageType.__members__]
        if bad:
            raise ValueError(f"unknown product(s) {bad}; choose from "
                             f"{[m.name.lower() for m in MessageType]}")
        self.products = tuple(products)
        self.callback = callback
        self.buffer = buffer
        self.callback_errors = 0
        self._lock = threading.Lock()

    def _deliver(self, kind: MessageType, data) -> None:
        if self.buffer is not None:
            self.buffer.push(DataMessage(kind, data))
        if self.callback is not None:
            try:
                self.callback(kind, data)
            except Exception:  # a user's callback must not kill the acquisition; it is counted
                with self._lock:
                    self.callback_errors += 1
                    first = self.callback_errors == 1
                if first:
                    log.exception("data callback raised (further errors are only counted)")

    def on_raw(self, chip, words, recv_time_ns) -> None:
        if "raw" in self.products:
            self._deliver(MessageType.RAW, words.copy())

    def on_chunk(self, chunk: ProcessedChunk) -> None:
        for kind in ("pixels", "triggers", "events", "centroids"):
            arr = getattr(chunk, kind)
            if kind in self.products and arr.size:
                self._deliver(MessageType[kind.upper()], arr)
