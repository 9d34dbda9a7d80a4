"""Latency-target sizing (Clipper's AIMD batch sizing).

Each reported batch that finished within the target latency grows the size by
``step``; a batch over the target, or a failed one, multiplies it by
``backoff_ratio`` (rounded down). The size stays within [min, max]. The load
score is not used: the batches' own latency is the signal.
"""

from __future__ import annotations

import math
from typing import ClassVar


class LatencyTargetController:
    mode: ClassVar[str] = "latency_target"
    needs_load: ClassVar[bool] = False

    def __init__(
        self, min_size: int, max_size: int, start: int, target_ms: float, step: int, backoff_ratio: float
    ) -> None:
        self._min, self._max = min_size, max_size
        self._target_ms, self._step, self._backoff = target_ms, step, backoff_ratio
        self.size = start
        self._why = f"starting at the default size {start}"

    def target(self, load_score: float | None) -> tuple[int, str]:
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
