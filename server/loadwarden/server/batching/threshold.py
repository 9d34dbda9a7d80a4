"""Threshold sizing (seed 003): big batches when the load is low, small when it is high.

At or below ``low`` the max size; at or above ``high`` the min size; between
them the size falls linearly from max to min (rounded to the nearest integer).
"""

from __future__ import annotations

from typing import ClassVar


class ThresholdController:
    mode: ClassVar[str] = "threshold"
    needs_load: ClassVar[bool] = True

    def __init__(self, min_size: int, max_size: int, low: float, high: float) -> None:
        self._min, self._max, self._low, self._high = min_size, max_size, low, high

    def target(self, load_score: float | None) -> tuple[int, str]:
        load = 0.0 if load_score is None else load_score
        if load <= self._low:
            return self._max, f"load {load:.1f} <= low threshold {self._low:g}: max size"
        if load >= self._high:
            return self._min, f"load {load:.1f} >= high threshold {self._high:g}: min size"
        share = (load - self._low) / (self._high - self._low)
        size = round(self._max - share * (self._max - self._min))
        return size, f"load {load:.1f} between thresholds {self._low:g} and {self._high:g}: proportional"

    def observe(self, batch_size: int, duration_ms: float, success: bool) -> None:
        return None
