"""``tpx3 process``: summary on success; bad input, options and output give a message and exit 1."""
from __future__ import annotations

import numpy as np
import pytest

import tpx3lib
from tpx3lib.cli import main


@pytest.fixture
def raw(data_dir):
    return str(data_dir / "centroid_pipeline_test.raw")


def test_process_fixture(raw, tmp_path, capsys):
    out = tmp_path / "o.h5"
    assert main(["process", raw, "-o", str(out), "--centroid", "--trigger-numbers", "sequence",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "1,858 hits" in text and "14 triggers" in text and "21 events" in text and "1 centroids" in text
    data = tpx3lib.load(out)
    assert data["raw"]["trigger nr"].tolist() == [6] * 21
    assert data["centroided"]["clustersize"].tolist() == [21.0]


def test_progress_bar_goes_to_stderr(raw, tmp_path, capsys):
    assert main(["process", raw, "-o", str(tmp_path / "o.h5"), "--workers", "2", "--compression", "gzip"]) == 0
    err = capsys.readouterr().err
    assert "tpx3 process" in err and "Mhits/s" in err and "100%" in err


@pytest.mark.parametrize("case", ["unknown", "exists", "lut", "truncated", "missing", "window", "layout"])
def test_errors_are_messages(case, raw, tmp_path, capsys):
    out = tmp_path / "o.h5"
    args = [raw]
    extra = []
    if case == "unknown":
        bad = tmp_path / "bad.raw"
        bad.write_text("hello\n" * 100)
        args, want = [str(bad)], "unknown content"
    elif case == "exists":
        out.write_bytes(b"keep me")
        want = "--overwrite"
    elif case == "lut":
        lut = tmp_path / "lut.npy"
        lut.write_bytes(b"garbage")
        extra, want = ["--centroid", "--timewalk", str(lut)], "timewalk"
    elif case == "truncated":
        words = np.fromfile(raw, "<u8")[1:]
        src = tmp_path / "cut.raw"
        with tpx3lib.open_raw(src, "wb", header={"chips": [{"index": 0}]}) as w:
            w.write_chunk(0, words)
        src.write_bytes(src.read_bytes()[:-100])
        args, want = [str(src)], "--allow-damaged"
    elif case == "missing":
        args, want = [str(tmp_path / "nope.raw")], "nope.raw"
    elif case == "window":
        extra, want = ["--event-window", "1", "0"], "event window"
    else:
        extra, want = ["--layout", "exdf", "--run", "12345"], "run number must be in 0..9999"
    assert main(["process", *args, "-o", str(out), "--no-progress", *extra]) == 1
    err = capsys.readouterr().err
    assert want in err and "Traceback" not in err
    if case == "exists":
        assert out.read_bytes() == b"keep me"
    else:
        assert not out.exists()
    assert not (tmp_path / "o.h5.part").exists()


def test_allow_damaged_processes_what_is_readable(raw, tmp_path, capsys):
    words = np.fromfile(raw, "<u8")[1:]
    src = tmp_path / "cut.raw"
    with tpx3lib.open_raw(src, "wb", header={"chips": [{"index": 0}]}) as w:
        for i in range(0, words.size, 500):
            w.write_chunk(0, words[i:i + 500])
    src.write_bytes(src.read_bytes()[:-300])
    out = tmp_path / "o.h5"
    assert main(["process", str(src), "-o", str(out), "--allow-damaged", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "cut short" in captured.err
    assert tpx3lib.load(out)["raw"].size == 21
