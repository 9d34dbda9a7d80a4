"""Threshold sizing (seed 003): big batches when the load is low, small when it is high.

At or below ``low_percent`` the max size; at or above ``high_percent`` the min size;
between them the size falls linearly from max to min (rounded to the nearest integer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class ThresholdParams:
    """Sizes are counts, thresholds load percentages 0-100 (low below high)."""

    min_size: int
    max_size: int
    low_percent: float
    high_percent: float

    def __post_init__(self) -> None:
        if not 1 <= self.min_size <= self.max_size:
            raise ValueError(f"min_size: must be >= 1 and <= max_size {self.max_size}, got {self.min_size}")
        if not 0.0 <= self.low_percent < self.high_percent <= 100.0:
            raise ValueError(f"high_percent: must be above low_percent {self.low_percent:g} and <= 100")


class ThresholdController:
    name: ClassVar[str] = "threshold"
    Params = ThresholdParams
    needs_load: ClassVar[bool] = True

    def __init__(self, params: ThresholdParams, start: int) -> None:
        self._min, self._max = params.min_size, params.max_size
        self._low, self._high = params.low_percent, params.high_percent

    def target(self, load_score: float | None, described: str = "") -> tuple[int, str]:
        load = 0.0 if load_score is None else load_score
        shown = described or f"load {load:.1f}"
        if load <= self._low:
            return self._max, f"{shown} <= low threshold {self._low:g}: max size"
        if load >= self._high:
            return self._min, f"{shown} >= high threshold {self._high:g}: min size"
        share = (load - self._low) / (self._high - self._low)
        size = round(self._max - share * (self._max - self._min))
        return size, f"{shown} between thresholds {self._low:g} and {self._high:g}: proportional"

    def observe(self, batch_size: int, duration_ms: float, success: bool) -> None:
        return None
