"""Cutting a word stream into independent work units (segments) that give exact results.

One sequential pass (this module) decodes only the non-pixel words - TDC
edges, heartbeats - with the same :class:`~tpx3lib.decode.StreamDecoder` the
pipeline uses. Since the decoder's state depends on those words alone, this
gives, cheaply, for any position in the stream, the decoder state a full
decode would have there, and every trigger of the run.

The stream is then cut at every ``segment_words`` words. Each cut ``b`` gets a
time ``T`` (the median ToA of the pixels decoded from ``margin_hint`` words
around it). A segment owns the hits with ToA in ``[T_k, T_k+1)``; its worker
decodes its words plus ``margin_words`` on each side (starting from the
recorded decoder state), so hits that arrived out of time order on the other
side of a cut are still found, and clusters that straddle a cut are seen
whole. Because the cuts depend on the data only, never on the number of
workers, any number of workers gives byte-identical output.

A cut is only used once a time reference (heartbeat) is known before it;
segments before the first heartbeat are merged, as the decoder itself holds
those words until the first heartbeat arrives.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tpx3lib.decode import DecoderState, StreamDecoder
from tpx3lib.dtypes import TDC_DTYPE

from .kernels import nonpixel_words

__all__ = ["SegmentJob", "SegmentPlanner", "EVENT_TRIGGER_DTYPE"]

#: One event trigger: its number (see ProcessOptions.trigger_numbers) and time (25/4096 ns units).
EVENT_TRIGGER_DTYPE = np.dtype([("number", "i8"), ("time", "i8"), ("counter", "i8")])

_WINDOW_WORDS = 4096        # words either side of a cut used to time it
_MIN_PIXELS_TO_TIME = 16


@dataclasses.dataclass
class SegmentJob:
    """Everything a worker needs for one segment (no shared state)."""

    index: int
    words: np.ndarray            # the segment's words plus margins, int64 view of the LE words
    own_start: int               # words[own_start:own_stop] are the segment's own words
    own_stop: int
    first_word: int              # stream index of words[0]
    state: DecoderState | None   # decoder state at words[0]; None = start of stream
    t_lo: int | None             # owned ToA range [t_lo, t_hi), None = unbounded
    t_hi: int | None
    trig_time: np.ndarray        # event triggers that may be needed, sorted by time
    trig_number: np.ndarray
    final: bool                  # the last segment (flush the decoder at its end)


class SegmentPlanner:
    """Feed the stream with :meth:`add` (arrays of ``segment_words`` words, the last
    shorter); collect :class:`SegmentJob` s, TDC edges and event triggers as they
    become final."""

    def __init__(self, chip: int, segment_words: int, margin_words: int, *, trigger_tdc: int = 1,
                 trigger_rising: bool = True, trigger_numbers: str = "counter",
                 cluster_margin_units: int = 0, decoder_kwargs: dict | None = None):
        self.chip = chip
        self.S = int(segment_words)
        self.M = int(margin_words)
        self.m = min(_WINDOW_WORDS, self.M)
        self.trigger_tdc = trigger_tdc
        self.trigger_rising = 1 if trigger_rising else 0
        self.sequence_numbers = trigger_numbers == "sequence"
        self.cluster_margin = int(cluster_margin_units)
        self.decoder_kwargs = dict(decoder_kwargs or {})
        self.pdec = StreamDecoder(chip=chip, **self.decoder_kwargs)
        self._arrays: list[tuple[int, np.ndarray]] = []   # (stream index of first word, words)
        self._n = 0                                      # words added so far
        self._snap_M: dict[int, DecoderState] = {}       # cut index -> state at cut - M
        self._snap_m: dict[int, DecoderState] = {}       # cut index -> state at cut - m
        self._seg_start = 0                              # first word of the segment being built
        self._seg_state: DecoderState | None = None
        self._seg_t_lo: int | None = None
        self._jobs = 0
        self._trig_time: list[np.ndarray] = []
        self._trig_number: list[np.ndarray] = []
        self._trig_count = 0
        self.tdcs_out: list[np.ndarray] = []             # drained by the caller
        self.event_triggers_out: list[np.ndarray] = []
        self.heartbeats = 0
        self.first_heartbeat: int | None = None
        self.cuts_used = 0
        self.cuts_skipped = 0

    # ---------------------------------------------------------------- prescan
    def _feed_nonpixel(self, words: np.ndarray) -> None:
        if not words.size:
            return
        sel = nonpixel_words(words)
        self._absorb(self.pdec.feed(sel))

    def _absorb(self, out) -> None:
        if out.heartbeats.size:
            self.heartbeats += out.heartbeats.size
            if self.first_heartbeat is None:
                self.first_heartbeat = int(out.heartbeats["timer"][0])
        td = out.tdcs
        if not td.size:
            return
        self.tdcs_out.append(td)
        sel = (td["tdc"] == self.trigger_tdc) & (td["rising"] == self.trigger_rising)
        if sel.any():
            t = td["time"][sel].astype(np.int64)
            counter = td["counter"][sel].astype(np.int64)
            if self.sequence_numbers:
                number = self._trig_count + np.arange(t.size, dtype=np.int64)
            else:
                number = counter
            self._trig_count += t.size
            self._trig_time.append(t)
            self._trig_number.append(number)
            rows = np.empty(t.size, EVENT_TRIGGER_DTYPE)
            rows["number"], rows["time"], rows["counter"] = number, t, counter
            self.event_triggers_out.append(rows)

    # ---------------------------------------------------------------- stream
    def add(self, words: np.ndarray) -> list[SegmentJob]:
        """Add the next ``segment_words`` words (fewer only for the last call before :meth:`finish`)."""
        words = np.ascontiguousarray(words).view(np.int64)
        j = self._n // self.S if self._n % self.S == 0 else None
        if j is None:
            raise ValueError("only the last array may be shorter than segment_words")
        start = self._n
        self._arrays.append((start, words))
        self._n += words.size
        S, M, m = self.S, self.M, self.m
        if words.size == S:
            self._feed_nonpixel(words[:S - M])
            self._snap_M[j + 1] = self.pdec.state
            self._feed_nonpixel(words[S - M:S - m])
            self._snap_m[j + 1] = self.pdec.state
            self._feed_nonpixel(words[S - m:])
        else:
            self._feed_nonpixel(words)
        jobs = []
        if j >= 1:
            job = self._consider_cut(j)
            if job is not None:
                jobs.append(job)
        return jobs

    def finish(self) -> list[SegmentJob]:
        """End of stream: flush the prescan decoder and return the last segment."""
        self._absorb(self.pdec.flush())
        if self._n == 0:
            return []
        return [self._make_job(self._n, None, final=True)]

    # ---------------------------------------------------------------- cuts
    def _window(self, lo: int, hi: int) -> np.ndarray:
        parts = []
        for start, arr in self._arrays:
            a, b = max(lo, start), min(hi, start + arr.size)
            if a < b:
                parts.append(arr[a - start:b - start])
        return np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else np.empty(0, np.int64))

    def _decoder_at(self, state: DecoderState) -> StreamDecoder:
        return StreamDecoder(chip=self.chip, state=state, **self.decoder_kwargs)

    def _cut_time(self, j: int) -> int | None:
        b = j * self.S
        state = self._snap_m.pop(j, None)
        if state is None or state.longtime is None:
            return None
        dec = self._decoder_at(state)
        px = dec.feed(self._window(b - self.m, b + self.m)).pixels
        if px.size < _MIN_PIXELS_TO_TIME:
            return None
        return int(np.median(px["toa"]).round())

    def _consider_cut(self, j: int) -> SegmentJob | None:
        state_M = self._snap_M.pop(j, None)
        t = self._cut_time(j)
        if state_M is None or state_M.longtime is None or t is None or \
                (self._seg_t_lo is not None and t <= self._seg_t_lo):
            self.cuts_skipped += 1
            return None
        self.cuts_used += 1
        job = self._make_job(j * self.S, t, final=False)
        self._seg_start = j * self.S
        self._seg_state = state_M
        self._seg_t_lo = t
        self._release_arrays()
        return job

    def _event_triggers(self, t_lo: int | None) -> tuple[np.ndarray, np.ndarray]:
        if not self._trig_time:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        if len(self._trig_time) > 1:
            self._trig_time = [np.concatenate(self._trig_time)]
            self._trig_number = [np.concatenate(self._trig_number)]
        t, n = self._trig_time[0], self._trig_number[0]
        if t.size > 1 and np.any(np.diff(t) < 0):        # as EventBuilder: sort by time, stable
            order = np.argsort(t, kind="stable")
            t, n = t[order], n[order]
        if t_lo is not None:
            # keep the last trigger before what this (and every later) segment can need
            keep = max(int(np.searchsorted(t, t_lo - 2 * self.cluster_margin, side="right")) - 1, 0)
            t, n = t[keep:], n[keep:]
            self._trig_time, self._trig_number = [t], [n]
        return t, n

    def _make_job(self, stop: int, t_hi: int | None, final: bool) -> SegmentJob:
        start = self._seg_start
        lo = 0 if start == 0 else start - self.M
        hi = self._n if final else min(stop + self.M, self._n)
        words = self._window(lo, hi)
        trig_time, trig_number = self._event_triggers(self._seg_t_lo)
        job = SegmentJob(index=self._jobs, words=words, own_start=start - lo, own_stop=stop - lo,
                         first_word=lo, state=None if start == 0 else self._seg_state,
                         t_lo=self._seg_t_lo, t_hi=t_hi, trig_time=trig_time.copy(),
                         trig_number=trig_number.copy(), final=final)
        self._jobs += 1
        return job

    def _release_arrays(self) -> None:
        keep_from = self._seg_start - self.M - self.m
        self._arrays = [(s, a) for s, a in self._arrays if s + a.size > keep_from]

    # ---------------------------------------------------------------- output
    def drain_tdcs(self) -> np.ndarray:
        out = np.concatenate(self.tdcs_out) if self.tdcs_out else np.empty(0, TDC_DTYPE)
        self.tdcs_out = []
        return out

    def drain_event_triggers(self) -> np.ndarray:
        out = (np.concatenate(self.event_triggers_out) if self.event_triggers_out
               else np.empty(0, EVENT_TRIGGER_DTYPE))
        self.event_triggers_out = []
        return out

    def decoder_counts(self) -> dict:
        """The prescan decoder's counts (non-pixel words and the anomalies they show)."""
        return self.pdec.counts()
