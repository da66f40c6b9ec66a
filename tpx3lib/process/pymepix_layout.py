"""The pymepix post-processing HDF5 layout, with correct units.

Same group/dataset names and dtypes as ``pymepix-acq post-process`` writes
(spec section 5), so existing analysis scripts keep working:

==========================  ======  ======  =============================================
dataset                     dtype   unit    meaning
==========================  ======  ======  =============================================
/raw/trigger nr             u8              event number of the hit's trigger
/raw/x, /raw/y              u1      pixel   column, row
/raw/tof                    f8      s       time of flight (hit ToA - trigger time)
/raw/tot                    u4      ns      time over threshold (pymepix labels it "s": wrong)
/centroided/<7 columns>     f8              trigger nr, x, y (pixel), tof (s), tot avg,
                                            tot max (ns), clustersize (hits); only if any
/timing/timepix/trigger nr  i8              event number of each trigger
/timing/timepix/event       f8      s       trigger time on the camera clock
  trigger
/timing/timepix/timestamp   u8      ns      trigger time + the file's start stamp
/triggers/trigger1/time     f8      s       every TDC1 edge: rising > 0, falling < 0
/triggers/trigger2/time     f8      s       the same for TDC2
==========================  ======  ======  =============================================

Every dataset carries ``unit`` and ``description`` attributes. ``/source``
holds the source file header (JSON) and the root attributes say how the file
was made (options, counters). Datasets are 1-D, resizable, chunked and
compressed (lzf by default: every h5py reads it; gzip on request for other
HDF5 readers). Differences from pymepix, on purpose: event numbers default to
the hardware trigger counter (``--trigger-numbers sequence`` gives pymepix's
0, 1, 2 ...); hits before the first heartbeat are kept, not dropped.
"""
from __future__ import annotations

import datetime as _dt
import json

import h5py
import numpy as np

from tpx3lib import __version__
from tpx3lib.dtypes import toa_seconds
from tpx3lib.errors import ConfigError

from .output import OutputWriter

__all__ = ["PymepixWriter", "CHUNK_ROWS"]

CHUNK_ROWS = 1 << 16

_RAW = [("trigger nr", "u8", "", "event number of the hit's trigger"),
        ("x", "u1", "pixel", "column"),
        ("y", "u1", "pixel", "row"),
        ("tof", "f8", "s", "time of flight: hit time of arrival minus trigger time"),
        ("tot", "u4", "ns", "time over threshold")]
_CENTROIDED = [("trigger nr", "f8", "", "event number of the cluster's trigger"),
               ("x", "f8", "pixel", "ToT-weighted mean column"),
               ("y", "f8", "pixel", "ToT-weighted mean row"),
               ("tof", "f8", "s", "ToT-weighted mean time of flight"),
               ("tot avg", "f8", "ns", "mean time over threshold of the cluster's hits"),
               ("tot max", "f8", "ns", "largest time over threshold in the cluster"),
               ("clustersize", "f8", "hits", "number of hits in the cluster")]
_TIMING = [("trigger nr", "i8", "", "event number of the trigger"),
           ("event trigger", "f8", "s", "trigger time on the camera clock"),
           ("timestamp", "u8", "ns", "trigger time plus the file's start stamp (ns since the Unix epoch)")]
_TRIGGER = [("time", "f8", "s", "edge time on the camera clock; rising edges > 0, falling edges < 0")]


class _Table:
    """A group of 1-D resizable datasets appended to together, buffered to whole chunks."""

    def __init__(self, parent: h5py.Group, name: str, columns, description: str, compression: str):
        self.parent, self.name, self.columns = parent, name, columns
        self.description = description
        self.compression = None if compression == "none" else compression
        self.group: h5py.Group | None = None
        self._buf: list[dict] = []
        self._buffered = 0
        self.rows = 0

    def _create(self) -> None:
        g = self.parent.get(self.name)
        if g is None:     # track_order: columns keep the layout's order when read back
            g = self.parent.create_group(self.name, track_order=True)
        g.attrs["description"] = self.description
        for col, dtype, unit, desc in self.columns:
            opts = {"compression": self.compression} if self.compression else {}
            if self.compression:
                opts["shuffle"] = np.dtype(dtype).itemsize > 1
            ds = g.create_dataset(col, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(CHUNK_ROWS,), **opts)
            ds.attrs["unit"] = unit
            ds.attrs["description"] = desc
        self.group = g

    def append(self, **cols) -> None:
        """Add rows (one array per column); whole chunks are written, the rest is buffered."""
        n = len(next(iter(cols.values())))
        if n == 0:
            return
        self._buf.append(cols)
        self._buffered += n
        if self._buffered >= CHUNK_ROWS:
            self._write(whole_chunks=True)

    def flush(self, create_empty: bool = False) -> None:
        """Write everything buffered (at the end)."""
        if self.group is None and (self._buffered or create_empty):
            self._create()
        if self._buffered:
            self._write(whole_chunks=False)

    def _write(self, whole_chunks: bool) -> None:
        if self.group is None:
            self._create()
        n = self._buffered - (self._buffered % CHUNK_ROWS if whole_chunks else 0)
        rest = []
        for col, dtype, _, _ in self.columns:
            parts = [np.asarray(b[col]) for b in self._buf]
            data = np.concatenate(parts) if len(parts) > 1 else parts[0]
            ds = self.group[col]
            ds.resize((self.rows + n,))
            ds[self.rows:] = data[:n].astype(dtype, copy=False)
            rest.append((col, data[n:]))
        self.rows += n
        self._buffered -= n
        self._buf = [dict(rest)] if self._buffered else []


class PymepixWriter(OutputWriter):
    """Writes the pymepix layout (module docstring)."""

    layout = "pymepix"

    def __init__(self, path, *, sources: list[dict], options: dict, compression: str = "lzf"):
        super().__init__(path, sources=sources, options=options, compression=compression)
        self.f = h5py.File(path, "w")
        self.start_ns = next((s.get("start_time_ns") for s in sources if s.get("start_time_ns")), None)
        self.raw = _Table(self.f, "raw", _RAW, "hits assigned to triggers (within the event window)", compression)
        self.centroided = _Table(self.f, "centroided", _CENTROIDED, "cluster centroids", compression)
        timing = self.f.require_group("timing")
        timing.attrs["description"] = "trigger timing"
        self.timing = _Table(timing, "timepix", _TIMING, "event triggers on the Timepix3 clock", compression)
        trig = self.f.require_group("triggers")
        trig.attrs["description"] = "all TDC edges"
        self.triggers = {n: _Table(trig, f"trigger{n}", _TRIGGER, f"TDC{n} edges", compression) for n in (1, 2)}
        src = self.f.create_group("source")
        src.attrs["description"] = "the raw file(s) this was made from"
        src.attrs["header"] = json.dumps(sources[0].get("header", {}) if sources else {})
        src.attrs["files"] = json.dumps(sources, default=str)
        self.f.attrs["creator"] = f"tpx3lib {__version__}"
        self.f.attrs["layout"] = "pymepix"
        self.f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.f.attrs["processing_options"] = json.dumps(options, default=str)

    def write_tdcs(self, tdcs: np.ndarray) -> None:
        if not tdcs.size:
            return
        t = toa_seconds(tdcs["time"])
        t = np.where(tdcs["rising"] == 1, t, -t)
        for n, table in self.triggers.items():
            sel = tdcs["tdc"] == n
            if sel.any():
                table.append(time=t[sel])

    def write_event_triggers(self, triggers: np.ndarray) -> None:
        if not triggers.size:
            return
        t = triggers["time"].astype(np.int64)
        ns = (t // 4096) * 25 + ((t % 4096) * 25 + 2048) // 4096        # exact integer ns, rounded
        stamp = (ns + int(self.start_ns or 0)).astype(np.uint64)
        self.timing.append(**{"trigger nr": triggers["number"], "event trigger": toa_seconds(triggers["time"]),
                              "timestamp": stamp})

    def write_events(self, events: np.ndarray) -> None:
        if not events.size:
            return
        if int(events["x"].max()) > 255 or int(events["y"].max()) > 255:
            raise ConfigError("the pymepix layout stores x, y as 0..255 (one chip, no offset); "
                              "this data has larger coordinates")
        self.raw.append(**{"trigger nr": events["event"].astype(np.uint64), "x": events["x"], "y": events["y"],
                           "tof": toa_seconds(events["tof"]), "tot": events["tot"]})

    def write_centroids(self, centroids: np.ndarray) -> None:
        if not centroids.size:
            return
        c = centroids
        self.centroided.append(**{"trigger nr": c["event"], "x": c["x"], "y": c["y"], "tof": toa_seconds(c["tof"]),
                                  "tot avg": c["tot_mean"], "tot max": c["tot_max"], "clustersize": c["size"]})

    def close(self, counters: dict) -> None:
        for table in (self.raw, self.timing, *self.triggers.values()):
            table.flush(create_empty=True)
        self.centroided.flush(create_empty=False)
        self.f.attrs["counters"] = json.dumps(counters, default=str)
        self.f.close()

    def abort(self) -> None:
        try:
            self.f.close()
        except Exception:  # noqa: BLE001 - closing a broken file must not mask the original error
            pass
