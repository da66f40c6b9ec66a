"""The USB train-ID receiver over a real pseudo-terminal, read with pyserial."""
import os
import time
import tty

import numpy as np
import pytest

from simulators.timing import TimingSimulator, trigger_edges
from tpx3lib.trainid import (EXTRAPOLATED, GAP, JUMP, SerialTrainIdReceiver, SerialTrainIdSource,
                             TrainIdAssigner, TrainIdSourceError)

FRAME_A = b"\x02" + b"0000000012345678" + b"00000001" + b"09" + b"\x03"   # CRC by hand: see test_trainid_frames
FRAME_B = b"\x02" + b"000000003B9ACA00" + b"DEADBEEF" + b"49" + b"\x03"


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def raw_pty():
    master, slave = os.openpty()
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_receiver_reads_hand_written_bytes_from_a_pty(raw_pty):
    master, path = raw_pty
    got = []
    rx = SerialTrainIdReceiver(path, lambda frame, t: got.append((frame.train_id, frame.beam_mode, t)))
    with rx:
        os.write(master, b"\x00junk" + FRAME_A[:10])          # garbage, then half a frame
        time.sleep(0.05)
        os.write(master, FRAME_A[10:])
        os.write(master, FRAME_A[:25] + b"00\x03")             # bad CRC
        os.write(master, FRAME_B)
        assert wait_until(lambda: len(got) == 2)
    assert [(i, m) for i, m, _ in got] == [(0x12345678, 1), (1_000_000_000, 0xDEADBEEF)]
    c = rx.counters
    assert c["frames"] == 2 and c["crc_errors"] == 1 and c["garbage_bytes"] == 5
    assert c["bytes"] == 5 + 3 * 28
    assert rx.last_frame.train_id == 1_000_000_000
    assert not rx.running


def test_missing_port_is_a_typed_error(tmp_path):
    with pytest.raises(TrainIdSourceError) as info:
        SerialTrainIdReceiver(str(tmp_path / "no-such-tty")).start()
    assert isinstance(info.value, ConnectionError)


def test_vanished_port_ends_the_reader_and_is_counted():
    sim = TimingSimulator(10, run_clock=False).start()
    rx = SerialTrainIdReceiver(sim.slave_path).start()
    try:
        sim.emit_train()
        assert wait_until(lambda: rx.counters["frames"] == 1)
        sim.stop()                                              # the "USB device" goes away
        assert wait_until(lambda: not rx.running)
        assert rx.counters["read_errors"] == 1 and rx.error is not None
    finally:
        rx.stop()
        sim.stop()


def test_live_simulator_with_faults_gives_every_trigger_its_train():
    start_id = 1_000_000
    faults = {2: "drop", 4: "bad_crc", 6: "duplicate", 8: ("jump", 100), 10: "garbage", 11: "split",
              13: "no_trigger"}
    n_trains = 16
    origin = time.time()                        # host time of the board timer reset
    # The simulator's clock thread starts a train when it gets the CPU, so on a loaded
    # machine its trigger times jitter by tens of ms (real ones do not): tolerate that.
    # Trains every 0.4 s (not 0.1 s) with windows scaled to match, so the rules are the
    # same but scheduling delays of a loaded CI machine stay far inside the tolerances.
    with TimingSimulator(start_id, faults=faults, period_s=0.4) as sim, \
            SerialTrainIdSource(sim.slave_path, board_time_origin=origin, period_s=0.4,
                                grid_tolerance_s=0.15, window_s=0.15) as source:
        assigner = TrainIdAssigner(source)
        decided = []
        fed = 0

        def feed_new_triggers():
            # The board sees the trigger of each train that has started, frame or not.
            nonlocal fed
            edges = trigger_edges(sim.trains[:n_trains], origin)
            decided.append(assigner.feed(edges[fed:]))
            fed = edges.size

        while len(sim.trains) < n_trains:
            feed_new_triggers()
            time.sleep(0.05)
        last_id = sim.trains[n_trains - 1].train_id
        assert wait_until(lambda: source.receiver.last_frame is not None
                          and source.receiver.last_frame.train_id >= last_id)
        feed_new_triggers()
        decided.append(assigner.flush())
    out = np.concatenate(decided)
    truth = [r for r in sim.trains[:n_trains] if r.trigger]
    # Expected, from the rules: ID = start + index (+100 from train 8 on); no trigger for train 13.
    expected_ids = [start_id + r.index + (100 if r.index >= 8 else 0) for r in truth]
    assert [r.train_id for r in truth] == expected_ids
    assert out["train_id"].tolist() == expected_ids
    flags = {r.index: int(f) for r, f in zip(truth, out["flags"])}
    assert flags[2] == EXTRAPOLATED and flags[4] == EXTRAPOLATED       # no good frame
    assert flags[8] == JUMP and flags[14] == GAP                       # jump; missed trigger 13
    assert all(f == 0 for i, f in flags.items() if i not in (2, 4, 8, 14))
    stats = source.stats()
    assert stats["crc_errors"] == 1
    assert stats["duplicated_observations"] == 1
    assert stats["jumps"] == 1 and stats["missing"] == 1 and stats["extrapolated"] == 2
    assert stats["unmatched"] == 1                                     # frame of train 13
    assert stats["malformed"] >= 1 and stats["garbage_bytes"] > 0    # the garbage bytes
    assert not source.receiver.running


def test_driven_mode_calls_listeners_per_trigger():
    seen = []
    sim = TimingSimulator(77, run_clock=False, faults={1: "no_trigger"})
    sim.add_listener(seen.append)
    with sim:
        for _ in range(3):
            sim.emit_train()
    assert [r.train_id for r in seen] == [77, 79]
    assert [r.trigger for r in sim.trains] == [True, False, True]
    assert sim.counters["frames_written"] == 3
