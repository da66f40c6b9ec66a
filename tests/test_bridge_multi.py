"""MultiClient: several endpoints, sources matched by train ID."""
from __future__ import annotations

import numpy as np
import pytest

from karabo_bridge import MultiClient, ServerInThread, make_metadata

LOCAL = "tcp://127.0.0.1:0"
SRC_A = "DET_A/CAM/1:daqOutput"
SRC_B = "DET_B/XGM/1"


def part(src, tid):
    return ({src: {"value": tid * 10, "arr": np.full(3, tid % 256, dtype=np.uint8)}},
            {src: make_metadata(src, tid)})


def check(data, meta, tid, sources):
    assert set(data) == set(sources)
    for src in sources:
        assert meta[src]["timestamp.tid"] == tid
        assert data[src]["value"] == tid * 10
        assert data[src]["arr"].tolist() == [tid % 256] * 3


@pytest.fixture
def two_servers():
    with ServerInThread(LOCAL, maxlen=50) as a, ServerInThread(LOCAL, maxlen=50) as b:
        yield a, b


def test_matches_sources_by_train_id(two_servers):
    a, b = two_servers
    # B starts one train earlier and feeds in a different rhythm
    b.feed(*part(SRC_B, 99))
    for tid in range(100, 105):
        a.feed(*part(SRC_A, tid))
    for tid in range(100, 105):
        b.feed(*part(SRC_B, tid))
    with MultiClient([a.endpoint, b.endpoint], timeout=10, train_timeout=5) as mc:
        for tid in range(100, 105):
            check(*mc.next(), tid, [SRC_A, SRC_B])
            assert mc.last_missing == () and mc.last_train_id == tid
        # train 99 came only from B and B moved past it: incomplete, reported
        assert list(mc.incomplete) == [(99, (a.endpoint,))]
        assert mc.stats.complete == 5 and mc.stats.incomplete == 1


def test_train_missing_from_one_endpoint_is_reported_not_waited_for(two_servers):
    a, b = two_servers
    for tid in range(1, 6):
        a.feed(*part(SRC_A, tid))
        if tid != 3:
            b.feed(*part(SRC_B, tid))
    # a long train timeout: train 3 is resolved because B delivered train 4 already
    with MultiClient([a.endpoint, b.endpoint], timeout=10, train_timeout=60) as mc:
        got = [mc.next()[1][SRC_A]["timestamp.tid"] for _ in range(4)]
        assert got == [1, 2, 4, 5]
        inc = list(mc.incomplete)
        assert inc == [(3, (b.endpoint,))]
        assert inc[0].train_id == 3 and inc[0].missing == (b.endpoint,)
        assert mc.stats.incomplete == 1 and mc.stats.complete == 4


def test_partial_trains_are_returned_when_asked(two_servers):
    a, b = two_servers
    for tid in (1, 2, 3):
        a.feed(*part(SRC_A, tid))
    for tid in (1, 3):
        b.feed(*part(SRC_B, tid))
    with MultiClient([a.endpoint, b.endpoint], timeout=10, train_timeout=60,
                     partial=True) as mc:
        check(*mc.next(), 1, [SRC_A, SRC_B])
        data, meta = mc.next()
        check(data, meta, 2, [SRC_A])
        assert mc.last_missing == (b.endpoint,)
        check(*mc.next(), 3, [SRC_A, SRC_B])
        assert mc.last_missing == ()


def test_stalled_endpoint_times_out_the_train(two_servers):
    a, b = two_servers
    a.feed(*part(SRC_A, 1))
    b.feed(*part(SRC_B, 1))
    a.feed(*part(SRC_A, 2))  # B never sends train 2
    with MultiClient([a.endpoint, b.endpoint], timeout=10, train_timeout=0.3) as mc:
        check(*mc.next(), 1, [SRC_A, SRC_B])
        with pytest.raises(TimeoutError):
            mc.next(timeout=1.5)  # train 2 is given up after 0.3 s, not returned
        assert list(mc.incomplete) == [(2, (b.endpoint,))]


def test_partial_stalled_train_is_returned_after_train_timeout(two_servers):
    a, b = two_servers
    a.feed(*part(SRC_A, 7))
    with MultiClient([a.endpoint, b.endpoint], timeout=10, train_timeout=0.3,
                     partial=True) as mc:
        check(*mc.next(), 7, [SRC_A])
        assert mc.last_missing == (b.endpoint,)
        assert mc.stats.match_latency.summary()["median"] >= 0.25


def test_required_sources_mode_and_mixed_socket_types():
    with ServerInThread(LOCAL, maxlen=50) as a, \
            ServerInThread(LOCAL, sock="PUSH", maxlen=50) as b:
        for tid in (10, 11):
            a.feed(*part(SRC_A, tid))
        b.feed({SRC_B: {"value": 100, "arr": np.full(3, 10, np.uint8)},
                "EXTRA/SRC/1": {"value": 0}},
               {SRC_B: make_metadata(SRC_B, 10), "EXTRA/SRC/1": make_metadata("EXTRA/SRC/1", 10)})
        b.feed(*part(SRC_B, 11))
        with MultiClient([a.endpoint, (b.endpoint, "PULL")], timeout=10, train_timeout=60,
                         sources=[SRC_A, SRC_B]) as mc:
            data, meta = mc.next()
            assert set(data) == {SRC_A, SRC_B, "EXTRA/SRC/1"}
            check(*mc.next(), 11, [SRC_A, SRC_B])
            assert mc.clients[1].sock_type == "PULL"


def test_timeout_when_nothing_arrives(two_servers):
    a, b = two_servers
    with MultiClient([a.endpoint, b.endpoint], timeout=0.3) as mc:
        with pytest.raises(TimeoutError):
            mc.next()
        a.feed(*part(SRC_A, 1))
        b.feed(*part(SRC_B, 1))
        check(*mc.next(timeout=10), 1, [SRC_A, SRC_B])  # requests stayed outstanding


def test_untagged_messages_are_counted(two_servers):
    a, _ = two_servers
    a.feed({SRC_A: {"value": 1}})
    a.feed(*part(SRC_A, 5))
    with MultiClient([a.endpoint], timeout=10) as mc:
        check(*mc.next(), 5, [SRC_A])
        assert mc.stats.untagged == 1


def test_needs_endpoints():
    with pytest.raises(ValueError):
        MultiClient([])
