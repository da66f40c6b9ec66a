"""Appending to a file with direct I/O (``O_DIRECT``): :class:`DirectAppender`.

Why: on the VMs we run on, buffered writes of a recording cost the writing thread about
0.6 of a core per 500 MB/s in the kernel (page-cache copies and accounting), as much as the
receiver itself, and their speed varies several-fold from run to run (``dd``: 0.35-3.3 GB/s).
Direct I/O moves the data from our buffer to the device without the page cache; its cost
is a copy into an aligned buffer (~16 GB/s) and the device's speed (1.3-2.3 GB/s here).

How: bytes are copied into one of two page-aligned buffers (``block_bytes`` each). A full
buffer is written by a thread with one ``pwrite`` at an aligned file offset while the
other fills (double buffering). :meth:`DirectAppender.sync` makes everything appended
visible in the file: the whole blocks directly, the unaligned rest (less than one page)
with a buffered write; that rest stays at the start of the buffer and is written again,
directly, with the next block (the kernel keeps the page cache coherent with direct
writes). Data that is in the buffers and not yet synced is not in the file.

Errors of the thread's writes are raised by the next :meth:`append` or :meth:`sync`;
:attr:`on_disk` then says how far the file holds what was appended.
"""
from __future__ import annotations

import errno
import mmap
import os
import queue
import threading
from typing import Callable

__all__ = ["DirectAppender", "ALIGN", "direct_io_supported"]

#: Alignment of direct-I/O offsets, lengths and buffers (a page; covers 512 B and 4 KiB sectors).
ALIGN = 4096

#: ``(fd, data, offset) -> bytes written``: os.pwrite, replaceable (the writer passes its own hook).
PWrite = Callable[[int, memoryview, int], int]


def direct_io_supported() -> bool:
    """Whether this platform has ``O_DIRECT`` at all (Linux); a filesystem may still refuse it."""
    return hasattr(os, "O_DIRECT")


class DirectAppender:
    """Appends to the file ``path`` from byte ``offset`` (its end) on with direct I/O.

    ``fd``: an open buffered descriptor of the same file (for the unaligned rest at
    :meth:`sync`; the caller keeps owning it). Raises ``OSError`` when the platform or the
    filesystem has no direct I/O (checked with one write of the block holding ``offset``,
    after which the file is cut back to ``offset``).
    """

    def __init__(self, path, fd: int, offset: int, *, block_bytes: int = 4 << 20, pwrite: PWrite = os.pwrite):
        if not direct_io_supported():
            raise OSError(errno.EINVAL, "O_DIRECT is not available on this platform")
        self.path = os.fspath(path)
        self._fd = fd
        self._pwrite = pwrite
        self.block_bytes = max(ALIGN, -(-int(block_bytes) // ALIGN) * ALIGN)
        self._dfd = os.open(self.path, os.O_WRONLY | os.O_DIRECT | getattr(os, "O_CLOEXEC", 0))
        self._maps = [mmap.mmap(-1, self.block_bytes) for _ in range(2)]     # page-aligned
        self._views = [memoryview(m) for m in self._maps]
        self._active = 0
        self._base = int(offset) - int(offset) % ALIGN     # file offset of the active buffer's first byte
        self._fill = int(offset) - self._base
        self._on_disk = int(offset)
        self._error: OSError | None = None
        self._closed = False
        try:
            if self._fill:                 # the bytes of the first, partial block are rewritten with it
                rfd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                try:
                    head = os.pread(rfd, self._fill, self._base)
                finally:
                    os.close(rfd)
                if len(head) != self._fill:
                    raise OSError(errno.EIO, f"{self.path}: could not read back its first {self._fill} bytes")
                self._views[0][:self._fill] = head
            # probe: some filesystems open with O_DIRECT and refuse the writes
            self._write_direct(self._views[0][:ALIGN], self._base)
            os.ftruncate(self._fd, offset)
        except BaseException:
            self._release()
            raise
        self._free: queue.Queue = queue.Queue()     # buffers not being written (the active one aside)
        self._free.put(1)
        self._todo: queue.Queue = queue.Queue()     # (buffer, bytes, file offset) for the thread
        self._thread = threading.Thread(target=self._run, name="tpx3-direct-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ state
    @property
    def end(self) -> int:
        """File offset after the last byte appended."""
        return self._base + self._fill

    @property
    def on_disk(self) -> int:
        """How far the file holds the bytes appended (written, not necessarily synced to the device)."""
        return self._on_disk

    # ------------------------------------------------------------------ writing
    def append(self, data) -> None:
        """Copy ``data`` (bytes-like) into the buffers; full ones go to the writing thread."""
        self._check()
        view = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
        at, n = 0, len(view)
        size = self.block_bytes
        while at < n:
            k = min(n - at, size - self._fill)
            self._views[self._active][self._fill:self._fill + k] = view[at:at + k]
            self._fill += k
            at += k
            if self._fill == size:
                self._hand_over(size, keep=0)

    def sync(self) -> None:
        """Everything appended into the file (whole blocks directly, the rest buffered); waits
        for the writing thread."""
        self._check()
        whole = self._fill - self._fill % ALIGN
        if whole:
            self._hand_over(whole, keep=self._fill - whole)
        self._todo.join()
        self._check()
        if self._fill:
            rest = self._views[self._active][:self._fill]
            done = 0
            while done < self._fill:
                k = self._pwrite(self._fd, rest[done:], self._base + done)
                if k <= 0:
                    raise OSError(errno.EIO, "the operating system accepted no bytes")
                done += k
            self._on_disk = self._base + self._fill

    def close(self) -> None:
        """Stop the writing thread and free the buffers (appended data not synced is dropped)."""
        if self._closed:
            return
        self._closed = True
        self._todo.put(None)
        self._thread.join()
        self._release()

    # ------------------------------------------------------------------ internals
    def _check(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: the direct-I/O appender is closed")
        if self._error is not None:
            raise self._error

    def _hand_over(self, nbytes: int, keep: int) -> None:
        """Give the first ``nbytes`` (aligned) of the active buffer to the thread; continue in the
        other buffer with the ``keep`` bytes after them."""
        nxt = self._free.get()                      # waits while the thread writes it
        old = self._active
        if keep:
            self._views[nxt][:keep] = self._views[old][nbytes:nbytes + keep]
        self._todo.put((old, nbytes, self._base))
        self._active, self._base, self._fill = nxt, self._base + nbytes, keep

    def _run(self) -> None:
        while True:
            item = self._todo.get()
            try:
                if item is None:
                    return
                index, nbytes, offset = item
                try:
                    if self._error is None:
                        self._write_direct(self._views[index][:nbytes], offset)
                        self._on_disk = offset + nbytes        # blocks are written in order
                except OSError as exc:
                    self._error = exc
                except Exception as exc:  # noqa: BLE001 - reported to the writer as an I/O error
                    self._error = OSError(errno.EIO, f"direct write failed: {exc!r}")
                finally:
                    self._free.put(index)                      # the filling side never waits forever
            finally:
                self._todo.task_done()

    def _write_direct(self, view: memoryview, offset: int) -> None:
        done, n = 0, len(view)
        while done < n:
            if done % ALIGN:                 # a short, unaligned direct write: finish it buffered
                k = self._pwrite(self._fd, view[done:], offset + done)
            else:
                k = self._pwrite(self._dfd, view[done:], offset + done)
            if k <= 0:
                raise OSError(errno.EIO, "the operating system accepted no bytes")
            done += k

    def _release(self) -> None:
        views, self._views = self._views, []
        maps, self._maps = self._maps, []
        for v in views:
            try:
                v.release()
            except BufferError:        # a slice still referenced (e.g. by a traceback): freed with it
                pass
        for m in maps:
            try:
                m.close()
            except BufferError:
                pass
        try:
            os.close(self._dfd)
        except OSError:
            pass
