"""Base class of the devices that talk to a SPIDR board through the shared :class:`BoardLink`.

It owns the parts SpidrBoard and Timepix3Chip have in common:

- State from the link: INIT while connecting, FAULT (with the link's reason) when the board
  is lost, ON when connected; RUNNING while a long job of the device runs in its worker
  thread (pixel upload, loading a configuration); FAULT with the reason when such a job
  failed (cleared by the next successful job, or Init). Change events on State and Status.
- Settings written while the board is still connecting are kept and applied as soon as it
  is connected, and again after every reconnection (:meth:`_apply_settings`): memorized
  attribute values restored by Tango at start-up are never lost.
- :meth:`_board_call` runs a tpx3lib operation on the connected board and turns errors into
  readable DevFailed messages.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import tango
from tango import DevState
from tango.server import Device

from tango_tpx3 import board_link
from tango_tpx3.common import ensure_omni_thread, raise_devfailed

__all__ = ["LinkedDevice"]

log = logging.getLogger(__name__)


class LinkedDevice(Device):
    """A device bound to one SPIDR board (subclasses say which via :meth:`_link_address`)."""

    # ---------------------------------------------------------------- to override
    def _link_address(self) -> str:
        raise NotImplementedError

    def _link_timeout(self) -> float:
        """Seconds per reply for the board connection (SpidrBoard.RequestTimeout)."""
        return board_link.REQUEST_TIMEOUT

    def _apply_settings(self, board) -> None:
        """Send the device's settings to a freshly connected board (runs in the worker)."""

    def _describe(self) -> str:
        return self.get_name()

    def _setup(self) -> None:
        """Device-specific set-up, after the properties are read and before the board link."""

    # ---------------------------------------------------------------- life cycle
    def init_device(self):
        super().init_device()
        self.set_state(DevState.INIT)
        self.set_status("Initialising")
        self._link = None
        self._init_error = ""
        self._job: threading.Thread | None = None
        self._job_name = ""
        self._job_error = ""
        self._applied_generation = 0
        self._state_lock = threading.RLock()
        self._settings_lock = threading.RLock()
        self.set_change_event("State", True, False)
        self.set_change_event("Status", True, False)
        self._setup()
        try:
            address = self._link_address()
            self._link = board_link.acquire(address, timeout=self._link_timeout())
        except Exception as exc:  # noqa: BLE001 - a bad property is a FAULT saying so
            self._init_error = str(exc)
            log.error("%s: %s", self.get_name(), exc)
        if self._link is not None:
            self._link.add_listener(self._on_link_change)
            if self._link.state in (board_link.LinkState.FAULT, board_link.LinkState.CLOSED):
                self._link.connect()   # Init of any device of a lost board tries again
            self._on_link_change(self._link)
        self._refresh_state()

    def delete_device(self):
        link, self._link = getattr(self, "_link", None), None
        if link is not None:
            link.remove_listener(self._on_link_change)
        job = getattr(self, "_job", None)
        if job is not None and job.is_alive():
            job.join(timeout=10)
        if link is not None:
            board_link.release(link)
        super().delete_device()

    # ---------------------------------------------------------------- link and state
    @property
    def board(self):
        """The connected tpx3lib SpidrBoard; DevFailed (with the reason) when there is none."""
        link = self._link
        if link is None:
            tango.Except.throw_exception("TPX3_NotConfigured", self._init_error or "no board link",
                                         self._describe())
        try:
            return link.board
        except Exception as exc:  # noqa: BLE001
            raise_devfailed(exc, self._describe())

    def _board_call(self, fn: Callable, *args, **kwargs):
        """``fn(board, *args)`` on the connected board, errors as DevFailed."""
        link = self._link
        if link is None:
            tango.Except.throw_exception("TPX3_NotConfigured", self._init_error or "no board link",
                                         self._describe())
        try:
            return link.call(fn, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise_devfailed(exc, self._describe())

    @property
    def link_connected(self) -> bool:
        return self._link is not None and self._link.connected

    def _on_link_change(self, link) -> None:
        if link.connected and link.generation != self._applied_generation:
            self._applied_generation = link.generation
            self._start_job("applying settings to the board", self._apply_settings, link.board,
                            force=True)
        self._refresh_state()

    def _compute_state(self) -> tuple[DevState, str]:
        if self._init_error:
            return DevState.FAULT, f"Configuration error: {self._init_error}"
        link = self._link
        if link is None or link.state is board_link.LinkState.CONNECTING:
            return DevState.INIT, f"Connecting to SPIDR {getattr(link, 'address', '?')}"
        if not link.connected:
            return DevState.FAULT, (f"SPIDR {link.address}: {link.reason}. "
                                    "Init or Reconnect (on the SpidrBoard device) to try again.")
        if self._job is not None and self._job.is_alive():
            return DevState.RUNNING, f"Busy: {self._job_name}"
        if self._job_error:
            return DevState.FAULT, self._job_error
        return DevState.ON, f"Connected to SPIDR {link.address}"

    def _refresh_state(self) -> None:
        with self._state_lock:
            state, status = self._compute_state()
            changed = state != self.get_state() or status != self.get_status()
            self.set_state(state)
            self.set_status(status)
        if changed:
            try:
                self.push_change_event("State")
                self.push_change_event("Status")
            except tango.DevFailed:
                log.debug("pushing State of %s failed", self.get_name(), exc_info=True)

    # ---------------------------------------------------------------- background jobs
    @property
    def busy(self) -> bool:
        return self._job is not None and self._job.is_alive()

    def _start_job(self, name: str, fn: Callable, *args, force: bool = False) -> None:
        """Run ``fn(*args)`` in the device's worker thread; State is RUNNING meanwhile.

        A job failing sets FAULT with its message (a lost board shows as the link's FAULT).
        ``force`` waits for a running job instead of refusing.
        """
        with self._state_lock:
            if self.busy:
                if not force:
                    tango.Except.throw_exception("TPX3_Busy", f"busy: {self._job_name}", self._describe())
                previous = self._job
            else:
                previous = None

            def run():
                if previous is not None:
                    previous.join()
                try:
                    fn(*args)
                    self._job_error = ""
                except Exception as exc:  # noqa: BLE001 - reported through State/Status
                    text = exc.args[0].desc if isinstance(exc, tango.DevFailed) and exc.args else str(exc)
                    self._job_error = f"{name[:1].upper()}{name[1:]} failed: {text}"
                    log.error("%s: %s", self.get_name(), self._job_error)
                finally:
                    self._finish_job(threading.current_thread())

            self._job_name = name
            self._job = threading.Thread(target=ensure_omni_thread(run), name=f"job-{self.get_name()}",
                                         daemon=True)
            self._job.start()
        self._refresh_state()

    def _finish_job(self, thread: threading.Thread) -> None:
        with self._state_lock:
            if self._job is thread:
                self._job = None
        self._refresh_state()

    # ---------------------------------------------------------------- settings
    def _write_setting(self, send: Callable | None, store: Callable[[], None]) -> None:
        """Write one user setting: sent at once when connected, kept for the connection otherwise.

        ``send(board)`` talks to the board (None: nothing to send now, e.g. pixel matrices
        that UploadPixels sends); ``store()`` records the value as the device's setting. Both
        run under the settings lock, so a setting re-sent by :meth:`_apply_settings` (which
        takes the same lock per item) is never overtaken by an older value. A board that
        refuses keeps the old setting; a lost board refuses the write with the reason.
        """
        link = self._link
        if link is not None and link.state is board_link.LinkState.CONNECTING:
            with self._settings_lock:
                store()
            return
        with self._settings_lock:
            if send is not None:
                self._board_call(send)
            elif link is None or not link.connected:
                self.board  # raises the reason
            store()
