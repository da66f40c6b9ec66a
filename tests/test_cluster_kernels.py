"""The components kernels against their pure-Python twins (tpx3lib.cluster.reference).

link_sum fills one slot (a row of exact integer sums) per cluster while linking; slots
that meet are merged. The slots must hold what the definition gives for the cluster's
hits whatever the arrival order and however the hits were split before merging; the
bounded scans (seam rows, pending rows) must find exactly what a full scan finds; and the
centroid order fix-up must give sort_centroids' order.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tpx3lib.cluster import ClusterParams, Clusterer, cluster_hits, core, kernels
from tpx3lib.cluster.reference import (
    reference_cluster_hits, reference_labels, reference_scan_rows, reference_seam_rows, reference_slot,
)
from tpx3lib.cluster.synthetic import make_hits
from tpx3lib.dtypes import CENTROID_DTYPE, EVENT_DTYPE

INT64_MIN = np.iinfo(np.int64).min


def fields(ev):
    return tuple(ev[f] for f in ("x", "y", "tot", "toa", "tof", "event", "train_id", "chip"))


def run_link_sum(ev, p: ClusterParams, slots=None):
    """link_sum over all rows of ev in one piece: (parent, state, number of slots)."""
    n = ev.size
    px, py = np.zeros(kernels.AXIS_SIZE, bool), np.zeros(kernels.AXIS_SIZE, bool)
    kernels.scan_rows(ev["tot"], ev["x"], ev["y"], ev["toa"], 0, n, p.tot_threshold_ns, INT64_MIN, px, py)
    xcell, xmin, ycell, ymin, size, height = kernels.grid_cells(px, py, p.link_radius())
    head, head_t = np.empty(size, np.int32), np.empty(size, np.int64)
    kernels.reset_grid(head, head_t)
    group, parent = np.empty(n, np.int64), np.empty(n, np.int32)
    chain, next_t = np.empty(n, np.int32), np.empty(n, np.int64)
    state = np.full((n if slots is None else slots, kernels.N_STATE), -7, np.int64)
    stop, used, merged = kernels.link_sum(0, n, 0, *fields(ev), p.tot_threshold_ns, xcell, xmin, ycell, ymin,
                                          height, p.link_radius(), p.link_window_units(), group, parent, chain, next_t,
                                          head, head_t, state, 0, state.shape[0], 0)
    if stop == n:
        assert merged == used - np.count_nonzero(state[:used, kernels.S_SIZE] > 0)
    return stop, parent, state, used


def slot_as_dict(row) -> dict:
    """A slot row in the terms of reference_slot (time sums shifted to the earliest hit)."""
    w = int(row[kernels.S_TOT_SUM])

    def offset_sum(hi, lo, first, seen):
        return int(row[hi]) * 2**24 + int(row[lo]) - (int(row[first]) - int(row[seen])) * w

    return dict(
        first_toa=int(row[kernels.S_FIRST_TOA]), first_tof=int(row[kernels.S_FIRST_TOF]),
        first_xy=int(row[kernels.S_FIRST_XY]), train=int(np.int64(row[kernels.S_TRAIN]).astype(np.uint64)),
        event=int(row[kernels.S_EVENT]), chip=int(row[kernels.S_CHIP]), last_toa=int(row[kernels.S_LAST_TOA]),
        size=int(row[kernels.S_SIZE]), tot_sum=w, best_tot=int(row[kernels.S_BEST_TOT]),
        x_sum=int(row[kernels.S_X_SUM]), y_sum=int(row[kernels.S_Y_SUM]),
        toa_offset_sum=offset_sum(kernels.S_TOA_HI, kernels.S_TOA_LO, kernels.S_FIRST_TOA, kernels.S_SEEN_TOA),
        tof_offset_sum=offset_sum(kernels.S_TOF_HI, kernels.S_TOF_LO, kernels.S_FIRST_TOF, kernels.S_SEEN_TOF),
    )


def root_slot(parent, k):
    while parent[k] >= 0:
        k = parent[k]
    return -parent[k] - 1


def check_slots(ev, p, parent, state):
    """Every cluster of the definition has exactly one slot, holding its reference sums."""
    labels = reference_labels(ev, p)
    seen = set()
    for lab in np.unique(labels[labels >= 0]):
        rows = np.flatnonzero(labels == lab)
        slots = {root_slot(parent, int(k)) for k in rows}
        assert len(slots) == 1
        s = slots.pop()
        assert s not in seen
        seen.add(s)
        assert slot_as_dict(state[s]) == reference_slot(ev, rows)
    assert np.all(parent[labels == -1] == kernels.NOT_CLUSTERED)


@pytest.mark.parametrize("order", ["time", "reversed", "shuffled"])
def test_link_sum_slots_match_twin(order):
    run = make_hits(n_clusters=120, seed=3, n_events=2, tof_peaks_ns=(1000.0,), tof_sigma_ns=30.0, sensor=40,
                    noise_hits=20, train_pulses=1)
    ev = run.hits.copy()
    ev["tot"][::11] = 0                       # some rows below the threshold
    ev["train_id"] += (np.arange(ev.size) % 3).astype(np.uint64)  # train ID must follow the earliest hit
    perm = {"time": np.arange(ev.size), "reversed": np.arange(ev.size)[::-1],
            "shuffled": np.random.default_rng(1).permutation(ev.size)}[order]
    ev = ev[perm]
    p = ClusterParams(radius=1, time_window_ns=200.0)
    stop, parent, state, used = run_link_sum(ev, p)
    assert stop == ev.size
    check_slots(ev, p, parent, state)
    # slots not holding a cluster were merged away
    live = {root_slot(parent, k) for k in range(ev.size) if parent[k] != kernels.NOT_CLUSTERED}
    assert all(state[s, kernels.S_SIZE] == 0 for s in range(used) if s not in live)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), spread=st.sampled_from([1, 10**5, 2**24 - 3, 3 * 2**24 + 11, 10**11]),
       split=st.floats(0.0, 1.0))
def test_merge_slot_equals_adding_the_hits(seed, spread, split):
    """Two slots built from any split of one cluster's hits (first-seen times far apart, so
    the 24-bit high/low parts carry) merge into the slot of all the hits."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    ev = np.zeros(n, EVENT_DTYPE)
    pixel = rng.permutation(49)[:n]           # distinct pixels: the earliest hit is well defined
    ev["x"] = 100 + pixel // 7
    ev["y"] = 50 + pixel % 7
    ev["tot"] = rng.integers(1, 65535, n)
    ev["toa"] = 10**15 + rng.integers(0, spread, n)
    ev["tof"] = ev["toa"] - 10**15 + rng.integers(-5, 5, n)
    ev["event"] = 4
    ev["train_id"] = rng.integers(0, 2**63, n).astype(np.uint64) * 2
    p = ClusterParams(radius=6, time_window_ns=1e9)      # everything links
    cut = int(round(split * n))
    parts = [ev[:cut], ev[cut:]] if 0 < cut < n else [ev]
    state = np.zeros((2, kernels.N_STATE), np.int64)
    for i, part in enumerate(parts):
        _, _, st_part, used = run_link_sum(part, p)
        assert used == 1
        state[i] = st_part[0]
    if len(parts) == 2:
        kernels.merge_slot(state, 0, 1)
        assert state[1, kernels.S_SIZE] == 0
    assert slot_as_dict(state[0]) == reference_slot(ev, np.arange(n))


def test_link_sum_stops_when_slots_run_out():
    """Isolated hits need one slot each: link_sum stops at the first hit without a slot."""
    ev = np.zeros(10, EVENT_DTYPE)
    ev["x"] = np.arange(10) * 5
    ev["tot"] = 100
    ev["toa"] = 1000
    stop, parent, state, used = run_link_sum(ev, ClusterParams(), slots=4)
    assert (stop, used) == (4, 4)


def test_region_overflow_is_redone_with_room():
    """Mostly isolated hits overflow the first slot regions (sized for clusters of >= 4 hits)."""
    rng = np.random.default_rng(5)
    n = 60_000
    ev = np.zeros(n, EVENT_DTYPE)
    ev["x"] = rng.integers(0, 256, n)
    ev["y"] = rng.integers(0, 256, n)
    ev["tot"] = 50
    ev["toa"] = np.sort(rng.integers(0, 10**12, n))
    core._WS.slot_ratio = core._SLOT_RATIO
    one = cluster_hits(ev, ClusterParams(), return_labels=True)
    assert core._WS.slot_ratio > core._SLOT_RATIO          # the regions did overflow
    core._WS.slot_ratio = core._SLOT_RATIO
    two = cluster_hits(ev, ClusterParams(n_threads=2), return_labels=True)
    assert one[0].size > 0.9 * n
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    ref = reference_cluster_hits(ev[:3000], ClusterParams())[0]
    np.testing.assert_array_equal(cluster_hits(ev[:3000]), ref)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 300), disorder=st.sampled_from([0, 5, 400]),
       window=st.sampled_from([0, 3, 50]))
def test_scan_and_seam_rows_twins(seed, n, disorder, window):
    rng = np.random.default_rng(seed)
    toa = np.cumsum(rng.integers(0, 20, n)) + rng.integers(0, disorder + 1, n)
    tot = rng.integers(0, 3, n)
    x, y = rng.integers(0, 70, n).astype(np.uint16), rng.integers(60000, 65536, n).astype(np.uint16)
    px, py = np.zeros(kernels.AXIS_SIZE, bool), np.zeros(kernels.AXIS_SIZE, bool)
    late_before = int(np.median(toa))
    got = kernels.scan_rows(tot.astype(np.uint16), x, y, toa, 0, n, 0, late_before, px, py)
    want = reference_scan_rows(tot, x, y, toa, 0, late_before)
    assert tuple(got) == want[:5]
    assert set(np.flatnonzero(px)) == want[5] and set(np.flatnonzero(py)) == want[6]
    # seam between two pieces, on positions of two arrays (a: the first n_a, b: the rest)
    clustered = tot > 0
    parent = np.where(clustered, -1, kernels.NOT_CLUSTERED).astype(np.int32)
    mid = int(rng.integers(0, n + 1))
    n_a = int(rng.integers(0, n + 1))
    before = clustered[:mid]
    after = clustered[mid:]
    t_first_after = toa[mid:][after].min() if after.any() else np.iinfo(np.int64).max
    t_last_before = toa[:mid][before].max() if before.any() else INT64_MIN
    lag = reference_scan_rows(tot, x, y, toa, 0, 0)[3]
    got = kernels.seam_rows(0, mid, n, n_a, toa[:n_a].copy(), toa[n_a:].copy(), parent, window, t_first_after,
                            t_last_before, lag)
    np.testing.assert_array_equal(got, reference_seam_rows(toa, clustered, 0, mid, n, window))
    # rows of selected slots: every clustered position is its own slot here
    parent = np.where(clustered, -(np.arange(n) + 1), kernels.NOT_CLUSTERED).astype(np.int32)
    selected = rng.random(n) < 0.3
    sel_rows = np.flatnonzero(selected & clustered)
    t_min = toa[sel_rows].min() if sel_rows.size else np.iinfo(np.int64).max
    got = kernels.rows_of_slots(n_a, toa[:n_a].copy(), toa[n_a:].copy(), parent, selected, t_min, lag)
    np.testing.assert_array_equal(got, sel_rows)


def random_centroids(rng, n):
    c = np.zeros(n, CENTROID_DTYPE)
    c["toa_first"] = np.sort(rng.integers(0, n // 3 + 1, n))     # many ties
    for f, hi in (("event", 3), ("chip", 2), ("x", 3), ("y", 3), ("tof_first", 2), ("size", 2), ("tot_sum", 2),
                  ("tot_max", 2), ("toa", 2), ("tof", 2)):
        c[f] = rng.integers(0, hi, n)
    return c


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(0, 200), shuffle=st.booleans())
def test_order_fixup_matches_sort_centroids(seed, n, shuffle):
    rng = np.random.default_rng(seed)
    c = random_centroids(rng, n)
    if shuffle:
        c = c[rng.permutation(n)]
    want = c[core.sort_centroids(c)]
    state = kernels.order_state(c)
    assert state == (0 if np.array_equal(c, want) else 1 if np.all(np.diff(c["toa_first"]) >= 0) else 2)
    got, order = core._in_canonical_order(c.copy())
    np.testing.assert_array_equal(got, want)
    if order is not None:
        np.testing.assert_array_equal(c[order], want)


def test_stream_with_empty_and_below_threshold_chunks():
    run = make_hits(n_clusters=200, seed=9, n_events=2, tof_peaks_ns=(1e3, 3e3), tof_sigma_ns=200.0)
    ev = run.hits
    p = ClusterParams(reorder_window_s=1e-6)
    dead = ev[:50].copy()
    dead["tot"] = 0
    cl = Clusterer(p)
    parts = [cl.feed(ev[:300]), cl.feed(ev[:0]), cl.feed(dead), cl.feed(ev[300:]), cl.feed(ev[:0]), cl.flush()]
    np.testing.assert_array_equal(np.concatenate(parts), cluster_hits(ev, p))
    assert cl.stats.check() and cl.stats.hits_below_tot == 50 and cl.stats.hits_in == ev.size + 50
