"""Provisioning in the simulator: how many servers a pool runs as a trace plays, and what it cost.

A provisioning scenario (``[provisioning]`` with ``traffic.kind = "trace"``) runs once per
mode, all on the same trace and seed:

- ``fixed``: enough servers for the trace's peak at the target utilisation, all the time
  (``ceil(peak * rate_scale / (capacity * target))``, within ``min_servers``-``max_servers``);
- ``reactive``: the Kubernetes HPA rule, ``loadwarden.policy.scaling.Scaler`` with
  ``predictive=False``: ``ceil(current * metric / target)``, a tolerance band, and the
  scale-up / scale-down stabilisation windows;
- ``predictive``: the same Scaler with ``predictive=True``, fed a ``Forecast`` of the pool's
  total load, so it provisions for the forecast peak within the lead time.

Every ``interval_s`` trace seconds the mode decides how many servers to ask for. The metric
is the offered utilisation per server asked for: the offered rate over the last interval /
servers asked for / one server's capacity, a server still booting counting as idle (as the
HPA counts a pod not yet ready on a scale-up), so ``current * metric`` is the pool's total
load in servers and nothing is counted twice while servers boot. ``metric = "rate"`` reads
the offered rate from the trace (what a real pool measures over an interval, where
thousands of requests arrive); ``"arrivals"`` counts the simulated arrivals, whose Poisson
noise is that of a few dozen requests per interval once time is compressed.

The forecast (predictive only) reads the pool's total load in servers (offered rate /
capacity) averaged over ``forecast_step_s`` buckets, at most ``forecast_history_s`` of them,
and is made again every ``forecast_every_s``; in between, the last forecast is moved to
the present (its points already past dropped) before the Scaler reads it. Its horizon is
``forecast_every_s + lead_time_s`` plus one step, so it always covers the lead time.

The simulator asks ``Provisioner.decide`` at each step, boots new servers for
``lead_time_s`` (routable only then), cancels booting servers first and then drains the
newest ready ones on a scale-down, and records every change with ``Provisioner.record``.
``account`` turns that record and the trace into the figures: server-hours (every server
asked for, booting, ready or draining, is paid for), time under-provisioned (ready servers
x capacity x target below the offered rate) and over capacity (ready servers x capacity
below it), over the evaluation window, the last ``evaluate_last_s`` of the trace played.

Times here are trace seconds unless a name says ``_sim``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from loadwarden.policy import Clock
from loadwarden.policy.forecast import Forecast, ForecastSettings, Prediction, forecast
from loadwarden.policy.scaling import Scaler, ScalingSettings

from ._config import SimServer
from ._provision_trace import Trace, TraceCurve

PROVISIONING_MODES = ("fixed", "reactive", "predictive")
METRICS = ("rate", "arrivals")
# What the predictive Scaler provisions for: the forecast peak's point value or its upper bound.
FORECAST_BOUNDS = ("value", "upper")
# The seasons the forecaster tries: a day and a week.
SEASONS_S = (86_400.0, 604_800.0)
# Points of the over-time series in the report (about one per trace hour over a week).
SERIES_POINTS = 168
_HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class ProvisioningSettings:
    """How servers are provisioned while a trace plays; trace seconds throughout.

    Attributes:
        modes: Modes compared, in order: ``fixed``, ``reactive``, ``predictive``.
        target: Target utilisation of a ready server, in (0, 1].
        tolerance: No scaling while ``metric / target`` is within this of 1, in [0, 1).
        interval_s: Trace seconds between two scaling decisions (the HPA's sync period).
        lead_time_s: Trace seconds from asking for a server to its being routable.
        scale_up_window_s / scale_down_window_s: Stabilisation windows of the Scaler.
        min_servers / max_servers: Bounds of every mode's server count.
        evaluate_last_s: The figures cover the last this many trace seconds played.
        metric: ``"rate"`` (the trace's offered rate) or ``"arrivals"`` (simulated arrivals
            counted over the interval).
        forecast_step_s: Bucket of the series the forecaster reads, trace seconds.
        forecast_history_s: Newest history it reads, trace seconds.
        forecast_every_s: Trace seconds between two forecasts.
        forecast_bound: ``"value"`` or ``"upper"``: the forecast peak's point value or the
            upper bound of its prediction interval, for the predictive Scaler.
    """

    modes: tuple[str, ...] = PROVISIONING_MODES
    target: float = 0.7
    tolerance: float = 0.1
    interval_s: float = 15.0
    lead_time_s: float = 600.0
    scale_up_window_s: float = 0.0
    scale_down_window_s: float = 300.0
    min_servers: int = 1
    max_servers: int = 1000
    evaluate_last_s: float = 604_800.0
    metric: str = "rate"
    forecast_step_s: float = 900.0
    forecast_history_s: float = 1_296_000.0
    forecast_every_s: float = 3600.0
    forecast_bound: str = "value"

    def __post_init__(self) -> None:
        object.__setattr__(self, "modes", tuple(self.modes))
        if not self.modes or any(m not in PROVISIONING_MODES for m in self.modes):
            raise ValueError(f"modes: must be a non-empty list of {', '.join(PROVISIONING_MODES)}, got {self.modes!r}")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError(f"modes: a mode is listed twice: {list(self.modes)!r}")
        if self.forecast_bound not in FORECAST_BOUNDS:
            raise ValueError(
                f"forecast_bound: must be one of {', '.join(FORECAST_BOUNDS)}, got {self.forecast_bound!r}"
            )
        if self.metric not in METRICS:
            raise ValueError(f"metric: must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.min_servers > self.max_servers:
            raise ValueError(f"min_servers: must be <= max_servers ({self.max_servers}), got {self.min_servers}")
        if not _multiple(self.forecast_step_s, self.interval_s):
            raise ValueError(
                f"forecast_step_s: must be a whole multiple of interval_s ({self.interval_s:g}), "
                f"got {self.forecast_step_s:g}"
            )
        if not _multiple(self.forecast_every_s, self.forecast_step_s):
            raise ValueError(
                f"forecast_every_s: must be a whole multiple of forecast_step_s ({self.forecast_step_s:g}), "
                f"got {self.forecast_every_s:g}"
            )
        for season in SEASONS_S:
            if not _multiple(season, self.forecast_step_s) or season < 2 * self.forecast_step_s:
                raise ValueError(
                    f"forecast_step_s: a day and a week must be whole multiples of it (of two steps at "
                    f"least), got {self.forecast_step_s:g}"
                )
        if self.forecast_history_s < self.forecast_step_s:
            raise ValueError(
                f"forecast_history_s: must be >= forecast_step_s ({self.forecast_step_s:g}), "
                f"got {self.forecast_history_s:g}"
            )

    def scaling(self, predictive: bool) -> ScalingSettings:
        """The kernel's Scaler settings for this scenario."""
        return ScalingSettings(
            target=self.target,
            tolerance=self.tolerance,
            scale_up_window_s=self.scale_up_window_s,
            scale_down_window_s=self.scale_down_window_s,
            min_servers=self.min_servers,
            max_servers=self.max_servers,
            lead_time_s=self.lead_time_s,
            predictive=predictive,
            forecast_bound=self.forecast_bound,
        )

    def forecasting(self) -> ForecastSettings:
        """The kernel's forecast settings: the horizon covers the lead time until the next forecast."""
        steps = math.ceil((self.forecast_every_s + self.lead_time_s) / self.forecast_step_s) + 1
        return ForecastSettings(
            step_s=self.forecast_step_s,
            horizon_s=steps * self.forecast_step_s,
            seasons_s=SEASONS_S,
            max_points=max(30, self.history_points),
        )

    @property
    def history_points(self) -> int:
        """Buckets the forecaster reads at most."""
        return max(1, math.floor(self.forecast_history_s / self.forecast_step_s + 1e-9))


def _multiple(value: float, unit: float) -> bool:
    ratio = value / unit
    return ratio >= 1 - 1e-9 and abs(ratio - round(ratio)) <= 1e-9 * ratio


def fixed_servers(settings: ProvisioningSettings, trace: Trace, rate_scale: float, capacity_per_s: float) -> int:
    """Servers enough for the trace's peak at the target, within the bounds."""
    needed = math.ceil(trace.peak * rate_scale / (capacity_per_s * settings.target) - 1e-9)
    return min(settings.max_servers, max(settings.min_servers, needed))


class _TraceClock:
    """The simulator's clock in trace seconds: what the Scaler's windows are measured in."""

    __slots__ = ("_base", "_scale")

    def __init__(self, base: Clock, scale: float) -> None:
        self._base = base
        self._scale = scale

    def monotonic(self) -> float:
        return self._base.monotonic() * self._scale

    def wall(self) -> float:
        return self._base.wall()


@dataclass(frozen=True, slots=True)
class Timeline:
    """Servers over a run: after each change, the time and the counts from then on.

    Attributes:
        t_s: Trace seconds of each entry, non-decreasing (a later entry at the same time wins).
        ready: Routable servers from then on.
        booting: Servers asked for, not yet routable.
        draining: Servers draining (no new requests; paid for until their last request ends).
    """

    t_s: tuple[float, ...]
    ready: tuple[int, ...]
    booting: tuple[int, ...]
    draining: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ProvisioningFigures:
    """What a mode cost and how well it served, over the evaluation window.

    Attributes:
        mode: ``fixed``, ``reactive`` or ``predictive``.
        window_start_s / window_end_s: The evaluation window, trace seconds.
        server_hours: Servers paid for (booting, ready, draining) x trace hours.
        under_hours: Trace hours with ready servers x capacity x target below the offered rate.
        under_share: ``under_hours`` over the window's hours.
        beyond_tolerance_hours: Trace hours with ready servers x capacity x target x (1 +
            tolerance) below the offered rate: under-provisioned past the band the HPA rule
            leaves alone.
        beyond_tolerance_share: ``beyond_tolerance_hours`` over the window's hours.
        over_capacity_hours: Trace hours with ready servers x capacity below the offered rate.
        over_capacity_share: ``over_capacity_hours`` over the window's hours.
        mean_servers: Mean servers paid for.
        peak_servers: Most servers paid for at once.
        scale_ups / scale_downs: Decisions that asked for more / fewer servers.
        forecasts: Forecasts made (whole run); ``forecast_s`` the seconds they took, when timed.
        models: Forecasts by chosen model (``none`` when there was not enough history).
        reactive_decisions: Predictive decisions made without a forecast model (whole run).
        series: Over the window: ``t_h`` (trace hours from the window's start), ``needed``
            (offered rate / capacity / target: servers needed at the target) and ``ready``
            (mean ready servers) per bucket.
    """

    mode: str
    window_start_s: float
    window_end_s: float
    server_hours: float
    under_hours: float
    under_share: float
    beyond_tolerance_hours: float
    beyond_tolerance_share: float
    over_capacity_hours: float
    over_capacity_share: float
    mean_servers: float
    peak_servers: int
    scale_ups: int
    scale_downs: int
    forecasts: int = 0
    forecast_s: float | None = None
    models: dict[str, int] = field(default_factory=dict)
    reactive_decisions: int = 0
    series: dict[str, list[float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "mode": self.mode,
            "window_start_s": self.window_start_s,
            "window_end_s": self.window_end_s,
            "server_hours": self.server_hours,
            "under_hours": self.under_hours,
            "under_share": self.under_share,
            "beyond_tolerance_hours": self.beyond_tolerance_hours,
            "beyond_tolerance_share": self.beyond_tolerance_share,
            "over_capacity_hours": self.over_capacity_hours,
            "over_capacity_share": self.over_capacity_share,
            "mean_servers": self.mean_servers,
            "peak_servers": self.peak_servers,
            "scale_ups": self.scale_ups,
            "scale_downs": self.scale_downs,
            "forecasts": self.forecasts,
            "forecast_s": self.forecast_s,
            "models": dict(self.models),
            "reactive_decisions": self.reactive_decisions,
            "series": {k: list(v) for k, v in self.series.items()},
        }


def account(
    timeline: Timeline,
    trace: Trace,
    *,
    capacity: float,
    target: float,
    window: tuple[float, float],
    tolerance: float = 0.0,
    decisions: Sequence[tuple[float, int]] = (),
    mode: str = "",
) -> ProvisioningFigures:
    """The figures of a run over ``window`` (trace seconds ``[start, end]``).

    Args:
        timeline: Servers over the run; before its first entry there are none.
        trace: The offered rate, in the trace's requests/s.
        capacity: Requests/s of the trace one ready server serves at full use (its
            capacity in simulated requests/s over the trace's ``rate_scale``).
        target: Target utilisation.
        window: Trace seconds ``(start, end)``, ``start < end``.
        tolerance: The rule's tolerance, for ``beyond_tolerance_hours``.
        decisions: ``(trace s, change in servers asked for)`` of every scaling decision.
        mode: Named in the figures.
    """
    start, end = window
    hours = (end - start) / _HOUR_S
    paid = under = beyond = over = 0.0
    peak = 0
    times = timeline.t_s
    for k, t in enumerate(times):
        a = max(t, start)
        b = min(times[k + 1] if k + 1 < len(times) else end, end)
        if b <= a:
            if start <= t <= end:
                peak = max(peak, timeline.ready[k] + timeline.booting[k] + timeline.draining[k])
            continue
        ready = timeline.ready[k]
        servers = ready + timeline.booting[k] + timeline.draining[k]
        peak = max(peak, servers)
        paid += servers * (b - a)
        under += trace.time_above(ready * capacity * target, a, b)
        beyond += trace.time_above(ready * capacity * target * (1 + tolerance), a, b)
        over += trace.time_above(ready * capacity, a, b)
    ups = sum(1 for t, change in decisions if start <= t <= end and change > 0)
    downs = sum(1 for t, change in decisions if start <= t <= end and change < 0)
    length = end - start
    return ProvisioningFigures(
        mode=mode,
        window_start_s=start,
        window_end_s=end,
        server_hours=paid / _HOUR_S,
        under_hours=under / _HOUR_S,
        under_share=under / length if length > 0 else 0.0,
        beyond_tolerance_hours=beyond / _HOUR_S,
        beyond_tolerance_share=beyond / length if length > 0 else 0.0,
        over_capacity_hours=over / _HOUR_S,
        over_capacity_share=over / length if length > 0 else 0.0,
        mean_servers=paid / length if length > 0 else 0.0,
        peak_servers=peak,
        scale_ups=ups,
        scale_downs=downs,
        series=_series(timeline, trace, capacity, target, window) if hours > 0 else {},
    )


def _series(
    timeline: Timeline, trace: Trace, capacity: float, target: float, window: tuple[float, float]
) -> dict[str, list[float]]:
    start, end = window
    width = (end - start) / SERIES_POINTS
    t_h: list[float] = []
    needed: list[float] = []
    ready: list[float] = []
    times = timeline.t_s
    k = 0
    for n in range(SERIES_POINTS):
        a, b = start + n * width, start + (n + 1) * width
        t_h.append(round((a - start) / _HOUR_S, 6))
        needed.append(trace.mean_rate(a, b) / (capacity * target))
        area = 0.0
        while k + 1 < len(times) and times[k + 1] <= a:
            k += 1
        j = k
        while j < len(times) and times[j] < b:
            lo = max(times[j], a)
            hi = min(times[j + 1] if j + 1 < len(times) else b, b)
            if hi > lo:
                area += timeline.ready[j] * (hi - lo)
            j += 1
        ready.append(area / width)
    return {"t_h": t_h, "needed": needed, "ready": ready}


class Provisioner:
    """One mode's decisions in one run, and the record of its servers.

    The simulator calls ``bind`` once (before any traffic: it returns the servers to start
    with), ``decide`` every ``interval_sim`` simulated seconds and ``record`` after every
    change; ``figures`` then accounts for the run.

    Args:
        mode: ``fixed``, ``reactive`` or ``predictive``.
        settings: The scenario's provisioning settings.
        template: The server every new one is a copy of (its id the prefix of theirs).
        curve: The trace as played.
    """

    def __init__(self, mode: str, settings: ProvisioningSettings, template: SimServer, curve: TraceCurve) -> None:
        if mode not in PROVISIONING_MODES:
            raise ValueError(f"mode: must be one of {', '.join(PROVISIONING_MODES)}, got {mode!r}")
        self.mode = mode
        self.settings = settings
        self.template = template
        self.curve = curve
        self.scale = curve.time_scale
        # Simulated requests/s one server serves at full use, and the same in trace requests/s.
        self.capacity_sim = template.capacity_per_s
        self.capacity = template.capacity_per_s / curve.rate_scale
        self.interval_sim = settings.interval_s / self.scale
        self.lead_sim = settings.lead_time_s / self.scale
        self.fixed = fixed_servers(settings, curve.trace, curve.rate_scale, self.capacity_sim)
        self._scaler: Scaler | None = None
        self._timer: Callable[[], float] | None = None
        self._times: list[float] = []
        self._ready: list[int] = []
        self._booting: list[int] = []
        self._draining: list[int] = []
        self._decisions: list[tuple[float, int]] = []
        # The forecaster's series: pool load in servers, one value per complete bucket.
        self._buckets: list[float | None] = []
        self._bucket_sum = 0.0
        self._bucket_samples = 0
        self._completed = 0  # buckets completed in the run
        self._bucket_steps = round(settings.forecast_step_s / settings.interval_s)
        self._every_buckets = round(settings.forecast_every_s / settings.forecast_step_s)
        self._forecast: Forecast | None = None
        self._forecast_at = 0.0  # trace s: the end of the last bucket the forecast read
        self.forecasts = 0
        self.forecast_s = 0.0
        self.models: Counter[str] = Counter()
        self.reactive_decisions = 0
        self.last_reason = ""

    def bind(self, clock: Clock, timer: Callable[[], float] | None = None) -> int:
        """Starts the run on the simulator's ``clock``; returns the servers to start with: the
        fixed count, or (reactive, predictive) those needed at time 0 at the target."""
        self._timer = timer
        if self.mode == "fixed":
            return self.fixed
        self._scaler = Scaler(self.settings.scaling(self.mode == "predictive"), _TraceClock(clock, self.scale))
        needed = math.ceil(self.curve.trace.rate_at(0.0) / (self.capacity * self.settings.target) - 1e-9)
        return min(self.settings.max_servers, max(self.settings.min_servers, needed))

    def decide(self, now_sim: float, asked: int, arrivals: int) -> int:
        """Servers to ask for at simulated time ``now_sim``, with ``asked`` asked for now and
        ``arrivals`` simulated arrivals since the last decision."""
        if self._scaler is None:
            return self.fixed
        now = now_sim * self.scale
        interval = self.settings.interval_s
        if self.settings.metric == "rate":
            offered = self.curve.trace.mean_rate(max(0.0, now - interval), now) / self.capacity
        else:
            offered = arrivals / self.interval_sim / self.capacity_sim
        metric = offered / max(1, asked)
        view = None
        if self.mode == "predictive":
            self._add_sample(offered, now)
            view = self._forecast_now(now)
            if view is None or view.model is None:
                self.reactive_decisions += 1
        answer = self._scaler.recommend(current=max(1, asked), metric=metric, forecast=view)
        self.last_reason = answer.reason
        desired = int(answer.desired)
        if desired != asked:
            self._decisions.append((now, desired - asked))
        return desired

    def record(self, now_sim: float, ready: int, booting: int, draining: int) -> None:
        """The servers from simulated time ``now_sim`` on."""
        t = now_sim * self.scale
        if self._times and self._times[-1] == t:
            self._ready[-1], self._booting[-1], self._draining[-1] = ready, booting, draining
            return
        self._times.append(t)
        self._ready.append(ready)
        self._booting.append(booting)
        self._draining.append(draining)

    @property
    def timeline(self) -> Timeline:
        """Every change recorded so far."""
        return Timeline(tuple(self._times), tuple(self._ready), tuple(self._booting), tuple(self._draining))

    def figures(self, window: tuple[float, float]) -> ProvisioningFigures:
        """The run's figures over ``window`` (trace seconds)."""
        figures = account(
            self.timeline,
            self.curve.trace,
            capacity=self.capacity,
            target=self.settings.target,
            window=window,
            tolerance=self.settings.tolerance,
            decisions=self._decisions,
            mode=self.mode,
        )
        return replace(
            figures,
            forecasts=self.forecasts,
            forecast_s=round(self.forecast_s, 3) if self._timer is not None and self.forecasts else None,
            models=dict(sorted(self.models.items())),
            reactive_decisions=self.reactive_decisions,
        )

    # --- the forecast ---------------------------------------------------------------------

    def _add_sample(self, offered: float, now: float) -> None:
        """Adds the last interval's load to the bucket it ends; a bucket completes every
        ``forecast_step_s``, and every ``forecast_every_s`` a new forecast is made."""
        self._bucket_sum += offered
        self._bucket_samples += 1
        if self._bucket_samples < self._bucket_steps:
            return
        self._buckets.append(self._bucket_sum / self._bucket_samples)
        self._bucket_sum, self._bucket_samples = 0.0, 0
        self._completed += 1
        keep = self.settings.history_points
        if len(self._buckets) > 2 * keep:
            del self._buckets[: len(self._buckets) - keep]
        if self._completed % self._every_buckets == 0:
            self._refresh(now)

    def _refresh(self, now: float) -> None:
        values = self._buckets[-self.settings.history_points :]
        timer = self._timer
        began = timer() if timer is not None else 0.0
        self._forecast = forecast(values, self.settings.forecasting())
        if timer is not None:
            self.forecast_s += timer() - began
        self._forecast_at = now
        self.forecasts += 1
        self.models[self._forecast.model or "none"] += 1

    def _forecast_now(self, now: float) -> Forecast | None:
        """The last forecast as seen from ``now``: offsets from now, the points of buckets
        already over dropped (the bucket holding now at offset 0)."""
        made = self._forecast
        if made is None or made.model is None:
            return made
        return shifted(made, now - self._forecast_at, self.settings.forecast_step_s)


def shifted(made: Forecast, age_s: float, step_s: float) -> Forecast:
    """``made`` (whose first point is the bucket right after its last input) seen ``age_s``
    later: each point's bucket ``[offset - step, offset)`` measured from now, the buckets
    already over left out, the one holding now at offset 0."""
    points = []
    for point in made.points:
        start = point.offset_s - step_s - age_s  # the bucket's start, from now
        if start + step_s > 0:
            points.append(Prediction(max(0.0, start), point.value, point.lower, point.upper))
    return replace(made, points=tuple(points))
