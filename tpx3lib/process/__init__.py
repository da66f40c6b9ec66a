"""Offline processing of raw recordings into HDF5 (``tpx3 process``).

:func:`process_files` streams the input through the pipeline's decode, event
and clustering stages in segments (see :mod:`.plan`), in parallel if asked,
and writes a layout: :mod:`.pymepix_layout` (one file, pymepix's names) or
:mod:`.exdf_layout` (a European XFEL run directory); the interface is
:class:`.output.OutputWriter`. docs/process.md describes both.
"""
from .options import ProcessOptions
from .output import LAYOUTS, OutputWriter, writer_class
from .runner import ProcessSummary, process_files

__all__ = ["process_files", "ProcessOptions", "ProcessSummary", "OutputWriter", "LAYOUTS", "writer_class"]
