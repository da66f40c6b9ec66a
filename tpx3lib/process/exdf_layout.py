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
events and centroids get their trigger's ID (:func:`~tpx3lib.trainid.apply_train_ids`).
Triggers of one ID (DUPLICATE) are merged into one train; triggers without an ID (LATE)
are not written and their events are counted. Pixels before the first trigger or outside
the event window are counted by the runner (``pixels_before_first_trigger``,
``pixels_outside_event_window``). Timestamps: the start time of the raw file plus the
trigger's board time (the convention of the pymepix layout's ``timestamp``), 0 when the
file has no start time.

A train is written once it is complete: when a later trigger is known and every event
before it has been delivered (``segment_done``), so memory holds at most the trains of
the segments in flight. The directory is written under a temporary name next to OUT and
moved into place when complete; an existing non-empty OUT is refused without
``--overwrite``, and with it only this run's files of this aggregator are replaced.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import numpy as np

from tpx3lib import __version__
from tpx3lib.dtypes import CENTROID_DTYPE, EVENT_DTYPE
from tpx3lib.errors import ConfigError
from tpx3lib.exdf import ExdfRunWriter
from tpx3lib.exdf.layout import check_category_aggregator, check_instrument_source
from tpx3lib.trainid import CountingTrainIdSource, TrainIdAssigner, apply_train_ids, train_table
from tpx3lib.trainid.flags import TRIGGER_TRAIN_DTYPE

from .columns import as_records
from .output import OutputWriter

__all__ = ["ExdfWriter", "DEFAULT_TRAIN_ID_START", "detector_settings"]

#: Train ID of the first trigger when neither --train-id-start nor the raw header gives one.
DEFAULT_TRAIN_ID_START = 1

_COMPRESSION = {"lzf": "lzf", "gzip": "gzip", "none": None}
_CATEGORY = "RAW"


def _scalar(v):
    """A setting value the run writer keeps (bool, int, float, str, list of numbers), or None."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                   for x in v):
        return list(v)
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
        from tpx3lib.pipeline.exdf_sink import trigger_settings, write_train
        from tpx3lib.pipeline.trains import merge_trains
        self._trigger_settings, self._write_train, self._merge = trigger_settings, write_train, merge_trains
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
                                sample="")
        self.run_number = int(options.get("run", 1))
        self.writer: ExdfRunWriter | None = None
        self._triggers: list[np.ndarray] = []      # decided triggers not yet written (time order)
        self._events: list[np.ndarray] = []        # EVENT_DTYPE, ToA order
        self._cents: list[np.ndarray] = []
        self._held: list = []                      # Train objects of one train ID
        self._last_written = 0
        self.counts = dict(trains_written=0, trains_merged=0, empty_trains=0, suspect_trains=0,
                           triggers_without_train_id=0, trains_out_of_order=0, hits_written=0,
                           centroids_written=0, events_without_train=0, centroids_without_train=0)

    @staticmethod
    def prepare_events(events):
        return as_records(events)

    # ----------------------------------------------------------- data in
    def write_tdcs(self, tdcs: np.ndarray) -> None:
        if tdcs.size:
            decided = self.assigner.feed(tdcs)
            if decided.size:
                self._triggers.append(decided)

    def write_events(self, events) -> None:
        events = as_records(events)
        if events.size:
            self._events.append(events)

    def write_centroids(self, centroids) -> None:
        if centroids is not None and centroids.size:
            self._cents.append(centroids)

    def segment_done(self, t_hi: int | None) -> None:
        self._write_complete(t_hi)

    # ----------------------------------------------------------- trains out
    def _write_complete(self, t_hi: int | None) -> None:
        """Write the trains whose every trigger is followed by a trigger at or before ``t_hi``
        (all of them when ``t_hi`` is None): their events and centroids are all in."""
        trig = np.concatenate(self._triggers) if self._triggers else np.empty(0, TRIGGER_TRAIN_DTYPE)
        if not trig.size:
            return
        ordered = trig[np.argsort(trig["time"], kind="stable")]
        if t_hi is None:
            n_done = ordered.size
        else:
            # triggers up to the last one at or before t_hi; that last one may still get events
            n_done = max(int(np.searchsorted(ordered["time"], t_hi, side="right")) - 1, 0)
        if n_done == 0:
            return
        done, rest = ordered[:n_done], ordered[n_done:]
        self._triggers = [rest] if rest.size else []
        table = train_table(done)
        ev = self._take(self._events, done["counter"], EVENT_DTYPE, "_events")
        cen = self._take(self._cents, done["counter"], CENTROID_DTYPE, "_cents")
        self.counts["events_without_train"] += apply_train_ids(ev, table)
        self.counts["centroids_without_train"] += apply_train_ids(cen, table)
        self._write_triggers(done, ev, cen)

    def _take(self, parts: list, counters: np.ndarray, dtype, attr: str) -> np.ndarray:
        """The records of ``parts`` whose trigger is in ``counters`` (removed from the list).
        Usually they are the first ones (records come in time order): then no copy is made."""
        if not parts:
            return np.empty(0, dtype)
        allrec = np.concatenate(parts) if len(parts) > 1 else parts[0]
        known = np.sort(counters)
        ev = allrec["event"]
        pos = np.minimum(np.searchsorted(known, ev), known.size - 1)
        mine = known[pos] == ev
        k = int(np.count_nonzero(mine))
        if mine[:k].all():
            taken, rest = allrec[:k], allrec[k:]
        else:
            taken, rest = allrec[mine], allrec[~mine]
        setattr(self, attr, [rest] if rest.size else [])
        return taken

    def _write_triggers(self, triggers: np.ndarray, ev: np.ndarray, cen: np.ndarray) -> None:
        from tpx3lib.pipeline.trains import Train
        # records grouped by trigger, in trigger order (stable: time order kept within)
        rank_ev = np.searchsorted(np.sort(triggers["counter"]), ev["event"])
        rank_cen = np.searchsorted(np.sort(triggers["counter"]), cen["event"])
        by_counter = np.argsort(triggers["counter"], kind="stable")
        ev = ev[np.argsort(rank_ev, kind="stable")] if not _sorted(rank_ev) else ev
        cen = cen[np.argsort(rank_cen, kind="stable")] if not _sorted(rank_cen) else cen
        rank_ev.sort(kind="stable")
        rank_cen.sort(kind="stable")
        n = triggers.size
        ev_bounds = np.searchsorted(rank_ev, np.arange(n + 1))
        cen_bounds = np.searchsorted(rank_cen, np.arange(n + 1))
        position = np.empty(n, np.int64)
        position[by_counter] = np.arange(n)          # trigger i's rank among the counters
        for i, t in enumerate(triggers):
            r = position[i]
            tid = int(t["train_id"])
            host = float(t["host_time"])
            hits = ev[ev_bounds[r]:ev_bounds[r + 1]]
            cents = cen[cen_bounds[r]:cen_bounds[r + 1]]
            if tid == 0:
                self.counts["triggers_without_train_id"] += 1
                continue                               # (its records counted by apply_train_ids)
            stamp = 0
            if self.start_ns is not None:
                tt = int(t["time"])     # exact integer ns, rounded (as the pymepix layout's timestamp)
                stamp = max(self.start_ns + (tt // 4096) * 25 + ((tt % 4096) * 25 + 2048) // 4096, 0)
            elif not math.isnan(host):
                stamp = int(round(host * 1e9))
            train = Train(train_id=tid, trigger=int(t["counter"]), trigger_time=int(t["time"]),
                          flags=int(t["flags"]), hits=hits, centroids=cents, timestamp_ns=stamp)
            if self._held and tid == self._held[0].train_id:
                self._held.append(train)
                self.counts["trains_merged"] += 1
                continue
            if tid <= self._last_written:
                self.counts["trains_out_of_order"] += 1
                self.counts["events_without_train"] += hits.size
                self.counts["centroids_without_train"] += cents.size
                continue
            self._flush_held()
            self._held = [train]
            self._last_written = tid

    def _flush_held(self) -> None:
        if not self._held:
            return
        train = self._merge(self._held)
        self._held = []
        if self.writer is None:
            settings = dict(self.settings, **self._trigger_settings(train))
            self.writer = ExdfRunWriter(self.path, self.run_number, settings=settings, units=self.units,
                                        **self.run_options)
        self._write_train(self.writer, train)
        k = self.counts
        k["trains_written"] += 1
        k["hits_written"] += train.n_hits
        k["centroids_written"] += train.n_centroids if self.with_centroids else 0
        k["empty_trains"] += train.n_hits == 0
        k["suspect_trains"] += train.run_file_flag == 0

    # ----------------------------------------------------------- end
    def close(self, counters: dict) -> None:
        flushed = self.assigner.flush()              # (a counting source holds nothing back)
        if flushed.size:
            self._triggers.append(flushed)
        self._write_complete(None)
        self._flush_held()
        # events or centroids of no decided trigger (none are expected): counted, not lost silently
        self.counts["events_without_train"] += sum(a.size for a in self._events)
        self.counts["centroids_without_train"] += sum(a.size for a in self._cents)
        self._events, self._cents = [], []
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
