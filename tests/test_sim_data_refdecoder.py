"""A small, independent word decoder written from the spec (section 3), used only to check the
simulator's encoder and generator; plus tests that prove this decoder against real data.

Deliberately plain numpy and written without looking at simulators/ or tpx3lib/decode/.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tpx3lib.dtypes import toa_seconds

DATA = Path(__file__).parent / "data"
FIXTURE_LONGTIME = 2233861246990

PIX_REF_DTYPE = np.dtype([("x", "i8"), ("y", "i8"), ("toa14", "i8"), ("ftoa", "i8"), ("tot_ns", "i8"),
                          ("spidr", "i8"), ("header", "i8"), ("toa", "i8"), ("index", "i8")])
TDC_REF_DTYPE = np.dtype([("kind", "i8"), ("counter12", "i8"), ("counter", "i8"), ("coarse32", "i8"),
                          ("step", "i8"), ("fine", "i8"), ("time", "i8"), ("index", "i8")])


def field(words, hi, lo):
    """Bits hi..lo (inclusive) of each word, as int64."""
    w = np.asarray(words, np.uint64)
    return ((w >> np.uint64(lo)) & np.uint64((1 << (hi - lo + 1)) - 1)).astype(np.int64)


def extend(count, longtime, bits):
    """Extend a ``bits``-bit count to 48 bits with the reference ``longtime`` (spec section 3)."""
    count = np.asarray(count, np.int64)
    longtime = np.asarray(longtime, np.int64)
    q = np.int64(1) << (bits - 2)
    d = ((longtime >> (bits - 2)) & 3) - ((count >> (bits - 2)) & 3)
    adj = np.where((d == 1) | (d == -3), longtime - q, np.where((d == -1) | (d == 3), longtime + q, longtime))
    return (adj & ~((np.int64(1) << bits) - 1)) | count


def heartbeats_ref(words):
    """(index of the completing 0x45 word, timer) of each 0x44 followed (later) by a 0x45."""
    words = np.asarray(words, np.uint64)
    top = field(words, 63, 56)
    out_i, out_t = [], []
    lo = None
    for i in np.flatnonzero((top == 0x44) | (top == 0x45)):
        if top[i] == 0x44:
            lo = int(field(words[i], 47, 16))
        elif lo is not None:
            out_i.append(i)
            out_t.append((int(field(words[i], 31, 16)) << 32) | lo)
            lo = None
    return np.array(out_i, np.int64), np.array(out_t, np.int64)


def decode_ref(words, longtime=None):
    """Decode pixel words (0xA?/0xB?), TDC words and heartbeats.

    Each word is extended against the latest heartbeat completed before it; words before the first
    heartbeat use the first one (as a decoder that holds them would). ``longtime`` overrides all.
    Returns (pixels PIX_REF_DTYPE, tdcs TDC_REF_DTYPE, heartbeat timers).
    """
    words = np.asarray(words, np.uint64)
    idx = np.arange(len(words))
    hb_i, hb_t = heartbeats_ref(words)
    if longtime is not None:
        ref = np.full(len(words), longtime, np.int64)
    elif len(hb_t):
        k = np.searchsorted(hb_i, idx, side="left") - 1
        ref = hb_t[np.maximum(k, 0)]
    else:
        ref = np.zeros(len(words), np.int64)
    top = field(words, 63, 56)
    nib = top >> 4
    p = np.flatnonzero((nib == 0xB) | (nib == 0xA))
    pw = words[p]
    dcol, spix, pix = field(pw, 59, 53), field(pw, 52, 47), field(pw, 46, 44)
    px = np.zeros(len(p), PIX_REF_DTYPE)
    px["x"] = 2 * dcol + pix // 4
    px["y"] = 4 * spix + (pix & 3)
    px["toa14"] = field(pw, 43, 30)
    px["tot_ns"] = field(pw, 29, 20) * 25
    px["ftoa"] = field(pw, 19, 16)
    px["spidr"] = field(pw, 15, 0)
    px["header"] = nib[p]
    coarse48 = extend((px["spidr"] << 14) | px["toa14"], ref[p], 30)
    phase = (px["x"] // 2) % 16
    phase = np.where(phase == 0, 16, phase)
    px["toa"] = 4096 * coarse48 - 256 * px["ftoa"] + 256 * phase
    px["index"] = p
    t = np.flatnonzero(np.isin(top, [0x6F, 0x6A, 0x6E, 0x6B]))
    tw = words[t]
    td = np.zeros(len(t), TDC_REF_DTYPE)
    td["kind"] = top[t]
    td["counter12"] = field(tw, 55, 44)
    td["coarse32"] = field(tw, 43, 12)
    td["step"] = field(tw, 11, 9)
    td["fine"] = field(tw, 8, 5)
    c48 = extend(td["coarse32"], ref[t], 32)
    td["time"] = 4096 * c48 + (field(tw, 11, 0) & 0xE00) + ((((td["fine"] - 1) << 9) // 12) & 0x1FF)
    td["index"] = t
    # extend the 12-bit counters per TDC input, step by step from the first raw value
    for inputs in ((0x6F, 0x6A), (0x6E, 0x6B)):
        sel = np.flatnonzero(np.isin(td["kind"], inputs))
        if len(sel):
            raw = td["counter12"][sel]
            steps = np.diff(raw) % 4096
            td["counter"][sel] = raw[0] + np.concatenate([[0], np.cumsum(steps)])
    return px, td, hb_t


# ---------------------------------------------------------------- the decoder proven on real data

def test_ref_decoder_fixture_worked_words():
    px, _, _ = decode_ref(np.array([0xB649B61040720841], np.uint64), longtime=FIXTURE_LONGTIME)
    assert (px["x"][0], px["y"][0], px["toa14"][0], px["ftoa"][0], px["tot_ns"][0], px["spidr"][0]) == \
        (100, 79, 6209, 2, 175, 2113)
    assert abs(toa_seconds(px["toa"])[0] - 55835.440488025) < 1e-9
    _, td, _ = decode_ref(np.array([0x6F0130235706D160, 0x6A014023571DEB40], np.uint64), longtime=FIXTURE_LONGTIME)
    assert list(td["counter12"]) == [19, 20] and td["fine"][0] == 11
    assert abs(toa_seconds(td["time"])[0] - 55835.50126352759) < 1e-9
    assert abs(toa_seconds(td["time"])[1] - 55835.50127276797) < 1e-9


def test_ref_decoder_matches_pymepix_on_fixture_file():
    raw = np.fromfile(DATA / "centroid_pipeline_test.raw", "<u8")
    exp = np.load(DATA / "centroid_pipeline_test.expected.npz")
    px, td, hb = decode_ref(raw[1:], longtime=FIXTURE_LONGTIME)
    assert len(px) == 1858 and len(hb) == 2
    np.testing.assert_array_equal(px["x"], exp["pix_x"])
    np.testing.assert_array_equal(px["y"], exp["pix_y"])
    np.testing.assert_array_equal(px["tot_ns"], exp["pix_tot_ns"])
    np.testing.assert_array_equal(toa_seconds(px["toa"]), exp["pix_toa_s"])
    rising = td[td["kind"] == 0x6F]
    assert len(rising) == 14 and np.all(np.diff(rising["counter"]) == 2)


def test_extend_quadrants():
    q = 1 << 28
    lt = (5 << 30) + 100                       # just after a wrap
    assert extend((1 << 30) - 50, lt, 30) == (5 << 30) - 50        # count from before the wrap
    assert extend(200, lt, 30) == (5 << 30) + 200
    lt2 = (5 << 30) + (1 << 30) - 10            # just before a wrap
    assert extend(20, lt2, 30) == (6 << 30) + 20                   # count from after it
    assert extend(3 * q + 5, (7 << 30) + 3 * q, 30) == (7 << 30) + 3 * q + 5
