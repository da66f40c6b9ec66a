from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


# A two-chip simulated SPIDR board and a library connection to it, shared by the
# SPIDR and simulator tests (a module may override either with its own).
@pytest.fixture(scope="session")
def sim_kernels():
    """The simulator's generator kernels loaded (compiled on a cold numba cache, ~10 s) before a
    test opens a shutter: like a real board, the simulator is then ready to stream at once."""
    from simulators.physics import warm_up
    warm_up()


@pytest.fixture
def sim(sim_kernels):
    from simulators.spidr_board import SimulatedSpidrBoard
    board = SimulatedSpidrBoard(port=0, n_chips=2).start()
    try:
        yield board
    finally:
        board.stop()


@pytest.fixture
def board(sim):
    from tpx3lib.spidr import SpidrBoard
    b = SpidrBoard.connect(("127.0.0.1", sim.port), timeout=10.0)
    try:
        yield b
    finally:
        b.close()
