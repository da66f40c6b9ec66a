"""Counting train IDs from triggers, and labelling events/centroids with them."""
import numpy as np
import pytest

from tpx3lib.dtypes import CENTROID_DTYPE, EVENT_DTYPE, TDC1_FALLING, TDC1_RISING, TDC2_RISING, TDC_DTYPE
from tpx3lib.errors import ConfigError
from tpx3lib.trainid import (DUPLICATE, GAP, LATE, OFF_GRID, UNKNOWN, CountingTrainIdSource, TrainIdAssigner,
                             apply_train_ids, describe_flags, run_file_flag, split_by_train)

P = 16_384_000_000          # 0.1 s in 25/4096 ns units (4e6 ticks of 25 ns, times 4096)
MS = P // 100               # 1 ms
T0 = 5 * P + 123_456        # first trigger somewhere after the board timer reset


def edges(times, chip=0, first_counter=1):
    """TDC1 rising+falling edge pairs as the board records them (counter counts every edge)."""
    out = np.zeros(2 * len(times), TDC_DTYPE)
    for i, t in enumerate(times):
        c = first_counter + 2 * i
        out[2 * i] = (TDC1_RISING, 1, 1, chip, c, t)
        out[2 * i + 1] = (TDC1_FALLING, 1, 0, chip, c + 1, t + 1000)
    return out


def test_regular_triggers_count_up():
    src = CountingTrainIdSource(1_000_000)
    out = src.assign(np.arange(1, 6), T0 + P * np.arange(5))
    assert out["train_id"].tolist() == [1_000_000, 1_000_001, 1_000_002, 1_000_003, 1_000_004]
    assert out["flags"].tolist() == [0] * 5
    assert src.counters["assigned"] == 5 and src.counters["missing"] == 0


def test_missed_triggers_show_as_gap():
    src = CountingTrainIdSource(500)
    # trains 500, 501, (502, 503 missed), 504, 505
    times = T0 + P * np.array([0, 1, 4, 5])
    out = src.assign([1, 3, 5, 7], times)
    assert out["train_id"].tolist() == [500, 501, 504, 505]
    assert out["flags"].tolist() == [0, 0, GAP, 0]
    assert src.counters["missing"] == 2
    assert run_file_flag(out["flags"]).tolist() == [1, 1, 1, 1]   # a gap does not make an ID suspect


def test_jitter_and_drift_within_tolerance_are_fine():
    src = CountingTrainIdSource(10)
    # 3 ms early/late jitter, plus 50 ppm clock drift over 100 trains (5 ms at the end)
    k = np.arange(100)
    jitter = np.where(k % 2 == 0, 3 * MS, -3 * MS)
    times = T0 + k * P + (k * P * 50e-6).astype(np.int64) + jitter
    out = src.assign(np.arange(100), times)
    assert out["train_id"].tolist() == list(range(10, 110))
    assert not out["flags"].any()


def test_duplicate_and_off_grid_triggers_flagged():
    src = CountingTrainIdSource(7)
    # trigger 2 comes 1 ms after trigger 1 (glitch); trigger 3 arrives 30 ms off the grid
    times = [T0, T0 + P, T0 + P + MS, T0 + 2 * P + 30 * MS, T0 + 3 * P]
    out = src.assign(range(5), times)
    assert out["train_id"].tolist() == [7, 8, 8, 9, 10]
    assert out["flags"].tolist() == [0, 0, DUPLICATE, OFF_GRID, 0]
    assert describe_flags(out["flags"][2]) == "DUPLICATE"
    assert src.counters["duplicated"] == 1 and src.counters["off_grid"] == 1
    assert run_file_flag(out["flags"]).tolist() == [1, 1, 0, 0, 1]


def test_phase_shift_flagged_once():
    src = CountingTrainIdSource(1)
    # the trigger delay moves by 30 ms after the second train and stays there
    times = [T0, T0 + P, T0 + 2 * P + 30 * MS, T0 + 3 * P + 30 * MS, T0 + 4 * P + 30 * MS]
    out = src.assign(range(5), times)
    assert out["train_id"].tolist() == [1, 2, 3, 4, 5]
    assert out["flags"].tolist() == [0, 0, OFF_GRID, 0, 0]


def test_late_trigger_gets_zero():
    src = CountingTrainIdSource(1)
    src.assign([1, 3], [T0, T0 + P])
    out = src.assign([2], [T0 + P // 2])
    assert out["train_id"].tolist() == [0] and out["flags"][0] == LATE | UNKNOWN
    assert src.counters["late"] == 1 and src.counters["unknown"] == 1


def test_reset_starts_a_new_t0():
    src = CountingTrainIdSource(100)
    src.assign([1, 3], [T0, T0 + P])
    src.reset(900)
    out = src.assign([5], [T0 + 10 * P])
    assert out["train_id"].tolist() == [900]


@pytest.mark.parametrize("bad", [0, -1, 2**63, 1.5, "7", True])
def test_bad_start_id_refused(bad):
    with pytest.raises(ConfigError):
        CountingTrainIdSource(bad)


def test_bad_period_settings_refused():
    with pytest.raises(ConfigError):
        CountingTrainIdSource(1, period_s=0)
    with pytest.raises(ConfigError):
        CountingTrainIdSource(1, grid_tolerance_s=0.06)


def test_host_time_from_board_origin():
    src = CountingTrainIdSource(1, board_time_origin=1_700_000_000.0)
    out = src.assign([1], [T0])
    assert out["host_time"][0] == pytest.approx(1_700_000_000.0 + 0.5, abs=1e-6)
    out = CountingTrainIdSource(1).assign([1], [T0])
    assert np.isnan(out["host_time"][0])


def test_assigner_selects_trigger_edges_and_labels_events():
    tdcs = edges([T0, T0 + P, T0 + 3 * P])              # trains 42, 43, 45; counters 1, 3, 5
    noise = np.zeros(1, TDC_DTYPE)
    noise[0] = (TDC2_RISING, 2, 1, 0, 77, T0 + 5)       # TDC2 edge: not a trigger
    a = TrainIdAssigner(CountingTrainIdSource(42))
    out = a.feed(np.concatenate([tdcs, noise]))
    assert out["counter"].tolist() == [1, 3, 5]
    assert out["train_id"].tolist() == [42, 43, 45]

    ev = np.zeros(6, EVENT_DTYPE)
    ev["event"] = [1, 1, 3, 5, 5, 9]                    # counter 9: trigger not seen
    assert apply_train_ids(ev, a) == 1
    assert ev["train_id"].tolist() == [42, 42, 43, 45, 45, 0]
    cen = np.zeros(3, CENTROID_DTYPE)
    cen["event"] = [5, 3, 1]
    assert a.apply(cen) == 0 and cen["train_id"].tolist() == [45, 43, 42]
    # a dict works as well
    ev2 = np.zeros(2, EVENT_DTYPE)
    ev2["event"] = [3, 4]
    assert apply_train_ids(ev2, {3: 43}) == 1 and ev2["train_id"].tolist() == [43, 0]
    assert a.train_flags([42, 45, 44]).tolist() == [1, 1, 0]   # 44: no trigger in the table


def test_assigner_chip_filter_and_wrong_dtype():
    tdcs = np.concatenate([edges([T0, T0 + P], chip=0), edges([T0, T0 + P], chip=1, first_counter=1)])
    a = TrainIdAssigner(CountingTrainIdSource(1), chip=1)
    out = a.feed(tdcs)
    assert out["train_id"].tolist() == [1, 2] and out["counter"].tolist() == [1, 3]
    with pytest.raises(TypeError):
        a.feed(np.zeros(2, EVENT_DTYPE))
    with pytest.raises(TypeError):
        apply_train_ids(np.zeros(2, [("x", "u2")]), a)
    with pytest.raises(ConfigError):
        TrainIdAssigner(CountingTrainIdSource(1), tdc=3)


def test_split_by_train():
    ev = np.zeros(7, EVENT_DTYPE)
    ev["train_id"] = [5, 5, 6, 8, 8, 8, 9]
    ev["x"] = np.arange(7)
    parts = split_by_train(ev)
    assert [t for t, _ in parts] == [5, 6, 8, 9]
    assert [p["x"].tolist() for _, p in parts] == [[0, 1], [2], [3, 4, 5], [6]]
    assert parts[0][1].base is not None                   # views when already ordered
    # unordered input: stable regroup keeps time order within a train
    ev["train_id"] = [8, 5, 8, 0, 5, 8, 6]
    parts = split_by_train(ev)
    assert [t for t, _ in parts] == [0, 5, 6, 8]
    assert [p["x"].tolist() for _, p in parts] == [[3], [1, 4], [6], [0, 2, 5]]
    assert split_by_train(np.zeros(0, EVENT_DTYPE)) == []
