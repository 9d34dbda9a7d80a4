"""How long a new server takes to become ready, learned from what was seen."""

from __future__ import annotations

import math
from collections import deque

from .._errors import InvalidArgument
from .._validation import shown


class LeadTimes:
    """Learns how long a new server takes to become ready (registration -> full weight or
    first serving), from the newest ``capacity`` observations: bounded memory.

    The estimate is a high quantile of them (nearest rank, default the 90th percentile),
    so provisioning ahead is late for at most one server in ten.
    """

    __slots__ = ("_quantile", "_seen")

    def __init__(self, capacity: int = 64, quantile: float = 0.9) -> None:
        """Args:
        capacity: Observations kept, the newest; in [1, 100000].
        quantile: Share of the observations the estimate is at or above; in (0, 1].
        """
        if not (isinstance(capacity, int) and not isinstance(capacity, bool) and 1 <= capacity <= 100_000):
            raise InvalidArgument("capacity", f"must be an integer in [1, 100000], got {shown(capacity)}")
        if not (isinstance(quantile, int | float) and 0.0 < quantile <= 1.0):
            raise InvalidArgument("quantile", f"must be a number in (0, 1], got {shown(quantile)}")
        self._seen: deque[float] = deque(maxlen=capacity)
        self._quantile = float(quantile)

    def observe(self, seconds: float) -> None:
        """Records one server's time to ready, seconds; a non-finite or negative one is ignored."""
        if (
            isinstance(seconds, int | float)
            and not isinstance(seconds, bool)
            and math.isfinite(seconds)
            and seconds >= 0
        ):
            self._seen.append(float(seconds))

    def estimate(self, default_s: float) -> float:
        """The learned lead time, seconds; ``default_s`` until something was observed."""
        if not self._seen:
            return default_s
        ordered = sorted(self._seen)
        return ordered[max(0, math.ceil(self._quantile * len(ordered)) - 1)]

    def __len__(self) -> int:
        return len(self._seen)
