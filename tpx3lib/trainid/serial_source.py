"""The USB train-ID receiver: a serial line (115200 baud) with one frame per train.

:class:`SerialTrainIdReceiver` runs a reader thread on a pyserial port (any path
pyserial opens, including a pseudo-terminal), parses frames with
:class:`~tpx3lib.trainid.frames.FrameParser` and hands each good frame with its
host arrival time (the clock read when the read returning the frame's last byte
came back) to a callback. :class:`SerialTrainIdSource` is the train-ID source
built on it (matching rules in :mod:`tpx3lib.trainid.matching`).
"""
from __future__ import annotations

import threading
import time as _time
from typing import Callable

import serial

from ..errors import ConfigError
from .errors import TrainIdSourceError
from .frames import FrameParser, TrainIdFrame
from .matching import ObservedTrainIdSource

__all__ = ["SerialTrainIdReceiver", "SerialTrainIdSource", "DEFAULT_BAUDRATE"]

DEFAULT_BAUDRATE = 115200


class SerialTrainIdReceiver:
    """Reads train-ID frames from a serial port in a thread.

    Parameters
    ----------
    port : device path (e.g. ``/dev/ttyUSB0`` or a pty slave path).
    on_frame : called as ``on_frame(frame, host_time)`` from the reader thread.
    baudrate : 115200 for the receiver.
    clock : host clock (Unix seconds).
    read_timeout_s : how often the thread looks at its stop flag.

    Counters: those of the parser (``frames``, ``crc_errors``, ``malformed``,
    ``garbage_bytes``) plus ``bytes`` and ``read_errors``. ``last_frame`` is the
    newest good frame (its beam mode included).
    """

    def __init__(self, port: str, on_frame: Callable[[TrainIdFrame, float], None] | None = None, *,
                 baudrate: int = DEFAULT_BAUDRATE, clock: Callable[[], float] = _time.time,
                 read_timeout_s: float = 0.05):
        if read_timeout_s <= 0:
            raise ConfigError("read_timeout_s must be > 0")
        self.port = str(port)
        self.baudrate = int(baudrate)
        self.on_frame = on_frame
        self._clock = clock
        self._read_timeout = float(read_timeout_s)
        self._parser = FrameParser()
        self._extra = dict(bytes=0, read_errors=0)
        self._serial: serial.Serial | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.last_frame: TrainIdFrame | None = None
        self.error: BaseException | None = None

    @property
    def counters(self) -> dict[str, int]:
        return {**self._parser.counters, **self._extra}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "SerialTrainIdReceiver":
        if self._thread is not None:
            return self
        try:
            self._serial = serial.Serial(self.port, self.baudrate, timeout=self._read_timeout)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TrainIdSourceError(f"cannot open train-ID receiver port {self.port}: {exc}") from exc
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"trainid-serial-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and close the port (safe to call twice)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._serial is not None:
            self._serial.close()
            self._serial = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _run(self) -> None:
        ser = self._serial
        while not self._stop.is_set():
            try:
                data = ser.read(max(1, ser.in_waiting))
            except (serial.SerialException, OSError) as exc:
                # A vanished device (USB unplugged, pty closed) does not come back on the
                # same handle: record why and end the thread (``running`` turns False).
                self._extra["read_errors"] += 1
                self.error = exc
                break
            if not data:
                continue
            now = self._clock()
            self._extra["bytes"] += len(data)
            for frame in self._parser.feed(data):
                self.last_frame = frame
                if self.on_frame is not None:
                    self.on_frame(frame, now)


class SerialTrainIdSource(ObservedTrainIdSource):
    """Train IDs from the USB receiver on ``port``; ``start()``/``stop()`` run its reader.

    Keyword arguments as :class:`~tpx3lib.trainid.matching.ObservedTrainIdSource`,
    plus ``baudrate``. :meth:`stats` adds the receiver's counters (``frames``, ``crc_errors``,
    ``malformed``, ``garbage_bytes``, ``bytes``, ``read_errors``).
    """

    def __init__(self, port: str, *, baudrate: int = DEFAULT_BAUDRATE, **kwargs):
        super().__init__(**kwargs)
        self.receiver = SerialTrainIdReceiver(port, self._on_frame, baudrate=baudrate, clock=self._clock)

    def _on_frame(self, frame: TrainIdFrame, host_time: float) -> None:
        self.observe(frame.train_id, host_time)

    def start(self) -> "SerialTrainIdSource":
        self.receiver.start()
        return self

    def stop(self) -> None:
        self.receiver.stop()

    def stats(self) -> dict[str, int]:
        return {**self.counters, **self.receiver.counters}
