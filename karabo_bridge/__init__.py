"""Karabo Bridge: stream trains of data over ZeroMQ (protocol 2.2 and 1.0).

A drop-in superset of the public API of the karabo-bridge 0.7 package
(``Client``, ``serialize``, ``deserialize``, ``ServerInThread``,
``server.Sender``, ``start_gen``, the ``karabo-bridge-*`` command line tools),
written for this project.  It provides the ``karabo_bridge`` import name, so
it must not be installed in one environment with the ``karabo-bridge``
distribution.

Extensions: ``MultiClient`` (several endpoints matched by train ID), train
stride over consumers (``next <divisor> <remainder>``), per-train latency and
drop counters (``.stats``), typed errors (``ProtocolError`` ...).
"""
from __future__ import annotations

__version__ = "0.7.0+tango_tpx3"

from . import cli  # noqa: F401  (the reference exposes karabo_bridge.cli)
from .client import Client
from .errors import (BridgeError, EmptyTrainError, ProtocolError, SerializationError,
                     ServerError)
from .malloc import keep_message_memory
from .metadata import make_metadata, timestamp_fields, train_id_of
from .multi import IncompleteTrain, MultiClient
from .serializer import deserialize, serialize, split_fields
from .server import Sender, ServerInThread, start_gen

__all__ = [
    "__version__",
    "Client", "serialize", "deserialize", "ServerInThread", "start_gen",
    "Sender", "MultiClient", "IncompleteTrain",
    "split_fields", "make_metadata", "timestamp_fields", "train_id_of", "keep_message_memory",
    "BridgeError", "ProtocolError", "SerializationError", "EmptyTrainError", "ServerError",
]
