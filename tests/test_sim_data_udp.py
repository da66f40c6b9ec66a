"""The UDP data streamer over real loopback sockets: counted words arrive, faults do what they say."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from simulators.clock import BoardClock
from simulators.physics import HitGenerator, PhysicsModel
from simulators.udp_stream import DataFaults, UdpDataStreamer, check_loopback
from tpx3lib.errors import ConfigError
from test_sim_data_refdecoder import decode_ref


class Receiver:
    """Collects datagrams on an ephemeral loopback port in a thread."""

    def __init__(self, port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.05)
        self.addr = self.sock.getsockname()
        self.datagrams: list[bytes] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            with self._cond:
                self.datagrams.append(data)
                self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10.0) -> None:
        with self._cond:
            self._cond.wait_for(lambda: len(self.datagrams) >= n, timeout)

    def words(self) -> np.ndarray:
        return np.frombuffer(b"".join(self.datagrams), "<u8")

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture(autouse=True)
def _loaded_kernels(sim_kernels):
    """Every test here streams: load the generator first (see conftest.sim_kernels)."""


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def stream(receiver_addrs, seconds, faults=None, model=None, n_chips=1, **kw):
    gen = HitGenerator(model or PhysicsModel(hit_rate_hz=30_000, seed=3), n_chips=n_chips)
    st = UdpDataStreamer(gen, BoardClock(), receiver_addrs, faults, collect_truth=True, **kw)
    try:
        st.start()
        time.sleep(seconds)
        st.stop()
    finally:
        st.close()
    return st


def test_datagrams_carry_exactly_the_counted_words(receiver):
    st = stream([receiver.addr], 0.3)
    c = st.counters[0]
    receiver.wait_for(c.datagrams)
    assert len(receiver.datagrams) == c.datagrams == c.generated_datagrams
    sizes = np.array([len(d) for d in receiver.datagrams])
    assert sizes.sum() == c.bytes == 8 * c.words == 8 * c.generated_words
    assert np.all(sizes % 8 == 0) and sizes.max() == 8192          # jumbo frames of 1024 words
    assert np.mean(sizes == 8192) > 0.5                               # partial ones only on flushes
    words = receiver.words()
    px, td, hb = decode_ref(words)
    truth = st.truth()
    assert len(px) == c.hits == len(truth.hits) > 20_000
    np.testing.assert_array_equal(px["toa"], truth.hits["toa"])       # hit for hit, in order
    np.testing.assert_array_equal(px["x"], truth.hits["x"])
    np.testing.assert_array_equal(px["tot_ns"], truth.hits["tot"])
    np.testing.assert_array_equal(td["time"], truth.triggers["time"])
    assert len(td) == c.tdcs and len(hb) == c.heartbeats == len(truth.heartbeats) >= 1
    assert np.all(truth.hits["sent"] == 1)
    assert c.dropped_datagrams == c.duplicated_datagrams == c.send_errors == 0


def test_dropped_and_duplicated_datagrams_are_exactly_the_chosen_ones(receiver):
    faults = DataFaults(drop_indices=frozenset({1, 3}), duplicate_indices=frozenset({5}))
    st = stream([receiver.addr], 0.3, faults)
    c = st.counters[0]
    receiver.wait_for(c.datagrams)
    assert c.dropped_datagrams == 2 and c.duplicated_datagrams == 1
    assert len(receiver.datagrams) == c.datagrams == c.generated_datagrams - 2 + 1
    assert sum(len(d) for d in receiver.datagrams) == c.bytes == 8 * (c.generated_words - c.dropped_words
                                                                        + c.duplicated_words)
    truth = st.truth()
    sent = truth.hits["sent"]
    assert np.sum(sent == 0) == c.dropped_hits > 0 and np.sum(sent == 2) > 0
    # what arrived is exactly the truth's hits, each as often as it was sent
    px, _, _ = decode_ref(receiver.words())
    assert len(px) == c.hits == int(sent.sum())
    expect = np.repeat(truth.hits, sent)
    got = np.sort(np.rec.fromarrays([px["toa"], px["x"], px["y"]]), order=None)
    exp = np.sort(np.rec.fromarrays([expect["toa"], expect["x"].astype(np.int64), expect["y"].astype(np.int64)]))
    np.testing.assert_array_equal(got, exp)


def test_drop_fraction_is_counted(receiver):
    st = stream([receiver.addr], 0.3, DataFaults(drop_fraction=0.3, seed=7),
                model=PhysicsModel(hit_rate_hz=60_000, seed=4))
    c = st.counters[0]
    receiver.wait_for(c.datagrams)
    assert len(receiver.datagrams) == c.datagrams == c.generated_datagrams - c.dropped_datagrams
    assert 0.1 < c.dropped_datagrams / c.generated_datagrams < 0.5
    assert len(decode_ref(receiver.words())[0]) == c.hits == c.generated_hits - c.dropped_hits


def test_reordered_datagram_comes_after_the_next_one(receiver):
    st = stream([receiver.addr], 0.3, DataFaults(reorder_indices=frozenset({2})))
    c = st.counters[0]
    receiver.wait_for(c.datagrams)
    assert c.reordered_datagrams == 1 and len(receiver.datagrams) == c.generated_datagrams
    d = list(receiver.datagrams)
    d[2], d[3] = d[3], d[2]                               # undo the swap: the original stream again
    px, _, _ = decode_ref(np.frombuffer(b"".join(d), "<u8"))
    np.testing.assert_array_equal(px["toa"], st.truth().hits["toa"])


def test_heartbeats_can_be_stopped_while_running(receiver):
    gen = HitGenerator(PhysicsModel(hit_rate_hz=10_000, heartbeat_period_s=0.02, seed=5))
    st = UdpDataStreamer(gen, BoardClock(), [receiver.addr], collect_truth=True)
    try:
        st.start()
        time.sleep(0.15)
        st.faults = DataFaults(stop_heartbeats=True)
        time.sleep(0.15)
        st.stop()
    finally:
        st.close()
    c = st.counters[0]
    receiver.wait_for(c.datagrams)
    words = receiver.words()
    top = words >> np.uint64(56)
    n44 = int(np.sum(top == 0x44))
    assert n44 == c.heartbeats == len(st.truth().heartbeats) >= 3
    assert c.suppressed_heartbeat_words >= 4 * 3               # a few heartbeats were removed
    assert int(np.sum(top == 0x45)) == n44 and int(np.sum(top == 0x71)) == 2 * n44
    # the last heartbeat word arrives before the last third of the data
    assert np.flatnonzero(top == 0x44).max() < 0.75 * len(words)


def test_one_destination_means_base_port_plus_chip():
    for _ in range(20):                                    # find two free consecutive ports
        a = Receiver()
        try:
            b = Receiver(a.addr[1] + 1)
            break
        except OSError:
            a.close()
    else:
        pytest.skip("no two consecutive free UDP ports")
    try:
        st = stream([a.addr], 0.2, n_chips=2, model=PhysicsModel(hit_rate_hz=20_000, seed=6))
        assert st.destinations == [a.addr, (a.addr[0], a.addr[1] + 1)]
        for chip, r in enumerate((a, b)):
            c = st.counters[chip]
            r.wait_for(c.datagrams)
            px, _, _ = decode_ref(r.words())
            np.testing.assert_array_equal(px["toa"], st.truth().for_chip(chip).hits["toa"])
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("host", ["10.1.2.3", "192.0.2.1", "8.8.8.8", "0.0.0.0", "::"])
def test_non_loopback_destinations_are_refused(host):
    with pytest.raises(ConfigError, match="loopback"):
        check_loopback(host, 8192)
    with pytest.raises(ConfigError):
        UdpDataStreamer(HitGenerator(), BoardClock(), [(host, 8192)])


def test_loopback_names_are_accepted():
    assert check_loopback("127.0.0.1", 9)[1] == ("127.0.0.1", 9)
    assert check_loopback("localhost", 9)[1][0] in ("127.0.0.1", "::1")
    assert check_loopback("127.5.6.7", 9)[1][0] == "127.5.6.7"


def test_restart_accumulates_and_clock_reset_is_followed(receiver):
    before_reset = 10 * 40_000_000                         # board time (ticks) of the first run: from 10 s on
    clock = BoardClock(start_ticks=before_reset)
    gen = HitGenerator(PhysicsModel(hit_rate_hz=20_000, seed=8))
    st = UdpDataStreamer(gen, clock, [receiver.addr], collect_truth=True)
    try:
        st.start()
        time.sleep(0.1)
        st.stop()
        first = st.counters[0].hits
        clock.reset()                                      # RESET_TIMER between runs
        st.start()
        time.sleep(0.1)
        st.stop()
    finally:
        st.close()
    c = st.counters[0]
    assert c.hits > first > 0
    receiver.wait_for(c.datagrams)
    assert len(receiver.datagrams) == c.datagrams
    hb = st.truth().heartbeats["timer"]
    # the second run restarted at the reset timer: one drop, from >= 10 s to well below
    drops = np.flatnonzero(np.diff(hb) < 0)
    assert drops.size == 1
    assert hb[0] >= before_reset and hb[drops[0]] >= before_reset
    assert hb[drops[0] + 1] < before_reset // 2 and hb[-1] < before_reset // 2


def test_destinations_can_change_between_runs():
    a, b = Receiver(), Receiver()
    try:
        gen = HitGenerator(PhysicsModel(hit_rate_hz=20_000, seed=9))
        st = UdpDataStreamer(gen, BoardClock(), [a.addr])
        try:
            st.start()
            time.sleep(0.1)
            st.stop()
            n_a = st.counters[0].datagrams
            st.set_destinations([b.addr])
            st.start()
            time.sleep(0.1)
            st.stop()
            with pytest.raises(ConfigError):
                st.set_destinations([("10.0.0.1", 8192)])
        finally:
            st.close()
        a.wait_for(n_a)
        b.wait_for(st.counters[0].datagrams - n_a)
        assert len(a.datagrams) == n_a > 0
        assert len(b.datagrams) == st.counters[0].datagrams - n_a > 0
    finally:
        a.close()
        b.close()


def test_falling_behind_skips_board_time_and_counts_it(receiver):
    class FakeTime:                                        # board time we move by hand
        ns = 0

        def __call__(self):
            return self.ns

    src = FakeTime()
    gen = HitGenerator(PhysicsModel(hit_rate_hz=1000, seed=10))
    st = UdpDataStreamer(gen, BoardClock(time_source=src), [receiver.addr], max_lag_s=0.5, collect_truth=True)
    try:
        st.start()
        src.ns += 3_000_000_000                             # 3 s at once: more than max_lag_s behind
        deadline = time.monotonic() + 10
        while st.slices == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        st.stop()
    finally:
        st.close()
    assert st.skipped_s == pytest.approx(3.0 - 0.25, abs=1e-6)  # caught up to max_lag_s / 2 behind
    clusters = st.truth().clusters
    assert clusters["t"].min() >= int(2.75 * 40e6) * 4096       # nothing generated for the skipped time


def test_stop_is_prompt_at_a_high_rate_and_the_truth_is_what_was_sent(receiver):
    """Far beyond what the machine can generate (20 Mhits/s asked), the streamer lags behind the
    clock; stop() must not work off that backlog (it used to block the board's AUTOTRIG_STOP for
    up to ~30 s). What it did not generate is counted; what it generated arrived, hit for hit."""
    import tpx3lib.decode.stream as stream
    gen = HitGenerator(PhysicsModel(hit_rate_hz=5_000_000, trigger_rate_hz=10, seed=30))
    gen.generate(0, 400)                                   # compile/load the kernels before timing anything
    st = UdpDataStreamer(gen, BoardClock(), [receiver.addr], collect_truth=True)
    try:
        st.start()
        time.sleep(0.6)
        t0 = time.monotonic()
        st.stop()
        stop_s = time.monotonic() - t0
    finally:
        st.close()
    assert stop_s < 3.0, f"stop() took {stop_s:.1f} s"      # liveness, not a benchmark (budget 0.2 s)
    assert st.stop_skipped_s > 0                              # the backlog existed and was counted
    c = st.counters[0]
    receiver.wait_for(c.datagrams, timeout=30)
    assert len(receiver.datagrams) == c.datagrams == c.generated_datagrams
    assert c.dropped_datagrams == c.send_errors == 0
    truth = st.truth()
    assert np.all(truth.hits["sent"] == 1) and len(truth.hits) == c.hits > 100_000
    out, _ = stream.decode_words(receiver.words())
    px = out.pixels
    assert len(px) == len(truth.hits)
    for f in ("x", "y", "tot", "toa"):
        np.testing.assert_array_equal(px[f], truth.hits[f], err_msg=f)
    np.testing.assert_array_equal(out.tdcs["time"], truth.triggers["time"])
    np.testing.assert_array_equal(out.heartbeats["timer"], truth.heartbeats["timer"])
    # nothing after the stop request and nothing from the time it had no budget for
    end_units = st._last * 4096
    assert truth.clusters["t"].max() < end_units


def test_a_stop_while_the_kernels_still_load_returns_at_once_and_sends_nothing(receiver, monkeypatch):
    """A cold numba cache makes the first warm-up take seconds; the board's AUTOTRIG_START and
    AUTOTRIG_STOP replies must not wait for it. (The slow compile is the one fault simulated by
    replacing warm_up: it cannot be produced on demand in a process whose kernels are loaded.)"""
    import simulators.udp_stream as us
    release = threading.Event()
    monkeypatch.setattr(us, "warm_up", lambda: release.wait(10))
    gen = HitGenerator(PhysicsModel(hit_rate_hz=30_000, seed=3))
    st = UdpDataStreamer(gen, BoardClock(), [receiver.addr], collect_truth=True)
    t0 = time.monotonic()
    st.start()
    time.sleep(0.3)
    st.stop()
    assert time.monotonic() - t0 < 1.0 + 0.3 + 1.0      # start waited WARM_UP_WAIT_S at most, stop not at all
    release.set()
    time.sleep(0.3)
    assert st.counters[0].datagrams == 0 and len(st.truth().hits) == 0
    assert st.stop_skipped_s >= 0.25                    # the skipped board time is counted
    monkeypatch.setattr(us, "warm_up", lambda: None)
    st.start()                                          # the next run streams normally
    time.sleep(0.3)
    st.stop()
    st.close()
    assert st.counters[0].datagrams > 0
