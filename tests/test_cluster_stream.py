"""Results do not depend on arrival order, chunking or threads.

The yardstick is the reference clustering (tpx3lib.cluster.reference) of all hits at
once; the streaming Clusterer must give the same centroids in the same order for any
chunking and any arrival order within its reorder window (hypothesis draws both).
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tpx3lib.cluster import ClusterParams, Clusterer, cluster_hits
from tpx3lib.cluster.reference import reference_cluster_hits
from tpx3lib.cluster.synthetic import make_hits
from tpx3lib.dtypes import CENTROID_DTYPE, TOA_UNIT_NS

REORDER_S = 2e-6
COMPONENTS = ClusterParams(reorder_window_s=REORDER_S, min_size=2)
DBSCAN = ClusterParams.pymepix(reorder_window_s=REORDER_S)


@functools.lru_cache(maxsize=None)
def dataset():
    """Dense-ish hits in 3 events, time sorted, with their reference centroids per method."""
    run = make_hits(n_clusters=250, seed=21, n_events=3, trigger_period_ns=20e3, tof_peaks_ns=(1e3, 3e3),
                    tof_sigma_ns=300.0, sensor=64, noise_hits=40)
    ev = run.hits
    ref = {p.method: reference_cluster_hits(ev, p)[0] for p in (COMPONENTS, DBSCAN)}
    return ev, ref


def arrival_order(ev, seed, reorder_units):
    """A permutation in which no hit arrives more than ``reorder_units`` behind the newest."""
    rng = np.random.default_rng(seed)
    key = ev["toa"] + rng.uniform(0, reorder_units, ev.size)
    return np.argsort(key, kind="stable")


def stream(ev, params, cuts):
    cl = Clusterer(params)
    parts = []
    for lo, hi in zip([0, *cuts], [*cuts, ev.size]):
        parts.append(cl.feed(ev[lo:hi]))
    parts.append(cl.flush())
    assert all(p.dtype == CENTROID_DTYPE for p in parts)
    return np.concatenate(parts), cl


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1),
       cuts=st.lists(st.integers(0, 10_000), max_size=12),
       method=st.sampled_from(["components", "dbscan"]),
       shuffle_fraction=st.sampled_from([0.0, 0.5, 1.0]))
def test_any_chunking_and_order_gives_reference(seed, cuts, method, shuffle_fraction):
    ev, ref = dataset()
    params = COMPONENTS if method == "components" else DBSCAN
    reorder_units = params.reorder_window_units() * shuffle_fraction
    hits = ev[arrival_order(ev, seed, reorder_units)]
    cuts = sorted({c % (ev.size + 1) for c in cuts})
    out, cl = stream(hits, params, cuts)
    np.testing.assert_array_equal(out, ref[method])
    s = cl.stats
    assert s.check() and s.late_hits == 0 and s.hits_pending == 0 and cl.pending_hits == 0
    assert s.hits_in == ev.size and s.clusters_out == out.size and s.hits_clustered == out["size"].sum()


def test_output_comes_early_and_in_order():
    """Finished clusters come out before flush, concatenated output is canonically ordered."""
    ev, ref = dataset()
    cl = Clusterer(COMPONENTS)
    early = [cl.feed(chunk) for chunk in np.array_split(ev, 20)]
    n_early = sum(e.size for e in early)
    assert n_early > 0.5 * ref["components"].size
    out = np.concatenate(early + [cl.flush()])
    np.testing.assert_array_equal(out, ref["components"])
    assert np.all(np.diff(out["toa_first"]) >= 0)


def test_random_order_one_shot():
    """cluster_hits does not care about order at all (no window needed)."""
    ev, ref = dataset()
    perm = np.random.default_rng(3).permutation(ev.size)
    for params in (COMPONENTS, DBSCAN):
        c, lab = cluster_hits(ev[perm], params, return_labels=True)
        np.testing.assert_array_equal(c, ref[params.method])
        c2, lab2 = cluster_hits(ev, params, return_labels=True)
        np.testing.assert_array_equal(lab2[perm], lab)


def test_late_hits_are_counted_not_lost():
    ev, _ = dataset()
    cl = Clusterer(COMPONENTS)
    order = np.argsort(ev["toa"], kind="stable")
    late = order[:5]                 # the 5 earliest hits arrive last
    out = [cl.feed(ev[order[5:]]), cl.feed(ev[late]), cl.flush()]
    s = cl.stats
    assert s.late_hits == 5
    assert s.check() and s.hits_in == ev.size
    assert sum(o["size"].sum() for o in out) == s.hits_clustered


def test_pending_hits_held_back_until_safe():
    """A cluster whose last hit is within reorder + time window of the newest stays pending."""
    ev, _ = dataset()
    order = np.argsort(ev["toa"], kind="stable")
    ev = ev[order]
    cl = Clusterer(COMPONENTS)
    out = cl.feed(ev)
    newest = ev["toa"].max()
    bound = newest - COMPONENTS.reorder_window_units() - COMPONENTS.link_window_units()
    assert np.all(out["toa_first"] < bound)
    assert cl.pending_hits > 0
    assert cl.stats.hits_pending == cl.pending_hits
    assert cl.stats.check()


def test_threads_give_identical_results():
    run = make_hits(n_clusters=8000, seed=4, n_events=40, trigger_period_ns=50e3, tof_peaks_ns=(2e3, 8e3),
                    tof_sigma_ns=1500.0, disorder_ns=300.0)
    ev = run.hits
    assert ev.size > 45_000
    one = cluster_hits(ev, ClusterParams(), return_labels=True)
    for n in (2, 3):
        many = cluster_hits(ev, ClusterParams(n_threads=n), return_labels=True)
        np.testing.assert_array_equal(many[0], one[0])
        np.testing.assert_array_equal(many[1], one[1])
    # streaming with threads too
    out, _ = stream(ev, ClusterParams(n_threads=2, reorder_window_s=400e-9), [ev.size // 3, 2 * ev.size // 3])
    np.testing.assert_array_equal(out, one[0])


@pytest.mark.parametrize("params", [COMPONENTS, DBSCAN], ids=["components", "dbscan"])
def test_pixel_stream(params):
    run = make_hits(n_clusters=150, seed=8, n_events=1, tof_peaks_ns=(2e3,), tof_sigma_ns=500.0,
                    pixel_only=True, disorder_ns=REORDER_S * 1e9 * 0.9)
    out, cl = stream(run.hits, params, [100, 101, 400])
    np.testing.assert_array_equal(out, cluster_hits(run.hits, params))
    assert cl.stats.late_hits == 0
    assert np.all(out["event"] == -1)


def test_reorder_window_units():
    assert COMPONENTS.reorder_window_units() * TOA_UNIT_NS >= REORDER_S * 1e9
