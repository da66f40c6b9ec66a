"""The SPIDR control connection: one TCP socket, one request at a time.

:class:`SpidrController` owns the socket to a board (real or simulated) and
does the request/reply exchange of :mod:`tpx3lib.spidr.protocol`:

* every request has a timeout (``timeout`` seconds for the whole reply);
* replies are read to their full declared length, however TCP splits them;
* every reply is checked: command echo with the reply flag, device echo, a sane
  length, and the data size the caller expects;
* a non-zero error field raises :class:`~tpx3lib.errors.SpidrError` with the
  decoded name (``SET_DAC on chip 0 refused: ERR_ILLEGAL_PAR``); the stream
  stays in step, so the next request just works;
* a timeout raises :class:`~tpx3lib.errors.SpidrTimeoutError`. A reply that is
  merely late would otherwise be read as the answer to the *next* request, so
  the controller drops the socket and opens a fresh one before raising (the
  board keeps all its state across connections);
* a lost connection raises :class:`~tpx3lib.errors.SpidrConnectionError`; the
  controller then stays disconnected until :meth:`SpidrController.reconnect`.

All requests go through one re-entrant lock, so several threads (e.g. the Tango
devices of one board) can share a controller.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field

from tpx3lib.errors import ProtocolError, SpidrConnectionError, SpidrError, SpidrTimeoutError

from .protocol import (
    CMD_NOREPLY, CMD_REPLY, DEFAULT_PORT, HEADER_SIZE, MAX_MESSAGE_SIZE, Cmd, Header, bytes_to_words,
    command_name, encode_request, parse_header,
)

__all__ = ["SpidrController", "Reply", "ControllerStats", "DEFAULT_TIMEOUT"]

log = logging.getLogger(__name__)

#: Seconds to wait for a complete reply.
DEFAULT_TIMEOUT = 2.0


@dataclass(frozen=True)
class Reply:
    """A validated reply: its header, the 32-bit data words and any raw bytes after them."""

    header: Header
    words: tuple[int, ...]
    data: bytes = b""

    @property
    def error(self) -> int:
        return self.header.status


@dataclass
class ControllerStats:
    """Counters of what the controller did (for status displays)."""

    requests: int = 0
    refused: int = 0
    timeouts: int = 0
    reconnects: int = 0
    connection_losses: int = 0
    last_error: str = ""
    by_command: dict = field(default_factory=dict)


def _where(chip: int | None) -> str:
    return "on the board" if chip is None else f"on chip {chip}"


class SpidrController:
    """A TCP connection to a SPIDR board's control port.

    Parameters
    ----------
    address:
        ``(host, port)`` of the board, e.g. ``("192.168.1.10", 50000)``.
    timeout:
        Seconds to wait for each complete reply (and for connecting).
    connect:
        Connect now (default). With False, call :meth:`connect` later.
    """

    def __init__(self, address=("127.0.0.1", DEFAULT_PORT), timeout: float = DEFAULT_TIMEOUT, *,
                 connect: bool = True):
        host, port = address
        self.address = (str(host), int(port))
        if not timeout or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.timeout = float(timeout)
        self.stats = ControllerStats()
        self._sock: socket.socket | None = None
        self._lock = threading.RLock()
        self._lost_reason = "never connected"
        self._exchanges = 0  # complete replies on the current socket
        if connect:
            self.connect()

    # ------------------------------------------------------------------ connection
    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<SpidrController {self.address[0]}:{self.address[1]} {state}>"

    @property
    def connected(self) -> bool:
        """True while the controller holds an open socket."""
        return self._sock is not None

    @property
    def lock(self) -> threading.RLock:
        """The request lock; hold it to make several requests one uninterrupted sequence."""
        return self._lock

    def connect(self) -> None:
        """Open the TCP connection (no-op when already connected)."""
        with self._lock:
            if self._sock is not None:
                return
            host, port = self.address
            try:
                sock = socket.create_connection((host, port), timeout=self.timeout)
            except socket.timeout:
                raise SpidrConnectionError(
                    f"cannot connect to SPIDR at {host}:{port}: no answer within {self.timeout} s") from None
            except OSError as exc:
                raise SpidrConnectionError(f"cannot connect to SPIDR at {host}:{port}: {exc.strerror or exc}") from exc
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            self._exchanges = 0
            log.debug("connected to %s:%d", host, port)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._drop("closed by the client")

    def reconnect(self) -> None:
        """Close the connection if open and connect again."""
        with self._lock:
            self._drop("reconnecting")
            self.connect()
            self.stats.reconnects += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _drop(self, reason: str) -> None:
        sock, self._sock = self._sock, None
        self._lost_reason = reason
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    # ------------------------------------------------------------------ core exchange
    def request(self, cmd: int, chip: int | None = None, words=(), data: bytes = b"", *,
                reply_words: int | None = None, reply_bytes: int = 0) -> Reply | None:
        """Send one request and return its validated reply.

        ``chip`` None addresses the board (dev_nr 0), otherwise the chip index.
        ``reply_words``/``reply_bytes``: the data the reply must carry after the
        header (``None`` words: accept any whole number of words, e.g. SET replies).
        Commands sent with the CMD_NOREPLY flag return None without waiting.
        """
        dev = 0 if chip is None else int(chip)
        name = command_name(cmd)
        message = encode_request(cmd, dev, words, data)
        with self._lock:
            sock = self._sock
            if sock is None:
                host, port = self.address
                raise SpidrConnectionError(
                    f"{name} {_where(chip)}: not connected to SPIDR at {host}:{port} ({self._lost_reason}); "
                    "call reconnect()")
            self.stats.requests += 1
            self.stats.by_command[name] = self.stats.by_command.get(name, 0) + 1
            deadline = time.monotonic() + self.timeout
            try:
                sock.settimeout(self.timeout)
                sock.sendall(message)
            except socket.timeout:
                self._on_timeout(name, chip, "sending the request")
            except OSError as exc:
                self._on_lost(name, chip, f"sending failed: {exc.strerror or exc}")
            if cmd & CMD_NOREPLY:
                return None
            head = self._read_exact(sock, HEADER_SIZE, deadline, name, chip)
            header = parse_header(head)
            if header.length < HEADER_SIZE or header.length > MAX_MESSAGE_SIZE:
                # The stream cannot be trusted past a nonsense length.
                self._drop(f"bad reply length {header.length}")
                self.stats.last_error = f"{name}: bad reply length"
                raise ProtocolError(
                    f"{name} {_where(chip)}: reply declares length {header.length} bytes "
                    f"(must be {HEADER_SIZE}..{MAX_MESSAGE_SIZE}); connection dropped, call reconnect()")
            body = self._read_exact(sock, header.length - HEADER_SIZE, deadline, name, chip)
            self._exchanges += 1
            return self._validate(cmd, dev, chip, name, header, body, reply_words, reply_bytes)

    def _read_exact(self, sock, n: int, deadline: float, name: str, chip) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._on_timeout(name, chip, f"waiting for the reply (got {got} of {n} bytes)")
            try:
                sock.settimeout(remaining)
                k = sock.recv_into(view[got:], n - got)
            except socket.timeout:
                self._on_timeout(name, chip, f"waiting for the reply (got {got} of {n} bytes)")
            except OSError as exc:
                self._on_lost(name, chip, f"receiving failed: {exc.strerror or exc}")
            if k == 0:
                self._on_lost(name, chip, "the board closed the connection")
            got += k
        return bytes(buf)

    def _on_timeout(self, name: str, chip, what: str):
        self.stats.timeouts += 1
        host, port = self.address
        msg = f"{name} {_where(chip)}: no complete reply within {self.timeout:g} s from {host}:{port} ({what})"
        self._drop("timeout")
        try:
            self.connect()
            self.stats.reconnects += 1
            msg += "; reconnected so a late reply cannot be mistaken for the next one"
        except SpidrConnectionError as exc:
            msg += f"; reconnecting failed ({exc}); call reconnect()"
        self.stats.last_error = msg
        log.warning("%s", msg)
        raise SpidrTimeoutError(msg)

    def _on_lost(self, name: str, chip, why: str):
        self.stats.connection_losses += 1
        host, port = self.address
        if self._exchanges == 0:
            why += " before the first reply (the board accepts one client at a time: is another one connected?)"
        self._drop(why)
        msg = f"{name} {_where(chip)}: connection to SPIDR at {host}:{port} lost: {why}; call reconnect()"
        self.stats.last_error = msg
        log.warning("%s", msg)
        raise SpidrConnectionError(msg)

    def _validate(self, cmd, dev, chip, name, header: Header, body: bytes, reply_words, reply_bytes) -> Reply:
        expected_cmd = (int(cmd) | CMD_REPLY) & 0xFFFFFFFF
        if header.cmd != expected_cmd:
            self.stats.last_error = f"{name}: wrong echo"
            raise ProtocolError(
                f"{name} {_where(chip)}: reply echoes command 0x{header.cmd:X} ({command_name(header.cmd)}), "
                f"expected 0x{expected_cmd:X}")
        if header.dev != dev:
            self.stats.last_error = f"{name}: wrong device echo"
            raise ProtocolError(f"{name} {_where(chip)}: reply is for device {header.dev}, expected {dev}")
        if header.status != 0:
            self.stats.refused += 1
            err = SpidrError(name, chip, header.status)
            self.stats.last_error = str(err)
            raise err
        n_words_bytes = len(body) - reply_bytes
        if reply_words is None:
            ok = n_words_bytes >= 0 and n_words_bytes % 4 == 0
            want = f"a whole number of words + {reply_bytes} bytes" if reply_bytes else "a whole number of words"
        else:
            ok = n_words_bytes == 4 * reply_words
            want = f"{4 * reply_words + reply_bytes} data bytes"
        if not ok:
            self.stats.last_error = f"{name}: wrong reply length"
            raise ProtocolError(f"{name} {_where(chip)}: reply carries {len(body)} data bytes, expected {want}")
        words = bytes_to_words(body[:n_words_bytes])
        return Reply(header, words, body[n_words_bytes:])

    # ------------------------------------------------------------------ typed helpers
    def get_int(self, cmd: int, chip: int | None = None, arg: int = 0) -> int:
        """A GET with one argument word answering one int."""
        return self.request(cmd, chip, [arg], reply_words=1).words[0]

    def get_ints(self, cmd: int, chip: int | None = None, count: int | None = 1, arg: int = 0) -> tuple[int, ...]:
        """A GET answering ``count`` ints (None: however many the reply holds)."""
        return self.request(cmd, chip, [arg], reply_words=count).words

    def get_bytes(self, cmd: int, chip: int | None = None, nbytes: int = 0, arg: int = 0) -> bytes:
        """A GET answering raw bytes only."""
        return self.request(cmd, chip, [arg], reply_words=0, reply_bytes=nbytes).data

    def get_int_bytes(self, cmd: int, chip: int | None = None, nbytes: int = 0, arg: int = 0) -> tuple[int, bytes]:
        """A GET answering one int then raw bytes (GET_PIXCONF)."""
        r = self.request(cmd, chip, [arg], reply_words=1, reply_bytes=nbytes)
        return r.words[0], r.data

    def set_int(self, cmd: int, chip: int | None = None, value: int = 0) -> None:
        """A SET with one payload word."""
        self.request(cmd, chip, [value])

    def set_ints(self, cmd: int, chip: int | None = None, values=()) -> None:
        """A SET with several payload words."""
        self.request(cmd, chip, list(values))

    def set_int_bytes(self, cmd: int, chip: int | None = None, value: int = 0, data: bytes = b"") -> None:
        """A SET with one payload word then raw bytes (SET_PIXCONF, SET_CTPR, UPLOAD_PACKET)."""
        self.request(cmd, chip, [value], bytes(data))

    def get_register(self, address: int) -> int:
        """Read a SPIDR register; checks the board echoes the address."""
        addr, value = self.get_ints(Cmd.GET_SPIDRREG, None, 2, int(address))
        if addr != int(address):
            raise ProtocolError(f"GET_SPIDRREG on the board: asked for register 0x{int(address):X}, "
                                f"reply is for 0x{addr:X}")
        return value

    def set_register(self, address: int, value: int) -> None:
        """Write a SPIDR register."""
        self.set_ints(Cmd.SET_SPIDRREG, None, [int(address), int(value) & 0xFFFFFFFF])

    def read_modify_write(self, address: int, clear: int = 0, set_: int = 0) -> int:
        """Atomically (under the lock) clear then set bits of a register; returns the new value."""
        with self._lock:
            v = (self.get_register(address) & ~clear | set_) & 0xFFFFFFFF
            self.set_register(address, v)
            return v

