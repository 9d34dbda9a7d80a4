"""The input series made fit for the models: gaps filled or cut, clamped, scaled to [0, 1]."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ._types import ForecastSettings


@dataclass(frozen=True, slots=True)
class Series:
    """A gap-free series ending at the newest known point.

    Attributes:
        y: Values divided by ``scale``, oldest first, every gap filled; in [0, 1], so
            no sum of squares overflows whatever the input's magnitude.
        known: ``known[i]`` is False where ``y[i]`` was filled; the backtest scores
            known points only.
        scale: The largest known value (1.0 when all are zero); forecasts are
            multiplied back by it.
        lag: Missing points after the newest known one: "now" is ``lag`` steps after
            ``y[-1]``, so the forecast's first point is ``lag + 1`` steps from it.
        usable: Known points in ``y``.
        note: What was done to the input, in words; ``""`` when nothing was.
        reason: Why there can be no forecast; ``""`` when there can.
    """

    y: list[float]
    known: list[bool]
    scale: float
    lag: int
    usable: int
    note: str
    reason: str


def _number(value: object) -> float | None:
    """``value`` as a float, or None for a gap: None, NaN, ±inf, or not a number at all."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]  # anything float() takes; the rest is a gap
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _points(count: int) -> str:
    return f"{count} point{'' if count == 1 else 's'}"


def prepare(values: Sequence[float | None], settings: ForecastSettings) -> Series:
    """Cleans ``values`` (evenly spaced at ``settings.step_s``, oldest first).

    - ``None``, NaN, ±inf and anything that is not a number are gaps; negative values
      count as 0.
    - Leading gaps are dropped. Trailing gaps set ``lag``; when they last longer than
      ``max_gap_s`` the newest data is too old to forecast from and ``reason`` says so.
    - A gap of at most ``max_gap_s`` is filled by linear interpolation between its
      neighbours.
    - A longer gap cuts the history: only what follows the newest long gap is used,
      when that has at least ``min_points`` known points; otherwise the long gaps are
      filled linearly as well and the whole history is used.
    """
    step = settings.step_s
    raw = list(values[-settings.max_points :]) if settings.max_points < len(values) else list(values)
    numbers: list[float | None] = [_number(value) for value in raw]
    notes: list[str] = []
    negative = sum(1 for x in numbers if x is not None and x < 0.0)
    if negative:
        numbers = [None if x is None else max(x, 0.0) for x in numbers]
        notes.append(f"{_points(negative)} below 0 counted as 0")
    known_at = [i for i, x in enumerate(numbers) if x is not None]
    if not known_at:
        return _none(f"history has 0 usable points; {settings.min_points} needed", notes)
    lag = len(numbers) - 1 - known_at[-1]
    if lag * step > settings.max_gap_s:
        return _none(
            f"the newest {_points(lag)} ({lag * step:g} s) are missing, longer than max_gap_s "
            f"{settings.max_gap_s:g} s; the newest usable point is too old to forecast from",
            notes,
        )
    numbers = numbers[known_at[0] : known_at[-1] + 1]
    gaps = _gaps(numbers)
    long_gaps = [(start, end) for start, end in gaps if (end - start) * step > settings.max_gap_s]
    long_filled = False
    if long_gaps:
        start, end = long_gaps[-1]
        tail_known = sum(1 for x in numbers[end:] if x is not None)
        if tail_known >= settings.min_points:
            notes.append(
                f"a gap of {(end - start) * step:g} s cut the history; "
                f"the {_points(len(numbers) - end)} after it are used"
            )
            numbers = numbers[end:]
            gaps = [(s - end, e - end) for s, e in gaps if s >= end]
        else:
            long_filled = True
    filled = sum(end - start for start, end in gaps)
    if filled:
        notes.append(f"{_points(filled)} in {len(gaps)} gap(s) filled linearly")
        if long_filled:
            notes.append(f"{len(long_gaps)} longer than max_gap_s, but too few points follow to cut the history there")
    usable = len(numbers) - filled
    if usable < settings.min_points:
        return _none(
            f"history has {usable} usable point{'' if usable == 1 else 's'}; {settings.min_points} needed",
            notes,
            usable,
        )
    peak = max(x for x in numbers if x is not None)
    scale = peak if peak > 0.0 else 1.0
    if peak == 0.0:
        notes.append("every value is 0")
    known = [x is not None for x in numbers]
    y = [x / scale if x is not None else 0.0 for x in numbers]
    for start, end in gaps:
        _interpolate(y, start, end)
    return Series(y, known, scale, lag, usable, "; ".join(notes), "")


def _gaps(numbers: list[float | None]) -> list[tuple[int, int]]:
    """``[start, end)`` index ranges of the missing runs; ``numbers`` starts and ends known."""
    gaps: list[tuple[int, int]] = []
    start = -1
    for i, x in enumerate(numbers):
        if x is None:
            if start < 0:
                start = i
        elif start >= 0:
            gaps.append((start, i))
            start = -1
    return gaps


def _interpolate(y: list[float], start: int, end: int) -> None:
    """Fills ``y[start:end]`` on the line between its known neighbours."""
    left, right = y[start - 1], y[end]
    span = end - start + 1
    for i in range(start, end):
        y[i] = left + (right - left) * (i - start + 1) / span


def _none(reason: str, notes: list[str], usable: int = 0) -> Series:
    return Series([], [], 1.0, 0, usable, "; ".join(notes), reason)
