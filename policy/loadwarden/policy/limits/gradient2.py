"""gradient2: latency-gradient limit (Netflix ``Gradient2Limit``).

Compares each sample's RTT (short-term) with a long-term average RTT and moves a
real-valued estimate; the limit is that estimate rounded down. Per sample::

    long_rtt = EWMA(rtt), factor 2 / (long_window + 1); plain mean of the first 10 samples
    if long_rtt / rtt > 2:  long_rtt *= 0.95      # latency recovered after long load: let the
                                                  # baseline follow faster than the EWMA would
    if in_flight < estimate / 2:  stop            # app-limited: the sample says nothing
    gradient = max(0.5, min(1.0, rtt_tolerance * long_rtt / rtt))
    new = estimate * gradient + queue_size
    estimate = estimate * (1 - smoothing) + new * smoothing
    estimate = min(max_limit, max(min_limit, estimate))

With steady latency the gradient is 1 and the estimate grows by
``smoothing * queue_size`` per sample; once the RTT exceeds ``rtt_tolerance``
times the baseline it shrinks, by less than ``smoothing / 2`` of itself per
sample (the gradient is floored at 0.5).

As in Netflix's version:

* ``dropped`` is not read. A dropped unit of work still contributes its RTT (for
  a reclaimed lease, the time it held the slot), which is how a drop pushes the
  limit down; the algorithm is purely latency-driven (use ``aimd`` for loss).
* An app-limited sample neither grows nor shrinks the limit, but still feeds
  the long-term average.
* ``queue_size`` is a constant (Netflix's default, 4), not a function of the limit.
* The drift decay during the 10-sample warm-up is undone by the next sample,
  which recomputes the plain mean.

Departures: an RTT below 1 µs counts as 1 µs (Java divides by zero there), and
a non-finite RTT is ignored, since it would poison the average for good.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Samples averaged plainly before the EWMA takes over (Netflix: ExpAvgMeasurement(window, 10)).
_WARMUP_SAMPLES = 10
# long_rtt / rtt above this means the baseline lags a recovered latency ...
_DRIFT_RATIO = 2.0
# ... and the baseline is multiplied by this on each such sample.
_DRIFT_DECAY = 0.95
_MIN_RTT_MS = 0.001


@dataclass(frozen=True, slots=True)
class Gradient2Params:
    """Parameters of ``gradient2``.

    Attributes:
        min_limit: Lowest limit, slots, >= 1.
        max_limit: Highest limit, slots, >= ``min_limit``.
        long_window: Samples the long-term RTT average spans (EWMA factor
            ``2 / (long_window + 1)``), >= 1.
        rtt_tolerance: How many times the long-term RTT a sample may take before
            the limit shrinks, >= 1.0 (1.5: up to 50 % slower is no queueing).
        queue_size: Slots the estimate may exceed the gradient-scaled limit by,
            >= 1; with steady latency the estimate grows ``smoothing * queue_size``
            per sample.
        smoothing: Weight of each new estimate, in (0, 1]; 1 takes it whole.
    """

    min_limit: int = 1
    max_limit: int = 1000
    long_window: int = 600
    rtt_tolerance: float = 1.5
    queue_size: int = 4
    smoothing: float = 0.2

    def __post_init__(self) -> None:
        if self.min_limit < 1:
            raise ValueError(f"min_limit: must be >= 1, got {self.min_limit}")
        if self.min_limit > self.max_limit:
            raise ValueError(f"min_limit: must be <= max_limit {self.max_limit}, got {self.min_limit}")
        if self.long_window < 1:
            raise ValueError(f"long_window: must be >= 1, got {self.long_window}")
        if not (math.isfinite(self.rtt_tolerance) and self.rtt_tolerance >= 1.0):
            raise ValueError(f"rtt_tolerance: must be a finite number >= 1.0, got {self.rtt_tolerance}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size: must be >= 1, got {self.queue_size}")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing: must be in (0, 1], got {self.smoothing}")


class Gradient2Limit:
    """Grows while RTT stays within ``rtt_tolerance`` of its long-term average, shrinks beyond."""

    name = "gradient2"
    Params = Gradient2Params
    adaptive = True

    def __init__(self, params: Gradient2Params, initial_limit: int) -> None:
        self._params = params
        self._factor = 2.0 / (params.long_window + 1)
        # Real-valued so that sub-slot steps accumulate; ``limit`` rounds it down.
        self._estimate = float(min(params.max_limit, max(params.min_limit, initial_limit)))
        self._long_rtt_ms = 0.0
        self._warmup_sum_ms = 0.0
        self._samples = 0

    @property
    def limit(self) -> int:
        return int(self._estimate)

    @property
    def long_rtt_ms(self) -> float:
        """The long-term RTT average, milliseconds; 0 before the first sample."""
        return self._long_rtt_ms

    def on_sample(self, now: float, rtt_ms: float, in_flight: int, dropped: bool) -> None:
        if not math.isfinite(rtt_ms):
            return
        p = self._params
        short_rtt = max(rtt_ms, _MIN_RTT_MS)
        long_rtt = self._add_long(short_rtt)
        if long_rtt / short_rtt > _DRIFT_RATIO:
            self._long_rtt_ms *= _DRIFT_DECAY
        if in_flight < self._estimate / 2:
            return
        # The gradient uses the long RTT from before the drift decay, as Netflix does.
        gradient = max(0.5, min(1.0, p.rtt_tolerance * long_rtt / short_rtt))
        new = self._estimate * gradient + p.queue_size
        new = self._estimate * (1.0 - p.smoothing) + new * p.smoothing
        self._estimate = min(float(p.max_limit), max(float(p.min_limit), new))

    def start_from(self, limit: int) -> None:
        """Moves the estimate; the long-term RTT average is kept (it is the backend's, not the limit's)."""
        p = self._params
        self._estimate = float(min(p.max_limit, max(p.min_limit, limit)))

    def _add_long(self, rtt_ms: float) -> float:
        if self._samples < _WARMUP_SAMPLES:
            self._samples += 1
            self._warmup_sum_ms += rtt_ms
            self._long_rtt_ms = self._warmup_sum_ms / self._samples
        else:
            self._long_rtt_ms = self._long_rtt_ms * (1.0 - self._factor) + rtt_ms * self._factor
        return self._long_rtt_ms
