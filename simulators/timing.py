"""The European XFEL timing system, simulated: train starts at 10 Hz with their train IDs.

Two faces of the same trains:

- :class:`TimingSimulator` - the USB train-ID receiver: one frame per train
  (:func:`tpx3lib.trainid.frames.encode_frame`) written to a pseudo-terminal whose
  slave path any serial reader (pyserial) opens like ``/dev/ttyUSB0``. It runs its
  own 10 Hz clock (``run_clock=True``) or is driven by the caller, one
  :meth:`TimingSimulator.emit_train` per trigger. Listeners (e.g. a SPIDR board
  simulator injecting a TDC trigger) are called at each train start, before its
  frame is written. Every train is kept as a :class:`TrainRecord` (the truth).
- :class:`TimingDevice` - a tiny Tango device whose int64 ``trainId`` attribute
  pushes a change event per train, time-stamped with the train start.

Faults, per train index (0 = first train), in ``faults={index: fault or (fault, ...)}``:
``"drop"`` (no frame), ``"bad_crc"`` (CRC off by one bit), ``"duplicate"`` (frame sent
twice), ``"garbage"`` (noise bytes before the frame), ``"split"`` (frame written in
two pieces ``split_delay_s`` apart), ``"no_trigger"`` (frame sent but listeners not
called: the detector misses that trigger), ``("jump", n)`` (this train's ID and all
later ones are ``n`` higher than the plain count).

:func:`trigger_edges` turns the records into the TDC edges a board would record
(board time = host time - board time origin), for tests and offline replays.

Run ``python -m simulators.timing`` to print a pty path and emit frames until Ctrl-C.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import threading
import time as _time
import tty
from typing import Callable, Iterable

import numpy as np
import tango
from tango.server import Device, attribute, device_property

from tpx3lib.dtypes import TDC1_FALLING, TDC1_RISING, TDC_DTYPE, TOA_UNIT_S
from tpx3lib.errors import ConfigError
from tpx3lib.trainid.frames import encode_frame, frame_crc

__all__ = ["TimingSimulator", "TrainRecord", "TimingDevice", "trigger_edges", "FAULT_NAMES", "main"]

FAULT_NAMES = frozenset({"drop", "bad_crc", "duplicate", "garbage", "split", "no_trigger", "jump"})
GARBAGE = b"\xff\x00\x7f junk \x03\x02\x02ZZ"


@dataclasses.dataclass(frozen=True)
class TrainRecord:
    """One simulated train: the truth a test compares with."""

    index: int            #: 0 for the first train emitted
    train_id: int
    host_time: float      #: Unix seconds of the train start (the trigger); with the own clock,
                          #: when the clock thread got to it (late on a loaded machine)
    trigger: bool         #: whether the detector sees its trigger (False with "no_trigger")
    frame_sent: bool      #: whether a frame with a good CRC went out
    faults: tuple = ()


def _is_jump(item) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and item[0] == "jump"


def _normalise_faults(faults) -> dict[int, tuple]:
    """``{index: "drop"}``, ``{index: ("jump", 5)}`` or ``{index: ["split", ("jump", 5)]}``."""
    out: dict[int, tuple] = {}
    for index, spec in (faults or {}).items():
        items = [spec] if isinstance(spec, str) or _is_jump(spec) else list(spec)
        for item in items:
            if _is_jump(item):
                if not isinstance(item[1], int):
                    raise ConfigError(f"a jump fault is ('jump', n) with an integer n, not {item!r}")
            elif item not in FAULT_NAMES or item == "jump":
                raise ConfigError(f"unknown timing fault {item!r} at train {index}; "
                                  f"known: {sorted(FAULT_NAMES - {'jump'})} and ('jump', n)")
        out[int(index)] = tuple(items)
    return out


class TimingSimulator:
    """Train-ID frames on a pseudo-terminal, one per train (see the module docstring).

    Parameters
    ----------
    start_train_id : ID of the first train.
    period_s : train period (0.1 s).
    beam_mode : 32-bit beam mode written in every frame.
    faults : ``{train index: fault or tuple of faults}``.
    run_clock : run an own clock thread (else call :meth:`emit_train`).
    first_train_delay_s : own clock: first train this long after :meth:`start`.
    split_delay_s : pause between the two pieces of a "split" frame.
    clock : host clock (Unix seconds).
    """

    def __init__(self, start_train_id: int = 1_000_000, *, period_s: float = 0.1, beam_mode: int = 0,
                 faults=None, run_clock: bool = True, first_train_delay_s: float = 0.05,
                 split_delay_s: float = 0.005, clock: Callable[[], float] = _time.time):
        if not 0 < int(start_train_id) < 1 << 63:
            raise ConfigError(f"start train ID must be in 1..2**63-1, not {start_train_id}")
        if not period_s > 0:
            raise ConfigError("period_s must be > 0")
        frame_crc(0, beam_mode)  # range check
        self.start_train_id = int(start_train_id)
        self.period_s = float(period_s)
        self.beam_mode = int(beam_mode)
        self.faults = _normalise_faults(faults)
        self.run_clock = bool(run_clock)
        self.first_train_delay_s = float(first_train_delay_s)
        self.split_delay_s = float(split_delay_s)
        self._clock = clock
        self._master: int | None = None
        self._slave: int | None = None
        self.slave_path: str | None = None
        self.epoch: float | None = None
        self._lock = threading.Lock()
        self._records: list[TrainRecord] = []
        self._listeners: list[Callable[[TrainRecord], None]] = []
        self._next_index = 0
        self._jump = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.counters = dict(trains=0, frames_written=0, bytes_written=0, write_overflows=0)

    # ------------------------------------------------------------------ life
    def start(self) -> "TimingSimulator":
        """Open the pty (raw mode) and, with ``run_clock``, start the 10 Hz clock."""
        if self._master is not None:
            return self
        master, slave = os.openpty()
        # Raw: no echo, no line editing, and 0x03 (ETX) is not Ctrl-C.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.slave_path = os.ttyname(slave)
        self._stop.clear()
        if self.run_clock:
            self.epoch = self._clock() + self.first_train_delay_s
            self._thread = threading.Thread(target=self._run, name="timing-sim", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the clock and close the pty (safe to call twice)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -------------------------------------------------------------- trains
    def add_listener(self, listener: Callable[[TrainRecord], None]) -> None:
        """Call ``listener(record)`` at each train start whose trigger the detector sees."""
        self._listeners.append(listener)

    @property
    def trains(self) -> list[TrainRecord]:
        """Every train emitted so far (a copy)."""
        with self._lock:
            return list(self._records)

    def wait_for_trains(self, n: int, timeout_s: float = 10.0) -> list[TrainRecord]:
        """Block until ``n`` trains were emitted (own clock); returns them."""
        deadline = _time.monotonic() + timeout_s
        while len(self._records) < n:
            if _time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self._records)} of {n} trains within {timeout_s} s")
            _time.sleep(self.period_s / 4)
        return self.trains

    def emit_train(self, host_time: float | None = None) -> TrainRecord:
        """Emit the next train now (driven mode; the own clock calls it too)."""
        if self._master is None:
            raise ConfigError("start() the timing simulator before emitting trains")
        host_time = self._clock() if host_time is None else float(host_time)
        index = self._next_index
        self._next_index += 1
        faults = self.faults.get(index, ())
        names = {f[0] if isinstance(f, tuple) else f for f in faults}
        for f in faults:
            if isinstance(f, tuple) and f[0] == "jump":
                self._jump += f[1]
        train_id = self.start_train_id + index + self._jump
        record = TrainRecord(index, train_id, host_time, trigger="no_trigger" not in names,
                             frame_sent=not ({"drop", "bad_crc"} & names), faults=faults)
        with self._lock:
            self._records.append(record)
        self.counters["trains"] += 1
        if record.trigger:
            for listener in self._listeners:
                listener(record)
        if "drop" not in names:
            good = frame_crc(train_id, self.beam_mode)
            frame = encode_frame(train_id, self.beam_mode, crc=good ^ 0x01 if "bad_crc" in names else None)
            if "garbage" in names:
                self._write(GARBAGE)
            if "split" in names:
                self._write(frame[:11])
                self._stop.wait(self.split_delay_s)
                self._write(frame[11:])
            else:
                self._write(frame)
            self.counters["frames_written"] += 1
            if "duplicate" in names:
                self._write(frame)
                self.counters["frames_written"] += 1
        return record

    def _write(self, data: bytes) -> None:
        try:
            n = os.write(self._master, data)
        except BlockingIOError:
            n = 0
        self.counters["bytes_written"] += n
        if n < len(data):
            self.counters["write_overflows"] += 1

    def _run(self) -> None:
        i = 0
        while True:
            target = self.epoch + i * self.period_s
            if self._stop.wait(max(0.0, target - self._clock())):
                return
            # The train starts when this thread gets to it (a loaded machine may be late):
            # its trigger and its frame come from that same moment, as in the real system.
            self.emit_train()
            i += 1


def trigger_edges(records: Iterable[TrainRecord], board_time_origin: float, *, chip: int = 0,
                  width_s: float = 10e-6, first_counter: int = 1) -> np.ndarray:
    """TDC1 edges (rising at the train start, falling ``width_s`` later) of the trains
    whose trigger the detector sees, in board time ``host_time - board_time_origin``.
    The counter counts every edge, as the hardware does (rising 1, falling 2, ...)."""
    recs = [r for r in records if r.trigger]
    out = np.zeros(2 * len(recs), TDC_DTYPE)
    for i, r in enumerate(recs):
        t = int(round((r.host_time - board_time_origin) / TOA_UNIT_S))
        w = int(round(width_s / TOA_UNIT_S))
        c = first_counter + 2 * i
        out[2 * i] = (TDC1_RISING, 1, 1, chip, c, t)
        out[2 * i + 1] = (TDC1_FALLING, 1, 0, chip, c + 1, t + w)
    return out


class TimingDevice(Device):
    """A timing device: ``trainId`` (int64) pushes a change event at each train start.

    Properties: ``StartTrainId``; ``Epoch`` (Unix seconds of that train's start; 0 =
    0.2 s after init); ``Period`` (s); ``SkipTrains`` (IDs whose events are not pushed,
    to test extrapolation). Train ``StartTrainId + i`` starts at ``Epoch + i * Period``.
    """

    StartTrainId = device_property(dtype=int, default_value=1000)
    Epoch = device_property(dtype=float, default_value=0.0)
    Period = device_property(dtype=float, default_value=0.1)
    SkipTrains = device_property(dtype=(int,), default_value=[])

    def init_device(self):
        super().init_device()
        self._value = 0
        self._epoch = self.Epoch or (_time.time() + 0.2)
        self._skip = set(int(t) for t in (self.SkipTrains or []))
        self.set_change_event("trainId", True, False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timing-device", daemon=True)
        self._thread.start()
        self.set_state(tango.DevState.ON)

    def delete_device(self):
        self._stop.set()
        self._thread.join()

    @attribute(dtype=tango.CmdArgType.DevLong64, doc="current European XFEL train ID")
    def trainId(self):
        return self._value

    def _run(self):
        with tango.EnsureOmniThread():
            i = 0
            while True:
                target = self._epoch + i * self.Period
                if self._stop.wait(max(0.0, target - _time.time())):
                    return
                tid = self.StartTrainId + i
                self._value = tid
                if tid not in self._skip:
                    self.push_change_event("trainId", tid, target, tango.AttrQuality.ATTR_VALID)
                i += 1


def main(argv=None) -> int:
    """Emit train-ID frames on a pty until Ctrl-C; prints the slave path."""
    ap = argparse.ArgumentParser(prog="python -m simulators.timing", description=main.__doc__)
    ap.add_argument("--start-id", type=int, default=1_000_000)
    ap.add_argument("--period", type=float, default=0.1)
    ap.add_argument("--beam-mode", type=int, default=0)
    args = ap.parse_args(argv)
    with TimingSimulator(args.start_id, period_s=args.period, beam_mode=args.beam_mode) as sim:
        print(sim.slave_path, flush=True)
        try:
            while True:
                _time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
