"""Processing one segment: decode, assign events, (timewalk,) cluster - a pure function.

The stages are the pipeline's own: :class:`~tpx3lib.decode.StreamDecoder`,
the event rule of :func:`~tpx3lib.decode.events.assign_events` (what
:class:`~tpx3lib.decode.EventBuilder` applies to final hits), the timewalk table
and :func:`~tpx3lib.cluster.cluster_hits` (what the streaming
:class:`~tpx3lib.cluster.Clusterer` computes). Equality with the live
:class:`~tpx3lib.pipeline.ChipProcessor` is tested. Output order is the pipeline's:
events sorted by ToA (ties in arrival order), centroids in canonical order.

The event rule runs as numba passes over plain arrays: :func:`.kernels.select_event_keys`
applies it in arrival order and writes a sort key ``(ToA - base) << b | index`` per event,
one int64 sort orders them, and :func:`.kernels.build_event_columns` makes the events as
:class:`~.columns.EventColumns` (records only where a stage needs them). Segments whose
ToA range is too wide for the keys use an index selection and an argsort instead.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tpx3lib.decode import StreamDecoder
from tpx3lib.dtypes import CENTROID_DTYPE, EVENT_DTYPE

from .columns import EventColumns
from .kernels import (build_event_columns, build_events, header_histogram, select_event_keys, select_events,
                      toa_bounds)
from .plan import SegmentJob

__all__ = ["SegmentConfig", "SegmentResult", "run_segment"]

_I64_MIN = np.iinfo(np.int64).min
_I64_MAX = np.iinfo(np.int64).max
_KEY_BITS = 63          # sort keys: ToA offset and pixel index share the bits of an int64


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    """Settings shared by all segments of a run.

    ``prepare_events`` / ``prepare_centroids``: the output layout's conversion of a
    segment's events / centroids, run in the worker (see
    :meth:`~tpx3lib.process.output.OutputWriter.prepare_events`); None keeps them as they are.
    """

    chip: int
    window_units: tuple[int, int] | None   # inclusive tof window, 25/4096 ns units
    cluster_margin_units: int
    centroid: bool = False
    cluster_params: object = None           # ClusterParams
    timewalk: object = None                 # TimewalkTable
    decoder_kwargs: tuple = ()              # extra StreamDecoder keywords as (key, value) pairs
    prepare_events: object = None
    prepare_centroids: object = None


@dataclasses.dataclass
class SegmentResult:
    index: int
    events: object              # owned events in ToA order: EventColumns, EVENT_DTYPE, or as prepared
    centroids: object           # CENTROID_DTYPE, owned, canonical order (or as prepared)
    word_hist: np.ndarray       # header-byte histogram of the segment's own words
    pixels_owned: int           # decoded pixels whose ToA the segment owns
    before_first_trigger: int
    outside_window: int
    hits_below_tot: int = 0
    clusters_at_margin: int = 0  # owned clusters reaching the edge of the hits clustered (should be 0)
    decoder_counts: dict = dataclasses.field(default_factory=dict)
    n_events: int = 0
    n_centroids: int = 0
    t_hi: int | None = None     # every event and centroid before this ToA is in this or an earlier result


def _select(pixels: np.ndarray, job: SegmentJob, near_lo: int, near_hi: int, own_lo: int, own_hi: int,
            window) -> tuple[EventColumns, int, int, int]:
    """The events among ``pixels`` with ToA in ``[near_lo, near_hi)``, in ToA order (ties in
    arrival order), and the owned-pixel counts ``(n_owned, before_first_trigger, outside_window)``."""
    toa = pixels["toa"]
    use_window = window is not None
    w_lo, w_hi = window if use_window else (0, 0)
    idx_bits = max(int(pixels.size).bit_length(), 1)
    if near_lo != _I64_MIN and near_hi != _I64_MAX:
        lo, hi = near_lo, near_hi          # a bounded segment: no pass needed
    else:
        lo, hi = toa_bounds(toa, near_lo, near_hi)
        if hi < lo:
            lo = hi = 0
    if idx_bits < _KEY_BITS and hi - lo < 1 << (_KEY_BITS - idx_bits):
        # sort keys (ToA, index) instead of an argsort: one select pass, one sort of int64
        keys = np.empty(pixels.size, np.int64)
        n_sel, n_owned, no_trig, outside = select_event_keys(
            toa, job.trig_time, near_lo, near_hi, own_lo, own_hi, use_window, w_lo, w_hi, lo, idx_bits, keys)
        keys = keys[:n_sel]
        keys.sort(kind="stable")     # timsort: fast on nearly ordered keys
        ev = EventColumns.empty(n_sel)
        build_event_columns(pixels, keys, idx_bits, lo, job.trig_time, job.trig_number, ev["event"], ev["x"],
                            ev["y"], ev["tot"], ev["chip"], ev["toa"], ev["tof"])
        return ev, n_owned, no_trig, outside
    # ToA range too wide for the keys (a very slow stream): index selection and an argsort
    sel = np.empty(pixels.size, np.int64)
    trig = np.empty(pixels.size, np.int64)
    n_sel, n_owned, no_trig, outside = select_events(
        toa, job.trig_time, near_lo, near_hi, own_lo, own_hi, use_window, w_lo, w_hi, sel, trig)
    sel, trig = sel[:n_sel], trig[:n_sel]
    order = np.argsort(toa[sel], kind="stable")
    rec = np.empty(n_sel, EVENT_DTYPE)
    build_events(pixels, sel[order], trig[order], job.trig_number, job.trig_time, rec)
    return EventColumns.from_records(rec), n_owned, no_trig, outside


def run_segment(job: SegmentJob, cfg: SegmentConfig) -> SegmentResult:
    """Process one segment; depends only on its arguments (safe in threads or processes)."""
    kw = dict(cfg.decoder_kwargs)
    dec = StreamDecoder(chip=cfg.chip, state=job.state, **kw) if job.state is not None \
        else StreamDecoder(chip=cfg.chip, **kw)
    first = dec.feed(job.words)
    last = dec.flush()
    pixels = first.pixels if not last.pixels.size else np.concatenate([first.pixels, last.pixels])

    hist = np.zeros(256, np.int64)
    header_histogram(job.words[job.own_start:job.own_stop], hist)

    # Hits this segment needs: its own ToA range (plus a margin when clustering), and of
    # those the ones that become events (the rule of assign_events, applied before sorting).
    margin = cfg.cluster_margin_units if cfg.centroid else 0
    own_lo = _I64_MIN if job.t_lo is None else job.t_lo
    own_hi = _I64_MAX if job.t_hi is None else job.t_hi
    near_lo = own_lo if job.t_lo is None else own_lo - margin
    near_hi = own_hi if job.t_hi is None else own_hi + margin
    selected, n_owned, no_trig, outside = _select(pixels, job, near_lo, near_hi, own_lo, own_hi, cfg.window_units)
    if margin and (job.t_lo, job.t_hi) != (None, None):
        toa = selected["toa"]           # ToA order: the owned events are one slice
        a = 0 if job.t_lo is None else int(np.searchsorted(toa, job.t_lo, side="left"))
        b = toa.size if job.t_hi is None else int(np.searchsorted(toa, job.t_hi, side="left"))
        events = selected[a:b]
        extra = EventColumns({f: np.concatenate([selected[f][:a], selected[f][b:]]) for f in EventColumns.FIELDS})
    else:
        events, extra = selected, None
    if cfg.timewalk is not None and events.size:
        events = cfg.timewalk.apply(events.to_records())

    result = SegmentResult(job.index, events, np.empty(0, CENTROID_DTYPE), hist, n_owned,
                           no_trig, outside, decoder_counts=dec.counts(), t_hi=job.t_hi)
    if cfg.centroid:
        from tpx3lib.cluster import cluster_hits
        ev_rec = events.to_records() if isinstance(events, EventColumns) else events
        extra = extra.to_records() if extra is not None else ev_rec[:0]
        if cfg.timewalk is not None and extra.size:
            extra = cfg.timewalk.apply(extra)
        to_cluster = np.concatenate([ev_rec, extra]) if extra.size else ev_rec
        if to_cluster.size:
            cents, labels = cluster_hits(to_cluster, cfg.cluster_params, return_labels=True)
        else:
            cents, labels = np.empty(0, CENTROID_DTYPE), np.empty(0, np.int64)
        keep = _in_range(cents["toa_first"], job.t_lo, job.t_hi)
        result.centroids = cents[keep]
        member = labels >= 0
        if member.any() and margin and (job.t_lo is not None or job.t_hi is not None):
            tmin = np.full(cents.size, _I64_MAX)
            tmax = np.full(cents.size, _I64_MIN)
            np.minimum.at(tmin, labels[member], to_cluster["toa"][member])
            np.maximum.at(tmax, labels[member], to_cluster["toa"][member])
            guard = margin // 2
            edge = np.zeros(cents.size, bool)
            if job.t_lo is not None:
                edge |= tmin < near_lo + guard
            if job.t_hi is not None:
                edge |= tmax >= near_hi - guard
            result.clusters_at_margin = int(np.count_nonzero(edge & keep))
        result.hits_below_tot = int(np.count_nonzero(events["tot"] <= cfg.cluster_params.tot_threshold_ns))
    result.n_events = int(result.events.size)
    result.n_centroids = int(result.centroids.size)
    if cfg.prepare_events is not None:
        result.events = cfg.prepare_events(result.events)
    if cfg.prepare_centroids is not None:
        result.centroids = cfg.prepare_centroids(result.centroids)
    return result


def _in_range(toa: np.ndarray, lo: int | None, hi: int | None) -> np.ndarray:
    mask = np.ones(toa.size, bool)
    if lo is not None:
        mask &= toa >= lo
    if hi is not None:
        mask &= toa < hi
    return mask
