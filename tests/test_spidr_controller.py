"""The SPIDR controller against the simulated board over real TCP: errors, faults, recovery, threads."""
from __future__ import annotations

import socket
import threading

import pytest

from simulators.spidr_board import SimulatedSpidrBoard
from tpx3lib.errors import ProtocolError, SpidrConnectionError, SpidrError, SpidrTimeoutError
from tpx3lib.spidr import CMD_NOREPLY, Cmd, ErrorCode, SpidrBoard, SpidrController, make_error_code

SHORT = 0.5   # request timeout for tests that provoke timeouts
LONG = 10.0   # generous timeout for everything else


@pytest.fixture
def sim():
    board = SimulatedSpidrBoard(port=0, n_chips=2).start()
    try:
        yield board
    finally:
        board.stop()


@pytest.fixture
def ctrl(sim):
    c = SpidrController(("127.0.0.1", sim.port), timeout=LONG)
    try:
        yield c
    finally:
        c.close()


def _dac(ctrl, chip, code):
    return ctrl.get_int(Cmd.GET_DAC, chip, code) & 0xFFFF


def test_refused_command_is_a_decoded_spidr_error_and_the_next_works(sim, ctrl):
    sim.faults.refuse(Cmd.SET_DAC, ErrorCode.ERR_ILLEGAL_PAR)
    with pytest.raises(SpidrError) as ei:
        ctrl.set_int(Cmd.SET_DAC, 0, (6 << 16) | 150)
    err = ei.value
    assert str(err).startswith("SET_DAC on chip 0 refused: ERR_ILLEGAL_PAR")
    assert (err.command, err.chip, err.code, err.error_name) == ("SET_DAC", 0, 4, "ERR_ILLEGAL_PAR")
    assert _dac(ctrl, 0, 6) == 420          # refused: not executed
    ctrl.set_int(Cmd.SET_DAC, 0, (6 << 16) | 150)
    assert _dac(ctrl, 0, 6) == 150
    assert ctrl.stats.refused == 1


def test_tpx3_hardware_empty_is_raised_not_ignored(sim, ctrl):
    sim.faults.refuse("RESET_PIXELS", make_error_code(ErrorCode.ERR_TPX3_HARDW, 6), chip=1)
    ctrl.set_int(Cmd.RESET_PIXELS, 0)        # chip 0 is not affected
    with pytest.raises(SpidrError, match="RESET_PIXELS on chip 1 refused: ERR_TPX3_HARDW/EMPTY"):
        ctrl.set_int(Cmd.RESET_PIXELS, 1)


def test_board_level_error_says_on_the_board(sim, ctrl):
    sim.faults.refuse(Cmd.GET_FPGATEMP, ErrorCode.ERR_MON_HARDW, times=None)
    for _ in range(3):
        with pytest.raises(SpidrError, match="GET_FPGATEMP on the board refused: ERR_MON_HARDW"):
            ctrl.get_int(Cmd.GET_FPGATEMP)
    sim.faults.clear()
    assert ctrl.get_int(Cmd.GET_FPGATEMP) == 40750


def test_board_rejects_unknown_command_and_wrong_length(ctrl):
    with pytest.raises(SpidrError, match="CMD_0x999 on the board refused: ERR_UNKNOWN_CMD"):
        ctrl.request(0x999, None, [0])
    with pytest.raises(SpidrError, match="ERR_MSG_LENGTH"):
        ctrl.request(Cmd.SET_DAC, 0, [])               # SET_DAC needs its value word
    with pytest.raises(SpidrError, match="ERR_MSG_LENGTH"):
        ctrl.request(Cmd.SET_SPIDRREG, None, [0x384])  # needs [addr, value]
    with pytest.raises(SpidrError, match="ERR_ILLEGAL_PAR"):
        ctrl.request(Cmd.GET_DEVICEID, 5, [0])         # no chip 5
    assert ctrl.get_int(Cmd.GET_DEVICECOUNT) == 2


def test_dropped_reply_times_out_then_recovers(sim):
    with SpidrController(("127.0.0.1", sim.port), timeout=SHORT) as ctrl:
        sim.faults.drop_reply(Cmd.GET_TIMER)
        with pytest.raises(SpidrTimeoutError, match=r"GET_TIMER on chip 0: no complete reply within 0.5 s .*reconnected"):
            ctrl.get_ints(Cmd.GET_TIMER, 0, 2)
        assert ctrl.connected
        assert ctrl.get_int(Cmd.GET_DEVICECOUNT) == 2
        assert (ctrl.stats.timeouts, ctrl.stats.reconnects) == (1, 1)


def test_late_reply_is_never_taken_for_the_next_one(sim):
    with SpidrController(("127.0.0.1", sim.port), timeout=SHORT) as ctrl:
        ctrl.set_int(Cmd.SET_DAC, 0, (7 << 16) | 9)
        sim.faults.delay(2.0, Cmd.GET_DAC)
        with pytest.raises(SpidrTimeoutError):
            _dac(ctrl, 0, 6)
        # the same command again must get its own, correct answer
        assert _dac(ctrl, 0, 7) == 9
        assert _dac(ctrl, 0, 6) == 420


def test_delay_within_timeout_is_fine(sim, ctrl):
    sim.faults.delay(0.05, Cmd.GET_HUMIDITY)
    assert ctrl.get_int(Cmd.GET_HUMIDITY) == 32


def test_closed_connection_then_reconnect(sim, ctrl):
    ctrl.set_int(Cmd.SET_DAC, 1, (5 << 16) | 77)
    sim.faults.close_connection(Cmd.GET_FIRMWVERSION)
    with pytest.raises(SpidrConnectionError, match="GET_FIRMWVERSION on the board: connection to SPIDR .* lost"):
        ctrl.get_int(Cmd.GET_FIRMWVERSION)
    assert not ctrl.connected
    with pytest.raises(SpidrConnectionError, match="not connected .*call reconnect"):
        ctrl.get_int(Cmd.GET_FIRMWVERSION)
    ctrl.reconnect()
    assert ctrl.get_int(Cmd.GET_FIRMWVERSION) == 402792457
    assert _dac(ctrl, 1, 5) == 77           # the board kept its state


def test_board_side_disconnect(sim, ctrl):
    assert ctrl.get_int(Cmd.GET_DEVICECOUNT) == 2
    assert sim.disconnect_client()
    with pytest.raises(SpidrConnectionError):
        ctrl.get_int(Cmd.GET_DEVICECOUNT)
    ctrl.reconnect()
    assert ctrl.get_int(Cmd.GET_DEVICECOUNT) == 2


@pytest.mark.parametrize("kind, match", [("echo", "echoes command"), ("device", "is for device 1, expected 0")])
def test_corrupt_replies_are_protocol_errors(sim, ctrl, kind, match):
    sim.faults.corrupt_reply(kind, Cmd.GET_PLLCONFIG)
    with pytest.raises(ProtocolError, match=match):
        ctrl.get_int(Cmd.GET_PLLCONFIG, 0)
    assert ctrl.get_int(Cmd.GET_PLLCONFIG, 0) == 0


def test_impossible_reply_length_drops_the_connection(sim, ctrl):
    sim.faults.corrupt_reply("length", Cmd.GET_BOARDID)
    with pytest.raises(ProtocolError, match="reply declares length"):
        ctrl.get_int(Cmd.GET_BOARDID)
    assert not ctrl.connected
    ctrl.reconnect()
    assert ctrl.get_int(Cmd.GET_DEVICECOUNT) == 2


def test_replies_in_one_byte_segments(sim, ctrl):
    sim.faults.fragment_replies(chunk=1, times=2)
    col, data = ctrl.get_int_bytes(Cmd.GET_PIXCONF, 0, 256, 17)  # 276-byte reply, byte by byte
    assert col == 17 and data == bytes(256)
    assert ctrl.get_int(Cmd.GET_DEVICECOUNT) == 2
    assert [a for a, _ in sim.faults.fired] == ["fragment", "fragment"]


def test_reply_data_size_is_checked(ctrl):
    with pytest.raises(ProtocolError, match="expected 12 data bytes"):
        ctrl.request(Cmd.GET_TIMER, 0, [0], reply_words=3)
    assert ctrl.get_int(Cmd.GET_DEVICECOUNT) == 2


def test_noreply_flag(sim, ctrl):
    assert ctrl.request(Cmd.SET_DAC | CMD_NOREPLY, 0, [(4 << 16) | 33]) is None
    assert _dac(ctrl, 0, 4) == 33


def test_connect_failure_names_the_address():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(SpidrConnectionError, match=f"cannot connect to SPIDR at 127.0.0.1:{port}"):
        SpidrController(("127.0.0.1", port), timeout=LONG)


def test_second_client_is_refused(sim, ctrl):
    assert ctrl.get_int(Cmd.GET_DEVICECOUNT) == 2
    with SpidrController(("127.0.0.1", sim.port), timeout=LONG) as other:
        with pytest.raises(SpidrConnectionError, match="one client at a time"):
            other.get_int(Cmd.GET_DEVICECOUNT)
    assert sim.refused_clients == 1
    assert ctrl.get_int(Cmd.GET_DEVICECOUNT) == 2  # the first client is unaffected


def test_next_client_after_close_is_accepted(sim):
    for _ in range(3):
        with SpidrController(("127.0.0.1", sim.port), timeout=LONG) as c:
            assert c.get_int(Cmd.GET_DEVICECOUNT) == 2
    assert sim.refused_clients == 0


def test_threads_share_one_controller(sim, ctrl):
    errors = []

    def worker(chip, code):
        try:
            for v in range(40):
                ctrl.set_int(Cmd.SET_DAC, chip, (code << 16) | v)
                got = _dac(ctrl, chip, code)
                assert got == v, (chip, code, v, got)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(chip, code)) for chip in (0, 1) for code in (1, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert not any(t.is_alive() for t in threads)


def test_board_gone_entirely(sim):
    ctrl = SpidrController(("127.0.0.1", sim.port), timeout=LONG)
    try:
        sim.stop()
        with pytest.raises(SpidrConnectionError):
            ctrl.get_int(Cmd.GET_DEVICECOUNT)
        with pytest.raises(SpidrConnectionError, match="cannot connect"):
            ctrl.reconnect()
    finally:
        ctrl.close()


def test_board_object_wraps_a_controller(sim):
    with SpidrBoard.connect(("127.0.0.1", sim.port), timeout=LONG) as board:
        assert len(board) == 2 and [c.index for c in board] == [0, 1]
        assert board.controller.connected
    assert not board.controller.connected
