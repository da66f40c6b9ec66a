"""Slow, obviously correct clustering: the yardstick the fast kernels are tested against.

Everything here follows the written definition literally, with no cleverness:
all pairs of hits are compared, clusters are connected components found with
scipy's ``connected_components`` on the pair graph (or a breadth-first search for
DBSCAN), and centroids are summed with Python integers. Quadratic in the number of
hits per event: for tests only (a few thousand hits).
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..dtypes import CENTROID_DTYPE, toa_seconds
from .params import LABEL_BELOW_TOT, LABEL_NOISE, LABEL_SMALL_CLUSTER, ClusterParams

__all__ = ["reference_axis_map", "reference_pairs", "reference_labels", "reference_centroids",
           "reference_cluster_hits", "reference_slot", "reference_seam_rows", "reference_scan_rows"]


def reference_axis_map(values, radius: int) -> dict[int, int]:
    """Twin of :func:`kernels.axis_map` as a dict: used value -> compact coordinate."""
    out, c, last = {}, -1, None
    for v in sorted(set(int(v) for v in values)):
        c = 0 if last is None else c + min(v - last, radius + 1)
        out[v] = c
        last = v
    return out


def reference_pairs(ev: np.ndarray, kept: np.ndarray, p: ClusterParams, feature=None):
    """All linked pairs ``(i, j, d2)``, i < j, among the hits ``kept`` by brute force.

    components: same event and chip, max(|dx|,|dy|) <= radius, |dtoa| <= window.
    dbscan: same event and chip, dx^2 + dy^2 + dfeature^2 <= eps^2.
    """
    idx = np.asarray(kept)
    x = ev["x"][idx].astype(np.int64)
    y = ev["y"][idx].astype(np.int64)
    t = ev["toa"][idx]
    event, chip = ev["event"][idx], ev["chip"][idx]
    same = (event[:, None] == event[None, :]) & (chip[:, None] == chip[None, :])
    dx = x[:, None] - x[None, :]
    dy = y[:, None] - y[None, :]
    if p.method == "components":
        window = p.link_window_units()
        link = same & (np.maximum(np.abs(dx), np.abs(dy)) <= p.radius) & (np.abs(t[:, None] - t[None, :]) <= window)
        d2 = np.zeros(link.shape)
    else:
        f = (toa_seconds(ev["tof"]) * p.tof_scale if feature is None else np.asarray(feature))[idx]
        df = f[:, None] - f[None, :]
        d2 = dx.astype(np.float64) ** 2 + dy.astype(np.float64) ** 2 + df * df
        link = same & (d2 <= float(p.eps) ** 2)
    a, b = np.nonzero(np.triu(link, 1))
    return idx[a], idx[b], d2[a, b]


def _components(n, a, b):
    g = coo_matrix((np.ones(a.size), (a, b)), shape=(n, n))
    return connected_components(g, directed=False)[1]


def reference_labels(ev: np.ndarray, p: ClusterParams, feature=None) -> np.ndarray:
    """Cluster id per hit (arbitrary numbering) or a LABEL_* code, by the definition."""
    n = ev.size
    labels = np.full(n, LABEL_BELOW_TOT, np.int64)
    kept = np.flatnonzero(ev["tot"] > p.tot_threshold_ns)
    if not kept.size:
        return labels
    a, b, d2 = reference_pairs(ev, kept, p, feature)
    if p.method == "components":
        comp = _components(n, a, b)
        labels[kept] = comp[kept]
    else:
        neighbours = {int(i): [] for i in kept}
        for i, j, d in zip(a.tolist(), b.tolist(), d2.tolist()):
            neighbours[i].append((j, d))
            neighbours[j].append((i, d))
        core = {i for i, nb in neighbours.items() if len(nb) + 1 >= p.min_samples}
        cluster_of = {}
        next_id = 0
        for start in sorted(core):
            if start in cluster_of:
                continue
            cluster_of[start] = next_id
            queue = [start]
            while queue:
                i = queue.pop()
                for j, _ in neighbours[i]:
                    if j in core and j not in cluster_of:
                        cluster_of[j] = next_id
                        queue.append(j)
            next_id += 1
        for i, nb in neighbours.items():
            if i in core:
                labels[i] = cluster_of[i]
                continue
            cores = [(d, int(ev["toa"][j]), int(ev["x"][j]), int(ev["y"][j]), j) for j, d in nb if j in core]
            labels[i] = cluster_of[min(cores)[-1]] if cores else LABEL_NOISE
    # drop small clusters
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    small = ids[counts < p.min_size]
    labels[np.isin(labels, small) & (labels >= 0)] = LABEL_SMALL_CLUSTER
    return labels


def reference_centroids(ev: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Centroids of the clusters in ``labels`` (ids >= 0), in canonical order, by plain Python."""
    members: dict[int, list[int]] = {}
    for i, lab in enumerate(labels.tolist()):
        if lab >= 0:
            members.setdefault(lab, []).append(i)
    rows = []
    for hits in members.values():
        h = [(int(ev["toa"][i]), int(ev["tof"][i]), int(ev["x"][i]), int(ev["y"][i]), int(ev["tot"][i]), i)
             for i in hits]
        first = min(h)
        biggest = min(h, key=lambda r: (-r[4], r[:4]))
        tot_sum = sum(r[4] for r in h)
        i0 = first[5]
        toa_off = sum((r[0] - first[0]) * r[4] for r in h) / tot_sum
        tof_off = sum((r[1] - first[1]) * r[4] for r in h) / tot_sum
        rows.append((
            int(ev["event"][i0]), int(ev["train_id"][i0]), int(ev["chip"][i0]),
            sum(r[2] * r[4] for r in h) / tot_sum, sum(r[3] * r[4] for r in h) / tot_sum,
            first[0] + toa_off, first[0], first[1] + tof_off, first[1],
            tot_sum, tot_sum / len(h), biggest[4], len(h),
        ))
    out = np.array(rows, dtype=CENTROID_DTYPE) if rows else np.zeros(0, CENTROID_DTYPE)

    def key(c):
        return (c["toa_first"], c["event"], c["chip"], c["x"], c["y"], c["tof_first"], c["size"],
                c["tot_sum"], c["tot_max"], c["toa"], c["tof"])
    return np.array(sorted(out, key=key), dtype=CENTROID_DTYPE) if rows else out


def reference_cluster_hits(ev: np.ndarray, p: ClusterParams, feature=None):
    """``(centroids, labels)`` by the definition; label numbers are arbitrary (compare partitions)."""
    labels = reference_labels(ev, p, feature)
    return reference_centroids(ev, labels), labels


def reference_slot(ev: np.ndarray, rows) -> dict:
    """Twin of a slot row of :func:`kernels.link_sum` / :func:`kernels.merge_slot` for the hits
    ``ev[rows]`` of one cluster, with Python integers. The time sums are given as
    ``sum (t - t_first) * tot`` (what the slot's 24-bit high/low parts add up to, shifted to
    the earliest hit)."""
    h = [(int(ev["toa"][i]), int(ev["tof"][i]), (int(ev["x"][i]) << 16) | int(ev["y"][i]), int(ev["tot"][i]),
          int(ev["x"][i]), int(ev["y"][i]), i) for i in rows]
    first = min(h)
    i0 = first[-1]
    return dict(
        first_toa=first[0], first_tof=first[1], first_xy=first[2],
        train=int(ev["train_id"][i0]),
        event=int(ev["event"][i0]), chip=int(ev["chip"][i0]),
        last_toa=max(r[0] for r in h), size=len(h), tot_sum=sum(r[3] for r in h), best_tot=max(r[3] for r in h),
        x_sum=sum(r[3] * r[4] for r in h), y_sum=sum(r[3] * r[5] for r in h),
        toa_offset_sum=sum((r[0] - first[0]) * r[3] for r in h),
        tof_offset_sum=sum((r[1] - first[1]) * r[3] for r in h),
    )


def reference_seam_rows(toa, clustered, lo: int, mid: int, hi: int, window: int) -> np.ndarray:
    """Twin of :func:`kernels.seam_rows` by brute force (no early stop): clustered positions
    before ``mid`` within ``window`` of the earliest after it, and those after within
    ``window`` of the latest before it."""
    toa = np.asarray(toa, dtype=np.int64)
    k = np.arange(lo, hi)
    ok = np.asarray(clustered, bool)[lo:hi]
    before, after = k[ok & (k < mid)], k[ok & (k >= mid)]
    if not before.size or not after.size:
        return np.zeros(0, np.int64)
    first_after, last_before = toa[after].min(), toa[before].max()
    return np.concatenate([before[toa[before] >= first_after - window], after[toa[after] <= last_before + window]])


def reference_scan_rows(tot, x, y, toa, threshold: int, late_before: int):
    """Twin of :func:`kernels.scan_rows`: ``(count, t_min, t_max, lag, late, used x, used y)``."""
    keep = np.asarray(tot) > threshold
    t = [int(v) for v in np.asarray(toa)[keep]]
    lag, run = 0, None
    for v in t:
        run = v if run is None else max(run, v)
        lag = max(lag, run - v)
    return (len(t), min(t) if t else np.iinfo(np.int64).max, max(t) if t else np.iinfo(np.int64).min, lag,
            sum(v < late_before for v in t), set(np.asarray(x)[keep].tolist()), set(np.asarray(y)[keep].tolist()))
