"""Names of the 64-bit word types and of the decoder's counters.

A word's type is its top byte (header nibble bits 63..60, sub-header 59..56).
The decoder histograms every word by its top byte (256 bins), so nothing is
ever uncounted; :func:`word_type_counts` folds that histogram into names.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "HDR_GLOBAL_TIME_LOW", "HDR_GLOBAL_TIME_HIGH", "HDR_END_OF_COMMAND",
    "HDR_TDC1_RISING", "HDR_TDC1_FALLING", "HDR_TDC2_RISING", "HDR_TDC2_FALLING",
    "ANOMALIES", "ANOMALY_INDEX", "word_type_counts",
]

HDR_GLOBAL_TIME_LOW = 0x44
HDR_GLOBAL_TIME_HIGH = 0x45
HDR_END_OF_COMMAND = 0x71
HDR_TDC1_RISING = 0x6F
HDR_TDC1_FALLING = 0x6A
HDR_TDC2_RISING = 0x6E
HDR_TDC2_FALLING = 0x6B

#: Anomalies the decoder counts (index in its anomaly array -> name). Each is
#: something a person should know about; none is dropped silently.
ANOMALIES = (
    "tdc_fine_invalid",          # TDC fine field 0 or >12: time kept at 3.125 ns precision
    "tdc_counter_backwards",     # hardware trigger counter went back (counted, extended backwards)
    "global_time_high_unpaired", # 0x45 without a preceding 0x44: no reference update
    "reference_backwards",       # a heartbeat time earlier than the reference in use by > 1 s
    "stale_reference",           # a hit/TDC over 11.7 s from the reference (near the 13.4 s ambiguity)
    "unreferenced_words",        # words decoded with no time reference at all (no heartbeat, no timer)
    "trailing_bytes",            # bytes fed that did not complete a 64-bit word at flush
)
ANOMALY_INDEX = {name: i for i, name in enumerate(ANOMALIES)}

_NAMED = {
    0x6F: "tdc1_rising", 0x6A: "tdc1_falling", 0x6E: "tdc2_rising", 0x6B: "tdc2_falling",
    0x44: "global_time_low", 0x45: "global_time_high", 0x71: "end_of_command",
}


def word_type_counts(hist: np.ndarray) -> dict[str, int]:
    """Fold a 256-bin histogram of top bytes into named counts.

    (The decoder counts all pixel words in bin 0xB0; any 0xB? bin counts as pixel.)

    ``pixel`` is every 0xB? word (data-driven ToA/ToT), ``pixel_counting`` every
    0xA? word (sequential/iToT modes: counted, not decoded into hits),
    ``packet_and_shutter`` every 0x5? word; everything else is ``unknown``.
    """
    hist = np.asarray(hist, dtype=np.int64)
    out = {
        "pixel": int(hist[0xB0:0xC0].sum()),
        "pixel_counting": int(hist[0xA0:0xB0].sum()),
        "packet_and_shutter": int(hist[0x50:0x60].sum()),
    }
    known = np.zeros(256, bool)
    known[0xA0:0xC0] = True
    known[0x50:0x60] = True
    for hdr, name in _NAMED.items():
        out[name] = int(hist[hdr])
        known[hdr] = True
    out["unknown"] = int(hist[~known].sum())
    out["total"] = int(hist.sum())
    return out
