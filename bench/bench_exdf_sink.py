"""Benchmark of the live run-file writer (``ExdfSink``, what Tpx3Pipeline's OutputDirectory uses).

Simulated data (``simulators.physics.HitGenerator``, one chip, 10 Hz triggers with train IDs)
are processed once by a ``ChipProcessor`` (events and centroids; not timed). The processed
chunks are then given to an ``ExdfSink`` as the live pipeline gives them (``start``,
``on_chunk`` for each, ``stop``), once per compression; the time is from the first chunk until
``stop()`` returns (trains assembled, written, files closed). That rate is the highest hit
rate at which a live acquisition writing run files keeps up; above it the sink holds up the
processing (``when_full="block"``).

Baseline measured in the same run: copying the same event and centroid records (``memcpy``).

    BENCH exdf_sink_<compression> <Mhits/s> Mhits/s ratio_to_memcpy <r>  # MB/s of records, file size

    python bench/bench_exdf_sink.py [--hits 6000000] [--repeat 3] [--compressions gzip,lzf,none]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import bench                                    # noqa: E402

from simulators.physics import HitGenerator, PhysicsModel                      # noqa: E402
from tpx3lib.pipeline import ChipProcessor, ProcessingConfig                  # noqa: E402
from tpx3lib.pipeline.exdf_sink import ExdfSink                                # noqa: E402
from tpx3lib.trainid import CountingTrainIdSource, TrainIdAssigner           # noqa: E402

TICKS_PER_SECOND = 40_000_000
PERIOD_S = 0.1                     # 10 Hz trains, as at European XFEL
WINDOW_S = (0.0, 0.05)
ORIGIN = 1_700_000_000.0


def make_stream(n_hits: int, seed: int = 3):
    """(info, chunks, hits, centroids, record bytes) of about ``n_hits`` event hits."""
    rate = 2_000_000.0                                    # hits/s of board time
    seconds = max(1.0, n_hits / rate)
    gen = HitGenerator(PhysicsModel(hit_rate_hz=rate / 4, trigger_rate_hz=1 / PERIOD_S, seed=seed), n_chips=1)
    cfg = ProcessingConfig(chip=0, event_window_s=WINDOW_S, products=("events", "centroids"))
    proc = ChipProcessor(cfg, train_ids=TrainIdAssigner(CountingTrainIdSource(
        1_000_000, period_s=PERIOD_S, grid_tolerance_s=PERIOD_S / 10, board_time_origin=ORIGIN)))
    edges = np.linspace(0, int(seconds * TICKS_PER_SECOND), int(seconds * 20) + 1).astype(np.int64)
    chunks = [proc.feed(gen.generate(int(a), int(b)).words[0]) for a, b in zip(edges[:-1], edges[1:])]
    chunks.append(proc.flush())
    info = {"chips": [0], "products": ("events", "centroids"), "config": {0: cfg.to_dict()},
            "start_time_ns": int(ORIGIN * 1e9), "event_window_s": WINDOW_S, "settings": {}}
    hits = sum(c.events.size for c in chunks if c.events is not None)
    cents = sum(c.centroids.size for c in chunks if c.centroids is not None)
    nbytes = sum(c.events.nbytes for c in chunks if c.events is not None) + \
        sum(c.centroids.nbytes for c in chunks if c.centroids is not None)
    return info, chunks, hits, cents, nbytes


def memcpy_rate(chunks) -> float:
    """Bytes/s copying the chunks' event and centroid records."""
    arrays = [a for c in chunks for a in (c.events, c.centroids) if a is not None and a.size]
    out = [np.empty_like(a) for a in arrays]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for a, o in zip(arrays, out):
            np.copyto(o, a)
        best = min(best, time.perf_counter() - t0)
    return sum(a.nbytes for a in arrays) / best


def run_sink(tmp: str, info, chunks, compression: str | None, run: int) -> tuple[float, int, dict]:
    run_dir = os.path.join(tmp, f"r{run:04d}")
    sink = ExdfSink(run_dir, run, compression=compression)
    sink.start(info)
    t0 = time.perf_counter()
    for c in chunks:
        sink.on_chunk(c)
    sink.stop()
    dt = time.perf_counter() - t0
    size = sum(os.path.getsize(os.path.join(run_dir, f)) for f in os.listdir(run_dir))
    counters = sink.counters()
    shutil.rmtree(run_dir)
    return dt, size, counters


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hits", type=int, default=6_000_000, help="event hits to write (about; default 6 M)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each compression (best and range printed)")
    p.add_argument("--compressions", default="gzip,lzf,none", help="comma-separated: gzip, lzf, none")
    args = p.parse_args(argv)
    wanted = [c.strip() for c in args.compressions.split(",") if c.strip()]
    bad = set(wanted) - {"gzip", "lzf", "none"}
    if bad:
        p.error(f"unknown compression(s) {sorted(bad)}")

    t0 = time.perf_counter()
    info, chunks, hits, cents, nbytes = make_stream(args.hits)
    print(f"# {hits:,} event hits and {cents:,} centroids in {len(chunks)} chunks, "
          f"{nbytes / 2**20:.0f} MiB of records (prepared in {time.perf_counter() - t0:.0f} s)", flush=True)
    copy = memcpy_rate(chunks)
    bench("exdf_sink_baseline_memcpy", copy / 1e6, "MB/s")
    tmp = tempfile.mkdtemp(prefix="bench_exdf_sink_")
    try:
        run_sink(tmp, info, chunks[:4], "gzip", 9999)          # load every kernel before timing
        run = 1
        for comp in wanted:
            times = []
            for _ in range(args.repeat):
                dt, size, counters = run_sink(tmp, info, chunks, None if comp == "none" else comp, run)
                run += 1
                if counters["hits_written"] != hits:
                    print(f"# {comp}: {counters['hits_written']} of {hits} hits written: {counters}", flush=True)
                    return 1
                times.append(dt)
            best = min(times)
            rates = [hits / t / 1e6 for t in times]
            bench(f"exdf_sink_{comp}", hits / best / 1e6, "Mhits/s", ("memcpy", (nbytes / best) / copy),
                  note=f"{nbytes / best / 1e6:.0f} MB/s of records, range {min(rates):.1f}-{max(rates):.1f} "
                       f"Mhits/s, {counters['trains_written']} trains, file {size / 2**20:.0f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
