"""numba kernels of event building: which hits become events of which trigger, and the records.

``select_events`` applies the event rule (latest trigger at or before the hit; inclusive
tof window) to hits in arrival order, so that only the hits that become events need
sorting. Hits come almost in time order, so the trigger index is followed incrementally
(amortised O(1)) with a binary search when a hit jumps far. Used by the streaming
:class:`~tpx3lib.decode.events.EventBuilder` and by ``tpx3 process``; the numpy twin is
:func:`tpx3lib.decode.events.assign_events`.
"""
from __future__ import annotations

import numba as nb

__all__ = ["select_events", "build_events", "latest_trigger", "select_final", "pack_time_keys",
           "build_events_split"]

_FAR = 32   # steps of incremental search before falling back to bisection


@nb.njit(cache=True, nogil=True)
def _bisect_right(a, v):
    lo, hi = 0, a.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] <= v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@nb.njit(inline="always", nogil=True)
def latest_trigger(trig_time, j, t):
    """Index of the latest trigger at or before ``t`` (-1: none), searching from ``j``, the
    previous hit's: a few steps for the nearly time-ordered hits, bisection when far."""
    n_trig = trig_time.shape[0]
    steps = 0
    while j + 1 < n_trig and trig_time[j + 1] <= t and steps < _FAR:
        j += 1
        steps += 1
    while j >= 0 and trig_time[j] > t and steps < _FAR:
        j -= 1
        steps += 1
    if steps >= _FAR:
        j = _bisect_right(trig_time, t) - 1
    return j


@nb.njit(cache=True, nogil=True)
def select_events(toa, trig_time, near_lo, near_hi, own_lo, own_hi, use_window, w_lo, w_hi, out_sel, out_trig):
    """Indices of the hits with ``near_lo <= toa < near_hi`` that become events.

    Writes them to ``out_sel`` (in input order), the index of each one's trigger in
    ``trig_time`` to ``out_trig``, and returns
    ``(n_selected, n_owned, n_owned_before_first_trigger, n_owned_outside_window)``
    where "owned" means ``own_lo <= toa < own_hi``.
    """
    j = -1            # index of the latest trigger <= current toa
    n_sel = 0
    n_owned = 0
    no_trig = 0
    outside = 0
    for i in range(toa.shape[0]):
        t = toa[i]
        if t < near_lo or t >= near_hi:
            continue
        owned = t >= own_lo and t < own_hi
        j = latest_trigger(trig_time, j, t)
        if owned:
            n_owned += 1
        if j < 0:
            if owned:
                no_trig += 1
            continue
        if use_window:
            tof = t - trig_time[j]
            if tof < w_lo or tof > w_hi:
                if owned:
                    outside += 1
                continue
        out_sel[n_sel] = i
        out_trig[n_sel] = j
        n_sel += 1
    return n_sel, n_owned, no_trig, outside


@nb.njit(inline="always", nogil=True)
def _fill_event(e, p, number, time):
    """One EVENT_DTYPE record ``e`` from the pixel record ``p`` of the trigger (number, time)."""
    e.event = number
    e.train_id = 0
    e.x = p.x
    e.y = p.y
    e.tot = p.tot
    e.chip = p.chip
    e.toa = p.toa
    e.tof = p.toa - time


@nb.njit(cache=True, nogil=True)
def build_events(pixels, sel, trig, trig_number, trig_time, out):
    """Fill ``out`` (EVENT_DTYPE) with the hits ``pixels[sel]`` and their triggers ``trig``
    (indices into ``trig_time``/``trig_number``): the records ``assign_events`` makes."""
    for k in range(sel.shape[0]):
        j = trig[k]
        _fill_event(out[k], pixels[sel[k]], trig_number[j], trig_time[j])


# --------------------------------------------------------------------------- streaming
# The streaming EventBuilder keeps the hits still inside the reorder window ("held") and
# gets new ones each chunk; these kernels read both record arrays in place (held first)
# instead of concatenating them, and sort only packed (time, index) keys of the selected
# hits: the records themselves are read once, in their final order.


@nb.njit(cache=True, nogil=True)
def select_final(held, new, until, late_bound, trig_time, use_window, w_lo, w_hi,
                 out_pos, out_trig, out_toa, keep_held, keep_new):
    """Split the hits of ``held`` then ``new`` (PIXEL_DTYPE records) at ``until``.

    Hits with ``toa <= until`` are final: the event rule is applied to them in arrival
    order and each selected hit's position (``i`` in held, ``held.size + i`` in new), trigger
    index in ``trig_time`` and ToA go to ``out_pos``, ``out_trig``, ``out_toa``. The indices
    of the other hits go to ``keep_held``/``keep_new``. Returns ``(n_selected, n_final,
    n_before_first_trigger, n_outside_window, n_late, n_keep_held, n_keep_new)``, where late
    hits are new hits with ``toa <= late_bound`` (the time already emitted).
    """
    n_a = held.shape[0]
    n = n_a + new.shape[0]
    j = -1
    n_sel = 0
    n_final = 0
    no_trig = 0
    outside = 0
    late = 0
    n_ka = 0
    n_kb = 0
    for q in range(n):
        if q < n_a:
            t = held[q].toa
        else:
            t = new[q - n_a].toa
        if t > until:
            if q < n_a:
                keep_held[n_ka] = q
                n_ka += 1
            else:
                keep_new[n_kb] = q - n_a
                n_kb += 1
            continue
        n_final += 1
        if q >= n_a and t <= late_bound:
            late += 1
        j = latest_trigger(trig_time, j, t)
        if j < 0:
            no_trig += 1
            continue
        if use_window:
            tof = t - trig_time[j]
            if tof < w_lo or tof > w_hi:
                outside += 1
                continue
        out_pos[n_sel] = q
        out_trig[n_sel] = j
        out_toa[n_sel] = t
        n_sel += 1
    return n_sel, n_final, no_trig, outside, late, n_ka, n_kb


@nb.njit(cache=True, nogil=True)
def pack_time_keys(toa, out_keys):
    """Sort keys ``(toa[i] - min(toa)) << bits | i`` in ``out_keys``: unique, so any sort of
    them is the stable sort by ``toa``, and ``key & ((1 << bits) - 1)`` gives ``i`` back.
    Returns ``bits``, or -1 (nothing written) when the span of ``toa`` leaves no room."""
    n = toa.shape[0]
    if n == 0:
        return 0
    lo = toa[0]
    hi = toa[0]
    for i in range(1, n):
        t = toa[i]
        if t < lo:
            lo = t
        elif t > hi:
            hi = t
    bits = 1
    while (1 << bits) < n:
        bits += 1
    if hi - lo >= (1 << (62 - bits)):
        return -1
    for i in range(n):
        out_keys[i] = ((toa[i] - lo) << bits) | i
    return bits


@nb.njit(cache=True, nogil=True)
def build_events_split(held, new, pos, trig, keys, index_mask, trig_number, trig_time, out):
    """:func:`build_events` for positions into ``held`` then ``new`` (see :func:`select_final`),
    in the order ``keys & index_mask`` (indices into ``pos``/``trig``: sorted
    :func:`pack_time_keys` keys, or an argsort with a mask of -1)."""
    n_a = held.shape[0]
    for k in range(out.shape[0]):
        s = keys[k] & index_mask
        q = pos[s]
        j = trig[s]
        if q < n_a:
            _fill_event(out[k], held[q], trig_number[j], trig_time[j])
        else:
            _fill_event(out[k], new[q - n_a], trig_number[j], trig_time[j])
