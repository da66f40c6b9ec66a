"""Timewalk correction: a delay per ToT bin, subtracted from hit or centroid times.

Unit and indexing (the one definition used throughout the project)::

    table[i] = delay in ns of a hit with ToT = 25 * (i + 1) ns,   i = 0 .. 1022

i.e. the bin of a hit is ``tot_ns // 25 - 1`` (ToT 0 uses bin 0). Correcting means
*subtracting* the delay: ``toa_corrected = toa - delay`` (and the same for tof). A
positive delay = the hit was registered late (low-charge hits cross the threshold
later). pymepix stores its LUT differently and mixes units (it subtracts ``lut * 1e3``
from a tof in seconds); :meth:`TimewalkTable.from_pymepix_lut` converts explicitly.

Files: ``.npy`` holds the 1023 float64 delays in ns. Text files (any other suffix,
e.g. ``.txt``/``.csv``/``.dat``) hold one line per bin, ``tot_ns delay_ns`` (whitespace
or comma separated; ``#`` starts a comment), or a single column of 1023 delays.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..dtypes import TOA_UNIT_NS
from ..errors import ConfigError, FileFormatError

__all__ = ["TimewalkTable", "N_TOT_BINS", "TOT_BIN_NS", "tot_bin", "derive_timewalk", "walk_model"]

#: Number of entries: one per 10-bit ToT count 1..1023.
N_TOT_BINS = 1023
#: Width of one ToT bin in ns (the ToT clock).
TOT_BIN_NS = 25


def tot_bin(tot_ns) -> np.ndarray:
    """Table index of each ToT in ns: ``tot // 25 - 1`` clipped to 0..1022."""
    t = np.asarray(tot_ns).astype(np.int64)
    return np.clip(t // TOT_BIN_NS - 1, 0, N_TOT_BINS - 1)


def walk_model(tot_ns, a, b, c):
    """The smooth timewalk model ``a / (tot - b) + c`` (ns), used to fill sparse bins."""
    return a / (np.asarray(tot_ns, dtype=np.float64) - b) + c


class TimewalkTable:
    """A timewalk delay table (see the module docstring for the unit).

    Parameters
    ----------
    delay_ns : 1023 finite numbers, the delay in ns for ToT = 25*(i+1) ns.
    """

    def __init__(self, delay_ns):
        d = np.asarray(delay_ns, dtype=np.float64).reshape(-1)
        if d.size != N_TOT_BINS:
            raise ConfigError(f"a timewalk table has {N_TOT_BINS} entries (ToT 25..25575 ns), not {d.size}")
        if not np.all(np.isfinite(d)):
            raise ConfigError("timewalk table entries must be finite numbers of ns")
        self.delay_ns = d
        self.delay_ns.flags.writeable = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def zeros(cls) -> "TimewalkTable":
        """The identity correction."""
        return cls(np.zeros(N_TOT_BINS))

    @classmethod
    def from_model(cls, a: float, b: float, c: float = 0.0) -> "TimewalkTable":
        """Table of ``a / (tot - b) + c`` ns at the bin ToTs 25, 50, ... ns (needs b < 25)."""
        if not b < TOT_BIN_NS:
            raise ConfigError(f"timewalk model pole b={b} ns must be below the first ToT bin (25 ns)")
        return cls(walk_model(TOT_BIN_NS * np.arange(1, N_TOT_BINS + 1), a, b, c))

    @classmethod
    def from_pymepix_lut(cls, lut, unit: str = "pymepix") -> "TimewalkTable":
        """Convert a pymepix timewalk LUT (indexed the same way, ``tot // 25 - 1``).

        ``unit="pymepix"`` reproduces what pymepix actually subtracts (``lut * 1e3`` from a
        tof in seconds, i.e. ``lut * 1e12`` ns); ``"s"``, ``"us"``, ``"ns"`` take the LUT
        values as delays in that unit.
        """
        scale = {"pymepix": 1e12, "s": 1e9, "us": 1e3, "ns": 1.0}.get(unit)
        if scale is None:
            raise ConfigError(f"pymepix LUT unit {unit!r}: use 'pymepix', 's', 'us' or 'ns'")
        lut = np.asarray(lut, dtype=np.float64).reshape(-1)
        if lut.size > N_TOT_BINS:
            raise ConfigError(f"pymepix LUT has {lut.size} entries, more than {N_TOT_BINS}")
        d = np.zeros(N_TOT_BINS)
        d[:lut.size] = lut * scale
        if 0 < lut.size < N_TOT_BINS:
            d[lut.size:] = d[lut.size - 1]
        return cls(d)

    @classmethod
    def load(cls, path) -> "TimewalkTable":
        """Read a table from ``.npy`` (1023 float64 ns) or a text file (see module docstring)."""
        path = Path(path)
        try:
            if path.suffix.lower() == ".npy":
                arr = np.load(path, allow_pickle=False)
                if arr.dtype.kind not in "iuf":
                    raise FileFormatError(f"timewalk .npy holds {arr.dtype}, not numbers", str(path))
                return cls(arr)
            rows = []
            with open(path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    line = line.split("#", 1)[0].strip()
                    if not line:
                        continue
                    parts = line.replace(",", " ").split()
                    try:
                        rows.append([float(v) for v in parts])
                    except ValueError:
                        raise FileFormatError(f"line {lineno}: not numbers: {line!r}", str(path)) from None
        except OSError:
            raise
        except ValueError as exc:
            if isinstance(exc, (FileFormatError, ConfigError)):
                raise
            raise FileFormatError(f"cannot read timewalk table: {exc}", str(path)) from None
        if not rows or len({len(r) for r in rows}) != 1 or len(rows[0]) not in (1, 2):
            raise FileFormatError("timewalk text table needs one or two columns on every line "
                                  "(tot_ns delay_ns, or delay_ns)", str(path))
        arr = np.asarray(rows)
        if arr.shape[1] == 2:
            expect = TOT_BIN_NS * np.arange(1, arr.shape[0] + 1)
            if arr.shape[0] != N_TOT_BINS or not np.array_equal(arr[:, 0], expect):
                raise FileFormatError(f"timewalk text table: first column must be the ToT bins "
                                      f"25, 50, ..., {TOT_BIN_NS * N_TOT_BINS} ns", str(path))
            arr = arr[:, 1]
        return cls(arr[:, 0] if arr.ndim == 2 else arr)

    def save(self, path) -> Path:
        """Write as ``.npy`` (by suffix) or as a two-column text file ``tot_ns delay_ns``."""
        path = Path(path)
        if path.suffix.lower() == ".npy":
            np.save(path, np.asarray(self.delay_ns, dtype=np.float64))
        else:
            tot = TOT_BIN_NS * np.arange(1, N_TOT_BINS + 1)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write("# tpx3 timewalk table: delay in ns subtracted from toa/tof of a hit with this ToT\n")
                fh.write("# tot_ns delay_ns\n")
                for t, d in zip(tot, self.delay_ns):
                    fh.write(f"{t} {float(d)!r}\n")
        return path

    # ------------------------------------------------------------------ use
    def delay_for_tot(self, tot_ns) -> np.ndarray:
        """Delay in ns for each ToT in ns."""
        return self.delay_ns[tot_bin(tot_ns)]

    def delay_units(self, tot_ns) -> np.ndarray:
        """Delay in integer 25/4096 ns units (rounded to nearest) for each ToT in ns."""
        return np.rint(self.delay_for_tot(tot_ns) / TOA_UNIT_NS).astype(np.int64)

    def spread_units(self) -> int:
        """Range of the delays in integer time units (how much correction can reorder hits)."""
        return int(math.ceil((self.delay_ns.max() - self.delay_ns.min()) / TOA_UNIT_NS)) + 1

    def apply_to_hits(self, hits: np.ndarray) -> np.ndarray:
        """Copy of ``hits`` (any array with ``tot`` and ``toa``, optional ``tof``) with the
        delay of each hit's ToT subtracted from toa and tof (rounded to integer units)."""
        out = np.array(hits, copy=True)
        d = self.delay_units(out["tot"])
        out["toa"] -= d
        if "tof" in out.dtype.names:
            out["tof"] -= d
        return out

    def apply_to_centroids(self, centroids: np.ndarray) -> np.ndarray:
        """Copy of ``centroids`` (``CENTROID_DTYPE``) with the delay of each cluster's max ToT
        subtracted from its weighted mean ``toa`` and ``tof`` (as pymepix does). ``toa_first``
        and ``tof_first`` stay the raw times of the earliest hit. Correcting the hits before
        clustering (``cluster_hits(..., timewalk=table)``) is the better choice when possible.
        """
        out = np.array(centroids, copy=True)
        d = self.delay_for_tot(out["tot_max"]) / TOA_UNIT_NS
        out["toa"] -= d
        out["tof"] -= d
        return out

    def apply(self, arr: np.ndarray) -> np.ndarray:
        """Correct hits (arrays with ``tot``) or centroids (arrays with ``tot_max``); returns a copy."""
        names = getattr(getattr(arr, "dtype", None), "names", None) or ()
        if "tot_max" in names:
            return self.apply_to_centroids(arr)
        if "tot" in names and "toa" in names:
            return self.apply_to_hits(arr)
        raise TypeError("timewalk correction needs hits (fields tot, toa) or centroids (tot_max, toa, tof)")

    def __eq__(self, other):
        return isinstance(other, TimewalkTable) and np.array_equal(self.delay_ns, other.delay_ns)

    def __repr__(self):
        return (f"TimewalkTable(delay {self.delay_ns[0]:.3g} ns at 25 ns .. "
                f"{self.delay_ns[-1]:.3g} ns at {TOT_BIN_NS * N_TOT_BINS} ns)")


def _binned_medians(bins: np.ndarray, values: np.ndarray):
    """Median of ``values`` and count per ToT bin (NaN median where a bin is empty)."""
    counts = np.bincount(bins, minlength=N_TOT_BINS)
    med = np.full(N_TOT_BINS, np.nan)
    if values.size:
        order = np.lexsort((values, bins))
        v = values[order]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for i in np.flatnonzero(counts):
            s, n = starts[i], counts[i]
            med[i] = 0.5 * (v[s + (n - 1) // 2] + v[s + n // 2])
    return med, counts


def _fit_table(bins, delay, min_count, fill):
    """Per-bin medians, the model fit and the table (medians where measured, model elsewhere)."""
    from scipy.optimize import curve_fit

    med, counts = _binned_medians(bins, delay)
    good = np.flatnonzero(counts >= min_count)
    if good.size < 3:
        raise ConfigError(f"not enough calibration data: {good.size} ToT bins have >= {min_count} hits "
                          f"({delay.size} hits usable); need at least 3")
    x = TOT_BIN_NS * (good + 1.0)
    y = med[good]
    sigma = 1.0 / np.sqrt(counts[good])
    c0 = float(y[-1])
    a0 = max(float((y[0] - c0) * (x[0] + 25.0)), 1.0)
    try:
        (a, b, c), _ = curve_fit(walk_model, x, y, p0=(a0, -25.0, c0), sigma=sigma,
                                 bounds=([0.0, -1e5, -np.inf], [np.inf, TOT_BIN_NS - 1.0, np.inf]),
                                 maxfev=20000)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"timewalk model fit failed: {exc}") from None
    table = walk_model(TOT_BIN_NS * np.arange(1, N_TOT_BINS + 1), a, b, c)
    if fill == "model":
        table[good] = med[good]
    return table, med, counts, good, (float(a), float(b), float(c))


def derive_timewalk(hits: np.ndarray, reference: str = "max_tot", tof_peak_ns: float | None = None,
                    peak_halfwidth_ns: float = 500.0, params=None, min_count: int = 10,
                    fill: str = "model", iterations: int = 3):
    """Derive a :class:`TimewalkTable` from calibration hits.

    ``reference="max_tot"``: hits are clustered (``params``, default 8-connectivity, 500 ns
    window, min size 2); a hit's delay is its ToA minus the ToA of its cluster's highest-ToT
    hit *corrected by the current table* (the reference's own walk is not zero), iterated
    ``iterations`` times from a zero table; the result is normalised to zero delay at
    infinite ToT (the fitted ``c`` is removed), i.e. times are corrected to those of an
    infinitely large signal. ``reference="tof_peak"``: the delay is ``tof - tof_peak_ns``
    for hits within ``peak_halfwidth_ns`` of a known ToF peak (absolute, not normalised).

    Per ToT bin the median delay is taken where at least ``min_count`` hits fall; the model
    ``a / (tot - b) + c`` is fitted to those medians (weighted by count) and fills the other
    bins (``fill="model"``), or replaces all (``fill="model_only"``). Returns
    ``(table, info)``, ``info`` holding per-bin ``median_ns``, ``count`` and the fit ``(a, b, c)``.
    """
    from .core import as_event_array, cluster_hits
    from .params import ClusterParams

    if fill not in ("model", "model_only"):
        raise ConfigError(f"fill={fill!r}: use 'model' or 'model_only'")
    if not isinstance(min_count, int) or min_count < 1:
        raise ConfigError(f"min_count={min_count!r}: must be an integer >= 1")
    if not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"iterations={iterations!r}: must be an integer >= 1")
    ev = as_event_array(hits)
    if reference == "max_tot":
        p = params if params is not None else ClusterParams(time_window_ns=500.0, min_size=2)
        _, labels = cluster_hits(ev, p, return_labels=True)
        sel = np.flatnonzero(labels >= 0)
        lab = labels[sel]
        # reference hit per cluster: largest ToT, then earliest ToA
        order = np.lexsort((ev["toa"][sel], -ev["tot"][sel].astype(np.int64), lab))
        sel, lab = sel[order], lab[order]
        is_ref = np.ones(sel.size, bool)
        is_ref[1:] = lab[1:] != lab[:-1]
        group = np.cumsum(is_ref) - 1
        ref = sel[is_ref][group]
        use = ~is_ref
        raw_delay = ((ev["toa"][sel] - ev["toa"][ref]) * TOA_UNIT_NS)[use]
        tots = ev["tot"][sel][use]
        ref_bins = tot_bin(ev["tot"][ref][use])
        bins = tot_bin(tots)
        table = np.zeros(N_TOT_BINS)
        for _ in range(iterations):
            delay = raw_delay + table[ref_bins]
            table, med, counts, good, fit = _fit_table(bins, delay, min_count, fill)
        a, b, c = fit
        table = table - c
        med = med - c
        fit = (a, b, 0.0)
    elif reference == "tof_peak":
        if tof_peak_ns is None or not math.isfinite(tof_peak_ns):
            raise ConfigError("reference='tof_peak' needs the ToF peak position tof_peak_ns")
        if not peak_halfwidth_ns > 0:
            raise ConfigError(f"peak_halfwidth_ns={peak_halfwidth_ns!r}: must be > 0")
        d = ev["tof"] * TOA_UNIT_NS - tof_peak_ns
        use = np.abs(d) <= peak_halfwidth_ns
        if params is not None:
            use &= ev["tot"] > params.tot_threshold_ns
        delay = d[use]
        table, med, counts, good, fit = _fit_table(tot_bin(ev["tot"][use]), delay, min_count, fill)
    else:
        raise ConfigError(f"reference={reference!r}: use 'max_tot' or 'tof_peak'")
    info = {"median_ns": med, "count": counts, "fit": fit,
            "hits_used": int(delay.size), "bins_measured": int(good.size)}
    return TimewalkTable(table), info
