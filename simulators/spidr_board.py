"""A simulated SPIDR board: the TCP control server, its state, and the link to the data side.

    with SimulatedSpidrBoard(port=0, n_chips=1) as board:   # port 0: any free port
        ctrl = SpidrController(("127.0.0.1", board.port))
        ...

The board answers every command of the SPIDR protocol (docs/spidr.md) with
stateful, consistent replies: DACs, pixel matrices and registers read back what
was written, counters count, monitoring values are plausible. Unknown commands
get ERR_UNKNOWN_CMD, a payload of the wrong size ERR_MSG_LENGTH, values out of
range ERR_ILLEGAL_PAR - never silence. One client at a time: a second
connection is closed at once (and logged) while the first is alive.

Data: the board owns a :class:`simulators.clock.BoardClock` (GET_TIMER reads
it) and one :class:`simulators.physics.ChipState` per chip (what the DACs, pixel
configuration, general configuration and bias make of the chip). AUTOTRIG_START
after DDRIVEN_READOUT starts a :class:`simulators.udp_stream.UdpDataStreamer`
sending each chip's words to the chip's UDP destination (SET_IPADDR_DEST /
SET_SERVERPORT, default 127.0.0.1:8192+chip); AUTOTRIG_STOP stops it. The
board only ever sends UDP to loopback addresses: SET_IPADDR_DEST with any
other address is refused with ERR_ILLEGAL_PAR.

Fault injection (``board.faults``, a :class:`ControlFaults`) refuses chosen
commands with chosen error codes, delays or drops replies, closes the
connection, corrupts or fragments replies; ``board.data_faults`` is handed to
the UDP streamer.
"""
from __future__ import annotations

import collections
import dataclasses
import enum
import ipaddress
import logging
import select
import socket
import threading
from dataclasses import dataclass

import numpy as np

from tpx3lib.errors import ConfigError
from tpx3lib.spidr.dacs import DAC_NAMES, DACS, Dac
from tpx3lib.spidr.genconfig import GeneralConfig
from tpx3lib.spidr.pixels import BYTES_PER_COLUMN, MATRIX_SHAPE, N_COLUMNS, split_pixel_words, unpack_pixel_words
from tpx3lib.spidr.protocol import (
    CMD_MASK, CMD_NOREPLY, CMD_REPLY, DEFAULT_UDP_BASE_PORT, HEADER_SIZE, MAX_MESSAGE_SIZE, Cmd, ErrorCode,
    ReadoutSpeed, Reg, ShutterMode, bytes_to_words, command_name, encode_reply, int_to_ip, ip_to_int,
    parse_header,
)

__all__ = ["SimulatedSpidrBoard", "ControlFaults", "FaultAction", "FaultRule", "SimChip",
           "DEFAULT_SOFTWARE_VERSION", "DEFAULT_FIRMWARE_VERSION", "default_device_id"]

log = logging.getLogger(__name__)

#: Versions of a real SPIDR (as recorded in the SoPhy fixture's hardware info).
DEFAULT_SOFTWARE_VERSION = 402790656
DEFAULT_FIRMWARE_VERSION = 402792457
DEFAULT_CHIPBOARD_ID = 33554519
DEFAULT_BOARD_ID = 0x5D1D0001
#: Links per chip the board reports (DEVICES_AND_PORTS bits 11..8 = links - 1).
LINKS_PER_CHIP = 8
#: A healthy link status register: 8 links enabled and locked.
LINKS_OK = 0x00FF0000


def default_device_id(chip: int) -> int:
    """Chip 0 is W0028_H06 (device id 0x1C68, the chip of the SoPhy fixture); chip i the next columns."""
    col = (7 + chip) % 15 + 1  # H, I, J, ...
    return (28 << 8) | (6 << 4) | col


# ====================================================================== fault injection

class FaultAction(enum.Enum):
    """What a fault rule does to the request it matches."""

    REFUSE = "refuse"          #: reply with an error code; the command is not executed
    DELAY = "delay"            #: execute, then wait before replying
    DROP = "drop"              #: execute, send no reply
    CLOSE = "close"            #: close the connection instead of executing
    WRONG_ECHO = "wrong_echo"  #: execute, reply with another command id
    WRONG_DEVICE = "wrong_device"  #: execute, reply echoing another device
    BAD_LENGTH = "bad_length"  #: execute, reply declaring an impossible length (then close)
    FRAGMENT = "fragment"      #: execute, send the reply in small pieces


@dataclass
class FaultRule:
    """One armed fault. ``command``/``chip`` None match anything; ``remaining`` None = always."""

    action: FaultAction
    command: int | None = None
    chip: int | None = None
    remaining: int | None = 1
    code: int = int(ErrorCode.ERR_ILLEGAL_PAR)
    seconds: float = 0.0
    chunk: int = 1

    def matches(self, cmd: int, dev: int) -> bool:
        return (self.command is None or self.command == cmd) and (self.chip is None or self.chip == dev)


def _cmd_id(command) -> int | None:
    if command is None:
        return None
    if isinstance(command, str):
        return int(Cmd[command.upper()])
    return int(command) & CMD_MASK


class ControlFaults:
    """Faults to inject on the control connection (thread-safe; rules fire in the order armed).

    ``times``: how many matching requests the rule affects (None = every one).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self.fired: list[tuple[str, str]] = []  # (action, command name) in order

    def _arm(self, rule: FaultRule) -> FaultRule:
        if rule.remaining is not None and rule.remaining < 1:
            raise ValueError("times must be >= 1 or None (always)")
        with self._lock:
            self._rules.append(rule)
        return rule

    def refuse(self, command, code: int = ErrorCode.ERR_ILLEGAL_PAR, *, times: int | None = 1,
               chip: int | None = None) -> FaultRule:
        """Answer ``command`` with error ``code`` (e.g. ``make_error_code(6, 6)``) without executing it."""
        return self._arm(FaultRule(FaultAction.REFUSE, _cmd_id(command), chip, times, int(code)))

    def delay(self, seconds: float, command=None, *, times: int | None = 1, chip: int | None = None) -> FaultRule:
        """Hold the reply back for ``seconds``."""
        return self._arm(FaultRule(FaultAction.DELAY, _cmd_id(command), chip, times, seconds=float(seconds)))

    def drop_reply(self, command=None, *, times: int | None = 1, chip: int | None = None) -> FaultRule:
        """Execute but never reply."""
        return self._arm(FaultRule(FaultAction.DROP, _cmd_id(command), chip, times))

    def close_connection(self, command=None, *, times: int | None = 1) -> FaultRule:
        """Close the TCP connection when the request arrives."""
        return self._arm(FaultRule(FaultAction.CLOSE, _cmd_id(command), None, times))

    def corrupt_reply(self, kind: str = "echo", command=None, *, times: int | None = 1) -> FaultRule:
        """Send a broken reply: ``kind`` is "echo" (wrong command id), "device" or "length"."""
        action = {"echo": FaultAction.WRONG_ECHO, "device": FaultAction.WRONG_DEVICE,
                  "length": FaultAction.BAD_LENGTH}[kind]
        return self._arm(FaultRule(action, _cmd_id(command), None, times))

    def fragment_replies(self, chunk: int = 1, command=None, *, times: int | None = None) -> FaultRule:
        """Send replies ``chunk`` bytes per TCP send (exercises the client's partial reads)."""
        return self._arm(FaultRule(FaultAction.FRAGMENT, _cmd_id(command), None, times, chunk=max(1, int(chunk))))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def armed(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def take(self, cmd: int, dev: int) -> list[FaultRule]:
        """The rules that fire for this request (counts decremented, spent rules removed)."""
        out = []
        with self._lock:
            for rule in list(self._rules):
                if rule.matches(cmd, dev):
                    out.append(rule)
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self._rules.remove(rule)
            for rule in out:
                self.fired.append((rule.action.value, command_name(cmd)))
        return out


# ====================================================================== board state

class _Refuse(Exception):
    """Raised by a command handler: answer with this error code."""

    def __init__(self, code: int, why: str = ""):
        super().__init__(why)
        self.code = int(code)
        self.why = why


def _require(cond: bool, why: str, code: int = ErrorCode.ERR_ILLEGAL_PAR):
    if not cond:
        raise _Refuse(code, why)


class SimChip:
    """SPIDR-side state of one simulated chip, plus the physics view (``state``)."""

    def __init__(self, index: int, chip_state_cls):
        self.index = index
        self.device_id = default_device_id(index)
        self._chip_state_cls = chip_state_cls
        self.state = chip_state_cls()
        self.reset()
        self.ip_src = ip_to_int("127.0.0.1")
        self.ip_dest = ip_to_int("127.0.0.1")
        self.server_port = DEFAULT_UDP_BASE_PORT + index
        self.device_port = DEFAULT_UDP_BASE_PORT + index
        self.header_filter = 0x0000FFFF
        self.readout_speed = 640
        self.shutter_start = 0
        self.shutter_end = 0
        self.pixel_packets_offset = 0

    def reset(self) -> None:
        """Power-on state of the chip: default DACs, cleared pixels, general config 0."""
        self.dacs = {int(d): info.default for d, info in DACS.items()}
        self.gen_config = 0
        self.pll_config = 0
        self.pixel_words = np.zeros(MATRIX_SHAPE, dtype=np.uint8)
        self.ctpr = bytes(32)
        self.tp_period_phase = 0
        self.tp_number = 0
        self.outblock_config = 0
        self.slvs_config = 0
        self.pwrpulse_config = 0
        self.sense_dac = 0
        self.ext_dac = 0
        self.output_mask = 0xFF
        self.sync_physics()

    def sync_physics(self, bias_voltage: float | None = None, bias_enabled: bool | None = None,
                     powered: bool | None = None) -> None:
        """Publish the configuration to the physics ChipState (new arrays, never in place:
        the data thread may be reading the old ones)."""
        mask, trim, test = split_pixel_words(self.pixel_words)
        fields = {f.name for f in dataclasses.fields(self._chip_state_cls)}
        new = {
            "mask": mask, "trim": trim, "test": test,
            "dacs": {Dac(c).name: v for c, v in self.dacs.items()},
            "polarity": self.gen_config & 1, "operation_mode": self.gen_config & 0x6,
        }
        if bias_voltage is not None:
            new["bias_voltage"] = float(bias_voltage)
        if bias_enabled is not None:
            new["bias_enabled"] = bool(bias_enabled)
        if powered is not None:
            new["enabled"] = bool(powered)
        self.state = dataclasses.replace(self.state, **{k: v for k, v in new.items() if k in fields})


@dataclass
class _Client:
    sock: socket.socket
    peer: tuple
    finished: threading.Event = dataclasses.field(default_factory=threading.Event)
    killed: threading.Event = dataclasses.field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def kill(self) -> None:
        self.killed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _is_loopback(ip: int) -> bool:
    return ipaddress.IPv4Address(ip).is_loopback


# payload shapes: (min words, max words, raw bytes after the first word allowed)
_ANY0 = (0, 1, False)     # no argument (pymepix still sends one word)
_ONE = (1, 1, False)


class SimulatedSpidrBoard:
    """A SPIDR board in threads of this process.

    Parameters
    ----------
    host, port:
        Where the control server listens (port 0: a free port; see ``.port``).
    n_chips:
        Number of chips (1..4 on real boards; up to 16 here).
    model:
        A :class:`simulators.physics.PhysicsModel` for the data (default one if None).
    start_ticks:
        The timer's value at start *and after every timer reset* (RESET_TIMER,
        RESTART_TIMERS, T0_SYNC). 0 like a real board; ``2**30 - 2 * 40_000_000``
        starts runs two seconds before the 26.84 s wrap of the 30-bit time.
    collect_truth:
        Keep the ground truth of every datagram sent (all shutter openings), for tests:
        :meth:`truth`. Costs memory proportional to the hits sent.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 50000, n_chips: int = 1, model=None,
                 start_ticks: int = 0, collect_truth: bool = False):
        if not 1 <= int(n_chips) <= 16:
            raise ValueError("n_chips must be 1..16")
        self.host = host
        self._requested_port = int(port)
        self.n_chips = int(n_chips)
        if model is not None:
            model.validate()
        self.model = model
        self.start_ticks = int(start_ticks)
        from simulators.clock import BoardClock
        from simulators.physics import ChipState
        self.clock = BoardClock(start_ticks=self.start_ticks)
        self._chip_state_cls = ChipState
        self.faults = ControlFaults()
        self._data_faults = None
        self._lock = threading.RLock()            # board state
        self._client_lock = threading.Lock()      # the client slot
        self._client: _Client | None = None
        self._listener: socket.socket | None = None
        self._wake_r = self._wake_w = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._log = collections.deque(maxlen=200_000)
        self.refused_clients = 0
        self.connections = 0
        self._generator = None
        self._streamer = None
        self.collect_truth = bool(collect_truth)
        self._truth_parts = []                    # truth of finished streamers (collect_truth)
        #: board time the data side did not generate (no data sent for it), summed over shutter
        #: openings: to keep up with real time, and at shutter close (UdpDataStreamer.stop_skipped_s)
        self.skipped_s = 0.0
        self.stop_skipped_s = 0.0
        self._reset_board_state()

    # ------------------------------------------------------------------ state
    def _reset_board_state(self) -> None:
        self.chips = [SimChip(i, self._chip_state_cls) for i in range(self.n_chips)]
        self.registers: dict[int, int] = {
            int(Reg.CPU2TPX_WR): (1 << 25) | (1 << 24),
            int(Reg.TDC_ENABLE): 1,
            int(Reg.IPMUX_CONFIG): 0,
            int(Reg.PIXEL_FILTER): 0,
            int(Reg.UDPMON_PKTCOUNTER): 0,
            int(Reg.UDPPAUSE_PKTCOUNTER): 0,
        }
        for i in range(self.n_chips):
            self.registers[int(Reg.FE_GTX_CTRL_STAT) + 4 * i] = LINKS_OK
        self.trigger = [int(ShutterMode.EXT_RISING_FALLING), 10000, 5, 1, 0]
        self.readout_mode = None          # "ddriven" | "sequential" | None
        self.readout_paused = False
        self.decoders_enabled = False
        self.shutter_open = False
        self.shutter_counter = 0
        self.ext_shutter_counter = 0
        self.bias_enabled = False
        self.bias_dac = 0
        self.tpx_power = True
        self.power_pulsing = False
        self.busy = False
        self.log_level = 0
        self.time_of_day = (0, 0)
        self.chipboard = 0
        self.fan_percent = [50, 70]
        self.gpio = 0
        self.flash: dict[str, bool] = {}
        self.start_options = 0
        self._datagrams_before = [0] * self.n_chips   # from finished streamers
        self._udp_offset = 0
        self._triggers_before = 0
        self._trigger_offset = 0

    @property
    def bias_voltage(self) -> float:
        """The bias the supply is set to (0 when disabled), volts."""
        return 12 + self.bias_dac * 92 / 4095 if self.bias_enabled else 0.0

    def _sync_chip(self, chip: SimChip) -> None:
        chip.sync_physics(self.bias_voltage if self.bias_enabled else 0.0, self.bias_enabled, self.tpx_power)

    def _sync_all(self) -> None:
        for c in self.chips:
            self._sync_chip(c)

    @property
    def command_log(self) -> list[tuple[str, int, tuple]]:
        """Every request received, oldest first: (command name, dev_nr, payload words)."""
        return list(self._log)

    def clear_command_log(self) -> None:
        self._log.clear()

    def chip_state(self, chip: int):
        """The physics ChipState of ``chip`` as the data side sees it."""
        return self.chips[chip].state

    # ------------------------------------------------------------------ server lifecycle
    @property
    def port(self) -> int:
        """The TCP port actually listened on (valid after start())."""
        if self._listener is None:
            return self._requested_port
        return self._listener.getsockname()[1]

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self) -> "SimulatedSpidrBoard":
        """Listen and serve in background threads; returns self."""
        if self._listener is not None:
            return self
        self._stopping.clear()
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            lst.bind((self.host, self._requested_port))
        except OSError:
            lst.close()
            raise
        lst.listen(4)
        self._listener = lst
        self._wake_r, self._wake_w = socket.socketpair()
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"spidr-sim-accept-{self.port}",
                                          daemon=True)
        self._acceptor.start()
        # load the generator's numba kernels now, not when the first shutter opens
        from simulators.physics import warm_up
        threading.Thread(target=warm_up, name="spidr-sim-warm-up", daemon=True).start()
        log.info("simulated SPIDR board (%d chip(s)) listening on %s:%d", self.n_chips, self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop data, drop the client, stop listening, join the threads (idempotent)."""
        self._stopping.set()
        with self._lock:
            self._stop_stream()
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        with self._client_lock:
            client = self._client
        if client is not None:
            client.kill()
            if client.thread is not None:
                client.thread.join(timeout=5)
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
            self._acceptor = None
        with self._lock:
            self._stop_stream()  # in case a request in flight opened the shutter meanwhile
        for s in (self._listener, self._wake_r, self._wake_w):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._listener = self._wake_r = self._wake_w = None
        with self._client_lock:
            if self._client is not None:
                try:
                    self._client.sock.close()
                except OSError:
                    pass
            self._client = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def disconnect_client(self) -> bool:
        """Close the current client's connection now (a fault for tests). True if there was one."""
        with self._client_lock:
            client = self._client
        if client is None:
            return False
        client.kill()
        client.finished.wait(5)
        return True

    @property
    def client_connected(self) -> bool:
        with self._client_lock:
            return self._client is not None and not self._client.finished.is_set()

    def _accept_loop(self) -> None:
        sel_list = [self._listener, self._wake_r]
        while not self._stopping.is_set():
            try:
                ready, _, _ = select.select(sel_list, [], [])
            except (OSError, ValueError):
                break
            if self._wake_r in ready or self._stopping.is_set():
                break
            try:
                conn, peer = self._listener.accept()
            except OSError:
                continue
            self._admit(conn, peer)

    def _client_gone(self, c: _Client) -> bool:
        if c.finished.is_set():
            return True
        try:
            r, _, _ = select.select([c.sock], [], [], 0.5)
            if not r:
                return False
            return c.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (OSError, ValueError):
            return True

    def _admit(self, conn: socket.socket, peer) -> None:
        with self._client_lock:
            current = self._client
            if current is not None and not self._client_gone(current):
                self.refused_clients += 1
                log.warning("refusing control connection from %s:%d: %s:%d holds the board (one client at a time)",
                            peer[0], peer[1], current.peer[0], current.peer[1])
                try:
                    conn.close()
                except OSError:
                    pass
                return
            if current is not None:
                current.kill()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _Client(conn, peer)
            client.thread = threading.Thread(target=self._serve, args=(client,),
                                             name=f"spidr-sim-client-{peer[1]}", daemon=True)
            self._client = client
            self.connections += 1
            log.info("control client %s:%d connected", peer[0], peer[1])
            client.thread.start()

    # ------------------------------------------------------------------ request loop
    @staticmethod
    def _recv_exact(sock, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = sock.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _serve(self, client: _Client) -> None:
        sock = client.sock
        try:
            while not self._stopping.is_set() and not client.killed.is_set():
                head = self._recv_exact(sock, HEADER_SIZE)
                if head is None:
                    break
                hdr = parse_header(head)
                if hdr.length < HEADER_SIZE or hdr.length > MAX_MESSAGE_SIZE:
                    log.warning("request %s declares length %d: answering ERR_MSG_LENGTH and closing "
                                "(the stream cannot be resynchronised)", command_name(hdr.cmd), hdr.length)
                    self._send(client, encode_reply(hdr.cmd, hdr.dev, ErrorCode.ERR_MSG_LENGTH, [0]))
                    break
                body = self._recv_exact(sock, hdr.length - HEADER_SIZE) if hdr.length > HEADER_SIZE else b""
                if body is None:
                    break
                if not self._handle(client, hdr, body):
                    break
        finally:
            client.finished.set()
            try:
                sock.close()
            except OSError:
                pass
            with self._client_lock:
                if self._client is client:
                    self._client = None
            log.info("control client %s:%d disconnected", client.peer[0], client.peer[1])

    def _send(self, client: _Client, data: bytes, chunk: int = 0) -> bool:
        try:
            if chunk:
                for i in range(0, len(data), chunk):
                    client.sock.sendall(data[i:i + chunk])
                    if client.killed.wait(0.001):
                        return False
            else:
                client.sock.sendall(data)
            return True
        except OSError:
            return False

    def _handle(self, client: _Client, hdr, body: bytes) -> bool:
        """Process one request; False ends the connection."""
        cmd = hdr.cmd & CMD_MASK
        dev = hdr.dev
        noreply = bool(hdr.cmd & CMD_NOREPLY)
        echo = hdr.cmd & ~CMD_NOREPLY
        words_for_log = bytes_to_words(body[: (min(len(body), 16) // 4) * 4])
        self._log.append((command_name(cmd), dev, words_for_log))
        rules = self.faults.take(cmd, dev)
        actions = {r.action: r for r in rules}
        if FaultAction.CLOSE in actions:
            log.info("fault: closing the connection on %s", command_name(cmd))
            return False
        refuse = actions.get(FaultAction.REFUSE)
        if refuse is not None:
            log.info("fault: refusing %s with code 0x%X", command_name(cmd), refuse.code)
            error, words, data = refuse.code, [0], b""
        else:
            error, words, data = self._execute(cmd, dev, body)
        if noreply:
            return True
        if FaultAction.DROP in actions:
            log.info("fault: dropping the reply to %s", command_name(cmd))
            return True
        delay = actions.get(FaultAction.DELAY)
        if delay is not None:
            log.info("fault: delaying the reply to %s by %.3f s", command_name(cmd), delay.seconds)
            if client.killed.wait(delay.seconds):
                return False
        reply = bytearray(encode_reply(echo, dev, error, words, data))
        if FaultAction.WRONG_ECHO in actions:
            reply[0:4] = ((echo ^ 0x1) | CMD_REPLY).to_bytes(4, "big")
        if FaultAction.WRONG_DEVICE in actions:
            reply[12:16] = ((dev + 1) & 0xFFFFFFFF).to_bytes(4, "big")
        if FaultAction.BAD_LENGTH in actions:
            reply[4:8] = (MAX_MESSAGE_SIZE * 16).to_bytes(4, "big")
            self._send(client, bytes(reply))
            return False
        frag = actions.get(FaultAction.FRAGMENT)
        return self._send(client, bytes(reply), frag.chunk if frag else 0)

    def _execute(self, cmd: int, dev: int, body: bytes):
        """Run a command against the board state: (error code, reply words, reply bytes)."""
        name = command_name(cmd)
        entry = _HANDLERS.get(cmd)
        if entry is None:
            log.warning("unknown command 0x%03X (dev %d): ERR_UNKNOWN_CMD", cmd, dev)
            return int(ErrorCode.ERR_UNKNOWN_CMD), [0], b""
        handler, (min_w, max_w, has_bytes) = entry
        try:
            if has_bytes:
                _require(len(body) >= 4, f"{name} needs a first word", ErrorCode.ERR_MSG_LENGTH)
                words, data = list(bytes_to_words(body[:4])), body[4:]
            else:
                _require(len(body) % 4 == 0, f"{name} payload of {len(body)} bytes is not whole words",
                         ErrorCode.ERR_MSG_LENGTH)
                words, data = list(bytes_to_words(body)), b""
            _require(min_w <= len(words) <= max_w,
                     f"{name} takes {min_w}..{max_w} payload words, got {len(words)}", ErrorCode.ERR_MSG_LENGTH)
            _require(dev < self.n_chips, f"{name}: device {dev} does not exist ({self.n_chips} chip(s))")
            with self._lock:
                result = handler(self, dev, words, data)
        except _Refuse as r:
            log.warning("%s (dev %d) refused: %s (%s)", name, dev, ErrorCode(r.code & 0xFF).name, r.why)
            return r.code, [0], b""
        except Exception:  # noqa: BLE001 - a simulator bug must not kill the connection silently
            log.exception("%s (dev %d): simulator failure, answering ERR_ILLEGAL_PAR", name, dev)
            return int(ErrorCode.ERR_ILLEGAL_PAR), [0], b""
        if result is None:
            return 0, [0], b""
        if isinstance(result, tuple):
            w, d = result
            return 0, list(w), bytes(d)
        return 0, list(result), b""

    # ------------------------------------------------------------------ data side
    @staticmethod
    def _streamer_counts(streamer) -> list[int]:
        """Datagrams the board sent per chip: every generated one, including those a
        ``drop`` fault loses on the way (the network's loss, not the board's), so that
        board counter minus received shows the loss as on real hardware."""
        return [int(c.generated_datagrams) for c in streamer.counters]

    @staticmethod
    def _streamer_triggers(streamer) -> int:
        """TDC packets sent (every chip's stream carries the board's TDC words: count one chip's)."""
        return max((int(c.tdcs) for c in streamer.counters), default=0)

    def datagrams_sent(self) -> list[int]:
        """UDP datagrams sent per chip since the board started (all shutter openings)."""
        with self._lock:
            live = self._streamer_counts(self._streamer) if self._streamer is not None else [0] * self.n_chips
            return [a + b for a, b in zip(self._datagrams_before, live)]

    def _triggers_sent(self) -> int:
        live = self._streamer_triggers(self._streamer) if self._streamer is not None else 0
        return self._triggers_before + live

    def truth(self):
        """Ground truth (:class:`simulators.truth.Truth`) of everything the data side generated,
        all shutter openings, hits marked with the copies sent; needs ``collect_truth=True``."""
        from simulators.truth import Truth
        if not self.collect_truth:
            raise ConfigError("SimulatedSpidrBoard(collect_truth=True) is needed for truth()")
        with self._lock:
            parts = list(self._truth_parts)
            if self._streamer is not None:
                parts.append(self._streamer.truth())
        return Truth.concat(parts)

    @property
    def data_faults(self):
        """:class:`simulators.udp_stream.DataFaults` for the UDP data (None: none); takes effect at once."""
        return self._data_faults

    @data_faults.setter
    def data_faults(self, faults) -> None:
        with self._lock:
            self._data_faults = faults
            if self._streamer is not None:
                self._streamer.set_faults(faults)

    @property
    def streaming(self) -> bool:
        """True while the UDP streamer runs."""
        return self._streamer is not None

    @property
    def streamer(self):
        return self._streamer

    def _start_stream(self) -> None:
        if self._streamer is not None:
            return
        if self._stopping.is_set():
            log.info("board stopping: not starting the data stream")
            return
        from simulators.physics import HitGenerator, PhysicsModel
        from simulators.udp_stream import UdpDataStreamer
        if self._generator is None:
            model = self.model if self.model is not None else PhysicsModel()
            self._generator = HitGenerator(model, lambda i: self.chips[i].state, n_chips=self.n_chips)
        destinations = []
        for c in self.chips:
            destinations.append((int_to_ip(c.ip_dest), int(c.server_port)))
        self._streamer = UdpDataStreamer(self._generator, self.clock, destinations, faults=self._data_faults,
                                         collect_truth=self.collect_truth)
        self._streamer.start()
        log.info("data-driven readout: streaming to %s", ", ".join(f"{h}:{p}" for h, p in destinations))

    def _stop_stream(self) -> None:
        s = self._streamer
        if s is None:
            return
        try:
            s.close()
        except Exception:  # noqa: BLE001 - the board must stay usable; the failure is logged
            log.exception("the UDP streamer failed while stopping")
        if self.collect_truth:
            self._truth_parts.append(s.truth())
        self.skipped_s += s.skipped_s
        self.stop_skipped_s += s.stop_skipped_s
        counts = self._streamer_counts(s)
        self._datagrams_before = [a + b for a, b in zip(self._datagrams_before, counts)]
        self._triggers_before += self._streamer_triggers(s)
        self._streamer = None
        log.info("readout stopped: %s datagrams per chip so far", self._datagrams_before)

    # ------------------------------------------------------------------ register file
    def _read_register(self, addr: int) -> int:
        if addr == Reg.UDP_PKTCOUNTER:
            return (sum(self.datagrams_sent()) - self._udp_offset) & 0xFFFFFFFF
        base = int(Reg.PIXEL_PKTCOUNTER)
        if base <= addr < base + 4 * self.n_chips and (addr - base) % 4 == 0:
            i = (addr - base) // 4
            return (self.datagrams_sent()[i] - self.chips[i].pixel_packets_offset) & 0xFFFFFFFF
        if addr == Reg.TDC_TRIGGERCOUNTER:
            return (self._triggers_sent() - self._trigger_offset) & 0xFFFFFFFF
        if addr == Reg.DEVICES_AND_PORTS:
            return ((LINKS_PER_CHIP - 1) << 8) | self.n_chips
        mode, length_us, freq, count, delay_ns = self.trigger
        if addr == Reg.SHUTTERTRIG_CTRL:
            return mode & 0x7
        if addr == Reg.SHUTTERTRIG_CNT:
            return count
        if addr == Reg.SHUTTERTRIG_FREQ:
            return 40_000_000 // freq if freq else 0  # period in 25 ns ticks
        if addr == Reg.SHUTTERTRIG_LENGTH:
            return length_us * 40
        if addr == Reg.SHUTTERTRIG_DELAY:
            return delay_ns // 25
        return self.registers.get(addr, 0)

    def _write_register(self, addr: int, value: int) -> None:
        if addr == Reg.UDP_PKTCOUNTER:
            self._udp_offset = (sum(self.datagrams_sent()) - value)
            return
        base = int(Reg.PIXEL_PKTCOUNTER)
        if base <= addr < base + 4 * self.n_chips and (addr - base) % 4 == 0:
            i = (addr - base) // 4
            self.chips[i].pixel_packets_offset = self.datagrams_sent()[i] - value
            return
        if addr == Reg.TDC_TRIGGERCOUNTER:
            self._trigger_offset = self._triggers_sent() - value
            return
        _require(addr != Reg.DEVICES_AND_PORTS, "DEVICES_AND_PORTS is read-only")
        if addr == Reg.SHUTTERTRIG_CTRL:
            _require((value & 0x7) <= 6, "shutter mode 7 does not exist")
            self.trigger[0] = value & 0x7
        elif addr == Reg.SHUTTERTRIG_CNT:
            self.trigger[3] = value
        elif addr == Reg.SHUTTERTRIG_FREQ:
            self.trigger[2] = 40_000_000 // value if value else 0
        elif addr == Reg.SHUTTERTRIG_LENGTH:
            self.trigger[1] = value // 40
        elif addr == Reg.SHUTTERTRIG_DELAY:
            self.trigger[4] = value * 25
        else:
            self.registers[addr] = value

    # ------------------------------------------------------------------ monitoring values
    def _power(self, which: str) -> list[int]:
        mv = {"avdd": 1500, "dvdd": 1500, "vdd": 1500}[which]
        base = {"avdd": 480, "dvdd": 650, "vdd": 300}[which]
        ma = base * self.n_chips if self.tpx_power else 0
        if self.streaming and which == "dvdd":
            ma += 40 * self.n_chips
        return [mv, ma, mv * ma // 1000]

    def _bias_adc(self) -> int:
        if not self.bias_enabled:
            return 0
        v = self.bias_voltage
        return max(0, min(0xFFF, round((v * 10 * 4096 - 4095) / 1500)))


# ====================================================================== command handlers
# Each handler: (board, dev, words, data) -> None | reply words | (reply words, reply bytes).
# It runs under the board lock and raises _Refuse for an error reply.

_HANDLERS: dict[int, tuple] = {}


def _handler(cmd: Cmd, shape=_ANY0):
    def deco(fn):
        _HANDLERS[int(cmd)] = (fn, shape)
        return fn
    return deco


def _arg(words, default=0) -> int:
    return words[0] if words else default


def _simple_get(cmd: Cmd, getter):
    _HANDLERS[int(cmd)] = (lambda b, dev, w, d: [getter(b, dev, w)], _ANY0)


def _simple_set(cmd: Cmd, setter):
    def fn(b, dev, w, d):
        setter(b, dev, w[0])
    _HANDLERS[int(cmd)] = (fn, _ONE)


@_handler(Cmd.NOP)
def _nop(b, dev, w, d):
    return None


_simple_get(Cmd.GET_SOFTWVERSION, lambda b, dev, w: DEFAULT_SOFTWARE_VERSION)
_simple_get(Cmd.GET_FIRMWVERSION, lambda b, dev, w: DEFAULT_FIRMWARE_VERSION)
_simple_get(Cmd.GET_DEVICECOUNT, lambda b, dev, w: b.n_chips)
_simple_get(Cmd.GET_BOARDID, lambda b, dev, w: DEFAULT_BOARD_ID)
_simple_get(Cmd.GET_CHIPBOARDID, lambda b, dev, w: DEFAULT_CHIPBOARD_ID)
_simple_get(Cmd.GET_HEADERFILTER, lambda b, dev, w: b.chips[dev].header_filter)
_simple_get(Cmd.GET_DEVICEID, lambda b, dev, w: b.chips[dev].device_id)
_simple_get(Cmd.GET_IPADDR_SRC, lambda b, dev, w: b.chips[dev].ip_src)
_simple_get(Cmd.GET_IPADDR_DEST, lambda b, dev, w: b.chips[dev].ip_dest)
_simple_get(Cmd.GET_DEVICEPORT, lambda b, dev, w: b.chips[dev].device_port)
_simple_get(Cmd.GET_SERVERPORT, lambda b, dev, w: b.chips[dev].server_port)
_simple_get(Cmd.GET_EFUSES, lambda b, dev, w: 0x80000000 | b.chips[dev].device_id)
_simple_get(Cmd.GET_TPPERIODPHASE, lambda b, dev, w: b.chips[dev].tp_period_phase)
_simple_get(Cmd.GET_TPNUMBER, lambda b, dev, w: b.chips[dev].tp_number)
_simple_get(Cmd.GET_GENCONFIG, lambda b, dev, w: b.chips[dev].gen_config)
_simple_get(Cmd.GET_PLLCONFIG, lambda b, dev, w: b.chips[dev].pll_config)
_simple_get(Cmd.GET_OUTBLOCKCONFIG, lambda b, dev, w: b.chips[dev].outblock_config)
_simple_get(Cmd.GET_SLVSCONFIG, lambda b, dev, w: b.chips[dev].slvs_config)
_simple_get(Cmd.GET_PWRPULSECONFIG, lambda b, dev, w: b.chips[dev].pwrpulse_config)
_simple_get(Cmd.GET_READOUTSPEED, lambda b, dev, w: b.chips[dev].readout_speed)
_simple_get(Cmd.GET_LOCALTEMP, lambda b, dev, w: 38250)
_simple_get(Cmd.GET_REMOTETEMP, lambda b, dev, w: 43250 if b.tpx_power else 31000)
_simple_get(Cmd.GET_FPGATEMP, lambda b, dev, w: 40750)
_simple_get(Cmd.GET_HUMIDITY, lambda b, dev, w: 32)
_simple_get(Cmd.GET_PRESSURE, lambda b, dev, w: 1013)
_simple_get(Cmd.GET_SHUTTERCNTR, lambda b, dev, w: b.shutter_counter)
_simple_get(Cmd.GET_EXTSHUTTERCNTR, lambda b, dev, w: b.ext_shutter_counter)
_simple_get(Cmd.GET_GPIO, lambda b, dev, w: b.gpio)

for _cmd, _which in ((Cmd.GET_AVDD, "avdd"), (Cmd.GET_AVDD_NOW, "avdd"), (Cmd.GET_DVDD, "dvdd"),
                     (Cmd.GET_DVDD_NOW, "dvdd"), (Cmd.GET_VDD, "vdd"), (Cmd.GET_VDD_NOW, "vdd")):
    _HANDLERS[int(_cmd)] = ((lambda which: lambda b, dev, w, d: b._power(which))(_which), _ANY0)


@_handler(Cmd.GET_DEVICEIDS)
def _get_device_ids(b, dev, w, d):
    return [c.device_id for c in b.chips]


@_handler(Cmd.SET_HEADERFILTER, _ONE)
def _set_header_filter(b, dev, w, d):
    b.chips[dev].header_filter = w[0]


@_handler(Cmd.SET_IPADDR_SRC, _ONE)
def _set_ip_src(b, dev, w, d):
    b.chips[dev].ip_src = w[0]


@_handler(Cmd.SET_IPADDR_DEST, _ONE)
def _set_ip_dest(b, dev, w, d):
    if not _is_loopback(w[0]):
        log.warning("SET_IPADDR_DEST %s refused: the simulator only sends UDP to loopback addresses",
                    int_to_ip(w[0]))
        raise _Refuse(ErrorCode.ERR_ILLEGAL_PAR, f"{int_to_ip(w[0])} is not a loopback address")
    b.chips[dev].ip_dest = w[0]


@_handler(Cmd.SET_SERVERPORT, _ONE)
def _set_server_port(b, dev, w, d):
    _require(1 <= w[0] <= 65535, f"UDP port {w[0]} out of range")
    b.chips[dev].server_port = w[0]


@_handler(Cmd.GET_DAC)
def _get_dac(b, dev, w, d):
    code = _arg(w) & 0xFFFF
    _require(code in b.chips[dev].dacs, f"DAC code {code} does not exist")
    return [(code << 16) | b.chips[dev].dacs[code]]


@_handler(Cmd.SET_DAC, _ONE)
def _set_dac(b, dev, w, d):
    code, value = (w[0] >> 16) & 0xFFFF, w[0] & 0xFFFF
    _require(code in b.chips[dev].dacs, f"DAC code {code} does not exist")
    info = DACS[Dac(code)]
    _require(info.minimum <= value <= info.maximum,
             f"{info.name} = {value} outside [{info.minimum}, {info.maximum}]")
    b.chips[dev].dacs[code] = value
    b._sync_chip(b.chips[dev])


@_handler(Cmd.SET_DACS_DFLT)
def _set_dacs_default(b, dev, w, d):
    b.chips[dev].dacs = {int(k): info.default for k, info in DACS.items()}
    b._sync_chip(b.chips[dev])


@_handler(Cmd.CONFIG_CTPR)
def _config_ctpr(b, dev, w, d):
    return None


@_handler(Cmd.SET_CTPR, (1, 1, True))
def _set_ctpr(b, dev, w, d):
    _require(len(d) == 32, f"the CTPR is 32 bytes, got {len(d)}", ErrorCode.ERR_MSG_LENGTH)
    b.chips[dev].ctpr = bytes(d)


@_handler(Cmd.GET_CTPR)
def _get_ctpr(b, dev, w, d):
    return [], b.chips[dev].ctpr


def _reset_chip(b, dev):
    b.chips[dev].reset()
    b._sync_chip(b.chips[dev])


for _cmd in (Cmd.RESET_DEVICE, Cmd.REINIT_DEVICE):
    _HANDLERS[int(_cmd)] = (lambda b, dev, w, d: _reset_chip(b, dev), _ANY0)


def _reset_all_chips(b, dev, w, d):
    for i in range(b.n_chips):
        _reset_chip(b, i)


for _cmd in (Cmd.RESET_DEVICES, Cmd.REINIT_DEVICES):
    _HANDLERS[int(_cmd)] = (_reset_all_chips, _ANY0)


@_handler(Cmd.RESET_MODULE)
def _reset_module(b, dev, w, d):
    speed = _arg(w)
    _require(speed in {int(s) for s in ReadoutSpeed}, f"readout speed magic 0x{speed:X} is not known")
    b._stop_stream()
    b.shutter_open = False
    for i in range(b.n_chips):
        _reset_chip(b, i)


@_handler(Cmd.SET_PIXCONF, (1, 1, True))
def _set_pixconf(b, dev, w, d):
    first = w[0]
    _require(len(d) > 0 and len(d) % BYTES_PER_COLUMN == 0,
             f"SET_PIXCONF carries {len(d)} bytes, not whole columns of {BYTES_PER_COLUMN}", ErrorCode.ERR_MSG_LENGTH)
    n = len(d) // BYTES_PER_COLUMN
    _require(first + n <= N_COLUMNS, f"columns {first}..{first + n - 1} exceed 255")
    chip = b.chips[dev]
    words = chip.pixel_words.copy()
    words[first:first + n, :] = unpack_pixel_words(d).reshape(n, 256)
    chip.pixel_words = words
    b._sync_chip(chip)


@_handler(Cmd.GET_PIXCONF)
def _get_pixconf(b, dev, w, d):
    x = _arg(w)
    _require(x < N_COLUMNS, f"column {x} does not exist")
    return [x], b.chips[dev].pixel_words[x].tobytes()


@_handler(Cmd.RESET_PIXELS)
def _reset_pixels(b, dev, w, d):
    b.chips[dev].pixel_words = np.zeros(MATRIX_SHAPE, dtype=np.uint8)
    b._sync_chip(b.chips[dev])


@_handler(Cmd.SET_TPPERIODPHASE, _ONE)
def _set_tp_period_phase(b, dev, w, d):
    _require((w[0] >> 16) <= 0xF, "test pulse phase is 0..15")
    b.chips[dev].tp_period_phase = w[0]


_simple_set(Cmd.SET_TPNUMBER, lambda b, dev, v: setattr(b.chips[dev], "tp_number", v))


@_handler(Cmd.SET_GENCONFIG, _ONE)
def _set_genconfig(b, dev, w, d):
    v = w[0]
    _require(v <= 0xFFF, f"GENCONFIG 0x{v:X} has bits above the 12-bit register")
    _require((v & 0x6) != 0x6, "operation mode field 6 is not a mode")
    GeneralConfig.from_word(v)
    b.chips[dev].gen_config = v
    b._sync_chip(b.chips[dev])


@_handler(Cmd.SET_PLLCONFIG, _ONE)
def _set_pllconfig(b, dev, w, d):
    _require(w[0] <= 0xFFFF, "PLL config is 16 bits")
    b.chips[dev].pll_config = w[0]


@_handler(Cmd.SET_SENSEDAC, _ONE)
def _set_sense_dac(b, dev, w, d):
    _require(w[0] <= 0x1F, f"sense DAC code {w[0]} out of range")
    b.chips[dev].sense_dac = w[0]


_simple_set(Cmd.SET_EXTDAC, lambda b, dev, v: setattr(b.chips[dev], "ext_dac", v))
_simple_set(Cmd.SET_OUTBLOCKCONFIG, lambda b, dev, v: setattr(b.chips[dev], "outblock_config", v))
_simple_set(Cmd.SET_SLVSCONFIG, lambda b, dev, v: setattr(b.chips[dev], "slvs_config", v))
_simple_set(Cmd.SET_PWRPULSECONFIG, lambda b, dev, v: setattr(b.chips[dev], "pwrpulse_config", v))


@_handler(Cmd.UPLOAD_PACKET, (1, 1, True))
def _upload_packet(b, dev, w, d):
    _require(w[0] == len(d), f"UPLOAD_PACKET says {w[0]} bytes but carries {len(d)}", ErrorCode.ERR_MSG_LENGTH)


@_handler(Cmd.GET_TRIGCONFIG)
def _get_trigconfig(b, dev, w, d):
    return list(b.trigger)


@_handler(Cmd.SET_TRIGCONFIG, (4, 5, False))
def _set_trigconfig(b, dev, w, d):
    _require(w[0] <= int(ShutterMode.OPEN), f"shutter mode {w[0]} does not exist")
    b.trigger = list(w) + [0] * (5 - len(w))


@_handler(Cmd.AUTOTRIG_START)
def _autotrig_start(b, dev, w, d):
    if b.shutter_open:
        return None
    b.shutter_open = True
    b.shutter_counter += 1
    now = b.clock.now_ticks()
    for c in b.chips:
        c.shutter_start = now
    if b.readout_mode == "ddriven" and not b.readout_paused:
        b._start_stream()
    else:
        log.info("shutter opened without data-driven readout (mode %s): no data is sent", b.readout_mode)


@_handler(Cmd.AUTOTRIG_STOP)
def _autotrig_stop(b, dev, w, d):
    if not b.shutter_open:
        return None
    b.shutter_open = False
    now = b.clock.now_ticks()
    for c in b.chips:
        c.shutter_end = now
    b._stop_stream()


@_handler(Cmd.SEQ_READOUT)
def _seq_readout(b, dev, w, d):
    b._stop_stream()
    b.readout_mode = "sequential"
    b.readout_paused = False


@_handler(Cmd.DDRIVEN_READOUT)
def _ddriven_readout(b, dev, w, d):
    b.readout_mode = "ddriven"
    b.readout_paused = False
    if b.shutter_open:
        b._start_stream()


@_handler(Cmd.PAUSE_READOUT)
def _pause_readout(b, dev, w, d):
    b.readout_paused = True
    b._stop_stream()


@_handler(Cmd.GET_ADC)
def _get_adc(b, dev, w, d):
    chip = b.chips[dev]
    code = chip.sense_dac
    if code in chip.dacs:
        info = DACS[Dac(code)]
        return [chip.dacs[code] * 4095 // info.maximum]
    return [0]


@_handler(Cmd.GET_SPIDR_ADC)
def _get_spidr_adc(b, dev, w, d):
    channel = _arg(w) & 0xFFFF
    _require(channel <= 15, f"SPIDR ADC channel {channel} does not exist")
    return [b._bias_adc() if channel == 1 else 0x800]


@_handler(Cmd.GET_FANSPEED)
def _get_fanspeed(b, dev, w, d):
    fan = _arg(w)
    _require(fan in (0, 1), f"fan {fan} does not exist")
    return [b.fan_percent[fan] * 60]


@_handler(Cmd.SET_FANSPEED, _ONE)
def _set_fanspeed(b, dev, w, d):
    fan, pct = w[0] >> 16, w[0] & 0xFFFF
    _require(fan in (0, 1) and pct <= 100, f"fan {fan} / speed {pct}% out of range")
    b.fan_percent[fan] = pct


_simple_set(Cmd.SELECT_CHIPBOARD, lambda b, dev, v: setattr(b, "chipboard", v))


def _reset_timer(b, dev, w, d):
    b.clock.set(b.start_ticks)


for _cmd in (Cmd.RESTART_TIMERS, Cmd.RESET_TIMER, Cmd.T0_SYNC):
    _HANDLERS[int(_cmd)] = (_reset_timer, _ANY0)


@_handler(Cmd.GET_TIMER)
def _get_timer(b, dev, w, d):
    t = b.clock.now_ticks()
    return [t & 0xFFFFFFFF, (t >> 32) & 0xFFFF]


@_handler(Cmd.SET_TIMER, (2, 2, False))
def _set_timer(b, dev, w, d):
    _require(w[1] <= 0xFFFF, "the timer is 48 bits")
    b.clock.set((w[1] << 32) | w[0])


@_handler(Cmd.GET_SHUTTERSTART)
def _get_shutter_start(b, dev, w, d):
    t = b.chips[dev].shutter_start
    return [t & 0xFFFFFFFF, t >> 32]


@_handler(Cmd.GET_SHUTTEREND)
def _get_shutter_end(b, dev, w, d):
    t = b.chips[dev].shutter_end
    return [t & 0xFFFFFFFF, t >> 32]


@_handler(Cmd.RESET_COUNTERS)
def _reset_counters(b, dev, w, d):
    b.shutter_counter = 0
    b.ext_shutter_counter = 0
    b._write_register(int(Reg.UDP_PKTCOUNTER), 0)
    b._write_register(int(Reg.TDC_TRIGGERCOUNTER), 0)
    for i in range(b.n_chips):
        b._write_register(int(Reg.PIXEL_PKTCOUNTER) + 4 * i, 0)


def _flag_setter(attr: str, sync: bool = False):
    def fn(b, dev, w, d):
        _require(w[0] in (0, 1), f"{attr} takes 0 or 1, got {w[0]}")
        setattr(b, attr, bool(w[0]))
        if sync:
            b._sync_all()
    return fn


_HANDLERS[int(Cmd.PWRPULSE_ENA)] = (_flag_setter("power_pulsing"), _ONE)
_HANDLERS[int(Cmd.TPX_POWER_ENA)] = (_flag_setter("tpx_power", sync=True), _ONE)
_HANDLERS[int(Cmd.BIAS_SUPPLY_ENA)] = (_flag_setter("bias_enabled", sync=True), _ONE)
_HANDLERS[int(Cmd.DECODERS_ENA)] = (_flag_setter("decoders_enabled"), _ONE)


@_handler(Cmd.SET_BIAS_ADJUST, _ONE)
def _set_bias_adjust(b, dev, w, d):
    _require(w[0] <= 0xFFF, f"bias DAC {w[0]} out of range 0..4095")
    b.bias_dac = w[0]
    b._sync_all()


@_handler(Cmd.SET_OUTPUTMASK, _ONE)
def _set_output_mask(b, dev, w, d):
    _require(w[0] <= 0xFF, "output mask is 8 bits")
    b.chips[dev].output_mask = w[0]


@_handler(Cmd.SET_READOUTSPEED, _ONE)
def _set_readout_speed(b, dev, w, d):
    _require(w[0] in (40, 80, 160, 320, 640), f"readout speed {w[0]} Mbit/s not supported")
    b.chips[dev].readout_speed = w[0]


@_handler(Cmd.GET_SPIDRREG)
def _get_spidrreg(b, dev, w, d):
    addr = _arg(w)
    _require(addr % 4 == 0 and addr < 0x10000, f"register address 0x{addr:X} is not valid")
    return [addr, b._read_register(addr)]


@_handler(Cmd.SET_SPIDRREG, (2, 2, False))
def _set_spidrreg(b, dev, w, d):
    addr, value = w
    _require(addr % 4 == 0 and addr < 0x10000, f"register address 0x{addr:X} is not valid")
    b._write_register(addr, value)


_simple_set(Cmd.SET_GPIO, lambda b, dev, v: setattr(b, "gpio", v))


@_handler(Cmd.SET_GPIO_PIN, _ONE)
def _set_gpio_pin(b, dev, w, d):
    pin, value = w[0] >> 16, w[0] & 1
    _require(pin < 32, f"GPIO pin {pin} does not exist")
    b.gpio = (b.gpio & ~(1 << pin)) | (value << pin)


_HANDLERS[int(Cmd.SET_BUSY)] = (lambda b, dev, w, d: setattr(b, "busy", True), _ANY0)
_HANDLERS[int(Cmd.CLEAR_BUSY)] = (lambda b, dev, w, d: setattr(b, "busy", False), _ANY0)
_simple_set(Cmd.SET_LOGLEVEL, lambda b, dev, v: setattr(b, "log_level", v))


@_handler(Cmd.DISPLAY_INFO)
def _display_info(b, dev, w, d):
    log.info("DISPLAY_INFO: %d chip(s), shutter %s, readout %s", b.n_chips,
             "open" if b.shutter_open else "closed", b.readout_mode)


@_handler(Cmd.SET_TIMEOFDAY, (1, 2, False))
def _set_time_of_day(b, dev, w, d):
    b.time_of_day = (w[0], w[1] if len(w) > 1 else 0)


# flash storage: store/erase mark a block, valid answers whether it is stored
_FLASH = {Cmd.STORE_ADDRPORTS: "addrports", Cmd.STORE_DACS: "dacs", Cmd.STORE_REGISTERS: "registers",
          Cmd.STORE_PIXCONF: "pixconf"}
for _cmd, _block in _FLASH.items():
    _HANDLERS[int(_cmd)] = ((lambda blk: lambda b, dev, w, d: b.flash.__setitem__(blk, True))(_block), _ANY0)
    _erase = Cmd(int(_cmd) + 8)
    _valid = Cmd(int(_cmd) + 12)
    _HANDLERS[int(_erase)] = ((lambda blk: lambda b, dev, w, d: b.flash.__setitem__(blk, False))(_block), _ANY0)
    _HANDLERS[int(_valid)] = ((lambda blk: lambda b, dev, w, d: [int(b.flash.get(blk, False))])(_block), _ANY0)


@_handler(Cmd.STORE_STARTOPTS, _ONE)
def _store_startopts(b, dev, w, d):
    b.start_options = w[0]


_simple_get(Cmd.GET_STARTOPTS, lambda b, dev, w: b.start_options)


def _not_implemented(b, dev, w, d):
    raise _Refuse(ErrorCode.ERR_NOT_IMPLEMENTED, "raw flash access is not simulated")


_HANDLERS[int(Cmd.WRITE_FLASH)] = (_not_implemented, (0, 64, True))
_HANDLERS[int(Cmd.READ_FLASH)] = (_not_implemented, (0, 64, True))

del _cmd, _which, _block, _erase, _valid
assert len(DAC_NAMES) == 18
