"""The common interface of train-ID sources.

A source decides, for each trigger (one TDC edge per European XFEL train), which
train ID it belongs to. Triggers are given as their extended hardware counter and
board time (``TDC_DTYPE`` fields ``counter`` and ``time``, 25/4096 ns units) and
must come in time order; a trigger older than one already decided is returned at
once with train ID 0 and the LATE flag (counted as ``late``).

:meth:`TrainIdSource.assign` returns the triggers it could decide now, as
``TRIGGER_TRAIN_DTYPE`` records in time order. A source that waits for outside
information (a serial frame, a Tango event) may hold a trigger until that
information can no longer arrive; :meth:`TrainIdSource.flush` decides every held
trigger (end of stream).

The periods rule shared by every source: a trigger's expected train ID is the
*reference* trigger's ID plus ``n = round(dt / period)``, ``dt`` the board-time
difference and the nominal period (0.1 s). The reference is the latest trigger
that was on the grid; ``|dt - n * period| > grid_tolerance`` flags OFF_GRID and
leaves the reference where it was, so one stray trigger is flagged once. If the
next trigger is on the grid of the off-grid one (the trigger phase moved), it
becomes the new reference without a flag. ``n = 0`` (two triggers in one period)
gives a DUPLICATE, an ID more than one above the previous a GAP of the missing
trains. Stepping from a recent trigger, not from T0, keeps the clock drift between
the board and the timing system out of the count (only the drift since the
reference matters, far below half a period).

Counters (``source.counters``, a dict of ints): ``assigned`` (triggers given a train
ID), ``unknown`` (given 0), ``missing`` (train IDs skipped between triggers),
``duplicated`` (triggers repeating the previous ID), ``jumps`` (observed ID not as
predicted), ``off_grid``, ``extrapolated`` (no observation matched), ``late``, and
for observing sources ``unmatched`` (observations no trigger claimed).
"""
from __future__ import annotations

import abc
import math
import time as _time
from typing import Callable

import numpy as np

from ..dtypes import TOA_UNIT_S
from ..errors import ConfigError
from .flags import DUPLICATE, EXTRAPOLATED, GAP, JUMP, LATE, OFF_GRID, TRIGGER_TRAIN_DTYPE, UNKNOWN

__all__ = ["TrainIdSource", "Decision", "XFEL_TRAIN_PERIOD_S"]

#: European XFEL trains come at 10 Hz.
XFEL_TRAIN_PERIOD_S = 0.1

#: ``_decide`` returns this (train_id, flags, host_time, expected_id or None), or None to wait.
Decision = tuple


class TrainIdSource(abc.ABC):
    """Base of every train-ID source (see the module docstring for the rules).

    Parameters
    ----------
    period_s : nominal train period (0.1 s at European XFEL).
    grid_tolerance_s : how far a trigger interval may be from a whole number of
        periods before it is flagged OFF_GRID (must be below period/2).
    board_time_origin : host time (Unix seconds) of board time 0, if known (e.g.
        when the SPIDR timer was reset); gives each train a host time.
    clock : host clock for "now" (seconds), ``time.time`` by default.
    """

    def __init__(self, *, period_s: float = XFEL_TRAIN_PERIOD_S, grid_tolerance_s: float = 0.01,
                 board_time_origin: float | None = None, clock: Callable[[], float] = _time.time):
        if not period_s > 0:
            raise ConfigError(f"train period must be > 0 s, not {period_s!r}")
        if not 0 <= grid_tolerance_s < period_s / 2:
            raise ConfigError(f"grid tolerance must be in [0, period/2), not {grid_tolerance_s!r}")
        self.period_s = float(period_s)
        self.grid_tolerance_s = float(grid_tolerance_s)
        self._period_units = self.period_s / TOA_UNIT_S
        self._tolerance_units = self.grid_tolerance_s / TOA_UNIT_S
        self.board_time_origin = None if board_time_origin is None else float(board_time_origin)
        self._clock = clock
        self.counters: dict[str, int] = dict(assigned=0, unknown=0, missing=0, duplicated=0, jumps=0,
                                             off_grid=0, extrapolated=0, late=0, unmatched=0)
        self._pending: list[list] = []          # [counter, time, first_seen_host_time]
        self._last_id: int | None = None        # last trigger given a train ID
        self._last_time: int | None = None
        self._last_off_grid = False
        self._ref_id: int | None = None         # the reference trigger (latest on the grid)
        self._ref_time: int | None = None
        self._decided_until = -(1 << 63)        # time of the newest decided trigger

    # ------------------------------------------------------------------ public
    def set_board_time_origin(self, host_time: float) -> None:
        """Host time (Unix seconds) of board time 0 (when the board timer was reset)."""
        self.board_time_origin = float(host_time)

    @property
    def pending(self) -> int:
        """Triggers held, waiting for information."""
        return len(self._pending)

    @property
    def last_train_id(self) -> int | None:
        """The train ID of the newest trigger that got one."""
        return self._last_id

    def assign(self, counters, times, now: float | None = None) -> np.ndarray:
        """Add triggers (counter and board time arrays, time order) and return the
        triggers decided now (``TRIGGER_TRAIN_DTYPE``): LATE ones first, then the
        rest in time order."""
        counters = np.asarray(counters, dtype=np.int64).ravel()
        times = np.asarray(times, dtype=np.int64).ravel()
        if counters.shape != times.shape:
            raise ValueError(f"{counters.size} trigger counters but {times.size} times")
        now = self._clock() if now is None else float(now)
        out: list[tuple] = []
        order = np.argsort(times, kind="stable")
        for c, t in zip(counters[order].tolist(), times[order].tolist()):
            if t < self._decided_until:
                self.counters["late"] += 1
                self.counters["unknown"] += 1
                out.append((c, t, 0, LATE | UNKNOWN, math.nan))
                continue
            if self._pending and t < self._pending[-1][1]:
                pos = next(i for i, p in enumerate(self._pending) if p[1] > t)
                self._pending.insert(pos, [c, t, now])
            else:
                self._pending.append([c, t, now])
        out.extend(self._decide_pending(now))
        return self._records(out)

    def flush(self) -> np.ndarray:
        """Decide every held trigger (end of the stream) and return them."""
        return self._records(self._decide_pending(math.inf))

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters (sources with a receiver add its counters)."""
        return dict(self.counters)

    def start(self) -> "TrainIdSource":
        """Start receiving (sources with a receiver); returns self."""
        return self

    def stop(self) -> None:
        """Stop receiving; safe to call twice."""

    def close(self) -> None:
        self.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------ subclasses
    @abc.abstractmethod
    def _decide(self, counter: int, time: int, first_seen: float, now: float) -> Decision | None:
        """Return (train_id, flags, host_time, expected_id or None) or None to wait.

        ``now`` is ``math.inf`` at flush: a source must then decide."""

    # --------------------------------------------------------------- helpers
    def _steps(self, time: int, since: int) -> tuple[int, bool]:
        """Trains elapsed from board time ``since`` to ``time``, and whether off the grid."""
        dt = time - since
        n = int(round(dt / self._period_units))
        return n, abs(dt - n * self._period_units) > self._tolerance_units

    def _predicted(self, time: int) -> tuple[int | None, int]:
        """(expected train ID or None, OFF_GRID or 0) by the periods rule."""
        if self._ref_id is None:
            return None, 0
        n, off = self._steps(time, self._ref_time)
        if off and self._last_off_grid:
            n_prev, off_prev = self._steps(time, self._last_time)
            if not off_prev:   # on the grid of the previous, off-grid trigger: the phase moved
                return self._last_id + n_prev, 0
        return self._ref_id + n, (OFF_GRID if off else 0)

    def _board_to_host(self, time: int) -> float:
        if self.board_time_origin is None:
            return math.nan
        return self.board_time_origin + time * TOA_UNIT_S

    def _decide_pending(self, now: float) -> list[tuple]:
        out = []
        while self._pending:
            c, t, seen = self._pending[0]
            d = self._decide(c, t, seen, now)
            if d is None:
                break
            self._pending.pop(0)
            out.append(self._commit(c, t, *d))
        return out

    def _commit(self, counter: int, time: int, train_id: int, flags: int, host_time: float,
                expected: int | None) -> tuple:
        k = self.counters
        self._decided_until = max(self._decided_until, time)
        if not train_id:
            k["unknown"] += 1
            return (counter, time, 0, flags | UNKNOWN, host_time)
        if expected is not None and train_id != expected:
            flags |= JUMP
            k["jumps"] += 1
        if self._last_id is not None:
            d = train_id - self._last_id
            if d == 0:
                flags |= DUPLICATE
                k["duplicated"] += 1
            elif d > 1 and not flags & JUMP:
                flags |= GAP
                k["missing"] += d - 1
        if flags & OFF_GRID:
            k["off_grid"] += 1
        if flags & EXTRAPOLATED:
            k["extrapolated"] += 1
        k["assigned"] += 1
        self._last_id, self._last_time = train_id, time
        self._last_off_grid = bool(flags & OFF_GRID)
        if not self._last_off_grid:
            self._ref_id, self._ref_time = train_id, time
        return (counter, time, train_id, flags, host_time)

    @staticmethod
    def _records(rows: list[tuple]) -> np.ndarray:
        out = np.empty(len(rows), TRIGGER_TRAIN_DTYPE)
        for i, r in enumerate(rows):
            out[i] = r
        return out
