"""The hit generator: words decode to the truth, and the physics has the properties it promises."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from simulators.clock import BoardClock
from simulators.physics import (DAC_DEFAULTS, ChipState, HitGenerator, PhysicsModel, TofPeak)
from simulators.truth import Truth
from test_sim_data_refdecoder import decode_ref

S = 40_000_000          # ticks per second
U = 4096                # time units per tick


def run(gen, t0, seconds, n_slices=4):
    """Generate ``seconds`` from ``t0`` in slices; return (words per chip, truth)."""
    edges = np.linspace(t0, t0 + int(seconds * S), n_slices + 1).astype(np.int64)
    parts = [gen.generate(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    words = [np.concatenate([p.words[c] for p in parts]) for c in range(gen.n_chips)]
    return words, Truth.concat([p.truth for p in parts])


def quiet(**kw):
    """A model without the flat background, noise or triggers unless asked for."""
    base = dict(hit_rate_hz=0.0, trigger_rate_hz=0.0, hot_pixel_fraction=0.0, heartbeat_period_s=1.0)
    base.update(kw)
    return PhysicsModel(**base)


def assert_decodes_to_truth(words, truth, chip=0):
    t = truth.for_chip(chip)
    px, td, hb = decode_ref(words)
    assert len(px) == len(t.hits)
    for a, b in (("x", "x"), ("y", "y"), ("toa", "toa"), ("tot_ns", "tot"), ("ftoa", "ftoa")):
        np.testing.assert_array_equal(px[a], t.hits[b])
    np.testing.assert_array_equal(td["time"], t.triggers["time"])
    np.testing.assert_array_equal(td["counter"], t.triggers["counter"])
    np.testing.assert_array_equal(td["kind"], t.triggers["kind"])
    np.testing.assert_array_equal(hb, t.heartbeats["timer"])


def test_stream_decodes_to_truth_hit_for_hit():
    gen = HitGenerator(PhysicsModel(hit_rate_hz=50_000, tdc2_rate_hz=200, seed=1))
    words, truth = run(gen, 0, 2.2, n_slices=7)
    assert len(truth.hits) > 200_000
    assert_decodes_to_truth(words[0], truth)
    assert len(truth.heartbeats) == 3                       # at 0, 1 and 2 s


def test_crossing_the_30_bit_wrap():
    start = BoardClock.ticks_before_wrap(0.25)
    gen = HitGenerator(PhysicsModel(hit_rate_hz=50_000, trigger_rate_hz=20, seed=2))
    words, truth = run(gen, start, 0.5, n_slices=5)
    coarse = truth.hits["toa"] // U
    assert coarse.min() < 1 << 30 < coarse.max()           # hits on both sides of the wrap
    px, _, _ = decode_ref(words[0])
    assert px["spidr"].min() == 0 and px["spidr"].max() == 0xFFFF   # the 16-bit SPIDR time wrapped
    assert_decodes_to_truth(words[0], truth)


def test_tdc_and_timer_beyond_32_bits():
    start = (1 << 33) + (1 << 32) - 20 * S                  # 20 s before the TDC's 32-bit wrap, timer > 2^33
    gen = HitGenerator(quiet(hit_rate_hz=1000, trigger_rate_hz=200, heartbeat_period_s=0.1))
    words, truth = run(gen, start, 0.4, n_slices=2)
    px, td, hb = decode_ref(words[0])
    assert np.all(hb >> 32 == 2)                            # 0x45 carries the high timer bits
    assert_decodes_to_truth(words[0], truth)


def test_trigger_rate_counters_and_edges():
    gen = HitGenerator(quiet(trigger_rate_hz=10.0, trigger_width_s=10e-6))
    _, truth = run(gen, 0, 3.05, n_slices=3)
    tr = truth.triggers
    rising, falling = tr[tr["rising"] == 1], tr[tr["rising"] == 0]
    assert len(rising) == 31 and len(falling) == 31          # 1 ms + k * 100 ms, k = 0..30
    period = np.diff(rising["time"]) * 25 / 4096 * 1e-9
    np.testing.assert_allclose(period, 0.1, atol=1e-9)
    # each edge increments the counter: rising n, falling n+1, next rising n+2
    np.testing.assert_array_equal(tr["counter"], np.arange(1, len(tr) + 1))
    np.testing.assert_array_equal(falling["counter"], rising["counter"] + 1)
    width = (falling["time"] - rising["time"]) * 25 / 4096
    np.testing.assert_allclose(width, 10_000, atol=0.3)     # ns
    assert np.all(tr["tdc"] == 1) and set(tr["kind"]) == {0x6F, 0x6A}


def test_trigger_counter_wraps_at_12_bits():
    gen = HitGenerator(quiet(trigger_rate_hz=2000.0, heartbeat_period_s=0.5))
    words, truth = run(gen, 0, 1.1, n_slices=3)
    tr = truth.triggers
    assert tr["counter"].max() > 4096
    _, td, _ = decode_ref(words[0])
    assert td["counter12"].max() == 4095 and td["counter12"].min() == 0
    np.testing.assert_array_equal(td["counter12"], tr["counter"] & 0xFFF)
    np.testing.assert_array_equal(td["counter"], tr["counter"])


def test_tdc2_edges_have_their_own_counter():
    gen = HitGenerator(quiet(trigger_rate_hz=10, tdc2_rate_hz=500, seed=4))
    _, truth = run(gen, 0, 1.0)
    t2 = truth.triggers[truth.triggers["tdc"] == 2]
    t1 = truth.triggers[truth.triggers["tdc"] == 1]
    assert 400 < len(t2) / 2 < 600
    np.testing.assert_array_equal(t2["counter"], np.arange(1, len(t2) + 1))
    np.testing.assert_array_equal(t1["counter"], np.arange(1, len(t1) + 1))


def test_tof_peaks_after_each_trigger():
    peaks = (TofPeak(50e-6, 1e-6, 2.0, (60.0, 60.0), 5.0), TofPeak(300e-6, 3e-6, 1.0, (190.0, 190.0), 5.0))
    gen = HitGenerator(quiet(hit_rate_hz=20_000, tof_fraction=0.75, tof_peaks=peaks, trigger_rate_hz=10, seed=5))
    _, truth = run(gen, 0, 2.0)
    c = truth.clusters
    rising = truth.triggers[(truth.triggers["tdc"] == 1) & (truth.triggers["rising"] == 1)]
    trig_time = dict(zip(rising["counter"], rising["time"]))
    tof_s = np.array([(t - trig_time[k]) * 25 / 4096 * 1e-9 for t, k in zip(c["t"], c["trigger"]) if k >= 0])
    peak = c["peak"][c["trigger"] >= 0]
    # share of clusters: 75 % in peaks, split 2:1
    assert abs(np.mean(c["peak"] >= 0) - 0.75) < 0.02
    assert abs(np.mean(peak == 0) / np.mean(peak >= 0) - 2 / 3) < 0.03
    for k, p in enumerate(peaks):
        sel = tof_s[peak == k]
        assert abs(sel.mean() - p.tof_s) < 4 * p.sigma_s / np.sqrt(len(sel))
        assert abs(sel.std() / p.sigma_s - 1) < 0.1
        # the spots are where they should be
        cx = c["x"][c["trigger"] >= 0][peak == k]
        assert abs(cx.mean() - p.center[0]) < 1.0
    # every cluster's event is the latest trigger before it (the one that made it, here)
    assert np.all(c["event"][c["trigger"] >= 0] == c["trigger"][c["trigger"] >= 0])
    # and the flat background is flat: per 100 ms bin, counts agree with Poisson
    bg = c[c["peak"] < 0]
    counts = np.histogram(bg["t"] / U / S, bins=20, range=(0, 2))[0]
    assert counts.std() < 3 * np.sqrt(counts.mean())


def test_hit_events_are_the_latest_rising_edge_before_their_toa():
    gen = HitGenerator(PhysicsModel(hit_rate_hz=20_000, trigger_rate_hz=50, seed=6))
    _, truth = run(gen, 0, 1.0)
    r = truth.triggers[(truth.triggers["tdc"] == 1) & (truth.triggers["rising"] == 1)]
    h = truth.hits
    i = np.searchsorted(r["time"], h["toa"], side="right") - 1
    np.testing.assert_array_equal(h["event"], np.where(i >= 0, r["counter"][np.maximum(i, 0)], -1))
    assert np.any(h["event"] == -1)                          # before the first trigger (1 ms)


def test_cluster_shapes_and_sizes():
    gen = HitGenerator(quiet(hit_rate_hz=50_000, seed=7))
    _, truth = run(gen, 0, 0.5)
    c, h = truth.clusters, truth.hits
    assert len(c) > 20_000
    sizes = c["size"]
    assert 3.0 < sizes.mean() < 6.0                          # a few pixels share the charge
    assert np.mean(sizes == 1) < 0.1 and sizes.max() <= 81
    # hits of a cluster are near its true centre, and their ToT-weighted centroid recovers it
    ok = h["cluster"] >= 0
    idx = np.searchsorted(c["id"], h["cluster"][ok])
    dx = h["x"][ok] + 0.5 - c["x"][idx]
    dy = h["y"][ok] + 0.5 - c["y"][idx]
    assert np.abs(dx).max() <= 4.5 and np.abs(dy).max() <= 4.5
    w = h["tot"][ok].astype(float)
    cen_x = np.bincount(idx, w * (h["x"][ok] + 0.5)) / np.maximum(np.bincount(idx, w), 1)
    big = (sizes >= 3) & (c["x"] > 3) & (c["x"] < 253)
    assert np.median(np.abs(cen_x[big] - c["x"][big])) < 0.2
    # the pixel with the most charge (largest ToT) is the one containing the centre, mostly
    assert np.bincount(idx, minlength=len(c)).sum() == ok.sum()


def test_tot_and_timewalk_follow_the_documented_formulas():
    m = PhysicsModel(time_jitter_ns=0.0)
    # ToT(q) = round(a q + b - c / (q - (thr - d))): by hand, q = 2000 e, thr = 700 e
    expect = round(5.0 * 2.0 + 10.0 - 4.0 / (2.0 - (0.7 - 0.4)))
    assert m.tot_counts(2000.0, 700.0) == expect == 18
    assert m.tot_counts(1e7, 700.0) == 1023
    assert m.tot_counts(700.01, 700.0) == round(5.0 * 0.7 + 10.0 - 4.0 / 0.4) == 4   # just above threshold
    q = np.linspace(800, 60_000, 500)
    assert np.all(np.diff(m.tot_counts(q, 700.0)) >= 0)     # monotonic in charge
    assert m.timewalk_ns(50.0) == pytest.approx(5000 / 100)
    # in generated data: ToA - cluster time = timewalk(ToT) + the FToA rounding (uniform 0..1.5625 ns)
    gen = HitGenerator(quiet(hit_rate_hz=50_000, time_jitter_ns=0.0, seed=8))
    _, truth = run(gen, 0, 0.4)
    h, c = truth.hits, truth.clusters
    ok = h["cluster"] >= 0
    idx = np.searchsorted(c["id"], h["cluster"][ok])
    delay_ns = (h["toa"][ok] - c["t"][idx]) * 25 / 4096
    walk = m.timewalk_ns(h["tot"][ok])
    resid = delay_ns - walk
    assert resid.min() >= -0.5 * 25 / 4096 - 1e-9 and resid.max() < 1.5625 + 0.01
    assert abs(resid.mean() - 1.5625 / 2) < 0.05


def test_masked_pixels_never_fire():
    mask = np.zeros((256, 256), bool)
    mask[100:140, 50:200] = True
    mask[::7, :] = True
    st = ChipState(mask=mask, dacs=dict(DAC_DEFAULTS, Vthreshold_fine=440))   # 500 e: hot pixels fire
    gen = HitGenerator(PhysicsModel(hit_rate_hz=100_000, seed=9, hot_pixel_fraction=0.005), [st])
    _, truth = run(gen, 0, 0.3)
    h = truth.hits
    assert len(h) > 50_000 and np.any(h["cluster"] < 0)
    assert not np.any(mask[h["x"], h["y"]])


def _noise_hits(fine, seconds=0.2, coarse=6, **kw):
    st = ChipState()
    st.dacs.update(Vthreshold_coarse=coarse, Vthreshold_fine=fine)
    gen = HitGenerator(quiet(seed=10, **kw), [st])
    _, truth = run(gen, 0, seconds, n_slices=1)
    assert np.all(truth.hits["cluster"] == -1)
    return len(truth.hits)


def test_noise_rises_as_threshold_falls():
    # hole collection: the threshold is (baseline 1450 - 160 * coarse - fine) * 10 e, so raising
    # the DAC towards the baseline lowers the threshold
    counts = [_noise_hits(f) for f in (420, 440, 445, 450, 454)]   # 700, 500, 450, 400, 360 electrons
    assert counts[0] == 0                                    # 10 sigma: silent
    assert all(a < b for a, b in zip(counts, counts[1:])), counts
    assert counts[-1] > 5000
    # and with the coarse DAC: one coarse step is 160 fine steps
    st = ChipState()
    st.dacs.update(Vthreshold_coarse=7, Vthreshold_fine=420 - 160 + 40)
    assert HitGenerator(quiet(), [st]).model.threshold_e(st) == PhysicsModel().threshold_e(ChipState()) - 400


def test_hot_pixels_fire_first_as_the_threshold_falls():
    # at 600 e (fine 430) only the ~13 hot pixels (200 e lower) fire; the others stay silent
    gen = HitGenerator(quiet(hot_pixel_fraction=2e-4, seed=11), [ChipState(dacs=dict(DAC_DEFAULTS,
                                                                                      Vthreshold_fine=430))])
    _, truth = run(gen, 0, 0.5, n_slices=1)
    pix = np.unique(truth.hits["x"].astype(int) * 256 + truth.hits["y"])
    assert 1 <= len(pix) <= 40
    assert _noise_hits(430, seconds=0.5) == 0                    # without hot pixels: nothing


# ---- the threshold DACs (spec 2: Vthreshold_fine 0..511 in 0.5 mV steps, Vthreshold_coarse 0..15 in 80 mV
# steps, i.e. 160 fine steps; GENCONFIG bit 0 = polarity, 0 positive = holes, as the SoPhy fixture).
# Hand-worked: threshold (holes) = (1450 - 160 * coarse - fine) * 10 e.

#: Vthreshold_coarse / Vthreshold_fine of the real SoPhy fixture (shared/fixtures/README)
FIXTURE_COARSE, FIXTURE_FINE = 6, 150


def _rice_chip_rate(thr_e, m=PhysicsModel()):
    """The documented chip noise rate for a uniform threshold (no dispersion, no hot pixels):
    65536 * min(f0 * exp(-thr^2 / (2 noise^2)), max_pixel_rate), capped at max_noise_rate."""
    per_pixel = min(m.noise_f0_hz * np.exp(-0.5 * (max(thr_e, 0.0) / m.noise_e) ** 2), m.max_pixel_rate_hz)
    return min(65536 * per_pixel, m.max_noise_rate_hz)


def test_threshold_direction_holes_and_electrons():
    m = PhysicsModel()
    fixture = ChipState(dacs=dict(DAC_DEFAULTS, Vthreshold_coarse=FIXTURE_COARSE, Vthreshold_fine=FIXTURE_FINE))
    assert m.threshold_e(fixture) == (1450 - 960 - 150) * 10 == 3400          # hole collection
    assert m.threshold_e(ChipState()) == (1450 - 960 - 420) * 10 == 700        # defaults 6 / 420
    # holes: raising the DAC towards the baseline lowers the threshold; beyond it, it is negative
    thr = [m.threshold_e(ChipState(dacs=dict(DAC_DEFAULTS, Vthreshold_fine=f))) for f in (150, 420, 480, 490, 500)]
    assert thr == [3400, 700, 100, 0, -100]
    # electrons (GENCONFIG polarity 1): mirrored, the threshold rises with the DAC
    el = [m.threshold_e(ChipState(polarity=1, dacs=dict(DAC_DEFAULTS, Vthreshold_coarse=7, Vthreshold_fine=f)))
          for f in (330, 400, 511)]
    assert el == [0, 700, 1810]
    assert m.threshold_e(dataclasses.replace(fixture, polarity=1)) == -3400    # wrong side: all noise


def test_fixture_dacs_give_a_quiet_chip(data_dir):
    from tpx3lib.config import load_spx
    cfg = load_spx(data_dir / "W0028_H06_50V.spx")
    assert (cfg.dacs["Vthreshold_coarse"], cfg.dacs["Vthreshold_fine"]) == (FIXTURE_COARSE, FIXTURE_FINE)
    st = ChipState(mask=cfg.mask.copy(), dacs=dict(cfg.dacs))
    gen = HitGenerator(PhysicsModel(hit_rate_hz=0.0, trigger_rate_hz=0.0, seed=20), [st])   # default noise, hot pixels
    assert gen.derived(0).noise_rate_hz < 1.0
    _, truth = run(gen, 0, 5.0, n_slices=5)
    assert len(truth.hits) <= 10                        # "a few noise hits per second at most": here none expected


def test_default_dacs_give_a_quiet_chip():
    from simulators.spidr_board import SimulatedSpidrBoard
    board_state = SimulatedSpidrBoard(port=0).chip_state(0)      # what the board powers up with (not started)
    assert (board_state.dacs["Vthreshold_coarse"], board_state.dacs["Vthreshold_fine"]) == (6, 420)
    assert board_state.polarity == 0
    gen = HitGenerator(PhysicsModel(hit_rate_hz=0.0, trigger_rate_hz=0.0, seed=21), [board_state])
    assert gen.derived(0).noise_rate_hz < 1.0
    _, truth = run(gen, 0, 5.0, n_slices=5)
    assert len(truth.hits) <= 10


def test_noise_ramps_steeply_as_the_threshold_nears_the_baseline():
    fines = list(range(420, 521, 5))                     # 700 e down to the baseline (fine 490) and past it
    rates = []
    for f in fines:
        st = ChipState(dacs=dict(DAC_DEFAULTS, Vthreshold_fine=f))
        gen = HitGenerator(quiet(threshold_dispersion_e=0.0), [st])
        thr = (1450 - 960 - f) * 10
        rates.append(gen.derived(0).noise_rate_hz)
        assert rates[-1] == pytest.approx(_rice_chip_rate(thr), rel=1e-9, abs=1e-12)
    assert all(a <= b for a, b in zip(rates, rates[1:]))          # monotonic towards the baseline
    r = dict(zip(fines, rates))
    assert r[420] < 1e-6 and r[440] > 0.1 and r[450] > 1e3 and r[460] > 1e6   # 700, 500, 400, 300 e
    assert all(r[f + 5] > 5 * r[f] for f in range(420, 460, 5))    # steep: x5 or more per 50 e
    assert r[490] == r[520] == 80e6                                 # at/after the baseline: readout limit
    # and the generated noise hits follow: counts in a slice agree with rate * time (Poisson)
    for f in (450, 455, 460):
        st = ChipState(dacs=dict(DAC_DEFAULTS, Vthreshold_fine=f))
        gen = HitGenerator(quiet(threshold_dispersion_e=0.0, seed=f), [st])
        seconds = min(1.0, 2e5 / r[f])
        _, truth = run(gen, 0, seconds, n_slices=1)
        expect = r[f] * int(seconds * S) / S
        assert abs(len(truth.hits) - expect) < 5 * np.sqrt(expect) + 2, (f, len(truth.hits), expect)
    # with dispersion and hot pixels (the defaults) the ramp is still monotonic
    full = [HitGenerator(quiet(hot_pixel_fraction=2e-4), [ChipState(dacs=dict(DAC_DEFAULTS, Vthreshold_fine=f))])
            .derived(0).noise_rate_hz for f in fines]
    assert all(a <= b for a, b in zip(full, full[1:]))


def test_masked_pixels_stay_silent_in_a_noise_flood(data_dir):
    from tpx3lib.config import load_spx
    mask = load_spx(data_dir / "W0028_H06_50V.spx").mask.copy()       # its 160 masked pixels
    st = ChipState(mask=mask, dacs=dict(DAC_DEFAULTS, Vthreshold_fine=490))   # threshold at the baseline
    gen = HitGenerator(quiet(), [st])
    assert gen.derived(0).noise_rate_hz == 80e6
    _, truth = run(gen, 0, 0.004, n_slices=2)
    h = truth.hits
    assert len(h) > 200_000
    assert not np.any(mask[h["x"], h["y"]])
    fired = np.zeros((256, 256), bool)
    fired[h["x"], h["y"]] = True
    assert fired[~mask].mean() > 0.9                    # everything else fires


def test_slice_end_keeps_slices_small_inside_tof_bursts():
    # 1 M clusters/s, 80 % of them in ToF peaks after 10 Hz triggers: 80 k clusters per trigger
    gen = HitGenerator(PhysicsModel(hit_rate_hz=1_000_000, trigger_rate_hz=10, seed=24))
    t, end, limit = 0, int(0.25 * S), 20_000
    parts, lengths = [], []
    while t < end:
        e = gen.slice_end(t, min(end, t + S // 100), limit)
        assert t < e <= min(end, t + S // 100)
        parts.append(gen.generate(t, e))
        lengths.append(e - t)
        t = e
    n = np.array([p.n_hits for p in parts])
    assert n.max() <= 2 * limit, n.max()                    # an expectation, so some room: never 10x
    assert min(lengths) < S // 1000                          # inside the bursts slices shrank below 1 ms
    assert max(lengths) == S // 100                          # between them they stay 10 ms long
    words = np.concatenate([p.words[0] for p in parts])
    assert_decodes_to_truth(words, Truth.concat([p.truth for p in parts]))   # still one continuous stream


def test_fifo_disorder_about_a_quarter_backwards():
    gen = HitGenerator(PhysicsModel(hit_rate_hz=1_000_000, tof_fraction=0.0, seed=12))
    words, truth = run(gen, 0, 0.05, n_slices=5)
    toa = truth.hits["toa"]
    back = np.mean(np.diff(toa) < 0)
    assert 0.20 < back < 0.28, back
    # bounded: no hit comes more than disorder_depth words late, nor > window later than its time
    order = np.argsort(toa, kind="stable")
    late = np.arange(len(toa)) - np.argsort(order)
    assert late.max() <= 10_000 + 100
    running_max = np.maximum.accumulate(toa)
    assert np.max(running_max - toa) <= 100e-6 / (25e-9 / 4096) + 1


def test_triggers_keep_their_order_but_hits_pass_them():
    gen = HitGenerator(PhysicsModel(hit_rate_hz=200_000, tof_fraction=0.0, trigger_rate_hz=200, seed=13))
    words, truth = run(gen, 0, 0.5)
    px, td, _ = decode_ref(words[0])
    assert np.all(np.diff(td["time"]) > 0)                  # TDC words in time order
    k = np.searchsorted(td["index"], px["index"])           # TDC words before each hit word
    nxt = k < len(td)
    before = np.sum(px["toa"][nxt] > td["time"][k[nxt]])     # hit word before a trigger it follows in time
    prv = k > 0
    after = np.sum(px["toa"][prv] < td["time"][k[prv] - 1])  # hit word after a trigger it precedes
    assert before > 0 and after > 0


def test_chip_state_changes_take_effect_between_slices():
    states = [ChipState()]
    gen = HitGenerator(quiet(hot_pixel_fraction=0.0), lambda i: states[i], n_chips=1)
    assert len(gen.generate(0, S // 10).truth.hits) == 0
    states[0] = dataclasses.replace(states[0], dacs=dict(DAC_DEFAULTS, Vthreshold_fine=450))   # 400 e
    assert len(gen.generate(S // 10, S // 5).truth.hits) > 100
    states[0].mask[:] = True                                 # in-place mask change
    assert len(gen.generate(S // 5, S // 5 + S // 10).truth.hits) == 0


def test_polarity_bias_mode_and_disabled_chips():
    m = PhysicsModel(hit_rate_hz=20_000, hot_pixel_fraction=0.0, seed=14)
    # electron collection front end (threshold 700 e above the baseline) on a hole-collecting sensor
    wrong = ChipState(polarity=1, dacs=dict(DAC_DEFAULTS, Vthreshold_coarse=7, Vthreshold_fine=400))
    nobias = ChipState(bias_enabled=False)
    toa_only = ChipState(operation_mode=2)
    itot = ChipState(operation_mode=4)
    off = ChipState(enabled=False)
    gen = HitGenerator(m, [ChipState(), wrong, nobias, toa_only, itot, off])
    words, truth = run(gen, 0, 0.2, n_slices=2)
    n = [len(truth.for_chip(c).hits) for c in range(6)]
    assert n[0] > 10_000 and n[1] == 0 and n[2] == 0 and n[5] == 0 and len(words[5]) == 0
    assert len(truth.for_chip(1).triggers) == len(truth.for_chip(0).triggers) > 0
    assert len(truth.for_chip(5).triggers) == 0
    px, _, _ = decode_ref(words[3])
    assert len(px) > 10_000 and np.all(px["tot_ns"] == 0) and np.all(px["header"] == 0xB)
    assert_decodes_to_truth(words[3], truth, chip=3)
    px, _, _ = decode_ref(words[4])
    assert len(px) > 10_000 and np.all(px["header"] == 0xA) and np.all(truth.for_chip(4).hits["toa"] == -1)


def test_several_chips_are_independent_and_each_decodes():
    gen = HitGenerator(PhysicsModel(hit_rate_hz=20_000, seed=15), n_chips=3)
    words, truth = run(gen, 0, 0.3)
    for c in range(3):
        assert_decodes_to_truth(words[c], truth, chip=c)
    assert not np.array_equal(truth.for_chip(0).hits["x"][:100], truth.for_chip(1).hits["x"][:100])


def test_same_seed_same_words_and_restart_after_a_jump():
    def make():
        return HitGenerator(PhysicsModel(hit_rate_hz=30_000, seed=16))
    a, b = make(), make()
    for t0, t1 in ((0, S // 10), (S // 10, S // 5), (5 * S, 5 * S + S // 10)):   # the last one jumps
        wa, ta = a.generate(t0, t1)
        wb, tb = b.generate(t0, t1)
        np.testing.assert_array_equal(wa[0], wb[0])
    # after the jump the schedules restarted there: a heartbeat at the new start, triggers 1 ms later
    assert ta.heartbeats["timer"][0] == 5 * S
    assert ta.triggers["time"][0] // U == 5 * S + S // 1000
    assert ta.triggers["counter"][0] > 1                    # counters carried on


def test_rates_scale_from_a_few_hits_per_second():
    gen = HitGenerator(quiet(hit_rate_hz=5.0, seed=17))
    _, truth = run(gen, 0, 4.0, n_slices=40)
    assert 5 <= len(truth.clusters) <= 40


def test_chip_state_register_helpers():
    st = ChipState()
    st.apply_genconfig(0x1 | 0x4 | 0x8 | 0x40)       # negative polarity, Event+iToT, gray, superpixel
    assert st.polarity == 1 and st.operation_mode == 4
    bits = np.zeros((2, 256), np.uint8)
    bits[0, 5] = 1 | (15 << 1)                        # masked, trim 15
    bits[1, 7] = 1 << 5                               # test bit
    st.set_pixel_config_bits(bits, columns=[10, 11])
    assert st.mask[10, 5] and st.trim[10, 5] == 15 and st.test[11, 7] and not st.mask[11, 7]
    assert st.pixel_config_bits()[10, 5] == 31 and st.pixel_config_bits()[0, 0] == 8 << 1
    assert st.mask.sum() == 1


def test_threaded_generation_gives_the_same_words():
    out = []
    for threads in (1, 2):
        gen = HitGenerator(PhysicsModel(hit_rate_hz=2_000_000, tof_fraction=0.0, seed=18), threads=threads)
        try:
            out.append(gen.generate(0, S // 50))           # 40 k clusters: split in two
        finally:
            gen.close()
    np.testing.assert_array_equal(out[0].words[0], out[1].words[0])
    np.testing.assert_array_equal(out[0].truth.hits, out[1].truth.hits)
    np.testing.assert_array_equal(out[0].truth.clusters, out[1].truth.clusters)


def test_injected_triggers_get_counters_and_tof_clusters():
    peaks = (TofPeak(20e-6, 1e-6, 1.0),)
    gen = HitGenerator(quiet(hit_rate_hz=10_000, trigger_rate_hz=0.0, tof_peaks=peaks, tof_fraction=1.0, seed=19))
    gen.generate(0, S // 10)
    for t in (S // 10 + 1000, S // 10 + S // 20):              # two train starts
        gen.inject_trigger(t)
    words, truth = gen.generate(S // 10, S // 5)
    r = truth.triggers[truth.triggers["rising"] == 1]
    np.testing.assert_array_equal(r["time"] // U, [S // 10 + 1000, S // 10 + S // 20])
    np.testing.assert_array_equal(truth.triggers["counter"], [1, 2, 3, 4])
    assert set(truth.clusters["trigger"]) == {1, 3}            # ToF clusters follow each
    assert_decodes_to_truth(words[0], truth)
