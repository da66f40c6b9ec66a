"""``make demo``: the end-to-end demonstration.

For now: decode the real pymepix fixture and print a summary. It grows into
the full simulator -> Tango -> Karabo Bridge -> HDF5 demo as the parts land.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    from tpx3lib.commands.decode import decode_file
    fixture = ROOT / "tests" / "data" / "centroid_pipeline_test.raw"
    s = decode_file(fixture, longtime=2233861246990)
    print(f"Decoded {fixture.name}: {s['pixels']} pixels, {s['tdc_edges']} TDC edges, "
          f"{s['events']} pixels in the event window, {s['duration_s']:.3f} s of data")
    return 0


if __name__ == "__main__":
    sys.exit(main())
