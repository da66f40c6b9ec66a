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

__all__ = ["ProcessingConfig", "ProcessedChunk", "ChipProcessor", "PRODUCTS"]

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


@dataclasses.dataclass
class ProcessedChunk:
    chip: int
    pixels: np.ndarray
    triggers: np.ndarray
    heartbeats: np.ndarray
    events: np.ndarray
    centroids: np.ndarray

    @classmethod
    def empty(cls, chip: int = 0) -> "ProcessedChunk":
        return cls(chip, np.empty(0, PIXEL_DTYPE), np.empty(0, TDC_DTYPE), np.empty(0, HEARTBEAT_DTYPE),
                   np.empty(0, EVENT_DTYPE), np.empty(0, CENTROID_DTYPE))

    @classmethod
    def concat(cls, parts) -> "ProcessedChunk":
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls(parts[0].chip, *(np.concatenate([getattr(p, f) for p in parts])
                                    for f in ("pixels", "triggers", "heartbeats", "events", "centroids")))

    def __len__(self) -> int:
        return self.pixels.size + self.triggers.size + self.events.size + self.centroids.size


class ChipProcessor:
    """Decode, assign events and cluster one chip's word stream, chunk by chunk."""

    def __init__(self, config: ProcessingConfig | None = None, **kwargs):
        self.config = cfg = config or ProcessingConfig(**kwargs)
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
        self.chunks_in += 1
        return self._stages(self.decoder.feed(words), final=False)

    def flush(self) -> ProcessedChunk:
        return self._stages(self.decoder.flush(), final=True)

    def _stages(self, dec, final: bool) -> ProcessedChunk:
        cfg = self.config
        events = np.empty(0, EVENT_DTYPE)
        centroids = np.empty(0, CENTROID_DTYPE)
        if self.events is not None:
            events = self.events.feed(dec.pixels, dec.tdcs)
            if final:
                events = np.concatenate([events, self.events.flush()])
            if self.timewalk is not None and events.size:
                events = self.timewalk.apply(events)
            if self.clusterer is not None:
                centroids = self.clusterer.feed(events)
                if final:
                    centroids = np.concatenate([centroids, self.clusterer.flush()])
        return ProcessedChunk(
            cfg.chip,
            dec.pixels if "pixels" in cfg.products else np.empty(0, PIXEL_DTYPE),
            dec.tdcs if "triggers" in cfg.products else np.empty(0, TDC_DTYPE),
            dec.heartbeats,
            events if "events" in cfg.products else np.empty(0, EVENT_DTYPE),
            centroids,
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
