"""Serializer and deserializer of the Karabo Bridge wire protocol, versions 2.2 and 1.0.

Protocol 2.2 (default): one train is one multipart message of ``(header,
payload)`` frame pairs.  Per source (sorted by name) a ``msgpack`` pair
``{"source", "content": "msgpack", "metadata"}`` / map of non-array values,
followed by one ``array`` pair per array,
``{"source", "content": "array", "path", "dtype", "shape"}`` / raw C-order
bytes (sent zero-copy).

Protocol 1.0: a single frame, the msgpack map ``{source: {key: value, ...,
"metadata": {...}}}`` with arrays encoded the msgpack-numpy way (a map with the
bin keys ``nd``, ``type``, ``kind``, ``shape``, ``data``).

Both directions follow the rules real clients enforce: ``metadata`` is always
present in the msgpack header, dtypes are numpy names of native-endian types,
keys are ``str``, numpy scalars are sent as Python scalars, no object arrays,
no empty train.  Malformed messages raise :class:`~karabo_bridge.ProtocolError`.
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import msgpack
import numpy as np

from .errors import EmptyTrainError, ProtocolError, SerializationError, ServerError
from .metadata import timestamp_fields

__all__ = ["serialize", "deserialize", "split_fields", "PROTOCOL_VERSIONS", "message_nbytes"]

#: Protocol versions this package speaks (the reference speaks the same two).
PROTOCOL_VERSIONS = ("1.0", "2.2")
#: Largest bin object the deserializer accepts (as the reference client).
MAX_BIN_LEN = 2**31 - 1


# --------------------------------------------------------------------------- helpers
def _check_keys(obj, where: str) -> None:
    """Raise SerializationError for a non-str map key anywhere in ``obj``."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise SerializationError(
                    f"{where}: map key {k!r} is a {type(k).__name__}; keys must be str "
                    "(clients unpack with strict map keys)")
            if isinstance(v, (Mapping, list, tuple)):
                _check_keys(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            if isinstance(v, (Mapping, list, tuple)):
                _check_keys(v, f"{where}[{i}]")


def _default(obj):
    """msgpack hook: numpy scalars as Python scalars, nested arrays as lists."""
    if isinstance(obj, np.generic):
        if obj.dtype.kind in "OV":
            raise SerializationError(f"cannot serialize numpy {obj.dtype} scalar")
        value = obj.item()
        if isinstance(value, np.generic) or type(value) is type(obj):
            raise SerializationError(f"cannot serialize numpy {obj.dtype} scalar")
        return value
    if isinstance(obj, np.ndarray):  # nested inside a list/dict of the msgpack part
        if obj.dtype.kind in "OV":
            raise SerializationError(f"cannot serialize a nested {obj.dtype} array")
        return obj.tolist()
    raise SerializationError(
        f"cannot serialize a value of type {type(obj).__module__}.{type(obj).__qualname__}")


def _native_array(src: str, key: str, arr: np.ndarray) -> np.ndarray:
    """Check an array can go on the wire; return it native-endian and C-contiguous."""
    dt = arr.dtype
    if dt.kind == "O":
        raise SerializationError(
            f"{src!r} key {key!r}: object arrays cannot be sent (dtype {dt}); "
            "convert to a numeric or fixed-width string array, or drop the key")
    if dt.fields is not None or dt.kind == "V":
        raise SerializationError(
            f"{src!r} key {key!r}: structured/void arrays have no numpy dtype name "
            f"clients understand ({dt}); use karabo_bridge.split_fields() to send one "
            "array per field")
    if not dt.isnative:
        arr = arr.astype(dt.newbyteorder("="))
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


@lru_cache(maxsize=256)
def _dtype_name(dt: np.dtype) -> str:
    """``str(dtype)`` (cached: numpy builds the name anew at every call, ~5 us)."""
    return str(dt)


def _raw_bytes(arr: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous array (no copy)."""
    return memoryview(arr.reshape(-1).view(np.uint8))


def split_fields(array: np.ndarray, prefix: str) -> dict:
    """Split a structured array into one C-contiguous array per field.

    ``split_fields(hits, "data.hits")`` -> ``{"data.hits.x": ..., "data.hits.y": ...}``,
    the flat dotted keys the bridge (and EuXFEL files) use.
    """
    if array.dtype.fields is None:
        raise TypeError(f"split_fields needs a structured array, got dtype {array.dtype}")
    return {f"{prefix}.{name}": np.ascontiguousarray(array[name]) for name in array.dtype.names}


def _source_metadata(src, props, metadata):
    if metadata is not None and src in metadata:
        meta = metadata[src]
    else:
        meta = props.get("metadata", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        raise SerializationError(f"metadata of {src!r} must be a dict, got {type(meta).__name__}")
    return dict(meta)


def _check_train(data) -> None:
    if not isinstance(data, Mapping):
        raise SerializationError(f"train data must be a dict keyed by source, got {type(data).__name__}")
    if len(data) == 0:
        raise EmptyTrainError("refusing to serialize an empty train (no source): "
                              "ZeroMQ cannot send a zero-frame message")
    for src, props in data.items():
        if not isinstance(src, str):
            raise SerializationError(f"source name {src!r} is a {type(src).__name__}; must be str")
        if not isinstance(props, Mapping):
            raise SerializationError(f"data of source {src!r} must be a dict, got {type(props).__name__}")


# --------------------------------------------------------------------------- serialize
def serialize(data, metadata=None, protocol_version="2.2", dummy_timestamps=False):
    """Serialize one train to a list of frames (bytes and zero-copy memoryviews).

    Parameters
    ----------
    data : dict
        ``{source: {key: value}}``; values are Python built-ins, numpy scalars
        or numpy arrays (arrays become their own frames in 2.2).
    metadata : dict, optional
        ``{source: {...}}`` (see :mod:`karabo_bridge.metadata`); a source
        missing here takes ``data[source]["metadata"]`` or ``{}``.
    protocol_version : ``"2.2"`` (default) or ``"1.0"``
    dummy_timestamps : bool
        Add ``timestamp``, ``timestamp.sec``, ``timestamp.frac`` (now) to
        sources whose metadata lacks ``timestamp``.

    Raises
    ------
    EmptyTrainError
        if ``data`` has no source.
    SerializationError
        for non-str keys, object/structured arrays or unsupported values.
    ValueError
        for an unknown protocol version.
    """
    if protocol_version not in PROTOCOL_VERSIONS:
        raise ValueError(f"Unknown protocol version {protocol_version!r}; "
                         f"supported: {', '.join(PROTOCOL_VERSIONS)}")
    _check_train(data)
    ts = timestamp_fields() if dummy_timestamps else None
    if protocol_version == "1.0":
        return _serialize_v1(data, metadata, ts)

    msg = []
    for src in sorted(data):
        props = data[src]
        src_meta = _source_metadata(src, props, metadata)
        if ts is not None and "timestamp" not in src_meta:
            src_meta.update(ts)
        main, arrays = {}, []
        for key, value in props.items():
            if not isinstance(key, str):
                raise SerializationError(f"source {src!r}: key {key!r} is a {type(key).__name__}; must be str")
            if isinstance(value, np.ndarray):
                arrays.append((key, value))
            elif isinstance(value, np.generic):
                main[key] = _default(value)
            else:
                main[key] = value
        _check_keys(main, src)
        _check_keys(src_meta, f"metadata of {src}")
        try:
            msg.append(msgpack.packb({"source": src, "content": "msgpack", "metadata": src_meta},
                                     use_bin_type=True, default=_default))
            msg.append(msgpack.packb(main, use_bin_type=True, default=_default))
        except (TypeError, OverflowError, ValueError) as exc:
            if isinstance(exc, SerializationError):
                raise
            raise SerializationError(f"source {src!r}: {exc}") from exc
        for key, arr in arrays:
            arr = _native_array(src, key, arr)
            msg.append(msgpack.packb({"source": src, "content": "array", "path": key,
                                      "dtype": _dtype_name(arr.dtype), "shape": list(arr.shape)},
                                     use_bin_type=True))
            msg.append(_raw_bytes(arr))
    return msg


def _default_v1(obj):
    """msgpack hook for protocol 1.0: arrays the msgpack-numpy way."""
    if isinstance(obj, np.ndarray):
        arr = _native_array("?", "?", obj)
        return {b"nd": True, b"type": arr.dtype.str, b"kind": b"",
                b"shape": list(arr.shape), b"data": _raw_bytes(arr)}
    return _default(obj)


def _serialize_v1(data, metadata, ts):
    new = {}
    for src, props in data.items():
        src_meta = _source_metadata(src, props, metadata)
        if ts is not None and "timestamp" not in src_meta:
            src_meta.update(ts)
        d = dict(props)
        d["metadata"] = src_meta
        for key, value in d.items():
            if isinstance(value, np.ndarray):
                _native_array(src, key, value)  # raise with the source and key named
        _check_keys(d, src)
        new[src] = d
    try:
        return [msgpack.packb(new, use_bin_type=True, default=_default_v1)]
    except (TypeError, OverflowError, ValueError) as exc:
        if isinstance(exc, SerializationError):
            raise
        raise SerializationError(str(exc)) from exc


# --------------------------------------------------------------------------- deserialize
def _buffer(frame) -> memoryview:
    """A flat byte memoryview of a zmq.Frame, bytes, bytearray or memoryview."""
    buf = getattr(frame, "buffer", None)
    if buf is None:
        buf = memoryview(frame)
    if buf.ndim != 1 or buf.format != "B":
        buf = buf.cast("B")
    return buf


def _unpack(buf, what: str, **kw):
    try:
        return msgpack.unpackb(buf, raw=False, max_bin_len=MAX_BIN_LEN, **kw)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"{what} is not valid msgpack: {type(exc).__name__}: {exc}") from exc


@lru_cache(maxsize=256)
def _dtype_from_name(name: str) -> np.dtype:
    try:
        dt = np.dtype(name)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"unknown dtype name {name!r}") from exc
    if dt.kind == "O" or dt.fields is not None or dt.kind == "V":
        raise ProtocolError(f"dtype {name!r} cannot be carried by the bridge (object/void)")
    return dt


def _parse_dtype(name) -> np.dtype:
    if not isinstance(name, str):
        raise ProtocolError(f"dtype must be a numpy dtype name (str), got {name!r}")
    return _dtype_from_name(name)


def _parse_shape(shape, where):
    if not isinstance(shape, (list, tuple)) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ProtocolError(f"{where}: shape must be a list of non-negative ints, got {shape!r}")
    return tuple(shape)


def _check_error_reply(buf) -> None:
    if bytes(buf[:5]) == b"Error":
        raise ServerError("server answered with an error instead of a train: "
                          + bytes(buf[:500]).decode("utf-8", "replace"))


def deserialize(msg):
    """Deserialize one message (a list of ``zmq.Frame`` or bytes-like frames).

    Returns ``(data, metadata)``, both dicts keyed by source.  Arrays are
    read-only views of the received frames (no copy).  A message of one frame
    is protocol 1.0, otherwise 2.2.

    Raises
    ------
    ProtocolError
        for any malformed message (no frames, odd frame count, bad header,
        unknown content, unknown dtype name, payload size mismatch, ...).
    ServerError
        if the message is a server's error string.
    """
    frames = list(msg)
    nframes = len(frames)
    if nframes == 0:
        raise ProtocolError("empty message: no frames")
    if nframes == 1:
        return _deserialize_v1(_buffer(frames[0]))
    if nframes % 2:
        raise ProtocolError(f"odd number of frames ({nframes}); a protocol 2.2 message is "
                            "(header, payload) pairs")
    data, meta = {}, {}
    for i in range(0, nframes, 2):
        hbuf = _buffer(frames[i])
        if i == 0:
            _check_error_reply(hbuf)
        md = _unpack(hbuf, f"header frame {i}")
        if not isinstance(md, dict):
            raise ProtocolError(f"header frame {i} must be a msgpack map, got {type(md).__name__}")
        source = md.get("source")
        if not isinstance(source, str):
            raise ProtocolError(f"header frame {i} lacks a str 'source': {md!r}")
        content = md.get("content")
        if content == "msgpack":
            if source in data:
                raise ProtocolError(f"frame {i}: source {source!r} has a second msgpack pair")
            payload = _unpack(_buffer(frames[i + 1]), f"payload frame {i + 1} of {source!r}")
            if not isinstance(payload, dict):
                raise ProtocolError(f"payload frame {i + 1} of {source!r} must be a msgpack map, "
                                    f"got {type(payload).__name__}")
            src_meta = md.get("metadata", {})
            if not isinstance(src_meta, dict):
                raise ProtocolError(f"header frame {i}: metadata of {source!r} must be a map")
            data[source] = payload
            meta[source] = src_meta
        elif content == "array":
            if source not in data:
                raise ProtocolError(f"frame {i}: array of source {source!r} before its msgpack pair")
            path = md.get("path")
            if not isinstance(path, str):
                raise ProtocolError(f"header frame {i} lacks a str 'path': {md!r}")
            where = f"array {source!r}/{path!r}"
            dt = _parse_dtype(md.get("dtype"))
            shape = _parse_shape(md.get("shape"), where)
            buf = _buffer(frames[i + 1])
            expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            if buf.nbytes != expected:
                raise ProtocolError(f"{where}: payload has {buf.nbytes} bytes, shape {list(shape)} "
                                    f"of {dt} needs {expected}")
            if path in data[source]:
                raise ProtocolError(f"{where}: key given twice in one train")
            data[source][path] = np.frombuffer(buf, dtype=dt).reshape(shape)
        else:
            raise ProtocolError(f"header frame {i} of {source!r}: unknown content {content!r}")
    return data, meta


def _decode_nd(obj):
    """msgpack object_hook decoding msgpack-numpy maps (protocol 1.0)."""
    if b"nd" in obj:
        try:
            descr = obj[b"type"]
            if isinstance(descr, bytes):
                descr = descr.decode()
            raw = obj[b"data"]
            if obj[b"nd"]:
                if obj.get(b"kind") == b"O":
                    raise ProtocolError("1.0 object array (pickled) refused: not unpickling "
                                        "data from the network")
                if obj.get(b"kind") == b"V":
                    fields = [tuple(x.decode() if isinstance(x, bytes) else x for x in d)
                              for d in descr]
                    try:
                        dt = np.dtype(fields)
                    except (TypeError, ValueError) as exc:
                        raise ProtocolError(f"bad structured dtype {descr!r}") from exc
                else:
                    dt = _parse_dtype(descr)
                shape = _parse_shape(obj[b"shape"], "1.0 array")
                expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
                if len(raw) != expected:
                    raise ProtocolError(f"1.0 array: {len(raw)} bytes, shape {list(shape)} "
                                        f"of {dt} needs {expected}")
                return np.frombuffer(raw, dtype=dt).reshape(shape)
            dt = _parse_dtype(descr)
            if len(raw) != dt.itemsize:
                raise ProtocolError(f"1.0 scalar of {dt}: {len(raw)} bytes")
            return np.frombuffer(raw, dtype=dt)[0]
        except KeyError as exc:
            raise ProtocolError(f"1.0 array map lacks {exc.args[0]!r}") from exc
    if b"complex" in obj:
        raw = obj.get(b"data")
        try:
            return complex(raw.decode() if isinstance(raw, bytes) else raw)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"bad 1.0 complex value {raw!r}") from exc
    return obj


def _deserialize_v1(buf):
    _check_error_reply(buf)
    obj = _unpack(buf, "protocol 1.0 message", object_hook=_decode_nd)
    if not isinstance(obj, dict):
        raise ProtocolError(f"protocol 1.0 message must be a msgpack map, got {type(obj).__name__}")
    meta = {}
    for src, value in obj.items():
        if not isinstance(src, str) or not isinstance(value, dict):
            raise ProtocolError(f"protocol 1.0 message: entry {src!r} is not a source map")
        src_meta = value.get("metadata", {})
        meta[src] = src_meta if isinstance(src_meta, dict) else {}
    return obj, meta


def message_nbytes(frames) -> int:
    """Total size in bytes of a list of frames."""
    return sum(_buffer(f).nbytes for f in frames)
