"""Interoperability with the official implementations, installed from PyPI.

A separate virtual environment, cached at ``.cache/bridge-interop/`` and built
once under a lock, holds ``extra-data`` (without the ``karabo-bridge``
distribution); the official ``karabo-bridge`` 0.7.0 is installed into a
separate ``--target`` directory that only the "official side" puts on its
PYTHONPATH.  So:

1. the official ``karabo_bridge.Client`` reads trains from OUR servers
   (protocols 2.2 and 1.0; REP, PUB, PUSH);
2. OUR client reads trains from the official simulator (its ``SimServer``
   class bound on 127.0.0.1, and its ``karabo-bridge-server-sim`` command,
   which binds all interfaces and so runs in a private network namespace);
3. ``extra_data.export`` (``serve_data`` and ``ZMQStreamer``) streams a file
   through OUR package (repo root on PYTHONPATH) and our client reads it.

If PyPI cannot be reached the environment cannot be built and the tests fail
with a message saying so.
"""
from __future__ import annotations

import fcntl
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from karabo_bridge import Client, ServerInThread, make_metadata

pytestmark = pytest.mark.timeout(1200)

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bridge-interop"
LOCK = REPO / ".cache" / "bridge-interop.lock"
#: Change this string to force a rebuild of the cached environment.
ENV_SPEC = (f"interop-env v1, python {sys.version_info[0]}.{sys.version_info[1]}: "
            "extra-data psutil pyzmq msgpack msgpack-numpy | "
            "--target official: karabo-bridge==0.7.0 --no-deps")
VENV_PACKAGES = ["extra-data", "psutil", "pyzmq", "msgpack", "msgpack-numpy"]


# ----------------------------------------------------------------------------- environment
class InteropEnv:
    def __init__(self, root: Path):
        self.root = root
        self.python = str(root / "venv" / "bin" / "python")
        self.official = str(root / "official")

    def official_env(self) -> dict:
        """Environment for a process that must import the OFFICIAL karabo_bridge."""
        env = dict(os.environ)
        env["PYTHONPATH"] = self.official
        env.pop("PYTHONHOME", None)
        return env

    def ours_env(self) -> dict:
        """Environment for an interop-venv process that must import OUR karabo_bridge."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        env.pop("PYTHONHOME", None)
        return env


def _run_pip(args, what):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"Could not build the interop environment ({what}): pip exited "
                    f"{proc.returncode}. Is PyPI reachable?\n{proc.stdout[-2000:]}\n"
                    f"{proc.stderr[-3000:]}", pytrace=False)


def build_interop_env() -> InteropEnv:
    """Create (once, under a file lock) and return the cached interop environment."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    env = InteropEnv(CACHE)
    stamp = CACHE / "ready"
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == ENV_SPEC and Path(env.python).exists():
            return env
        shutil.rmtree(CACHE, ignore_errors=True)
        CACHE.mkdir(parents=True)
        subprocess.run([sys.executable, "-m", "venv", str(CACHE / "venv")], check=True,
                       timeout=300)
        pip = [env.python, "-m", "pip", "--disable-pip-version-check", "install", "-q",
               "--retries", "2", "--timeout", "60"]
        _run_pip(pip + VENV_PACKAGES, "extra-data and dependencies")
        _run_pip(pip + ["--no-deps", "--target", env.official, "karabo-bridge==0.7.0"],
                 "official karabo-bridge")
        stamp.write_text(ENV_SPEC)
        return env


@pytest.fixture(scope="module")
def interop():
    return build_interop_env()


def _run(cmd, env, timeout=120, **kw):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{cmd[:3]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


# ----------------------------------------------------------------------------- network namespace
#: Run as ``python -c NETNS_WRAPPER prog args...``: enter a new network namespace with only
#: loopback (up), then exec the program. A fresh single-threaded process does the unshare,
#: so no preexec_fn runs in the (threaded) test process.
NETNS_WRAPPER = textwrap.dedent("""
    import ctypes, fcntl, os, socket, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:          # CLONE_NEWNET
        sys.stderr.write("unshare(CLONE_NEWNET) failed: errno %d\\n" % ctypes.get_errno())
        os._exit(97)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # SIOCSIFFLAGS on "lo": IFF_UP | IFF_LOOPBACK | IFF_RUNNING
    fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", 0x1 | 0x8 | 0x40))
    s.close()
    os.execv(sys.argv[1], sys.argv[1:])
""")


def in_private_netns(cmd):
    """``cmd`` wrapped to run in a private network namespace (loopback only)."""
    return [sys.executable, "-c", NETNS_WRAPPER, *cmd]


def _netns_available() -> bool:
    # inside, the only interface must be loopback (so binding all interfaces is private)
    probe = [sys.executable, "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); "
             "lines = open('/proc/net/dev').read().splitlines()[2:]; "
             "print('ok' if [l.split(':')[0].strip() for l in lines] == ['lo'] else lines)"]
    try:
        proc = subprocess.run(in_private_netns(probe), capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


needs_netns = pytest.mark.skipif(not sys.platform.startswith("linux") or not _netns_available(),
                                 reason="cannot create a private network namespace here; these "
                                        "tools bind all interfaces, which tests may only do in one")


# ----------------------------------------------------------------------------- trains we serve
SRC_DET = "SPB_TEST/DET/1:daqOutput"
SRC_CTL = "SA1_XTD2/XGM/DOOCS"


def make_train(tid: int):
    """A train whose every value is a known function of its train ID."""
    data = {
        SRC_DET: {
            "data.image": (np.arange(12, dtype=np.uint16).reshape(3, 4) + tid % 1000),
            "data.spectrum": np.linspace(0, 1, 5, dtype=np.float32) * (tid % 7),
            "data.trainId": np.array([tid], dtype=np.uint64),
            "data.mask": np.array([True, False, tid % 2 == 0]),
            "data.counts": np.int64(tid % 100),
            "data.name": "detector",
            "data.list": [1, 2.5, "s"],
            "data.ok": True,
        },
        SRC_CTL: {"beam.x": tid / 3.0, "beam.ok": False},
    }
    meta = {s: make_metadata(s, tid, timestamp=1_700_000_000.25 + (tid % 1000) * 0.1)
            for s in data}
    return data, meta


def check_train(data, meta, protocol):
    """Compare a received train with make_train(its train ID)."""
    tid = meta[SRC_DET]["timestamp.tid"]
    exp_data, exp_meta = make_train(tid)
    assert set(data) == set(exp_data)
    for src, props in exp_data.items():
        got = data[src]
        extra = set(got) - set(props)
        assert extra <= {"metadata"}, extra
        if protocol == "1.0":
            assert got["metadata"] == exp_meta[src]
        for key, value in props.items():
            if isinstance(value, np.ndarray):
                assert isinstance(got[key], np.ndarray), key
                assert got[key].dtype == value.dtype, key
                np.testing.assert_array_equal(got[key], value)
            elif isinstance(value, np.generic):
                assert got[key] == value.item()
            else:
                assert got[key] == value, key
        assert meta[src] == exp_meta[src]
    return tid


OFFICIAL_CLIENT = textwrap.dedent("""
    import pickle, sys
    import karabo_bridge
    from karabo_bridge import Client
    endpoint, sock, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    client = Client(endpoint, sock=sock, timeout=30)
    trains = [client.next() for _ in range(n)]
    with open(out, "wb") as f:
        pickle.dump({"file": karabo_bridge.__file__, "version": karabo_bridge.__version__,
                     "trains": trains}, f, protocol=4)
""")


@pytest.mark.parametrize("protocol", ["2.2", "1.0"])
@pytest.mark.parametrize("sock,csock", [("REP", "REQ"), ("PUSH", "PULL"), ("PUB", "SUB")])
def test_official_client_reads_our_server(interop, tmp_path, protocol, sock, csock):
    script = tmp_path / "official_client.py"
    script.write_text(OFFICIAL_CLIENT)
    out = tmp_path / "trains.pkl"
    n = 4
    first = 10_000_000_100
    with ServerInThread("tcp://127.0.0.1:0", sock=sock, protocol_version=protocol) as server:
        proc = subprocess.Popen([interop.python, str(script), server.endpoint, csock, str(n),
                                 str(out)], env=interop.official_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if sock == "PUB":
                # Subscribers only see what is published after they joined: keep publishing.
                tid = first
                while proc.poll() is None and tid < first + 2000:
                    server.feed(*make_train(tid))
                    tid += 1
                    try:
                        proc.wait(timeout=0.02)
                    except subprocess.TimeoutExpired:
                        pass
            else:
                for tid in range(first, first + n):
                    server.feed(*make_train(tid))
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, stderr
    result = pickle.loads(out.read_bytes())
    assert result["version"] == "0.7.0"
    assert result["file"].startswith(interop.official), result["file"]
    tids = [check_train(d, m, protocol) for d, m in result["trains"]]
    if sock == "PUB":
        assert len(tids) == n and tids == sorted(tids) and len(set(tids)) == n
    else:
        assert tids == list(range(first, first + n))
    if sock != "PUB":
        assert server.stats.sent == n


OFFICIAL_SIM = textwrap.dedent("""
    import sys
    import karabo_bridge
    from karabo_bridge.server import SimServer
    assert karabo_bridge.__file__.startswith(sys.argv[3]), karabo_bridge.__file__
    server = SimServer("tcp://127.0.0.1:*", sock=sys.argv[1], protocol_version=sys.argv[2],
                       detector="AGIPDModule", raw=True, debug=False)
    server.loop()
""")


def check_sim_train(data, meta):
    """What the official simulator sends for AGIPDModule raw (its documented behaviour)."""
    src = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
    assert list(data) == [src]
    d, m = data[src], meta[src]
    tid = m["timestamp.tid"]
    assert tid >= 10_000_000_000
    img = d["image.data"]
    assert img.dtype == np.uint16 and img.shape == (128, 512, 64)
    assert img.min() >= 1500 and img.max() < 1600
    np.testing.assert_array_equal(d["image.trainId"], np.full(64, tid, dtype=np.uint64))
    np.testing.assert_array_equal(d["image.cellId"], np.arange(64, dtype=np.uint16))
    np.testing.assert_array_equal(d["image.pulseId"], np.arange(64, dtype=np.uint64))
    assert d["image.gain"].shape == (128, 512, 64) and not d["image.gain"].any()
    assert m["source"] == src
    assert m["timestamp.sec"] == str(int(m["timestamp"]))
    assert len(m["timestamp.frac"]) == 18
    return tid


@pytest.mark.parametrize("protocol", ["2.2", "1.0"])
@pytest.mark.parametrize("sock,csock", [("REP", "REQ"), ("PUSH", "PULL"), ("PUB", "SUB")])
def test_our_client_reads_official_simserver(interop, tmp_path, protocol, sock, csock):
    script = tmp_path / "official_sim.py"
    script.write_text(OFFICIAL_SIM)
    proc = subprocess.Popen([interop.python, str(script), sock, protocol, interop.official],
                            env=interop.official_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        endpoint = None
        for line in proc.stdout:
            if line.startswith("tcp://"):
                endpoint = line.strip()
                break
        assert endpoint, proc.stderr.read()
        with Client(endpoint, sock=csock, timeout=30) as client:
            tids = [check_sim_train(*client.next()) for _ in range(3)]
            assert client.stats.trains == 3 and client.stats.protocol_errors == 0
    finally:
        proc.kill()
        proc.communicate()
    assert tids == sorted(tids) and len(set(tids)) == 3
    if sock != "PUB":
        assert tids[1] - tids[0] >= 1


SIM_CLI_DRIVER = textwrap.dedent("""
    import json, subprocess, sys
    import karabo_bridge
    from karabo_bridge import Client
    interop_python, script, official, sock, csock, protocol, out = sys.argv[1:8]
    sim = subprocess.Popen([interop_python, script, "4545", "-z", sock, "-d", "AGIPDModule",
                            "-r", "-p", protocol], env={"PYTHONPATH": official, "PATH": ""},
                           stdout=subprocess.DEVNULL)
    try:
        with Client("tcp://127.0.0.1:4545", sock=csock, timeout=30) as client:
            trains = [client.next() for _ in range(2)]
    finally:
        sim.kill()
        sim.wait()
    src = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
    res = [{"sources": sorted(d), "tid": m[src]["timestamp.tid"],
            "shape": list(d[src]["image.data"].shape), "dtype": str(d[src]["image.data"].dtype),
            "min": int(d[src]["image.data"].min()), "max": int(d[src]["image.data"].max()),
            "trainId": sorted(set(d[src]["image.trainId"].tolist()))} for d, m in trains]
    with open(out, "w") as f:
        json.dump({"ours": karabo_bridge.__file__, "trains": res}, f)
""")


@needs_netns
@pytest.mark.parametrize("sock,csock,protocol", [("REP", "REQ", "2.2"), ("PUSH", "PULL", "1.0")])
def test_our_client_reads_official_server_sim_cli(interop, tmp_path, sock, csock, protocol):
    """karabo-bridge-server-sim binds tcp://*:port, so all of it runs in a private netns."""
    driver = tmp_path / "driver.py"
    driver.write_text(SIM_CLI_DRIVER)
    cli = Path(interop.official) / "bin" / "karabo-bridge-server-sim"
    assert cli.exists()
    out = tmp_path / "out.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(in_private_netns([sys.executable, str(driver), interop.python,
                                            str(cli), interop.official, sock, csock,
                                            protocol, str(out)]),
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["ours"].startswith(str(REPO / "karabo_bridge"))
    for t in res["trains"]:
        assert t["sources"] == ["SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"]
        assert t["shape"] == [128, 512, 64] and t["dtype"] == "uint16"
        assert 1500 <= t["min"] and t["max"] < 1600
        assert t["trainId"] == [t["tid"]]
    assert res["trains"][1]["tid"] == res["trains"][0]["tid"] + 1


# ----------------------------------------------------------------------------- extra_data.export
#: Writes a small European XFEL run file (see spec/euxfel-hdf5.md); values are known
#: functions of the train ID so the reader can check what arrives.
WRITE_RUN = textwrap.dedent("""
    import h5py, numpy as np

    CTL = "SA1_XTD2_XGM/DOOCS/MAIN"
    INST = "SPB_TEST_CAM/CAM/1:daqOutput"

    def write_run(path, first_tid=20_000_000, ntrains=5):
        tids = np.arange(first_tid, first_tid + ntrains, dtype=np.uint64)
        vlen = h5py.string_dtype()
        with h5py.File(path, "w") as f:
            md = f.create_group("METADATA")
            md["dataFormatVersion"] = np.array(["1.3"], dtype=object).astype(vlen)
            ids = ["CONTROL/" + CTL, "INSTRUMENT/" + INST + "/data"]
            md.create_dataset("dataSources/dataSourceId", data=ids, dtype=vlen)
            md.create_dataset("dataSources/root", data=["CONTROL", "INSTRUMENT"], dtype=vlen)
            md.create_dataset("dataSources/deviceId", data=[CTL, INST + "/data"], dtype=vlen)
            for k, v in {"creationDate": "20240101T000000Z", "updateDate": "20240101T000000Z",
                         "daqLibrary": "test", "karaboFramework": "test", "runType": "test",
                         "sample": "none"}.items():
                md.create_dataset(k, data=[v], dtype=vlen)
            for k, v in {"proposalNumber": 700000, "runNumber": 1, "sequenceNumber": 0}.items():
                md.create_dataset(k, data=np.array([v], dtype=np.uint32))
            f["INDEX/trainId"] = tids
            f["INDEX/timestamp"] = (1_700_000_000 + np.arange(ntrains, dtype=np.uint64)) * 10**9
            f["INDEX/flag"] = np.ones(ntrains, dtype=np.int32)
            f["INDEX/origin"] = np.full(ntrains, -1, dtype=np.int32)
            ones = np.ones(ntrains, dtype=np.uint64)
            first = np.arange(ntrains, dtype=np.uint64)
            for grp in (f"INDEX/{CTL}", f"INDEX/{INST}/data"):
                f[grp + "/first"] = first
                f[grp + "/count"] = ones
            ts = (1_700_000_000 + np.arange(ntrains, dtype=np.uint64)) * 10**9
            f[f"CONTROL/{CTL}/beamPosition/ixPos/value"] = tids.astype(np.float64) * 0.5
            f[f"CONTROL/{CTL}/beamPosition/ixPos/timestamp"] = ts
            f[f"RUN/{CTL}/beamPosition/ixPos/value"] = np.array([first_tid * 0.5])
            f[f"RUN/{CTL}/beamPosition/ixPos/timestamp"] = ts[:1]
            pix = (np.arange(20, dtype=np.uint16).reshape(1, 4, 5)
                   + (tids % 100).astype(np.uint16)[:, None, None])
            f[f"INSTRUMENT/{INST}/data/image/pixels"] = pix
            f[f"INSTRUMENT/{INST}/data/trainId"] = tids
        return tids
""")

SERVE_DATA = WRITE_RUN + textwrap.dedent("""
    import sys
    import karabo_bridge
    from extra_data import H5File
    from extra_data.export import serve_data
    path, repo, sock, protocol = sys.argv[1:5]
    assert karabo_bridge.__file__.startswith(repo), karabo_bridge.__file__
    print("MODULE", karabo_bridge.__file__, flush=True)
    write_run(path)
    serve_data(H5File(path), "tcp://127.0.0.1:*", sock=sock)
""")


def check_file_train(data, meta):
    ctl, inst = "SA1_XTD2_XGM/DOOCS/MAIN", "SPB_TEST_CAM/CAM/1:daqOutput"
    assert set(data) == {ctl, inst}
    tid = meta[inst]["timestamp.tid"]
    assert meta[ctl]["timestamp.tid"] == tid
    assert meta[ctl]["source"] == ctl and meta[inst]["source"] == inst
    assert data[ctl]["beamPosition.ixPos.value"] == tid * 0.5
    assert data[ctl]["beamPosition.ixPos.timestamp"] == (1_700_000_000 + tid - 20_000_000) * 10**9
    assert data[inst]["data.trainId"] == tid
    pix = data[inst]["data.image.pixels"]
    expected = np.arange(20, dtype=np.uint16).reshape(4, 5) + tid % 100
    assert pix.dtype == np.uint16 and pix.shape == (4, 5)
    np.testing.assert_array_equal(pix, expected)
    return tid


@pytest.mark.parametrize("sock,csock", [("REP", "REQ"), ("PUSH", "PULL")])
def test_extra_data_serve_data_through_our_sender(interop, tmp_path, sock, csock):
    script = tmp_path / "serve.py"
    script.write_text(SERVE_DATA)
    proc = subprocess.Popen([interop.python, str(script), str(tmp_path / "RAW-R0001-DA01-S00000.h5"),
                             str(REPO / "karabo_bridge"), sock, "2.2"],
                            env=interop.ours_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
    try:
        endpoint = module = None
        for line in proc.stdout:
            if line.startswith("MODULE"):
                module = line.split()[1]
            if "Streamer started on:" in line:
                endpoint = line.split("Streamer started on:")[1].strip()
                break
        assert endpoint and module, proc.stderr.read()
        assert module.startswith(str(REPO / "karabo_bridge"))
        with Client(endpoint, sock=csock, timeout=60) as client:
            tids = [check_file_train(*client.next()) for _ in range(5)]
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert tids == list(range(20_000_000, 20_000_005))


ZMQ_STREAMER = WRITE_RUN + textwrap.dedent("""
    import json, sys, warnings
    import numpy as np
    import karabo_bridge
    from extra_data import H5File
    from extra_data.export import ZMQStreamer
    path, protocol, out = sys.argv[1:4]
    tids = write_run(path)
    run = H5File(path)
    warnings.simplefilter("ignore", DeprecationWarning)
    streamer = ZMQStreamer(4545, protocol_version=protocol)   # binds tcp://*:4545
    streamer.start()
    received = []
    with karabo_bridge.Client("tcp://127.0.0.1:4545", timeout=30) as client:
        for tid, data in run.trains():
            streamer.feed(data)
            d, m = client.next()
            inst = "SPB_TEST_CAM/CAM/1:daqOutput"
            key = "data.image.pixels"
            received.append({"tid": m[inst]["timestamp.tid"], "file_tid": int(tid),
                             "sources": sorted(d), "meta_sources": sorted(m),
                             "ixPos": d["SA1_XTD2_XGM/DOOCS/MAIN"]["beamPosition.ixPos.value"],
                             "pixels": d[inst][key].tolist(), "dtype": str(d[inst][key].dtype),
                             "trainId": d[inst]["data.trainId"]})
    streamer.stop()
    with open(out, "w") as f:
        json.dump({"module": karabo_bridge.__file__, "type": type(streamer).__mro__[1].__module__,
                   "trains": received, "stats": streamer.stats.as_dict()}, f)
""")


@needs_netns
@pytest.mark.parametrize("protocol", ["2.2", "1.0"])
def test_extra_data_zmqstreamer_through_our_package(interop, tmp_path, protocol):
    """ZMQStreamer binds tcp://*:port, so it runs in a private network namespace."""
    script = tmp_path / "streamer.py"
    script.write_text(ZMQ_STREAMER)
    out = tmp_path / "out.json"
    proc = subprocess.run(in_private_netns([interop.python, str(script),
                                            str(tmp_path / "RAW-R0001-DA01-S00000.h5"),
                                            protocol, str(out)]),
                          env=interop.ours_env(), capture_output=True, text=True, timeout=180,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["module"].startswith(str(REPO / "karabo_bridge"))
    assert res["type"] == "karabo_bridge.server"
    assert [t["tid"] for t in res["trains"]] == list(range(20_000_000, 20_000_005))
    for t in res["trains"]:
        assert t["file_tid"] == t["tid"]
        assert t["sources"] == t["meta_sources"] == ["SA1_XTD2_XGM/DOOCS/MAIN",
                                                     "SPB_TEST_CAM/CAM/1:daqOutput"]
        assert t["ixPos"] == t["tid"] * 0.5
        expected = np.arange(20, dtype=np.uint16).reshape(4, 5) + t["tid"] % 100
        np.testing.assert_array_equal(np.array(t["pixels"]), expected)
        assert t["dtype"] == "uint16" and t["trainId"] == t["tid"]
    assert res["stats"]["sent"] == 5 and res["stats"]["fed"] == 5
