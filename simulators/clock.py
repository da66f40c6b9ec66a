"""The simulated board's 48-bit timer: 40 MHz ticks (25 ns) advancing with real time.

The SPIDR timer is what GET_TIMER returns, what the 0x44/0x45 heartbeat words carry and
what every pixel and TDC time is a part of (pixels keep its low 30 bits, TDC edges its low
32 bits). To exercise the 30-bit wrap (2^30 ticks = 26.84 s) without waiting, start the
clock just before it::

    clock = BoardClock(start_ticks=BoardClock.ticks_before_wrap(1.0))   # wraps after ~1 s
    clock = BoardClock(start_ticks=START_BEFORE_WRAP30)                  # the same

``time_source`` (default :func:`time.monotonic_ns`) can be replaced by any function returning
nanoseconds, e.g. a manually advanced counter for deterministic tests.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

__all__ = ["BoardClock", "TICK_NS", "TICKS_PER_SECOND", "TIMER_BITS", "TIMER_MASK", "WRAP30_TICKS",
           "WRAP32_TICKS", "START_BEFORE_WRAP30"]

TICK_NS = 25
TICKS_PER_SECOND = 40_000_000
TIMER_BITS = 48
TIMER_MASK = (1 << TIMER_BITS) - 1
#: The pixel coarse time (16-bit SPIDR time + 14-bit ToA) wraps here: 26.84 s.
WRAP30_TICKS = 1 << 30
#: The TDC coarse field (32 bit) wraps here: 107.37 s.
WRAP32_TICKS = 1 << 32
#: One second (40 M ticks) before the 30-bit wrap.
START_BEFORE_WRAP30 = WRAP30_TICKS - TICKS_PER_SECOND


class BoardClock:
    """A 48-bit, 25 ns timer that runs with real time; thread-safe."""

    def __init__(self, start_ticks: int = 0, time_source: Callable[[], int] = time.monotonic_ns):
        self._time = time_source
        self._lock = threading.Lock()
        self._origin_ns = 0
        self._origin_ticks = 0
        self.set(start_ticks)

    @staticmethod
    def ticks_before_wrap(seconds: float = 1.0, bits: int = 30) -> int:
        """The tick count ``seconds`` before the ``bits``-bit wrap (30: pixel time, 32: TDC, 48: timer)."""
        return (1 << bits) - int(round(seconds * TICKS_PER_SECOND))

    def now_ticks(self) -> int:
        """The current timer value in 25 ns ticks (wraps at 2^48)."""
        with self._lock:
            return (self._origin_ticks + (self._time() - self._origin_ns) // TICK_NS) & TIMER_MASK

    def now_seconds(self) -> float:
        return self.now_ticks() / TICKS_PER_SECOND

    def set(self, ticks: int) -> None:
        """Load the timer with ``ticks`` (SET_TIMER); it keeps running from there."""
        ticks = int(ticks)
        if not 0 <= ticks <= TIMER_MASK:
            raise ValueError(f"timer value {ticks} outside 0..2^48-1")
        with self._lock:
            self._origin_ns = self._time()
            self._origin_ticks = ticks

    def reset(self) -> None:
        """Back to 0 (RESET_TIMER / RESTART_TIMERS)."""
        self.set(0)

    def __repr__(self) -> str:
        return f"BoardClock(now_ticks={self.now_ticks()})"
