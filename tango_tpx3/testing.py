"""Run the Timepix3 Tango system the way a facility does, from tests and the demo.

:func:`tango_system` brings up the whole thing against the SPIDR simulator and tears it
down again (see its docstring). :class:`DeviceServer` launches ``Tpx3Server <instance>`` as a separate process (its own
process group) with ``TANGO_HOST`` set, waits until its devices are exported and answer,
and tears it down (SIGTERM, then SIGKILL to the whole group). Together with
:func:`tango_tpx3.database.start_database` and :func:`tango_tpx3.database.register` this is
all a test or a demo needs::

    with start_database(tmpdir, port=0) as db:
        register(load_registration(path), db.tango_host)
        with DeviceServer("sim", db.tango_host, log_dir=tmpdir) as server:
            server.wait_ready(["sim/tpx3/board"])
            ...
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from tpx3lib.errors import ConfigError
from tango_tpx3.database import kill_process_group

__all__ = ["DeviceServer", "server_command", "wait_for_state", "TangoSystem", "tango_system",
           "simulator_registration", "free_tcp_port", "process_tree", "EventCollector", "BOARD", "CHIP", "PIPELINE", "DEVICES"]

#: Device names of the shipped example registration (tango_tpx3/config/simulator.yaml).
BOARD = "sim/tpx3/board"
CHIP = "sim/tpx3/chip0"
PIPELINE = "sim/tpx3/pipeline"
DEVICES = (BOARD, CHIP, PIPELINE)


def server_command() -> list[str]:
    """How to launch Tpx3Server: the console script next to this Python, else ``-m``."""
    script = Path(sys.executable).with_name("Tpx3Server")
    if script.exists():
        return [str(script)]
    found = shutil.which("Tpx3Server")
    if found:
        return [found]
    # Same server name either way: tango takes it from argv[0]'s base name, which main() sets.
    return [sys.executable, "-m", "tango_tpx3.server"]


class DeviceServer:
    """A ``Tpx3Server <instance>`` process started with ``TANGO_HOST``."""

    def __init__(self, instance: str, tango_host: str, *, log_dir: str | os.PathLike | None = None,
                 extra_args: Iterable[str] = (), env: dict[str, str] | None = None):
        self.instance = instance
        self.tango_host = tango_host
        self.log_path = Path(log_dir or ".") / f"Tpx3Server-{instance}.log"
        self.extra_args = list(extra_args)
        self.env = dict(os.environ if env is None else env)
        self.env["TANGO_HOST"] = tango_host
        self.process: subprocess.Popen | None = None

    def start(self) -> "DeviceServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = server_command() + [self.instance] + self.extra_args
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:])

    def wait_ready(self, devices: Iterable[str], timeout: float = 30.0) -> None:
        """Wait until every device is exported and answers; ConfigError (with the log) if not."""
        import tango
        pending = list(devices)
        deadline = time.monotonic() + timeout
        delay = 0.05
        last = ""
        while pending:
            if not self.running():
                raise ConfigError(f"Tpx3Server {self.instance} exited (code {self.process.returncode}); "
                                  f"its log ends with:\n{self.log_tail()}")
            name = pending[0]
            try:
                proxy = tango.DeviceProxy(f"tango://{self.tango_host}/{name}")
                proxy.set_timeout_millis(3000)
                proxy.ping()
                pending.pop(0)
                continue
            except tango.DevFailed as exc:
                last = exc.args[0].desc.strip() if exc.args else str(exc)
            if time.monotonic() > deadline:
                raise ConfigError(f"{name} of Tpx3Server {self.instance} not ready within {timeout:.0f} s "
                                  f"({last}); server log:\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.3)

    def stop(self, timeout: float = 8.0) -> None:
        if self.process is not None:
            kill_process_group(self.process.pid, self.process, timeout)

    def __enter__(self) -> "DeviceServer":
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for_state(proxy, states, timeout: float = 15.0, poll: float = 0.05):
    """Wait until ``proxy.state()`` is one of ``states``; return it, or raise AssertionError.

    Polls with a growing interval (never a busy loop); the timeout is a safety net, not a
    measurement.
    """
    import tango
    if isinstance(states, tango.DevState):
        states = (states,)
    deadline = time.monotonic() + timeout
    state = None
    while True:
        try:
            state = proxy.state()
        except tango.DevFailed:
            state = None
        if state in states:
            return state
        if time.monotonic() > deadline:
            status = ""
            try:
                status = proxy.status()
            except tango.DevFailed:
                pass
            raise AssertionError(f"{proxy.dev_name()} stayed {state} (status: {status!r}), "
                                 f"expected one of {[str(s) for s in states]}")
        time.sleep(poll)
        poll = min(poll * 1.3, 0.25)


@dataclass
class TangoSystem:
    """A running simulator + database + Tpx3Server, with proxies that read fresh values."""

    sim: object
    db: object
    server: DeviceServer
    udp: socket.socket | None
    workdir: Path
    instance: str
    proxies: dict = field(default_factory=dict)

    def proxy(self, name: str):
        import tango
        if name not in self.proxies:
            p = tango.DeviceProxy(f"tango://{self.db.tango_host}/{name}")
            p.set_timeout_millis(3000)
            p.set_source(tango.DevSource.DEV)   # fresh values, not the polling buffer
            self.proxies[name] = p
        return self.proxies[name]

    @property
    def board(self):
        return self.proxy(BOARD)

    @property
    def chip(self):
        return self.proxy(CHIP)

    @property
    def pipeline(self):
        return self.proxy(PIPELINE)

    def wait_all_on(self, timeout: float = 30.0) -> None:
        import tango
        for name in DEVICES:
            wait_for_state(self.proxy(name), tango.DevState.ON, timeout=timeout)

    def restart_server(self) -> None:
        """Stop the device server process and start it again (the database keeps running)."""
        self.server.stop()
        self.proxies.clear()
        self.server = DeviceServer(self.instance, self.db.tango_host, log_dir=self.workdir).start()
        self.server.wait_ready(DEVICES)


def simulator_registration(sim_port: int, udp_port: int | None = None, instance: str = "sim",
                           pipeline_properties: dict | None = None):
    """The shipped example registration, pointed at a simulator port (and, if given, a UDP data
    port as the pipeline's DataDestination); ``pipeline_properties`` are added to Tpx3Pipeline's."""
    import yaml
    from tango_tpx3.database import EXAMPLE_CONFIG, parse_registration

    doc = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    doc["server"] = f"Tpx3Server/{instance}"
    for dev in doc["devices"]:
        dev.pop("alias", None)   # aliases are global in a database: leave them to the real setup
        if dev["class"] == "SpidrBoard":
            dev["properties"]["SpidrAddress"] = f"127.0.0.1:{sim_port}"
        if dev["class"] == "Tpx3Pipeline":
            if udp_port:
                dev["properties"]["DataDestination"] = f"127.0.0.1:{udp_port}"
            dev["properties"].update(pipeline_properties or {})
    return parse_registration(doc, "simulator registration")


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (for a Karabo Bridge endpoint)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> set[int]:
    """Pids of the processes below ``pid`` (children, grandchildren, ...) that are alive."""
    import psutil
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True) if p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE}
    except psutil.NoSuchProcess:
        return set()


@contextlib.contextmanager
def tango_system(workdir: str | os.PathLike, *, instance: str = "test", hit_rate_hz: float = 500.0,
                 backend: str | None = None, pipeline_properties: dict | None = None, model=None):
    """Simulator, database and device server as a facility runs them; all torn down on exit.

    In order: the SPIDR simulator in this process (TCP on a free loopback port; ``model`` a
    :class:`simulators.physics.PhysicsModel`, default: no noise hits, ``hit_rate_hz``
    particles per second and the model's 10 Hz triggers); PyTango's sqlite database server (a
    separate process on a free port); the example registration pointed at the simulator, with
    ``PipelineBackend = backend`` (default: the device's default, the live pipeline, which binds
    free loopback UDP ports itself) and ``pipeline_properties`` (e.g. BridgeEndpoint,
    OutputDirectory); ``Tpx3Server <instance>`` as a separate process with TANGO_HOST set,
    waited for until its devices are exported and ON. With ``backend="board-counters"`` (no
    receiver of its own) a UDP socket of this process stands in for the data receiver
    (``system.udp``, the pipeline's DataDestination) so simulated data never reach another
    run's port. On exit (also on failure) everything is stopped in reverse order: process
    groups killed, simulator stopped, sockets closed.
    """
    from simulators.physics import PhysicsModel
    from simulators.spidr_board import SimulatedSpidrBoard
    from tango_tpx3.database import register, start_database

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        # A light, threshold-independent load: the simulator shares this process and two cores
        # with the database and the server, and these tests are about the control system, not
        # the physics (noise hits off, a modest particle rate).
        if model is None:
            model = PhysicsModel(hit_rate_hz=hit_rate_hz, noise_f0_hz=0.0)
        sim = SimulatedSpidrBoard("127.0.0.1", port=0, n_chips=1, model=model).start()
        stack.callback(sim.stop)
        props = dict(pipeline_properties or {})
        udp = None
        if backend:
            props["PipelineBackend"] = backend
        if backend == "board-counters":
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            stack.callback(udp.close)
            udp.bind(("127.0.0.1", 0))
            udp.setblocking(False)
        db = start_database(workdir, port=0)
        stack.callback(db.stop)
        register(simulator_registration(sim.port, udp.getsockname()[1] if udp else None, instance, props),
                 db.tango_host)
        server = DeviceServer(instance, db.tango_host, log_dir=workdir).start()
        system = TangoSystem(sim, db, server, udp, workdir, instance)
        stack.callback(lambda: system.server.stop())
        server.wait_ready(DEVICES)
        system.wait_all_on()
        yield system


class EventCollector:
    """Collects the events of one subscription (thread-safe), for tests and demos:
    ``values()``, ``counters()``, ``wait(predicate)``, ``close()`` to unsubscribe."""

    def __init__(self, proxy, attr, kind=None):
        import tango
        if kind is None:
            kind = tango.EventType.CHANGE_EVENT
        self.proxy = proxy
        self.items = []
        self.lock = threading.Lock()
        self.id = proxy.subscribe_event(attr, kind, self)

    def push_event(self, ev):
        with self.lock:
            self.items.append(ev)

    def values(self):
        with self.lock:
            return [e.attr_value.value for e in self.items if not e.err and e.attr_value is not None]

    def counters(self):
        with self.lock:
            return [e.ctr for e in self.items if not e.err]

    def wait(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)

    def close(self):
        self.proxy.unsubscribe_event(self.id)
