"""The Tango part of the demo: ``python -m tango_tpx3.demo [--seconds S] [--workdir DIR]``.

Starts the SPIDR simulator (10 Hz triggers, time-of-flight peaks), the embedded Tango
database and ``Tpx3Server demo`` as a facility runs them, then drives the devices through
DeviceProxy the way a beamline control system would:

- SpidrBoard: read identity and housekeeping, set the bias (50 V) and switch it on;
- Timepix3Chip: operation mode ToA+ToT, threshold above the noise;
- Tpx3Pipeline: events and centroids, train IDs counted from a start ID on the triggers,
  Prepare (binds the Karabo Bridge endpoint), StartRecording (armed: the raw file holds the
  whole run), Start, rates followed while it runs, State back to ON by itself;
- a ``karabo_bridge.Client`` consumes the Karabo Bridge stream meanwhile (trains, hits,
  centroids, train-ID gaps).

Everything it started is stopped at the end, and it checks that no process is left.
:func:`run` returns the numbers and images (used by :mod:`tpx3lib.demo`, which adds the
post-processing, the summary and the PNG).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["run", "main", "BridgeCounter"]

SOURCE = "TPX3/CAM/1:daqOutput"
TRAIN_ID_START = 1_000_000_000
#: threshold above the simulated noise floor (160 * coarse + fine above ~1310 DAC steps)
THRESHOLD = {"Vthreshold_coarse": 6, "Vthreshold_fine": 420}


class BridgeCounter:
    """A Karabo Bridge client in a thread that counts what it receives (REQ: asks for each train)."""

    def __init__(self, endpoint: str, sock: str = "REQ", source: str = SOURCE):
        from karabo_bridge import Client
        self.client = Client(endpoint, sock=sock, timeout=0.2)
        self.source = source
        self.trains = 0
        self.hits = 0
        self.centroids = 0
        self.train_ids: list[int] = []
        self.last_counters: dict = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge-client", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    data, meta = self.client.next()
                except TimeoutError:
                    continue
                d = data[self.source]
                self.trains += 1
                self.hits += int(d["data.nHits"])
                self.centroids += int(d["data.nCentroids"])
                self.train_ids.append(int(meta[self.source]["timestamp.tid"]))
                self.last_counters = {k.split(".", 1)[1]: v for k, v in d.items() if k.startswith("counters.")}
        except Exception as exc:  # noqa: BLE001 - reported in the summary
            self.error = exc

    def wait_for(self, trains: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.trains < trains and self.error is None and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.client.close()

    @property
    def gaps(self) -> int:
        ids = self.train_ids
        return sum(max(0, b - a - 1) for a, b in zip(ids, ids[1:]))


def run(workdir: str | Path | None = None, seconds: float = 10.0, *, output_dir: str | Path | None = None,
        hit_rate_hz: float = 5000.0, out=print) -> dict:
    """The whole Tango acquisition; returns a summary dict (numbers, hit map, ToF spectrum, rates)."""
    import psutil
    import tango

    from simulators.physics import PhysicsModel
    from tango_tpx3.testing import free_tcp_port, process_tree, tango_system, wait_for_state

    with tempfile.TemporaryDirectory(prefix="tpx3-tango-demo-") as tmp:
        workdir = Path(workdir) if workdir is not None else Path(tmp)
        output_dir = Path(output_dir) if output_dir is not None else workdir
        output_dir.mkdir(parents=True, exist_ok=True)
        endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
        props = {"BridgeEndpoint": endpoint, "BridgeSocketType": "REP", "SourceName": SOURCE}
        model = PhysicsModel(hit_rate_hz=hit_rate_hz)           # with noise: the threshold matters
        started: set[int] = set()
        with tango_system(workdir, instance="demo", model=model, pipeline_properties=props) as s:
            started |= {s.server.pid, s.db.pid} | process_tree(s.server.pid)
            out(f"Tango database (PyTango sqlite DataBaseds) at TANGO_HOST={s.db.tango_host}")
            out(f"Tpx3Server demo running (pid {s.server.pid}); simulated SPIDR at 127.0.0.1:{s.sim.port}, "
                f"triggers at {model.trigger_rate_hz:g} Hz")
            b, c, p = s.board, s.chip, s.pipeline
            out(f"  {b.dev_name()}: {b.state()}, firmware {b.FirmwareVersion}, chips {list(b.ChipNames)}, "
                f"FPGA {b.FpgaTemperature:.1f} degC")
            b.BiasVoltage = 50.0
            b.BiasEnabled = True
            out(f"  bias set to 50 V and enabled, read back {b.BiasVoltage:.2f} V")
            c.OperationMode = "TOA_TOT"
            for name, value in THRESHOLD.items():
                c.write_attribute(name, value)
            out(f"  {c.dev_name()}: {c.ChipName}, mode TOA_TOT, threshold coarse {c.Vthreshold_coarse} "
                f"fine {c.Vthreshold_fine}, links usable {c.LinksUsable}")
            p.AcquisitionTime = seconds
            p.FrameCount = 1
            p.OutputEvents = True
            p.OutputCentroids = True
            p.EventWindowStart = 0.0
            p.EventWindowEnd = 1e-3
            p.TofBins = 1000
            p.TrainIdSource = "INTERNAL"
            p.TrainIdStart = TRAIN_ID_START
            p.ClusterRadius = 1                 # the clustering tpx3 process does by default, to compare
            p.ClusterTimeWindow = 200e-9
            p.Prepare()
            bridge = BridgeCounter(endpoint)
            raw = Path(p.StartRecording(str(output_dir / "demo-run.tpx3raw")))
            states: list[str] = []

            class Watcher:
                def push_event(self, ev):
                    if not ev.err:
                        states.append(str(ev.attr_value.value))

            sub = p.subscribe_event("State", tango.EventType.CHANGE_EVENT, Watcher())
            rates = {"t": [], "hit_rate": [], "centroid_rate": [], "trigger_rate": [], "data_rate": []}
            try:
                p.Start()
                out(f"  {p.dev_name()}: Start -> {p.state()}; {seconds:g} s with centroiding and train IDs, "
                    f"recording to {raw.name}, publishing on {endpoint} (REP)")
                t0 = time.monotonic()
                next_line = t0 + 1.0
                while p.state() == tango.DevState.RUNNING:
                    values = {a.name: a.value for a in p.read_attributes(
                        ["HitRate", "CentroidRate", "TriggerRate", "DataRate", "HitsTotal", "CurrentTrainId"])}
                    now = time.monotonic() - t0
                    for key, attr in (("hit_rate", "HitRate"), ("centroid_rate", "CentroidRate"),
                                      ("trigger_rate", "TriggerRate"), ("data_rate", "DataRate")):
                        rates[key].append(float(values[attr]))
                    rates["t"].append(now)
                    started |= process_tree(s.server.pid)       # the receiver processes too
                    if time.monotonic() >= next_line:
                        out(f"    {now:5.1f} s  hits {values['HitRate'] / 1e3:7.1f} k/s  centroids "
                            f"{values['CentroidRate'] / 1e3:6.1f} k/s  triggers {values['TriggerRate']:5.1f}/s  "
                            f"data {values['DataRate'] / 1e6:5.2f} MB/s  train {values['CurrentTrainId']}")
                        next_line += 1.0
                    time.sleep(0.25)
                wait_for_state(p, (tango.DevState.ON, tango.DevState.FAULT), timeout=60)
                if p.state() != tango.DevState.ON:
                    raise RuntimeError(f"the acquisition failed: {p.status()}")
                bridge.wait_for(int(p.TrainsPublished))
            finally:
                p.unsubscribe_event(sub)
                bridge.close()
            result = {
                "seconds": seconds,
                "state_events": states,
                "hits_total": int(p.HitsTotal),
                "packets_received": int(p.PacketsReceived),
                "packets_lost": int(p.PacketsLost),
                "trains_published": int(p.TrainsPublished),
                "current_train_id": int(p.CurrentTrainId),
                "board_udp_packets": int(b.UdpPacketCounter),
                "hit_map": np.asarray(p.HitMap),
                "tof_histogram": np.asarray(p.TofHistogram),
                "tof_range_s": (float(p.EventWindowStart), float(p.EventWindowEnd)),
                "rates": {k: np.asarray(v) for k, v in rates.items()},
                "recording": str(raw),
                "bridge": {"trains": bridge.trains, "hits": bridge.hits, "centroids": bridge.centroids,
                           "first_id": bridge.train_ids[0] if bridge.train_ids else None,
                           "last_id": bridge.train_ids[-1] if bridge.train_ids else None,
                           "gaps": bridge.gaps, "counters": dict(bridge.last_counters),
                           "error": repr(bridge.error) if bridge.error else ""},
                "server_log": str(s.server.log_path),
                "backend": p.Backend,
            }
            started |= process_tree(s.server.pid)
        leftovers = [pid for pid in started if psutil.pid_exists(pid)
                     and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        result["leftover_processes"] = leftovers
        out("Everything stopped" + (f", but processes {leftovers} are still alive!" if leftovers else
                                    f" ({len(started)} processes started, none left)."))
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tango_tpx3.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="keep the database and logs here")
    parser.add_argument("--seconds", type=float, default=10.0, help="acquisition time (s)")
    args = parser.parse_args(argv)
    r = run(args.workdir, args.seconds)
    print(f"hits {r['hits_total']:,}, trains {r['trains_published']}, Karabo Bridge: {r['bridge']['trains']} trains "
          f"{r['bridge']['hits']:,} hits {r['bridge']['centroids']:,} centroids; lost packets {r['packets_lost']}")
    return 0 if not r["leftover_processes"] else 1


if __name__ == "__main__":
    sys.exit(main())
