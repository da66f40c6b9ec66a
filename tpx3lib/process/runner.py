"""``process_files``: raw recordings in, a processed HDF5 file (or run directory) out, in bounded memory.

Flow: the input words of one chip are read in ``segment_words`` arrays; a
:class:`~tpx3lib.process.plan.SegmentPlanner` decodes their TDC/heartbeat
words in order and cuts the stream into segments; segments are processed by
:func:`~tpx3lib.process.segment.run_segment` (in ``workers`` threads: the
decoder and clustering kernels release the GIL), their products converted for the
layout in the worker (``prepare_events``), and written in order; the layout may
use the same threads (the pymepix layout compresses its chunks there). At most
``workers + 1`` segments are in flight, so memory does not depend on the file
size. The output is written under a temporary name and moved into place when
complete (see :mod:`.output`): a failure never leaves a half-written output under
the final name.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import dataclasses
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np

from tpx3lib.errors import ConfigError
from tpx3lib.files import open_raw

from .options import ProcessOptions, seconds_to_units
from .output import writer_class
from .plan import SegmentPlanner
from .segment import SegmentConfig, SegmentResult, run_segment

__all__ = ["process_files", "ProcessSummary"]


@dataclasses.dataclass
class ProcessSummary:
    """What a run produced (also stored as the ``counters`` attribute of the output)."""

    output: str
    words: int
    pixels: int
    events: int
    centroids: int
    triggers: int
    seconds: float
    counters: dict
    warnings: list[str]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def hits_per_second(self) -> float:
        return self.pixels / self.seconds if self.seconds > 0 else 0.0


def _rebatch(arrays: Iterable[np.ndarray], n: int) -> Iterator[np.ndarray]:
    """Arrays of exactly ``n`` words (the last one shorter) from arrays of any size."""
    pending: list[np.ndarray] = []
    have = 0
    for a in arrays:
        while a.size:
            if have == 0 and a.size >= n:
                yield a[:n]
                a = a[n:]
                continue
            take = min(n - have, a.size)
            pending.append(a[:take])
            have += take
            a = a[take:]
            if have == n:
                yield np.concatenate(pending)
                pending, have = [], 0
    if have:
        yield np.concatenate(pending)


@contextlib.contextmanager
def _big_buffers_stay_mapped():
    """Keep freed large buffers in the process while processing (glibc only).

    Every segment allocates tens of MB of numpy arrays and frees them soon after; glibc
    returns such blocks to the system (munmap) and the next segment pays a page fault per
    4 kB to get them back - about a fifth of the run time. Raising the mmap and trim
    thresholds for the duration makes the allocator reuse them; afterwards the defaults
    come back and ``malloc_trim`` returns what is free. Skipped when the environment
    already tunes malloc or the C library is not glibc."""
    libc = None
    if sys.platform.startswith("linux") and not any(k.startswith("MALLOC_") for k in os.environ):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            if not (libc.mallopt(-3, 1 << 30) and libc.mallopt(-1, 1 << 30)   # M_MMAP/M_TRIM_THRESHOLD
                    and libc.mallopt(-2, 64 << 20)):                            # M_TOP_PAD
                libc = None
        except (OSError, AttributeError):
            libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(-3, 128 * 1024)      # glibc's defaults
            libc.mallopt(-1, 128 * 1024)
            libc.mallopt(-2, 128 * 1024)
            libc.malloc_trim(0)


def _source_info(reader) -> dict:
    header = reader.header
    return {
        "path": os.path.abspath(reader.path),
        "format": reader.format,
        "size_bytes": os.path.getsize(reader.path),
        "header": header,
        "closing": reader.closing,
        "start_time_ns": header.get("start_time_ns"),
        "truncated": False,
        "problems": [],
    }


def _choose_chip(readers, chip: int | None) -> int:
    chips = sorted({c for r in readers for c in r.chips})
    if chip is None:
        if len(chips) > 1:
            raise ConfigError(f"the input holds chips {chips}: choose one with --chip (the pymepix layout "
                              "holds one chip)")
        return chips[0] if chips else 0
    if chip not in chips:
        raise ConfigError(f"chip {chip} is not in the input (chips {chips})")
    return chip


class _Progress:
    """tqdm bar over input bytes with the hit rate as postfix (a no-op when disabled)."""

    def __init__(self, total_bytes: int, enabled: bool):
        self.bar = None
        self.t0 = time.perf_counter()
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                            desc="tpx3 process", mininterval=0.5, dynamic_ncols=True)

    def update(self, nbytes: int, hits: int) -> None:
        if self.bar is None:
            return
        self.bar.update(min(nbytes, self.bar.total - self.bar.n))
        rate = hits / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{rate / 1e6:.2f} Mhits/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()


def process_files(inputs, output, options: ProcessOptions | None = None, *, overwrite: bool = False,
                  progress: bool = False) -> ProcessSummary:
    """Process raw recording(s) ``inputs`` (one continuous stream, in order) into ``output``.

    Raises :class:`FileFormatError` (unknown/damaged input; truncated input unless
    ``options.allow_damaged``), :class:`ConfigError` (bad options, unreadable
    timewalk table, output exists without ``overwrite``), ``OSError``.
    """
    opts = options or ProcessOptions()
    inputs = [os.fspath(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    if not inputs:
        raise ConfigError("no input files")
    output = os.fspath(output)
    wcls = writer_class(opts.layout)
    opt_dict = opts.to_dict()
    wcls.check_output(output, overwrite=overwrite, inputs=inputs, options=opt_dict)
    timewalk = None
    if opts.timewalk_path:
        from tpx3lib.cluster import TimewalkTable
        try:
            timewalk = TimewalkTable.load(opts.timewalk_path)
        except OSError as exc:
            raise ConfigError(f"cannot read timewalk table {opts.timewalk_path}: {exc.strerror or exc}") from None
    cluster_params = opts.cluster_params() if opts.centroid else None

    readers = []
    try:
        for path in inputs:
            readers.append(open_raw(path, "rb", strict=not opts.allow_damaged, warn=False))
        chip = _choose_chip(readers, opts.chip)
        sources = [_source_info(r) for r in readers]
        opt_dict["chip"] = chip
        pool = ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="tpx3-process") \
            if opts.workers > 1 else None
        try:
            tmp = wcls.temp_output(output, opt_dict)
            writer = None
            try:
                writer = wcls(tmp, sources=sources, options=opt_dict, compression=opts.compression, executor=pool)
                with _big_buffers_stay_mapped():
                    summary = _run(readers, sources, chip, opts, writer, timewalk, cluster_params, progress, pool)
            except BaseException:
                if writer is not None:
                    writer.abort()
                wcls.discard_output(tmp, output, opt_dict)
                raise
            wcls.commit_output(tmp, output, opt_dict)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        summary.output = output
        summary.notes = writer.summary_lines()
        return summary
    finally:
        for r in readers:
            r.close()


def _run(readers, sources, chip, opts: ProcessOptions, writer, timewalk, cluster_params, progress,
         pool) -> ProcessSummary:
    t0 = time.perf_counter()
    margin_units = seconds_to_units(opts.cluster_margin_s)
    window = None if opts.event_window_s is None else tuple(seconds_to_units(v) for v in opts.event_window_s)
    decoder_kwargs = {"orientation": opts.orientation}
    wcls = type(writer)
    cfg = SegmentConfig(chip=chip, window_units=window, cluster_margin_units=margin_units, centroid=opts.centroid,
                        cluster_params=cluster_params, timewalk=timewalk,
                        decoder_kwargs=tuple(decoder_kwargs.items()),
                        prepare_events=wcls.prepare_events, prepare_centroids=wcls.prepare_centroids)
    planner = SegmentPlanner(chip, opts.segment_words, opts.margin_words, trigger_tdc=opts.trigger_tdc,
                             trigger_rising=opts.trigger_edge == "rising", trigger_numbers=opts.trigger_numbers,
                             cluster_margin_units=margin_units, decoder_kwargs=decoder_kwargs)
    totals = collections.Counter()
    hist = np.zeros(256, np.int64)
    found_warnings: list[str] = []
    bar = _Progress(sum(s["size_bytes"] for s in sources), progress)
    inflight: collections.deque = collections.deque()

    def write_planner_output() -> None:
        tdcs = planner.drain_tdcs()
        if tdcs.size:
            writer.write_tdcs(tdcs)
            totals["tdc_edges"] += tdcs.size
        trig = planner.drain_event_triggers()
        if trig.size:
            writer.write_event_triggers(trig)
            totals["triggers"] += trig.size

    def collect(res: SegmentResult) -> None:
        nonlocal hist
        writer.write_events(res.events)
        writer.write_centroids(res.centroids)
        writer.segment_done(res.t_hi)
        hist += res.word_hist
        totals["segments"] += 1
        totals["pixels"] += res.pixels_owned
        totals["events"] += res.n_events
        totals["centroids"] += res.n_centroids
        totals["before_first_trigger"] += res.before_first_trigger
        totals["outside_window"] += res.outside_window
        totals["clusters_at_segment_margin"] += res.clusters_at_margin
        totals["event_hits_below_tot_threshold"] += res.hits_below_tot

    def submit(jobs) -> None:
        for job in jobs:
            if pool is None:
                collect(run_segment(job, cfg))
            else:
                inflight.append(pool.submit(run_segment, job, cfg))
        while len(inflight) > opts.workers:
            collect(inflight.popleft().result())

    def words_of_all_inputs():
        for reader, source in zip(readers, sources):
            yield from reader.iter_words(opts.segment_words, chip=chip)
            source["truncated"] = bool(reader.truncated)
            source["problems"] = [str(e) for e in reader.errors]
            if reader.format == "native":
                source["closing"] = reader.closing
            found_warnings.extend(source["problems"])

    try:
        for arr in _rebatch(words_of_all_inputs(), opts.segment_words):
            totals["words"] += arr.size
            jobs = planner.add(arr)
            write_planner_output()
            submit(jobs)
            bar.update(8 * arr.size, totals["pixels"])
        jobs = planner.finish()
        write_planner_output()
        submit(jobs)
        while inflight:
            collect(inflight.popleft().result())
    except BaseException:
        for fut in inflight:
            fut.cancel()
        raise
    finally:
        bar.close()

    from tpx3lib.decode.words import word_type_counts
    words = word_type_counts(hist)
    prescan = planner.decoder_counts()
    pixel_words = words["pixel"]
    if totals["pixels"] != pixel_words:
        found_warnings.append(
            f"{pixel_words - totals['pixels']} pixel(s) were not assigned to any segment: hits out of time "
            f"order by more than the segment margin ({opts.margin_words} words); raise margin_words")
    if totals["clusters_at_segment_margin"]:
        found_warnings.append(f"{totals['clusters_at_segment_margin']} cluster(s) reach the clustering margin "
                              f"({opts.cluster_margin_s} s) of a segment and may be incomplete")
    counters = {
        "words": dict(words),
        "decoder_anomalies": {k: prescan[k] for k in ("tdc_fine_invalid", "tdc_counter_backwards",
                                                       "global_time_high_unpaired", "reference_backwards",
                                                       "unreferenced_words")},
        "heartbeats": planner.heartbeats,
        "tdc_edges": totals["tdc_edges"],
        "triggers": totals["triggers"],
        "pixels": totals["pixels"],
        "events": totals["events"],
        "pixels_before_first_trigger": totals["before_first_trigger"],
        "pixels_outside_event_window": totals["outside_window"],
        "centroids": totals["centroids"],
        "clusters_at_segment_margin": totals["clusters_at_segment_margin"],
        "segments": totals["segments"],
        "segment_cuts_skipped": planner.cuts_skipped,
        "inputs": [{"path": s["path"], "truncated": s["truncated"], "problems": s["problems"]} for s in sources],
        "warnings": found_warnings,
    }
    writer.close(counters)
    return ProcessSummary(output="", words=totals["words"], pixels=totals["pixels"], events=totals["events"],
                          centroids=totals["centroids"], triggers=totals["triggers"],
                          seconds=time.perf_counter() - t0, counters=counters, warnings=found_warnings)

