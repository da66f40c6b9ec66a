"""Karabo Bridge servers: :class:`Sender` (synchronous) and :class:`ServerInThread`.

Socket types: ``"REP"`` (clients request each train; default), ``"PUB"``
(broadcast; slow subscribers lose trains), ``"PUSH"`` (queued, each train to
one puller).  HWM defaults to 1 and LINGER is 0, as in the reference.

The REP server is implemented with a ZeroMQ ROUTER socket, which is
wire-compatible with REQ clients and lets the server keep several requests
waiting at once.  Beyond plain ``b"next"`` it understands
``b"next <divisor> <remainder>"``: serve only trains whose train ID (the
``timestamp.tid`` of the train's metadata, else the order in which trains were
fed) satisfies ``train_id % divisor == remainder``.  Several consumers can so
share one stream, each taking every n-th train.  A train that no connected
consumer asks for (only strided consumers known, none matching) is dropped
and counted once the queue is full or after ``stride_grace`` seconds.  Any other request is answered with the one-frame error string
``b"Error: bad request ..."``, as the reference does, and counted.
"""
from __future__ import annotations

import errno
import itertools
import queue
import threading
import time
from collections import deque
from socket import gethostname

import zmq

from .metadata import train_id_of
from .serializer import PROTOCOL_VERSIONS, message_nbytes, serialize
from .stats import ServerStats

__all__ = ["Sender", "ServerInThread", "start_gen", "parse_request", "bind_endpoint"]

_SOCKET_TYPES = {"REP": zmq.ROUTER, "PUB": zmq.PUB, "PUSH": zmq.PUSH}
_instance_ids = itertools.count()
_REPLY_TIMEOUT_MS = 2000


def bind_endpoint(endpoint) -> str:
    """A ZeroMQ endpoint from a port number (``tcp://*:port``) or an endpoint string."""
    if isinstance(endpoint, int) or (isinstance(endpoint, str) and endpoint.isdigit()):
        return f"tcp://*:{int(endpoint)}"
    if not isinstance(endpoint, str) or "://" not in endpoint:
        raise ValueError(f"endpoint must be a port number or a ZeroMQ endpoint "
                         f"like 'tcp://127.0.0.1:4545', got {endpoint!r}")
    return endpoint


def parse_request(request: bytes) -> tuple[int, int]:
    """``b"next"`` -> ``(1, 0)``; ``b"next <divisor> <remainder>"`` -> ``(divisor, remainder)``.

    Raises ``ValueError`` for anything else (including ``divisor < 1`` or a
    remainder outside ``0 .. divisor-1``).
    """
    if request == b"next":
        return 1, 0
    parts = request.split()
    if len(parts) == 3 and parts[0] == b"next":
        try:
            divisor, remainder = int(parts[1]), int(parts[2])
        except ValueError:
            pass
        else:
            if divisor >= 1 and 0 <= remainder < divisor:
                return divisor, remainder
    raise ValueError(f"bad request {request[:100]!r}")


class _Train:
    __slots__ = ("frames", "key", "nbytes", "t_fed")

    def __init__(self, frames, key, t_fed):
        self.frames = frames
        self.key = key
        self.nbytes = message_nbytes(frames)
        self.t_fed = t_fed


class Sender:
    """A Karabo Bridge server socket sending one train per :meth:`send` call.

    Parameters
    ----------
    endpoint : int or str
        A port number (binds ``tcp://*:port``) or a ZeroMQ endpoint
        (``tcp://127.0.0.1:4545``, ``tcp://127.0.0.1:0`` for any free port,
        ``ipc:///tmp/bridge``).
    sock : ``"REP"`` | ``"PUB"`` | ``"PUSH"``
    protocol_version : ``"2.2"`` | ``"1.0"``
    dummy_timestamps : bool
        Add timestamps (now) to sources whose metadata lacks them.
    hwm : int
        ZeroMQ high-water mark (send and receive), default 1 as the reference.
    context : zmq.Context, optional
        Shared context (not terminated by :meth:`close`); default: a new one.
    consumer_timeout : float
        Seconds after its last request that a REP consumer still counts as
        connected (see module docs).
    stride_grace : float
        Seconds a train that no connected strided consumer asks for may wait
        (for a consumer not yet heard of) before it is dropped; it is dropped
        at once when the queue is full (a :class:`Sender` holds one train).
    """

    _capacity = 1  # trains a synchronous Sender holds: the one being sent

    def __init__(self, endpoint, sock="REP", protocol_version="2.2", dummy_timestamps=False,
                 *, hwm=1, context=None, consumer_timeout=30.0, stride_grace=1.0):
        if sock not in _SOCKET_TYPES:
            raise ValueError(f"Unsupported socket type: {sock!r} (use REP, PUB or PUSH)")
        if protocol_version not in PROTOCOL_VERSIONS:
            raise ValueError(f"Unknown protocol version {protocol_version!r}")
        self.sock_type = sock
        self.protocol_version = protocol_version
        self.dummy_timestamps = bool(dummy_timestamps)
        self.consumer_timeout = float(consumer_timeout)
        self.stride_grace = float(stride_grace)
        self.stats = ServerStats()
        self._own_context = context is None
        self.zmq_context = context if context is not None else zmq.Context()
        self.server_socket = self.zmq_context.socket(_SOCKET_TYPES[sock])
        try:
            self.server_socket.setsockopt(zmq.LINGER, 0)
            self.server_socket.set_hwm(hwm)
            if sock == "REP":
                # A vanished requester raises EHOSTUNREACH instead of silently eating
                # its reply. Replies are sent blocking with a timeout: with HWM 1 a
                # non-blocking send can see a pipe as full until ZeroMQ has processed
                # the reader's acknowledgement.
                self.server_socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
                self.server_socket.setsockopt(zmq.SNDTIMEO, _REPLY_TIMEOUT_MS)
            self.server_socket.bind(bind_endpoint(endpoint))
        except Exception:
            self.server_socket.close(linger=0)
            if self._own_context:
                self.zmq_context.term()
            raise
        self._cv = threading.Condition()
        self._pending: deque[_Train] = deque()
        self._waiting: deque[tuple[bytes, int, int]] = deque()
        self._consumers: dict[bytes, tuple[int, int, float]] = {}
        self._seq = 0
        self._closed = False

    # ------------------------------------------------------------------ public
    @property
    def endpoint(self) -> str:
        """The bound endpoint, connectable (``0.0.0.0`` replaced by the host name)."""
        ep = self.server_socket.getsockopt_string(zmq.LAST_ENDPOINT)
        return ep.replace("0.0.0.0", gethostname())

    def send(self, data, metadata=None, timeout=None):
        """Send one train; blocks until it is handed to ZeroMQ.

        REP: until a (matching) request arrives; PUSH: until a puller can take
        it; PUB: never blocks.  ``timeout`` (seconds, extension) raises
        ``TimeoutError`` if the train could not be sent in time.  A REP train
        that only strided consumers are connected for, and none of them wants,
        is dropped (``stats.dropped_unwanted``).
        """
        train = self._make_train(data, metadata)
        with self._cv:
            self._pending.append(train)
            self.stats.fed += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = zmq.Poller()
        while True:
            self._dispatch()
            with self._cv:
                if train not in self._pending:
                    return None
            wait_ms = None
            if deadline is not None:
                wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
                if wait_ms == 0:
                    with self._cv:
                        self._pending.remove(train)
                        self.stats.fed -= 1  # not accepted after all
                    raise TimeoutError(f"train not sent within {timeout} s on {self.endpoint}")
            if self.sock_type == "REP":
                poller.register(self.server_socket, zmq.POLLIN)
                wait_ms = self._timer_ms(wait_ms)
            else:
                poller.register(self.server_socket, zmq.POLLOUT)
            if poller.poll(wait_ms) and self.sock_type == "REP":
                self._drain_requests()

    def close(self) -> None:
        """Close the socket (and the context if this object made it)."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        self.server_socket.close(linger=0)
        if self._own_context:
            self.zmq_context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ internals
    def _make_train(self, data, metadata) -> _Train:
        frames = serialize(data, metadata, protocol_version=self.protocol_version,
                           dummy_timestamps=self.dummy_timestamps)
        meta = metadata if metadata is not None else {
            s: p.get("metadata", {}) for s, p in data.items()}
        tid = train_id_of(meta)
        with self._cv:
            seq = self._seq
            self._seq += 1
        return _Train(frames, tid if tid is not None else seq, time.perf_counter())

    def _record_sent(self, train: _Train) -> None:
        self.stats.sent += 1
        self.stats.bytes_sent += train.nbytes
        self.stats.latency.add(time.perf_counter() - train.t_fed)

    def _drain_requests(self) -> None:
        """Read every request waiting on the ROUTER socket (REP mode)."""
        sock = self.server_socket
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            ident = parts[0]
            if len(parts) != 3 or parts[1] != b"":
                self.stats.bad_requests += 1  # not a REQ envelope: cannot answer it
                continue
            self.stats.requests += 1
            try:
                divisor, remainder = parse_request(parts[2])
            except ValueError:
                self.stats.bad_requests += 1
                try:
                    sock.send_multipart([ident, b"", b"Error: bad request " + parts[2][:200]])
                except zmq.ZMQError as exc:
                    if exc.errno not in (errno.EHOSTUNREACH, zmq.EAGAIN):
                        raise
                continue
            self._consumers[ident] = (divisor, remainder, time.perf_counter())
            self._waiting.append((ident, divisor, remainder))

    def _live_strides(self) -> list[tuple[int, int]] | None:
        """Strides of live consumers, or None when any consumer takes every train
        or none is known (then nothing may be dropped)."""
        now = time.perf_counter()
        waiting = {ident for ident, _, _ in self._waiting}
        for ident, (_, _, seen) in list(self._consumers.items()):
            if ident not in waiting and now - seen > self.consumer_timeout:
                del self._consumers[ident]
        strides = [(d, r) for d, r, _ in self._consumers.values()]
        if not strides or any(d == 1 for d, _ in strides):
            return None
        return strides

    def _timer_ms(self, wait_ms):
        """Shorten a poll so that consumer expiry and the stride grace of waiting
        trains are noticed."""
        if not self._consumers or not self._pending:
            return wait_ms
        now = time.perf_counter()
        due = min(min(seen for _, _, seen in self._consumers.values()) + self.consumer_timeout,
                  min(t.t_fed for t in self._pending) + self.stride_grace)
        ms = max(1, int((due - now) * 1000) + 1)
        return ms if wait_ms is None else min(wait_ms, ms)

    def _prune_unwanted(self) -> None:
        """Drop trains no live consumer asks for, once the queue is full or they
        waited ``stride_grace`` seconds (only strided consumers known)."""
        strides = self._live_strides()
        if strides is None or not self._pending:
            return
        full = self._capacity is not None and len(self._pending) >= self._capacity
        now = time.perf_counter()
        kept = deque(t for t in self._pending
                     if any(t.key % d == r for d, r in strides)
                     or (not full and now - t.t_fed < self.stride_grace))
        self.stats.dropped_unwanted += len(self._pending) - len(kept)
        self._pending = kept

    def _dispatch(self) -> None:
        """Hand pending trains to ZeroMQ as far as the socket allows."""
        with self._cv:
            if self._closed:
                return
            n_before = len(self._pending)
            if self.sock_type == "REP":
                self._dispatch_rep()
            elif self.sock_type == "PUSH":
                while self._pending:
                    train = self._pending[0]
                    try:
                        self.server_socket.send_multipart(train.frames, zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._pending.popleft()
                    self._record_sent(train)
            else:  # PUB never blocks; above HWM ZeroMQ drops per subscriber
                while self._pending:
                    train = self._pending.popleft()
                    self.server_socket.send_multipart(train.frames, copy=False)
                    self._record_sent(train)
            if len(self._pending) != n_before:
                self._cv.notify_all()

    def _dispatch_rep(self) -> None:
        sock = self.server_socket
        still_waiting = deque()
        while self._waiting:
            ident, divisor, remainder = self._waiting.popleft()
            train = next((t for t in self._pending if t.key % divisor == remainder), None)
            if train is None:
                still_waiting.append((ident, divisor, remainder))
                continue
            try:
                sock.send_multipart([ident, b"", *train.frames], copy=False)
            except zmq.ZMQError as exc:
                if exc.errno not in (errno.EHOSTUNREACH, zmq.EAGAIN):
                    raise
                self.stats.unreachable += 1  # requester gone; keep the train for another
                self._consumers.pop(ident, None)
                continue
            self._pending.remove(train)
            self._record_sent(train)
        self._waiting = still_waiting
        self._prune_unwanted()


class ServerInThread(Sender):
    """A server sending, from a background thread, the trains given to :meth:`feed`.

    Example::

        with ServerInThread("tcp://127.0.0.1:4545") as server:
            server.feed({"SRC/DEV/1:out": {"data.x": arr}},
                        {"SRC/DEV/1:out": make_metadata("SRC/DEV/1:out", tid)})

    Parameters are those of :class:`Sender`, plus ``maxlen``: how many trains
    may wait to be sent (``feed`` blocks or raises ``queue.Full`` beyond;
    ``0``/``None``: unbounded).
    """

    def __init__(self, endpoint, sock="REP", maxlen=10, protocol_version="2.2",
                 dummy_timestamps=False, *, hwm=1, context=None, consumer_timeout=30.0,
                 stride_grace=1.0):
        super().__init__(endpoint, sock=sock, protocol_version=protocol_version,
                         dummy_timestamps=dummy_timestamps, hwm=hwm, context=context,
                         consumer_timeout=consumer_timeout, stride_grace=stride_grace)
        self.maxlen = maxlen if maxlen and maxlen > 0 else None
        self._capacity = self.maxlen
        name = f"inproc://karabo-bridge-waker-{id(self)}-{next(_instance_ids)}"
        self._waker_r = self.zmq_context.socket(zmq.PAIR)
        self._waker_r.bind(name)
        self._waker_w = self.zmq_context.socket(zmq.PAIR)
        self._waker_w.connect(name)
        self._waker_lock = threading.Lock()
        self._stopping = False
        self._started = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"karabo-bridge-server-{next(_instance_ids)}")

    def feed(self, data, metadata=None, block=True, timeout=None):
        """Queue one train for sending (serialized here, so bad data raises here).

        Blocks while ``maxlen`` trains wait (``block=False``, or ``timeout``
        seconds passing, raise ``queue.Full``, counted in ``stats.rejected_full``).
        """
        train = self._make_train(data, metadata)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self.maxlen is not None and len(self._pending) >= self.maxlen:
                self._raise_if_dead()
                if not block:
                    self.stats.rejected_full += 1
                    raise queue.Full
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self.stats.rejected_full += 1
                    raise queue.Full
                self._cv.wait(remaining if remaining is not None else 1.0)
            self._raise_if_dead()
            self._pending.append(train)
            self.stats.fed += 1
        self._wake()

    def flush(self, timeout=None) -> bool:
        """Wait until every fed train has been sent or dropped; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._pending and not self._closed:
                self._raise_if_dead()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cv.wait(remaining if remaining is not None else 1.0)
            return not self._pending

    @property
    def pending(self) -> int:
        """Trains fed and not yet sent."""
        with self._cv:
            return len(self._pending)

    def send(self, data, metadata=None, timeout=None):
        if self._started:
            raise RuntimeError("ServerInThread is running: use feed(), not send()")
        return super().send(data, metadata, timeout)

    def start(self):
        """Start the sending thread."""
        self._started = True
        self.thread.start()

    def stop(self):
        """Stop the thread, count trains still queued as discarded, close the sockets."""
        if self._started and self.thread.is_alive():
            self._stopping = True
            self._wake()
            self.thread.join()
        with self._cv:
            if self._closed:
                return
            self.stats.discarded_at_stop += len(self._pending)
            self._pending.clear()
        self._waker_r.close(linger=0)
        self._waker_w.close(linger=0)
        self.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ internals
    def _raise_if_dead(self):
        if self._closed or self._stopping:
            raise RuntimeError("server is stopped")
        if self.error is not None:
            raise RuntimeError(f"server thread died: {self.error!r}") from self.error

    def _wake(self):
        with self._waker_lock:
            if self._waker_w.closed:
                return
            try:
                self._waker_w.send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass  # a wake-up is already pending

    def _run(self):
        poller = zmq.Poller()
        poller.register(self._waker_r, zmq.POLLIN)
        if self.sock_type == "REP":
            poller.register(self.server_socket, zmq.POLLIN)
        try:
            while True:
                wait_ms = None
                if self.sock_type == "PUSH":
                    poller.modify(self.server_socket, zmq.POLLOUT if self._pending else 0)
                elif self.sock_type == "REP":
                    wait_ms = self._timer_ms(None)
                events = dict(poller.poll(wait_ms))
                if self._waker_r in events:
                    while True:
                        try:
                            self._waker_r.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                if self._stopping:
                    return
                if self.sock_type == "REP" and self.server_socket in events:
                    self._drain_requests()
                self._dispatch()
        except BaseException as exc:  # keep the cause for feed()/flush() to report
            self.error = exc
            with self._cv:
                self._cv.notify_all()
            raise


# The simulator builds on Sender; imported last so that it can import this module.
from .simulation import SimServer, SimServerInThread, start_gen  # noqa: E402,F401
