"""Batch sizing ahead of a forecast load: an Operation told a LoadOutlook, on a fake clock."""

from __future__ import annotations

import math
from typing import Any

import pytest

from loadwarden.policy import LoadReading, Operation, OperationSettings
from loadwarden.policy.batching import LoadOutlook


def op(**kw: Any) -> Operation:
    values: dict[str, Any] = {"name": "import", "min_batch_size": 5, "max_batch_size": 100, "default_batch_size": 25}
    return Operation(OperationSettings(**(values | kw)))


def outlook(points: dict[float, float], lead_s: float = 240.0) -> LoadOutlook:
    return LoadOutlook(tuple(points), tuple(points.values()), lead_s)


def test_a_forecast_peak_shrinks_the_batch_before_the_measured_load_rises() -> None:
    operation = op(cooldown_ms=10_000)
    assert operation.decide(0.0, 1_000.0, LoadReading(30.0)).size == 100
    operation.look_ahead(outlook({240.0: 40.0, 300.0: 86.0, 360.0: 84.0}))
    early = operation.decide(50.0, 1_050.0, LoadReading(30.0))  # (50, 290] holds 40: sized as 30 is
    assert early.size == 100 and "forecast" not in early.reason
    answer = operation.decide(60.0, 1_060.0, LoadReading(30.0))  # (60, 300] holds the peak
    assert answer.size == 5 and answer.level == "low" and answer.load_score == 30.0
    assert answer.reason == "forecast load 86.0 in 240 s >= high threshold 80: min size (measured load 30.0)"
    (_, event) = operation.events
    assert (event.previous_size, event.new_size, event.forecast, event.load_score) == (100, 5, True, 86.0)
    assert event.at_wall == 1_060.0 and event.reason == answer.reason
    assert (operation.adjustments_total, operation.forecast_adjustments_total) == (2, 1)


def test_the_window_slides_so_a_forecast_plateau_keeps_the_batch_small() -> None:
    operation = op()
    operation.look_ahead(outlook({300.0: 86.0, 360.0: 84.0, 420.0: 90.0, 480.0: 30.0}))
    assert operation.decide(100.0, 0.0, LoadReading(30.0)).size == 5
    held = operation.decide(400.0, 0.0, LoadReading(30.0))  # (400, 640]: 90 at 420, 30 at 480
    assert held.size == 5 and held.reason.startswith("forecast load 90.0 in 20 s")
    after = operation.decide(430.0, 0.0, LoadReading(30.0))  # only 30 at 480 is ahead
    assert after.size == 100 and after.reason == "load 30.0 <= low threshold 50: max size"


def test_cooldown_and_min_step_hold_a_forecast_move_too() -> None:
    operation = op(cooldown_ms=10_000, min_step=10)
    operation.decide(0.0, 0.0, LoadReading(30.0))  # 25 -> 100
    operation.look_ahead(outlook({10.0: 95.0}, lead_s=30.0))
    held = operation.decide(5.0, 0.0, LoadReading(30.0))
    assert held.size == 100
    assert held.reason.startswith("forecast load 95.0 in 5.0 s >= high threshold 80: min size (measured load 30.0)")
    assert "cooldown: holding 100 for 5000 ms more" in held.reason
    operation.look_ahead(outlook({20.0: 52.0}, lead_s=30.0))  # 100 - 2/30 x 95 = 93.7 -> 94: a step of 6
    small = operation.decide(12.0, 0.0, LoadReading(30.0))
    assert small.size == 100 and small.reason.startswith("forecast load 52.0 in 8.0 s between thresholds")
    assert "smaller than min_step 10" in small.reason
    assert operation.forecast_adjustments_total == 0


def test_an_expired_or_lower_forecast_gives_the_measured_load_back() -> None:
    operation = op()
    operation.look_ahead(outlook({60.0: 90.0}))
    assert operation.decide(0.0, 0.0, LoadReading(40.0)).size == 5
    back = operation.decide(60.0, 0.0, LoadReading(40.0))  # the point is not ahead any more
    assert back.size == 100 and "forecast" not in back.reason
    assert operation.outlook is None  # expired: dropped
    operation.look_ahead(outlook({120.0: 90.0}))
    assert operation.decide(61.0, 0.0, LoadReading(40.0)).size == 5
    operation.look_ahead(outlook({120.0: 35.0}))  # the next refresh forecasts less than the measured load
    assert operation.decide(62.0, 0.0, LoadReading(40.0)).size == 100
    operation.look_ahead(outlook({120.0: 90.0}))
    operation.look_ahead(None)  # no model: the measured load alone
    assert operation.decide(63.0, 0.0, LoadReading(40.0)).size == 100
    assert [e.forecast for e in operation.events] == [True, False, True, False]


def test_a_forecast_never_makes_a_batch_bigger() -> None:
    operation = op()
    operation.look_ahead(outlook({60.0: 10.0}))
    answer = operation.decide(0.0, 0.0, LoadReading(90.0))
    assert answer.size == 5 and answer.reason == "load 90.0 >= high threshold 80: min size"


def test_an_unknown_load_still_answers_the_default_and_latency_target_ignores_forecasts() -> None:
    operation = op()
    operation.look_ahead(outlook({60.0: 90.0}))
    assert operation.decide(0.0, 0.0, LoadReading(None, "stale")).fallback
    latency = op(mode="latency_target", target_latency_ms=100.0)
    latency.look_ahead(outlook({60.0: 90.0}))
    assert latency.decide(0.0, 0.0, LoadReading(None, "off")).size == 25
    assert latency.forecast_adjustments_total == 0


def test_the_peak_is_the_highest_point_ahead_within_the_lead_earliest_first() -> None:
    ahead = LoadOutlook((10.0, 20.0, 30.0, 40.0), (50.0, 70.0, 70.0, 99.0), lead_s=25.0)
    assert ahead.peak(5.0) == (70.0, 20.0)  # (5, 30]: 30 is in, 40 is not; 20 wins the tie
    assert ahead.peak(10.0) == (70.0, 20.0)  # a point at now is not ahead
    assert ahead.peak(15.0) == (99.0, 40.0)
    assert ahead.peak(40.0) is None and ahead.expired(40.0) and not ahead.expired(39.9)
    assert LoadOutlook((1.0,), (140.0,), 1.0).scores == (100.0,)  # a load score is a percentage
    assert LoadOutlook((1.0,), (-3.0,), 1.0).scores == (0.0,)
    assert LoadOutlook((), (), 1.0).expired(0.0)


@pytest.mark.parametrize(
    ("times", "scores", "extra", "field"),
    [
        ((1.0, 2.0), (1.0,), {}, "times"),
        ((2.0, 1.0), (1.0, 1.0), {}, "times"),
        ((1.0, 1.0), (1.0, 1.0), {}, "times"),
        ((math.nan,), (1.0,), {}, "times"),
        ((1.0,), (math.inf,), {}, "scores"),
        ((1.0,), (1.0,), {"lead_s": -1.0}, "lead_s"),
        ((1.0,), (1.0,), {"lead_s": math.inf}, "lead_s"),
        ((1.0,), (1.0,), {"step_s": -1.0}, "step_s"),
        ((1.0,), (1.0,), {"step_s": math.nan}, "step_s"),
        ((1.0,), (1.0,), {"lows": (0.5, 0.5)}, "lows"),
        ((1.0,), (1.0,), {"lows": (math.nan,)}, "lows"),
        ((1.0,), (10.0,), {"lows": (20.0,)}, "lows"),  # a lower bound above its point
        (tuple(float(i) for i in range(10_001)), (1.0,) * 10_001, {}, "times"),
    ],
)
def test_a_bad_outlook_is_refused_naming_its_field(
    times: tuple[float, ...], scores: tuple[float, ...], extra: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        LoadOutlook(times, scores, **({"lead_s": 1.0} | extra))


def test_a_point_speaks_for_the_step_it_ends() -> None:
    ahead = LoadOutlook((10.0, 20.0, 30.0), (40.0, 90.0, 60.0), lead_s=2.0, step_s=10.0)
    assert ahead.peak(7.0) == (40.0, 10.0)  # (7, 9] is in the step (0, 10]
    assert ahead.peak(8.5) == (90.0, 20.0)  # (8.5, 10.5] reaches into (10, 20]
    assert ahead.peak(8.0) == (40.0, 10.0)  # (8, 10] ends where (10, 20] starts: not in it
    assert ahead.peak(25.0) == (60.0, 30.0) and ahead.peak(30.0) is None


def test_noise_within_the_interval_moves_nothing_and_a_sure_rise_does() -> None:
    operation = op()
    assert operation.decide(0.0, 0.0, LoadReading(45.0)).size == 100
    # The point forecast is above the measured load, its lower bound is not: within the error.
    noisy = LoadOutlook((10.0, 20.0), (60.0, 58.0), lead_s=30.0, lows=(40.0, 44.0), step_s=10.0)
    operation.look_ahead(noisy)
    assert operation.decide(1.0, 0.0, LoadReading(45.0)).size == 100
    sure = LoadOutlook((10.0, 20.0), (60.0, 95.0), lead_s=30.0, lows=(40.0, 85.0), step_s=10.0)
    operation.look_ahead(sure)
    answer = operation.decide(2.0, 0.0, LoadReading(45.0))
    assert answer.size == 5 and answer.reason.startswith("forecast load 95.0 in 18 s >= high threshold 80")


def test_the_default_lead_is_the_recent_batch_duration() -> None:
    operation = op()
    operation.decide(0.0, 0.0, LoadReading(30.0))
    operation.look_ahead(LoadOutlook((11.0, 12.0, 13.0), (30.0, 30.0, 95.0), lead_s=0.0, step_s=1.0))
    assert operation.decide(10.5, 0.0, LoadReading(30.0)).size == 100  # no batch yet: a step, (10.5, 11.5]
    operation.observe(100, 2_000.0, True)
    assert operation.batch_duration_s == 2.0
    answer = operation.decide(10.5, 0.0, LoadReading(30.0))  # a batch started now ends at 12.5: in (12, 13]
    assert answer.size == 5 and answer.reason.startswith("forecast load 95.0 in 2.5 s")
    operation.observe(100, 1_000.0, True)  # recent durations, averaged: 2 + 0.2 x (1 - 2)
    assert operation.batch_duration_s == pytest.approx(1.8)
    operation.observe(100, math.nan, False)  # a duration that is no duration is not averaged
    assert operation.batch_duration_s == pytest.approx(1.8)
