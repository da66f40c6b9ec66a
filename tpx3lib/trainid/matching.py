"""Matching train IDs observed on the host (serial frames, Tango events) to triggers.

An *observation* is a train ID with the host time it was seen (Unix seconds).
Triggers have board times. The two are tied by the *board time origin*, the host
time of board time 0:

1. **Time windows (origin known).** A trigger at board time ``b`` is expected to
   be observed at ``p = origin + b + delta``, where ``delta`` starts at
   ``latency_s`` and then follows the median of the last 8 measured residuals
   ``h - (origin + b)`` (this absorbs the true latency, an origin error and slow
   clock drift). The trigger takes the earliest unused observation with
   ``|h - p| <= window_s``; observations older than the window are dropped and
   counted ``unmatched`` (``observations_before_start`` before the first trigger).
   With none in the window, the trigger waits until an observation later than
   the window arrives or the host clock passes ``p + window_s + settle_s``; then
   it gets the previous ID plus the periods elapsed, flagged EXTRAPOLATED.
   ``window_s`` (0.04 s) must stay below half a period so one window never holds
   two trains; the origin must be right to within ``window_s``.
2. **In order (origin unknown).** The first trigger is paired with the first
   observation received after :meth:`ObservedTrainIdSource.arm`, which sets the
   origin (``h - b - latency_s``); every later trigger uses rule 1. Call ``arm()``
   before the acquisition starts; a frame of a train that passes between ``arm()``
   and the first recorded trigger would shift every ID by one, which is why rule
   1 (origin from the board-timer reset) is preferred. If nothing is observed
   within ``anchor_timeout_s`` of a trigger being given, it gets ID 0 (UNKNOWN).

Every matched ID is checked against the periods rule: an ID other than previous ID +
periods elapsed is flagged JUMP (and the observed ID kept: the timing system is
authoritative). An observation repeating the previous observed ID is dropped and
counted ``duplicated_observations``; ID 0 (or out of uint64 range) is dropped and
counted ``invalid_observations``. Observations still queued at :meth:`flush`
are not counted (they may belong to trains after the last trigger).
"""
from __future__ import annotations

import bisect
import collections
import math
import statistics
import threading

from ..dtypes import TOA_UNIT_S
from ..errors import ConfigError
from .base import Decision, TrainIdSource
from .flags import EXTRAPOLATED

__all__ = ["ObservedTrainIdSource"]


class ObservedTrainIdSource(TrainIdSource):
    """A source fed with observed (train ID, host time) pairs by :meth:`observe`.

    Parameters (besides those of :class:`~tpx3lib.trainid.base.TrainIdSource`)
    ----------
    window_s : half-width of the matching window (< period/2).
    latency_s : expected delay from the trigger to the observation.
    settle_s : extra wait after a window closes before extrapolating.
    anchor_timeout_s : in-order mode, how long a first trigger waits for an observation.
    max_observations : queue bound; the oldest are dropped (counted ``unmatched``).
    """

    def __init__(self, *, window_s: float = 0.04, latency_s: float = 0.0, settle_s: float = 0.05,
                 anchor_timeout_s: float = 1.0, max_observations: int = 10000, **kwargs):
        super().__init__(**kwargs)
        if not 0 < window_s < self.period_s / 2:
            raise ConfigError(f"matching window must be in (0, period/2), not {window_s!r}")
        if settle_s < 0 or anchor_timeout_s < 0 or max_observations < 1:
            raise ConfigError("settle_s and anchor_timeout_s must be >= 0, max_observations >= 1")
        self.window_s = float(window_s)
        self.latency_s = float(latency_s)
        self.settle_s = float(settle_s)
        self.anchor_timeout_s = float(anchor_timeout_s)
        self.max_observations = int(max_observations)
        self._lock = threading.Lock()
        self._obs: collections.deque = collections.deque()   # (host_time, train_id), time order
        self._residuals: collections.deque = collections.deque(maxlen=8)
        self._delta = self.latency_s
        self._last_observed: int | None = None
        self.counters.update(observations=0, duplicated_observations=0, observations_out_of_order=0,
                             observations_before_start=0, invalid_observations=0)

    # ------------------------------------------------------------------ input
    def observe(self, train_id: int, host_time: float) -> None:
        """Record that ``train_id`` was seen at ``host_time`` (thread-safe)."""
        train_id = int(train_id)
        host_time = float(host_time)
        with self._lock:
            k = self.counters
            if train_id <= 0 or train_id >= 1 << 64:
                k["invalid_observations"] += 1     # 0 = "no train ID" on a timing device
                return
            if train_id == self._last_observed:
                k["duplicated_observations"] += 1
                return
            self._last_observed = train_id
            k["observations"] += 1
            if self._obs and host_time < self._obs[-1][0]:
                k["observations_out_of_order"] += 1
                items = list(self._obs)
                bisect.insort(items, (host_time, train_id))
                self._obs = collections.deque(items)
            else:
                self._obs.append((host_time, train_id))
            while len(self._obs) > self.max_observations:
                self._obs.popleft()
                self._count_dropped(1)

    def arm(self) -> None:
        """Forget queued observations (counted ``observations_before_start``) and,
        unless an origin was set explicitly, pair the next trigger in order."""
        with self._lock:
            self.counters["observations_before_start"] += len(self._obs)
            self._obs.clear()
            self._last_observed = None

    def set_board_time_origin(self, host_time: float) -> None:
        with self._lock:
            super().set_board_time_origin(host_time)
            self._residuals.clear()
            self._delta = self.latency_s

    @property
    def queued_observations(self) -> int:
        return len(self._obs)

    # --------------------------------------------------------------- deciding
    def _count_dropped(self, n: int) -> None:
        key = "unmatched" if self.counters["assigned"] or self.counters["unknown"] else "observations_before_start"
        self.counters[key] += n

    def _track(self, residual: float) -> None:
        self._residuals.append(residual)
        self._delta = statistics.median(self._residuals)

    def _decide(self, counter: int, time: int, first_seen: float, now: float) -> Decision | None:
        b = time * TOA_UNIT_S
        with self._lock:
            if self.board_time_origin is None:
                if not self._obs:
                    if now - first_seen < self.anchor_timeout_s:
                        return None
                    return 0, 0, math.nan, None
                h, train_id = self._obs.popleft()
                self.board_time_origin = h - b - self.latency_s
                self._track(self.latency_s)
                expected, flags = self._predicted(time)
                return train_id, flags, h - self.latency_s, expected
            train_start = self.board_time_origin + b
            predicted = train_start + self._delta
            lo, hi = predicted - self.window_s, predicted + self.window_s
            dropped = 0
            while self._obs and self._obs[0][0] < lo:
                self._obs.popleft()
                dropped += 1
            if dropped:
                self._count_dropped(dropped)
            if self._obs and self._obs[0][0] <= hi:
                h, train_id = self._obs.popleft()
                self._track(h - train_start)
                expected, flags = self._predicted(time)
                return train_id, flags, train_start, expected
            closed = bool(self._obs) or now >= hi + self.settle_s
            if not closed:
                return None
            expected, flags = self._predicted(time)
            if expected is None:
                return 0, flags, train_start, None
            return expected, flags | EXTRAPOLATED, train_start, None
