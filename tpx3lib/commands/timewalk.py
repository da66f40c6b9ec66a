"""``tpx3 timewalk INPUT... -o TABLE.npy``: derive a timewalk correction table from calibration data.

The table gives, per ToT bin of 25 ns (entry i for ToT = 25*(i+1) ns, 1023 entries),
the delay in ns to subtract from a hit's ToA/ToF (see docs/clustering.md). It is
measured as the median, per ToT bin, of each hit's delay behind the highest-ToT hit
of its cluster (``--reference max_tot``, default) or behind a known ToF peak
(``--reference tof_peak --tof-peak-ns T``), with the model ``a/(tot - b) + c``
fitted to the medians filling bins with too few hits.

Inputs (one or more, concatenated):
- ``.npz``: a structured array named ``events`` or ``hits`` (EVENT_DTYPE / PIXEL_DTYPE
  fields), or plain arrays ``x, y, tot, toa`` (+ optional ``event, tof, chip``), or
  pymepix-style ``ev_trigger, ev_x, ev_y, ev_tof_s, ev_tot_ns``;
- ``.npy``: a structured array as above;
- ``.h5``/``.hdf5``: a pymepix-layout processed file (``/raw``: trigger nr, x, y, tof, tot);
- anything else: a raw recording (native, pymepix or .tpx3), decoded with
  :mod:`tpx3lib.decode` into events (``--pixels``: into pixels, no triggers needed).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..dtypes import EVENT_DTYPE, TOA_UNIT_S
from ..errors import ConfigError, FileFormatError

__all__ = ["add_arguments", "run", "load_calibration_hits"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="calibration data (.npz, .npy, .h5 or a raw file)")
    parser.add_argument("-o", "--output", required=True, metavar="TABLE",
                        help="table to write: .npy (1023 float64 delays in ns) or text (.txt/.csv/...)")
    parser.add_argument("--reference", choices=("max_tot", "tof_peak"), default="max_tot",
                        help="delay relative to the cluster's highest-ToT hit (default) or to a ToF peak")
    parser.add_argument("--tof-peak-ns", type=float, default=None, help="ToF of the peak (with --reference tof_peak)")
    parser.add_argument("--peak-halfwidth-ns", type=float, default=500.0,
                        help="use hits within this of the ToF peak (default 500)")
    parser.add_argument("--window-ns", type=float, default=500.0,
                        help="clustering time window for --reference max_tot (default 500 ns)")
    parser.add_argument("--radius", type=int, default=1, help="clustering radius in pixels (default 1)")
    parser.add_argument("--min-size", type=int, default=2, help="smallest cluster used (default 2)")
    parser.add_argument("--tot-threshold-ns", type=int, default=0, help="drop hits with ToT <= this (default 0)")
    parser.add_argument("--min-count", type=int, default=10,
                        help="a ToT bin needs this many hits to use its median (default 10)")
    parser.add_argument("--fill", choices=("model", "model_only"), default="model",
                        help="model: measured medians, model in sparse bins; model_only: the fit everywhere")
    parser.add_argument("--chip", type=int, default=None, help="raw input: use only this chip")
    parser.add_argument("--pixels", action="store_true",
                        help="raw input: cluster decoded pixels (no triggers needed; ToF unavailable)")
    parser.add_argument("--event-window-s", type=float, nargs=2, default=(0.0, 1e-3), metavar=("MIN", "MAX"),
                        help="raw input: event (ToF) window in seconds (default 0 1e-3)")
    parser.add_argument("--text", action="store_true", help="also write a text copy next to the output (.txt)")


def _from_named_arrays(get, names, where: str) -> np.ndarray:
    """EVENT_DTYPE hits from a mapping of arrays (npz, h5 group)."""
    if "events" in names or "hits" in names:
        from ..cluster import as_event_array
        return as_event_array(np.asarray(get("events" if "events" in names else "hits")))
    if {"x", "y", "tot", "toa"} <= set(names):
        n = np.asarray(get("x")).size
        ev = np.zeros(n, EVENT_DTYPE)
        ev["event"] = -1
        for f in ("x", "y", "tot", "toa", "event", "tof", "chip", "train_id"):
            if f in names:
                ev[f] = np.asarray(get(f))
        return ev
    if {"ev_x", "ev_y", "ev_tof_s", "ev_tot_ns"} <= set(names):
        n = np.asarray(get("ev_x")).size
        ev = np.zeros(n, EVENT_DTYPE)
        ev["event"] = np.asarray(get("ev_trigger")) if "ev_trigger" in names else 0
        ev["x"], ev["y"], ev["tot"] = get("ev_x"), get("ev_y"), get("ev_tot_ns")
        ev["tof"] = np.rint(np.asarray(get("ev_tof_s")) / TOA_UNIT_S).astype(np.int64)
        ev["toa"] = ev["tof"] + ev["event"] * (1 << 40)   # keep events apart in time
        return ev
    raise FileFormatError("no hits found: expected 'events'/'hits', or arrays x, y, tot, toa, "
                          "or ev_x, ev_y, ev_tof_s, ev_tot_ns", where)


def _from_h5(path: Path) -> np.ndarray:
    import h5py
    with h5py.File(path, "r") as f:
        if "raw" in f and isinstance(f["raw"], h5py.Group):
            g = f["raw"]
            names = set(g.keys())
            need = {"trigger nr", "x", "y", "tof", "tot"}
            if need <= names:
                n = g["x"].shape[0]
                ev = np.zeros(n, EVENT_DTYPE)
                ev["event"] = g["trigger nr"][()]
                ev["x"], ev["y"], ev["tot"] = g["x"][()], g["y"][()], g["tot"][()]
                ev["tof"] = np.rint(g["tof"][()] / TOA_UNIT_S).astype(np.int64)
                ev["toa"] = ev["tof"] + ev["event"] * (1 << 40)
                return ev
        for name in ("events", "hits"):
            if name in f and isinstance(f[name], h5py.Dataset):
                from ..cluster import as_event_array
                return as_event_array(f[name][()])
    raise FileFormatError("no hits found: expected a pymepix /raw group (trigger nr, x, y, tof, tot) "
                          "or an 'events' dataset", str(path))


def _from_raw(path: Path, chip, pixels: bool, window) -> np.ndarray:
    try:
        from ..files import open_raw
        from ..pipeline.processor import ChipProcessor, ProcessingConfig
    except ImportError as exc:  # pragma: no cover - other parts of the project
        raise FileFormatError(f"cannot read raw files in this version ({exc})", str(path)) from None
    product = "pixels" if pixels else "events"
    procs: dict[int, ChipProcessor] = {}
    parts = []
    reader = open_raw(path, "rb")
    try:
        for ch in reader:
            if chip is not None and ch.chip != chip:
                continue
            proc = procs.get(ch.chip)
            if proc is None:
                proc = procs[ch.chip] = ChipProcessor(ProcessingConfig(
                    chip=ch.chip, products=(product,), event_window_s=tuple(window)))
            parts.append(getattr(proc.feed(ch.words), product))
        parts.extend(getattr(p.flush(), product) for p in procs.values())
    finally:
        close = getattr(reader, "close", None)
        if close:
            close()
    if not parts:
        return np.zeros(0, EVENT_DTYPE)
    from ..cluster import as_event_array
    return as_event_array(np.concatenate(parts))


def load_calibration_hits(path, chip=None, pixels: bool = False, window=(0.0, 1e-3)) -> np.ndarray:
    """Read calibration hits from one input file as an ``EVENT_DTYPE`` array."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as d:
            return _from_named_arrays(d.__getitem__, d.files, str(path))
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.dtype.names is None:
            raise FileFormatError("a .npy input must hold a structured array of hits", str(path))
        return _from_named_arrays(lambda n: arr, {"hits"}, str(path))
    if suffix in (".h5", ".hdf5"):
        return _from_h5(path)
    return _from_raw(path, chip, pixels, window)


def run(args: argparse.Namespace) -> int:
    from ..cluster import ClusterParams, derive_timewalk

    hits = [load_calibration_hits(p, args.chip, args.pixels, args.event_window_s) for p in args.inputs]
    # keep files apart in time and event number so no cluster spans two files
    for k in range(1, len(hits)):
        if hits[k].size and hits[k - 1].size:
            hits[k] = hits[k].copy()
            hits[k]["toa"] += hits[k - 1]["toa"].max() - hits[k]["toa"].min() + (1 << 30)
            hits[k]["event"] += hits[k - 1]["event"].max() - hits[k]["event"].min() + 1
    ev = np.concatenate(hits) if hits else np.zeros(0, EVENT_DTYPE)
    print(f"{ev.size} hits read from {len(args.inputs)} file(s)")
    if ev.size == 0:
        raise ConfigError("no hits in the input: nothing to calibrate")
    params = ClusterParams(radius=args.radius, time_window_ns=args.window_ns, min_size=args.min_size,
                           tot_threshold_ns=args.tot_threshold_ns)
    table, info = derive_timewalk(ev, reference=args.reference, tof_peak_ns=args.tof_peak_ns,
                                  peak_halfwidth_ns=args.peak_halfwidth_ns, params=params,
                                  min_count=args.min_count, fill=args.fill)
    out = table.save(args.output)
    a, b, c = info["fit"]
    print(f"{info['hits_used']} hit delays in {info['bins_measured']} ToT bins with >= {args.min_count} hits")
    print(f"model: delay_ns = {a:.6g} / (tot_ns - ({b:.6g})) + ({c:.6g})")
    d = table.delay_ns
    print(f"delay at ToT 25 ns: {d[0]:.3f} ns, 250 ns: {d[9]:.3f} ns, 2500 ns: {d[99]:.3f} ns")
    print(f"wrote {out}")
    if args.text and Path(args.output).suffix.lower() != ".txt":
        txt = table.save(Path(args.output).with_suffix(".txt"))
        print(f"wrote {txt}")
    return 0
