"""A forecast of an operation's load score, so that it sizes its batches ahead of the load.

The capacity planner forecasts each operation's load score (issue 21). An operation told
a ``LoadOutlook`` sizes, at ``now``, from the higher of its measured load and the highest
score forecast for a time in ``(now, now + lead_s]``: it shrinks before a forecast peak
instead of after it, and the gate (cooldown, minimum step, bounds) applies as to any move.
The window slides with ``now``, so a forecast plateau keeps the batches small until it is
forecast to end; once every point is past, the outlook has expired.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

MAX_OUTLOOK_POINTS = 10_000  # the forecast's own bound on its steps


@dataclass(frozen=True, slots=True)
class LoadOutlook:
    """A load-score forecast, in the operation's clock.

    Attributes:
        times: Monotonic seconds each point is forecast for (the end of its step), strictly
            rising, at most 10,000.
        scores: The load score forecast for each time, percent; clamped into [0, 100].
        lead_s: How far ahead the operation looks, seconds, finite and > 0.
    """

    times: tuple[float, ...]
    scores: tuple[float, ...]
    lead_s: float

    def __post_init__(self) -> None:
        if len(self.times) != len(self.scores) or len(self.times) > MAX_OUTLOOK_POINTS:
            raise ValueError(
                f"times: must match scores and hold at most {MAX_OUTLOOK_POINTS} points, "
                f"got {len(self.times)} and {len(self.scores)}"
            )
        if not all(math.isfinite(t) for t in self.times) or any(
            b <= a for a, b in zip(self.times, self.times[1:], strict=False)
        ):
            raise ValueError("times: must be finite and strictly rising")
        if not all(math.isfinite(s) for s in self.scores):
            raise ValueError("scores: must be finite")
        if not (math.isfinite(self.lead_s) and self.lead_s > 0):
            raise ValueError(f"lead_s: must be a finite number > 0, got {self.lead_s!r}")
        object.__setattr__(self, "times", tuple(float(t) for t in self.times))
        object.__setattr__(self, "scores", tuple(min(100.0, max(0.0, float(s))) for s in self.scores))

    def peak(self, now: float) -> tuple[float, float] | None:
        """The highest score forecast for a time in ``(now, now + lead_s]`` and that time (the
        earliest of equal scores); None when no point falls there. O(log n + points in it)."""
        times, scores = self.times, self.scores
        best: tuple[float, float] | None = None
        until = now + self.lead_s
        for i in range(bisect.bisect_right(times, now), len(times)):
            if times[i] > until:
                break
            if best is None or scores[i] > best[0]:
                best = (scores[i], times[i])
        return best

    def expired(self, now: float) -> bool:
        """True once every point is forecast for ``now`` or before."""
        return not self.times or self.times[-1] <= now
