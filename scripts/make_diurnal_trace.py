"""Writes a seeded synthetic offered-load trace: 28 days of a diurnal, weekly, noisy rate.

The trace is the load the capacity-planning scenario (issue 21) offers a pool, and the
series the forecast backtest (``bench/forecast_backtest.py``) is judged on. Output: CSV
with the header ``t_s,rate``; ``t_s`` in seconds from 0 (a Monday, 00:00), one point per
``--step-s`` (default 300 s, so 8064 rows for 28 days); ``rate`` in requests/s, 3
decimals. Standard library only; the same seed gives the same file, byte for byte.

The model of the rate at time ``t`` (day ``d``, hour of day ``h``):

    rate(t) = PEAK_RPS * shape_d(h) * drift(t) * e^(x(t) + w(t)) * burst(t)

- ``shape_d(h)``: the day's curve, a night trough of about 0.12 (about 25 req/s at 04:00),
  a morning ramp from 06:00, a midday/afternoon peak of 1.0 near 14:00 and an evening
  shoulder near 20:30. Monday's morning bump is 20 % higher (0.92 against 0.82 at
  10:00), Friday's afternoon 6 % lower. Saturday and Sunday are lower and flatter: the
  curve's excess over the trough peaks at about 0.6 of a weekday's, two hours later
  and broader.
- ``drift(t)``: the level grows ``--growth-per-week`` (default 3 %) a week, times a
  random walk in log space with one step a day (sigma 0.01): a few % a week, no jumps.
- ``x(t)``: autocorrelated deviations, an AR(1) in log space, ``x = phi * x + eps``,
  ``phi = 0.93`` per 5 minutes (scaled to ``phi ** (step / 300)`` for other steps),
  stationary sigma 0.08: real traffic runs above or below its usual curve for tens
  of minutes at a time (a half-life of about 48 minutes).
- ``w(t)``: white noise in log space, sigma 0.02.
- ``burst(t)``: six short bursts over the 28 days at random times, each a jump to
  1.3-1.8 times the rate that decays with a time constant of 5-15 minutes.

Usage: python scripts/make_diurnal_trace.py [--seed 1] [--days 28] [--step-s 300] -o scenarios/traces/diurnal.csv
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Iterator
from pathlib import Path

PEAK_RPS = 200.0
TROUGH = 0.12  # the night trough as a share of the weekday peak
AR_PHI_PER_300S = 0.93
AR_SIGMA = 0.08  # stationary standard deviation of x(t), log space
WHITE_SIGMA = 0.02
DRIFT_SIGMA_PER_DAY = 0.01
BURSTS = 6
DAY_S = 86_400.0


def _bump(hour: float, centre: float, width: float) -> float:
    """A Gaussian bump on the 24-hour circle, 1 at ``centre``."""
    gap = (hour - centre + 12.0) % 24.0 - 12.0
    return math.exp(-0.5 * (gap / width) ** 2)


def _weekday_excess(hour: float, weekday: int) -> float:
    """The weekday curve's excess over the trough, before normalisation (peak near 1)."""
    morning = 0.55 * _bump(hour, 10.0, 1.6) * (1.2 if weekday == 0 else 1.0)
    afternoon = 0.95 * _bump(hour, 14.5, 2.6) * (0.94 if weekday == 4 else 1.0)
    evening = 0.45 * _bump(hour, 20.5, 1.7)
    return morning + afternoon + evening


def _weekend_excess(hour: float) -> float:
    """Later, broader and lower: the weekday curve shifted two hours, at about 0.6 of it."""
    return 0.57 * (0.35 * _bump(hour, 12.0, 2.2) + 0.8 * _bump(hour, 16.0, 3.4) + 0.4 * _bump(hour, 21.0, 2.0))


# Normalises the weekday excess so that the curve tops out at 1.0 (Tuesday-Thursday).
_SCALE = max(_weekday_excess(i / 60.0, 2) for i in range(24 * 60))


def shape(t_s: float) -> float:
    """The seasonal curve at ``t_s`` seconds from a Monday 00:00, as a share of the peak."""
    day = int(t_s // DAY_S)
    hour = (t_s % DAY_S) / 3600.0
    weekday = day % 7
    excess = _weekend_excess(hour) if weekday >= 5 else _weekday_excess(hour, weekday)
    return TROUGH + (1.0 - TROUGH) * excess / _SCALE


def rates(seed: int, days: int, step_s: float, growth_per_week: float) -> Iterator[tuple[float, float]]:
    """Yields ``(t_s, rate)`` for every step of ``days`` days."""
    rng = random.Random(seed)
    n = round(days * DAY_S / step_s)
    phi = AR_PHI_PER_300S ** (step_s / 300.0)
    eps_sigma = AR_SIGMA * math.sqrt(1.0 - phi * phi)
    walk = [0.0]
    for _ in range(days):
        walk.append(walk[-1] + rng.gauss(0.0, DRIFT_SIGMA_PER_DAY))
    bursts = sorted(
        (rng.uniform(0.0, days * DAY_S), rng.uniform(0.3, 0.8), rng.uniform(300.0, 900.0)) for _ in range(BURSTS)
    )
    x = rng.gauss(0.0, AR_SIGMA)
    for i in range(n):
        t = i * step_s
        day_f = t / DAY_S
        d = int(day_f)
        walk_now = walk[d] + (walk[d + 1] - walk[d]) * (day_f - d)  # linear between daily steps
        drift = (1.0 + growth_per_week) ** (day_f / 7.0) * math.exp(walk_now)
        burst = 1.0
        for start, height, tau in bursts:
            if start <= t < start + 6.0 * tau:
                burst += height * math.exp(-(t - start) / tau)
        white = rng.gauss(0.0, WHITE_SIGMA)
        yield t, PEAK_RPS * shape(t) * drift * math.exp(x + white) * burst
        x = phi * x + rng.gauss(0.0, eps_sigma)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--step-s", type=float, default=300.0)
    parser.add_argument("--growth-per-week", type=float, default=0.03, help="level growth a week, fraction")
    parser.add_argument("-o", "--output", type=Path, help="CSV path; standard output when omitted")
    args = parser.parse_args(argv)
    if args.days < 1 or args.step_s <= 0 or DAY_S % args.step_s:
        parser.error("--days must be >= 1 and --step-s a positive divisor of 86400")
    lines = ["t_s,rate"]
    lines += [f"{t:g},{rate:.3f}" for t, rate in rates(args.seed, args.days, args.step_s, args.growth_per_week)]
    text = "\n".join(lines) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
