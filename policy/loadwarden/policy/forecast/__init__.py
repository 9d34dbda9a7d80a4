"""Load forecasts: a series' next values, with prediction intervals, from the model its
own history backtests best. May import the standard library and the kernel only.

``forecast(values, settings)`` reads an evenly spaced series (a pool's offered rate,
in-flight work, CPU, latency), backtests seasonal naive, EWMA, Holt and additive
Holt-Winters per season (Hyndman & Athanasopoulos, "Forecasting: Principles and
Practice", 3rd ed., chapters 5 and 8) with a rolling origin over its newest history,
and forecasts with the one with the lowest MAPE at the horizon. Pure and synchronous:
the service calls it from a worker thread.
"""

from ._forecast import forecast
from ._types import Forecast, ForecastSettings, ModelScore, Prediction

__all__ = ["Forecast", "ForecastSettings", "ModelScore", "Prediction", "forecast"]
