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

    layout: output layout name: ``"pymepix"`` (one HDF5 file) or ``"exdf"`` (a European XFEL
        run directory, see :mod:`.exdf_layout`).
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
        HDF5 reader) or ``"none"``; None: the layout's default (pymepix lzf, exdf gzip).
    allow_damaged: process what can be read from truncated or damaged input
        (reported in the output) instead of refusing it.
    swmr: pymepix layout: write the file in SWMR mode under its final name, so readers
        can follow it while it grows.
    run, proposal, train_id_start, sequence_bytes, exdf_source, aggregator: exdf layout:
        run number (0..9999), proposal number, train ID of the first trigger (None: the
        raw header's ``trigger.first_train_id``, else 1), payload bytes per sequence file,
        instrument source name, aggregator (file name part).
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
    compression: str | None = None
    allow_damaged: bool = False
    orientation: str = "up"
    swmr: bool = False
    run: int = 1
    proposal: int = 0
    train_id_start: int | None = None
    sequence_bytes: int = 1 << 30
    exdf_source: str = "TPX3/CAM/1:daqOutput"
    aggregator: str = "TPX01"

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
        from .output import LAYOUTS
        if self.layout not in LAYOUTS:
            raise ConfigError(f"unknown output layout {self.layout!r}; choose from {', '.join(LAYOUTS)}")
        if self.compression is None:
            self.compression = "gzip" if self.layout == "exdf" else "lzf"
        if self.compression not in ("lzf", "gzip", "none"):
            raise ConfigError(f"compression must be lzf, gzip or none, not {self.compression!r}")
        if self.margin_words < 1024:
            raise ConfigError("margin_words must be at least 1024")
        if self.segment_words < 4 * self.margin_words:
            raise ConfigError(f"segment_words ({self.segment_words}) must be at least 4 x margin_words "
                              f"({self.margin_words})")
        if not self.cluster_margin_s > 0:
            raise ConfigError("cluster_margin_s must be > 0")
        if self.swmr and self.layout != "pymepix":
            raise ConfigError("SWMR writing is for the pymepix layout (a run directory is read when complete)")
        self.run = _integer("run number", self.run, 0, 9999)
        self.proposal = _integer("proposal number", self.proposal, 0, 2**32 - 1)
        if self.train_id_start is not None:
            self.train_id_start = _integer("start train ID", self.train_id_start, 1, 2**63 - 1)
        self.sequence_bytes = _integer("sequence file size", self.sequence_bytes, 1, 2**63 - 1)

    def cluster_params(self):
        """The :class:`~tpx3lib.cluster.ClusterParams` to use (validated)."""
        from tpx3lib.cluster import ClusterParams
        d = dict(self.cluster or {})
        if self.layout == "pymepix":
            d.setdefault("method", "dbscan")
        return ClusterParams.from_dict(d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _integer(what: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ConfigError(f"{what} must be an integer in {lo}..{hi}, not {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise ConfigError(f"{what} must be in {lo}..{hi}, not {value}")
    return value
