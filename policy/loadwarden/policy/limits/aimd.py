"""aimd: additive increase, multiplicative decrease on drops (Netflix ``AIMDLimit``).

Per sample::

    if dropped or rtt_ms > timeout_ms:  limit = int(limit * backoff_ratio)
    elif in_flight * 2 >= limit:        limit = limit + 1
    limit = clamp(limit, min_limit, max_limit)

A sample taken while fewer than half the slots were in use says nothing about
whether more slots would be served well (the pool is app-limited), so it leaves
the limit alone. ``int()`` truncates, so with ``backoff_ratio < 1`` every
backoff lowers the limit by at least one before clamping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._base import clamp


@dataclass(frozen=True, slots=True)
class AimdParams:
    """Parameters of ``aimd``.

    Attributes:
        min_limit: Lowest limit, slots, >= 1.
        max_limit: Highest limit, slots, >= ``min_limit``.
        backoff_ratio: Factor a drop multiplies the limit by, in [0.5, 1).
        timeout_ms: A sample slower than this, milliseconds, counts as a drop; > 0.
    """

    min_limit: int = 1
    max_limit: int = 1000
    backoff_ratio: float = 0.9
    timeout_ms: float = 5000.0

    def __post_init__(self) -> None:
        if self.min_limit < 1:
            raise ValueError(f"min_limit: must be >= 1, got {self.min_limit}")
        if self.min_limit > self.max_limit:
            raise ValueError(f"min_limit: must be <= max_limit {self.max_limit}, got {self.min_limit}")
        if not 0.5 <= self.backoff_ratio < 1.0:
            raise ValueError(f"backoff_ratio: must be in [0.5, 1), got {self.backoff_ratio}")
        if not (math.isfinite(self.timeout_ms) and self.timeout_ms > 0):
            raise ValueError(f"timeout_ms: must be a finite number > 0, got {self.timeout_ms}")


class AimdLimit:
    """Loss-based limit: +1 per good sample under load, ``x backoff_ratio`` per drop or timeout."""

    name = "aimd"
    Params = AimdParams
    adaptive = True

    def __init__(self, params: AimdParams, initial_limit: int) -> None:
        self._params = params
        self._limit = clamp(initial_limit, params.min_limit, params.max_limit)

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, now: float, rtt_ms: float, in_flight: int, dropped: bool) -> None:
        p = self._params
        limit = self._limit
        if dropped or rtt_ms > p.timeout_ms:
            limit = int(limit * p.backoff_ratio)
        elif in_flight * 2 >= limit:
            limit += 1
        self._limit = clamp(limit, p.min_limit, p.max_limit)

    def start_from(self, limit: int) -> None:
        self._limit = clamp(limit, self._params.min_limit, self._params.max_limit)
