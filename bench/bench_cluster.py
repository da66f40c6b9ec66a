"""Clustering speed: connected components (1 and 2 threads, one shot and streaming), our DBSCAN
(pymepix mode) and scikit-learn's DBSCAN as pymepix runs it, on the same synthetic data.

Data: an ion-imaging-like run from :mod:`tpx3lib.cluster.synthetic` - 10 kHz triggers,
~200 particles per trigger in four ToF peaks (sigma 1.5 us), Gaussian charge clouds of
~9 pixels (ToT up to several us), i.e. ~18 Mhits/s on average and far more inside the
peaks - tiled in time to the requested size. Wall-clock rates and CPU time per hit
(``time.process_time``: all threads of the process), each the best of ``--repeat``; on a
shared machine the CPU figure is the steadier one (other jobs take cores away from the
threads, not CPU time from the work).

Prints ``BENCH <name> <value> <unit> [ratio_to_<baseline> <r>]``; the baseline is
scikit-learn DBSCAN (pymepix features, eps 2, min_samples 3, per-trigger chunks of
~6500 hits as pymepix does) measured in the same run on a subset of the same hits.

Usage: python bench/bench_cluster.py [--hits 4e6] [--repeat 5] [--sklearn-hits 60000] [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from tpx3lib.cluster import ClusterParams, Clusterer, cluster_hits, pymepix_labels
from tpx3lib.cluster.synthetic import make_hits
from tpx3lib.dtypes import toa_seconds


def bench(name: str, value: float, unit: str, **ratios) -> None:
    extra = "".join(f" ratio_to_{k} {v:.3g}" for k, v in ratios.items())
    print(f"BENCH {name} {value:.4g} {unit}{extra}", flush=True)


def make_run(n_hits: int, seed: int = 1, disorder_ns: float = 0.0) -> np.ndarray:
    """At least ``n_hits`` hits: one generated block repeated later in time (new events)."""
    period_ns = 1e5
    block = make_hits(60_000, seed=seed, n_events=300, trigger_period_ns=period_ns,
                      tof_peaks_ns=(5e3, 12e3, 20e3, 35e3), tof_sigma_ns=1500.0,
                      disorder_ns=disorder_ns).hits
    reps = max(1, -(-n_hits // block.size))
    span = int(round(300 * period_ns / (25 / 4096)))
    parts = []
    for r in range(reps):
        b = block.copy()
        b["toa"] += r * span
        b["event"] += r * 300
        parts.append(b)
    return np.concatenate(parts)


def best_time(fn, repeat: int, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def best_wall_cpu(fn, repeat: int) -> tuple[float, float]:
    """Best wall-clock time and best CPU time (all threads of the process) over ``repeat`` runs."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


def sklearn_pymepix_rate(ev: np.ndarray, chunk_limit: int = 6500):
    """Hits/s of sklearn DBSCAN on pymepix's features, chunked by trigger as pymepix does."""
    try:
        from sklearn.cluster import DBSCAN
    except ImportError:
        return None, None
    shot = ev["event"]
    x = ev["x"].astype(np.float64)
    y = ev["y"].astype(np.float64)
    tof = toa_seconds(ev["tof"])
    labels = np.empty(ev.size, np.int64)
    t0 = time.perf_counter()
    order = np.argsort(shot, kind="stable")
    bounds = np.flatnonzero(np.r_[True, shot[order][1:] != shot[order][:-1], True])
    start = 0
    next_label = 0
    while start < bounds.size - 1:
        stop = start + 1
        while stop < bounds.size - 1 and bounds[stop] - bounds[start] < chunk_limit:
            stop += 1
        sel = order[bounds[start]:bounds[stop]]
        feats = np.column_stack((shot[sel] * 2.0 * 1000, x[sel], y[sel], tof[sel] * 1.7e7))
        lab = DBSCAN(eps=2.0, min_samples=3, metric="euclidean", n_jobs=1).fit(feats).labels_
        labels[sel] = np.where(lab >= 0, lab + next_label, -1)
        next_label += int(lab.max()) + 1 if lab.size else 0
        start = stop
    dt = time.perf_counter() - t0
    return ev.size / dt, labels


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of hits whose (cluster or noise) assignment maps one to one between two labellings."""
    na, nb = a < 0, b < 0
    same_noise = na & nb
    both = ~na & ~nb
    pairs, counts = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    ua, ca = np.unique(pairs[0], return_counts=True)
    ub, cb = np.unique(pairs[1], return_counts=True)
    good_a = set(ua[ca == 1].tolist())
    good_b = set(ub[cb == 1].tolist())
    ok = np.array([p in good_a and q in good_b for p, q in zip(pairs[0], pairs[1])])
    return (same_noise.sum() + counts[ok].sum()) / a.size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hits", type=float, default=4e6, help="hits to cluster (default 4e6)")
    ap.add_argument("--repeat", type=int, default=5, help="timing repeats, best taken (default 5)")
    ap.add_argument("--sklearn-hits", type=int, default=60_000, help="subset for scikit-learn DBSCAN")
    ap.add_argument("--chunk", type=int, default=1_000_000, help="chunk size of the streaming run")
    ap.add_argument("--quick", action="store_true", help="small run (1e6 hits, 1 repeat)")
    args = ap.parse_args(argv)
    if args.quick:
        args.hits, args.repeat, args.sklearn_hits = 1e6, 1, 20_000

    t0 = time.perf_counter()
    print("# load average before: %.2f %.2f %.2f (2-core machine: other work slows every figure)" % os.getloadavg(),
          flush=True)
    ev = make_run(int(args.hits))
    n = ev.size
    sizes = np.bincount(cluster_hits(ev[:200_000], ClusterParams(n_threads=2))["size"])
    mean_size = (np.arange(sizes.size) * sizes).sum() / sizes.sum()
    rate_hz = n / (toa_seconds(ev["toa"].max() - ev["toa"].min()))
    print(f"# {n} hits, mean cluster size {mean_size:.1f}, mean hit rate {rate_hz / 1e6:.1f} Mhits/s, "
          f"generated in {time.perf_counter() - t0:.1f} s", flush=True)

    # warm up (numba compile / cache load, workspace buffers)
    for p in (ClusterParams(), ClusterParams(n_threads=2), ClusterParams.pymepix()):
        cluster_hits(ev[:50_000], p)

    # baseline: scikit-learn DBSCAN as pymepix runs it
    sub = ev[: args.sklearn_hits]
    sk_rate, sk_labels = sklearn_pymepix_rate(sub)
    if sk_rate is not None:
        bench("sklearn_dbscan_pymepix", sk_rate / 1e6, "Mhits/s")
    else:
        print("# scikit-learn not installed: no DBSCAN baseline", flush=True)

    def ratios(rate):
        return {"sklearn_dbscan": rate / sk_rate} if sk_rate else {}

    def components(threads):
        return lambda: cluster_hits(ev, ClusterParams(n_threads=threads))

    def streaming(threads):
        def run():
            cl = Clusterer(ClusterParams(n_threads=threads, reorder_window_s=10e-6))
            for lo in range(0, n, args.chunk):
                cl.feed(ev[lo:lo + args.chunk])
            cl.flush()
        return run

    w1, c1 = best_wall_cpu(components(1), args.repeat)
    r1 = n / w1
    bench("cluster_components_1thread", r1 / 1e6, "Mhits/s", **ratios(r1))
    bench("cluster_components_1thread_cpu", c1 / n * 1e9, "ns/hit")
    w2, c2 = best_wall_cpu(components(2), args.repeat)
    r2 = n / w2
    bench("cluster_components_2threads", r2 / 1e6, "Mhits/s", **ratios(r2), one_thread=r2 / r1)
    bench("cluster_components_2threads_cpu", c2 / n * 1e9, "ns/hit", one_thread=c2 / c1)
    ws1, cs1 = best_wall_cpu(streaming(1), args.repeat)
    bench("clusterer_stream_1thread", n / ws1 / 1e6, "Mhits/s", one_shot=w1 / ws1)
    bench("clusterer_stream_1thread_cpu", cs1 / n * 1e9, "ns/hit", one_shot=cs1 / c1)
    ws2, cs2 = best_wall_cpu(streaming(2), args.repeat)
    rs = n / ws2
    bench("clusterer_stream_2threads", rs / 1e6, "Mhits/s", **ratios(rs), one_shot=rs / r2)
    bench("clusterer_stream_2threads_cpu", cs2 / n * 1e9, "ns/hit", one_shot=cs2 / c2)

    disordered = make_run(min(n, 2_000_000), seed=2, disorder_ns=2000.0)
    back = np.count_nonzero(np.diff(disordered["toa"]) < 0) / disordered.size
    wd, cd = best_wall_cpu(lambda: cluster_hits(disordered, ClusterParams(n_threads=2)), args.repeat)
    rd = disordered.size / wd
    bench("cluster_components_2threads_disordered", rd / 1e6, "Mhits/s", **ratios(rd), sorted_input=rd / r2)
    bench("cluster_components_2threads_disordered_cpu", cd / disordered.size * 1e9, "ns/hit",
          sorted_input=(cd / disordered.size) / (c2 / n))
    print(f"# disordered input: {back:.0%} of consecutive hits go back in time (within 2 us)", flush=True)

    m = min(n, 1_000_000)
    rdb = m / best_time(lambda: cluster_hits(ev[:m], ClusterParams.pymepix()), args.repeat)
    bench("cluster_dbscan_pymepix_mode_1thread", rdb / 1e6, "Mhits/s", **ratios(rdb))
    if sk_labels is not None:
        ours = pymepix_labels(sub["event"], sub["x"], sub["y"], toa_seconds(sub["tof"]), sub["tot"])
        bench("dbscan_agreement_with_sklearn", agreement(np.where(ours >= 0, ours, -1), sk_labels), "fraction")
    print(f"# total {time.perf_counter() - t0:.1f} s; load average after: %.2f %.2f %.2f" % os.getloadavg(),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
