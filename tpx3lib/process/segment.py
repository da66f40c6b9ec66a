"""Processing one segment: decode, assign events, (timewalk,) cluster - a pure function.

The stages are the pipeline's own: :class:`~tpx3lib.decode.StreamDecoder`,
the event rule of :func:`~tpx3lib.decode.events.assign_events` (what
:class:`~tpx3lib.decode.EventBuilder` applies to final hits; here a numba pass,
:func:`.kernels.select_events`, applies it before sorting so only events are
sorted), the timewalk table and :func:`~tpx3lib.cluster.cluster_hits` (what the
streaming :class:`~tpx3lib.cluster.Clusterer` computes). Equality with the live
:class:`~tpx3lib.pipeline.ChipProcessor` is tested. Output order is the pipeline's:
events sorted by ToA (ties in arrival order), centroids in canonical order.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tpx3lib.decode import StreamDecoder
from tpx3lib.dtypes import CENTROID_DTYPE, EVENT_DTYPE

from .kernels import build_events, header_histogram, select_events
from .plan import SegmentJob

__all__ = ["SegmentConfig", "SegmentResult", "run_segment"]

_I64_MIN = np.iinfo(np.int64).min
_I64_MAX = np.iinfo(np.int64).max


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    """Settings shared by all segments of a run."""

    chip: int
    window_units: tuple[int, int] | None   # inclusive tof window, 25/4096 ns units
    cluster_margin_units: int
    centroid: bool = False
    cluster_params: object = None           # ClusterParams
    timewalk: object = None                 # TimewalkTable
    decoder_kwargs: tuple = ()              # extra StreamDecoder keywords as (key, value) pairs


@dataclasses.dataclass
class SegmentResult:
    index: int
    events: np.ndarray          # EVENT_DTYPE, owned, ToA order
    centroids: np.ndarray       # CENTROID_DTYPE, owned, canonical order
    word_hist: np.ndarray       # header-byte histogram of the segment's own words
    pixels_owned: int           # decoded pixels whose ToA the segment owns
    before_first_trigger: int
    outside_window: int
    hits_below_tot: int = 0
    clusters_at_margin: int = 0  # owned clusters reaching the edge of the hits clustered (should be 0)
    decoder_counts: dict = dataclasses.field(default_factory=dict)


def _in_range(toa: np.ndarray, lo: int | None, hi: int | None) -> np.ndarray:
    mask = np.ones(toa.size, bool)
    if lo is not None:
        mask &= toa >= lo
    if hi is not None:
        mask &= toa < hi
    return mask


def _events(pixels: np.ndarray, sel: np.ndarray, trig: np.ndarray, job: SegmentJob) -> np.ndarray:
    """EVENT_DTYPE records of ``pixels[sel]`` whose triggers (indices into the job's table) are
    ``trig``: the records :func:`~tpx3lib.decode.events.assign_events` builds, field for field."""
    ev = np.empty(sel.size, EVENT_DTYPE)
    build_events(pixels, sel, trig, job.trig_number, job.trig_time, ev)
    return ev


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
    window = cfg.window_units
    sel = np.empty(pixels.size, np.int64)
    trig = np.empty(pixels.size, np.int64)
    n_sel, n_owned, no_trig, outside = select_events(
        pixels["toa"], job.trig_time, near_lo, near_hi, own_lo, own_hi, window is not None,
        window[0] if window else 0, window[1] if window else 0, sel, trig)
    sel, trig = sel[:n_sel], trig[:n_sel]
    toa = pixels["toa"][sel]
    order = np.argsort(toa, kind="stable")                    # ToA order, ties in arrival order
    sel, trig, toa = sel[order], trig[order], toa[order]
    if margin and (job.t_lo, job.t_hi) != (None, None):
        own_ev = _in_range(toa, job.t_lo, job.t_hi)
        events = _events(pixels, sel[own_ev], trig[own_ev], job)
        extra = _events(pixels, sel[~own_ev], trig[~own_ev], job)
    else:
        events, extra = _events(pixels, sel, trig, job), None
    if cfg.timewalk is not None and events.size:
        events = cfg.timewalk.apply(events)

    result = SegmentResult(job.index, events, np.empty(0, CENTROID_DTYPE), hist, n_owned,
                           no_trig, outside, decoder_counts=dec.counts())
    if cfg.centroid:
        from tpx3lib.cluster import cluster_hits
        if extra is None:
            extra = events[:0]
        if cfg.timewalk is not None and extra.size:
            extra = cfg.timewalk.apply(extra)
        to_cluster = np.concatenate([events, extra]) if extra.size else events
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
    return result

