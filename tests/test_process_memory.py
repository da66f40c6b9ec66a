"""Memory stays bounded: processing a file several times larger than the budget uses no more than
processing a small one (numpy allocations measured with tracemalloc)."""
from __future__ import annotations

import tracemalloc

import pytest

from test_process_synth import make_stream
from tpx3lib.process import ProcessOptions, process_files

BUDGET = 24 * 2**20           # bytes of numpy/Python allocations allowed at the peak
PIECE = 20_000                # triggers per generated piece (~3.4 MB of words)


def _write(path, pieces: int) -> int:
    with open(path, "wb") as f:
        for i in range(pieces):
            words, _ = make_stream(PIECE, seed=7, first_trigger=i * PIECE, run_triggers=pieces * PIECE)
            f.write(words.tobytes())
    return path.stat().st_size


def _peak(src, out) -> tuple[int, object]:
    opts = ProcessOptions(segment_words=1 << 14, margin_words=1 << 12, event_window_s=(0.0, 20e-6))
    tracemalloc.start()
    try:
        summary = process_files(src, out, opts, overwrite=True)
        return tracemalloc.get_traced_memory()[1], summary
    finally:
        tracemalloc.stop()


def test_constant_memory_on_a_file_larger_than_the_budget(tmp_path):
    small, big = tmp_path / "small.raw", tmp_path / "big.raw"
    _write(small, 6)
    big_size = _write(big, 24)
    assert big_size > 3 * BUDGET
    _peak(small, tmp_path / "warm.h5")                     # compile/load kernels outside the measurement
    peak_small, s_small = _peak(small, tmp_path / "small.h5")
    peak_big, s_big = _peak(big, tmp_path / "big.h5")
    assert s_big.pixels > 3.5 * s_small.pixels and s_big.warnings == []
    assert s_big.counters["segments"] > 200
    assert peak_big < BUDGET, f"peak {peak_big / 2**20:.1f} MiB"
    assert peak_big < 1.15 * peak_small + 2**20, (peak_small, peak_big)
    print(f"file {big_size / 2**20:.0f} MiB, peak {peak_big / 2**20:.1f} MiB (small file: {peak_small / 2**20:.1f} MiB)")


if __name__ == "__main__":   # pragma: no cover
    pytest.main([__file__, "-s"])
