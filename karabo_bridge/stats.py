"""Counters and per-train latency figures kept by clients and servers.

Every train a client or server handles is counted; everything not delivered
is counted under a named reason, so nothing is lost silently.
"""
from __future__ import annotations

import threading
from collections import deque

import numpy as np

__all__ = ["LatencyStats", "ClientStats", "ServerStats", "TrainIdTracker"]


class LatencyStats:
    """Latencies (seconds) of the last ``window`` trains: count, median, p99, max."""

    def __init__(self, window: int = 10000):
        self._values = deque(maxlen=window)
        self.count = 0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(float(seconds))
            self.count += 1

    def values(self) -> np.ndarray:
        """The recorded latencies in seconds, oldest first."""
        with self._lock:
            return np.array(self._values, dtype=np.float64)

    def summary(self) -> dict:
        """``{"count", "median", "p99", "max"}`` in seconds (``None`` when empty)."""
        v = self.values()
        if v.size == 0:
            return {"count": self.count, "median": None, "p99": None, "max": None}
        return {"count": self.count, "median": float(np.median(v)),
                "p99": float(np.percentile(v, 99)), "max": float(v.max())}


class TrainIdTracker:
    """Counts trains missing between consecutive train IDs.

    ``step`` is the expected increment (the stride divisor for a strided
    consumer).  A train ID lower than or equal to the previous one counts as a
    reset (e.g. a replay restarted) and does not add missed trains.
    """

    def __init__(self, step: int = 1):
        self.step = max(1, int(step))
        self.last: int | None = None
        self.missed = 0
        self.resets = 0

    def update(self, tid: int | None) -> int:
        """Record ``tid``; return the number of trains missed just before it."""
        if tid is None:
            return 0
        missed = 0
        if self.last is not None:
            if tid <= self.last:
                self.resets += 1
            else:
                missed = max(0, (tid - self.last) // self.step - 1)
                self.missed += missed
        self.last = tid
        return missed


class _Counters:
    _fields: tuple = ()

    def __init__(self):
        for f in self._fields:
            setattr(self, f, 0)

    def as_dict(self) -> dict:
        d = {f: getattr(self, f) for f in self._fields}
        for name, value in vars(self).items():
            if isinstance(value, LatencyStats):
                d[name] = value.summary()
        return d

    def __repr__(self):
        body = ", ".join(f"{f}={getattr(self, f)}" for f in self._fields)
        return f"{type(self).__name__}({body})"


class ClientStats(_Counters):
    """What a :class:`~karabo_bridge.Client` saw.

    ``trains``/``bytes`` received, ``timeouts``, ``protocol_errors`` (malformed
    messages), ``server_errors`` (error strings received), ``skipped`` (trains
    filtered out client-side by a SUB stride), ``missed`` (gaps in the train
    IDs, i.e. trains dropped upstream), ``tid_resets``; latencies:
    ``wait`` (time spent in ``next()`` until the train arrived; for REQ the
    request round trip) and ``age`` (arrival minus the train's ``timestamp``).
    """
    _fields = ("trains", "bytes", "timeouts", "protocol_errors", "server_errors",
               "skipped", "missed", "tid_resets")

    def __init__(self):
        super().__init__()
        self.wait = LatencyStats()
        self.age = LatencyStats()


class ServerStats(_Counters):
    """What a server did.

    ``fed`` trains accepted (by ``feed()``/``send()``), ``sent`` trains handed to
    ZeroMQ and ``bytes_sent``; ``requests`` received and ``bad_requests``
    (answered with an error string); ``dropped_unwanted`` (trains no live
    strided consumer asked for), ``unreachable`` (a requester vanished before
    its reply; the train was kept for another), ``discarded_at_stop`` (still
    queued when the server stopped), ``rejected_full`` (``feed(block=False)``
    on a full queue). ``latency``: feed to hand-over to ZeroMQ, per train.
    """
    _fields = ("fed", "sent", "bytes_sent", "requests", "bad_requests", "dropped_unwanted",
               "unreachable", "discarded_at_stop", "rejected_full")

    def __init__(self):
        super().__init__()
        self.latency = LatencyStats()

    @property
    def dropped(self) -> int:
        """All trains fed but not sent for any reason so far."""
        return self.dropped_unwanted + self.discarded_at_stop
