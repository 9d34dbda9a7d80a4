"""Kubernetes HPA's scaling rule, optionally provisioning ahead for a forecast peak.

The rule of ``pkg/controller/podautoscaler`` (``replica_calculator.go`` and
``horizontal.go``'s ``stabilizeRecommendationWithBehaviors``)::

    reactive   = current                              if |metric / target - 1| <= tolerance
               = ceil(current * metric / target)      otherwise
    predictive = ceil(forecast peak within the lead time / target)   (the forecast is of the pool total)
    rec        = clamp(max(reactive, predictive), min_servers, max_servers)
    up         = min(recommendations made within scale_up_window_s, rec)
    down       = max(recommendations made within scale_down_window_s, rec)
    desired    = up if current < up else down if current > down else current

Where it departs from HPA, on purpose: with ``current == 0`` HPA does not scale
(scaling is disabled at zero replicas); here ``metric`` is then the pool's total demand
and ``reactive = ceil(metric / target)``, so a pool can scale from zero. A product
within 1e-9 of a whole number counts as that number (``ceil(10 * 0.77 / 0.7)`` is 11,
not the 12 float rounding gives), and the tolerance check has the same slack. An
unknown metric holds ``current`` (HPA skips the cycle) and records nothing. HPA's rate
policies (pods or percent per period) are not modelled.
"""

from __future__ import annotations

import math
from collections import deque

from .._clock import Clock
from .._errors import InvalidArgument
from .._validation import shown
from ..forecast import Forecast
from ._lead_times import LeadTimes
from ._types import MAX_SERVERS, Recommendation, ScalingSettings

SLACK = 1e-9
MAX_RECORDED = 4096  # recommendations kept per window (a monotone queue keeps far fewer)


def whole(x: float) -> int:
    """``ceil(x)`` for ``x >= 0``, but ``x`` within 1e-9 (relative) of a whole number is that number."""
    if not x < 10.0 * MAX_SERVERS:  # also NaN
        return 10 * MAX_SERVERS
    nearest = round(x)
    return nearest if abs(x - nearest) <= SLACK * max(1.0, x) else math.ceil(x)


def _num(x: float) -> str:
    return f"{x:.2f}" if x == 0.0 or 0.01 <= abs(x) < 1e6 else f"{x:.3g}"


class _Window:
    """Recommendations of the last ``window_s`` seconds, as a monotone queue: the front is
    the lowest (``keep_low``) or highest of them, each push and query O(1) amortised."""

    __slots__ = ("_keep_low", "_queue", "_window_s")

    def __init__(self, window_s: float, keep_low: bool) -> None:
        self._window_s = window_s
        self._keep_low = keep_low
        self._queue: deque[tuple[float, int]] = deque(maxlen=MAX_RECORDED)

    def push(self, now: float, value: int) -> int:
        """Records ``value`` made at ``now``; returns the lowest (highest) within the window."""
        queue = self._queue
        while queue and (queue[-1][1] >= value if self._keep_low else queue[-1][1] <= value):
            queue.pop()
        queue.append((now, value))
        cutoff = now - self._window_s  # HPA keeps those made strictly after the cutoff
        while len(queue) > 1 and queue[0][0] <= cutoff:
            queue.popleft()
        return queue[0][1]


class Scaler:
    """One pool's recommender: keeps the recommendation history for the stabilisation windows (bounded).

    Attributes:
        settings: The pool's rule.
        lead_times: What the pool has learned of its servers' time to ready; feed it
            with ``scaler.lead_times.observe(seconds)``.
    """

    __slots__ = ("_clock", "_down", "_up", "lead_times", "settings")

    def __init__(self, settings: ScalingSettings, clock: Clock, *, lead_times: LeadTimes | None = None) -> None:
        self.settings = settings
        self.lead_times = LeadTimes() if lead_times is None else lead_times
        self._clock = clock
        self._up = _Window(settings.scale_up_window_s, keep_low=True)
        self._down = _Window(settings.scale_down_window_s, keep_low=False)

    def recommend(self, *, current: int, metric: float | None, forecast: Forecast | None = None) -> Recommendation:
        """The desired server count now.

        Args:
            current: Servers the pool has now, >= 0.
            metric: Per-server mean of the scaled metric now; with ``current == 0`` the
                pool's total demand. None, NaN or ±inf: unknown (hold). Negative counts as 0.
            forecast: A forecast of the pool's TOTAL demand (metric x servers); read only
                when the settings are predictive.

        Raises:
            InvalidArgument: ``current`` is not an integer >= 0.
        """
        if not (isinstance(current, int) and not isinstance(current, bool) and current >= 0):
            raise InvalidArgument("current", f"must be an integer >= 0, got {shown(current)}")
        s = self.settings
        lead = self.lead_times.estimate(s.lead_time_s)
        predictive, peak, ahead = self._predictive(forecast, lead)
        known = metric is not None and math.isfinite(metric)
        if not known:
            held = min(max(current, s.min_servers), s.max_servers)
            reason = f"metric unknown; holding {held}"
            if predictive is not None:
                reason += f" (predictive {predictive} not acted on)"
            return Recommendation(held, current, predictive, current, None, peak, lead, reason)
        assert metric is not None
        metric = max(metric, 0.0)
        reactive, reason = self._reactive(current, metric)
        if predictive is not None and predictive > reactive:
            reason = f"{ahead} -> {predictive} (reactive {reactive})"
        elif predictive is not None:
            reason += f" ({ahead} -> {predictive})"
        elif s.predictive:
            reason = f"{ahead}; reactive rule: {reason}"
        raw = max(reactive, predictive or 0)
        rec = min(max(raw, s.min_servers), s.max_servers)
        if rec != raw:
            reason += f"; clamped to {'max' if raw > rec else 'min'}_servers {rec}"
        now = self._clock.monotonic()
        up, down = self._up.push(now, rec), self._down.push(now, rec)
        desired = up if current < up else down if current > down else current
        desired = min(max(desired, s.min_servers), s.max_servers)
        if desired < rec:
            reason += f"; held at {desired} by the scale-up window ({s.scale_up_window_s:g} s)"
        elif desired > rec:
            reason += f"; held at {desired} by the scale-down window ({s.scale_down_window_s:g} s)"
        return Recommendation(desired, reactive, predictive, current, metric, peak, lead, reason)

    def _reactive(self, current: int, metric: float) -> tuple[int, str]:
        target = self.settings.target
        if current == 0:
            n = whole(metric / target)
            return n, f"reactive: no servers, demand {_num(metric)} against {_num(target)} per server -> {n}"
        ratio = metric / target
        against = f"{_num(metric)} per server against {_num(target)}"
        if abs(ratio - 1.0) <= self.settings.tolerance + SLACK:
            return current, f"within tolerance: {against}"
        n = whole(current * ratio)
        return n, f"reactive: {against} -> {n}"

    def _predictive(self, forecast: Forecast | None, lead: float) -> tuple[int | None, float | None, str]:
        """``(servers, peak, words)``: servers for the forecast peak within ``lead`` seconds."""
        if not self.settings.predictive:
            return None, None, ""
        if forecast is None:
            return None, None, "no forecast: none given"
        if forecast.model is None or not forecast.points:
            return None, None, f"no forecast: {forecast.reason or 'it has no points'}"
        point = forecast.peak(lead) or forecast.points[0]  # a lead time shorter than a step: the next point
        peak = point.upper if self.settings.forecast_bound == "upper" else point.value
        words = f"predictive: peak {peak:.4g} in {point.offset_s:g} s"
        return whole(peak / self.settings.target), peak, words
