"""Encoder: hand-worked words, bit fields against the spec, numba kernels against numpy twins."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from simulators import encode as E
from test_sim_data_refdecoder import decode_ref, field


def test_fixture_pixel_word_from_its_fields():
    # README worked word: x 100, y 79, ToA 6209, FToA 2, ToT 175 ns (7 counts), SPIDR time 2113
    assert E.encode_pixel(100, 79, 6209, 2, 7, 2113) == 0xB649B61040720841


def test_fixture_tdc_words_from_their_fields():
    # TDC1 rising, counter 19, fine 11; its falling edge carries counter 20
    assert E.encode_tdc(0x6F, 19, 0x0235706D, 0, 11) == 0x6F0130235706D160
    assert E.encode_tdc(0x6A, 20, 0x023571DE, 5, 10) == 0x6A014023571DEB40


def test_pixel_bit_fields_by_hand():
    # x 7 -> dcol 3, pix bit2 = 1; y 10 -> spix 2, pix & 3 = 2 -> pix 6
    w = E.encode_pixel(7, 10, 0x2AAA, 0x5, 0x3FF, 0xBEEF)
    assert w >> 60 == 0xB
    assert (w >> 53) & 0x7F == 3
    assert (w >> 47) & 0x3F == 2
    assert (w >> 44) & 0x7 == 6
    assert (w >> 30) & 0x3FFF == 0x2AAA
    assert (w >> 20) & 0x3FF == 0x3FF
    assert (w >> 16) & 0xF == 0x5
    assert w & 0xFFFF == 0xBEEF
    # the hand-assembled value
    assert w == (0xB << 60) | (3 << 53) | (2 << 47) | (6 << 44) | (0x2AAA << 30) | (0x3FF << 20) | (5 << 16) | 0xBEEF


def test_every_pixel_address_round_trips():
    x, y = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    x, y = x.ravel(), y.ravel()
    n = len(x)
    w = E.encode_pixels(x.astype(np.uint16), y.astype(np.uint16), np.zeros(n, np.int64),
                        np.zeros(n, np.uint8), np.zeros(n, np.uint16), 0xB)
    px, _, _ = decode_ref(w, longtime=0)
    np.testing.assert_array_equal(px["x"], x)
    np.testing.assert_array_equal(px["y"], y)


@pytest.mark.parametrize("bad", [dict(x=256), dict(toa=1 << 14), dict(ftoa=16), dict(tot=1024), dict(spidr_time=-1)])
def test_encode_pixel_refuses_out_of_range(bad):
    args = dict(x=1, y=2, toa=3, ftoa=4, tot=5, spidr_time=6)
    args.update(bad)
    with pytest.raises(ValueError):
        E.encode_pixel(**args)


def test_tdc_bit_fields_and_limits():
    w = E.encode_tdc(0x6E, 0xABC, 0xDEADBEEF, 7, 12)
    assert w >> 56 == 0x6E
    assert (w >> 44) & 0xFFF == 0xABC
    assert (w >> 12) & 0xFFFFFFFF == 0xDEADBEEF
    assert (w >> 9) & 7 == 7
    assert (w >> 5) & 0xF == 12
    assert w & 0x1F == 0
    with pytest.raises(ValueError):
        E.encode_tdc(0x6F, 4096, 0, 0, 1)
    with pytest.raises(ValueError):
        E.encode_tdc(0x44, 1, 0, 0, 1)


def test_heartbeat_words_layout():
    timer = 0x1234_5678_9ABC
    w44, m44, w45, m45 = E.heartbeat_words(timer)
    spidr = (timer >> 14) & 0xFFFF
    assert w44 >> 56 == 0x44 and (w44 >> 16) & 0xFFFFFFFF == timer & 0xFFFFFFFF and w44 & 0xFFFF == spidr
    assert w45 >> 56 == 0x45 and (w45 >> 16) & 0xFFFF == timer >> 32 and w45 & 0xFFFF == spidr
    assert m44 >> 56 == 0x71 and (m44 >> 48) & 0xFF == 0x44
    assert m45 >> 56 == 0x71 and (m45 >> 48) & 0xFF == 0x45
    # real data: 0x440002A7BF410A9E has timer low 0x02A7BF41 and SPIDR time 0x0A9E = its bits 29..14
    real = E.heartbeat_words(0x02A7BF41)[0]
    assert real == 0x440002A7BF410A9E


def test_pixel_time_fields_give_the_decoded_time():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, 20000)
    t = rng.integers(10_000, 1 << 58, 20000)      # 48-bit coarse range, in 25/4096 ns
    coarse, ftoa, toa = E.pixel_time_fields(x, t)
    assert np.all((toa >= t) & (toa < t + 256))   # rounded up onto the 1.5625 ns grid
    assert np.all((ftoa >= 0) & (ftoa <= 15))
    phase = np.where((x // 2) % 16 == 0, 16, (x // 2) % 16)
    np.testing.assert_array_equal(toa, 4096 * coarse - 256 * ftoa + 256 * phase)
    # and the word says so: decode with a reference equal to the true coarse time
    w, c2, f2, toa2 = E.encode_pixels_from_time(x.astype(np.uint16), np.zeros(len(x), np.uint16), t,
                                                np.ones(len(x), np.uint16), 0xB)
    np.testing.assert_array_equal(toa2, toa)
    for i in range(0, len(x), 997):
        px, _, _ = decode_ref(w[i:i + 1], longtime=int(coarse[i]))
        assert px["toa"][0] == toa[i]


def test_tdc_time_fields_give_the_decoded_time():
    rng = np.random.default_rng(4)
    t = rng.integers(0, 1 << 58, 5000)
    coarse, step, fine, dec = E.tdc_time_fields(t)
    assert np.all((fine >= 1) & (fine <= 12)) and np.all((step >= 0) & (step <= 7))
    assert np.all((dec <= t) & (t - dec <= 43))     # rounded down to the 42.67-unit (~260 ps) bins
    for i in range(0, len(t), 499):
        w = E.encode_tdc(0x6F, 1, int(coarse[i]) & 0xFFFFFFFF, int(step[i]), int(fine[i]))
        _, td, _ = decode_ref(np.array([w], np.uint64), longtime=int(coarse[i]))
        assert td["time"][0] == dec[i]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, (1 << 48) - 1),
                          st.integers(0, 15), st.integers(0, 1023)), min_size=1, max_size=50))
def test_numba_encoder_equals_numpy_twin(rows):
    x, y, c, f, t = (np.array(v) for v in zip(*rows))
    a = E.encode_pixels(x.astype(np.uint16), y.astype(np.uint16), c.astype(np.int64), f.astype(np.uint8),
                        t.astype(np.uint16), 0xB)
    b = E.encode_pixels_np(x, y, c, f, t, 0xB)
    np.testing.assert_array_equal(a, b)
    # and each equals the scalar field encoder
    for i in range(len(x)):
        assert a[i] == E.encode_pixel(int(x[i]), int(y[i]), int(c[i]) & 0x3FFF, int(f[i]), int(t[i]),
                                      (int(c[i]) >> 14) & 0xFFFF)


def test_encode_from_time_twins_agree():
    rng = np.random.default_rng(5)
    n = 5000
    x = rng.integers(0, 256, n).astype(np.uint16)
    y = rng.integers(0, 256, n).astype(np.uint16)
    t = rng.integers(0, 1 << 50, n)
    t[:5] = [0, 1, 255, 4095, 4096]             # the first tick: clamps to coarse 0
    tot = rng.integers(0, 1024, n).astype(np.uint16)
    a = E.encode_pixels_from_time(x, y, t, tot, 0xB)
    b = E.encode_pixels_from_time_np(x, y, t, tot, 0xB)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert np.all(field(a[0], 63, 60) == 0xB)
