"""Streaming decoder: feed chunks with any word-aligned (or even byte) split,
get exactly what one big chunk would give.

Time reference (what 30-bit pixel and 32-bit TDC times are extended against):

* ``longtime=None`` (default, files): the in-stream 0x44/0x45 heartbeat pairs.
  Words that arrive before the first complete pair are *held* and decoded
  against it once it arrives (pymepix drops them). If the stream ends with no
  pair at all, the held words are decoded against a zero reference and counted
  as ``unreferenced_words``.
* ``longtime=<ticks>``: an external 48-bit reference in 25 ns ticks (online:
  the board's GET_TIMER, updated with :meth:`StreamDecoder.set_longtime`).
  Heartbeats are still decoded and reported but do not move the reference,
  unless ``follow_heartbeats=True``.

Event numbers: TDC edges carry the board's 12-bit trigger counter, which
counts every edge of that TDC input (a rising edge with 19 is followed by its
falling edge with 20). The decoder extends it past its wrap (4096) by the
smallest step between consecutive edges, so numbers are stable across chunk
boundaries; a run decoded from its start always gives the same numbers. A
decoder started mid-stream starts from the raw 12-bit value unless seeded
with :class:`DecoderState` (what parallel post-processing does).
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ..dtypes import HEARTBEAT_DTYPE, PIXEL_DTYPE, TDC_DTYPE
from ..errors import ConfigError, DecodeError
from . import kernels as K
from .words import ANOMALIES, ANOMALY_INDEX, word_type_counts

__all__ = ["StreamDecoder", "DecodedChunk", "DecoderState", "decode_words", "as_words",
           "ORIENTATIONS"]

log = logging.getLogger(__name__)

if not K.pixel_layout_ok(PIXEL_DTYPE):  # the kernel writes whole records
    raise ImportError("PIXEL_DTYPE layout changed: update decode_kernel's record packing")

ORIENTATIONS = {"up": 0, "left": 1, "down": 2, "right": 3}

#: Words held while waiting for the first heartbeat before giving up on it
#: (64 Mi words = 512 MiB); past it they are decoded unreferenced and counted.
DEFAULT_HOLD_LIMIT = 1 << 26


@dataclasses.dataclass
class DecodedChunk:
    """What one call to :meth:`StreamDecoder.feed` or ``flush`` produced."""

    pixels: np.ndarray      # PIXEL_DTYPE
    tdcs: np.ndarray        # TDC_DTYPE
    heartbeats: np.ndarray  # HEARTBEAT_DTYPE

    @classmethod
    def empty(cls) -> "DecodedChunk":
        return cls(np.empty(0, PIXEL_DTYPE), np.empty(0, TDC_DTYPE), np.empty(0, HEARTBEAT_DTYPE))

    @classmethod
    def concat(cls, parts) -> "DecodedChunk":
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.pixels for p in parts]),
                   np.concatenate([p.tdcs for p in parts]),
                   np.concatenate([p.heartbeats for p in parts]))

    @property
    def triggers(self) -> np.ndarray:
        """Alias of ``tdcs``."""
        return self.tdcs


@dataclasses.dataclass
class DecoderState:
    """Everything a decoder carries between chunks; seed a decoder with it to
    continue a stream elsewhere (e.g. a worker starting mid-file)."""

    longtime: int | None = None                 # reference, 25 ns ticks; None = not known yet
    pending_global_time_low: int | None = None  # an unpaired 0x44's timer bits 31..0
    tdc_counter: dict = dataclasses.field(default_factory=dict)  # {1: (raw12, extended), 2: ...}


def as_words(data) -> np.ndarray:
    """View ``data`` (uint64/int64 array, bytes-like) as little-endian int64 words.

    Raises DecodeError for a byte length that is not a multiple of 8 (use a
    StreamDecoder to feed byte streams with arbitrary splits).
    """
    if isinstance(data, np.ndarray) and data.dtype.kind in "iu" and data.dtype.itemsize == 8:
        arr = data if data.dtype.byteorder in "=<|" else data.astype("<u8")
        return np.ascontiguousarray(arr).view(np.int64)
    buf = memoryview(data).cast("B")
    if buf.nbytes % 8:
        raise DecodeError(f"{buf.nbytes} bytes is not a whole number of 64-bit words")
    return np.frombuffer(buf, dtype="<i8")


class StreamDecoder:
    """Decode one chip's word stream chunk by chunk.

    >>> dec = StreamDecoder(chip=0)
    >>> out = dec.feed(words)          # DecodedChunk (may be empty while waiting for a time reference)
    >>> rest = dec.flush()             # at end of stream
    >>> dec.counts()                   # word types and anomalies so far
    """

    def __init__(self, chip: int = 0, longtime: int | None = None, follow_heartbeats: bool | None = None,
                 orientation: str = "up", offset: tuple[int, int] = (0, 0),
                 state: DecoderState | None = None, hold_limit: int = DEFAULT_HOLD_LIMIT):
        if not 0 <= int(chip) < 256:
            raise ConfigError(f"chip index {chip} out of range 0..255")
        if orientation.lower() not in ORIENTATIONS:
            raise ConfigError(f"orientation {orientation!r}: choose one of {', '.join(ORIENTATIONS)}")
        off_x, off_y = (int(v) for v in offset)
        if not (0 <= off_x <= 65535 - 255 and 0 <= off_y <= 65535 - 255):
            raise ConfigError(f"offset {offset} must place the chip inside 0..65535")
        self.chip = int(chip)
        self.orientation = orientation.lower()
        self.offset = (off_x, off_y)
        self.hold_limit = int(hold_limit)
        self._orient = ORIENTATIONS[self.orientation]
        self._state = np.zeros(K.STATE_SIZE, np.int64)
        self._state[K.S_PENDING_LSB] = -1
        self._state[K.S_TDC1_RAW] = -1
        self._state[K.S_TDC2_RAW] = -1
        if follow_heartbeats is None:
            follow_heartbeats = longtime is None
        self._state[K.S_FOLLOW] = int(bool(follow_heartbeats))
        if state is not None:
            self._load_state(state)
            if longtime is None:
                longtime = state.longtime
        if longtime is not None:
            self.set_longtime(longtime)
        self._type_hist = np.zeros(256, np.int64)
        self._anomalies = np.zeros(len(ANOMALIES), np.int64)
        self._held: list[np.ndarray] = []
        self._held_words = 0
        self._tail = b""      # bytes of an incomplete word from a byte-stream feed
        self._search_lsb = -1  # an unpaired 0x44 seen while searching held words
        self.words_in = 0
        self.pixels_out = 0
        self.tdcs_out = 0
        self.heartbeats_out = 0

    # -- state -------------------------------------------------------------
    def _load_state(self, st: DecoderState) -> None:
        if st.pending_global_time_low is not None:
            self._state[K.S_PENDING_LSB] = int(st.pending_global_time_low)
        for tdc, slot in ((1, K.S_TDC1_RAW), (2, K.S_TDC2_RAW)):
            if tdc in st.tdc_counter:
                raw, ext = st.tdc_counter[tdc]
                self._state[slot] = int(raw)
                self._state[slot + 1] = int(ext)

    @property
    def state(self) -> DecoderState:
        s = self._state
        tdc = {}
        for n, slot in ((1, K.S_TDC1_RAW), (2, K.S_TDC2_RAW)):
            if s[slot] >= 0:
                tdc[n] = (int(s[slot]), int(s[slot + 1]))
        return DecoderState(
            longtime=int(s[K.S_REF]) if s[K.S_HAS_REF] else None,
            pending_global_time_low=int(s[K.S_PENDING_LSB]) if s[K.S_PENDING_LSB] >= 0 else None,
            tdc_counter=tdc,
        )

    @property
    def longtime(self) -> int | None:
        """The current 48-bit time reference in 25 ns ticks (None before one is known)."""
        return int(self._state[K.S_REF]) if self._state[K.S_HAS_REF] else None

    def set_longtime(self, ticks: int) -> None:
        """Set the time reference (48-bit board timer, 25 ns ticks), e.g. from GET_TIMER."""
        ticks = int(ticks)
        if not 0 <= ticks < (1 << 48):
            raise ConfigError(f"longtime {ticks} is not a 48-bit tick count")
        self._state[K.S_REF] = ticks
        self._state[K.S_HAS_REF] = 1

    @property
    def holding(self) -> int:
        """Words held while waiting for the first time reference."""
        return self._held_words

    # -- decoding ----------------------------------------------------------
    def feed(self, data) -> DecodedChunk:
        """Decode a chunk: a uint64/int64 word array or bytes-like (any split)."""
        words = self._words_from(data)
        if words.size == 0:
            return DecodedChunk.empty()
        self.words_in += words.size
        if self._state[K.S_HAS_REF]:
            return self._decode(words)
        # No reference yet: hold until a heartbeat pair completes.
        self._held.append(words)
        self._held_words += words.size
        idx, ref = self._search_reference(words)
        if idx >= 0:
            self.set_longtime(ref)
            return self._release_held()
        if self._held_words > self.hold_limit:
            log.warning("no time reference after %d words: decoding them unreferenced", self._held_words)
            return self._release_held(unreferenced=True)
        return DecodedChunk.empty()

    def flush(self) -> DecodedChunk:
        """End of stream: decode anything still held; report an incomplete word."""
        out = DecodedChunk.empty()
        if self._held:
            log.warning("stream ended with no time reference: %d words decoded unreferenced",
                        self._held_words)
            out = self._release_held(unreferenced=True)
        if self._tail:
            self._anomalies[ANOMALY_INDEX["trailing_bytes"]] += len(self._tail)
            log.warning("%d trailing bytes did not complete a 64-bit word", len(self._tail))
            self._tail = b""
        return out

    def _words_from(self, data) -> np.ndarray:
        if isinstance(data, np.ndarray) and data.dtype.kind in "iu" and data.dtype.itemsize == 8 \
                and not self._tail:
            return as_words(data)
        buf = memoryview(data).cast("B")
        if self._tail:
            buf = memoryview(self._tail + bytes(buf))
        whole = buf.nbytes - buf.nbytes % 8
        self._tail = bytes(buf[whole:])
        return np.frombuffer(buf[:whole], dtype="<i8") if whole else np.empty(0, np.int64)

    def _search_reference(self, words: np.ndarray) -> tuple[int, int]:
        """Find the first completed 0x44/0x45 pair in held words (a 0x44 may
        sit at the end of an earlier held chunk). The kernel's own state is not
        touched: the held words are decoded from their start afterwards."""
        hdr = (words >> 56) & 0xFF
        if self._search_lsb >= 0:
            hi = np.flatnonzero(hdr == 0x45)
            lo = np.flatnonzero(hdr == 0x44)
            if hi.size and (lo.size == 0 or hi[0] < lo[0]):
                return int(hi[0]), ((int(words[hi[0]]) >> 16) & 0xFFFF) << 32 | self._search_lsb
        idx, ref = K.find_first_reference(words, 0)
        if idx < 0:
            lo = np.flatnonzero(hdr == 0x44)
            if lo.size:
                self._search_lsb = (int(words[lo[-1]]) >> 16) & 0xFFFFFFFF
        return int(idx), int(ref)

    def _release_held(self, unreferenced: bool = False) -> DecodedChunk:
        words = np.concatenate(self._held) if len(self._held) > 1 else self._held[0]
        self._held = []
        self._held_words = 0
        self._search_lsb = -1
        if unreferenced:
            self._anomalies[ANOMALY_INDEX["unreferenced_words"]] += words.size
            self._state[K.S_REF] = 0
            self._state[K.S_HAS_REF] = 1
            out = self._decode(words)
            self._state[K.S_HAS_REF] = 0
            return out
        return self._decode(words)

    def _scratch(self, n: int):
        """Per-decoder buffers for pass A, grown as needed and reused, so a
        stream of chunks does not pay for fresh pages on every call."""
        sc = getattr(self, "_sc", None)
        if sc is None or sc[0].size < n:
            cap = max(n, 1 << 16)
            sc = (np.empty(cap, np.int64), np.empty(cap, TDC_DTYPE), np.empty(cap, HEARTBEAT_DTYPE),
                  np.empty(cap + 1, np.int64), np.empty(cap + 1, np.int64))
            self._sc = sc
        return sc

    def _decode(self, words: np.ndarray) -> DecodedChunk:
        pix_words, td, hb, seg_start, seg_ref = self._scratch(words.size)
        npx, ntd, nhb, nseg = K.split_words(
            words, self.chip, self._state, pix_words, seg_start, seg_ref,
            td["kind"], td["tdc"], td["rising"], td["chip"], td["counter"], td["time"],
            hb["chip"], hb["timer"], self._type_hist, self._anomalies,
        )
        px = np.empty(npx, PIXEL_DTYPE)
        out_words = px.view(np.int64)
        bounds = np.append(seg_start[:nseg], npx)
        stale = 0
        for j in range(nseg):
            a, b = int(bounds[j]), int(bounds[j + 1])
            if b > a:
                stale += K.decode_pixel_words(pix_words[a:b], seg_ref[j], self.chip, out_words[2 * a:2 * b])
        self._anomalies[ANOMALY_INDEX["stale_reference"]] += stale
        if self._orient or self.offset != (0, 0):
            self._orient_pixels(px)
        self.pixels_out += npx
        self.tdcs_out += ntd
        self.heartbeats_out += nhb
        return DecodedChunk(px, td[:ntd].copy(), hb[:nhb].copy())

    def _orient_pixels(self, px: np.ndarray) -> None:
        col = px["x"].astype(np.int32)
        row = px["y"].astype(np.int32)
        if self._orient == 1:      # Left
            x, y = row, 255 - col
        elif self._orient == 2:    # Down
            x, y = 255 - col, 255 - row
        elif self._orient == 3:    # Right
            x, y = 255 - row, col
        else:
            x, y = col, row
        px["x"] = x + self.offset[0]
        px["y"] = y + self.offset[1]

    # -- reporting ---------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Word-type counts (by name, see words.word_type_counts) and anomalies.

        Words still held (waiting for a reference) are not yet in the type counts;
        they are in ``held_words``.
        """
        out = word_type_counts(self._type_hist)
        out.update({name: int(v) for name, v in zip(ANOMALIES, self._anomalies)})
        out["held_words"] = self._held_words
        out["words_in"] = self.words_in
        out["pixels_out"] = self.pixels_out
        out["tdcs_out"] = self.tdcs_out
        out["heartbeats_out"] = self.heartbeats_out
        return out

    @property
    def type_histogram(self) -> np.ndarray:
        """Counts of decoded words by top byte (256 bins), a copy."""
        return self._type_hist.copy()


def decode_words(data, chip: int = 0, longtime: int | None = None, **kwargs) -> tuple[DecodedChunk, dict]:
    """Decode a whole stream in one call; returns (DecodedChunk, counts)."""
    dec = StreamDecoder(chip=chip, longtime=longtime, **kwargs)
    out = DecodedChunk.concat([dec.feed(data), dec.flush()])
    return out, dec.counts()
