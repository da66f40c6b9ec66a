"""pymepix-compatible centroiding: DBSCAN on (trigger*eps*1000, x, y, tof*1.7e7).

pymepix drops hits with ``tot <= tot_threshold``, runs scikit-learn's DBSCAN (eps 2,
min_samples 3, Euclidean) on the features ``(trigger * eps * 1000, x, y, tof_s * 1.7e7)``
and reports per cluster ``[trigger, x, y, tof, tot_avg, tot_max, size]`` with x, y, tof
ToT-weighted means. Hits of different triggers are ``>= 2000`` apart in the first
feature, so clusters never span triggers; one pixel step equals 58.8 ns of tof.

:func:`pymepix_centroids` takes the same arrays and returns the same ``(7, n)`` array,
computed by this project's DBSCAN kernel (no scikit-learn at run time). The only
intended difference: a border point within eps of core points of two clusters joins
the nearest core point's cluster (sklearn: whichever cluster it reached first, which
depends on the order of the input). Clusters come ordered by trigger, then earliest hit.
"""
from __future__ import annotations

import numpy as np

from ..dtypes import EVENT_DTYPE, TOA_UNIT_S
from ..errors import ConfigError
from .core import _cluster_rows
from .params import PYMEPIX_TOF_SCALE, ClusterParams

__all__ = ["pymepix_centroids", "pymepix_labels"]


def _events_from_arrays(trigger, x, y, tof, tot):
    arrays = [np.asarray(a).reshape(-1) for a in (trigger, x, y, tof, tot)]
    n = arrays[0].size
    if any(a.size != n for a in arrays):
        raise ConfigError("trigger, x, y, tof and tot must have the same length")
    trigger, x, y, tof, tot = arrays
    tof = tof.astype(np.float64)
    if not np.all(np.isfinite(tof)):
        raise ConfigError("tof must be finite (seconds)")
    for name, a in (("x", x), ("y", y), ("tot", tot)):
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ConfigError(f"{name} out of range 0..65535")
    ev = np.zeros(n, EVENT_DTYPE)
    ev["event"] = trigger
    ev["x"] = x
    ev["y"] = y
    ev["tot"] = tot
    # integer time only steers the neighbour search (a superset); distances use the float tof
    ev["toa"] = np.floor(tof / TOA_UNIT_S).astype(np.int64)
    ev["tof"] = ev["toa"]
    return ev, tof


def pymepix_labels(trigger, x, y, tof, tot, eps: float = 2.0, min_samples: int = 3,
                   tot_threshold: int = 0, tof_scale: float = PYMEPIX_TOF_SCALE) -> np.ndarray:
    """DBSCAN label per hit as pymepix defines the clustering (tof in seconds, tot in ns).

    Returns int64: cluster numbers >= 0 (in the order of :func:`pymepix_centroids`), -1 for
    hits at or below the ToT threshold, -3 for noise.
    """
    p = ClusterParams(method="dbscan", eps=float(eps), min_samples=int(min_samples),
                      tot_threshold_ns=int(tot_threshold), tof_scale=float(tof_scale))
    ev, tof_s = _events_from_arrays(trigger, x, y, tof, tot)
    out, _ = _cluster_rows(ev, p, feature=tof_s * p.tof_scale, want_labels=True)
    # canonical order is by earliest hit; pymepix lists clusters trigger by trigger
    order = np.lexsort((out.centroids["toa_first"], out.centroids["event"]))
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    labels = out.labels
    sel = labels >= 0
    labels[sel] = rank[labels[sel]]
    return labels


def pymepix_centroids(trigger, x, y, tof, tot, eps: float = 2.0, min_samples: int = 3,
                      tot_threshold: int = 0, tof_scale: float = PYMEPIX_TOF_SCALE,
                      timewalk=None) -> np.ndarray:
    """pymepix's centroid array ``(7, n)``: trigger, x, y, tof (s), tot_avg, tot_max, size.

    ``timewalk`` (a :class:`~tpx3lib.cluster.timewalk.TimewalkTable`) subtracts the delay of
    each cluster's max ToT from its tof, as pymepix's ``cent_timewalk_lut`` does (in this
    project's documented unit, ns).
    """
    labels = pymepix_labels(trigger, x, y, tof, tot, eps, min_samples, tot_threshold, tof_scale)
    sel = labels >= 0
    lab = labels[sel]
    n = int(lab.max()) + 1 if lab.size else 0
    trig = np.asarray(trigger).reshape(-1)[sel]
    xs = np.asarray(x).reshape(-1)[sel].astype(np.float64)
    ys = np.asarray(y).reshape(-1)[sel].astype(np.float64)
    ts = np.asarray(tof, dtype=np.float64).reshape(-1)[sel]
    ws = np.asarray(tot).reshape(-1)[sel].astype(np.float64)
    size = np.bincount(lab, minlength=n)
    wsum = np.bincount(lab, weights=ws, minlength=n)
    out = np.zeros((7, n))
    out[1] = np.bincount(lab, weights=xs * ws, minlength=n) / wsum
    out[2] = np.bincount(lab, weights=ys * ws, minlength=n) / wsum
    out[3] = np.bincount(lab, weights=ts * ws, minlength=n) / wsum
    out[4] = wsum / size
    tot_max = np.zeros(n)
    np.maximum.at(tot_max, lab, ws)
    out[5] = tot_max
    out[6] = size
    first_of = np.full(n, -1, np.int64)
    order = np.argsort(lab, kind="stable")
    starts = np.flatnonzero(np.r_[True, lab[order][1:] != lab[order][:-1]])
    first_of[lab[order][starts]] = order[starts]
    out[0] = trig[first_of] if n else out[0]
    if timewalk is not None and n:
        out[3] -= timewalk.delay_for_tot(out[5]) * 1e-9
    return out
