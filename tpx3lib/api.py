"""A pymepix-style high-level API: connect, configure, start, poll or call back.

    from tpx3lib.api import Tpx3Connection, MessageType, PollBufferEmpty

    with Tpx3Connection(("127.0.0.1", 50000)) as conn:
        print(len(conn), conn[0].device_name)
        conn[0].load_config("W0028_H06_50V.spx")   # or a .yaml
        conn[0].Vthreshold_fine = 150               # DACs by their Timepix3 names
        conn.bias_voltage = 50
        conn.start()
        try:
            kind, data = conn.poll(timeout=1.0)
        except PollBufferEmpty:
            ...
        conn.stop()

Data delivery
-------------
The live data path (UDP capture, decoding, events, centroids) is not part of
this module: it plugs in through :meth:`Tpx3Connection.attach_pipeline`, e.g.
``conn.attach_pipeline(LivePipeline(chips=range(len(conn)), ports=[0] * len(conn)))``
(``tpx3lib.pipeline``; the chips are then told to send to the ports it bound). A
pipeline is any object with ``start(sink)`` and ``stop()``; between them it
calls ``sink(message_type, data)`` from its own thread for every message. The
connection starts attached pipelines before it opens the shutter and stops
them after closing it.

Messages go to the callback when one is set (:meth:`Tpx3Connection.set_callback`),
otherwise into the poll ring read by :meth:`Tpx3Connection.poll`. The ring is
bounded (``poll_size`` messages) and drops the *oldest* message when full: a
live consumer wants the newest data, and the data path must never block on a
slow reader. Every dropped message is counted (``poll_overflows``); an
exception raised by the callback is caught, logged and counted
(``callback_errors``) so it cannot stop the data path.

:class:`PollBufferEmpty` subclasses :class:`queue.Empty`: ``poll()`` behaves
like ``Queue.get`` (non-blocking by default, or with a timeout), and code
written for queues catches it unchanged.
"""
from __future__ import annotations

import difflib
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from tpx3lib.config import ChipConfig, load_config, read_spx_info, save_config
from tpx3lib.errors import ConfigError
from tpx3lib.messages import DEFAULT_POLL_SIZE, DataMessage, MessageRing, MessageType, PollBufferEmpty
from tpx3lib.spidr.board import CLOSED_SHUTTER_TRIGGER, OPEN_SHUTTER_TRIGGER, SpidrBoard
from tpx3lib.spidr.chip import LinkStatus, SpidrChip, device_name
from tpx3lib.spidr.controller import DEFAULT_TIMEOUT, SpidrController
from tpx3lib.spidr.dacs import DAC_NAMES, check_dac_value
from tpx3lib.spidr.genconfig import GeneralConfig, OperationMode, Polarity
from tpx3lib.spidr.protocol import DEFAULT_PORT, DEFAULT_UDP_BASE_PORT, Reg

__all__ = [
    "Tpx3Connection", "Tpx3Chip", "MessageType", "DataMessage", "PollBufferEmpty", "MessageRing",
    "DataPipeline", "DEFAULT_POLL_SIZE",
]

log = logging.getLogger(__name__)


class DataPipeline(Protocol):
    """What :meth:`Tpx3Connection.attach_pipeline` accepts."""

    def start(self, sink: Callable[[MessageType, Any], None]) -> None: ...

    def stop(self) -> None: ...


# ====================================================================== chip

class Tpx3Chip:
    """One chip of a :class:`Tpx3Connection` (``conn[0]``).

    DACs are attributes named as in the Timepix3 manual: ``chip.Vthreshold_fine = 150``
    writes the DAC at once (ConfigError, before sending, when out of range);
    reading asks the chip. ``chip.config`` is the local :class:`ChipConfig`
    (what was last loaded or written); ``pixel_mask``, ``pixel_threshold`` and
    ``pixel_test`` are its (256, 256) [x, y] arrays, editable in place, sent by
    :meth:`upload_pixels`.
    """

    def __init__(self, connection: "Tpx3Connection", spidr_chip: SpidrChip):
        object.__setattr__(self, "_conn", connection)
        object.__setattr__(self, "_spidr", spidr_chip)
        object.__setattr__(self, "config", ChipConfig())
        object.__setattr__(self, "_device_id", None)

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("_") or hasattr(type(self), name) or name in self.__dict__:
            object.__setattr__(self, name, value)
            return
        close = difflib.get_close_matches(name, [*DAC_NAMES, *(n for n in dir(type(self)) if not n.startswith("_"))],
                                          n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise AttributeError(f"Tpx3Chip has no attribute {name!r}{hint}")

    def __repr__(self) -> str:
        return f"<Tpx3Chip {self.index} {self._device_id and device_name(self._device_id)}>"

    # ------------------------------------------------------------------ identity
    @property
    def index(self) -> int:
        return self._spidr.index

    @property
    def spidr(self) -> SpidrChip:
        """The low-level chip object (every SPIDR chip operation)."""
        return self._spidr

    @property
    def device_id(self) -> int:
        if self._device_id is None:
            object.__setattr__(self, "_device_id", self._spidr.device_id)
        return self._device_id

    @property
    def device_name(self) -> str:
        """E.g. ``W0028_H06``."""
        return device_name(self.device_id)

    @property
    def link_status(self) -> LinkStatus:
        return self._spidr.link_status()

    @property
    def timer(self) -> int:
        """The chip's 48-bit timer in 25 ns ticks."""
        return self._spidr.timer

    @property
    def destination(self) -> tuple[str, int]:
        """(ip, port) the chip's UDP data goes to."""
        return self._spidr.destination

    def set_destination(self, ip: str, port: int) -> None:
        self._spidr.set_destination(ip, port)

    # ------------------------------------------------------------------ DACs
    def get_dac(self, name) -> int:
        return self._spidr.get_dac(name)

    def set_dac(self, name, value) -> None:
        dac, value = check_dac_value(name, value)
        self._spidr.set_dac(dac, value)
        self.config.dacs[dac.name] = value

    @property
    def dacs(self) -> dict[str, int]:
        """All DACs read from the chip."""
        return self._spidr.get_dacs()

    # ------------------------------------------------------------------ modes
    @property
    def polarity(self) -> Polarity:
        return self._spidr.general_config.polarity

    @polarity.setter
    def polarity(self, value) -> None:
        self._set_general(polarity=value)

    @property
    def operation_mode(self) -> OperationMode:
        return self._spidr.general_config.operation_mode

    @operation_mode.setter
    def operation_mode(self, value) -> None:
        self._set_general(operation_mode=value)

    @property
    def general_config(self) -> GeneralConfig:
        return self._spidr.general_config

    def _set_general(self, **fields) -> None:
        values = {k: getattr(self.config.general, k) for k in self.config.general.__dataclass_fields__}
        values.update(fields)
        new = GeneralConfig(**values)  # ConfigError before sending
        self._spidr.general_config = new
        self.config.general = new

    # ------------------------------------------------------------------ pixels
    @property
    def pixel_mask(self) -> np.ndarray:
        return self.config.mask

    @pixel_mask.setter
    def pixel_mask(self, value) -> None:
        self._set_matrix("mask", value)

    @property
    def pixel_threshold(self) -> np.ndarray:
        return self.config.threshold

    @pixel_threshold.setter
    def pixel_threshold(self, value) -> None:
        self._set_matrix("threshold", value)

    @property
    def pixel_test(self) -> np.ndarray:
        return self.config.test

    @pixel_test.setter
    def pixel_test(self, value) -> None:
        self._set_matrix("test", value)

    def _set_matrix(self, name: str, value) -> None:
        trial = self.config.copy()
        setattr(trial, name, value)
        trial.validate()  # ConfigError leaves the current config untouched
        setattr(self.config, name, getattr(trial, name))

    def upload_pixels(self, verify: bool = True) -> None:
        """Send the local mask/threshold/test matrices (RESET_PIXELS, SET_PIXCONF, read-back check)."""
        self.config.validate()
        self._spidr.upload_pixel_words(
            self.config.pixel_words(reverse_threshold=self._spidr.reverse_threshold_bits), verify=verify)

    # ------------------------------------------------------------------ whole configurations
    def load_config(self, source, upload: bool = True, spx_chip: int | None = None) -> ChipConfig:
        """Load a .spx/.yaml file (or take a ChipConfig) and, with ``upload``, send all of it.

        From a multi-chip .spx file this chip takes the entry with its own index
        (a single-chip file serves any chip); ``spx_chip`` picks another one.
        """
        if isinstance(source, ChipConfig):
            config = source.copy()
        else:
            path = Path(source)
            chip = 0
            if path.suffix.lower() == ".spx":
                chips = read_spx_info(path)["chips"]
                if spx_chip is not None:
                    chip = spx_chip
                elif self.index in chips:
                    chip = self.index
                elif len(chips) != 1:
                    raise ConfigError(f"{path}: holds chips {chips} but not {self.index}; pass spx_chip=")
                else:
                    chip = chips[0]
            config = load_config(path, chip)
        if upload:
            self.apply_config(config)
        else:
            object.__setattr__(self, "config", config)
        log.info("chip %d: loaded %s", self.index, config.summary())
        return config

    def apply_config(self, config: ChipConfig | None = None, verify: bool = True) -> None:
        """Send a configuration: 18 DACs, general config, PLL config, pixel matrix.

        The configuration is validated first; on success it becomes ``self.config``.
        """
        config = self.config if config is None else config
        config.validate()
        words = config.pixel_words(reverse_threshold=self._spidr.reverse_threshold_bits)
        with self._spidr.controller.lock:
            self._spidr.set_dacs(config.dacs)
            self._spidr.general_config = config.general
            self._spidr.pll_config = config.pll_config
            self._spidr.upload_pixel_words(words, verify=verify)
        object.__setattr__(self, "config", config)

    def save_config(self, path) -> Path:
        """Save the local configuration as YAML."""
        return save_config(self.config, path)


def _dac_property(name: str):
    def fget(self):
        return self._spidr.get_dac(name)

    def fset(self, value):
        self.set_dac(name, value)

    return property(fget, fset, doc=f"DAC {name} (read from / written to the chip)")


for _name in DAC_NAMES:
    setattr(Tpx3Chip, _name, _dac_property(_name))
del _name


# ====================================================================== connection

class Tpx3Connection:
    """A SPIDR board with its chips, ready to acquire.

    Parameters
    ----------
    address:
        ``(host, port)`` of the board's control port.
    timeout:
        Seconds to wait for each reply.
    poll_size:
        Messages the poll ring holds before dropping the oldest.
    configure:
        On connect, reset each chip and load the default configuration
        (common DACs, all pixels on, threshold 0), as pymepix does.
    udp_base_port:
        Chip i is told to send its data to port ``udp_base_port + i``.
    bias_voltage:
        If given, enable the bias supply and set it on connect.
    """

    def __init__(self, address=("127.0.0.1", DEFAULT_PORT), *, timeout: float = DEFAULT_TIMEOUT,
                 poll_size: int = DEFAULT_POLL_SIZE, configure: bool = True,
                 udp_base_port: int = DEFAULT_UDP_BASE_PORT, bias_voltage: float | None = None):
        self._ring = MessageRing(poll_size)
        self._callback: Callable | None = None
        self._callback_lock = threading.Lock()
        self.callback_errors = 0
        self._pipelines: list = []
        self._running = False
        self.controller = SpidrController(address, timeout)
        try:
            self.board = SpidrBoard(self.controller)
            self._chips = [Tpx3Chip(self, c) for c in self.board.chips]
            self._connect_sequence(udp_base_port, configure)
            if bias_voltage is not None:
                self.bias_voltage = bias_voltage
        except BaseException:
            self.controller.close()
            raise

    def _connect_sequence(self, udp_base_port: int, configure: bool) -> None:
        with self.controller.lock:
            for chip in self._chips:
                s = chip.spidr
                object.__setattr__(chip, "_device_id", s.device_id)
                s.server_port = udp_base_port + s.index
                status = s.link_status()
                if not status.usable:
                    log.warning("chip %d (%s): links not usable (enabled 0x%02X, locked 0x%02X)",
                                s.index, chip.device_name, status.enabled, status.locked)
                log.info("chip %d: %s, UDP data to %s:%d", s.index, chip.device_name, *s.destination)
            if configure:
                for chip in self._chips:
                    chip.spidr.reset()
                    chip.spidr.reinit()
                    chip.apply_config(ChipConfig())
                    eth, cpu = chip.spidr.header_filter
                    chip.spidr.set_header_filter(0xFFFF, cpu)

    # ------------------------------------------------------------------ container
    def __len__(self) -> int:
        return len(self._chips)

    def __getitem__(self, index: int) -> Tpx3Chip:
        return self._chips[index]

    def __iter__(self):
        return iter(self._chips)

    def __repr__(self) -> str:
        host, port = self.controller.address
        return f"<Tpx3Connection {host}:{port} {len(self)} chip(s){' running' if self._running else ''}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Stop if running (best effort), stop pipelines, close the control connection."""
        try:
            if self._running:
                self.stop()
        except Exception as exc:  # noqa: BLE001 - closing must not fail on a dead board
            log.warning("stopping while closing failed: %s", exc)
            self._stop_pipelines()
            self._running = False
        self.controller.close()

    def reconnect(self) -> None:
        """Re-open the control connection (the board keeps its configuration)."""
        self.controller.reconnect()

    # ------------------------------------------------------------------ bias
    @property
    def bias_voltage(self) -> float:
        """Bias read back from the board, volts."""
        return self.board.bias_voltage

    @bias_voltage.setter
    def bias_voltage(self, volts: float) -> None:
        from tpx3lib.spidr.board import bias_dac_from_voltage
        bias_dac_from_voltage(volts)  # ConfigError before anything is sent
        with self.controller.lock:
            self.board.enable_bias(True)
            self.board.bias_voltage = volts

    def disable_bias(self) -> None:
        self.board.enable_bias(False)

    # ------------------------------------------------------------------ acquisition
    @property
    def is_running(self) -> bool:
        return self._running

    def start(self) -> None:
        """Start acquiring: pipelines first, then the SPIDR start sequence ending in AUTOTRIG_START.

        Sequence (spec section 2): CPU2TPX bit 25 cleared (internal clock); register
        0x2B8 = 0; DECODERS_ENA 1; DDRIVEN_READOUT; RESET_TIMER; RESTART_TIMERS;
        per chip GENCONFIG and PLLCONFIG from its config; RESTART_TIMERS;
        SET_TRIGCONFIG [4, 0, 10, 1]; AUTOTRIG_START.
        """
        if self._running:
            return
        for chip in self._chips:
            chip.config.validate()
        self._start_pipelines()
        try:
            with self.controller.lock:
                b = self.board
                b.use_external_clock(False)
                b.set_register(Reg.TDC_ENABLE, 0)
                b.enable_decoders(True)
                b.datadriven_readout()
                b.reset_timers()
                b.restart_timers()
                for chip in self._chips:
                    chip.spidr.general_config = chip.config.general
                    chip.spidr.pll_config = chip.config.pll_config
                b.restart_timers()
                b.trigger_config = OPEN_SHUTTER_TRIGGER
                b.start_autotrigger()
        except BaseException:
            self._stop_pipelines()
            raise
        self._running = True
        log.info("acquisition started on %d chip(s)", len(self))

    def stop(self) -> None:
        """Stop acquiring: SET_TRIGCONFIG [0, 10000, 5, 1], AUTOTRIG_STOP, then stop pipelines."""
        try:
            with self.controller.lock:
                self.board.trigger_config = CLOSED_SHUTTER_TRIGGER
                self.board.stop_autotrigger()
        finally:
            self._stop_pipelines()
            was = self._running
            self._running = False
            if was and self._ring.overflows:
                log.warning("poll buffer dropped %d message(s) so far (poll faster or enlarge poll_size)",
                            self._ring.overflows)

    # ------------------------------------------------------------------ data
    def attach_pipeline(self, pipeline: DataPipeline) -> None:
        """Plug in a data producer: ``pipeline.start(sink)`` / ``pipeline.stop()``.

        Attaching while running starts it at once.
        """
        if not (callable(getattr(pipeline, "start", None)) and callable(getattr(pipeline, "stop", None))):
            raise TypeError("a pipeline needs start(sink) and stop() methods")
        self._pipelines.append(pipeline)
        if self._running:
            pipeline.start(self.deliver)

    def detach_pipeline(self, pipeline: DataPipeline) -> None:
        """Remove a pipeline (stopping it if running)."""
        self._pipelines.remove(pipeline)
        if self._running:
            pipeline.stop()

    @property
    def pipelines(self) -> list:
        return list(self._pipelines)

    def _start_pipelines(self) -> None:
        started = []
        try:
            for p in self._pipelines:
                p.start(self.deliver)
                started.append(p)
                self._point_chips_at(p)
        except BaseException:
            for p in reversed(started):
                try:
                    p.stop()
                except Exception as exc:  # noqa: BLE001
                    log.warning("stopping pipeline %r failed: %s", p, exc)
            raise

    def _point_chips_at(self, pipeline) -> None:
        """A pipeline that receives UDP itself (``chips``, ``host``, ``ports`` after start, e.g.
        :class:`tpx3lib.pipeline.LivePipeline` with free ports) gets its chips' data sent to it."""
        chips, ports, host = (getattr(pipeline, n, None) for n in ("chips", "ports", "host"))
        if not chips or not ports or not isinstance(host, str):
            return
        for chip, port in zip(chips, ports):
            if 0 <= chip < len(self._chips) and tuple(self._chips[chip].destination) != (host, port):
                self._chips[chip].set_destination(host, port)

    def _stop_pipelines(self) -> None:
        for p in reversed(self._pipelines):
            try:
                p.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others regardless
                log.warning("stopping pipeline %r failed: %s", p, exc)

    def deliver(self, message_type, data) -> None:
        """The sink pipelines call: to the callback if set, else into the poll ring."""
        msg = DataMessage(MessageType(message_type), data)
        cb = self._callback
        if cb is not None:
            try:
                cb(msg.type, msg.data)
            except Exception:  # noqa: BLE001 - a user callback must not kill the data path
                with self._callback_lock:
                    self.callback_errors += 1
                    first = self.callback_errors == 1
                if first:
                    log.exception("data callback raised (further errors are only counted)")
            return
        if not self._ring.push(msg) and self._ring.overflows == 1:
            log.warning("poll buffer full (%d messages): dropping the oldest", self._ring.maxlen)

    def set_callback(self, callback: Callable[[MessageType, Any], None] | None) -> None:
        """Receive every message as ``callback(message_type, data)`` instead of polling (None: poll again).

        The callback runs in the pipeline's thread; keep it short.
        """
        if callback is not None and not callable(callback):
            raise TypeError("the callback must be callable or None")
        self._callback = callback

    @property
    def callback(self):
        return self._callback

    def poll(self, block: bool = False, timeout: float | None = None) -> DataMessage:
        """The oldest message as ``(MessageType, data)``; raises :class:`PollBufferEmpty` if none.

        ``block``/``timeout`` as for ``queue.Queue.get`` (a timeout implies blocking).
        """
        return self._ring.pop(block or timeout is not None, timeout)

    @property
    def poll_size(self) -> int:
        return self._ring.maxlen

    @property
    def poll_buffer_length(self) -> int:
        """Messages waiting in the poll ring."""
        return len(self._ring)

    @property
    def poll_overflows(self) -> int:
        """Messages dropped because the poll ring was full."""
        return self._ring.overflows

    def clear_poll_buffer(self) -> int:
        """Discard waiting messages; returns how many."""
        return self._ring.clear()
