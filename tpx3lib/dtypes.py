"""Record layouts shared by every stage (decoder, events, clustering, files, streams).

Times are integers in units of 25/4096 ns (the FToA-refined ToA resolution,
``TOA_UNIT_S`` seconds) unless a field name says otherwise; use
:func:`toa_seconds` to convert. Times are 48-bit-extended, i.e. absolute
counts of the board's timer since its last reset.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "TOA_UNIT_NS", "TOA_UNIT_S", "COARSE_UNIT_S", "UNITS_PER_COARSE",
    "PIXEL_DTYPE", "TDC_DTYPE", "HEARTBEAT_DTYPE", "EVENT_DTYPE", "CENTROID_DTYPE",
    "TDC1_RISING", "TDC1_FALLING", "TDC2_RISING", "TDC2_FALLING",
    "toa_seconds",
]

#: One unit of the integer time fields: 25 ns / 4096 (about 6.1 ps).
TOA_UNIT_NS = 25.0 / 4096
TOA_UNIT_S = 25e-9 / 4096
#: One tick of the 40 MHz clock (coarse ToA, SPIDR timer).
COARSE_UNIT_S = 25e-9
UNITS_PER_COARSE = 4096

#: A decoded pixel hit. x, y are after orientation and offset (so may exceed 255
#: in multi-chip layouts); tot in ns; ftoa is the raw 4-bit fine ToA.
PIXEL_DTYPE = np.dtype([
    ("x", "u2"), ("y", "u2"), ("tot", "u2"), ("chip", "u1"), ("ftoa", "u1"), ("toa", "i8"),
])

# TDC edge kinds (the word's header byte), kept as the ``kind`` field.
TDC1_RISING, TDC1_FALLING, TDC2_RISING, TDC2_FALLING = 0x6F, 0x6A, 0x6E, 0x6B

#: A decoded TDC edge. ``tdc`` is 1 or 2, ``rising`` 1/0, ``counter`` the hardware
#: trigger counter extended past its 12-bit wrap, ``time`` in 25/4096 ns units.
TDC_DTYPE = np.dtype([
    ("kind", "u1"), ("tdc", "u1"), ("rising", "u1"), ("chip", "u1"),
    ("counter", "i8"), ("time", "i8"),
])

#: A global-time heartbeat (a completed 0x44/0x45 pair): the 48-bit timer in 25 ns ticks.
HEARTBEAT_DTYPE = np.dtype([("chip", "u1"), ("timer", "i8")])

#: A pixel assigned to its trigger. ``event`` is the extended hardware trigger
#: counter of that trigger; ``train_id`` 0 when no train-ID source is set.
EVENT_DTYPE = np.dtype([
    ("event", "i8"), ("train_id", "u8"), ("x", "u2"), ("y", "u2"), ("tot", "u2"),
    ("chip", "u1"), ("toa", "i8"), ("tof", "i8"),
])

#: One cluster reduced to a centroid. Position and mean times are ToT-weighted;
#: ``*_first`` are of the earliest hit; times in 25/4096 ns units, tot in ns.
CENTROID_DTYPE = np.dtype([
    ("event", "i8"), ("train_id", "u8"), ("chip", "u1"),
    ("x", "f8"), ("y", "f8"),
    ("toa", "f8"), ("toa_first", "i8"), ("tof", "f8"), ("tof_first", "i8"),
    ("tot_sum", "u4"), ("tot_mean", "f4"), ("tot_max", "u2"), ("size", "u4"),
])


def toa_seconds(t):
    """Convert time fields in 25/4096 ns units to seconds (float64).

    The order of operations (x*25, then /4096, then *1e-9) is deliberate: it is
    the rounding pymepix uses, so seconds agree with its output to the last bit
    (float64 spacing near 5e4 s is ~7e-12 s, so any other order differs by an ulp).
    """
    t = np.asarray(t)
    if t.dtype.kind in "iu":
        return (t.astype(np.int64) * 25) / 4096 * 1e-9
    return t.astype(np.float64) * 25 / 4096 * 1e-9
