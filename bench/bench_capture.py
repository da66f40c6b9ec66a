"""Benchmark of live capture: the highest loopback rate captured with zero loss.

A dedicated sender process (``sendmmsg`` of preformatted ~8 kB datagrams)
sends at increasing rates to a :class:`~tpx3lib.capture.Capture`; a step passes
when every datagram sent is in the ring (no kernel drop, no ring loss). After the first
lossy step the rate is bisected (``--refine``) between it and the last lossless one. Printed:

    BENCH <name> <value> <unit>

Baselines measured in the same run: the sender alone (sending to a socket nobody
reads) and ``memcpy`` of the same bytes. Each step's capture ratio is against the
sender-alone rate. At 8 bytes per hit, MB/s / 8 = Mhits/s.

    python bench/bench_capture.py [--seconds 1.0] [--record-seconds 5] [--quick] [--methods recvmmsg,recv_into]
                                  [--refine 3]

The recorder writes with direct I/O where the filesystem has it (``RawRecorder(direct=True)``,
the default); each record step writes several GB to the temporary directory.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tpx3lib.capture import Capture, _linux                       # noqa: E402
from tpx3lib.capture.sender import paced_sender_main               # noqa: E402

SPAWN = mp.get_context("spawn")


def bench(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"BENCH {name} {value:.6g} {unit}" + (f"  # {note}" if note else ""), flush=True)


class Sender:
    """The sender process, kept across steps."""

    def __init__(self, port: int, payload: int):
        self.conn, child = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=paced_sender_main, args=(child, port, "127.0.0.1", payload),
                                  name="bench-sender", daemon=True)
        self.proc.start()
        child.close()

    def send(self, count: int, rate: float) -> tuple[int, float]:
        self.conn.send((count, rate))
        return self.conn.recv()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def sender_alone(payload: int, seconds: float) -> float:
    """Datagrams/s the sender reaches with nobody reading (the kernel drops at the sink)."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    s = Sender(sink.getsockname()[1], payload)
    try:
        s.send(1000, 0)                                    # warm up
        n = int(seconds * 150_000)
        sent, dt = s.send(n, 0)
    finally:
        s.close()
        sink.close()
    return sent / dt


def memcpy_rate(payload: int, seconds: float) -> float:
    """Bytes/s of copying ``payload``-byte blocks into a 64 MiB buffer (one core)."""
    src = np.random.default_rng(1).integers(0, 255, 64 << 20, dtype=np.uint8)
    dst = np.empty_like(src)
    n_blocks = src.size // payload
    t0 = time.perf_counter()
    done = 0
    while time.perf_counter() - t0 < seconds:
        # copy block by block like a receiver would, 64 blocks per numpy call
        for i in range(0, n_blocks - 64, 64):
            a = i * payload
            dst[a:a + 64 * payload] = src[a:a + 64 * payload]
        done += (n_blocks - 64) // 64 * 64 * payload
    return done / (time.perf_counter() - t0)


def drain_reader(cap: Capture, chip: int, stop: threading.Event, touch: bool) -> threading.Thread:
    """A reader thread that keeps up with the ring (optionally summing every word it sees)."""
    reader = cap.ring(chip)

    def run():
        total = 0
        try:
            while not stop.is_set():
                b = reader.read(timeout=0.05)
                if touch:
                    for i in range(len(b)):
                        total += int(b.words(i)[:1].sum())
                reader.release(b)
        finally:
            reader.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def settle(cap: Capture, chip: int, target: int, timeout: float = 5.0) -> dict:
    """Wait until the capture has accounted for ``target`` datagrams (or stops moving)."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while True:
        c = cap.counters[chip]
        seen = c["datagrams"] + c["kernel_drops"]
        if seen >= target:
            return c
        if seen != last:
            last, last_change = seen, time.monotonic()
        if time.monotonic() - last_change > 1.2 or time.monotonic() > deadline:
            return c     # kernel drops show up in /proc within the receiver's 1 s poll


def rate_search(label: str, cap_kwargs: dict, payload: int, seconds: float, baseline_dgps: float,
                consumer: str | None = None, quick: bool = False, refine: int = 3) -> float:
    """Increase the rate until loss, then bisect ``refine`` times between the last lossless
    step and the lossy one; print and return the highest zero-loss rate (datagrams/s)."""
    best = 0.0
    sender_limited = False
    recorder = None
    with Capture(chips=[0], ports=[0], **cap_kwargs) as cap:
        stop = threading.Event()
        thread = None
        if consumer == "reader":
            thread = drain_reader(cap, 0, stop, touch=True)
        elif consumer == "record":
            from tpx3lib.capture.recorder import RawRecorder
            tmp = tempfile.mkdtemp(prefix="tpx3bench_")
            recorder = RawRecorder(cap.ring_name(0), os.path.join(tmp, "bench.tpx3raw"), chip=0)
            recorder.start()
        sender = Sender(cap.ports[0], payload)

        def step(rate: float) -> tuple[bool, float]:
            """Send for ``seconds`` at ``rate`` (0: unpaced); (lost nothing, achieved datagrams/s)."""
            before = cap.counters[0]
            count = max(2000, int(rate * seconds)) if rate > 0 else int(baseline_dgps * seconds)
            sent, dt = sender.send(count, rate)
            achieved = sent / dt
            before_n = before["datagrams"] + before["kernel_drops"]
            after = settle(cap, 0, before_n + sent)
            got = after["datagrams"] - before["datagrams"]
            drops = after["kernel_drops"] - before["kernel_drops"]
            lost = sent - got
            ring_loss = 0
            if consumer == "reader":
                ring_loss = after["overruns"] - before["overruns"]
            ok = lost == 0 and drops == 0 and ring_loss == 0
            print(f"  {label}: asked {rate/1e3:8.1f} k/s sent {achieved/1e3:8.1f} k/s "
                  f"({achieved * payload / 1e6:7.1f} MB/s) received {got}/{sent} kernel drops {drops}"
                  f" ring loss {ring_loss} -> {'ok' if ok else 'LOSS'}", flush=True)
            return ok, achieved

        try:
            sender.send(2000, 20000)                           # warm up
            settle(cap, 0, 2000)
            rate, last_ok = 20_000.0, 0.0
            factor = 1.6 if not quick else 2.2
            tried_unpaced = False
            while True:
                ok, achieved = step(rate)
                if ok:
                    best = max(best, achieved)
                    sender_limited = rate <= 0       # even the unpaced sender lost nothing
                    last_ok = rate
                if not ok or rate <= 0:
                    break
                if achieved < 0.85 * rate:       # the sender cannot go faster: finish with one unpaced step
                    if tried_unpaced:
                        break
                    rate, tried_unpaced = 0.0, True
                    continue
                rate *= factor
            if not ok and rate > 0 and last_ok > 0:
                # narrow the highest lossless rate down between the last good step and the lossy one
                lo, hi = last_ok, rate
                for _ in range(refine):
                    mid = (lo * hi) ** 0.5
                    ok, achieved = step(mid)
                    if ok:
                        best, lo = max(best, achieved), mid
                    else:
                        hi = mid
        finally:
            sender.close()
            stop.set()
            if thread is not None:
                thread.join(5)
            if recorder is not None:
                recorder.stop()
                st = recorder.stats
                print(f"  {label}: recorder wrote {st['records']} records, {st['bytes']} bytes; "
                      f"error: {recorder.error}", flush=True)
                import shutil
                shutil.rmtree(os.path.dirname(recorder.path), ignore_errors=True)
        c = cap.counters[0]
    granted = c["rcvbuf_granted"]
    mbps = best * payload / 1e6
    limit = "limited by the sender: capture lost nothing it was sent; " if sender_limited else ""
    bench(f"capture_{label}_zero_loss_rate", best, "datagrams/s",
          f"{limit}rcvbuf granted {granted} B, ratio {best / baseline_dgps:.2f} of the sender alone")
    bench(f"capture_{label}_zero_loss_MBps", mbps, "MB/s")
    bench(f"capture_{label}_zero_loss_Mhits", mbps / 8, "Mhits/s")
    bench(f"capture_{label}_vs_sender_alone", best / baseline_dgps, "ratio")
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="sending time per rate step")
    ap.add_argument("--payload", type=int, default=8192, help="datagram size in bytes")
    ap.add_argument("--ring-mib", type=int, default=128)
    ap.add_argument("--methods", default="recvmmsg,recv_into" if _linux.HAVE_MMSG else "recv_into")
    ap.add_argument("--no-force-rcvbuf", action="store_true",
                    help="do not use SO_RCVBUFFORCE (then net.core.rmem_max caps the socket buffer)")
    ap.add_argument("--quick", action="store_true", help="coarser steps, fewer variants")
    ap.add_argument("--no-record", action="store_true", help="skip capture + record")
    ap.add_argument("--record-seconds", type=float, default=5.0,
                    help="sending time per rate step of capture + record (default 5: longer than the "
                         "socket buffer and the ring can absorb, so a recorder slower than the rate shows)")
    ap.add_argument("--refine", type=int, default=3,
                    help="bisection steps between the last lossless rate and the first lossy one (default 3)")
    args = ap.parse_args(argv)

    payload = args.payload
    print(f"# capture benchmark: {payload} B datagrams over loopback, {os.cpu_count()} cores, "
          f"rmem_max {_linux.read_rmem_max()}", flush=True)
    alone = sender_alone(payload, args.seconds)
    bench("sender_alone_rate", alone, "datagrams/s")
    bench("sender_alone_MBps", alone * payload / 1e6, "MB/s")
    mc = memcpy_rate(payload, min(args.seconds, 0.5))
    bench("memcpy_MBps", mc / 1e6, "MB/s", f"{payload} B blocks, one core")

    common = dict(ring_bytes=args.ring_mib << 20, policy="overrun", max_datagram=payload,
                  rcvbuf_force=not args.no_force_rcvbuf)
    results = {}
    for method in args.methods.split(","):
        results[method] = rate_search(method, dict(common, method=method), payload, args.seconds, alone,
                                      quick=args.quick, refine=args.refine)
    best_method = max(results, key=results.get)
    if not args.quick:
        rate_search(f"{best_method}_with_reader", dict(common, method=best_method, policy="block"), payload,
                    args.seconds, alone, consumer="reader", quick=args.quick, refine=args.refine)
    if not args.no_record:
        try:
            import tpx3lib.capture.recorder  # noqa: F401
        except ImportError as exc:
            print(f"# capture + record skipped: {exc}")
        else:
            rate_search(f"{best_method}_with_record", dict(common, method=best_method, policy="block"),
                        payload, args.record_seconds, alone, consumer="record", quick=args.quick,
                        refine=args.refine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
