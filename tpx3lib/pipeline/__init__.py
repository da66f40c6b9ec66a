"""The processing pipeline: per-chip chains (decode -> events -> clusters) and sinks."""
from .processor import PRODUCTS, ChipProcessor, ProcessedChunk, ProcessingConfig

__all__ = ["ChipProcessor", "ProcessedChunk", "ProcessingConfig", "PRODUCTS"]
