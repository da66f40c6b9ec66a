"""Capture start/stop: nothing left behind, faults reported, stop always returns."""
from __future__ import annotations

import os
import signal
import socket
import time

import psutil
import pytest

from tpx3lib.capture import Capture, CaptureError, UdpSender


def shm_names() -> set[str]:
    try:
        return {f for f in os.listdir("/dev/shm") if f.startswith(f"tpx3r_{os.getpid()}_")}
    except FileNotFoundError:  # pragma: no cover
        return set()


def udp_sockets() -> int:
    return len(psutil.Process().net_connections(kind="udp"))


def children() -> set[int]:
    """Live child processes (the multiprocessing resource tracker is shared and may stay)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture
def baseline():
    before = (shm_names(), children(), udp_sockets(), psutil.Process().num_fds())
    yield before
    assert shm_names() == before[0], "shared-memory segments left behind"
    assert children() <= before[1], "receiver processes left behind"
    assert udp_sockets() == before[2], "sockets left open in the parent"


def test_twenty_start_stop_cycles_leave_nothing_behind(baseline):
    cap = Capture(chips=[0], ports=[0], ring_bytes=256 << 10)    # (two chips: the other tests)
    fds_after_first = None
    for cycle in range(20):
        cap.start()
        assert cap.alive and len(cap.pids) == 1
        pids = list(cap.pids.values())
        if cycle % 5 == 0:   # use it now and then, with a reader attached across stop
            reader = cap.ring(0)
            with UdpSender(cap.ports[0]) as tx:
                tx.send([b"\0" * 64] * 10)
        final = cap.stop()
        assert not cap.alive and cap.fault is None
        assert all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)
        assert shm_names() == baseline[0]
        if cycle % 5 == 0:
            got = reader.read(timeout=1.0)          # the mapping outlives the unlink
            assert len(got) == 10 and final[0]["datagrams"] == 10
            reader.release(got)
            reader.close()
        if cycle == 0:
            fds_after_first = psutil.Process().num_fds()
    assert psutil.Process().num_fds() <= fds_after_first, "file descriptors leak per cycle"
    assert cap.stop() == final                      # stop is idempotent


def test_port_in_use_fails_start_clearly_and_cleans_up(baseline):
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    try:
        cap = Capture(chips=[0, 1], ports=[0, port], ring_bytes=256 << 10)
        with pytest.raises(CaptureError, match=rf"chip 1 did not start: .*Address already in use.*{port}"):
            cap.start()
        assert not cap.running and not cap.alive
    finally:
        blocker.close()


def test_killed_receiver_is_reported_as_a_fault(baseline):
    with Capture(chips=[0, 2], ports=[0, 0], ring_bytes=256 << 10) as cap:
        assert cap.fault is None
        os.kill(cap.pids[2], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while cap.alive and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not cap.alive
        fault = cap.fault
        assert fault is not None and fault.chip == 2 and fault.exitcode == -signal.SIGKILL
        assert "SIGKILL" in fault.reason and "while capturing" in fault.reason
        assert 0 not in cap.faults
        with pytest.raises(CaptureError, match="chip 2"):
            cap.check()
    assert cap.fault.chip == 2          # still reported after stop


def test_stop_returns_even_when_a_receiver_hangs(baseline):
    cap = Capture(chips=[0], ports=[0], ring_bytes=256 << 10, stop_timeout=0.5)
    cap.start()
    pid = cap.pids[0]
    os.kill(pid, signal.SIGSTOP)          # frozen: it can neither drain nor exit
    try:
        t0 = time.monotonic()
        cap.stop()
        assert time.monotonic() - t0 < 5.0
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGCONT)
    assert cap.fault is not None and "did not stop in time" in cap.fault.reason


def test_context_manager_stops_on_error(baseline):
    with pytest.raises(RuntimeError, match="boom"):
        with Capture(chips=[0], ports=[0], ring_bytes=256 << 10) as cap:
            assert cap.alive
            raise RuntimeError("boom")
    assert not cap.running


def test_bad_configuration_is_refused_before_starting():
    from tpx3lib.errors import ConfigError
    with pytest.raises(ConfigError):
        Capture(chips=[0, 0])
    with pytest.raises(ConfigError):
        Capture(chips=[0, 1], ports=[1])
    with pytest.raises(ConfigError):
        Capture(policy="drop")
    with pytest.raises(ConfigError):
        Capture(start_method="fork")


def test_ring_too_small_for_max_datagram_is_a_start_error(baseline):
    cap = Capture(chips=[0], ports=[0], ring_bytes=8192, max_datagram=9000)
    with pytest.raises(CaptureError, match="too small"):
        cap.start()
