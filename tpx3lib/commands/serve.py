"""``tpx3 serve FILE-or-RUN``: replay a raw recording or a processed run as a Karabo Bridge stream.

A raw recording (native, pymepix .raw, .tpx3) is processed as the live pipeline does
(events, centroids, train IDs counted from ``--start-id``); a run directory (or one run
file) written by the run-file sink is read back. Either way the trains go out one
message per train in the live stream's layout (docs/karabo-bridge.md, "Publishing
Timepix3 data"), at the original pace, at ``--rate`` trains per second, or flat out
(``--rate 0``). Ends after the last train (or ``--trains N``); ``--loop`` starts again.
"""
from __future__ import annotations

import argparse
import math
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE-or-RUN", help="raw recording, or run directory / run file (.h5)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--port", type=int, help="bind tcp://*:PORT (all interfaces, as the reference tools)")
    where.add_argument("--endpoint", default=None,
                       help="ZeroMQ endpoint to bind (default tcp://127.0.0.1:4545)")
    parser.add_argument("--sock", choices=["REP", "PUB", "PUSH"], default="REP",
                        help="socket type (default REP: consumers ask for each train)")
    parser.add_argument("--source", default=None, help="source name (default TPX3/CAM/1:daqOutput)")
    parser.add_argument("--protocol", choices=["2.2", "1.0"], default="2.2", help="protocol version (default 2.2)")
    parser.add_argument("--rate", type=float, default=None, metavar="HZ",
                        help="trains per second (default: the original pace; 0 = as fast as consumers take them)")
    parser.add_argument("--loop", action="store_true", help="replay again and again (train IDs keep increasing)")
    parser.add_argument("--trains", type=int, default=None, metavar="N", help="stop after N trains")
    raw = parser.add_argument_group("raw recordings")
    raw.add_argument("--start-id", type=int, default=None,
                     help="train ID of the first trigger (default: the recording header's, else 1)")
    raw.add_argument("--period", type=float, default=0.1, metavar="S",
                     help="nominal train period for counting train IDs (default 0.1 s)")
    raw.add_argument("--event-window", nargs=2, type=float, metavar=("MIN", "MAX"), default=(0.0, 1e-3),
                     help="time-of-flight window in s, inclusive (default 0 0.001; '-inf inf' = none)")
    raw.add_argument("--no-centroids", action="store_true", help="do not cluster (no centroids)")
    raw.add_argument("--timewalk", metavar="LUT", help="timewalk table applied before clustering")
    raw.add_argument("--chip", type=int, action="append", default=None, help="chip(s) to replay (default all)")
    parser.add_argument("--linger", type=float, default=1.0, metavar="S",
                        help="seconds to let the last trains leave after the end (default 1)")


def run(args) -> int:
    from karabo_bridge.server import Sender

    from tpx3lib.errors import ConfigError, Tpx3Error
    from tpx3lib.exdf.layout import DEFAULT_SOURCE
    from tpx3lib.replay import RunTrains, open_trains, replay

    source = args.source or DEFAULT_SOURCE
    endpoint = args.port if args.port is not None else (args.endpoint or "tcp://127.0.0.1:4545")
    lo, hi = args.event_window
    window = None if (math.isinf(lo) and math.isinf(hi)) else (lo, hi)
    try:
        if args.trains is not None and args.trains < 1:
            raise ConfigError("--trains must be >= 1")
        trains = open_trains(args.path, start_id=args.start_id, period_s=args.period, event_window_s=window,
                             centroids=not args.no_centroids, timewalk_path=args.timewalk,
                             chips=tuple(args.chip) if args.chip else None)
        kind = "run" if isinstance(trains, RunTrains) else "raw recording"
        sender = Sender(endpoint, sock=args.sock, protocol_version=args.protocol)
    except (Tpx3Error, OSError, ValueError) as exc:
        print(f"tpx3 serve: error: {exc}", file=sys.stderr)
        return 1
    pace = "original pace" if args.rate is None else ("flat out" if args.rate == 0 else f"{args.rate:g} trains/s")
    print(f"serving {kind} {args.path} as {source} on {sender.endpoint} ({args.sock}, {pace})", flush=True)
    try:
        stats = replay(trains, sender, source=source, rate=args.rate, loop=args.loop, max_trains=args.trains)
    except (Tpx3Error, OSError, ValueError) as exc:
        print(f"tpx3 serve: error: {exc}", file=sys.stderr)
        return 1
    finally:
        try:
            sender.server_socket.close(linger=int(max(0.0, args.linger) * 1000))
        finally:
            sender.close()
    print(f"sent {stats.trains_sent} trains ({stats.trains_empty} without hits) in {stats.seconds:.2f} s, "
          f"{stats.passes} pass(es); at most {stats.max_behind_s * 1e3:.1f} ms behind schedule")
    counters = getattr(trains, "counters", None)
    if counters:
        lost = {k: v for k, v in counters.items() if v and k in (
            "hits_late", "hits_unmatched", "centroids_late", "centroids_unmatched", "trains_without_id",
            "triggers_late", "triggers_unmatched", "trains_incomplete")}
        if lost:
            print("  " + ", ".join(f"{k} {v}" for k, v in lost.items()))
    return 0
