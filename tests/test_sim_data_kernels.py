"""The generator's numba kernels against their numpy twins, and the random numbers they draw."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from simulators import kernels as K
from simulators.physics import PhysicsModel


def test_inverse_normal_cdf_accuracy():
    p = np.concatenate([np.linspace(1e-12, 1 - 1e-12, 100_001), [1e-300, 1e-16, 0.02425, 0.97575]])
    rel = np.abs(K.ndtri_np(p) - special.ndtri(p)) / np.maximum(1.0, np.abs(special.ndtri(p)))
    assert rel.max() < 2e-9


def test_counter_rng_is_uniform_and_normal():
    u = K.rng_uniform_np(12345, np.arange(200_000))
    assert 0 < u.min() and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    z0, z1 = K.rng_normal2_np(999, np.arange(100_000))
    assert stats.kstest(z0, "norm").pvalue > 1e-3 and stats.kstest(z1, "norm").pvalue > 1e-3
    assert abs(np.corrcoef(z0, z1)[0, 1]) < 0.02


def _clusters(n, seed, noise_share=0.2):
    rng = np.random.default_rng(seed)
    cx = rng.uniform(-1, 257, n)              # some partly off the chip
    cy = rng.uniform(-1, 257, n)
    q = rng.uniform(500, 30000, n)
    s = rng.uniform(0.2, 2.0, n)
    t = np.sort(rng.integers(0, 1 << 40, n))
    noise = rng.random(n) < noise_share       # noise entries: sigma 0, a pixel and its charge
    cx[noise] = rng.integers(0, 256, noise.sum()) + 0.5
    cy[noise] = rng.integers(0, 256, noise.sum()) + 0.5
    s[noise] = 0.0
    q[noise] = 800.0
    return cx, cy, q, s, t


def _thresholds(seed):
    rng = np.random.default_rng(seed)
    thr = rng.normal(700, 35, 65536)
    thr[rng.random(65536) < 0.05] = np.inf    # masked
    return thr


@pytest.mark.parametrize("seed", [1, 2])
def test_expand_clusters_equals_numpy_twin(seed):
    cx, cy, q, s, t = _clusters(400, seed)
    thr = _thresholds(seed)
    m = PhysicsModel(max_cluster_radius_px=5)
    p = m.kernel_params()
    key = 0xDEADBEEF + seed
    cap = 400 * 121
    out = [np.empty(cap, np.uint16) for _ in range(3)] + [np.empty(cap, np.int64) for _ in range(2)]
    size = np.zeros(400, np.uint16)
    n, nxt = K.expand_clusters(cx, cy, q, s, t, 7, key, thr, p, 0, *out, size)
    assert nxt == 400
    ref = K.expand_clusters_np(cx, cy, q, s, t, 7, key, thr, p)
    for got, exp in zip([o[:n] for o in out], ref[:5]):
        np.testing.assert_array_equal(got, exp)
    np.testing.assert_array_equal(size, ref[5])
    # physics sanity: no masked pixel fires, every hit is on the chip, ToT in range
    x, y = ref[0].astype(int), ref[1].astype(int)
    noise_hit = s[ref[4]] <= 0
    assert np.all(np.isfinite(thr[x * 256 + y]) | noise_hit)
    assert ref[2].min() >= 1 and ref[2].max() <= 1023


def test_expand_clusters_resumes_when_output_is_full():
    cx, cy, q, s, t = _clusters(300, 3)
    thr = _thresholds(3)
    p = PhysicsModel().kernel_params()
    ref = K.expand_clusters_np(cx, cy, q, s, t, 0, 5, thr, p)
    parts, first = [], 0
    size = np.zeros(300, np.uint16)
    while first < 300:
        out = [np.empty(200, np.uint16) for _ in range(3)] + [np.empty(200, np.int64) for _ in range(2)]
        n, first = K.expand_clusters(cx, cy, q, s, t, 0, 5, thr, p, first, *out, size)
        parts.append([o[:n] for o in out])
    for i in range(5):
        np.testing.assert_array_equal(np.concatenate([pp[i] for pp in parts]), ref[i])


def _anchors(rng, n_anchor, span):
    keys = np.sort(rng.integers(0, span, n_anchor))
    counts = rng.choice([1, 4], n_anchor)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    words = (np.uint64(0x6F) << np.uint64(56)) + np.arange(counts.sum(), dtype=np.uint64)
    return keys.astype(np.int64), start, counts.astype(np.int64), words


@pytest.mark.parametrize("window,depth", [(10**12, 50), (3000, 10_000), (0, 10)])
def test_assemble_stream_equals_numpy_twin(window, depth):
    rng = np.random.default_rng(window % 97 + depth)
    nh = 3000
    hk = np.sort(rng.integers(0, 1_000_000, nh)).astype(np.int64)
    hw = np.arange(nh, dtype=np.uint64) | (np.uint64(0xB) << np.uint64(60))
    ak, ast, acn, aw = _anchors(rng, 40, 1_000_000)
    delay = np.where(rng.random(nh) < 0.3, rng.random(nh), -1.0)
    w1, o1 = K.assemble_stream(hk, hw, ak, ast, acn, aw, delay, window, depth)
    w2, o2 = K.assemble_stream_np(hk, hw, ak, ast, acn, aw, delay, window, depth)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(o1, o2)
    # nothing lost or invented; anchors in their order; hits moved only forward, by <= depth items
    assert len(w1) == nh + acn.sum()
    is_hit = (w1 >> np.uint64(60)) == 0xB
    np.testing.assert_array_equal(np.sort(o1), np.arange(nh))
    np.testing.assert_array_equal(w1[~is_hit], aw[np.concatenate([np.arange(s, s + c) for s, c in zip(ast, acn)])])
    pos_of_hit = np.empty(nh, np.int64)
    pos_of_hit[o1] = np.arange(nh)
    # the undelayed hits keep their relative order
    stay = delay < 0
    assert np.all(np.diff(pos_of_hit[stay]) > 0)
    if window == 0:
        # nothing within the window to pass: no hit moves past one with a larger key
        assert np.all(np.diff(hk[o1]) >= 0)


def test_finish_stream_equals_numpy_twin_in_every_mode():
    rng = np.random.default_rng(11)
    n = 4000
    hx = rng.integers(0, 256, n).astype(np.uint16)
    hy = rng.integers(0, 256, n).astype(np.uint16)
    htot = rng.integers(1, 1024, n).astype(np.uint16)
    ht = np.sort(rng.integers(0, 1 << 45, n)) + rng.integers(0, 2000, n)   # nearly sorted
    ak, ast, acn, aw = _anchors(rng, 20, 1 << 45)
    delay = np.where(rng.random(n) < 0.29, rng.random(n), -1.0)
    for mode in (0, 2, 4):
        a = K.finish_stream(hx, hy, htot, ht, mode, ak, ast, acn, aw, delay, 10**9, 10_000)
        b = K.finish_stream_np(hx, hy, htot, ht, mode, ak, ast, acn, aw, delay, 10**9, 10_000)
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def test_stable_argsort_both_paths():
    rng = np.random.default_rng(2)
    nearly = np.sort(rng.integers(0, 10**9, 50_000)) + rng.integers(0, 10**4, 50_000)
    shuffled = rng.integers(0, 1000, 50_000)          # many ties, far from ordered: falls back
    for keys in (nearly, shuffled):
        np.testing.assert_array_equal(K.stable_argsort(keys), np.argsort(keys, kind="stable"))
