"""The state of an acquisition pipeline, as the live pipeline and the Tango device report it."""
from __future__ import annotations

import enum

__all__ = ["PipelineState"]


class PipelineState(enum.Enum):
    IDLE = "idle"          # ready; nothing running
    RUNNING = "running"    # acquiring (and for a while after stop() while it drains)
    FAULT = "fault"        # a stage died; ``fault_reason`` says which and why; reset() clears it
