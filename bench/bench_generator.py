"""Simulator data-side benchmark: hit generation and simulated-file writing.

Printed as ``BENCH <name> <value> <unit>  # note``:

* generation rate (pixel hits and words per second of CPU, one thread) for a flat
  hit distribution and for the default ion-imaging model (ToF bursts after 10 Hz triggers);
* writing pymepix raw and .tpx3 files of ``--hits`` hits (MB/s of file, Mhits/s), with
  the peak resident memory of the process (bounded: files are made slice by slice);
* the baseline, in the same run: memcpy of the same number of bytes (numpy copyto, 64 MB blocks);
* the UDP streamer in real time over loopback at a rate beyond what it can generate: hits sent per
  second, board time skipped, and how long ``stop()`` (the board's AUTOTRIG_STOP) takes.

    python bench/bench_generator.py [--hits 5000000] [--quick] [--dir /tmp]

``--hits 50000000`` makes benchmark-sized files (about 400 MB each).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from simulators.files import write_simulated_file            # noqa: E402
from simulators.physics import HitGenerator, PhysicsModel      # noqa: E402

__all__ = ["main"]


def bench(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"BENCH {name} {value:.6g} {unit}" + (f"  # {note}" if note else ""), flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: kB


def generation(name: str, model: PhysicsModel, min_hits: int, slice_s: float, threads: int = 1) -> float:
    gen = HitGenerator(model, threads=threads)
    step = int(slice_s * 40_000_000)
    gen.generate(0, 4000)                       # compile / load the kernels outside the timing
    t, hits, words = 4000, 0, 0
    t0 = time.perf_counter()
    while hits < min_hits:
        sl = gen.generate(t, t + step)
        t += step
        hits += sl.n_hits
        words += sl.n_words
    dt = time.perf_counter() - t0
    gen.close()
    sim_s = (t - 4000) / 40e6
    bench(f"generate_{name}", hits / dt / 1e6, "Mhits/s",
          f"{hits:,} hits in {dt:.2f} s for {sim_s:.2f} s of board time ({sim_s / dt:.2f}x real time), "
          f"{words * 8 / dt / 1e6:.0f} MB/s of words")
    return hits / dt


def streaming(name: str, model: PhysicsModel, seconds: float) -> None:
    """Stream in real time to a loopback port nobody reads (the kernel discards the datagrams)."""
    import logging
    import socket
    from simulators.clock import BoardClock
    from simulators.udp_stream import UdpDataStreamer
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    logging.getLogger("simulators.udp_stream").setLevel(logging.ERROR)   # lag warnings are expected here
    st = UdpDataStreamer(HitGenerator(model), BoardClock(), [sink.getsockname()])
    try:
        st.start()
        time.sleep(seconds)
        t0 = time.perf_counter()
        st.stop()
        stop_s = time.perf_counter() - t0
    finally:
        st.close()
        sink.close()
    c = st.counters[0]
    bench(f"stream_{name}", c.hits / seconds / 1e6, "Mhits/s",
          f"sent over {seconds:.1f} s asking {model.hit_rate_hz / 1e6:.0f} M clusters/s; lag skipped "
          f"{st.skipped_s:.2f} s, worst lag {st.worst_lag_s:.2f} s, {c.datagrams:,} datagrams")
    bench(f"stream_stop_{name}", stop_s, "s",
          f"stop() at that rate (budget {st.stop_budget_s} s); {st.stop_skipped_s:.2f} s of board time "
          "not generated at the stop, counted")


def memcpy_rate(n_bytes: int, block: int = 64 << 20) -> float:
    """Bytes/s copying ``n_bytes`` in blocks of at most 64 MB (best of 3 passes)."""
    block = max(8, min(block, n_bytes) // 8 * 8)
    src = np.ones(block // 8, np.uint64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        done = 0
        while done < n_bytes:
            np.copyto(dst, src)
            done += block
        best = min(best, (time.perf_counter() - t0) * n_bytes / done)
    return n_bytes / best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hits", type=int, default=5_000_000, help="hits per benchmark file (default 5 M)")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--dir", default=None, help="where to write the files (default: a temporary directory)")
    args = p.parse_args(argv)
    n_file = 500_000 if args.quick else args.hits
    n_gen = 500_000 if args.quick else 3_000_000

    HitGenerator(PhysicsModel(hit_rate_hz=1e6)).generate(0, 40_000)   # load the compiled kernels first
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        model = PhysicsModel(hit_rate_hz=1e6)
        for fmt, ext in (("pymepix", "raw"), ("tpx3", "tpx3")):
            path = os.path.join(d, f"bench.{ext}")
            t0 = time.perf_counter()
            s = write_simulated_file(path, n_file, fmt, model=model, seed=1)
            dt = time.perf_counter() - t0
            mb = s["n_bytes"] / 1e6
            bench(f"write_{fmt}", mb / dt, "MB/s",
                  f"{s['n_hits']:,} hits, {mb:,.0f} MB in {dt:.2f} s = {s['n_hits'] / dt / 1e6:.2f} Mhits/s; "
                  f"peak RSS {peak_rss_mb():.0f} MB")
            base = memcpy_rate(s["n_bytes"])
            bench(f"memcpy_same_bytes_{fmt}", base / 1e6, "MB/s",
                  f"baseline; file writing runs at {mb / dt / (base / 1e6):.4f} of it")
            os.remove(path)
        t0 = time.perf_counter()
        tp = os.path.join(d, "truth.npz")
        s = write_simulated_file(os.path.join(d, "t.raw"), n_file // 5, model=model, seed=2, truth_path=tp)
        dt = time.perf_counter() - t0
        bench("write_pymepix_with_truth", s["n_hits"] / dt / 1e6, "Mhits/s",
              f"truth {os.path.getsize(tp) / 1e6:.0f} MB (.npz)")

    flat = dict(hit_rate_hz=2e6, tof_fraction=0.0, trigger_rate_hz=10)
    generation("flat_2Mcl_s", PhysicsModel(**flat), n_gen, 0.01)
    generation("flat_2Mcl_s_2threads", PhysicsModel(**flat), n_gen, 0.01, threads=2)
    generation("ion_imaging_1Mcl_s", PhysicsModel(hit_rate_hz=1e6), n_gen, 0.01)
    generation("low_rate_10kcl_s", PhysicsModel(hit_rate_hz=1e4), n_gen // 10, 0.5)
    streaming("ion_imaging_5Mcl_s", PhysicsModel(hit_rate_hz=5e6), 1.0 if args.quick else 3.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
