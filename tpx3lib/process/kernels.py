"""numba kernels of offline processing: plain arrays in and out.

``select_events`` applies the event rule of :func:`tpx3lib.decode.events.assign_events`
(latest trigger at or before the hit; inclusive tof window) to hits in arrival
order, so that only the hits that become events need sorting. Hits come almost
in time order, so the trigger index is followed incrementally (amortised O(1))
with a binary search when a hit jumps far.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from ..decode.event_kernels import _FAR, _bisect_right, build_events, latest_trigger, select_events  # noqa: F401 (re-exported)

__all__ = ["select_events", "build_events", "nonpixel_words", "header_histogram", "toa_bounds",
           "select_event_keys", "build_event_columns", "pymepix_event_columns"]



@nb.njit(cache=True, nogil=True)
def nonpixel_words(words):
    """The words whose top nibble is not 0xB (everything but data-driven pixel hits), in order."""
    out = np.empty(words.shape[0], words.dtype)
    n = 0
    for i in range(words.shape[0]):
        v = words[i]
        if ((v >> 60) & 0xF) != 0xB:
            out[n] = v
            n += 1
    return out[:n].copy()


@nb.njit(cache=True, nogil=True)
def header_histogram(words, hist):
    """Add the top-byte histogram of ``words`` to ``hist`` (256 bins)."""
    for i in range(words.shape[0]):
        hist[(words[i] >> 56) & 0xFF] += 1


@nb.njit(cache=True, nogil=True)
def toa_bounds(toa, lo, hi):
    """(min, max) of the ``toa`` values in ``[lo, hi)``; (0, -1) if none."""
    mn = hi
    mx = lo
    any_ = False
    for i in range(toa.shape[0]):
        t = toa[i]
        if t < lo or t >= hi:
            continue
        any_ = True
        if t < mn:
            mn = t
        if t > mx:
            mx = t
    if not any_:
        return 0, -1
    return mn, mx


@nb.njit(cache=True, nogil=True)
def select_event_keys(toa, trig_time, near_lo, near_hi, own_lo, own_hi, use_window, w_lo, w_hi,
                      base, idx_bits, out_keys):
    """:func:`select_events`, writing sort keys ``(toa - base) << idx_bits | index`` instead of
    indices: sorting the keys gives the events in ToA order, ties in arrival order (the
    index breaks them), with no separate argsort. The caller guarantees
    ``0 <= toa - base < 2**(63 - idx_bits)`` for the selected hits and ``toa.size <= 2**idx_bits``.
    Returns ``(n_selected, n_owned, n_owned_before_first_trigger, n_owned_outside_window)``."""
    j = -1
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
        out_keys[n_sel] = ((t - base) << idx_bits) | i
        n_sel += 1
    return n_sel, n_owned, no_trig, outside


@nb.njit(cache=True, nogil=True)
def build_event_columns(pixels, keys, idx_bits, base, trig_time, trig_number,
                        event, x, y, tot, chip, toa, tof):
    """Event columns from sorted keys (:func:`select_event_keys`): for each key the pixel it
    names and its trigger, the latest at or before its ToA (found by walking the triggers
    alongside the ToA-ordered keys). The fields ``assign_events`` gives an event."""
    mask = (np.int64(1) << idx_bits) - 1
    n_trig = trig_time.shape[0]
    j = -1
    for k in range(keys.shape[0]):
        key = keys[k]
        t = (key >> idx_bits) + base
        p = pixels[key & mask]
        if j < 0 or (j + 1 < n_trig and trig_time[j + 1] <= t):
            if j < 0 or (j + _FAR < n_trig and trig_time[j + _FAR] <= t):
                j = _bisect_right(trig_time, t) - 1
            while j + 1 < n_trig and trig_time[j + 1] <= t:
                j += 1
        event[k] = trig_number[j]
        x[k] = p.x
        y[k] = p.y
        tot[k] = p.tot
        chip[k] = p.chip
        toa[k] = t
        tof[k] = t - trig_time[j]


@nb.njit(cache=True, nogil=True)
def pymepix_event_columns(x, y, tof, tot, out_x, out_y, out_tof, out_tot):
    """The pymepix layout's raw columns: x, y as u1, tof in s (``toa_seconds``' rounding:
    ``t * 25 / 4096 * 1e-9``), tot as u4. Returns the largest x or y (> 255 does not fit)."""
    big = 0
    for k in range(x.shape[0]):
        xi = x[k]
        yi = y[k]
        if xi > big:
            big = xi
        if yi > big:
            big = yi
        out_x[k] = xi
        out_y[k] = yi
        out_tof[k] = (tof[k] * 25) / 4096 * 1e-9
        out_tot[k] = tot[k]
    return big
