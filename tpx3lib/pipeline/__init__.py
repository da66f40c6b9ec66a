"""The processing pipeline: per-chip chains (decode -> events -> clusters), sinks, and the
live pipeline that runs them on captured UDP data."""
from .processor import PRODUCTS, ChipProcessor, ProcessedChunk, ProcessingConfig
from .state import PipelineState

__all__ = ["ChipProcessor", "ProcessedChunk", "ProcessingConfig", "PRODUCTS", "PipelineState", "LivePipeline"]


def __getattr__(name):
    # the live pipeline pulls in capture (multiprocessing, shared memory): load it when asked for
    if name == "LivePipeline":
        from .live import LivePipeline
        return LivePipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
