"""Counting Timepix3 word types and measuring the time a stream spans (for ``tpx3 info``).

Everything here works batch by batch, so a file of any size is described in
bounded memory. Times are taken from the words themselves: the pixel coarse
time (SPIDR time << 14 | ToA), the TDC coarse time and the 0x44 global-time
word all count the same 40 MHz clock; their low 30 bits are unwrapped in file
order (hits are out of order by far less than the 26.8 s wrap), which gives
the span of the data. Heartbeats (0x44 + 0x45 pairs) give the 48-bit timer.
"""
from __future__ import annotations

import numpy as np

__all__ = ["WordStats", "WORD_CATEGORIES", "COARSE_TICK_S"]

COARSE_TICK_S = 25e-9
_WRAP = 1 << 30
_HALF = 1 << 29
_MASK30 = np.uint64(_WRAP - 1)

#: category name -> header bytes it covers (pixel: nibble 0xA/0xB, packet_id: nibble 0x5)
WORD_CATEGORIES: dict[str, tuple[int, ...]] = {
    "pixel": tuple(range(0xA0, 0xC0)),
    "tdc1_rising": (0x6F,),
    "tdc1_falling": (0x6A,),
    "tdc2_rising": (0x6E,),
    "tdc2_falling": (0x6B,),
    "global_time_low": (0x44,),
    "global_time_high": (0x45,),
    "end_of_command": (0x71,),
    "packet_id": tuple(range(0x50, 0x60)),
}
_TDC_BYTES = (0x6F, 0x6A, 0x6E, 0x6B)


class _ChipStats:
    def __init__(self) -> None:
        self.header_counts = np.zeros(256, np.int64)
        self.words = 0
        self.last_raw: int | None = None      # last 30-bit time seen
        self.unwrapped = 0                    # its unwrapped value
        self.t_min: int | None = None
        self.t_max: int | None = None
        self.pending_low: int | None = None   # 0x44 waiting for its 0x45
        self.heartbeats = 0
        self.hb_first: int | None = None
        self.hb_last: int | None = None

    def update(self, words: np.ndarray) -> None:
        words = np.asarray(words, dtype=np.uint64)
        if not len(words):
            return
        self.words += len(words)
        hdr = (words >> np.uint64(56)).astype(np.uint8)
        self.header_counts += np.bincount(hdr, minlength=256)
        self._update_time(words, hdr)
        self._update_heartbeats(words, hdr)

    def _update_time(self, words: np.ndarray, hdr: np.ndarray) -> None:
        nib = hdr >> 4
        is_pix = nib == 0xB
        is_tdc = np.isin(hdr, _TDC_BYTES)
        is_gt = hdr == 0x44
        sel = np.flatnonzero(is_pix | is_tdc | is_gt)
        if not len(sel):
            return
        w = words[sel]
        t = np.where(
            is_pix[sel],
            ((w & np.uint64(0xFFFF)) << np.uint64(14)) | ((w >> np.uint64(30)) & np.uint64(0x3FFF)),
            np.where(is_tdc[sel], w >> np.uint64(12), w >> np.uint64(16)) & _MASK30,
        ).astype(np.int64)
        prev = t[0] if self.last_raw is None else self.last_raw
        d = np.diff(t, prepend=prev)
        d = (d + _HALF) % _WRAP - _HALF
        u = self.unwrapped + np.cumsum(d) if self.last_raw is not None else t[0] + np.cumsum(d)
        self.last_raw = int(t[-1])
        self.unwrapped = int(u[-1])
        lo, hi = int(u.min()), int(u.max())
        self.t_min = lo if self.t_min is None else min(self.t_min, lo)
        self.t_max = hi if self.t_max is None else max(self.t_max, hi)

    def _update_heartbeats(self, words: np.ndarray, hdr: np.ndarray) -> None:
        for i in np.flatnonzero((hdr == 0x44) | (hdr == 0x45)):
            w = int(words[i])
            if hdr[i] == 0x44:
                self.pending_low = (w >> 16) & 0xFFFFFFFF
            elif self.pending_low is not None:
                timer = (((w >> 16) & 0xFFFF) << 32) | self.pending_low
                self.pending_low = None
                self.heartbeats += 1
                if self.hb_first is None:
                    self.hb_first = timer
                self.hb_last = timer

    def summary(self) -> dict:
        counts = {name: int(self.header_counts[list(codes)].sum()) for name, codes in WORD_CATEGORIES.items()}
        counts["unknown"] = int(self.words - sum(counts.values()))
        span = None if self.t_min is None else (self.t_max - self.t_min) * COARSE_TICK_S
        hb_span = None if self.heartbeats < 2 else (self.hb_last - self.hb_first) * COARSE_TICK_S
        duration = span if span else hb_span
        pixels = counts["pixel"]
        return {
            "words": int(self.words),
            "counts": counts,
            "other_header_bytes": {f"0x{b:02X}": int(self.header_counts[b])
                                   for b in np.flatnonzero(self.header_counts)
                                   if not any(b in codes for codes in WORD_CATEGORIES.values())},
            "triggers": counts["tdc1_rising"],
            "data_time_span_s": span,
            "heartbeats": self.heartbeats,
            "heartbeat_first_s": None if self.hb_first is None else self.hb_first * COARSE_TICK_S,
            "heartbeat_span_s": hb_span,
            "duration_s": duration,
            "hit_rate_hz": (pixels / duration) if duration else None,
            "trigger_rate_hz": (counts["tdc1_rising"] / duration) if duration else None,
        }


class WordStats:
    """Word-type counts and time span per chip, fed batch by batch with :meth:`update`."""

    def __init__(self) -> None:
        self._chips: dict[int, _ChipStats] = {}

    def update(self, words: np.ndarray, chip: int = 0) -> None:
        stats = self._chips.get(chip)
        if stats is None:
            stats = self._chips[chip] = _ChipStats()
        stats.update(words)

    def summary(self) -> dict:
        """``{"chips": {index: per-chip summary}, "total": {...}}`` (see the per-chip keys)."""
        chips = {chip: s.summary() for chip, s in sorted(self._chips.items())}
        total_counts: dict[str, int] = {}
        for s in chips.values():
            for k, v in s["counts"].items():
                total_counts[k] = total_counts.get(k, 0) + v
        durations = [s["duration_s"] for s in chips.values() if s["duration_s"]]
        duration = max(durations) if durations else None
        pixels = total_counts.get("pixel", 0)
        return {
            "chips": chips,
            "total": {
                "words": sum(s["words"] for s in chips.values()),
                "counts": total_counts,
                "triggers": total_counts.get("tdc1_rising", 0),
                "duration_s": duration,
                "hit_rate_hz": (pixels / duration) if duration else None,
            },
        }
