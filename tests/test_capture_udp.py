"""Capture over real loopback UDP: what a test sender sent is exactly what readers get and counters say."""
from __future__ import annotations

import logging
import os
import socket
import time

import numpy as np
import pytest

from tpx3lib.capture import FLAG_MALFORMED, FLAG_TRUNCATED, Capture, UdpSender
from tpx3lib.capture import _linux

METHODS = ["recvmmsg", "recv_into"] if _linux.HAVE_MMSG else ["recv_into"]
# Exact-count tests want a socket buffer that a busy machine cannot overflow: ask for 32 MiB,
# forced past net.core.rmem_max where the test runs with CAP_NET_ADMIN (silently capped otherwise).
RCVBUF = dict(rcvbuf_bytes=32 << 20, rcvbuf_force=True)


def datagram(i: int, n_words: int) -> bytes:
    """Datagram ``i`` of ``n_words`` distinct 64-bit words (i in the top bits, word index below)."""
    return ((np.uint64(i) << np.uint64(32)) + np.arange(n_words, dtype=np.uint64)).astype("<u8").tobytes()


def shm_names() -> set[str]:
    try:
        return {f for f in os.listdir("/dev/shm") if f.startswith(f"tpx3r_{os.getpid()}_")}
    except FileNotFoundError:  # pragma: no cover
        return set()


@pytest.fixture(autouse=True)
def no_leak():
    before = shm_names()
    yield
    assert shm_names() == before, "shared-memory segments left behind"


def read_all(reader, n_expected: int, timeout: float = 20.0, pause=None, idle: float | None = None) -> list:
    """(seq, bytes, flags, recv_time_ns) of records until ``n_expected`` arrived, ``timeout``
    passed, or (with ``idle``) nothing came for ``idle`` seconds."""
    out = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while len(out) < n_expected and time.monotonic() < deadline:
        b = reader.read(timeout=0.1)
        out.extend((r.seq, bytes(r.payload), r.flags, r.recv_time_ns) for r in b)
        reader.release(b)
        if len(b):
            last = time.monotonic()
            if pause is not None:
                pause()
        elif idle is not None and time.monotonic() - last > idle:
            break
    return out


def wait_counter(cap, chip, name, value, timeout=20.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        v = cap.counters[chip][name]
        if v >= value or time.monotonic() > deadline:
            return v
        time.sleep(0.01)


@pytest.mark.parametrize("method", METHODS)
def test_reader_gets_exactly_what_was_sent_and_counters_agree(method):
    # ~5 MB in all: even a receiver stalled by a busy machine leaves it in an 8 MB socket buffer.
    sizes = np.random.default_rng(7).integers(1, 600, 1500)        # words per datagram
    sent = [datagram(i, int(s)) for i, s in enumerate(sizes)]
    t_before = time.time_ns()
    with Capture(chips=[3], ports=[0], ring_bytes=8 << 20, method=method, **RCVBUF) as cap:
        reader = cap.ring(3)
        with UdpSender(cap.ports[0]) as tx:
            # Paced so the 2 cores never let the (capped) socket buffer overflow.
            tx.send_paced(sent, rate_per_s=40000)
        got = read_all(reader, len(sent))
        counters = cap.counters[3]
        reader.close()
    assert [g[1] for g in got] == sent                     # every datagram, in order, boundaries kept
    assert [g[0] for g in got] == list(range(len(sent)))
    assert all(g[2] == 0 for g in got)
    times = [g[3] for g in got]
    assert t_before <= times[0] and times == sorted(times) and times[-1] <= time.time_ns()
    assert counters["datagrams"] == len(sent) == counters["records"]
    assert counters["bytes"] == sum(map(len, sent))
    assert counters["words"] == int(sizes.sum())
    assert counters["malformed"] == counters["truncated"] == counters["kernel_drops"] == 0
    assert counters["overruns"] == counters["unread_discarded"] == 0
    assert counters["first_recv_ns"] == times[0] and counters["last_recv_ns"] == times[-1]
    final = cap.counters[3]                                 # still readable after stop
    assert final["datagrams"] == len(sent) and final["writer_state"] == "closed"
    assert cap.fault is None


@pytest.mark.parametrize("method", METHODS)
def test_malformed_and_truncated_datagrams_are_kept_flagged_and_counted(method):
    sent = [datagram(0, 4), b"\x01\x02\x03", datagram(1, 2) + b"xyz", b"", datagram(2, 300), datagram(3, 1)]
    with Capture(chips=[0], ports=[0], ring_bytes=1 << 20, method=method, max_datagram=1024) as cap:
        reader = cap.ring(0)
        with UdpSender(cap.ports[0]) as tx:
            tx.send(sent)
        got = read_all(reader, len(sent))
        c = cap.counters[0]
        reader.close()
    assert len(got) == len(sent)
    assert [g[1] for g in got] == [sent[0], sent[1], sent[2], b"", sent[4][:1024], sent[5]]
    assert [g[2] for g in got] == [0, FLAG_MALFORMED, FLAG_MALFORMED, 0, FLAG_TRUNCATED, 0]
    assert c["datagrams"] == 6 and c["malformed"] == 2 and c["truncated"] == 1
    assert c["bytes"] == 32 + 3 + 19 + 0 + 1024 + 8
    assert c["words"] == 4 + 0 + 2 + 0 + 128 + 1


def test_overrun_policy_counts_exactly_when_a_reader_stalls():
    n = 1500
    sent = [datagram(i, 100) for i in range(n)]                # 800 B each
    with Capture(chips=[0], ports=[0], ring_bytes=256 << 10, policy="overrun", max_datagram=1024,
                 **RCVBUF) as cap:
        fast, stalled = cap.ring(0), cap.ring(0)
        fast_part = []
        with UdpSender(cap.ports[0]) as tx:
            for i in range(0, n, 100):          # the fast reader keeps up between bursts
                tx.send(sent[i:i + 100])
                fast_part += read_all(fast, i + 100 - len(fast_part), timeout=10)
        assert wait_counter(cap, 0, "datagrams", n) == n
        stalled_got = read_all(stalled, n, timeout=1.0)
        c = cap.counters[0]
        fast_over, stalled_over = fast.overruns, stalled.overruns
        fast.close(), stalled.close()
    assert c["kernel_drops"] == 0
    assert [g[1] for g in fast_part] == sent and fast_over == 0
    assert stalled_over > 0 and len(stalled_got) + stalled_over == n
    first = stalled_got[0][0]
    assert [g[1] for g in stalled_got] == sent[first:]
    assert c["overruns"] == stalled_over


def test_block_policy_never_loses_with_a_slow_reader():
    n = 2000
    sent = [datagram(i, 120) for i in range(n)]               # ~2 MB: fits the socket buffer
    with Capture(chips=[0], ports=[0], ring_bytes=128 << 10, policy="block", max_datagram=1024,
                 **RCVBUF) as cap:
        reader = cap.ring(0)
        with UdpSender(cap.ports[0]) as tx:
            tx.send_paced(sent, rate_per_s=30000)
        got = read_all(reader, n, timeout=30, pause=lambda: time.sleep(0.001))
        c = cap.counters[0]
        reader.close()
    assert c["kernel_drops"] == 0, "socket buffer overflowed: the test's premise failed"
    assert [g[1] for g in got] == sent
    assert c["overruns"] == 0 and c["datagrams"] == n
    assert c["block_waits"] > 0


def test_kernel_drops_are_counted_so_sent_equals_received_plus_dropped():
    """A stalled reader under "block" stops the receiver; the socket overflows; drops are counted."""
    n = 6000
    sent = [datagram(i, 1000) for i in range(n)]               # 48 MB >> an 8 MB socket buffer
    with Capture(chips=[0], ports=[0], ring_bytes=1 << 20, policy="block", rcvbuf_bytes=1 << 20,
                 max_datagram=8192) as cap:
        reader = cap.ring(0)                                    # attached but not reading yet
        with UdpSender(cap.ports[0]) as tx:
            tx.send(sent)
        got = read_all(reader, n, timeout=20.0, idle=0.5)
        c = cap.stop()[0]
        reader.close()
    assert c["kernel_drops"] > 0 and c["stop_discarded"] == 0
    assert c["datagrams"] + c["kernel_drops"] == n             # nothing lost without a count
    assert len(got) == c["datagrams"] and c["overruns"] == 0
    # What arrived is a subsequence of what was sent, in order.
    index = {d: i for i, d in enumerate(sent)}
    idx = [index[g[1]] for g in got]
    assert idx == sorted(idx)
    # The record headers carry the socket's drop count at the time: it never decreases.
    # (checked on the ring itself in test_capture_ring; here the total is what matters)


def test_capped_receive_buffer_is_reported_with_the_sysctl(caplog):
    rmem_max = _linux.read_rmem_max()
    if rmem_max is None:
        pytest.skip("no /proc/sys/net/core/rmem_max")
    ask = rmem_max * 4
    if ask >= 1 << 31:
        pytest.skip("net.core.rmem_max is too large to exceed with an int SO_RCVBUF")
    caplog.set_level(logging.WARNING, logger="tpx3lib.capture")
    with Capture(chips=[0], ports=[0], ring_bytes=1 << 20, rcvbuf_bytes=ask) as cap:
        c = cap.counters[0]
    assert c["rcvbuf_capped"] == 1 and c["rcvbuf_requested"] == ask and c["rmem_max"] == rmem_max
    assert c["rcvbuf_granted"] < 2 * ask
    assert f"net.core.rmem_max={ask}" in caplog.text


def test_uncapped_receive_buffer_is_not_reported(caplog):
    caplog.set_level(logging.WARNING, logger="tpx3lib.capture")
    with Capture(chips=[0], ports=[0], ring_bytes=1 << 20, rcvbuf_bytes=64 << 10) as cap:
        c = cap.counters[0]
    assert c["rcvbuf_capped"] == 0 and c["rcvbuf_granted"] >= 64 << 10
    assert "rmem_max" not in caplog.text


def test_two_chips_two_ports_two_rings():
    with Capture(chips=[0, 1], ports=[0, 0], ring_bytes=1 << 20) as cap:
        assert len(set(cap.ports)) == 2 and cap.ring_name(0) != cap.ring_name(1)
        r0, r1 = cap.ring(0), cap.ring(1)
        with UdpSender(cap.ports[0]) as a, UdpSender(cap.ports[1]) as b:
            a.send([datagram(i, 3) for i in range(10)])
            b.send([datagram(100 + i, 5) for i in range(20)])
        g0, g1 = read_all(r0, 10), read_all(r1, 20)
        r0.close(), r1.close()
        c = cap.counters
    assert [g[1] for g in g0] == [datagram(i, 3) for i in range(10)]
    assert [g[1] for g in g1] == [datagram(100 + i, 5) for i in range(20)]
    assert c[0]["datagrams"] == 10 and c[1]["datagrams"] == 20
    assert c[0]["chip"] == 0 and c[1]["chip"] == 1


def test_binds_loopback_by_default():
    with Capture(chips=[0], ports=[0], ring_bytes=1 << 20) as cap:
        port = cap.ports[0]
        # The port is taken on 127.0.0.1 ...
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pytest.raises(OSError):
            probe.bind(("127.0.0.1", port))
        probe.close()
    assert cap.counters[0]["port"] == port
