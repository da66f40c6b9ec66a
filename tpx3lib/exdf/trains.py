"""Writing a block of labelled data (hits, centroids, decided triggers) train by train.

:func:`write_trains` is what offline processing (``tpx3 process --layout exdf``) and
the live pipeline need between the train-ID assigner and :class:`ExdfRunWriter`:

- the trains written are those of the decided triggers (train ID != 0) plus any
  train ID found in the hits or centroids, in increasing order, so a train whose
  trigger came but that has no hit is written empty (count 0);
- each train's flag is 1 only if all its triggers are free of SUSPECT flags
  (:func:`tpx3lib.trainid.run_file_flag`); a train with data but no trigger gets 0;
- its timestamp is the trigger's host time in ns (0 = unknown, shown as NaT by
  EXtra-data);
- records with train ID 0 are not written (counted ``hits_without_train`` /
  ``centroids_without_train``), nor trains not above the writer's last train
  (counted ``trains_too_old`` and their records as without train).
"""
from __future__ import annotations

import math

import numpy as np

from ..dtypes import CENTROID_DTYPE, EVENT_DTYPE
from ..trainid.assign import split_by_train
from ..trainid.flags import SUSPECT, TRIGGER_TRAIN_DTYPE
from .errors import ExdfDtypeError
from .writer import ExdfRunWriter

__all__ = ["write_trains"]


def write_trains(writer: ExdfRunWriter, triggers: np.ndarray, hits: np.ndarray,
                 centroids: np.ndarray | None = None) -> dict[str, int]:
    """Write every train of ``triggers`` (TRIGGER_TRAIN_DTYPE) with its ``hits``
    (EVENT_DTYPE, ``train_id`` filled) and ``centroids``; returns counts (see module doc)."""
    if triggers.dtype != TRIGGER_TRAIN_DTYPE:
        raise ExdfDtypeError(f"triggers must be TRIGGER_TRAIN_DTYPE, not {triggers.dtype}")
    if hits.dtype != EVENT_DTYPE:
        raise ExdfDtypeError(f"hits must be EVENT_DTYPE, not {hits.dtype}")
    if centroids is not None and centroids.dtype != CENTROID_DTYPE:
        raise ExdfDtypeError(f"centroids must be CENTROID_DTYPE, not {centroids.dtype}")
    stats = dict(trains=0, empty_trains=0, suspect_trains=0, trains_too_old=0,
                 hits_without_train=0, centroids_without_train=0)

    flags: dict[int, int] = {}
    stamps: dict[int, int] = {}
    for t in triggers[triggers["train_id"] != 0]:
        tid = int(t["train_id"])
        flags[tid] = flags.get(tid, 0) | int(t["flags"])
        if tid not in stamps and not math.isnan(t["host_time"]):
            stamps[tid] = int(round(float(t["host_time"]) * 1e9))
    hit_parts = dict(split_by_train(hits))
    cen_parts = dict(split_by_train(centroids)) if centroids is not None else {}
    stats["hits_without_train"] += hit_parts.pop(0, np.empty(0, EVENT_DTYPE)).size
    stats["centroids_without_train"] += cen_parts.pop(0, np.empty(0, CENTROID_DTYPE)).size

    last = writer.last_train_id or 0
    for tid in sorted(set(flags) | set(hit_parts) | set(cen_parts)):
        h = hit_parts.get(tid, np.empty(0, EVENT_DTYPE))
        c = cen_parts.get(tid)
        if tid <= last:
            stats["trains_too_old"] += 1
            stats["hits_without_train"] += h.size
            stats["centroids_without_train"] += 0 if c is None else c.size
            continue
        good = tid in flags and not flags[tid] & SUSPECT
        writer.write_train(tid, stamps.get(tid, 0), h, c,
                           flag=1 if good else 0)
        stats["trains"] += 1
        stats["empty_trains"] += h.size == 0
        stats["suspect_trains"] += not good
    return stats
