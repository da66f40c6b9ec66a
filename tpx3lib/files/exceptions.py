"""Errors and warnings specific to raw recordings.

``RawWriteError`` is both a :class:`tpx3lib.errors.Tpx3Error` and an
:class:`OSError`, so callers catching either see it, and the ``tpx3`` CLI turns
it into a one-line message. The warnings let a reader report damage without
stopping (use ``strict=True`` on the reader to get exceptions instead).
"""
from __future__ import annotations

from tpx3lib.errors import Tpx3Error

__all__ = ["RawWriteError", "RawFileWarning", "TruncatedFileWarning", "CorruptChunkWarning"]


class RawWriteError(Tpx3Error, OSError):
    """Writing a raw recording failed (disk full, permission, I/O error).

    ``path`` is the file, ``offset`` where the failed write started,
    ``readable_until`` the end of the last complete chunk on disk (the file is
    valid up to there), ``chunks_lost`` how many accepted chunks did not reach it.
    """

    def __init__(self, message: str, path, errno: int | None = None, offset: int | None = None,
                 readable_until: int | None = None, chunks_lost: int = 0):
        super().__init__(errno, message)
        self.filename = str(path)
        self.path = str(path)
        self.offset = offset
        self.readable_until = readable_until
        self.chunks_lost = chunks_lost
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class RawFileWarning(UserWarning):
    """Something in a raw file was damaged but reading went on."""


class TruncatedFileWarning(RawFileWarning):
    """The file ends without its closing record or in the middle of a chunk."""


class CorruptChunkWarning(RawFileWarning):
    """A chunk failed its checksum or framing; reading resumed at the next valid chunk."""
