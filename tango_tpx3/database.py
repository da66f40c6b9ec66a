"""A real Tango database for the Timepix3 devices, and declarative device registration.

Two jobs, both usable from the ``tpx3 tango`` CLI, from tests and from the demo:

- :func:`start_database` runs PyTango's own database server (``tango.databaseds.database``,
  the same DataBase device a facility runs, stored in sqlite) as a separate process on
  loopback and returns a :class:`DatabaseHandle` once it answers.
- :func:`register_from_yaml` / :func:`register` put a server instance, its devices and their
  properties into *any* Tango database (the embedded one or a facility's MariaDB-backed
  DataBaseds) from a small YAML file, validated against the device classes' declared
  properties. Running it twice changes nothing.

Nothing here is needed by the devices themselves: they only see ``TANGO_HOST``.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tpx3lib.errors import ConfigError

__all__ = [
    "DatabaseHandle",
    "kill_process_group",
    "start_database",
    "stop_pid_file",
    "read_pid_file",
    "DEFAULT_DIR",
    "DB_FILE_NAME",
    "PID_FILE_NAME",
    "LOG_FILE_NAME",
    "DeviceSpec",
    "ServerSpec",
    "load_registration",
    "parse_registration",
    "register",
    "register_from_yaml",
    "tango_host_from_env",
    "split_tango_host",
    "wait_for_database",
    "EXAMPLE_CONFIG",
]

#: Where ``tpx3 tango db`` keeps its sqlite file, log and pid file unless told otherwise.
DEFAULT_DIR = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "tpx3" / "tango"
DB_FILE_NAME = "tango_database.db"
PID_FILE_NAME = "databaseds.json"
LOG_FILE_NAME = "databaseds.log"
#: The example registration for the simulator, shipped inside the package.
EXAMPLE_CONFIG = Path(__file__).parent / "config" / "simulator.yaml"

_READY = re.compile(r"Database DS listening on: host=(\S+), port=(\d+)")


# --------------------------------------------------------------------------------------------
# Starting and stopping the embedded database server
# --------------------------------------------------------------------------------------------

@dataclass
class DatabaseHandle:
    """A running embedded database server (a child process in its own process group)."""

    process: subprocess.Popen | None
    pid: int
    host: str
    port: int
    db_file: Path
    log_file: Path

    @property
    def tango_host(self) -> str:
        """The value for ``TANGO_HOST``, e.g. ``127.0.0.1:10000``."""
        return f"{self.host}:{self.port}"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A copy of ``base`` (default ``os.environ``) with ``TANGO_HOST`` pointing here."""
        env = dict(os.environ if base is None else base)
        env["TANGO_HOST"] = self.tango_host
        return env

    def is_running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _pid_is_databaseds(self.pid)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after ``timeout``)."""
        kill_process_group(self.pid, self.process, timeout)

    def __enter__(self) -> "DatabaseHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def kill_process_group(pid: int, process: subprocess.Popen | None, timeout: float) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started."""
    def alive() -> bool:
        if process is not None:
            return process.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not _is_zombie(pid)

    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not alive():
            break
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:  # not a group leader we own: fall back to the process itself
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                continue
        else:
            deadline = time.monotonic() + timeout
            while alive() and time.monotonic() < deadline:
                time.sleep(0.05)
    # Whatever else is left in the group (the server forks nothing, but be thorough).
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _is_zombie(pid: int) -> bool:
    try:
        import psutil
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except Exception:  # noqa: BLE001 - gone or unknowable: treat as not a zombie
        return False


def _pid_is_databaseds(pid: int) -> bool:
    try:
        import psutil
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and "tango.databaseds.database" in " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - no such process, or not ours
        return False


def start_database(
    directory: str | os.PathLike | None = None,
    port: int = 10000,
    host: str = "127.0.0.1",
    *,
    db_file: str | os.PathLike | None = None,
    timeout: float = 20.0,
    detach: bool = False,
) -> DatabaseHandle:
    """Start PyTango's sqlite database server and return once it answers.

    ``directory`` holds ``tango_database.db`` (created on first start, kept afterwards so
    registrations and memorized attribute values survive restarts) and ``databaseds.log``.
    ``port=0`` lets the system choose a free port (what tests use). ``db_file=":memory:"``
    keeps nothing on disk. ``detach=True`` keeps the server running after this process exits
    (``tpx3 tango db --background``); stop it with :meth:`DatabaseHandle.stop` or
    :func:`stop_pid_file`.

    Raises :class:`ConfigError` with the server's own words when it does not come up
    (e.g. the port is taken).
    """
    directory = Path(directory) if directory is not None else DEFAULT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    db_path = Path(db_file) if db_file is not None else directory / DB_FILE_NAME
    log_path = directory / LOG_FILE_NAME
    env = dict(os.environ)
    env["PYTANGO_DATABASE_NAME"] = str(db_path)
    env.pop("TANGO_HOST", None)  # the server would otherwise try to register with another database
    cmd = [sys.executable, "-m", "tango.databaseds.database",
           "--host", host, "--port", str(int(port)), "--print-host-port", "2"]
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        start_offset = log.tell()
        proc = subprocess.Popen(
            cmd, env=env, cwd=str(directory), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        real_host, real_port = _wait_ready_line(proc, log_path, start_offset, timeout)
        handle = DatabaseHandle(proc, proc.pid, real_host, real_port, db_path, log_path)
        wait_for_database(handle.tango_host, timeout=max(1.0, timeout / 2))
    except BaseException:
        kill_process_group(proc.pid, proc, 3.0)
        raise
    if detach:
        # Forget the Popen so that no ResourceWarning/zombie bookkeeping ties it to us.
        handle.process = None
    return handle


def _wait_ready_line(proc: subprocess.Popen, log_path: Path, offset: int, timeout: float) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        m = _READY.search(text)
        if m:
            return m.group(1), int(m.group(2))
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(text.strip().splitlines()[-8:]) or "(no output)"
            why = (f"exited with code {proc.returncode}" if proc.poll() is not None
                   else f"did not answer within {timeout:.0f} s")
            raise ConfigError(f"the Tango database server {why}; its log ({log_path}) ends with:\n{tail}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def wait_for_database(tango_host: str, timeout: float = 10.0) -> None:
    """Return once a Tango database at ``host:port`` answers a request; ConfigError otherwise."""
    import tango
    host, port = split_tango_host(tango_host)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            tango.Database(host, port).get_info()
            return
        except tango.DevFailed as exc:
            last = exc
            time.sleep(0.1)
    raise ConfigError(f"no Tango database answers at {tango_host}: {_df_text(last)}")


def _df_text(exc: Exception | None) -> str:
    import tango
    if isinstance(exc, tango.DevFailed) and exc.args:
        return exc.args[0].desc.strip()
    return str(exc)


def write_pid_file(handle: DatabaseHandle, directory: str | os.PathLike) -> Path:
    path = Path(directory) / PID_FILE_NAME
    path.write_text(json.dumps({
        "pid": handle.pid, "host": handle.host, "port": handle.port,
        "db_file": str(handle.db_file), "log_file": str(handle.log_file),
    }, indent=1) + "\n")
    return path


def read_pid_file(directory: str | os.PathLike | None = None) -> DatabaseHandle | None:
    """The database started with ``--background`` in ``directory``, if it still runs."""
    path = Path(directory if directory is not None else DEFAULT_DIR) / PID_FILE_NAME
    try:
        info = json.loads(path.read_text())
        handle = DatabaseHandle(None, int(info["pid"]), info["host"], int(info["port"]),
                                Path(info["db_file"]), Path(info["log_file"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return handle if _pid_is_databaseds(handle.pid) else None


def stop_pid_file(directory: str | os.PathLike | None = None) -> DatabaseHandle | None:
    """Stop the background database of ``directory``; returns it, or None if none was running."""
    directory = Path(directory if directory is not None else DEFAULT_DIR)
    handle = read_pid_file(directory)
    if handle is not None:
        handle.stop()
    (directory / PID_FILE_NAME).unlink(missing_ok=True)
    return handle


def split_tango_host(tango_host: str) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``; the first of a comma-separated list."""
    first = tango_host.split(",")[0].strip()
    host, sep, port = first.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"TANGO_HOST must look like host:port, got {tango_host!r}")
    return host, int(port)


def tango_host_from_env() -> str | None:
    """``TANGO_HOST`` from the environment (or ``/etc/tangorc``), else None."""
    import tango
    try:
        value = tango.ApiUtil.get_env_var("TANGO_HOST")
    except Exception:  # noqa: BLE001
        value = None
    return value or os.environ.get("TANGO_HOST") or None


# --------------------------------------------------------------------------------------------
# Declarative registration
# --------------------------------------------------------------------------------------------

_NAME_PART = r"[A-Za-z0-9_\-\.]+"
_DEVICE_NAME = re.compile(rf"^{_NAME_PART}/{_NAME_PART}/{_NAME_PART}$")
_SERVER_NAME = re.compile(rf"^{_NAME_PART}/{_NAME_PART}$")
_ALIAS = re.compile(r"^[A-Za-z0-9_\-\.]+$")


@dataclass
class DeviceSpec:
    name: str
    klass: str
    properties: dict[str, list[str]] = field(default_factory=dict)
    alias: str | None = None


@dataclass
class ServerSpec:
    server: str  # "Exec/instance"
    devices: list[DeviceSpec] = field(default_factory=list)


def _known_classes() -> dict[str, dict[str, Any]]:
    """Device classes of Tpx3Server and their declared device properties (name -> dtype)."""
    from tango_tpx3.server import DEVICE_CLASSES, SERVER_NAME
    from tango.server import device_property
    out: dict[str, dict[str, Any]] = {}
    for cls in DEVICE_CLASSES:
        props = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, device_property):
                    props[name] = value
        out[cls.__name__] = props
    out["__server__"] = SERVER_NAME  # type: ignore[assignment]
    return out


def _as_strings(value: Any, where: str) -> list[str]:
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    out = []
    for item in items:
        if isinstance(item, (dict, list, tuple)) or item is None:
            raise ConfigError(f"{where}: expected a scalar or a list of scalars, got {item!r}")
        out.append(("true" if item else "false") if isinstance(item, bool) else str(item))
    return out


def _check_property_value(prop, values: list[str], where: str) -> None:
    """Check values against a device_property's dtype and, for known names, their format."""
    import tango
    dtype = getattr(prop, "dtype", None)
    scalar = dtype not in (tango.CmdArgType.DevVarStringArray, tango.CmdArgType.DevVarLongArray,
                           tango.CmdArgType.DevVarDoubleArray, tango.CmdArgType.DevVarShortArray,
                           tango.CmdArgType.DevVarFloatArray, tango.CmdArgType.DevVarBooleanArray,
                           tango.CmdArgType.DevVarULongArray, tango.CmdArgType.DevVarLong64Array,
                           tango.CmdArgType.DevVarULong64Array, tango.CmdArgType.DevVarUShortArray)
    if scalar and len(values) != 1:
        raise ConfigError(f"{where}: expected one value, got {len(values)}")
    integer = {tango.CmdArgType.DevLong, tango.CmdArgType.DevShort, tango.CmdArgType.DevULong,
               tango.CmdArgType.DevUShort, tango.CmdArgType.DevLong64, tango.CmdArgType.DevULong64,
               tango.CmdArgType.DevVarLongArray, tango.CmdArgType.DevVarShortArray,
               tango.CmdArgType.DevVarULongArray, tango.CmdArgType.DevVarLong64Array,
               tango.CmdArgType.DevVarULong64Array, tango.CmdArgType.DevVarUShortArray}
    real = {tango.CmdArgType.DevDouble, tango.CmdArgType.DevFloat,
            tango.CmdArgType.DevVarDoubleArray, tango.CmdArgType.DevVarFloatArray}
    boolean = {tango.CmdArgType.DevBoolean, tango.CmdArgType.DevVarBooleanArray}
    for v in values:
        if dtype in integer:
            try:
                iv = int(v, 0)
            except ValueError:
                raise ConfigError(f"{where}: expected an integer, got {v!r}") from None
            if iv < 0 and dtype in {tango.CmdArgType.DevULong, tango.CmdArgType.DevUShort,
                                    tango.CmdArgType.DevULong64}:
                raise ConfigError(f"{where}: expected an integer >= 0, got {v!r}")
        elif dtype in real:
            try:
                float(v)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {v!r}") from None
        elif dtype in boolean:
            if v.lower() not in ("true", "false", "1", "0"):
                raise ConfigError(f"{where}: expected true or false, got {v!r}")
    validator = getattr(prop, "tpx3_validate", None)
    if validator is not None:
        for v in values:
            try:
                validator(v)
            except (ValueError, ConfigError) as exc:
                raise ConfigError(f"{where}: {exc}") from None


def parse_registration(data: Any, source: str = "<config>") -> list[ServerSpec]:
    """Validate a registration document (already parsed from YAML) and return its servers.

    Accepted layouts::

        server: Tpx3Server/sim          # one server
        devices:
          - name: sim/tpx3/board
            class: SpidrBoard
            alias: tpx3-board           # optional
            properties:
              SpidrAddress: 127.0.0.1:50000

        servers:                        # several servers
          - server: Tpx3Server/lab
            devices: [...]
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with 'server' and 'devices' (or 'servers')")
    if "servers" in data:
        extra = set(data) - {"servers"}
        if extra:
            raise ConfigError(f"{source}: unknown top-level keys {sorted(extra)} next to 'servers'")
        raw_servers = data["servers"]
        if not isinstance(raw_servers, list) or not raw_servers:
            raise ConfigError(f"{source}: 'servers' must be a non-empty list")
        entries = [(f"servers[{i}]", s) for i, s in enumerate(raw_servers)]
    else:
        entries = [("", data)]
    known = _known_classes()
    our_exec = known.pop("__server__")
    servers: list[ServerSpec] = []
    seen_devices: dict[str, str] = {}
    seen_aliases: dict[str, str] = {}
    for where, entry in entries:
        pre = f"{source}: {where}." if where else f"{source}: "
        if not isinstance(entry, dict):
            raise ConfigError(f"{pre.rstrip('. ')}: expected a mapping with 'server' and 'devices'")
        extra = set(entry) - {"server", "devices"}
        if extra:
            raise ConfigError(f"{pre}unknown keys {sorted(extra)} (allowed: server, devices)")
        server = entry.get("server")
        if not isinstance(server, str) or not _SERVER_NAME.match(server):
            raise ConfigError(f"{pre}server: expected 'Executable/instance' (e.g. Tpx3Server/lab), got {server!r}")
        exec_name = server.split("/")[0]
        devices = entry.get("devices")
        if not isinstance(devices, list) or not devices:
            raise ConfigError(f"{pre}devices: expected a non-empty list of devices")
        spec = ServerSpec(server)
        for j, dev in enumerate(devices):
            dwhere = f"{pre}devices[{j}]"
            if not isinstance(dev, dict):
                raise ConfigError(f"{dwhere}: expected a mapping with name, class and properties")
            extra = set(dev) - {"name", "class", "properties", "alias"}
            if extra:
                raise ConfigError(f"{dwhere}: unknown keys {sorted(extra)} (allowed: name, class, alias, properties)")
            name = dev.get("name")
            if not isinstance(name, str) or not _DEVICE_NAME.match(name):
                raise ConfigError(f"{dwhere}.name: expected 'domain/family/member', got {name!r}")
            if name.lower() in seen_devices:
                raise ConfigError(f"{dwhere}.name: {name} is listed twice (also at {seen_devices[name.lower()]})")
            seen_devices[name.lower()] = dwhere
            dwhere = f"{pre}devices[{j}] ({name})"
            klass = dev.get("class")
            if not isinstance(klass, str) or not klass:
                raise ConfigError(f"{dwhere}.class: missing device class")
            declared = known.get(klass)
            if exec_name == our_exec and declared is None:
                raise ConfigError(f"{dwhere}.class: {klass!r} is not a class of {our_exec} "
                                  f"(choose from {', '.join(sorted(known))})")
            alias = dev.get("alias")
            if alias is not None:
                if not isinstance(alias, str) or not _ALIAS.match(alias):
                    raise ConfigError(f"{dwhere}.alias: expected a plain word, got {alias!r}")
                if alias.lower() in seen_aliases:
                    raise ConfigError(f"{dwhere}.alias: {alias!r} is also the alias of {seen_aliases[alias.lower()]}")
                seen_aliases[alias.lower()] = name
            props = dev.get("properties") or {}
            if not isinstance(props, dict):
                raise ConfigError(f"{dwhere}.properties: expected a mapping of property names to values")
            values: dict[str, list[str]] = {}
            for pname, pvalue in props.items():
                pwhere = f"{dwhere}.properties.{pname}"
                strings = _as_strings(pvalue, pwhere)
                if declared is not None:
                    if pname not in declared:
                        raise ConfigError(f"{pwhere}: {klass} has no property {pname!r} "
                                          f"(it has: {', '.join(sorted(declared)) or 'none'})")
                    _check_property_value(declared[pname], strings, pwhere)
                values[str(pname)] = strings
            if declared is not None:
                missing = [p for p, d in declared.items() if getattr(d, "mandatory", False) and p not in values]
                if missing:
                    raise ConfigError(f"{dwhere}.properties: {klass} needs {', '.join(missing)}")
            spec.devices.append(DeviceSpec(name, klass, values, alias))
        servers.append(spec)
    # Cross-device references inside the file: a chip's or pipeline's Board must be a SpidrBoard.
    classes = {d.name.lower(): d.klass for s in servers for d in s.devices}
    for s in servers:
        for d in s.devices:
            for ref_prop, ref_class in (("Board", "SpidrBoard"),):
                for ref in d.properties.get(ref_prop, []):
                    got = classes.get(ref.lower())
                    if got is not None and got != ref_class:
                        raise ConfigError(f"{source}: {d.name}.{ref_prop} names {ref}, a {got}, not a {ref_class}")
            for ref in d.properties.get("Chips", []):
                got = classes.get(ref.lower())
                if got is not None and got != "Timepix3Chip":
                    raise ConfigError(f"{source}: {d.name}.Chips names {ref}, a {got}, not a Timepix3Chip")
    return servers


def load_registration(path: str | os.PathLike) -> list[ServerSpec]:
    """Read and validate a registration YAML file."""
    import yaml
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read registration file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_registration(data, str(path))


def register(servers: Iterable[ServerSpec], tango_host: str | None = None) -> list[str]:
    """Put servers, devices, aliases and properties into the database; return what changed.

    Idempotent: a second run reports nothing changed. A device registered before under
    another server or class is moved (reported). Properties not named in the file are left
    alone (memorized attribute values live in attribute properties and are never touched).
    """
    import tango
    host = tango_host or tango_host_from_env()
    if not host:
        raise ConfigError("no Tango database given: set TANGO_HOST or pass tango_host")
    h, p = split_tango_host(host)
    try:
        db = tango.Database(h, p)
    except tango.DevFailed as exc:
        raise ConfigError(f"no Tango database answers at {host}: {_df_text(exc)}") from None
    changes: list[str] = []
    for spec in servers:
        for dev in spec.devices:
            try:
                info = db.get_device_info(dev.name)
                current = (info.ds_full_name, info.class_name)
            except tango.DevFailed:
                current = None
            if current is None or current[0].lower() != spec.server.lower() or current[1] != dev.klass:
                di = tango.DbDevInfo()
                di.name, di._class, di.server = dev.name, dev.klass, spec.server
                db.add_device(di)
                if current is None:
                    changes.append(f"added {dev.name} ({dev.klass}) to {spec.server}")
                else:
                    changes.append(f"moved {dev.name} from {current[0]} ({current[1]}) "
                                   f"to {spec.server} ({dev.klass})")
            if dev.properties:
                old = db.get_device_property(dev.name, list(dev.properties))
                diff = {k: v for k, v in dev.properties.items() if list(old.get(k, [])) != v}
                if diff:
                    db.put_device_property(dev.name, diff)
                    for k, v in diff.items():
                        changes.append(f"set {dev.name}.{k} = {', '.join(v)}")
            if dev.alias:
                try:
                    have = db.get_alias_from_device(dev.name)
                except tango.DevFailed:
                    have = None
                if have != dev.alias:
                    try:
                        owner = db.get_device_from_alias(dev.alias)
                    except tango.DevFailed:
                        owner = None
                    if owner and owner.lower() != dev.name.lower():
                        raise ConfigError(f"alias {dev.alias!r} already belongs to {owner}")
                    if have:
                        db.delete_device_alias(have)
                    db.put_device_alias(dev.name, dev.alias)
                    changes.append(f"alias {dev.alias} -> {dev.name}")
    return changes


def register_from_yaml(path: str | os.PathLike, tango_host: str | None = None) -> list[str]:
    """Validate ``path`` and register what it declares in the database at ``tango_host``."""
    return register(load_registration(path), tango_host)
