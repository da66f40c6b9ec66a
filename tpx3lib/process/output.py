"""The interface every processed-output layout implements, and the registry of layouts.

A layout writer receives the products of a run in stream order and decides
how to store them. The runner calls, in this order:

1. ``Writer(path, sources=..., options=..., compression=...)`` - ``path`` is a
   temporary file the runner renames when everything succeeded;
2. any number of ``write_tdcs``, ``write_event_triggers``, ``write_events``,
   ``write_centroids`` (each array final and in order; possibly empty);
3. ``close(counters)`` on success, or ``abort()`` on failure.

To add a layout (e.g. European XFEL, spec/euxfel-hdf5.md) write a module with
a class implementing :class:`OutputWriter` and add it to :data:`LAYOUTS`.
"""
from __future__ import annotations

import importlib

import numpy as np

from tpx3lib.errors import ConfigError

__all__ = ["OutputWriter", "LAYOUTS", "writer_class"]

#: layout name -> "module:Class"
LAYOUTS: dict[str, str] = {
    "pymepix": "tpx3lib.process.pymepix_layout:PymepixWriter",
    "exdf": "tpx3lib.process.exdf_layout:ExdfWriter",
}


class OutputWriter:
    """Base class of layout writers (see the module docstring for the call order).

    ``sources``: one dict per input file: ``path``, ``format``, ``size_bytes``,
    ``header`` (the raw file's header dict), ``closing`` (dict or None),
    ``start_time_ns`` (int or None), ``truncated``, ``problems`` (list of str).
    ``options``: the processing options as a plain dict.
    """

    #: the name in LAYOUTS
    layout = ""

    def __init__(self, path, *, sources: list[dict], options: dict, compression: str = "lzf"):
        self.path = path
        self.sources = sources
        self.options = options
        self.compression = compression

    def write_tdcs(self, tdcs: np.ndarray) -> None:
        """All decoded TDC edges (``TDC_DTYPE``), in stream order."""

    def write_event_triggers(self, triggers: np.ndarray) -> None:
        """The edges used as event triggers (``plan.EVENT_TRIGGER_DTYPE``: number, time, counter)."""

    def write_events(self, events: np.ndarray) -> None:
        """Hits assigned to triggers (``EVENT_DTYPE``), in ToA order."""

    def write_centroids(self, centroids: np.ndarray) -> None:
        """Cluster centroids (``CENTROID_DTYPE``), in canonical order."""

    def close(self, counters: dict) -> None:
        """Finish the file; ``counters`` describes what happened to every word and hit."""

    def abort(self) -> None:
        """Give up (the runner deletes the temporary file)."""


def writer_class(layout: str) -> type[OutputWriter]:
    """The writer class of ``layout``; ConfigError if unknown or not installed."""
    target = LAYOUTS.get(layout)
    if target is None:
        raise ConfigError(f"unknown output layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    modname, clsname = target.split(":")
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name == modname:
            raise ConfigError(f"output layout {layout!r} is not available in this version") from None
        raise
    return getattr(mod, clsname)
