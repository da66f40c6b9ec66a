"""Write simulated data files: pymepix raw and ASI/Serval .tpx3 (spec section 5), with truth.

* ``fmt="pymepix"``: an 8-byte little-endian ``time.time_ns()`` start stamp, then chip 0's words
  as the UDP payloads would carry them (no framing). One chip only (pymepix records one file
  per chip).
* ``fmt="tpx3"``: chunks of at most ``chunk_words`` words, each preceded by an 8-byte header
  whose little-endian uint64 value is ``"TPX3"`` (bits 31..0, i.e. the bytes T P X 3) | chip
  index << 32 | mode << 40 | chunk size in bytes << 48. Chips' chunks interleave slice by slice.

Data are generated and written slice by slice, so memory stays bounded however many hits are
asked for; the truth goes to ``truth_path`` (.npz or .h5) the same way.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from tpx3lib.errors import ConfigError

from .physics import TICKS_PER_SECOND, ChipState, HitGenerator, PhysicsModel
from .truth import CLUSTER_TRUTH_DTYPE, HIT_TRUTH_DTYPE, GeneratedSlice, Truth
from tpx3lib.dtypes import HEARTBEAT_DTYPE, TDC_DTYPE

__all__ = ["write_simulated_file", "tpx3_chunk_header", "parse_tpx3_chunk_header", "TPX3_MAGIC",
           "MAX_CHUNK_WORDS", "truncate_slice", "TruthWriter"]

#: "TPX3" as the low 32 bits of a little-endian uint64.
TPX3_MAGIC = int.from_bytes(b"TPX3", "little")
#: The chunk size field is 16 bit (bytes), so a chunk holds at most 8191 words.
MAX_CHUNK_WORDS = 0xFFFF // 8


def tpx3_chunk_header(chip: int, mode: int, n_bytes: int) -> int:
    """The 64-bit chunk header value (write it little-endian)."""
    if not 0 <= n_bytes <= 0xFFFF or n_bytes % 8:
        raise ValueError(f"chunk size {n_bytes} must be a multiple of 8 up to 65535")
    return TPX3_MAGIC | (chip & 0xFF) << 32 | (mode & 0xFF) << 40 | n_bytes << 48


def parse_tpx3_chunk_header(value: int) -> tuple[int, int, int]:
    """(chip, mode, n_bytes) of a chunk header; ValueError if it is not one."""
    if value & 0xFFFFFFFF != TPX3_MAGIC:
        raise ValueError(f"not a TPX3 chunk header: 0x{value:016X}")
    return (value >> 32) & 0xFF, (value >> 40) & 0xFF, (value >> 48) & 0xFFFF


# ------------------------------------------------------------------ truth output

class _NpyAppender:
    """Append records to a .npy file of unknown final length (header rewritten at close)."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype, self.n = path, np.dtype(dtype), 0
        # header room for the largest count, padded to a multiple of 64 as the format asks
        longest = len(self._header_text(10 ** 19))
        self._header_len = -(-(longest + 12) // 64) * 64
        self.f = open(path, "wb")
        self.f.write(b"\0" * self._header_len)

    def _header_text(self, n: int) -> bytes:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (n,)}
        return repr(header).encode("latin1")

    def append(self, arr: np.ndarray) -> None:
        if len(arr):
            self.f.write(np.ascontiguousarray(arr, self.dtype).tobytes())
            self.n += len(arr)

    def close(self) -> None:
        text = self._header_text(self.n)
        pre = b"\x93NUMPY\x01\x00"
        room = self._header_len - len(pre) - 2
        body = text + b" " * (room - len(text) - 1) + b"\n"
        if len(body) != room:
            raise ValueError("npy header too long")
        self.f.seek(0)
        self.f.write(pre + room.to_bytes(2, "little") + body)
        self.f.close()


class TruthWriter:
    """Stream truth tables (hits, clusters, triggers, heartbeats) to .npz or .h5 in bounded memory.

    .npz: each table is a .npy member (stored, not compressed) plus ``meta`` (a JSON string).
    .h5: 1-D datasets /hits, /clusters, /triggers, /heartbeats and a ``meta`` attribute.
    """

    TABLES = {"hits": HIT_TRUTH_DTYPE, "clusters": CLUSTER_TRUTH_DTYPE, "triggers": TDC_DTYPE,
              "heartbeats": HEARTBEAT_DTYPE}

    def __init__(self, path, meta: dict | None = None):
        self.path = Path(path)
        self.meta = dict(meta or {})
        self.kind = "h5" if self.path.suffix.lower() in (".h5", ".hdf5") else "npz"
        if self.kind == "h5":
            import h5py
            self._h5 = h5py.File(self.path, "w")
            self._ds = {k: self._h5.create_dataset(k, shape=(0,), maxshape=(None,), dtype=dt, chunks=(65536,))
                        for k, dt in self.TABLES.items()}
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="simtruth_", dir=self.path.parent)
            self._app = {k: _NpyAppender(Path(self._tmp.name) / f"{k}.npy", dt) for k, dt in self.TABLES.items()}

    def append(self, truth: Truth) -> None:
        for k in self.TABLES:
            arr = getattr(truth, k)
            if self.kind == "h5":
                ds = self._ds[k]
                n = ds.shape[0]
                ds.resize((n + len(arr),))
                ds[n:] = arr
            else:
                self._app[k].append(arr)

    def close(self) -> None:
        if self.kind == "h5":
            self._h5.attrs["meta"] = json.dumps(self.meta)
            self._h5.close()
            return
        for a in self._app.values():
            a.close()
        with zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for k, a in self._app.items():
                z.write(a.path, f"{k}.npy")
            buf = np.array(json.dumps(self.meta))
            with z.open("meta.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, buf)
        self._tmp.cleanup()


# ------------------------------------------------------------------ slicing

def truncate_slice(sl: GeneratedSlice, quota: list[int]) -> GeneratedSlice:
    """Keep chip c's words up to and including its ``quota[c]``-th pixel word (and the truth
    of what is kept: hits, TDC edges and heartbeats before the cut; clusters with a kept hit,
    or hitless ones that started before the last kept hit)."""
    words, hits, trig, beats, clusters = [], [], [], [], []
    T = sl.truth
    for chip, w in enumerate(sl.words):
        q = quota[chip]
        top = w >> np.uint64(56)
        is_pix = (top >> np.uint64(4)) >= 0xA
        if q <= 0:
            cut = 0
        else:
            pix_pos = np.flatnonzero(is_pix)
            cut = int(pix_pos[q - 1]) + 1 if q <= len(pix_pos) else len(w)
        kept = w[:cut]
        ktop = top[:cut]
        n_tdc = int(np.isin(ktop, np.array([0x6F, 0x6A, 0x6E, 0x6B], np.uint64)).sum())
        n_hb = int((ktop == 0x44).sum())
        n_hits = int(is_pix[:cut].sum())
        words.append(kept)
        h = T.hits[T.hits["chip"] == chip][:n_hits]
        hits.append(h)
        trig.append(T.triggers[T.triggers["chip"] == chip][:n_tdc])
        beats.append(T.heartbeats[T.heartbeats["chip"] == chip][:n_hb])
        c = T.clusters[T.clusters["chip"] == chip]
        ids = np.unique(h["cluster"][h["cluster"] >= 0])
        t_last = h["toa"].max() if len(h) else -1
        keep = np.isin(c["id"], ids) | ((c["size"] == 0) & (c["t"] <= t_last))
        clusters.append(c[keep])
    truth = Truth(np.concatenate(hits), np.concatenate(clusters), np.concatenate(trig), np.concatenate(beats))
    # the data now end with the last kept hit
    end = sl.t_end_ticks
    if len(truth.hits) and truth.hits["toa"].max() >= 0:
        end = min(end, int(truth.hits["toa"].max()) // 4096 + 1)
    return GeneratedSlice(words, truth, sl.t_start_ticks, max(end, sl.t_start_ticks))


# ------------------------------------------------------------------ the writer

def write_simulated_file(path, n_hits: int, fmt: str = "pymepix", model: PhysicsModel | None = None,
                         seed: int = 0, truth_path=None, *, chip_states=None, n_chips: int = 1,
                         start_ticks: int = 0, stamp_ns: int | None = None, chunk_words: int = MAX_CHUNK_WORDS,
                         slice_hits: int = 500_000, progress: bool = False, on_slice=None) -> dict:
    """Write a simulated file with exactly ``n_hits`` pixel hits (all chips together).

    ``model`` defaults to :class:`PhysicsModel` (its ``seed`` is replaced by ``seed``);
    ``chip_states`` a list of :class:`ChipState` (default: ``n_chips`` default chips).
    The board timer starts at ``start_ticks`` (use ``BoardClock.ticks_before_wrap()`` to cross
    the 30-bit wrap). ``stamp_ns``: the pymepix start stamp (default: now). Data are made in
    slices of about ``slice_hits`` hits. ``progress`` prints a line per slice to stderr;
    ``on_slice(GeneratedSlice)`` is called with each slice as written (words and truth).
    Returns a summary: path, format, chips, n_hits, n_words, n_bytes, n_clusters, n_triggers,
    n_heartbeats, t_start_ticks, t_end_ticks, duration_s, seed, truth_path, stamp_ns, chunks.
    """
    if fmt not in ("pymepix", "tpx3"):
        raise ConfigError(f"unknown simulated file format {fmt!r} (pymepix or tpx3)")
    n_hits = int(n_hits)
    if n_hits < 0:
        raise ConfigError("n_hits must be >= 0")
    model = dataclasses.replace(model if model is not None else PhysicsModel(), seed=int(seed))
    if chip_states is None:
        chip_states = [ChipState() for _ in range(n_chips)]
    gen = HitGenerator(model, chip_states)
    if fmt == "pymepix" and gen.n_chips != 1:
        raise ConfigError("pymepix raw files hold one chip; use fmt='tpx3' for several chips")
    if not 1 <= chunk_words <= MAX_CHUNK_WORDS:
        raise ConfigError(f"chunk_words must be in 1..{MAX_CHUNK_WORDS}")
    if n_hits > 0 and not gen.can_produce_hits():
        raise ConfigError("the model generates no hits (rate 0, all pixels masked, chips disabled "
                          "or no signal and no noise)")
    path = Path(path)
    stamp = int(time.time_ns() if stamp_ns is None else stamp_ns)
    modes = [int(gen.chip_state(c).operation_mode) for c in range(gen.n_chips)]
    meta = {"format": fmt, "seed": int(seed), "n_hits": n_hits, "start_ticks": int(start_ticks),
            "model": _model_meta(model), "n_chips": gen.n_chips}
    tw = TruthWriter(truth_path, meta) if truth_path is not None else None
    summary = {"path": str(path), "format": fmt, "chips": gen.n_chips, "n_hits": 0, "n_words": 0,
               "n_bytes": 0, "n_clusters": 0, "n_triggers": 0, "n_heartbeats": 0,
               "t_start_ticks": int(start_ticks), "t_end_ticks": int(start_ticks), "duration_s": 0.0,
               "seed": int(seed), "truth_path": str(truth_path) if truth_path is not None else None,
               "stamp_ns": stamp if fmt == "pymepix" else None, "chunks": 0}
    # start with a slice length from the expected rate, then adapt to what slices really hold
    rate = max(gen.expected_hit_rate_hz(), 1.0)
    slice_ticks = int(min(max(slice_hits / rate, 1e-4), 10.0) * TICKS_PER_SECOND)
    t = int(start_ticks)
    t_wall = time.perf_counter()
    empty_run = 0
    try:
        with open(path, "wb") as f:
            if fmt == "pymepix":
                f.write(np.array([stamp], "<u8").tobytes())
                summary["n_bytes"] += 8
            while summary["n_hits"] < n_hits:
                sl = gen.generate(t, t + slice_ticks)
                t += slice_ticks
                got = [int((sl.truth.hits["chip"] == c).sum()) for c in range(gen.n_chips)]
                need = n_hits - summary["n_hits"]
                if sum(got) > need:
                    sl = truncate_slice(sl, _split_quota(got, need))
                    t = sl.t_end_ticks
                _write_slice(f, fmt, sl, modes, chunk_words, summary)
                if on_slice is not None:
                    on_slice(sl)
                if tw is not None:
                    tw.append(sl.truth)
                summary["t_end_ticks"] = t
                # adapt the slice length towards slice_hits per slice
                if sum(got) == 0:
                    empty_run += 1
                    if empty_run > 50:
                        raise ConfigError("the model generates no hits (rate 0, all masked or chips disabled?)")
                    slice_ticks = min(slice_ticks * 4, 100 * TICKS_PER_SECOND)
                else:
                    empty_run = 0
                    slice_ticks = int(np.clip(slice_ticks * slice_hits / sum(got), slice_ticks / 4, slice_ticks * 4))
                    slice_ticks = max(slice_ticks, 4000)
                if progress:
                    el = time.perf_counter() - t_wall
                    print(f"{summary['n_hits']:,}/{n_hits:,} hits, {summary['n_bytes'] / 1e6:,.1f} MB, "
                          f"{el:.1f} s ({summary['n_hits'] / max(el, 1e-9) / 1e6:.2f} Mhits/s)",
                          file=sys.stderr, flush=True)
    except BaseException:
        if tw is not None:
            try:
                tw.close()
            except Exception:  # noqa: BLE001 - already failing; the original error matters
                pass
        raise
    if tw is not None:
        tw.close()
    summary["duration_s"] = (summary["t_end_ticks"] - summary["t_start_ticks"]) / TICKS_PER_SECOND
    return summary


def _split_quota(got: list[int], need: int) -> list[int]:
    """Share ``need`` hits among chips in proportion to what each produced (for the last slice)."""
    total = sum(got)
    quota = [g * need // total for g in got]
    rest = need - sum(quota)
    for c in range(len(got)):
        if rest == 0:
            break
        add = min(rest, got[c] - quota[c])
        quota[c] += add
        rest -= add
    return quota


def _write_slice(f, fmt, sl, modes, chunk_words, summary) -> None:
    T = sl.truth
    summary["n_hits"] += len(T.hits)
    summary["n_clusters"] += len(T.clusters)
    summary["n_triggers"] += len(T.triggers)
    summary["n_heartbeats"] += len(T.heartbeats)
    for chip, w in enumerate(sl.words):
        if len(w) == 0:
            continue
        w = w.astype("<u8", copy=False)
        summary["n_words"] += len(w)
        if fmt == "pymepix":
            f.write(w.tobytes())
            summary["n_bytes"] += w.nbytes
            continue
        nchunks = -(-len(w) // chunk_words)
        # one buffer: header word followed by the chunk's words, for every chunk of the slice
        sizes = np.full(nchunks, chunk_words, np.int64)
        sizes[-1] = len(w) - chunk_words * (nchunks - 1)
        buf = np.empty(len(w) + nchunks, "<u8")
        hdr_pos = np.arange(nchunks) * (chunk_words + 1)
        buf[hdr_pos] = [tpx3_chunk_header(chip, modes[chip], int(s) * 8) for s in sizes]
        mask = np.ones(len(buf), bool)
        mask[hdr_pos] = False
        buf[mask] = w
        f.write(buf.tobytes())
        summary["n_bytes"] += buf.nbytes
        summary["chunks"] += nchunks


def _model_meta(model: PhysicsModel) -> dict:
    d = dataclasses.asdict(model)
    d["tof_peaks"] = [dataclasses.asdict(p) if not isinstance(p, dict) else p for p in d["tof_peaks"]]
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
