"""Clustering and centroiding of Timepix3 hits.

- :func:`cluster_hits` - one shot: hits in, centroids (``CENTROID_DTYPE``) out, optional labels.
- :class:`Clusterer` - streaming: ``feed(chunk) -> centroids``, ``flush() -> centroids``;
  identical results for any chunking and arrival order within the reorder window.
- :class:`ClusterParams` - radius, time window, min size, ToT threshold, method
  (``"components"`` or pymepix's ``"dbscan"``), threads.
- :class:`TimewalkTable` - delay per ToT bin (ns, table[i] for ToT = 25*(i+1) ns),
  load/save/apply; :func:`derive_timewalk` makes one from calibration data.
- :func:`pymepix_centroids` - pymepix's (7, n) centroid array from its input arrays.

The exact criterion and the file formats are in ``docs/clustering.md``.
"""
from __future__ import annotations

from .core import Clusterer, as_event_array, cluster_hits, sort_centroids
from .params import (
    LABEL_BELOW_TOT, LABEL_NOISE, LABEL_PENDING, LABEL_SMALL_CLUSTER, METHODS, ClusterParams, ClusterStats,
)
from .pymepix import pymepix_centroids, pymepix_labels
from .timewalk import N_TOT_BINS, TimewalkTable, derive_timewalk, tot_bin

__all__ = [
    "cluster_hits", "Clusterer", "ClusterParams", "ClusterStats", "METHODS",
    "LABEL_BELOW_TOT", "LABEL_SMALL_CLUSTER", "LABEL_NOISE", "LABEL_PENDING",
    "TimewalkTable", "derive_timewalk", "tot_bin", "N_TOT_BINS",
    "pymepix_centroids", "pymepix_labels", "as_event_array", "sort_centroids",
]
