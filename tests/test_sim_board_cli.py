"""``tpx3 sim``: the board as a foreground process, and the file writer."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from tpx3lib.cli import main
from tpx3lib.spidr import Cmd, SpidrController

ROOT = Path(__file__).resolve().parents[1]


def _first_line(proc, timeout=60.0) -> str:
    box = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    assert box, "the simulator printed nothing"
    return box[0]


def test_serve_prints_its_port_and_stops_on_sigterm():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "tpx3lib.cli", "sim", "--port", "0", "--chips", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        line = _first_line(proc)
        assert line.startswith("listening on 127.0.0.1:")
        port = int(line.strip().rsplit(":", 1)[1])
        with SpidrController(("127.0.0.1", port), timeout=10) as ctrl:
            assert ctrl.get_int(Cmd.GET_DEVICECOUNT) == 2
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_sigint_also_stops():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "tpx3lib.cli", "sim", "--port", "0", "--start-near-wrap"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        port = int(_first_line(proc).strip().rsplit(":", 1)[1])
        with SpidrController(("127.0.0.1", port), timeout=10) as ctrl:
            lsb, msb = ctrl.get_ints(Cmd.GET_TIMER, 0, 2)
            assert (msb << 32 | lsb) >= (1 << 30) - 2 * 40_000_000  # started two seconds before the wrap
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_write_pymepix_file_with_truth(tmp_path, capsys):
    out = tmp_path / "sim.raw"
    truth = tmp_path / "sim.truth"
    assert main(["sim", "--write", str(out), "--hits", "500", "--truth", str(truth), "--seed", "3"]) == 0
    assert "500 hits" in capsys.readouterr().out
    data = out.read_bytes()
    words = np.frombuffer(data[8:], "<u8")  # 8-byte time stamp, then 64-bit words
    assert int(((words >> np.uint64(60)) == 0xB).sum()) == 500
    assert truth.exists()


def test_write_tpx3_file(tmp_path):
    out = tmp_path / "sim.tpx3"
    assert main(["sim", "--write", str(out), "--hits", "100", "--format", "tpx3", "--chips", "2"]) == 0
    assert out.read_bytes()[:4] == b"TPX3"


def test_argument_errors(capsys):
    assert main(["sim", "--hits", "5"]) == 2
    assert main(["sim", "--write", "x.raw"]) == 2
    assert main(["sim", "--chips", "0"]) == 2
    assert "--write" in capsys.readouterr().err


def test_serve_defaults_are_the_issues():
    import argparse
    from tpx3lib.commands import sim
    p = argparse.ArgumentParser()
    sim.add_arguments(p)
    a = p.parse_args([])
    assert (a.host, a.port, a.chips) == ("127.0.0.1", 50000, 1)     # loopback, SPIDR port 50000, one chip
    m = sim._model(a)
    assert m.trigger_rate_hz == 10.0                                # TDC1 at 10 Hz, like European XFEL trains
    m = sim._model(p.parse_args(["--rate", "5", "--trigger-rate", "2"]))
    assert (m.hit_rate_hz, m.trigger_rate_hz) == (5.0, 2.0)
