"""The shared board connection of the Tango devices (tango_tpx3.board_link) against the simulator."""
from __future__ import annotations

import socket
import threading

import pytest

from simulators.spidr_board import SimulatedSpidrBoard
from tango_tpx3 import board_link
from tango_tpx3.board_link import LinkState
from tpx3lib.errors import SpidrConnectionError, SpidrTimeoutError


@pytest.fixture
def sim():
    board = SimulatedSpidrBoard("127.0.0.1", port=0).start()
    try:
        yield board
    finally:
        board.stop()


def wait_state(link, state, timeout=10.0):
    changed = threading.Event()

    def listener(_link):
        if _link.state is state:
            changed.set()
    link.add_listener(listener)
    try:
        if link.state is not state:
            assert changed.wait(timeout), f"link stayed {link.state} ({link.reason})"
    finally:
        link.remove_listener(listener)


def test_devices_of_one_board_share_one_connection(sim):
    a = board_link.acquire(f"127.0.0.1:{sim.port}")
    b = board_link.acquire(f"localhost:{sim.port}")    # the same board under another name
    try:
        assert a is b and a.users == 2
        wait_state(a, LinkState.CONNECTED)
        assert a.call(lambda board: board[0].name) == "W0028_H06"
        assert sim.connections == 1 and sim.refused_clients == 0
    finally:
        board_link.release(b)
        assert a.state is LinkState.CONNECTED          # one user left
        board_link.release(a)
    assert a.state is LinkState.CLOSED and board_link.links() == []


def test_unreachable_board_is_a_fault_with_the_reason():
    with socket.socket() as s:     # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    link = board_link.acquire(f"127.0.0.1:{port}")
    try:
        wait_state(link, LinkState.FAULT)
        assert f"cannot connect to SPIDR 127.0.0.1:{port}" in link.reason
        with pytest.raises(SpidrConnectionError, match="not connected"):
            link.call(lambda board: board.firmware_version)
    finally:
        board_link.release(link)


def test_lost_connection_faults_and_reconnect_recovers(sim):
    link = board_link.acquire(f"127.0.0.1:{sim.port}")
    try:
        wait_state(link, LinkState.CONNECTED)
        first = link.generation
        sim.disconnect_client()
        with pytest.raises(SpidrConnectionError):
            link.call(lambda board: board.firmware_version)
        assert link.state is LinkState.FAULT and "does not answer" in link.reason
        link.reconnect()
        wait_state(link, LinkState.CONNECTED)
        assert link.generation == first + 1
        assert link.call(lambda board: len(board)) == 1
    finally:
        board_link.release(link)


def test_link_fails_before_its_board_closes(sim):
    """Another thread whose request the close breaks must find the link already in FAULT
    (its own fail() is ignored: the board is no longer the link's)."""
    state_at_close = []

    def factory(host, port, timeout):
        board = board_link._make_board(host, port, timeout)
        close = board.close

        def recording_close():
            state_at_close.append(link.state)
            close()
        board.close = recording_close
        return board

    link = board_link.BoardLink(f"127.0.0.1:{sim.port}", factory, timeout=0.3)
    link.connect(wait=True)
    assert link.state is LinkState.CONNECTED
    sim.faults.drop_reply(times=None)
    with pytest.raises(SpidrTimeoutError):
        link.call(lambda board: board.firmware_version)
    assert state_at_close == [LinkState.FAULT]
    sim.faults.clear()
    link.connect(wait=True)
    assert link.state is LinkState.CONNECTED and link.call(lambda board: len(board)) == 1
    link.close()
    assert state_at_close == [LinkState.FAULT, LinkState.CLOSED]


def test_requests_of_several_threads_on_a_silent_board_all_see_the_fault(sim):
    link = board_link.BoardLink(f"127.0.0.1:{sim.port}", timeout=0.3)
    link.connect(wait=True)
    sim.faults.drop_reply(times=None)
    seen: list = []
    start = threading.Barrier(4)

    def request():
        start.wait()
        try:
            link.call(lambda board: board.firmware_version)
        except Exception as exc:  # noqa: BLE001 - recorded and checked below
            seen.append((type(exc).__name__, link.state))
    threads = [threading.Thread(target=request) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    link.close()
    assert len(seen) == 4
    assert all(state is LinkState.FAULT for _name, state in seen), seen
    assert {name for name, _state in seen} <= {"SpidrTimeoutError", "SpidrConnectionError"}
