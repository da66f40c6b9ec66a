"""Karabo Bridge client: request (REQ), subscribe (SUB) or pull (PULL) trains."""
from __future__ import annotations

import time

import zmq

from . import malloc as _malloc
from .errors import ProtocolError, ServerError
from .metadata import train_id_of
from .serializer import deserialize
from .stats import ClientStats, TrainIdTracker

__all__ = ["Client", "request_bytes"]

_SOCKET_TYPES = {"REQ": zmq.REQ, "SUB": zmq.SUB, "PULL": zmq.PULL}


def request_bytes(stride=None) -> bytes:
    """The request a REQ client sends: ``b"next"`` or ``b"next <divisor> <remainder>"``."""
    if stride is None:
        return b"next"
    divisor, remainder = (int(x) for x in stride)
    if divisor < 1 or not 0 <= remainder < divisor:
        raise ValueError(f"stride must be (divisor >= 1, 0 <= remainder < divisor), got {stride!r}")
    if divisor == 1:
        return b"next"
    return b"next %d %d" % (divisor, remainder)


class Client:
    """Karabo Bridge client.

    ::

        with Client("tcp://127.0.0.1:4545") as client:
            data, metadata = client.next()

    Parameters
    ----------
    endpoint : str
        ZeroMQ endpoint of the server (the client connects).
    sock : ``"REQ"`` (default) | ``"SUB"`` | ``"PULL"``
        Must match the server: REP -> REQ, PUB -> SUB, PUSH -> PULL.
    ser : str
        Only ``"msgpack"`` (kept for compatibility).
    timeout : float, optional
        Seconds :meth:`next` waits before raising ``TimeoutError``.  After a
        timeout a REQ client does not send again: the next call waits for
        the reply to the request still outstanding.
    context : zmq.Context, optional
        Shared context (not terminated by :meth:`close`).
    hwm : int
        Receive high-water mark, default 1 as the reference.
    stride : (divisor, remainder), optional
        Take only trains with ``train_id % divisor == remainder``.  REQ: asks
        the server with ``b"next <divisor> <remainder>"`` (servers of this
        package understand it; the reference server answers an error); SUB:
        filters client-side, counting the others in ``stats.skipped``.
    tune_malloc : bool
        Tune the process's C heap (glibc ``mallopt``, process-wide, once) so that
        the memory of received trains is reused instead of being faulted in
        afresh for each large message (:mod:`karabo_bridge.malloc`).  Default
        True; False, or the environment variable
        ``KARABO_BRIDGE_MALLOC_TUNING=0``, leaves the heap alone.
    """

    def __init__(self, endpoint, sock="REQ", ser="msgpack", timeout=None, context=None,
                 *, hwm=1, stride=None, tune_malloc=True):
        if ser != "msgpack":
            raise ValueError("Only serialization supported is msgpack")
        if sock not in _SOCKET_TYPES:
            raise NotImplementedError(f"Unsupported socket: {sock}")
        if stride is not None and sock == "PULL":
            raise ValueError("stride needs REQ (server-side) or SUB (client-side); a PULL "
                             "client cannot choose trains")
        self.endpoint = endpoint
        self.sock_type = sock
        self.timeout = timeout
        self.stride = None if stride is None else tuple(int(x) for x in stride)
        self._request = request_bytes(self.stride) if sock == "REQ" else None
        if tune_malloc and _malloc.wanted():
            _malloc.keep_message_memory()     # before the context: its I/O thread allocates
        self.stats = ClientStats()
        self._tids = TrainIdTracker(self.stride[0] if self.stride else 1)
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._socket = self._context.socket(_SOCKET_TYPES[sock])
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.set_hwm(hwm)
        if sock == "SUB":
            self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            self._socket.connect(endpoint)
        except Exception:
            self.close()
            raise
        self._recv_ready = False  # a REQ request is outstanding
        self._t_request = 0.0
        self._closed = False
        #: Train ID of the last train returned (None if it had none).
        self.last_train_id = None

    @property
    def socket(self) -> zmq.Socket:
        """The underlying pyzmq socket."""
        return self._socket

    def next(self, timeout=None):
        """Receive the next train: ``(data, metadata)``, both keyed by source.

        ``timeout`` (seconds) overrides the client's timeout for this call.

        Raises
        ------
        TimeoutError
            nothing arrived in time (a REQ request stays outstanding).
        ProtocolError
            the message was malformed (counted in ``stats.protocol_errors``).
        ServerError
            the server answered an error string (e.g. it does not understand
            a stride request).
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.request()
            t_start = self._t_request if self.sock_type == "REQ" else time.perf_counter()
            wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if wait_ms is not None and not self._socket.poll(wait_ms, zmq.POLLIN):
                self.stats.timeouts += 1
                raise TimeoutError(f"No data received from {self.endpoint} in the last "
                                   f"{timeout * 1000:.0f} ms")
            msg = self._socket.recv_multipart(copy=False)
            self._recv_ready = False
            t_arrived = time.perf_counter()
            try:
                data, meta = deserialize(msg)
            except ServerError:
                self.stats.server_errors += 1
                raise
            except ProtocolError:
                self.stats.protocol_errors += 1
                raise
            tid = train_id_of(meta)
            if self.stride and self.sock_type == "SUB" and tid is not None \
                    and tid % self.stride[0] != self.stride[1]:
                self.stats.skipped += 1
                continue
            self.stats.trains += 1
            self.stats.bytes += sum(len(f) for f in msg)
            self.stats.wait.add(t_arrived - t_start)
            ts = _first_timestamp(meta)
            if ts is not None:
                self.stats.age.add(time.time() - ts)
            self.stats.missed += self._tids.update(tid)
            self.stats.tid_resets = self._tids.resets
            self.last_train_id = tid
            return data, meta

    def request(self) -> None:
        """REQ: send the request for the next train now, unless one is outstanding.

        Lets a caller overlap the server's reply with its own work; :meth:`next`
        then receives that reply.  No-op for SUB and PULL.
        """
        if self.sock_type == "REQ" and not self._recv_ready:
            self._socket.send(self._request)
            self._recv_ready = True
            self._t_request = time.perf_counter()

    def close(self) -> None:
        """Close the socket (and the context if this client made it)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self.close()

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()


def _first_timestamp(meta):
    for m in meta.values():
        ts = m.get("timestamp") if isinstance(m, dict) else None
        if isinstance(ts, (int, float)) and not isinstance(ts, bool):
            return float(ts)
    return None
