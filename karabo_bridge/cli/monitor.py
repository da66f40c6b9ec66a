"""karabo-bridge-monitor: print every train received, then the client's counters."""
from __future__ import annotations

import argparse
import gc
import sys

from ..client import Client
from .glimpse import SOCKET_MAP, print_one_train

__all__ = ["main", "format_stats"]


def format_stats(stats) -> str:
    """A short human summary of a client's :class:`~karabo_bridge.stats.ClientStats`."""
    d = stats.as_dict()
    wait = d.get("wait") or {}
    lines = [f"trains received: {d['trains']} ({d['bytes'] / 1e6:.1f} MB), "
             f"missed (train-ID gaps): {d['missed']}, timeouts: {d['timeouts']}, "
             f"protocol errors: {d['protocol_errors']}, server errors: {d['server_errors']}"]
    if wait.get("median") is not None:
        lines.append(f"wait per train: median {wait['median'] * 1e3:.2f} ms, "
                     f"p99 {wait['p99'] * 1e3:.2f} ms")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="karabo-bridge-monitor",
                                 description="Monitor data from a Karabo bridge server")
    ap.add_argument("endpoint", help="ZMQ address to connect to, e.g. 'tcp://localhost:4545'")
    ap.add_argument("-z", "--server-socket", default="REP", choices=list(SOCKET_MAP),
                    help="Socket type used by the karabo bridge server (default REP)")
    ap.add_argument("-v", "--verbose", action="count", default=0,
                    help="Select verbosity (-vvv for most verbose)")
    ap.add_argument("--ntrains", metavar="N", type=int, help="Stop after N trains")
    ap.add_argument("-t", "--timeout", type=float, default=None,
                    help="Stop when no train arrives for this many seconds")
    args = ap.parse_args(argv)

    rc = 0
    with Client(args.endpoint, sock=SOCKET_MAP[args.server_socket], timeout=args.timeout) as client:
        n = 0
        try:
            while args.ntrains is None or n < args.ntrains:
                print_one_train(client, verbosity=args.verbose)
                n += 1
                gc.collect()  # large trains: release their buffers promptly
        except KeyboardInterrupt:
            print("\nexit.")
        except TimeoutError as exc:
            print(f"karabo-bridge-monitor: {exc}", file=sys.stderr)
            rc = 1
        print(format_stats(client.stats))
    return rc


if __name__ == "__main__":
    sys.exit(main())
