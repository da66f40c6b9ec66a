"""numba kernels of the clustering stage: small, typed, one job each.

Hits are addressed by *position* ``k`` in the list of hits being clustered
(``idx[k]`` is the row of the input array); every per-hit work array (grid cell,
time, group, union-find parent, chain, label) is indexed by position, so threads
can each take a contiguous range of positions. All kernels are ``nogil``.

Union-find: ``parent[k] == k`` for a root; ``_union`` keeps the smaller position as
root, so a set's root is its first position and results never depend on which
thread made a link. Pure Python twins of these kernels live in
:mod:`tpx3lib.cluster.reference`; the tests compare the two.
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "AXIS_SIZE",
    "axis_map",
    "link_keys",
    "link_components",
    "eps_edges",
    "union_edges",
    "reset_parent",
    "number_roots",
    "label_from_roots",
    "positions_in_clusters",
    "select_and_mark",
    "axis_map_from_presence",
    "grid_cells",
    "seam_positions",
    "accumulate_clusters",
    "finish_time_offsets",
    "write_centroids",
    "kept_clusters",
    "N_STATE",
]

#: Coordinates are u2: one slot per possible value in the axis maps.
AXIS_SIZE = 65536
_TIME_NEVER = np.iinfo(np.int64).min


@njit(cache=True, nogil=True)
def _find(parent, k):
    """Root of ``k`` (path halving)."""
    while parent[k] != k:
        parent[k] = parent[parent[k]]
        k = parent[k]
    return k


@njit(cache=True, nogil=True)
def _union(parent, a, b):
    """Join the sets of ``a`` and ``b``; the smaller root stays root."""
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@njit(cache=True, nogil=True)
def select_and_mark(tot, x, y, lo, hi, threshold, out, present_x, present_y):
    """Rows ``lo..hi-1`` with ``tot > threshold`` go to ``out[0:n]`` (returns n); their x and y
    values are marked in ``present_x`` / ``present_y`` (bool, 65536 each)."""
    n = 0
    for i in range(lo, hi):
        if tot[i] > threshold:
            out[n] = i
            n += 1
            present_x[x[i]] = True
            present_y[y[i]] = True
    return n


@njit(cache=True, nogil=True)
def axis_map_from_presence(present, radius):
    """Compact the used values of one coordinate axis, keeping every |a - b| <= radius relation.

    Returns ``(mapping, extent)``: ``mapping[v]`` is the compact coordinate of a used value
    ``v`` (``present[v]``), ``extent`` the largest one + 1. Consecutive used values keep
    their gap when it is <= radius; larger gaps shrink to radius + 1, so two values are
    within ``radius`` after mapping exactly when they were before. This sizes the per-pixel
    grid to the data (one chip, several chips with offsets, anything up to 65535) without
    a hash table.
    """
    mapping = np.zeros(AXIS_SIZE, np.int64)
    c = -1
    last = 0
    for v in range(AXIS_SIZE):
        if present[v]:
            if c < 0:
                c = 0
            else:
                gap = v - last
                c += gap if gap <= radius else radius + 1
            mapping[v] = c
            last = v
    return mapping, c + 1


@njit(cache=True, nogil=True)
def axis_map(coord, idx, radius):
    """:func:`axis_map_from_presence` of the values ``coord[idx]``."""
    present = np.zeros(AXIS_SIZE, np.bool_)
    for k in range(idx.size):
        present[coord[idx[k]]] = True
    return axis_map_from_presence(present, radius)


@njit(cache=True, nogil=True)
def grid_cells(present_x, present_y, radius):
    """Grid geometry for the used coordinates: ``(xcell, xmin, ycell, ymin, grid_size, grid_height)``.

    The grid has the compacted axes (:func:`axis_map_from_presence`) plus a border of
    ``radius`` empty cells on each side, so the (2r+1)^2 neighbours of a cell need no bounds
    checks; a value ``x`` contributes ``xcell[x - xmin]`` (column start) and ``y``
    ``ycell[y - ymin]`` to the cell index. The tables only span the used value range, so
    they stay in cache.
    """
    xmap, width = axis_map_from_presence(present_x, radius)
    ymap, height = axis_map_from_presence(present_y, radius)
    grid_height = height + 2 * radius
    grid_size = (width + 2 * radius) * grid_height
    xmin, xmax = _used_range(present_x)
    ymin, ymax = _used_range(present_y)
    xcell = np.empty(xmax - xmin + 1, np.int64)
    for v in range(xmin, xmax + 1):
        xcell[v - xmin] = (xmap[v] + radius) * grid_height
    ycell = np.empty(ymax - ymin + 1, np.int64)
    for v in range(ymin, ymax + 1):
        ycell[v - ymin] = ymap[v] + radius
    return xcell, xmin, ycell, ymin, grid_size, grid_height


@njit(cache=True, nogil=True)
def _used_range(present):
    lo = 0
    while lo < AXIS_SIZE - 1 and not present[lo]:
        lo += 1
    hi = AXIS_SIZE - 1
    while hi > lo and not present[hi]:
        hi -= 1
    return lo, hi


@njit(cache=True, nogil=True)
def link_keys(idx, lo, hi, x, y, toa, event, chip, xcell, xmin, ycell, ymin, cell, t, group):
    """For positions ``lo..hi-1``: the grid cell, the ToA and the group (event, chip).

    ``cell = xcell[x - xmin] + ycell[y - ymin]`` (see :func:`grid_cells`);
    ``group = event * 256 + chip``.
    """
    for k in range(lo, hi):
        i = idx[k]
        cell[k] = xcell[x[i] - xmin] + ycell[y[i] - ymin]
        t[k] = toa[i]
        group[k] = event[i] * 256 + chip[i]


@njit(cache=True, nogil=True)
def link_components(positions, lo, hi, idx, x, y, toa, event, chip, xcell, xmin, ycell, ymin, grid_size,
                    grid_height, radius, window, t, group, parent, chain_next, head, head_t):
    """Union every pair of hits that is linked: same group (event and chip),
    ``max(|dx|, |dy|) <= radius`` and ``|t_a - t_b| <= window``.

    First pass (``positions`` empty): takes positions ``lo..hi-1``, and for each fills
    ``t[k]`` (ToA), ``group[k]`` (``event * 256 + chip``) and ``parent[k] = k`` before
    linking it. Seam pass (``positions`` given, already filled): links those positions again.

    Positions may come in any time order. A grid with a border of ``radius`` empty cells
    (``grid_size`` cells, ``grid_height`` per column; a hit's cell is
    ``xcell[x - xmin] + ycell[y - ymin]``, see :func:`grid_cells`) keeps per pixel a chain of the hits
    already seen there, newest first (``chain_next``), and the time of its newest hit
    (``head_t``), so most cells are rejected without touching the hit arrays. A hit walks,
    in each of the (2r+1)^2 cells around it, only the hits within ``window`` of its time
    (and the few newer than ``t + window`` that arrived early). Every linked pair is found
    when the later-taken of the two is processed.
    """
    for c in range(grid_size):
        head[c] = -1
        head_t[c] = _TIME_NEVER
    first_pass = positions.size == 0
    count = hi - lo if first_pass else positions.size
    for q in range(count):
        k = lo + q if first_pass else positions[q]
        i = idx[k]
        ck = xcell[x[i] - xmin] + ycell[y[i] - ymin]
        if first_pass:
            tk = toa[i]
            gk = event[i] * 256 + chip[i]
            t[k] = tk
            group[k] = gk
            parent[k] = k
            rk = k
        else:
            tk = t[k]
            gk = group[k]
            rk = _find(parent, k)
        t_lo = tk - window
        t_hi = tk + window
        for dx in range(-radius, radius + 1):
            row = ck + dx * grid_height
            for dy in range(-radius, radius + 1):
                c = row + dy
                if head_t[c] < t_lo:
                    continue
                j = head[c]
                while j >= 0:
                    tj = t[j]
                    if tj < t_lo:
                        break
                    if tj <= t_hi and group[j] == gk:
                        rj = _find(parent, j)
                        if rj < rk:
                            parent[rk] = rj
                            rk = rj
                        elif rk < rj:
                            parent[rj] = rk
                    j = chain_next[j]
        parent[k] = rk
        if head_t[ck] <= tk:
            chain_next[k] = head[ck]
            head[ck] = k
            head_t[ck] = tk
        else:  # arrived late: insert into the chain at its time
            j = head[ck]
            while chain_next[j] >= 0 and t[chain_next[j]] > tk:
                j = chain_next[j]
            chain_next[k] = chain_next[j]
            chain_next[j] = k


@njit(cache=True, nogil=True)
def seam_positions(lo, mid, hi, t, window):
    """Positions that can link across the seam between ranges ``lo..mid-1`` and ``mid..hi-1``.

    Those before the seam with t >= (earliest after) - window and those after with
    t <= (latest before) + window: every linked pair with one hit on each side is inside.
    """
    t_first_after = np.iinfo(np.int64).max
    for k in range(mid, hi):
        t_first_after = min(t_first_after, t[k])
    t_last_before = np.iinfo(np.int64).min
    for k in range(lo, mid):
        t_last_before = max(t_last_before, t[k])
    out = np.empty(hi - lo, np.int64)
    n = 0
    for k in range(lo, mid):
        if t[k] >= t_first_after - window:
            out[n] = k
            n += 1
    for k in range(mid, hi):
        if t[k] <= t_last_before + window:
            out[n] = k
            n += 1
    return out[:n].copy()


@njit(cache=True, nogil=True)
def eps_edges(cell, t, group, xs, ys, feature, grid_size, grid_height, radius, window, eps2, chain_next):
    """All pairs of positions within DBSCAN distance: same group and
    ``dx^2 + dy^2 + (feature_a - feature_b)^2 <= eps2``.

    ``xs``, ``ys``, ``feature`` are per position (feature = scaled time, pymepix: tof in
    seconds * 1.7e7). ``radius`` and ``window`` (integer time units) must bound the eps ball;
    the search is the chain walk of :func:`link_components`. Returns ``(first, second, d2)``,
    each pair once.
    """
    n = t.size
    cap = max(16, 4 * n)
    ea = np.empty(cap, np.int64)
    eb = np.empty(cap, np.int64)
    ed = np.empty(cap, np.float64)
    ne = 0
    head = np.full(grid_size, -1, np.int64)
    head_t = np.full(grid_size, _TIME_NEVER, np.int64)
    for k in range(n):
        ck = cell[k]
        tk = t[k]
        t_lo = tk - window
        t_hi = tk + window
        for dx in range(-radius, radius + 1):
            row = ck + dx * grid_height
            for dy in range(-radius, radius + 1):
                c = row + dy
                if head_t[c] < t_lo:
                    continue
                j = head[c]
                while j >= 0:
                    tj = t[j]
                    if tj < t_lo:
                        break
                    if tj <= t_hi and group[j] == group[k]:
                        ddx = xs[k] - xs[j]
                        ddy = ys[k] - ys[j]
                        ddf = feature[k] - feature[j]
                        d2 = ddx * ddx + ddy * ddy + ddf * ddf
                        if d2 <= eps2:
                            if ne == cap:
                                cap *= 2
                                ea2 = np.empty(cap, np.int64)
                                eb2 = np.empty(cap, np.int64)
                                ed2 = np.empty(cap, np.float64)
                                ea2[:ne] = ea[:ne]
                                eb2[:ne] = eb[:ne]
                                ed2[:ne] = ed[:ne]
                                ea, eb, ed = ea2, eb2, ed2
                            ea[ne] = k
                            eb[ne] = j
                            ed[ne] = d2
                            ne += 1
                    j = chain_next[j]
        if head_t[ck] <= tk:
            chain_next[k] = head[ck]
            head[ck] = k
            head_t[ck] = tk
        else:
            j = head[ck]
            while chain_next[j] >= 0 and t[chain_next[j]] > tk:
                j = chain_next[j]
            chain_next[k] = chain_next[j]
            chain_next[j] = k
    return ea[:ne].copy(), eb[:ne].copy(), ed[:ne].copy()


@njit(cache=True, nogil=True)
def union_edges(parent, first, second, use):
    """Union ``first[e]`` with ``second[e]`` for every edge ``e`` where ``use[e]``."""
    for e in range(first.size):
        if use[e]:
            _union(parent, first[e], second[e])


@njit(cache=True, nogil=True)
def reset_parent(lo, hi, parent):
    """Make every position in ``lo..hi-1`` its own set."""
    for k in range(lo, hi):
        parent[k] = k


@njit(cache=True, nogil=True)
def number_roots(lo, hi, parent, member, root_number):
    """Number the roots among positions ``lo..hi-1`` 0, 1, ... in position order.

    Only positions with ``member[k]`` count (all, for plain components; DBSCAN leaves
    noise out). Writes ``root_number[k]`` for those roots; returns how many there are.
    """
    n = 0
    for k in range(lo, hi):
        if parent[k] == k and member[k]:
            root_number[k] = n
            n += 1
    return n


@njit(cache=True, nogil=True)
def _root(parent, k):
    """Root of ``k`` without changing ``parent`` (safe while other threads read it)."""
    while parent[k] != k:
        k = parent[k]
    return k


@njit(cache=True, nogil=True)
def _cluster_of(parent, member, root_number, bounds, offsets, k):
    """Global cluster number of position ``k`` (-1 for non-members)."""
    if not member[k]:
        return -1
    r = _root(parent, k)
    p = 0
    while p + 1 < bounds.size and r >= bounds[p + 1]:
        p += 1
    return root_number[r] + offsets[p]


@njit(cache=True, nogil=True)
def label_from_roots(lo, hi, parent, member, root_number, bounds, offsets, labels):
    """``labels[k]`` = global cluster number of position ``k`` for ``lo..hi-1`` (-1 for non-members).

    ``bounds`` are the first positions of the pieces the roots were numbered in and
    ``offsets`` their first global numbers. ``parent`` is only read.
    """
    for k in range(lo, hi):
        labels[k] = _cluster_of(parent, member, root_number, bounds, offsets, k)


@njit(cache=True, nogil=True)
def positions_in_clusters(parent, member, root_number, bounds, offsets, selected):
    """Positions (increasing) whose cluster number ``c`` has ``selected[c]``."""
    out = np.empty(parent.size, np.int64)
    n = 0
    for k in range(parent.size):
        c = _cluster_of(parent, member, root_number, bounds, offsets, k)
        if c >= 0 and selected[c]:
            out[n] = k
            n += 1
    return out[:n].copy()


# Columns of the per-cluster state matrix filled by accumulate_clusters (all int64).
S_SEEN_TOA, S_SEEN_TOF = 0, 1            # times of the first hit seen (reference of the sums)
S_FIRST_ROW, S_FIRST_TOA, S_FIRST_TOF, S_FIRST_XY = 2, 3, 4, 5   # earliest hit
S_BEST_TOT, S_BEST_TOA, S_BEST_TOF, S_BEST_XY = 6, 7, 8, 9       # largest-ToT hit
S_LAST_TOA, S_SIZE, S_TOT_SUM, S_X_SUM, S_Y_SUM = 10, 11, 12, 13, 14
S_TOA_HI, S_TOA_LO, S_TOF_HI, S_TOF_LO = 15, 16, 17, 18
S_EVENT, S_TRAIN, S_CHIP = 19, 20, 21      # of the earliest hit (train_id stored as its int64 bits)
N_STATE = 22


@njit(cache=True, nogil=True)
def _before(toa_a, tof_a, xy_a, toa_b, tof_b, xy_b):
    """(toa, tof, x, y) of hit a strictly before that of hit b (xy = x << 16 | y)."""
    if toa_a != toa_b:
        return toa_a < toa_b
    if tof_a != tof_b:
        return tof_a < tof_b
    return xy_a < xy_b


@njit(cache=True, nogil=True)
def accumulate_clusters(positions, lo, hi, idx, parent, member, root_number, bounds, offsets,
                        x, y, tot, toa, tof, event, train_id, chip, state, deferred):
    """Add hits to their clusters' rows of ``state`` (``n_clusters x N_STATE`` int64, rows
    initialised by :func:`new_cluster_state`).

    A hit's cluster is the global number of its union-find root (see :func:`label_from_roots`).
    Takes the positions ``lo..hi-1`` (or, when ``positions.size > 0``, those listed). In the
    range form a hit whose root lies before ``lo`` belongs to a cluster another thread owns:
    it goes to ``deferred`` instead (the count is returned), to be added afterwards.

    Per cluster: the earliest hit (smallest (toa, tof, x, y)), its row, event, train ID and
    chip, the largest-ToT
    hit (ties: the earlier), the latest ToA, size, sums of tot, x*tot, y*tot, and the sums of
    ``(toa - toa_seen) * tot`` (same for tof) from the first hit *seen*, split in high and
    low 24-bit parts so nothing realistic overflows. All exact integers: the result does not
    depend on the order of the hits.
    """
    n_def = 0
    listed = positions.size > 0
    count = positions.size if listed else hi - lo
    for q in range(count):
        k = positions[q] if listed else lo + q
        if not member[k]:
            continue
        r = _root(parent, k)
        if not listed and r < lo:
            deferred[n_def] = k
            n_def += 1
            continue
        p = 0
        while p + 1 < bounds.size and r >= bounds[p + 1]:
            p += 1
        c = root_number[r] + offsets[p]
        i = idx[k]
        w = np.int64(tot[i])
        ta = toa[i]
        tf = tof[i]
        xy = (np.int64(x[i]) << 16) | np.int64(y[i])
        st = state[c]
        if st[S_SIZE] == 0:
            st[S_SEEN_TOA] = ta
            st[S_SEEN_TOF] = tf
            st[S_FIRST_ROW] = i
            st[S_FIRST_TOA] = ta
            st[S_FIRST_TOF] = tf
            st[S_FIRST_XY] = xy
            st[S_EVENT] = event[i]
            st[S_TRAIN] = np.int64(train_id[i])
            st[S_CHIP] = chip[i]
            st[S_BEST_TOT] = w
            st[S_BEST_TOA] = ta
            st[S_BEST_TOF] = tf
            st[S_BEST_XY] = xy
            st[S_LAST_TOA] = ta
        else:
            if _before(ta, tf, xy, st[S_FIRST_TOA], st[S_FIRST_TOF], st[S_FIRST_XY]):
                st[S_FIRST_ROW] = i
                st[S_FIRST_TOA] = ta
                st[S_FIRST_TOF] = tf
                st[S_FIRST_XY] = xy
                st[S_EVENT] = event[i]
                st[S_TRAIN] = np.int64(train_id[i])
                st[S_CHIP] = chip[i]
            if w > st[S_BEST_TOT] or (w == st[S_BEST_TOT] and _before(
                    ta, tf, xy, st[S_BEST_TOA], st[S_BEST_TOF], st[S_BEST_XY])):
                st[S_BEST_TOT] = w
                st[S_BEST_TOA] = ta
                st[S_BEST_TOF] = tf
                st[S_BEST_XY] = xy
            if ta > st[S_LAST_TOA]:
                st[S_LAST_TOA] = ta
        st[S_SIZE] += 1
        st[S_TOT_SUM] += w
        st[S_X_SUM] += w * np.int64(x[i])
        st[S_Y_SUM] += w * np.int64(y[i])
        d = ta - st[S_SEEN_TOA]
        h = d >> 24
        st[S_TOA_HI] += h * w
        st[S_TOA_LO] += (d - (h << 24)) * w
        d = tf - st[S_SEEN_TOF]
        h = d >> 24
        st[S_TOF_HI] += h * w
        st[S_TOF_LO] += (d - (h << 24)) * w
    return n_def


@njit(cache=True, nogil=True)
def finish_time_offsets(state):
    """ToT-weighted mean of ``toa - toa_first`` and ``tof - tof_first`` per cluster.

    Shifts the exact sums from the first hit seen to the earliest hit
    (``sum (t - t_first) w = sum (t - t_seen) w - (t_first - t_seen) W``), then divides once,
    so the result does not depend on the order the hits came in. float64, time units.
    """
    n = state.shape[0]
    toa_off = np.zeros(n, np.float64)
    tof_off = np.zeros(n, np.float64)
    for c in range(n):
        st = state[c]
        w = st[S_TOT_SUM]
        if st[S_SIZE] == 0 or w == 0:
            continue
        d = st[S_FIRST_TOA] - st[S_SEEN_TOA]
        h = d >> 24
        toa_off[c] = ((st[S_TOA_HI] - h * w) * 16777216.0 + (st[S_TOA_LO] - (d - (h << 24)) * w)) / w
        d = st[S_FIRST_TOF] - st[S_SEEN_TOF]
        h = d >> 24
        tof_off[c] = ((st[S_TOF_HI] - h * w) * 16777216.0 + (st[S_TOF_LO] - (d - (h << 24)) * w)) / w
    return toa_off, tof_off


@njit(cache=True, nogil=True)
def write_centroids(state, clusters, toa_off, tof_off, out):
    """Fill ``out[j]`` (``CENTROID_DTYPE``) from the state row of cluster ``clusters[j]``."""
    for j in range(clusters.size):
        st = state[clusters[j]]
        w = st[S_TOT_SUM]
        r = out[j]
        r.event = st[S_EVENT]
        r.train_id = np.uint64(st[S_TRAIN])
        r.chip = np.uint8(st[S_CHIP])
        r.x = st[S_X_SUM] / w
        r.y = st[S_Y_SUM] / w
        r.toa_first = st[S_FIRST_TOA]
        r.toa = st[S_FIRST_TOA] + toa_off[clusters[j]]
        r.tof_first = st[S_FIRST_TOF]
        r.tof = st[S_FIRST_TOF] + tof_off[clusters[j]]
        r.tot_sum = np.uint32(w)
        r.tot_mean = np.float32(w / st[S_SIZE])
        r.tot_max = np.uint16(st[S_BEST_TOT])
        r.size = np.uint32(st[S_SIZE])


@njit(cache=True, nogil=True)
def kept_clusters(state, min_size):
    """Clusters with at least ``min_size`` hits.

    Returns ``(clusters, hits_in_them, hits_in_smaller, smaller_clusters)``; empty rows
    (clusters still pending) count nowhere.
    """
    n = state.shape[0]
    out = np.empty(n, np.int64)
    m = 0
    kept_hits = 0
    small_hits = 0
    small_clusters = 0
    for c in range(n):
        sz = state[c, S_SIZE]
        if sz >= min_size:
            out[m] = c
            m += 1
            kept_hits += sz
        elif sz > 0:
            small_hits += sz
            small_clusters += 1
    return out[:m].copy(), kept_hits, small_hits, small_clusters
