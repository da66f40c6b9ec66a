"""Writing trains to a European XFEL run directory as they complete: :class:`ExdfSink`.

The sink assembles the processed chunks of every chip into trains
(:class:`~tpx3lib.pipeline.trains.TrainAssembler`) and its own writer thread writes
them with :class:`~tpx3lib.exdf.ExdfRunWriter` (layout in docs/exdf.md): hits in the
``data`` index group, centroids in ``centroids``, INDEX first/count per train (empty
trains included), and on the control source the acquisition settings from
``start(info)`` plus, one row per train, the trigger of the train
(:data:`~tpx3lib.pipeline.trains.TRIGGER_CONTROL_KEYS`: ``trigger.counter``,
``trigger.time``, ``trigger.flags``, ``trigger.chips``), so that a replay of the run
gives the same trains as the live stream.

What a run file cannot hold is counted, not lost silently:

- a train with train ID 0 (no ID decided) is not written: ``trains_without_id``,
  its records in ``hits_not_written``/``centroids_not_written``;
- a train ID not above the last one written: ``trains_out_of_order`` (same records);
- consecutive trains with the same ID (DUPLICATE triggers) are merged into one
  (:func:`~tpx3lib.pipeline.trains.merge_trains`; ``trains_merged``).

Back-pressure: the hand-off queue blocks by default (``when_full="block"``): a run
file should be complete, so a disk slower than the data holds up the processing
rather than losing trains; ``when_full="drop"`` drops the oldest queued train instead
(``trains_dropped``). The run directory is checked at ``start()``; the files are
created with the first train written and closed by ``stop()``.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import Tpx3Error
from ..exdf import DEFAULT_SOURCE, ExdfRunWriter, RunExistsError
from .sinks import Sink
from .trains import TRIGGER_CONTROL_KEYS, Train, TrainAssembler, TrainQueue, merge_trains

__all__ = ["ExdfSink", "ExdfSinkError", "write_train", "trigger_settings", "settings_from_info"]


class ExdfSinkError(Tpx3Error, RuntimeError):
    """The writer thread failed (the cause is chained), or the sink was misused."""


def trigger_settings(train: Train) -> dict[str, int]:
    """The per-train control values of a train (``trigger.counter`` ...)."""
    return {key: int(getattr(train, attr)) for attr, key in TRIGGER_CONTROL_KEYS.items()}


def write_train(writer: ExdfRunWriter, train: Train, *, trigger_keys: bool = True) -> None:
    """Write one train (train ID != 0) with its trigger values as control data
    (declare them at the writer's construction: ``settings=trigger_settings(first)``)."""
    if trigger_keys:
        writer.update_settings(trigger_settings(train))
    cen = train.centroids if writer.with_centroids else None
    writer.write_train(train.train_id, int(train.timestamp_ns), train.hits, cen, flag=train.run_file_flag)


def _setting_value(v: Any):
    """A value the run writer can keep, or None to leave it out."""
    if v is None:
        return None
    if isinstance(v, (bool, int, float, str, np.integer, np.floating, np.bool_)):
        return v
    if isinstance(v, (list, tuple)):
        if not v:
            return None
        if all(isinstance(x, str) for x in v):
            return ",".join(v)
        if all(isinstance(x, (bool, int, float, np.integer, np.floating)) for x in v):
            return list(v)
        return None
    return str(v)


def settings_from_info(info: Mapping) -> dict[str, Any]:
    """Run settings from a pipeline's ``start(info)``: chips, products, event window,
    start time, each chip's processing config (``chip<N>.<key>``) and ``info["settings"]``
    (detector settings, if the pipeline gives them). Values the writer cannot store
    (None, mixed lists) are left out."""
    out: dict[str, Any] = {}

    def put(key: str, value: Any):
        if isinstance(value, Mapping):
            for k, v in value.items():
                put(f"{key}.{k}", v)
            return
        v = _setting_value(value)
        if v is not None:
            out[key] = v

    for key in ("chips", "products", "event_window_s", "start_time_ns"):
        if key in info:
            put(key, info[key])
    for chip, cfg in (info.get("config") or {}).items():
        put(f"chip{int(chip)}", cfg)
    for key, value in (info.get("settings") or {}).items():
        put(key, value)
    return out


class ExdfSink(Sink):
    """A :class:`~tpx3lib.pipeline.sinks.Sink` writing trains to a run directory.

    Parameters
    ----------
    run_dir : the run directory (created if missing).
    run : run number (0..9999).
    proposal, source, control_source, aggregator, sequence_max_bytes, compression ... :
        passed to :class:`~tpx3lib.exdf.ExdfRunWriter` (``writer_options``).
    settings, units : extra run settings (merged over those from ``info``) and their units.
    with_centroids : write the centroids group (None: when ``info["products"]`` has centroids).
    queue_size, when_full, block_timeout : the hand-off queue (see the module docstring).
    overwrite : replace an existing run of that number instead of refusing it.
    assembler_options : keyword arguments for :meth:`TrainAssembler.from_info`.

    Counters (:meth:`counters`): the assembler's plus ``trains_written``,
    ``trains_without_id``, ``trains_out_of_order``, ``trains_merged``,
    ``trains_dropped``, ``trains_failed`` (lost when writing failed), ``hits_written``,
    ``centroids_written``, ``hits_not_written``, ``centroids_not_written``.
    """

    def __init__(self, run_dir, run: int, *, settings: Mapping[str, Any] | None = None,
                 units: Mapping[str, str] | None = None, with_centroids: bool | None = None,
                 queue_size: int = 1000, when_full: str = "block", block_timeout: float | None = None,
                 overwrite: bool = False, assembler_options: dict | None = None, source: str = DEFAULT_SOURCE,
                 **writer_options):
        TrainQueue(queue_size, when_full, block_timeout)       # check the options now
        self.run_dir = Path(run_dir)
        self.run = int(run)
        self.source = source
        self.settings = dict(settings or {})
        self.units = dict(units or {})
        self.with_centroids = with_centroids
        self.queue_size, self.when_full, self.block_timeout = int(queue_size), when_full, block_timeout
        self.overwrite = bool(overwrite)
        self.assembler_options = dict(assembler_options or {})
        self.writer_options = dict(writer_options)
        self.assembler: TrainAssembler | None = None
        self.writer: ExdfRunWriter | None = None
        self.error: BaseException | None = None
        self._queue: TrainQueue | None = None
        self._thread: threading.Thread | None = None
        self._run_settings: dict[str, Any] = {}
        self._centroids = True
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._counts = dict(trains_written=0, trains_without_id=0, trains_out_of_order=0, trains_merged=0,
                            trains_failed=0, hits_written=0, centroids_written=0, hits_not_written=0,
                            centroids_not_written=0)

    def counters(self) -> dict:
        out = self.assembler.stats() if self.assembler is not None else {}
        out.update(self._counts)
        out["trains_dropped"] = self._queue.dropped if self._queue is not None else 0
        return out

    @property
    def files(self) -> list[Path]:
        """The files written so far."""
        return list(self.writer.files) if self.writer is not None else []

    # ------------------------------------------------------------------ Sink interface
    def start(self, info: dict) -> None:
        if self._thread is not None:
            raise ExdfSinkError("the run-file sink is already started (stop() it first)")
        aggregator = self.writer_options.get("aggregator", "TPX01")
        category = self.writer_options.get("category", "RAW")
        existing = sorted(self.run_dir.glob(f"{category}-R{self.run:04d}-{aggregator}-S*.h5"))
        if existing and not self.overwrite:
            raise RunExistsError(f"{self.run_dir} already holds run {self.run} of {aggregator}: "
                                 f"{existing[0].name} (pass overwrite=True to replace)")
        self._reset_counters()
        self.error = None
        self.writer = None
        products = info.get("products")
        self._centroids = (self.with_centroids if self.with_centroids is not None
                           else products is None or "centroids" in products)
        self._run_settings = settings_from_info(info)
        self._run_settings.update(self.settings)
        clash = set(self._run_settings) & set(TRIGGER_CONTROL_KEYS.values())
        if clash:
            raise ExdfSinkError(f"settings {sorted(clash)} clash with the per-train trigger keys")
        self._queue = TrainQueue(self.queue_size, self.when_full, self.block_timeout)
        self.assembler = TrainAssembler.from_info(info, self._queue.put, **self.assembler_options)
        self._thread = threading.Thread(target=self._write_loop, name="exdf-sink", daemon=True)
        self._thread.start()

    def on_chunk(self, chunk) -> None:
        if self.assembler is None:
            raise ExdfSinkError("on_chunk() before start()")
        self.assembler.add(chunk)

    def stop(self) -> None:
        """Hand out the last trains, write them and close the files. Raises
        :class:`ExdfSinkError` if writing failed."""
        if self._thread is None:
            return
        self.assembler.flush()
        self._queue.close()
        self._thread.join()
        self._thread = None
        if self.error is not None:
            raise ExdfSinkError(f"writing run {self.run} in {os.fspath(self.run_dir)} failed: "
                                f"{self.error!r}") from self.error

    # ------------------------------------------------------------------ the writer thread
    def _not_written(self, train: Train, reason: str) -> None:
        self._counts[reason] += 1
        self._counts["hits_not_written"] += train.n_hits
        self._counts["centroids_not_written"] += train.n_centroids

    def _write(self, train: Train) -> None:
        if self.writer is None:
            settings = dict(self._run_settings, **trigger_settings(train))
            self.writer = ExdfRunWriter(self.run_dir, self.run, source=self.source, settings=settings,
                                        units=self.units, with_centroids=self._centroids,
                                        overwrite=self.overwrite, **self.writer_options)
        write_train(self.writer, train)
        self._counts["trains_written"] += 1
        self._counts["hits_written"] += train.n_hits
        self._counts["centroids_written"] += train.n_centroids if self._centroids else 0
        self._counts["centroids_not_written"] += 0 if self._centroids else train.n_centroids

    def _write_loop(self) -> None:
        held: list[Train] = []           # trains of one ID, written when the next ID comes
        last = 0
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                train = item[0]
                if train.train_id == 0:
                    self._not_written(train, "trains_without_id")
                    continue
                if held and train.train_id == held[0].train_id:
                    held.append(train)
                    self._counts["trains_merged"] += 1
                    continue
                if train.train_id <= last:
                    self._not_written(train, "trains_out_of_order")
                    continue
                if held:
                    self._write(merge_trains(held))
                held, last = [train], train.train_id
            if held:
                self._write(merge_trains(held))
        except BaseException as exc:     # kept for stop() to raise
            self.error = exc
            self._queue.close()
            self._counts["trains_failed"] += len(held) + self._queue.clear()
        finally:
            if self.writer is not None:
                try:
                    self.writer.close()
                except BaseException as exc:
                    if self.error is None:
                        self.error = exc
