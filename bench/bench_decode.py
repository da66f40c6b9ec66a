"""Decoder throughput: numba kernel vs the numpy reference vs memcpy of the same bytes.

Prints `BENCH decode_numba <Mhits/s> Mhits/s ratio_to_memcpy <r> ratio_to_numpy <r>` etc.
The stream is realistic in mix: ~95% pixel words, TDC edges and heartbeats.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from tpx3lib.decode.reference import reference_decode
from tpx3lib.decode.stream import StreamDecoder


def make_stream(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(1 << 32, (1 << 32) + 40_000_000 * 5, size=n))   # 5 s of hits
    col = rng.integers(0, 256, n, dtype=np.int64)
    row = rng.integers(0, 256, n, dtype=np.int64)
    w = (((col // 2) << 53) | ((row // 4) << 47) | (((col % 2) * 4 + row % 4) << 44)
         | ((t & 0x3FFF) << 30) | (rng.integers(0, 1024, n) << 20) | (rng.integers(0, 16, n) << 16)
         | ((t >> 14) & 0xFFFF)).astype(np.uint64) | np.uint64(0xB << 60)
    k = np.arange(0, n, 20)                       # 5% TDC edges
    w[k] = np.uint64(0x6F << 56) | ((((k // 20) & 0xFFF) << 44) | ((t[k] & 0xFFFFFFFF) << 12) | (3 << 5)).astype(np.uint64)
    for i in range(0, n - 1, 1 << 20):            # heartbeats
        w[i] = np.uint64((0x44 << 56) | ((int(t[i]) & 0xFFFFFFFF) << 16))
        w[i + 1] = np.uint64((0x45 << 56) | ((int(t[i]) >> 32) << 16))
    return w


def best_rate(fn, n_items, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_items / best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--words", type=int, default=20_000_000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    w = make_stream(args.words)
    wi = w.view(np.int64)
    n_pix = int(np.count_nonzero((w >> np.uint64(60)) == 0xB))

    # the decoder object fed chunks of 1 Mi words (as the pipeline does), scratch reused
    dec = StreamDecoder(longtime=1 << 32)
    chunk = 1 << 20

    def chunked():
        for i in range(0, w.size, chunk):
            dec.feed(w[i:i + chunk])

    chunked()  # compile / load from the cache
    chunk_rate = best_rate(chunked, n_pix, args.repeat)

    dec_rate = best_rate(lambda: StreamDecoder(longtime=1 << 32).feed(w), n_pix, max(2, args.repeat // 2))

    sub = w[: min(w.size, 5_000_000)]
    n_sub = int(np.count_nonzero((sub >> np.uint64(60)) == 0xB))
    numpy_rate = best_rate(lambda: reference_decode(sub, longtime=1 << 32), n_sub, 2)

    dst = np.empty_like(w)
    memcpy_rate = best_rate(lambda: np.copyto(dst, w), w.size, args.repeat)  # words/s

    print(f"BENCH decode_numba_chunked {chunk_rate / 1e6:.1f} Mhits/s "
          f"ratio_to_memcpy {chunk_rate / memcpy_rate:.3f} ratio_to_numpy {chunk_rate / numpy_rate:.1f}")
    print(f"BENCH decode_numba_one_call {dec_rate / 1e6:.1f} Mhits/s ratio_to_memcpy {dec_rate / memcpy_rate:.3f}")
    print(f"BENCH decode_numpy_reference {numpy_rate / 1e6:.1f} Mhits/s ratio_to_memcpy {numpy_rate / memcpy_rate:.3f}")
    print(f"BENCH memcpy_same_bytes {memcpy_rate / 1e6:.1f} Mwords/s {memcpy_rate * 8 / 1e9:.2f} GB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
