"""The state of an acquisition pipeline, as the live pipeline and the Tango device report it."""
from __future__ import annotations

import enum
import logging
from typing import Callable

__all__ = ["PipelineState", "StateReporter", "Listener"]

log = logging.getLogger("tpx3lib.pipeline")

#: ``listener(kind, value)``: ("state", PipelineState), ("fault", reason), ("train", train_id), ...
Listener = Callable[[str, object], None]


class PipelineState(enum.Enum):
    IDLE = "idle"          # ready; nothing running
    RUNNING = "running"    # acquiring (and for a while after stop() while it drains)
    FAULT = "fault"        # a stage died; ``fault_reason`` says which and why; reset() clears it


class StateReporter:
    """State, fault reason and listener plumbing shared by every pipeline object.

    Subclasses call :meth:`_init_state` in ``__init__`` and change state only through
    :meth:`_set_state` (under their own lock if they have one); listeners are called
    outside any lock and their exceptions are logged, never raised.
    """

    def _init_state(self, listener: Listener | None = None) -> None:
        self._state = PipelineState.IDLE
        self._fault_reason = ""
        self._listener = listener

    @property
    def state(self) -> PipelineState:
        return self._state

    @property
    def fault_reason(self) -> str:
        return self._fault_reason

    def set_listener(self, listener: Listener | None) -> None:
        self._listener = listener

    def _emit(self, kind: str, value) -> None:
        fn = self._listener
        if fn is not None:
            try:
                fn(kind, value)
            except Exception:  # a listener must not break the pipeline
                log.exception("pipeline listener raised on %r", kind)

    def _set_state(self, state: PipelineState, reason: str = "") -> bool:
        """Change state (the reason is kept only for FAULT); notify listeners with
        ("fault", reason) then ("state", state). Returns False if nothing changed."""
        reason = reason if state is PipelineState.FAULT else ""
        if state is self._state and reason == self._fault_reason:
            return False
        self._state, self._fault_reason = state, reason
        if state is PipelineState.FAULT:
            log.error("pipeline FAULT: %s", reason)
            self._emit("fault", reason)
        self._emit("state", state)
        return True
