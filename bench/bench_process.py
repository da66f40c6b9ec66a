"""Benchmark of offline processing (``tpx3 process``) and of the native raw file writer/reader.

A simulator-written pymepix file (``simulators.files.write_simulated_file``, default
50 M hits, kept in ``.cache/bench_process/`` and reused) is processed end to end
(``process_files``: read, decode, events, write) to the pymepix HDF5 layout with 1 and
2 workers, with lzf (default), gzip and without compression, with a narrow event
window, once with centroiding, and to the exdf layout (European XFEL run directory,
lzf with 1 and 2 workers, gzip with 2; its notes give the ratio to the pymepix figure of
the same compression and workers in the same run). Each run is repeated
(``--repeat``): the value is the best, the note gives the range (the machine is shared).
Printed:

    BENCH <name> <value> <unit> [ratio_to_<baseline> <r>]

Baselines measured in the same run on the same file: reading its words
(``open_raw(...).iter_words``) and decoding them (``StreamDecoder``, one thread), so
the ratios say how much of the machine's read/decode speed processing keeps.
The native raw writer is compared with ``memcpy`` of the same bytes.

    python bench/bench_process.py [--hits 50000000] [--repeat 3] [--keep DIR] [--no-centroid] [--quick]
                                  [--cases w2,w2_exdf_lzf]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import bench                                    # noqa: E402

from tpx3lib.decode import StreamDecoder                    # noqa: E402
from tpx3lib.files import open_raw                          # noqa: E402
from tpx3lib.process import ProcessOptions, process_files   # noqa: E402


_CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".cache", "bench_process")


class PeakRSS:
    """Sample this process's resident memory in a thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.05):
        import psutil
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def bench_raw_writer(tmp: str, mbytes: int = 512) -> None:
    """Native writer: one datagram per chunk and 128 per chunk, vs memcpy of the same bytes."""
    dgram = np.random.default_rng(0).integers(0, 2**63, 1024, dtype=np.uint64)      # 8 KiB datagram
    n = mbytes * 2**20 // dgram.nbytes
    big = np.empty(n * dgram.size, np.uint64)
    t0 = time.perf_counter()
    for i in range(n):
        big[i * dgram.size:(i + 1) * dgram.size] = dgram
    memcpy = n * dgram.nbytes / (time.perf_counter() - t0) / 1e6
    bench("memcpy_8k_blocks", memcpy, "MB/s")
    path = os.path.join(tmp, "writer.raw")
    for label, per_chunk in (("1dgram", 1), ("128dgram", 128)):
        block = np.tile(dgram, per_chunk)
        sizes = [dgram.nbytes] * per_chunk
        t0 = time.perf_counter()
        with open_raw(path, "wb", header={"chips": [{"index": 0}]}) as w:
            for _ in range(n // per_chunk):
                w.write_chunk(0, block, datagram_sizes=sizes)
        dt = time.perf_counter() - t0
        rate = (n // per_chunk) * block.nbytes / dt / 1e6
        bench(f"raw_write_{label}_per_chunk", rate, "MB/s", ("memcpy", rate / memcpy),
              note=f"{n / dt / 1e3:.0f} k datagrams/s")
        t0 = time.perf_counter()
        with open_raw(path, "rb") as r:
            words = sum(c.words.size for c in r)
        dt = time.perf_counter() - t0
        bench(f"raw_read_{label}_per_chunk", words * 8 / dt / 1e6, "MB/s", ("memcpy", words * 8 / dt / 1e6 / memcpy))
    os.remove(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hits", type=int, default=50_000_000, help="hits in the simulated file (default 50 M)")
    p.add_argument("--keep", metavar="DIR", default=_CACHE,
                   help=f"where the simulated file is kept and reused (default {_CACHE})")
    p.add_argument("--repeat", type=int, default=3, help="runs of each case (best and range are printed)")
    p.add_argument("--quick", action="store_true", help="only the w1, w2 and w2_exdf_lzf runs")
    p.add_argument("--cases", metavar="NAMES", help="only these runs (comma-separated names, e.g. "
                   "w2,w2_exdf_lzf; the names are those of the BENCH lines without 'process_')")
    p.add_argument("--no-centroid", action="store_true", help="skip the centroiding run")
    p.add_argument("--no-writer", action="store_true", help="skip the raw writer benchmark")
    args = p.parse_args(argv)

    cache = os.path.abspath(args.keep)
    os.makedirs(cache, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="bench_process_")
    try:
        if not args.no_writer and not args.quick:
            bench_raw_writer(tmp)
        src = os.path.join(cache, f"sim_{args.hits}.raw")
        if not os.path.exists(src):
            from simulators.files import write_simulated_file
            t0 = time.perf_counter()
            info = write_simulated_file(src + ".part", args.hits, fmt="pymepix", seed=1,
                                        stamp_ns=1_700_000_000_000_000_000)
            os.replace(src + ".part", src)
            print(f"# simulated {info['n_hits']:,} hits, {info['n_bytes'] / 2**20:.0f} MiB, "
                  f"{info['duration_s']:.1f} s of data in {time.perf_counter() - t0:.0f} s", flush=True)
        size = os.path.getsize(src)

        # baselines: read the words; decode them in one thread
        t0 = time.perf_counter()
        with open_raw(src) as r:
            n_words = sum(w.size for w in r.iter_words(1 << 22))
        read_rate = n_words / (time.perf_counter() - t0)
        bench("process_baseline_read", read_rate / 1e6, "Mwords/s", note=f"{size / 2**20:.0f} MiB file")
        dec = StreamDecoder()
        t0 = time.perf_counter()
        with open_raw(src) as r:
            n_hits = sum(dec.feed(w).pixels.size for w in r.iter_words(1 << 22)) + dec.flush().pixels.size
        decode_rate = n_hits / (time.perf_counter() - t0)
        bench("process_baseline_decode", decode_rate / 1e6, "Mhits/s")

        warm = os.path.join(tmp, "warm.raw")          # load every kernel before timing anything
        np.fromfile(src, np.uint64, count=200_000).tofile(warm)
        for i, kw in enumerate((dict(centroid=True), dict(compression="gzip", workers=2), dict(layout="exdf"))):
            process_files(warm, os.path.join(tmp, f"warm{i}.out"), ProcessOptions(**kw), overwrite=True)

        every = [("w1", dict(workers=1)), ("w2", dict(workers=2)),
                 ("w1_nocompress", dict(workers=1, compression="none")),
                 ("w2_nocompress", dict(workers=2, compression="none")),
                 ("w2_gzip", dict(workers=2, compression="gzip")),
                 ("w2_window10us", dict(workers=2, event_window_s=(0.0, 10e-6))),    # few events
                 ("w1_exdf_lzf", dict(workers=1, layout="exdf", compression="lzf")),
                 ("w2_exdf_lzf", dict(workers=2, layout="exdf", compression="lzf")),
                 ("w2_exdf_gzip", dict(workers=2, layout="exdf", compression="gzip")),
                 ("w2_centroid", dict(workers=2, centroid=True, cluster={"method": "components"}))]
        if args.cases:
            wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
            unknown = set(wanted) - {n for n, _ in every}
            if unknown:
                p.error(f"unknown case(s) {sorted(unknown)}; choose from {', '.join(n for n, _ in every)}")
            runs = [r for r in every if r[0] in wanted]
        elif args.quick:
            runs = [r for r in every if r[0] in ("w1", "w2", "w2_exdf_lzf")]
        else:
            runs = [r for r in every if r[0] != "w2_centroid" or not args.no_centroid]
        # the exdf layout against the pymepix layout with the same compression and workers
        pymepix_of = {"w1_exdf_lzf": "w1", "w2_exdf_lzf": "w2", "w2_exdf_gzip": "w2_gzip"}
        best: dict[str, float] = {}
        for name, kw in runs:
            out = os.path.join(tmp, "out.exdf" if kw.get("layout") == "exdf" else "out.h5")
            rates, mems = [], []
            for _ in range(max(1, args.repeat)):
                with PeakRSS() as mem:
                    s = process_files(src, out, ProcessOptions(**kw), overwrite=True)
                rates.append(s.hits_per_second)
                mems.append(mem.peak)
            out_size = (sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out)) if os.path.isdir(out)
                        else os.path.getsize(out))
            rate = best[name] = max(rates)
            vs = pymepix_of.get(name)
            vs_note = f"; {rate / best[vs]:.2f}x process_{vs} (pymepix layout)" if vs in best else ""
            bench(f"process_{name}", rate / 1e6, "Mhits/s", ("decode", rate / decode_rate),
                  note=f"range {min(rates) / 1e6:.1f}..{rate / 1e6:.1f} over {len(rates)} runs; "
                       f"{s.pixels:,} hits, {s.events:,} events, {s.centroids:,} centroids, "
                       f"peak RSS {max(mems) / 2**20:.0f} MiB, output {out_size / 2**20:.0f} MiB{vs_note}")
            if s.warnings:
                print("# warnings: " + "; ".join(s.warnings), flush=True)
            shutil.rmtree(out, ignore_errors=True) if os.path.isdir(out) else os.remove(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
