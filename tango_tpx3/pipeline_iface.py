"""What the Tpx3Pipeline Tango device needs from an acquisition pipeline.

The device is thin: it turns attributes into :class:`AcquisitionSettings`, commands into
calls of a :class:`Pipeline`, and the pipeline's state, statistics and per-train callbacks
into Tango state and events. Any object with this shape can sit behind the device:
:mod:`tango_tpx3.live_backend` (tpx3lib's live pipeline: capture -> decode -> events ->
clusters -> Karabo Bridge / run files / raw recording) and :mod:`tango_tpx3.provisional_pipeline`
(shutter and board counters only) do; :mod:`tango_tpx3.backends` picks one by name.

Contract (what the device relies on, and what the tests check through the device):

- ``prepare(settings)`` validates and stores settings; raises ``ConfigError`` (nothing
  changes) when they are invalid. Only called while idle.
- ``start()`` returns at once (the shutter may open a moment later); ``state`` is RUNNING
  from then until the acquisition ends.
  With ``acquisition_time > 0`` the pipeline ends by itself (state back to IDLE) after
  ``acquisition_time * frame_count`` seconds of shutter time; with 0 it runs until stopped.
- ``stop()`` ends the acquisition cleanly (flushes, closes files), returns at once; the
  state goes to IDLE when done. ``abort()`` ends it as fast as possible, dropping what is in
  flight. Both are harmless when idle.
- A stage that dies puts the pipeline in FAULT with ``fault_reason`` set; ``reset()`` (or
  a new ``prepare``) brings it back to IDLE.
- ``listener`` callbacks run on the pipeline's own threads; they must be quick.
  ``("state", PipelineState)`` on every state change, ``("train", train_id)`` each time a
  train's data are complete (hit map / statistics updated, published downstream),
  ``("refresh", None)`` when something the Status or Recording shows changed.
- ``start_recording(path)`` while idle arms a recording for the next acquisition (backends
  that receive no data refuse it).
- ``statistics()`` returns a dict with at least the keys of :data:`STATISTICS_KEYS`;
  counters count this acquisition (``start()`` zeroes them) since the last
  ``reset_counters()``, rates are per second over the last update interval (0 when idle).
"""
from __future__ import annotations

from dataclasses import dataclass, field
import os
from typing import Protocol, runtime_checkable

import numpy as np

from tpx3lib.errors import ConfigError
from tpx3lib.pipeline.state import Listener, PipelineState

__all__ = [
    "PipelineState", "AcquisitionSettings", "Pipeline", "Listener", "STATISTICS_KEYS",
    "OUTPUT_PRODUCTS", "TRAIN_ID_SOURCES", "empty_statistics", "validate_settings",
]



#: Output products a pipeline can be asked for (any non-empty subset).
OUTPUT_PRODUCTS = ("pixels", "events", "centroids")
#: Where train IDs come from: off (train ID 0), an internal 10 Hz counter from ``train_id_start``,
#: or the trigger (TDC) counter offset by ``train_id_start``.
TRAIN_ID_SOURCES = ("off", "internal", "trigger")

#: Keys every ``statistics()`` dict carries (int counters, float rates).
STATISTICS_KEYS = (
    "hit_rate",          # hits/s
    "trigger_rate",      # triggers/s
    "centroid_rate",     # centroids/s
    "data_rate",         # bytes/s received
    "packets_received",  # UDP datagrams received
    "packets_lost",      # datagrams lost (counted by the board minus received), never hidden
    "backlog_datagrams",  # received, not yet processed (processing lagging; 0 when idle)
    "hits_total",        # pixel hits since reset
    "triggers_total",    # triggers since reset
    "centroids_total",   # centroids since reset
    "current_train_id",  # train ID of the last completed train (0 before the first)
    "trains_published",  # trains completed and sent downstream
    "trains_dropped",    # completed trains the Karabo Bridge publisher could not deliver (counted, never hidden)
    "hits_late",         # event hits that came after their train was published (counted, not sent)
    "hits_unmatched",    # event hits whose trigger matched no train (counted, not sent)
    "frames_completed",  # shutter windows completed in this acquisition
)


def empty_statistics() -> dict[str, float | int]:
    return {k: (0.0 if k.endswith("_rate") else 0) for k in STATISTICS_KEYS}


@dataclass
class AcquisitionSettings:
    """Everything an acquisition needs, as the device's attributes and properties set it."""

    acquisition_time: float = 1.0          # s per frame; 0 = until stopped
    frame_count: int = 1                   # shutter windows of acquisition_time each
    output_products: tuple[str, ...] = ("centroids",)
    event_window: tuple[float, float] = (0.0, 1e-3)   # s after the trigger
    cluster_radius: float = 2.0            # pixels (DBSCAN-like eps)
    cluster_time_window: float = 500e-9    # s: hits further apart in time are separate clusters
    cluster_min_size: int = 1              # smallest cluster kept
    tot_threshold: float = 0.0             # ns: hits below are dropped
    timewalk_table: str = ""               # path of a timewalk correction table, "" = none
    train_id_source: str = "off"
    train_id_start: int = 0
    bridge_endpoint: str = ""              # e.g. tcp://127.0.0.1:4545; "" = no Karabo Bridge
    bridge_socket_type: str = "PUB"
    source_name: str = "TPX3/CAM/1:daqOutput"
    output_directory: str = ""
    file_compression: str = "lzf"           # run files: "lzf", "gzip" (level 1) or "none"
    chips: tuple[int, ...] = (0,)
    data_destination: str = ""             # "host:port": chip i sends UDP to port + i; "" = as the board is set
    tof_range: tuple[float, float] = (0.0, 1e-3)   # s, histogram range
    tof_bins: int = 1000
    extra: dict = field(default_factory=dict)


def validate_settings(settings: AcquisitionSettings) -> None:
    """Checks every pipeline must make; ConfigError names the setting."""
    if settings.acquisition_time < 0:
        raise ConfigError(f"AcquisitionTime must be >= 0 s, got {settings.acquisition_time}")
    if settings.frame_count < 1:
        raise ConfigError(f"FrameCount must be >= 1, got {settings.frame_count}")
    if not settings.output_products:
        raise ConfigError("no output product selected: enable OutputPixels, OutputEvents or OutputCentroids")
    unknown = set(settings.output_products) - set(OUTPUT_PRODUCTS)
    if unknown:
        raise ConfigError(f"unknown output products {sorted(unknown)}; choose from {OUTPUT_PRODUCTS}")
    start, end = settings.event_window
    if not end > start:
        raise ConfigError(f"the event window must end after it starts: EventWindowStart {start} s, "
                          f"EventWindowEnd {end} s")
    if settings.train_id_source not in TRAIN_ID_SOURCES:
        raise ConfigError(f"train ID source must be one of {TRAIN_ID_SOURCES}, got {settings.train_id_source!r}")
    if settings.timewalk_table and not os.path.isfile(settings.timewalk_table):
        raise ConfigError(f"timewalk table {settings.timewalk_table!r} does not exist")
    if settings.tof_bins < 1:
        raise ConfigError(f"TofBins must be >= 1, got {settings.tof_bins}")




@runtime_checkable
class Pipeline(Protocol):
    """The acquisition pipeline as the Tpx3Pipeline device drives it."""

    @property
    def state(self) -> PipelineState: ...

    @property
    def fault_reason(self) -> str: ...

    @property
    def recording(self) -> bool: ...

    @property
    def recording_path(self) -> str: ...

    def set_listener(self, listener: Listener | None) -> None: ...

    def prepare(self, settings: AcquisitionSettings) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def abort(self) -> None: ...

    def reset(self) -> None: ...

    def statistics(self) -> dict[str, float | int]: ...

    def hit_map(self) -> np.ndarray: ...          # (256 * rows, 256 * cols) uint32, rows = y

    def tof_histogram(self) -> np.ndarray: ...    # (tof_bins,) uint32 counts over tof_range

    def start_recording(self, path: str) -> str: ...   # returns the file actually written

    def stop_recording(self) -> None: ...

    def reset_counters(self) -> None: ...

    def close(self) -> None: ...
