"""The interface every processed-output layout implements, and the registry of layouts.

A layout writer receives the products of a run in stream order and decides
how to store them. The runner calls, in this order:

1. ``Writer.check_output(output, overwrite=..., inputs=..., options=...)`` - refuse an
   output that exists (unless ``overwrite``) or is otherwise unusable (ConfigError);
2. ``tmp = Writer.temp_output(output, options)`` and
   ``Writer(tmp, sources=..., options=..., compression=..., executor=...)`` - ``tmp`` is
   what the writer writes; ``executor`` (or None) runs work in the pool's threads;
3. any number of ``write_tdcs``, ``write_event_triggers``, ``write_events``,
   ``write_centroids`` (each array final and in order; possibly empty) and
   ``segment_done(t)`` (every event and centroid with a time below ``t`` has been given);
4. ``close(counters)`` then ``Writer.commit_output(tmp, output, options)`` on success, or
   ``abort()`` then ``Writer.discard_output(tmp, output, options)`` on failure.

``prepare_events`` / ``prepare_centroids`` (static) run in the segment workers on each
segment's products; what they return is what ``write_events`` / ``write_centroids``
get (the default returns them as they are: events as
:class:`~tpx3lib.process.columns.EventColumns` or ``EVENT_DTYPE`` records - read
fields by name). A writer must also accept unprepared input.

To add a layout write a module with a class implementing :class:`OutputWriter`
and add it to :data:`LAYOUTS`.
"""
from __future__ import annotations

import importlib
import os

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

    The class methods below implement a single output file written as ``OUT.part``
    and renamed when complete (or, when :meth:`writes_in_place`, written under its
    final name and removed on failure).
    """

    #: the name in LAYOUTS
    layout = ""

    def __init__(self, path, *, sources: list[dict], options: dict, compression: str = "lzf", executor=None):
        self.path = path
        self.sources = sources
        self.options = options
        self.compression = compression
        self.executor = executor

    # ----------------------------------------------------------- output path
    @classmethod
    def writes_in_place(cls, options: dict) -> bool:
        """Write under the final name (e.g. for readers that follow the file)."""
        return False

    @classmethod
    def check_output(cls, output: str, *, overwrite: bool, inputs: list[str], options: dict) -> None:
        if os.path.isdir(output):
            raise ConfigError(f"{output} is a directory: the {cls.layout or 'this'} layout writes one file")
        if os.path.exists(output) and not overwrite:
            raise ConfigError(f"{output} exists: use --overwrite to replace it")
        if os.path.abspath(output) in {os.path.abspath(p) for p in inputs}:
            raise ConfigError("the output would overwrite an input file")

    @classmethod
    def temp_output(cls, output: str, options: dict) -> str:
        return output if cls.writes_in_place(options) else output + ".part"

    @classmethod
    def commit_output(cls, tmp: str, output: str, options: dict) -> None:
        if tmp != output:
            os.replace(tmp, output)

    @classmethod
    def discard_output(cls, tmp: str, output: str, options: dict) -> None:
        try:
            os.remove(tmp)
        except OSError:
            pass

    # ----------------------------------------------------------- worker side
    @staticmethod
    def prepare_events(events):
        """Convert one segment's events for :meth:`write_events` (runs in a worker thread)."""
        return events

    @staticmethod
    def prepare_centroids(centroids):
        """Convert one segment's centroids for :meth:`write_centroids` (runs in a worker thread)."""
        return centroids

    # ----------------------------------------------------------- data
    def write_tdcs(self, tdcs: np.ndarray) -> None:
        """All decoded TDC edges (``TDC_DTYPE``), in stream order."""

    def write_event_triggers(self, triggers: np.ndarray) -> None:
        """The edges used as event triggers (``plan.EVENT_TRIGGER_DTYPE``: number, time, counter)."""

    def write_events(self, events) -> None:
        """Hits assigned to triggers, in ToA order (as :meth:`prepare_events` made them)."""

    def write_centroids(self, centroids) -> None:
        """Cluster centroids (``CENTROID_DTYPE``), in canonical order (as prepared)."""

    def segment_done(self, t_hi: int | None) -> None:
        """Every event and centroid with ToA (``toa_first``) below ``t_hi`` has been given
        (None: the end of the stream)."""

    def close(self, counters: dict) -> None:
        """Finish the output; ``counters`` describes what happened to every word and hit."""

    def abort(self) -> None:
        """Give up (the runner then calls :meth:`discard_output`)."""

    def summary_lines(self) -> list[str]:
        """Extra lines for the command's report (e.g. trains written)."""
        return []


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
