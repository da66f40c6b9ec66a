"""One SPIDR connection per board, shared by every device of that board in this server.

A SPIDR board accepts a single TCP control client, so the SpidrBoard, its Timepix3Chip
devices and the Tpx3Pipeline of one board must share one connection. :func:`acquire`
returns the :class:`BoardLink` for a ``host:port`` (creating it on first use) and counts
users; :func:`release` closes it when the last user goes.

The link only manages the connection's life (connect in a thread, remember why it failed,
tell listeners, reconnect on request); every request is a tpx3lib call made through
:meth:`BoardLink.call`, which turns a lost or silent board into the FAULT state with the
library's own message.
"""
from __future__ import annotations

import enum
import logging
import threading
from typing import Callable

from tpx3lib.errors import ConfigError, ProtocolError, SpidrConnectionError, SpidrTimeoutError
from tpx3lib.spidr.chip import PixelVerifyError

from tango_tpx3.common import ensure_omni_thread, parse_address

__all__ = ["LinkState", "BoardLink", "board_lost", "acquire", "release", "links", "address_of_board", "timeout_of_board",
           "chip_index_of", "REQUEST_TIMEOUT"]

log = logging.getLogger(__name__)

#: Seconds the controller waits for a reply before the board counts as not answering
#: (the library default; well inside the 3 s Tango client timeout).
REQUEST_TIMEOUT = 2.0


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAULT = "fault"
    CLOSED = "closed"


Listener = Callable[["BoardLink"], None]


def _make_board(host: str, port: int, timeout: float = REQUEST_TIMEOUT):
    from tpx3lib.spidr import SpidrBoard
    return SpidrBoard.connect((host, port), timeout=timeout)


class BoardLink:
    """The shared connection to one SPIDR board."""

    def __init__(self, address: str, board_factory: Callable = _make_board, timeout: float = REQUEST_TIMEOUT):
        self.address = address
        self.host, self.port = parse_address(address)
        self.timeout = float(timeout)
        self._factory = board_factory
        self._lock = threading.RLock()
        self._board = None
        self._state = LinkState.CLOSED
        self._reason = "not connected yet"
        self._generation = 0
        self._listeners: list[Listener] = []
        self._thread: threading.Thread | None = None
        self.users = 0

    # -- state ------------------------------------------------------------------------------
    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def connected(self) -> bool:
        return self._state is LinkState.CONNECTED

    @property
    def generation(self) -> int:
        """Increases on every successful connection (devices re-apply settings when it changes)."""
        return self._generation

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener not in self._listeners:
                self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _set(self, state: LinkState, reason: str) -> None:
        if self._change(state, reason):
            self._notify()

    def _change(self, state: LinkState, reason: str) -> bool:
        """Set state and reason (listeners not told yet); False when nothing changed."""
        with self._lock:
            if state is self._state and reason == self._reason:
                return False
            self._state, self._reason = state, reason
            return True

    def _notify(self) -> None:
        with self._lock:
            state, reason, listeners = self._state, self._reason, list(self._listeners)
        log.info("SPIDR %s: %s (%s)", self.address, state.value, reason)
        for listener in listeners:
            try:
                listener(self)
            except Exception:  # noqa: BLE001 - one device's trouble must not stop the others
                log.exception("listener of %s failed", self.address)

    # -- connection ---------------------------------------------------------------------------
    def connect(self, wait: bool = False) -> None:
        """(Re)connect in a background thread; returns at once unless ``wait``."""
        with self._lock:
            busy = self._state is LinkState.CONNECTING and self._thread is not None and self._thread.is_alive()
            if busy:
                thread = self._thread
            else:
                changed = self._change(LinkState.CONNECTING, f"connecting to SPIDR {self.address}")
                thread = threading.Thread(target=ensure_omni_thread(self._connect), args=(self._take_board(),),
                                          name=f"spidr-connect-{self.address}", daemon=True)
                self._thread = thread
        if not busy:
            if changed:
                self._notify()
            thread.start()
        if wait:
            thread.join()

    def _connect(self, old_board=None) -> None:
        if old_board is not None:   # first: a board takes one control client at a time
            _close_quietly(old_board)
        try:
            board = self._factory(self.host, self.port, self.timeout)
        except Exception as exc:  # noqa: BLE001 - any failure to connect is a FAULT with its reason
            self._set(LinkState.FAULT, f"cannot connect to SPIDR {self.address}: {exc}")
            return
        with self._lock:
            if self._thread is not threading.current_thread():  # superseded by close()/connect()
                _close_quietly(board)
                return
            self._board = board
            self._generation += 1
        self._set(LinkState.CONNECTED, f"connected to SPIDR {self.address}")

    def reconnect(self, wait: bool = False) -> None:
        self.connect(wait=wait)

    def close(self) -> None:
        with self._lock:
            self._thread = None
            changed = self._change(LinkState.CLOSED, "closed")
            board = self._take_board()
        self._closed(board, changed)

    def _take_board(self):
        """The current board, which the link then no longer has (call under the lock)."""
        board, self._board = self._board, None
        return board

    def _closed(self, board, changed: bool) -> None:
        """After a state change: close the old board and tell the listeners, outside the lock
        (closing waits for a request in flight, up to its timeout)."""
        if board is not None:
            _close_quietly(board)
        if changed:
            self._notify()

    # -- requests -----------------------------------------------------------------------------
    @property
    def board(self):
        """The connected tpx3lib SpidrBoard; raises SpidrConnectionError (with the reason) otherwise."""
        board = self._board
        if board is None or self._state is not LinkState.CONNECTED:
            if self._state is LinkState.CONNECTING:
                raise SpidrConnectionError(f"SPIDR {self.address} is still connecting")
            raise SpidrConnectionError(f"SPIDR {self.address} not connected: {self._reason}")
        return board

    def call(self, fn: Callable, *args, **kwargs):
        """``fn(board, *args)``; a lost or silent board puts the link in FAULT and re-raises.

        A refused command (SpidrError) or a bad value (ConfigError) leaves the link as it is.
        """
        board = self.board
        try:
            return fn(board, *args, **kwargs)
        except Exception as exc:
            if board_lost(exc):
                self.fail(f"SPIDR {self.address} does not answer: {exc}", board)
            raise

    def fail(self, reason: str, board=None) -> None:
        """Mark the link faulty (only if ``board`` is still the current one)."""
        with self._lock:
            if board is not None and board is not self._board:
                return
            # The state changes before the board closes: a request in another thread that the
            # close breaks must already find the link failed (its own fail() is then ignored).
            changed = self._change(LinkState.FAULT, reason)
            board = self._take_board()
        self._closed(board, changed)


def board_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the board is gone or silent (not a refused command or a bad value)."""
    lost = (SpidrConnectionError, SpidrTimeoutError, ProtocolError, ConnectionError, TimeoutError)
    return isinstance(exc, lost) and not isinstance(exc, PixelVerifyError)


def _close_quietly(board) -> None:
    try:
        board.close()
    except Exception:  # noqa: BLE001
        log.debug("closing a SPIDR controller failed", exc_info=True)


_registry: dict[tuple[str, int], BoardLink] = {}
_registry_lock = threading.Lock()


def acquire(address: str, board_factory: Callable | None = None, timeout: float | None = None) -> BoardLink:
    """The link of ``address`` in this process (connecting on first use), one more user.

    ``timeout`` (seconds per reply) applies when the link is created."""
    host, port = parse_address(address)
    host = _canonical_host(host)
    with _registry_lock:
        link = _registry.get((host, port))
        new = link is None
        if new:
            link = BoardLink(f"{host}:{port}", board_factory or _make_board,
                             REQUEST_TIMEOUT if timeout is None else timeout)
            _registry[(host, port)] = link
        link.users += 1
    if new:
        link.connect()
    return link


def _canonical_host(host: str) -> str:
    """The IPv4 address of ``host`` (so "localhost" and "127.0.0.1" share a link); the name as
    given when it does not resolve (connecting will then say so)."""
    import socket
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def release(link: BoardLink) -> None:
    """One user less; the last one closes the connection."""
    with _registry_lock:
        link.users -= 1
        if link.users > 0:
            return
        _registry.pop((link.host, link.port), None)
    link.close()


def links() -> list[BoardLink]:
    with _registry_lock:
        return list(_registry.values())


def _local_device(name: str):
    """The device object of ``name`` if it lives in this server, else None."""
    import tango
    try:
        return tango.Util.instance().get_device_by_name(name)
    except Exception:  # noqa: BLE001 - not here (or not a server at all)
        return None


def _db_property(device: str, prop: str) -> list[str]:
    import tango
    try:
        return list(tango.Database().get_device_property(device, prop)[prop])
    except tango.DevFailed as exc:
        raise ConfigError(f"cannot read {device}.{prop} from the Tango database: "
                          f"{exc.args[0].desc.strip() if exc.args else exc}") from None


def address_of_board(board_device: str) -> str:
    """The SpidrAddress of a SpidrBoard device: from the device itself if it runs in this
    server, else from its property in the database."""
    name = str(board_device).strip()
    if not name:
        raise ConfigError("the Board property is empty: name the SpidrBoard device")
    dev = _local_device(name)
    address = getattr(dev, "SpidrAddress", None) if dev is not None else None
    if not address:
        values = _db_property(name, "SpidrAddress")
        if not values:
            raise ConfigError(f"{name} has no SpidrAddress property: is it a registered SpidrBoard device?")
        address = values[0]
    parse_address(address)
    return address


def timeout_of_board(board_device: str) -> float:
    """The RequestTimeout of a SpidrBoard device (from the device or the database; default 2 s)."""
    name = str(board_device).strip()
    dev = _local_device(name)
    value = getattr(dev, "RequestTimeout", None) if dev is not None else None
    if value is None:
        values = _db_property(name, "RequestTimeout")
        value = values[0] if values else REQUEST_TIMEOUT
    try:
        value = float(value)
    except ValueError:
        raise ConfigError(f"{name}.RequestTimeout is not a number of seconds: {value!r}") from None
    if not value > 0:
        raise ConfigError(f"{name}.RequestTimeout must be > 0 s, got {value}")
    return value


def chip_index_of(chip_device: str) -> int:
    """The ChipIndex of a Timepix3Chip device (from the device or the database; default 0)."""
    name = str(chip_device).strip()
    dev = _local_device(name)
    index = getattr(dev, "ChipIndex", None) if dev is not None else None
    if index is None:
        import tango
        try:
            klass = tango.Database().get_device_info(name).class_name
        except tango.DevFailed:
            raise ConfigError(f"{name} is not a device of the Tango database (check the Chips property)") from None
        if klass != "Timepix3Chip":
            raise ConfigError(f"{name} is a {klass}, not a Timepix3Chip (check the Chips property)")
        values = _db_property(name, "ChipIndex")
        index = values[0] if values else 0
    try:
        return int(index)
    except ValueError:
        raise ConfigError(f"{name}.ChipIndex is not an integer: {index!r}") from None
