"""Matching observed train IDs (host time) to triggers (board time): the rules of
tpx3lib.trainid.matching, with hand-placed observations and an explicit clock."""
import math

import pytest

from tpx3lib.dtypes import TOA_UNIT_S
from tpx3lib.errors import ConfigError
from tpx3lib.trainid import EXTRAPOLATED, GAP, JUMP, UNKNOWN, ObservedTrainIdSource

P = 16_384_000_000          # 0.1 s in board units
T0 = 20 * P                 # first trigger 2 s after the board timer reset
ORIGIN = 1_700_000_000.0    # host time of board time 0
LAT = 0.003                 # frames arrive 3 ms after the train start


def start(k):
    """Host time of the start of the k-th train after T0."""
    return ORIGIN + (T0 + k * P) * TOA_UNIT_S


def trig(k):
    return T0 + k * P


def make(**kw):
    return ObservedTrainIdSource(board_time_origin=ORIGIN, clock=lambda: math.inf, **kw)


def test_each_trigger_takes_the_observation_in_its_window():
    src = make()
    for k in range(5):
        src.observe(9000 + k, start(k) + LAT)
    out = src.assign(range(5), [trig(k) for k in range(5)], now=start(5))
    assert out["train_id"].tolist() == [9000, 9001, 9002, 9003, 9004]
    assert out["flags"].tolist() == [0] * 5
    assert out["host_time"][2] == pytest.approx(start(2), abs=1e-6)
    assert src.counters["unmatched"] == 0 and src.queued_observations == 0


def test_waits_for_a_late_frame_then_takes_it():
    src = make()
    src.observe(50, start(0) + LAT)
    out = src.assign([1, 3], [trig(0), trig(1)], now=start(1) + 0.001)
    assert out["train_id"].tolist() == [50]
    assert src.pending == 1                           # train 1's frame not here yet, window open
    src.observe(51, start(1) + 0.02)
    out = src.assign([], [], now=start(1) + 0.021)
    assert out["train_id"].tolist() == [51] and src.pending == 0


def test_no_frame_extrapolates_after_the_window_closes():
    src = make(window_s=0.04, settle_s=0.05)
    src.observe(50, start(0) + LAT)
    # After train 0 the tracked latency is 3 ms: train 1's frame is expected at +3 ms,
    # its window closes at +43 ms, and it is given up 50 ms later, at +93 ms.
    out = src.assign([1, 3], [trig(0), trig(1)], now=start(1) + 0.092)
    assert out.size == 1 and src.pending == 1
    out = src.assign([], [], now=start(1) + 0.0935)
    assert out["train_id"].tolist() == [51] and out["flags"][0] == EXTRAPOLATED
    assert src.counters["extrapolated"] == 1


def test_a_later_frame_closes_the_window_at_once():
    src = make()
    src.observe(50, start(0) + LAT)
    src.observe(52, start(2) + LAT)                     # 51's frame was lost
    out = src.assign([1, 3, 5], [trig(0), trig(1), trig(2)], now=start(2) + 0.004)
    assert out["train_id"].tolist() == [50, 51, 52]
    assert out["flags"].tolist() == [0, EXTRAPOLATED, 0]


def test_jump_in_the_ids_is_kept_and_flagged():
    src = make()
    ids = [100, 101, 5000, 5001]
    for k, i in enumerate(ids):
        src.observe(i, start(k) + LAT)
    out = src.assign(range(4), [trig(k) for k in range(4)])
    assert out["train_id"].tolist() == ids
    assert out["flags"].tolist() == [0, 0, JUMP, 0]
    assert src.counters["jumps"] == 1 and src.counters["missing"] == 0


def test_frame_without_trigger_is_unmatched_and_gap_counted():
    src = make()
    for k in range(4):
        src.observe(10 + k, start(k) + LAT)
    out = src.assign([1, 3, 7], [trig(0), trig(1), trig(3)])   # train 12's trigger missed
    assert out["train_id"].tolist() == [10, 11, 13]
    assert out["flags"].tolist() == [0, 0, GAP]
    assert src.counters["unmatched"] == 1 and src.counters["missing"] == 1


def test_duplicate_observation_dropped_and_counted():
    src = make()
    src.observe(10, start(0) + LAT)
    src.observe(10, start(0) + LAT + 0.001)
    src.observe(11, start(1) + LAT)
    out = src.assign([1, 3], [trig(0), trig(1)])
    assert out["train_id"].tolist() == [10, 11]
    assert src.counters["duplicated_observations"] == 1 and src.counters["unmatched"] == 0


def test_frames_before_the_first_trigger_are_counted_apart():
    src = make()
    src.observe(7, start(-2) + LAT)
    src.observe(8, start(-1) + LAT)
    src.observe(9, start(0) + LAT)
    out = src.assign([1], [trig(0)])
    assert out["train_id"].tolist() == [9]
    assert src.counters["observations_before_start"] == 2 and src.counters["unmatched"] == 0


def test_origin_error_within_the_window_is_tracked():
    # the origin we were told is 30 ms early: frames come 33 ms after the predicted start
    src = ObservedTrainIdSource(board_time_origin=ORIGIN - 0.030, clock=lambda: math.inf)
    for k in range(6):
        src.observe(300 + k, start(k) + LAT)
    out = src.assign(range(6), [trig(k) for k in range(6)])
    assert out["train_id"].tolist() == list(range(300, 306))
    assert not out["flags"].any()


def test_in_order_anchor_after_arm():
    src = ObservedTrainIdSource(clock=lambda: math.inf, latency_s=LAT)   # no origin
    src.observe(1, 10.0)                      # before arm: discarded
    src.arm()
    for k in range(3):
        src.observe(700 + k, start(k) + LAT)
    out = src.assign(range(3), [trig(k) for k in range(3)], now=start(3))
    assert out["train_id"].tolist() == [700, 701, 702]
    assert src.board_time_origin == pytest.approx(ORIGIN, abs=1e-6)
    assert src.counters["observations_before_start"] == 1


def test_in_order_anchor_times_out_to_unknown():
    src = ObservedTrainIdSource(anchor_timeout_s=1.0)
    out = src.assign([1], [trig(0)], now=100.0)
    assert out.size == 0 and src.pending == 1
    out = src.assign([], [], now=101.5)
    assert out["train_id"].tolist() == [0] and out["flags"][0] == UNKNOWN
    assert src.counters["unknown"] == 1


def test_flush_decides_everything():
    src = make()
    src.observe(5, start(0) + LAT)
    src.assign([1, 3], [trig(0), trig(1)], now=start(1))
    assert src.pending == 1
    out = src.flush()
    assert out["train_id"].tolist() == [6] and out["flags"][0] == EXTRAPOLATED


def test_window_must_stay_below_half_a_period():
    with pytest.raises(ConfigError):
        ObservedTrainIdSource(window_s=0.05)
