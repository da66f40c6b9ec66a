"""European XFEL train IDs for Timepix3 triggers.

Sources (all :class:`TrainIdSource`, rules in each module's docstring):

- :class:`CountingTrainIdSource` - count triggers from a start ID (periods rule);
- :class:`SerialTrainIdSource` - the USB train-ID receiver on a serial port;
- :class:`TangoTrainIdSource` - change events of a timing device's train-ID attribute;
- :class:`ObservedTrainIdSource` - the matching both of the last two use, fed by hand.

Glue: :class:`TrainIdAssigner` (TDC edges -> trigger train IDs),
:func:`apply_train_ids` (events/centroids get their trigger's train ID),
:func:`split_by_train` (per-train pieces). Flags in :mod:`.flags`. See docs/train-ids.md.
"""
from .assign import TrainIdAssigner, apply_train_ids, lookup_train_ids, split_by_train, train_table
from .base import XFEL_TRAIN_PERIOD_S, TrainIdSource
from .counting import CountingTrainIdSource
from .errors import TrainIdSourceError
from .flags import (DUPLICATE, EXTRAPOLATED, GAP, JUMP, LATE, OFF_GRID, SUSPECT, TRIGGER_TRAIN_DTYPE,
                    UNKNOWN, describe_flags, run_file_flag)
from .frames import FrameParser, TrainIdFrame, encode_frame, frame_crc
from .matching import ObservedTrainIdSource
from .serial_source import SerialTrainIdReceiver, SerialTrainIdSource

__all__ = [
    "TrainIdSource", "CountingTrainIdSource", "ObservedTrainIdSource", "SerialTrainIdSource",
    "SerialTrainIdReceiver", "TangoTrainIdSource", "TrainIdAssigner", "apply_train_ids",
    "lookup_train_ids", "split_by_train", "train_table", "TRIGGER_TRAIN_DTYPE", "GAP", "DUPLICATE",
    "JUMP", "EXTRAPOLATED", "OFF_GRID", "UNKNOWN", "LATE", "SUSPECT", "describe_flags", "run_file_flag",
    "FrameParser", "TrainIdFrame", "encode_frame", "frame_crc", "TrainIdSourceError",
    "XFEL_TRAIN_PERIOD_S",
]


def __getattr__(name):
    # The Tango source imports pytango (slow); load it only when asked for.
    if name == "TangoTrainIdSource":
        from .tango_source import TangoTrainIdSource
        return TangoTrainIdSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
