"""``tpx3 process INPUT... -o OUT.h5``: post-process raw recordings into HDF5.

The inputs (native, pymepix .raw or .tpx3; several files = one continuous
stream) go through the pipeline's decode, event and clustering stages in
segments, in parallel with ``--workers``, with the same result for any number
of workers. Bad input, options or output give a message and exit code 1.
"""
from __future__ import annotations

import argparse
import math
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="raw recording(s), processed as one stream in order")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.h5", help="HDF5 file to write")
    parser.add_argument("--layout", default="pymepix", choices=["pymepix", "exdf"],
                        help="output layout (default pymepix: the names and dtypes pymepix writes)")
    parser.add_argument("--centroid", action="store_true", help="cluster the events and write centroids")
    parser.add_argument("--cluster-method", choices=["dbscan", "components"], default=None,
                        help="clustering: dbscan (pymepix's, default for the pymepix layout) or components")
    parser.add_argument("--timewalk", metavar="LUT", help="timewalk table (.npy or text, delay in ns per ToT bin)")
    parser.add_argument("--event-window", nargs=2, type=float, metavar=("MIN", "MAX"), default=(0.0, 1e-3),
                        help="time-of-flight window in s, inclusive (default 0 0.001; '-inf inf' = no window)")
    parser.add_argument("--trigger-numbers", choices=["counter", "sequence"], default="counter",
                        help="event numbers: the hardware trigger counter (default) or 0,1,2... like pymepix")
    parser.add_argument("--chip", type=int, default=None, help="chip to process in a multi-chip recording")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="parallel workers (default 1)")
    parser.add_argument("--compression", choices=["lzf", "gzip", "none"], default="lzf",
                        help="HDF5 compression (default lzf; gzip for non-h5py readers)")
    parser.add_argument("--allow-damaged", action="store_true",
                        help="process what can be read from a truncated/damaged input instead of refusing it")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.h5 if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--segment-words", type=int, default=1 << 20, help=argparse.SUPPRESS)
    parser.add_argument("--margin-words", type=int, default=1 << 16, help=argparse.SUPPRESS)


def run(args) -> int:
    from tpx3lib.errors import Tpx3Error
    from tpx3lib.process import ProcessOptions, process_files

    lo, hi = args.event_window
    window = None if (math.isinf(lo) and math.isinf(hi)) else (lo, hi)
    cluster = {"method": args.cluster_method} if args.cluster_method else None
    try:
        opts = ProcessOptions(layout=args.layout, chip=args.chip, event_window_s=window,
                              trigger_numbers=args.trigger_numbers, centroid=args.centroid, cluster=cluster,
                              timewalk_path=args.timewalk, workers=args.workers,
                              segment_words=args.segment_words, margin_words=args.margin_words,
                              compression=args.compression, allow_damaged=args.allow_damaged)
        summary = process_files(args.inputs, args.output, opts, overwrite=args.overwrite,
                                progress=not args.no_progress)
    except (Tpx3Error, OSError) as exc:
        msg = exc.strerror if isinstance(exc, OSError) and not isinstance(exc, Tpx3Error) and exc.strerror else exc
        where = f"{exc.filename}: " if isinstance(exc, OSError) and getattr(exc, "filename", None) and \
            not isinstance(exc, Tpx3Error) else ""
        print(f"tpx3 process: error: {where}{msg}", file=sys.stderr)
        if getattr(exc, "offset", None) is not None and "Truncated" in type(exc).__name__:
            print("tpx3 process: (use --allow-damaged to process what can be read)", file=sys.stderr)
        return 1
    c = summary.counters
    print(f"{summary.output}: {summary.words:,} words, {summary.pixels:,} hits, {summary.triggers:,} triggers, "
          f"{summary.events:,} events" + (f", {summary.centroids:,} centroids" if args.centroid else "")
          + f" in {summary.seconds:.2f} s ({summary.hits_per_second / 1e6:.2f} Mhits/s)")
    if c["pixels_before_first_trigger"] or c["pixels_outside_event_window"]:
        print(f"  not in an event: {c['pixels_before_first_trigger']:,} hits before the first trigger, "
              f"{c['pixels_outside_event_window']:,} outside the event window")
    for w in summary.warnings:
        print(f"tpx3 process: warning: {w}", file=sys.stderr)
    return 0
