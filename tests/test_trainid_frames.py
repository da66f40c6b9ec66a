"""Train-ID receiver frames: layout, CRC (hand-computed), robust parsing."""
import pytest
from hypothesis import given, settings, strategies as st

from tpx3lib.errors import ConfigError
from tpx3lib.trainid.frames import FRAME_LENGTH, FrameParser, TrainIdFrame, encode_frame, frame_crc

# Hand-computed: bytes 00 00 00 00 12 34 56 78 | 00 00 00 01
# 0x12 ^ 0x34 = 0x26, ^ 0x56 = 0x70, ^ 0x78 = 0x08, ^ 0x01 = 0x09.
FRAME_A = b"\x02" + b"0000000012345678" + b"00000001" + b"09" + b"\x03"
# ID 0x00000000_3B9ACA00 (1e9), beam mode 0xDEADBEEF:
# 3B ^ 9A = A1, ^ CA = 6B, ^ 00 = 6B; DE ^ AD = 73, ^ BE = CD, ^ EF = 22; 6B ^ 22 = 49.
FRAME_B = b"\x02" + b"000000003B9ACA00" + b"DEADBEEF" + b"49" + b"\x03"


def test_frame_layout_and_crc_by_hand():
    assert len(FRAME_A) == FRAME_LENGTH == 28
    assert frame_crc(0x12345678, 1) == 0x09
    assert encode_frame(0x12345678, 1) == FRAME_A
    assert frame_crc(1_000_000_000, 0xDEADBEEF) == 0x49
    assert encode_frame(1_000_000_000, 0xDEADBEEF) == FRAME_B
    # All-ones: twelve 0xFF bytes XOR to 0 (an even count).
    assert frame_crc(2**64 - 1, 2**32 - 1) == 0x00
    # A single byte set survives the XOR unchanged.
    assert frame_crc(0xAB << 56, 0) == 0xAB


def test_out_of_range_values_refused():
    with pytest.raises(ConfigError):
        frame_crc(2**64, 0)
    with pytest.raises(ConfigError):
        frame_crc(1, 2**32)


def test_parser_reads_whole_frames_and_lower_case():
    p = FrameParser()
    got = p.feed(FRAME_A + FRAME_B.lower())
    assert got == [TrainIdFrame(0x12345678, 1, 0x09), TrainIdFrame(1_000_000_000, 0xDEADBEEF, 0x49)]
    assert p.counters == dict(frames=2, crc_errors=0, malformed=0, garbage_bytes=0)


def test_partial_frames_across_reads():
    p = FrameParser()
    data = FRAME_A + FRAME_B
    got = []
    for i in range(len(data)):           # one byte at a time
        got += p.feed(data[i:i + 1])
        if i < FRAME_LENGTH - 1:
            assert got == [] and p.buffered == i + 1
    assert [f.train_id for f in got] == [0x12345678, 1_000_000_000]
    assert p.buffered == 0


def test_crc_error_dropped_and_counted():
    bad = FRAME_A[:25] + b"08" + b"\x03"     # CRC 08 instead of 09
    p = FrameParser()
    assert p.feed(bad + FRAME_B) == [TrainIdFrame(1_000_000_000, 0xDEADBEEF, 0x49)]
    assert p.counters["crc_errors"] == 1 and p.counters["frames"] == 1


def test_resync_on_garbage_and_truncated_frames():
    p = FrameParser()
    truncated = FRAME_A[:15]                  # STX + 14 digits, then a new frame starts
    data = b"noise\xff" + truncated + FRAME_B + b"\x03\x03" + b"\x02ZZ" + FRAME_A
    got = p.feed(data)
    assert [f.train_id for f in got] == [1_000_000_000, 0x12345678]
    assert p.counters["malformed"] == 2        # the truncated frame and "\x02ZZ"
    # garbage: 6 noise bytes + 15 truncated + 2 ETX + 3 of "\x02ZZ"
    assert p.counters["garbage_bytes"] == 6 + 15 + 2 + 3


def test_missing_etx_is_malformed():
    p = FrameParser()
    no_etx = FRAME_A[:-1] + b"X"
    assert p.feed(no_etx + FRAME_B) == [TrainIdFrame(1_000_000_000, 0xDEADBEEF, 0x49)]
    assert p.counters["malformed"] == 1


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(1, 2**64 - 1), min_size=1, max_size=8),
       cuts=st.lists(st.integers(0, 300), max_size=10),
       noise=st.binary(max_size=20).filter(lambda b: b"\x02" not in b))
def test_any_split_gives_the_same_frames(ids, cuts, noise):
    data = noise + b"".join(encode_frame(i, i & 0xFFFF) for i in ids)
    p = FrameParser()
    got = []
    prev = 0
    for c in sorted(set(min(c, len(data)) for c in cuts)) + [len(data)]:
        got += p.feed(data[prev:c])
        prev = c
    assert [f.train_id for f in got] == ids
    assert [f.beam_mode for f in got] == [i & 0xFFFF for i in ids]
    assert p.counters["garbage_bytes"] == len(noise)
