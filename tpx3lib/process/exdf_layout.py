"""``tpx3 process --layout exdf``: a European XFEL run directory (docs/exdf.md, docs/process.md).

OUT is a run directory of ``RAW-R{run:04d}-{aggregator}-S{seq:05d}.h5`` files written
by :class:`~tpx3lib.exdf.ExdfRunWriter`: one train per train ID with its hits
(``INSTRUMENT/<source>/data/<field>``) and centroids (``.../centroids/<field>``),
``INDEX`` first/count per train (empty trains included), the detector settings of the
raw file header and the processing settings as control data (``CONTROL``, ``RUN``),
and per train its trigger (``trigger.counter``, ``trigger.time``, ``trigger.flags``,
``trigger.chips``) - the keys the live run-file sink
(:class:`~tpx3lib.pipeline.exdf_sink.ExdfSink`) writes, so :mod:`tpx3lib.replay` and
EXtra-data read both the same way.

Train IDs: every event trigger (TDC1 rising edge by default) goes through a
:class:`~tpx3lib.trainid.CountingTrainIdSource` (``--train-id-start``: the ID of the
first trigger's train; default the raw header's ``trigger.first_train_id``, else
:data:`DEFAULT_TRAIN_ID_START`), via :class:`~tpx3lib.trainid.TrainIdAssigner`, and
events and centroids belong to their trigger's train (the ``event`` field is the trigger
counter). Triggers of one ID (DUPLICATE) are merged into one train (records joined in
time order, as :func:`~tpx3lib.pipeline.trains.merge_trains` does); triggers without an
ID (LATE) or with an ID not above the last one are not written and their events are
counted (``events_without_train``), as are events of no trigger. Pixels before the first trigger or outside
the event window are counted by the runner (``pixels_before_first_trigger``,
``pixels_outside_event_window``). Timestamps: the start time of the raw file plus the
trigger's board time (the convention of the pymepix layout's ``timestamp``), 0 when the
file has no start time.

A train is written once it is complete: when a later trigger is known and every event
before it has been delivered (``segment_done``), so memory holds at most the trains of
the segments in flight (and the last train, held until a trigger of another ID comes).
Speed: events stay in the segments' columns (:class:`~tpx3lib.process.columns.EventColumns`,
no records); the complete trains of a segment go to
:meth:`~tpx3lib.exdf.ExdfRunWriter.write_block` at once, as views of those columns with
a count per train, and the run writer's chunks are compressed in the processing
threads (``executor``) and written with ``write_direct_chunk``. The directory is written under a temporary name next to OUT and
moved into place when complete; an existing non-empty OUT is refused without
``--overwrite``, and with it only this run's files of this aggregator are replaced.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile

import numpy as np

from tpx3lib import __version__
from tpx3lib.errors import ConfigError
from tpx3lib.exdf import ExdfRunWriter
from tpx3lib.exdf.writer import slice_pieces as _slice_pieces
from tpx3lib.exdf.layout import CENTROID_FIELDS, HIT_FIELDS, check_category_aggregator, check_instrument_source
from tpx3lib.pipeline.trains import TRIGGER_CONTROL_KEYS, plain_scalar
from tpx3lib.trainid import CountingTrainIdSource, TrainIdAssigner
from tpx3lib.trainid.flags import TRIGGER_TRAIN_DTYPE, run_file_flag

from .output import OutputWriter

__all__ = ["ExdfWriter", "DEFAULT_TRAIN_ID_START", "detector_settings"]

#: Train ID of the first trigger when neither --train-id-start nor the raw header gives one.
DEFAULT_TRAIN_ID_START = 1

_COMPRESSION = {"lzf": "lzf", "gzip": "gzip", "none": None}
_CATEGORY = "RAW"


def _scalar(v):
    """A setting value the run writer keeps (bool, int, float, str, list of numbers), or None."""
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                   for x in v):
        return list(v)
    try:
        return plain_scalar(v)
    except TypeError:
        return None


def detector_settings(header: dict, chip: int, options: dict) -> tuple[dict, dict]:
    """(settings, units) for the control source: the chip's DACs, mode, polarity, name and
    id and the bias from the raw header (what it has), and the processing settings."""
    settings: dict = {}
    units: dict = {}
    chips = [c for c in header.get("chips", []) if isinstance(c, dict) and c.get("index") == chip]
    info = chips[0] if chips else {}
    settings["chip"] = int(chip)
    for key, name in (("name", "chip_name"), ("id", "chip_id"), ("operation_mode", "mode"),
                      ("polarity", "polarity"), ("pixel_config_digest", "pixel_config_digest")):
        v = _scalar(info.get(key))
        if v is not None:
            settings[name] = v
    for dac, value in sorted((info.get("dacs") or {}).items()):
        v = _scalar(value)
        if v is not None and isinstance(dac, str) and dac.replace("_", "").replace("-", "").isalnum():
            settings[f"dac.{dac}"] = v
            units[f"dac.{dac}"] = ""
    bias = header.get("bias_v")
    if isinstance(bias, (int, float)) and not isinstance(bias, bool):
        settings["bias_voltage"] = float(bias)
        units["bias_voltage"] = "V"
    window = options.get("event_window_s")
    lo, hi = (float(window[0]), float(window[1])) if window else (-math.inf, math.inf)
    settings["processing.event_window_min"] = lo
    settings["processing.event_window_max"] = hi
    units["processing.event_window_min"] = units["processing.event_window_max"] = "s"
    settings["processing.trigger_tdc"] = int(options.get("trigger_tdc", 1))
    settings["processing.trigger_edge"] = str(options.get("trigger_edge", "rising"))
    settings["processing.train_id_start"] = int(options["train_id_start"])
    settings["processing.centroid"] = bool(options.get("centroid", False))
    settings["processing.software"] = f"tpx3lib {__version__}"
    return settings, units


def _train_id_start(options: dict, sources: list[dict]) -> int:
    if options.get("train_id_start") is not None:
        return int(options["train_id_start"])
    trig = (sources[0].get("header") or {}).get("trigger") if sources else None
    first = trig.get("first_train_id") if isinstance(trig, dict) else None
    if isinstance(first, int) and not isinstance(first, bool) and 0 < first < 1 << 63:
        return first
    return DEFAULT_TRAIN_ID_START


class ExdfWriter(OutputWriter):
    """Writes a run directory (module docstring)."""

    layout = "exdf"

    # ----------------------------------------------------------- output path
    @classmethod
    def check_output(cls, output: str, *, overwrite: bool, inputs: list[str], options: dict) -> None:
        if options.get("trigger_numbers", "counter") != "counter":
            raise ConfigError("the exdf layout numbers events by the hardware trigger counter "
                              "(--trigger-numbers counter)")
        run = options.get("run", 1)
        if isinstance(run, bool) or not isinstance(run, int) or not 0 <= run <= 9999:
            raise ConfigError(f"run number must be 0..9999, not {run!r}")
        check_instrument_source(options.get("exdf_source") or "TPX3/CAM/1:daqOutput")
        check_category_aggregator(_CATEGORY, options.get("aggregator") or "TPX01")
        if os.path.exists(output) and not os.path.isdir(output):
            raise ConfigError(f"{output} exists and is not a directory: the exdf layout writes a run directory")
        if os.path.isdir(output) and os.listdir(output) and not overwrite:
            raise ConfigError(f"{output} is not empty: use --overwrite to replace run {run}'s "
                              f"{options.get('aggregator') or 'TPX01'} files in it")
        mine = {os.path.abspath(os.path.join(output, n)) for n in cls._run_files(output, options)}
        if mine & {os.path.abspath(p) for p in inputs}:
            raise ConfigError("the output would overwrite an input file")

    @staticmethod
    def _run_files(directory: str, options: dict) -> list[str]:
        if not os.path.isdir(directory):
            return []
        prefix = f"{_CATEGORY}-R{int(options.get('run', 1)):04d}-{options.get('aggregator') or 'TPX01'}-S"
        return sorted(n for n in os.listdir(directory) if n.startswith(prefix) and n.endswith(".h5"))

    @classmethod
    def temp_output(cls, output: str, options: dict) -> str:
        parent = os.path.dirname(os.path.abspath(output))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.normpath(output))}.part-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)        # the run directory gets the usual permissions, not mkdtemp's 0700
        return tmp

    @classmethod
    def commit_output(cls, tmp: str, output: str, options: dict) -> None:
        if not os.path.exists(output):
            os.rename(tmp, output)
            return
        for name in cls._run_files(output, options):      # --overwrite: this run's old files
            os.remove(os.path.join(output, name))
        for name in sorted(os.listdir(tmp)):
            os.replace(os.path.join(tmp, name), os.path.join(output, name))
        os.rmdir(tmp)

    @classmethod
    def discard_output(cls, tmp: str, output: str, options: dict) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    # ----------------------------------------------------------- writer
    def __init__(self, path, *, sources: list[dict], options: dict, compression: str = "lzf", executor=None):
        super().__init__(path, sources=sources, options=options, compression=compression, executor=executor)
        self.chip = int(options.get("chip") or 0)
        self.start_id = _train_id_start(options, sources)
        opts = dict(options, train_id_start=self.start_id)
        self.settings, self.units = detector_settings(sources[0].get("header") or {} if sources else {},
                                                      self.chip, opts)
        self.source = options.get("exdf_source") or "TPX3/CAM/1:daqOutput"
        self.with_centroids = bool(options.get("centroid", False))
        start_ns = next((s.get("start_time_ns") for s in sources if s.get("start_time_ns")), None)
        self.start_ns = int(start_ns) if start_ns else None
        self.assigner = TrainIdAssigner(
            CountingTrainIdSource(self.start_id), tdc=int(options.get("trigger_tdc", 1)),
            edge=options.get("trigger_edge", "rising"), keep=1 << 62)
        self.run_options = dict(proposal=int(options.get("proposal", 0)),
                                sequence_max_bytes=int(options.get("sequence_bytes", 1 << 30)),
                                source=self.source, with_centroids=self.with_centroids,
                                aggregator=options.get("aggregator") or "TPX01", category=_CATEGORY,
                                compression=_COMPRESSION[compression], run_type="tpx3 process",
                                sample="", executor=executor,
                                max_pending=2 * max(1, int(options.get("workers", 1))) + 2)
        self.run_number = int(options.get("run", 1))
        self.writer: ExdfRunWriter | None = None
        self._triggers: list[np.ndarray] = []      # decided triggers not yet written
        self._ev = _Stream(HIT_FIELDS)             # events not yet written (ToA order)
        self._cen = _Stream(CENTROID_FIELDS)       # centroids not yet written
        self._held: _Held | None = None            # the last train (a later trigger may share its ID)
        self._last_written = 0
        self.counts = dict(trains_written=0, trains_merged=0, empty_trains=0, suspect_trains=0,
                           triggers_without_train_id=0, trains_out_of_order=0, hits_written=0,
                           centroids_written=0, events_without_train=0, centroids_without_train=0)

    @staticmethod
    def prepare_events(events):
        return events              # the segment's columns as they are: the run writer takes columns

    @staticmethod
    def prepare_centroids(centroids):
        if centroids is None or isinstance(centroids, dict):
            return centroids
        return {f: np.ascontiguousarray(centroids[f]) for f in CENTROID_FIELDS}

    # ----------------------------------------------------------- data in
    def write_tdcs(self, tdcs: np.ndarray) -> None:
        if tdcs.size:
            decided = self.assigner.feed(tdcs)
            if decided.size:
                self._triggers.append(decided)

    def write_events(self, events) -> None:
        self._ev.add(events)

    def write_centroids(self, centroids) -> None:
        if centroids is not None:
            self._cen.add(centroids)

    def segment_done(self, t_hi: int | None) -> None:
        self._write_complete(t_hi)

    # ----------------------------------------------------------- trains out
    def _write_complete(self, t_hi: int | None) -> None:
        """Write the trains whose every trigger is followed by a trigger at or before ``t_hi``
        (all of them, and the train held back, when ``t_hi`` is None): their events and
        centroids are all in."""
        trig = np.concatenate(self._triggers) if self._triggers else np.empty(0, TRIGGER_TRAIN_DTYPE)
        ordered = trig[np.argsort(trig["time"], kind="stable")] if trig.size > 1 else trig
        if t_hi is None:
            n_done = ordered.size
        else:
            # triggers up to the last one at or before t_hi; that last one may still get events
            n_done = max(int(np.searchsorted(ordered["time"], t_hi, side="right")) - 1, 0)
        if n_done == 0 and (t_hi is not None or self._held is None):
            return
        done, rest = ordered[:n_done], ordered[n_done:]
        self._triggers = [rest] if rest.size else []
        self._write_triggers(done, final=t_hi is None)

    def _write_triggers(self, done: np.ndarray, final: bool) -> None:
        """Trains of the triggers ``done`` (time order) as one block: triggers of one train
        ID merged (the train held back from the previous block included), triggers without
        an ID or with an ID out of order left out (their records counted); the last train is
        held back (a later trigger may share its ID) unless ``final``."""
        k = self.counts
        counters = done["counter"]
        ev_pieces, ev_lo, ev_hi, ev_unmatched = self._ev.take(counters)
        cen_pieces, cen_lo, cen_hi, cen_unmatched = self._cen.take(counters)
        k["events_without_train"] += ev_unmatched
        k["centroids_without_train"] += cen_unmatched

        # each trigger's train (index into this block's trains; -1: not written)
        held = self._held
        grp = np.full(done.size, -1, np.int64)
        firsts = []
        cur = 0 if held is not None else -1
        held_tid = held.tid if held is not None else None
        last = self._last_written
        for i, tid in enumerate(done["train_id"].tolist()):
            if tid == 0:
                k["triggers_without_train_id"] += 1
            elif held_tid is not None and tid == held_tid:
                grp[i] = cur
                k["trains_merged"] += 1
            elif tid <= last:
                k["trains_out_of_order"] += 1
            else:
                cur += 1
                grp[i] = cur
                firsts.append(i)
                held_tid = last = tid
        self._last_written = last
        n_trains = cur + 1
        kept = grp >= 0
        k["events_without_train"] += int((ev_hi - ev_lo)[~kept].sum())
        k["centroids_without_train"] += int((cen_hi - cen_lo)[~kept].sum())
        if n_trains == 0:
            return

        first = done[firsts]
        pre = [] if held is None else [held]
        tids = np.array([h.tid for h in pre] + first["train_id"].tolist(), np.uint64)
        trig_counter = np.array([h.counter for h in pre] + first["counter"].tolist(), np.int64)
        trig_time = np.array([h.time for h in pre] + first["time"].tolist(), np.int64)
        stamps = np.concatenate([np.array([h.stamp for h in pre], np.int64), self._stamps(first)])
        flags = np.zeros(n_trains, np.int64)
        np.bitwise_or.at(flags, grp[kept], done["flags"][kept].astype(np.int64))
        if held is not None:
            flags[0] |= held.flags
        hits, hit_counts = _assemble(ev_pieces, ev_lo, ev_hi, grp, kept, n_trains, held, "hits", "toa")
        cents, cen_counts = _assemble(cen_pieces, cen_lo, cen_hi, grp, kept, n_trains, held, "cents",
                                      "toa_first")

        n_write = n_trains if final else n_trains - 1
        n_hits, n_cents = int(hit_counts[:n_write].sum()), int(cen_counts[:n_write].sum())
        self._held = None
        if n_write < n_trains:
            t = n_write
            self._held = _Held(tid=int(tids[t]), counter=int(trig_counter[t]), time=int(trig_time[t]),
                               stamp=int(stamps[t]), flags=int(flags[t]),
                               hits=_slice_pieces(hits, n_hits, n_hits + int(hit_counts[t])),
                               cents=_slice_pieces(cents, n_cents, n_cents + int(cen_counts[t])))
        if n_write == 0:
            return
        w = slice(0, n_write)
        file_flags = run_file_flag(flags[w])
        control = {TRIGGER_CONTROL_KEYS["trigger"]: trig_counter[w], TRIGGER_CONTROL_KEYS["trigger_time"]: trig_time[w],
                   TRIGGER_CONTROL_KEYS["flags"]: flags[w],
                   TRIGGER_CONTROL_KEYS["chips_triggered"]: np.ones(n_write, np.int64)}
        if self.writer is None:
            settings = dict(self.settings, **{key: int(v[0]) for key, v in control.items()})
            self.writer = ExdfRunWriter(self.path, self.run_number, settings=settings, units=self.units,
                                        **self.run_options)
        self.writer.write_block(
            tids[w], stamps[w], file_flags, _slice_pieces(hits, 0, n_hits), hit_counts[w],
            _slice_pieces(cents, 0, n_cents) if self.with_centroids else None,
            cen_counts[w] if self.with_centroids else None, control=control)
        k["trains_written"] += n_write
        k["hits_written"] += n_hits
        k["centroids_written"] += n_cents if self.with_centroids else 0
        k["empty_trains"] += int(np.count_nonzero(hit_counts[w] == 0))
        k["suspect_trains"] += int(np.count_nonzero(file_flags == 0))

    def _stamps(self, triggers: np.ndarray) -> np.ndarray:
        """Train timestamps (ns since the epoch) of triggers: the file's start time plus the
        board time, exact integer ns rounded (as the pymepix layout's ``timestamp``); without a
        start time the host time; 0 if neither is known."""
        if self.start_ns is not None:
            t = triggers["time"].astype(np.int64)
            return np.maximum(self.start_ns + (t // 4096) * 25 + ((t % 4096) * 25 + 2048) // 4096, 0)
        host = triggers["host_time"]
        known = ~np.isnan(host)
        return np.where(known, np.round(np.where(known, host, 0.0) * 1e9), 0).astype(np.int64)

    # ----------------------------------------------------------- end
    def close(self, counters: dict) -> None:
        flushed = self.assigner.flush()              # (a counting source holds nothing back)
        if flushed.size:
            self._triggers.append(flushed)
        self._write_complete(None)
        # events or centroids of no decided trigger (none are expected): counted, not lost silently
        self.counts["events_without_train"] += self._ev.size
        self.counts["centroids_without_train"] += self._cen.size
        self._ev.clear()
        self._cen.clear()
        files = list(self.writer.files) if self.writer else []
        counters["exdf"] = dict(self.counts, run=self.run_number, train_id_start=self.start_id,
                                train_ids=self.assigner.source.stats(), files=[p.name for p in files])
        if self.counts["events_without_train"] or self.counts["centroids_without_train"]:
            counters.setdefault("warnings", []).append(
                f"{self.counts['events_without_train']} event(s) and {self.counts['centroids_without_train']} "
                "centroid(s) are not in the run: their trigger has no train ID or an ID out of order")
        if self.writer is None:
            counters.setdefault("warnings", []).append("no trigger got a train ID: the run has no train, "
                                                       "no file was written")
            return
        self.writer.close()
        # how the run was made, in every file (EXtra-data ignores root attributes)
        import h5py
        about = json.dumps({"software": f"tpx3lib {__version__}", "options": self.options,
                            "sources": self.sources, "counters": counters}, default=str)
        for path in files:
            with h5py.File(path, "r+") as f:
                f.attrs["tpx3_process"] = about

    def abort(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - the original error matters
                pass

    def summary_lines(self) -> list[str]:
        k = self.counts
        files = len(self.writer.files) if self.writer else 0
        return [f"  run {self.run_number}: {k['trains_written']:,} trains ({k['empty_trains']:,} empty, "
                f"{k['suspect_trains']:,} suspect) from train ID {self.start_id}, {k['hits_written']:,} hits, "
                f"{k['centroids_written']:,} centroids in {files} file(s)"]


def _sorted(a: np.ndarray) -> bool:
    return a.size < 2 or not np.any(a[1:] < a[:-1])


def _rows(piece: dict) -> int:
    return len(piece["event"])


def _concat(pieces: list[dict], fields) -> dict:
    return {f: np.concatenate([p[f] for p in pieces]) if len(pieces) != 1 else pieces[0][f] for f in fields}


@dataclasses.dataclass
class _Held:
    """The last train of a block, written with the next block (a trigger of the next block
    may have the same train ID): its first trigger's values, flags of all its triggers, data."""

    tid: int
    counter: int
    time: int
    stamp: int
    flags: int
    hits: list
    cents: list


class _Stream:
    """Records of one kind (events or centroids) not yet written, as column pieces in arrival
    order (views of the segments' arrays: no copy)."""

    def __init__(self, fields: tuple[str, ...]):
        self.fields = fields
        self.pieces: list[dict] = []

    @property
    def size(self) -> int:
        return sum(_rows(p) for p in self.pieces)

    def clear(self) -> None:
        self.pieces = []

    def add(self, records) -> None:
        """Records as ``EVENT_DTYPE``/``CENTROID_DTYPE`` arrays, EventColumns or column dicts."""
        p = {f: np.asarray(records[f]) for f in self.fields}
        if _rows(p):
            self.pieces.append(p)

    def take(self, counters: np.ndarray) -> tuple[list[dict], np.ndarray, np.ndarray, int]:
        """Remove the records of the triggers ``counters`` (in time order) and return them
        grouped by trigger: ``(pieces, lo, hi, unmatched)``, trigger ``i``'s records are rows
        ``lo[i]:hi[i]`` of the concatenated pieces.

        Usually the records come ordered by trigger, those of these triggers first: they
        are then taken as they are (views); ``unmatched`` counts records among them whose
        trigger is none of these (dropped). Otherwise the records of these triggers are
        gathered (a copy, stable: arrival order within a trigger) and the others kept."""
        m = counters.size
        zero = np.zeros(m, np.int64)
        if not self.pieces or m == 0:
            return [], zero, zero, 0
        ev = np.concatenate([p["event"] for p in self.pieces]) if len(self.pieces) > 1 else self.pieces[0]["event"]
        n = ev.size
        if (m < 2 or np.all(counters[1:] > counters[:-1])) and _sorted(ev):
            k = int(np.searchsorted(ev, counters[-1], side="right"))
            head = ev[:k]
            lo = np.searchsorted(head, counters, side="left").astype(np.int64)
            hi = np.searchsorted(head, counters, side="right").astype(np.int64)
            taken = _slice_pieces(self.pieces, 0, k)
            self.pieces = _slice_pieces(self.pieces, k, n)
            return taken, lo, hi, k - int((hi - lo).sum())
        order = np.argsort(counters, kind="stable")
        known = counters[order]
        pos = np.minimum(np.searchsorted(known, ev), m - 1)
        mine = known[pos] == ev
        rank = order[pos[mine]]                          # the trigger's place in time order
        by_trigger = np.argsort(rank, kind="stable")
        rows = np.flatnonzero(mine)[by_trigger]
        rank = rank[by_trigger]
        allcols = _concat(self.pieces, self.fields)
        taken = {f: c[rows] for f, c in allcols.items()}
        rest = {f: c[~mine] for f, c in allcols.items()}
        self.pieces = [rest] if _rows(rest) else []
        idx = np.arange(m)
        lo = np.searchsorted(rank, idx, side="left").astype(np.int64)
        hi = np.searchsorted(rank, idx, side="right").astype(np.int64)
        return ([taken] if rows.size else []), lo, hi, 0


def _assemble(pieces: list[dict], lo: np.ndarray, hi: np.ndarray, grp: np.ndarray, kept: np.ndarray,
              n_trains: int, held: _Held | None, attr: str, key: str) -> tuple[list[dict], np.ndarray]:
    """The records of a block's trains one after the other (pieces, views where possible) and
    the count per train: the held train's records first, then those of the kept triggers in
    order. A train of several triggers is in time order (``key``) as :func:`merge_trains`
    makes it: the records are re-sorted (stably) in the rare case that joining does not give it."""
    sizes = hi - lo
    counts = np.bincount(grp[kept], weights=sizes[kept], minlength=n_trains).astype(np.int64)
    out = list(getattr(held, attr)) if held is not None else []
    if held is not None:
        counts[0] += sum(_rows(p) for p in out)
    klo, khi = lo[kept], hi[kept]
    nonempty = khi > klo
    klo, khi = klo[nonempty], khi[nonempty]
    if klo.size:
        breaks = np.flatnonzero(klo[1:] != khi[:-1]) + 1          # contiguous triggers make one range
        for a, b in zip(klo[np.r_[0, breaks]].tolist(), khi[np.r_[breaks - 1, klo.size - 1]].tolist()):
            out += _slice_pieces(pieces, a, b)
    sources = np.bincount(grp[kept][nonempty], minlength=n_trains)
    if held is not None and _held_rows(held, attr):
        sources[0] += 1
    if out and np.any(sources > 1):
        fields = tuple(out[0])
        cols = _concat(out, fields)
        train_of_row = np.repeat(np.arange(n_trains), counts)
        t = cols[key]
        inside = (t[1:] < t[:-1]) & (train_of_row[1:] == train_of_row[:-1])
        if inside.any():
            order = np.lexsort((t, train_of_row))
            out = [{f: c[order] for f, c in cols.items()}]
    return out, counts


def _held_rows(held: _Held, attr: str) -> int:
    return sum(_rows(p) for p in getattr(held, attr))
