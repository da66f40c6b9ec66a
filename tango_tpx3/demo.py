"""The Tango part of the demo: ``python -m tango_tpx3.demo [--workdir DIR]``.

Starts the SPIDR simulator, the embedded Tango database and ``Tpx3Server demo`` as a
facility runs them, then drives the devices through DeviceProxy the way a beamline
control system would: read the board, set bias and a chip threshold, run a timed
acquisition with Prepare/Start and watch State go RUNNING -> ON by itself. Everything it
started is stopped at the end. :func:`run` returns a summary dict (used by the project demo).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

__all__ = ["run", "main"]


def run(workdir: str | Path | None = None, acquisition_time: float = 0.5, frames: int = 3,
        out=print) -> dict:
    import tango

    from tango_tpx3.testing import tango_system, wait_for_state

    with tempfile.TemporaryDirectory(prefix="tpx3-tango-demo-") as tmp:
        workdir = Path(workdir) if workdir is not None else Path(tmp)
        with tango_system(workdir, instance="demo", hit_rate_hz=2000.0) as s:
            out(f"Tango database (PyTango sqlite DataBaseds) at TANGO_HOST={s.db.tango_host}")
            out(f"Tpx3Server demo running (pid {s.server.pid}); simulated SPIDR at 127.0.0.1:{s.sim.port}")
            b, c, p = s.board, s.chip, s.pipeline
            out(f"  {b.dev_name()}: {b.state()}, firmware {b.FirmwareVersion}, chips {list(b.ChipNames)}, "
                f"FPGA {b.FpgaTemperature:.1f} degC")
            b.BiasVoltage = 50.0
            b.BiasEnabled = True
            out(f"  bias set to 50 V, read back {b.BiasVoltage:.2f} V")
            c.Vthreshold_coarse = 6
            c.Vthreshold_fine = 420
            out(f"  {c.dev_name()}: {c.ChipName}, Vthreshold_fine {c.Vthreshold_fine}, "
                f"mode {c.get_attribute_config('OperationMode').enum_labels[c.OperationMode]}, "
                f"links usable {c.LinksUsable}")
            p.acq_expo_time = acquisition_time
            p.acq_nb_frames = frames
            p.TrainIdSource = "Internal"
            p.TrainIdStart = 1_000_000
            seen: list = []
            done = threading.Event()

            class Watcher:
                def push_event(self, ev):
                    if not ev.err:
                        seen.append(str(ev.attr_value.value))
                        if ev.attr_value.value == tango.DevState.ON and "RUNNING" in seen:
                            done.set()

            sub = p.subscribe_event("State", tango.EventType.CHANGE_EVENT, Watcher())
            try:
                p.prepareAcq()
                p.startAcq()
                out(f"  {p.dev_name()}: started {frames} x {acquisition_time} s, acq_status {p.acq_status}")
                wait_for_state(p, tango.DevState.ON, timeout=30 + acquisition_time * frames)
                done.wait(5)
            finally:
                p.unsubscribe_event(sub)
            summary = {
                "state_events": seen,
                "trains_published": p.TrainsPublished,
                "current_train_id": p.CurrentTrainId,
                "hits_total": p.HitsTotal,
                "packets_received": p.PacketsReceived,
                "shutters": b.ShutterCounter,
            }
            out(f"  State events: {' -> '.join(seen)}")
            out(f"  trains {summary['trains_published']} (last ID {summary['current_train_id']}), "
                f"board counted {summary['packets_received']} UDP packets, {summary['hits_total']} pixel packets, "
                f"{summary['shutters']} shutters")
            out(f"  (pipeline backend: {p.Backend})")
        out("Everything stopped.")
        return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tango_tpx3.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="keep the database and logs here")
    parser.add_argument("--time", type=float, default=0.5, help="acquisition time per frame (s)")
    parser.add_argument("--frames", type=int, default=3, help="number of frames")
    args = parser.parse_args(argv)
    run(args.workdir, args.time, args.frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
