"""Pixel configuration: the 6-bit per-pixel word and its packing for SET_PIXCONF.

Index order: every matrix here is a numpy array of shape (256, 256) indexed
``[x, y]``: ``x`` is the column (0..255, the double-column address ``x // 2``
of the data stream), ``y`` the row within that column. ``a[x]`` is one whole
column, which is how the chip is loaded.

The 6-bit pixel word::

    bit 0     mask (1 = pixel switched off)
    bits 1-4  threshold adjustment (0..15)
    bit 5     test bit

SET_PIXCONF payload: the first column index as a 32-bit word, then the words of
consecutive whole columns (y = 0..255 within each column), four 6-bit words
packed MSB-first into three bytes::

    b0 = p1 << 2 | p2 >> 4
    b1 = (p2 << 4) & 0xF0 | p3 >> 2
    b2 = (p3 << 6) & 0xC0 | p4

so one column is 192 bytes. GET_PIXCONF answers one column: its index word and
then 256 bytes, one unpacked 6-bit word per byte (y = 0..255).
"""
from __future__ import annotations

import numpy as np

from tpx3lib.errors import ConfigError

__all__ = [
    "N_COLUMNS", "N_ROWS", "MATRIX_SHAPE", "BYTES_PER_COLUMN",
    "MASK_BIT", "THRESHOLD_SHIFT", "THRESHOLD_MASK", "TEST_BIT",
    "compose_pixel_words", "split_pixel_words", "reverse_threshold_bits",
    "pack_pixel_words", "unpack_pixel_words", "pixconf_messages",
]

N_COLUMNS = 256
N_ROWS = 256
MATRIX_SHAPE = (N_COLUMNS, N_ROWS)
BYTES_PER_COLUMN = N_ROWS * 6 // 8  # 192

MASK_BIT = 0x01
THRESHOLD_SHIFT = 1
THRESHOLD_MASK = 0x1E
TEST_BIT = 0x20

# 4-bit bit reversal: _REV4[0b0001] == 0b1000
_REV4 = np.array([int(f"{i:04b}"[::-1], 2) for i in range(16)], dtype=np.uint8)


def _matrix(a, name: str, maximum: int) -> np.ndarray:
    arr = np.asarray(a)
    if arr.shape != MATRIX_SHAPE:
        raise ConfigError(f"{name} must have shape {MATRIX_SHAPE} indexed [x, y], got {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "iu":
        raise ConfigError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > maximum):
        raise ConfigError(f"{name} values must lie in [0, {maximum}], got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.uint8)


def reverse_threshold_bits(threshold) -> np.ndarray:
    """Reverse the 4 bits of each threshold value (0b0001 <-> 0b1000)."""
    return _REV4[np.asarray(threshold, dtype=np.uint8) & 0xF]


def compose_pixel_words(mask, threshold, test, *, reverse_threshold: bool = False) -> np.ndarray:
    """Build the (256, 256) uint8 matrix of 6-bit pixel words from its three parts.

    ``mask``: 1/True = pixel switched off; ``threshold``: 0..15; ``test``: 0/1.
    ``reverse_threshold`` writes the threshold bits in reverse order (see
    docs/spidr.md: SoPhy declares its threshold field as 4 bits reversed).
    """
    m = _matrix(mask, "mask", 1)
    t = _matrix(threshold, "threshold", 15)
    s = _matrix(test, "test", 1)
    if reverse_threshold:
        t = reverse_threshold_bits(t)
    return (m | (t << THRESHOLD_SHIFT) | (s << 5)).astype(np.uint8)


def split_pixel_words(words, *, reverse_threshold: bool = False):
    """Inverse of :func:`compose_pixel_words`: ``(mask bool, threshold uint8, test bool)``."""
    w = np.asarray(words, dtype=np.uint8)
    t = (w & THRESHOLD_MASK) >> THRESHOLD_SHIFT
    if reverse_threshold:
        t = reverse_threshold_bits(t)
    return (w & MASK_BIT).astype(bool), t.astype(np.uint8), (w & TEST_BIT).astype(bool)


def pack_pixel_words(values) -> bytes:
    """Pack a 1-D sequence of 6-bit words (length a multiple of 4) into bytes, 4 words -> 3 bytes."""
    v = np.asarray(values, dtype=np.uint8).reshape(-1)
    if v.size % 4:
        raise ValueError(f"pixel words come in groups of 4, got {v.size}")
    if v.size and v.max() > 0x3F:
        raise ValueError("pixel words are 6 bits (0..63)")
    p = v.reshape(-1, 4).astype(np.uint16)
    out = np.empty((p.shape[0], 3), dtype=np.uint8)
    out[:, 0] = ((p[:, 0] << 2) | (p[:, 1] >> 4)) & 0xFF
    out[:, 1] = (((p[:, 1] << 4) & 0xF0) | (p[:, 2] >> 2)) & 0xFF
    out[:, 2] = (((p[:, 2] << 6) & 0xC0) | p[:, 3]) & 0xFF
    return out.tobytes()


def unpack_pixel_words(data: bytes) -> np.ndarray:
    """Inverse of :func:`pack_pixel_words`: bytes (multiple of 3) -> uint8 6-bit words."""
    b = np.frombuffer(bytes(data), dtype=np.uint8)
    if b.size % 3:
        raise ValueError(f"packed pixel data comes in groups of 3 bytes, got {b.size}")
    b = b.reshape(-1, 3).astype(np.uint16)
    out = np.empty((b.shape[0], 4), dtype=np.uint8)
    out[:, 0] = b[:, 0] >> 2
    out[:, 1] = ((b[:, 0] & 0x3) << 4) | (b[:, 1] >> 4)
    out[:, 2] = ((b[:, 1] & 0xF) << 2) | (b[:, 2] >> 6)
    out[:, 3] = b[:, 2] & 0x3F
    return out.reshape(-1)


def pixconf_messages(words, columns_per_message: int = 3):
    """Split a (256, 256) word matrix into SET_PIXCONF payloads.

    Yields ``(first_column, packed_bytes)``. With the default of 3 columns this
    is pymepix's split: 85 messages of 3 columns and a last one of column 255.
    """
    w = np.asarray(words, dtype=np.uint8)
    if w.shape != MATRIX_SHAPE:
        raise ValueError(f"pixel words must have shape {MATRIX_SHAPE}, got {w.shape}")
    if not 1 <= columns_per_message <= 4:
        raise ValueError("columns_per_message must be 1..4")
    for first in range(0, N_COLUMNS, columns_per_message):
        last = min(first + columns_per_message, N_COLUMNS)
        yield first, pack_pixel_words(w[first:last, :].reshape(-1))
