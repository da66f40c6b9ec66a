"""``tpx3 info FILE...``: describe a raw recording or a processed HDF5 file.

For raw files (native, pymepix, .tpx3 - detected by content): format, header,
closing counters, damage found, word-type counts per chip, number of triggers,
duration (from the time stamps in the data) and hit rate. The file is streamed,
so any size works. For HDF5 files: groups, datasets (shape, dtype, units) and
attributes. ``--json`` prints the same as one JSON object per file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from tpx3lib.errors import FileFormatError

__all__ = ["add_arguments", "run", "describe_raw", "describe_hdf5"]

_LABELS = {
    "pixel": "pixel",
    "tdc1_rising": "TDC1 rising (0x6F)",
    "tdc1_falling": "TDC1 falling (0x6A)",
    "tdc2_rising": "TDC2 rising (0x6E)",
    "tdc2_falling": "TDC2 falling (0x6B)",
    "global_time_low": "global time low (0x44)",
    "global_time_high": "global time high (0x45)",
    "end_of_command": "end of command (0x71)",
    "packet_id": "packet id (0x5X)",
    "unknown": "unknown",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="raw recording (.raw/.tpx3/native) or processed .h5")
    parser.add_argument("--json", action="store_true", help="print a JSON object per file instead of text")
    parser.add_argument("--chunk-words", type=int, default=1 << 20, help=argparse.SUPPRESS)


def describe_raw(path, chunk_words: int = 1 << 20) -> dict:
    """Read a raw file through and return its description as a dict."""
    from tpx3lib.files import open_raw
    from tpx3lib.files.wordstats import WordStats

    stats = WordStats()
    chunks = datagrams = 0
    recv_first = recv_last = None
    with open_raw(path, "rb", warn=False) as reader:
        for c in reader.chunks():
            chunks += 1
            if c.datagram_sizes is not None:
                datagrams += len(c.datagram_sizes)
            if c.recv_time_ns:
                recv_first = c.recv_time_ns if recv_first is None else recv_first
                recv_last = c.recv_time_ns
            # feed in bounded slices (pymepix/tpx3 chunks are already bounded)
            for start in range(0, len(c.words), chunk_words):
                stats.update(c.words[start:start + chunk_words], c.chip)
        info = {
            "path": os.fspath(path),
            "kind": "raw",
            "format": reader.format,
            "size_bytes": os.path.getsize(path),
            "header": reader.header,
            "closing": reader.closing,
            "chunks": chunks,
            "datagrams": datagrams if reader.format == "native" else None,
            "host_time_span_s": (recv_last - recv_first) / 1e9 if recv_first is not None else None,
            "truncated": reader.truncated,
            "truncated_offset": reader.truncated_offset,
            "problems": [{"offset": e.offset, "message": str(e)} for e in reader.errors],
            "chunks_lost": getattr(reader, "chunks_lost", None),
        }
    info.update(stats.summary())
    return info


def describe_hdf5(path) -> dict:
    """Groups and datasets of an HDF5 file with shapes, dtypes and attributes."""
    import h5py
    import numpy as np

    def attrs_of(obj) -> dict:
        out = {}
        for k, v in obj.attrs.items():
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            elif isinstance(v, np.ndarray):
                v = v.tolist() if v.size <= 16 else f"array{v.shape} {v.dtype}"
            elif isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, str) and len(v) > 300:
                v = v[:300] + "..."
            out[k] = v
        return out

    items = []
    with h5py.File(path, "r") as f:
        root = attrs_of(f)

        def visit(name, obj):
            entry = {"path": "/" + name, "attrs": attrs_of(obj)}
            if isinstance(obj, h5py.Dataset):
                entry.update(type="dataset", shape=list(obj.shape), dtype=str(obj.dtype),
                             compression=obj.compression, chunks=list(obj.chunks) if obj.chunks else None)
            else:
                entry["type"] = "group"
            items.append(entry)

        f.visititems(visit)
    return {"path": os.fspath(path), "kind": "hdf5", "format": "hdf5", "size_bytes": os.path.getsize(path),
            "root_attrs": root, "items": items}


def _fmt_time(s) -> str:
    if s is None:
        return "n/a"
    if s >= 1 or s == 0:
        return f"{s:.6g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.6g} ms"
    return f"{s * 1e6:.6g} us"


def _fmt_rate(r) -> str:
    if r is None:
        return "n/a"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if r >= div:
            return f"{r / div:.4g} {unit}Hz"
    return f"{r:.4g} Hz"


def _print_raw(info: dict, out) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"file:       {info['path']}")
    p(f"format:     {info['format']}")
    p(f"size:       {info['size_bytes']:,} bytes")
    hdr = info["header"]
    if info["format"] == "pymepix":
        stamp = hdr.get("start_time")
        p(f"start:      {stamp + ' (8-byte start stamp)' if stamp else 'no start stamp'}")
    elif info["format"] == "native":
        p("header:")
        for line in json.dumps(hdr, indent=2, ensure_ascii=False).splitlines():
            p("  " + line)
        if info["closing"] is not None:
            p("closing:")
            for line in json.dumps(info["closing"], indent=2).splitlines():
                p("  " + line)
    dg = f", {info['datagrams']:,} datagrams" if info.get("datagrams") is not None else ""
    p(f"chunks:     {info['chunks']:,}{dg}")
    if info.get("host_time_span_s") is not None:
        p(f"host time:  {_fmt_time(info['host_time_span_s'])} between first and last chunk received")
    state = "complete"
    if info["truncated"]:
        state = f"TRUNCATED at offset {info['truncated_offset']} (read up to the last complete chunk)"
    p(f"state:      {state}")
    damage = [e for e in info["problems"] if "cut short" not in e["message"] and "closing record" not in e["message"]]
    if damage:
        p(f"problems:   {len(damage)} damaged region(s)")
        for e in damage:
            p(f"  - {e['message']}")
    for chip, s in info["chips"].items():
        p(f"chip {chip}:     {s['words']:,} words")
        for key, n in s["counts"].items():
            p(f"  {_LABELS.get(key, key):<26}{n:>14,}")
        for b, n in s["other_header_bytes"].items():
            p(f"    of which header byte {b}: {n:,}")
        p(f"  triggers (TDC1 rising)    {s['triggers']:>14,}")
        hb = (f"{s['heartbeats']} heartbeats, span {_fmt_time(s['heartbeat_span_s'])}"
              if s["heartbeats"] else "no heartbeats")
        p(f"  duration                  {_fmt_time(s['duration_s'])} (span of time stamps in the data; {hb})")
        p(f"  hit rate                  {_fmt_rate(s['hit_rate_hz'])}")
        p(f"  trigger rate              {_fmt_rate(s['trigger_rate_hz'])}")
    if len(info["chips"]) > 1:
        t = info["total"]
        p(f"total:      {t['words']:,} words, {t['counts']['pixel']:,} pixels, {t['triggers']:,} triggers, "
          f"duration {_fmt_time(t['duration_s'])}, hit rate {_fmt_rate(t['hit_rate_hz'])}")


def _print_hdf5(info: dict, out) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"file:       {info['path']}")
    p("format:     hdf5 (processed)")
    p(f"size:       {info['size_bytes']:,} bytes")
    for k, v in info["root_attrs"].items():
        p(f"  @{k} = {v}")
    for item in info["items"]:
        if item["type"] == "group":
            p(f"{item['path']}/")
        else:
            comp = f", {item['compression']}" if item["compression"] else ""
            rows = item["shape"][0] if item["shape"] else 1
            p(f"{item['path']}  {rows:,} rows  shape {tuple(item['shape'])}  {item['dtype']}{comp}")
        for k, v in item["attrs"].items():
            p(f"    @{k} = {v}")


def run(args) -> int:
    from tpx3lib.files import detect_format

    out = sys.stdout
    status = 0
    for path in args.files:
        try:
            if not os.path.exists(path):
                raise FileNotFoundError(2, "no such file", path)
            fmt = detect_format(path)
            info = describe_hdf5(path) if fmt == "hdf5" else describe_raw(path, args.chunk_words)
        except (FileFormatError, OSError) as exc:
            print(f"tpx3 info: {path}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}",
                  file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps(info, default=str), file=out)
        elif info["kind"] == "hdf5":
            _print_hdf5(info, out)
        else:
            _print_raw(info, out)
        if len(args.files) > 1 and not args.json:
            print(file=out)
    return status
