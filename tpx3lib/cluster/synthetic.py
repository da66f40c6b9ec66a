"""Synthetic Timepix3 hits with known cluster truth, for tests and benchmarks.

A simple physical picture: each particle deposits a charge (log-normal, in electrons)
spread as a 2-D Gaussian cloud over the pixel grid; a pixel fires when its share
exceeds the threshold; ToT grows linearly with the charge above threshold (25 ns
steps, 10 bit); ToA is the particle time plus a timewalk that shrinks with ToT
(``walk_a / (tot + walk_b)`` ns), Gaussian jitter and the 1.5625 ns FToA step. A
pixel is dead for its ToT plus ``dead_time_ns`` after a hit: later charge on it is
lost, as in the chip. Particles belong to triggers (events) with a ToF drawn from a
few peaks, like an ion/electron imaging run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from ..dtypes import EVENT_DTYPE, PIXEL_DTYPE, TOA_UNIT_NS

__all__ = ["SyntheticRun", "make_hits", "TRUTH_DTYPE"]

#: Ground truth per generated cluster: event, true centre (pixel index units), true time
#: (25/4096 ns units, before timewalk and jitter), true tof, charge, hits it produced.
TRUTH_DTYPE = np.dtype([
    ("event", "i8"), ("x", "f8"), ("y", "f8"), ("toa", "i8"), ("tof", "i8"),
    ("charge", "f8"), ("size", "i4"),
])

_FTOA_STEP = 256  # 1.5625 ns in 25/4096 ns units


@dataclass
class SyntheticRun:
    """Generated hits (in arrival order) with truth: ``cluster_id[i]`` is the index into
    ``clusters`` of the particle that made hit ``i`` (-1 for noise hits)."""

    hits: np.ndarray
    cluster_id: np.ndarray
    clusters: np.ndarray
    walk_a: float
    walk_b: float

    def walk_ns(self, tot_ns) -> np.ndarray:
        """The timewalk the generator applied to a hit of this ToT (ns)."""
        return self.walk_a / (np.asarray(tot_ns, dtype=np.float64) + self.walk_b)


def make_hits(n_clusters: int = 1000, *, seed: int = 0, n_events: int = 10, trigger_period_ns: float = 1e5,
              tof_peaks_ns=(2e3, 5e3, 12e3), tof_sigma_ns: float = 50.0, sensor: int = 256,
              border: float = 3.0, sigma_px=(0.6, 1.1), charge_mean: float = 20000.0,
              charge_sigma: float = 0.5, threshold_e: float = 600.0, tot_ns_per_e: float = 0.25,
              walk_a: float = 4000.0, walk_b: float = 25.0, jitter_ns: float = 0.5,
              dead_time_ns: float = 475.0, noise_hits: int = 0, disorder_ns: float = 0.0,
              pixel_only: bool = False, t0_units: int = 1 << 40, train_pulses: int = 0) -> SyntheticRun:
    """Generate clusters of hits.

    Occupancy is set by ``n_clusters`` per ``n_events`` triggers and the ToF spread:
    many clusters in one event within a few tens of ns make dense frames where clouds
    touch. ``disorder_ns`` > 0 shuffles the arrival order so that no hit arrives more than
    that behind a later one. ``pixel_only`` returns ``PIXEL_DTYPE`` hits (no trigger).
    """
    rng = np.random.default_rng(seed)
    ev = rng.integers(0, n_events, n_clusters)
    trig_units = t0_units + np.rint(np.arange(n_events) * trigger_period_ns / TOA_UNIT_NS).astype(np.int64)
    peaks = np.asarray(tof_peaks_ns, dtype=np.float64)
    tof_ns = rng.choice(peaks, n_clusters) + rng.normal(0.0, tof_sigma_ns, n_clusters)
    tof_units = np.rint(np.maximum(tof_ns, 0.0) / TOA_UNIT_NS).astype(np.int64)
    cx = rng.uniform(border, sensor - 1 - border, n_clusters)
    cy = rng.uniform(border, sensor - 1 - border, n_clusters)
    sig = rng.uniform(sigma_px[0], sigma_px[1], n_clusters)
    q = charge_mean * np.exp(rng.normal(-0.5 * charge_sigma ** 2, charge_sigma, n_clusters))

    # charge per pixel in a window around each cloud, in batches (vectorised)
    half = int(np.ceil(3.5 * max(sigma_px)))
    offs = np.arange(-half, half + 2)
    parts = []
    for lo in range(0, n_clusters, 20000):
        sl = slice(lo, min(lo + 20000, n_clusters))
        xs = np.floor(cx[sl]).astype(np.int64)[:, None] + offs
        ys = np.floor(cy[sl]).astype(np.int64)[:, None] + offs
        s2 = (sig[sl] * np.sqrt(2.0))[:, None]
        fx = 0.5 * (erf((xs + 0.5 - cx[sl, None]) / s2) - erf((xs - 0.5 - cx[sl, None]) / s2))
        fy = 0.5 * (erf((ys + 0.5 - cy[sl, None]) / s2) - erf((ys - 0.5 - cy[sl, None]) / s2))
        qpix = q[sl, None, None] * fx[:, :, None] * fy[:, None, :]
        inside = (xs >= 0)[:, :, None] & (xs < sensor)[:, :, None] & (ys >= 0)[:, None, :] & (ys < sensor)[:, None, :]
        k, a, b = np.nonzero((qpix > threshold_e) & inside)
        parts.append((k + lo, xs[k, a], ys[k, b], qpix[k, a, b]))
    kk = np.concatenate([p_[0] for p_ in parts]) if parts else np.zeros(0, np.int64)
    px = np.concatenate([p_[1] for p_ in parts]) if parts else np.zeros(0, np.int64)
    py = np.concatenate([p_[2] for p_ in parts]) if parts else np.zeros(0, np.int64)
    qq = np.concatenate([p_[3] for p_ in parts]) if parts else np.zeros(0)
    tot = np.clip(np.floor((qq - threshold_e) * tot_ns_per_e / 25.0) + 1, 1, 1023).astype(np.int64) * 25
    walk = walk_a / (tot + walk_b)
    t_true = trig_units[ev[kk]] + tof_units[kk]
    toa_f = t_true + (walk + rng.normal(0.0, jitter_ns, kk.size)) / TOA_UNIT_NS
    toa = (np.floor(toa_f / _FTOA_STEP) * _FTOA_STEP).astype(np.int64)
    cid = kk
    if noise_hits:
        nev = rng.integers(0, n_events, noise_hits)
        ntof = rng.uniform(0.0, trigger_period_ns * 0.9, noise_hits) / TOA_UNIT_NS
        px = np.concatenate([px, rng.integers(0, sensor, noise_hits)])
        py = np.concatenate([py, rng.integers(0, sensor, noise_hits)])
        tot = np.concatenate([tot, 25 * rng.integers(1, 20, noise_hits)])
        ntoa = ((trig_units[nev] + ntof) // _FTOA_STEP * _FTOA_STEP).astype(np.int64)
        toa = np.concatenate([toa, ntoa])
        cid = np.concatenate([cid, np.full(noise_hits, -1)])
        ev_of_hit = np.concatenate([ev[kk], nev])
    else:
        ev_of_hit = ev[kk]

    # pixel dead time: a pixel ignores charge until ToT + dead time after its last kept hit
    order = np.lexsort((toa, py, px))
    pix = (px * sensor + py)[order]
    t_sorted = toa[order]
    free_at = t_sorted + (tot[order] + dead_time_ns) / TOA_UNIT_NS
    keep = np.ones(order.size, bool)
    for _ in range(100):  # a hit is lost if the previous kept hit on its pixel still blocks it
        prev = np.full(order.size, -1)
        prev_of_all = np.maximum.accumulate(np.where(keep, np.arange(order.size), -1))
        prev[1:] = prev_of_all[:-1]
        has = (prev >= 0)
        blocked = np.zeros(order.size, bool)
        blocked[has] = (pix[prev[has]] == pix[has]) & (t_sorted[has] < free_at[prev[has]])
        new_keep = ~blocked
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    sel = np.sort(order[keep])
    px, py, tot, toa, cid, ev_of_hit = px[sel], py[sel], tot[sel], toa[sel], cid[sel], ev_of_hit[sel]

    # arrival order: time order, disturbed by up to disorder_ns
    key = toa + (rng.uniform(0.0, disorder_ns / TOA_UNIT_NS, toa.size) if disorder_ns > 0 else 0)
    arrival = np.argsort(key, kind="stable")
    px, py, tot, toa, cid, ev_of_hit = (a[arrival] for a in (px, py, tot, toa, cid, ev_of_hit))

    if pixel_only:
        hits = np.zeros(toa.size, PIXEL_DTYPE)
        hits["ftoa"] = 0
    else:
        hits = np.zeros(toa.size, EVENT_DTYPE)
        hits["event"] = ev_of_hit
        hits["train_id"] = (ev_of_hit // train_pulses + 1000) if train_pulses else 0
        hits["tof"] = toa - trig_units[ev_of_hit]
    hits["x"] = px
    hits["y"] = py
    hits["tot"] = tot
    hits["toa"] = toa

    clusters = np.zeros(n_clusters, TRUTH_DTYPE)
    clusters["event"] = ev
    clusters["x"] = cx
    clusters["y"] = cy
    clusters["toa"] = trig_units[ev] + tof_units
    clusters["tof"] = tof_units
    clusters["charge"] = q
    clusters["size"] = np.bincount(cid[cid >= 0], minlength=n_clusters)
    return SyntheticRun(hits, cid, clusters, walk_a, walk_b)
