"""The live pipeline behind Tpx3Pipeline (``PipelineBackend = live``, the default).

:class:`LiveBackend` implements :class:`tango_tpx3.pipeline_iface.Pipeline` on top of
:class:`tpx3lib.pipeline.LivePipeline` (one UDP receiver process per chip -> shared-memory
ring -> decode -> events -> clusters -> sinks) and drives the board through the device's
shared :class:`~tango_tpx3.board_link.BoardLink` (never a second TCP connection: a SPIDR
board accepts one control client).

One acquisition, all of it in one thread of this object (``start()`` returns at once):

1. ``LivePipeline.start()``: receivers bind their UDP sockets (``DataDestination`` host and
   port + chip, or free loopback ports), processing threads and sinks start; the board's
   per-chip UDP packet counters are read;
2. on the board (one locked sequence; a shutter left open was closed before step 1): each
   chip's UDP destination -> the bound port,
   decoders on, data-driven readout, ResetTimers, RestartTimers, the auto-trigger opens the
   shutter (for ``acquisition_time * frame_count`` s, or until Stop when the time is 0);
3. while open: frames are counted (one per ``acquisition_time`` of shutter time), the
   board's packet counters are read every ``BOARD_POLL_INTERVAL`` s (a board that stops
   answering ends the acquisition in FAULT), a dying stage (receiver, processing, sink)
   ends it in FAULT with the stage's reason;
4. the shutter is closed, then ``LivePipeline.stop()`` drains what was received, flushes,
   closes the recording and the sinks; ``abort()`` drops what is in flight instead.

Products: ``AcquisitionSettings.output_products`` -> the chain's products (triggers are always
decoded), cluster parameters/ToT threshold -> ``ClusterParams``, timewalk table, event window
(also the ToF histogram range). Train IDs: ``off`` (each trigger is a train with ID 0),
``internal`` (:class:`~tpx3lib.trainid.CountingTrainIdSource` from ``train_id_start``: the
10 Hz grid of the triggers), ``trigger`` (the trigger's hardware counter + ``train_id_start``).
Karabo Bridge (``bridge_endpoint``) and European XFEL run files (``output_directory``) are
sinks of tpx3lib (:mod:`tpx3lib.pipeline.bridge_sink`, :mod:`tpx3lib.pipeline.exdf_sink`).

Counters are per acquisition (``start()`` zeroes them) and since the last ``reset_counters()``.
``packets_lost`` = datagrams the board counted as sent minus datagrams received (read at
start and after the shutter closed; during the run the board's count is at most
``BOARD_POLL_INTERVAL`` old, so it can only under-state, never invent losses) plus ring
overruns.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from tpx3lib.errors import ConfigError
from tpx3lib.pipeline.state import StateReporter
from tpx3lib.trainid import TrainIdSource

from tango_tpx3.common import ensure_omni_thread, parse_address
from tango_tpx3.pipeline_iface import (
    STATISTICS_KEYS, AcquisitionSettings, PipelineState, empty_statistics, validate_settings,
)

__all__ = ["LiveBackend", "TriggerCounterTrainIdSource", "BOARD_POLL_INTERVAL", "RAW_SUFFIX"]

log = logging.getLogger(__name__)

#: Seconds between reads of the board's packet counters while the shutter is open.
BOARD_POLL_INTERVAL = 0.5
#: Longest wait of the acquisition thread between checks (stop, faults, frames).
TICK = 0.05
#: How long stop() may take to drain and flush (LivePipeline.stop's timeout).
STOP_TIMEOUT = 10.0
#: Seconds the Karabo Bridge publisher may take at the end of an acquisition to hand the last
#: queued trains to a REP/PUSH consumer; what no consumer takes by then is discarded (counted).
BRIDGE_STOP_TIMEOUT = 5.0
#: Suffix of raw recordings named by the device (native raw format, see docs/raw-format.md).
RAW_SUFFIX = ".tpx3raw"
#: Shared-memory ring per chip (the capture's default is 128 MB; a Tango server runs beside others).
DEFAULT_RING_BYTES = 64 << 20
#: The largest cluster radius the clustering accepts (pixels).
MAX_CLUSTER_RADIUS = 16


class TriggerCounterTrainIdSource(TrainIdSource):
    """Train ID = the trigger's hardware counter (the TDC counter, extended past its wrap) + ``offset``."""

    def __init__(self, offset: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.offset = int(offset)

    def _decide(self, counter, time, first_seen, now):
        train_id = self.offset + int(counter)
        return train_id, 0, self._board_to_host(time), train_id


@dataclasses.dataclass
class _Plan:
    """What one acquisition needs, derived (and validated) from AcquisitionSettings."""

    settings: AcquisitionSettings
    chips: list
    host: str                 # address the receivers bind
    ports: list               # one per chip (0 = any free port)
    board_host: str           # address the board sends to
    processing: object        # ProcessingConfig
    train_id_source: object   # chip -> TrainIdSource, or None
    sinks: list               # factories () -> Sink


class LiveBackend(StateReporter):
    """The acquisition: tpx3lib's LivePipeline plus the board's shutter (see the module docstring)."""

    backend_name = "live"

    def __init__(self, link, *, capture_options: dict | None = None, device_name: str = ""):
        self._link = link
        self._device_name = device_name
        self._capture_options = {"ring_bytes": DEFAULT_RING_BYTES, **(capture_options or {})}
        self._lock = threading.RLock()
        self._init_state()
        self._settings = AcquisitionSettings()
        self._plan: _Plan | None = None
        self._pipe = None                     # the LivePipeline of the current or last acquisition
        self._thread: threading.Thread | None = None
        self._stop_req = threading.Event()
        self._abort_req = threading.Event()
        self._wake = threading.Event()
        self._frames = 0
        self._offsets: dict[str, int] = {}
        self._armed_recording = ""            # StartRecording while the pipeline is still starting
        self._last_recording_path = ""
        self._board_cache: dict[int, int] = {}
        self._board_live = False              # True: board_packets() returns the polled value
        self._idle_tof_bins = self._settings.tof_bins
        self._bridge = None                   # the KaraboBridgeSink, kept across acquisitions
        self._bridge_key = None
        self._run_files = None                # (directory, run number, ExdfSink) of the last acquisition
        self._recording_error = ""            # why the last recording could not start
        self.last_summary: dict = {}

    # ---------------------------------------------------------------- Pipeline protocol
    @property
    def recording(self) -> bool:
        pipe = self._pipe
        return bool(self._armed_recording) or (pipe is not None and pipe.recording)

    @property
    def recording_path(self) -> str:
        pipe = self._pipe
        if pipe is not None and pipe.recording:
            return pipe.recording_path
        return self._armed_recording or self._last_recording_path

    def prepare(self, settings: AcquisitionSettings) -> None:
        if self._state is PipelineState.RUNNING:
            raise ConfigError("cannot prepare while acquiring")
        plan = self._make_plan(settings)
        with self._lock:
            if self._state is PipelineState.RUNNING:
                raise ConfigError("cannot prepare while acquiring")
            self._settings, self._plan = settings, plan
            self._idle_tof_bins = settings.tof_bins
            if self._state is PipelineState.FAULT:
                self._set_state(PipelineState.IDLE)

    def start(self) -> None:
        """Returns at once with the state RUNNING; the acquisition runs in a thread."""
        from tpx3lib.pipeline import LivePipeline

        with self._lock:
            if self._state is PipelineState.RUNNING:
                raise ConfigError("already acquiring")
            if self._state is PipelineState.FAULT:
                raise ConfigError(f"the acquisition failed ({self._fault_reason}); Prepare or Init first")
            plan = self._plan or self._make_plan(self._settings)
            self._plan = None          # a plan's sinks are used once
            s = plan.settings
            self._settings = s
            self._run_files = None
            sinks = [make() for make in plan.sinks]
            pipe = LivePipeline(
                chips=plan.chips, ports=plan.ports, host=plan.host, processing=plan.processing, sinks=sinks,
                train_id_source=plan.train_id_source, capture_options=dict(self._capture_options),
                board_packets=self._board_packets, listener=self._on_pipe_event,
                tof_range_s=tuple(s.tof_range), tof_bins=int(s.tof_bins))
            self._pipe = pipe
            self._stop_req.clear()
            self._abort_req.clear()
            self._wake.clear()
            self._frames = 0
            self._offsets = {}
            self._board_live = False
            self._board_cache = {}
            self._state = PipelineState.RUNNING
            self._fault_reason = ""
            self._thread = threading.Thread(target=ensure_omni_thread(self._run), args=(plan, pipe),
                                            name="tpx3-live-acquisition", daemon=True)
            self._thread.start()
        self._emit("state", PipelineState.RUNNING)

    def stop(self) -> None:
        self._stop_req.set()
        self._wake.set()

    def abort(self) -> None:
        self._abort_req.set()
        self._wake.set()

    def reset(self) -> None:
        with self._lock:
            if self._state is PipelineState.FAULT:
                self._set_state(PipelineState.IDLE)

    def statistics(self) -> dict:
        out = empty_statistics()
        pipe = self._pipe
        if pipe is not None:
            try:
                stats = pipe.statistics()
            except Exception:  # noqa: BLE001 - a snapshot taken while a stage shuts down; try again later
                log.debug("statistics not readable right now", exc_info=True)
                stats = getattr(self, "_last_stats", {})
            self._last_stats = stats
            out.update({k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        out["frames_completed"] = self._frames
        bridge = self._bridge
        if bridge is not None and pipe is not None:
            try:
                c = bridge.counters()
                out["trains_dropped"] = int(c.get("trains_dropped", 0)) + int(c.get("trains_discarded_at_stop", 0)) \
                    + int(c.get("trains_failed", 0))
                out["hits_late"] = int(c.get("hits_late", 0))
                out["hits_unmatched"] = int(c.get("hits_unmatched", 0))
            except Exception:  # noqa: BLE001 - counters of a sink between runs
                pass
        for key, base in self._offsets.items():
            out[key] = max(0, int(out.get(key, 0)) - base)
        if self._state is not PipelineState.RUNNING:
            for key in STATISTICS_KEYS:
                if key.endswith("_rate"):
                    out[key] = 0.0
        return out

    def hit_map(self) -> np.ndarray:
        pipe = self._pipe
        if pipe is None:
            return np.zeros((256, 256), np.uint32)
        return pipe.hit_map()

    def tof_histogram(self) -> np.ndarray:
        pipe = self._pipe
        if pipe is None:
            return np.zeros(self._idle_tof_bins, np.uint32)
        return pipe.tof_histogram()

    def start_recording(self, path: str) -> str:
        """Record the raw datagrams from now on (native raw file; one per chip with several).

        ``path`` is a file, or an existing directory (a name ``raw_<date>_<time>.tpx3raw`` is
        made in it). While acquiring, the file holds what arrives from now on. When idle (or
        while the acquisition is still starting) the recording is armed: it starts with the
        next acquisition, before the shutter opens, so the file holds the whole run."""
        path = self._recording_file(path)
        with self._lock:
            if self._state is PipelineState.FAULT:
                raise ConfigError(f"the acquisition failed ({self._fault_reason}); Prepare or Init first")
            if self.recording:
                raise ConfigError(f"already recording to {self.recording_path}; StopRecording first")
            self._recording_error = ""
            pipe = self._pipe
            if pipe is not None and pipe.running:
                result = pipe.start_recording(path, header=self._recording_header())
                self._last_recording_path = result
                return result
            self._armed_recording = path
            self._last_recording_path = path
            return path

    def stop_recording(self) -> dict:
        with self._lock:
            self._armed_recording = ""
            pipe = self._pipe
            out = pipe.stop_recording() if pipe is not None else {}
        self._emit("refresh", None)
        return out

    def reset_counters(self) -> None:
        pipe = self._pipe
        if pipe is None:
            return
        pipe.reset_counters()
        try:
            stats = pipe.statistics()
        except Exception:  # noqa: BLE001
            stats = {}
        # what the statistics sink does not count itself (capture and train counters)
        self._offsets = {k: int(stats.get(k, 0)) for k in ("packets_received", "packets_lost", "trains_published")}
        publisher = self.statistics()          # the publisher's counters (no offsets yet)
        self._offsets.update({k: int(publisher.get(k, 0)) for k in ("trains_dropped", "hits_late", "hits_unmatched")})

    def close(self) -> None:
        self.abort()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=STOP_TIMEOUT + 5)
        pipe = self._pipe
        if pipe is not None:
            try:
                pipe.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the live pipeline failed")
        with self._lock:
            self._close_bridge()

    # ---------------------------------------------------------------- settings -> plan
    def _make_plan(self, s: AcquisitionSettings) -> _Plan:
        """Everything checked before anything starts; ConfigError names the setting."""
        from tpx3lib.cluster import ClusterParams
        from tpx3lib.pipeline import ProcessingConfig

        validate_settings(s)
        chips = [int(c) for c in (s.chips or (0,))]
        if s.data_destination:
            host, port = parse_address(s.data_destination)
            ports = [port + c for c in chips]
            if ports[-1] > 65535:
                raise ConfigError(f"DataDestination {s.data_destination}: port + chip index exceeds 65535")
            board_host = host
        else:
            host, ports, board_host = "127.0.0.1", [0] * len(chips), "127.0.0.1"
        radius = float(s.cluster_radius)
        if radius != int(radius) or not 0 <= radius <= MAX_CLUSTER_RADIUS:
            raise ConfigError(f"ClusterRadius must be a whole number of pixels in 0..{MAX_CLUSTER_RADIUS} "
                              f"(hits within that Chebyshev distance link), got {s.cluster_radius}")
        cluster = {"radius": int(radius), "time_window_ns": float(s.cluster_time_window) * 1e9,
                   "min_size": int(s.cluster_min_size), "tot_threshold_ns": int(round(s.tot_threshold))}
        try:
            ClusterParams.from_dict(cluster)
        except ConfigError as exc:
            raise ConfigError(f"clustering settings (ClusterRadius/ClusterTimeWindow/ClusterMinSize/"
                              f"TotThreshold): {exc}") from None
        if s.timewalk_table:
            from tpx3lib.cluster import TimewalkTable
            try:
                TimewalkTable.load(s.timewalk_table)
            except (ConfigError, OSError, ValueError) as exc:
                raise ConfigError(f"TimewalkTable {s.timewalk_table!r} cannot be used: {exc}") from None
        products = tuple(p for p in ("pixels", "events", "centroids") if p in s.output_products) + ("triggers",)
        processing = ProcessingConfig(products=products, event_window_s=tuple(s.event_window),
                                      cluster=cluster if "centroids" in products else None,
                                      timewalk_path=s.timewalk_table or None)
        source = self._train_id_factory(s)
        sinks = []
        if s.bridge_endpoint:
            sinks.append(self._bridge_sink_factory(s))
        if s.output_directory and s.train_id_source != "off":
            sinks.append(self._run_files_factory(s))
        return _Plan(s, chips, host, ports, board_host, processing, source, sinks)

    @staticmethod
    def _train_id_factory(s: AcquisitionSettings):
        if s.train_id_source == "off":
            return None
        if s.train_id_source == "internal":
            from tpx3lib.trainid import CountingTrainIdSource
            start = int(s.train_id_start)
            if start < 1:
                raise ConfigError("TrainIdStart must be >= 1 with the Internal train-ID source "
                                  f"(it is the first train's ID), got {start}")
            CountingTrainIdSource(start)        # the library's own checks, now rather than in a thread
            return lambda chip: CountingTrainIdSource(start)
        offset = int(s.train_id_start)
        return lambda chip: TriggerCounterTrainIdSource(offset)

    def _bridge_sink_factory(self, s: AcquisitionSettings):
        """The Karabo Bridge sink: bound once (clients may connect before a run and stay
        connected across runs), made again only when endpoint, socket type or source change."""
        try:
            from tpx3lib.pipeline.bridge_sink import KaraboBridgeSink
        except ImportError as exc:
            raise ConfigError(f"BridgeEndpoint {s.bridge_endpoint} is set but Karabo Bridge publishing is not "
                              f"available in this version ({exc})") from None
        key = (s.bridge_endpoint, s.bridge_socket_type.upper(), s.source_name or "TPX3/CAM/1:daqOutput")
        with self._lock:
            if self._bridge is not None and self._bridge_key != key:
                self._close_bridge()
            if self._bridge is None:
                try:
                    self._bridge = KaraboBridgeSink(key[0], key[1], key[2], stop_timeout=BRIDGE_STOP_TIMEOUT)
                except ConfigError:
                    raise
                except Exception as exc:  # noqa: BLE001 - ZMQError (address in use, bad endpoint) ...
                    raise ConfigError(f"BridgeEndpoint {key[0]} ({key[1]}) cannot be bound: {exc}") from None
                self._bridge_key = key
            sink = self._bridge
        wait_ids = s.train_id_source != "off"

        def make():
            sink.assembler_options["wait_for_train_ids"] = wait_ids
            return sink
        return make

    @property
    def bridge_endpoint(self) -> str:
        """The bound Karabo Bridge endpoint ('' = not publishing)."""
        sink = self._bridge
        return sink.endpoint if sink is not None else ""

    def _close_bridge(self) -> None:
        sink, self._bridge, self._bridge_key = self._bridge, None, None
        if sink is not None:
            try:
                sink.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the Karabo Bridge sink failed")

    def _run_files_factory(self, s: AcquisitionSettings):
        """European XFEL run files, one run per acquisition: ``OutputDirectory/r<run>/RAW-R<run>-...h5``
        with the next free run number. Run files are indexed by train ID: with TrainIdSource OFF
        none are written (the Status says so) rather than files of trains without IDs."""
        try:
            from tpx3lib.pipeline.exdf_sink import ExdfSink
        except ImportError as exc:
            raise ConfigError(f"OutputDirectory {s.output_directory} is set but run files are not "
                              f"available in this version ({exc})") from None
        base = Path(s.output_directory)
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"OutputDirectory {s.output_directory} cannot be created: {exc}") from None
        if not os.access(base, os.W_OK):
            raise ConfigError(f"OutputDirectory {s.output_directory} is not writable")
        settings = {}
        for k, v in _json_able(dataclasses.asdict(s)).items():
            if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
                v = ",".join(v)              # the run writer keeps numbers, strings and number arrays
            if k != "extra" and v not in ("", None, []):
                settings[f"acquisition.{k}"] = v
        if self._device_name:
            settings["acquisition.tango_device"] = self._device_name

        def make():
            run = _next_run_number(base)
            run_dir = base / f"r{run:04d}"
            compression = None if s.file_compression == "none" else s.file_compression
            sink = ExdfSink(run_dir, run, settings=settings, compression=compression)
            self._run_files = (str(run_dir), run, sink)
            return sink
        return make

    @property
    def status_note(self) -> str:
        """What the device's Status adds: a recording that failed, where the run files go (or
        why there are none)."""
        notes = []
        pipe = self._pipe
        err = getattr(pipe, "recording_error", None) if pipe is not None else None
        if err is not None:
            notes.append(f"Recording failed (the acquisition went on): {type(err).__name__}: {err}")
        elif self._recording_error:
            notes.append(self._recording_error[:1].upper() + self._recording_error[1:])
        s = self._settings
        if s.output_directory and s.train_id_source == "off":
            notes.append("OutputDirectory is set but TrainIdSource is OFF: no run files are written "
                         "(European XFEL run files need train IDs).")
        elif self._run_files is not None:
            base, run, sink = self._run_files
            try:
                c = sink.counters()
            except Exception:  # noqa: BLE001
                c = {}
            notes.append(f"Run files: {base} (run {run}), {c.get('trains_written', 0)} trains written"
                         + (f", {c.get('trains_without_id', 0)} without train ID not written"
                            if c.get("trains_without_id") else ""))
        return "\n".join(notes)

    def _recording_file(self, path: str) -> str:
        p = Path(str(path)).expanduser()
        if p.is_dir() or str(path).endswith(os.sep):
            p = p / f"raw_{datetime.datetime.now():%Y%m%d_%H%M%S}{RAW_SUFFIX}"
        if p.exists():
            raise ConfigError(f"{p} exists; give a new file name (recordings never overwrite)")
        return str(p)

    def _recording_header(self) -> dict:
        s = self._settings
        return {"board": {"address": getattr(self._link, "address", "")},
                "user": {"written_by": "Tpx3Pipeline", "device": self._device_name,
                         "settings": _json_able(dataclasses.asdict(s))}}

    # ---------------------------------------------------------------- the acquisition
    def _board_packets(self) -> dict[int, int]:
        """The board's per-chip UDP packet counters: read now (start, end) or as last polled (running)."""
        if self._board_live and self._board_cache:
            return dict(self._board_cache)
        chips = self._pipe.chips if self._pipe is not None else [0]
        values = self._link.call(lambda b: {c: b[c].pixel_packet_counter for c in chips})
        self._board_cache = values
        return dict(values)

    def _on_pipe_event(self, kind: str, value) -> None:
        if kind == "train":
            self._emit("train", value)
        elif kind == "state" and value is PipelineState.FAULT:
            self._wake.set()
        elif kind == "recording":
            self._emit("refresh", None)

    def _arm_recording(self, pipe) -> None:
        with self._lock:
            path, self._armed_recording = self._armed_recording, ""
            if path:
                try:
                    self._last_recording_path = pipe.start_recording(path, header=self._recording_header())
                except Exception as exc:  # noqa: BLE001 - a recording that cannot start stops nothing else
                    log.error("the armed recording %s could not start: %s", path, exc)
                    self._recording_error = f"the recording {path} could not start: {exc}"
                    self._last_recording_path = ""
        if path:
            self._emit("refresh", None)

    def _open_shutter(self, board, plan: _Plan, ports) -> None:
        from tpx3lib.spidr import OPEN_SHUTTER_TRIGGER, ShutterMode, TriggerConfig

        s = plan.settings
        if s.acquisition_time > 0:
            total = s.acquisition_time * s.frame_count
            length_us = max(1, round(total * 1e6))
            # the board closes the shutter itself after length_us (the host closes it too, at the
            # same time); beyond the 32-bit register the host alone times it
            config = (TriggerConfig(ShutterMode.AUTO, length_us, max(1, int(0.5 / total)), 1)
                      if length_us <= 0xFFFFFFFF else OPEN_SHUTTER_TRIGGER)
        else:
            config = OPEN_SHUTTER_TRIGGER
        with board.controller.lock:
            for c, port in zip(plan.chips, ports):
                board[c].set_destination(plan.board_host, int(port))
            board.enable_decoders(True)
            board.datadriven_readout()
            board.reset_timers()
            board.restart_timers()
            board.trigger_config = config
            board.start_autotrigger()

    @staticmethod
    def _close_shutter(board) -> None:
        from tpx3lib.spidr import CLOSED_SHUTTER_TRIGGER

        with board.controller.lock:
            board.stop_autotrigger()
            board.trigger_config = CLOSED_SHUTTER_TRIGGER

    def _poll_board(self, pipe) -> None:
        values = self._link.call(lambda b: {c: b[c].pixel_packet_counter for c in pipe.chips})
        self._board_cache = values

    def _run(self, plan: _Plan, pipe) -> None:
        s = plan.settings
        shutter = False
        try:
            # A shutter left open (e.g. by a run whose board was lost) would keep streaming to the
            # old destination and count into this run's packets: close it before anything starts.
            self._link.call(self._close_shutter)
            pipe.start()
            self._board_live = True
            self._arm_recording(pipe)
            if not (self._stop_req.is_set() or self._abort_req.is_set()):
                self._link.call(self._open_shutter, plan, pipe.ports)
                shutter = True
                self._emit("refresh", None)
                self._wait_shutter(s, pipe)
                self._link.call(self._close_shutter)
                shutter = False
            if pipe.state is PipelineState.FAULT:
                raise _StageDied(pipe.fault_reason)
            self._board_live = False
            if self._abort_req.is_set():
                self.last_summary = pipe.abort()
            else:
                self.last_summary = pipe.stop(timeout=STOP_TIMEOUT)
            if pipe.state is PipelineState.FAULT:
                raise _StageDied(pipe.fault_reason)
            if s.acquisition_time == 0 and not self._abort_req.is_set():
                self._frames = 1
            self._set_state(PipelineState.IDLE)
        except Exception as exc:  # noqa: BLE001 - a dying stage or a lost board is a FAULT with its reason
            reason = str(exc) or type(exc).__name__
            link_state = getattr(self._link, "state", None)
            if link_state is not None and link_state.value in ("fault", "closed") and not isinstance(exc, _StageDied):
                reason = f"the board was lost: {self._link.reason}"
            if shutter:
                try:
                    self._link.call(self._close_shutter)
                except Exception:  # noqa: BLE001 - the board is probably gone; the reason is already known
                    pass
            self._board_live = True   # the board may be gone: no fresh reads while cleaning up
            try:
                self.last_summary = pipe.abort()
            except Exception:  # noqa: BLE001
                log.exception("aborting the live pipeline failed")
            self._set_state(PipelineState.FAULT, reason)
        finally:
            self._board_live = False

    def _wait_shutter(self, s: AcquisitionSettings, pipe) -> None:
        """Until the timed acquisition is over, Stop/Abort, or a fault; counts frames, polls the board."""
        t0 = time.monotonic()
        total = s.acquisition_time * s.frame_count if s.acquisition_time > 0 else None
        next_poll = t0 + BOARD_POLL_INTERVAL
        while True:
            now = time.monotonic()
            if total is not None:
                elapsed = now - t0
                self._frames = min(s.frame_count, int(elapsed / s.acquisition_time))
                if elapsed >= total:
                    self._frames = s.frame_count
                    return
            if self._stop_req.is_set() or self._abort_req.is_set() or pipe.state is PipelineState.FAULT:
                return
            if now >= next_poll:
                self._poll_board(pipe)
                next_poll = time.monotonic() + BOARD_POLL_INTERVAL
            wait = TICK if total is None else max(0.0, min(TICK, t0 + total - time.monotonic()))
            self._wake.wait(wait)
            self._wake.clear()


class _StageDied(Exception):
    """A stage of the live pipeline failed (the message is the pipeline's fault reason)."""


def _next_run_number(base: Path) -> int:
    """One above the highest run directory ``base/r<NNNN>``, 1 for none."""
    used = [int(p.name[1:]) for p in base.glob("r[0-9][0-9][0-9][0-9]") if p.name[1:].isdigit()]
    run = (max(used) + 1) if used else 1
    if run > 9999:
        raise ConfigError(f"{base} already holds run 9999: choose another OutputDirectory")
    return run


def _json_able(obj):
    if isinstance(obj, dict):
        return {str(k): _json_able(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_able(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
