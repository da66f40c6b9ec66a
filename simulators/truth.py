"""Ground truth of simulated data: what was generated, hit for hit.

Times are integers in 25/4096 ns units (as in :mod:`tpx3lib.dtypes`) and 48-bit
extended. A hit's ``toa`` is exactly what a correct decoder computes from its
word (coarse48*4096 - 256*FToA + 256*phase); the physical arrival time of the
particle is the cluster's ``t``. Hits are listed per chip in the order their
words appear in that chip's stream, so decoded pixels can be compared with the
truth row by row.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tpx3lib.dtypes import HEARTBEAT_DTYPE, TDC_DTYPE

__all__ = ["HIT_TRUTH_DTYPE", "CLUSTER_TRUTH_DTYPE", "TRIGGER_TRUTH_DTYPE", "HEARTBEAT_TRUTH_DTYPE",
           "Truth", "GeneratedSlice"]

#: One pixel hit. x, y raw chip coordinates; tot in ns (0 in ToA-only mode); toa decoded time
#: (-1 in iToT mode, which has no ToA); cluster -1 for noise; event the extended counter of the
#: latest TDC1 rising edge at or before toa (-1 if none); sent = copies that left the streamer
#: (1 from the generator; the UDP streamer sets 0 for dropped, 2 for duplicated datagrams).
HIT_TRUTH_DTYPE = np.dtype([
    ("x", "u2"), ("y", "u2"), ("tot", "u2"), ("chip", "u1"), ("ftoa", "u1"), ("toa", "i8"),
    ("cluster", "i8"), ("event", "i8"), ("sent", "u1"),
])

#: One particle impact. x, y true centre in pixel units (pixel i spans [i, i+1)); t physical arrival
#: time (before timewalk); charge in electrons (after collection); sigma the cloud's rms in pixels;
#: size the number of pixels that fired; peak the ToF peak index (-1 flat background); trigger the
#: counter of the trigger that produced it (-1 for background); event as for hits.
CLUSTER_TRUTH_DTYPE = np.dtype([
    ("id", "i8"), ("chip", "u1"), ("x", "f8"), ("y", "f8"), ("t", "i8"), ("charge", "f4"),
    ("sigma", "f4"), ("size", "u2"), ("peak", "i2"), ("trigger", "i8"), ("event", "i8"),
])

#: TDC edges exactly as a decoder should report them (tpx3lib.dtypes.TDC_DTYPE).
TRIGGER_TRUTH_DTYPE = TDC_DTYPE
#: Heartbeats (completed 0x44/0x45 pairs) as a decoder should report them.
HEARTBEAT_TRUTH_DTYPE = HEARTBEAT_DTYPE


@dataclasses.dataclass
class Truth:
    """The ground truth of one slice (or of many, concatenated)."""

    hits: np.ndarray        # HIT_TRUTH_DTYPE, per chip in stream order
    clusters: np.ndarray    # CLUSTER_TRUTH_DTYPE, by time per chip
    triggers: np.ndarray    # TDC_DTYPE, per chip in stream (= time) order
    heartbeats: np.ndarray  # HEARTBEAT_DTYPE

    @classmethod
    def empty(cls) -> "Truth":
        return cls(np.empty(0, HIT_TRUTH_DTYPE), np.empty(0, CLUSTER_TRUTH_DTYPE),
                   np.empty(0, TDC_DTYPE), np.empty(0, HEARTBEAT_DTYPE))

    @classmethod
    def concat(cls, parts) -> "Truth":
        """Join truths in order (e.g. consecutive slices); per chip order is kept."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts])
                     for f in dataclasses.fields(cls)))

    def for_chip(self, chip: int) -> "Truth":
        """The part of this truth that belongs to one chip."""
        return Truth(*(getattr(self, f.name)[getattr(self, f.name)["chip"] == chip]
                       for f in dataclasses.fields(self)))

    def __len__(self) -> int:
        return len(self.hits)


@dataclasses.dataclass
class GeneratedSlice:
    """Words per chip for a time slice [t_start_ticks, t_end_ticks) and their truth.

    ``words[c]`` is chip c's word stream (np.uint64, in the order the board sends them);
    unpacks as ``words, truth = generator.generate(a, b)``.
    """

    words: list
    truth: Truth
    t_start_ticks: int
    t_end_ticks: int

    def __iter__(self):
        return iter((self.words, self.truth))

    @property
    def n_words(self) -> int:
        return int(sum(len(w) for w in self.words))

    @property
    def n_hits(self) -> int:
        return len(self.truth.hits)
