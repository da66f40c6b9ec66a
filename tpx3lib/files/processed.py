"""Reading a processed HDF5 file back: ``tpx3lib.load(path)``.

Every group whose datasets are 1-D and of equal length becomes one table (a
numpy structured array whose field names are the dataset names, e.g.
``data["raw"]["tof"]``), keyed by the group path without the leading slash
("raw", "centroided", "timing/timepix", "triggers/trigger1", ...). Units are
in ``data.units[table][column]``. With ``pandas=True`` the tables are
``pandas.DataFrame`` s instead.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from tpx3lib.errors import FileFormatError

__all__ = ["load", "ProcessedData"]


@dataclasses.dataclass
class ProcessedData:
    """A processed file in memory: header of the source, how it was made, tables."""

    path: str
    layout: str | None
    header: dict                       # the (first) source raw file's header
    sources: list[dict]                # every source file: path, format, header, closing, ...
    attrs: dict                        # root attributes (JSON ones decoded)
    tables: dict                       # name -> structured array (or DataFrame)
    units: dict                        # name -> {column: unit}

    def __getitem__(self, name: str):
        return self.tables[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tables

    def keys(self):
        return self.tables.keys()


def _decode_attr(v):
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    if isinstance(v, np.generic):
        return v.item()
    return v


def load(path, *, pandas: bool = False) -> ProcessedData:
    """Load a processed HDF5 file (tables in memory; see the module docstring)."""
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "no such file", path)
    if not h5py.is_hdf5(path):
        raise FileFormatError("not an HDF5 file (a raw recording? use tpx3lib.open_raw)", path, 0)
    tables, units = {}, {}
    with h5py.File(path, "r") as f:
        attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
        src = f.get("source")
        header = _decode_attr(src.attrs.get("header", "{}")) if src is not None else {}
        sources = _decode_attr(src.attrs.get("files", "[]")) if src is not None else []

        def visit(name, obj):
            if not isinstance(obj, h5py.Group):
                return
            cols = [(k, v) for k, v in obj.items() if isinstance(v, h5py.Dataset)]
            if not cols or any(v.ndim != 1 for _, v in cols) or len({v.shape[0] for _, v in cols}) != 1:
                return
            dtype = np.dtype([(k, v.dtype) for k, v in cols])
            arr = np.empty(cols[0][1].shape[0], dtype)
            for k, v in cols:
                arr[k] = v[()]
            tables[name] = arr
            units[name] = {k: _decode_attr(v.attrs.get("unit", "")) for k, v in cols}

        f.visititems(visit)
    if pandas:
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("pandas=True needs pandas: pip install pandas") from None
        tables = {k: pd.DataFrame({c: v[c] for c in v.dtype.names}) for k, v in tables.items()}
    return ProcessedData(path=path, layout=attrs.get("layout"), header=header if isinstance(header, dict) else {},
                         sources=sources if isinstance(sources, list) else [], attrs=attrs, tables=tables,
                         units=units)
