"""karabo_bridge.malloc: the client's C heap tuning keeps received train memory for reuse
(measured as page faults per received train in a real client process), and can be refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from karabo_bridge import ServerInThread, make_metadata
from karabo_bridge.malloc import ENV_VAR, _libc

REPO = Path(__file__).resolve().parents[1]
SRC = "TEST/DET/1:out"
MB = 8

pytestmark = pytest.mark.skipif(_libc() is None, reason="glibc only (mallopt)")

CLIENT = textwrap.dedent("""
    import json, resource, sys
    from karabo_bridge import Client
    from karabo_bridge.malloc import malloc_tuning
    endpoint, n, tune = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    faults = []
    with Client(endpoint, timeout=20, tune_malloc=tune) as client:
        data = None
        for _ in range(n):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            data, meta = client.next()        # the previous train is still held meanwhile
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            assert int(data["%s"]["data.image"][-1]) == meta["%s"]["timestamp.tid"] %% 65536
    print(json.dumps({"faults": faults, "tuning": malloc_tuning()}))
""" % (SRC, SRC))


def run_client(n: int, tune: bool, env=None):
    image = np.arange(MB * 500_000, dtype=np.uint16)
    with ServerInThread("tcp://127.0.0.1:0", sock="REP", maxlen=1) as server:
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, server.endpoint, str(n), "1" if tune else "0"],
                                stdout=subprocess.PIPE, cwd=REPO, env={**os.environ, **(env or {})}, text=True)
        try:
            for tid in range(1, n + 1):
                img = image.copy()
                img[-1] = tid
                server.feed({SRC: {"data.image": img}}, {SRC: make_metadata(SRC, tid)}, timeout=30)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0
    return json.loads(out.strip().splitlines()[-1])


def test_tuned_client_receives_into_reused_memory_after_two_trains():
    res = run_client(8, tune=True)
    pages = MB * 1e6 / 4096
    assert res["tuning"]["mmap_threshold"] >= 16 << 20 and res["tuning"]["trim_threshold"] >= 1 << 30
    assert min(res["faults"][:1]) > pages / 2                   # the first train: fresh memory
    assert max(res["faults"][2:]) < pages / 20, res["faults"]   # then the memory of train k-2


def test_tuning_can_be_refused():
    assert run_client(2, tune=False)["tuning"] == {}
    assert run_client(2, tune=True, env={ENV_VAR: "0"})["tuning"] == {}


def test_a_pipeline_in_the_same_process_can_raise_the_thresholds_never_lower_them():
    code = textwrap.dedent("""
        import json
        from karabo_bridge.malloc import keep_message_memory, malloc_tuning
        from tpx3lib.memory import keep_freed_memory
        out = [keep_message_memory(), malloc_tuning(), keep_freed_memory(), malloc_tuning(),
               keep_message_memory(), malloc_tuning()]
        print(json.dumps(out))
    """)
    res = json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True,
                                    text=True).stdout)
    assert res[0] is res[2] is res[4] is True
    client, pipeline, again = res[1], res[3], res[5]
    assert pipeline["mmap_threshold"] > client["mmap_threshold"] >= 16 << 20
    assert pipeline["trim_threshold"] >= client["trim_threshold"]
    assert again == pipeline
