"""Trigger assignment: late trigger words, disorder, chunking, the window."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tpx3lib.decode.events import EventBuilder
from tpx3lib.dtypes import PIXEL_DTYPE, TDC_DTYPE, TOA_UNIT_S
from tpx3lib.errors import ConfigError

US = int(round(1e-6 / TOA_UNIT_S))  # one microsecond in time units


def pixels(toas, x=1):
    p = np.zeros(len(toas), PIXEL_DTYPE)
    p["toa"] = toas
    p["x"] = x
    p["tot"] = np.arange(len(toas)) % 1000
    return p


def triggers(times, first_counter=10):
    t = np.zeros(len(times), TDC_DTYPE)
    t["time"] = times
    t["tdc"] = 1
    t["rising"] = 1
    t["kind"] = 0x6F
    t["counter"] = first_counter + 2 * np.arange(len(times))
    return t


def run(builder, chunks):
    out = [builder.feed(p, t) for p, t in chunks]
    out.append(builder.flush())
    return np.concatenate(out)


def test_hit_arriving_before_its_trigger_word_gets_that_trigger():
    eb = EventBuilder(window_s=None, reorder_window_s=50e-6)
    # trigger A at 0, trigger B at 100 us; a hit at 105 us arrives BEFORE B's word
    ev = run(eb, [(pixels([105 * US]), triggers([0])), (pixels([]), triggers([100 * US], first_counter=12)),
                  (pixels([400 * US]), None)])
    first = ev[ev["toa"] == 105 * US][0]
    assert first["event"] == 12 and first["tof"] == 5 * US


def test_window_is_inclusive_and_losses_are_counted():
    eb = EventBuilder(window_s=(1e-6, 2e-6), reorder_window_s=0)
    t0 = 1000 * US
    hits = pixels([t0 + US - 1, t0 + US, t0 + 2 * US, t0 + 2 * US + 1, t0 - 1])
    ev = run(eb, [(hits, triggers([t0]))])
    assert sorted(ev["tof"]) == [US, 2 * US]
    assert eb.counters == dict(hits_in=5, events_out=2, before_first_trigger=1, outside_window=2,
                               late_hits=0, triggers=1, triggers_out_of_order=0)


def test_other_tdc_and_edges_are_not_triggers():
    t = triggers([0, 50 * US])
    t["rising"][1] = 0
    eb = EventBuilder(window_s=None)
    ev = run(eb, [(pixels([60 * US]), t)])
    assert ev["event"][0] == 10  # the falling edge at 50 us is not a trigger
    eb2 = EventBuilder(tdc=2, window_s=None)
    run(eb2, [(pixels([60 * US]), t)])
    assert eb2.counters["before_first_trigger"] == 1


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_cuts=st.integers(0, 10))
def test_disorder_within_window_and_chunking_do_not_change_events(seed, n_cuts):
    rng = np.random.default_rng(seed)
    trig_t = np.sort(rng.choice(np.arange(0, 100_000) * US // 10, size=20, replace=False))
    hit_t = np.sort(rng.integers(0, 10_000 * US, size=500))
    # stream in time order, then disorder every word by up to 20 us of arrival
    kinds = np.concatenate([np.zeros(hit_t.size, int), np.ones(trig_t.size, int)])
    times = np.concatenate([hit_t, trig_t])
    order = np.argsort(times + rng.integers(0, 20 * US, size=times.size), kind="stable")
    trig_all = triggers(trig_t)
    hits_all = pixels(hit_t)
    idx_in_kind = np.concatenate([np.arange(hit_t.size), np.arange(trig_t.size)])

    def chunked(cut_positions):
        bounds = np.concatenate([[0], np.sort(cut_positions), [order.size]])
        for a, b in zip(bounds[:-1], bounds[1:]):
            sel = order[a:b]
            yield (hits_all[idx_in_kind[sel][kinds[sel] == 0]], trig_all[idx_in_kind[sel][kinds[sel] == 1]])

    expect = run(EventBuilder(window_s=None, reorder_window_s=1.0), [(hits_all, trig_all)])
    got = run(EventBuilder(window_s=None, reorder_window_s=50e-6),
              chunked(rng.integers(0, order.size, size=n_cuts)))
    np.testing.assert_array_equal(got, expect)
    # independent check of the rule: the latest trigger at or before each hit
    k = np.searchsorted(trig_t, expect["toa"], side="right") - 1
    np.testing.assert_array_equal(expect["event"], trig_all["counter"][k])


def test_late_hits_beyond_the_window_are_counted():
    eb = EventBuilder(window_s=None, reorder_window_s=1e-6)
    run(eb, [(pixels([10 * US]), triggers([0])), (pixels([100 * US]), None), (pixels([20 * US]), None)])
    assert eb.counters["late_hits"] == 1 and eb.counters["events_out"] == 3


def test_bad_configuration():
    with pytest.raises(ConfigError):
        EventBuilder(tdc=3)
    with pytest.raises(ConfigError):
        EventBuilder(window_s=(2e-3, 1e-3))
    with pytest.raises(TypeError):
        EventBuilder().feed(np.zeros(3, np.int64))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(1 << 40), 1 << 40), min_size=1, max_size=300), st.booleans())
def test_stable_time_order_is_numpys_stable_argsort(values, huge_span):
    from tpx3lib.decode.events import _stable_time_order
    t = np.array(values, np.int64)
    t = np.concatenate([t, t[: t.size // 3]])          # ties, which must keep their order
    if huge_span:
        t[0] = -(1 << 61)                               # too wide for packed keys: the fallback
    np.testing.assert_array_equal(_stable_time_order(t), np.argsort(t, kind="stable"))
