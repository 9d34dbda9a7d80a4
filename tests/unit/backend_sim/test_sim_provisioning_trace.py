"""Offered-load traces: parsing, exact integrals and crossings, and arrivals drawn from them."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import pytest

from loadwarden.backend_sim._provision_trace import TraceCurve, TraceError, parse_trace


def _trace(rows: Sequence[tuple[float, float]], interpolation: str = "linear") -> Any:
    return parse_trace("t_s,rate\n" + "".join(f"{t:g},{r:g}\n" for t, r in rows), interpolation)


# --- the trace ---------------------------------------------------------------------------


def test_a_linear_trace_integrates_and_crosses_levels_exactly() -> None:
    trace = _trace([(0, 0), (1000, 100)])
    assert trace.integral(0, 1000) == pytest.approx(50_000)
    assert trace.mean_rate(0, 500) == pytest.approx(25)
    assert trace.time_above(20, 0, 1000) == pytest.approx(800)
    assert trace.time_above(20, 100, 300) == pytest.approx(100)
    assert trace.time_above(100, 0, 1000) == 0  # strictly above
    assert trace.rate_at(250) == pytest.approx(25)


def test_a_step_trace_holds_each_rate_until_the_next_point() -> None:
    trace = _trace([(0, 10), (100, 30), (200, 30)], "step")
    assert trace.integral(0, 200) == pytest.approx(4000)
    assert trace.rate_at(99.9) == 10 and trace.rate_at(100) == 30
    assert trace.time_above(10, 0, 200) == pytest.approx(100)
    assert trace.time_above(5, 50, 150) == pytest.approx(100)


def test_times_are_moved_to_start_at_the_first_point() -> None:
    trace = _trace([(600, 1), (900, 2), (1200, 3)])
    assert trace.t_s == (0.0, 300.0, 600.0) and trace.length_s == 600


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("", 0, "is empty"),
        ("time,rate\n0,1\n", 1, "the header must be t_s,rate"),
        ("t_s,rate\n0,1\n", 0, "at least two points"),
        ("t_s,rate\n0,1\n300,-2\n", 3, "rate: must be >= 0, got '-2'"),
        ("t_s,rate\n0,1\n300,x\n", 3, "rate: must be a number, got 'x'"),
        ("t_s,rate\n0,1\n300,nan\n", 3, "rate: must be finite"),
        ("t_s,rate\n0,1\n300,2\n300,3\n", 4, "t_s: must be greater than the line before's (300), got 300"),
        ("t_s,rate\n0,1\n600,2\n300,3\n", 4, "t_s: must be greater than the line before's (600), got 300"),
        ("t_s,rate\n0,1\n300,2,3\n", 3, "expected 2 values"),
        ("t_s,rate\n0,0\n300,0\n", 0, "every rate is 0"),
    ],
)
def test_a_bad_trace_names_the_line_and_the_column(text: str, line: int, words: str) -> None:
    with pytest.raises(TraceError) as caught:
        parse_trace(text)
    assert caught.value.line == line and words in caught.value.problem
    if line:
        assert str(caught.value).startswith(f"line {line}: ")


def test_arrivals_follow_the_trace_and_depend_on_the_seed_only() -> None:
    curve = TraceCurve(_trace([(0, 0), (600, 200), (1200, 200), (1800, 0)]), time_scale=60, rate_scale=2)
    assert curve.duration_s == 30 and curve.expected(30) == pytest.approx(8000)

    def draw(seed: int) -> list[float]:
        rng = random.Random(seed)
        nxt, t, out = curve.arrivals(curve.duration_s, rng.expovariate, rng.random), 0.0, []
        while (t := nxt(t)) < math.inf:
            out.append(t)
        return out

    times = draw(7)
    assert times == draw(7) and times != draw(8)
    assert abs(len(times) - 8000) < 4 * math.sqrt(8000)
    middle = sum(1 for t in times if 10 <= t < 20)  # the flat third: 2 x 200 / s for 10 simulated s
    assert abs(middle - 4000) < 4 * math.sqrt(4000)
    assert all(0 < t < 30 for t in times) and times == sorted(times)
