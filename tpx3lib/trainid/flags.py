"""What a trigger's train-ID decision records: the result dtype and its flag bits.

Every trigger a :class:`~tpx3lib.trainid.base.TrainIdSource` decides becomes one
``TRIGGER_TRAIN_DTYPE`` record: the trigger's extended hardware counter and board
time (as in ``TDC_DTYPE``), the train ID (0 = unknown), a bit field of flags and
the host time (Unix seconds, NaN when unknown) of the train start.

Flag bits (several may be set):

=============  =====  ======================================================================
name           value  meaning
=============  =====  ======================================================================
GAP            0x01   train IDs were skipped since the previous trigger (triggers missed);
                      the ID itself is right
DUPLICATE      0x02   same train ID as the previous trigger
JUMP           0x04   the observed ID is not the one the trigger times predict
EXTRAPOLATED   0x08   no observation matched: ID = previous ID + periods elapsed
OFF_GRID       0x10   the time since the previous trigger is not a whole number of periods
UNKNOWN        0x20   no train ID could be given (``train_id`` = 0)
LATE           0x40   the trigger came after later triggers were already decided
=============  =====  ======================================================================

``SUSPECT`` (all but GAP) marks a train ID not known to come straight from the
timing system; :func:`run_file_flag` turns flags into EXDF ``INDEX/flag`` (1 good, 0 suspect).
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "TRIGGER_TRAIN_DTYPE", "GAP", "DUPLICATE", "JUMP", "EXTRAPOLATED", "OFF_GRID", "UNKNOWN",
    "LATE", "SUSPECT", "FLAG_NAMES", "describe_flags", "run_file_flag",
]

GAP = 0x01
DUPLICATE = 0x02
JUMP = 0x04
EXTRAPOLATED = 0x08
OFF_GRID = 0x10
UNKNOWN = 0x20
LATE = 0x40
SUSPECT = DUPLICATE | JUMP | EXTRAPOLATED | OFF_GRID | UNKNOWN | LATE

FLAG_NAMES = {GAP: "GAP", DUPLICATE: "DUPLICATE", JUMP: "JUMP", EXTRAPOLATED: "EXTRAPOLATED",
              OFF_GRID: "OFF_GRID", UNKNOWN: "UNKNOWN", LATE: "LATE"}

#: One decided trigger. ``counter``/``time`` as in TDC_DTYPE (time in 25/4096 ns units),
#: ``train_id`` 0 when unknown, ``host_time`` Unix seconds of the train start (NaN unknown).
TRIGGER_TRAIN_DTYPE = np.dtype([
    ("counter", "i8"), ("time", "i8"), ("train_id", "u8"), ("flags", "u2"), ("host_time", "f8"),
])


def describe_flags(flags: int) -> str:
    """``"GAP|EXTRAPOLATED"`` for a flag value, ``"OK"`` for 0."""
    names = [name for bit, name in FLAG_NAMES.items() if int(flags) & bit]
    return "|".join(names) if names else "OK"


def run_file_flag(flags) -> np.ndarray | int:
    """EXDF ``INDEX/flag`` value(s): 1 if no SUSPECT bit is set, else 0 (int32)."""
    f = np.asarray(flags)
    out = np.where((f.astype(np.int64) & SUSPECT) == 0, 1, 0).astype(np.int32)
    return int(out) if out.ndim == 0 else out
