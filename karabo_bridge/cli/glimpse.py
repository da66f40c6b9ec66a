"""karabo-bridge-glimpse: receive one train, print its structure, optionally save it to HDF5."""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from socket import gethostname

import numpy as np

from ..client import Client

__all__ = ["main", "print_one_train", "pretty_print", "gen_filename", "dict_to_hdf5",
           "hdf5_to_dict", "SOCKET_MAP"]

#: Client socket type matching each server socket type.
SOCKET_MAP = {"REP": "REQ", "PUB": "SUB", "PUSH": "PULL"}


def gen_filename(endpoint: str) -> str:
    """``host_port_YYYYmmdd_HHMMSSff.h5`` from an endpoint and the current time."""
    now = datetime.now().strftime("%Y%m%d_%H%M%S%f")[:-4]
    base = endpoint.split("://", 1)[-1]
    if base.startswith("localhost:"):
        base = gethostname().split(".")[0] + base[len("localhost"):]
    base = base.replace(":", "_").replace("/", "_").replace("*", "all")
    return f"{base}_{now}.h5"


def _write(group, key, value):
    import h5py
    if isinstance(value, Mapping):
        sub = group.require_group(key)
        for k, v in sorted(value.items()):
            _write(sub, k, v)
    elif isinstance(value, np.ndarray):
        group.create_dataset(key, data=value)
    elif isinstance(value, (bool, int, float, np.generic)):
        group.create_dataset(key, data=value)
    elif isinstance(value, str):
        group.create_dataset(key, data=value.replace("\x00", ""), dtype=h5py.string_dtype())
    elif isinstance(value, bytes):
        group.create_dataset(key, data=np.void(value))
    elif isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value):
            group.create_dataset(key, data=list(value), dtype=h5py.string_dtype())
        else:
            try:
                arr = np.asarray(value)
            except ValueError:
                arr = None
            if arr is None or arr.dtype.kind == "O":
                print(f"not saved (ragged or mixed list): {group.name}/{key}", file=sys.stderr)
            else:
                group.create_dataset(key, data=arr)
    elif value is None:
        group.attrs[key + ".is_none"] = True
    else:
        print(f"not saved (type {type(value).__name__}): {group.name}/{key}", file=sys.stderr)


def dict_to_hdf5(data: dict, endpoint: str, metadata: dict | None = None,
                 filename: str | None = None) -> str:
    """Save a train (``{source: {key: value}}``) to an HDF5 file, one group per
    source, one dataset per key, the source's metadata as group attributes.
    Returns the file name."""
    import h5py
    filename = filename or gen_filename(endpoint)
    with h5py.File(filename, "w") as f:
        for src, props in sorted(data.items()):
            grp = f.require_group(src)
            for key, value in sorted(props.items()):
                if key == "metadata" and isinstance(value, Mapping):
                    continue
                _write(grp, key, value)
            for k, v in (metadata or {}).get(src, {}).items():
                try:
                    grp.attrs[k] = v
                except (TypeError, ValueError):
                    grp.attrs[k] = str(v)
    print("dumped to", filename)
    return filename


def hdf5_to_dict(filepath, group="/") -> dict:
    """Load an HDF5 file (or one group of it) into nested dicts of arrays."""
    import h5py
    if not h5py.is_hdf5(filepath):
        raise ValueError(f"{filepath} is not an HDF5 file")

    def walk(node):
        out = {}
        for key, value in node.items():
            out[key] = walk(value) if isinstance(value, h5py.Group) else value[()]
        return out

    with h5py.File(filepath, "r") as f:
        return walk(f[group])


def pretty_print(d: Mapping, ind: str = "", verbosity: int = 0) -> None:
    """Print a (nested) dict of train data: type, dtype/shape, values by verbosity."""
    for k, v in sorted(d.items()):
        base = f"{ind} - [{type(v).__name__}] {k}"
        if isinstance(v, Mapping):
            print(base.replace("-", "+", 1))
            pretty_print(v, ind + "  ", verbosity)
            continue
        if isinstance(v, np.ndarray):
            node = f"{base}, {v.dtype}, {v.shape}"
            if verbosity >= 2:
                node += f"\n{v}"
        elif isinstance(v, (list, tuple)):
            if v:
                pos = base.find("]")
                base = base[:pos] + f" of {type(v[0]).__name__}" + base[pos:]
            node = f"{base}, {v}"
            if verbosity < 1 and len(node) > 80:
                node = node[:77] + "..."
        else:
            node = f"{base}, {v}"
        print(node)


def print_one_train(client, verbosity: int = 0):
    """Receive one train from ``client``, print it; return ``(data, metadata)``."""
    t0 = time.time()
    data, meta = client.next()
    t1 = time.time()
    if not data:
        print("Empty data")
        return data, meta
    tid = next(iter(meta.values()), {}).get("timestamp.tid", 0)
    print("Train ID:", tid, "--------------------------")
    print(f"Data from {len(data)} sources, receiving took {(t1 - t0) * 1000:.2f} ms")
    print()
    for i, (src, src_data) in enumerate(sorted(data.items()), start=1):
        src_meta = meta.get(src, {})
        print(f"Source {i}: {src!r} @ {src_meta.get('timestamp.tid', 0)}")
        ts = src_meta.get("timestamp")
        if isinstance(ts, (int, float)):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
            print(f"timestamp: {when} ({ts}) | delay: {(t1 - ts) * 1000:.2f} ms")
        else:
            print("No timestamp")
        if verbosity < 1:
            print("- data:", sorted(src_data))
            print("- metadata:", sorted(src_meta))
        else:
            print("data:")
            pretty_print(src_data, verbosity=verbosity - 1)
            if src_meta:
                print("metadata:")
                pretty_print(src_meta)
        print()
    return data, meta


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="karabo-bridge-glimpse",
        description="Get one Karabo bridge message and print its data structure; "
                    "optionally save its data to an HDF5 file.")
    ap.add_argument("endpoint", help="ZMQ address to connect to, e.g. 'tcp://localhost:4545'")
    ap.add_argument("-z", "--server-socket", default="REP", choices=list(SOCKET_MAP),
                    help="Socket type used by the karabo bridge server (default REP)")
    ap.add_argument("-s", "--save", action="store_true",
                    help="Save the received train data to an HDF5 file")
    ap.add_argument("-o", "--output", help="HDF5 file name for --save (default: generated)")
    ap.add_argument("-v", "--verbose", action="count", default=0,
                    help="Select verbosity (-vv for most verbose)")
    ap.add_argument("-t", "--timeout", type=float, default=None,
                    help="Give up after this many seconds (default: wait forever)")
    args = ap.parse_args(argv)

    with Client(args.endpoint, sock=SOCKET_MAP[args.server_socket], timeout=args.timeout) as client:
        try:
            data, meta = print_one_train(client, verbosity=args.verbose + 1)
        except TimeoutError as exc:
            print(f"karabo-bridge-glimpse: {exc}", file=sys.stderr)
            return 1
    if args.save:
        dict_to_hdf5(data, args.endpoint, meta, filename=args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
