"""``tpx3 info``: word-type counts, triggers, duration, rates; native, truncated, HDF5, bad input."""
from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest

from tpx3lib.cli import main
from tpx3lib.files import open_raw
from tpx3lib.files.wordstats import WordStats

# fixtures/README.md: the documented word counts of centroid_pipeline_test.raw
EXPECTED = {"pixel": 1858, "TDC1 rising (0x6F)": 14, "TDC1 falling (0x6A)": 14, "TDC2 rising (0x6E)": 1100,
            "TDC2 falling (0x6B)": 1101, "global time low (0x44)": 2, "global time high (0x45)": 2,
            "end of command (0x71)": 4, "unknown": 0}


def _counts(text: str) -> dict[str, int]:
    out = {}
    for label in EXPECTED:
        m = re.search(r"^\s+" + re.escape(label) + r"\s+([\d,]+)\s*$", text, re.M)
        assert m, f"{label!r} missing from:\n{text}"
        out[label] = int(m.group(1).replace(",", ""))
    return out


def test_info_on_fixture(data_dir, capsys):
    assert main(["info", str(data_dir / "centroid_pipeline_test.raw")]) == 0
    out = capsys.readouterr().out
    assert _counts(out) == EXPECTED
    assert "format:     pymepix" in out and "2022-11-09T10:51:41" in out
    assert re.search(r"triggers \(TDC1 rising\)\s+14$", out, re.M)
    assert "state:      complete" in out and "4,095 words" in out
    m = re.search(r"duration\s+([\d.]+) s", out)
    assert m and 1.0 < float(m.group(1)) < 2.0      # two heartbeats 1.0022 s apart, hits a bit beyond
    assert re.search(r"hit rate\s+[\d.]+ kHz", out)


def test_info_json_and_native_copy_agree(data_dir, tmp_path, capsys):
    raw = (data_dir / "centroid_pipeline_test.raw").read_bytes()
    words = np.frombuffer(raw[8:], "<u8")
    path = tmp_path / "copy.raw"
    with open_raw(path, "wb", header={"chips": [{"index": 0, "name": "W0028_H06"}], "user": {"op": "test"}}) as w:
        for s in range(0, len(words), 512):
            part = words[s:s + 512]
            w.write_chunk(0, part, datagram_sizes=[part.nbytes // 2, part.nbytes - part.nbytes // 2]
                          if len(part) % 2 == 0 else None)
    assert main(["info", "--json", str(data_dir / "centroid_pipeline_test.raw"), str(path)]) == 0
    a, b = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert a["format"] == "pymepix" and b["format"] == "native"
    assert a["chips"]["0"]["counts"] == b["chips"]["0"]["counts"]
    assert a["chips"]["0"]["counts"]["pixel"] == 1858 and b["total"]["triggers"] == 14
    assert a["chips"]["0"]["duration_s"] == pytest.approx(b["chips"]["0"]["duration_s"])
    assert b["header"]["user"] == {"op": "test"} and b["chunks"] == 8 and not b["truncated"]
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "W0028_H06" in out and _counts(out) == EXPECTED and "closing:" in out


def test_info_reports_truncation_and_damage(tmp_path, capsys):
    path = tmp_path / "t.raw"
    w = open_raw(path, "wb", header={"chips": [{"index": 0}]})
    offs = [w.write_chunk(0, np.full(64, 0xB000000000000000 + i, np.uint64)) for i in range(4)]
    w.flush()
    data = bytearray(path.read_bytes())
    data[offs[1] + 100] ^= 0xFF
    path.write_bytes(bytes(data[:-10]))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"TRUNCATED at offset {offs[3]}" in out
    assert "1 damaged region" in out and str(offs[1]) in out
    assert re.search(r"^\s+pixel\s+128$", out, re.M)


def test_info_on_hdf5(tmp_path, capsys):
    path = tmp_path / "p.h5"
    with h5py.File(path, "w") as f:
        f.attrs["description"] = "processed"
        d = f.create_dataset("raw/x", data=np.arange(10, dtype="u1"), compression="gzip", chunks=(5,))
        d.attrs["unit"] = "pixel"
        f.create_group("triggers/trigger1")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "/raw/x  10 rows" in out and "uint8" in out and "gzip" in out and "@unit = pixel" in out
    assert "/triggers/trigger1/" in out


def test_info_bad_input_message_not_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not detector data at all" * 10)
    assert main(["info", str(bad), str(tmp_path / "missing.raw")]) == 1
    err = capsys.readouterr().err
    assert "unknown content" in err and "missing.raw" in err and "Traceback" not in err


def test_wordstats_independent_of_batch_size(data_dir):
    words = np.frombuffer((data_dir / "centroid_pipeline_test.raw").read_bytes()[8:], "<u8")
    results = []
    for n in (1, 7, 333, 4095):
        s = WordStats()
        for i in range(0, len(words), n):
            s.update(words[i:i + n])
        results.append(s.summary())
    assert all(r == results[0] for r in results)
    chip = results[0]["chips"][0]
    assert chip["heartbeats"] == 2
    assert chip["heartbeat_span_s"] == pytest.approx((0x050B70D9 - 0x02A7BF41) * 25e-9)
