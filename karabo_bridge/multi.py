"""A client reading several bridge endpoints and matching their sources by train ID."""
from __future__ import annotations

import time
from collections import deque

import zmq

from .client import Client
from .stats import LatencyStats, _Counters

__all__ = ["MultiClient", "MultiClientStats", "IncompleteTrain"]


class IncompleteTrain(tuple):
    """``(train_id, missing)``: a train given up as incomplete; ``missing`` is the
    tuple of endpoints (or, with ``sources=``, source names) it lacked."""

    __slots__ = ()

    def __new__(cls, train_id, missing):
        return super().__new__(cls, (train_id, tuple(missing)))

    @property
    def train_id(self):
        return self[0]

    @property
    def missing(self):
        return self[1]


class MultiClientStats(_Counters):
    """``complete``/``incomplete`` trains resolved, ``late`` parts (for a train
    already resolved), ``untagged`` messages (no ``timestamp.tid``, cannot be
    matched), ``duplicates`` (a source delivered twice for one train),
    ``overflow`` (incomplete trains given up because too many were pending);
    ``match_latency``: first part received to train resolved."""
    _fields = ("complete", "incomplete", "late", "untagged", "duplicates", "overflow")

    def __init__(self):
        super().__init__()
        self.match_latency = LatencyStats()


class _Pending:
    __slots__ = ("data", "meta", "endpoints", "t_first")

    def __init__(self, t_first):
        self.data, self.meta, self.endpoints = {}, {}, set()
        self.t_first = t_first


class MultiClient:
    """Read trains from several endpoints and merge the parts of each train.

    A train is complete when every endpoint delivered a message for it (or,
    if ``sources`` is given, when all those sources are present).  A train is
    given up as incomplete when every endpoint that did not deliver it has
    already delivered a later train, when it waited ``train_timeout`` seconds,
    or when more than ``max_pending`` trains wait.  Incomplete trains are
    counted (``stats.incomplete``) and recorded in :attr:`incomplete`;
    with ``partial=True`` they are also returned (see :attr:`last_missing`).
    Trains are returned in increasing train-ID order.

    Parameters
    ----------
    endpoints : list of str or of (endpoint, sock) pairs
    sock : default socket type for plain endpoints (``"REQ"``, ``"SUB"``, ``"PULL"``)
    timeout : float, optional
        Seconds :meth:`next` waits for a resolved train before ``TimeoutError``.
    train_timeout : float
        Seconds a train may wait for its missing parts.
    stride : (divisor, remainder), optional
        Passed to every client (REQ: server-side stride; SUB: client-side).
    max_ahead : int
        REQ endpoints are not asked for more trains while they have parts in
        this many unresolved trains (keeps a fast endpoint from running ahead).
    """

    def __init__(self, endpoints, sock="REQ", timeout=None, train_timeout=1.0, *,
                 sources=None, partial=False, hwm=1, stride=None, max_pending=100,
                 max_ahead=2, context=None):
        if not endpoints:
            raise ValueError("MultiClient needs at least one endpoint")
        self.timeout = timeout
        self.train_timeout = float(train_timeout)
        self.sources = None if sources is None else frozenset(sources)
        self.partial = bool(partial)
        self.max_pending = int(max_pending)
        self.max_ahead = max(1, int(max_ahead))
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self.clients: list[Client] = []
        try:
            for ep in endpoints:
                ep, ep_sock = (ep, sock) if isinstance(ep, str) else ep
                self.clients.append(Client(ep, sock=ep_sock, context=self._context,
                                           hwm=hwm, stride=stride))
        except Exception:
            self.close()
            raise
        self.endpoints = [c.endpoint for c in self.clients]
        self.stats = MultiClientStats()
        #: The last incomplete trains given up (most recent last).
        self.incomplete: deque[IncompleteTrain] = deque(maxlen=1000)
        #: What the train last returned by :meth:`next` lacked (empty if complete).
        self.last_missing: tuple = ()
        self.last_train_id = None
        self._pending: dict[int, _Pending] = {}
        self._last_tid: list[int | None] = [None] * len(self.clients)
        self._resolved_upto = None
        self._poller = zmq.Poller()
        for c in self.clients:
            self._poller.register(c.socket, zmq.POLLIN)
        self._closed = False

    # ------------------------------------------------------------------ public
    def next(self, timeout=None):
        """The next resolved train as ``(data, metadata)`` keyed by source.

        Raises ``TimeoutError`` if none is resolved within the timeout.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            out = self._pop_resolved()
            if out is not None:
                return out
            self._request_more()
            now = time.monotonic()
            waits = []
            if deadline is not None:
                waits.append(deadline - now)
            if self._pending:
                oldest = min(p.t_first for p in self._pending.values())
                waits.append(oldest + self.train_timeout - now)
            wait_ms = None if not waits else max(0, int(min(waits) * 1000) + 1)
            events = dict(self._poller.poll(wait_ms))
            for i, client in enumerate(self.clients):
                if client.socket in events:
                    self._receive(i)
            if not events and deadline is not None and time.monotonic() >= deadline:
                out = self._pop_resolved()
                if out is not None:
                    return out
                raise TimeoutError(f"no complete train from {self.endpoints} in {timeout} s")

    def close(self) -> None:
        """Close every client socket (and the context if this object made it)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        for c in self.clients:
            c.close()
        if self._own_context:
            self._context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    # ------------------------------------------------------------------ internals
    def _request_more(self):
        for i, c in enumerate(self.clients):
            if c.sock_type != "REQ" or c._recv_ready:
                continue
            busy = sum(1 for p in self._pending.values() if i in p.endpoints)
            if busy < self.max_ahead:
                c.request()

    def _receive(self, i):
        client = self.clients[i]
        while client.socket.poll(0, zmq.POLLIN):
            data, meta = client.next(timeout=0)
            self._add(i, data, meta)
            if client.sock_type == "REQ":
                break

    def _add(self, i, data, meta):
        now = time.monotonic()
        by_tid = {}
        for src in data:
            tid = meta.get(src, {}).get("timestamp.tid")
            if tid is None:
                self.stats.untagged += 1
                continue
            by_tid.setdefault(int(tid), []).append(src)
        for tid, srcs in by_tid.items():
            if self._last_tid[i] is None or tid > self._last_tid[i]:
                self._last_tid[i] = tid
            if self._resolved_upto is not None and tid <= self._resolved_upto:
                self.stats.late += 1
                continue
            p = self._pending.get(tid)
            if p is None:
                p = self._pending[tid] = _Pending(now)
            p.endpoints.add(i)
            for src in srcs:
                if src in p.data:
                    self.stats.duplicates += 1
                    continue
                p.data[src] = data[src]
                p.meta[src] = meta.get(src, {})

    def _missing(self, p: _Pending) -> tuple:
        if self.sources is not None:
            return tuple(sorted(self.sources - p.data.keys()))
        return tuple(self.endpoints[i] for i in range(len(self.clients)) if i not in p.endpoints)

    def _pop_resolved(self):
        """Resolve the oldest pending train if it can be; return it or None."""
        while self._pending:
            tid = min(self._pending)
            p = self._pending[tid]
            missing = self._missing(p)
            now = time.monotonic()
            if missing:
                absent = [i for i in range(len(self.clients)) if i not in p.endpoints]
                hopeless = all(self._last_tid[i] is not None and self._last_tid[i] > tid
                               for i in absent) and bool(absent)
                overflow = len(self._pending) > self.max_pending
                if not (hopeless or overflow or now - p.t_first >= self.train_timeout):
                    return None
                if overflow and not hopeless:
                    self.stats.overflow += 1
            del self._pending[tid]
            self._resolved_upto = tid
            self.stats.match_latency.add(now - p.t_first)
            if missing:
                self.stats.incomplete += 1
                self.incomplete.append(IncompleteTrain(tid, missing))
                if not self.partial:
                    continue
            else:
                self.stats.complete += 1
            self.last_missing = missing
            self.last_train_id = tid
            return p.data, p.meta
        return None
