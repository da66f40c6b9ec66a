"""A small deterministic Timepix3 stream generator for the process tests (and its sanity checks).

Triggers (TDC1 rising + falling, hardware counter +1 per edge, wrapping at 4096),
clusters of 3..8 neighbouring pixels some 5..150 us after each trigger, noise
hits, TDC2 edges, heartbeats every 5 ms, the 30-bit pixel-time wrap in the middle of the run,
and pixels arriving up to 30 us late (FIFO disorder). The words come from
simulators.encode, and the truth (decoded times) comes with them, so tests can
compare against expectations computed independently of the decoder.
"""
from __future__ import annotations

import numpy as np

from simulators.encode import encode_pixels_from_time, heartbeat_words, tdc_time_fields
from tpx3lib.dtypes import TOA_UNIT_S

US = int(round(1e-6 / TOA_UNIT_S))
TICKS_PER_S = 40_000_000


def _tdc_words(kind: int, counter: np.ndarray, t_units: np.ndarray):
    coarse, step, fine, dec = tdc_time_fields(t_units)
    w = ((np.uint64(kind) << np.uint64(56)) | ((counter.astype(np.uint64) & np.uint64(0xFFF)) << np.uint64(44))
         | ((coarse.astype(np.uint64) & np.uint64(0xFFFFFFFF)) << np.uint64(12))
         | (step.astype(np.uint64) << np.uint64(9)) | (fine.astype(np.uint64) << np.uint64(5)))
    return w, dec


def make_stream(n_triggers: int = 2000, seed: int = 0, period_us: float = 200.0, clusters_per_trigger: float = 3.0,
                noise_per_trigger: float = 2.0, jitter_us: float = 30.0, first_trigger: int = 0,
                run_triggers: int | None = None):
    """Return (words uint64, truth dict) for ``n_triggers`` triggers.

    A long run can be made in pieces: ``first_trigger`` is the number of the piece's
    first trigger and ``run_triggers`` the length of the whole run (times continue
    from piece to piece; the 30-bit wrap is in the middle of the run).
    """
    rng = np.random.default_rng(seed + 1000 * first_trigger)
    period = int(period_us * US)
    run = run_triggers or n_triggers
    t_run = ((1 << 34) - run * period // 4096 // 2) * 4096          # a 30-bit (and 32-bit) wrap mid-run
    k = np.arange(first_trigger, first_trigger + n_triggers)
    start = t_run + first_trigger * period
    last = first_trigger + n_triggers >= run
    end = t_run + (first_trigger + n_triggers + (2 if last else 0)) * period
    trig_t = t_run + k * period + rng.integers(0, 50 * US, n_triggers)
    rise_w, rise_dec = _tdc_words(0x6F, 2 * k, trig_t)
    fall_w, fall_dec = _tdc_words(0x6A, 2 * k + 1, trig_t + US)
    # clusters
    n_cl = rng.poisson(clusters_per_trigger, n_triggers)
    cl_trig = np.repeat(np.arange(n_triggers), n_cl)
    cl_t = trig_t[cl_trig] + rng.integers(5 * US, 150 * US, cl_trig.size)
    cl_x = rng.integers(3, 252, cl_trig.size)
    cl_y = rng.integers(3, 252, cl_trig.size)
    sizes = rng.integers(3, 9, cl_trig.size)
    offsets = np.array([(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)])
    perm = np.argsort(rng.random((cl_trig.size, 9)), axis=1)      # distinct pixels of a 3x3 patch
    take = np.arange(9) < sizes[:, None]
    pick = offsets[perm][take]                                     # (hits, 2), cluster by cluster
    owner = np.repeat(np.arange(cl_trig.size), sizes)
    hx = [cl_x[owner] + pick[:, 0]]
    hy = [cl_y[owner] + pick[:, 1]]
    ht = [cl_t[owner] + rng.integers(0, 100 * 4096 // 25, owner.size)]   # within 100 ns
    htrig = [cl_trig[owner]]
    n_noise = int(noise_per_trigger * n_triggers)
    hx.append(rng.integers(0, 256, n_noise))
    hy.append(rng.integers(0, 256, n_noise))
    ht.append(rng.integers(start, end, n_noise))
    htrig.append(np.full(n_noise, -1))
    hx, hy, ht = (np.concatenate(a).astype(np.int64) for a in (hx, hy, ht))
    htot = rng.integers(1, 120, hx.size).astype(np.int64)                  # 25 ns counts
    pix_w, _, _, pix_toa = encode_pixels_from_time(hx, hy, ht, htot, 0xB)
    # TDC2 edges and heartbeats
    t2 = np.sort(rng.integers(start, end, n_triggers // 2))
    t2_w, _ = _tdc_words(0x6E, np.arange(t2.size) + first_trigger // 2, t2)
    hb_t = np.arange(t_run - 2 * US, end, 5_000 * US)       # first heartbeat before any data
    hb_t = hb_t[hb_t >= (start - 2 * US if first_trigger == 0 else start)]
    hb_w = np.array([w for t in hb_t for w in heartbeat_words(int(t) // 4096)], dtype=np.uint64)
    hb_key = np.repeat(hb_t, 4)
    words = np.concatenate([pix_w, rise_w, fall_w, t2_w, hb_w])
    key = np.concatenate([ht + rng.integers(0, int(jitter_us * US), ht.size), trig_t, trig_t + US, t2, hb_key])
    order = np.argsort(key, kind="stable")
    truth = {"trig_time": rise_dec, "trig_counter": 2 * k, "pix_x": hx, "pix_y": hy, "pix_toa": pix_toa,
             "pix_tot_ns": htot * 25, "pix_trigger": np.concatenate(htrig), "fall_time": fall_dec}
    return words[order], truth


def expected_events(truth, window_s=(0.0, 1e-3)):
    """Hits that fall in the window of the latest trigger at or before them, computed from the truth."""
    lo, hi = (int(round(v / TOA_UNIT_S)) for v in window_s)
    idx = np.searchsorted(truth["trig_time"], truth["pix_toa"], side="right") - 1
    has = idx >= 0
    tof = truth["pix_toa"] - truth["trig_time"][np.maximum(idx, 0)]
    keep = has & (tof >= lo) & (tof <= hi)
    return {"x": truth["pix_x"][keep], "y": truth["pix_y"][keep], "tof": tof[keep],
            "tot": truth["pix_tot_ns"][keep], "trigger": idx[keep], "toa": truth["pix_toa"][keep]}


def test_generator_is_deterministic_and_disordered():
    w1, t1 = make_stream(200, seed=3)
    w2, _ = make_stream(200, seed=3)
    assert np.array_equal(w1, w2)
    hdr = (w1 >> np.uint64(56)).astype(np.uint8)
    assert np.count_nonzero(hdr == 0x6F) == 200 and np.count_nonzero(hdr == 0x44) >= 8
    pix = w1[(hdr >> 4) == 0xB]
    coarse = ((pix & np.uint64(0xFFFF)) << np.uint64(14)) | ((pix >> np.uint64(30)) & np.uint64(0x3FFF))
    d = np.diff(coarse.astype(np.int64))
    assert np.count_nonzero(d < 0) > 0.1 * d.size            # out of order, like real data
    assert np.any(d < -(1 << 29))                              # the 30-bit wrap happens inside
