"""``tpx3 acquire --spidr HOST:PORT --seconds N [-o FILE] [--config FILE]``: a whole acquisition.

Connects to the SPIDR board (or ``tpx3 sim``), optionally loads a chip configuration
(.spx or .yaml, every chip), starts the live pipeline (one UDP receiver process per
chip, decode, events, optional centroids), points each chip's UDP stream at it, opens
the shutter for N seconds, shows a status line (rates, losses) while it runs, then
stops, drains and prints a summary. ``-o FILE`` records the raw datagrams (native raw
format; one file per chip when there are several) for ``tpx3 process`` later.

Exit status: 0 when nothing was lost, 1 when datagrams were lost or a stage failed
(the summary says which), 2 for bad arguments or an unreachable board.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["add_arguments", "run", "parse_address"]


def parse_address(text: str, default_port: int = 50000) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        host, port = text, str(default_port)
    try:
        p = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r} (expected HOST:PORT)") from None
    if not 0 < p < 65536:
        raise argparse.ArgumentTypeError(f"port {p} out of range 1..65535")
    return host, p


def _window(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX in seconds, got {text!r}") from None
    if not lo <= hi:
        raise argparse.ArgumentTypeError(f"event window min {lo} is above max {hi}")
    return lo, hi


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spidr", type=parse_address, default=("127.0.0.1", 50000), metavar="HOST:PORT",
                        help="SPIDR control address (default 127.0.0.1:50000)")
    parser.add_argument("--seconds", type=float, required=True, help="shutter open time in seconds")
    parser.add_argument("-o", "--output", metavar="FILE", help="record the raw data to this native raw file")
    parser.add_argument("--config", metavar="FILE", help="chip configuration (.spx or .yaml) for every chip")
    parser.add_argument("--bias", type=float, metavar="VOLTS", help="enable the bias supply at this voltage")
    parser.add_argument("--udp-host", default="127.0.0.1", help="address the receivers bind and the board sends "
                        "to (default 127.0.0.1)")
    parser.add_argument("--udp-port", type=int, default=8192, help="UDP port of chip 0, chip i uses port + i "
                        "(default 8192 like SPIDR; 0 = free ports chosen here)")
    parser.add_argument("--centroid", action="store_true", help="cluster hits into centroids")
    parser.add_argument("--event-window", type=_window, default=(0.0, 1e-3), metavar="MIN,MAX",
                        help="time of flight window in seconds (default 0,0.001)")
    parser.add_argument("--train-id-start", type=int, metavar="ID",
                        help="give triggers European XFEL train IDs counting from ID")
    parser.add_argument("--ring-mb", type=int, default=128, help="shared-memory ring per chip in MB (default 128)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--status-interval", type=float, default=1.0, help="seconds between status lines")


def _status(pipe, elapsed: float, seconds: float) -> str:
    s = pipe.statistics()
    return (f"{elapsed:5.1f}/{seconds:.1f} s  hits {s['hit_rate'] / 1e6:7.3f} M/s  trig {s['trigger_rate']:6.1f}/s  "
            f"centroids {s['centroid_rate'] / 1e3:8.1f} k/s  data {s['data_rate'] / 1e6:7.2f} MB/s  "
            f"packets {s['packets_received']:,}  backlog {s['backlog_datagrams']:,}  lost {s['packets_lost']:,}")


def run(args) -> int:
    from tpx3lib.api import Tpx3Connection
    from tpx3lib.errors import ConfigError, Tpx3Error
    from tpx3lib.pipeline import LivePipeline, ProcessingConfig

    if not args.seconds > 0:
        print("tpx3 acquire: --seconds must be > 0", file=sys.stderr)
        return 2
    if args.udp_port and not 0 < args.udp_port < 65536:
        print(f"tpx3 acquire: --udp-port {args.udp_port} out of range", file=sys.stderr)
        return 2
    try:
        conn = Tpx3Connection(args.spidr, configure=True)
    except (OSError, Tpx3Error) as exc:
        print(f"tpx3 acquire: cannot connect to the SPIDR board at {args.spidr[0]}:{args.spidr[1]}: {exc}",
              file=sys.stderr)
        return 2
    pipe = None
    interrupted = False
    try:
        chips = list(range(len(conn)))
        if args.config:
            for c in chips:
                conn[c].load_config(args.config)
        if args.bias is not None:
            conn.bias_voltage = args.bias
        products = ("events", "centroids") if args.centroid else ("events",)
        processing = ProcessingConfig(products=products, event_window_s=args.event_window)
        source = None
        if args.train_id_start is not None:
            from tpx3lib.trainid import CountingTrainIdSource
            start = args.train_id_start
            CountingTrainIdSource(start)            # ConfigError now, not in a thread
            source = lambda chip: CountingTrainIdSource(start)   # noqa: E731
        spidr_chips = list(conn.board.chips)
        pipe = LivePipeline(chips=chips, ports=[args.udp_port + c if args.udp_port else 0 for c in chips],
                            host=args.udp_host, processing=processing, train_id_source=source,
                            capture_options={"ring_bytes": args.ring_mb << 20},
                            board_packets=lambda: {c: spidr_chips[c].pixel_packet_counter for c in chips})
        pipe.start()
        for c, port in zip(chips, pipe.ports):
            conn[c].set_destination(args.udp_host, port)
        if args.output:
            path = pipe.start_recording(args.output, header=_header(conn, chips, args))
            print(f"recording to {path}", file=sys.stderr)
        conn.start()
        t0 = time.monotonic()
        tty = sys.stderr.isatty()
        try:
            next_status = t0 + args.status_interval
            while (now := time.monotonic()) - t0 < args.seconds:
                if pipe.state.name == "FAULT":
                    break
                time.sleep(min(0.05, max(0.0, t0 + args.seconds - now)))
                if time.monotonic() >= next_status:
                    line = _status(pipe, time.monotonic() - t0, args.seconds)
                    print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
                    next_status += args.status_interval
        except KeyboardInterrupt:
            interrupted = True
        finally:
            conn.stop()
        if tty:
            print(file=sys.stderr)
        summary = pipe.stop()
        summary["state"] = pipe.state.name
        summary["fault_reason"] = pipe.fault_reason
        summary["seconds"] = args.seconds
        summary["statistics"] = pipe.statistics()
        _print_summary(summary, args)
        lost = summary["totals"].get("lost_datagrams", 0) + summary["totals"].get("ring_overruns", 0)
        if interrupted:
            return 130
        return 1 if (lost or pipe.fault_reason or summary.get("sink_errors")) else 0
    except ConfigError as exc:
        print(f"tpx3 acquire: {exc}", file=sys.stderr)
        return 2
    finally:
        if pipe is not None:
            pipe.abort()
        conn.close()


def _header(conn, chips, args) -> dict:
    chip_info = []
    for c in chips:
        ch = conn[c]
        info = {"index": c}
        try:
            info["name"] = ch.device_name
            info["dacs"] = {k: int(v) for k, v in ch.config.dacs.items()}
        except Exception:   # the header is informative; a missing field must not stop the run
            pass
        chip_info.append(info)
    return {"chips": chip_info, "user": {"command": "tpx3 acquire", "seconds": args.seconds,
                                        "config": args.config or ""}}


def _print_summary(summary: dict, args) -> None:
    if args.json:
        print(json.dumps(summary, default=str, indent=1))
        return
    t = summary["totals"]
    st = summary["statistics"]
    secs = max(args.seconds, 1e-9)
    print(f"acquired {args.seconds:g} s from {args.spidr[0]}:{args.spidr[1]}, chips {list(summary['chips'])}")
    print(f"  received  {t['datagrams']:,} datagrams, {t['bytes'] / 1e6:,.1f} MB "
          f"({t['bytes'] / 1e6 / secs:,.1f} MB/s)")
    if "board_sent" in summary:
        print(f"  board sent {sum(summary['board_sent'].values()):,} datagrams; lost {t['lost_datagrams']:,}")
    print(f"  losses    kernel drops {t['kernel_drops']:,}, ring overruns {t['ring_overruns']:,}, "
          f"unprocessed {t['unprocessed_datagrams']:,}")
    print(f"  decoded   {t['hits']:,} hits ({t['hits'] / secs / 1e6:.3f} M/s), {t['triggers']:,} TDC edges, "
          f"{t['events']:,} event hits, {t['centroids']:,} centroids")
    print(f"  trains    {summary['trains_completed']:,} complete, last train ID {summary['last_train_id']}")
    for c, rec in (summary.get("recording") or {}).items():
        err = f"  ERROR {rec['error']}" if rec.get("error") else ""
        print(f"  recorded  chip {c}: {rec['path']} ({rec['bytes'] / 1e6:,.1f} MB, {rec['chunks']:,} chunks){err}")
    if summary.get("fault_reason"):
        print(f"  FAULT     {summary['fault_reason']}")
    for name, err in (summary.get("sink_errors") or {}).items():
        print(f"  sink {name} failed: {err}")
    del st
