"""Benchmark of the whole live pipeline: capture + decode + events + clustering, zero loss.

A sender process replays realistic simulator data (ion-imaging-like: 10 kHz triggers,
ToF peaks, clusters of ~9 pixels; generated once and cached in .cache/) as ~8 kB
datagrams at increasing rates to a :class:`~tpx3lib.pipeline.LivePipeline` with
events and centroids on. A step passes when every datagram sent was received and
processed (no kernel drop, no ring overrun, nothing left unprocessed). Printed:

    BENCH pipeline_zero_loss_Mhits <value> Mhits/s   # highest lossless step
    BENCH pipeline_vs_offline_processor <ratio>      # against ChipProcessor on the same words in memory

The baseline, measured in the same run, is the same ChipProcessor fed the same words
from memory (no sockets, no processes): the ratio says what capture and hand-over cost.

    python bench/bench_pipeline.py [--seconds 2] [--quick] [--refine 2]

The rate grows by 1.5x per step until a step loses data, then ``--refine`` bisection
steps narrow the highest lossless rate down. Each chip's processing runs in two threads
(decode + events, then clustering; ``LivePipeline(split_stages=...)``), so the ratio to
the one-thread offline baseline can exceed 1.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CACHE = ROOT / ".cache" / "bench"
SPAWN = mp.get_context("spawn")
DATAGRAM_WORDS = 1024


def bench(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"BENCH {name} {value:.6g} {unit}" + (f"  # {note}" if note else ""), flush=True)


def stream_words(seconds: float, rate_hz: float) -> np.ndarray:
    """``seconds`` of one chip's simulated stream at ``rate_hz`` clusters/s (cached)."""
    from simulators.physics import HitGenerator, PhysicsModel, TofPeak
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"pipeline_stream_{seconds:g}s_{rate_hz:g}.npy"
    if path.exists():
        return np.load(path)
    model = PhysicsModel(hit_rate_hz=rate_hz, trigger_rate_hz=10_000, noise_f0_hz=0, seed=7,
                         tof_peaks=(TofPeak(5e-6, 0.2e-6, 0.3), TofPeak(12e-6, 0.3e-6, 0.3),
                                    TofPeak(30e-6, 0.5e-6, 0.2), TofPeak(60e-6, 1e-6, 0.2)))
    gen = HitGenerator(model, n_chips=1)
    parts = []
    step = 40_000_000 // 20                      # 50 ms slices of board time (25 ns ticks)
    for t in range(0, int(seconds * 40_000_000), step):
        sl = gen.generate(t, t + step)
        words, _truth = sl
        parts.append(np.asarray(words[0], np.uint64))
    words = np.concatenate(parts)
    np.save(path, words)
    return words


def sender_main(conn, port: int, path: str) -> None:
    from tpx3lib.capture.sender import UdpSender
    words = np.load(path, mmap_mode="r")
    n = words.size // DATAGRAM_WORDS * DATAGRAM_WORDS
    grams = np.ascontiguousarray(words[:n]).reshape(-1, DATAGRAM_WORDS).view(np.uint8)
    tail = np.ascontiguousarray(words[n:]).view(np.uint8)
    datagrams = list(grams) + ([tail] if tail.size else [])
    with UdpSender(port) as tx:
        conn.send(len(datagrams))
        while (rate := conn.recv()) is not None:
            achieved = tx.send_paced(datagrams, rate)
            conn.send(achieved)


def offline_rate(words: np.ndarray, config) -> float:
    from tpx3lib.pipeline import ChipProcessor
    best = 0.0
    for _ in range(2):
        proc = ChipProcessor(config)
        t0 = time.perf_counter()
        for i in range(0, words.size, 1 << 20):
            proc.feed(words[i:i + (1 << 20)])
        proc.flush()
        best = max(best, proc.decoder.counts()["pixels_out"] / (time.perf_counter() - t0))
    return best


def step(words_path: str, n_hits: int, config, rate_dgps: float) -> tuple[bool, float, dict]:
    from tpx3lib.pipeline import LivePipeline
    pipe = LivePipeline(chips=[0], ports=[0], processing=config,
                        capture_options={"ring_bytes": 16 << 20, "policy": "block"})   # small: measure sustained rates, not the ring absorbing a burst
    pipe.start()
    conn, child = SPAWN.Pipe()
    proc = SPAWN.Process(target=sender_main, args=(child, pipe.ports[0], words_path), daemon=True)
    proc.start()
    n_grams = conn.recv()
    t0 = time.perf_counter()
    conn.send(rate_dgps)
    achieved = conn.recv()
    conn.send(None)
    proc.join(10)
    summary = pipe.stop(timeout=60)
    elapsed = time.perf_counter() - t0
    t = summary["totals"]
    ok = (t["datagrams"] == n_grams and t["kernel_drops"] == 0 and t["ring_overruns"] == 0
          and t["unprocessed_datagrams"] == 0 and t["hits"] == n_hits)
    send_s = n_grams / achieved
    info = dict(achieved_dgps=achieved, hits_per_s=n_hits / send_s, received=t["datagrams"], sent=n_grams,
                drops=t["kernel_drops"], overruns=t["ring_overruns"], hits=t["hits"], elapsed=elapsed,
                centroids=t["centroids"])
    return ok, n_hits / send_s, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="board seconds of data per step")
    ap.add_argument("--rate", type=float, default=2e6, help="clusters/s in the generated data")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--refine", type=int, default=2, help="bisection steps after the first lossy rate")
    args = ap.parse_args(argv)
    from tpx3lib.pipeline import ProcessingConfig

    words = stream_words(args.seconds, args.rate)
    path = str(CACHE / f"pipeline_stream_{args.seconds:g}s_{args.rate:g}.npy")
    config = ProcessingConfig(products=("events", "centroids"), event_window_s=(0.0, 100e-6))
    from tpx3lib.decode import decode_words
    n_hits = int(decode_words(words)[1]["pixels_out"])
    print(f"# live pipeline benchmark: {words.size:,} words, {n_hits:,} hits, {os.cpu_count()} cores", flush=True)
    base = offline_rate(words, config)
    bench("pipeline_offline_processor_Mhits", base / 1e6, "Mhits/s", "ChipProcessor on the same words in memory")
    best = 0.0
    rate = 2_000.0                          # datagrams/s (x 8 kB)
    factor = 2.0 if args.quick else 1.5
    failed_at = None

    def run(rate):
        nonlocal best
        ok, hits_per_s, info = step(path, n_hits, config, rate)
        print(f"  asked {rate:9.0f} dgram/s: sent {info['achieved_dgps']:9.0f} dgram/s = "
              f"{hits_per_s / 1e6:6.2f} Mhits/s; received {info['received']}/{info['sent']}, kernel drops "
              f"{info['drops']}, overruns {info['overruns']}, hits {info['hits']:,}/{n_hits:,}, "
              f"centroids {info['centroids']:,} -> {'ok' if ok else 'LOSS'}", flush=True)
        if ok:
            best = max(best, hits_per_s)
        return ok, info

    while True:
        ok, info = run(rate)
        if not ok or info["achieved_dgps"] < 0.8 * rate:
            failed_at = rate if not ok else None
            break
        rate *= factor
    # narrow down between the last lossless step and the first lossy one
    lo = rate / factor
    for _ in range(0 if args.quick or failed_at is None else args.refine):
        mid = (lo + failed_at) / 2
        ok, _ = run(mid)
        lo, failed_at = (mid, failed_at) if ok else (lo, mid)
    bench("pipeline_zero_loss_Mhits", best / 1e6, "Mhits/s", "capture + decode + events + clustering, 1 chip")
    bench("pipeline_zero_loss_MBps", best * 8 / 1e6, "MB/s")
    bench("pipeline_vs_offline_processor", best / base if base else 0.0, "ratio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
