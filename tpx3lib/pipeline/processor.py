"""One chip's processing chain, arrays in and arrays out: decode -> events -> clusters.

The same object serves the live pipeline (fed ring records) and offline
post-processing (fed file chunks), so what the tests prove offline holds online.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..decode import EventBuilder, StreamDecoder
from ..dtypes import CENTROID_DTYPE, EVENT_DTYPE, HEARTBEAT_DTYPE, PIXEL_DTYPE, TDC_DTYPE
from ..errors import ConfigError
from ..trainid.assign import apply_train_ids
from ..trainid.flags import TRIGGER_TRAIN_DTYPE

__all__ = ["ProcessingConfig", "ProcessedChunk", "ChipProcessor", "EventStageResult", "PRODUCTS"]

#: What a processor can produce; "raw" is the words themselves (the pipeline handles it).
PRODUCTS = ("raw", "pixels", "triggers", "events", "centroids")


@dataclasses.dataclass
class ProcessingConfig:
    """Settings of one chip's chain (all plain data: YAML/JSON/Tango friendly)."""

    chip: int = 0
    longtime: int | None = None            # external time reference (25 ns ticks); None = heartbeats
    orientation: str = "up"
    offset: tuple[int, int] = (0, 0)
    trigger_tdc: int = 1
    trigger_edge: str = "rising"
    event_window_s: tuple[float, float] | None = (0.0, 1e-3)
    reorder_window_s: float = 2e-3
    products: tuple[str, ...] = ("pixels", "triggers", "events")
    cluster: dict | None = None            # ClusterParams fields; None = defaults when centroiding
    timewalk_path: str | None = None       # timewalk lookup table (see tpx3lib.cluster)

    def __post_init__(self):
        bad = [p for p in self.products if p not in PRODUCTS]
        if bad:
            raise ConfigError(f"unknown product(s) {', '.join(bad)}; choose from {', '.join(PRODUCTS)}")
        self.products = tuple(self.products)
        self.offset = tuple(int(v) for v in self.offset)
        if self.event_window_s is not None:
            self.event_window_s = tuple(float(v) for v in self.event_window_s)

    @property
    def centroiding(self) -> bool:
        return "centroids" in self.products

    @property
    def needs_events(self) -> bool:
        return "events" in self.products or self.centroiding

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_ARRAYS = ("pixels", "triggers", "heartbeats", "events", "centroids", "trains")
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min


@dataclasses.dataclass
class ProcessedChunk:
    """What one chip's chain produced from one input chunk.

    ``pixels`` (every decoded hit), ``triggers`` (every TDC edge) and ``heartbeats`` are
    always filled (they are decoded anyway), so sinks can count hits, draw hit maps and
    announce trains without hits; ``events`` and ``centroids`` when their product is
    asked for. Which products reach users is the sinks' choice (e.g. CallbackSink). ``trains`` holds the triggers whose train
    ID was decided in this chunk (``TRIGGER_TRAIN_DTYPE``; empty without a train-ID
    source). ``complete_until`` is a board time (ToA units): every event and centroid
    earlier than it has been delivered, in this or an earlier chunk, so a trigger whose
    event window ends before it is complete (``INT64_MAX`` after the final flush).
    """

    chip: int
    pixels: np.ndarray
    triggers: np.ndarray
    heartbeats: np.ndarray
    events: np.ndarray
    centroids: np.ndarray
    trains: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, TRIGGER_TRAIN_DTYPE))
    complete_until: int = _INT64_MIN

    @classmethod
    def empty(cls, chip: int = 0) -> "ProcessedChunk":
        return cls(chip, np.empty(0, PIXEL_DTYPE), np.empty(0, TDC_DTYPE), np.empty(0, HEARTBEAT_DTYPE),
                   np.empty(0, EVENT_DTYPE), np.empty(0, CENTROID_DTYPE))

    @classmethod
    def concat(cls, parts) -> "ProcessedChunk":
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls(parts[0].chip, *(np.concatenate([getattr(p, f) for p in parts]) for f in _ARRAYS),
                   complete_until=max(p.complete_until for p in parts))

    def __len__(self) -> int:
        return self.pixels.size + self.triggers.size + self.events.size + self.centroids.size


@dataclasses.dataclass
class EventStageResult:
    """What :meth:`ChipProcessor.event_stage` hands to :meth:`ChipProcessor.cluster_stage`."""

    decoded: object                 # the decoder's output (pixels, tdcs, heartbeats)
    events: np.ndarray
    trains: np.ndarray              # triggers whose train ID was decided in this chunk
    train_table: np.ndarray | None  # the decided train IDs as of this chunk (None: no source)
    complete_until: int             # the events' part of ProcessedChunk.complete_until
    final: bool


class ChipProcessor:
    """Decode, assign events and cluster one chip's word stream, chunk by chunk.

    ``train_ids``: an optional :class:`~tpx3lib.trainid.TrainIdAssigner`; events and
    centroids then carry the train ID of their trigger (0 while it is not decided) and
    each chunk lists the triggers decided in it.
    """

    def __init__(self, config: ProcessingConfig | None = None, *, train_ids=None, **kwargs):
        self.config = cfg = config or ProcessingConfig(**kwargs)
        self.train_ids = train_ids
        self.decoder = StreamDecoder(chip=cfg.chip, longtime=cfg.longtime, orientation=cfg.orientation,
                                     offset=cfg.offset)
        self.events = EventBuilder(tdc=cfg.trigger_tdc, edge=cfg.trigger_edge, window_s=cfg.event_window_s,
                                   reorder_window_s=cfg.reorder_window_s) if cfg.needs_events else None
        self.clusterer = None
        self.timewalk = None
        if cfg.centroiding:
            from ..cluster import ClusterParams, Clusterer
            params = ClusterParams.from_dict(cfg.cluster or {})
            self.clusterer = Clusterer(params)
        if cfg.timewalk_path:
            from ..cluster import TimewalkTable
            self.timewalk = TimewalkTable.load(cfg.timewalk_path)
        self.chunks_in = 0

    def feed(self, words) -> ProcessedChunk:
        return self.cluster_stage(self.event_stage(words))

    def flush(self) -> ProcessedChunk:
        return self.cluster_stage(self.event_stage(None, final=True))

    # The two stages below are what ``feed`` does, split so that the live pipeline can run
    # them in two threads (their numba kernels release the GIL): call ``cluster_stage`` on
    # every ``event_stage`` result, in order. Each stage's state is its own.
    def event_stage(self, words, final: bool = False) -> "EventStageResult":
        """Decode ``words`` (None with ``final``: end of stream), decide train IDs, build events."""
        if final:
            dec = self.decoder.flush()
        else:
            self.chunks_in += 1
            dec = self.decoder.feed(words)
        events = np.empty(0, EVENT_DTYPE)
        trains = np.empty(0, TRIGGER_TRAIN_DTYPE)
        table = None
        if self.train_ids is not None:
            trains = self.train_ids.feed(dec.tdcs) if dec.tdcs.size else trains
            if final:
                trains = np.concatenate([trains, self.train_ids.flush()])
            table = self.train_ids.table     # replaced, never changed in place, by later feeds
        until = _INT64_MIN                   # no events are made: nothing to wait for per trigger
        if self.events is not None:
            events = self.events.feed(dec.pixels, dec.tdcs)
            if final:
                events = np.concatenate([events, self.events.flush()])
            until = self.events.final_until
        return EventStageResult(dec, events, trains, table, _INT64_MAX if final else until, final)

    def cluster_stage(self, part: "EventStageResult") -> ProcessedChunk:
        """Timewalk correction, clustering and train-ID labels of one :meth:`event_stage` result."""
        cfg = self.config
        events = part.events
        centroids = np.empty(0, CENTROID_DTYPE)
        until = part.complete_until
        if self.events is not None:
            if self.timewalk is not None and events.size:
                events = self.timewalk.apply(events)
            if self.clusterer is not None:
                centroids = self.clusterer.feed(events)
                if part.final:
                    centroids = np.concatenate([centroids, self.clusterer.flush()])
                else:
                    until = min(until, self.clusterer.final_until)
            if part.train_table is not None:
                for arr in (events, centroids):
                    if arr.size:
                        apply_train_ids(arr, part.train_table)
        dec = part.decoded
        return ProcessedChunk(
            cfg.chip,
            dec.pixels,
            dec.tdcs,
            dec.heartbeats,
            events if "events" in cfg.products else np.empty(0, EVENT_DTYPE),
            centroids,
            part.trains,
            until,
        )

    def counters(self) -> dict:
        """Everything counted so far, by stage."""
        out = {"decode": self.decoder.counts()}
        if self.events is not None:
            out["events"] = dict(self.events.counters, pending=self.events.pending)
        if self.clusterer is not None:
            st = self.clusterer.stats
            out["cluster"] = dataclasses.asdict(st) if dataclasses.is_dataclass(st) else dict(st)
        return out
