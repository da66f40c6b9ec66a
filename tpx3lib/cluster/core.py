"""Clustering and centroiding: :func:`cluster_hits` (one shot) and :class:`Clusterer` (streaming).

The criterion (see ``docs/clustering.md``), method ``"components"``: after dropping hits with
``tot <= tot_threshold_ns``, two hits are linked when they have the same event and chip,
``max(|dx|, |dy|) <= radius`` and ``|toa_a - toa_b| <= time_window_ns``; a cluster is a
connected component of the links; clusters with fewer than ``min_size`` hits are dropped.
Method ``"dbscan"`` gives pymepix's DBSCAN clusters (core, border, noise) instead.

Results never depend on the order of the input hits nor, for the streaming
:class:`Clusterer`, on how the hits are cut into chunks (as long as no hit arrives more
than ``reorder_window_s`` behind the newest one fed before it): every centroid is computed
from exact integer sums and the output is sorted canonically (by ``toa_first``, then
event, chip, x, y, ...).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..dtypes import CENTROID_DTYPE, EVENT_DTYPE, toa_seconds
from .kernels import (
    AXIS_SIZE, N_STATE, accumulate_clusters, chunk_times, count_kept, eps_edges, grid_cells, label_from_roots,
    link_keys, link_sum, number_roots, order_state, relink, reset_grid, reset_parent, row_labels, rows_of_slots,
    scan_rows, seam_rows, select_and_mark, sort_ties, union_edges, write_kept,
)
from .params import (
    LABEL_BELOW_TOT, LABEL_NOISE, LABEL_PENDING, LABEL_SMALL_CLUSTER, ClusterParams, ClusterStats,
)

__all__ = ["cluster_hits", "Clusterer", "as_event_array", "sort_centroids"]

_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
#: dtype of per-hit position arrays (grid cells, union-find, chains, labels): half the memory
#: traffic of int64; one call clusters at most 2**31 - 2 hits.
_POS = np.int32
_MAX_HITS_PER_CALL = 2**31 - 2
#: Largest per-pixel grid (compacted axes): 2**25 cells = 400 MB of int32 + int64 scratch.
_MAX_GRID_CELLS = 2**25

#: Slots reserved per row at first (clusters of >= 4 hits on average need fewer).
_SLOT_RATIO = 0.25

_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2),
                                   thread_name_prefix="tpx3-cluster")
    return _POOL


def as_event_array(hits: np.ndarray) -> np.ndarray:
    """View or convert ``hits`` as an ``EVENT_DTYPE`` array.

    ``EVENT_DTYPE`` input is returned as is (no copy). Any other structured array needs the
    fields x, y, tot, toa; missing event is set to -1 (no trigger: ``PIXEL_DTYPE`` input),
    missing chip, train_id and tof to 0.
    """
    hits = np.asarray(hits)
    if hits.dtype == EVENT_DTYPE:
        return hits if hits.ndim == 1 else hits.reshape(-1)
    names = hits.dtype.names
    if names is None:
        raise TypeError(f"hits must be a structured array (EVENT_DTYPE or PIXEL_DTYPE), not {hits.dtype}")
    missing = [f for f in ("x", "y", "tot", "toa") if f not in names]
    if missing:
        raise TypeError(f"hits lack field(s) {', '.join(missing)}; have {', '.join(names)}")
    hits = hits.reshape(-1)
    out = np.zeros(hits.size, EVENT_DTYPE)
    out["event"] = -1
    for f in EVENT_DTYPE.names:
        if f in names:
            out[f] = hits[f]
    return out


def _canonical_order(toa_first: np.ndarray, tie_keys) -> np.ndarray:
    """Stable argsort by ``toa_first``; runs of equal values are ordered by
    ``np.lexsort(tie_keys(positions_in_run))`` (keys computed only for those few)."""
    order = np.argsort(toa_first, kind="stable")
    if order.size < 2:
        return order
    s = toa_first[order]
    same = s[1:] == s[:-1]
    if same.any():
        in_run = np.zeros(order.size, bool)
        in_run[1:] |= same
        in_run[:-1] |= same
        pos = np.flatnonzero(in_run)
        sub = order[pos]
        # toa_first as the last (primary) key keeps each run in its place
        order[pos] = sub[np.lexsort(tuple(tie_keys(sub)) + (toa_first[sub],))]
    return order


def sort_centroids(c: np.ndarray) -> np.ndarray:
    """Permutation putting centroids in canonical order.

    Primary key ``toa_first``; ties (rare) are broken by event, chip, x, y, tof_first,
    size, tot_sum, tot_max, toa, tof. Clusters whose keys are all equal are identical.
    """
    return _canonical_order(np.ascontiguousarray(c["toa_first"]), lambda sub: (
        c["tof"][sub], c["toa"][sub], c["tot_max"][sub], c["tot_sum"][sub], c["size"][sub],
        c["tof_first"][sub], c["y"][sub], c["x"][sub], c["chip"][sub], c["event"][sub]))


class _Workspace(threading.local):
    """Per-thread scratch arrays reused across calls.

    Fresh multi-megabyte arrays cost page faults on every call (several ns per hit on a
    busy VM); the per-hit work arrays are therefore kept and grown as needed. Views handed
    out are only valid until the next clustering call in the same thread.
    """

    def __init__(self):
        self.buffers: dict[str, np.ndarray] = {}
        #: slots reserved per row and thread for link_sum (grows when clusters are small)
        self.slot_ratio = _SLOT_RATIO

    def get(self, name: str, n: int, dtype=np.int64) -> np.ndarray:
        buf = self.buffers.get(name)
        if buf is None or buf.size < n or buf.dtype != dtype:
            buf = np.empty(max(n, 1024) + max(n, 1024) // 4, dtype)
            self.buffers[name] = buf
        return buf[:n]


_WS = _Workspace()


def _in_canonical_order(c: np.ndarray, disorder: int | None = None):
    """``(c in canonical order, the permutation applied or None)``.

    Centroids of time-ordered hits come out nearly sorted: :func:`kernels.order_state` checks
    (unless ``disorder``, its answer, is given); when only runs of equal ``toa_first`` are out
    of order just those rows move.
    """
    if disorder is None:
        disorder = order_state(c)
    if disorder == 0:
        return c, None
    if disorder == 1:
        order = np.empty(c.size, np.int64)
        moved = sort_ties(c, order)
        if not (c.flags.writeable and c.flags.c_contiguous):
            c = np.ascontiguousarray(c).copy()
        rows = c.view(np.uint8).reshape(c.size, c.dtype.itemsize)    # our own array: in place
        rows[moved] = rows[order[moved]]
        return c, order
    order = sort_centroids(c)
    return _take_records(c, order), order


def _take_records(a: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``a[order]`` for a structured array, as a byte-row gather (numpy's record take is slow)."""
    if a.size == 0 or order.size == 0:
        return a[:0].copy()
    rows = np.ascontiguousarray(a).view(np.uint8).reshape(a.size, a.dtype.itemsize)
    return rows[order].view(a.dtype).reshape(-1)


def _concat_records(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.concatenate([a, b])`` of two arrays of the same record dtype, as a byte copy."""
    if not a.size:
        return b
    if not b.size:
        return a
    out = np.empty(a.size + b.size, a.dtype)
    raw = out.view(np.uint8).reshape(out.size, a.dtype.itemsize)
    raw[:a.size] = np.ascontiguousarray(a).view(np.uint8).reshape(a.size, a.dtype.itemsize)
    raw[a.size:] = np.ascontiguousarray(b).view(np.uint8).reshape(b.size, b.dtype.itemsize)
    return out


@dataclass
class _Outcome:
    """What one clustering pass over a set of hits produced."""

    centroids: np.ndarray      # CENTROID_DTYPE, canonical order, finished clusters only
    pending: np.ndarray        # components: the hits whose cluster may still grow (EVENT_DTYPE);
    #                            dbscan: their rows
    pending_first_toa: int     # earliest ToA among pending hits (INT64_MAX if none)
    hits_clustered: int = 0    # hits in returned centroids
    hits_small: int = 0        # hits in clusters below min_size
    hits_noise: int = 0        # DBSCAN noise
    labels: np.ndarray | None = None  # int64 per row of ev (only when asked for)
    clusters_small: int = 0    # clusters dropped for min_size
    newest: int = _INT64_MIN   # components: latest toa seen (including the earlier newest)
    late: int = 0              # components: hits older than late_before


def _run_parallel(fn, n_pieces: int) -> list:
    """``[fn(0), fn(1), ...]``, piece 0 in this thread and the others in the pool."""
    if n_pieces == 1:
        return [fn(0)]
    futures = [_pool().submit(fn, piece) for piece in range(1, n_pieces)]
    first = fn(0)
    return [first] + [f.result() for f in futures]


_NO_POSITIONS = np.zeros(0, np.int64)


class _Forest:
    """A union-find forest over positions ``0..m-1`` cut into pieces (one per thread).

    ``bounds`` are the piece starts plus ``m``; after :meth:`number`, every root has a
    number within its piece and ``offsets[p]`` is the first global cluster number of piece
    ``p``, so a position's cluster is ``root_number[root] + offsets[piece of root]``.
    """

    def __init__(self, parent, member, bounds):
        self.parent = parent
        self.member = member
        self.bounds = bounds
        self.root_number = _WS.get("root_number", parent.size, _POS)
        self.offsets = np.zeros(bounds.size - 1, np.int64)
        self.n_clusters = 0

    @property
    def pieces(self) -> int:
        return self.bounds.size - 1

    def number(self) -> int:
        b = self.bounds
        counts = _run_parallel(
            lambda q: number_roots(b[q], b[q + 1], self.parent, self.member, self.root_number), self.pieces)
        self.offsets[1:] = np.cumsum(counts)[:-1]
        self.n_clusters = int(sum(counts))
        return self.n_clusters

    def labels(self) -> np.ndarray:
        """Cluster number per position (-1 for non-members)."""
        out = _WS.get("labels", self.parent.size, _POS)
        b = self.bounds
        _run_parallel(lambda q: label_from_roots(b[q], b[q + 1], self.parent, self.member, self.root_number,
                                                 b[:-1], self.offsets, out), self.pieces)
        return out

    def sums(self, ev, idx) -> np.ndarray:
        """Per-cluster state (see :func:`accumulate_clusters`); each thread owns the clusters
        whose root lies in its piece, hits of others' clusters are added afterwards."""
        state = _WS.get("cluster_state", self.n_clusters * N_STATE).reshape(self.n_clusters, N_STATE)
        state[:] = 0
        b = self.bounds
        fields = (ev["x"], ev["y"], ev["tot"], ev["toa"], ev["tof"], ev["event"], ev["train_id"], ev["chip"])

        def add(positions, lo, hi, deferred):
            return accumulate_clusters(positions, lo, hi, idx, self.parent, self.member, self.root_number,
                                       b[:-1], self.offsets, *fields, state, deferred)

        deferred = [_WS.get(f"deferred{q}", int(b[q + 1] - b[q])) for q in range(self.pieces)]
        counts = _run_parallel(lambda q: add(_NO_POSITIONS, b[q], b[q + 1], deferred[q]), self.pieces)
        for q in range(1, self.pieces):
            if counts[q]:
                add(deferred[q][:counts[q]].copy(), 0, 0, _NO_POSITIONS)
        return state


def _select_rows(ev: np.ndarray, threshold: int, pieces: int):
    """Rows above the ToT threshold (increasing) and the presence of their x and y values."""
    n = ev.size
    bounds = np.linspace(0, n, pieces + 1).astype(np.int64)
    idx = _WS.get("select", n, np.int64)
    tot, x, y = ev["tot"], ev["x"], ev["y"]

    def piece(q):
        px = np.zeros(AXIS_SIZE, np.bool_)
        py = np.zeros(AXIS_SIZE, np.bool_)
        k = select_and_mark(tot, x, y, bounds[q], bounds[q + 1], threshold, idx[bounds[q]:], px, py)
        return k, px, py

    parts = _run_parallel(piece, pieces)
    k0, px, py = parts[0]
    m = k0
    for q in range(1, pieces):
        k, qx, qy = parts[q]
        if k:
            idx[m:m + k] = idx[bounds[q]:bounds[q] + k].copy()
        m += k
        px |= qx
        py |= qy
    return idx[:m], px, py


def _grid(size: int):
    """The calling thread's per-pixel grid (newest position and its time per cell), emptied."""
    head = _WS.get("grid_head", size, _POS)
    head_t = _WS.get("grid_time", size)
    reset_grid(head, head_t)
    return head, head_t


def _scan_total(parts):
    """Statistics of consecutive pieces (:func:`kernels.scan_rows` results) taken together."""
    n, t_min, t_max, lag, late = 0, _INT64_MAX, _INT64_MIN, 0, 0
    for k, q_min, q_max, q_lag, q_late in parts:
        if k:
            lag = max(lag, q_lag, t_max - q_min) if n else q_lag
            n += k
            t_min, t_max = min(t_min, q_min), max(t_max, q_max)
            late += q_late
    return n, t_min, t_max, lag, late


def _components(ev: np.ndarray, p: ClusterParams, held: np.ndarray | None = None, hold_back: int | None = None,
                newest: int = _INT64_MIN, late_before: int = _INT64_MIN, want_labels: bool = False):
    """Method ``"components"``: link and sum in one pass per thread (:func:`kernels.link_sum`).

    ``held`` (streaming): hits held back from earlier calls, clustered together with ``ev``
    without copying either (positions ``0..held.size-1`` are the held hits, then ``ev``). With
    ``hold_back`` set, a cluster stays open (its hits come back as ``pending``) unless its
    latest hit is older than ``max(newest, latest toa now) - hold_back``; hits of ``ev`` older
    than ``late_before`` are counted as late.

    Each of ``k`` threads takes a contiguous piece of positions, with its own grid and its own
    region of the slot matrix (sized from the share of slots per row seen so far; a region
    that overflows makes the pass run again with larger ones). Clusters linked across a seam
    are then joined by linking the positions near the seam in time again
    (:func:`kernels.relink`: few for time-ordered input, all in the worst case - exact either
    way). Returns ``(outcome, rows at or below the ToT threshold)``.
    """
    if held is None:
        held = ev[:0]
    n_a, n_b = held.size, ev.size
    n = n_a + n_b
    threads = p.n_threads if n_b >= 20000 * p.n_threads else 1
    rows_b = np.linspace(0, n_b, threads + 1).astype(np.int64)      # rows of ev per piece
    bounds = rows_b + n_a                                             # positions per piece
    bounds[0] = 0
    threshold = p.tot_threshold_ns
    a = [held[f] for f in ("x", "y", "tot", "toa", "tof", "event", "train_id", "chip")]
    b = [ev[f] for f in ("x", "y", "tot", "toa", "tof", "event", "train_id", "chip")]

    def scan(q):
        px = np.zeros(AXIS_SIZE, np.bool_)
        py = np.zeros(AXIS_SIZE, np.bool_)
        parts = [scan_rows(b[2], b[0], b[1], b[3], rows_b[q], rows_b[q + 1], threshold, late_before, px, py)]
        if q == 0 and n_a:
            parts.insert(0, scan_rows(a[2], a[0], a[1], a[3], 0, n_a, threshold, _INT64_MIN, px, py))
        return _scan_total(parts), px, py

    scans = _run_parallel(scan, threads)
    present_x, present_y = scans[0][1], scans[0][2]
    for _, qx, qy in scans[1:]:
        present_x |= qx
        present_y |= qy
    stats = [sc for sc, _, _ in scans]
    m, _, t_max, lag_all, late = _scan_total(stats)
    newest = max(newest, t_max)
    below = n - m
    labels_out = np.full(n, LABEL_BELOW_TOT, np.int64) if want_labels else None
    if m == 0:
        return _Outcome(np.zeros(0, CENTROID_DTYPE), held[:0], _INT64_MAX, labels=labels_out,
                        newest=newest, late=late), below
    if n > _MAX_HITS_PER_CALL:
        raise ValueError(f"{n} hits in one call; cluster at most {_MAX_HITS_PER_CALL} at a time (use Clusterer)")
    radius, window = p.link_radius(), p.link_window_units()
    xcell, xmin, ycell, ymin, grid_size, grid_height = grid_cells(present_x, present_y, radius)
    if grid_size > _MAX_GRID_CELLS:
        raise ValueError(f"hits spread over a {grid_size}-cell pixel grid (more than {_MAX_GRID_CELLS}); "
                         "cluster chips or regions separately")
    geometry = (xcell, xmin, ycell, ymin, grid_height, radius, window)
    group = _WS.get("group", n)
    parent = _WS.get("parent", n, _POS)
    chain_next = _WS.get("chain", n, _POS)
    next_t = _WS.get("next_time", n)
    work = (group, parent, chain_next, next_t)

    ratio = _WS.slot_ratio
    sizes = np.diff(bounds)
    while True:
        caps = np.minimum(sizes, (sizes * ratio).astype(np.int64) + 64)
        starts = np.concatenate([[0], np.cumsum(caps)])
        # the slot matrix is this thread's: pool threads are shared between callers
        state = _WS.get("slots", int(starts[-1]) * N_STATE).reshape(-1, N_STATE)

        def piece(q):
            head, head_t = _grid(grid_size)
            end, used, merged = starts[q + 1], starts[q], 0
            if q == 0 and n_a:
                stop, used, merged = link_sum(0, n_a, 0, *a, threshold, *geometry, *work, head, head_t, state, used,
                                              end, merged)
                if stop < n_a:
                    return False, used, merged
            stop, used, merged = link_sum(rows_b[q], rows_b[q + 1], n_a, *b, threshold, *geometry, *work, head,
                                          head_t, state, used, end, merged)
            return stop == rows_b[q + 1], used, merged

        done = _run_parallel(piece, threads)
        if all(ok for ok, _, _ in done):
            break
        ratio = 1.0                   # cannot overflow: one slot per position
    _WS.slot_ratio = min(1.0, max(_SLOT_RATIO, 1.5 * max((used - starts[q]) / max(sizes[q], 1)
                                                         for q, (_, used, _) in enumerate(done))))
    ranges = [(int(starts[q]), int(used)) for q, (_, used, _) in enumerate(done)]
    merged = np.array([k for _, _, k in done], np.int64)

    t_max_before = _INT64_MIN
    lag_upto = stats[0][3]
    for q in range(1, threads):
        t_max_before = max(t_max_before, stats[q - 1][2])
        lag_upto = _scan_total(stats[:q + 1])[3]
        if stats[q][0] == 0 or t_max_before == _INT64_MIN:
            continue
        seam = seam_rows(0, bounds[q], bounds[q + 1], n_a, a[3], b[3], parent, window, stats[q][1], t_max_before,
                         lag_upto)
        if seam.size:
            head, head_t = _grid(grid_size)
            relink(seam, n_a, a[0], a[1], a[3], b[0], b[1], b[3], *geometry, *work, head, head_t, state, starts,
                   merged)

    is_open = _WS.get("open_slots", state.shape[0], np.bool_)
    complete_before = _INT64_MAX if hold_back is None else newest - hold_back
    # one shot, min_size 1: every cluster is kept, the counts are known without a pass over the slots
    known = ([hi - lo - k for (lo, hi), k in zip(ranges, merged)], m) if hold_back is None and p.min_size == 1 else None
    c, slot_of, counts = _centroids(state, ranges, p.min_size, complete_before, is_open, known)
    clustered, small, small_clusters, n_open, pending_first = counts
    pending = held[:0]
    if n_open:
        pos = rows_of_slots(n_a, a[3], b[3], parent, is_open, pending_first, lag_all)
        split = int(np.searchsorted(pos, n_a))
        pending = _concat_records(_take_records(held, pos[:split]), _take_records(ev, pos[split:] - n_a))
    if labels_out is not None:
        label_of_slot = np.full(state.shape[0], LABEL_SMALL_CLUSTER, np.int64)
        label_of_slot[slot_of] = np.arange(slot_of.size)
        if n_open:
            label_of_slot[is_open] = LABEL_PENDING
        row_labels(parent, label_of_slot, LABEL_BELOW_TOT, labels_out)
    return _Outcome(c, pending, pending_first, clustered, small, 0, labels_out, small_clusters,
                    newest=newest, late=late), below


def _centroids(state: np.ndarray, ranges, min_size: int, complete_before: int = _INT64_MAX,
               is_open: np.ndarray | None = None, known=None):
    """Centroids, in canonical order, of the slots in ``ranges`` (``(lo, hi)`` pairs) with at
    least ``min_size`` hits, leaving out open clusters (latest hit not before
    ``complete_before``: marked in ``is_open``, their size zeroed; see :func:`kernels.count_kept`).
    ``known``: ``(clusters per range, hits)`` when every used slot is a kept cluster (no pass
    over the slots to count them).

    Returns ``(centroids, slot of each centroid, (hits in them, hits in smaller clusters,
    smaller clusters, open clusters, earliest first toa of the open ones))``. Slots are opened
    in arrival order, so for time-ordered hits the centroids come out sorted (but for runs of
    equal ``toa_first``) and only the check is paid for.
    """
    if known is not None:
        counts = [(k, 0, 0, 0, 0, _INT64_MAX) for k in known[0]]
        counts[0] = (known[0][0], known[1], 0, 0, 0, _INT64_MAX)
    else:
        if is_open is None:
            is_open = np.empty(state.shape[0], np.bool_)
        counts = _run_parallel(lambda q: count_kept(state, ranges[q][0], ranges[q][1], min_size, complete_before,
                                                    is_open), len(ranges))
    at = np.concatenate([[0], np.cumsum([k[0] for k in counts])])
    c = np.empty(int(at[-1]), CENTROID_DTYPE)
    slot_of = np.empty(c.size, np.int64)
    written = _run_parallel(
        lambda q: write_kept(state, ranges[q][0], ranges[q][1], min_size, c, slot_of, at[q], at[q + 1]), len(ranges))
    if min(written) < 0:
        raise RuntimeError("clustering: cluster count mismatch (internal error)")
    disorder = max(written)
    for q in range(1, len(ranges)):      # where the ranges meet
        if 0 < at[q] < c.size:
            disorder = max(disorder, order_state(c[at[q] - 1:at[q] + 1]))
    c, order = _in_canonical_order(c, disorder)
    if order is not None:
        slot_of = slot_of[order]
    totals = (sum(k[1] for k in counts), sum(k[2] for k in counts), sum(k[3] for k in counts),
              sum(k[4] for k in counts), min(k[5] for k in counts))
    return c, slot_of, totals


def _dbscan_members(n, edges, min_samples, toa_k, x_k, y_k):
    """DBSCAN on positions ``0..n-1`` from their eps edges.

    Core points have ``>= min_samples`` neighbours counting themselves; clusters are the
    connected components of core-core edges; a non-core point within eps of a core point is
    a border point and joins the cluster of its nearest core neighbour (ties: the earliest
    in (toa, x, y) order); the rest is noise. Returns ``(parent, member)``: a union-find
    forest whose sets are the clusters, and the mask of clustered (non-noise) positions.
    """
    a, b, d2 = edges
    counts = np.ones(n, np.int64)
    counts += np.bincount(a, minlength=n)
    counts += np.bincount(b, minlength=n)
    core = counts >= min_samples
    parent = np.arange(n, dtype=_POS)
    ca, cb = core[a], core[b]
    union_edges(parent, a, b, ca & cb)
    sel1 = cb & ~ca
    sel2 = ca & ~cb
    border = np.concatenate([a[sel1], b[sel2]])
    corept = np.concatenate([b[sel1], a[sel2]])
    dist = np.concatenate([d2[sel1], d2[sel2]])
    if border.size:
        order = np.lexsort((y_k[corept], x_k[corept], toa_k[corept], dist, border))
        border, corept = border[order], corept[order]
        firsts = np.ones(border.size, bool)
        firsts[1:] = border[1:] != border[:-1]
        border, corept = border[firsts], corept[firsts]
        union_edges(parent, border, corept, np.ones(border.size, bool))
    member = core.copy()
    member[border] = True
    return parent, member


def _cluster_rows(ev: np.ndarray, p: ClusterParams, complete_before: int | None = None,
                  feature: np.ndarray | None = None, want_labels: bool = False) -> tuple[_Outcome, int]:
    """Cluster the rows of ``ev`` with ``tot > tot_threshold_ns``; returns the outcome and the
    number of rows at or below the threshold.

    With ``complete_before`` set, only clusters whose linked component ends (latest ToA)
    strictly before it are finished; the rows of the others are returned as pending.
    ``feature`` (per row) overrides the DBSCAN time feature (default
    ``toa_seconds(tof) * tof_scale``).
    """
    if p.method == "components":
        return _components(ev, p, want_labels=want_labels)
    return _dbscan(ev, p, complete_before, feature, want_labels)


def _dbscan(ev: np.ndarray, p: ClusterParams, complete_before: int | None, feature: np.ndarray | None,
            want_labels: bool) -> tuple[_Outcome, int]:
    """Method ``"dbscan"`` (pymepix): eps edges, core points, border points, noise (one thread but
    for the selection of the hits)."""
    n_rows = ev.size
    threads = p.n_threads if n_rows >= 20000 * p.n_threads else 1
    idx, present_x, present_y = _select_rows(ev, p.tot_threshold_ns, threads)
    m = idx.size
    below = n_rows - m
    labels_out = np.full(n_rows, LABEL_BELOW_TOT, np.int64) if want_labels else None
    if m == 0:
        return _Outcome(np.zeros(0, CENTROID_DTYPE), idx.copy(), _INT64_MAX, labels=labels_out), below
    if m > _MAX_HITS_PER_CALL:
        raise ValueError(f"{m} hits in one call; cluster at most {_MAX_HITS_PER_CALL} at a time (use Clusterer)")
    toa = ev["toa"]
    radius, window = p.link_radius(), p.link_window_units()
    geometry = grid_cells(present_x, present_y, radius)
    grid_size, grid_height = geometry[4], geometry[5]
    if grid_size > _MAX_GRID_CELLS:
        raise ValueError(f"hits spread over a {grid_size}-cell pixel grid (more than {_MAX_GRID_CELLS}); "
                         "cluster chips or regions separately")
    t = _WS.get("time", m)
    group = _WS.get("group", m)
    parent = _WS.get("parent", m, _POS)
    chain_next = _WS.get("chain", m, _POS)
    member = _WS.get("member", m, np.bool_)
    member[:] = True
    pending_rows = idx[:0].copy()
    pending_first = _INT64_MAX
    noise = 0

    x, y, tof = ev["x"], ev["y"], ev["tof"]
    cell = _WS.get("cell", m, _POS)
    link_keys(idx, 0, m, x, y, toa, ev["event"], ev["chip"], *geometry[:4], cell, t, group)
    feat = (toa_seconds(tof) * p.tof_scale if feature is None else feature)[idx]
    x_k = x[idx].astype(np.float64)
    y_k = y[idx].astype(np.float64)
    edges = eps_edges(cell, t, group, x_k, y_k, feat, grid_size, grid_height, radius, window,
                      float(p.eps) ** 2, chain_next)
    done_hit = np.ones(m, bool)
    if complete_before is not None:
        # finished = the whole eps-connected component ends before the bound
        reset_parent(0, m, parent)
        union_edges(parent, edges[0], edges[1], np.ones(edges[0].size, bool))
        comp = _Forest(parent, member, np.array([0, m]))
        n_comp = comp.number()
        comp_of = comp.labels()[:m].astype(np.int64)
        last = np.full(n_comp, _INT64_MIN, np.int64)
        np.maximum.at(last, comp_of, t)
        done_hit = (last < complete_before)[comp_of]
        if not done_hit.all():
            pending_rows = idx[~done_hit]
            pending_first = int(t[~done_hit].min())
    parent2, member2 = _dbscan_members(m, edges, p.min_samples, t, x_k, y_k)
    member2 &= done_hit
    forest = _Forest(parent2, member2, np.array([0, m]))
    forest.number()
    state = forest.sums(ev, idx)
    noise = int(np.count_nonzero(done_hit & ~member2))

    c, slot_of, (clustered, small, small_clusters, _, _) = _centroids(state, [(0, state.shape[0])], p.min_size)
    if labels_out is not None:
        to_output = np.full(forest.n_clusters, LABEL_SMALL_CLUSTER, np.int64)
        to_output[slot_of] = np.arange(slot_of.size)
        lab = forest.labels()[:m]
        out = np.full(m, LABEL_NOISE, np.int64)
        ok = lab >= 0
        out[ok] = to_output[lab[ok]]
        labels_out[idx] = out
        labels_out[pending_rows] = LABEL_PENDING
    return _Outcome(c, pending_rows, pending_first, clustered, small, noise, labels_out, small_clusters), below


def cluster_hits(hits: np.ndarray, params: ClusterParams | None = None, return_labels: bool = False,
                 timewalk=None, stats: ClusterStats | None = None):
    """Cluster all ``hits`` at once and return their centroids (``CENTROID_DTYPE``).

    Parameters
    ----------
    hits : ``EVENT_DTYPE`` (hits with their event/trigger and tof) or ``PIXEL_DTYPE`` (no
        trigger: event -1, tof 0 in the output) array, in any order.
    params : :class:`ClusterParams` (default: ``ClusterParams()``).
    return_labels : also return an int64 array, one per input hit: the index of its centroid
        in the result, or ``LABEL_BELOW_TOT`` (-1), ``LABEL_SMALL_CLUSTER`` (-2),
        ``LABEL_NOISE`` (-3, DBSCAN only).
    timewalk : optional :class:`~tpx3lib.cluster.timewalk.TimewalkTable` applied to the hits'
        toa and tof before clustering.
    stats : optional :class:`ClusterStats` to add the hit accounting to.

    Centroids come sorted by ``toa_first`` (ties broken canonically), so the result does not
    depend on the order of ``hits``.
    """
    p = params if params is not None else ClusterParams()
    if not isinstance(p, ClusterParams):
        raise TypeError(f"params must be a ClusterParams, not {type(p).__name__}")
    ev = as_event_array(hits)
    if timewalk is not None:
        ev = timewalk.apply(ev)
    out, below = _cluster_rows(ev, p, want_labels=return_labels)
    if stats is not None:
        stats.hits_in += ev.size
        stats.hits_below_tot += below
        _count(out, stats)
    return (out.centroids, out.labels) if return_labels else out.centroids


def _count(out: _Outcome, stats: ClusterStats) -> None:
    stats.hits_clustered += out.hits_clustered
    stats.hits_in_small_clusters += out.hits_small
    stats.hits_noise += out.hits_noise
    stats.clusters_dropped_small += out.clusters_small
    stats.clusters_out += out.centroids.size


class Clusterer:
    """Streaming clustering: feed chunks of hits, get the centroids of finished clusters.

    ``feed(hits)`` adds a chunk (``EVENT_DTYPE`` or ``PIXEL_DTYPE``, any order) and returns the
    centroids that can no longer change; ``flush()`` returns the rest. The concatenation of
    everything returned equals ``cluster_hits`` on all the hits at once - same centroids, same
    order - for any chunking and any arrival order in which no hit comes more than
    ``params.reorder_window_s`` behind the newest hit fed before it. Hits that do are still
    clustered but counted in ``stats.late_hits`` (their cluster may come out in pieces).

    How: a cluster is finished when its latest hit is older than
    ``newest - reorder_window - time_window`` (no future hit can link to it); its hits leave
    the pending set. Finished centroids are held until every cluster that could still start
    earlier is finished too, so the output is in canonical order across calls.
    """

    def __init__(self, params: ClusterParams | None = None, timewalk=None):
        self.params = params if params is not None else ClusterParams()
        if not isinstance(self.params, ClusterParams):
            raise TypeError(f"params must be a ClusterParams, not {type(self.params).__name__}")
        self.timewalk = timewalk
        self.stats = ClusterStats()
        self._pending = np.zeros(0, EVENT_DTYPE)
        self._work: np.ndarray | None = None
        self._held = np.zeros(0, CENTROID_DTYPE)
        self._newest = _INT64_MIN
        self._pending_first = _INT64_MAX
        reorder = self.params.reorder_window_units()
        if timewalk is not None:
            reorder += timewalk.spread_units()
        self._reorder = reorder
        self._window = self.params.link_window_units()
        self._final_until = _INT64_MIN

    @property
    def final_until(self) -> int:
        """Time (ToA units) before which every centroid has been returned: a cluster whose
        first hit is earlier than this will not be returned any more."""
        return int(self._final_until)

    @property
    def pending_hits(self) -> int:
        """Hits held back because their cluster may still grow."""
        return int(self._pending.size)

    def _accept(self, hits: np.ndarray) -> np.ndarray:
        """The chunk as EVENT_DTYPE (a view when possible), timewalk-corrected."""
        ev = as_event_array(hits)
        if self.timewalk is not None:
            ev = self.timewalk.apply(ev)
        self.stats.hits_in += ev.size
        return ev

    def _finish(self, out: _Outcome) -> None:
        self.stats.hits_clustered += out.hits_clustered
        self.stats.hits_in_small_clusters += out.hits_small
        self.stats.hits_noise += out.hits_noise
        self.stats.clusters_dropped_small += out.clusters_small
        if out.centroids.size:
            self._held = np.concatenate([self._held, out.centroids]) if self._held.size else out.centroids

    def _emit(self, bound: int | None) -> np.ndarray:
        if bound is None:
            self._final_until = np.iinfo(np.int64).max
        elif bound > self._final_until:
            self._final_until = int(bound)
        held = self._held
        ready = np.ones(held.size, bool) if bound is None else held["toa_first"] < bound
        if ready.all():
            out, self._held = held, held[:0]
        else:
            out = _take_records(held, np.flatnonzero(ready))
            self._held = _take_records(held, np.flatnonzero(~ready))
        out, _ = _in_canonical_order(out)
        self.stats.clusters_out += out.size
        self.stats.hits_pending = int(self._pending.size)
        return out

    def _join(self, ev: np.ndarray) -> np.ndarray:
        """DBSCAN: pending hits followed by the new chunk, in a buffer kept between calls."""
        n_old, n = self._pending.size, self._pending.size + ev.size
        if self._work is None or self._work.size < n:
            self._work = np.empty(n + n // 4, EVENT_DTYPE)
        work = self._work[:n]
        # byte copies: numpy's field-by-field copy of packed records is several times slower
        raw = work.view(np.uint8).reshape(n, EVENT_DTYPE.itemsize)
        raw[:n_old] = self._pending.view(np.uint8).reshape(n_old, EVENT_DTYPE.itemsize)
        raw[n_old:] = np.ascontiguousarray(ev).view(np.uint8).reshape(ev.size, EVENT_DTYPE.itemsize)
        return work

    def feed(self, hits: np.ndarray) -> np.ndarray:
        """Add a chunk of hits; return the centroids (``CENTROID_DTYPE``) now final."""
        ev = self._accept(hits)
        if not ev.size:        # nothing new: nothing more can finish
            return self._emit(min(self._pending_first, self._newest - self._reorder))
        late_before = self._newest - self._reorder if self._newest != _INT64_MIN else _INT64_MIN
        if self.params.method == "components":
            # the pending hits and the chunk are clustered together; the chunk is not copied
            out, below = _components(ev, self.params, held=self._pending, hold_back=self._reorder + self._window,
                                     newest=self._newest, late_before=late_before)
            self._newest, late = out.newest, out.late
            self._pending = out.pending
        else:
            newest, late = chunk_times(ev["tot"], ev["toa"], self.params.tot_threshold_ns, late_before)
            self._newest = max(self._newest, int(newest))
            work = self._join(ev) if self._pending.size else ev
            complete_before = self._newest - self._reorder - self._window
            out, below = _cluster_rows(work, self.params, complete_before=complete_before)
            # only the (few) pending hits are copied and kept
            self._pending = _take_records(work, out.pending)
        self.stats.late_hits += int(late)
        self.stats.hits_below_tot += below
        self._finish(out)
        self._pending_first = out.pending_first_toa
        return self._emit(min(out.pending_first_toa, self._newest - self._reorder))

    def flush(self) -> np.ndarray:
        """Finish every pending cluster and return all centroids not yet returned."""
        if self._pending.size:
            out, _ = _cluster_rows(self._pending, self.params)
            self._finish(out)
            self._pending = self._pending[:0]
            self._pending_first = _INT64_MAX
        return self._emit(None)
