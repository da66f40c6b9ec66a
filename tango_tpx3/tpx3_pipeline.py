"""Tpx3Pipeline: the acquisition (capture -> decode -> events -> clusters -> streams/files).

A thin Tango face on a :class:`tango_tpx3.pipeline_iface.Pipeline`: settings attributes
become :class:`~tango_tpx3.pipeline_iface.AcquisitionSettings`, commands become pipeline
calls, the pipeline's state/statistics/per-train callbacks become Tango state and events.

States: ON idle and ready; RUNNING while acquiring (a timed acquisition returns to ON by
itself); FAULT when a stage died or the board is lost (Status says why; Init recovers);
INIT while the board is still connecting. This is what Sardana and ophyd-async expect:
Prepare/Start, then poll State until it leaves RUNNING.

LImA-style aliases for generic 2D-detector clients: ``acq_expo_time`` (= AcquisitionTime),
``acq_nb_frames`` (= FrameCount), ``acq_status``, ``last_image_ready``, commands
``prepareAcq``, ``startAcq``, ``stopAcq``, ``abortAcq``.

Events: change events on State and on the counters (pushed at most every
``EVENT_INTERVAL`` s while running, and always once with the final values when an
acquisition ends, before State leaves RUNNING); a data-ready event on ``HitMap`` per
completed train (its counter is the train's number in this acquisition: 1, 2, ...).

Which pipeline serves the device is its ``PipelineBackend`` property (:mod:`tango_tpx3.backends`):
``live`` (default) receives, decodes, clusters, publishes and records; ``board-counters`` only
drives the shutter and reports the board's counters.
"""
from __future__ import annotations

import enum
import logging
import os
import queue
import threading
import time

import numpy as np
import tango
from tango import AttrWriteType, DevState, DispLevel
from tango.server import Device, attribute, command, device_property

from tango_tpx3 import board_link
from tango_tpx3.common import ensure_omni_thread, memorize, translate_errors, validate_address, validate_device_name
from tango_tpx3.pipeline_iface import OUTPUT_PRODUCTS, AcquisitionSettings, PipelineState, empty_statistics

__all__ = ["Tpx3Pipeline", "TrainIdSource", "EVENT_INTERVAL"]

log = logging.getLogger(__name__)

#: Seconds between counter change events while running (the rate limit).
EVENT_INTERVAL = 0.25

_SOCKET_TYPES = ("PUB", "PUSH", "REP")


#: Filters of the run files' datasets (FileCompression); gzip is level 1.
FILE_COMPRESSIONS = ("gzip", "lzf", "none")


def _validate_file_compression(value: str) -> None:
    if str(value).lower() not in FILE_COMPRESSIONS:
        raise ValueError(f"FileCompression must be one of {', '.join(FILE_COMPRESSIONS)}, got {value!r}")


def _validate_socket_type(value: str) -> None:
    if str(value).upper() not in _SOCKET_TYPES:
        raise ValueError(f"socket type must be one of {', '.join(_SOCKET_TYPES)}, got {value!r}")


class TrainIdSource(enum.IntEnum):
    """Where train IDs come from (``OFF``: every train ID is 0). UPPER_CASE labels, as ophyd-async requires."""

    OFF = 0
    INTERNAL = 1
    TRIGGER = 2


#: Counter/rate attributes -> (statistics key, Tango dtype, unit, label, description)
_STATISTICS = {
    "HitRate": ("hit_rate", float, "Hz", "hit rate", "pixel hits per second"),
    "TriggerRate": ("trigger_rate", float, "Hz", "trigger rate", "triggers (TDC edges) per second"),
    "CentroidRate": ("centroid_rate", float, "Hz", "centroid rate", "cluster centroids per second"),
    "DataRate": ("data_rate", float, "B/s", "data rate", "bytes per second received from the board"),
    "PacketsReceived": ("packets_received", int, "", "packets received", "UDP datagrams received"),
    "PacketsLost": ("packets_lost", int, "", "packets lost", "UDP datagrams the board sent that were not received"),
    "PacketsBacklog": ("backlog_datagrams", int, "", "packets backlog",
                       "UDP datagrams received and not yet processed: grows while the processing lags "
                       "behind, before the ring fills and data are lost"),
    "HitsTotal": ("hits_total", int, "", "hits total", "pixel hits since the last ResetCounters"),
    "CurrentTrainId": ("current_train_id", int, "", "current train ID", "train ID of the last completed train"),
    "TrainsPublished": ("trains_published", int, "", "trains published", "trains completed and sent downstream"),
    "TrainsDropped": ("trains_dropped", int, "", "trains dropped",
                      "completed trains the Karabo Bridge publisher could not deliver (queue full, no consumer "
                      "at the end of the acquisition, not serializable)"),
    "HitsLate": ("hits_late", int, "", "hits late",
                 "event hits that came after their train was published: counted, not in any train"),
    "HitsUnmatched": ("hits_unmatched", int, "", "hits unmatched",
                      "event hits whose trigger matched no train of the first chip: counted, not in any train"),
}
#: Attributes with change events pushed by the device.
_EVENT_ATTRS = tuple(_STATISTICS) + ("Recording", "RecordingPath", "last_image_ready")


def _stat_attribute(attr_name: str) -> attribute:
    key, dtype, unit, label, doc = _STATISTICS[attr_name]

    def fget(self):
        return self._statistic(key)

    fget.__name__ = f"read_{attr_name}"
    return attribute(fget=fget, name=attr_name, dtype=dtype, unit=unit, label=label, doc=doc,
                     format="%.4g" if dtype is float else "%d")


class Tpx3Pipeline(Device):
    """Acquisition and online processing of one SPIDR board's Timepix3 data."""

    # ---------------------------------------------------------------- properties
    Board = device_property(dtype=str, mandatory=True, doc="name of the SpidrBoard device whose data this reads")
    Board.tpx3_validate = validate_device_name
    Chips = device_property(dtype=(str,), default_value=[],
                            doc="Timepix3Chip devices read out (default: chip 0 of the board)")
    BridgeEndpoint = device_property(dtype=str, default_value="",
                                     doc="Karabo Bridge endpoint to publish trains on, e.g. tcp://*:4545 "
                                         "('' = no publishing)")
    BridgeSocketType = device_property(dtype=str, default_value="PUB", doc="Karabo Bridge socket: PUB, PUSH or REP")
    BridgeSocketType.tpx3_validate = _validate_socket_type
    SourceName = device_property(dtype=str, default_value="",
                                 doc="source name in the Karabo Bridge data and run files (default: the device name in capitals + ':daqOutput', e.g. SIM/TPX3/PIPELINE:daqOutput)")
    OutputDirectory = device_property(dtype=str, default_value="",
                                      doc="European XFEL run files go to OutputDirectory/r<NNNN>/ (one run per "
                                          "acquisition, with train IDs on); also the directory of recordings "
                                          "started without a full path (default: the server's working directory)")
    FileCompression = device_property(dtype=str, default_value="lzf",
                                      doc="filter of the run files' datasets: 'lzf' (read by h5py and EXtra-data; "
                                          "the writer keeps up with ~19 Mhits/s), 'gzip' (level 1, read by any HDF5 "
                                          "tool, ~4.7 Mhits/s) or 'none' (~26 Mhits/s, 4x the size)")
    FileCompression.tpx3_validate = _validate_file_compression
    DataDestination = device_property(dtype=str, default_value="",
                                      doc="host:port the chips send UDP data to and the receivers bind (chip i: "
                                          "port + i); '' = free ports on 127.0.0.1 (live backend) or the board's "
                                          "setting (board-counters)")
    DataDestination.tpx3_validate = validate_address
    PipelineBackend = device_property(dtype=str, default_value="live",
                                      doc="pipeline implementation: 'live' (receive, decode, cluster, publish, "
                                          "record) or 'board-counters' (shutter and the board's counters only)")

    # ---------------------------------------------------------------- settings
    AcquisitionTime = attribute(
        dtype=float, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
        unit="s", format="%.6g", min_value=0, max_value=86400, label="acquisition time",
        doc="shutter time per frame in seconds; 0 = acquire until Stop")
    FrameCount = attribute(
        dtype=int, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
        min_value=1, max_value=1_000_000, format="%d", label="frames",
        doc="number of shutter windows of AcquisitionTime each (LImA acq_nb_frames)")
    OutputPixels = attribute(dtype=bool, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
                             label="output pixels", doc="produce decoded pixel hits")
    OutputEvents = attribute(dtype=bool, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
                             label="output events", doc="produce pixel hits assigned to triggers (time of flight)")
    OutputCentroids = attribute(dtype=bool, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
                                label="output centroids", doc="produce cluster centroids")
    EventWindowStart = attribute(
        dtype=float, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True, unit="s",
        format="%.6g", min_value=0, max_value=10, label="event window start",
        doc="hits earlier than this after a trigger are not part of its event")
    EventWindowEnd = attribute(
        dtype=float, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True, unit="s",
        format="%.6g", min_value=0, max_value=10, label="event window end",
        doc="hits later than this after a trigger are not part of its event (also the ToF histogram range)")
    ClusterRadius = attribute(
        dtype=float, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True, unit="px",
        format="%.3g", min_value=0, max_value=16, label="cluster radius",
        doc="hits within this distance (pixels, max(|dx|, |dy|), a whole number) belong to the same cluster")
    ClusterTimeWindow = attribute(
        dtype=float, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True, unit="s",
        format="%.3g", min_value=0, max_value=1e-3, label="cluster time window",
        doc="hits further apart in time are separate clusters")
    ClusterMinSize = attribute(
        dtype=int, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True, min_value=1,
        max_value=65536, format="%d", label="cluster min size", doc="smallest cluster (in hits) kept")
    TotThreshold = attribute(
        dtype=float, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True, unit="ns",
        format="%.1f", min_value=0, max_value=25575, label="ToT threshold",
        doc="hits with a time over threshold at or below this are left out of clustering (centroids)")
    TimewalkTable = attribute(
        dtype=str, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True, label="timewalk table",
        doc="path of a timewalk correction table ('' = none)")
    TrainIdSource = attribute(
        dtype=TrainIdSource, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
        label="train ID source", doc="OFF: train ID 0; INTERNAL: trains counted from TrainIdStart on the "
                                     "10 Hz grid of the triggers; TRIGGER: the trigger counter plus TrainIdStart")
    TrainIdStart = attribute(
        dtype=int, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True, min_value=0,
        format="%d", label="train ID start", doc="first train ID (Internal) or offset (Trigger)")
    TofBins = attribute(
        dtype=int, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True, min_value=1,
        max_value=100_000, format="%d", label="ToF bins",
        doc="bins of TofHistogram over [EventWindowStart, EventWindowEnd]")

    # ---------------------------------------------------------------- status and data
    Recording = attribute(dtype=bool, label="recording", doc="True while raw data are written to a file")
    RecordingPath = attribute(dtype=str, label="recording file", doc="file being written (or last written)")
    HitRate = _stat_attribute("HitRate")
    TriggerRate = _stat_attribute("TriggerRate")
    CentroidRate = _stat_attribute("CentroidRate")
    DataRate = _stat_attribute("DataRate")
    PacketsReceived = _stat_attribute("PacketsReceived")
    PacketsLost = _stat_attribute("PacketsLost")
    HitsTotal = _stat_attribute("HitsTotal")
    CurrentTrainId = _stat_attribute("CurrentTrainId")
    TrainsPublished = _stat_attribute("TrainsPublished")
    TrainsDropped = _stat_attribute("TrainsDropped")
    PacketsBacklog = _stat_attribute("PacketsBacklog")
    HitsLate = _stat_attribute("HitsLate")
    HitsUnmatched = _stat_attribute("HitsUnmatched")
    HitMap = attribute(dtype=((np.uint32,),), max_dim_x=1024, max_dim_y=1024, label="hit map",
                       doc="hits per pixel since the acquisition started (rows = y); a data-ready event "
                           "announces each train")
    TofHistogram = attribute(dtype=(np.uint32,), max_dim_x=100_000, label="ToF histogram",
                             doc="events per time-of-flight bin over [EventWindowStart, EventWindowEnd]")
    Backend = attribute(dtype=str, label="pipeline backend", display_level=DispLevel.EXPERT,
                        doc="which pipeline implementation serves this device")

    # ---------------------------------------------------------------- LImA aliases
    acq_expo_time = attribute(dtype=float, access=AttrWriteType.READ_WRITE, unit="s", format="%.6g",
                              min_value=0, max_value=86400, label="exposure time",
                              doc="LImA alias of AcquisitionTime")
    acq_nb_frames = attribute(dtype=int, access=AttrWriteType.READ_WRITE, min_value=1, max_value=1_000_000,
                              format="%d", label="number of frames", doc="LImA alias of FrameCount")
    acq_status = attribute(dtype=str, label="acquisition status", doc="LImA-style: Ready, Running or Fault")
    last_image_ready = attribute(dtype=int, label="last frame ready", format="%d",
                                 doc="LImA-style: index of the last completed frame (-1 before the first)")

    # ================================================================ life cycle
    def init_device(self):
        super().init_device()
        self.set_state(DevState.INIT)
        self._lock = threading.RLock()
        self._settings = AcquisitionSettings()
        self._settings.source_name = self.SourceName or f"{self.get_name().upper()}:daqOutput"
        self._prepared = False
        self._pipeline = None
        self._link = None
        self._init_error = ""
        self._events: queue.Queue = queue.Queue()
        self._last_pushed: dict[str, object] = {}
        self._trains_announced = 0     # data-ready counter: trains completed in this acquisition
        self._event_thread = None
        self.set_change_event("State", True, False)
        self.set_change_event("Status", True, False)
        for name in _EVENT_ATTRS:
            self.set_change_event(name, True, False)
        self.set_data_ready_event("HitMap", True)
        try:
            _validate_socket_type(self.BridgeSocketType)
            self._settings.bridge_endpoint = self.BridgeEndpoint
            self._settings.bridge_socket_type = self.BridgeSocketType.upper()
            self._settings.output_directory = self.OutputDirectory
            _validate_file_compression(self.FileCompression)
            self._settings.file_compression = self.FileCompression.lower()
            if self.DataDestination:
                validate_address(self.DataDestination)
            self._settings.data_destination = self.DataDestination
            address = board_link.address_of_board(self.Board)
            self._settings.chips = tuple(board_link.chip_index_of(c) for c in self.Chips) or (0,)
            self._link = board_link.acquire(address, timeout=board_link.timeout_of_board(self.Board))
            from tango_tpx3.backends import make_pipeline
            self._pipeline = make_pipeline(self.PipelineBackend, self._link, self.get_name())
        except Exception as exc:  # noqa: BLE001 - a bad configuration is a FAULT with its reason
            self._init_error = f"cannot set up the pipeline: {exc}"
            log.error("%s: %s", self.get_name(), self._init_error)
        self._event_thread = threading.Thread(target=ensure_omni_thread(self._event_loop),
                                              name=f"events-{self.get_name()}", daemon=True)
        self._event_thread.start()
        if self._pipeline is not None:
            self._pipeline.set_listener(self._on_pipeline_event)
        if self._link is not None:
            self._link.add_listener(self._on_link_change)
            if self._link.state in (board_link.LinkState.FAULT, board_link.LinkState.CLOSED):
                self._link.connect()   # Init of any device of a lost board tries again
        self._refresh_state()

    def delete_device(self):
        pipeline, self._pipeline = getattr(self, "_pipeline", None), None
        if pipeline is not None:
            pipeline.set_listener(None)
            try:
                pipeline.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the pipeline failed")
        link, self._link = getattr(self, "_link", None), None
        if link is not None:
            link.remove_listener(self._on_link_change)
            board_link.release(link)
        thread = getattr(self, "_event_thread", None)
        if thread is not None:
            self._events.put(("quit", None))
            thread.join(timeout=5)
            self._event_thread = None
        super().delete_device()

    # ================================================================ state
    def _compute_state(self) -> tuple[DevState, str]:
        pipeline = self._pipeline
        if pipeline is None:
            return DevState.FAULT, self._init_error or "no pipeline"
        ps = pipeline.state
        if ps is PipelineState.RUNNING:
            return DevState.RUNNING, "Acquiring"
        if ps is PipelineState.FAULT:
            return DevState.FAULT, f"Pipeline failed: {pipeline.fault_reason}. Init (or Prepare) to recover."
        link = self._link
        if link is not None and link.state is board_link.LinkState.CONNECTING:
            return DevState.INIT, f"Waiting for board {self.Board} ({link.reason})"
        if link is not None and link.state is not board_link.LinkState.CONNECTED:
            return DevState.FAULT, (f"Board {self.Board} not available: {link.reason}. "
                                    f"Reconnect the board (Init or Reconnect on {self.Board}).")
        return DevState.ON, "Ready"

    def _refresh_state(self) -> None:
        with self._lock:
            state, status = self._compute_state()
            pipeline = self._pipeline
            note = getattr(pipeline, "status_note", "") if pipeline is not None else ""
            if note:
                status = f"{status}\n{note}"
            changed = state != self.get_state() or status != self.get_status()
            self.set_state(state)
            self.set_status(status)
        if changed:
            self.push_change_event("State")
            self.push_change_event("Status")

    def _on_link_change(self, link) -> None:
        self._events.put(("link", None))

    def _on_pipeline_event(self, kind: str, value) -> None:
        self._events.put((kind, value))

    def _event_loop(self) -> None:
        """The only thread (besides Tango's) that pushes events; runs in an omni thread."""
        running = False
        next_push = 0.0
        while True:
            timeout = max(0.0, next_push - time.monotonic()) if running else None
            try:
                kind, value = self._events.get(timeout=timeout)
            except queue.Empty:
                kind, value = "tick", None
            try:
                if kind == "quit":
                    return
                if kind == "train":
                    self._trains_announced += 1
                    self.push_data_ready_event("HitMap", self._trains_announced)
                elif kind == "state":
                    if value is not PipelineState.RUNNING:
                        self._push_counters(force=True)   # final values, before State leaves RUNNING
                    self._refresh_state()
                elif kind in ("link", "refresh"):
                    self._refresh_state()
                pipeline = self._pipeline
                running = pipeline is not None and pipeline.state is PipelineState.RUNNING
                if running and time.monotonic() >= next_push:
                    self._push_counters(force=False)
                    next_push = time.monotonic() + EVENT_INTERVAL
            except Exception:  # noqa: BLE001 - never let the event thread die
                log.exception("%s: event handling failed", self.get_name())

    def _event_values(self) -> dict[str, object]:
        stats = self._stats()
        values: dict[str, object] = {name: stats[key] for name, (key, *_rest) in _STATISTICS.items()}
        pipeline = self._pipeline
        values["Recording"] = bool(pipeline.recording) if pipeline is not None else False
        values["RecordingPath"] = str(pipeline.recording_path) if pipeline is not None else ""
        values["last_image_ready"] = int(stats.get("frames_completed", 0)) - 1
        return values

    def _push_counters(self, force: bool) -> None:
        for name, value in self._event_values().items():
            if force or self._last_pushed.get(name) != value:
                self._last_pushed[name] = value
                self.push_change_event(name, value)

    # ================================================================ helpers
    def _stats(self) -> dict:
        pipeline = self._pipeline
        stats = empty_statistics()
        if pipeline is not None:
            stats.update(pipeline.statistics())
        return stats

    def _statistic(self, key: str):
        return self._stats()[key]

    def _require_pipeline(self):
        if self._pipeline is None:
            raise tango.Except.throw_exception("TPX3_NotReady", self._init_error or "no pipeline",
                                               f"{type(self).__name__}")
        return self._pipeline

    def _settings_writable(self, req_type) -> bool:
        """Settings are refused while acquiring (they apply at the next Prepare/Start)."""
        if req_type == tango.AttReqType.READ_REQ:
            return True
        return self.get_state() != DevState.RUNNING

    def _set(self, field_name: str, value) -> None:
        with self._lock:
            setattr(self._settings, field_name, value)
            self._prepared = False

    # ================================================================ settings attributes
    def read_AcquisitionTime(self):
        return self._settings.acquisition_time

    @translate_errors
    def write_AcquisitionTime(self, value):
        self._set("acquisition_time", float(value))

    def is_AcquisitionTime_allowed(self, req_type):
        return self._settings_writable(req_type)

    def read_FrameCount(self):
        return self._settings.frame_count

    def write_FrameCount(self, value):
        self._set("frame_count", int(value))

    def is_FrameCount_allowed(self, req_type):
        return self._settings_writable(req_type)

    def _products(self) -> tuple[str, ...]:
        return self._settings.output_products

    def _set_product(self, product: str, on: bool) -> None:
        products = set(self._settings.output_products)
        if on:
            products.add(product)
        else:
            products.discard(product)
        self._set("output_products", tuple(p for p in OUTPUT_PRODUCTS if p in products))

    def read_OutputPixels(self):
        return "pixels" in self._products()

    def write_OutputPixels(self, value):
        self._set_product("pixels", bool(value))

    def is_OutputPixels_allowed(self, req_type):
        return self._settings_writable(req_type)

    def read_OutputEvents(self):
        return "events" in self._products()

    def write_OutputEvents(self, value):
        self._set_product("events", bool(value))

    def is_OutputEvents_allowed(self, req_type):
        return self._settings_writable(req_type)

    def read_OutputCentroids(self):
        return "centroids" in self._products()

    def write_OutputCentroids(self, value):
        self._set_product("centroids", bool(value))

    def is_OutputCentroids_allowed(self, req_type):
        return self._settings_writable(req_type)

    def read_EventWindowStart(self):
        return self._settings.event_window[0]

    def write_EventWindowStart(self, value):
        self._set("event_window", (float(value), self._settings.event_window[1]))

    def is_EventWindowStart_allowed(self, req_type):
        return self._settings_writable(req_type)

    def read_EventWindowEnd(self):
        return self._settings.event_window[1]

    def write_EventWindowEnd(self, value):
        self._set("event_window", (self._settings.event_window[0], float(value)))

    def is_EventWindowEnd_allowed(self, req_type):
        return self._settings_writable(req_type)

    def read_ClusterRadius(self):
        return self._settings.cluster_radius

    def write_ClusterRadius(self, value):
        self._set("cluster_radius", float(value))

    def is_ClusterRadius_allowed(self, req_type):
        return self._settings_writable(req_type)

    def read_ClusterTimeWindow(self):
        return self._settings.cluster_time_window

    def write_ClusterTimeWindow(self, value):
        self._set("cluster_time_window", float(value))

    def is_ClusterTimeWindow_allowed(self, req_type):
        return self._settings_writable(req_type)

    def read_ClusterMinSize(self):
        return self._settings.cluster_min_size

    def write_ClusterMinSize(self, value):
        self._set("cluster_min_size", int(value))

    def is_ClusterMinSize_allowed(self, req_type):
        return self._settings_writable(req_type)

    def read_TotThreshold(self):
        return self._settings.tot_threshold

    def write_TotThreshold(self, value):
        self._set("tot_threshold", float(value))

    def is_TotThreshold_allowed(self, req_type):
        return self._settings_writable(req_type)

    def read_TimewalkTable(self):
        return self._settings.timewalk_table

    def write_TimewalkTable(self, value):
        self._set("timewalk_table", str(value).strip())

    def is_TimewalkTable_allowed(self, req_type):
        return self._settings_writable(req_type)

    def read_TrainIdSource(self):
        return TrainIdSource[self._settings.train_id_source.upper()]

    def write_TrainIdSource(self, value):
        self._set("train_id_source", TrainIdSource(int(value)).name.lower())

    def is_TrainIdSource_allowed(self, req_type):
        return self._settings_writable(req_type)

    def read_TrainIdStart(self):
        return self._settings.train_id_start

    def write_TrainIdStart(self, value):
        self._set("train_id_start", int(value))

    def is_TrainIdStart_allowed(self, req_type):
        return self._settings_writable(req_type)

    def read_TofBins(self):
        return self._settings.tof_bins

    def write_TofBins(self, value):
        self._set("tof_bins", int(value))

    def is_TofBins_allowed(self, req_type):
        return self._settings_writable(req_type)

    # ================================================================ status and data
    def read_Recording(self):
        return bool(self._pipeline.recording) if self._pipeline is not None else False

    def read_RecordingPath(self):
        return str(self._pipeline.recording_path) if self._pipeline is not None else ""

    @translate_errors
    def read_HitMap(self):
        return np.ascontiguousarray(self._require_pipeline().hit_map(), dtype=np.uint32)

    @translate_errors
    def read_TofHistogram(self):
        return np.ascontiguousarray(self._require_pipeline().tof_histogram(), dtype=np.uint32)

    def read_Backend(self):
        pipeline = self._pipeline
        if pipeline is None:
            return ""
        return getattr(pipeline, "backend_name", type(pipeline).__name__)

    # ---------------------------------------------------------------- LImA aliases
    def read_acq_expo_time(self):
        return self._settings.acquisition_time

    def write_acq_expo_time(self, value):
        self.write_AcquisitionTime(value)
        memorize(self, {"AcquisitionTime": float(value)})

    def is_acq_expo_time_allowed(self, req_type):
        return self._settings_writable(req_type)

    def read_acq_nb_frames(self):
        return self._settings.frame_count

    def write_acq_nb_frames(self, value):
        self.write_FrameCount(value)
        memorize(self, {"FrameCount": int(value)})

    def is_acq_nb_frames_allowed(self, req_type):
        return self._settings_writable(req_type)

    def read_acq_status(self):
        return {DevState.ON: "Ready", DevState.RUNNING: "Running", DevState.INIT: "Configuration"}.get(
            self.get_state(), "Fault")

    def read_last_image_ready(self):
        return int(self._statistic("frames_completed")) - 1

    # ================================================================ commands
    def _prepare(self) -> None:
        pipeline = self._require_pipeline()
        with self._lock:
            settings = AcquisitionSettings(**{k: getattr(self._settings, k)
                                              for k in self._settings.__dataclass_fields__})
        if settings.output_directory and not os.path.isabs(settings.output_directory):
            settings.output_directory = os.path.abspath(settings.output_directory)
        settings.tof_range = tuple(settings.event_window)   # TofHistogram spans the event window
        pipeline.prepare(settings)
        self._prepared = True
        self._events.put(("refresh", None))

    def _idle_allowed(self) -> bool:
        return self.get_state() == DevState.ON

    @command(doc_in="validate the settings and get ready to start (Start does it too if needed)")
    @translate_errors
    def Prepare(self):
        self._prepare()

    def is_Prepare_allowed(self):
        # Also in FAULT: a new Prepare clears a failed acquisition (a lost board stays FAULT).
        return self.get_state() in (DevState.ON, DevState.FAULT)

    @command(doc_in="start acquiring; returns at once (the shutter opens moments later), State is RUNNING "
                    "until the acquisition ends")
    @translate_errors
    def Start(self):
        if not self._prepared:
            self._prepare()
        pipeline = self._require_pipeline()
        self._trains_announced = 0
        pipeline.start()
        self._prepared = False
        self._last_pushed.clear()
        self._refresh_state()

    def is_Start_allowed(self):
        return self._idle_allowed()

    @command(doc_in="end the acquisition cleanly (data in flight are processed and written); harmless when idle")
    @translate_errors
    def Stop(self):
        self._require_pipeline().stop()

    @command(doc_in="end the acquisition at once, dropping data in flight; harmless when idle")
    @translate_errors
    def Abort(self):
        self._require_pipeline().abort()

    @command(dtype_in=str, doc_in="file to record raw data to ('' or a bare name: in OutputDirectory)",
             dtype_out=str, doc_out="the file being written")
    @translate_errors
    def StartRecording(self, path):
        path = str(path).strip()
        if not path or not os.path.isabs(path):
            base = self.OutputDirectory or os.getcwd()
            path = os.path.join(base, path) if path else base
        result = self._require_pipeline().start_recording(path)
        self._events.put(("refresh", None))
        return result

    def is_StartRecording_allowed(self):
        return self.get_state() in (DevState.ON, DevState.RUNNING)

    @command(doc_in="stop recording (the file is closed and complete)")
    @translate_errors
    def StopRecording(self):
        self._require_pipeline().stop_recording()

    @command(doc_in="set the counters, hit map and histogram to zero")
    @translate_errors
    def ResetCounters(self):
        self._require_pipeline().reset_counters()
        self._push_counters(force=True)

    # ---------------------------------------------------------------- LImA command aliases
    @command(doc_in="LImA alias of Prepare")
    def prepareAcq(self):
        self.Prepare()

    def is_prepareAcq_allowed(self):
        return self.is_Prepare_allowed()

    @command(doc_in="LImA alias of Start")
    def startAcq(self):
        self.Start()

    def is_startAcq_allowed(self):
        return self._idle_allowed()

    @command(doc_in="LImA alias of Stop")
    def stopAcq(self):
        self.Stop()

    @command(doc_in="LImA alias of Abort")
    def abortAcq(self):
        self.Abort()
