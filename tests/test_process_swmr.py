"""``tpx3 process --swmr``: another process opens the pymepix file with ``swmr=True`` while it is
written and sees it grow, every intermediate state a prefix of the final data."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

import tpx3lib.process.h5chunks as h5chunks
import tpx3lib.process.pymepix_layout as pymepix_layout
from test_process_synth import make_stream
from tpx3lib.errors import ConfigError
from tpx3lib.process import ProcessOptions, process_files

READER = textwrap.dedent("""
    import json, os, sys, time, h5py
    path, final, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    seen, error, f = [], None, None
    open(ready, "w").close()
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if f is None:
                try:       # not there yet, or still locked until the writer turns SWMR on
                    f = h5py.File(path, "r", swmr=True)
                except OSError:
                    time.sleep(0.005)
                    continue
            ds = f["raw/x"]
            ds.refresh()
            n = ds.shape[0]
            if not seen or n != seen[-1][0]:
                seen.append([n, ds[:n].astype("int64").tolist()[-50:]])
            if n >= final:
                break
        except Exception as exc:   # noqa: BLE001 - reported to the test
            error = repr(exc)
            break
        time.sleep(0.01)
    if f is not None:
        f.close()
    print(json.dumps({"seen": seen, "error": error}))
""")


def test_a_reader_follows_the_file_while_it_grows(tmp_path, monkeypatch):
    words, _ = make_stream(3000, seed=5)
    src = tmp_path / "in.raw"
    words.tofile(src)
    opts = dict(segment_words=8192, margin_words=2048)
    ref = tmp_path / "ref.h5"
    process_files(src, ref, ProcessOptions(**opts))
    with h5py.File(ref, "r") as f:
        final_x = f["raw/x"][()].astype(np.int64)
        final = {k: f[k][()] for k in ("raw/tof", "raw/tot", "timing/timepix/trigger nr")}
    assert final_x.size > 40_000

    # small chunks, and a pause after each write, so the reader sees many states
    monkeypatch.setattr(pymepix_layout, "CHUNK_ROWS", 2048)
    slow_write = h5chunks.ColumnTable._write_chunks

    def write_then_pause(self, items, rows):
        slow_write(self, items, rows)
        time.sleep(0.02)

    monkeypatch.setattr(h5chunks.ColumnTable, "_write_chunks", write_then_pause)
    out = tmp_path / "live.h5"
    ready = tmp_path / "ready"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(out), str(final_x.size), str(ready)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(2000):
            if ready.exists():
                break
            time.sleep(0.005)
        s = process_files(src, out, ProcessOptions(swmr=True, **opts))
        stdout, stderr = reader.communicate(timeout=120)
    finally:
        reader.kill()
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["error"] is None, (report["error"], stderr)
    sizes = [n for n, _ in report["seen"]]
    growing = [n for n in sizes if 0 < n < final_x.size]
    assert len(growing) >= 3, sizes                                   # it saw the file grow
    assert sizes == sorted(sizes) and sizes[-1] == final_x.size
    for n, tail in report["seen"]:                                    # each state a prefix of the end
        assert tail == final_x[max(n - 50, 0):n].tolist()
    # the finished file: same data as without SWMR, counters added at the end
    with h5py.File(out, "r") as f:
        assert np.array_equal(f["raw/x"][()], final_x)
        for k, v in final.items():
            assert np.array_equal(f[k][()], v), k
        assert json.loads(f.attrs["counters"])["events"] == s.events == final_x.size
        assert "centroided" not in f
        assert f["raw/x"].compression == "lzf"


def test_swmr_is_refused_for_a_run_directory():
    with pytest.raises(ConfigError, match="SWMR"):
        ProcessOptions(layout="exdf", swmr=True)
