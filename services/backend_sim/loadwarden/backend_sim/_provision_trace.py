"""Offered-load traces: a CSV of rates over time, played compressed in simulated time.

A trace file has the header ``t_s,rate`` and one point a line: ``t_s`` seconds of trace
time (strictly increasing; the first point is the trace's origin) and ``rate`` offered
requests per second (finite, >= 0). ``scripts/make_diurnal_trace.py`` writes
``scenarios/traces/diurnal.csv`` in that format. The trace ends at its last point.

Between two points the rate is ``"linear"`` (interpolated) or ``"step"`` (the earlier
point's rate holds until the next point). ``TraceCurve`` plays a trace in simulated time:
``time_scale`` trace seconds pass per simulated second, and the arrival rate at simulated
time ``tau`` is ``rate(tau * time_scale) * rate_scale`` per simulated second.

Every problem raises ``TraceError(line, problem)``; the scenario parser names the key
(``traffic.trace``) and the file around it.
"""

from __future__ import annotations

import bisect
import csv
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

INTERPOLATIONS = ("linear", "step")
HEADER = ("t_s", "rate")
# The most points one trace may hold (a year of 30 s points).
MAX_POINTS = 1_051_200


class TraceError(ValueError):
    """A trace file is invalid: ``line`` (1-based; 0 for the file as a whole) and ``problem``."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}" if line else problem)
        self.line = line
        self.problem = problem


@dataclass(frozen=True, slots=True, eq=False)
class Trace:
    """An offered-load trace, its times moved so that the first point is at 0.

    Attributes:
        t_s: Trace seconds of each point, from 0, strictly increasing (at least two).
        rate: Offered requests per second at each point, finite and >= 0.
        interpolation: ``"linear"`` or ``"step"`` between points.
    """

    t_s: tuple[float, ...]
    rate: tuple[float, ...]
    interpolation: str = "linear"
    _area: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.t_s) != len(self.rate) or len(self.t_s) < 2:
            raise TraceError(0, "needs at least two points (t_s, rate)")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation: must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        # Integral of the rate from 0 to each point, requests.
        area = [0.0]
        for i in range(1, len(self.t_s)):
            width = self.t_s[i] - self.t_s[i - 1]
            height = self.rate[i - 1] if self.interpolation == "step" else (self.rate[i - 1] + self.rate[i]) / 2
            area.append(area[-1] + width * height)
        object.__setattr__(self, "_area", tuple(area))

    @property
    def length_s(self) -> float:
        """Trace seconds from the first point to the last."""
        return self.t_s[-1]

    @property
    def peak(self) -> float:
        """The highest rate of the trace, requests/s."""
        return max(self.rate)

    def rate_at(self, t: float) -> float:
        """The offered rate at trace time ``t`` (clamped to the trace), requests/s."""
        i = self._segment(t)
        return self._rate_in(i, t)

    def integral(self, a: float, b: float) -> float:
        """Requests offered from trace time ``a`` to ``b`` (``a <= b``, clamped to the trace)."""
        return self._area_to(b) - self._area_to(a)

    def mean_rate(self, a: float, b: float) -> float:
        """The mean offered rate from ``a`` to ``b`` (the rate at ``a`` when they are equal)."""
        return self.integral(a, b) / (b - a) if b > a else self.rate_at(a)

    def time_above(self, level: float, a: float, b: float) -> float:
        """Trace seconds from ``a`` to ``b`` in which the rate is strictly above ``level``."""
        total = 0.0
        for lo, hi, r0, r1 in self.pieces(a, b):
            if self.interpolation == "step" or r0 == r1:
                total += (hi - lo) if r0 > level else 0.0
            elif r0 > level and r1 > level:
                total += hi - lo
            elif r0 > level or r1 > level:
                crossing = lo + (level - r0) / (r1 - r0) * (hi - lo)
                total += (hi - crossing) if r1 > level else (crossing - lo)
        return total

    def pieces(self, a: float, b: float) -> Iterator[tuple[float, float, float, float]]:
        """``(start, end, rate at start, rate just before end)`` of each piece of ``[a, b]``
        within one segment of the trace, in order."""
        a, b = max(a, 0.0), min(b, self.length_s)
        if b <= a:
            return
        i = self._segment(a)
        while a < b:
            end = min(b, self.t_s[i + 1])
            if end > a:
                yield a, end, self._rate_in(i, a), self._rate_in(i, end)
            a = end
            i += 1

    def _segment(self, t: float) -> int:
        """The index ``i`` of the segment ``[t_s[i], t_s[i + 1])`` holding ``t`` (clamped)."""
        return min(max(bisect.bisect_right(self.t_s, t) - 1, 0), len(self.t_s) - 2)

    def _rate_in(self, i: int, t: float) -> float:
        r0 = self.rate[i]
        if self.interpolation == "step":
            return r0
        t0, t1 = self.t_s[i], self.t_s[i + 1]
        t = min(max(t, t0), t1)
        return r0 + (self.rate[i + 1] - r0) * (t - t0) / (t1 - t0)

    def _area_to(self, t: float) -> float:
        t = min(max(t, 0.0), self.length_s)
        i = self._segment(t)
        r0 = self.rate[i]
        height = r0 if self.interpolation == "step" else (r0 + self._rate_in(i, t)) / 2
        return self._area[i] + (t - self.t_s[i]) * height


def parse_trace(text: str, interpolation: str = "linear") -> Trace:
    """The trace in ``text`` (CSV, header ``t_s,rate``).

    Raises:
        TraceError: naming the line and the column of the first problem.
    """
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
    except StopIteration:
        raise TraceError(0, "is empty; expected the header t_s,rate") from None
    if tuple(cell.strip() for cell in header) != HEADER:
        raise TraceError(1, f"the header must be t_s,rate, got {','.join(header)!r}")
    times: list[float] = []
    rates: list[float] = []
    for line, row in enumerate(reader, 2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise TraceError(line, f"expected 2 values (t_s,rate), got {len(row)}")
        t = _number(row[0], line, "t_s")
        r = _number(row[1], line, "rate")
        if r < 0:
            raise TraceError(line, f"rate: must be >= 0, got {row[1].strip()!r}")
        if times and t <= times[-1]:
            raise TraceError(line, f"t_s: must be greater than the line before's ({times[-1]:g}), got {t:g}")
        if len(times) >= MAX_POINTS:
            raise TraceError(line, f"a trace holds at most {MAX_POINTS:,} points")
        times.append(t)
        rates.append(r)
    if len(times) < 2:
        raise TraceError(0, "needs at least two points after the header")
    if max(rates) <= 0:
        raise TraceError(0, "every rate is 0: no request would arrive")
    origin = times[0]
    return Trace(tuple(t - origin for t in times), tuple(rates), interpolation)


def _number(cell: str, line: int, column: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise TraceError(line, f"{column}: must be a number, got {cell.strip()!r}") from None
    if not math.isfinite(value):
        raise TraceError(line, f"{column}: must be finite, got {cell.strip()!r}")
    return value


def load_trace(path: str | Path, interpolation: str = "linear") -> Trace:
    """The trace in the file at ``path``; the same file (path, size, mtime) is read once.

    Raises:
        TraceError: the file cannot be read, or its first problem (line and column).
    """
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise TraceError(0, f"cannot read {path}: {exc.strerror or exc}") from None
    return _load(str(resolved), stat.st_size, stat.st_mtime_ns, interpolation)


@functools.lru_cache(maxsize=8)
def _load(path: str, size: int, mtime_ns: int, interpolation: str) -> Trace:
    del size, mtime_ns  # part of the cache key only
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(0, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_trace(text, interpolation)


class TraceCurve:
    """A trace played in simulated time: ``time_scale`` trace seconds per simulated second,
    ``rate_scale`` simulated arrivals per second per offered request/s of the trace.

    Arrivals are a Poisson process of that rate, drawn by thinning within each segment of
    the trace against the segment's own highest rate, so few candidates are thrown away
    (the draws depend on the trace and the generator only).
    """

    __slots__ = ("rate_scale", "time_scale", "trace")

    def __init__(self, trace: Trace, time_scale: float, rate_scale: float) -> None:
        self.trace = trace
        self.time_scale = time_scale
        self.rate_scale = rate_scale

    @property
    def duration_s(self) -> float:
        """Simulated seconds the whole trace takes."""
        return self.trace.length_s / self.time_scale

    def rate_at(self, t: float) -> float:
        """Arrivals per simulated second at simulated time ``t``."""
        return self.trace.rate_at(t * self.time_scale) * self.rate_scale

    def expected(self, until_s: float) -> float:
        """Mean number of arrivals from simulated time 0 to ``until_s``."""
        # Trace requests over trace seconds -> simulated arrivals: rate_scale per request/s per simulated s.
        return self.trace.integral(0.0, until_s * self.time_scale) / self.time_scale * self.rate_scale

    def arrivals(
        self, horizon_s: float, expovariate: Callable[[float], float], uniform: Callable[[], float]
    ) -> Callable[[float], float]:
        """``next(after)``: the next arrival after simulated time ``after`` (inf past ``horizon_s``).

        Calls must come in increasing ``after`` order (each the arrival the one before returned).
        """
        trace, scale, rate_scale = self.trace, self.time_scale, self.rate_scale
        times, rates, step = trace.t_s, trace.rate, trace.interpolation == "step"
        last = len(times) - 2
        end = min(horizon_s, trace.length_s / scale)
        cursor = [0]

        def next_arrival(after: float) -> float:
            t = after
            i = cursor[0]
            while t < end:
                while i < last and times[i + 1] <= t * scale:
                    i += 1
                seg_end = min(end, times[i + 1] / scale)
                r0, r1 = rates[i], rates[i + 1]
                bound = (r0 if step else max(r0, r1)) * rate_scale
                if bound <= 0:
                    t = seg_end
                    if t >= end:
                        break
                    i += 1
                    continue
                candidate = t + expovariate(bound)
                if candidate >= seg_end:
                    # Memoryless: start again at the segment's end, against the next one's bound.
                    t = seg_end
                    if i < last:
                        i += 1
                    continue
                t = candidate
                if step or r0 == r1:
                    cursor[0] = i
                    return t
                x = t * scale
                rate = (r0 + (r1 - r0) * (x - times[i]) / (times[i + 1] - times[i])) * rate_scale
                if uniform() * bound <= rate:
                    cursor[0] = i
                    return t
            cursor[0] = i
            return math.inf

        return next_arrival
