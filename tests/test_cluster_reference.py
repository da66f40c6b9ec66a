"""The fast clustering against the slow, obviously correct reference (tpx3lib.cluster.reference).

Synthetic data with known truth (tpx3lib.cluster.synthetic): sparse and dense frames
where clouds touch, several events, PIXEL and EVENT input, multi-chip coordinates,
both methods and several parameter sets. Centroids must be identical to the last bit
(both sum exact integers) and the hit partitions the same.
"""
from __future__ import annotations

import numpy as np
import pytest

from tpx3lib.cluster import (
    LABEL_BELOW_TOT, LABEL_NOISE, LABEL_SMALL_CLUSTER, ClusterParams, ClusterStats, cluster_hits,
)
from tpx3lib.cluster.kernels import axis_map
from tpx3lib.cluster.reference import reference_axis_map, reference_cluster_hits
from tpx3lib.cluster.synthetic import make_hits
from tpx3lib.dtypes import CENTROID_DTYPE, EVENT_DTYPE, PIXEL_DTYPE


def assert_same_clustering(ev, fast, ref):
    """Identical centroid arrays and the same partition of hits (label numbers may differ)."""
    (fc, fl), (rc, rl) = fast, ref
    assert fc.dtype == CENTROID_DTYPE
    assert fc.size == rc.size
    np.testing.assert_array_equal(fc, rc)
    np.testing.assert_array_equal(fl < 0, rl < 0)
    np.testing.assert_array_equal(fl[fl < 0], rl[rl < 0])
    pairs = np.unique(np.stack([fl[fl >= 0], rl[rl >= 0]]), axis=1)
    # a bijection between fast and reference labels
    assert np.unique(pairs[0]).size == pairs.shape[1] == np.unique(pairs[1]).size
    # fast labels index the centroid of their own hits
    assert set(np.unique(fl[fl >= 0])) == set(range(fc.size))
    assert np.array_equal(np.bincount(fl[fl >= 0], minlength=fc.size), fc["size"])


DENSE = dict(n_clusters=250, n_events=2, tof_peaks_ns=(1000.0,), tof_sigma_ns=40.0, sensor=40, noise_hits=60)
SPARSE = dict(n_clusters=200, n_events=5, tof_peaks_ns=(1e3, 4e3, 9e3), tof_sigma_ns=500.0, noise_hits=30)

PARAMS = [
    ClusterParams(),
    ClusterParams(radius=2, time_window_ns=50.0, min_size=3, tot_threshold_ns=50),
    ClusterParams(radius=0, time_window_ns=1000.0),
    ClusterParams(time_window_ns=0.0),
    ClusterParams.pymepix(),
    ClusterParams.pymepix(eps=1.5, min_samples=5, min_size=2, tot_threshold_ns=25),
    ClusterParams.pymepix(eps=3.0, min_samples=2, tof_scale=5e6),
]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"{p.method}-r{p.radius}-w{p.time_window_ns}-e{p.eps}")
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_matches_reference(params, kind):
    run = make_hits(seed=11, **(DENSE if kind == "dense" else SPARSE))
    ev = run.hits
    fast = cluster_hits(ev, params, return_labels=True)
    assert_same_clustering(ev, fast, reference_cluster_hits(ev, params))
    if kind == "dense" and params == ClusterParams():
        # the dense frame really has clouds that touch: fewer clusters than particles
        assert fast[0].size < np.unique(run.cluster_id[run.cluster_id >= 0]).size


def test_pixel_input_multichip_coordinates():
    """PIXEL_DTYPE (no trigger) with chips side by side at large offsets (x, y up to 65535)."""
    run = make_hits(seed=5, pixel_only=True, **DENSE)
    px = run.hits.copy()
    n = px.size
    px["chip"] = np.arange(n) % 3
    px["x"] = px["x"].astype(np.int64) + np.array([0, 256, 65535 - 60])[px["chip"]]
    px["y"] = px["y"].astype(np.int64) + np.array([0, 40000, 65535 - 60])[px["chip"]]
    assert px.dtype == PIXEL_DTYPE
    p = ClusterParams()
    fast = cluster_hits(px, p, return_labels=True)
    ev = np.zeros(n, EVENT_DTYPE)
    for f in ("x", "y", "tot", "chip", "toa"):
        ev[f] = px[f]
    ev["event"] = -1
    assert_same_clustering(ev, fast, reference_cluster_hits(ev, p))
    assert np.all(fast[0]["event"] == -1) and np.all(fast[0]["tof"] == 0)


def test_chips_and_events_never_share_a_cluster():
    ev = np.zeros(4, EVENT_DTYPE)
    ev["x"], ev["y"], ev["tot"], ev["toa"] = 10, 10, 100, 1000
    ev["x"][1] = 11
    ev["chip"] = [0, 0, 1, 0]
    ev["event"] = [5, 5, 5, 6]
    c, lab = cluster_hits(ev, return_labels=True)
    assert c.size == 3
    assert lab[0] == lab[1] and len({lab[1], lab[2], lab[3]}) == 3


def test_criterion_edges_exactly():
    """Chebyshev radius and |dt| <= window are inclusive; one unit more separates."""
    p = ClusterParams(radius=1, time_window_ns=25.0)   # 4096 units
    w = p.link_window_units()
    assert w == 4096
    ev = np.zeros(6, EVENT_DTYPE)
    ev["tot"] = 50
    ev["x"] = [0, 1, 3, 50, 51, 60]
    ev["y"] = [0, 1, 1, 0, 0, 0]
    ev["toa"] = [0, w, 0, 0, w + 1, 0]
    c, lab = cluster_hits(ev, p, return_labels=True)
    assert lab[0] == lab[1]                 # diagonal neighbour, dt == window
    assert len(set(lab.tolist())) == 5      # x=3 is 2 px away; dt = window + 1 splits 50/51


def test_labels_codes_and_accounting():
    run = make_hits(seed=2, **SPARSE)
    ev = run.hits.copy()
    ev["tot"][::7] = 0
    for p in (ClusterParams(min_size=4, tot_threshold_ns=25), ClusterParams.pymepix(tot_threshold_ns=25, min_size=2)):
        stats = ClusterStats()
        c, lab = cluster_hits(ev, p, return_labels=True, stats=stats)
        assert stats.check()
        assert stats.hits_in == ev.size
        assert stats.hits_below_tot == np.count_nonzero(ev["tot"] <= 25) == np.count_nonzero(lab == LABEL_BELOW_TOT)
        assert stats.hits_clustered == c["size"].sum() == np.count_nonzero(lab >= 0)
        assert stats.hits_in_small_clusters == np.count_nonzero(lab == LABEL_SMALL_CLUSTER)
        ref_lab = reference_cluster_hits(ev, p.__class__(**{**p.to_dict(), "min_size": 1}))[1]
        ids, sizes = np.unique(ref_lab[ref_lab >= 0], return_counts=True)
        assert stats.clusters_dropped_small == np.count_nonzero(sizes < p.min_size)
        assert stats.hits_noise == np.count_nonzero(lab == LABEL_NOISE)
        assert c["size"].min() >= p.min_size
        assert stats.clusters_out == c.size


def test_centroid_fields_by_hand():
    """A hand-made cluster: ToT-weighted means, earliest hit, max ToT, train ID carried."""
    ev = np.zeros(3, EVENT_DTYPE)
    ev["event"] = 7
    ev["train_id"] = 2**63 + 5
    ev["chip"] = 2
    ev["x"] = [10, 11, 11]
    ev["y"] = [20, 20, 21]
    ev["tot"] = [100, 300, 100]
    ev["toa"] = [1_000_000 + 100, 1_000_000, 1_000_000 + 700]
    ev["tof"] = ev["toa"] - 900_000
    c = cluster_hits(ev[::-1])
    assert c.size == 1
    r = c[0]
    assert (r["event"], r["train_id"], r["chip"], r["size"]) == (7, 2**63 + 5, 2, 3)
    assert r["x"] == (10 * 100 + 11 * 300 + 11 * 100) / 500
    assert r["y"] == (20 * 400 + 21 * 100) / 500
    assert r["toa_first"] == 1_000_000 and r["tof_first"] == 100_000
    assert r["toa"] == 1_000_000 + (100 * 100 + 700 * 100) / 500
    assert r["tof"] == 100_000 + (100 * 100 + 700 * 100) / 500
    assert (r["tot_sum"], r["tot_max"]) == (500, 300)
    assert r["tot_mean"] == np.float32(500 / 3)


def test_axis_map_twin():
    rng = np.random.default_rng(0)
    coord = np.concatenate([rng.integers(0, 70, 200), rng.integers(60000, 65536, 50), [65535, 0]]).astype(np.uint16)
    idx = np.arange(coord.size)
    for radius in (0, 1, 3):
        mapping, extent = axis_map(coord, idx, radius)
        twin = reference_axis_map(coord, radius)
        assert {v: int(mapping[v]) for v in twin} == twin
        assert extent == max(twin.values()) + 1
        vals = np.array(sorted(twin))
        close = np.abs(vals[:, None] - vals[None, :]) <= radius
        mapped = np.array([twin[v] for v in vals])
        assert np.array_equal(close, np.abs(mapped[:, None] - mapped[None, :]) <= radius)


def test_empty_and_all_below_threshold():
    assert cluster_hits(np.zeros(0, EVENT_DTYPE)).size == 0
    ev = np.zeros(5, EVENT_DTYPE)
    c, lab = cluster_hits(ev, return_labels=True)
    assert c.size == 0 and np.all(lab == LABEL_BELOW_TOT)


def test_bad_input_types():
    with pytest.raises(TypeError):
        cluster_hits(np.zeros(3))
    with pytest.raises(TypeError):
        cluster_hits(np.zeros(3, [("x", "u2"), ("y", "u2")]))
    with pytest.raises(TypeError):
        cluster_hits(np.zeros(3, EVENT_DTYPE), params={"radius": 1})
