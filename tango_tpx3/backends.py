"""Which pipeline sits behind a Tpx3Pipeline device: its ``PipelineBackend`` property.

- ``live`` (default): :class:`tango_tpx3.live_backend.LiveBackend`, tpx3lib's live pipeline
  (UDP capture -> decode -> events -> clusters -> statistics, Karabo Bridge, run files, raw
  recording) driven together with the board's shutter;
- ``board-counters``: :class:`tango_tpx3.provisional_pipeline.BoardCounterPipeline`, shutter
  control and the board's own counters only (no data path).
"""
from __future__ import annotations

from tpx3lib.errors import ConfigError

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "make_pipeline"]

DEFAULT_BACKEND = "live"


def _live(link, device_name: str = ""):
    from tango_tpx3.live_backend import LiveBackend
    return LiveBackend(link, device_name=device_name)


def _board_counters(link, device_name: str = ""):
    from tango_tpx3.provisional_pipeline import BoardCounterPipeline
    return BoardCounterPipeline(link)


#: PipelineBackend property value -> factory(link) -> Pipeline
BACKENDS = {
    "live": _live,
    "board-counters": _board_counters,
}


def make_pipeline(backend: str, link, device_name: str = ""):
    """The pipeline named by the device's PipelineBackend property ('' = the default)."""
    key = (backend or DEFAULT_BACKEND).strip().lower()
    factory = BACKENDS.get(key)
    if factory is None:
        raise ConfigError(f"unknown PipelineBackend {backend!r}; available: {', '.join(BACKENDS)}")
    return factory(link, device_name)
