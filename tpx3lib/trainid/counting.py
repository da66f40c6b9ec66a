"""Train IDs by counting TDC triggers from a known start ID.

The rule (T0 = the first trigger this source sees after construction or
:meth:`CountingTrainIdSource.reset`):

- the first trigger gets ``start_id``;
- each later trigger gets the reference trigger's ID (the latest one on the
  10 Hz grid, normally the previous trigger) plus the number of train periods
  between them, ``n = round(dt / period)`` from the board times at the nominal
  10 Hz (details in :mod:`tpx3lib.trainid.base`). So a trigger the detector missed
  shows as a GAP (counted in ``missing``), two triggers within one period as a
  DUPLICATE, a trigger far from the grid as OFF_GRID.

The start ID must be the ID of the train whose trigger comes first, e.g. read
from the facility just before the acquisition starts; nothing here can check it.
"""
from __future__ import annotations

from ..errors import ConfigError
from .base import Decision, TrainIdSource

__all__ = ["CountingTrainIdSource"]


class CountingTrainIdSource(TrainIdSource):
    """Counts triggers from ``start_id`` (see the module docstring); never waits.

    Keyword arguments as :class:`~tpx3lib.trainid.base.TrainIdSource`.
    """

    def __init__(self, start_id: int, **kwargs):
        super().__init__(**kwargs)
        self.start_id = self._check_start(start_id)

    @staticmethod
    def _check_start(start_id) -> int:
        if isinstance(start_id, bool) or not isinstance(start_id, int) and not hasattr(start_id, "__index__"):
            raise ConfigError(f"start train ID must be an integer, not {start_id!r}")
        start_id = int(start_id)
        if not 0 < start_id < 1 << 63:
            raise ConfigError(f"start train ID must be in 1..2**63-1, not {start_id}")
        return start_id

    def reset(self, start_id: int | None = None) -> None:
        """Start counting again: the next trigger is a new T0 and gets ``start_id``."""
        if start_id is not None:
            self.start_id = self._check_start(start_id)
        self._last_id = self._last_time = self._ref_id = self._ref_time = None
        self._last_off_grid = False

    def _decide(self, counter: int, time: int, first_seen: float, now: float) -> Decision:
        expected, flags = self._predicted(time)
        train_id = self.start_id if expected is None else expected
        return train_id, flags, self._board_to_host(time), None
