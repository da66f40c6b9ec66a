"""Plain numpy reference decoder: the spec's formulas, vectorised, no numba.

It exists to check the numba kernels (tests compare both on random and real
words) and as the benchmark's baseline. It follows the spec's wording
literally: the quadrant rule for time extension (with the +-2 case resolved to
the nearer period, which pymepix leaves wrong), fields by bit position.
It decodes one whole stream at once; the time reference is the external
``longtime`` or, when None, the latest completed 0x44/0x45 pair before each
word (the first pair's value for words before it).
"""
from __future__ import annotations

import numpy as np

from ..dtypes import HEARTBEAT_DTYPE, PIXEL_DTYPE, TDC_DTYPE

__all__ = ["extend_quadrant_rule", "reference_decode"]


def extend_quadrant_rule(count: np.ndarray, nbits: int, ref: np.ndarray) -> np.ndarray:
    """Spec section 3: bits above ``nbits`` from ``ref``, corrected by comparing the
    top two bits (quadrants) of count and reference."""
    count = np.asarray(count, np.int64)
    ref = np.broadcast_to(np.asarray(ref, np.int64), count.shape)
    q = nbits - 2
    period = np.int64(1) << nbits
    quarter = np.int64(1) << q
    d = ((ref >> q) & 3) - ((count >> q) & 3)
    base = ref.copy()
    base = np.where((d == 1) | (d == -3), ref - quarter, base)
    base = np.where((d == -1) | (d == 3), ref + quarter, base)
    out = (base & ~(period - 1)) | count
    # d == +-2: the count is half a period away either way; take the nearer.
    two = (d == 2) | (d == -2)
    alt = np.where(out > ref, out - period, out + period)
    nearer_alt = np.abs(alt - ref) < np.abs(out - ref)
    out = np.where(two & nearer_alt, alt, out)
    return np.where(out < 0, out + period, out)


def _heartbeat_reference(w: np.ndarray, hdr: np.ndarray):
    """Per-word reference from completed 0x44/0x45 pairs, and the heartbeats."""
    n = w.size
    idx = np.arange(n)
    is_lo = hdr == 0x44
    is_hi = hdr == 0x45
    last_lo = np.maximum.accumulate(np.where(is_lo, idx, -1))
    # a 0x45 pairs with the latest 0x44 after the previous 0x45
    prev_hi = np.concatenate([[-1], np.maximum.accumulate(np.where(is_hi, idx, -1))[:-1]])
    hi_pos = np.flatnonzero(is_hi)
    lo_pos = last_lo[hi_pos]
    paired = (lo_pos >= 0) & (lo_pos > prev_hi[hi_pos])
    hi_pos, lo_pos = hi_pos[paired], lo_pos[paired]
    timers = (((w[hi_pos] >> 16) & 0xFFFF) << 32) | ((w[lo_pos] >> 16) & 0xFFFFFFFF)
    if hi_pos.size == 0:
        return np.zeros(n, np.int64), hi_pos, timers
    # reference in force at word i: the latest pair completed before i
    k = np.searchsorted(hi_pos, idx, side="left") - 1
    ref = np.where(k >= 0, timers[np.maximum(k, 0)], timers[0])
    return ref.astype(np.int64), hi_pos, timers


def _extend_counter(raw: np.ndarray) -> np.ndarray:
    if raw.size == 0:
        return raw.astype(np.int64)
    step = np.diff(raw.astype(np.int64)) & 0xFFF
    step = np.where(step >= 2048, step - 4096, step)
    return np.concatenate([[raw[0]], raw[0] + np.cumsum(step)]).astype(np.int64)


def reference_decode(words, chip: int = 0, longtime: int | None = None):
    """Decode a whole stream; returns (pixels, tdcs, heartbeats) with the
    library's dtypes (orientation Up, no offset)."""
    w = np.asarray(words).view(np.int64) if np.asarray(words).dtype.itemsize == 8 \
        else np.frombuffer(bytes(words), "<i8")
    hdr = (w >> 56) & 0xFF
    hb_ref, hb_pos, hb_timers = _heartbeat_reference(w, hdr)
    ref = np.full(w.size, longtime, np.int64) if longtime is not None else hb_ref

    sel = (hdr >> 4) == 0xB
    p = w[sel]
    dcol = (p >> 53) & 0x7F
    spix = (p >> 47) & 0x3F
    pix = (p >> 44) & 0x7
    x = 2 * dcol + pix // 4
    y = 4 * spix + (pix & 3)
    toa14 = (p >> 30) & 0x3FFF
    tot = (p >> 20) & 0x3FF
    ftoa = (p >> 16) & 0xF
    spidr = p & 0xFFFF
    coarse48 = extend_quadrant_rule((spidr << 14) | toa14, 30, ref[sel])
    phase = (x // 2) % 16
    phase = np.where(phase == 0, 16, phase)
    pixels = np.empty(p.size, PIXEL_DTYPE)
    pixels["x"], pixels["y"], pixels["tot"] = x, y, tot * 25
    pixels["chip"], pixels["ftoa"] = chip, ftoa
    pixels["toa"] = 4096 * coarse48 - 256 * ftoa + 256 * phase

    tsel = np.isin(hdr, (0x6F, 0x6A, 0x6E, 0x6B))
    t = w[tsel]
    th = hdr[tsel]
    tdc_no = np.where((th == 0x6F) | (th == 0x6A), 1, 2)
    fine = (t >> 5) & 0xF
    good = (fine >= 1) & (fine <= 12)
    frac = (t & 0xE00) | np.where(good, (((fine - 1) << 9) // 12) & 0x1FF, 0)
    coarse = extend_quadrant_rule((t >> 12) & 0xFFFFFFFF, 32, ref[tsel])
    tdcs = np.empty(t.size, TDC_DTYPE)
    tdcs["kind"], tdcs["tdc"], tdcs["chip"] = th, tdc_no, chip
    tdcs["rising"] = (th == 0x6F) | (th == 0x6E)
    tdcs["time"] = coarse * 4096 + frac
    raw = (t >> 44) & 0xFFF
    for n in (1, 2):
        m = tdc_no == n
        tdcs["counter"][m] = _extend_counter(raw[m])

    hbs = np.empty(hb_timers.size, HEARTBEAT_DTYPE)
    hbs["chip"], hbs["timer"] = chip, hb_timers
    return pixels, tdcs, hbs
