"""The high-level API: a full session against the simulated board, and the data seam (ring, callback)."""
from __future__ import annotations

import queue
import socket
import threading

import numpy as np
import pytest

from simulators.physics import PhysicsModel
from simulators.spidr_board import SimulatedSpidrBoard
from tpx3lib.api import MessageRing, MessageType, PollBufferEmpty, Tpx3Connection
from tpx3lib.errors import ConfigError, SpidrConnectionError

FIXTURE_DACS = [128, 8, 128, 20, 128, 150, 6, 128, 8, 128, 8, 150, 128, 128, 128, 256, 128, 128]


@pytest.fixture
def sim():
    # a modest rate: the test's UDP socket must be able to take everything
    board = SimulatedSpidrBoard(port=0, n_chips=1, model=PhysicsModel(hit_rate_hz=200)).start()
    try:
        yield board
    finally:
        board.stop()


@pytest.fixture
def udp():
    """A local UDP socket the simulated chip 0 will send to."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("127.0.0.1", 0))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def conn(sim, udp):
    c = Tpx3Connection(("127.0.0.1", sim.port), timeout=10.0, udp_base_port=udp.getsockname()[1])
    try:
        yield c
    finally:
        c.close()


def names(sim):
    return [n for n, _, _ in sim.command_log]


def drain(sock) -> int:
    """Datagrams waiting on a socket (non-blocking)."""
    n = 0
    sock.setblocking(False)
    try:
        while True:
            sock.recv(65536)
            n += 1
    except BlockingIOError:
        return n
    finally:
        sock.setblocking(True)


class UdpReader:
    """Counts datagrams arriving on a socket, from a thread, until stopped."""

    def __init__(self, sock):
        self.sock, self.count, self.first = sock, 0, threading.Event()
        self._stop = threading.Event()
        sock.settimeout(0.05)
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.sock.recv(65536)
            except socket.timeout:
                continue
            self.count += 1
            self.first.set()

    def stop(self) -> int:
        self._stop.set()
        self.thread.join(10)
        self.sock.settimeout(None)
        return self.count + drain(self.sock)


def test_connect_sequence(sim, udp):
    with Tpx3Connection(("127.0.0.1", sim.port), timeout=10.0, udp_base_port=udp.getsockname()[1]) as conn:
        assert len(conn) == 1 and conn[0].device_name == "W0028_H06"
        log = [(n, w) for n, _, w in sim.command_log]
        seq = [n for n, _ in log]
        # spec section 2, step 1 (plus GENCONFIG/PLLCONFIG, which we load with the configuration)
        assert seq[:6] == ["GET_DEVICECOUNT", "GET_DEVICEID", "SET_SERVERPORT", "GET_SPIDRREG",
                           "GET_IPADDR_DEST", "GET_SERVERPORT"]
        assert log[2][1] == (udp.getsockname()[1],) and log[3][1] == (0x300,)
        rest = seq[6:]
        assert rest[:2] == ["RESET_DEVICE", "REINIT_DEVICE"]
        assert rest[2:20] == ["SET_DAC"] * 18
        assert rest[20:22] == ["SET_GENCONFIG", "SET_PLLCONFIG"]
        assert rest[22:23] == ["RESET_PIXELS"] and rest[23:109] == ["SET_PIXCONF"] * 86
        assert rest[109:365] == ["GET_PIXCONF"] * 256
        assert rest[365:] == ["GET_HEADERFILTER", "SET_HEADERFILTER"]
        assert sim.chips[0].header_filter & 0xFFFF == 0xFFFF
        assert conn[0].destination == ("127.0.0.1", udp.getsockname()[1])
    assert not conn.controller.connected


def test_configure_from_spx_and_dac_attributes(conn, sim, data_dir):
    chip = conn[0]
    chip.load_config(data_dir / "W0028_H06_50V.spx")
    assert [sim.chips[0].dacs[c] for c in range(1, 19)] == FIXTURE_DACS
    state = sim.chip_state(0)
    assert int(state.mask.sum()) == 160 and state.test.all()
    assert chip.pixel_mask.sum() == 160 and chip.config.name == "W0028_H06"
    chip.Vthreshold_fine = 160
    assert sim.chips[0].dacs[6] == 160 and chip.Vthreshold_fine == 160
    assert chip.config.dacs["Vthreshold_fine"] == 160
    n = names(sim).count("SET_DAC")
    with pytest.raises(ConfigError, match=r"Vthreshold_fine = 600 is out of range"):
        chip.Vthreshold_fine = 600
    assert names(sim).count("SET_DAC") == n and chip.Vthreshold_fine == 160
    with pytest.raises(AttributeError, match="did you mean Vthreshold_fine"):
        chip.Vthreshold_fin = 1
    chip.Ibias_Ikrum = 15
    assert chip.dacs["Ibias_Ikrum"] == 15


def test_pixel_matrices_edit_and_upload(conn, sim):
    chip = conn[0]
    chip.pixel_mask[10, 20] = True
    chip.pixel_threshold[...] = 7
    chip.upload_pixels()
    assert sim.chip_state(0).mask[10, 20] and sim.chip_state(0).mask.sum() == 1
    assert (sim.chips[0].pixel_words[11] == 7 << 1).all()
    with pytest.raises(ConfigError):
        chip.pixel_threshold = np.full((256, 256), 16)
    assert (chip.pixel_threshold == 7).all()  # bad input left the configuration as it was
    chip.polarity = "negative"
    assert sim.chips[0].gen_config & 1 and chip.polarity.name == "NEGATIVE"
    chip.operation_mode = "toa"
    assert sim.chips[0].gen_config & 0x6 == 0x2


def test_yaml_config_round_trip_through_a_chip(conn, sim, tmp_path, data_dir):
    conn[0].load_config(data_dir / "W0028_H06_50V.spx")
    path = conn[0].save_config(tmp_path / "chip.yaml")
    sim.chips[0].reset()
    conn[0].load_config(path)
    assert [sim.chips[0].dacs[c] for c in range(1, 19)] == FIXTURE_DACS
    assert int(sim.chip_state(0).mask.sum()) == 160


def test_bias(conn, sim):
    conn.bias_voltage = 50
    assert sim.bias_enabled and sim.bias_dac == 0x69B
    assert conn.bias_voltage == pytest.approx(50, abs=0.1)
    with pytest.raises(ConfigError):
        conn.bias_voltage = 200
    assert sim.bias_dac == 0x69B
    conn.disable_bias()
    assert not sim.bias_enabled


def test_start_stop_sequence_and_udp_data(conn, sim, udp):
    sim.clear_command_log()
    conn.start()
    log = [(n, w) for n, _, w in sim.command_log]
    # spec section 2, step 2
    assert log[0:2] == [("GET_SPIDRREG", (0x1C8,)), ("SET_SPIDRREG", (0x1C8, sim.registers[0x1C8]))]
    assert not sim.registers[0x1C8] & (1 << 25)
    assert log[2:] == [
        ("SET_SPIDRREG", (0x2B8, 0)), ("DECODERS_ENA", (1,)), ("DDRIVEN_READOUT", (0,)),
        ("RESET_TIMER", (0,)), ("RESTART_TIMERS", (0,)),
        ("SET_GENCONFIG", (0x8 | 0x40,)), ("SET_PLLCONFIG", (0x11E,)),
        ("RESTART_TIMERS", (0,)), ("SET_TRIGCONFIG", (4, 0, 10, 1)), ("AUTOTRIG_START", (0,)),
    ]
    assert conn.is_running and sim.streaming
    reader = UdpReader(udp)
    try:
        assert reader.first.wait(10)
        sim.clear_command_log()
        conn.stop()
    finally:
        received = reader.stop()
    assert [(n, w) for n, _, w in sim.command_log] == [("SET_TRIGCONFIG", (0, 10000, 5, 1)), ("AUTOTRIG_STOP", (0,))]
    assert not conn.is_running and not sim.streaming
    # the streamer's thread has ended: nothing more can arrive, and the board counted what it sent
    assert drain(udp) == 0
    assert conn.board.udp_packet_counter == received == conn[0].spidr.pixel_packet_counter


def test_context_manager_stops_and_closes(sim):
    with Tpx3Connection(("127.0.0.1", sim.port), timeout=10.0) as conn:
        conn.start()
    assert not sim.shutter_open and not conn.controller.connected


def test_second_connection_is_refused(conn, sim):
    with pytest.raises(SpidrConnectionError, match="one client at a time"):
        Tpx3Connection(("127.0.0.1", sim.port), timeout=10.0)
    assert conn[0].Vthreshold_coarse == 6


# ---------------------------------------------------------------------------- the data seam

class Producer:
    """A pipeline that pushes ``n`` messages from its own thread when started."""

    def __init__(self, n, kind=MessageType.PIXELS, fail_start=False):
        self.n, self.kind, self.fail_start = n, kind, fail_start
        self.thread = None
        self.stopped = threading.Event()
        self.done = threading.Event()

    def start(self, sink):
        if self.fail_start:
            raise RuntimeError("capture socket busy")
        self.stopped.clear()

        def run():
            for i in range(self.n):
                sink(self.kind, np.array([i]))
            self.done.set()
        self.thread = threading.Thread(target=run)
        self.thread.start()

    def stop(self):
        if self.thread is not None:
            self.thread.join(10)
        self.stopped.set()


def test_ring_is_bounded_and_drops_the_oldest():
    ring = MessageRing(3)
    for i in range(5):
        ring.push(i)
    assert ring.overflows == 2 and len(ring) == 3
    assert [ring.pop(), ring.pop(), ring.pop()] == [2, 3, 4]
    with pytest.raises(PollBufferEmpty):
        ring.pop()
    assert issubclass(PollBufferEmpty, queue.Empty)
    with pytest.raises(queue.Empty):
        ring.pop(block=True, timeout=0.01)
    t = threading.Thread(target=ring.push, args=("late",))
    t.start()
    assert ring.pop(block=True, timeout=10) == "late"
    t.join()


def test_pipeline_messages_reach_poll(conn, sim):
    p = Producer(25)
    conn.attach_pipeline(p)
    conn.start()
    assert p.done.wait(10)
    got = [conn.poll(timeout=10) for _ in range(25)]
    assert [int(d[0]) for _, d in got] == list(range(25))
    assert all(kind is MessageType.PIXELS for kind, _ in got)
    with pytest.raises(PollBufferEmpty):
        conn.poll()
    conn.stop()
    assert p.stopped.is_set()


def test_poll_overflow_is_counted(sim):
    with Tpx3Connection(("127.0.0.1", sim.port), timeout=10.0, poll_size=10, configure=False) as conn:
        p = Producer(25, MessageType.CENTROIDS)
        conn.attach_pipeline(p)
        conn.start()
        assert p.done.wait(10)
        conn.stop()
        assert conn.poll_overflows == 15 and conn.poll_buffer_length == 10
        assert int(conn.poll().data[0]) == 15  # the oldest ones were dropped
        assert conn.clear_poll_buffer() == 9


def test_callback_replaces_polling_and_survives_errors(conn):
    seen = []

    def callback(kind, data):
        seen.append((kind, int(data[0])))
        if int(data[0]) % 5 == 0:
            raise ValueError("user bug")

    conn.set_callback(callback)
    p = Producer(20, MessageType.TRIGGERS)
    conn.attach_pipeline(p)
    conn.start()
    assert p.done.wait(10)
    conn.stop()
    assert seen == [(MessageType.TRIGGERS, i) for i in range(20)]
    assert conn.callback_errors == 4
    with pytest.raises(PollBufferEmpty):
        conn.poll()
    conn.set_callback(None)
    with pytest.raises(TypeError):
        conn.set_callback("not callable")


def test_failing_pipeline_prevents_start(conn, sim):
    good, bad = Producer(0), Producer(0, fail_start=True)
    conn.attach_pipeline(good)
    conn.attach_pipeline(bad)
    sim.clear_command_log()
    with pytest.raises(RuntimeError, match="capture socket busy"):
        conn.start()
    assert "AUTOTRIG_START" not in names(sim) and not conn.is_running
    assert good.stopped.is_set()  # the one already started was stopped again
    conn.detach_pipeline(bad)
    conn.start()
    assert conn.is_running
    conn.stop()
    with pytest.raises(TypeError):
        conn.attach_pipeline(object())


def test_single_chip_spx_serves_any_chip(data_dir):
    with SimulatedSpidrBoard(port=0, n_chips=2) as sim, \
            Tpx3Connection(("127.0.0.1", sim.port), timeout=10.0, configure=False) as conn:
        assert [c.device_name for c in conn] == ["W0028_H06", "W0028_I06"]
        conn[1].load_config(data_dir / "W0028_H06_50V.spx")
        assert [sim.chips[1].dacs[c] for c in range(1, 19)] == FIXTURE_DACS
        assert sim.chips[0].dacs[6] == 420
        with pytest.raises(ConfigError, match="has no chip 3"):
            conn[0].load_config(data_dir / "W0028_H06_50V.spx", spx_chip=3)
