"""Encode Timepix3/SPIDR 64-bit data words from field values (spec section 3).

Two layers:

* field encoders (``encode_pixel``, ``encode_tdc``, ``heartbeat_words``) that take
  the raw bit-field values exactly as they appear in a word - what the
  hand-worked tests check bit by bit;
* time helpers (``pixel_time_fields``, ``tdc_time_fields``) that turn a time in
  units of 25/4096 ns into those fields and also return the time a decoder will
  compute back from the word. The simulator's ground truth stores that decoded
  time, so a correct decoder reproduces the truth exactly.

Every array function has a numba kernel (used by the generator) and a plain
numpy twin (``*_np``) written independently from the same spec formulas; the
tests check that both agree.
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "PIXEL_HEADER_DD", "PIXEL_HEADER_ITOT",
    "TDC1_RISING", "TDC1_FALLING", "TDC2_RISING", "TDC2_FALLING",
    "GLOBAL_TIME_LOW", "GLOBAL_TIME_HIGH", "END_OF_COMMAND",
    "MASK48", "pixel_phase", "spidr_time_of",
    "encode_pixel", "encode_tdc", "heartbeat_words",
    "pixel_time_fields", "tdc_time_fields", "tdc_decoded_time",
    "encode_pixels", "encode_pixels_np", "encode_pixels_from_time", "encode_pixels_from_time_np",
]

#: Header nibble of a data-driven pixel word (ToA + ToT), and of an iToT/event-count word.
PIXEL_HEADER_DD = 0xB
PIXEL_HEADER_ITOT = 0xA
#: Header bytes (bits 63..56) of TDC edges, heartbeat words and the end-of-command marker.
TDC1_RISING, TDC1_FALLING, TDC2_RISING, TDC2_FALLING = 0x6F, 0x6A, 0x6E, 0x6B
GLOBAL_TIME_LOW, GLOBAL_TIME_HIGH, END_OF_COMMAND = 0x44, 0x45, 0x71
MASK48 = (1 << 48) - 1


# ---------------------------------------------------------------- scalar field encoders

def pixel_phase(x):
    """Per-double-column clock phase of raw column ``x``: (x // 2) % 16, and 16 where that is 0."""
    p = (np.asarray(x, dtype=np.int64) // 2) % 16
    p = np.where(p == 0, 16, p)
    return int(p) if p.ndim == 0 else p


def spidr_time_of(coarse):
    """(spidr_time, toa14) of a coarse time in 25 ns ticks: its bits 29..14 and 13..0."""
    c = np.asarray(coarse, dtype=np.int64)
    st, toa = (c >> 14) & 0xFFFF, c & 0x3FFF
    if c.ndim == 0:
        return int(st), int(toa)
    return st, toa


def encode_pixel(x: int, y: int, toa: int, ftoa: int, tot: int, spidr_time: int,
                 header: int = PIXEL_HEADER_DD) -> int:
    """One pixel word from its raw fields.

    ``toa`` 14 bit (25 ns), ``ftoa`` 4 bit, ``tot`` 10 bit (25 ns counts, not ns),
    ``spidr_time`` 16 bit; ``x``, ``y`` raw chip column and row 0..255.
    Bit layout (spec 3): header 63..60, dcol 59..53 (= x // 2), spix 52..47 (= y // 4),
    pix 46..44 (= (x & 1) * 4 + (y & 3)), ToA 43..30, ToT 29..20, FToA 19..16, SPIDR time 15..0.
    """
    for name, v, lim in (("x", x, 256), ("y", y, 256), ("toa", toa, 1 << 14), ("ftoa", ftoa, 16),
                         ("tot", tot, 1 << 10), ("spidr_time", spidr_time, 1 << 16), ("header", header, 16)):
        if not 0 <= int(v) < lim:
            raise ValueError(f"{name}={v} out of range [0, {lim})")
    x, y = int(x), int(y)
    pix = ((x & 1) << 2) | (y & 3)
    return ((int(header) << 60) | ((x >> 1) << 53) | ((y >> 2) << 47) | (pix << 44)
            | (int(toa) << 30) | (int(tot) << 20) | (int(ftoa) << 16) | int(spidr_time))


def encode_tdc(kind: int, counter: int, coarse: int, step: int, fine: int) -> int:
    """One TDC word: ``kind`` header byte (0x6F/0x6A/0x6E/0x6B), 12-bit trigger ``counter``
    (bits 55..44), 32-bit ``coarse`` in 25 ns (bits 43..12), ``step`` 3.125 ns steps 0..7
    (bits 11..9), ``fine`` 1..12 (bits 8..5; 0 would mean invalid)."""
    if kind not in (TDC1_RISING, TDC1_FALLING, TDC2_RISING, TDC2_FALLING):
        raise ValueError(f"not a TDC header byte: 0x{kind:X}")
    for name, v, lo, hi in (("counter", counter, 0, 1 << 12), ("coarse", coarse, 0, 1 << 32),
                            ("step", step, 0, 8), ("fine", fine, 0, 13)):
        if not lo <= int(v) < hi:
            raise ValueError(f"{name}={v} out of range [{lo}, {hi})")
    return ((kind << 56) | (int(counter) << 44) | (int(coarse) << 12) | (int(step) << 9)
            | (int(fine) << 5))


def heartbeat_words(timer: int) -> list[int]:
    """The four words the board emits for one global-time heartbeat at ``timer`` (48-bit, 25 ns):
    0x44 (timer bits 31..0 in 47..16), its 0x71 marker, 0x45 (timer bits 47..32 in 31..16),
    its 0x71 marker. Every word carries the SPIDR time (timer bits 29..14) in bits 15..0, as
    real data does; the markers carry the command byte (0x44/0x45) in bits 55..48."""
    timer = int(timer) & MASK48
    st = (timer >> 14) & 0xFFFF
    return [
        (GLOBAL_TIME_LOW << 56) | ((timer & 0xFFFFFFFF) << 16) | st,
        (END_OF_COMMAND << 56) | (GLOBAL_TIME_LOW << 48) | st,
        (GLOBAL_TIME_HIGH << 56) | (((timer >> 32) & 0xFFFF) << 16) | st,
        (END_OF_COMMAND << 56) | (GLOBAL_TIME_HIGH << 48) | st,
    ]


# ---------------------------------------------------------------- time -> fields

def pixel_time_fields(x, t_units):
    """Coarse (25 ns ticks, 48 bit), FToA and decoded ToA for a pixel hit at ``t_units``.

    The decoder computes ``toa = 4096*coarse - 256*ftoa + 256*phase(x)``. We pick the
    smallest ``coarse`` with ``4096*coarse >= t - 256*phase`` and the largest ``ftoa``
    that keeps ``toa >= t``, so ``toa`` is ``t`` rounded up to the 1.5625 ns FToA grid
    of that column: ``t <= toa < t + 256``. Times before the first tick clamp to coarse 0.
    Returns (coarse, ftoa, toa) as int64 arrays (or ints for scalars).
    """
    t = np.asarray(t_units, dtype=np.int64)
    ph = np.asarray(pixel_phase(x), dtype=np.int64)
    u = t - 256 * ph
    coarse = -((-u) // 4096)           # ceil(u / 4096)
    ftoa = (4096 * coarse - u) // 256  # 0..15
    neg = coarse < 0
    coarse = np.where(neg, 0, coarse)
    ftoa = np.where(neg, 0, ftoa)
    toa = 4096 * coarse - 256 * ftoa + 256 * ph
    if t.ndim == 0 and ph.ndim == 0:
        return int(coarse), int(ftoa), int(toa)
    return coarse, ftoa, toa


def tdc_decoded_time(coarse, step, fine):
    """The time (25/4096 ns units) a decoder gives a TDC word: 4096*coarse + 512*step + ((fine-1)*512)//12."""
    coarse, step, fine = (np.asarray(v, dtype=np.int64) for v in (coarse, step, fine))
    t = 4096 * coarse + (step << 9) + ((((fine - 1) << 9) // 12) & 0x1FF)
    return int(t) if t.ndim == 0 else t


def tdc_time_fields(t_units):
    """(coarse48, step, fine, decoded_time) of a TDC edge at ``t_units`` (25/4096 ns).

    The TDC samples at 3.125 ns (``step``, 512 units) and interpolates in 12 fine bins of
    ~260 ps (``fine`` 1..12); the decoded time rounds the edge down to the fine grid.
    ``coarse48`` is the full tick count; the word keeps its low 32 bits.
    """
    t = np.asarray(t_units, dtype=np.int64)
    coarse = t >> 12
    rem = t & 0xFFF
    step = rem >> 9
    fine = 1 + ((rem & 0x1FF) * 12) // 512
    dec = tdc_decoded_time(coarse, step, fine)
    if t.ndim == 0:
        return int(coarse), int(step), int(fine), int(dec)
    return coarse, step, fine, dec


# ---------------------------------------------------------------- array encoders (numba + numpy twin)

@njit(cache=True, nogil=True)
def encode_pixels(x, y, coarse, ftoa, tot, header):
    """Pixel words for arrays of raw fields; ``coarse`` in ticks (any width, the word keeps
    its low 30 bits), ``tot`` in 25 ns counts (0..1023), ``header`` 0xB or 0xA."""
    n = x.shape[0]
    out = np.empty(n, np.uint64)
    h = np.uint64(header) << np.uint64(60)
    for i in range(n):
        xi = np.uint64(x[i])
        yi = np.uint64(y[i])
        c = np.uint64(coarse[i])
        pix = ((xi & np.uint64(1)) << np.uint64(2)) | (yi & np.uint64(3))
        out[i] = (h | ((xi >> np.uint64(1)) << np.uint64(53)) | ((yi >> np.uint64(2)) << np.uint64(47))
                  | (pix << np.uint64(44)) | ((c & np.uint64(0x3FFF)) << np.uint64(30))
                  | ((np.uint64(tot[i]) & np.uint64(0x3FF)) << np.uint64(20))
                  | ((np.uint64(ftoa[i]) & np.uint64(0xF)) << np.uint64(16))
                  | ((c >> np.uint64(14)) & np.uint64(0xFFFF)))
    return out


def encode_pixels_np(x, y, coarse, ftoa, tot, header=PIXEL_HEADER_DD):
    """numpy twin of :func:`encode_pixels`."""
    u = lambda a: np.asarray(a).astype(np.uint64)  # noqa: E731
    x, y, c, f, t = u(x), u(y), u(coarse), u(ftoa), u(tot)
    dcol = x >> np.uint64(1)
    spix = y >> np.uint64(2)
    pix = ((x & np.uint64(1)) << np.uint64(2)) | (y & np.uint64(3))
    toa14 = c & np.uint64(0x3FFF)
    spidr = (c >> np.uint64(14)) & np.uint64(0xFFFF)
    return ((np.uint64(header) << np.uint64(60)) | (dcol << np.uint64(53)) | (spix << np.uint64(47))
            | (pix << np.uint64(44)) | (toa14 << np.uint64(30)) | ((t & np.uint64(0x3FF)) << np.uint64(20))
            | ((f & np.uint64(0xF)) << np.uint64(16)) | spidr)


@njit(cache=True, nogil=True)
def encode_pixels_from_time(x, y, t_units, tot, header):
    """Pixel words for hits at ``t_units``; returns (words, coarse, ftoa, toa) with ``toa`` the
    decoded time (see :func:`pixel_time_fields`)."""
    n = x.shape[0]
    coarse = np.empty(n, np.int64)
    ftoa = np.empty(n, np.uint8)
    toa = np.empty(n, np.int64)
    for i in range(n):
        ph = (np.int64(x[i]) >> 1) & 15
        if ph == 0:
            ph = 16
        u = t_units[i] - 256 * ph
        c = -((-u) // 4096)
        f = (4096 * c - u) // 256
        if c < 0:
            c = 0
            f = 0
        coarse[i] = c
        ftoa[i] = f
        toa[i] = 4096 * c - 256 * f + 256 * ph
    return encode_pixels(x, y, coarse, ftoa, tot, header), coarse, ftoa, toa


def encode_pixels_from_time_np(x, y, t_units, tot, header=PIXEL_HEADER_DD):
    """numpy twin of :func:`encode_pixels_from_time`."""
    coarse, ftoa, toa = pixel_time_fields(np.asarray(x), np.asarray(t_units))
    coarse, ftoa, toa = np.atleast_1d(coarse), np.atleast_1d(ftoa), np.atleast_1d(toa)
    return encode_pixels_np(x, y, coarse, ftoa, tot, header), coarse, ftoa.astype(np.uint8), toa
