"""Forecasts from bad input: no history, gaps, garbage each give a clear answer, never an
exception and never a NaN; bad settings are rejected naming the field."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from loadwarden.policy import InvalidArgument
from loadwarden.policy.forecast import Forecast, ForecastSettings, forecast

DAY = 288
FIVE_MIN = ForecastSettings(step_s=300.0, horizon_s=900.0, seasons_s=(86_400.0,))


def daily(days: float) -> list[float | None]:
    return [100.0 + 50.0 * math.sin(2 * math.pi * i / DAY) for i in range(int(days * DAY))]


def assert_sound(result: Forecast, settings: ForecastSettings = FIVE_MIN) -> None:
    """Whatever the input: a model and points, or no model, a reason and no points; all finite."""
    if result.model is None:
        assert result.reason and result.points == ()
        return
    assert result.reason == ""
    assert [p.offset_s for p in result.points] == [settings.step_s * k for k in range(1, settings.horizon_steps + 1)]
    for p in result.points:
        assert all(math.isfinite(v) for v in (p.value, p.lower, p.upper)), p
        assert 0.0 <= p.lower <= p.value <= p.upper, p
    for s in result.scores:
        assert math.isfinite(s.mape) and 0.0 <= s.coverage <= 1.0 and s.origins > 0, s


def test_no_history() -> None:
    result = forecast([], FIVE_MIN)
    assert result == Forecast(None, "history has 0 usable points; 30 needed", (), (), 0)


def test_one_point() -> None:
    result = forecast([5.0], FIVE_MIN)
    assert (result.model, result.reason, result.history_points) == (None, "history has 1 usable point; 30 needed", 1)


def test_too_few_points_after_dropping_gaps() -> None:
    values: list[float | None] = [1.0, None, float("nan"), 2.0] * 10
    result = forecast(values, FIVE_MIN)
    assert result.reason == "history has 20 usable points; 30 needed"


def test_too_short_to_backtest_the_horizon() -> None:
    result = forecast([1.0] * 40, ForecastSettings(step_s=60.0, horizon_s=3600.0))
    assert result.model is None
    assert result.reason.startswith("history has 40 usable points, too few to backtest a forecast 3600 s (60 steps)")


def test_short_gaps_are_filled_linearly() -> None:
    values = daily(3)
    for i in (100, 101, 102, 500, 700):  # 15 minutes and two single points
        values[i] = None
    result = forecast(values, FIVE_MIN)
    assert_sound(result)
    assert result.model == "seasonal_naive/86400" and result.history_points == 3 * DAY - 5
    assert result.note == "5 points in 3 gap(s) filled linearly"
    assert result.scores[0].mape < 1e-3


def test_a_long_gap_cuts_the_history_when_enough_follows_it() -> None:
    values = daily(3)
    values[200:300] = [None] * 100
    result = forecast(values, FIVE_MIN)
    assert_sound(result)
    assert result.history_points == 3 * DAY - 300
    assert result.note == f"a gap of 30000 s cut the history; the {3 * DAY - 300} points after it are used"
    # Less than two days are left: no Holt-Winters.
    assert {s.model for s in result.scores} == {"seasonal_naive/86400", "ewma", "holt"}


def test_a_long_gap_near_the_end_is_filled_when_too_little_follows_it() -> None:
    values = daily(3)
    values[-40:-20] = [None] * 20
    result = forecast(values, FIVE_MIN)
    assert_sound(result)
    assert result.history_points == 3 * DAY - 20
    assert result.note == (
        "20 points in 1 gap(s) filled linearly; "
        "1 longer than max_gap_s, but too few points follow to cut the history there"
    )


def test_missing_newest_points_shift_the_forecast_not_its_offsets() -> None:
    values = daily(3)
    values[-2:] = [None, None]
    result = forecast(values, FIVE_MIN)
    assert_sound(result)
    n = len(values)
    for p in result.points:  # still measured from the last input point, "now"
        truth = 100.0 + 50.0 * math.sin(2 * math.pi * (n - 1 + p.offset_s / 300.0) / DAY)
        assert p.value == pytest.approx(truth, rel=1e-6)


def test_no_forecast_from_data_older_than_max_gap() -> None:
    values = daily(3)
    values[-4:] = [None] * 4
    result = forecast(values, FIVE_MIN)
    assert result.model is None and result.points == ()
    assert result.reason == (
        "the newest 4 points (1200 s) are missing, longer than max_gap_s 900 s; "
        "the newest usable point is too old to forecast from"
    )


def test_all_zero() -> None:
    result = forecast([0.0] * 400, FIVE_MIN)
    assert_sound(result)
    assert result.model == "seasonal_naive/86400" and result.note == "every value is 0"  # the first of equals
    assert all(p.value == p.lower == p.upper == 0.0 for p in result.points)
    assert all(s.mape == 0.0 for s in result.scores)


def test_negative_values_count_as_zero() -> None:
    values = [-3.0] * 10 + [7.0] * 300
    result = forecast(values, FIVE_MIN)
    assert_sound(result)
    assert result.note == "10 points below 0 counted as 0"
    assert all(p.value == pytest.approx(7.0) for p in result.points)


@pytest.mark.parametrize(
    "values",
    [
        [float("nan")] * 100,
        [float("inf"), float("-inf"), None] * 50,
        [1e308, 0.0, 1.7e308, 5.0] * 100,
        [(-1) ** i * 1e300 for i in range(500)],
        [random.Random(i).uniform(-1e6, 1e6) for i in range(1000)],
        [random.Random(1).lognormvariate(0, 5) for _ in range(2000)],
        [1e-300 * (i % 3) for i in range(300)],
        [1.0, 1e300] * 200,
    ],
    ids=["nan", "infinities", "near-max", "alternating", "uniform", "heavy-tailed", "tiny", "spikes"],
)
def test_garbage_gives_a_clear_answer(values: list[float | None]) -> None:
    assert_sound(forecast(values, FIVE_MIN))
    assert_sound(forecast(values, ForecastSettings()), ForecastSettings())


def test_things_that_are_not_numbers_are_gaps() -> None:
    values: list[Any] = [1.0] * 100
    values[50] = "12"  # float() takes it: a number
    values[60] = "garbage"
    values[70] = True
    values[80] = object()
    result = forecast(values, FIVE_MIN)
    assert_sound(result)
    assert result.note == "3 points in 3 gap(s) filled linearly"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"step_s": 0.0}, "step_s"),
        ({"step_s": float("nan")}, "step_s"),
        ({"horizon_s": 30.0}, "horizon_s"),
        ({"horizon_s": float("inf")}, "horizon_s"),
        ({"horizon_s": 60.0 * 10_001}, "horizon_s"),
        ({"coverage": 0.4}, "coverage"),
        ({"coverage": 1.0}, "coverage"),
        ({"seasons_s": (86_400.0, 90.0)}, "seasons_s"),
        ({"seasons_s": (60.0,)}, "seasons_s"),
        ({"seasons_s": (3600.0, 3600.0)}, "seasons_s"),
        ({"seasons_s": (1.0e4,) * 5}, "seasons_s"),
        ({"seasons_s": 86_400.0}, "seasons_s"),
        ({"min_points": 1}, "min_points"),
        ({"min_points": 30.0}, "min_points"),
        ({"min_points": True}, "min_points"),
        ({"max_points": 29}, "max_points"),
        ({"max_gap_s": -1.0}, "max_gap_s"),
        ({"backtest_s": 0.0}, "backtest_s"),
        ({"backtest_origins": 0}, "backtest_origins"),
    ],
)
def test_settings_are_validated_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        ForecastSettings(**changes)
    assert raised.value.field == field


def test_a_season_that_is_not_a_whole_multiple_says_which() -> None:
    with pytest.raises(InvalidArgument, match=r"seasons_s: \[1\] = 150 s is not a whole multiple of step_s 60 s"):
        ForecastSettings(seasons_s=(86_400.0, 150.0))


def test_seasons_given_as_a_list_are_kept_as_a_tuple() -> None:
    settings = ForecastSettings(step_s=300.0, seasons_s=[86_400, 604_800])  # type: ignore[arg-type]  # a caller's list
    assert settings.seasons_s == (86_400.0, 604_800.0)
    assert ForecastSettings(step_s=300.0, horizon_s=1000.0).horizon_steps == 3
