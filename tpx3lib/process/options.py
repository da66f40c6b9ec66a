"""Settings of offline processing (``tpx3 process`` / :func:`tpx3lib.process.process_files`)."""
from __future__ import annotations

import dataclasses
import math

from tpx3lib.dtypes import TOA_UNIT_S
from tpx3lib.errors import ConfigError

__all__ = ["ProcessOptions", "seconds_to_units"]


def seconds_to_units(seconds: float) -> int:
    """Seconds to integer 25/4096 ns units, rounded as :class:`~tpx3lib.decode.EventBuilder` does."""
    return int(round(seconds / TOA_UNIT_S))


@dataclasses.dataclass
class ProcessOptions:
    """What to compute and how.

    layout: output layout name (``"pymepix"``; ``"exdf"`` once its writer exists).
    chip: which chip of a multi-chip recording (None: the only one).
    event_window_s: inclusive (min, max) time of flight in s; None keeps every
        pixel after the first trigger.
    trigger_tdc / trigger_edge: which TDC edges are the event triggers.
    trigger_numbers: ``"counter"`` (the extended hardware trigger counter, as the
        live pipeline numbers events) or ``"sequence"`` (0, 1, 2, ... in trigger
        order, as pymepix numbers them).
    centroid: cluster the events and write centroids.
    cluster: :class:`~tpx3lib.cluster.ClusterParams` fields (dict); method
        defaults to ``"dbscan"`` (pymepix's) for the pymepix layout.
    timewalk_path: timewalk table file (see :mod:`tpx3lib.cluster.timewalk`),
        applied to the event hits before clustering, as the live pipeline does.
    workers: parallel workers (threads); results are identical for any number.
    segment_words: words per work unit; each segment in flight (workers + 1) takes
        about 150 bytes per word (~150 MB at the default 1 Mi words).
    margin_words: words decoded beyond each end of a segment so that hits out of
        time order and clusters straddling the boundary are complete.
    cluster_margin_s: time beyond a segment's own time range whose hits are
        clustered with it (must exceed the longest cluster).
    compression: HDF5 filter: ``"lzf"`` (fast, in every h5py), ``"gzip"`` (every
        HDF5 reader) or ``"none"``.
    allow_damaged: process what can be read from truncated or damaged input
        (reported in the output) instead of refusing it.
    """

    layout: str = "pymepix"
    chip: int | None = None
    event_window_s: tuple[float, float] | None = (0.0, 1e-3)
    trigger_tdc: int = 1
    trigger_edge: str = "rising"
    trigger_numbers: str = "counter"
    centroid: bool = False
    cluster: dict | None = None
    timewalk_path: str | None = None
    workers: int = 1
    segment_words: int = 1 << 20
    margin_words: int = 1 << 16
    cluster_margin_s: float = 100e-6
    compression: str = "lzf"
    allow_damaged: bool = False
    orientation: str = "up"

    def __post_init__(self):
        if self.event_window_s is not None:
            lo, hi = (float(v) for v in self.event_window_s)
            if math.isinf(lo) and math.isinf(hi) and lo < 0 < hi:
                self.event_window_s = None
            elif not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise ConfigError(f"event window ({lo}, {hi}) s: need finite min <= max "
                                  "(or -inf inf for no window)")
            else:
                self.event_window_s = (lo, hi)
        if self.trigger_tdc not in (1, 2):
            raise ConfigError(f"trigger TDC must be 1 or 2, not {self.trigger_tdc!r}")
        if self.trigger_edge not in ("rising", "falling"):
            raise ConfigError(f"trigger edge must be rising or falling, not {self.trigger_edge!r}")
        if self.trigger_numbers not in ("counter", "sequence"):
            raise ConfigError(f"trigger numbers must be 'counter' or 'sequence', not {self.trigger_numbers!r}")
        if not 1 <= int(self.workers) <= 256:
            raise ConfigError(f"workers must be 1..256, not {self.workers}")
        self.workers = int(self.workers)
        if self.compression not in ("lzf", "gzip", "none"):
            raise ConfigError(f"compression must be lzf, gzip or none, not {self.compression!r}")
        if self.margin_words < 1024:
            raise ConfigError("margin_words must be at least 1024")
        if self.segment_words < 4 * self.margin_words:
            raise ConfigError(f"segment_words ({self.segment_words}) must be at least 4 x margin_words "
                              f"({self.margin_words})")
        if not self.cluster_margin_s > 0:
            raise ConfigError("cluster_margin_s must be > 0")

    def cluster_params(self):
        """The :class:`~tpx3lib.cluster.ClusterParams` to use (validated)."""
        from tpx3lib.cluster import ClusterParams
        d = dict(self.cluster or {})
        if self.layout == "pymepix":
            d.setdefault("method", "dbscan")
        return ClusterParams.from_dict(d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
