"""The scaling rule's settings and answer: frozen dataclasses, validated where they are built."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._errors import InvalidArgument
from .._validation import shown

MAX_SERVERS = 1_000_000
BOUNDS = ("value", "upper")


def _number(
    value: float, field: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise InvalidArgument(field, f"must be a finite number in {left}{low:g}, {high:g}{right}, got {shown(value)}")


def _count(value: int, field: str, low: int, high: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise InvalidArgument(field, f"must be an integer in [{low}, {high}], got {shown(value)}")


@dataclass(frozen=True, slots=True)
class ScalingSettings:
    """One pool's scaling rule: Kubernetes HPA's, optionally ahead of a forecast.

    Attributes:
        target: Per-server target of the scaled metric (0.7 of CPU, 8 requests in
            flight per server...), in the metric's unit; finite, > 0.
        tolerance: No change while ``|metric / target - 1| <= tolerance`` (HPA's
            ``--horizontal-pod-autoscaler-tolerance``); in [0, 1).
        scale_up_window_s: Scale-up stabilisation window, seconds: the recommendation
            is the lowest of those made within it; >= 0 (HPA's default 0).
        scale_down_window_s: Scale-down stabilisation window, seconds: the highest of
            those made within it; >= 0 (HPA's default 300).
        min_servers: Fewest servers recommended, in [0, 1000000].
        max_servers: Most servers recommended, in [max(1, min_servers), 1000000].
        lead_time_s: Seconds a new server needs to become ready, used until
            ``Scaler.lead_times`` has learned one; finite, > 0.
        predictive: Also provision for the forecast peak within the lead time.
        forecast_bound: Which forecast of the peak to provision for: ``"value"`` (the
            point forecast) or ``"upper"`` (the prediction interval's upper bound,
            fewer under-provisioned minutes for more server-hours).
    """

    target: float
    tolerance: float = 0.1
    scale_up_window_s: float = 0.0
    scale_down_window_s: float = 300.0
    min_servers: int = 1
    max_servers: int = 1000
    lead_time_s: float = 300.0
    predictive: bool = False
    forecast_bound: str = "value"

    def __post_init__(self) -> None:
        _number(self.target, "target", 0.0, math.inf, low_open=True, high_open=True)
        _number(self.tolerance, "tolerance", 0.0, 1.0, high_open=True)
        _number(self.scale_up_window_s, "scale_up_window_s", 0.0, 86_400.0)
        _number(self.scale_down_window_s, "scale_down_window_s", 0.0, 86_400.0)
        _count(self.min_servers, "min_servers", 0, MAX_SERVERS)
        _count(self.max_servers, "max_servers", max(1, self.min_servers), MAX_SERVERS)
        _number(self.lead_time_s, "lead_time_s", 0.0, 86_400.0, low_open=True)
        if not isinstance(self.predictive, bool):
            raise InvalidArgument("predictive", f"must be true or false, got {shown(self.predictive)}")
        if self.forecast_bound not in BOUNDS:
            raise InvalidArgument(
                "forecast_bound", f"must be one of {', '.join(BOUNDS)}; got {shown(self.forecast_bound)}"
            )


@dataclass(frozen=True, slots=True)
class Recommendation:
    """How many servers one pool should have now, and why.

    Attributes:
        desired: The answer: after stabilisation, clamped to ``[min_servers, max_servers]``.
        reactive: HPA's rule now: ``ceil(current * metric / target)``, or ``current``
            within the tolerance (before stabilisation); with ``current == 0``,
            ``ceil(metric / target)``.
        predictive: ``ceil(forecast peak within the lead time / target)``; None when the
            settings are not predictive or there is no usable forecast.
        current: Servers the pool has now.
        metric: Per-server mean of the metric now (with ``current == 0``, the pool's
            total); None = unknown.
        forecast_peak: The pool-total demand peak used, in the metric's unit times
            servers; None when none was.
        lead_time_s: The lead time used, seconds (learned or configured).
        reason: Why, in words, e.g. ``"reactive: 0.91 per server against 0.70 -> 13"``.
    """

    desired: int
    reactive: int
    predictive: int | None
    current: int
    metric: float | None
    forecast_peak: float | None
    lead_time_s: float
    reason: str
