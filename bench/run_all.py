"""Run every bench/bench_*.py in turn (each prints `BENCH <name> <value> <unit> ...` lines).

Usage: python bench/run_all.py [--only NAME ...] [--quick]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", nargs="*", help="substring(s) of benchmark file names to run")
    args = p.parse_args(argv)
    failed = []
    for path in sorted(HERE.glob("bench_*.py")):
        if args.only and not any(s in path.stem for s in args.only):
            continue
        print(f"== {path.stem}", flush=True)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        t0 = time.perf_counter()
        try:
            spec.loader.exec_module(mod)
            mod.main([])
        except Exception:  # report and go on: one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(path.stem)
        print(f"== {path.stem} done in {time.perf_counter() - t0:.1f} s", flush=True)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
