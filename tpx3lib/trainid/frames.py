"""Frames of the USB train-ID receiver (serial line, 115200 baud, one per train).

Layout, 28 bytes, all ASCII between the delimiters::

    STX (0x02) | 16 hex digits train ID | 8 hex digits beam mode | 2 hex digits CRC | ETX (0x03)

Our reading of the spec's "CRC: XOR over byte pairs": the 24 hex digits of train
ID and beam mode are 12 pairs, each pair one byte (the 8 big-endian bytes of the
train ID, then the 4 of the beam mode); the CRC is the XOR of those 12 bytes,
written as two hex digits. Example: ID 0x12345678, beam mode 1 ->
``00 00 00 00 12 34 56 78 00 00 00 01`` -> 0x12^0x34^0x56^0x78^0x01 = 0x09, frame
``b"\\x02" b"0000000012345678" b"00000001" b"09" b"\\x03"``. Digits are written upper
case and accepted in either case.

:class:`FrameParser` takes bytes in any pieces and returns whole frames; it
resynchronises on the next STX after garbage or a malformed frame and drops (and
counts) frames whose CRC does not match.
"""
from __future__ import annotations

import dataclasses

from ..errors import ConfigError

__all__ = ["STX", "ETX", "FRAME_LENGTH", "TrainIdFrame", "frame_crc", "encode_frame", "FrameParser"]

STX = 0x02
ETX = 0x03
_BODY = 16 + 8          # hex digits of train ID and beam mode
FRAME_LENGTH = 1 + _BODY + 2 + 1
_HEX = frozenset(b"0123456789abcdefABCDEF")


@dataclasses.dataclass(frozen=True)
class TrainIdFrame:
    """One received frame."""

    train_id: int
    beam_mode: int
    crc: int


def frame_crc(train_id: int, beam_mode: int) -> int:
    """XOR of the 8 train-ID bytes and the 4 beam-mode bytes (big-endian)."""
    if not 0 <= train_id < 1 << 64:
        raise ConfigError(f"train ID {train_id} does not fit 16 hex digits")
    if not 0 <= beam_mode < 1 << 32:
        raise ConfigError(f"beam mode {beam_mode} does not fit 8 hex digits")
    crc = 0
    for b in train_id.to_bytes(8, "big") + beam_mode.to_bytes(4, "big"):
        crc ^= b
    return crc


def encode_frame(train_id: int, beam_mode: int = 0, crc: int | None = None) -> bytes:
    """The 28-byte frame; ``crc`` overrides the computed one (to make bad frames)."""
    good = frame_crc(train_id, beam_mode)
    crc = good if crc is None else crc & 0xFF
    return b"\x02" + f"{train_id:016X}{beam_mode:08X}{crc:02X}".encode("ascii") + b"\x03"


class FrameParser:
    """Incremental frame parser.

    ``feed(data)`` returns the frames completed by ``data``. Counters:
    ``frames`` (good), ``crc_errors`` (dropped), ``malformed`` (an STX not followed
    by 26 hex digits and ETX; dropped), ``garbage_bytes`` (bytes outside any frame,
    including those of malformed frames).
    """

    def __init__(self):
        self._buf = bytearray()
        self.counters = dict(frames=0, crc_errors=0, malformed=0, garbage_bytes=0)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held for the next feed."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[TrainIdFrame]:
        buf = self._buf
        buf += data
        out: list[TrainIdFrame] = []
        k = self.counters
        pos = 0
        n = len(buf)
        while True:
            start = buf.find(b"\x02", pos)
            if start < 0:
                k["garbage_bytes"] += n - pos
                pos = n
                break
            k["garbage_bytes"] += start - pos
            pos = start
            # Look at what we have of this candidate frame.
            end = min(n, start + FRAME_LENGTH)
            bad_at = None
            for i in range(start + 1, end):
                b = buf[i]
                if i < start + FRAME_LENGTH - 1:
                    if b not in _HEX:
                        bad_at = i
                        break
                elif b != ETX:
                    bad_at = i
                    break
            if bad_at is not None:
                # Not a frame: count it, resync at the next STX after this one.
                k["malformed"] += 1
                k["garbage_bytes"] += 1
                pos = start + 1
                continue
            if end - start < FRAME_LENGTH:
                break  # partial frame: wait for more bytes
            body = bytes(buf[start + 1:start + 1 + _BODY + 2]).decode("ascii")
            train_id = int(body[:16], 16)
            beam_mode = int(body[16:24], 16)
            crc = int(body[24:26], 16)
            pos = start + FRAME_LENGTH
            if crc != frame_crc(train_id, beam_mode):
                k["crc_errors"] += 1
                continue
            k["frames"] += 1
            out.append(TrainIdFrame(train_id, beam_mode, crc))
        del buf[:pos]
        return out
