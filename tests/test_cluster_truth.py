"""Clustering the simulator's physics (simulators/physics.py) against its ground truth.

Moderate occupancy (flat in time, 1e6 particles/s on one chip): >= 99 % of the
generated clusters are found whole, centroids are well within a pixel of the true
impact, and after timewalk correction the cluster time is within the ToA resolution
(1.5625 ns) of the true arrival time.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

from tpx3lib.cluster import ClusterParams, Clusterer, TimewalkTable, cluster_hits, derive_timewalk
from tpx3lib.dtypes import EVENT_DTYPE, TOA_UNIT_NS

import simulators.physics as physics

FTOA_NS = 1.5625


@functools.lru_cache(maxsize=None)
def simulated():
    model = physics.PhysicsModel(hit_rate_hz=1e6, tof_fraction=0.0, trigger_rate_hz=1000.0, noise_f0_hz=0.0,
                                 hot_pixel_fraction=0.0, seed=11)
    gen = physics.HitGenerator(model)
    truth = gen.generate(0, 40_000 * 5).truth          # 5 ms of board time
    h = truth.hits
    ev = np.zeros(h.size, EVENT_DTYPE)
    for f in ("x", "y", "tot", "chip", "toa", "event"):
        ev[f] = h[f]
    return model, truth, ev


def matched(truth, labels):
    """Generated clusters found whole: (truth rows, centroid indices)."""
    cl = truth.hits["cluster"]
    ok = (cl >= 0) & (labels >= 0)
    pairs = np.unique(np.stack([cl[ok], labels[ok]]), axis=1)
    # one label per truth cluster, one truth cluster per label, and all its hits labelled
    t_ids, t_counts = np.unique(pairs[0], return_counts=True)
    l_ids, l_counts = np.unique(pairs[1], return_counts=True)
    single_t = set(t_ids[t_counts == 1].tolist())
    single_l = set(l_ids[l_counts == 1].tolist())
    n_hits_truth = dict(zip(*np.unique(cl[cl >= 0], return_counts=True)))
    n_hits_label = dict(zip(*np.unique(labels[labels >= 0], return_counts=True)))
    rows, cents = [], []
    row_of = {cid: i for i, cid in enumerate(truth.clusters["id"].tolist())}
    for t, lab in zip(pairs[0].tolist(), pairs[1].tolist()):
        if t in single_t and lab in single_l and n_hits_truth[t] == n_hits_label[lab]:
            rows.append(row_of[t])
            cents.append(lab)
    return np.array(rows, int), np.array(cents, int), len(n_hits_truth)


def test_clusters_found_whole_and_positions():
    model, truth, ev = simulated()
    c, lab = cluster_hits(ev, ClusterParams(), return_labels=True)
    rows, cents, n_truth = matched(truth, lab)
    assert n_truth > 3000
    assert rows.size >= 0.99 * n_truth
    tc = truth.clusters[rows]
    dx = c["x"][cents] - (tc["x"] - 0.5)                 # pixel i spans [i, i+1): centre at i + 0.5
    dy = c["y"][cents] - (tc["y"] - 0.5)
    err = np.hypot(dx, dy)
    assert np.median(err) < 0.15 and np.percentile(err, 95) < 0.5
    assert abs(np.mean(dx)) < 0.05 and abs(np.mean(dy)) < 0.05


@pytest.mark.parametrize("table_from", ["model", "derived"])
def test_time_after_timewalk_within_toa_resolution(table_from):
    model, truth, ev = simulated()
    if table_from == "model":
        table = TimewalkTable.from_model(model.walk_a_ns2, -model.walk_b_ns)
    else:
        table, _ = derive_timewalk(ev)
    c, lab = cluster_hits(ev, ClusterParams(), return_labels=True, timewalk=table)
    rows, cents, _ = matched(truth, lab)
    dt = (c["toa"][cents] - truth.clusters["t"][rows]) * TOA_UNIT_NS
    assert np.median(np.abs(dt)) < FTOA_NS
    assert np.percentile(np.abs(dt), 90) < 2 * FTOA_NS
    raw, lab_raw = cluster_hits(ev, ClusterParams(), return_labels=True)
    rows_r, cents_r, _ = matched(truth, lab_raw)
    dt_raw = (raw["toa"][cents_r] - truth.clusters["t"][rows_r]) * TOA_UNIT_NS
    assert np.median(np.abs(dt_raw)) > 3 * FTOA_NS      # the correction matters


def test_stream_order_of_the_simulated_fifo():
    """The simulator delivers hits with FIFO disorder (within 100 us): streaming in chunks with a
    large enough reorder window gives exactly the one-shot result."""
    model, truth, ev = simulated()
    assert np.count_nonzero(np.diff(ev["toa"]) < 0) > 0.1 * ev.size
    params = ClusterParams(reorder_window_s=model.disorder_window_s * 1.5)
    cl = Clusterer(params)
    out = np.concatenate([cl.feed(part) for part in np.array_split(ev, 17)] + [cl.flush()])
    np.testing.assert_array_equal(out, cluster_hits(ev, params))
    assert cl.stats.late_hits == 0 and cl.stats.check()
