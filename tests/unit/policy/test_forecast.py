"""Forecasts: each model on a series it should fit, the choice by backtest, the intervals."""

from __future__ import annotations

import math
import random

import pytest

from loadwarden.policy import forecast as forecast_module
from loadwarden.policy.forecast import Forecast, ForecastSettings, ModelScore, Prediction, forecast
from loadwarden.policy.forecast._smoothing import Params, forecasts, initial_state

DAY = 288  # 5-minute steps a day
FIVE_MIN = ForecastSettings(step_s=300.0, horizon_s=900.0, seasons_s=(86_400.0,))


def sinusoid(days: float, trend: float = 0.0) -> list[float]:
    return [100.0 + 50.0 * math.sin(2 * math.pi * i / DAY) + trend * i for i in range(int(days * DAY))]


def ar_seasonal(days: int, seed: int, phi: float = 0.9, sigma: float = 0.08) -> list[float]:
    """A daily curve times e^x, x an AR(1): deviations that persist, as real traffic's do."""
    rng = random.Random(seed)
    x = 0.0
    out = []
    for i in range(days * DAY):
        x = phi * x + rng.gauss(0.0, sigma * math.sqrt(1 - phi * phi))
        out.append((60.0 + 40.0 * math.sin(2 * math.pi * i / DAY)) * math.exp(x + rng.gauss(0.0, 0.02)))
    return out


def score(result: Forecast, model: str) -> ModelScore:
    return next(s for s in result.scores if s.model == model)


def test_public_names() -> None:
    assert sorted(forecast_module.__all__) == ["Forecast", "ForecastSettings", "ModelScore", "Prediction", "forecast"]


def test_holt_winters_forecasts_a_trending_daily_sinusoid_nearly_exactly() -> None:
    values = sinusoid(4, trend=0.01)
    result = forecast(values, FIVE_MIN)
    assert result.model == "holt_winters/86400"
    assert score(result, "holt_winters/86400").mape < 1e-3
    # Seasonal naive misses the trend a day's worth (2.88), EWMA and Holt the curve.
    assert score(result, "seasonal_naive/86400").mape > 0.01
    n = len(values)
    for point in result.points:
        step = round(point.offset_s / 300.0)
        truth = 100.0 + 50.0 * math.sin(2 * math.pi * (n - 1 + step) / DAY) + 0.01 * (n - 1 + step)
        assert point.value == pytest.approx(truth, rel=1e-3)


def test_seasonal_naive_and_holt_winters_both_fit_a_pure_sinusoid() -> None:
    result = forecast(sinusoid(3), FIVE_MIN)
    assert score(result, "seasonal_naive/86400").mape < 1e-9
    assert score(result, "holt_winters/86400").mape < 1e-3
    assert result.model == "seasonal_naive/86400"  # the simpler of two exact models wins a tie


def test_holt_forecasts_a_linear_trend() -> None:
    values = [10.0 + 0.5 * i for i in range(200)]
    result = forecast(values, ForecastSettings(step_s=60.0, horizon_s=600.0, seasons_s=()))
    assert result.model == "holt"
    assert score(result, "holt").mape < 1e-3
    assert score(result, "ewma").mape > 0.01  # the level lags the trend
    assert [p.offset_s for p in result.points] == [60.0 * k for k in range(1, 11)]
    assert result.points[-1].value == pytest.approx(10.0 + 0.5 * 209, rel=1e-3)


def test_every_model_forecasts_a_constant_exactly() -> None:
    result = forecast([42.0] * (10 * DAY), ForecastSettings(step_s=300.0, horizon_s=900.0))
    assert {s.model for s in result.scores} == {
        "seasonal_naive/86400",
        "seasonal_naive/604800",
        "ewma",
        "holt",
        "holt_winters/86400",
    }  # a weekly Holt-Winters needs two weeks
    assert all(s.mape < 1e-9 for s in result.scores)
    assert result.points == tuple(Prediction(300.0 * k, 42.0, 42.0, 42.0) for k in (1, 2, 3))
    assert result.reason == ""


def test_the_backtest_chooses_holt_winters_on_noisy_seasonal_data() -> None:
    result = forecast(ar_seasonal(10, seed=1), FIVE_MIN)
    assert result.model is not None and result.model.startswith("holt_winters")
    mapes = [s.mape for s in result.scores]
    assert mapes == sorted(mapes)
    assert result.scores[0].mape < 0.6 * score(result, "seasonal_naive/86400").mape
    assert all(s.origins == 10 * DAY // 4 for s in result.scores)


def test_the_backtest_prefers_a_level_to_seasonal_naive_on_a_random_walk() -> None:
    rng = random.Random(7)
    values = [1000.0]
    for _ in range(3 * DAY):
        values.append(max(1.0, values[-1] + rng.gauss(0.0, 10.0)))
    result = forecast(values, FIVE_MIN)
    assert result.model in {"ewma", "holt", "holt_winters/86400"}
    assert score(result, "ewma").mape < score(result, "seasonal_naive/86400").mape


def test_intervals_cover_about_their_nominal_share_out_of_sample() -> None:
    values = ar_seasonal(7, seed=2)
    result = forecast(values, FIVE_MIN)
    for s in result.scores:
        if not s.model.startswith("seasonal_naive"):  # its errors are autocorrelated a day long
            assert s.coverage == pytest.approx(0.8, abs=0.05), s
    # Walk forward: forecast from 30 origins over the last two days, count the actuals inside.
    inside = total = 0
    for origin in range(len(values) - 2 * DAY, len(values) - 3, 2 * DAY // 30):
        walk = forecast(values[: origin + 1], FIVE_MIN)
        for point in walk.points:
            actual = values[origin + round(point.offset_s / 300.0)]
            inside += point.lower <= actual <= point.upper
            total += 1
    assert total == 93
    assert inside / total == pytest.approx(0.8, abs=0.1)


def test_a_higher_coverage_gives_wider_intervals() -> None:
    values = ar_seasonal(6, seed=3)
    narrow = forecast(values, ForecastSettings(step_s=300.0, seasons_s=(86_400.0,), coverage=0.5))
    wide = forecast(values, ForecastSettings(step_s=300.0, seasons_s=(86_400.0,), coverage=0.95))
    assert narrow.model == wide.model
    for a, b in zip(narrow.points, wide.points, strict=True):
        assert b.lower <= a.lower <= a.value <= a.upper <= b.upper
        assert b.upper - b.lower > a.upper - a.lower


def test_a_backtest_forecast_reads_nothing_after_its_origin() -> None:
    y = [v / 150.0 for v in sinusoid(3, trend=0.02)]
    origins = range(600, 700, 10)
    state = initial_state(y, DAY, 576, width=3)
    params = Params(0.5, 0.05, 0.1, 0.98, 3)
    before, _ = forecasts(y, DAY, params, state, 3, origins)
    changed = y[:651] + [2.0 * v for v in y[651:]]
    after, _ = forecasts(changed, DAY, params, state, 3, origins)
    assert before[:6] == after[:6]  # origins 600..650 see y[:651] only
    assert before[6:] != after[6:]


def test_peak_is_the_highest_point_within_the_offset() -> None:
    points = tuple(Prediction(60.0 * k, v, v, v) for k, v in enumerate([5.0, 9.0, 7.0, 12.0], 1))
    result = Forecast("ewma", "", points, (), 100)
    assert result.peak(180.0) == points[1]
    assert result.peak(240.0) == points[3]
    assert result.peak(30.0) is None
    assert Forecast(None, "no", (), (), 0).peak(1e9) is None
