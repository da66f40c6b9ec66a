"""Events: assign each pixel to its trigger and compute its time of flight.

A pixel belongs to the latest trigger edge (by default TDC1 rising) at or
before its ToA; ``tof = toa - trigger_time``; pixels whose tof lies outside
the inclusive event window are counted and left out.

Real hardware delivers words out of time order (FIFO disorder: about a quarter
of consecutive hits go backwards), and a hit can arrive before the TDC word of
the trigger it belongs to. So a pixel is only assigned once it is *final*: its
ToA is at least ``reorder_window_s`` older than the newest time seen in the
stream, after which no earlier trigger can still arrive. Final pixels are
emitted sorted by ToA (stable, so ties keep arrival order); the output is
therefore the same for any chunking of the input. A pixel arriving later than
the window is still assigned (all triggers before it are known) but counted
as ``late_hits``, since it may come out of time order.

Event numbers are the trigger's extended hardware counter (see
:mod:`tpx3lib.decode.stream`), not a software count: they are the same
whichever chunk or process saw the trigger.
"""
from __future__ import annotations

import numpy as np

from ..dtypes import EVENT_DTYPE, PIXEL_DTYPE, TDC_DTYPE, TOA_UNIT_S
from ..errors import ConfigError
from .event_kernels import build_events_split, pack_time_keys, select_final

__all__ = ["EventBuilder", "assign_events"]



def _to_units(seconds: float) -> int:
    return int(round(seconds / TOA_UNIT_S))


class EventBuilder:
    """Streaming trigger assignment.

    Parameters
    ----------
    tdc : 1 or 2, which TDC input marks the triggers.
    edge : "rising" or "falling".
    window_s : inclusive (min, max) time of flight in seconds, or None for no cut
        (every pixel after the first trigger). pymepix's default is (0, 1e-3).
    reorder_window_s : how far (in time) words may arrive out of order.
    """

    def __init__(self, tdc: int = 1, edge: str = "rising",
                 window_s: tuple[float, float] | None = (0.0, 1e-3),
                 reorder_window_s: float = 2e-3):
        if tdc not in (1, 2):
            raise ConfigError(f"trigger TDC must be 1 or 2, not {tdc!r}")
        if edge not in ("rising", "falling"):
            raise ConfigError(f"trigger edge must be 'rising' or 'falling', not {edge!r}")
        if window_s is not None:
            lo, hi = (float(v) for v in window_s)
            if not lo <= hi:
                raise ConfigError(f"event window min {lo} s is above max {hi} s")
            self._win = (_to_units(lo), _to_units(hi))
        else:
            self._win = None
        if reorder_window_s < 0:
            raise ConfigError("reorder window must be >= 0 s")
        self.tdc = tdc
        self.edge = edge
        self.window_s = window_s
        self.reorder_window_s = float(reorder_window_s)
        self._reorder = _to_units(reorder_window_s)
        self._trig_time = np.empty(0, np.int64)
        self._trig_event = np.empty(0, np.int64)
        self._pending = np.empty(0, PIXEL_DTYPE)
        self._work: dict[str, np.ndarray] = {}
        self._newest = np.iinfo(np.int64).min     # newest time seen in the stream
        self._final_until = np.iinfo(np.int64).min  # everything <= this has been emitted
        self.counters = dict(hits_in=0, events_out=0, before_first_trigger=0, outside_window=0,
                             late_hits=0, triggers=0, triggers_out_of_order=0)

    # ------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Pixels held until they are final."""
        return self._pending.size

    @property
    def final_until(self) -> int:
        """Time (25/4096 ns units) up to which all pixels have been emitted: a
        trigger whose window ends before it is complete."""
        return int(self._final_until)

    @property
    def triggers(self) -> tuple[np.ndarray, np.ndarray]:
        """(times, event numbers) of the triggers still kept."""
        return self._trig_time.copy(), self._trig_event.copy()

    def feed(self, pixels: np.ndarray, tdcs: np.ndarray | None = None) -> np.ndarray:
        """Add pixels (PIXEL_DTYPE) and TDC edges (TDC_DTYPE); return the events now final."""
        if pixels.dtype != PIXEL_DTYPE:
            raise TypeError(f"pixels must have PIXEL_DTYPE, not {pixels.dtype}")
        if tdcs is not None and tdcs.size:
            if tdcs.dtype != TDC_DTYPE:
                raise TypeError(f"tdcs must have TDC_DTYPE, not {tdcs.dtype}")
            self._add_triggers(tdcs)
            self._newest = max(self._newest, int(tdcs["time"].max()))
        if pixels.size:
            self.counters["hits_in"] += pixels.size
            self._newest = max(self._newest, int(pixels["toa"].max()))
        if self._newest == np.iinfo(np.int64).min:
            return np.empty(0, EVENT_DTYPE)
        return self._emit(self._newest - self._reorder, np.ascontiguousarray(pixels))

    def flush(self) -> np.ndarray:
        """End of stream: every held pixel is final."""
        return self._emit(np.iinfo(np.int64).max, self._pending[:0])

    # ------------------------------------------------------------------
    def _add_triggers(self, tdcs: np.ndarray) -> None:
        sel = (tdcs["tdc"] == self.tdc) & (tdcs["rising"] == (1 if self.edge == "rising" else 0))
        if not sel.any():
            return
        t = tdcs["time"][sel].astype(np.int64)
        ev = tdcs["counter"][sel].astype(np.int64)
        self.counters["triggers"] += t.size
        times = np.concatenate([self._trig_time, t])
        events = np.concatenate([self._trig_event, ev])
        if np.any(np.diff(times) < 0):
            self.counters["triggers_out_of_order"] += 1
            order = np.argsort(times, kind="stable")
            times, events = times[order], events[order]
        self._trig_time, self._trig_event = times, events

    def _scratch(self, name: str, n: int) -> np.ndarray:
        """A reused int64 work array of at least ``n`` entries (fresh memory costs page faults)."""
        buf = self._work.get(name)
        if buf is None or buf.size < n:
            buf = self._work[name] = np.empty(max(n + n // 4, 4096), np.int64)
        return buf

    def _emit(self, until: int, new: np.ndarray) -> np.ndarray:
        """Emit the final hits (ToA <= ``until``) of the held and the ``new`` pixels, sorted by
        ToA (stable: held first, then new, each in arrival order); hold the others."""
        held = self._pending
        n = held.size + new.size
        if n == 0:
            self._advance(until)
            return np.empty(0, EVENT_DTYPE)
        pos, trig, toa = (self._scratch(k, n) for k in ("pos", "trig", "toa"))
        keep_held, keep_new = self._scratch("keep_held", held.size), self._scratch("keep_new", new.size)
        lo, hi = self._win if self._win is not None else (0, 0)
        n_sel, n_final, no_trig, outside, late, n_kh, n_kn = select_final(
            held, new, until, self._final_until, self._trig_time, self._win is not None, lo, hi,
            pos, trig, toa, keep_held, keep_new)
        if n_final == 0:
            self._pending = np.concatenate([held, new]) if held.size else new
            self._advance(until)
            return np.empty(0, EVENT_DTYPE)
        # only the (few) hits still inside the reorder window are copied and kept
        self._pending = np.concatenate([held[keep_held[:n_kh]], new[keep_new[:n_kn]]])
        keys, mask = _time_sort_keys(toa[:n_sel], self._scratch("keys", n_sel)[:n_sel])
        events = np.empty(n_sel, EVENT_DTYPE)
        build_events_split(held, new, pos, trig, keys, mask, self._trig_event, self._trig_time, events)
        self.counters["late_hits"] += late
        self.counters["before_first_trigger"] += no_trig
        self.counters["outside_window"] += outside
        self.counters["events_out"] += n_sel
        self._advance(until)
        return events

    def _advance(self, until: int) -> None:
        if until > self._final_until:
            self._final_until = until
        # Keep only the triggers a late pixel could still need: the last one at
        # or before the final time minus a generous margin, and all after it.
        if self._trig_time.size > 64:
            margin = max(self._reorder, (self._win[1] if self._win else 0)) * 4
            keep_from = int(np.searchsorted(self._trig_time, self._final_until - margin, side="right")) - 1
            keep_from = min(max(keep_from, 0), self._trig_time.size - 1)
            if keep_from > 0:
                self._trig_time = self._trig_time[keep_from:]
                self._trig_event = self._trig_event[keep_from:]


def _time_sort_keys(t: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, int]:
    """``(keys, mask)`` with ``keys & mask == np.argsort(t, kind="stable")``, fast: one sort of
    unique packed (t - min, index) keys written to ``out`` (:func:`pack_time_keys`), or the
    argsort itself and -1 when the span of ``t`` leaves no room for the index."""
    bits = pack_time_keys(t, out)
    if bits < 0:
        return np.argsort(t, kind="stable"), -1
    out.sort(kind="stable")      # timsort: fastest on the nearly ordered keys
    return out, (1 << bits) - 1


def _stable_time_order(t: np.ndarray) -> np.ndarray:
    """``np.argsort(t, kind="stable")`` by :func:`_time_sort_keys`."""
    keys, mask = _time_sort_keys(t, np.empty(t.size, np.int64))
    return keys & mask


def assign_events(pixels: np.ndarray, trig_time: np.ndarray, trig_event: np.ndarray,
                  window: tuple[int, int] | None) -> tuple[np.ndarray, int, int]:
    """Assign pixels to the latest trigger at or before their ToA (one shot).

    ``trig_time`` must be sorted; ``window`` is (min, max) tof in 25/4096 ns
    units, inclusive, or None. Returns (events, n_before_first_trigger, n_outside_window).
    """
    idx = np.searchsorted(trig_time, pixels["toa"], side="right") - 1
    has = idx >= 0
    n_no_trigger = int(np.count_nonzero(~has))
    tof = pixels["toa"] - trig_time[np.where(has, idx, 0)] if trig_time.size else np.zeros(pixels.size, np.int64)
    keep = has
    if window is not None:
        keep = keep & (tof >= window[0]) & (tof <= window[1])
    n_outside = int(np.count_nonzero(has & ~keep))
    sel = np.flatnonzero(keep)
    ev = np.empty(sel.size, EVENT_DTYPE)
    src = pixels[sel]
    ev["event"] = trig_event[idx[sel]]
    ev["train_id"] = 0
    for f in ("x", "y", "tot", "chip", "toa"):
        ev[f] = src[f]
    ev["tof"] = tof[sel]
    return ev, n_no_trigger, n_outside
