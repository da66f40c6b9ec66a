"""``make demo``: the end-to-end demonstration, simulator -> Tango -> Karabo Bridge -> HDF5.

1. warm-up: decode and centroid the real pymepix fixture (this also fills numba's on-disk
   kernel cache, ``NUMBA_CACHE_DIR``, which the device server then loads instead of compiling);
2. the Tango part (:mod:`tango_tpx3.demo`): the embedded Tango database, the SPIDR simulator
   (10 Hz triggers) and ``Tpx3Server`` are started; through DeviceProxy the chip is configured,
   the bias set, a 10 s acquisition with centroiding and train IDs runs while a Karabo Bridge
   client consumes the stream and the raw data are recorded;
3. the recording is post-processed to HDF5 with ``tpx3 process``;
4. a summary (rates, hits, centroids, trains, losses) is printed and a PNG with the hit map,
   the ToF spectrum and the rates is written to ``demo_output/tpx3-demo.png``.

Everything it started is stopped (and checked). ``python -m tpx3lib.demo --seconds 3`` for a
shorter run; ``--output DIR`` for another output directory.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["main", "warm_up", "post_process", "plot", "summary_lines"]


def warm_up(out=print) -> None:
    """Load (or compile once, into numba's on-disk cache) every kernel the demo's processes use:
    decode the real fixture, run the device server's processing chain (events, train IDs,
    centroids as configured by the demo) on 0.3 s of simulated data, and the simulator's own."""
    from simulators.physics import DAC_DEFAULTS, ChipState, HitGenerator, PhysicsModel
    from simulators.physics import warm_up as warm_simulator
    from tpx3lib.commands.decode import decode_file
    from tpx3lib.pipeline import ChipProcessor, ProcessingConfig
    from tpx3lib.trainid import CountingTrainIdSource, TrainIdAssigner

    fixture = ROOT / "tests" / "data" / "centroid_pipeline_test.raw"
    t = time.monotonic()
    s = decode_file(fixture, longtime=2233861246990)
    warm_simulator()
    gen = HitGenerator(PhysicsModel(hit_rate_hz=5000.0), [ChipState(dacs=dict(DAC_DEFAULTS), bias_voltage=50.0,
                                                                    bias_enabled=True)])
    config = ProcessingConfig(products=("pixels", "events", "centroids", "triggers"), event_window_s=(0.0, 1e-3),
                              cluster={"radius": 1, "time_window_ns": 200.0, "min_size": 1, "tot_threshold_ns": 0})
    proc = ChipProcessor(config, train_ids=TrainIdAssigner(CountingTrainIdSource(1)))
    centroids = 0
    for i in range(3):                       # a stream in chunks, as the live pipeline feeds it
        words, _ = gen.generate(i * 4_000_000, (i + 1) * 4_000_000)
        centroids += proc.feed(words[0]).centroids.size
    centroids += proc.flush().centroids.size
    out(f"Warm-up: decoded {fixture.name}: {s['pixels']:,} pixels, {s['tdc_edges']} TDC edges, "
        f"{s['events']:,} pixels in the event window; processed 0.3 s of simulated data into "
        f"{centroids:,} centroids ({time.monotonic() - t:.1f} s)")


def post_process(raw: Path, out_path: Path, window: tuple[float, float], out=print) -> dict:
    """``tpx3 process`` the recording to HDF5 (pymepix layout, connected-components centroids)."""
    import h5py

    from tpx3lib import cli

    t = time.monotonic()
    args = ["process", str(raw), "-o", str(out_path), "--centroid", "--cluster-method", "components",
            "--event-window", str(window[0]), str(window[1]), "--overwrite", "--no-progress"]
    out(f"Post-processing: tpx3 {' '.join(args[1:])}")
    code = cli.main(args)
    if code != 0:
        raise RuntimeError(f"tpx3 process failed (exit {code})")
    with h5py.File(out_path, "r") as f:
        events = int(f["raw/x"].shape[0])
        centroids = int(f["centroided/x"].shape[0]) if "centroided" in f else 0
        triggers = int(f["timing/timepix/trigger nr"].shape[0]) if "timing/timepix/trigger nr" in f else 0
    return {"events": events, "centroids": centroids, "triggers": triggers, "path": str(out_path),
            "seconds": time.monotonic() - t}


def summary_lines(r: dict, h5: dict) -> list[str]:
    secs = max(r["seconds"], 1e-9)
    br = r["bridge"]
    counters = br["counters"]
    rates = r["rates"]

    def mean(key):
        v = rates[key]
        return float(v[v > 0].mean()) if (v > 0).any() else 0.0

    lost_bridge = int(counters.get("trains_dropped", 0)) + int(counters.get("trains_discarded_at_stop", 0))
    lines = [
        "",
        "Summary",
        f"  acquisition   {r['seconds']:g} s, pipeline backend {r['backend']}, State events "
        f"{' -> '.join(r['state_events'])}",
        f"  rates         hits {mean('hit_rate') / 1e3:.1f} k/s, centroids {mean('centroid_rate') / 1e3:.2f} k/s, "
        f"triggers {mean('trigger_rate'):.1f}/s, data {mean('data_rate') / 1e6:.2f} MB/s (mean while running)",
        f"  hits          {r['hits_total']:,} decoded live ({r['hits_total'] / secs / 1e3:.1f} k/s); "
        f"{br['hits']:,} in trigger windows sent over the Karabo Bridge",
        f"  centroids     {br['centroids']:,} over the Karabo Bridge; {h5['centroids']:,} from the recording "
        f"post-processed",
        f"  trains        {r['trains_published']} published (IDs {br['first_id']} .. {r['current_train_id']}), "
        f"{br['trains']} received by the client, {br['gaps']} train-ID gaps",
        f"  losses        {r['packets_lost']} of {r['packets_received']:,} UDP packets, {lost_bridge} trains dropped "
        f"by the publisher, {int(counters.get('hits_late', 0))} late hits",
        f"  recording     {r['recording']} -> {h5['path']}: {h5['events']:,} event hits, "
        f"{h5['centroids']:,} centroids, {h5['triggers']} triggers "
        f"({'same as live' if h5['events'] == br['hits'] + int(counters.get('hits_late', 0)) else 'DIFFERS from live'})",
    ]
    if br["error"]:
        lines.append(f"  Karabo Bridge client error: {br['error']}")
    return lines


def plot(r: dict, path: Path) -> Path:
    """Hit map, ToF spectrum and rates in one PNG (matplotlib, Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    hm = r["hit_map"].astype(float)
    im = axes[0].imshow(np.where(hm > 0, hm, np.nan), origin="lower", cmap="viridis",
                        norm=LogNorm(vmin=1, vmax=max(2.0, hm.max())))
    axes[0].set_title(f"hit map ({int(hm.sum()):,} hits)")
    axes[0].set_xlabel("x (pixel)")
    axes[0].set_ylabel("y (pixel)")
    fig.colorbar(im, ax=axes[0], label="hits")
    tof = r["tof_histogram"]
    lo, hi = r["tof_range_s"]
    edges = np.linspace(lo, hi, tof.size + 1) * 1e6
    axes[1].step(edges[:-1], tof, where="post")
    axes[1].set_title("time-of-flight spectrum")
    axes[1].set_xlabel("time of flight (us)")
    axes[1].set_ylabel("events per bin")
    rates = r["rates"]
    ax = axes[2]
    ax.plot(rates["t"], rates["hit_rate"] / 1e3, label="hits (k/s)")
    ax.plot(rates["t"], rates["centroid_rate"] / 1e3, label="centroids (k/s)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("k/s")
    ax2 = ax.twinx()
    ax2.plot(rates["t"], rates["trigger_rate"], color="tab:red", label="triggers (/s)")
    ax2.set_ylabel("triggers / s", color="tab:red")
    ax.set_title("rates (Tango attributes)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tpx3lib.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="acquisition time (default 10 s)")
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="where the recording, the "
                        "HDF5 file and the PNG go (default ./demo_output)")
    args = parser.parse_args(argv)
    from tango_tpx3.demo import run   # the demo spans the parts; tpx3lib itself knows nothing of Tango

    t0 = time.monotonic()
    warm_up()
    out_dir = args.output.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in (out_dir / "demo-run.tpx3raw", out_dir / "demo-run.h5"):
        old.unlink(missing_ok=True)
    r = run(seconds=args.seconds, output_dir=out_dir)
    h5 = post_process(Path(r["recording"]), out_dir / "demo-run.h5", r["tof_range_s"])
    for line in summary_lines(r, h5):
        print(line)
    png = plot(r, out_dir / "tpx3-demo.png")
    print(f"  picture       {png}")
    print(f"Demo done in {time.monotonic() - t0:.0f} s.")
    ok = not r["leftover_processes"] and not r["bridge"]["error"] and r["packets_lost"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
