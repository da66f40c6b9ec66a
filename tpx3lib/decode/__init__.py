"""Decoding the Timepix3 64-bit word stream: pixels, TDC edges, heartbeats, events.

- :class:`StreamDecoder` / :func:`decode_words` (numba kernels in :mod:`.kernels`,
  numpy twin in :mod:`.reference`),
- :class:`EventBuilder` (trigger assignment, time of flight, reorder window).
"""
from .events import EventBuilder, assign_events
from .stream import DecodedChunk, DecoderState, StreamDecoder, as_words, decode_words

__all__ = ["StreamDecoder", "DecodedChunk", "DecoderState", "decode_words", "as_words",
           "EventBuilder", "assign_events"]
