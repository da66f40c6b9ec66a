"""Process memory tuning for long acquisitions.

Every processed chunk allocates arrays of tens of megabytes (events, centroids, words).
glibc hands allocations above its mmap threshold (32 MB at most, adapting) straight to
the kernel and gives them back when freed, so each chunk pays page faults for fresh
memory again: on a VM that is most of the cost of writing the records. Keeping freed
memory in the heap makes the next chunk reuse pages that are already mapped. The price
is that the process keeps its peak heap size, which is what a data-acquisition process
wants. The tuning itself is :func:`karabo_bridge.malloc.keep_message_memory` (the same
process-wide settings its client makes, here with a threshold above a chunk's arrays).
"""
from __future__ import annotations

__all__ = ["keep_freed_memory"]

#: Blocks up to this size come from the heap (a 1M-word chunk makes ~50 MB of events).
CHUNK_MMAP_THRESHOLD = 1 << 30


def keep_freed_memory(mmap_threshold: int = CHUNK_MMAP_THRESHOLD, trim_threshold: int = 2**31 - 1) -> bool:
    """Ask glibc to serve allocations below ``mmap_threshold`` bytes from the heap and to
    keep up to ``trim_threshold`` bytes of free heap instead of returning it to the kernel.

    Process-wide; thresholds are only ever raised. Returns False, changing nothing, where
    the C library is not glibc (macOS, musl, Windows).
    """
    from karabo_bridge.malloc import keep_message_memory
    return keep_message_memory(mmap_threshold, trim_threshold)
