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
    "extend_timestamp", "decode_kernel", "find_first_reference",
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
def decode_kernel(w, chip, orient, off_x, off_y, state,
                  px_x, px_y, px_tot, px_chip, px_ftoa, px_toa,
                  td_kind, td_tdc, td_rising, td_chip, td_counter, td_time,
                  hb_chip, hb_timer,
                  type_hist, anomalies):
    """Decode int64-viewed words ``w`` into pixel, TDC and heartbeat columns.

    ``state`` (int64[STATE_SIZE]) carries the time reference, an unpaired 0x44
    and the trigger-counter extension across calls. ``orient``: 0 Up, 1 Left,
    2 Down, 3 Right. Output columns must hold len(w) entries (pixels/TDCs) and
    len(w) heartbeats. Returns (n_pixels, n_tdcs, n_heartbeats).
    """
    ref = state[S_REF]
    follow = state[S_FOLLOW] != 0
    pending_lsb = state[S_PENDING_LSB]
    npx = 0
    ntd = 0
    nhb = 0
    for i in range(w.shape[0]):
        v = w[i]
        hdr = (v >> 56) & 0xFF
        type_hist[hdr] += 1
        top = hdr >> 4
        if top == 0xB:
            col = ((v >> 52) & 0xFE) | (((v >> 44) & 7) >> 2)   # 2*dcol + pix//4
            row = ((v >> 45) & 0xFC) | ((v >> 44) & 3)          # 4*spix + (pix & 3)
            ftoa = (v >> 16) & 0xF
            coarse30 = ((v & 0xFFFF) << 14) | ((v >> 30) & 0x3FFF)
            coarse48 = extend_timestamp(coarse30, 30, ref)
            if coarse48 - ref > _STALE30 or ref - coarse48 > _STALE30:
                anomalies[_A_STALE] += 1
            phase = (col >> 1) & 15
            if phase == 0:
                phase = 16
            if orient == 0:
                x = col
                y = row
            elif orient == 1:
                x = row
                y = 255 - col
            elif orient == 2:
                x = 255 - col
                y = 255 - row
            else:
                x = 255 - row
                y = col
            px_x[npx] = x + off_x
            px_y[npx] = y + off_y
            px_tot[npx] = ((v >> 20) & 0x3FF) * 25
            px_chip[npx] = chip
            px_ftoa[npx] = ftoa
            px_toa[npx] = (coarse48 << 12) - (ftoa << 8) + (phase << 8)
            npx += 1
        elif hdr == 0x6F or hdr == 0x6A or hdr == 0x6E or hdr == 0x6B:
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
    state[S_REF] = ref
    state[S_PENDING_LSB] = pending_lsb
    return npx, ntd, nhb
