"""The board-counters pipeline behind Tpx3Pipeline (``PipelineBackend = board-counters``).

It was the provisional backend until the live pipeline existed; it stays selectable as a
control-only mode (no data path at all: nothing is bound, received, decoded or recorded).

It implements :class:`tango_tpx3.pipeline_iface.Pipeline` with the simplest real thing
available: it opens the board's shutter for the acquisition time (per frame) through the
shared controller and reports what the *board* counts - pixel packets, UDP packets and
triggers it sent, shutters it opened. It receives and decodes nothing: HitMap and
TofHistogram stay zero, no Karabo Bridge publishing, no recording (StartRecording is
refused with a message saying so). Its ``status_note`` puts this in the device's Status.

The real backend is :mod:`tango_tpx3.live_backend` (the default), see :mod:`tango_tpx3.backends`.
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from tpx3lib.pipeline.state import StateReporter

from tpx3lib.errors import ConfigError

from tango_tpx3.common import ensure_omni_thread, parse_address
from tango_tpx3.pipeline_iface import (
    AcquisitionSettings, PipelineState, empty_statistics, validate_settings,
)

__all__ = ["BoardCounterPipeline", "make_pipeline"]

log = logging.getLogger(__name__)

#: Seconds between counter reads while acquiring (statistics and events follow it).
UPDATE_INTERVAL = 0.25


class BoardCounterPipeline(StateReporter):
    """Shutter control and board counters through a :class:`tango_tpx3.board_link.BoardLink`."""

    backend_name = "board-counters"
    status_note = ("PipelineBackend board-counters: opens the shutter and reports the board's own counters; "
                   "no data are received or decoded (HitMap/TofHistogram stay 0), nothing is published or recorded.")

    def __init__(self, link):
        self._link = link
        self._lock = threading.RLock()
        self._init_state()
        self._settings = AcquisitionSettings()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stats = empty_statistics()
        self._hit_map = np.zeros((256, 256), np.uint32)
        self._tof = np.zeros(self._settings.tof_bins, np.uint32)

    # ---------------------------------------------------------------- Pipeline protocol
    @property
    def recording(self) -> bool:
        return False

    @property
    def recording_path(self) -> str:
        return ""

    def prepare(self, settings: AcquisitionSettings) -> None:
        validate_settings(settings)
        with self._lock:
            if self._state is PipelineState.RUNNING:
                raise ConfigError("cannot prepare while acquiring")
            self._settings = settings
            if self._state is PipelineState.FAULT:
                self._set_state(PipelineState.IDLE)

    def start(self) -> None:
        """Open the shutter (first frame) before returning; the rest runs in a thread."""
        with self._lock:
            if self._state is PipelineState.RUNNING:
                raise ConfigError("already acquiring")
            if self._state is PipelineState.FAULT:
                raise ConfigError(f"the pipeline failed ({self._fault_reason}); Prepare or Init first")
            settings = self._settings
            chips = settings.chips or (0,)
            self._link.call(self._readout_on, settings, chips)
            counters = self._link.call(self._counters, chips)
            deadline = self._open_frame(settings)
            self._stop.clear()
            self._hit_map = np.zeros((256, 256), np.uint32)
            self._tof = np.zeros(settings.tof_bins, np.uint32)
            self._stats = empty_statistics()      # counters are per acquisition
            self._state = PipelineState.RUNNING
            self._fault_reason = ""
            self._thread = threading.Thread(target=ensure_omni_thread(self._run),
                                            args=(settings, chips, counters, deadline),
                                            name="provisional-pipeline", daemon=True)
            self._thread.start()
        self._emit("state", PipelineState.RUNNING)

    def stop(self) -> None:
        self._stop.set()

    def abort(self) -> None:
        self._stop.set()

    def reset(self) -> None:
        with self._lock:
            if self._state is PipelineState.FAULT:
                self._set_state(PipelineState.IDLE)

    def statistics(self) -> dict:
        with self._lock:
            return dict(self._stats)

    def hit_map(self) -> np.ndarray:
        return self._hit_map

    def tof_histogram(self) -> np.ndarray:
        return self._tof

    def start_recording(self, path: str) -> str:
        raise ConfigError("PipelineBackend board-counters cannot record: it receives no data "
                          "(set the PipelineBackend property to 'live' and Init)")

    def stop_recording(self) -> None:
        return None

    def reset_counters(self) -> None:
        with self._lock:
            frames = self._stats.get("frames_completed", 0)
            self._stats = empty_statistics()
            self._stats["frames_completed"] = frames
            self._hit_map = np.zeros_like(self._hit_map)
            self._tof = np.zeros_like(self._tof)

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout=5)

    # ---------------------------------------------------------------- the acquisition
    def _counters(self, board, chips) -> dict[str, int]:
        return {
            "pixels": sum(board[c].pixel_packet_counter for c in chips if c < len(board)),
            "udp": board.udp_packet_counter,
            "triggers": board.tdc_trigger_counter,
        }

    def _update(self, now: dict, last: dict, dt: float) -> None:
        def delta(key, a, b):
            return (b[key] - a[key]) & 0xFFFFFFFF  # 32-bit registers wrap
        with self._lock:
            s = self._stats
            s["hits_total"] += delta("pixels", last, now)
            s["packets_received"] += delta("udp", last, now)
            s["triggers_total"] += delta("triggers", last, now)
            if dt > 0:
                s["hit_rate"] = delta("pixels", last, now) / dt
                s["trigger_rate"] = delta("triggers", last, now) / dt

    def _train_id(self, settings: AcquisitionSettings, frame: int, triggers: int) -> int:
        if settings.train_id_source == "internal":
            return settings.train_id_start + frame
        if settings.train_id_source == "trigger":
            return settings.train_id_start + triggers
        return 0

    @staticmethod
    def _readout_on(board, settings: AcquisitionSettings, chips) -> None:
        """Point the chips' UDP data at DataDestination (if set), decoders and data-driven readout on."""
        with board.controller.lock:
            if settings.data_destination:
                host, port = parse_address(settings.data_destination)
                for c in chips:
                    board[c].set_destination(host, port + c)
            board.enable_decoders(True)
            board.datadriven_readout()

    def _open_frame(self, settings: AcquisitionSettings) -> float | None:
        """Open the shutter for one frame; returns when it should close (None: until stopped)."""
        from tpx3lib.spidr import ShutterMode, TriggerConfig

        if settings.acquisition_time == 0:
            self._link.call(lambda b: b.open_shutter())
            return None
        length_us = max(1, round(settings.acquisition_time * 1e6))
        config = TriggerConfig(ShutterMode.AUTO, length_us, max(1, int(0.5 / settings.acquisition_time)), 1)

        def open_timed(b):
            with b.controller.lock:
                b.trigger_config = config
                b.start_autotrigger()
        self._link.call(open_timed)
        return time.monotonic() + settings.acquisition_time

    def _run(self, settings: AcquisitionSettings, chips, last: dict, deadline: float | None) -> None:
        link = self._link
        opened = True
        last_t = time.monotonic()
        try:
            frames = 1 if settings.acquisition_time == 0 else settings.frame_count
            for frame in range(frames):
                if frame > 0:
                    if self._stop.is_set():
                        break
                    deadline = self._open_frame(settings)
                    opened = True
                while True:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    wait = UPDATE_INTERVAL if remaining is None else min(UPDATE_INTERVAL, remaining)
                    if self._stop.wait(wait):
                        break
                    now = link.call(self._counters, chips)
                    t = time.monotonic()
                    self._update(now, last, t - last_t)
                    last, last_t = now, t
                link.call(lambda b: b.stop_autotrigger())
                opened = False
                now = link.call(self._counters, chips)
                t = time.monotonic()
                self._update(now, last, t - last_t)
                last, last_t = now, t
                if self._stop.is_set() and settings.acquisition_time != 0:
                    break      # a timed frame cut short is not a completed frame
                with self._lock:
                    self._stats["frames_completed"] = frame + 1
                    self._stats["trains_published"] += 1
                    self._stats["current_train_id"] = self._train_id(
                        settings, frame, self._stats["triggers_total"])
                    train_id = self._stats["current_train_id"]
                self._emit("train", train_id)
            with self._lock:
                for key in ("hit_rate", "trigger_rate", "centroid_rate", "data_rate"):
                    self._stats[key] = 0.0
            self._set_state(PipelineState.IDLE)
        except Exception as exc:  # noqa: BLE001 - a dying stage is a FAULT with its reason
            log.error("provisional pipeline failed: %s", exc)
            if opened:
                try:
                    link.call(lambda b: b.stop_autotrigger())
                except Exception:  # noqa: BLE001 - the board is probably gone; the reason is already known
                    pass
            self._set_state(PipelineState.FAULT, str(exc))


def make_pipeline(backend: str, link):
    """Kept for old imports: see :func:`tango_tpx3.backends.make_pipeline`."""
    from tango_tpx3.backends import make_pipeline as make
    return make(backend, link)
