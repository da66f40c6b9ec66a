"""The simulated board's data side: the shutter drives the UDP streamer; counters and faults pass through."""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from simulators.physics import PhysicsModel
from simulators.spidr_board import SimulatedSpidrBoard
from simulators.udp_stream import DataFaults
from tpx3lib.spidr import SpidrBoard


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def sim():
    board = SimulatedSpidrBoard(port=0, n_chips=2, model=PhysicsModel(hit_rate_hz=200)).start()
    try:
        yield board
    finally:
        board.stop()


@pytest.fixture
def board(sim):
    b = SpidrBoard.connect(("127.0.0.1", sim.port), timeout=10.0)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def sockets():
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def drain(sock) -> list[bytes]:
    out = []
    try:
        while True:
            out.append(sock.recv(65536))
    except BlockingIOError:
        return out


def test_each_chip_streams_to_its_own_destination(sim, board, sockets):
    for chip, s in zip(board, sockets):
        chip.server_port = s.getsockname()[1]
    board.datadriven_readout()
    board.open_shutter()
    got = [[], []]

    def both_arrived():
        for i, s in enumerate(sockets):
            got[i] += drain(s)
        return all(got)
    wait_for(both_arrived, what="datagrams from both chips")
    board.close_shutter()
    for i, s in enumerate(sockets):
        got[i] += drain(s)
    assert not sim.streaming
    counts = [len(g) for g in got]
    assert [board[i].pixel_packet_counter for i in range(2)] == counts
    assert board.udp_packet_counter == sum(counts)
    # payloads are whole 64-bit words, little-endian; every word has a known header nibble
    words = np.frombuffer(b"".join(got[0]), "<u8")
    assert set(np.unique(words >> np.uint64(60)).tolist()) <= {0x4, 0x5, 0x6, 0x7, 0xA, 0xB}
    assert drain(sockets[0]) == [] and drain(sockets[1]) == []  # stopped means stopped
    board.reset_counters()
    assert board.udp_packet_counter == 0 and board[0].pixel_packet_counter == 0


def test_no_data_without_data_driven_readout(sim, board, sockets):
    board[0].server_port = sockets[0].getsockname()[1]
    board.open_shutter()
    assert sim.shutter_open and not sim.streaming
    board.close_shutter()
    board.datadriven_readout()
    board.open_shutter()
    assert sim.streaming
    board.pause_readout()
    assert not sim.streaming
    board.close_shutter()


def test_data_faults_pass_through(sim, board, sockets):
    board[0].server_port = sockets[0].getsockname()[1]
    board[1].server_port = sockets[1].getsockname()[1]
    sim.data_faults = DataFaults(drop_fraction=1.0, chips=frozenset({0}))
    board.datadriven_readout()
    board.open_shutter()
    wait_for(lambda: sim.streamer.counters[0].dropped_datagrams > 0 and sim.streamer.counters[1].datagrams > 0,
             what="datagrams generated")
    board.close_shutter()
    assert drain(sockets[0]) == []              # chip 0 lost everything, as asked
    assert len(drain(sockets[1])) == board[1].pixel_packet_counter > 0
    assert board[0].pixel_packet_counter == 0   # the board counts what it sent


def test_chip_state_follows_the_configuration(sim, board):
    board[1].set_dac("Vthreshold_fine", 300)
    board.enable_bias(True)
    board.bias_voltage = 80
    st = sim.chip_state(1)
    assert st.dacs["Vthreshold_fine"] == 300 and st.bias_enabled
    assert st.bias_voltage == pytest.approx(80, abs=0.05)
    assert sim.chip_state(0).dacs["Vthreshold_fine"] == 420
    board.enable_tpx_power(False)
    assert not sim.chip_state(0).enabled
