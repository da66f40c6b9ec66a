"""``tpx3 acquire`` against the simulated SPIDR board over real sockets."""
from __future__ import annotations

import json

import pytest

from simulators.physics import PhysicsModel
from simulators.spidr_board import SimulatedSpidrBoard
from simulators.udp_stream import DataFaults
from tpx3lib.cli import main
from tpx3lib.process import ProcessOptions, process_files

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def busy_sim(sim_kernels):
    board = SimulatedSpidrBoard(port=0, n_chips=1, model=PhysicsModel(hit_rate_hz=20_000, noise_f0_hz=0,
                                                                        seed=4), collect_truth=True).start()
    try:
        yield board
    finally:
        board.stop()


def acquire(capsys, sim, *extra):
    rc = main(["acquire", "--spidr", f"127.0.0.1:{sim.port}", "--udp-port", "0", "--json", *extra])
    out = capsys.readouterr()
    return rc, json.loads(out.out), out.err


def test_acquisition_with_recording_and_train_ids(busy_sim, capsys, tmp_path):
    raw = tmp_path / "run.tpx3raw"
    rc, s, err = acquire(capsys, busy_sim, "--seconds", "1.5", "--bias", "50", "--centroid", "--train-id-start", "100",
                         "-o", str(raw))
    t = s["totals"]
    assert rc == 0, err
    sent = busy_sim.datagrams_sent()[0]
    assert s["board_sent"] == {"0": sent} and t["datagrams"] == sent > 10    # sent == received
    assert t["lost_datagrams"] == 0 and t["unprocessed_datagrams"] == 0
    assert t["hits"] > 10_000 and t["centroids"] > 1000
    # one train per trigger the board sent (10 Hz while the shutter was open, ~1.5 s: how long
    # exactly depends on how fast the board answered the shutter commands)
    truth = busy_sim.truth()
    n_trig = int(((truth.triggers["tdc"] == 1) & (truth.triggers["rising"] == 1)).sum())
    assert 10 <= n_trig <= 25 and s["trains_completed"] == n_trig
    assert s["last_train_id"] == 100 + s["trains_completed"] - 1
    assert "packets" in err and "backlog" in err                             # the status line
    # the recording holds everything received and processes to the same hits
    rec = s["recording"]["0"]
    assert rec["error"] is None and rec["records"] == t["datagrams"]
    summary = process_files([raw], tmp_path / "run.h5", ProcessOptions(centroid=False))
    assert summary.pixels == t["hits"]


def test_injected_loss_gives_exit_status_1_and_the_count(busy_sim, capsys):
    busy_sim.data_faults = DataFaults(drop_indices=frozenset({1, 3, 4}))
    rc, s, _ = acquire(capsys, busy_sim, "--seconds", "1.0", "--bias", "50")
    assert rc == 1
    assert s["lost_datagrams"] == {"0": 3} and s["totals"]["lost_datagrams"] == 3


def test_unreachable_board_and_bad_arguments(capsys):
    rc = main(["acquire", "--spidr", "127.0.0.1:1", "--seconds", "1"])
    assert rc == 2 and "cannot connect" in capsys.readouterr().err
    rc = main(["acquire", "--spidr", "127.0.0.1:1", "--seconds", "0"])
    assert rc == 2 and "--seconds must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["acquire", "--spidr", "127.0.0.1:99999", "--seconds", "1"])
