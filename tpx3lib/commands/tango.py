"""``tpx3 tango``: run the embedded Tango database and register the Timepix3 devices.

    tpx3 tango db [--dir DIR] [--port 10000] [--host 127.0.0.1] [--background]
    tpx3 tango stop [--dir DIR]
    tpx3 tango status [--dir DIR]
    tpx3 tango setup [--config FILE] [--tango-host HOST:PORT]

``db`` starts PyTango's sqlite-backed database server (a real Tango DataBase device) and
prints the ``TANGO_HOST`` to use. ``setup`` registers the server instance, devices and their
properties from a YAML file in any Tango database (embedded or a facility's MariaDB one).
Then start the device server with ``TANGO_HOST=... Tpx3Server <instance>``.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  tpx3 tango db --background          # embedded database on 127.0.0.1:10000\n"
        "  tpx3 tango setup                    # register the simulator's devices\n"
        "  TANGO_HOST=127.0.0.1:10000 Tpx3Server sim\n"
        "  tpx3 tango stop\n"
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    def dir_opt(p):
        p.add_argument("--dir", type=Path, default=None,
                       help="directory of the sqlite file, log and pid file (default: ~/.local/share/tpx3/tango)")

    p = sub.add_parser("db", help="run the embedded Tango database (PyTango's sqlite DataBaseds)")
    dir_opt(p)
    p.add_argument("--port", type=int, default=10000, help="TCP port (default 10000; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 serves the network)")
    p.add_argument("--background", action="store_true",
                   help="start it in the background, write a pid file and return (stop with 'tpx3 tango stop')")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for it to answer (default 20)")

    p = sub.add_parser("stop", help="stop a database started with 'db --background'")
    dir_opt(p)

    p = sub.add_parser("status", help="say whether a background database runs, and where")
    dir_opt(p)

    p = sub.add_parser("setup", help="register server, devices and properties from a YAML file (idempotent)")
    p.add_argument("--config", type=Path, default=None,
                   help="registration YAML (default: the simulator example shipped with tango_tpx3)")
    p.add_argument("--tango-host", default=None,
                   help="HOST:PORT of the database (default: $TANGO_HOST, else a background 'db' of --dir)")
    p.add_argument("--check", action="store_true", help="only validate the file, register nothing")
    dir_opt(p)


def run(args: argparse.Namespace) -> int:
    return {"db": _db, "stop": _stop, "status": _status, "setup": _setup}[args.action](args)


def _db(args) -> int:
    from tango_tpx3 import database as tdb

    directory = args.dir or tdb.DEFAULT_DIR
    running = tdb.read_pid_file(directory)
    if running is not None:
        print(f"a database from {directory} already runs (pid {running.pid})", file=sys.stderr)
        print(f"TANGO_HOST={running.tango_host}")
        return 1
    handle = tdb.start_database(directory, args.port, args.host, timeout=args.timeout, detach=args.background)
    if args.background:
        pid_file = tdb.write_pid_file(handle, directory)
        print(f"Tango database running in the background (pid {handle.pid}), data in {handle.db_file}")
        print(f"log: {handle.log_file}; pid file: {pid_file}; stop it with: tpx3 tango stop"
              + (f" --dir {directory}" if args.dir else ""))
        print(f"export TANGO_HOST={handle.tango_host}")
        return 0
    pid_file = tdb.write_pid_file(handle, directory)   # so 'tpx3 tango stop/status' find it too
    print(f"Tango database running (pid {handle.pid}), data in {handle.db_file}, log {handle.log_file}")
    print(f"export TANGO_HOST={handle.tango_host}")
    print("Ctrl-C stops it.", flush=True)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        code = handle.process.wait()
        print(f"the database server exited with code {code}; see {handle.log_file}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        handle.stop()
        print("Tango database stopped")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        handle.stop()
        pid_file.unlink(missing_ok=True)


def _stop(args) -> int:
    from tango_tpx3 import database as tdb

    directory = args.dir or tdb.DEFAULT_DIR
    handle = tdb.stop_pid_file(directory)
    if handle is None:
        print(f"no background Tango database of {directory} is running")
        return 0
    print(f"stopped the Tango database at {handle.tango_host} (pid {handle.pid})")
    return 0


def _status(args) -> int:
    from tango_tpx3 import database as tdb

    directory = args.dir or tdb.DEFAULT_DIR
    handle = tdb.read_pid_file(directory)
    if handle is None:
        print(f"no background Tango database of {directory} is running")
        return 1
    print(f"running (pid {handle.pid}), data in {handle.db_file}")
    print(f"export TANGO_HOST={handle.tango_host}")
    return 0


def _setup(args) -> int:
    from tango_tpx3 import database as tdb

    path = args.config or tdb.EXAMPLE_CONFIG
    servers = tdb.load_registration(path)
    n = sum(len(s.devices) for s in servers)
    if args.check:
        print(f"{path}: valid ({len(servers)} server(s), {n} device(s))")
        return 0
    host = args.tango_host or tdb.tango_host_from_env()
    if not host:
        handle = tdb.read_pid_file(args.dir or tdb.DEFAULT_DIR)
        if handle is None:
            print("tpx3 tango setup: error: no Tango database: set TANGO_HOST, pass --tango-host, "
                  "or start one with 'tpx3 tango db --background'", file=sys.stderr)
            return 1
        host = handle.tango_host
    tdb.wait_for_database(host, timeout=5.0)
    changes = tdb.register(servers, host)
    for line in changes:
        print(line)
    print(f"{path}: {len(changes) or 'no'} change(s) in the database at {host} "
          f"({n} device(s) of {', '.join(s.server for s in servers)})")
    for s in servers:
        print(f"start the server with: TANGO_HOST={host} {s.server.split('/')[0]} {s.server.split('/')[1]}")
    return 0
