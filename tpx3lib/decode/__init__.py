"""Decoding the Timepix3 64-bit word stream."""
