"""The ``BENCH`` line the benchmarks print (one format, parsed by people and scripts alike)."""
from __future__ import annotations


def bench(name: str, value: float, unit: str, ratio: tuple[str, float] | None = None, note: str = "") -> None:
    """Print ``BENCH <name> <value> <unit> [ratio_to_<baseline> <r>]  # note``."""
    line = f"BENCH {name} {value:.4g} {unit}"
    if ratio is not None:
        line += f" ratio_to_{ratio[0]} {ratio[1]:.3g}"
    if note:
        line += f"  # {note}"
    print(line, flush=True)
