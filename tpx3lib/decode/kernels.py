"""numba kernels of the word decoder: one pass over the words, plain arrays in and out.

The twin used by the tests is :mod:`tpx3lib.decode.reference` (vectorised numpy,
written from the spec's formulas independently of this file).

All arithmetic is on int64: numba promotes mixed uint64/int64 expressions to
float64, which silently loses bits, so words are viewed as int64 and every
field is masked after shifting (arithmetic shifts only pollute bits we mask).
"""
from __future__ import annotations

import numba as nb
import numpy as np

from .words import ANOMALY_INDEX

__all__ = [
    "extend_timestamp", "split_words", "decode_pixel_words", "pixel_layout_ok", "find_first_reference",
    "STATE_SIZE", "S_REF", "S_HAS_REF", "S_FOLLOW", "S_PENDING_LSB",
    "S_TDC1_RAW", "S_TDC1_EXT", "S_TDC2_RAW", "S_TDC2_EXT",
]

# Slots of the decoder's int64 state vector (carried between chunks).
S_REF = 0            # 48-bit reference time, 25 ns ticks
S_HAS_REF = 1        # 1 once a reference is known
S_FOLLOW = 2         # 1: completed 0x44/0x45 pairs replace the reference
S_PENDING_LSB = 3    # timer bits 31..0 of the last 0x44 not yet paired (-1: none)
S_TDC1_RAW = 4       # last 12-bit trigger counter seen on TDC1 (-1: none yet)
S_TDC1_EXT = 5       # its extended value
S_TDC2_RAW = 6
S_TDC2_EXT = 7
STATE_SIZE = 8

_A_FINE = ANOMALY_INDEX["tdc_fine_invalid"]
_A_CNT_BACK = ANOMALY_INDEX["tdc_counter_backwards"]
_A_UNPAIRED = ANOMALY_INDEX["global_time_high_unpaired"]
_A_REF_BACK = ANOMALY_INDEX["reference_backwards"]
_A_STALE = ANOMALY_INDEX["stale_reference"]

# A time this far from the reference is within 1/8 period of where "nearest"
# becomes ambiguous (2^29 ticks = 13.4 s): flag it as a stale reference.
_STALE30 = (1 << 29) - (1 << 26)
_ONE_SECOND = 40_000_000  # ticks


@nb.njit(cache=True, inline="always")
def extend_timestamp(count, nbits, ref):
    """Extend an ``nbits``-bit counter value to the 48-bit time nearest ``ref``.

    This is the spec's quadrant rule (bits 47..nbits from the reference, the
    quadrant compare moving one period back or forward) stated as "the value
    congruent to ``count`` modulo 2**nbits that is nearest to ``ref``"; the two
    agree wherever the quadrant rule decides, and this one also settles the
    +-2-quadrant case that pymepix leaves uncorrected. Never negative.
    """
    period = np.int64(1) << nbits
    half = period >> 1
    v = (ref & ~(period - 1)) | count
    d = v - ref
    if d > half:
        v -= period
    elif d < -half:
        v += period
    if v < 0:
        v += period
    return v


@nb.njit(cache=True, nogil=True)
def find_first_reference(w, start):
    """Index of the first 0x45 word at or after ``start`` that completes a
    0x44/0x45 pair, and the 48-bit time it gives; (-1, 0) if none."""
    lsb = np.int64(-1)
    for i in range(start, w.shape[0]):
        hdr = (w[i] >> 56) & 0xFF
        if hdr == 0x44:
            lsb = (w[i] >> 16) & 0xFFFFFFFF
        elif hdr == 0x45 and lsb >= 0:
            return i, (((w[i] >> 16) & 0xFFFF) << 32) | lsb
    return -1, np.int64(0)


@nb.njit(cache=True, nogil=True, inline="always")
def _extend_trigger_counter(state, raw_slot, raw, anomalies):
    last = state[raw_slot]
    if last < 0:
        ext = raw
    else:
        delta = (raw - last) & 0xFFF
        if delta >= 2048:  # went backwards: a disordered or repeated TDC word
            delta -= 4096
            anomalies[_A_CNT_BACK] += 1
        ext = state[raw_slot + 1] + delta
    state[raw_slot] = raw
    state[raw_slot + 1] = ext
    return ext


@nb.njit(cache=True, nogil=True)
def split_words(w, chip, state, pix_words, seg_start, seg_ref,
                td_kind, td_tdc, td_rising, td_chip, td_counter, td_time,
                hb_chip, hb_timer, type_hist, anomalies):
    """Pass A, in stream order: compact pixel words into ``pix_words``, decode
    TDC edges and heartbeats, and record where the time reference changes.

    Segment j covers pixels ``seg_start[j]`` up to ``seg_start[j+1]`` and is
    extended against ``seg_ref[j]``. The pixel-word store is unconditional
    (only the index advances), so the common path has no branch to mispredict.
    Returns (n_pixel_words, n_tdcs, n_heartbeats, n_segments).
    """
    ref = state[S_REF]
    follow = state[S_FOLLOW] != 0
    pending_lsb = state[S_PENDING_LSB]
    npx = 0
    ntd = 0
    nhb = 0
    nseg = 1
    seg_start[0] = 0
    seg_ref[0] = ref
    for i in range(w.shape[0]):
        v = w[i]
        pix_words[npx] = v
        if ((v >> 60) & 0xF) == 0xB:
            npx += 1
            continue
        hdr = (v >> 56) & 0xFF
        type_hist[hdr] += 1
        if hdr == 0x6F or hdr == 0x6A or hdr == 0x6E or hdr == 0x6B:
            tdc = 1 if (hdr == 0x6F or hdr == 0x6A) else 2
            raw = (v >> 44) & 0xFFF
            counter = _extend_trigger_counter(state, S_TDC1_RAW if tdc == 1 else S_TDC2_RAW,
                                              raw, anomalies)
            coarse48 = extend_timestamp((v >> 12) & 0xFFFFFFFF, 32, ref)
            if coarse48 - ref > _STALE30 or ref - coarse48 > _STALE30:
                anomalies[_A_STALE] += 1
            fine = (v >> 5) & 0xF
            frac = v & 0xE00
            if fine >= 1 and fine <= 12:
                frac |= (((fine - 1) << 9) // 12) & 0x1FF
            else:
                anomalies[_A_FINE] += 1
            td_kind[ntd] = hdr
            td_tdc[ntd] = tdc
            td_rising[ntd] = 1 if (hdr == 0x6F or hdr == 0x6E) else 0
            td_chip[ntd] = chip
            td_counter[ntd] = counter
            td_time[ntd] = (coarse48 << 12) + frac
            ntd += 1
        elif hdr == 0x44:
            pending_lsb = (v >> 16) & 0xFFFFFFFF
        elif hdr == 0x45:
            if pending_lsb < 0:
                anomalies[_A_UNPAIRED] += 1
            else:
                timer = (((v >> 16) & 0xFFFF) << 32) | pending_lsb
                pending_lsb = -1
                hb_chip[nhb] = chip
                hb_timer[nhb] = timer
                nhb += 1
                if follow:
                    if timer < ref - _ONE_SECOND:
                        anomalies[_A_REF_BACK] += 1
                    ref = timer
                    if seg_start[nseg - 1] == npx:
                        seg_ref[nseg - 1] = ref
                    else:
                        seg_start[nseg] = npx
                        seg_ref[nseg] = ref
                        nseg += 1
    type_hist[0xB0] += npx
    state[S_REF] = ref
    state[S_PENDING_LSB] = pending_lsb
    return npx, ntd, nhb, nseg


@nb.njit(cache=True, nogil=True)
def decode_pixel_words(pix_words, ref, chip, out_words):
    """Pass B: decode pixel words against one reference into PIXEL_DTYPE
    records viewed as int64 pairs (x = column, y = row: orientation is applied
    afterwards). Branch-free so LLVM vectorises it; callers pass slices so the
    loop starts at 0 (a loop from a variable start keeps numba's negative-index
    check and runs 5x slower). Returns the number of stale-reference hits."""
    period = np.int64(1) << 30
    half = period >> 1
    base = ref & ~(period - 1)
    stale = 0
    chip_bits = np.int64(chip) << 48
    for k in range(pix_words.shape[0]):
        v = pix_words[k]
        col = ((v >> 52) & 0xFE) | (((v >> 44) & 7) >> 2)   # 2*dcol + pix//4
        row = ((v >> 45) & 0xFC) | ((v >> 44) & 3)          # 4*spix + (pix & 3)
        ftoa = (v >> 16) & 0xF
        c = base | ((v & 0xFFFF) << 14) | ((v >> 30) & 0x3FFF)
        d = c - ref                                          # nearest period (see extend_timestamp)
        c = c - period * (d > half) + period * (d < -half)
        c = c + period * (c < 0)
        d = c - ref
        stale += (d > _STALE30) | (d < -_STALE30)
        phase = (col >> 1) & 15
        phase = phase + 16 * (phase == 0)
        tot = (v >> 20) & 0x3FF
        # x | y << 16 | tot_ns << 32 | chip << 48 | ftoa << 56 (one little-endian record)
        out_words[2 * k] = col | (row << 16) | (((tot << 4) + (tot << 3) + tot) << 32) | chip_bits | (ftoa << 56)
        out_words[2 * k + 1] = (c << 12) + ((phase - ftoa) << 8)
    return stale


def pixel_layout_ok(dtype) -> bool:
    """True when ``dtype`` has the 16-byte little-endian layout the kernel writes."""
    want = {"x": ("<u2", 0), "y": ("<u2", 2), "tot": ("<u2", 4), "chip": ("u1", 6), "ftoa": ("u1", 7),
            "toa": ("<i8", 8)}
    if dtype.itemsize != 16 or set(dtype.names) != set(want):
        return False
    return all(np.dtype(want[n][0]) == dtype.fields[n][0].newbyteorder("<") and dtype.fields[n][1] == want[n][1]
               and dtype.fields[n][0].byteorder in "=<|" for n in want)
