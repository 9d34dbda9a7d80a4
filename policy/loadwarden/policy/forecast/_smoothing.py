"""Exponential smoothing with an additive season and a damped additive trend.

The component form of Hyndman & Athanasopoulos, "Forecasting: Principles and
Practice" (3rd ed., 2021), sections 8.1-8.3, with season length ``m`` (``m = 1`` and
``gamma = 0``: no season)::

    forecast(t + h | t) = l(t) + (phi + ... + phi^h) b(t) + s(t + h - m(k + 1))
    l(t) = alpha (y(t) - s(t - m)) + (1 - alpha) (l(t - 1) + phi b(t - 1))
    b(t) = beta (l(t) - l(t - 1)) + (1 - beta) phi b(t - 1)
    s(t) = gamma (y(t) - l(t - 1) - phi b(t - 1)) + (1 - gamma) s(t - m)

``beta = phi = 0`` is simple exponential smoothing (EWMA), ``m = 1`` Holt's damped
trend method, ``m > 1`` additive Holt-Winters with a damped trend.

The loops are written for CPython: locals only, one pass, no allocation per step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Params:
    """Smoothing parameters, each in [0, 1] (FPP's ``beta*`` is ``beta`` here), and
    ``width``: phases the initial season is averaged over (odd, 1 = not smoothed)."""

    alpha: float
    beta: float = 0.0
    gamma: float = 0.0
    phi: float = 0.0
    width: int = 1


@dataclass(frozen=True, slots=True)
class State:
    """The components at the start of a pass: level, trend, and the season by phase."""

    level: float
    trend: float
    season: tuple[float, ...]


def initial_state(y: list[float], m: int, end: int, width: int = 1) -> State:
    """A classical decomposition of ``y[:end]`` (FPP 3.4 and 8.3's heuristic start).

    Each full season's mean is its level, and the change of those means per step the
    trend (0 with one full season); a last partial season's level is extrapolated.
    ``season[i]`` is the mean over the seasons of ``y[j * m + i]`` minus season ``j``'s
    level and the trend since the season's middle, then a circular moving average over
    ``width`` phases (a season estimated from few noisy seasons is mostly noise from one
    phase to the next), centred on 0.
    ``m = 1``: the level is ``y[0]``, no trend, no season. Needs ``end >= m``.
    """
    if m == 1:
        return State(y[0], 0.0, (0.0,))
    full = end // m
    means = [sum(y[j * m : (j + 1) * m]) / m for j in range(full)]
    trend = (means[-1] - means[0]) / ((full - 1) * m) if full > 1 else 0.0
    levels = [*means, means[-1] + trend * m]
    season = []
    for i in range(m):
        seen = range(full + 1 if full * m + i < end else full)
        drift = trend * (i - (m - 1) / 2)  # the trend within a season, from its middle
        season.append(sum(y[j * m + i] - levels[j] for j in seen) / len(seen) - drift)
    if width > 1:
        half = width // 2
        padded = season[-half:] + season + season[:half]
        total = sum(padded[:width])
        smooth = [total]
        for i in range(1, m):
            total += padded[i + width - 1] - padded[i - 1]
            smooth.append(total)
        season = [v / width for v in smooth]
    centre = sum(season) / m
    return State(means[0] - trend * (m + 1) / 2, trend, tuple(v - centre for v in season))


def _damped(phi: float, steps: int) -> list[float]:
    """``[0, phi, phi + phi^2, ...]``: the trend's weight ``steps`` ahead, by step."""
    out = [0.0]
    power = 1.0
    for _ in range(steps):
        power *= phi
        out.append(out[-1] + power)
    return out


def horizon_error(
    y: list[float], weight: list[float], m: int, p: Params, start: State, steps: int, score_from: int, end: int
) -> float:
    """Mean of ``|y(t) - forecast(t | t - steps)| * weight(t)`` over ``t in [score_from, end)``.

    With ``weight = 1 / y`` (0 where ``y`` is 0 or was filled) this is the MAPE at
    ``steps`` ahead, the quantity the backtest ranks models by; ``inf`` if the
    recursion diverged. Reads ``y[:end]`` only.
    """
    alpha, beta, gamma, phi = p.alpha, p.beta, p.gamma, p.phi
    level, trend = start.level, start.trend
    season = list(start.season)
    ahead = _damped(phi, steps)[steps]
    pending = [0.0] * steps  # forecasts made `steps` ago, by t % steps
    lead = steps % m
    j = 0  # t % m
    k = 0  # t % steps
    total = 0.0
    count = 0
    for t in range(end):
        yt = y[t]
        if t >= score_from:
            w = weight[t]
            if w:
                total += abs(yt - pending[k]) * w
                count += 1
        sj = season[j]
        base = level + phi * trend
        new_level = alpha * (yt - sj) + (1.0 - alpha) * base
        trend = beta * (new_level - level) + (1.0 - beta) * phi * trend
        season[j] = gamma * (yt - base) + (1.0 - gamma) * sj
        level = new_level
        i = j + lead
        pending[k] = level + ahead * trend + season[i - m if i >= m else i]
        j += 1
        if j == m:
            j = 0
        k += 1
        if k == steps:
            k = 0
    mean = total / count if count else 0.0
    return mean if mean == mean and mean < 1e300 else float("inf")  # NaN or overflow: diverged


def forecasts(
    y: list[float], m: int, p: Params, start: State, reach: int, origins: range
) -> tuple[list[list[float]], list[float]]:
    """Forecasts 1..``reach`` steps ahead from every origin, and from the newest point.

    Returns ``(backtest, final)``: ``backtest[i][h - 1]`` is the forecast for
    ``origins[i] + h`` made with ``y[: origins[i] + 1]``; ``final[h - 1]`` for
    ``len(y) - 1 + h``.
    """
    alpha, beta, gamma, phi = p.alpha, p.beta, p.gamma, p.phi
    level, trend = start.level, start.trend
    season = list(start.season)
    ahead = _damped(phi, reach)
    out: list[list[float]] = []
    marks = iter(origins)
    mark = next(marks, -1)
    j = 0
    n = len(y)
    for t in range(n):
        yt = y[t]
        sj = season[j]
        base = level + phi * trend
        new_level = alpha * (yt - sj) + (1.0 - alpha) * base
        trend = beta * (new_level - level) + (1.0 - beta) * phi * trend
        season[j] = gamma * (yt - base) + (1.0 - gamma) * sj
        level = new_level
        if t == mark:
            out.append([level + ahead[h] * trend + season[(j + h) % m] for h in range(1, reach + 1)])
            mark = next(marks, -1)
        j += 1
        if j == m:
            j = 0
    # j is now len(y) % m, the phase of the first step ahead.
    final = [level + ahead[h] * trend + season[(j + h - 1) % m] for h in range(1, reach + 1)]
    return out, final
