"""History rows to evenly spaced series: gauges averaged per step, counters as rates, gaps as None."""

from __future__ import annotations

import pytest

from loadwarden.server.engine._planning_series import bucket, latest


def test_a_gauge_is_averaged_per_step_and_an_empty_step_is_a_gap() -> None:
    rows = [(0.0, 2.0), (10.0, 4.0), (65.0, 9.0), (190.0, 1.0)]
    # Buckets (0, 50], (50, 100], (100, 150], (150, 200]: the sample at 0 ends an earlier interval.
    assert bucket(rows, 1, False, 0.0, 200.0, 50.0) == [4.0, 9.0, None, 1.0]
    assert bucket(rows, 1, False, 0.0, 200.0, 100.0) == [6.5, 1.0]


def test_a_counter_becomes_its_rate_and_a_reset_is_a_gap() -> None:
    rows = [(0.0, 100), (10.0, 150), (20.0, 250), (30.0, 5), (40.0, 25)]
    # 5/s, 10/s, then the counter fell (a restart): no rate for that step, then 2/s.
    assert bucket(rows, 1, True, 0.0, 40.0, 10.0) == [5.0, 10.0, None, 2.0]


def test_null_and_non_finite_values_are_gaps_never_errors() -> None:
    rows = [(0.0, None), (10.0, float("nan")), (20.0, "x"), (30.0, float("inf")), (35.0, 3.0)]
    assert bucket(rows, 1, False, 0.0, 40.0, 10.0) == [None, None, None, 3.0]
    # A counter after a missing value starts over rather than spanning the gap.
    assert bucket([(0.0, 0), (10.0, None), (20.0, 50), (30.0, 80)], 1, True, 0.0, 30.0, 10.0) == [None, None, 3.0]


def test_no_rows_or_no_span_give_gaps_or_nothing() -> None:
    assert bucket([], 1, False, 0.0, 30.0, 10.0) == [None, None, None]
    assert bucket([(5.0, 1.0)], 1, False, 10.0, 10.0, 10.0) == []


def test_a_sample_at_the_end_is_in_the_last_step() -> None:
    assert bucket([(30.0, 7.0)], 1, False, 0.0, 30.0, 10.0) == [None, None, 7.0]


@pytest.mark.parametrize(("values", "expected"), [([1.0, None], 1.0), ([None, None], None), ([], None)])
def test_latest_skips_gaps(values: list[float | None], expected: float | None) -> None:
    assert latest(values) == expected
