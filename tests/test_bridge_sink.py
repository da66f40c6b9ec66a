"""KaraboBridgeSink: processed chunks in, one Karabo Bridge message per train out, over real
ZeroMQ sockets on tcp://127.0.0.1, read by karabo_bridge.Client."""
from __future__ import annotations

import functools
import threading

import numpy as np
import pytest

from karabo_bridge import Client
from simulators.physics import HitGenerator, PhysicsModel
from simulators.truth import Truth
from tpx3lib.pipeline import ChipProcessor, ProcessingConfig
from tpx3lib.pipeline.bridge_sink import BridgeSinkError, KaraboBridgeSink
from tpx3lib.pipeline.trains import TrainAssembler, train_from_message
from tpx3lib.trainid import CountingTrainIdSource, TrainIdAssigner

TICKS = 40_000_000
WINDOW = (0.0, 1e-3)
PERIOD = 0.01
START_ID = 9_000_000
SRC = "SQS_TPX3/CAM/1:daqOutput"


@functools.lru_cache(maxsize=None)
def stream(n_chips=2, seconds=0.3, seed=11):
    """(info, chunks, truth) of a simulated 100 Hz-trigger stream."""
    gen = HitGenerator(PhysicsModel(hit_rate_hz=3000.0, trigger_rate_hz=1 / PERIOD, seed=seed), n_chips=n_chips)
    edges = np.linspace(0, int(seconds * TICKS), 7).astype(np.int64)
    parts = [gen.generate(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    cfgs = {c: ProcessingConfig(chip=c, event_window_s=WINDOW, products=("events", "centroids"))
            for c in range(n_chips)}
    procs = {c: ChipProcessor(cfg, train_ids=TrainIdAssigner(
        CountingTrainIdSource(START_ID, period_s=PERIOD, grid_tolerance_s=PERIOD / 10))) for c, cfg in cfgs.items()}
    chunks = []
    for p in parts:
        for c in range(n_chips):
            w = p.words[c]
            for a in range(0, len(w), 3000):
                chunks.append(procs[c].feed(w[a:a + 3000]))
    chunks += [procs[c].flush() for c in range(n_chips)]
    info = {"chips": list(range(n_chips)), "products": ("events", "centroids"),
            "config": {c: cfg.to_dict() for c, cfg in cfgs.items()}, "start_time_ns": 0, "event_window_s": WINDOW}
    return info, tuple(chunks), Truth.concat([p.truth for p in parts])


@functools.lru_cache(maxsize=None)
def expected_trains(n_chips=2):
    info, chunks, _ = stream(n_chips)
    out = []
    asm = TrainAssembler.from_info(info, out.append)
    for ch in chunks:
        asm.add(ch)
    asm.flush()
    return tuple(out)


def n_triggers(truth):
    t = truth.triggers
    return int(np.count_nonzero((t["tdc"] == 1) & (t["rising"] == 1) & (t["chip"] == 0)))


def receive(endpoint, sock, n, results, errors, timeout=20):
    try:
        with Client(endpoint, sock=sock, timeout=timeout) as client:
            for _ in range(n):
                results.append(client.next())
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def run_sink(sink, info, chunks):
    sink.start(info)
    for ch in chunks:
        sink.on_chunk(ch)
    sink.stop()


@pytest.mark.parametrize("sock, client_sock", [("REP", "REQ"), ("PUSH", "PULL")])
def test_every_train_arrives_in_order_and_equal(sock, client_sock):
    info, chunks, truth = stream()
    expected = expected_trains()
    assert len(expected) == n_triggers(truth) >= 25
    with KaraboBridgeSink("tcp://127.0.0.1:0", sock=sock, source=SRC, when_full="block") as sink:
        got, errors = [], []
        th = threading.Thread(target=receive, args=(sink.endpoint, client_sock, len(expected), got, errors))
        th.start()
        run_sink(sink, info, chunks)
        th.join(60)
        assert not errors, errors
        c = sink.counters()
    assert len(got) == len(expected)
    for (data, meta), exp in zip(got, expected):
        assert meta[SRC]["timestamp.tid"] == exp.train_id
        train = train_from_message(data, meta, SRC)
        assert train.same_data(exp, timestamp=False), (train, exp)
        assert data[SRC]["counters.trains"] >= 1                    # running counters ride along
    assert [m[SRC]["timestamp.tid"] for _, m in got] == list(range(START_ID, START_ID + len(expected)))
    assert c["trains_published"] == len(expected) == c["trains"]
    assert c["trains_dropped"] == c["trains_discarded_at_stop"] == c["trains_failed"] == 0
    assert c["trains_empty"] == sum(t.n_hits == 0 for t in expected)
    assert c["latency"]["count"] == len(expected)


def test_pub_subscribers_get_equal_trains_in_order():
    info, chunks, _ = stream()
    expected = {t.train_id: t for t in expected_trains()}
    with KaraboBridgeSink("tcp://127.0.0.1:0", sock="PUB", source=SRC) as sink:
        got = []
        stop = threading.Event()

        def sub():
            with Client(sink.endpoint, sock="SUB", timeout=0.5) as client:
                ready.set()
                while not stop.is_set():
                    try:
                        got.append(client.next())
                    except TimeoutError:
                        pass
        ready = threading.Event()
        th = threading.Thread(target=sub)
        th.start()
        ready.wait(10)
        sink.start(info)
        for ch in chunks:
            sink.on_chunk(ch)
            stop.wait(0.005)            # a paced stream, so the subscriber keeps up
        sink.stop()
        stop.wait(1.0)
        stop.set()
        th.join(10)
        published = sink.counters()["trains_published"]
    assert published == len(expected)
    assert got, "the subscriber received nothing"
    tids = [m[SRC]["timestamp.tid"] for _, m in got]
    assert tids == sorted(tids) and len(set(tids)) == len(tids)
    for data, meta in got:
        t = train_from_message(data, meta, SRC)
        assert t.same_data(expected[t.train_id], timestamp=False)


def test_without_consumer_the_processing_is_not_blocked_and_losses_are_counted():
    info, chunks, _ = stream()
    expected = expected_trains()
    with KaraboBridgeSink("tcp://127.0.0.1:0", sock="REP", source=SRC, queue_size=3, stop_timeout=0.3) as sink:
        run_sink(sink, info, chunks)            # returns although nobody asks for trains
        c = sink.counters()
    assert c["trains"] == len(expected)
    assert c["trains_published"] == 0
    assert c["trains_dropped"] > 0
    assert c["trains_dropped"] + c["trains_discarded_at_stop"] == len(expected)


def test_block_policy_with_timeout_drops_and_counts():
    info, chunks, _ = stream()
    expected = expected_trains()
    with KaraboBridgeSink("tcp://127.0.0.1:0", sock="PUSH", source=SRC, queue_size=2, when_full="block",
                          block_timeout=0.01, stop_timeout=0.3) as sink:
        run_sink(sink, info, chunks)
        c = sink.counters()
    assert c["trains_published"] == 0
    assert c["trains_dropped"] > 0
    assert c["trains_dropped"] + c["trains_discarded_at_stop"] == len(expected)


def test_stop_does_not_hang_when_the_last_trains_find_the_queue_full():
    info, chunks, _ = stream()
    expected = expected_trains()
    early = []                                  # trains complete before the chips' final flushes
    asm = TrainAssembler.from_info(info, early.append)
    for ch in chunks[:-2]:
        asm.add(ch)
    assert 2 <= len(early) < len(expected)
    # no consumer: the publisher holds one train, the queue takes the rest exactly, so the
    # trains handed out by stop() find it full
    with KaraboBridgeSink("tcp://127.0.0.1:0", sock="REP", source=SRC, when_full="block", block_timeout=5.0,
                          queue_size=len(early) - 1, stop_timeout=0.2) as sink:
        sink.start(info)
        for ch in chunks[:-2]:
            sink.on_chunk(ch)
        sink.stop()                             # bounded wait for room, then counted
        c = sink.counters()
    assert c["trains"] == len(expected) and c["trains_published"] == 0
    assert c["trains_incomplete"] == len(expected) - len(early)
    assert c["trains_dropped"] + c["trains_discarded_at_stop"] == len(expected)


def test_sink_serves_several_acquisitions_on_one_socket():
    info, chunks, _ = stream()
    expected = expected_trains()
    with KaraboBridgeSink("tcp://127.0.0.1:0", sock="PUSH", source=SRC, when_full="block") as sink:
        got, errors = [], []
        th = threading.Thread(target=receive, args=(sink.endpoint, "PULL", 2 * len(expected), got, errors))
        th.start()
        run_sink(sink, info, chunks)
        run_sink(sink, info, chunks)
        th.join(60)
        assert not errors
        assert sink.counters()["trains_published"] == len(expected)      # counters are per acquisition
    tids = [m[SRC]["timestamp.tid"] for _, m in got]
    assert tids == [t.train_id for t in expected] * 2


def test_misuse_raises_typed_errors():
    with KaraboBridgeSink("tcp://127.0.0.1:0", sock="PUB") as sink:
        with pytest.raises(BridgeSinkError, match="before start"):
            sink.on_chunk(stream()[1][0])
        sink.start(stream()[0])
        with pytest.raises(BridgeSinkError, match="already started"):
            sink.start(stream()[0])
        sink.stop()
    with pytest.raises(BridgeSinkError, match="closed"):
        sink.start(stream()[0])
    with pytest.raises(ValueError):
        KaraboBridgeSink("tcp://127.0.0.1:0", sock="DEALER")
    from tpx3lib.errors import ConfigError
    with pytest.raises(ConfigError):
        KaraboBridgeSink("tcp://127.0.0.1:0", when_full="wait")


def test_message_memory_is_prefaulted_at_start_and_reused_across_trains():
    info, chunks, _ = stream()
    expected = expected_trains()
    with KaraboBridgeSink("tcp://127.0.0.1:0", sock="PUSH", source=SRC, when_full="block",
                          prefault_bytes=1 << 20) as sink:
        sink.start(info)
        assert sink.buffers.allocated == 2                  # before the first train
        got, errors = [], []
        th = threading.Thread(target=receive, args=(sink.endpoint, "PULL", 2 * len(expected), got, errors))
        th.start()
        for ch in chunks:
            sink.on_chunk(ch)
        sink.stop()
        run_sink(sink, info, chunks)                        # a second acquisition: the same memory
        th.join(60)
        assert not errors
    assert len(got) == 2 * len(expected)
    for (data, meta), exp in zip(got, list(expected) * 2):
        assert train_from_message(data, meta, SRC).same_data(exp, timestamp=False)
    with KaraboBridgeSink("tcp://127.0.0.1:0", sock="PUB", source=SRC, prefault_bytes=0) as sink:
        sink.start(info)
        assert sink.buffers.allocated == 0
        sink.stop()
