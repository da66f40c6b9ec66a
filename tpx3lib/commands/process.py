"""``tpx3 process INPUT... -o OUT``: post-process raw recordings into HDF5.

The inputs (native, pymepix .raw or .tpx3; several files = one continuous
stream) go through the pipeline's decode, event and clustering stages in
segments, in parallel with ``--workers``, with the same result for any number
of workers. ``--layout pymepix`` (default) writes one file in pymepix's layout,
``--layout exdf`` a European XFEL run directory (docs/process.md). Bad input,
options or output give a message and exit code 1.
"""
from __future__ import annotations

import argparse
import math
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="raw recording(s), processed as one stream in order")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="HDF5 file to write (pymepix layout) or run directory (exdf layout)")
    parser.add_argument("--layout", default="pymepix", choices=["pymepix", "exdf"],
                        help="output layout: pymepix (default: the names and dtypes pymepix writes) or exdf "
                             "(a European XFEL run directory that EXtra-data opens)")
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
    parser.add_argument("--compression", choices=["lzf", "gzip", "none"], default=None,
                        help="HDF5 compression (default lzf for pymepix, gzip for exdf; gzip for non-h5py readers)")
    parser.add_argument("--allow-damaged", action="store_true",
                        help="process what can be read from a truncated/damaged input instead of refusing it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT if it exists (exdf: replace this run's files in the directory)")
    parser.add_argument("--swmr", action="store_true",
                        help="pymepix layout: write OUT in SWMR mode so readers can follow it while it grows")
    exdf = parser.add_argument_group("exdf layout")
    exdf.add_argument("--run", type=int, default=1, metavar="N", help="run number, 0..9999 (default 1)")
    exdf.add_argument("--proposal", type=int, default=0, metavar="N", help="proposal number (default 0)")
    exdf.add_argument("--train-id-start", type=int, default=None, metavar="ID",
                      help="train ID of the first trigger's train; later triggers count on at 10 Hz "
                           "(default: the raw header's trigger.first_train_id, else 1)")
    exdf.add_argument("--sequence-size", type=_size, default=1 << 30, metavar="BYTES",
                      help="start a new sequence file when a file's data would pass this (e.g. 500M, 2G; "
                           "default 1G)")
    exdf.add_argument("--source", default="TPX3/CAM/1:daqOutput", metavar="NAME",
                      help="instrument source name (default TPX3/CAM/1:daqOutput)")
    exdf.add_argument("--aggregator", default="TPX01", metavar="NAME",
                      help="aggregator part of the file names (default TPX01)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--segment-words", type=int, default=1 << 20, help=argparse.SUPPRESS)
    parser.add_argument("--margin-words", type=int, default=1 << 16, help=argparse.SUPPRESS)


def _size(text: str) -> int:
    """``1000``, ``500K``, ``500M``, ``2G`` (powers of 1024) -> bytes."""
    t = text.strip().upper().rstrip("B")
    scale = 1
    if t and t[-1] in "KMGT":
        scale = 1024 ** ("KMGT".index(t[-1]) + 1)
        t = t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 2G)") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"size must be at least 1 byte, not {text!r}")
    return int(value)


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
                              compression=args.compression, allow_damaged=args.allow_damaged, swmr=args.swmr,
                              run=args.run, proposal=args.proposal, train_id_start=args.train_id_start,
                              sequence_bytes=args.sequence_size, exdf_source=args.source,
                              aggregator=args.aggregator)
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
    for line in summary.notes:
        print(line)
    for w in summary.warnings:
        print(f"tpx3 process: warning: {w}", file=sys.stderr)
    return 0
