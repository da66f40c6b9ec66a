"""RawRecorder: a ring reader that writes captured datagrams to a native raw file."""
from __future__ import annotations

import errno
import os
import time

import numpy as np
import pytest


from tpx3lib.capture import Capture, UdpSender                  # noqa: E402
from tpx3lib.capture.recorder import RawRecorder                 # noqa: E402
from tpx3lib.files import open_raw                               # noqa: E402
from tpx3lib.files.exceptions import RawWriteError, TruncatedFileWarning  # noqa: E402
import tpx3lib.files.native as native                            # noqa: E402

RCVBUF = dict(rcvbuf_bytes=32 << 20, rcvbuf_force=True)


def datagram(i: int, n_words: int) -> bytes:
    return ((np.uint64(i) << np.uint64(32)) + np.arange(n_words, dtype=np.uint64)).astype("<u8").tobytes()


def wait_for(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def file_datagrams(path) -> list[bytes]:
    with open_raw(path) as f:
        return [d.tobytes() for ch in f.chunks() for d in ch.datagrams()]


def test_records_exactly_what_was_sent_between_start_and_stop(tmp_path):
    path = tmp_path / "run.tpx3raw"
    before = [datagram(i, 10) for i in range(50)]
    during = [datagram(1000 + i, int(n)) for i, n in enumerate(np.random.default_rng(3).integers(1, 900, 800))]
    after = [datagram(5000 + i, 10) for i in range(50)]
    with Capture(chips=[2], ports=[0], ring_bytes=4 << 20, **RCVBUF) as cap, UdpSender(cap.ports[0]) as tx:
        tx.send(before)
        assert wait_for(lambda: cap.counters[2]["datagrams"] == 50)
        rec = RawRecorder(cap.ring_name(2), path, capture=cap)       # starts at the newest record
        rec.start()
        tx.send_paced(during, rate_per_s=20000)
        assert wait_for(lambda: cap.counters[2]["datagrams"] == 850)
        stats = rec.stop()
        tx.send(after)
        assert wait_for(lambda: cap.counters[2]["datagrams"] == 900)
    assert rec.error is None and not rec.running
    assert stats["records"] == len(during) and stats["overruns"] == 0
    assert file_datagrams(path) == during
    with open_raw(path) as f:
        assert f.chips == [2]
        list(f.chunks())
        assert f.closing["recorder"]["records"] == len(during)
        assert f.counters["datagrams"] >= 850 and f.closing["status"] == "complete"


def test_recorder_ends_with_the_capture_and_counts_what_it_could_not_store(tmp_path):
    path = tmp_path / "odd.tpx3raw"
    sent = [datagram(0, 3), b"abc", b"", datagram(1, 2) + b"xy", datagram(2, 1)]
    with Capture(chips=[0], ports=[0], ring_bytes=1 << 20, max_datagram=1024) as cap:
        rec = RawRecorder(cap.ring_name(0), path, start="oldest").start()
        with UdpSender(cap.ports[0]) as tx:
            tx.send(sent)
        assert wait_for(lambda: cap.counters[0]["datagrams"] == 5)
    assert wait_for(lambda: not rec.running)                         # the ring closed: it finished
    st = rec.stats
    assert rec.error is None
    assert st["records"] == 5 and st["empty_skipped"] == 2 and st["malformed_tail_bytes"] == 3 + 2
    assert file_datagrams(path) == [datagram(0, 3), datagram(1, 2), datagram(2, 1)]


@pytest.mark.parametrize("direct", [True, False], ids=["direct_io", "buffered"])
def test_disk_full_is_reported_leaves_a_readable_file_and_does_not_block_capture(tmp_path, monkeypatch, direct):
    path = tmp_path / "full.tpx3raw"
    real_write, real_pwrite = native._os_write, native._os_pwrite
    budget = {"bytes": 300_000}

    def take(n):                            # the disk fills up after ~300 kB
        if budget["bytes"] < n:
            raise OSError(errno.ENOSPC, "No space left on device")
        budget["bytes"] -= n

    def full_disk_write(fd, data):
        take(len(data))
        return real_write(fd, data)

    def full_disk_pwrite(fd, data, offset):
        take(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(native, "_os_write", full_disk_write)
    monkeypatch.setattr(native, "_os_pwrite", full_disk_pwrite)
    sent = [datagram(i, 500) for i in range(600)]                   # 2.4 MB
    with Capture(chips=[0], ports=[0], ring_bytes=256 << 10, policy="block", max_datagram=4096,
                 **RCVBUF) as cap:
        rec = RawRecorder(cap.ring_name(0), path, start="oldest", max_chunk_bytes=32 << 10,
                          buffer_size=64 << 10, direct=direct).start()
        assert rec.direct_io == direct
        with UdpSender(cap.ports[0]) as tx:
            tx.send_paced(sent, rate_per_s=20000)
        # The capture goes on (the failed recorder detached), nothing is lost in the kernel.
        assert wait_for(lambda: cap.counters[0]["datagrams"] == len(sent))
        assert wait_for(lambda: not rec.running)
        c = cap.counters[0]
    assert isinstance(rec.error, RawWriteError) and "disk full" in str(rec.error)
    assert str(path) in str(rec.error)
    assert c["kernel_drops"] == 0
    with pytest.warns(TruncatedFileWarning, match="without its closing record"):
        got = file_datagrams(path)                                  # readable up to the last whole chunk
    assert 0 < len(got) < len(sent) and got == sent[:len(got)]
    assert os.path.getsize(path) == rec.error.readable_until


def test_cannot_create_the_file_is_raised_by_start(tmp_path):
    with Capture(chips=[0], ports=[0], ring_bytes=256 << 10) as cap:
        rec = RawRecorder(cap.ring_name(0), tmp_path / "no" / "such" / "dir" / "x.tpx3raw")
        with pytest.raises(RawWriteError, match="cannot create"):
            rec.start()
        assert cap.counters[0]["readers"] == []                    # its ring reader was detached again
