"""The simulated board's control server, spoken to with hand-built bytes on a raw TCP socket."""
from __future__ import annotations

import logging
import socket
import struct

import pytest

from simulators.spidr_board import SimulatedSpidrBoard
from tpx3lib.spidr import Cmd


@pytest.fixture
def raw(sim):
    s = socket.create_connection(("127.0.0.1", sim.port), timeout=10)
    try:
        yield s
    finally:
        s.close()


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_reply(s):
    head = recv_exact(s, 16)
    cmd, length, status, dev = struct.unpack(">4I", head)
    return cmd, length, status, dev, recv_exact(s, length - 16)


def test_get_deviceid_exact_bytes(raw):
    raw.sendall(bytes.fromhex("00000110" "00000014" "00000000" "00000000" "00000000"))
    # reply: echo 0x110 | 0x10000, 20 bytes, no error, dev 0, id 0x1C68 (W0028_H06)
    assert recv_exact(raw, 20) == bytes.fromhex("00010110" "00000014" "00000000" "00000000" "00001C68")


def test_set_then_get_dac_exact_bytes(raw):
    raw.sendall(bytes.fromhex("0000011B" "00000014" "00000000" "00000001" "00060096"))  # chip 1 fine thr = 150
    cmd, length, status, dev, _ = read_reply(raw)
    assert (cmd, length, status, dev) == (0x1011B, 20, 0, 1)
    raw.sendall(bytes.fromhex("0000011A" "00000014" "00000000" "00000001" "00000006"))
    assert recv_exact(raw, 20)[16:] == bytes.fromhex("00060096")


def test_unknown_command_gets_err_unknown_cmd(raw):
    raw.sendall(bytes.fromhex("00000ABC" "00000014" "00000000" "00000000" "00000000"))
    cmd, length, status, dev, _ = read_reply(raw)
    assert (cmd, status & 0xFF) == (0x10ABC, 1)


def test_wrong_payload_length_gets_err_msg_length(raw):
    raw.sendall(bytes.fromhex("0000011B" "00000010" "00000000" "00000000"))  # SET_DAC without its value
    assert read_reply(raw)[2] == 2
    raw.sendall(bytes.fromhex("0000011B" "00000016" "00000000" "00000000" "000600960000"))  # 6 bytes: not words
    assert read_reply(raw)[2] == 2
    # SET_PIXCONF with 100 bytes of pixel data (not whole 192-byte columns)
    raw.sendall(struct.pack(">5I", 0x22A, 20 + 100, 0, 0, 0) + bytes(100))
    assert read_reply(raw)[2] == 2


def test_out_of_range_gets_err_illegal_par(raw):
    raw.sendall(struct.pack(">5I", 0x11B, 20, 0, 0, (7 << 16) | 16))  # Vthreshold_coarse 16 > 15
    assert read_reply(raw)[2] == 4
    raw.sendall(struct.pack(">5I", 0x22D, 20, 0, 0, 256))  # GET_PIXCONF of column 256
    assert read_reply(raw)[2] == 4


def test_header_length_below_16_closes_the_connection(raw):
    raw.sendall(struct.pack(">4I", 0x90D, 8, 0, 0))
    assert read_reply(raw)[2] == 2
    assert raw.recv(1) == b""


def test_requests_split_and_coalesced(raw):
    msg = struct.pack(">5I", 0x90D, 20, 0, 0, 0)  # GET_DEVICECOUNT
    for b in msg:
        raw.sendall(bytes([b]))
    assert read_reply(raw)[4] == struct.pack(">I", 2)
    raw.sendall(msg + struct.pack(">5I", 0x110, 20, 0, 1, 0))  # two requests in one segment
    assert read_reply(raw)[4] == struct.pack(">I", 2)
    assert read_reply(raw)[4] == struct.pack(">I", 0x1C69)


def test_noreply_flag_suppresses_the_reply(raw, sim):
    raw.sendall(struct.pack(">5I", 0x11B | 0x80000, 20, 0, 0, (4 << 16) | 99))
    raw.sendall(struct.pack(">5I", 0x11A, 20, 0, 0, 4))
    cmd, _, status, _, data = read_reply(raw)  # the first reply is GET_DAC's
    assert cmd == 0x1011A and data == struct.pack(">I", (4 << 16) | 99)


def test_second_client_is_closed_with_a_log(raw, sim, caplog):
    raw.sendall(struct.pack(">5I", 0x90D, 20, 0, 0, 0))
    read_reply(raw)
    caplog.set_level(logging.WARNING, logger="simulators.spidr_board")
    with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as other:
        try:
            assert other.recv(1) == b""
        except ConnectionResetError:
            pass
    assert sim.refused_clients == 1
    assert "one client at a time" in caplog.text
    raw.sendall(struct.pack(">5I", 0x90D, 20, 0, 0, 0))
    assert read_reply(raw)[2] == 0


def test_non_loopback_udp_destination_is_refused(raw, sim, caplog):
    caplog.set_level(logging.WARNING, logger="simulators.spidr_board")
    raw.sendall(struct.pack(">5I", 0x115, 20, 0, 0, (10 << 24) | 1))  # 10.0.0.1
    assert read_reply(raw)[2] == 4
    assert "10.0.0.1" in caplog.text and "loopback" in caplog.text
    raw.sendall(struct.pack(">5I", 0x115, 20, 0, 0, (127 << 24) | 5))  # 127.0.0.5 is fine
    assert read_reply(raw)[2] == 0
    assert sim.chips[0].ip_dest == 0x7F000005


def _payload_for(cmd: Cmd) -> bytes:
    if cmd in (Cmd.SET_SPIDRREG, Cmd.SET_TIMER):
        return struct.pack(">2I", 0x1000 if cmd == Cmd.SET_SPIDRREG else 0, 0)
    if cmd == Cmd.SET_TRIGCONFIG:
        return struct.pack(">4I", 4, 0, 10, 1)
    if cmd == Cmd.SET_PIXCONF:
        return struct.pack(">I", 0) + bytes(192)
    if cmd == Cmd.SET_CTPR:
        return struct.pack(">I", 0) + bytes(32)
    if cmd == Cmd.SET_DAC:
        return struct.pack(">I", (1 << 16) | 1)
    if cmd == Cmd.GET_DAC:
        return struct.pack(">I", 1)
    if cmd in (Cmd.SET_READOUTSPEED,):
        return struct.pack(">I", 640)
    if cmd in (Cmd.SET_SERVERPORT,):
        return struct.pack(">I", 8192)
    if cmd == Cmd.SET_IPADDR_DEST:
        return struct.pack(">I", 0x7F000001)
    return struct.pack(">I", 0)


def test_every_command_is_answered(raw):
    """No command of the protocol is met with silence; well-formed ones succeed."""
    not_simulated = {Cmd.WRITE_FLASH, Cmd.READ_FLASH}
    for cmd in Cmd:
        body = _payload_for(cmd)
        raw.sendall(struct.pack(">4I", int(cmd), 16 + len(body), 0, 0) + body)
        rcmd, length, status, dev, data = read_reply(raw)
        assert rcmd == int(cmd) | 0x10000 and dev == 0, cmd.name
        if cmd in not_simulated:
            assert status == 5, cmd.name  # ERR_NOT_IMPLEMENTED
        else:
            assert status == 0, (cmd.name, status)


def test_get_pixconf_reply_layout(raw, sim):
    raw.sendall(struct.pack(">5I", 0x22D, 20, 0, 1, 200))
    cmd, length, status, dev, data = read_reply(raw)
    assert (cmd, length, status, dev) == (0x1022D, 276, 0, 1)
    assert data[:4] == struct.pack(">I", 200) and data[4:] == bytes(256)


def test_timer_starts_and_restarts_at_start_ticks():
    start = (1 << 30) - 2 * 40_000_000  # two seconds before the 30-bit wrap
    with SimulatedSpidrBoard(port=0, start_ticks=start) as sim, \
            socket.create_connection(("127.0.0.1", sim.port), timeout=10) as s:
        def timer():
            s.sendall(struct.pack(">5I", 0x552, 20, 0, 0, 0))
            lsb, msb = struct.unpack(">2I", read_reply(s)[4])
            return msb << 32 | lsb
        assert timer() >= start
        s.sendall(struct.pack(">6I", 0x553, 24, 0, 0, 0, 5))  # SET_TIMER 5 << 32
        read_reply(s)
        assert timer() >= 5 << 32
        s.sendall(struct.pack(">5I", 0x551, 20, 0, 0, 0))     # RESET_TIMER -> back to start_ticks
        read_reply(s)
        assert start <= timer() < 5 << 32
