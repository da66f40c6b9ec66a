"""Process memory tuning for long acquisitions.

Every processed chunk allocates arrays of megabytes (events, centroids, words). glibc
hands allocations above its mmap threshold (at most 32 MB, adapting) straight to the
kernel and gives them back when freed, so each chunk pays page faults for fresh memory
again: on a VM that is most of the cost of copying the records. Keeping freed memory in
the heap makes the next chunk reuse pages that are already mapped. The price is that
the process keeps its peak heap size, which is what a data-acquisition process wants.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading

__all__ = ["keep_freed_memory"]

log = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_lock = threading.Lock()
_done: bool | None = None


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = 2**31 - 1) -> bool:
    """Ask glibc to serve allocations below ``mmap_threshold`` bytes from the heap and to
    keep up to ``trim_threshold`` bytes of free heap instead of returning it to the kernel.

    Process-wide, done once (later calls return the first result). Returns False, changing
    nothing, where the C library is not glibc (macOS, musl, Windows).
    """
    global _done
    with _lock:
        if _done is not None:
            return _done
        _done = False
        if not sys.platform.startswith("linux"):
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        ok = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                    int(trim_threshold)))
        if ok:
            log.debug("malloc keeps freed memory (mmap threshold %d, trim threshold %d bytes)",
                      mmap_threshold, trim_threshold)
        _done = ok
        return ok
