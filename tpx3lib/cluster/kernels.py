"""numba kernels of the clustering stage: small, typed, one job each.

Two families:

- **components** (the default method): :func:`link_sum` links the hits of a range of rows
  through a per-pixel grid and adds each hit to its cluster's *slot* (a row of integer
  sums) in the same pass; clusters that meet are merged (:func:`merge_slot`). Threads take
  contiguous row ranges, each with its own grid and its own region of slots;
  :func:`relink` joins clusters across the seams. :func:`count_kept` / :func:`write_kept`
  turn slots into centroids.
- **DBSCAN** (pymepix mode): hits are addressed by *position* ``k`` in the list of selected
  hits (``idx[k]`` is the input row); :func:`eps_edges` finds the neighbour pairs,
  :func:`union_edges` / :func:`_union` build a union-find forest (``parent[k] == k`` for a
  root, the smaller position stays root), :func:`accumulate_clusters` fills the slots.

All kernels are ``nogil``. Pure Python twins live in :mod:`tpx3lib.cluster.reference`;
the tests compare the two.

numba note: calling an ``@njit`` function that takes arrays costs reference-count updates
(atomic operations) per call; the per-hit loops therefore index 2-D arrays in place
(``state[s, col]``, never a row view ``state[s]``) and the hottest one, :func:`link_sum`,
has its helpers written out. Indices computed at run time are cast to unsigned (``_u``)
where it matters: a signed index makes numba emit negative-index wrap-around code (about 9 of
the ~45 ns per hit of :func:`link_sum`).
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "AXIS_SIZE", "N_STATE", "NOT_CLUSTERED",
    "axis_map", "axis_map_from_presence", "grid_cells", "select_and_mark", "scan_rows",
    "link_keys", "eps_edges", "union_edges", "reset_parent", "number_roots", "label_from_roots",
    "accumulate_clusters", "reset_grid", "link_sum", "merge_slot", "join_roots", "relink",
    "seam_rows", "rows_of_slots", "chunk_times", "row_labels", "count_kept", "write_kept",
    "order_state", "sort_ties",
]

#: Cast of a (non-negative) index to unsigned: numba then skips the negative-index wrap-around.
#: Keep it to indexing: numba turns uint64 + int64 arithmetic into float64.
_u = np.uint64

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
def eps_edges(cell, t, group, xs, ys, feature, grid_size, grid_height, radius, window, eps2, chain_next):
    """All pairs of positions within DBSCAN distance: same group and
    ``dx^2 + dy^2 + (feature_a - feature_b)^2 <= eps2``.

    ``xs``, ``ys``, ``feature`` are per position (feature = scaled time, pymepix: tof in
    seconds * 1.7e7). ``radius`` and ``window`` (integer time units) must bound the eps ball;
    the search is the grid chain walk of :func:`link_sum`. Returns ``(first, second, d2)``,
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



# ---------------------------------------------------------------------------------------------
# Per-cluster state ("slot"): one row of int64 per cluster, exact integer sums.
# ---------------------------------------------------------------------------------------------

S_FIRST_TOA, S_FIRST_TOF, S_FIRST_XY = 0, 1, 2   # earliest hit: smallest (toa, tof, x << 16 | y)
S_LAST_TOA, S_SIZE, S_TOT_SUM, S_BEST_TOT = 3, 4, 5, 6
S_X_SUM, S_Y_SUM = 7, 8                           # sums of tot * x, tot * y
S_TOA_HI, S_TOA_LO, S_TOF_HI, S_TOF_LO = 9, 10, 11, 12   # sums of (t - t_seen) * tot, 24-bit split
S_SEEN_TOA, S_SEEN_TOF = 13, 14                   # times of the first hit *seen*: reference of the sums
S_TRAIN, S_EVENT, S_CHIP = 15, 16, 17             # train ID of the earliest hit (its int64 bits);
#                                                   event and chip (the same for all hits of a cluster)
#: Columns of a slot (rows of 144 bytes; 15 of them are updated per hit).
N_STATE = 18

#: ``parent`` value of a row that is not clustered (ToT at or below the threshold).
NOT_CLUSTERED = np.iinfo(np.int32).min


@njit(cache=True, nogil=True)
def _before(toa_a, tof_a, xy_a, toa_b, tof_b, xy_b):
    """(toa, tof, x, y) of hit a strictly before that of hit b (xy = x << 16 | y)."""
    if toa_a != toa_b:
        return toa_a < toa_b
    if tof_a != tof_b:
        return tof_a < tof_b
    return xy_a < xy_b


@njit(cache=True, nogil=True)
def _time_offset(hi, lo, first, seen, w):
    """ToT-weighted mean of ``t - t_first`` from the sums of ``(t - t_seen) * w`` (24-bit high and
    low parts): shifts them to the earliest hit, ``sum (t - t_first) w = sum (t - t_seen) w -
    (t_first - t_seen) W``, then divides once."""
    d = first - seen
    h = d >> 24
    return ((hi - h * w) * 16777216.0 + (lo - (d - (h << 24)) * w)) / w


@njit(cache=True, nogil=True)
def accumulate_clusters(positions, lo, hi, idx, parent, member, root_number, bounds, offsets,
                        x, y, tot, toa, tof, event, train_id, chip, state, deferred):
    """DBSCAN: add hits to their clusters' slots in ``state`` (``n_clusters x N_STATE``, all
    zero to start with).

    A hit's cluster is the global number of its union-find root (see :func:`label_from_roots`).
    Takes the positions ``lo..hi-1`` (or, when ``positions.size > 0``, those listed). In the
    range form a hit whose root lies before ``lo`` belongs to a cluster another thread owns:
    it goes to ``deferred`` instead (the count is returned), to be added afterwards.

    Per cluster: the earliest hit (smallest (toa, tof, x, y)) and its train ID, event and chip,
    the largest ToT, the latest ToA, size, sums of tot, x*tot, y*tot, and the sums of
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
        xi = np.int64(x[i])
        yi = np.int64(y[i])
        xy = (xi << 16) | yi
        if state[c, S_SIZE] == 0:
            state[c, S_SEEN_TOA] = ta
            state[c, S_SEEN_TOF] = tf
            state[c, S_FIRST_TOA] = ta
            state[c, S_FIRST_TOF] = tf
            state[c, S_FIRST_XY] = xy
            state[c, S_TRAIN] = np.int64(train_id[i])
            state[c, S_EVENT] = event[i]
            state[c, S_CHIP] = chip[i]
            state[c, S_LAST_TOA] = ta
        elif _before(ta, tf, xy, state[c, S_FIRST_TOA], state[c, S_FIRST_TOF], state[c, S_FIRST_XY]):
            state[c, S_FIRST_TOA] = ta
            state[c, S_FIRST_TOF] = tf
            state[c, S_FIRST_XY] = xy
            state[c, S_TRAIN] = np.int64(train_id[i])
        state[c, S_BEST_TOT] = max(state[c, S_BEST_TOT], w)
        state[c, S_LAST_TOA] = max(state[c, S_LAST_TOA], ta)
        state[c, S_SIZE] += 1
        state[c, S_TOT_SUM] += w
        state[c, S_X_SUM] += w * xi
        state[c, S_Y_SUM] += w * yi
        d = ta - state[c, S_SEEN_TOA]
        h = d >> 24
        state[c, S_TOA_HI] += h * w
        state[c, S_TOA_LO] += (d - (h << 24)) * w
        d = tf - state[c, S_SEEN_TOF]
        h = d >> 24
        state[c, S_TOF_HI] += h * w
        state[c, S_TOF_LO] += (d - (h << 24)) * w
    return n_def


# ---------------------------------------------------------------------------------------------
# Connected components: link and sum in one pass over the rows.
#
# Hits are addressed by *position*: the rows of the hit array, or (streaming) the rows of the
# held-back hits followed by those of the new chunk. ``parent[k]`` is a union-find forest:
# ``>= 0`` the parent position, ``< 0`` a root whose cluster is slot ``-parent[k] - 1`` of
# the state matrix, ``NOT_CLUSTERED`` a hit at or below the ToT threshold. A hit is added to its root's slot as
# soon as it is linked; when two clusters meet, the slot of the later root is merged into the
# other one (exact integer sums: the result does not depend on the order). A slot of size 0
# is unused (merged away, or taken out by the caller).
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def scan_rows(tot, x, y, toa, lo, hi, threshold, late_before, present_x, present_y):
    """Rows ``lo..hi-1`` with ``tot > threshold``: mark their x and y values in ``present_x`` /
    ``present_y`` (bool, 65536 each) and return ``(count, t_min, t_max, lag, late)``.

    ``lag`` is the largest amount by which a row's toa is behind the latest toa before it
    (0 for time-ordered rows): every earlier row has ``toa <= toa[k] + lag`` and every later
    one ``toa >= toa[k] - lag``, which bounds the scans of :func:`seam_rows` and
    :func:`rows_of_slots`. ``late`` counts the rows with ``toa < late_before``.
    """
    n = 0
    t_min = np.iinfo(np.int64).max
    t_max = np.iinfo(np.int64).min
    lag = 0
    late = 0
    for i in range(lo, hi):
        iu = _u(i)
        if tot[iu] > threshold:
            n += 1
            present_x[x[iu]] = True
            present_y[y[iu]] = True
            t = toa[iu]
            t_min = min(t_min, t)
            t_max = max(t_max, t)
            lag = max(lag, t_max - t)
            late += t < late_before
    return n, t_min, t_max, lag, late


@njit(cache=True, nogil=True)
def chunk_times(tot, toa, threshold, late_before):
    """Rows with ``tot > threshold``: ``(latest toa, how many have toa < late_before)``
    (the latest is the smallest int64 when there are none)."""
    newest = np.iinfo(np.int64).min
    late = 0
    for i in range(tot.size):
        iu = _u(i)
        if tot[iu] > threshold:
            t = toa[iu]
            newest = max(newest, t)
            late += t < late_before
    return newest, late


@njit(cache=True, nogil=True)
def reset_grid(head, head_t):
    """Empty the per-pixel grid of :func:`link_sum` / :func:`relink`."""
    for c in range(head.size):
        head[c] = -1
        head_t[c] = _TIME_NEVER


@njit(cache=True, nogil=True)
def find_root(parent, k):
    """Root position of ``k`` (``parent < 0``), halving the path."""
    while True:
        p = parent[k]
        if p < 0:
            return k
        gp = parent[p]
        if gp < 0:
            return p
        parent[k] = gp
        k = gp


@njit(cache=True, nogil=True)
def root_of(parent, k):
    """:func:`find_root` without changing ``parent``."""
    while parent[k] >= 0:
        k = parent[k]
    return k


@njit(cache=True, nogil=True, inline="always")   # in numba IR: no call, no reference counting
def merge_slot(state, a, b):
    """Merge slot ``b`` into slot ``a``, as if ``b``'s hits had been added to ``a``; ``b`` becomes
    unused (size 0).

    ``b``'s time sums are relative to its own first-seen time; they move to ``a``'s by adding
    ``(seen_b - seen_a) * tot_sum_b`` in the same 24-bit high/low split, so the exact total
    ``hi * 2**24 + lo`` is the one adding the hits one by one gives.
    """
    if _before(state[b, S_FIRST_TOA], state[b, S_FIRST_TOF], state[b, S_FIRST_XY],
               state[a, S_FIRST_TOA], state[a, S_FIRST_TOF], state[a, S_FIRST_XY]):
        state[a, S_FIRST_TOA] = state[b, S_FIRST_TOA]
        state[a, S_FIRST_TOF] = state[b, S_FIRST_TOF]
        state[a, S_FIRST_XY] = state[b, S_FIRST_XY]
        state[a, S_TRAIN] = state[b, S_TRAIN]
    state[a, S_LAST_TOA] = max(state[a, S_LAST_TOA], state[b, S_LAST_TOA])
    state[a, S_BEST_TOT] = max(state[a, S_BEST_TOT], state[b, S_BEST_TOT])
    wb = state[b, S_TOT_SUM]
    state[a, S_SIZE] += state[b, S_SIZE]
    state[a, S_TOT_SUM] += wb
    state[a, S_X_SUM] += state[b, S_X_SUM]
    state[a, S_Y_SUM] += state[b, S_Y_SUM]
    d = state[b, S_SEEN_TOA] - state[a, S_SEEN_TOA]
    h = d >> 24
    state[a, S_TOA_HI] += state[b, S_TOA_HI] + h * wb
    state[a, S_TOA_LO] += state[b, S_TOA_LO] + (d - (h << 24)) * wb
    d = state[b, S_SEEN_TOF] - state[a, S_SEEN_TOF]
    h = d >> 24
    state[a, S_TOF_HI] += state[b, S_TOF_HI] + h * wb
    state[a, S_TOF_LO] += state[b, S_TOF_LO] + (d - (h << 24)) * wb
    state[b, S_SIZE] = 0


@njit(cache=True, nogil=True, inline="always")
def join_roots(parent, state, ra, rb):
    """Join the clusters of roots ``ra != rb``: the smaller position stays root and keeps its
    slot, the other slot is merged into it. Returns the remaining root."""
    if rb < ra:
        ra, rb = rb, ra
    merge_slot(state, -parent[ra] - 1, -parent[rb] - 1)
    parent[rb] = ra
    return ra


@njit(cache=True, nogil=True)
def link_sum(lo, hi, off, x, y, tot, toa, tof, event, train_id, chip, threshold,
             xcell, xmin, ycell, ymin, grid_height, radius, window,
             group, parent, chain_next, next_t, head, head_t, state, n_slots, end_slot, merged):
    """Connected components of rows ``lo..hi-1`` and their cluster sums, in one pass.

    Row ``k`` of the hit arrays is position ``k + off`` of the work arrays (``group``,
    ``parent``, ``chain_next``, ``next_t``; the grid holds positions), so hits from two arrays
    (the held-back hits of a stream and a new chunk) can be clustered together.

    A row with ``tot > threshold`` is linked to every row taken before it with the same group
    (``event * 256 + chip``), ``max(|dx|, |dy|) <= radius`` and ``|dt| <= window``. The grid
    (cell ``xcell[x - xmin] + ycell[y - ymin]``, see :func:`grid_cells`; emptied by
    :func:`reset_grid`) keeps per pixel a chain of the hits seen there, newest first: ``head``
    and ``head_t`` (row and time of the newest), ``chain_next`` and ``next_t`` (row and time of
    the next older one), so a walk stops without touching older hits. Rows may come in any
    time order (a late one is inserted into its chain at its time).

    The hit then joins the slot of its cluster (as :func:`accumulate_clusters` adds a hit) or
    opens slot ``n_slots``; clusters it bridges are merged (:func:`join_roots`). Slots up to
    ``end_slot`` may be used. Fills ``group``, ``parent``, ``chain_next``, ``next_t`` for the
    positions. Returns ``(stop, n_slots, merged)``: ``stop < hi`` means the slots ran out at row
    ``stop``; ``merged`` (counting on from the argument) is the number of slots merged away.

    Root finding, slot update and chain insertion are written out here (see the module note).
    """
    for k in range(lo, hi):
        ku = _u(k)                                              # row
        pos = k + off
        pu = _u(pos)                                            # position
        w = np.int64(tot[ku])
        if w <= threshold:
            parent[pu] = NOT_CLUSTERED
            continue
        if n_slots == end_slot:
            return k, n_slots, merged
        xi = np.int64(x[ku])
        yi = np.int64(y[ku])
        ck = xcell[_u(xi - xmin)] + ycell[_u(yi - ymin)]
        tk = toa[ku]
        gk = event[ku] * 256 + chip[ku]
        group[pu] = gk
        rk = -1
        t_lo = tk - window
        t_hi = tk + window
        for dx in range(-radius, radius + 1):
            row = ck + dx * grid_height
            for dy in range(-radius, radius + 1):
                c = row + dy
                tj = head_t[_u(c)]
                if tj < t_lo:
                    continue
                j = head[_u(c)]
                while True:
                    if tj <= t_hi and group[_u(j)] == gk:
                        rj = j                                  # find_root(parent, j)
                        while True:
                            p = parent[_u(rj)]
                            if p < 0:
                                break
                            gp = parent[_u(p)]
                            if gp < 0:
                                rj = p
                                break
                            parent[_u(rj)] = gp
                            rj = gp
                        if rk < 0:
                            rk = rj
                        elif rj != rk:
                            rk = join_roots(parent, state, rk, rj)
                            merged += 1
                    tj = next_t[_u(j)]
                    if tj < t_lo:
                        break
                    j = chain_next[_u(j)]
        tf = tof[ku]
        xy = (xi << 16) | yi
        if rk < 0:                                              # a new cluster
            su = _u(n_slots)
            n_slots += 1
            parent[pu] = -n_slots
            state[su, S_FIRST_TOA] = tk
            state[su, S_FIRST_TOF] = tf
            state[su, S_FIRST_XY] = xy
            state[su, S_LAST_TOA] = tk
            state[su, S_SIZE] = 1
            state[su, S_TOT_SUM] = w
            state[su, S_BEST_TOT] = w
            state[su, S_X_SUM] = w * xi
            state[su, S_Y_SUM] = w * yi
            state[su, S_TOA_HI] = 0
            state[su, S_TOA_LO] = 0
            state[su, S_TOF_HI] = 0
            state[su, S_TOF_LO] = 0
            state[su, S_SEEN_TOA] = tk
            state[su, S_SEEN_TOF] = tf
            state[su, S_TRAIN] = np.int64(train_id[ku])
            state[su, S_EVENT] = event[ku]
            state[su, S_CHIP] = chip[ku]
        else:                                                   # add to the cluster of rk
            parent[pu] = rk
            su = _u(-parent[_u(rk)] - 1)
            if _before(tk, tf, xy, state[su, S_FIRST_TOA], state[su, S_FIRST_TOF], state[su, S_FIRST_XY]):
                state[su, S_FIRST_TOA] = tk
                state[su, S_FIRST_TOF] = tf
                state[su, S_FIRST_XY] = xy
                state[su, S_TRAIN] = np.int64(train_id[ku])
            state[su, S_LAST_TOA] = max(state[su, S_LAST_TOA], tk)
            state[su, S_BEST_TOT] = max(state[su, S_BEST_TOT], w)
            state[su, S_SIZE] += 1
            state[su, S_TOT_SUM] += w
            state[su, S_X_SUM] += w * xi
            state[su, S_Y_SUM] += w * yi
            d = tk - state[su, S_SEEN_TOA]
            h = d >> 24
            state[su, S_TOA_HI] += h * w
            state[su, S_TOA_LO] += (d - (h << 24)) * w
            d = tf - state[su, S_SEEN_TOF]
            h = d >> 24
            state[su, S_TOF_HI] += h * w
            state[su, S_TOF_LO] += (d - (h << 24)) * w
        cu = _u(ck)
        if head_t[cu] <= tk:                                    # into the chain of its pixel
            chain_next[pu] = head[cu]
            next_t[pu] = head_t[cu]
            head[cu] = pos
            head_t[cu] = tk
        else:                                                   # arrived late: at its time
            j = head[cu]
            while next_t[_u(j)] > tk:
                j = chain_next[_u(j)]
            chain_next[pu] = chain_next[_u(j)]
            next_t[pu] = next_t[_u(j)]
            chain_next[_u(j)] = pos
            next_t[_u(j)] = tk
    return hi, n_slots, merged


@njit(cache=True, nogil=True)
def _at(a, b, n_a, pos):
    """Element of position ``pos`` when positions ``0..n_a-1`` are ``a`` and the rest ``b``."""
    return a[pos] if pos < n_a else b[pos - n_a]


@njit(cache=True, nogil=True)
def seam_rows(lo, mid, hi, n_a, toa_a, toa_b, parent, window, t_first_after, t_last_before, lag):
    """Clustered positions that can link across the seam between ``lo..mid-1`` and ``mid..hi-1``
    (positions ``0..n_a-1`` are rows of the ``_a`` arrays, the rest rows of the ``_b`` arrays).

    Those before the seam with toa >= ``t_first_after - window`` (earliest toa after the seam)
    and those after with toa <= ``t_last_before + window`` (latest before): every linked pair
    with one hit on each side is among them. ``lag`` (see :func:`scan_rows`, over all
    positions ``lo..hi-1``) stops both scans early: for time-ordered hits only the few near
    the seam are looked at.
    """
    out = np.empty(hi - lo, np.int64)
    n = 0
    bound = t_first_after - window
    k = mid - 1
    while k >= lo:
        if parent[k] != NOT_CLUSTERED:
            t = _at(toa_a, toa_b, n_a, k)
            if t >= bound:
                out[n] = k
                n += 1
            elif t + lag < bound:      # every earlier position has toa <= t + lag
                break
        k -= 1
    out[:n] = out[:n][::-1].copy()
    bound = t_last_before + window
    for k in range(mid, hi):
        if parent[k] != NOT_CLUSTERED:
            t = _at(toa_a, toa_b, n_a, k)
            if t <= bound:
                out[n] = k
                n += 1
            elif t - lag > bound:      # every later position has toa >= t - lag
                break
    return out[:n].copy()


@njit(cache=True, nogil=True)
def relink(positions, n_a, x_a, y_a, toa_a, x_b, y_b, toa_b, xcell, xmin, ycell, ymin, grid_height, radius,
           window, group, parent, chain_next, next_t, head, head_t, state, starts, merged):
    """Link the listed (already clustered) positions again among themselves, joining the clusters
    of every linked pair (:func:`join_roots`): across thread seams, with an emptied grid.
    Positions as in :func:`seam_rows`; uses ``group`` as filled by :func:`link_sum` and
    overwrites the positions' ``chain_next`` and ``next_t``. A slot merged away is counted in
    ``merged[q]`` of its region ``starts[q]..starts[q+1]-1``."""
    for q in range(positions.size):
        k = positions[q]
        ck = (xcell[np.int64(_at(x_a, x_b, n_a, k)) - xmin] + ycell[np.int64(_at(y_a, y_b, n_a, k)) - ymin])
        tk = _at(toa_a, toa_b, n_a, k)
        gk = group[k]
        rk = find_root(parent, k)
        t_lo = tk - window
        t_hi = tk + window
        for dx in range(-radius, radius + 1):
            r0 = ck + dx * grid_height
            for dy in range(-radius, radius + 1):
                c = r0 + dy
                tj = head_t[c]
                if tj < t_lo:
                    continue
                j = head[c]
                while True:
                    if tj <= t_hi and group[j] == gk:
                        rj = find_root(parent, j)
                        if rj != rk:
                            gone = -parent[max(rk, rj)] - 1
                            q = 0
                            while starts[q + 1] <= gone:
                                q += 1
                            merged[q] += 1
                            rk = join_roots(parent, state, rk, rj)
                    tj = next_t[j]
                    if tj < t_lo:
                        break
                    j = chain_next[j]
        if head_t[ck] <= tk:
            chain_next[k] = head[ck]
            next_t[k] = head_t[ck]
            head[ck] = k
            head_t[ck] = tk
        else:
            j = head[ck]
            while next_t[j] > tk:
                j = chain_next[j]
            chain_next[k] = chain_next[j]
            next_t[k] = next_t[j]
            chain_next[j] = k
            next_t[j] = tk


@njit(cache=True, nogil=True)
def rows_of_slots(n_a, toa_a, toa_b, parent, selected, t_min, lag):
    """Positions (increasing; as in :func:`seam_rows`) whose cluster's slot ``s`` has ``selected[s]``.

    Only positions with ``toa >= t_min`` can be (pass the earliest first toa of the selected
    slots); the scan runs backwards from the last position and stops where ``lag`` (see
    :func:`scan_rows`) rules out any earlier one.
    """
    n_pos = parent.size
    out = np.empty(n_pos, np.int64)
    n = 0
    k = n_pos - 1
    while k >= 0:
        if parent[k] != NOT_CLUSTERED:
            t = _at(toa_a, toa_b, n_a, k)
            if t >= t_min:
                if selected[-parent[root_of(parent, k)] - 1]:
                    out[n] = k
                    n += 1
            elif t + lag < t_min:
                break
        k -= 1
    return out[:n][::-1].copy()


@njit(cache=True, nogil=True)
def row_labels(parent, label_of_slot, below, labels):
    """``labels[k]`` = ``label_of_slot[slot of row k]``, or ``below`` for rows not clustered."""
    for k in range(parent.size):
        p = parent[_u(k)]
        if p == NOT_CLUSTERED:
            labels[_u(k)] = below
        else:
            if p >= 0:
                p = parent[_u(root_of(parent, p))]
            labels[_u(k)] = label_of_slot[_u(-p - 1)]


# ---------------------------------------------------------------------------------------------
# Slots to centroids
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def count_kept(state, lo, hi, min_size, complete_before, is_open):
    """Sort slots ``lo..hi-1`` out: returns ``(clusters with >= min_size hits, their hits, hits in
    smaller clusters, smaller clusters, open clusters, earliest first toa of the open ones)``.

    A cluster whose latest hit is not before ``complete_before`` is *open* (it may still grow;
    pass the largest int64 when nothing is): ``is_open[s]`` is set, its size zeroed (so
    :func:`write_kept` skips it) and it counts nowhere else.
    Unused slots (size 0) count nowhere.
    """
    kept = 0
    kept_hits = 0
    small_hits = 0
    small = 0
    n_open = 0
    first_open = np.iinfo(np.int64).max
    for s in range(lo, hi):
        su = _u(s)
        sz = state[su, S_SIZE]
        is_open[su] = False
        if sz == 0:
            continue
        if state[su, S_LAST_TOA] >= complete_before:
            is_open[su] = True
            state[su, S_SIZE] = 0
            n_open += 1
            first_open = min(first_open, state[su, S_FIRST_TOA])
        elif sz >= min_size:
            kept += 1
            kept_hits += sz
        else:
            small += 1
            small_hits += sz
    return kept, kept_hits, small_hits, small, n_open, first_open


@njit(cache=True, nogil=True)
def write_kept(state, lo, hi, min_size, out, slot_of, at, end):
    """Centroids (``CENTROID_DTYPE``) of the slots ``lo..hi-1`` with ``>= min_size`` hits, in slot
    order, to ``out[at:end]``; ``slot_of[at + j]`` gets the slot of ``out[at + j]``. Returns how
    far what it wrote is from canonical order, as :func:`order_state`, or -1 when there are
    not exactly ``end - at`` such slots (nothing is written past ``end``)."""
    j = at
    disorder = 0
    for s in range(lo, hi):
        su = _u(s)
        sz = state[su, S_SIZE]
        if sz < min_size:
            continue
        if j == end:
            return -1
        w = state[su, S_TOT_SUM]
        ju = _u(j)
        r = out[ju]
        r.event = state[su, S_EVENT]
        r.train_id = np.uint64(state[su, S_TRAIN])
        r.chip = np.uint8(state[su, S_CHIP])
        r.x = state[su, S_X_SUM] / w
        r.y = state[su, S_Y_SUM] / w
        first = state[su, S_FIRST_TOA]
        r.toa_first = first
        r.toa = first + _time_offset(state[su, S_TOA_HI], state[su, S_TOA_LO], first, state[su, S_SEEN_TOA], w)
        first = state[su, S_FIRST_TOF]
        r.tof_first = first
        r.tof = first + _time_offset(state[su, S_TOF_HI], state[su, S_TOF_LO], first, state[su, S_SEEN_TOF], w)
        r.tot_sum = np.uint32(w)
        r.tot_mean = np.float32(w / sz)
        r.tot_max = np.uint16(state[su, S_BEST_TOT])
        r.size = np.uint32(sz)
        slot_of[ju] = s
        if j > at and disorder < 2:
            prev = out[_u(j - 1)]
            if prev.toa_first > r.toa_first:
                disorder = 2
            elif prev.toa_first == r.toa_first and _key_before(prev, r) > 0:
                disorder = 1
        j += 1
    return disorder if j == end else -1


@njit(cache=True, nogil=True)
def _key_before(a, b):
    """Canonical order of centroid records a and b (see ``core.sort_centroids``): -1, 0 or 1."""
    if a.toa_first != b.toa_first:
        return -1 if a.toa_first < b.toa_first else 1
    if a.event != b.event:
        return -1 if a.event < b.event else 1
    if a.chip != b.chip:
        return -1 if a.chip < b.chip else 1
    if a.x != b.x:
        return -1 if a.x < b.x else 1
    if a.y != b.y:
        return -1 if a.y < b.y else 1
    if a.tof_first != b.tof_first:
        return -1 if a.tof_first < b.tof_first else 1
    if a.size != b.size:
        return -1 if a.size < b.size else 1
    if a.tot_sum != b.tot_sum:
        return -1 if a.tot_sum < b.tot_sum else 1
    if a.tot_max != b.tot_max:
        return -1 if a.tot_max < b.tot_max else 1
    if a.toa != b.toa:
        return -1 if a.toa < b.toa else 1
    if a.tof != b.tof:
        return -1 if a.tof < b.tof else 1
    return 0


@njit(cache=True, nogil=True)
def order_state(c):
    """How far the centroids ``c`` are from canonical order: 0 in order, 1 sorted by
    ``toa_first`` but some runs of equal ``toa_first`` not in order (see :func:`sort_ties`),
    2 not sorted by ``toa_first``. Slots open in arrival order, so for time-ordered hits
    the answer is 0 or 1."""
    state = 0
    for j in range(c.size - 1):
        if c[j].toa_first > c[j + 1].toa_first:
            return 2
        if c[j].toa_first == c[j + 1].toa_first and _key_before(c[j], c[j + 1]) > 0:
            state = 1
    return state


@njit(cache=True, nogil=True)
def sort_ties(c, order):
    """For centroids sorted by ``toa_first``: put each run of equal ``toa_first`` in canonical
    order. ``order`` (int64, ``c.size``) receives the permutation (``c[order]`` is canonical);
    returns the positions it moves."""
    n = c.size
    for j in range(n):
        order[j] = j
    moved = np.empty(n, np.int64)
    n_moved = 0
    j = 0
    while j < n:
        e = j + 1
        while e < n and c[e].toa_first == c[j].toa_first:
            e += 1
        if e - j > 1:
            for a in range(j + 1, e):          # insertion sort of the (short) run
                v = order[a]
                b = a - 1
                while b >= j and _key_before(c[order[b]], c[v]) > 0:
                    order[b + 1] = order[b]
                    b -= 1
                order[b + 1] = v
            for a in range(j, e):
                if order[a] != a:
                    moved[n_moved] = a
                    n_moved += 1
        j = e
    return moved[:n_moved].copy()
