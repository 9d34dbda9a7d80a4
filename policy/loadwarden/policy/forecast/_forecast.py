"""``forecast()``: clean the series, backtest every candidate, forecast with the best."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

from ._backtest import ZERO, Scored, interval, score
from ._models import Model, Plan, ewma, holt, holt_winters, seasonal_naive
from ._series import Series, prepare
from ._types import Forecast, ForecastSettings, ModelScore, Prediction

_DEFAULT = ForecastSettings()
_LARGEST = sys.float_info.max
MAX_BACKTEST_FORECASTS = 60_000  # origins x steps ahead, per model: bounds the cost of a long horizon


def candidates(settings: ForecastSettings) -> list[Model]:
    """Every candidate, simplest first (the first of equal MAPEs wins): seasonal naive per
    season, EWMA, Holt, Holt-Winters per season. A model the history cannot support
    (a season longer than it, Holt-Winters with fewer than two seasons) drops out when run.
    """
    seasons = [(season, round(season / settings.step_s)) for season in sorted(settings.seasons_s)]
    models: list[Model] = [seasonal_naive(season, m) for season, m in seasons]
    models += [ewma, holt]
    models += [holt_winters(season, m) for season, m in seasons]
    return models


def plan(series: Series, settings: ForecastSettings) -> Plan | None:
    """The backtest's origins: every point of the newest ``backtest_s`` (at most a quarter of
    the history), strided down to ``backtest_origins`` and to ``MAX_BACKTEST_FORECASTS``
    forecast points per model; None when the history is too short to keep two points to
    fit on before them.
    """
    n = len(series.y)
    reach = series.lag + settings.horizon_steps
    last = n - 1 - reach
    span = min(math.floor(settings.backtest_s / settings.step_s), n // 4, last - 1)
    if span < 1:
        return None
    origins = min(settings.backtest_origins, max(1, MAX_BACKTEST_FORECASTS // reach))
    return Plan(reach, range(last - span + 1, last + 1, math.ceil(span / origins)))


def forecast(values: Sequence[float | None], settings: ForecastSettings = _DEFAULT) -> Forecast:
    """Forecasts the series ``values`` up to ``settings.horizon_s`` ahead, with intervals.

    ``values`` are evenly spaced at ``settings.step_s``, oldest first, the last one
    "now". ``None``, NaN, ±inf (and anything that is not a number) are gaps; negative
    values count as 0; gaps up to ``max_gap_s`` are filled linearly; a longer gap cuts
    the history when enough follows it (``Forecast.note`` says what was done). Every
    candidate (seasonal naive, EWMA, Holt, additive Holt-Winters per season; Hyndman &
    Athanasopoulos, "Forecasting: Principles and Practice", chapters 5 and 8) is fitted
    on the history before the backtest window and judged by its MAPE at the horizon
    over a rolling origin in that window; the best forecasts, with prediction
    intervals from its own backtest errors. Never raises for any series and never
    returns a NaN: not enough history gives ``model=None`` and a ``reason``.

    Cost: pure Python, linear in the history; about 0.3 s for 28 days at 5-minute steps
    with a daily and a weekly season (``bench/forecast_backtest.py`` measures it).
    """
    series = prepare(values, settings)
    if series.reason:
        return Forecast(None, series.reason, (), (), series.usable, series.note)
    backtest = plan(series, settings)
    if backtest is None:
        needed = 4 * (series.lag + settings.horizon_steps + 2)
        reason = (
            f"history has {series.usable} usable points, too few to backtest a forecast "
            f"{settings.horizon_s:g} s ({settings.horizon_steps} steps) ahead; about {needed} needed"
        )
        return Forecast(None, reason, (), (), series.usable, series.note)
    weight = [1.0 / v if k and v > ZERO else 0.0 for v, k in zip(series.y, series.known, strict=True)]
    first_step = series.lag + 1
    scored: list[Scored] = []
    for model in candidates(settings):
        run = model(series.y, weight, backtest)
        result = None if run is None else score(run, series.y, series.known, backtest, first_step, settings.coverage)
        if result is not None:
            scored.append(result)
    if not scored:
        reason = "no model could be fitted or backtested on this history"
        return Forecast(None, reason, (), (), series.usable, series.note)
    scored.sort(key=lambda s: s.mape)  # stable: the simplest of equal MAPEs stays first
    best = scored[0]
    scores = tuple(ModelScore(s.run.name, s.mape, s.coverage, s.origins, s.width) for s in scored)
    points = []
    for h in range(first_step, backtest.reach + 1):
        value = min(max(best.run.final[h - 1], 0.0), 1.0e6)  # of the largest value seen
        lower, upper = interval(best.kind, best.bounds[h], value)
        points.append(
            Prediction(
                (h - series.lag) * settings.step_s,
                _rescaled(value, series.scale),
                _rescaled(lower, series.scale),
                _rescaled(upper, series.scale),
            )
        )
    return Forecast(best.run.name, "", tuple(points), scores, series.usable, series.note, best.kind)


def _rescaled(value: float, scale: float) -> float:
    """``value * scale``, finite: an input near the float maximum cannot overflow to inf."""
    out = value * scale
    return out if out <= _LARGEST else _LARGEST
