"""Train IDs from change events of a real Tango timing device (run in its own process)."""
import time

import numpy as np
import pytest
from tango.test_context import DeviceTestContext

from simulators.timing import TimingDevice
from tpx3lib.dtypes import TDC1_RISING, TDC_DTYPE, TOA_UNIT_S
from tpx3lib.trainid import EXTRAPOLATED, TrainIdAssigner, TrainIdSourceError
from tpx3lib.trainid.tango_source import TangoTrainIdSource

START_ID = 5000
N_TRAINS = 8
SKIPPED = 5003          # the device pushes no event for this train


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_trainid_change_events_give_triggers_their_trains():
    epoch = time.time() + 2.0          # host time of train START_ID: after the server is up
    props = dict(StartTrainId=START_ID, Epoch=epoch, Period=0.1, SkipTrains=[SKIPPED])
    context = DeviceTestContext(TimingDevice, properties=props, process=True, host="127.0.0.1")
    with context as proxy:
        origin = epoch - 3.0           # host time of the board timer reset
        source = TangoTrainIdSource(context.get_device_access(), board_time_origin=origin)
        with source:
            # Train i starts at epoch + i * 0.1 s; the board sees its trigger at that time.
            times = np.round((epoch + 0.1 * np.arange(N_TRAINS) - origin) / TOA_UNIT_S).astype(np.int64)
            tdcs = np.zeros(N_TRAINS, TDC_DTYPE)
            tdcs["kind"], tdcs["tdc"], tdcs["rising"] = TDC1_RISING, 1, 1
            tdcs["counter"] = 1 + 2 * np.arange(N_TRAINS)
            tdcs["time"] = times
            assert wait_until(lambda: proxy.trainId >= START_ID + N_TRAINS)
            assert wait_until(lambda: source.counters["observations"] >= N_TRAINS - 1)
        assigner = TrainIdAssigner(source)
        out = np.concatenate([assigner.feed(tdcs), assigner.flush()])
    assert out["train_id"].tolist() == list(range(START_ID, START_ID + N_TRAINS))
    flags = dict(zip(out["train_id"].tolist(), out["flags"].tolist()))
    assert flags.pop(SKIPPED) == EXTRAPOLATED
    assert set(flags.values()) == {0}
    assert source.counters["extrapolated"] == 1 and source.counters["event_errors"] == 0
    assert source.counters["events"] >= N_TRAINS - 1


def test_unknown_device_is_a_typed_error():
    src = TangoTrainIdSource("tango://127.0.0.1:1/no/such/device#dbase=no")
    with pytest.raises(TrainIdSourceError):
        src.start()
