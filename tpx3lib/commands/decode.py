"""``tpx3 decode FILE``: decode a raw file and print what is in it.

Reads pymepix .raw (with or without the start stamp) and plain word files
directly; other formats go through tpx3lib.files when it is available.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

__all__ = ["add_arguments", "run", "decode_file"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="raw data file")
    p.add_argument("--longtime", type=int, default=None,
                   help="external 48-bit time reference in 25 ns ticks (default: the stream's heartbeats)")
    p.add_argument("--event-window", nargs=2, type=float, metavar=("MIN", "MAX"), default=(0.0, 1e-3),
                   help="inclusive time-of-flight window in seconds (default 0 1e-3)")
    p.add_argument("--tdc", type=int, choices=(1, 2), default=1, help="trigger input (default 1)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _read_words(path: Path) -> np.ndarray:
    data = path.read_bytes()
    if len(data) >= 8:
        first = int.from_bytes(data[:8], "little")
        # pymepix files start with a time_ns stamp unless the first word is a 0x44 heartbeat
        if (first >> 56) != 0x44 and 1_000_000_000 * 10**9 < first < 4_000_000_000 * 10**9:
            data = data[8:]
    return np.frombuffer(data[: len(data) - len(data) % 8], "<u8")


def decode_file(path: Path, longtime=None, window=(0.0, 1e-3), tdc=1) -> dict:
    from tpx3lib.decode import EventBuilder, StreamDecoder
    from tpx3lib.dtypes import toa_seconds

    words = _read_words(path)
    dec = StreamDecoder(longtime=longtime)
    eb = EventBuilder(tdc=tdc, window_s=window)
    n_pix = n_trig = events = 0
    t_min = t_max = None
    step = 1 << 22
    chunks = [dec.feed(words[i:i + step]) for i in range(0, words.size, step)] + [dec.flush()]
    for out in chunks:
        events += eb.feed(out.pixels, out.tdcs).size
        n_pix += out.pixels.size
        n_trig += out.tdcs.size
        if out.pixels.size:
            lo, hi = int(out.pixels["toa"].min()), int(out.pixels["toa"].max())
            t_min = lo if t_min is None else min(t_min, lo)
            t_max = hi if t_max is None else max(t_max, hi)
    events += eb.flush().size
    duration = float(toa_seconds(t_max - t_min)) if t_min is not None else 0.0
    return {
        "file": str(path),
        "words": int(words.size),
        "pixels": n_pix,
        "tdc_edges": n_trig,
        "events": events,
        "duration_s": duration,
        "hit_rate_hz": n_pix / duration if duration > 0 else None,
        "word_types": dec.counts(),
        "events_detail": eb.counters,
    }


def run(args) -> int:
    from tpx3lib.errors import FileFormatError
    if not args.file.is_file():
        raise FileFormatError("no such file", path=str(args.file))
    s = decode_file(args.file, args.longtime, tuple(args.event_window), args.tdc)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"{s['file']}: {s['words']} words, {s['pixels']} pixels, {s['tdc_edges']} TDC edges, "
          f"{s['events']} event pixels in window, {s['duration_s']:.6f} s of hits")
    wt = {k: v for k, v in s["word_types"].items() if v}
    print("word types and anomalies: " + ", ".join(f"{k}={v}" for k, v in wt.items()))
    print("events: " + ", ".join(f"{k}={v}" for k, v in s["events_detail"].items()))
    return 0
