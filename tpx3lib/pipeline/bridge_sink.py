"""Publishing trains live over the Karabo Bridge: :class:`KaraboBridgeSink`.

The sink assembles the processed chunks of every chip into trains
(:class:`~tpx3lib.pipeline.trains.TrainAssembler`) and publishes one message per train,
in trigger order, in the layout of :func:`~tpx3lib.pipeline.trains.train_message`.

Threads: the processing threads only add chunks to the assembler, which splits each
chunk's records once into per-field columns (pooled memory, one numba pass); a complete
train (slices of those columns) is put on a bounded
:class:`~tpx3lib.pipeline.trains.TrainQueue` and the sink's own publisher thread wraps its
columns into a message (no copy) and sends it with a :class:`karabo_bridge.server.Sender`
(the only user of the socket). So a slow or absent consumer never blocks the
processing, unless asked to:

- ``when_full="drop"`` (default): with REP/PUSH and no consumer taking trains, the
  queue fills (``queue_size`` trains) and each new train pushes out the oldest
  waiting one (``trains_dropped``); consumers then get recent trains, in order;
- ``when_full="block"``: the processing threads wait for room (``block_timeout``
  seconds at most, None = no limit; then the new train is dropped and counted);
- PUB never waits: ZeroMQ drops trains for subscribers that do not keep up (the
  reference behaviour); those drops are the subscriber's to count (gaps in train IDs).

The socket is bound when the sink is made (so ``endpoint`` is known, e.g. with
``tcp://127.0.0.1:0``) and stays open across acquisitions (``start``/``stop``) until
:meth:`close`. ``stop()`` hands out the last trains and waits up to ``stop_timeout``
seconds for them to be sent; what is still queued then is discarded and counted.
"""
from __future__ import annotations

import threading
import time

import zmq

from ..errors import Tpx3Error
from .sinks import Sink
from .trains import DEFAULT_SOURCE, BufferPool, Train, TrainAssembler, TrainQueue, train_message, warm_up_kernels

__all__ = ["KaraboBridgeSink", "BridgeSinkError"]


class BridgeSinkError(Tpx3Error, RuntimeError):
    """The publisher thread failed (the cause is chained), or the sink was misused."""


class KaraboBridgeSink(Sink):
    """A :class:`~tpx3lib.pipeline.sinks.Sink` publishing one Karabo Bridge message per train.

    Parameters
    ----------
    endpoint : ZeroMQ endpoint to bind (or a port number: all interfaces).
    sock : ``"REP"`` (default, as the protocol's; consumers ask with ``Client()``),
        ``"PUB"`` or ``"PUSH"``.
    source : the source name of the messages.
    protocol_version : ``"2.2"`` or ``"1.0"``.
    queue_size, when_full, block_timeout : the hand-off queue (see the module docstring).
    with_counters : add the running counters (``counters.<name>``) to every message.
    stop_timeout : seconds ``stop()`` waits for queued trains to be sent.
    linger : seconds :meth:`close` lets ZeroMQ finish sending what it holds.
    assembler_options : keyword arguments for :meth:`TrainAssembler.from_info`
        (e.g. ``wait_for_train_ids=False``).
    hwm : ZeroMQ high-water mark (default 1, as the reference).
    prefault_bytes : column memory made ready (two buffers of this size, every page
        touched) at ``start()``, so that the first trains pay no page faults on the latency
        path (0: none). Chunks bigger than this get a buffer on first use (faulted then);
        afterwards the memory is reused, and an idle publisher prepares the next buffer.

    Counters (:meth:`counters`): the assembler's, plus ``trains_published``,
    ``trains_empty`` (published without hits), ``trains_dropped`` (queue full),
    ``trains_discarded_at_stop``, ``trains_failed`` (could not be serialized) and
    ``latency`` (seconds from the train's completion to its hand-over to ZeroMQ:
    count, median, p99, max).
    """

    def __init__(self, endpoint="tcp://127.0.0.1:4545", sock: str = "REP", source: str = DEFAULT_SOURCE,
                 protocol_version: str = "2.2", *, queue_size: int = 10, when_full: str = "drop",
                 block_timeout: float | None = None, with_counters: bool = True, stop_timeout: float = 5.0,
                 linger: float = 1.0, assembler_options: dict | None = None, hwm: int = 1, context=None,
                 prefault_bytes: int = 16 << 20):
        from karabo_bridge.server import Sender
        from karabo_bridge.stats import LatencyStats

        TrainQueue(queue_size, when_full, block_timeout)       # check the options now
        self.source = source
        self.sock = sock
        self.queue_size, self.when_full, self.block_timeout = int(queue_size), when_full, block_timeout
        self.with_counters = bool(with_counters)
        self.stop_timeout = float(stop_timeout)
        self.linger = float(linger)
        self.assembler_options = dict(assembler_options or {})
        self._sender = Sender(endpoint, sock=sock, protocol_version=protocol_version, hwm=hwm, context=context)
        self.prefault_bytes = int(prefault_bytes)
        # column (= message) memory, reused once sent; a buffer per chunk being split, per
        # train queued or being sent
        self._buffers = BufferPool(max(8, queue_size + 4), min_bytes=1 << 20)
        self.latency = LatencyStats()
        self.assembler: TrainAssembler | None = None
        self._queue: TrainQueue | None = None
        self._thread: threading.Thread | None = None
        self._abort = threading.Event()
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._closed = False
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._counts = dict(trains_published=0, trains_empty=0, trains_dropped=0, trains_discarded_at_stop=0,
                            trains_failed=0)

    # ------------------------------------------------------------------ info
    @property
    def endpoint(self) -> str:
        """The bound endpoint, connectable."""
        return self._sender.endpoint

    @property
    def buffers(self) -> BufferPool:
        """The pool of column (message) memory (``allocated``/``reused`` counts)."""
        return self._buffers

    @property
    def server_stats(self):
        """The ZeroMQ side's counters (:class:`karabo_bridge.stats.ServerStats`)."""
        return self._sender.stats

    def counters(self) -> dict:
        """Every counter (see the class docstring) in one dict."""
        out = self.assembler.stats() if self.assembler is not None else {}
        out.update(self._sink_counts())
        out["latency"] = self.latency.summary()
        return out

    def _sink_counts(self) -> dict:
        c = dict(self._counts)
        if self._queue is not None:
            c["trains_dropped"] += self._queue.dropped
        return c

    # ------------------------------------------------------------------ Sink interface
    def start(self, info: dict) -> None:
        if self._closed:
            raise BridgeSinkError("the Karabo Bridge sink is closed")
        if self._thread is not None:
            raise BridgeSinkError("the Karabo Bridge sink is already started (stop() it first)")
        self._reset_counters()
        self.error = None
        self._abort.clear()
        self._queue = TrainQueue(self.queue_size, self.when_full, self.block_timeout)
        options = dict(output="columns", alloc=self._buffers)
        options.update(self.assembler_options)
        self.assembler = TrainAssembler.from_info(info, self._on_train, **options)
        warm_up_kernels()                    # compiled or loaded now, not on the first train
        if self.prefault_bytes > 0:
            try:
                self._buffers.reserve(self.prefault_bytes, count=2)
            except MemoryError:
                pass                         # allocated on first use then
        self._thread = threading.Thread(target=self._publish_loop, name="karabo-bridge-sink", daemon=True)
        self._thread.start()

    def on_chunk(self, chunk) -> None:
        if self.assembler is None:
            raise BridgeSinkError("on_chunk() before start()")
        self.assembler.add(chunk)

    def stop(self) -> None:
        """Hand out the last trains, send them (up to ``stop_timeout`` s), end the thread.
        Raises :class:`BridgeSinkError` if the publisher thread failed."""
        if self._thread is None:
            return
        # the last trains may wait for room at most stop_timeout (a REP/PUSH consumer may be gone)
        bt = self._queue.block_timeout
        self._queue.block_timeout = self.stop_timeout if bt is None else min(bt, self.stop_timeout)
        self.assembler.flush()
        self._queue.close()
        self._thread.join(self.stop_timeout)
        if self._thread.is_alive():
            self._abort.set()              # a REP/PUSH consumer is not taking trains
            self._thread.join()
        self._counts["trains_discarded_at_stop"] += self._queue.clear()
        self._thread = None
        if self.error is not None:
            raise BridgeSinkError(f"publishing trains failed: {self.error!r}") from self.error

    def close(self) -> None:
        """Stop (if running) and close the socket, giving ZeroMQ ``linger`` seconds to
        deliver what it holds."""
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            try:
                self._sender.server_socket.close(linger=int(self.linger * 1000))
            except zmq.ZMQError:
                pass
            self._sender.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ threads
    def _on_train(self, train: Train) -> None:
        """Called by the assembler (processing thread, assembler lock held): queue only."""
        self._queue.put(train)

    def _message_counters(self) -> dict:
        c = self.assembler.stats()       # not locked: a processing thread may wait for queue room
        c.update(self._sink_counts())
        return c

    def _publish_loop(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                train, t_done = item
                if self._abort.is_set():          # stop() gave up on the consumer
                    self._counts["trains_discarded_at_stop"] += 1
                    continue
                try:
                    data, meta = train_message(train, self.source,
                                               self._message_counters() if self.with_counters else None,
                                               alloc=self._buffers)
                    sent = self._send(data, meta)
                except (TypeError, ValueError):      # not serializable (karabo_bridge.SerializationError)
                    self._counts["trains_failed"] += 1
                    continue
                if not sent:
                    self._counts["trains_discarded_at_stop"] += 1
                    continue
                self.latency.add(time.perf_counter() - t_done)
                self._counts["trains_published"] += 1
                self._counts["trains_empty"] += train.n_hits == 0
                del data, meta, train, item       # the pool sees the buffer free once ZeroMQ is done
                if not len(self._queue):
                    # idle until the next train: have column memory for it ready now (a
                    # fresh buffer's page faults cost 0.2-3 ms per MB, on the latency path)
                    try:
                        self._buffers.reserve(self._buffers.recent_max)
                    except MemoryError:
                        pass                         # allocated on first use then
        except BaseException as exc:  # kept for stop() to raise; the queue refuses further trains
            self.error = exc
            self._queue.close()
            self._counts["trains_failed"] += self._queue.clear()

    def _send(self, data, meta) -> bool:
        """Send one train; False if stop() gave up waiting for a consumer."""
        while True:
            try:
                self._sender.send(data, meta, timeout=0.1)
                return True
            except TimeoutError:
                if self._abort.is_set():
                    return False
