"""Servers and clients over real ZeroMQ sockets on 127.0.0.1."""
from __future__ import annotations

import queue
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from karabo_bridge import (Client, EmptyTrainError, Sender, ServerError, ServerInThread,
                           make_metadata, serialize)
from karabo_bridge.server import bind_endpoint, parse_request

LOCAL = "tcp://127.0.0.1:0"
SRC = "TEST_DET/CAM/1:daqOutput"


def train(tid, n=4):
    data = {SRC: {"data.image": np.full((2, n), tid % 65536, dtype=np.uint16),
                  "data.count": tid % 7, "data.name": "cam"}}
    return data, {SRC: make_metadata(SRC, tid)}


def assert_train(data, meta, tid):
    assert meta[SRC]["timestamp.tid"] == tid
    assert data[SRC]["data.count"] == tid % 7 and data[SRC]["data.name"] == "cam"
    np.testing.assert_array_equal(data[SRC]["data.image"],
                                  np.full((2, 4), tid % 65536, dtype=np.uint16))


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


# ----------------------------------------------------------------------------- basics
@pytest.mark.parametrize("protocol", ["2.2", "1.0"])
@pytest.mark.parametrize("sock,csock", [("REP", "REQ"), ("PUSH", "PULL")])
def test_queued_patterns_deliver_every_train_in_order(sock, csock, protocol):
    with ServerInThread(LOCAL, sock=sock, protocol_version=protocol) as server, \
            Client(server.endpoint, sock=csock, timeout=10) as client:
        for tid in range(100, 105):
            server.feed(*train(tid))
        for tid in range(100, 105):
            assert_train(*client.next(), tid)
        assert server.flush(timeout=10)
        assert client.stats.trains == 5 and client.stats.missed == 0
        assert server.stats.fed == server.stats.sent == 5
        assert server.stats.bytes_sent == client.stats.bytes > 0
        assert server.stats.latency.count == 5


def test_pub_sub_delivers_latest_trains():
    with ServerInThread(LOCAL, sock="PUB") as server, \
            Client(server.endpoint, sock="SUB", timeout=10) as client:
        got = []
        stop = threading.Event()

        def publish():
            tid = 1000
            while not stop.is_set():
                server.feed(*train(tid))
                tid += 1
                stop.wait(0.01)
        t = threading.Thread(target=publish)
        t.start()
        try:
            for _ in range(3):
                data, meta = client.next()
                assert_train(data, meta, meta[SRC]["timestamp.tid"])
                got.append(meta[SRC]["timestamp.tid"])
        finally:
            stop.set()
            t.join()
    assert got == sorted(got) and len(set(got)) == 3
    assert client.stats.trains == 3


def test_socket_options_hwm_and_linger():
    with ServerInThread(LOCAL) as s1, Client(s1.endpoint) as c1:
        assert s1.server_socket.getsockopt(zmq.SNDHWM) == 1
        assert s1.server_socket.getsockopt(zmq.RCVHWM) == 1
        assert s1.server_socket.getsockopt(zmq.LINGER) == 0
        assert c1.socket.getsockopt(zmq.RCVHWM) == 1 and c1.socket.getsockopt(zmq.LINGER) == 0
    with ServerInThread(LOCAL, sock="PUSH", hwm=5) as s2, Client(s2.endpoint, "PULL", hwm=7) as c2:
        assert s2.server_socket.getsockopt(zmq.SNDHWM) == 5
        assert c2.socket.getsockopt(zmq.RCVHWM) == 7


def test_raw_req_socket_sees_the_spec_wire_format(ctx):
    """A plain pyzmq REQ socket sending b"next" gets (header, payload) pairs."""
    with ServerInThread(LOCAL) as server:
        server.feed(*train(77))
        req = ctx.socket(zmq.REQ)
        req.connect(server.endpoint)
        req.send(b"next")
        assert req.poll(10000)
        frames = req.recv_multipart()
        req.close(linger=0)
    assert len(frames) == 4
    h0 = msgpack.unpackb(frames[0], raw=False)
    assert h0["source"] == SRC and h0["content"] == "msgpack"
    assert h0["metadata"]["timestamp.tid"] == 77
    assert msgpack.unpackb(frames[1], raw=False) == {"data.count": 0, "data.name": "cam"}
    assert msgpack.unpackb(frames[2], raw=False) == {
        "source": SRC, "content": "array", "path": "data.image", "dtype": "uint16", "shape": [2, 4]}
    assert frames[3] == np.full(8, 77, "<u2").tobytes()


def test_bad_request_gets_error_string_and_no_train_is_lost(ctx):
    with ServerInThread(LOCAL) as server:
        server.feed(*train(5))
        req = ctx.socket(zmq.REQ)
        req.connect(server.endpoint)
        for bad in (b"hello", b"next 0 0", b"next 2 2", b"next a b"):
            req.send(bad)
            assert req.poll(10000)
            reply = req.recv_multipart()
            assert reply == [b"Error: bad request " + bad]
        req.send(b"next")
        assert req.poll(10000)
        assert len(req.recv_multipart()) == 4  # the train fed before is still there
        req.close(linger=0)
        assert server.flush(timeout=10)
        assert server.stats.bad_requests == 4 and server.stats.sent == 1


def test_endpoint_forms(tmp_path):
    assert bind_endpoint(4545) == "tcp://*:4545"
    assert bind_endpoint("4545") == "tcp://*:4545"
    assert bind_endpoint("tcp://127.0.0.1:1") == "tcp://127.0.0.1:1"
    with pytest.raises(ValueError):
        bind_endpoint("localhost")
    ipc = f"ipc://{tmp_path}/bridge"
    with ServerInThread(ipc) as server, Client(server.endpoint, timeout=10) as client:
        assert server.endpoint == ipc
        server.feed(*train(3))
        assert_train(*client.next(), 3)


def test_parse_request():
    assert parse_request(b"next") == (1, 0)
    assert parse_request(b"next 4 3") == (4, 3)
    for bad in (b"", b"nxt", b"next 4", b"next 4 4", b"next -1 0", b"next 1 2 3"):
        with pytest.raises(ValueError):
            parse_request(bad)


# ----------------------------------------------------------------------------- timeouts
def test_client_timeout_raises_builtin_timeout_error():
    with ServerInThread(LOCAL) as server, Client(server.endpoint, timeout=0.2) as client:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            client.next()
        assert time.monotonic() - t0 >= 0.15
        assert client.stats.timeouts == 1
        server.feed(*train(9))
        assert_train(*client.next(timeout=10), 9)  # the outstanding request is answered


def test_req_client_does_not_resend_after_timeout(ctx):
    router = ctx.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    with Client(endpoint, timeout=0.1) as client:
        for _ in range(3):
            with pytest.raises(TimeoutError):
                client.next()
        assert router.poll(10000)
        ident, empty, request = router.recv_multipart()
        assert request == b"next"
        assert not router.poll(300)  # no second request while the first is outstanding
        router.send_multipart([ident, empty, *serialize(*train(11))])
        assert_train(*client.next(timeout=10), 11)
        with pytest.raises(TimeoutError):
            client.next()  # now it asks again ...
        assert router.poll(10000)
        assert router.recv_multipart()[2] == b"next"  # ... exactly once
        assert client.stats.timeouts == 4 and client.stats.trains == 1


def test_sender_send_timeout_without_consumer():
    with Sender(LOCAL) as sender:
        with pytest.raises(TimeoutError):
            sender.send(*train(1), timeout=0.2)
        assert sender.stats.fed == 0 and sender.stats.sent == 0


# ----------------------------------------------------------------------------- synchronous Sender
@pytest.mark.parametrize("sock,csock", [("REP", "REQ"), ("PUSH", "PULL")])
def test_sender_send_blocks_until_taken(sock, csock):
    with Sender(LOCAL, sock=sock) as sender, Client(sender.endpoint, sock=csock, timeout=10) as c:
        got = []
        t = threading.Thread(target=lambda: got.extend(c.next() for _ in range(3)))
        t.start()
        for tid in (1, 2, 3):
            sender.send(*train(tid))
        t.join(timeout=30)
        assert [m[SRC]["timestamp.tid"] for _, m in got] == [1, 2, 3]
        assert sender.stats.sent == 3


def test_requester_that_vanished_is_counted_and_the_train_kept(ctx):
    with Sender(LOCAL) as sender:
        mon = sender.server_socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        req = ctx.socket(zmq.REQ)
        req.connect(sender.endpoint)
        req.send(b"next")
        assert sender.server_socket.poll(10000)  # the request has arrived
        req.close(linger=0)
        assert recv_monitor_message(mon)["event"] == zmq.EVENT_DISCONNECTED
        sender.server_socket.disable_monitor()
        mon.close(linger=0)
        result = []
        t = threading.Thread(target=lambda: result.append(sender.send(*train(21), timeout=20)))
        t.start()
        # the send could not go to the vanished requester; a new client gets the train
        with Client(sender.endpoint, timeout=20) as client:
            assert_train(*client.next(), 21)
        t.join(30)
        assert sender.stats.unreachable == 1 and sender.stats.sent == 1


# ----------------------------------------------------------------------------- stride
def test_stride_splits_trains_between_consumers_and_plain_next_still_works():
    # a long grace: odd trains wait for the odd consumer even before it first asks
    with ServerInThread(LOCAL, maxlen=20, stride_grace=60) as server, \
            Client(server.endpoint, timeout=10, stride=(2, 0)) as even, \
            Client(server.endpoint, timeout=10, stride=(2, 1)) as odd:
        for tid in range(100, 108):
            server.feed(*train(tid))
        got_even = [even.next()[1][SRC]["timestamp.tid"] for _ in range(4)]
        got_odd = [odd.next()[1][SRC]["timestamp.tid"] for _ in range(4)]
        assert got_even == [100, 102, 104, 106]
        assert got_odd == [101, 103, 105, 107]
        assert even.stats.missed == 0 and odd.stats.missed == 0  # step = divisor
        with Client(server.endpoint, timeout=10) as plain:
            server.feed(*train(108))
            server.feed(*train(109))
            assert [plain.next()[1][SRC]["timestamp.tid"] for _ in range(2)] == [108, 109]
        assert server.flush(timeout=10)
        assert server.stats.sent == 10 and server.stats.dropped_unwanted == 0


@pytest.mark.parametrize("maxlen,grace", [(20, 0.2), (3, 60)])
def test_stride_trains_nobody_wants_are_dropped_and_counted(maxlen, grace):
    """Dropped after the grace time, or at once when the queue is full (then feed()
    never blocks for good although the only consumer skips two trains in three)."""
    with ServerInThread(LOCAL, maxlen=maxlen, stride_grace=grace) as server, \
            Client(server.endpoint, timeout=10, stride=(3, 1)) as client:
        client.request()
        got = []
        for tid in range(30, 39):
            server.feed(*train(tid), timeout=10)
            if tid % 3 == 1:
                got.append(client.next()[1][SRC]["timestamp.tid"])
        assert got == [31, 34, 37]
        if grace < 1:
            assert server.flush(timeout=10)
            assert server.stats.dropped_unwanted == 6
    assert server.stats.sent == 3
    assert server.stats.dropped_unwanted + server.stats.discarded_at_stop == 6
    assert server.stats.dropped == 6


def test_sender_drops_a_train_no_strided_consumer_wants():
    with Sender(LOCAL) as sender, Client(sender.endpoint, timeout=10, stride=(2, 0)) as client:
        client.request()
        assert sender.server_socket.poll(10000)
        sender.send(*train(7), timeout=10)  # odd: returns, dropped
        sender.send(*train(8), timeout=10)
        assert client.next()[1][SRC]["timestamp.tid"] == 8
        assert sender.stats.dropped_unwanted == 1 and sender.stats.sent == 1


def test_stride_against_a_server_without_the_extension(ctx):
    rep = ctx.socket(zmq.REP)  # behaves like the reference server
    rep.bind("tcp://127.0.0.1:*")
    with Client(rep.getsockopt_string(zmq.LAST_ENDPOINT), timeout=10, stride=(2, 1)) as client:
        client.request()
        assert rep.poll(10000)
        msg = rep.recv()
        assert msg == b"next 2 1"
        rep.send(b"Error: bad request %b" % msg)
        with pytest.raises(ServerError, match="bad request"):
            client.next()
        assert client.stats.server_errors == 1


def test_sub_stride_filters_client_side():
    with ServerInThread(LOCAL, sock="PUB") as server, \
            Client(server.endpoint, sock="SUB", timeout=10, stride=(3, 1)) as client:
        stop = threading.Event()

        def publish():
            tid = 0
            while not stop.is_set():
                server.feed(*train(tid))
                tid += 1
                stop.wait(0.005)
        t = threading.Thread(target=publish)
        t.start()
        try:
            tids = [client.next()[1][SRC]["timestamp.tid"] for _ in range(4)]
        finally:
            stop.set()
            t.join()
    assert all(tid % 3 == 1 for tid in tids)
    assert client.stats.skipped >= 1


def test_stride_validation():
    with pytest.raises(ValueError):
        Client("tcp://127.0.0.1:1", sock="PULL", stride=(2, 0))
    with pytest.raises(ValueError):
        Client("tcp://127.0.0.1:1", stride=(2, 2))


# ----------------------------------------------------------------------------- counting, errors
def test_missed_trains_are_counted_from_train_id_gaps():
    with ServerInThread(LOCAL) as server, Client(server.endpoint, timeout=10) as client:
        for tid in (1, 2, 5, 6, 3):
            server.feed(*train(tid))
        for _ in range(5):
            client.next()
        assert client.stats.missed == 2 and client.stats.tid_resets == 1
        assert client.last_train_id == 3


def test_empty_train_raises_in_the_caller_and_the_server_goes_on():
    with ServerInThread(LOCAL) as server, Client(server.endpoint, timeout=10) as client:
        with pytest.raises(EmptyTrainError):
            server.feed({})
        server.feed(*train(8))
        assert_train(*client.next(), 8)
        assert server.stats.fed == 1


def test_full_queue_and_stop_are_counted():
    server = ServerInThread(LOCAL, maxlen=2)  # not started: nothing leaves the queue
    try:
        server.feed(*train(1))
        server.feed(*train(2), block=False)
        with pytest.raises(queue.Full):
            server.feed(*train(3), block=False)
        with pytest.raises(queue.Full):
            server.feed(*train(3), timeout=0.1)
        assert server.stats.rejected_full == 2 and server.pending == 2
    finally:
        server.stop()
    assert server.stats.discarded_at_stop == 2 and server.stats.dropped == 2
    with pytest.raises(RuntimeError):
        server.feed(*train(4))


def test_client_counts_protocol_errors(ctx):
    rep = ctx.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:*")
    with Client(rep.getsockopt_string(zmq.LAST_ENDPOINT), timeout=10) as client:
        client.request()
        assert rep.poll(10000)
        rep.recv()
        rep.send_multipart([b"\x80", b"\x80", b"\x80"])  # three frames: odd count
        with pytest.raises(ValueError, match="odd number of frames"):
            client.next()
        assert client.stats.protocol_errors == 1
        client.request()  # the REQ cycle is complete: it may ask again
        assert rep.poll(10000) and rep.recv() == b"next"


def test_unsupported_socket_types():
    with pytest.raises(NotImplementedError):
        Client("tcp://127.0.0.1:1", sock="DEALER")
    with pytest.raises(ValueError):
        Sender(LOCAL, sock="ROUTER")
    with pytest.raises(ValueError):
        Client("tcp://127.0.0.1:1", ser="pickle")


def test_two_servers_in_one_process_share_a_context(ctx):
    with ServerInThread(LOCAL, context=ctx) as s1, ServerInThread(LOCAL, context=ctx) as s2, \
            Client(s1.endpoint, timeout=10, context=ctx) as c1, \
            Client(s2.endpoint, timeout=10, context=ctx) as c2:
        s1.feed(*train(1))
        s2.feed(*train(2))
        assert_train(*c1.next(), 1)
        assert_train(*c2.next(), 2)
    assert not ctx.closed  # a context given by the caller is not terminated
