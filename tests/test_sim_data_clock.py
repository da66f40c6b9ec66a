"""The board clock: 25 ns ticks from a nanosecond time source, set/reset, the wrap helpers."""
from __future__ import annotations

import time

import pytest

from simulators.clock import START_BEFORE_WRAP30, TIMER_MASK, BoardClock


class ManualTime:
    """A nanosecond time source we advance by hand."""

    def __init__(self):
        self.ns = 1_000_000_000

    def __call__(self):
        return self.ns


def test_ticks_follow_the_time_source():
    src = ManualTime()
    c = BoardClock(start_ticks=100, time_source=src)
    assert c.now_ticks() == 100
    src.ns += 1_000
    assert c.now_ticks() == 140                       # 1 us = 40 ticks
    src.ns += 24
    assert c.now_ticks() == 140                       # less than a tick
    src.ns += 1
    assert c.now_ticks() == 141
    src.ns += 1_000_000_000
    assert c.now_seconds() == pytest.approx(1.0 + 141 / 40e6)


def test_set_reset_and_the_48_bit_wrap():
    src = ManualTime()
    c = BoardClock(time_source=src)
    c.set(TIMER_MASK - 10)
    src.ns += 25 * 15
    assert c.now_ticks() == 4                         # wrapped past 2^48
    c.reset()
    assert c.now_ticks() == 0
    with pytest.raises(ValueError):
        c.set(-1)
    with pytest.raises(ValueError):
        c.set(1 << 48)


def test_starting_before_the_30_bit_wrap():
    assert START_BEFORE_WRAP30 == 2 ** 30 - 40_000_000
    assert BoardClock.ticks_before_wrap(1.0) == START_BEFORE_WRAP30
    assert BoardClock.ticks_before_wrap(0.5, bits=32) == 2 ** 32 - 20_000_000
    src = ManualTime()
    c = BoardClock(start_ticks=BoardClock.ticks_before_wrap(1.0), time_source=src)
    src.ns += 1_000_000_000
    assert c.now_ticks() == 2 ** 30                   # 1 s later: at the pixel-time wrap


def test_runs_with_real_time():
    c = BoardClock()
    a = c.now_ticks()
    time.sleep(0.02)
    b = c.now_ticks()
    assert b - a >= 0.02 * 40e6                       # at least the time slept has passed
