"""``tpx3 sim``: run a simulated SPIDR board, or write a simulated data file.

Serve (the default)::

    tpx3 sim [--host 127.0.0.1] [--port 50000] [--chips N] [--rate HZ] [--start-near-wrap [S]]

runs in the foreground until SIGINT or SIGTERM. Its first line on stdout is
``listening on HOST:PORT`` (flushed), so a parent process can start it with
``--port 0`` and read the port it got (``line.rsplit(":", 1)[1]``).

Write::

    tpx3 sim --write FILE --hits N [--format pymepix|tpx3] [--truth FILE]

writes a file of exactly N simulated pixel hits (and, with ``--truth``, what
was generated) and prints a one-line summary.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50000, help="TCP control port (0: any free port; default 50000)")
    parser.add_argument("--chips", type=int, default=1, metavar="N", help="number of chips (default 1)")
    parser.add_argument("--rate", type=float, default=None, metavar="HZ",
                        help="particle impacts (clusters) per second per chip (default: the physics model's)")
    parser.add_argument("--trigger-rate", type=float, default=None, metavar="HZ",
                        help="TDC1 trigger rate (default: the physics model's, 10 Hz)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the physics model (default 0)")
    parser.add_argument("--start-near-wrap", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
                        help="start the timer (and restart it after every timer reset) SECONDS (default 2) "
                             "before the 26.84 s wrap of the 30-bit pixel time")
    out = parser.add_argument_group("write a file instead of serving")
    out.add_argument("--write", metavar="FILE", help="write simulated data to FILE and exit")
    out.add_argument("--hits", type=int, metavar="N", help="number of pixel hits to write (with --write)")
    out.add_argument("--format", choices=("pymepix", "tpx3"), default="pymepix", help="file format (default pymepix)")
    out.add_argument("--truth", metavar="FILE", help="also write the ground truth of what was generated")


def _model(args):
    from simulators.physics import PhysicsModel
    kw = {"seed": args.seed}
    if args.rate is not None:
        kw["hit_rate_hz"] = args.rate
    if args.trigger_rate is not None:
        kw["trigger_rate_hz"] = args.trigger_rate
    return PhysicsModel(**kw)


def _start_ticks(args) -> int:
    if args.start_near_wrap is None:
        return 0
    from simulators.clock import BoardClock
    return BoardClock.ticks_before_wrap(args.start_near_wrap)


def run(args) -> int:
    if args.chips < 1:
        print("tpx3 sim: --chips must be at least 1", file=sys.stderr)
        return 2
    if args.write:
        return _write(args)
    if args.hits is not None or args.truth:
        print("tpx3 sim: --hits and --truth go with --write", file=sys.stderr)
        return 2
    return _serve(args)


def _write(args) -> int:
    from simulators.files import write_simulated_file
    if args.hits is None:
        print("tpx3 sim: --write needs --hits N", file=sys.stderr)
        return 2
    summary = write_simulated_file(args.write, args.hits, fmt=args.format, model=_model(args), seed=args.seed,
                                   truth_path=args.truth, n_chips=args.chips, start_ticks=_start_ticks(args))
    print(f"wrote {summary['path']}: {summary['format']}, {summary['chips']} chip(s), {summary['n_hits']} hits, "
          f"{summary['n_bytes']} bytes, {summary['duration_s']:.3f} s of board time"
          + (f"; truth in {summary['truth_path']}" if summary.get("truth_path") else ""), flush=True)
    return 0


def _serve(args) -> int:
    from simulators.spidr_board import SimulatedSpidrBoard
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %d: stopping", signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    board = SimulatedSpidrBoard(args.host, args.port, n_chips=args.chips, model=_model(args),
                                start_ticks=_start_ticks(args))
    try:
        board.start()
        print(f"listening on {board.host}:{board.port}", flush=True)
        while not stop.wait(3600):
            pass
    finally:
        board.stop()
        for s, h in old.items():
            signal.signal(s, h)
    print("stopped", flush=True)
    return 0
