"""The processing pipeline: per-chip chains (decode -> events -> clusters), sinks, and the
live pipeline that runs them on captured UDP data."""
from .processor import PRODUCTS, ChipProcessor, ProcessedChunk, ProcessingConfig
from .state import PipelineState

__all__ = ["ChipProcessor", "ProcessedChunk", "ProcessingConfig", "PRODUCTS", "PipelineState", "LivePipeline",
           "Train", "TrainAssembler", "train_message", "KaraboBridgeSink", "ExdfSink"]

# Loaded when first asked for: the live pipeline pulls in capture (multiprocessing, shared
# memory), the publishers ZeroMQ and h5py.
_LAZY = {"LivePipeline": ".live", "Train": ".trains", "TrainAssembler": ".trains", "train_message": ".trains",
         "KaraboBridgeSink": ".bridge_sink", "ExdfSink": ".exdf_sink"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
