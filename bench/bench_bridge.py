"""Karabo Bridge benchmark: throughput and per-train latency over tcp loopback.

Trains of ~10 MB (one uint16 array plus a little msgpack data) go from a
server in this process to a client in a subprocess:

* throughput flat out: PUSH->PULL and REP->REQ (GB/s, 1 GB = 1e9 bytes);
* per-train latency (the train's ``timestamp``, set when it is fed, to its
  arrival in the client's ``next()``), median and p99, at 10 Hz (REP->REQ, the
  default pattern) and flat out (REP->REQ with a one-train queue);
* serialize/deserialize time of one train (no network);
* the baseline, measured in the same run: raw pyzmq PUSH->PULL sending the same
  frames (plus an 8-byte send time for latency), without (de)serialization;
* the Timepix3 sink path (``tpx3lib.pipeline.bridge_sink.KaraboBridgeSink``): processed
  chunks of ~10 MB trains (hits only) go through the TrainAssembler, the hand-off queue,
  ``train_message`` and the socket: per-train latency from the chunk that completes a
  train (``on_chunk``) to its arrival in the client, median and p99, at 10 Hz (REP->REQ),
  flat-out throughput (PUSH->PULL, GB/s of message payload) and the time the
  processing thread spends in ``on_chunk`` per train; the sink's own share (train
  completed -> message handed to ZeroMQ: ``sink_queue_to_zmq``), and the p99 without
  the first ``WARMUP`` trains (fresh message memory, first sends) next to the maximum,
  since with ~100 trains the p99 is about the second-worst train; the same
  ``..._p99_after_2`` is printed for raw ZeroMQ and the generic server.

The client process is this package's ``Client``, which tunes the C heap so received
trains reuse freed memory (``karabo_bridge.malloc``: faults on the first two trains
instead of four); the raw ZeroMQ client is plain pyzmq without that tuning.

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
SINK_SRC = "BENCH_TPX3/CAM/1:daqOutput"
WARMUP = 2     # trains left out of the "after warm-up" figures


class Pacer:
    """``wait()`` returns at ``rate`` calls per second (at once when rate is None or 0)."""

    def __init__(self, rate):
        self.rate = rate
        self.next_at = time.monotonic()

    def wait(self) -> None:
        if self.rate:
            delay = self.next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.next_at += 1.0 / self.rate


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
    max_n = int(argv[4]) if len(argv) > 4 else None          # stop after so many trains
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
            while (t_first is None or time.monotonic() - t_first < duration) and (max_n is None or n < max_n):
                try:
                    data, meta = client.next()
                except TimeoutError:
                    break
                now = time.time()
                src = SRC if kind == "bridge" else SINK_SRC
                lat.append(now - meta[src]["timestamp"])
                nbytes += (data[src]["data.image"].nbytes if kind == "bridge"
                           else sum(v.nbytes for v in data[src].values() if hasattr(v, "nbytes")))
                n += 1
                t_last = time.monotonic()
                t_first = t_first or t_last
    # throughput over the trains after the first (the first only starts the clock)
    per_train = nbytes / n if n else 0
    elapsed = (t_last - t_first) if n > 1 else 0
    print(json.dumps({"n": n, "bytes": nbytes, "elapsed": elapsed,
                      "gbps": (per_train * (n - 1) / elapsed / 1e9) if elapsed else 0.0,
                      "lat": lat}), flush=True)


def _spawn(kind, endpoint, sock, duration, max_n=None):
    extra = [] if max_n is None else [str(max_n)]
    proc = subprocess.Popen([sys.executable, __file__, "--_client", kind, endpoint, sock,
                             str(duration), *extra], stdout=subprocess.PIPE, text=True)
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
    pace = Pacer(rate)
    try:
        while proc.poll() is None:
            pace.wait()
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
        pace = Pacer(rate)
        try:
            while proc.poll() is None:
                pace.wait()
                try:
                    server.feed(data, _meta(tid), timeout=0.2)
                except queue.Full:
                    continue
                tid += 1
            return _result(proc)
        finally:
            if proc.poll() is None:
                proc.kill()


# ----------------------------------------------------------------------------- the sink path
class SyntheticTrains:
    """Processed chunks of one chip, one complete ~``size_mb`` train each (hits only):
    the trigger, its hits, its train-ID decision (host time = now, so the client's latency
    starts at ``on_chunk``) and ``complete_until`` past the event window."""

    WINDOW = (0.0, 1e-3)

    def __init__(self, size_mb: float):
        from tpx3lib.dtypes import EVENT_DTYPE, TOA_UNIT_S
        from tpx3lib.exdf.layout import HIT_FIELDS
        self.per_hit = sum(EVENT_DTYPE[f].itemsize for f in HIT_FIELDS)   # bytes per hit in a message
        n = int(size_mb * 1e6) // self.per_hit
        rng = np.random.default_rng(1)
        ev = np.zeros(n, EVENT_DTYPE)
        ev["x"], ev["y"] = rng.integers(0, 256, n), rng.integers(0, 256, n)
        ev["tot"] = rng.integers(25, 1000, n)
        ev["tof"] = np.sort(rng.integers(0, int(self.WINDOW[1] / TOA_UNIT_S), n))
        self.events = ev
        self.period = int(round(0.1 / TOA_UNIT_S))
        self.window = int(round(self.WINDOW[1] / TOA_UNIT_S))
        self.info = {"chips": [0], "products": ("events",), "event_window_s": self.WINDOW, "start_time_ns": 0,
                     "config": {0: {"event_window_s": self.WINDOW, "trigger_tdc": 1, "trigger_edge": "rising"}}}

    def chunk(self, k: int):
        from tpx3lib.dtypes import TDC_DTYPE
        from tpx3lib.pipeline import ProcessedChunk
        from tpx3lib.trainid import TRIGGER_TRAIN_DTYPE
        t_trig = (k + 1) * self.period
        ch = ProcessedChunk.empty(0)
        trig = np.zeros(1, TDC_DTYPE)
        trig["tdc"], trig["rising"], trig["counter"], trig["time"] = 1, 1, k + 1, t_trig
        dec = np.zeros(1, TRIGGER_TRAIN_DTYPE)
        dec["counter"], dec["time"], dec["train_id"], dec["host_time"] = k + 1, t_trig, 1_000_000 + k, time.time()
        # a fresh array, labelled, as a ChipProcessor gives (the assembler may keep a view of it)
        ev = np.empty_like(self.events)
        ev.view(np.uint8)[:] = self.events.view(np.uint8)
        ev["event"] = k + 1
        ev["train_id"] = 1_000_000 + k
        ev["toa"] = t_trig + ev["tof"]
        ch.triggers, ch.trains, ch.events = trig, dec, ev
        ch.complete_until = t_trig + 2 * self.window
        return ch


def run_sink(trains: SyntheticTrains, duration, sock="REP", rate=None, n_trains=None):
    """Feed synthetic chunks to a KaraboBridgeSink (blocking hand-off: nothing dropped
    while the client reads). At a ``rate``, each chunk is made between trains; flat out,
    ``n_trains`` chunks are made beforehand, so only the sink path is measured. A
    train's time stamp (where the client's latency starts) is set just before ``on_chunk``."""
    from tpx3lib.pipeline.bridge_sink import KaraboBridgeSink
    csock = {"REP": "REQ", "PUSH": "PULL", "PUB": "SUB"}[sock]
    ready = [trains.chunk(k) for k in range(n_trains)] if n_trains else None
    # the timeout lets the feeding loop notice the client's end
    sink = KaraboBridgeSink("tcp://127.0.0.1:0", sock=sock, source=SINK_SRC, when_full="block", queue_size=2,
                            block_timeout=1.0, stop_timeout=1.0)
    on_chunk = []
    try:
        proc = _spawn("sink", sink.endpoint, csock, duration, n_trains)
        sink.start(trains.info)
        k = 0
        pace = Pacer(rate)
        try:
            while proc.poll() is None and (ready is None or k < len(ready)):
                pace.wait()
                ch = ready[k] if ready else trains.chunk(k)
                ch.trains["host_time"] = time.time()
                t0 = time.perf_counter()
                sink.on_chunk(ch)
                on_chunk.append(time.perf_counter() - t0)
                if ready:
                    ready[k] = None
                k += 1
            res = _result(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
        sink.stop()
    finally:
        sink.close()
    res["on_chunk"] = on_chunk
    res["sink_latency"] = sink.latency.values().tolist()
    return res


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
    ap.add_argument("--flat-trains", type=int, default=40,
                    help="trains made beforehand for the sink's flat-out figure (default 40)")
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
    synth = SyntheticTrains(args.size_mb)
    sink_push = run_sink(synth, 60.0, sock="PUSH", n_trains=args.flat_trains)
    sink_hz = run_sink(synth, args.latency_seconds, sock="REP", rate=args.rate)

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
    rw = _ms(raw_hz["lat"][WARMUP:], 99)
    print(f"BENCH raw_zmq_latency_{args.rate:g}hz_p99_after_{WARMUP} {rw:.2f} ms")
    bw = _ms(rep_hz["lat"][WARMUP:], 99)
    print(f"BENCH bridge_rep_latency_{args.rate:g}hz_p99_after_{WARMUP} {bw:.2f} ms {bw / rw:.2f}")
    fm, fp = _ms(raw["lat"], 50), _ms(raw["lat"], 99)
    print(f"BENCH raw_zmq_latency_flat_median {fm:.2f} ms")
    print(f"BENCH raw_zmq_latency_flat_p99 {fp:.2f} ms")
    print(f"BENCH bridge_rep_latency_flat_median {_ms(rep['lat'], 50):.2f} ms "
          f"{_ms(rep['lat'], 50) / fm:.2f}")
    print(f"BENCH bridge_rep_latency_flat_p99 {_ms(rep['lat'], 99):.2f} ms "
          f"{_ms(rep['lat'], 99) / fp:.2f}")
    sm, sp = _ms(sink_hz["lat"], 50), _ms(sink_hz["lat"], 99)
    print(f"BENCH sink_rep_latency_{args.rate:g}hz_median {sm:.2f} ms {sm / rm:.2f}")
    print(f"BENCH sink_rep_latency_{args.rate:g}hz_p99 {sp:.2f} ms {sp / rp:.2f}")
    print(f"BENCH sink_rep_latency_{args.rate:g}hz_trains {sink_hz['n']} trains")
    print(f"BENCH sink_push_throughput {sink_push['gbps']:.2f} GB/s {sink_push['gbps'] / base:.2f}")
    print(f"BENCH sink_on_chunk_per_train_median {_ms(sink_hz['on_chunk'], 50):.2f} ms")
    print(f"BENCH sink_queue_to_zmq_{args.rate:g}hz_p99 {_ms(sink_hz['sink_latency'], 99):.2f} ms")
    print(f"BENCH sink_queue_to_zmq_{args.rate:g}hz_median {_ms(sink_hz['sink_latency'], 50):.2f} ms")
    # the same latencies without the first WARMUP trains (fresh message memory, first sends)
    warm = sink_hz["lat"][WARMUP:]
    print(f"BENCH sink_rep_latency_{args.rate:g}hz_p99_after_{WARMUP} {_ms(warm, 99):.2f} ms {_ms(warm, 99) / rw:.2f}")
    print(f"BENCH sink_rep_latency_{args.rate:g}hz_max {_ms(sink_hz['lat'], 100):.2f} ms")
    print(f"BENCH sink_train_size {synth.events.size * synth.per_hit / 1e6:.2f} MB {synth.events.size} hits")
    print(f"BENCH serialize_train {ser_us:.1f} us")
    print(f"BENCH deserialize_train {des_us:.1f} us")
    print(f"BENCH train_size {sum(len(memoryview(f)) for f in frames) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_client":
        _client_role(sys.argv[2:])
    else:
        sys.exit(main())
