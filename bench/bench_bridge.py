"""Karabo Bridge benchmark: throughput and per-train latency over tcp loopback.

Trains of ~10 MB (one uint16 array plus a little msgpack data) go from a
server in this process to a client in a subprocess:

* throughput flat out: PUSH->PULL and REP->REQ (GB/s, 1 GB = 1e9 bytes);
* per-train latency (the train's ``timestamp``, set when it is fed, to its
  arrival in the client's ``next()``), median and p99, at 10 Hz (REP->REQ, the
  default pattern) and flat out (REP->REQ with a one-train queue);
* serialize/deserialize time of one train (no network);
* the baseline, measured in the same run: raw pyzmq PUSH->PULL sending the same
  frames (plus an 8-byte send time for latency), without (de)serialization.

Each figure is printed as ``BENCH <name> <value> <unit> [<ratio to baseline>]``.
Targets: p99 < 10 ms for 10 MB trains at 10 Hz; >= 1 GB/s flat out.
"""
from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

__all__ = ["main"]

SRC = "BENCH_DET/CAM/1:daqOutput"


def make_train(size_mb: float):
    n = int(size_mb * 1e6) // 2
    image = np.arange(n, dtype=np.uint16)
    return {SRC: {"data.image": image, "data.nPixels": n, "data.label": "bench"}}


def _meta(tid):
    from karabo_bridge import make_metadata
    return {SRC: make_metadata(SRC, tid)}


# ----------------------------------------------------------------------------- client side
def _client_role(argv):
    """Runs in the subprocess: receive for ``duration`` s, print a JSON summary."""
    kind, endpoint, sock, duration = argv[0], argv[1], argv[2], float(argv[3])
    lat, nbytes, n = [], 0, 0
    t_first = t_last = None
    if kind == "raw":
        import zmq
        ctx = zmq.Context()
        s = ctx.socket(zmq.PULL)
        s.set_hwm(1)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        print("READY", flush=True)
        while t_first is None or time.monotonic() - t_first < duration:
            if not s.poll(30000):
                break
            frames = s.recv_multipart(copy=False)
            now = time.time()
            lat.append(now - struct.unpack("d", frames[0].bytes)[0])
            nbytes += sum(len(f) for f in frames[1:])
            n += 1
            t_last = time.monotonic()
            t_first = t_first or t_last
        s.close()
        ctx.term()
    else:
        from karabo_bridge import Client
        with Client(endpoint, sock=sock, timeout=30) as client:
            print("READY", flush=True)
            while t_first is None or time.monotonic() - t_first < duration:
                try:
                    data, meta = client.next()
                except TimeoutError:
                    break
                now = time.time()
                lat.append(now - meta[SRC]["timestamp"])
                nbytes += data[SRC]["data.image"].nbytes
                n += 1
                t_last = time.monotonic()
                t_first = t_first or t_last
    # throughput over the trains after the first (the first only starts the clock)
    per_train = nbytes / n if n else 0
    elapsed = (t_last - t_first) if n > 1 else 0
    print(json.dumps({"n": n, "bytes": nbytes, "elapsed": elapsed,
                      "gbps": (per_train * (n - 1) / elapsed / 1e9) if elapsed else 0.0,
                      "lat": lat}), flush=True)


def _spawn(kind, endpoint, sock, duration):
    proc = subprocess.Popen([sys.executable, __file__, "--_client", kind, endpoint, sock,
                             str(duration)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        raise RuntimeError(f"benchmark client did not start: {line!r}")
    return proc


def _result(proc):
    out, _ = proc.communicate(timeout=120)
    return json.loads(out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- server side
def run_raw(frames, duration, rate=None):
    """Baseline: raw pyzmq PUSH of the same frames, with an 8-byte send time first."""
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.set_hwm(1)
    s.setsockopt(zmq.LINGER, 0)
    s.bind("tcp://127.0.0.1:*")
    proc = _spawn("raw", s.getsockopt_string(zmq.LAST_ENDPOINT), "PULL", duration)
    next_at = time.monotonic()
    try:
        while proc.poll() is None:
            if rate:
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_at += 1.0 / rate
            if s.poll(100, zmq.POLLOUT):
                s.send_multipart([struct.pack("d", time.time()), *frames], copy=False)
        return _result(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        s.close()
        ctx.term()


def run_bridge(data, duration, sock="REP", rate=None, maxlen=10):
    import queue
    from karabo_bridge import ServerInThread
    csock = {"REP": "REQ", "PUSH": "PULL", "PUB": "SUB"}[sock]
    with ServerInThread("tcp://127.0.0.1:0", sock=sock, maxlen=maxlen) as server:
        proc = _spawn("bridge", server.endpoint, csock, duration)
        tid = 1
        next_at = time.monotonic()
        try:
            while proc.poll() is None:
                if rate:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    next_at += 1.0 / rate
                try:
                    server.feed(data, _meta(tid), timeout=0.2)
                except queue.Full:
                    continue
                tid += 1
            return _result(proc)
        finally:
            if proc.poll() is None:
                proc.kill()


def time_codec(data, meta, repeat=2000):
    """Median microseconds to serialize and to deserialize one train (no network)."""
    from karabo_bridge import deserialize, serialize
    ser, des = [], []
    frames = serialize(data, meta)
    for _ in range(repeat):
        t0 = time.perf_counter()
        frames = serialize(data, meta)
        t1 = time.perf_counter()
        deserialize(frames)
        t2 = time.perf_counter()
        ser.append(t1 - t0)
        des.append(t2 - t1)
    return float(np.median(ser)) * 1e6, float(np.median(des)) * 1e6


def _ms(values, q):
    return float(np.percentile(np.asarray(values) * 1e3, q)) if values else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench_bridge", description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=10.0, help="train size in MB (default 10)")
    ap.add_argument("--seconds", type=float, default=3.0,
                    help="duration of each flat-out measurement (default 3)")
    ap.add_argument("--latency-seconds", type=float, default=10.0,
                    help="duration of the 10 Hz latency measurements (default 10)")
    ap.add_argument("--rate", type=float, default=10.0, help="train rate for latency (Hz)")
    args = ap.parse_args(argv)

    from karabo_bridge import serialize
    data = make_train(args.size_mb)
    frames = serialize(data, _meta(1))

    ser_us, des_us = time_codec(data, _meta(1))
    raw = run_raw(frames, args.seconds)
    push = run_bridge(data, args.seconds, sock="PUSH", maxlen=2)
    rep = run_bridge(data, args.seconds, sock="REP", maxlen=1)
    raw_hz = run_raw(frames, args.latency_seconds, rate=args.rate)
    rep_hz = run_bridge(data, args.latency_seconds, sock="REP", rate=args.rate)

    base = raw["gbps"]
    print(f"BENCH raw_zmq_push_throughput {base:.2f} GB/s")
    print(f"BENCH bridge_push_throughput {push['gbps']:.2f} GB/s {push['gbps'] / base:.2f}")
    print(f"BENCH bridge_rep_throughput {rep['gbps']:.2f} GB/s {rep['gbps'] / base:.2f}")
    rm, rp = _ms(raw_hz["lat"], 50), _ms(raw_hz["lat"], 99)
    print(f"BENCH raw_zmq_latency_{args.rate:g}hz_median {rm:.2f} ms")
    print(f"BENCH raw_zmq_latency_{args.rate:g}hz_p99 {rp:.2f} ms")
    bm, bp = _ms(rep_hz["lat"], 50), _ms(rep_hz["lat"], 99)
    print(f"BENCH bridge_rep_latency_{args.rate:g}hz_median {bm:.2f} ms {bm / rm:.2f}")
    print(f"BENCH bridge_rep_latency_{args.rate:g}hz_p99 {bp:.2f} ms {bp / rp:.2f}")
    print(f"BENCH bridge_rep_latency_{args.rate:g}hz_trains {rep_hz['n']} trains")
    fm, fp = _ms(raw["lat"], 50), _ms(raw["lat"], 99)
    print(f"BENCH raw_zmq_latency_flat_median {fm:.2f} ms")
    print(f"BENCH raw_zmq_latency_flat_p99 {fp:.2f} ms")
    print(f"BENCH bridge_rep_latency_flat_median {_ms(rep['lat'], 50):.2f} ms "
          f"{_ms(rep['lat'], 50) / fm:.2f}")
    print(f"BENCH bridge_rep_latency_flat_p99 {_ms(rep['lat'], 99):.2f} ms "
          f"{_ms(rep['lat'], 99) / fp:.2f}")
    print(f"BENCH serialize_train {ser_us:.1f} us")
    print(f"BENCH deserialize_train {des_us:.1f} us")
    print(f"BENCH train_size {sum(len(memoryview(f)) for f in frames) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_client":
        _client_role(sys.argv[2:])
    else:
        sys.exit(main())
