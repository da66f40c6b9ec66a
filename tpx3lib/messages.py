"""The messages of the data path: what the high-level API's poll ring and callbacks deliver.

Kept apart from :mod:`tpx3lib.api` (which needs the SPIDR control code) so the
pipeline's sinks and the API share one definition.
"""
from __future__ import annotations

import collections
import enum
import queue
import threading
import time
from typing import Any, NamedTuple

__all__ = ["MessageType", "DataMessage", "PollBufferEmpty", "MessageRing", "DEFAULT_POLL_SIZE"]

#: Messages the poll ring holds before it drops the oldest.
DEFAULT_POLL_SIZE = 10_000


class MessageType(enum.IntEnum):
    """What a delivered message holds (the data layouts are in tpx3lib.dtypes)."""

    RAW = 0        #: raw UDP payload bytes / 64-bit words
    PIXELS = 1     #: decoded pixel hits (PIXEL_DTYPE)
    TRIGGERS = 2   #: TDC edges (TDC_DTYPE)
    EVENTS = 3     #: pixels assigned to triggers (EVENT_DTYPE)
    CENTROIDS = 4  #: cluster centroids (CENTROID_DTYPE)


class DataMessage(NamedTuple):
    """One delivered message; unpacks as ``kind, data = message``."""

    type: MessageType
    data: Any


class PollBufferEmpty(queue.Empty):
    """poll() found no message (within its timeout)."""


class MessageRing:
    """A bounded, thread-safe FIFO that drops the oldest message when full."""

    def __init__(self, maxlen: int = DEFAULT_POLL_SIZE):
        if int(maxlen) < 1:
            raise ValueError("the poll ring needs room for at least one message")
        self.maxlen = int(maxlen)
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self.overflows = 0
        self.pushed = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def push(self, item) -> bool:
        """Append; returns False when the oldest item had to be dropped to make room."""
        with self._cond:
            dropped = len(self._items) >= self.maxlen
            if dropped:
                self._items.popleft()
                self.overflows += 1
            self._items.append(item)
            self.pushed += 1
            self._cond.notify()
            return not dropped

    def pop(self, block: bool = False, timeout: float | None = None):
        """Oldest item; raises PollBufferEmpty when there is none (after ``timeout`` if blocking)."""
        with self._cond:
            if block:
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._items:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._cond.wait(remaining)
            if not self._items:
                raise PollBufferEmpty("no data message in the poll buffer")
            return self._items.popleft()

    def clear(self) -> int:
        """Drop everything; returns how many items were dropped (not counted as overflows)."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            return n
