"""Helpers shared by the run-file tests (a module, not a test file)."""
from __future__ import annotations

import h5py

__all__ = ["run_datasets"]


def run_datasets(run_dir) -> dict:
    """Every dataset of every file of a run directory (METADATA dates aside), by (file name,
    dataset path): for comparing two runs value by value."""
    out = {}
    for p in sorted(run_dir.glob("*.h5")):
        with h5py.File(p, "r") as f:
            def take(name, obj, p=p):
                if isinstance(obj, h5py.Dataset) and not name.endswith(("creationDate", "updateDate")):
                    out[(p.name, name)] = obj[()]
            f.visititems(take)
    return out
