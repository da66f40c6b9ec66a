"""Command line tools, simulator and the public API surface."""
from __future__ import annotations

import importlib.metadata
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import karabo_bridge
from karabo_bridge import Client, ServerInThread, make_metadata
from karabo_bridge.cli import glimpse, monitor, simulation as sim_cli
from karabo_bridge.simulation import Detector, data_generator

REPO = Path(__file__).resolve().parents[1]
LOCAL = "tcp://127.0.0.1:0"
SRC = "TEST_DET/CAM/1:daqOutput"


def feed_trains(server, tids):
    for tid in tids:
        server.feed({SRC: {"data.image": np.arange(6, dtype=np.int32).reshape(2, 3) * tid,
                           "data.label": "hello", "data.values": [1.5, 2.5]}},
                    {SRC: make_metadata(SRC, tid, timestamp=1_700_000_000.5)})


# ----------------------------------------------------------------------------- API surface
def test_version_is_ours_and_not_older_than_the_reference():
    from packaging.version import Version
    assert Version(karabo_bridge.__version__) >= Version("0.7.0")
    assert "tango" in karabo_bridge.__version__


def _params(obj):
    return [(p.name, p.default) for p in inspect.signature(obj).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


E = inspect.Parameter.empty


@pytest.mark.parametrize("obj,expected", [
    (karabo_bridge.Client, [("endpoint", E), ("sock", "REQ"), ("ser", "msgpack"),
                            ("timeout", None), ("context", None)]),
    (karabo_bridge.serialize, [("data", E), ("metadata", None), ("protocol_version", "2.2"),
                               ("dummy_timestamps", False)]),
    (karabo_bridge.deserialize, [("msg", E)]),
    (karabo_bridge.ServerInThread, [("endpoint", E), ("sock", "REP"), ("maxlen", 10),
                                    ("protocol_version", "2.2"), ("dummy_timestamps", False)]),
    (karabo_bridge.ServerInThread.feed, [("self", E), ("data", E), ("metadata", None),
                                         ("block", True), ("timeout", None)]),
    (karabo_bridge.server.Sender, [("endpoint", E), ("sock", "REP"), ("protocol_version", "2.2"),
                                   ("dummy_timestamps", False)]),
    (karabo_bridge.server.Sender.send, [("self", E), ("data", E), ("metadata", None),
                                        ("timeout", None)]),
    (karabo_bridge.start_gen, [("port", E), ("sock", "REP"), ("ser", "msgpack"),
                               ("version", "2.2"), ("detector", "AGIPD"), ("raw", False),
                               ("nsources", 1), ("datagen", "random"),
                               ("data_like", "online")]),
])
def test_reference_signatures(obj, expected):
    """The positional parameters and defaults of the karabo-bridge 0.7 API."""
    assert _params(obj) == expected


def test_reference_names_and_entry_points():
    assert karabo_bridge.server.start_gen is karabo_bridge.start_gen
    assert issubclass(karabo_bridge.ServerInThread, karabo_bridge.server.Sender)
    for name in ("Client", "serialize", "deserialize", "ServerInThread", "start_gen"):
        assert name in karabo_bridge.__all__
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    expected = {"karabo-bridge-glimpse": "karabo_bridge.cli.glimpse:main",
                "karabo-bridge-monitor": "karabo_bridge.cli.monitor:main",
                "karabo-bridge-server-sim": "karabo_bridge.cli.simulation:main"}
    for name, value in expected.items():
        if name in eps:  # declared in pyproject.toml; present once the project is installed
            assert eps[name] == value
    assert glimpse.main and monitor.main and sim_cli.main


# ----------------------------------------------------------------------------- glimpse / monitor
def test_glimpse_prints_and_saves_one_train(tmp_path, capsys):
    import h5py
    out = tmp_path / "train.h5"
    with ServerInThread(LOCAL) as server:
        feed_trains(server, [42])
        rc = glimpse.main([server.endpoint, "-s", "-o", str(out), "-t", "10"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Train ID: 42" in text and repr(SRC) in text
    assert "data.image" in text and "int32, (2, 3)" in text
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f[SRC]["data.image"][()],
                                      np.arange(6, dtype=np.int32).reshape(2, 3) * 42)
        assert f[SRC]["data.label"][()].decode() == "hello"
        assert f[SRC]["data.values"][()].tolist() == [1.5, 2.5]
        assert f[SRC].attrs["timestamp.tid"] == 42


def test_glimpse_timeout_returns_error(capsys):
    with ServerInThread(LOCAL) as server:
        assert glimpse.main([server.endpoint, "-t", "0.2"]) == 1
    assert "No data received" in capsys.readouterr().err


@pytest.mark.parametrize("sock", ["REP", "PUSH"])
def test_monitor_counts_trains(capsys, sock):
    with ServerInThread(LOCAL, sock=sock) as server:
        feed_trains(server, [1, 2, 4])
        rc = monitor.main([server.endpoint, "-z", sock, "--ntrains", "3", "-t", "10"])
    assert rc == 0
    text = capsys.readouterr().out
    assert [line for line in text.splitlines() if line.startswith("Train ID:")] == [
        "Train ID: 1 --------------------------", "Train ID: 2 --------------------------",
        "Train ID: 4 --------------------------"]
    assert "trains received: 3" in text and "missed (train-ID gaps): 1" in text


# ----------------------------------------------------------------------------- simulator
@pytest.mark.parametrize("sock,csock,protocol", [("REP", "REQ", "2.2"), ("PUSH", "PULL", "1.0")])
def test_server_sim_cli_serves_simulated_detector_data(sock, csock, protocol):
    proc = subprocess.Popen(
        [sys.executable, "-m", "karabo_bridge.cli.simulation", "*", "--host", "127.0.0.1",
         "-z", sock, "-p", protocol, "-d", "AGIPDModule", "--raw", "--ntrains", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        endpoint = None
        for line in proc.stdout:
            if line.startswith("tcp://"):
                endpoint = line.strip()
                break
        assert endpoint and endpoint.startswith("tcp://127.0.0.1:"), proc.stderr.read()
        with Client(endpoint, sock=csock, timeout=30) as client:
            trains = [client.next() for _ in range(3)]
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Stopped after 3 trains" in out
    src = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
    for i, (data, meta) in enumerate(trains):
        tid = 10_000_000_000 + i
        assert list(data) == [src] and meta[src]["timestamp.tid"] == tid
        img = data[src]["image.data"]
        assert img.shape == (128, 512, 64) and img.dtype == np.uint16
        assert img.min() >= 1500 and img.max() < 1600
        assert data[src]["image.trainId"].tolist() == [tid] * 64
        assert data[src]["image.cellId"].tolist() == list(range(64))
        assert data[src]["image.pulseId"].dtype == np.uint64
        assert meta[src]["timestamp.sec"] == str(int(meta[src]["timestamp"]))


@pytest.mark.parametrize("detector,raw,data_like,shape,dtype", [
    ("AGIPD", False, "online", (16, 128, 512, 64), np.float32),
    ("AGIPD", True, "file", (64, 16, 512, 128), np.uint16),
    ("LPD", False, "online", (16, 256, 256, 300), np.float32),
    ("LPD", True, "file", (300, 16, 256, 256), np.uint16),
    ("AGIPDModule", True, "online", (128, 512, 64), np.uint16),
    ("AGIPDModule", True, "file", (64, 512, 128), np.uint16),
])
def test_simulated_detector_geometry(detector, raw, data_like, shape, dtype):
    # zeros: numpy allocates them lazily, so even the 1 GB LPD image costs nothing here
    det = Detector(detector, raw=raw, gen="zeros", data_like=data_like)
    data, meta = det.gen_data(10_000_000_005)
    (src,) = data
    d = data[src]
    assert d["image.data"].shape == shape and d["image.data"].dtype == dtype
    assert ("image.passport" in d) == (not raw)
    if det.modules > 1:
        assert d["modulesPresent"] == [True] * 16
        assert d["sources"][3] == src.rpartition("/")[0] + "/3CH0:xtdf"
    assert meta[src]["timestamp.tid"] == 10_000_000_005 and meta[src]["source"] == src
    assert src == {("AGIPD", False): "SPB_DET_AGIPD1M-1/CAL/APPEND_CORRECTED",
                   ("AGIPD", True): "SPB_DET_AGIPD1M-1/CAL/APPEND_RAW",
                   ("LPD", False): "FXE_DET_LPD1M-1/CAL/APPEND_CORRECTED",
                   ("LPD", True): "FXE_DET_LPD1M-1/CAL/APPEND_RAW",
                   ("AGIPDModule", True): "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"}[(detector, raw)]


def test_data_generator_several_sources():
    gen = data_generator("AGIPDModule", raw=True, nsources=3, datagen="zeros")
    data, meta = next(gen)
    base = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
    assert sorted(data) == [f"{base}-1", f"{base}-2", f"{base}-3"]
    assert meta[f"{base}-2"]["source"] == f"{base}-2"
    assert {m["timestamp.tid"] for m in meta.values()} == {10_000_000_000}
    assert next(gen)[1][f"{base}-1"]["timestamp.tid"] == 10_000_000_001


def test_simulator_rejects_unknown_options():
    with pytest.raises(NotImplementedError):
        Detector("JUNGFRAU")
    with pytest.raises(NotImplementedError):
        Detector("AGIPDModule", raw=False)
    with pytest.raises(SystemExit):
        sim_cli.main(["4545", "-d", "AGIPDModule"])  # needs --raw, refused before binding


@pytest.mark.parametrize("sock,csock", [("REP", "REQ"), ("PUSH", "PULL")])
def test_sim_server_in_thread(tmp_path, sock, csock):
    from karabo_bridge.server import SimServerInThread
    endpoint = f"ipc://{tmp_path}/sim"
    with SimServerInThread(endpoint, sock=sock, detector="AGIPDModule", raw=True) as server, \
            Client(server.endpoint, sock=csock, timeout=30) as client:
        tids = [client.next()[1]["SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"]["timestamp.tid"]
                for _ in range(3)]
    assert tids == [10_000_000_000, 10_000_000_001, 10_000_000_002]
