"""Latency-target sizing (Clipper's AIMD batch sizing).

Each reported batch that finished within the target latency grows the size by
``step``; a batch over the target, or a failed one, multiplies it by
``backoff_ratio`` (rounded down). The size stays within [min, max]. The load
score is not used: the batches' own latency is the signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class LatencyTargetParams:
    """Sizes and step are counts, the target milliseconds, the backoff ratio in (0, 1)."""

    min_size: int
    max_size: int
    target_ms: float
    step: int
    backoff_ratio: float

    def __post_init__(self) -> None:
        if not 1 <= self.min_size <= self.max_size:
            raise ValueError(f"min_size: must be >= 1 and <= max_size {self.max_size}, got {self.min_size}")
        if not self.target_ms > 0:
            raise ValueError(f"target_ms: must be > 0, got {self.target_ms:g}")
        if self.step < 1:
            raise ValueError(f"step: must be >= 1, got {self.step}")
        if not 0.0 < self.backoff_ratio < 1.0:
            raise ValueError(f"backoff_ratio: must be in (0, 1), got {self.backoff_ratio:g}")


class LatencyTargetController:
    name: ClassVar[str] = "latency_target"
    Params = LatencyTargetParams
    needs_load: ClassVar[bool] = False

    def __init__(self, params: LatencyTargetParams, start: int) -> None:
        self._min, self._max = params.min_size, params.max_size
        self._target_ms, self._step, self._backoff = params.target_ms, params.step, params.backoff_ratio
        self.size = start
        self._why = f"starting at the default size {start}"

    def target(self, load_score: float | None, described: str = "") -> tuple[int, str]:
        return self.size, self._why

    def observe(self, batch_size: int, duration_ms: float, success: bool) -> None:
        if success and duration_ms <= self._target_ms:
            self.size = min(self._max, self.size + self._step)
            self._why = (
                f"batch of {batch_size} took {duration_ms:.0f} ms <= target {self._target_ms:g} ms: +{self._step}"
            )
        else:
            self.size = max(self._min, math.floor(self.size * self._backoff))
            cause = "failed" if not success else f"took {duration_ms:.0f} ms > target {self._target_ms:g} ms"
            self._why = f"batch of {batch_size} {cause}: x{self._backoff:g}"
