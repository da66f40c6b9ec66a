"""``RawRecorder``: a ring reader that writes the captured datagrams to a native raw file.

It runs as a thread of the process that creates it (attaching to the ring by
name, so that process can be any process), and can be started and stopped
while a capture runs:

    rec = RawRecorder(cap.ring_name(0), "run42.tpx3raw", chip=0, capture=cap)
    rec.start()            # records from now on (start="newest"), or "oldest" in the ring
    ...
    stats = rec.stop()     # drains what was captured until now, writes the closing record

Each :meth:`RingReader.read` batch becomes one file chunk whose
``datagram_sizes`` keep the datagram boundaries; the chunk's receive time is
its first datagram's. The native format stores whole 64-bit words only, so a
malformed datagram (length not a multiple of 8) is written without its
trailing partial word and an empty datagram is not written; both are counted
(``malformed_tail_bytes``, ``empty_skipped``) and the counts go into the file's
closing record together with the capture counters and this reader's overruns.

On a write error (disk full, I/O error) the recorder stops, detaches from the
ring at once - a failed recorder never holds back a "block" capture - and keeps
the :class:`~tpx3lib.files.exceptions.RawWriteError` in :attr:`error`; the file
stays readable up to its last complete chunk. Errors opening the file
(permission, missing directory) are raised by :meth:`start`.
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from .errors import CaptureError
from .ring import RingReader

__all__ = ["RawRecorder"]

log = logging.getLogger("tpx3lib.capture")


class RawRecorder:
    """Write one chip's ring to a native raw file (see the module docstring).

    ``ring_name`` a capture ring (``Capture.ring_name(chip)``); ``path`` the file
    (replaced if it exists); ``chip`` the chip index written into chunks
    (default: the ring's); ``header`` the file header dict (default: one chip);
    ``capture`` a :class:`Capture` whose counters go into the closing record;
    ``start`` ``"newest"`` or ``"oldest"``; ``max_chunk_bytes`` payload per chunk;
    ``buffer_size`` the file writer's buffer (what a write error can lose); ``direct``
    writes with direct I/O where the filesystem has it (no page cache: on our VMs this
    halves the recorder's CPU cost; see :class:`~tpx3lib.files.native.RawWriter`).
    """

    def __init__(self, ring_name: str, path, *, chip: int | None = None, header: dict | None = None,
                 capture=None, start: str = "newest", max_chunk_bytes: int = 4 << 20, fsync: bool = False,
                 buffer_size: int = 4 << 20, direct: bool = True):
        self.ring_name = ring_name
        self.path = str(path)
        self.chip = chip
        self.header = header
        self.capture = capture
        self.start_at = start
        self.max_chunk_bytes = int(max_chunk_bytes)
        self.fsync = fsync
        self.buffer_size = int(buffer_size)
        self.direct = bool(direct)
        #: The exception that stopped the recorder (e.g. a RawWriteError), or None.
        self.error: BaseException | None = None
        self._stats = {"records": 0, "bytes": 0, "chunks": 0, "malformed_tail_bytes": 0,
                       "empty_skipped": 0, "overruns": 0, "seq_gaps": 0}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._writer = None
        self._reader: RingReader | None = None

    # -- control -------------------------------------------------------------------
    def start(self) -> "RawRecorder":
        """Open the file and start recording (raises RawWriteError if the file cannot be created)."""
        if self._thread is not None:
            raise CaptureError("recorder already started")
        from ..files import open_raw
        from ..files.header import make_header
        self._reader = RingReader(self.ring_name, start=self.start_at)
        if self.chip is None:
            self.chip = self._reader.chip
        header = self.header or make_header(chips=[{"index": int(self.chip)}], start_time_ns=time.time_ns(),
                                            capture={"ring": self.ring_name})
        try:
            self._writer = open_raw(self.path, "wb", header=header, fsync=self.fsync,
                                    buffer_size=self.buffer_size, direct=self.direct)
        except BaseException:
            self._reader.close()
            self._reader = None
            raise
        self._thread = threading.Thread(target=self._run, name=f"tpx3-recorder-chip{self.chip}", daemon=True)
        self._thread.start()
        return self

    @property
    def direct_io(self) -> bool:
        """Whether the file is written with direct I/O (asked for and granted by the filesystem)."""
        w = self._writer
        return bool(w is not None and w.direct_io)

    def stop(self, timeout: float = 10.0) -> dict:
        """Write what was captured until now, close the file; return :attr:`stats`.

        Does not raise on a recording error: check :attr:`error`.
        """
        if self._thread is None:
            return self.stats
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("recorder of %s did not finish in %.1f s", self.path, timeout)
        return self.stats

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stats(self) -> dict:
        """records, bytes, chunks written; malformed_tail_bytes, empty_skipped; overruns, seq_gaps."""
        return dict(self._stats)

    def __enter__(self) -> "RawRecorder":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        reader, writer = self._reader, self._writer
        stop_pos = None
        try:
            while True:
                if self._stop.is_set() and stop_pos is None:
                    stop_pos = reader.write_pos    # what was captured when asked to stop: drain up to it
                batch = reader.read(max_bytes=self.max_chunk_bytes, timeout=0.05)
                if len(batch):
                    self._write(batch)
                    reader.release(batch)
                if reader.eof:
                    break
                if stop_pos is not None and batch.end_pos >= stop_pos:
                    break
            self._close_file(status="complete")
        except BaseException as exc:   # keep it for the caller; never take the process down
            self.error = exc
            log.error("recorder of %s stopped: %s", self.path, exc)
            self._stats["overruns"] = reader.overruns
            reader.close()               # detach first: a dead recorder must not block the capture
            try:
                writer.close(status="failed", error=str(exc))
            except Exception:
                pass                     # a failed RawWriter cannot write its closing record
        finally:
            if not reader.closed:
                reader.close()

    def _write(self, batch) -> None:
        lengths = batch.lengths
        whole = lengths & ~7
        st = self._stats
        if (whole != lengths).any() or not whole.all():
            st["malformed_tail_bytes"] += int((lengths - whole).sum())
            st["empty_skipped"] += int(np.count_nonzero(whole == 0))
        keep = np.flatnonzero(whole)
        if keep.size:
            parts = [batch.payload(i)[: int(whole[i])] for i in keep]
            payload = parts[0] if len(parts) == 1 else np.concatenate(parts)
            sizes = whole[keep]
            self._writer.write_chunk(self.chip, payload, recv_time_ns=int(batch.recv_time_ns[keep[0]]),
                                     datagram_sizes=sizes if sizes.size > 1 else None)
            st["chunks"] += 1
            st["bytes"] += int(sizes.sum())
        st["records"] += len(batch)

    def _close_file(self, status: str) -> None:
        reader = self._reader
        self._stats["overruns"] = reader.overruns
        self._stats["seq_gaps"] = reader.seq_gaps
        capture_counters = reader.counters()
        if self.capture is not None:
            try:
                capture_counters = self.capture.counters.get(self.chip, capture_counters)
            except Exception:
                pass
        capture_counters = {k: v for k, v in capture_counters.items() if k != "readers"}
        self._writer.close(counters=capture_counters, recorder=self.stats, status=status)
