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
was made (options, counters). Datasets are 1-D, resizable, chunked (65536 rows)
and compressed (lzf + shuffle by default: every h5py reads it; gzip on request
for other HDF5 readers): chunks are encoded by the workers and written whole
(:mod:`.h5chunks`). Differences from pymepix, on purpose: event numbers default to
the hardware trigger counter (``--trigger-numbers sequence`` gives pymepix's
0, 1, 2 ...); hits before the first heartbeat are kept, not dropped.

SWMR (``swmr=True`` / ``--swmr``): the file is written in HDF5's latest format
with SWMR on after the datasets are made, directly under its final name, and
flushed after every batch of whole chunks, so ``h5py.File(path, "r", swmr=True)``
can follow it while it grows (``dataset.refresh()``). Every table is created at
the start (``/centroided`` only with centroiding); the root ``counters`` attribute
is added when the run ends (SWMR allows no new attributes while writing).
"""
from __future__ import annotations

import datetime as _dt
import json

import h5py
import numpy as np

from tpx3lib import __version__
from tpx3lib.dtypes import toa_seconds
from tpx3lib.errors import ConfigError

from .h5chunks import ColumnTable
from .kernels import pymepix_event_columns
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


def _columns(spec):
    return [(name, dtype, {"unit": unit, "description": desc}) for name, dtype, unit, desc in spec]


class _Prepared(dict):
    """A segment's rows in the layout's dtypes (made in the worker)."""

    @property
    def size(self) -> int:
        return len(next(iter(self.values()))) if self else 0


class PymepixWriter(OutputWriter):
    """Writes the pymepix layout (module docstring)."""

    layout = "pymepix"

    def __init__(self, path, *, sources: list[dict], options: dict, compression: str = "lzf", executor=None):
        super().__init__(path, sources=sources, options=options, compression=compression, executor=executor)
        self.swmr = bool(options.get("swmr", False))
        self.f = h5py.File(path, "w", libver="latest") if self.swmr else h5py.File(path, "w")
        self.start_ns = next((s.get("start_time_ns") for s in sources if s.get("start_time_ns")), None)
        on_write = self._swmr_flush if self.swmr else None

        def table(parent, name, spec, description, pending=4):
            return ColumnTable(parent, name, _columns(spec), compression=compression, chunk_rows=CHUNK_ROWS,
                               executor=executor, max_pending=pending, description=description, on_write=on_write)

        workers = max(1, int(options.get("workers", 1)))
        self.raw = table(self.f, "raw", _RAW, "hits assigned to triggers (within the event window)", 2 * workers + 2)
        self.centroided = table(self.f, "centroided", _CENTROIDED, "cluster centroids")
        timing = self.f.require_group("timing")
        timing.attrs["description"] = "trigger timing"
        self.timing = table(timing, "timepix", _TIMING, "event triggers on the Timepix3 clock")
        trig = self.f.require_group("triggers")
        trig.attrs["description"] = "all TDC edges"
        self.triggers = {n: table(trig, f"trigger{n}", _TRIGGER, f"TDC{n} edges") for n in (1, 2)}
        src = self.f.create_group("source")
        src.attrs["description"] = "the raw file(s) this was made from"
        src.attrs["header"] = json.dumps(sources[0].get("header", {}) if sources else {})
        src.attrs["files"] = json.dumps(sources, default=str)
        self.f.attrs["creator"] = f"tpx3lib {__version__}"
        self.f.attrs["layout"] = "pymepix"
        self.f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.f.attrs["processing_options"] = json.dumps(options, default=str)
        if self.swmr:
            for t in self._tables():
                if t is not self.centroided or options.get("centroid"):
                    t.create()
            self.f.swmr_mode = True

    @classmethod
    def writes_in_place(cls, options: dict) -> bool:
        return bool(options.get("swmr", False))

    def _tables(self):
        return (self.raw, self.centroided, self.timing, *self.triggers.values())

    def _swmr_flush(self, table) -> None:
        for ds in table.datasets.values():
            ds.flush()

    # ------------------------------------------------------------ worker side
    @staticmethod
    def prepare_events(events):
        n = events.size
        out = _Prepared()
        if n == 0:
            return out
        x, y = np.empty(n, np.uint8), np.empty(n, np.uint8)
        tof, tot = np.empty(n, np.float64), np.empty(n, np.uint32)
        big = pymepix_event_columns(np.ascontiguousarray(events["x"]), np.ascontiguousarray(events["y"]),
                                    np.ascontiguousarray(events["tof"]), np.ascontiguousarray(events["tot"]),
                                    x, y, tof, tot)
        if big > 255:
            raise ConfigError("the pymepix layout stores x, y as 0..255 (one chip, no offset); "
                              "this data has larger coordinates")
        out["trigger nr"] = np.ascontiguousarray(events["event"]).view(np.uint64)
        out["x"], out["y"], out["tof"], out["tot"] = x, y, tof, tot
        return out

    # ------------------------------------------------------------ main thread
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

    def write_events(self, events) -> None:
        if not isinstance(events, _Prepared):
            events = self.prepare_events(events)
        if events.size:
            self.raw.append(**events)

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
        if self.swmr:
            self.f.close()                    # SWMR allows no new attribute: add it after
            self.f = h5py.File(self.path, "r+")
            if self.centroided.rows == 0 and "centroided" in self.f:
                del self.f["centroided"]
        self.f.attrs["counters"] = json.dumps(counters, default=str)
        self.f.close()

    def abort(self) -> None:
        for t in self._tables():
            t.abandon()
        try:
            self.f.close()
        except Exception:  # noqa: BLE001 - closing a broken file must not mask the original error
            pass
