"""Scaling recommendations: HPA's rule, its stabilisation windows on an injected clock, and
provisioning ahead of a forecast."""

from __future__ import annotations

import math
from typing import Any

import pytest

from loadwarden.policy import InvalidArgument, ManualClock
from loadwarden.policy import scaling as scaling_module
from loadwarden.policy.forecast import Forecast, ForecastSettings, Prediction, forecast
from loadwarden.policy.scaling import LeadTimes, Recommendation, Scaler, ScalingSettings


def scaler(**changes: Any) -> tuple[Scaler, ManualClock]:
    clock = ManualClock()
    return Scaler(ScalingSettings(**{"target": 0.7, **changes}), clock), clock


def ramp(values: list[float], step_s: float = 60.0) -> Forecast:
    points = tuple(Prediction(step_s * k, v, 0.9 * v, 1.2 * v) for k, v in enumerate(values, 1))
    return Forecast("holt", "", points, (), 100)


def test_public_names() -> None:
    assert sorted(scaling_module.__all__) == ["LeadTimes", "Recommendation", "Scaler", "ScalingSettings"]


def test_within_tolerance_nothing_changes() -> None:
    s, _ = scaler()
    r = s.recommend(current=10, metric=0.75)
    assert r == Recommendation(10, 10, None, 10, 0.75, None, 300.0, "within tolerance: 0.75 per server against 0.70")
    assert s.recommend(current=10, metric=0.63).desired == 10  # 0.9 of the target: on the edge, still within


def test_the_ceil_rule() -> None:
    s, _ = scaler()
    r = s.recommend(current=10, metric=0.91)
    assert (r.desired, r.reactive, r.reason) == (13, 13, "reactive: 0.91 per server against 0.70 -> 13")
    s, _ = scaler()
    assert s.recommend(current=10, metric=0.98).desired == 14  # 14.000000000000002 in floats
    s, _ = scaler()
    assert s.recommend(current=10, metric=0.77).desired == 10  # 1.1000000000000003: on the edge, within


def test_scale_from_zero_reads_the_metric_as_the_total() -> None:
    s, _ = scaler()
    r = s.recommend(current=0, metric=5.0)
    assert (r.desired, r.reason) == (8, "reactive: no servers, demand 5.00 against 0.70 per server -> 8")


def test_min_and_max_clamp() -> None:
    s, _ = scaler(max_servers=12)
    r = s.recommend(current=10, metric=1.4)
    assert (r.desired, r.reactive) == (12, 20)
    assert r.reason == "reactive: 1.40 per server against 0.70 -> 20; clamped to max_servers 12"
    s, _ = scaler(min_servers=3, scale_down_window_s=0.0)
    assert s.recommend(current=4, metric=0.0).desired == 3


def test_a_dip_inside_the_scale_down_window_holds_then_scales_down() -> None:
    s, clock = scaler()
    assert s.recommend(current=10, metric=0.7).desired == 10
    clock.advance(60)
    r = s.recommend(current=10, metric=0.35)
    assert (r.desired, r.reactive) == (10, 5)
    assert r.reason == "reactive: 0.35 per server against 0.70 -> 5; held at 10 by the scale-down window (300 s)"
    clock.advance(239)  # 299 s after the recommendation of 10
    assert s.recommend(current=10, metric=0.35).desired == 10
    clock.advance(1)  # 300 s: HPA keeps only those made strictly after now - window
    assert s.recommend(current=10, metric=0.35).desired == 5


def test_the_scale_down_window_takes_the_highest_recent_recommendation() -> None:
    s, clock = scaler()
    for metric in (0.7, 0.56, 0.42, 0.28):  # recommendations 10, 8, 6, 4, one a minute
        s.recommend(current=10, metric=metric)
        clock.advance(60)
    clock.advance(60)  # the 10 is 300 s old now, the 8 240 s
    assert s.recommend(current=10, metric=0.28).desired == 8


def test_the_scale_up_window_takes_the_lowest_recent_recommendation() -> None:
    s, clock = scaler(scale_up_window_s=120.0)
    assert s.recommend(current=10, metric=0.7).desired == 10
    clock.advance(30)
    r = s.recommend(current=10, metric=1.4)
    assert (r.desired, r.reactive) == (10, 20)
    assert r.reason.endswith("; held at 10 by the scale-up window (120 s)")
    for _ in range(2):
        clock.advance(30)
        assert s.recommend(current=10, metric=1.4).desired == 10
    clock.advance(29)  # 119 s after the 10
    assert s.recommend(current=10, metric=1.4).desired == 10
    clock.advance(1)  # 120 s: only 20s are within the window
    assert s.recommend(current=10, metric=1.4).desired == 20


def test_scaling_up_is_immediate_with_no_up_window() -> None:
    s, clock = scaler()
    s.recommend(current=10, metric=0.7)
    clock.advance(15)
    assert s.recommend(current=10, metric=1.4).desired == 20


def test_an_unknown_metric_holds_and_records_nothing() -> None:
    s, clock = scaler()
    s.recommend(current=10, metric=0.7)
    clock.advance(60)
    for metric in (None, math.nan, math.inf):
        r = s.recommend(current=10, metric=metric)
        assert (r.desired, r.metric, r.reason) == (10, None, "metric unknown; holding 10")
    clock.advance(300)
    assert s.recommend(current=10, metric=0.35).desired == 5  # no unknown-metric 10 in the window


def test_predictive_provisions_for_the_peak_within_the_lead_time() -> None:
    s, _ = scaler(predictive=True, lead_time_s=240.0)
    r = s.recommend(current=10, metric=0.7, forecast=ramp([7.0, 8.0, 9.0, 10.5, 14.0]))
    assert (r.desired, r.reactive, r.predictive, r.forecast_peak) == (15, 10, 15, 10.5)
    assert r.reason == "predictive: peak 10.5 in 240 s -> 15 (reactive 10)"


def test_predictive_never_provisions_below_reactive() -> None:
    s, _ = scaler(predictive=True)
    r = s.recommend(current=10, metric=0.91, forecast=ramp([3.0, 2.0]))
    assert (r.desired, r.predictive) == (13, 5)
    assert r.reason == "reactive: 0.91 per server against 0.70 -> 13 (predictive: peak 3 in 60 s -> 5)"


def test_the_upper_bound_and_a_lead_time_shorter_than_a_step() -> None:
    s, _ = scaler(predictive=True, lead_time_s=30.0, forecast_bound="upper")
    r = s.recommend(current=10, metric=0.7, forecast=ramp([10.0, 20.0]))
    assert (r.predictive, r.forecast_peak) == (18, 12.0)  # the first point's upper bound, 12 / 0.7


def test_no_usable_forecast_falls_back_to_the_reactive_rule() -> None:
    s, _ = scaler(predictive=True)
    short = forecast([1.0] * 12, ForecastSettings())
    r = s.recommend(current=10, metric=0.91, forecast=short)
    assert (r.desired, r.predictive) == (13, None)
    assert r.reason == (
        "no forecast: history has 12 usable points; 30 needed; "
        "reactive rule: reactive: 0.91 per server against 0.70 -> 13"
    )
    assert s.recommend(current=10, metric=0.91).reason.startswith("no forecast: none given; reactive rule")


def test_predictive_scales_ahead_of_a_forecast_ramp() -> None:
    """A pool's total demand rises every morning; at 07:40 the forecast sees 08:00 coming."""
    day = 1440

    def demand(minute: int) -> float:
        hour = (minute % day) / 60.0
        return 2.0 + 12.0 * max(0.0, min(1.0, (hour - 8.0) / 2.0))  # 2 at night, ramp 08:00-10:00

    history = [demand(i) for i in range(3 * day + 7 * 60 + 40)]
    servers = 3
    predicted = forecast(history, ForecastSettings(step_s=60.0, horizon_s=1800.0, seasons_s=(86_400.0,)))
    assert predicted.model is not None
    reactive_only, _ = scaler()
    ahead, _ = scaler(predictive=True, lead_time_s=1800.0)
    metric = history[-1] / servers
    assert reactive_only.recommend(current=servers, metric=metric).desired == 3
    r = ahead.recommend(current=servers, metric=metric, forecast=predicted)
    assert r.forecast_peak == pytest.approx(demand(8 * 60 + 10), rel=0.05)  # 30 minutes ahead
    assert r.desired == r.predictive == math.ceil(demand(8 * 60 + 10) / 0.7 - 1e-9)
    assert r.desired > 3


def test_a_learned_lead_time_replaces_the_configured_one() -> None:
    s, _ = scaler(predictive=True, lead_time_s=60.0)
    assert s.recommend(current=10, metric=0.7, forecast=ramp([7.0, 7.0, 14.0])).predictive == 10
    for seconds in (100.0, 150.0, 190.0):
        s.lead_times.observe(seconds)
    r = s.recommend(current=10, metric=0.7, forecast=ramp([7.0, 7.0, 14.0]))
    assert (r.lead_time_s, r.predictive) == (190.0, 20)


def test_lead_times_estimate_a_high_quantile_of_the_newest() -> None:
    lead = LeadTimes(capacity=10)
    assert lead.estimate(42.0) == 42.0
    for bad in (math.nan, math.inf, -1.0):
        lead.observe(bad)
    assert len(lead) == 0
    for seconds in range(1, 21):  # only 11..20 are kept
        lead.observe(float(seconds))
    assert len(lead) == 10
    assert lead.estimate(42.0) == 19.0  # the 9th of 10
    assert LeadTimes(quantile=1.0).estimate(5.0) == 5.0
    with pytest.raises(InvalidArgument) as raised:
        LeadTimes(capacity=0)
    assert raised.value.field == "capacity"
    with pytest.raises(InvalidArgument):
        LeadTimes(quantile=0.0)


def test_the_history_is_bounded() -> None:
    s, clock = scaler(scale_down_window_s=86_400.0, scale_up_window_s=86_400.0, max_servers=1_000_000)
    for i in range(20_000):
        s.recommend(current=500, metric=0.7 * (1 + i % 7) / 7)  # recommendations cycle 72..500
        clock.advance(1)
    assert len(s._down._queue) <= 7 and len(s._up._queue) <= 7
    for i in range(10_000):  # strictly rising: a monotone queue keeps every one, up to its cap
        s.recommend(current=500, metric=0.7 * (1 + i / 100))
        clock.advance(1)
    assert len(s._up._queue) == 4096


def test_current_must_be_a_count() -> None:
    s, _ = scaler()
    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidArgument) as raised:
            s.recommend(current=bad, metric=0.5)  # type: ignore[arg-type]  # what a caller might send
        assert raised.value.field == "current"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"target": 0.0}, "target"),
        ({"target": math.inf}, "target"),
        ({"tolerance": 1.0}, "tolerance"),
        ({"tolerance": -0.1}, "tolerance"),
        ({"scale_up_window_s": -1.0}, "scale_up_window_s"),
        ({"scale_down_window_s": math.nan}, "scale_down_window_s"),
        ({"min_servers": -1}, "min_servers"),
        ({"min_servers": 2.0}, "min_servers"),
        ({"min_servers": 5, "max_servers": 4}, "max_servers"),
        ({"max_servers": 0, "min_servers": 0}, "max_servers"),
        ({"lead_time_s": 0.0}, "lead_time_s"),
        ({"predictive": "yes"}, "predictive"),
        ({"forecast_bound": "lower"}, "forecast_bound"),
    ],
)
def test_settings_are_validated_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        ScalingSettings(**{"target": 0.7, **changes})
    assert raised.value.field == field
