"""The shared-memory ring alone: records, wrap-around, policies, readers in other processes."""
from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np
import pytest

from tpx3lib.capture import (
    FLAG_MALFORMED, HEADER_BYTES, RingError, RingReader, RingWriter, SharedRing, record_bytes,
)

SPAWN = mp.get_context("spawn")


def payload_of(i: int, size: int) -> bytes:
    """Datagram ``i``: deterministic bytes that differ from every other datagram's."""
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, size, dtype=np.uint8).tobytes()


def sizes_for(n: int, seed: int = 0, lo: int = 0, hi: int = 1500) -> list[int]:
    return np.random.default_rng(seed).integers(lo, hi, n).tolist()


def shm_names() -> set[str]:
    try:
        return {f for f in os.listdir("/dev/shm") if f.startswith(f"tpx3r_{os.getpid()}_")}
    except FileNotFoundError:  # pragma: no cover - not Linux
        return set()


@pytest.fixture
def no_leak():
    before = shm_names()
    yield
    assert shm_names() == before, "shared-memory segments left behind"


def drain(reader: RingReader, n_expected: int, timeout: float = 10.0) -> list:
    """Read until ``n_expected`` records (or the writer closed and all is read)."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n_expected and time.monotonic() < deadline:
        b = reader.read(timeout=0.2)
        out.extend((r.seq, bytes(r.payload), r.flags) for r in b)
        reader.release(b)
        if not len(b) and reader.eof:
            break
    return out


# -- in one process ----------------------------------------------------------------------

def test_records_keep_boundaries_and_order_across_wraps(no_leak):
    sizes = sizes_for(600, seed=1)          # ~450 kB through a 64 kB ring: many wraps
    with SharedRing(64 << 10) as ring:
        w = RingWriter(ring.name)
        r = RingReader(ring.name)
        got = []
        for i, s in enumerate(sizes):
            assert w.write(payload_of(i, s), recv_time_ns=1000 + i)
            if i % 7 == 6:                  # read in uneven batches
                b = r.read()
                got.extend((rec.seq, bytes(rec.payload), rec.recv_time_ns) for rec in b)
                r.release(b)
        w.close()
        got.extend((rec.seq, bytes(rec.payload), rec.recv_time_ns) for rec in r)
        assert [g[0] for g in got] == list(range(len(sizes)))
        assert [g[1] for g in got] == [payload_of(i, s) for i, s in enumerate(sizes)]
        assert [g[2] for g in got] == [1000 + i for i in range(len(sizes))]
        c = ring.counters()
        assert c["records"] == len(sizes) and c["record_bytes"] == sum(sizes)
        assert c["overruns"] == 0 and r.overruns == 0 and r.seq_gaps == 0
        r.close()


def test_payload_views_are_zero_copy_and_word_aligned(no_leak):
    with SharedRing(16 << 10) as ring, RingWriter(ring.name) as w, RingReader(ring.name) as r:
        words = np.arange(5, dtype="<u8") * 0x0101010101010101
        w.write(words.tobytes())
        w.write(b"12345678abc")                       # 11 bytes: malformed, kept
        b = r.read()
        assert len(b) == 2
        assert np.shares_memory(b.payload(0), r.data) and np.shares_memory(b.words(0), r.data)
        np.testing.assert_array_equal(b.words(0), words)
        np.testing.assert_array_equal(r.data_words[b.word_offsets[0]:b.word_offsets[0] + b.word_counts[0]], words)
        assert b.flags[1] == 0  # the ring keeps the writer's flags; the receiver sets FLAG_MALFORMED
        assert bytes(b.payload(1)) == b"12345678abc" and b[1].words.size == 1
        assert b.concat().tobytes() == words.tobytes() + b"12345678abc"
        assert r.release(b) == 0


def test_overrun_policy_counts_exactly_what_a_stalled_reader_missed(no_leak):
    n, size = 500, 200
    with SharedRing(32 << 10, policy="overrun") as ring:
        w = RingWriter(ring.name)
        fast = RingReader(ring.name)
        slow = RingReader(ring.name)        # never reads until the end
        fast_got = []
        for i in range(n):
            w.write(payload_of(i, size))
            b = fast.read()
            fast_got.extend(rec.seq for rec in b)
            fast.release(b)
        w.close()
        slow_got = drain(slow, n)
        # The fast reader lost nothing; the slow one lost exactly what it did not get.
        assert fast_got == list(range(n)) and fast.overruns == 0
        assert slow.overruns > 0
        assert len(slow_got) + slow.overruns == n
        assert slow.overrun_bytes == slow.overruns * size
        first = slow_got[0][0]
        assert [g[0] for g in slow_got] == list(range(first, n))          # the newest, in order
        assert all(g[1] == payload_of(g[0], size) for g in slow_got)
        assert slow.seq_gaps == 0      # it had read nothing before the gap, so no gap was seen
        c = ring.counters()
        assert c["overruns"] == slow.overruns and c["unread_discarded"] == 0
        fast.close(), slow.close()


def test_overrun_after_partial_read_shows_as_sequence_gap(no_leak):
    with SharedRing(16 << 10, policy="overrun") as ring:
        w = RingWriter(ring.name)
        r = RingReader(ring.name)
        for i in range(10):
            w.write(payload_of(i, 100))
        b = r.read(max_records=4)
        r.release(b)
        for i in range(10, 400):
            w.write(payload_of(i, 100))
        w.close()
        got = drain(r, 400)
        assert 4 + len(got) + r.overruns == 400
        assert r.seq_gaps == r.overruns
        r.close()


def test_overrun_while_holding_views_is_reported_on_release(no_leak):
    with SharedRing(8192, policy="overrun") as ring:
        w, r = RingWriter(ring.name), RingReader(ring.name)
        w.write(payload_of(0, 100))
        held = r.read()
        for i in range(1, 200):
            w.write(payload_of(i, 100))
        assert r.release(held) == 1     # the held record was overwritten meanwhile
        w.close(), r.close()


def test_without_readers_old_records_are_discarded_and_counted(no_leak):
    with SharedRing(16 << 10) as ring:          # block policy, but nobody to block for
        w = RingWriter(ring.name)
        for i in range(300):
            w.write(payload_of(i, 100))
        r = RingReader(ring.name, start="oldest")
        w.close()
        got = drain(r, 300)
        c = ring.counters()
        assert c["unread_discarded"] + len(got) == 300
        assert c["unread_discarded_bytes"] == 100 * c["unread_discarded"]
        assert [g[0] for g in got] == list(range(300 - len(got), 300))
        r.close()


def test_newest_reader_sees_only_later_records(no_leak):
    with SharedRing(16 << 10) as ring, RingWriter(ring.name) as w:
        w.write(b"old" * 8)
        with RingReader(ring.name, start="newest") as r:
            w.write(b"new" * 8)
            assert [bytes(x.payload) for x in r.read()] == [b"new" * 8]


def test_reader_slots_are_limited_and_reused(no_leak):
    with SharedRing(8192, max_readers=2) as ring:
        a, b = RingReader(ring.name), RingReader(ring.name)
        with pytest.raises(RingError, match="no free reader slot"):
            RingReader(ring.name)
        a.close()
        c = RingReader(ring.name)
        assert c.slot == 0
        b.close(), c.close()


def test_attach_to_missing_ring_is_a_clear_error():
    with pytest.raises(RingError, match="no capture ring named"):
        RingReader("tpx3r_does_not_exist")


def test_record_layout_is_8_byte_aligned():
    assert HEADER_BYTES == 32
    assert [record_bytes(n) for n in (0, 1, 8, 9, 8192)] == [32, 40, 40, 48, 8224]


# -- across processes -----------------------------------------------------------------------

def _writer_proc(name: str, sizes: list[int], pause_every: int) -> None:
    w = RingWriter(name)
    w.mark_running()
    for i, s in enumerate(sizes):
        w.write(payload_of(i, s), flags=FLAG_MALFORMED if s & 7 else 0)
    w.close()


def _reader_proc(name: str, conn) -> None:
    """Attach by name from another process; send back (seq, length, checksum) of every record."""
    r = RingReader(name)
    conn.send("attached")
    out = [(rec.seq, rec.payload.size, int(rec.payload.sum(dtype=np.uint64))) for rec in r]
    conn.send((out, r.overruns))
    r.close()


def _join(p, timeout=30.0):
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"{p.name} hung")


def test_block_policy_never_loses_with_a_slow_reader(no_leak):
    sizes = sizes_for(3000, seed=2, hi=900)          # ~1.3 MB through a 32 kB ring
    with SharedRing(32 << 10, policy="block") as ring:
        r = RingReader(ring.name)
        p = SPAWN.Process(target=_writer_proc, args=(ring.name, sizes, 0), name="ring-writer")
        p.start()
        try:
            got = []
            while True:
                b = r.read(max_records=50, timeout=5.0)
                got.extend((rec.seq, bytes(rec.payload)) for rec in b)
                r.release(b)
                if len(got) % 500 < 50:
                    time.sleep(0.02)                  # a reader that stalls now and then
                if not len(b) and r.eof:
                    break
        finally:
            _join(p)
        assert p.exitcode == 0
        assert [g[0] for g in got] == list(range(len(sizes)))
        assert all(g[1] == payload_of(i, s) for (i, s), g in zip(enumerate(sizes), got))
        c = ring.counters()
        assert c["overruns"] == 0 and c["unread_discarded"] == 0 and r.overruns == 0
        assert c["block_waits"] > 0          # the writer really was held back
        r.close()


def test_reader_in_another_process_attaches_by_name(no_leak):
    sizes = sizes_for(400, seed=3)
    with SharedRing(64 << 10) as ring:
        w = RingWriter(ring.name)
        parent_conn, child_conn = SPAWN.Pipe()
        p = SPAWN.Process(target=_reader_proc, args=(ring.name, child_conn), name="ring-reader")
        p.start()
        try:
            assert parent_conn.poll(30) and parent_conn.recv() == "attached"
            for i, s in enumerate(sizes):
                w.write(payload_of(i, s))
            w.close()
            assert parent_conn.poll(30)
            out, overruns = parent_conn.recv()
        finally:
            _join(p)
        expect = [(i, s, int(np.frombuffer(payload_of(i, s), np.uint8).sum(dtype=np.uint64)))
                  for i, s in enumerate(sizes)]
        assert out == expect and overruns == 0


def _die_holding(name: str, conn) -> None:
    r = RingReader(name)
    conn.send(r.slot)
    os._exit(3)          # dies without detaching


def test_block_policy_survives_a_reader_that_died(no_leak):
    with SharedRing(16 << 10, policy="block") as ring:
        parent_conn, child_conn = SPAWN.Pipe()
        p = SPAWN.Process(target=_die_holding, args=(ring.name, child_conn))
        p.start()
        assert parent_conn.poll(30)
        parent_conn.recv()
        _join(p)
        w = RingWriter(ring.name)
        t0 = time.monotonic()
        for i in range(200):                   # ~5 rings' worth: would block forever on a live reader
            assert w.write(payload_of(i, 400))
        assert time.monotonic() - t0 < 30
        w.close()
        c = ring.counters()
        assert c["dead_readers"] == 1
        assert c["records"] == 200


def test_block_timeout_evicts_a_stalled_reader_and_counts_it(no_leak):
    with SharedRing(16 << 10, policy="block", block_timeout=0.02) as ring:
        w, r = RingWriter(ring.name), RingReader(ring.name)
        for i in range(50):                    # ~30 fit; each further write waits 20 ms, then evicts
            w.write(payload_of(i, 400))
        w.close()
        got = drain(r, 50)
        assert r.overruns > 0 and len(got) + r.overruns == 50
        c = ring.counters()
        assert c["block_waits"] > 0 and c["overruns"] == r.overruns
        r.close()


def test_block_writer_gives_up_when_aborted(no_leak):
    with SharedRing(8192, policy="block") as ring:
        w = RingWriter(ring.name, abort=lambda: True)
        r = RingReader(ring.name)          # never reads
        n = 0
        while w.write(payload_of(n, 500)) and n < 100:
            n += 1
        assert n == 8192 // record_bytes(500)     # it wrote until full, then gave up instead of hanging
        assert ring.counters()["records"] == n and ring.counters()["overruns"] == 0
        w.close(), r.close()


def test_attach_to_a_foreign_segment_is_refused(no_leak):
    from multiprocessing import shared_memory
    shm = shared_memory.SharedMemory(name=f"tpx3r_{os.getpid()}_foreign", create=True, size=8192)
    try:
        with pytest.raises(RingError, match="not a capture ring"):
            RingReader(shm.name)
    finally:
        shm.close()
        shm.unlink()
