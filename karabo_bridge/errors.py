"""Typed errors of the Karabo Bridge package.

Every error subclasses the builtin it refines, so code that catches
``ValueError`` or ``RuntimeError`` (as it would with the reference package)
keeps working.
"""
from __future__ import annotations

__all__ = [
    "BridgeError",
    "ProtocolError",
    "SerializationError",
    "EmptyTrainError",
    "ServerError",
]


class BridgeError(Exception):
    """Base of every error this package raises on purpose."""


class ProtocolError(BridgeError, ValueError):
    """A received message breaks the Karabo Bridge protocol.

    Examples: an odd number of frames, a header that is not a msgpack map or
    lacks ``source``/``content``, unknown ``content``, an unknown or object
    dtype name, a payload whose size does not match ``shape`` and ``dtype``.
    """


class SerializationError(BridgeError, ValueError):
    """Data handed to the serializer cannot be sent under the protocol rules
    (non-str keys, object or structured arrays, unsupported value types, ...)."""


class EmptyTrainError(SerializationError):
    """A train with no source: ZeroMQ cannot send a zero-frame message, and
    consumers cannot tell an empty train from a broken one, so it is refused."""


class ServerError(BridgeError, RuntimeError):
    """The server answered a request with an error string instead of a train
    (e.g. a reference server that does not understand ``next <d> <r>``)."""
