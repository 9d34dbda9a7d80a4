"""From history rows to evenly spaced series, and the forecasts of those series.

Pure functions: ``forecast_all`` runs in the planner's worker process (it takes and
returns plain, picklable values), the bucketing in a worker thread beside the
SQLite reads.

A bucket is ``step_s`` long, holds the samples taken after its start up to its end
(a sample describes the interval it ends), and the last one ends at ``until``. A
gauge's value in a bucket is the mean of its samples there; a counter's is its rate, the rise from one
sample to the next over the time between them, put in the later sample's bucket. A
counter that falls (the service restarted, the pool was made again) starts over:
that one interval is a gap, never a negative rate. A bucket without samples is a gap
(None), which the forecast fills or works around.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from loadwarden.policy.forecast import Forecast, ForecastSettings, forecast

# Pool series: name -> the column of History.pool_rows and whether it is a counter.
POOL_SERIES: Mapping[str, tuple[int, bool]] = {
    "requests_per_s": (3, True),
    "in_flight": (2, False),
    "cpu": (4, False),
    "latency_ms": (5, False),
}
# Operation series over History.operation_rows.
OPERATION_SERIES: Mapping[str, tuple[int, bool]] = {
    "batch_requests_per_s": (1, True),
    "load_score": (2, False),
}


def bucket(
    rows: Sequence[Sequence[Any]], column: int, counter: bool, since: float, until: float, step_s: float
) -> list[float | None]:
    """One column of ``rows`` (``(at, ...)``, oldest first) as ``ceil((until - since) / step_s)``
    evenly spaced values ending at ``until``: a gauge's mean per bucket, a counter's rate."""
    n = max(0, math.ceil((until - since) / step_s - 1e-9))
    start = until - n * step_s
    sums = [0.0] * n
    counts = [0] * n
    previous: tuple[float, float] | None = None
    for row in rows:
        at, raw = float(row[0]), row[column]
        value = _number(raw)
        if counter:
            if value is None:
                previous = None
                continue
            prior, previous = previous, (at, value)
            if prior is None or at <= prior[0] or value < prior[1]:
                continue
            value = (value - prior[1]) / (at - prior[0])
        if value is None:
            continue
        index = math.ceil((at - start) / step_s - 1e-9) - 1  # buckets are (start, end]: a sample ends its interval
        if 0 <= index < n:
            sums[index] += value
            counts[index] += 1
    return [s / c if c else None for s, c in zip(sums, counts, strict=True)]


def _number(raw: object) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    value = float(raw)
    return value if math.isfinite(value) else None


def latest(values: Sequence[float | None]) -> float | None:
    """The newest value that is not a gap."""
    for value in reversed(values):
        if value is not None:
            return value
    return None


def forecast_all(series: Mapping[str, Sequence[float | None]], settings: ForecastSettings) -> dict[str, Forecast]:
    """Forecasts each named series with ``settings``; what runs in the planner's worker."""
    return {name: forecast(values, settings) for name, values in series.items()}
