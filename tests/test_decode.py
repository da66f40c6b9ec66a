"""The word decoder: real data, worked words, the numpy twin, streaming and bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tpx3lib.decode.kernels import extend_timestamp
from tpx3lib.decode.reference import extend_quadrant_rule, reference_decode
from tpx3lib.decode.stream import DecodedChunk, StreamDecoder, as_words, decode_words
from tpx3lib.dtypes import toa_seconds
from tpx3lib.errors import ConfigError, DecodeError

FIXTURE_LONGTIME = 2233861246990


# --- words built by hand from the spec's bit positions (test-only) -------------
def pixel_word(col, row, toa, ftoa, tot, spidr, hdr=0xB):
    dcol, pix_hi = divmod(col, 2)
    spix, pix_lo = divmod(row, 4)
    pix = pix_hi * 4 + pix_lo
    return (hdr << 60) | (dcol << 53) | (spix << 47) | (pix << 44) | (toa << 30) | (tot << 20) \
        | (ftoa << 16) | spidr


def tdc_word(kind, counter, coarse32, step3125=0, fine=1):
    return (kind << 56) | (counter << 44) | (coarse32 << 12) | (step3125 << 9) | (fine << 5)


def heartbeat_words(timer48, spidr=0):
    lo = (0x44 << 56) | ((timer48 & 0xFFFFFFFF) << 16) | spidr
    hi = (0x45 << 56) | (((timer48 >> 32) & 0xFFFF) << 16)
    return [lo, (0x71 << 56) | (0x44 << 48), hi, (0x71 << 56) | (0x45 << 48)]


def words(*ws):
    return np.array([w & 0xFFFFFFFFFFFFFFFF for w in ws], dtype=np.uint64)


@pytest.fixture(scope="module")
def fixture_words(data_dir):
    raw = (data_dir / "centroid_pipeline_test.raw").read_bytes()
    return np.frombuffer(raw[8:], "<u8")


@pytest.fixture(scope="module")
def expected(data_dir):
    return np.load(data_dir / "centroid_pipeline_test.expected.npz")


# --- real data ------------------------------------------------------------------
def test_fixture_pixels_match_pymepix_exactly(fixture_words, expected):
    out, counts = decode_words(fixture_words, longtime=FIXTURE_LONGTIME)
    p = out.pixels
    assert p.size == 1858
    np.testing.assert_array_equal(p["x"], expected["pix_x"])
    np.testing.assert_array_equal(p["y"], expected["pix_y"])
    np.testing.assert_array_equal(p["tot"], expected["pix_tot_ns"])
    np.testing.assert_allclose(toa_seconds(p["toa"]), expected["pix_toa_s"], rtol=0, atol=1e-12)


def test_fixture_word_type_counts(fixture_words):
    _, c = decode_words(fixture_words, longtime=FIXTURE_LONGTIME)
    assert (c["pixel"], c["tdc1_rising"], c["tdc1_falling"], c["tdc2_rising"], c["tdc2_falling"]) == \
        (1858, 14, 14, 1100, 1101)
    assert (c["global_time_low"], c["global_time_high"], c["end_of_command"], c["unknown"]) == (2, 2, 4, 0)
    assert c["total"] == 4095 and c["stale_reference"] == 0


def test_fixture_with_stamp_word_counts_it_as_unknown(data_dir):
    # pymepix decoded the stamp as a word too: it matches no packet type.
    raw = (data_dir / "centroid_pipeline_test.raw").read_bytes()
    out, c = decode_words(raw, longtime=FIXTURE_LONGTIME)
    assert c["unknown"] == 1 and out.pixels.size == 1858


def test_fixture_events_match_pymepix(fixture_words, expected):
    from tpx3lib.decode.events import EventBuilder
    out, _ = decode_words(fixture_words, longtime=FIXTURE_LONGTIME)
    eb = EventBuilder(window_s=(0.0, 1e-3))
    ev = np.concatenate([eb.feed(out.pixels, out.tdcs), eb.flush()])
    assert ev.size == 21
    assert np.unique(ev["event"]).size == 1  # one trigger, as in pymepix (its event 6)
    mine = np.lexsort((ev["tot"], ev["y"], ev["x"]))
    theirs = np.lexsort((expected["ev_tot_ns"], expected["ev_y"], expected["ev_x"]))
    np.testing.assert_array_equal(ev["x"][mine], expected["ev_x"][theirs])
    np.testing.assert_array_equal(ev["y"][mine], expected["ev_y"][theirs])
    np.testing.assert_array_equal(ev["tot"][mine], expected["ev_tot_ns"][theirs])
    # Our ToF is an exact integer difference; pymepix subtracts two float64 times
    # near 5.6e4 s (spacing 7.3e-12 s), so agreement is to a couple of ulps.
    np.testing.assert_allclose(toa_seconds(ev["tof"][mine]), expected["ev_tof_s"][theirs], rtol=0, atol=2e-11)
    assert eb.counters["hits_in"] == 1858
    assert eb.counters["events_out"] + eb.counters["before_first_trigger"] + eb.counters["outside_window"] == 1858


def test_worked_pixel_word():
    out, _ = decode_words(words(0xB649B61040720841), longtime=FIXTURE_LONGTIME)
    p = out.pixels[0]
    assert (p["x"], p["y"], p["ftoa"], p["tot"]) == (100, 79, 2, 175)
    assert toa_seconds(p["toa"]) == pytest.approx(55835.440488025, abs=1e-9)
    coarse = (int(p["toa"]) + 256 * 2 - 256 * ((100 // 2) % 16)) // 4096
    assert coarse & 0x3FFF == 6209 and (coarse >> 14) & 0xFFFF == 2113


def test_worked_tdc_words():
    out, _ = decode_words(words(0x6F0130235706D160, 0x6A014023571DEB40), longtime=FIXTURE_LONGTIME)
    rise, fall = out.tdcs
    assert (rise["tdc"], rise["rising"], rise["counter"]) == (1, 1, 19)
    assert (fall["tdc"], fall["rising"], fall["counter"]) == (1, 0, 20)
    assert toa_seconds(rise["time"]) == pytest.approx(55835.50126352759, abs=1e-9)
    assert toa_seconds(fall["time"]) == pytest.approx(55835.50127276797, abs=1e-9)


# --- time extension ----------------------------------------------------------------
def test_extension_hand_worked_cases():
    q = 1 << 28
    ref = 5 * (1 << 30) + 2 * q + 100           # quadrant 2 of period 5
    # same quadrant: upper bits from the reference
    assert extend_timestamp(2 * q + 7, 30, ref) == 5 * (1 << 30) + 2 * q + 7
    # d = 1: the quadrant before
    assert extend_timestamp(q + 7, 30, ref) == 5 * (1 << 30) + q + 7
    # ref in quadrant 3, count in quadrant 0: the next period
    ref3 = 5 * (1 << 30) + 3 * q + 5
    assert extend_timestamp(10, 30, ref3) == 6 * (1 << 30) + 10
    # ref in quadrant 0, count in quadrant 3: the previous period
    ref0 = 5 * (1 << 30) + 5
    assert extend_timestamp(3 * q + 10, 30, ref0) == 4 * (1 << 30) + 3 * q + 10
    # d = +2 (pymepix leaves this wrong): the count is nearer in the previous period
    refd = 5 * (1 << 30) + 2 * q + q // 2        # quadrant 2, middle
    count = 3 * q // 4                            # quadrant 0
    assert extend_timestamp(count, 30, refd) == 5 * (1 << 30) + count


@settings(max_examples=300, deadline=None)
@given(st.integers(0, (1 << 47) - 1), st.integers(0, (1 << 30) - 1))
def test_extension_agrees_with_quadrant_rule(ref, count):
    ref = ref + (1 << 30)  # keep clear of the negative-time clamp
    fast = extend_timestamp(count, 30, ref)
    slow = int(extend_quadrant_rule(np.array([count]), 30, np.array([ref]))[0])
    assert fast == slow
    assert fast % (1 << 30) == count and abs(fast - ref) <= 1 << 29


# --- numba vs numpy twin on random streams --------------------------------------
HEADERS = [0xB0, 0xB5, 0xBF, 0xA3, 0x6F, 0x6A, 0x6E, 0x6B, 0x44, 0x45, 0x71, 0x50, 0x00, 0xFF]


def random_stream(rng, n, with_heartbeats=True):
    hdr = rng.choice(HEADERS, size=n).astype(np.uint64)
    body = rng.integers(0, 1 << 56, size=n, dtype=np.uint64)
    w = (hdr << np.uint64(56)) | body
    if with_heartbeats:
        # plausible heartbeats so the reference moves like a real one
        hb_at = np.sort(rng.choice(n, size=max(1, n // 200), replace=False))
        t = np.sort(rng.integers(1 << 30, 1 << 40, size=hb_at.size))
        for i, ti in zip(hb_at, t):
            if i + 1 < n:
                w[i] = (np.uint64(0x44) << np.uint64(56)) | (np.uint64(int(ti) & 0xFFFFFFFF) << np.uint64(16))
                w[i + 1] = (np.uint64(0x45) << np.uint64(56)) | (np.uint64(int(ti) >> 32) << np.uint64(16))
    return w


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3000), fixed=st.booleans())
def test_kernel_matches_numpy_reference(seed, n, fixed):
    rng = np.random.default_rng(seed)
    w = random_stream(rng, n)
    longtime = int(rng.integers(1 << 30, 1 << 40)) if fixed else None
    out, counts = decode_words(w, longtime=longtime)
    ref_px, ref_td, ref_hb = reference_decode(w, longtime=longtime)
    has_ref = longtime is not None or ref_hb.size > 0
    if has_ref:
        np.testing.assert_array_equal(out.pixels, ref_px)
        np.testing.assert_array_equal(out.tdcs, ref_td)
    else:
        assert counts["unreferenced_words"] == n
    np.testing.assert_array_equal(out.heartbeats, ref_hb)
    hdr = (w >> np.uint64(56)).astype(int)
    assert counts["pixel"] == np.count_nonzero((hdr >> 4) == 0xB)
    assert counts["total"] == n


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 2000), n_cuts=st.integers(0, 12),
       as_bytes=st.booleans())
def test_any_chunking_gives_the_same_result(seed, n, n_cuts, as_bytes):
    rng = np.random.default_rng(seed)
    w = random_stream(rng, n)
    whole, whole_counts = decode_words(w)
    unit = 1 if as_bytes else 8
    cuts = np.sort(rng.integers(0, n * 8 // unit + 1, size=n_cuts)) * unit
    data = w.tobytes()
    dec = StreamDecoder()
    parts = []
    for a, b in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(data)]])):
        chunk = data[a:b]
        parts.append(dec.feed(chunk if as_bytes else np.frombuffer(chunk, "<u8")))
    parts.append(dec.flush())
    got = DecodedChunk.concat(parts)
    np.testing.assert_array_equal(got.pixels, whole.pixels)
    np.testing.assert_array_equal(got.tdcs, whole.tdcs)
    np.testing.assert_array_equal(got.heartbeats, whole.heartbeats)
    assert dec.counts() == whole_counts


def test_data_before_first_heartbeat_is_held_not_dropped():
    t0 = 3 * (1 << 30) + 12345                       # reference from the heartbeat
    hit = pixel_word(10, 20, toa=(t0 - 1000) & 0x3FFF, ftoa=0, tot=4, spidr=((t0 - 1000) >> 14) & 0xFFFF)
    dec = StreamDecoder()
    first = dec.feed(words(hit, hit))
    assert first.pixels.size == 0 and dec.holding == 2
    second = dec.feed(words(*heartbeat_words(t0)))
    assert second.pixels.size == 2
    # col 10 -> phase (10 // 2) % 16 = 5; ftoa 0
    assert second.pixels["toa"][0] == 4096 * (t0 - 1000) + 5 * 256


def test_stream_with_no_heartbeat_is_decoded_unreferenced_and_reported():
    dec = StreamDecoder()
    assert dec.feed(words(pixel_word(1, 2, 3, 0, 4, 5))).pixels.size == 0
    out = dec.flush()
    assert out.pixels.size == 1 and dec.counts()["unreferenced_words"] == 1
    assert out.pixels["toa"][0] == 4096 * ((5 << 14) | 3) + 16 * 256  # col 1 -> phase 0 -> 16


def test_heartbeat_split_across_chunks_still_found():
    t0 = (7 << 32) + 999
    hb = heartbeat_words(t0)
    hit = pixel_word(0, 0, toa=t0 & 0x3FFF, ftoa=0, tot=1, spidr=(t0 >> 14) & 0xFFFF)
    dec = StreamDecoder()
    assert dec.feed(words(hit, hb[0])).pixels.size == 0
    out = dec.feed(words(*hb[1:]))
    assert out.pixels["toa"][0] == 4096 * t0 + 16 * 256
    assert dec.longtime == t0


# --- malformed input ---------------------------------------------------------------
def test_odd_byte_count_is_counted_not_crashing():
    data = words(0xB649B61040720841).tobytes() + b"\x01\x02\x03"
    out, counts = decode_words(data, longtime=FIXTURE_LONGTIME)
    assert out.pixels.size == 1 and counts["trailing_bytes"] == 3
    with pytest.raises(DecodeError, match="not a whole number"):
        as_words(b"\x00" * 9)


def test_garbage_words_are_all_counted():
    rng = np.random.default_rng(1)
    w = rng.integers(0, np.iinfo(np.uint64).max, size=20000, dtype=np.uint64)
    out, c = decode_words(w, longtime=1 << 35)
    named = ("pixel", "pixel_counting", "packet_and_shutter", "tdc1_rising", "tdc1_falling", "tdc2_rising",
             "tdc2_falling", "global_time_low", "global_time_high", "end_of_command", "unknown")
    assert sum(c[k] for k in named) == c["total"] == 20000
    assert out.pixels.size == c["pixel"]
    assert out.tdcs.size == c["tdc1_rising"] + c["tdc1_falling"] + c["tdc2_rising"] + c["tdc2_falling"]
    assert c["tdc_fine_invalid"] > 0  # random fine fields include 0 and 13..15


def test_unpaired_and_backwards_heartbeats_are_reported():
    t1, t0 = (9 << 32), (2 << 32)
    w = words(*heartbeat_words(t1), *heartbeat_words(t0), (0x45 << 56))
    out, c = decode_words(w)
    assert c["reference_backwards"] == 1 and c["global_time_high_unpaired"] == 1
    assert list(out.heartbeats["timer"]) == [t1, t0]


def test_only_triggers_and_no_triggers():
    from tpx3lib.decode.events import EventBuilder
    only_trig, _ = decode_words(words(*heartbeat_words(1 << 33), tdc_word(0x6F, 5, 1 << 20)))
    assert only_trig.pixels.size == 0 and only_trig.tdcs.size == 1
    eb = EventBuilder()
    assert eb.feed(only_trig.pixels, only_trig.tdcs).size == 0 and eb.flush().size == 0
    t0 = 1 << 33
    no_trig, _ = decode_words(words(*heartbeat_words(t0), pixel_word(3, 4, t0 & 0x3FFF, 0, 2, (t0 >> 14) & 0xFFFF)))
    eb = EventBuilder()
    ev = np.concatenate([eb.feed(no_trig.pixels, no_trig.tdcs), eb.flush()])
    assert ev.size == 0 and eb.counters["before_first_trigger"] == 1


def test_bad_parameters_raise_config_error():
    with pytest.raises(ConfigError):
        StreamDecoder(orientation="sideways")
    with pytest.raises(ConfigError):
        StreamDecoder(chip=300)
    with pytest.raises(ConfigError):
        StreamDecoder(longtime=1 << 50)


# --- orientation, counters -----------------------------------------------------------
@pytest.mark.parametrize("orientation,expect", [
    ("up", (10, 20)), ("left", (20, 245)), ("down", (245, 235)), ("right", (235, 10)),
])
def test_orientation_and_offset(orientation, expect):
    w = words(pixel_word(10, 20, 0, 0, 1, 0))
    out, _ = decode_words(w, longtime=0, orientation=orientation, offset=(256, 512))
    assert (out.pixels["x"][0], out.pixels["y"][0]) == (expect[0] + 256, expect[1] + 512)
    # the phase correction uses the raw column (10 -> 5), whatever the orientation
    assert out.pixels["toa"][0] == 5 * 256


def test_trigger_counter_extends_past_12_bit_wrap():
    seq = [4094, 4095, 0, 1, 2]
    w = words(*[tdc_word(0x6F if i % 2 == 0 else 0x6A, c, 1000 + i) for i, c in enumerate(seq)])
    out, c = decode_words(w, longtime=0)
    assert list(out.tdcs["counter"]) == [4094, 4095, 4096, 4097, 4098]
    assert c["tdc_counter_backwards"] == 0


def test_tdc2_counter_is_separate_from_tdc1():
    w = words(tdc_word(0x6F, 100, 10), tdc_word(0x6E, 7, 11), tdc_word(0x6A, 101, 12), tdc_word(0x6B, 8, 13))
    out, _ = decode_words(w, longtime=0)
    assert list(out.tdcs["counter"]) == [100, 7, 101, 8]
    assert list(out.tdcs["tdc"]) == [1, 2, 1, 2]
