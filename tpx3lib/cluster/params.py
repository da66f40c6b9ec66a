"""Parameters, counters and label codes of the clustering stage.

The clustering criterion itself is defined in ``docs/clustering.md``; in short
(method ``"components"``): two kept hits are *linked* when they have the same
event and chip, ``max(|dx|, |dy|) <= radius`` and ``|dt| <= time_window_ns``;
clusters are the connected components of that graph.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..dtypes import TOA_UNIT_NS
from ..errors import ConfigError

__all__ = [
    "ClusterParams", "ClusterStats", "METHODS",
    "LABEL_BELOW_TOT", "LABEL_SMALL_CLUSTER", "LABEL_NOISE", "LABEL_PENDING",
    "PYMEPIX_TOF_SCALE",
]

#: Clustering methods: connected components (the fast default) and DBSCAN as pymepix runs it.
METHODS = ("components", "dbscan")

#: pymepix's scale of the ToF feature: tof in seconds times this is compared with x, y in pixels.
PYMEPIX_TOF_SCALE = 1.7e7

# Label codes for hits that end up in no returned cluster (labels >= 0 index the centroids).
#: the hit's ToT is at or below ``tot_threshold_ns``; it was not clustered
LABEL_BELOW_TOT = -1
#: the hit's cluster had fewer than ``min_size`` hits and was dropped
LABEL_SMALL_CLUSTER = -2
#: DBSCAN only: the hit is noise (neither a core point nor within eps of one)
LABEL_NOISE = -3
#: streaming only: the hit is held back, its cluster may still grow
LABEL_PENDING = -4

# Largest spatial radius accepted: the neighbour search visits (2r+1)^2 pixels per hit.
_MAX_RADIUS = 16


@dataclass(frozen=True)
class ClusterParams:
    """How hits are grouped into clusters.

    Attributes
    ----------
    radius : int
        Spatial neighbourhood: two hits can link when ``max(|dx|, |dy|) <= radius``
        (Chebyshev distance in pixels). 1 = 8-connectivity. 0..16.
    time_window_ns : float
        Two hits can link when ``|toa_a - toa_b| <= time_window_ns``. Default 200 ns.
    min_size : int
        Clusters with fewer hits are dropped (counted in ``ClusterStats``). Default 1: keep all.
    tot_threshold_ns : int
        Hits with ``tot <= tot_threshold_ns`` are removed before clustering (as pymepix does).
        Default 0 (drops only ToT 0).
    reorder_window_s : float
        Streaming only (:class:`~tpx3lib.cluster.Clusterer`): how far in time a hit may arrive
        behind the newest hit already fed. Hits within this window of the newest time are held
        back, so results do not depend on chunking or arrival order. Default 1 ms.
    method : str
        ``"components"`` (connected components, default) or ``"dbscan"`` (pymepix's DBSCAN
        semantics with ``eps``, ``min_samples``, ``tof_scale``; ``radius`` and
        ``time_window_ns`` are then ignored).
    eps, min_samples, tof_scale : DBSCAN parameters, pymepix defaults (2, 3, 1.7e7):
        hits are neighbours when ``dx^2 + dy^2 + (tof_s * tof_scale difference)^2 <= eps^2``
        within one event; core points have ``>= min_samples`` neighbours counting themselves.
    n_threads : int
        Threads for :func:`~tpx3lib.cluster.cluster_hits` (split into time blocks, exact).
    """

    radius: int = 1
    time_window_ns: float = 200.0
    min_size: int = 1
    tot_threshold_ns: int = 0
    reorder_window_s: float = 1e-3
    method: str = "components"
    eps: float = 2.0
    min_samples: int = 3
    tof_scale: float = PYMEPIX_TOF_SCALE
    n_threads: int = 1

    def __post_init__(self):
        def bad(name, why):
            raise ConfigError(f"cluster parameter {name}={getattr(self, name)!r}: {why}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_real(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.radius) or not 0 <= self.radius <= _MAX_RADIUS:
            bad("radius", f"must be an integer number of pixels in 0..{_MAX_RADIUS}")
        if not is_real(self.time_window_ns) or self.time_window_ns < 0:
            bad("time_window_ns", "must be a finite number of ns >= 0")
        if self.time_window_ns > 1e9:
            bad("time_window_ns", "must be at most 1 s (1e9 ns)")
        if not is_int(self.min_size) or self.min_size < 1:
            bad("min_size", "must be an integer >= 1")
        if not is_int(self.tot_threshold_ns) or not 0 <= self.tot_threshold_ns <= 65535:
            bad("tot_threshold_ns", "must be an integer number of ns in 0..65535")
        if not is_real(self.reorder_window_s) or not 0 <= self.reorder_window_s <= 1e3:
            bad("reorder_window_s", "must be a finite number of seconds in 0..1000")
        if self.method not in METHODS:
            bad("method", f"must be one of {', '.join(METHODS)}")
        if not is_real(self.eps) or not 0 < self.eps <= _MAX_RADIUS:
            bad("eps", f"must be a finite number in (0, {_MAX_RADIUS}]")
        if not is_int(self.min_samples) or self.min_samples < 1:
            bad("min_samples", "must be an integer >= 1")
        if not is_real(self.tof_scale) or self.tof_scale <= 0:
            bad("tof_scale", "must be a finite number > 0")
        if self.method == "dbscan" and self.eps / self.tof_scale > 1.0:
            bad("eps", "eps / tof_scale (the DBSCAN time reach) must be at most 1 s")
        if not is_int(self.n_threads) or not 1 <= self.n_threads <= 64:
            bad("n_threads", "must be an integer in 1..64")

    @classmethod
    def pymepix(cls, **overrides) -> "ClusterParams":
        """Parameters that reproduce pymepix's DBSCAN centroiding (eps 2, min_samples 3)."""
        return cls(**{"method": "dbscan", **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "ClusterParams":
        """Build from a mapping (e.g. YAML); unknown keys raise :class:`ConfigError`."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown cluster parameter(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(names))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    # --- derived integer quantities (25/4096 ns units) -------------------------------
    def link_radius(self) -> int:
        """Chebyshev radius of the neighbour search (for DBSCAN: floor(eps))."""
        return int(math.floor(self.eps)) if self.method == "dbscan" else self.radius

    def link_window_units(self) -> int:
        """Time reach of the neighbour search in 25/4096 ns units.

        Exact for ``components``; for ``dbscan`` a safe superset of ``eps / tof_scale``
        (the exact test is done on the float features).
        """
        if self.method == "dbscan":
            return int(math.floor(self.eps / self.tof_scale / (TOA_UNIT_NS * 1e-9))) + 2
        return int(math.floor(self.time_window_ns / TOA_UNIT_NS + 1e-9))

    def reorder_window_units(self) -> int:
        return int(math.ceil(self.reorder_window_s * 1e9 / TOA_UNIT_NS))


@dataclass
class ClusterStats:
    """Where every hit went. ``hits_in == hits_below_tot + hits_clustered +
    hits_in_small_clusters + hits_noise + hits_pending`` at all times."""

    hits_in: int = 0
    hits_below_tot: int = 0
    hits_clustered: int = 0
    hits_in_small_clusters: int = 0
    hits_noise: int = 0
    hits_pending: int = 0
    clusters_out: int = 0
    clusters_dropped_small: int = 0
    #: hits that arrived later than ``reorder_window_s`` behind the newest time: still
    #: clustered, but a cluster they belong to may have been emitted already in pieces
    late_hits: int = 0

    def check(self) -> bool:
        """True when the hit accounting adds up."""
        return self.hits_in == (self.hits_below_tot + self.hits_clustered + self.hits_in_small_clusters
                                + self.hits_noise + self.hits_pending)
