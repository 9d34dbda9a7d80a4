"""A forecast of an operation's load score, so that it sizes its batches ahead of the load.

The capacity planner forecasts each operation's load score (issue 21). An operation told
a ``LoadOutlook`` looks, at ``now``, at the points that speak for ``(now, now + lead]``: a
point speaks for the step of ``step_s`` that ends at its time (``step_s`` 0: for its
instant alone). When one of them is forecast above the measured load, the operation
sizes from the highest such score instead of the measured one: it shrinks before a
forecast peak instead of after it, and the gate (cooldown, minimum step, bounds) applies
as to any move. With the prediction interval's lower bounds (``lows``), a point counts
only when its lower bound is above the measured load: noise within the interval moves
nothing. The window slides with ``now``, so a forecast plateau keeps the batches small
until it is forecast to end; once every point is past, the outlook has expired.

The lead is how long a batch started now runs: ``lead_s``, or with ``lead_s`` 0 the
duration of the operation's recent batches (``step_s`` until one is reported). A batch
that ends before the peak is left its size; shrinking earlier only gives up throughput.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

MAX_OUTLOOK_POINTS = 10_000  # the forecast's own bound on its steps


def _percent(values: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(min(100.0, max(0.0, float(v))) for v in values)


@dataclass(frozen=True, slots=True)
class LoadOutlook:
    """A load-score forecast, in the operation's clock.

    Attributes:
        times: Monotonic seconds each point is forecast for (the end of its step), strictly
            rising, at most 10,000.
        scores: The load score forecast for each time, percent; clamped into [0, 100].
        lead_s: How far ahead the operation looks, seconds, finite and >= 0; 0 means the
            duration of the operation's recent batches.
        lows: The prediction interval's lower bound for each time, or None; each at most
            its score (clamped into [0, 100] like the scores).
        step_s: The span each point speaks for, ending at its time, seconds, finite and
            >= 0 (0: the instant alone).
    """

    times: tuple[float, ...]
    scores: tuple[float, ...]
    lead_s: float
    lows: tuple[float, ...] | None = None
    step_s: float = 0.0

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
        if not (math.isfinite(self.lead_s) and self.lead_s >= 0):
            raise ValueError(f"lead_s: must be a finite number >= 0, got {self.lead_s!r}")
        if not (math.isfinite(self.step_s) and self.step_s >= 0):
            raise ValueError(f"step_s: must be a finite number >= 0, got {self.step_s!r}")
        object.__setattr__(self, "times", tuple(float(t) for t in self.times))
        object.__setattr__(self, "scores", _percent(self.scores))
        if self.lows is not None:
            if len(self.lows) != len(self.times) or not all(math.isfinite(v) for v in self.lows):
                raise ValueError(f"lows: must be finite and match the {len(self.times)} times")
            lows = _percent(self.lows)
            if any(low > score for low, score in zip(lows, self.scores, strict=True)):
                raise ValueError("lows: each must be at most its score")
            object.__setattr__(self, "lows", lows)

    def _window(self, now: float, lead_s: float) -> range:
        """Indices of the points that speak for some time in ``(now, now + lead_s]``."""
        times, until = self.times, now + lead_s
        first = bisect.bisect_right(times, now)
        # A step (T - step_s, T] overlaps the window when T - step_s < until; an instant when T <= until.
        step = self.step_s
        last = bisect.bisect_left(times, until + step) if step > 0 else bisect.bisect_right(times, until)
        return range(first, max(first, last))

    def peak(self, now: float, lead_s: float | None = None) -> tuple[float, float] | None:
        """The highest score forecast for ``(now, now + lead]`` and its time (the earliest of
        equal scores); None when no point speaks for it. ``lead`` defaults to ``lead_s``."""
        return self.rise(now, -math.inf, self.lead_s if lead_s is None else lead_s)

    def rise(self, now: float, above: float, lead_s: float) -> tuple[float, float] | None:
        """Like ``peak``, over the points forecast above ``above`` (their lower bounds, when
        the outlook has them); None when none is. O(log n + points in the window)."""
        best: tuple[float, float] | None = None
        scores, sure = self.scores, self.lows or self.scores
        for i in self._window(now, lead_s):
            if sure[i] > above and (best is None or scores[i] > best[0]):
                best = (scores[i], self.times[i])
        return best

    def expired(self, now: float) -> bool:
        """True once every point is forecast for ``now`` or before."""
        return not self.times or self.times[-1] <= now
