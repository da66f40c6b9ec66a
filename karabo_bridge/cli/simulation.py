"""karabo-bridge-server-sim: serve simulated detector data."""
from __future__ import annotations

import argparse
import signal
import sys

from ..simulation import DETECTORS, start_gen

__all__ = ["main"]


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    ap = argparse.ArgumentParser(prog="karabo-bridge-server-sim",
                                 description="Run a Karabo bridge server producing simulated data.")
    ap.add_argument("port", help="TCP port the server will bind (or a full ZeroMQ endpoint)")
    ap.add_argument("-z", "--server-socket", default="REP", choices=["REP", "PUB", "PUSH"],
                    help="Socket type used by the karabo bridge server (default REP)")
    ap.add_argument("-d", "--detector", default="AGIPD", choices=list(DETECTORS),
                    help="Which kind of detector to simulate (default: AGIPD)")
    ap.add_argument("-p", "--protocol", default="2.2", choices=["1.0", "2.2"],
                    help="Version of the Karabo Bridge protocol to send (default: 2.2)")
    ap.add_argument("-s", "--serialisation", default="msgpack", choices=["msgpack"],
                    help="Message serialisation format (default: msgpack)")
    ap.add_argument("-r", "--raw", action="store_true",
                    help="Simulate raw data (uint16) instead of corrected (float32)")
    ap.add_argument("-n", "--nsources", type=int, default=1,
                    help="Number of simulated detector sources to send (default 1)")
    ap.add_argument("-g", "--gen", default="random", choices=["random", "zeros"],
                    help="Generator function to generate simulated detector data")
    ap.add_argument("--data-like", default="online", choices=["online", "file"],
                    help="Data array axes ordering: online -> (modules, fs, ss, pulses), "
                         "file -> (pulses, modules, ss, fs)")
    ap.add_argument("--debug", action="store_true", help="More verbose terminal logging")
    ap.add_argument("--host", default="*",
                    help="Interface to bind the port on (default '*': all, as the reference; "
                         "use 127.0.0.1 for local only)")
    ap.add_argument("--ntrains", type=int, default=None, help="Stop after N trains")
    ap.add_argument("--rate", type=float, default=None,
                    help="Trains per second (default: as fast as clients take them)")
    args = ap.parse_args(argv)
    if args.detector == "AGIPDModule" and not args.raw:
        ap.error("AGIPDModule can only simulate raw data: add --raw")
    signal.signal(signal.SIGTERM, _sigterm)
    start_gen(args.port, args.server_socket, args.serialisation, args.protocol,
              args.detector, args.raw, args.nsources, args.gen, args.data_like,
              debug=args.debug, host=args.host, ntrains=args.ntrains, rate=args.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
