"""The ``tpx3`` command line: ``tpx3 <command> [options]``.

Each subcommand lives in ``tpx3lib/commands/<name>.py`` and provides
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only
for the command that runs, so ``tpx3 --help`` is fast and a missing optional
dependency of one command does not break the others.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

__all__ = ["main", "COMMANDS"]

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("tpx3lib.commands.info", "describe a raw/tpx3/processed file: format, header, counts, rates"),
    "decode": ("tpx3lib.commands.decode", "decode a raw file and print a summary of pixels, triggers and events"),
    "process": ("tpx3lib.commands.process", "post-process raw files to HDF5 (pymepix or European XFEL layout)"),
    "sim": ("tpx3lib.commands.sim", "run a simulated SPIDR board, or write simulated data files"),
    "acquire": ("tpx3lib.commands.acquire", "run an acquisition from a SPIDR board (or the simulator)"),
    "serve": ("tpx3lib.commands.serve", "replay a recording or run as a Karabo Bridge stream"),
    "timewalk": ("tpx3lib.commands.timewalk", "derive a timewalk correction table from calibration data"),
    "tango": ("tpx3lib.commands.tango", "start the embedded Tango database and register devices"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    p = argparse.ArgumentParser(
        prog="tpx3",
        description="Timepix3 / SPIDR data acquisition tools.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun 'tpx3 <command> --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("command", nargs="?", help="one of: " + ", ".join(COMMANDS))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    # Split global options from the subcommand and its own arguments.
    idx = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    gargs = top.parse_args(argv[: idx + 1] if idx < len(argv) else argv)
    if gargs.version:
        from tpx3lib import __version__
        print(__version__)
        return 0
    if gargs.command is None:
        top.print_help()
        return 0
    if gargs.command not in COMMANDS:
        top.error(f"unknown command {gargs.command!r}; choose from {', '.join(COMMANDS)}")
    logging.basicConfig(
        level=logging.WARNING - 10 * min(gargs.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    modname, help_ = COMMANDS[gargs.command]
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name == modname:
            print(f"tpx3 {gargs.command}: not available in this version", file=sys.stderr)
            return 2
        raise
    sub = argparse.ArgumentParser(prog=f"tpx3 {gargs.command}", description=help_)
    mod.add_arguments(sub)
    args = sub.parse_args(argv[idx + 1:])
    args.verbose = gargs.verbose
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence: a message, not a traceback
        from tpx3lib.errors import Tpx3Error
        if isinstance(exc, (Tpx3Error, OSError)) and gargs.verbose < 2:
            print(f"tpx3 {gargs.command}: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
