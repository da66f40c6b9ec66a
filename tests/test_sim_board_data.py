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


@pytest.fixture(autouse=True)
def _loaded_kernels(sim_kernels):
    """These tests stream simulated data: load the generator first (see conftest.sim_kernels)."""


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def sim():
    # conftest's `board` connects to this one: a quiet model (200 clusters/s), not the default
    board = SimulatedSpidrBoard(port=0, n_chips=2, model=PhysicsModel(hit_rate_hz=200)).start()
    try:
        yield board
    finally:
        board.stop()


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
    st = sim.streamer
    board.close_shutter()
    assert drain(sockets[0]) == []              # chip 0 lost everything, as asked
    assert len(drain(sockets[1])) == board[1].pixel_packet_counter > 0
    # the board counts what it emitted; the drop fault is a loss on the way (counter - received = loss)
    assert board[0].pixel_packet_counter == st.counters[0].dropped_datagrams > 0


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


def test_board_stream_over_real_sockets_decodes_to_the_truth_hit_for_hit():
    """TCP control + UDP data to sockets bound here; the project's decoder, fed datagram by datagram
    as a capture would, gives the generator's truth hit for hit (pixels and TDC edges, both chips),
    across the 30-bit wrap and with the FIFO disorder of real hardware."""
    from simulators.clock import BoardClock
    from test_sim_data_udp import Receiver
    import tpx3lib.decode.stream as stream
    model = PhysicsModel(hit_rate_hz=30_000, trigger_rate_hz=50, tdc2_rate_hz=100, heartbeat_period_s=0.25,
                         seed=31)
    sim = SimulatedSpidrBoard(port=0, n_chips=2, model=model, collect_truth=True,
                              start_ticks=BoardClock.ticks_before_wrap(0.3)).start()
    receivers = [Receiver(), Receiver()]
    try:
        with SpidrBoard.connect(("127.0.0.1", sim.port), timeout=10.0) as board:
            for chip, r in zip(board, receivers):
                chip.server_port = r.addr[1]
            board.datadriven_readout()
            board.reset_timers()                 # the timer restarts 0.3 s before the wrap
            board.restart_timers()
            board.open_shutter()
            time.sleep(1.0)
            board.close_shutter()
            sent = [board[i].pixel_packet_counter for i in range(2)]
        truth = sim.truth()
        for chip, r in enumerate(receivers):
            r.wait_for(sent[chip])
            assert len(r.datagrams) == sent[chip] > 0
            dec = stream.StreamDecoder(chip=chip)
            out = stream.DecodedChunk.concat([dec.feed(d) for d in r.datagrams] + [dec.flush()])
            t = truth.for_chip(chip)
            px = out.pixels
            assert len(px) == len(t.hits) > 10_000
            for f in ("x", "y", "tot", "ftoa", "toa", "chip"):
                np.testing.assert_array_equal(px[f], t.hits[f], err_msg=f)
            for f in out.tdcs.dtype.names:              # TDC1 and TDC2 edges, counters, times
                np.testing.assert_array_equal(out.tdcs[f], t.triggers[f], err_msg=f)
            assert set(t.triggers["tdc"]) == {1, 2}
            np.testing.assert_array_equal(out.heartbeats, t.heartbeats)
            coarse = px["toa"] // 4096
            assert coarse.min() < 1 << 30 < coarse.max()        # crossed the 26.84 s wrap
            assert np.mean(np.diff(px["toa"]) < 0) > 0.1          # hits arrive out of time order
    finally:
        for r in receivers:
            r.close()
        sim.stop()


def test_autotrig_stop_answers_promptly_at_a_high_rate():
    """At a rate far beyond what the machine generates, closing the shutter must not wait for the
    generation backlog (it used to block the control connection for tens of seconds). What was
    not generated is counted, and what arrived is exactly the truth."""
    from test_sim_data_udp import Receiver
    import tpx3lib.decode.stream as stream
    sim = SimulatedSpidrBoard(port=0, n_chips=1, model=PhysicsModel(hit_rate_hz=5_000_000, seed=32),
                              collect_truth=True).start()
    r = Receiver()
    try:
        with SpidrBoard.connect(("127.0.0.1", sim.port), timeout=10.0) as board:
            board[0].server_port = r.addr[1]
            board.datadriven_readout()
            board.open_shutter()
            time.sleep(0.6)
            st = sim.streamer
            t0 = time.monotonic()
            board.close_shutter()
            took = time.monotonic() - t0
            assert took < 3.0, f"AUTOTRIG_STOP took {took:.1f} s"   # liveness, not a benchmark
            assert board.shutter_counter == 1                        # the connection is still usable
            sent = board[0].pixel_packet_counter
        assert st.stop_skipped_s + st.skipped_s > 0                  # there was a backlog; it is counted
        assert (sim.skipped_s, sim.stop_skipped_s) == (st.skipped_s, st.stop_skipped_s)   # and the board sums it
        r.wait_for(sent, timeout=30)
        assert len(r.datagrams) == sent
        truth = sim.truth()
        out, _ = stream.decode_words(r.words())
        assert len(out.pixels) == len(truth.hits) > 100_000
        for f in ("x", "y", "tot", "toa"):
            np.testing.assert_array_equal(out.pixels[f], truth.hits[f], err_msg=f)
        np.testing.assert_array_equal(out.tdcs["time"], truth.triggers["time"])
    finally:
        r.close()
        sim.stop()


def test_fixture_configuration_over_the_wire_is_quiet_and_masks_hold(data_dir):
    """The real SoPhy configuration, sent by the library (SET_DAC, SET_PIXCONF), gives a quiet chip;
    moving Vthreshold_fine up to near the baseline (hole collection) floods the chip with noise, and
    the fixture's 160 masked pixels stay silent in what arrives over UDP while all others fire."""
    from test_sim_data_udp import Receiver
    from tpx3lib.config import load_spx
    cfg = load_spx(data_dir / "W0028_H06_50V.spx")
    # no particles, no triggers: only noise, hot pixels included (the model's defaults)
    sim = SimulatedSpidrBoard(port=0, model=PhysicsModel(hit_rate_hz=0.0, trigger_rate_hz=0.0, seed=33)).start()
    r = Receiver()

    def pixel_words():
        w = r.words()
        return w[(w >> np.uint64(60)) == 0xB]

    try:
        with SpidrBoard.connect(("127.0.0.1", sim.port), timeout=10.0) as board:
            chip = board[0]
            chip.server_port = r.addr[1]
            chip.set_dacs(cfg.dacs)
            chip.upload_pixels(cfg.mask, cfg.threshold, cfg.test)
            assert int(sim.chip_state(0).mask.sum()) == 160
            board.datadriven_readout()
            board.open_shutter()
            time.sleep(1.0)
            board.close_shutter()
            r.wait_for(chip.pixel_packet_counter)
            assert len(r.datagrams) >= 1                 # heartbeats at least
            assert len(pixel_words()) <= 5               # quiet: a few noise hits per second at most
            n_quiet = len(r.datagrams)
            chip.set_dac("Vthreshold_fine", 480)         # 160*6 + 480 = 1440: 100 e below the baseline
            board.open_shutter()
            time.sleep(0.6)
            board.close_shutter()
            r.wait_for(chip.pixel_packet_counter)
        px = pixel_words()
        assert len(r.datagrams) > n_quiet and len(px) > 200_000
        x = 2 * ((px >> np.uint64(53)) & np.uint64(0x7F)) + ((px >> np.uint64(44)) & np.uint64(7)) // np.uint64(4)
        y = 4 * ((px >> np.uint64(47)) & np.uint64(0x3F)) + ((px >> np.uint64(44)) & np.uint64(3))
        assert not np.any(cfg.mask[x.astype(np.int64), y.astype(np.int64)])   # masked pixels silent
        assert len(np.unique(x * np.uint64(256) + y)) > 0.9 * (65536 - 160)    # the others fire
    finally:
        r.close()
        sim.stop()


def test_default_destination_is_loopback_8192_plus_chip():
    # nothing to send (no particles, triggers, heartbeats or noise): only the configured destinations
    model = PhysicsModel(hit_rate_hz=0.0, trigger_rate_hz=0.0, heartbeat_period_s=0.0, noise_f0_hz=0.0)
    sim = SimulatedSpidrBoard(port=0, n_chips=2, model=model).start()
    try:
        with SpidrBoard.connect(("127.0.0.1", sim.port), timeout=10.0) as board:
            board.datadriven_readout()
            board.open_shutter()
            assert sim.streamer.destinations == [("127.0.0.1", 8192), ("127.0.0.1", 8193)]
            board.close_shutter()
            assert board.udp_packet_counter == 0
    finally:
        sim.stop()
