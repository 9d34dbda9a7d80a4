"""Rolling-origin backtest: each model's error at the horizon, and intervals from its errors.

A model is ranked by its MAPE at the horizon over the backtest origins (Hyndman &
Athanasopoulos, FPP 5.10 "time series cross-validation"). Its prediction interval at
each step ahead is the empirical distribution of its backtest errors at that step
(FPP 5.5, "prediction intervals from bootstrapped residuals", with out-of-sample
multi-step errors in place of residuals), either relative (``actual / forecast - 1``)
or absolute (``actual - forecast``): whichever covers nearer its nominal share when
the quantiles from one half of the origins are tried on the other half.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._models import Plan, Run

ZERO = 1e-9  # of the series' largest value: forecasts and actuals this small are zero
KINDS = ("relative", "absolute")


@dataclass(frozen=True, slots=True)
class Scored:
    """A run with its backtest figures and its interval quantiles by step ahead."""

    run: Run
    mape: float
    coverage: float
    width: float
    origins: int
    kind: str
    bounds: dict[int, tuple[float, float]]  # step ahead -> (low, high) quantile of the kind's error


def score(run: Run, y: list[float], known: list[bool], plan: Plan, first_step: int, coverage: float) -> Scored | None:
    """The run's MAPE at ``plan.reach`` steps and its intervals for steps ``first_step..reach``.

    None when its forecasts are not all finite, or no origin could be scored.
    """
    if not all(math.isfinite(v) for v in run.final) or not all(math.isfinite(v) for row in run.backtest for v in row):
        return None
    steps = range(first_step, plan.reach + 1)
    pairs: dict[int, list[tuple[float, float]]] = {h: [] for h in steps}
    for origin, row in zip(plan.origins, run.backtest, strict=True):
        for h in steps:
            if known[origin + h]:
                pairs[h].append((y[origin + h], max(row[h - 1], 0.0)))
    at_horizon = pairs[plan.reach]
    if not at_horizon:
        return None
    mape = sum(_ape(actual, forecast) for actual, forecast in at_horizon) / len(at_horizon)
    best: tuple[float, float, str] | None = None
    for kind in KINDS:
        covered, width = _cross_coverage(pairs, kind, coverage)
        key = (abs(covered - coverage), width, kind)
        if best is None or key[:2] < best[:2]:
            best = (covered, width, kind)
    assert best is not None
    covered, width, kind = best
    bounds = {h: _bounds([_error(kind, a, f) for a, f in pairs[h]], coverage) for h in steps}
    return Scored(run, mape, covered, width, len(at_horizon), kind, bounds)


def interval(kind: str, bounds: tuple[float, float], value: float) -> tuple[float, float]:
    """``(lower, upper)`` around the forecast ``value`` (>= 0): ``0 <= lower <= value <= upper``."""
    low, high = bounds
    if kind == "relative":
        lower, upper = value * (1.0 + low), value * (1.0 + high)
    else:
        lower, upper = value + low, value + high
    return max(0.0, min(lower, value)), max(upper, value)


def _ape(actual: float, forecast: float) -> float:
    """Absolute percentage error; an actual of zero scores 0 against a zero forecast, else 1."""
    if actual > ZERO:
        return abs(actual - forecast) / actual
    return 0.0 if forecast <= ZERO else 1.0


def _error(kind: str, actual: float, forecast: float) -> float | None:
    if kind == "absolute":
        return actual - forecast
    return (actual - forecast) / forecast if forecast > ZERO else None


def _bounds(errors: list[float | None], coverage: float) -> tuple[float, float]:
    """The ``(1 - coverage) / 2`` and ``(1 + coverage) / 2`` quantiles; ``(0, 0)`` with no errors."""
    ordered = sorted(e for e in errors if e is not None)
    if not ordered:
        return 0.0, 0.0
    return _quantile(ordered, (1.0 - coverage) / 2.0), _quantile(ordered, (1.0 + coverage) / 2.0)


def _quantile(ordered: list[float], q: float) -> float:
    """Linear interpolation between order statistics (Hyndman & Fan's type 7)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _cross_coverage(pairs: dict[int, list[tuple[float, float]]], kind: str, coverage: float) -> tuple[float, float]:
    """Share of actuals inside intervals whose quantiles come from the other half of the origins.

    Each step's pairs are split at their middle; quantiles from the first half are tried
    on the second and the other way round. Returns ``(share inside, mean width as a share
    of the forecast)``; with fewer than two pairs at every step, the in-sample share.
    """
    inside = total = 0
    width = 0.0
    for rows in pairs.values():
        half = len(rows) // 2
        folds = [(rows[:half], rows[half:]), (rows[half:], rows[:half])] if half else [(rows, rows)]
        for train, test in folds:
            bounds = _bounds([_error(kind, a, f) for a, f in train], coverage)
            for actual, forecast in test:
                lower, upper = interval(kind, bounds, forecast)
                inside += lower - ZERO <= actual <= upper + ZERO
                width += (upper - lower) / forecast if forecast > ZERO else 0.0
                total += 1
    return (inside / total, width / total) if total else (0.0, 0.0)
