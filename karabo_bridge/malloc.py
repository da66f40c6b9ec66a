"""Process-wide C heap tuning for receiving large trains (glibc only).

ZeroMQ receives every message into memory its I/O thread allocates with ``malloc``. glibc
serves large blocks with ``mmap`` and returns them to the kernel when freed, so each
fresh block costs a page fault per 4 kB on first write (10 MB: ~2500 faults, 5-10 ms on a
virtual machine). glibc raises its mmap threshold by itself once such a block is freed,
but only after the first few messages (four 10 MB trains in our measurements), and it
still trims the heap's top when more than twice the threshold is free.

:func:`keep_message_memory` fixes both thresholds up front (``mallopt``): blocks up to
``mmap_threshold`` come from the heap, and freed heap memory is kept for reuse instead of
being handed back, so after the first two trains (the one being read and the one
arriving) a client receives into memory that is already faulted in. The cost: the
process keeps the freed memory (about two trains' worth) and glibc's dynamic threshold
adjustment is off for the whole process.

:class:`karabo_bridge.Client` calls it when it is made, unless ``tune_malloc=False`` or the
environment variable ``KARABO_BRIDGE_MALLOC_TUNING=0``; it is a no-op elsewhere than on
glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

__all__ = ["keep_message_memory", "malloc_tuning", "ENV_VAR"]

#: Set to ``0`` to keep :class:`~karabo_bridge.Client` from tuning the C heap.
ENV_VAR = "KARABO_BRIDGE_MALLOC_TUNING"

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's documented largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2; glibc 2.36 takes more)
_MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)

_lock = threading.Lock()
_applied: dict | None = None


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        gnu_get_libc_version = libc.gnu_get_libc_version      # glibc only (not musl)
    except (OSError, AttributeError):
        return None
    gnu_get_libc_version.restype = ctypes.c_char_p
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_message_memory(mmap_threshold: int = _MMAP_THRESHOLD_MAX, trim_threshold: int = 1 << 30) -> bool:
    """Tune glibc's heap so freed message memory is reused rather than returned (see the
    module docstring). Process-wide: a later call can raise the thresholds (a library
    that allocates larger blocks, e.g. a data pipeline in the same process), never lower
    them. A threshold this glibc refuses falls back to glibc's documented maximum.
    Returns True if settings are in force (now or from an earlier call)."""
    global _applied
    with _lock:
        libc = _libc()
        if libc is None:
            _applied = _applied or {}
            return False
        now = _applied or {}
        want_mmap = max(int(mmap_threshold), now.get("mmap_threshold", 0))
        want_trim = min(max(int(trim_threshold), now.get("trim_threshold", 0)), 2**31 - 1)
        if now and (want_mmap, want_trim) == (now["mmap_threshold"], now["trim_threshold"]):
            return True
        if not libc.mallopt(_M_MMAP_THRESHOLD, want_mmap):
            want_mmap = max(_MMAP_THRESHOLD_MAX, now.get("mmap_threshold", 0))
            if not libc.mallopt(_M_MMAP_THRESHOLD, want_mmap):
                return bool(now)
        if not libc.mallopt(_M_TRIM_THRESHOLD, want_trim):
            return bool(now)
        _applied = {"mmap_threshold": want_mmap, "trim_threshold": want_trim}
        return True


def malloc_tuning() -> dict:
    """The settings :func:`keep_message_memory` made (empty if none)."""
    return dict(_applied or {})


def wanted() -> bool:
    """False when the environment asks for no tuning (``KARABO_BRIDGE_MALLOC_TUNING=0``)."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "no", "false", "off")
