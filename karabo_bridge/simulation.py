"""Simulated detector data and a simulated Karabo Bridge server.

Emits trains shaped like the reference simulator's: one source per detector
(``SPB_DET_AGIPD1M-1/CAL/APPEND_CORRECTED`` etc.) with ``image.data`` (float32
corrected or uint16 raw), ``image.cellId``, ``image.pulseId``,
``image.trainId``, ``image.gain``, ``image.passport`` (corrected),
``sources``/``modulesPresent`` (multi-module) and metadata with
``timestamp``, ``timestamp.sec``, ``timestamp.frac``, ``timestamp.tid``;
train IDs count up from 10000000000.

It is faster than the reference: random images are drawn once into a small
pool and reused (read-only) instead of drawn anew for every train.
"""
from __future__ import annotations

import copy
import queue
import threading
import time
from itertools import count

import numpy as np

from .metadata import make_metadata

__all__ = ["DETECTORS", "Detector", "data_generator", "SimServer", "SimServerInThread",
           "start_gen", "FIRST_TRAIN_ID"]

FIRST_TRAIN_ID = 10_000_000_000

#: Geometry per detector kind: pulses per train, modules, module pixels (y, x).
DETECTORS = {
    "AGIPD": {"pulses": 64, "modules": 16, "mod_y": 128, "mod_x": 512},
    "AGIPDModule": {"pulses": 64, "modules": 1, "mod_y": 128, "mod_x": 512},
    "LPD": {"pulses": 300, "modules": 16, "mod_y": 256, "mod_x": 256},
}
_SOURCES = {
    ("AGIPD", False): "SPB_DET_AGIPD1M-1/CAL/APPEND_CORRECTED",
    ("AGIPD", True): "SPB_DET_AGIPD1M-1/CAL/APPEND_RAW",
    ("AGIPDModule", True): "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf",
    ("LPD", False): "FXE_DET_LPD1M-1/CAL/APPEND_CORRECTED",
    ("LPD", True): "FXE_DET_LPD1M-1/CAL/APPEND_RAW",
}


class Detector:
    """Generates one train of simulated data for a detector kind.

    ``data_like="online"``: ``image.data`` is ``(modules, y, x, pulses)``
    (the module axis only for multi-module detectors); ``"file"``:
    ``(pulses, modules, x, y)``.  ``gen`` is ``"random"`` (uniform 1500-1600)
    or ``"zeros"``; ``pool`` random images are drawn once and cycled.
    """

    def __init__(self, detector="AGIPD", raw=False, gen="random", data_like="online",
                 source="", pool=2, seed=None):
        if detector not in DETECTORS:
            raise NotImplementedError(f"detector {detector!r} not available; "
                                      f"choose from {', '.join(DETECTORS)}")
        if (detector, bool(raw)) not in _SOURCES:
            raise NotImplementedError(f"{detector}: only raw data can be simulated")
        if gen not in ("random", "zeros"):
            raise NotImplementedError(f"gen func {gen!r} not implemented")
        if data_like not in ("online", "file"):
            raise ValueError(f"data_like must be 'online' or 'file', got {data_like!r}")
        self.kind = detector
        self.raw = bool(raw)
        self.gen = gen
        self.data_like = data_like
        self.source = source or _SOURCES[(detector, self.raw)]
        geo = DETECTORS[detector]
        self.pulses, self.modules = geo["pulses"], geo["modules"]
        self.mod_y, self.mod_x = geo["mod_y"], geo["mod_x"]
        self._rng = np.random.default_rng(seed)
        n = 1 if gen == "zeros" else max(1, int(pool))
        self._pool = [self._image() for _ in range(n)]
        self._pulse_ids = np.arange(self.pulses, dtype=np.uint64)
        self._cell_ids = np.arange(self.pulses, dtype=np.uint16)
        self._gain = np.zeros((self.mod_y, self.mod_x, self.pulses), dtype=np.uint16)

    @property
    def dtype(self):
        return np.dtype(np.uint16 if self.raw else np.float32)

    @property
    def shape(self) -> tuple:
        mods = () if self.modules == 1 else (self.modules,)
        if self.data_like == "online":
            return mods + (self.mod_y, self.mod_x, self.pulses)
        return (self.pulses,) + mods + (self.mod_x, self.mod_y)

    def _image(self) -> np.ndarray:
        if self.gen == "zeros":
            return np.zeros(self.shape, dtype=self.dtype)
        if self.raw:
            img = self._rng.integers(1500, 1600, size=self.shape, dtype=np.uint16)
        else:
            img = self._rng.random(size=self.shape, dtype=np.float32)
            img *= 100
            img += 1500
        img.flags.writeable = False
        return img

    def gen_data(self, train_id: int, timestamp: float | None = None):
        """``(data, metadata)`` of one train, both keyed by the source name."""
        data = {
            "image.data": self._pool[train_id % len(self._pool)],
            "image.cellId": self._cell_ids,
            "image.pulseId": self._pulse_ids,
            "image.trainId": np.full(self.pulses, train_id, dtype=np.uint64),
            "image.gain": self._gain,
        }
        if not self.raw:
            domain = self.source.partition("/")[0]
            data["image.passport"] = [f"{domain}/CAL/THRESHOLDING_Q1M1",
                                      f"{domain}/CAL/OFFSET_CORR_Q1M1",
                                      f"{domain}/CAL/RELGAIN_CORR_Q1M1"]
        if self.modules > 1:
            base = self.source.rpartition("/")[0]
            data["sources"] = [f"{base}/{i}CH0:xtdf" for i in range(self.modules)]
            data["modulesPresent"] = [True] * self.modules
        meta = make_metadata(self.source, train_id, timestamp)
        return {self.source: data}, {self.source: meta}


def data_generator(detector="AGIPD", raw=False, nsources=1, datagen="random",
                   data_like="online", *, debug=False, first_train_id=FIRST_TRAIN_ID):
    """Endless generator of ``(data, metadata)`` trains (see :class:`Detector`).

    With ``nsources > 1`` the source is repeated as ``<source>-1`` ... ``-n``.
    """
    det = Detector(detector, raw=raw, gen=datagen, data_like=data_like)
    for tid in count(first_train_id):
        data, meta = det.gen_data(tid)
        if nsources > 1:
            src = det.source
            for i in range(1, nsources + 1):
                name = f"{src}-{i}"
                data[name] = dict(data[src])
                meta[name] = copy.deepcopy(meta[src])
                meta[name]["source"] = name
            del data[src], meta[src]
        yield data, meta


from .server import Sender, ServerInThread  # noqa: E402  (server imports us at its end)


class SimServer(Sender):
    """A :class:`Sender` that sends simulated trains from :meth:`loop`.

    Extensions: ``ntrains`` (stop after so many), ``rate`` (trains per second,
    paced with sleeps; default: as fast as consumers take them).
    """

    def __init__(self, endpoint, sock="REP", ser="msgpack", protocol_version="2.2",
                 detector="AGIPD", raw=False, nsources=1, datagen="random",
                 data_like="online", *, debug=True, ntrains=None, rate=None, **kwargs):
        if ser != "msgpack":
            raise ValueError(f"Unknown serialisation format {ser!r}")
        super().__init__(endpoint, sock=sock, protocol_version=protocol_version, **kwargs)
        self.data = data_generator(detector=detector, raw=raw, nsources=nsources,
                                   datagen=datagen, data_like=data_like)
        self.debug = debug
        self.ntrains = ntrains
        self.rate = rate
        self._stop_event = threading.Event()

    def loop(self):
        """Send trains until ``ntrains`` are sent or the server is stopped."""
        print(f"Simulated Karabo-bridge server started on:\n{self.endpoint}", flush=True)
        interval = 50
        t_prev = time.monotonic()
        next_at = t_prev
        n = 0
        for data, meta in self.data:
            if self._stop_event.is_set() or (self.ntrains is not None and n >= self.ntrains):
                break
            if self.rate:
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop_event.wait(delay):
                    break
                next_at = max(next_at + 1.0 / self.rate, time.monotonic() - 1.0)
            self.send(data, meta)
            n += 1
            if self.debug:
                print("Server : emitted train:", next(iter(meta.values()))["timestamp.tid"],
                      flush=True)
            if n % interval == 0:
                t_now = time.monotonic()
                print(f"Sent {interval} trains in {t_now - t_prev:.2f} seconds "
                      f"({interval / (t_now - t_prev):.2f} Hz)", flush=True)
                t_prev = t_now
        return n


class SimServerInThread(ServerInThread):
    """A :class:`ServerInThread` fed with simulated trains by a second thread.

    ``maxlen`` defaults to 1 so that the trains a consumer gets are fresh.
    """

    def __init__(self, endpoint, sock="REP", ser="msgpack", protocol_version="2.2",
                 detector="AGIPD", raw=False, nsources=1, datagen="random",
                 data_like="online", *, debug=False, maxlen=1, ntrains=None, **kwargs):
        if ser != "msgpack":
            raise ValueError(f"Unknown serialisation format {ser!r}")
        super().__init__(endpoint, sock=sock, maxlen=maxlen,
                         protocol_version=protocol_version, **kwargs)
        self.data = data_generator(detector=detector, raw=raw, nsources=nsources,
                                   datagen=datagen, data_like=data_like)
        self.ntrains = ntrains
        self._producer = threading.Thread(target=self._produce, daemon=True,
                                          name="karabo-bridge-sim-producer")

    def _produce(self):
        for n, (data, meta) in enumerate(self.data):
            if self._stopping or (self.ntrains is not None and n >= self.ntrains):
                return
            while not self._stopping:
                try:
                    self.feed(data, meta, timeout=0.5)
                    break
                except queue.Full:
                    continue
                except RuntimeError:
                    return  # server stopped

    def start(self):
        super().start()
        self._producer.start()

    def stop(self):
        self._stopping = True
        with self._cv:
            self._cv.notify_all()
        if self._producer.is_alive():
            self._producer.join()
        super().stop()


def start_gen(port, sock="REP", ser="msgpack", version="2.2", detector="AGIPD", raw=False,
              nsources=1, datagen="random", data_like="online", *, debug=True,
              host="*", ntrains=None, rate=None):
    """Run a simulated Karabo Bridge server until interrupted (reference API).

    ``port`` is a TCP port bound on ``host`` (default ``*`` as the reference;
    extension: pass ``host="127.0.0.1"``) or a full ZeroMQ endpoint.
    ``ntrains``/``rate``: stop after N trains / pace to ``rate`` Hz (extensions).
    """
    port = str(port)
    endpoint = port if "://" in port else f"tcp://{host}:{port}"
    sender = SimServer(endpoint, sock=sock, ser=ser, protocol_version=version,
                       detector=detector, raw=raw, nsources=nsources, datagen=datagen,
                       data_like=data_like, debug=debug, ntrains=ntrains, rate=rate)
    n = 0
    try:
        n = sender.loop()
    except KeyboardInterrupt:
        pass
    finally:
        # let ZeroMQ deliver what was handed over before closing
        sender.server_socket.close(linger=2000 if ntrains else 0)
        sender.close()
    print(f"\nStopped after {n} trains.", flush=True)
    return sender.stats
