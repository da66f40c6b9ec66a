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
from . import kernels
from .kernels import (
    AXIS_SIZE, accumulate_clusters, eps_edges, finish_time_offsets, grid_cells, kept_clusters, label_from_roots,
    link_components, link_keys, number_roots, positions_in_clusters, reset_parent, seam_positions,
    select_and_mark, union_edges, write_centroids,
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


def _tie_keys(st, clusters, toa_off, tof_off):
    """Secondary sort keys of clusters (least significant first), as in :func:`sort_centroids`."""
    w = st[clusters, kernels.S_TOT_SUM]
    return (st[clusters, kernels.S_FIRST_TOF] + tof_off[clusters],
            st[clusters, kernels.S_FIRST_TOA] + toa_off[clusters],
            st[clusters, kernels.S_BEST_TOT], w, st[clusters, kernels.S_SIZE],
            st[clusters, kernels.S_FIRST_TOF], st[clusters, kernels.S_Y_SUM] / w,
            st[clusters, kernels.S_X_SUM] / w, st[clusters, kernels.S_CHIP], st[clusters, kernels.S_EVENT])


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

    def get(self, name: str, n: int, dtype=np.int64) -> np.ndarray:
        buf = self.buffers.get(name)
        if buf is None or buf.size < n or buf.dtype != dtype:
            buf = np.empty(max(n, 1024) + max(n, 1024) // 4, dtype)
            self.buffers[name] = buf
        return buf[:n]

    def arange(self, n: int) -> np.ndarray:
        """``np.arange(n)`` (int64) from a kept buffer: do not write to it."""
        buf = self.buffers.get("__arange")
        if buf is None or buf.size < n:
            buf = np.arange(max(n, 1024) + max(n, 1024) // 4, dtype=np.int64)
            self.buffers["__arange"] = buf
        return buf[:n]


_WS = _Workspace()


def _take_records(a: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``a[order]`` for a structured array, as a byte-row gather (numpy's record take is slow)."""
    if a.size == 0 or order.size == 0:
        return a[:0].copy()
    rows = np.ascontiguousarray(a).view(np.uint8).reshape(a.size, a.dtype.itemsize)
    return rows[order].view(a.dtype).reshape(-1)


@dataclass
class _Outcome:
    """What one clustering pass over a set of hits produced."""

    centroids: np.ndarray      # CENTROID_DTYPE, canonical order, finished clusters only
    pending: np.ndarray        # rows of hits whose cluster may still grow
    pending_first_toa: int     # earliest ToA among pending hits (INT64_MAX if none)
    hits_clustered: int = 0    # hits in returned centroids
    hits_small: int = 0        # hits in clusters below min_size
    hits_noise: int = 0        # DBSCAN noise
    labels: np.ndarray | None = None  # int64 per row of ev (only when asked for)
    clusters_small: int = 0    # clusters dropped for min_size


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

    def positions_of(self, selected: np.ndarray) -> np.ndarray:
        """Positions whose cluster is ``selected`` (bool per cluster), increasing."""
        return positions_in_clusters(self.parent, self.member, self.root_number, self.bounds[:-1],
                                     self.offsets, selected)

    def sums(self, ev, idx) -> np.ndarray:
        """Per-cluster state (see :func:`accumulate_clusters`); each thread owns the clusters
        whose root lies in its piece, hits of others' clusters are added afterwards."""
        state = _WS.get("cluster_state", self.n_clusters * kernels.N_STATE).reshape(self.n_clusters, kernels.N_STATE)
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


def _link_pieces(ev, idx, bounds, geometry, radius, window, t, group, parent, chain_next):
    """Connected-components linking, one contiguous piece of positions per thread.

    Pairs across a seam are then found by linking the (small, for time-ordered input) set
    of positions near the seam in time (:func:`seam_positions`), so the result is exactly
    that of one thread.
    """
    fields = (ev["x"], ev["y"], ev["toa"], ev["event"], ev["chip"])
    grid_size = geometry[4]

    def link(positions, lo=0, hi=0):
        # _WS is thread-local: every pool thread links with its own grid
        head = _WS.get("grid_head", grid_size, _POS)
        head_t = _WS.get("grid_time", grid_size)
        link_components(positions, lo, hi, idx, *fields, *geometry, radius, window,
                        t, group, parent, chain_next, head, head_t)

    pieces = bounds.size - 1
    _run_parallel(lambda q: link(_NO_POSITIONS, bounds[q], bounds[q + 1]), pieces)
    for q in range(1, pieces):
        seam = seam_positions(0, bounds[q], bounds[q + 1], t, window)
        if seam.size:
            link(seam)


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
    pieces = threads if m >= 20000 * threads else 1
    bounds = np.linspace(0, m, pieces + 1).astype(np.int64)
    t = _WS.get("time", m)
    group = _WS.get("group", m)
    parent = _WS.get("parent", m, _POS)
    chain_next = _WS.get("chain", m, _POS)
    member = _WS.get("member", m, np.bool_)
    member[:] = True
    pending_rows = idx[:0].copy()
    pending_first = _INT64_MAX
    noise = 0

    if p.method == "components":
        _link_pieces(ev, idx, bounds, geometry, radius, window, t, group, parent, chain_next)
        forest = _Forest(parent, member, bounds)
        forest.number()
        state = forest.sums(ev, idx)
        if complete_before is not None:
            done = state[:, kernels.S_LAST_TOA] < complete_before
            if not done.all():
                pending_rows = idx[forest.positions_of(~done)]
                pending_first = int(state[~done, kernels.S_FIRST_TOA].min())
                state[~done, kernels.S_SIZE] = 0
    else:
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

    kept, clustered, small, small_clusters = kept_clusters(state, p.min_size)
    toa_off, tof_off = finish_time_offsets(state)
    order = _canonical_order(state[kept, kernels.S_FIRST_TOA],
                             lambda sub: _tie_keys(state, kept[sub], toa_off, tof_off))
    c = np.empty(kept.size, CENTROID_DTYPE)
    write_centroids(state, kept[order], toa_off, tof_off, c)
    if labels_out is not None:
        to_output = np.full(forest.n_clusters, LABEL_SMALL_CLUSTER, np.int64)
        to_output[kept[order]] = np.arange(kept.size)
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
        """The chunk as EVENT_DTYPE (a view when possible), timewalk-corrected; updates the
        newest time and counts late hits (among those above the ToT threshold)."""
        ev = as_event_array(hits)
        if self.timewalk is not None:
            ev = self.timewalk.apply(ev)
        self.stats.hits_in += ev.size
        if ev.size:
            kept_toa = ev["toa"][ev["tot"] > self.params.tot_threshold_ns]
            if kept_toa.size:
                if self._newest != _INT64_MIN:
                    self.stats.late_hits += int(np.count_nonzero(kept_toa < self._newest - self._reorder))
                self._newest = max(self._newest, int(kept_toa.max()))
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
        order = sort_centroids(out)
        if not np.array_equal(order, np.arange(order.size)):
            out = _take_records(out, order)
        self.stats.clusters_out += out.size
        self.stats.hits_pending = int(self._pending.size)
        return out

    def _join(self, ev: np.ndarray) -> np.ndarray:
        """Pending hits followed by the new chunk, in a buffer kept between calls."""
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
        work = self._join(ev) if self._pending.size else ev
        if not work.size:
            return self._emit(self._newest - self._reorder)
        complete_before = self._newest - self._reorder - self._window
        out, below = _cluster_rows(work, self.params, complete_before=complete_before)
        self.stats.hits_below_tot += below
        self._finish(out)
        # only the (few) pending hits are copied and kept
        self._pending = _take_records(work, out.pending)
        bound = min(out.pending_first_toa, self._newest - self._reorder)
        return self._emit(bound)

    def flush(self) -> np.ndarray:
        """Finish every pending cluster and return all centroids not yet returned."""
        if self._pending.size:
            out, _ = _cluster_rows(self._pending, self.params)
            self._finish(out)
            self._pending = self._pending[:0]
        return self._emit(None)
