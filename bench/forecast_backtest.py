"""Forecast backtest on a trace: every model's MAPE at the horizon, the chosen one against seasonal naive.

Reads a trace (CSV ``t_s,rate``, evenly spaced; default the shipped 28-day diurnal
trace at 5-minute steps, ``scenarios/traces/diurnal.csv``) and calls the kernel's
``loadwarden.policy.forecast.forecast`` once on all of it, with a daily and a
weekly season, a ``--horizon-s`` horizon (default 900 s, 15 minutes) and the newest
week as the backtest window. The answer's scores are the backtest: every candidate
fitted only on the history before the window, then forecast from each of its
origins (the newest points whose actual at the horizon is known: their targets are
the trace's last week) using the data up to that origin only. Reported per model:
MAPE at the horizon, the share of actuals inside its prediction interval (out of
sample: quantiles from one half of the origins, tried on the other) and the
interval's mean width; the chosen model; ``mape_ratio_to_seasonal_naive``, the
chosen model's MAPE over the best seasonal naive's (issue 21 asks for at most 0.6);
and the wall time of ``forecast()`` (median of ``--repeat`` calls).

``walk_forward`` checks the whole pipeline the way the service uses it: at
``--walk-forward`` origins spread over the last week it calls ``forecast()`` on the
history up to the origin only (models refitted and chosen anew each time) and scores
its point forecast at the horizon and its intervals at every step against the trace,
beside seasonal naive (weekly) at the same origins. The default 336 origins (one every
25 minutes) take about 90 s on a 2-core machine; fewer make the ratio noisy (with 56,
its standard error is about 0.1).

Usage: python bench/forecast_backtest.py [--trace scenarios/traces/diurnal.csv] [--horizon-s 900]
                                         [--coverage 0.8] [--repeat 3] [--walk-forward 336]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from loadwarden.policy.forecast import Forecast, ForecastSettings, forecast

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO / "scenarios" / "traces" / "diurnal.csv"
DAY_S = 86_400.0
WEEK_S = 604_800.0
TARGET_RATIO = 0.6


def read_trace(path: Path) -> tuple[list[float | None], float]:
    """The trace's rates, oldest first, and its step in seconds; a missing row or empty rate is a gap."""
    with path.open(newline="", encoding="utf-8") as file:
        rows = [(float(row["t_s"]), row["rate"]) for row in csv.DictReader(file)]
    if len(rows) < 2:
        raise SystemExit(f"{path}: needs at least two rows")
    step = rows[1][0] - rows[0][0]
    values: list[float | None] = [None] * (round((rows[-1][0] - rows[0][0]) / step) + 1)
    for t, rate in rows:
        values[round((t - rows[0][0]) / step)] = float(rate) if rate.strip() else None
    return values, step


def timed(values: list[float | None], settings: ForecastSettings, repeat: int) -> tuple[Forecast, list[float]]:
    seconds = []
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = forecast(values, settings)
        seconds.append(time.perf_counter() - start)
    assert result is not None
    return result, seconds


def walk_forward(values: list[float | None], settings: ForecastSettings, origins: int) -> dict[str, Any]:
    """``forecast()`` from history up to each origin only, scored against what followed."""
    steps = settings.horizon_steps
    week = round(WEEK_S / settings.step_s)
    first = len(values) - week - 1  # the origin one week before the newest point
    spacing = max(1, (week - steps) // origins)
    ape, naive_ape = [], []
    inside = total = 0
    chosen: Counter[str] = Counter()
    for origin in range(first, first + spacing * origins, spacing):
        result = forecast(values[: origin + 1], settings)
        chosen[str(result.model)] += 1
        for point in result.points:
            actual = values[origin + round(point.offset_s / settings.step_s)]
            if actual is None:
                continue
            inside += point.lower <= actual <= point.upper
            total += 1
            if round(point.offset_s / settings.step_s) == steps and actual > 0:
                ape.append(abs(point.value - actual) / actual)
                naive = values[origin + steps - week]
                if naive is not None:
                    naive_ape.append(abs(naive - actual) / actual)
    mape = statistics.fmean(ape) if ape else None
    naive_mape = statistics.fmean(naive_ape) if naive_ape else None
    return {
        "origins": origins,
        "spacing_s": spacing * settings.step_s,
        "mape": mape,
        "seasonal_naive_604800_mape": naive_mape,
        "mape_ratio_to_seasonal_naive": mape / naive_mape if mape is not None and naive_mape else None,
        "coverage": inside / total if total else None,
        "models_chosen": dict(chosen.most_common()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    values, step = read_trace(args.trace)
    settings = ForecastSettings(
        step_s=step,
        horizon_s=args.horizon_s,
        coverage=args.coverage,
        seasons_s=(DAY_S, WEEK_S),
        max_points=max(len(values), 30),
        backtest_s=WEEK_S,
        backtest_origins=round(WEEK_S / step),
    )
    result, seconds = timed(values, settings, args.repeat)
    naive = [s for s in result.scores if s.model.startswith("seasonal_naive/")]
    best_naive = min(naive, key=lambda s: s.mape) if naive else None
    chosen = result.scores[0] if result.scores else None
    ratio = chosen.mape / best_naive.mape if chosen and best_naive and best_naive.mape > 0 else None
    report: dict[str, Any] = {
        "benchmark": "forecast_backtest",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
        },
        "trace": {
            "path": str(args.trace.relative_to(REPO) if args.trace.is_relative_to(REPO) else args.trace),
            "points": len(values),
            "step_s": step,
            "days": len(values) * step / DAY_S,
        },
        "settings": {
            "horizon_s": settings.horizon_s,
            "coverage": settings.coverage,
            "seasons_s": list(settings.seasons_s),
            "backtest_s": settings.backtest_s,
        },
        "history_points": result.history_points,
        "note": result.note,
        "models": {
            s.model: {"mape": s.mape, "coverage": s.coverage, "interval_width": s.width, "origins": s.origins}
            for s in result.scores
        },
        "chosen": result.model,
        "reason": result.reason,
        "interval": result.interval,
        "best_seasonal_naive": best_naive.model if best_naive else None,
        "mape_ratio_to_seasonal_naive": ratio,
        "target_ratio": TARGET_RATIO,
        "under_target": ratio is not None and ratio <= TARGET_RATIO,
        "forecast_s": {"median": statistics.median(seconds), "runs": seconds},
    }
    if args.walk_forward:
        report["walk_forward"] = walk_forward(values, settings, args.walk_forward)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=TRACE, help="CSV with t_s,rate")
    parser.add_argument("--horizon-s", type=float, default=900.0, help="forecast horizon, seconds")
    parser.add_argument("--coverage", type=float, default=0.8, help="nominal share of the prediction interval")
    parser.add_argument("--repeat", type=int, default=3, help="timed forecast() calls; the median is reported")
    parser.add_argument("--walk-forward", type=int, default=336, help="origins of the walk-forward check; 0: none")
    args = parser.parse_args()
    if args.repeat < 1 or args.walk_forward < 0:
        parser.error("--repeat must be >= 1 and --walk-forward >= 0")
    args.trace = args.trace.resolve()
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
