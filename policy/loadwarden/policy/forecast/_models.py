"""The candidate models, each fitted before the backtest window and run over the history.

- ``seasonal_naive/<m>``: the value one season ago (FPP 5.2, "Seasonal naïve method").
- ``ewma``: simple exponential smoothing (FPP 8.1).
- ``holt``: Holt's linear trend, damped (FPP 8.2).
- ``holt_winters/<m>``: additive Holt-Winters with a damped trend (FPP 8.3).

Smoothing parameters are fitted by a coordinate search over small grids, on the
mean absolute percentage error at the horizon over the history before the first
backtest origin (the quantity models are ranked by), so the backtest is out of sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from ._smoothing import Params, State, forecasts, horizon_error, initial_state


@dataclass(frozen=True, slots=True)
class Plan:
    """Where the backtest's origins are.

    Attributes:
        reach: Steps forecast from each origin: the series' ``lag`` plus the horizon's
            steps. Models are fitted and ranked on the error this many steps ahead.
        origins: Indices of the origin points, the newest with ``origin + reach``
            still in the history; ``origins[0]`` is the first point the parameters
            are not fitted on.
    """

    reach: int
    origins: range


@dataclass(frozen=True, slots=True)
class Run:
    """One model's forecasts: from every backtest origin, and from the newest point."""

    name: str
    backtest: list[list[float]]
    final: list[float]
    params: Params | None = None


Model = Callable[[list[float], list[float], Plan], Run | None]

ALPHAS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
BETAS = (0.0, 0.01, 0.05, 0.15)
GAMMAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.35)
PHIS = (0.8, 0.9, 0.98, 1.0)  # 1.0: Holt's linear trend, undamped
WIDTHS = (1, 3, 7, 15, 31)  # phases the initial season is smoothed over
HOLT_WINTERS_PHI = 0.98  # FPP 8.2: damping "rarely less than 0.8"; 0.98 all but removes no trend
MIN_FIT_POINTS = 10


def season_label(season_s: float) -> str:
    return f"{season_s:g}"


def seasonal_naive(season_s: float, m: int) -> Model:
    """Forecasts ``y(t + h)`` as ``y(t + h - m * ceil(h / m))``; needs one season before the origins."""

    def run(y: list[float], weight: list[float], plan: Plan) -> Run | None:
        if plan.origins[0] + 1 < m:
            return None
        back = [m * math.ceil(h / m) for h in range(1, plan.reach + 1)]
        backtest = [[y[t + h - b] for h, b in enumerate(back, 1)] for t in plan.origins]
        final = [y[len(y) - 1 + h - b] for h, b in enumerate(back, 1)]
        return Run(f"seasonal_naive/{season_label(season_s)}", backtest, final)

    return run


def ewma(y: list[float], weight: list[float], plan: Plan) -> Run | None:
    return _smoothed("ewma", y, weight, plan, 1, Params(0.3), {"alpha": ALPHAS})


def holt(y: list[float], weight: list[float], plan: Plan) -> Run | None:
    grid = {"alpha": ALPHAS, "beta": BETAS, "phi": PHIS}
    return _smoothed("holt", y, weight, plan, 1, Params(0.3, 0.01, 0.0, 0.9), grid)


def holt_winters(season_s: float, m: int) -> Model:
    """Needs two full seasons of history, and one plus ``MIN_FIT_POINTS`` before the first origin."""

    def run(y: list[float], weight: list[float], plan: Plan) -> Run | None:
        if len(y) < 2 * m or plan.origins[0] + 1 < m + plan.reach + MIN_FIT_POINTS:
            return None
        widths = tuple(w for w in WIDTHS if w <= max(1, m // 4))
        grid = {"alpha": ALPHAS, "gamma": GAMMAS, "beta": BETAS, "width": widths}
        start = Params(0.3, 0.01, 0.1, HOLT_WINTERS_PHI, 1)
        return _smoothed(f"holt_winters/{season_label(season_s)}", y, weight, plan, m, start, grid)

    return run


Grid = dict[str, tuple[float, ...]]


def _smoothed(
    name: str, y: list[float], weight: list[float], plan: Plan, m: int, start: Params, grid: Grid
) -> Run | None:
    """Fits on the history before the first origin, then forecasts from every origin and the end.

    With a season, the parameters (and the initial season's smoothing ``width``) are
    chosen on the newer half of the full seasons before the first origin, starting from
    the decomposition of the older half, so the fit is out of sample for the initial
    state too; the backtest then starts from the decomposition of everything before
    the first origin.
    """
    fit_end = plan.origins[0] + 1
    if m == 1:
        fit_from, score_from = 1, min(plan.reach, fit_end - 1)
    else:
        fit_from = max(1, fit_end // m // 2) * m
        score_from = fit_from + plan.reach
    states: dict[int, State] = {}

    def error(p: Params) -> float:
        if p.width not in states:
            states[p.width] = initial_state(y, m, fit_from, p.width)
        return horizon_error(y, weight, m, p, states[p.width], plan.reach, score_from, fit_end)

    params = fit(error, start, grid)
    if params is None:
        return None
    backtest, final = forecasts(y, m, params, initial_state(y, m, fit_end, params.width), plan.reach, plan.origins)
    return Run(name, backtest, final, params)


def fit(error: Callable[[Params], float], start: Params, grid: Grid) -> Params | None:
    """Coordinate search: each parameter in turn over its grid, others held, twice over.

    Keeps ``alpha + gamma <= 1`` (FPP 8.3's ``0 <= gamma <= 1 - alpha``). Returns None
    when every candidate diverged.
    """
    seen: dict[Params, float] = {}

    def cost(p: Params) -> float:
        if p not in seen:
            seen[p] = error(p)
        return seen[p]

    best = start
    for _ in range(2):
        for field, values in grid.items():
            for p in _variants(best, field, values):
                if cost(p) < cost(best):
                    best = p
    return best if math.isfinite(cost(best)) else None


def _variants(p: Params, field: str, values: tuple[float, ...]) -> Iterator[Params]:
    for value in values:
        change: dict[str, Any] = {field: round(value) if field == "width" else value}
        q = replace(p, **change)
        if q.alpha + q.gamma <= 1.0:
            yield q


__all__ = ["Model", "Params", "Plan", "Run", "State", "ewma", "holt", "holt_winters", "seasonal_naive"]
