"""``LivePipeline``: capture -> (record) -> decode -> events -> clusters -> sinks, live.

    pipe = LivePipeline(chips=[0], processing=ProcessingConfig(products=("events", "centroids")),
                        sinks=[my_sink])
    pipe.start()                    # UDP sockets bound (pipe.ports), receivers and processors running
    ... the board sends to 127.0.0.1:pipe.ports[i] ...
    pipe.start_recording("run.tpx3raw")   # any time while running
    summary = pipe.stop()           # drains everything received, flushes, stops the sinks

How it is wired (see docs/pipeline.md):

- one receiver **process** per chip (:class:`~tpx3lib.capture.Capture`) reads the UDP
  socket straight into a shared-memory ring;
- one processing **thread** per chip reads that ring in order and runs a
  :class:`~tpx3lib.pipeline.processor.ChipProcessor` (the same chain as ``tpx3 process``;
  its numba kernels release the GIL), so a chip's stream is never split between workers
  and a trigger always meets its pixels;
- the raw recorder is another reader of the same ring (a thread), started and stopped
  at will; with the capture's "block" policy a slow reader applies backpressure to its
  receiver (the kernel's socket buffer absorbs it; what the kernel drops is counted),
  with "overrun" it is evicted and the records it missed are counted;
- sinks get every chunk, per chip in order; several chips call them concurrently.

A monitor thread watches the receivers, the processing threads and the sinks: a dead
stage puts the pipeline in ``FAULT`` with a reason naming it, stops the rest, and
:meth:`stop` / :meth:`abort` still return. :meth:`reset` goes back to ``IDLE``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, Tpx3Error
from .processor import ChipProcessor, ProcessedChunk, ProcessingConfig
from .sinks import CallbackSink, Sink, StatisticsSink
from .state import PipelineState, StateReporter

__all__ = ["LivePipeline", "PipelineError", "recording_paths"]

log = logging.getLogger("tpx3lib.pipeline")

_INT64_MAX = np.iinfo(np.int64).max


class PipelineError(Tpx3Error, RuntimeError):
    """The pipeline was used wrongly (e.g. started twice) or could not start."""


def recording_paths(path, chips: Sequence[int]) -> dict[int, Path]:
    """Where each chip's raw file goes: ``path`` itself for one chip, else
    ``<stem>_chip<i><suffix>`` next to it (one native raw file per chip stream)."""
    path = Path(path)
    if len(chips) == 1:
        return {chips[0]: path}
    return {c: path.with_name(f"{path.stem}_chip{c}{path.suffix}") for c in chips}


class _MessageSink(CallbackSink):
    """The high-level API's ``deliver(MessageType, data)`` as a sink (every product it gets)."""

    def __init__(self, deliver, products):
        super().__init__(products=products, callback=deliver)


_END = object()       # end of a chip's stream on the hand-over queue


def _yield_to_receivers(nice: int) -> None:
    """Lower the calling thread's scheduling priority by ``nice`` (Linux: per thread).

    The receiver processes must never wait for a core: a socket buffer holds only
    milliseconds of data, while the rings hold the processing's backlog. Lowering our
    own threads needs no privilege (raising the receivers' would)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:
        log.debug("cannot lower the priority of %s: %s", threading.current_thread().name, exc)


class _ChipWorker(threading.Thread):
    """Reads one chip's ring in order, processes it and hands the chunks to the sinks.

    With ``split_stages`` the work is two threads connected by a short FIFO queue, in
    order: this one reads, decodes and builds events (:meth:`ChipProcessor.event_stage`),
    the second clusters and delivers (:meth:`ChipProcessor.cluster_stage`). Both run
    numba kernels that release the GIL, so one chip's processing can use two cores while
    its stream stays in one ordered chain. A full queue holds back the reader (and so
    the ring: the capture's policy applies).
    """

    HANDOVER_CHUNKS = 2

    def __init__(self, pipe: "LivePipeline", chip: int, ring_name: str, processor: ChipProcessor,
                 split_stages: bool = False):
        super().__init__(name=f"tpx3-process-chip{chip}", daemon=True)
        from ..capture import RingReader
        self.pipe, self.chip, self.processor = pipe, chip, processor
        self.reader = RingReader(ring_name, start="oldest")
        self.error: BaseException | None = None
        self.error_stage = ""
        self.abort = threading.Event()
        self.finished = threading.Event()
        self.counts = dict(datagrams=0, bytes=0, words=0, tail_bytes=0, chunks=0)
        self.complete_until = np.iinfo(np.int64).min
        self._handover: queue.Queue | None = None
        self._cluster_thread: threading.Thread | None = None
        if split_stages:
            self._handover = queue.Queue(maxsize=self.HANDOVER_CHUNKS)
            self._cluster_thread = threading.Thread(target=self._cluster_loop, name=f"tpx3-cluster-chip{chip}",
                                                    daemon=True)

    def _failed(self, exc: BaseException, stage: str) -> None:
        if self.error is None:
            self.error, self.error_stage = exc, stage
        log.error("%s of chip %d failed: %s: %s", stage, self.chip, type(exc).__name__, exc)
        self.abort.set()         # the other stage stops too; the monitor reports the fault

    def run(self) -> None:
        try:
            if self._cluster_thread is not None:
                self._cluster_thread.start()
            self._loop()
        except BaseException as exc:     # reported by the monitor as the stage's fault
            self._failed(exc, "processing")
        finally:
            try:
                self.reader.close()      # a dead processor must not hold back a "block" capture
            except Exception:
                pass
            if self._cluster_thread is not None:
                self._hand_over(_END)
                self._cluster_thread.join()
            self.finished.set()

    def _loop(self) -> None:
        _yield_to_receivers(self.pipe.processing_nice)
        reader, pipe = self.reader, self.pipe
        max_bytes = pipe.read_bytes
        while not self.abort.is_set():
            batch = reader.read(max_bytes=max_bytes, timeout=0.05)
            if len(batch):
                words, counts = self._words(batch)
                t0 = int(batch.recv_time_ns[0])
                reader.release(batch)
                pipe.stats.on_raw(self.chip, words, t0)
                if pipe._raw_wanted:
                    pipe._deliver_raw(self.chip, words, t0)
                self._hand_over((self.processor.event_stage(words), counts))
            elif reader.eof:
                break
        if not self.abort.is_set():
            self._hand_over((self.processor.event_stage(None, final=True), None))

    def _hand_over(self, item) -> None:
        """To the cluster stage (this thread's when the stages are not split)."""
        if self._handover is None:
            if item is not _END:
                self._finish(*item)
            return
        while True:
            try:
                self._handover.put(item, timeout=0.05)
                return
            except queue.Full:
                if self.abort.is_set() or not self._cluster_thread.is_alive():
                    return

    def _cluster_loop(self) -> None:
        try:
            _yield_to_receivers(self.pipe.processing_nice)
            while True:
                try:
                    item = self._handover.get(timeout=0.05)
                except queue.Empty:
                    if self.abort.is_set():
                        return
                    continue
                if item is _END or self.abort.is_set():
                    return
                self._finish(*item)
        except BaseException as exc:
            self._failed(exc, "clustering")

    def _finish(self, part, counts) -> None:
        chunk = self.processor.cluster_stage(part)
        if counts is not None:        # datagrams count as processed once their chunk is delivered
            for k, v in counts.items():
                self.counts[k] += v
        self._deliver(chunk)

    def _words(self, batch) -> tuple[np.ndarray, dict]:
        """The batch's whole 64-bit words back to back (a malformed datagram's tail is counted)."""
        lengths = batch.lengths
        c = dict(datagrams=len(batch), bytes=int(lengths.sum()), tail_bytes=0)
        whole = lengths & ~7
        if (whole != lengths).any():
            c["tail_bytes"] = int((lengths - whole).sum())
            parts = [batch.payload(i)[: int(whole[i])] for i in range(len(batch))]
        else:
            parts = [batch.payload(i) for i in range(len(batch))]
        data = parts[0].copy() if len(parts) == 1 else np.concatenate(parts)
        words = data.view("<u8")
        c["words"] = words.size
        return words, c

    def _deliver(self, chunk: ProcessedChunk) -> None:
        self.counts["chunks"] += 1
        self.complete_until = max(self.complete_until, chunk.complete_until)
        self.pipe._deliver_chunk(chunk)


class LivePipeline(StateReporter):
    """The live acquisition pipeline (see the module docstring).

    Parameters
    ----------
    chips, ports, host : chip indices, one UDP port per chip (default 8192 + chip; 0 picks a
        free one, see :attr:`ports` after :meth:`start`) and the address to bind (loopback).
    processing : a :class:`ProcessingConfig` for every chip (its ``chip`` is replaced by each
        chip's index) or ``{chip: ProcessingConfig}``.
    sinks : :class:`~tpx3lib.pipeline.sinks.Sink` objects receiving every chunk.
    train_id_source : ``chip -> TrainIdSource`` (e.g. ``lambda c: CountingTrainIdSource(start)``);
        events and centroids then carry train IDs; None: train ID 0.
    capture_options : keyword arguments of :class:`~tpx3lib.capture.Capture` (ring_bytes,
        policy, rcvbuf_bytes, ...).
    board_packets : ``() -> {chip: datagrams the board says it sent}`` (the SPIDR UDP packet
        counters, read at start and at stop); makes "sent vs received" and losses visible.
    listener : ``fn(kind, value)``: ``("state", PipelineState)`` on every change,
        ``("train", train_id)`` when a train's data are complete, ``("fault", reason)``.
    linger_s : at :meth:`stop`, how long the socket must stay quiet before the capture is
        stopped (datagrams still in flight from the board are kept), at most ``timeout``.
    split_stages : run each chip's clustering in a second thread, after its decoding and
        event building (ordered hand-over); None: when centroiding on a machine with at
        least two cores.
    processing_nice : how much lower than the receivers the processing threads are scheduled
        (``nice`` steps; 0: the same): the receivers then get a core the moment data arrive.
    keep_freed_memory : at :meth:`start`, tell the C allocator to keep freed memory for reuse
        (:func:`tpx3lib.memory.keep_freed_memory`; process-wide): each chunk's arrays are
        megabytes, and fresh memory costs page faults on every chunk.
    """

    def __init__(self, chips: Sequence[int] = (0,), ports: Sequence[int] | None = None, host: str = "127.0.0.1",
                 processing: ProcessingConfig | Mapping[int, ProcessingConfig] | None = None,
                 sinks: Iterable[Sink] = (), *, train_id_source: Callable[[int], object] | None = None,
                 capture_options: dict | None = None, board_packets: Callable[[], Mapping[int, int]] | None = None,
                 listener: Callable[[str, object], None] | None = None, linger_s: float = 0.2,
                 read_bytes: int = 8 << 20, stats_window_s: float = 1.0, tof_range_s=(0.0, 1e-3),
                 tof_bins: int = 500, monitor_interval_s: float = 0.1, split_stages: bool | None = None,
                 keep_freed_memory: bool = True, processing_nice: int = 5):
        self.chips = [int(c) for c in chips]
        if not self.chips or len(set(self.chips)) != len(self.chips):
            raise ConfigError(f"chips must be distinct chip indices, got {list(chips)}")
        self.ports_requested = None if ports is None else [int(p) for p in ports]
        if self.ports_requested is not None and len(self.ports_requested) != len(self.chips):
            raise ConfigError(f"need one UDP port per chip: chips {self.chips}, ports {self.ports_requested}")
        self.host = host
        self.processing = self._per_chip(processing)
        self.sinks: list[Sink] = list(sinks)
        self.train_id_source = train_id_source
        self.capture_options = dict(capture_options or {})
        self.board_packets = board_packets
        self.linger_s = float(linger_s)
        self.read_bytes = int(read_bytes)
        self.monitor_interval_s = float(monitor_interval_s)
        self.split_stages = split_stages
        self.processing_nice = int(processing_nice)
        self.keep_freed_memory = bool(keep_freed_memory)
        self.stats = StatisticsSink(window_s=stats_window_s, tof_range_s=tof_range_s, tof_bins=tof_bins)
        self._init_state(listener)
        self._lock = threading.RLock()          # state changes, start/stop
        self._sink_lock = threading.Lock()      # the sink list while delivering
        self._capture = None
        self._workers: dict[int, _ChipWorker] = {}
        self._monitor: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        self._recorders: dict = {}
        self._recording_path = ""
        self.recording_error: BaseException | None = None
        self.last_recording: dict = {}
        self._raw_wanted = False
        self._active_sinks: list[Sink] = []
        self._sink_errors: dict[str, str] = {}
        self._board_at_start: dict[int, int] = {}
        self._final: dict = {}
        self._last_train_id = 0
        self._trains_completed = 0
        self._pending_trains: list[tuple[int, int]] = []   # (trigger time, train id), by time
        self._train_lock = threading.Lock()
        self.runs = 0
        self._start_time_ns = 0
        self._stop_fault = None

    def _per_chip(self, processing) -> dict[int, ProcessingConfig]:
        if processing is None:
            processing = ProcessingConfig(products=("events", "centroids"))
        if isinstance(processing, ProcessingConfig):
            return {c: dataclasses.replace(processing, chip=c) for c in self.chips}
        missing = [c for c in self.chips if c not in processing]
        if missing:
            raise ConfigError(f"no ProcessingConfig for chip(s) {missing}")
        return {c: dataclasses.replace(processing[c], chip=c) for c in self.chips}

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self._state is PipelineState.RUNNING

    @property
    def ports(self) -> list[int]:
        """The UDP port of each chip (the bound ones while running or after a run)."""
        if self._capture is not None:
            return self._capture.ports
        if self._final.get("ports"):
            return list(self._final["ports"])
        return self.ports_requested or [8192 + c for c in self.chips]

    # ------------------------------------------------------------------ sinks
    def add_sink(self, sink: Sink) -> None:
        """Add a sink; while running it starts at once and gets the chunks from now on."""
        with self._sink_lock:
            self.sinks.append(sink)
            if self.running:
                sink.start(self._info())
                self._active_sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        with self._sink_lock:
            self.sinks.remove(sink)
            if sink in self._active_sinks:
                self._active_sinks.remove(sink)
                sink.stop()

    def _info(self) -> dict:
        cfg0 = self.processing[self.chips[0]]
        return {"chips": list(self.chips), "products": cfg0.products,
                "config": {c: cfg.to_dict() for c, cfg in self.processing.items()},
                "event_window_s": cfg0.event_window_s, "start_time_ns": self._start_time_ns,
                "ports": self.ports, "train_ids": self.train_id_source is not None}

    def _deliver_chunk(self, chunk: ProcessedChunk) -> None:
        self._track_trains(chunk)
        self.stats.on_chunk(chunk)
        for sink in self._active_sinks:
            try:
                sink.on_chunk(chunk)
            except Exception as exc:   # a sink is a stage: its death is a fault, never silent
                self._sink_failed(sink, exc)

    def _deliver_raw(self, chip: int, words: np.ndarray, recv_time_ns: int) -> None:
        for sink in self._active_sinks:
            try:
                sink.on_raw(chip, words, recv_time_ns)
            except Exception as exc:
                self._sink_failed(sink, exc)

    def _sink_failed(self, sink: Sink, exc: BaseException) -> None:
        name = type(sink).__name__
        with self._sink_lock:
            if sink in self._active_sinks:
                self._active_sinks.remove(sink)
            self._sink_errors[name] = f"{type(exc).__name__}: {exc}"
        log.error("sink %s failed: %s: %s", name, type(exc).__name__, exc)

    # ------------------------------------------------------------------ trains
    def _track_trains(self, chunk: ProcessedChunk) -> None:
        """Announce ("train", id) once every chip has delivered all data of that train."""
        cfg = self.processing[self.chips[0]]
        with self._train_lock:
            if chunk.chip == self.chips[0]:
                if self.train_id_source is not None:
                    new = zip(chunk.trains["time"].tolist(), chunk.trains["train_id"].tolist())
                else:       # no train IDs: each trigger is a "train" with ID 0
                    tdc = chunk.triggers
                    sel = (tdc["tdc"] == cfg.trigger_tdc) & (tdc["rising"] == (cfg.trigger_edge == "rising"))
                    new = ((t, 0) for t in tdc["time"][sel].tolist())
                self._pending_trains.extend((int(t), int(i)) for t, i in new)
                self._pending_trains.sort()
            if not self._pending_trains:
                return
            until = min(w.complete_until for w in self._workers.values())
            win = cfg.event_window_s
            hi = 0 if win is None else int(win[1] / (25e-9 / 4096))
            done = [p for p in self._pending_trains if p[0] + hi < until]
            if not done:
                return
            self._pending_trains = self._pending_trains[len(done):]
            self._trains_completed += len(done)
            self._last_train_id = done[-1][1] or self._last_train_id
        for _, tid in done:
            self._emit("train", tid)

    # ------------------------------------------------------------------ lifecycle
    def start(self, deliver: Callable | None = None) -> "LivePipeline":
        """Bind the sockets, start receivers, processors and sinks; returns once data can arrive.

        ``deliver``: the high-level API's ``deliver(MessageType, data)`` (what
        :meth:`tpx3lib.api.Tpx3Connection.attach_pipeline` passes); it gets every product
        the processing makes. Raises :class:`PipelineError` when running or in FAULT
        (call :meth:`reset`), :class:`~tpx3lib.capture.CaptureError` when a socket cannot
        be bound (nothing stays started).
        """
        from ..capture import Capture
        if self.keep_freed_memory:
            from ..memory import keep_freed_memory
            keep_freed_memory()
        with self._lock:
            if self._state is PipelineState.RUNNING:
                raise PipelineError("the pipeline is already running")
            if self._state is PipelineState.FAULT:
                raise PipelineError(f"the pipeline is in FAULT ({self._fault_reason}); call reset() first")
            self._start_time_ns = time.time_ns()
            self._final = {}
            self._stop_fault = None
            self._sink_errors = {}
            self._pending_trains = []
            self._trains_completed = 0
            self.recording_error = None
            self._msg_sink = None
            if deliver is not None:
                products = ["raw"] + list(self.processing[self.chips[0]].products)
                self._msg_sink = _MessageSink(deliver, [p for p in dict.fromkeys(products)])
            opts = dict(self.capture_options)
            cap = Capture(self.chips, self.ports_requested, host=self.host, **opts)
            cap.start()
            try:
                self._board_at_start = self._read_board_packets() or {}
                self._capture = cap
                self._workers = {}
                for c in self.chips:
                    assigner = None
                    if self.train_id_source is not None:
                        from ..trainid import TrainIdAssigner
                        cfg = self.processing[c]
                        assigner = TrainIdAssigner(self.train_id_source(c), tdc=cfg.trigger_tdc,
                                                   edge=cfg.trigger_edge)
                    proc = ChipProcessor(self.processing[c], train_ids=assigner)
                    self._workers[c] = _ChipWorker(self, c, cap.ring_name(c), proc, self._split(proc))
                self.stats.reset()
                sinks = list(self.sinks) + ([self._msg_sink] if self._msg_sink else [])
                self._raw_wanted = any(type(s).on_raw is not Sink.on_raw for s in sinks)
                started = []
                info = self._info()
                for s in sinks:
                    s.start(info)
                    started.append(s)
                self._active_sinks = started
                for w in self._workers.values():
                    w.start()
            except BaseException:
                for w in self._workers.values():
                    w.abort.set()
                cap.stop(timeout=2.0)
                self._capture = None
                for w in self._workers.values():
                    if not w.is_alive():
                        w.reader.close()
                raise
            self._monitor_stop.clear()
            self._monitor = threading.Thread(target=self._watch, name="tpx3-pipeline-monitor", daemon=True)
            self._monitor.start()
            self.runs += 1
        self._set_state(PipelineState.RUNNING)
        log.info("pipeline started: chips %s on UDP ports %s", self.chips, self.ports)
        return self

    def _split(self, proc: ChipProcessor) -> bool:
        if self.split_stages is not None:
            return bool(self.split_stages)
        return proc.clusterer is not None and (os.cpu_count() or 1) >= 2

    def _read_board_packets(self) -> dict[int, int] | None:
        if self.board_packets is None:
            return None
        try:
            return {int(k): int(v) for k, v in self.board_packets().items()}
        except Exception as exc:   # the board may be gone; losses are then unknown, said so
            log.warning("cannot read the board's packet counters: %s", exc)
            return None

    def _watch(self) -> None:
        while not self._monitor_stop.wait(self.monitor_interval_s):
            reason = self._find_fault()
            if reason:
                self._fail(reason)
                return
            self._check_recorders()

    def _find_fault(self) -> str:
        cap = self._capture
        f = cap.fault if cap is not None else self._stop_fault
        if f is not None:
            return f"capture: {f}"
        for c, w in self._workers.items():
            if w.error is not None:
                return f"{w.error_stage} of chip {c}: {type(w.error).__name__}: {w.error}"
        if self._sink_errors:
            name, err = next(iter(self._sink_errors.items()))
            return f"sink {name}: {err}"
        return ""

    def _fail(self, reason: str) -> None:
        """A stage died: stop everything else at once, keep what can be kept, go to FAULT."""
        with self._lock:
            if self._state is not PipelineState.RUNNING:
                return
            self._teardown(drain=False)
        self._set_state(PipelineState.FAULT, reason)

    def stop(self, timeout: float = 10.0) -> dict:
        """End the run: wait until the sockets are quiet (``linger_s``), stop the receivers,
        process everything they received, flush, stop the recording and the sinks.

        Always returns (within about ``timeout`` + a few seconds) the run summary
        (:meth:`counters` at the end). Harmless when idle; in FAULT it only cleans up.
        """
        with self._lock:
            if self._state is not PipelineState.RUNNING:
                return dict(self._final)
            self._monitor_stop.set()
            self._linger(timeout)
            summary = self._teardown(drain=True, timeout=timeout)
        reason = self._find_fault() if not summary.get("aborted") else ""
        self._set_state(PipelineState.FAULT if reason else PipelineState.IDLE, reason)
        return summary

    def abort(self) -> dict:
        """End the run as fast as possible, dropping what is in flight (counted in the summary)."""
        with self._lock:
            if self._state is not PipelineState.RUNNING:
                return dict(self._final)
            self._monitor_stop.set()
            summary = self._teardown(drain=False)
        self._set_state(PipelineState.IDLE)
        return summary

    def reset(self) -> None:
        """Leave FAULT (after cleaning up); harmless otherwise."""
        with self._lock:
            if self._state is PipelineState.RUNNING:
                return
        self._set_state(PipelineState.IDLE)

    def close(self) -> None:
        self.abort()

    def __enter__(self) -> "LivePipeline":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _linger(self, timeout: float) -> None:
        """Wait until no datagram arrived for ``linger_s`` (bounded by ``timeout``)."""
        if self.linger_s <= 0 or self._capture is None:
            return
        deadline = time.monotonic() + timeout
        last = None
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            try:
                now_counts = tuple(c.get("datagrams", 0) for c in self._capture.counters.values())
            except Exception:
                return
            if now_counts != last:
                last, quiet_since = now_counts, time.monotonic()
            elif time.monotonic() - quiet_since >= self.linger_s:
                return
            time.sleep(min(0.02, self.linger_s / 4))

    def _teardown(self, drain: bool, timeout: float = 10.0) -> dict:
        """Stop capture, processors, recorders and sinks; build the final summary."""
        cap, workers = self._capture, self._workers
        if not drain:
            for w in workers.values():
                w.abort.set()
        recording = self._stop_recorders()
        final_capture = cap.stop(timeout=min(timeout, 5.0)) if cap is not None else {}
        self._stop_fault = cap.fault if cap is not None else None
        deadline = time.monotonic() + timeout
        for w in workers.values():
            w.join(max(0.1, deadline - time.monotonic()))
        stuck = [c for c, w in workers.items() if w.is_alive()]
        for c in stuck:
            log.error("processing of chip %d did not finish in %.1f s; abandoned", c, timeout)
            workers[c].abort.set()
        with self._sink_lock:
            sinks, self._active_sinks = self._active_sinks, []
        for s in sinks:
            try:
                s.stop()
            except Exception as exc:
                self._sink_errors[type(s).__name__] = f"{type(exc).__name__}: {exc}"
                log.error("sink %s failed to stop: %s", type(s).__name__, exc)
        self._monitor_stop.set()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(2.0)
        board_end = self._read_board_packets()
        self._capture = None
        self._final = self._summary(final_capture, workers, recording, board_end, aborted=not drain,
                                    stuck=stuck)
        return dict(self._final)

    # ------------------------------------------------------------------ recording
    @property
    def recording(self) -> bool:
        return any(r.running for r in self._recorders.values())

    @property
    def recording_path(self) -> str:
        """The file being written (the first chip's when there are several), "" when not recording."""
        return self._recording_path if self._recorders else ""

    def start_recording(self, path, header: dict | None = None) -> str:
        """Record the raw datagrams from now on into native raw file(s) (see :func:`recording_paths`).

        Returns the first file's path. Raises :class:`PipelineError` when not running or
        already recording, :class:`~tpx3lib.files.exceptions.RawWriteError` / ``OSError``
        when a file cannot be created (nothing is recorded then).
        """
        from ..capture.recorder import RawRecorder
        from ..files.header import make_header
        with self._lock:
            if not self.running or self._capture is None:
                raise PipelineError("recording needs a running acquisition")
            if self._recorders:
                raise PipelineError(f"already recording to {self._recording_path}")
            paths = recording_paths(path, self.chips)
            started = {}
            try:
                for c, p in paths.items():
                    p.parent.mkdir(parents=True, exist_ok=True)
                    h = dict(header) if header else {}
                    chips = h.pop("chips", None) or [{"index": c}]
                    chips = [d for d in chips if int(d.get("index", c)) == c] or [{"index": c}]
                    hdr = make_header(chips=chips, start_time_ns=time.time_ns(),
                                      capture={"chip": c, "port": self.ports[self.chips.index(c)]},
                                      **{k: v for k, v in h.items() if k != "start_time_ns"})
                    rec = RawRecorder(self._capture.ring_name(c), p, chip=c, header=hdr, capture=self._capture,
                                      start="newest")
                    rec.start()
                    started[c] = rec
            except BaseException:
                for rec in started.values():
                    rec.stop()
                raise
            self._recorders = started
            self._recording_path = str(paths[self.chips[0]])
            self.recording_error = None
        log.info("recording to %s", ", ".join(str(p) for p in paths.values()))
        return self._recording_path

    def stop_recording(self) -> dict:
        """Write what was captured until now and close the file(s); returns per-chip stats
        (with ``path`` and ``error``). Harmless when not recording."""
        with self._lock:
            return self._stop_recorders()

    def _stop_recorders(self) -> dict:
        recs, self._recorders = self._recorders, {}
        out = {}
        for c, rec in recs.items():
            st = rec.stop()
            st["path"] = rec.path
            st["error"] = None if rec.error is None else f"{type(rec.error).__name__}: {rec.error}"
            if rec.error is not None and self.recording_error is None:
                self.recording_error = rec.error
            out[c] = st
        if out:
            self.last_recording = out
        return out

    def _check_recorders(self) -> None:
        """A recorder that failed (disk full, I/O error) stops the recording, not the run."""
        for c, rec in list(self._recorders.items()):
            if rec.error is not None and not rec.running:
                log.error("recording of chip %d stopped: %s (the acquisition goes on)", c, rec.error)
                with self._lock:
                    self._stop_recorders()
                self._emit("recording", False)
                return

    # ------------------------------------------------------------------ numbers
    def counters(self) -> dict:
        """Per chip: capture counters (datagrams, bytes, kernel_drops, overruns, ...),
        what the processor read and its stage counters; totals; board packets. Live while
        running, the final values after a run."""
        if not self.running:
            return dict(self._final)
        cap = self._capture
        capture = cap.counters if cap is not None else {}
        board = self._read_board_packets() if self.board_packets is not None else None
        return self._summary(capture, self._workers, {}, board, aborted=False, stuck=[], live=True)

    def _summary(self, capture: dict, workers: dict, recording: dict, board_end, *, aborted: bool,
                 stuck: list, live: bool = False) -> dict:
        chips = {}
        tot = dict(datagrams=0, bytes=0, kernel_drops=0, ring_overruns=0, processed_datagrams=0,
                   unprocessed_datagrams=0, hits=0, triggers=0, events=0, centroids=0)
        for c in self.chips:
            cc = {k: v for k, v in capture.get(c, {}).items() if k != "readers"}
            w = workers.get(c)
            wc = dict(w.counts) if w is not None else {}
            stages = w.processor.counters() if w is not None else {}
            dec = stages.get("decode", {})
            entry = {"capture": cc, "processed": wc, "stages": stages}
            overruns = int(cc.get("overruns", 0)) + int(cc.get("unread_discarded", 0))
            received = int(cc.get("datagrams", 0))
            processed = int(wc.get("datagrams", 0))
            tot["datagrams"] += received
            tot["bytes"] += int(cc.get("bytes", 0))
            tot["kernel_drops"] += int(cc.get("kernel_drops", 0))
            tot["ring_overruns"] += overruns
            tot["processed_datagrams"] += processed
            if not live:
                tot["unprocessed_datagrams"] += max(0, received - processed)
            tot["hits"] += int(dec.get("pixels_out", 0))
            tot["triggers"] += int(dec.get("tdcs_out", 0))
            ev = stages.get("events", {})
            tot["events"] += int(ev.get("events_out", 0))
            tot["centroids"] += int(stages.get("cluster", {}).get("clusters_out", 0))
            chips[c] = entry
        out = {"chips": chips, "totals": tot, "ports": list(self.ports) if self._capture else
               list(capture.get(c, {}).get("port", 0) for c in self.chips),
               "aborted": aborted, "stuck": stuck, "recording": recording, "sink_errors": dict(self._sink_errors),
               "trains_completed": self._trains_completed, "last_train_id": self._last_train_id,
               "runs": self.runs}
        if board_end is not None and self._board_at_start:
            sent = {c: (int(board_end.get(c, 0)) - int(self._board_at_start.get(c, 0))) & 0xFFFFFFFF
                    for c in self.chips}
            out["board_sent"] = sent
            lost = {c: sent[c] - int(capture.get(c, {}).get("datagrams", 0)) for c in self.chips}
            out["lost_datagrams"] = {c: max(0, v) for c, v in lost.items()}
            out["extra_datagrams"] = {c: max(0, -v) for c, v in lost.items()}   # duplicates on the way
            tot["lost_datagrams"] = sum(out["lost_datagrams"].values())
        else:
            tot["lost_datagrams"] = tot["kernel_drops"]
        return out

    def statistics(self) -> dict:
        """The Tango device's numbers (``tango_tpx3.pipeline_iface.STATISTICS_KEYS``) and more."""
        rates = self.stats.rates()
        totals = self.stats.totals
        c = self.counters()
        t = c.get("totals", {})
        out = {
            "hit_rate": rates.get("hits_per_s", 0.0),
            "trigger_rate": rates.get("triggers_per_s", 0.0),
            "centroid_rate": rates.get("centroids_per_s", 0.0),
            "data_rate": rates.get("raw_bytes_per_s", 0.0),
            "packets_received": int(t.get("datagrams", 0)),
            "packets_lost": int(t.get("lost_datagrams", 0)) + int(t.get("ring_overruns", 0)),
            "hits_total": int(totals.get("hits", 0)),
            "triggers_total": int(totals.get("triggers", 0)),
            "centroids_total": int(totals.get("centroids", 0)),
            "current_train_id": int(self._last_train_id),
            "trains_published": int(self._trains_completed),
            "frames_completed": 0,
            "bytes_received": int(t.get("bytes", 0)),
            "kernel_drops": int(t.get("kernel_drops", 0)),
            "ring_overruns": int(t.get("ring_overruns", 0)),
            # received but not yet processed: grows when processing falls behind, before
            # the ring fills and data are lost
            "backlog_datagrams": max(0, int(t.get("datagrams", 0)) - int(t.get("processed_datagrams", 0)))
            if self.running else 0,
        }
        for s in list(self._active_sinks) or list(self.sinks):
            extra = getattr(s, "statistics", None)
            if callable(extra):
                try:
                    out.update({k: v for k, v in extra().items() if isinstance(v, (int, float))})
                except Exception:
                    pass
        return out

    def hit_map(self) -> np.ndarray:
        return self.stats.hit_map()

    def tof_histogram(self) -> np.ndarray:
        return self.stats.tof_histogram()

    def reset_counters(self) -> None:
        """Zero the live statistics (the capture's counters count per run)."""
        self.stats.reset()
