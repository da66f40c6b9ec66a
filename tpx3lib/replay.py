"""Replaying a raw recording or a processed run as a Karabo Bridge stream, train by train.

Two train sources, both iterable any number of times (each pass starts afresh):

- :class:`RawTrains`: a raw recording (native, pymepix or .tpx3, via
  :func:`tpx3lib.files.open_raw`) processed as the live pipeline does - one
  :class:`~tpx3lib.pipeline.ChipProcessor` per chip with events and centroids, train IDs
  counted from ``start_id`` (:class:`~tpx3lib.trainid.CountingTrainIdSource`), trains
  assembled by :class:`~tpx3lib.pipeline.trains.TrainAssembler`;
- :class:`RunTrains`: a run directory written by
  :class:`~tpx3lib.pipeline.exdf_sink.ExdfSink` or :class:`~tpx3lib.exdf.ExdfRunWriter`
  (read with h5py; EXtra-data is not needed).

:func:`replay` sends the trains with :func:`~tpx3lib.pipeline.trains.train_message`,
so a replayed stream has the layout of the live one, at the original pace (the trigger
times; for runs without them the INDEX timestamps, else 10 Hz), at a fixed rate, or as
fast as consumers take them. With ``loop`` the source is replayed again and again; the
train IDs of later passes are shifted up by the span of one pass, so they keep
increasing as consumers expect.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .dtypes import CENTROID_DTYPE, EVENT_DTYPE, TOA_UNIT_S
from .errors import ConfigError, FileFormatError
from .exdf.layout import CENTROIDS_GROUP, DEFAULT_SOURCE, HITS_GROUP
from .pipeline.trains import TRIGGER_CONTROL_KEYS, Train, TrainAssembler, train_message
from .trainid.base import XFEL_TRAIN_PERIOD_S

__all__ = ["RawProcessing", "RawTrains", "RunTrains", "open_trains", "processed_chunks", "replay",
           "ReplayStats", "is_run"]


# ----------------------------------------------------------------------------- raw recordings
@dataclasses.dataclass
class RawProcessing:
    """How a raw recording is processed for a replay (as a live pipeline would).

    ``start_id``: train ID of the first trigger (None: the recording header's
    ``trigger.first_train_id``, else 1), then counted (periods rule with ``period_s``;
    ``grid_tolerance_s`` None = 10 ms, or a tenth of the period if smaller);
    ``event_window_s``: time-of-flight window (None: no window); ``centroids``: cluster
    too; ``cluster``: ClusterParams fields; ``timewalk_path``: a timewalk table;
    ``chips``: the chips to process (None: all in the file); ``chunk_words``: words
    per processing step.
    """

    start_id: int | None = None
    period_s: float = XFEL_TRAIN_PERIOD_S
    grid_tolerance_s: float | None = None
    event_window_s: tuple[float, float] | None = (0.0, 1e-3)
    centroids: bool = True
    cluster: dict | None = None
    timewalk_path: str | None = None
    chips: tuple[int, ...] | None = None
    chunk_words: int = 1 << 18

    def __post_init__(self):
        if int(self.chunk_words) < 1:
            raise ConfigError("chunk_words must be >= 1")
        if not self.period_s > 0:
            raise ConfigError(f"train period must be > 0 s, not {self.period_s!r}")

    @property
    def products(self) -> tuple[str, ...]:
        return ("events", "centroids") if self.centroids else ("events",)

    def tolerance_s(self) -> float:
        if self.grid_tolerance_s is not None:
            return float(self.grid_tolerance_s)
        return min(0.01, self.period_s / 10)


def processed_chunks(path, options: RawProcessing | None = None):
    """``(info, chunks)``: the ``start(info)`` dict a sink expects and an iterator of
    :class:`~tpx3lib.pipeline.ProcessedChunk` (every chip's, ending with each chip's
    final flush), processing ``path`` as :class:`RawTrains` does. Feed them to sinks
    (``start(info)``, ``on_chunk``..., ``stop()``), e.g. to write a run with
    :class:`~tpx3lib.pipeline.exdf_sink.ExdfSink`."""
    from .files import open_raw
    from .pipeline.processor import ChipProcessor, ProcessingConfig
    from .trainid import CountingTrainIdSource, TrainIdAssigner

    opts = options or RawProcessing()
    reader = open_raw(path, "rb")
    try:
        in_file = list(reader.chips)
        chips = sorted(int(c) for c in (opts.chips if opts.chips is not None else in_file))
        missing = sorted(set(chips) - set(in_file))
        if missing:
            raise ConfigError(f"{os.fspath(path)} has no chip {missing[0]} (chips: {in_file})")
        configs = {c: ProcessingConfig(chip=c, event_window_s=opts.event_window_s, products=opts.products,
                                       cluster=opts.cluster, timewalk_path=opts.timewalk_path) for c in chips}
        start_id = opts.start_id
        if start_id is None:
            trig = reader.header.get("trigger") if isinstance(reader.header, dict) else None
            first = trig.get("first_train_id") if isinstance(trig, dict) else None
            valid = isinstance(first, int) and not isinstance(first, bool) and 0 < first < 1 << 63
            start_id = first if valid else 1
        procs = {}
        for c, cfg in configs.items():
            source = CountingTrainIdSource(int(start_id), period_s=opts.period_s,
                                           grid_tolerance_s=opts.tolerance_s())
            procs[c] = ChipProcessor(cfg, train_ids=TrainIdAssigner(source, tdc=cfg.trigger_tdc,
                                                                    edge=cfg.trigger_edge))
    except BaseException:
        reader.close()
        raise
    info = {"chips": chips, "products": opts.products, "config": {c: cfg.to_dict() for c, cfg in configs.items()},
            "start_time_ns": int(reader.header.get("start_time_ns", 0) or 0),
            "event_window_s": opts.event_window_s, "train_ids": True}
    n = int(opts.chunk_words)

    def chunks():
        with reader:
            for raw in reader.chunks():
                proc = procs.get(int(raw.chip))
                if proc is None:
                    continue              # a chip not asked for
                for a in range(0, len(raw.words), n):
                    yield proc.feed(raw.words[a:a + n])
            for c in chips:
                yield procs[c].flush()

    return info, chunks()


class RawTrains:
    """The trains of a raw recording (see the module docstring); iterate to process it.
    ``counters`` holds the assembler's counters of the latest pass."""

    def __init__(self, path, options: RawProcessing | None = None, **kwargs):
        if options is not None and kwargs:
            raise ConfigError("give either options or keyword arguments, not both")
        self.path = Path(path)
        self.options = options or RawProcessing(**kwargs)
        self.counters: dict[str, int] = {}

    def __iter__(self) -> Iterator[Train]:
        info, chunks = processed_chunks(self.path, self.options)
        out: collections.deque[Train] = collections.deque()
        asm = TrainAssembler.from_info(info, out.append)
        try:
            for chunk in chunks:
                asm.add(chunk)
                while out:
                    yield out.popleft()
            asm.flush()
            while out:
                yield out.popleft()
        finally:
            self.counters = asm.stats()
            chunks.close()


# ----------------------------------------------------------------------------- run directories
def _run_files(paths, source: str) -> list[Path]:
    """The run files among ``paths`` that hold ``source``."""
    import h5py
    files = []
    for p in paths:
        try:
            with h5py.File(p, "r") as f:
                if f"INDEX/{source}/{HITS_GROUP}/first" in f:
                    files.append(p)
        except OSError as exc:
            raise FileFormatError(f"cannot open run file: {exc}", os.fspath(p), 0) from exc
    return files


def is_run(path) -> bool:
    """True for a run directory or a single run file (HDF5), False for anything else."""
    p = Path(path)
    if p.is_dir():
        return any(p.glob("*.h5"))
    try:
        with open(p, "rb") as f:
            return f.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


class RunTrains:
    """The trains of a run directory (or one run file) in train-ID order.

    ``source``: the instrument source; ``control_source``: where the per-train trigger
    values are (default its device). Runs without them (e.g. written by
    :func:`tpx3lib.exdf.write_trains`) give the trigger counter and time of the first
    hit (0 for empty trains), flags 0 and ``chips_triggered`` 1.
    """

    def __init__(self, path, source: str = DEFAULT_SOURCE, control_source: str | None = None,
                 block_entries: int = 1 << 22):
        self.path = Path(path)
        self.source = source
        self.control_source = control_source or source.partition(":")[0]
        self.block_entries = int(block_entries)
        if self.path.is_dir():
            self.files = _run_files(sorted(self.path.glob("*.h5")), source)
        elif self.path.is_file():
            self.files = _run_files([self.path], source)
        else:
            raise FileNotFoundError(f"no such run directory or file: {self.path}")
        if not self.files:
            raise FileFormatError(f"no run file with source {source!r} in {self.path}", os.fspath(self.path), 0)

    def __iter__(self) -> Iterator[Train]:
        import h5py
        index = 0
        for p in self.files:
            with h5py.File(p, "r") as f:
                for train in self._file_trains(f):
                    train.index = index
                    index += 1
                    yield train

    def _file_trains(self, f) -> Iterator[Train]:
        tids = f["INDEX/trainId"][:]
        n = int(np.count_nonzero(tids))
        tids = tids[:n]
        stamps = f["INDEX/timestamp"][:n]
        groups = [(HITS_GROUP, EVENT_DTYPE)]
        if f"INDEX/{self.source}/{CENTROIDS_GROUP}/first" in f:
            groups.append((CENTROIDS_GROUP, CENTROID_DTYPE))
        idx = {g: (f[f"INDEX/{self.source}/{g}/first"][:n].astype(np.int64),
                   f[f"INDEX/{self.source}/{g}/count"][:n].astype(np.int64)) for g, _ in groups}
        ctrl = {}
        for attr, key in TRIGGER_CONTROL_KEYS.items():
            name = f"CONTROL/{self.control_source}/{key.replace('.', '/')}/value"
            if name in f:
                ctrl[attr] = f[name][:n]
        i = 0
        while i < n:
            # a block of trains whose entries fit block_entries (at least one train)
            j = i + 1
            while j < n and all(idx[g][0][j] + idx[g][1][j] - idx[g][0][i] <= self.block_entries for g, _ in groups):
                j += 1
            blocks = {}
            for g, dtype in groups:
                first, count = idx[g]
                a, b = int(first[i]), int(first[j - 1] + count[j - 1])
                rec = np.zeros(b - a, dtype)
                for field in dtype.names:
                    if field != "train_id":
                        rec[field] = f[f"INSTRUMENT/{self.source}/{g}/{field}"][a:b]
                blocks[g] = (a, rec)
            for k in range(i, j):
                yield self._train(k, tids, stamps, idx, blocks, ctrl)
            i = j

    def _train(self, k, tids, stamps, idx, blocks, ctrl) -> Train:
        tid = int(tids[k])
        parts = {}
        for g, (a, rec) in blocks.items():
            first, count = idx[g]
            part = rec[int(first[k]) - a:int(first[k] + count[k]) - a]     # a view of this block only
            part["train_id"] = tid
            parts[g] = part
        hits = parts[HITS_GROUP]
        cen = parts.get(CENTROIDS_GROUP, np.empty(0, CENTROID_DTYPE))
        vals = {attr: int(v[k]) for attr, v in ctrl.items()}
        if "trigger" not in vals:
            vals["trigger"] = int(hits["event"][0]) if hits.size else 0
        if "trigger_time" not in vals:
            vals["trigger_time"] = int(hits["toa"][0] - hits["tof"][0]) if hits.size else 0
        return Train(train_id=tid, trigger=vals["trigger"], trigger_time=vals["trigger_time"],
                     flags=vals.get("flags", 0), hits=hits, centroids=cen, timestamp_ns=int(stamps[k]),
                     chips_triggered=vals.get("chips_triggered", 1))


def open_trains(path, **raw_options) -> RawTrains | RunTrains:
    """:class:`RunTrains` for a run directory or run file, else :class:`RawTrains`
    (``raw_options`` are :class:`RawProcessing` fields)."""
    if is_run(path):
        return RunTrains(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"no such file or run directory: {path}")
    return RawTrains(path, **raw_options)


# ----------------------------------------------------------------------------- sending
@dataclasses.dataclass
class ReplayStats:
    """What a replay did: trains sent, passes begun, how far it fell behind its schedule
    (seconds; processing or consumers slower than the pace), and why it ended."""

    trains_sent: int = 0
    trains_empty: int = 0
    passes: int = 0
    max_behind_s: float = 0.0
    seconds: float = 0.0
    stopped_by: str = "end"


def _train_time_s(train: Train) -> float | None:
    if train.trigger_time:
        return train.trigger_time * TOA_UNIT_S
    if train.timestamp_ns:
        return train.timestamp_ns * 1e-9
    return None


def replay(trains: Iterable[Train], sender, *, source: str = DEFAULT_SOURCE, rate: float | None = None,
           loop: bool = False, max_trains: int | None = None, stop: threading.Event | None = None,
           counters: bool = False, clock=time.monotonic, sleep=time.sleep) -> ReplayStats:
    """Send ``trains`` (iterable again for each ``loop`` pass) with ``sender`` (a
    :class:`karabo_bridge.server.Sender`), one message per train.

    ``rate``: None = the original pace (train time differences), a number of trains
    per second, or 0 = as fast as consumers take them. ``max_trains``: stop after so
    many; ``stop``: an Event that ends the replay (checked while waiting).
    ``counters``: add ``counters.replay_pass`` and ``counters.trains_sent`` to messages.
    """
    if rate is not None and (not math.isfinite(rate) or rate < 0):
        raise ConfigError(f"rate must be >= 0 trains/s (0 = flat out), not {rate!r}")
    stats = ReplayStats()
    t_start = clock()
    virtual = 0.0                   # schedule time of the next train, seconds from t_start
    tid_shift = 0
    n = 0

    def wait_until(target: float) -> bool:
        while True:
            left = target - clock()
            if left <= 0:
                stats.max_behind_s = max(stats.max_behind_s, -left)
                return True
            if stop is not None:
                if stop.wait(min(left, 0.2)):
                    return False
            else:
                sleep(min(left, 0.2))

    def send(data, meta) -> bool:
        while True:
            try:
                sender.send(data, meta, timeout=0.2)
                return True
            except TimeoutError:
                if stop is not None and stop.is_set():
                    return False

    while True:
        stats.passes += 1
        first_tid = last_tid = None
        prev_time = None
        sent_this_pass = 0
        for train in trains:
            if max_trains is not None and n >= max_trains:
                stats.stopped_by = "max_trains"
                stats.seconds = clock() - t_start
                return stats
            if stop is not None and stop.is_set():
                stats.stopped_by = "stop"
                stats.seconds = clock() - t_start
                return stats
            t = _train_time_s(train)
            if rate is None:
                if prev_time is not None:
                    step = (t - prev_time) if (t is not None and t >= prev_time) else XFEL_TRAIN_PERIOD_S
                    virtual += step
                prev_time = t if t is not None else (prev_time or 0.0) + XFEL_TRAIN_PERIOD_S
            elif rate > 0:
                virtual = n / rate
            if rate != 0 and not wait_until(t_start + virtual):
                stats.stopped_by = "stop"
                break
            if train.train_id:
                first_tid = train.train_id if first_tid is None else first_tid
                last_tid = train.train_id
                if tid_shift:
                    train = train.with_train_id(train.train_id + tid_shift)
            extra = {"replay_pass": stats.passes, "trains_sent": n} if counters else None
            data, meta = train_message(train, source, extra)
            if not send(data, meta):
                stats.stopped_by = "stop"
                break
            n += 1
            sent_this_pass += 1
            stats.trains_sent = n
            stats.trains_empty += train.n_hits == 0
        else:
            if loop and sent_this_pass:
                if first_tid is not None:
                    tid_shift += last_tid - first_tid + 1
                virtual += XFEL_TRAIN_PERIOD_S if rate is None else 0.0
                continue
            stats.stopped_by = "end"
        break
    stats.seconds = clock() - t_start
    return stats
