"""Train IDs from a Tango attribute of a timing device, through change events.

:class:`TangoTrainIdSource` subscribes to CHANGE_EVENT on ``<device>/<attribute>``
(an integer train ID, e.g. ``trainId``) and observes each new value with a host
time: by default the attribute's own timestamp (the time the timing device set
the value, i.e. the train start when it pushes with that time), or, with
``time_source="arrival"``, the time the event reached us. Matching to triggers as
in :mod:`tpx3lib.trainid.matching`. Error events are counted (``event_errors``)
and otherwise ignored; the first event after subscribing carries the current
value, usually of a train before the acquisition (then counted as
``observations_before_start``).
"""
from __future__ import annotations

import tango

from ..errors import ConfigError
from .errors import TrainIdSourceError
from .matching import ObservedTrainIdSource

__all__ = ["TangoTrainIdSource"]


class TangoTrainIdSource(ObservedTrainIdSource):
    """Train IDs from change events of ``device``'s ``attribute``.

    Parameters (besides those of :class:`~tpx3lib.trainid.matching.ObservedTrainIdSource`)
    ----------
    device : Tango device name (or full ``tango://host:port/a/b/c#dbase=no`` name).
    attribute : the integer train-ID attribute.
    time_source : "attribute" (the value's timestamp) or "arrival" (host clock on receipt).
    """

    def __init__(self, device: str, attribute: str = "trainId", *, time_source: str = "attribute",
                 **kwargs):
        super().__init__(**kwargs)
        if time_source not in ("attribute", "arrival"):
            raise ConfigError(f"time_source must be 'attribute' or 'arrival', not {time_source!r}")
        self.device = device
        self.attribute = attribute
        self.time_source = time_source
        self.counters.update(events=0, event_errors=0)
        self._proxy: tango.DeviceProxy | None = None
        self._event_id: int | None = None

    def start(self) -> "TangoTrainIdSource":
        if self._event_id is not None:
            return self
        try:
            self._proxy = tango.DeviceProxy(self.device)
            self._event_id = self._proxy.subscribe_event(
                self.attribute, tango.EventType.CHANGE_EVENT, self._on_event)
        except tango.DevFailed as exc:
            self._proxy = None
            desc = exc.args[0].desc if exc.args else str(exc)
            raise TrainIdSourceError(
                f"cannot subscribe to change events of {self.device}/{self.attribute}: {desc}") from exc
        return self

    def stop(self) -> None:
        if self._proxy is not None and self._event_id is not None:
            try:
                self._proxy.unsubscribe_event(self._event_id)
            except tango.DevFailed:
                pass  # the device is gone; nothing left to unsubscribe from
        self._event_id = None
        self._proxy = None

    def _on_event(self, event) -> None:
        if event.err or event.attr_value is None or event.attr_value.value is None:
            self.counters["event_errors"] += 1
            return
        self.counters["events"] += 1
        value = event.attr_value
        if self.time_source == "attribute":
            host_time = value.time.totime()
        else:
            host_time = self._clock()
        self.observe(int(value.value), host_time)
