"""Admission-limit algorithms are pure: feed samples, assert the limit."""

from __future__ import annotations

import math
from typing import Any

import pytest

import loadwarden.policy.limits as limits_pkg
from loadwarden.policy._errors import InvalidArgument
from loadwarden.policy.limits import LIMITS, build_limit, check_limit, limit_class
from loadwarden.policy.limits.aimd import AimdLimit, AimdParams
from loadwarden.policy.limits.gradient2 import Gradient2Limit, Gradient2Params


def aimd(initial: int = 10, **params: Any) -> AimdLimit:
    return AimdLimit(AimdParams(**params), initial)


def gradient2(initial: int = 100, **params: Any) -> Gradient2Limit:
    return Gradient2Limit(Gradient2Params(**params), initial)


def warm(limit: Gradient2Limit, rtt_ms: float, n: int = 10) -> None:
    """n app-limited samples (in_flight 0): they set the long-term RTT, never the limit."""
    for _ in range(n):
        limit.on_sample(0.0, rtt_ms, 0, False)


# --- fixed -------------------------------------------------------------------


@pytest.mark.parametrize("initial", [0, 1, 8])
def test_fixed_never_changes(initial: int) -> None:
    limit = build_limit("fixed", {}, initial, "pool")
    for rtt_ms, in_flight, dropped in [(1.0, 100, False), (1e6, 1, True), (0.0, 0, False)]:
        limit.on_sample(1.0, rtt_ms, in_flight, dropped)
        assert limit.limit == initial


# --- aimd --------------------------------------------------------------------


def test_aimd_starts_at_initial_limit_clamped() -> None:
    assert aimd(10).limit == 10
    assert aimd(50, max_limit=20).limit == 20
    assert aimd(2, min_limit=5).limit == 5


def test_aimd_grows_by_one_only_when_half_the_slots_are_in_use() -> None:
    limit = aimd(10)
    limit.on_sample(0.0, 10.0, 4, False)  # 4 * 2 < 10: app-limited
    assert limit.limit == 10
    limit.on_sample(0.0, 10.0, 5, False)  # 5 * 2 >= 10
    assert limit.limit == 11
    limit.on_sample(0.0, 10.0, 5, False)  # 10 < 11
    assert limit.limit == 11
    limit.on_sample(0.0, 10.0, 6, False)
    assert limit.limit == 12


def test_aimd_backs_off_on_drop_and_on_timeout() -> None:
    limit = aimd(10)
    limit.on_sample(0.0, 10.0, 10, True)
    assert limit.limit == 9  # int(10 * 0.9)
    limit.on_sample(0.0, 5000.5, 9, False)
    assert limit.limit == 8  # int(9 * 0.9): slower than timeout_ms counts as a drop
    limit.on_sample(0.0, 5000.0, 8, False)
    assert limit.limit == 9  # exactly timeout_ms is not a timeout


def test_aimd_backoff_ratio_and_timeout_are_parameters() -> None:
    limit = aimd(10, backoff_ratio=0.5, timeout_ms=100.0)
    limit.on_sample(0.0, 101.0, 10, False)
    assert limit.limit == 5


def test_aimd_backoff_always_lowers_by_at_least_one() -> None:
    limit = aimd(5)
    limit.on_sample(0.0, 1.0, 5, True)
    assert limit.limit == 4  # int(4.5)


def test_aimd_clamps_at_both_ends() -> None:
    high = aimd(10, max_limit=12)
    for _ in range(5):
        high.on_sample(0.0, 1.0, 100, False)
    assert high.limit == 12
    low = aimd(5, min_limit=5)
    low.on_sample(0.0, 1.0, 5, True)
    assert low.limit == 5
    one = aimd(1)
    one.on_sample(0.0, 1.0, 1, True)  # int(0.9) == 0, lifted to min_limit 1
    assert one.limit == 1


# --- gradient2 ---------------------------------------------------------------


def test_gradient2_steady_rtt_grows_by_smoothing_times_queue_size() -> None:
    limit = gradient2(20)
    got = []
    for _ in range(3):
        limit.on_sample(0.0, 10.0, 20, False)
        got.append(limit.limit)
    # estimate 20.8, 21.6, 22.4: gradient 1, new = estimate + 4, smoothed by 0.2
    assert got == [20, 21, 22]


def test_gradient2_steady_rtt_grows_to_max_limit_and_stays() -> None:
    limit = gradient2(20)
    for _ in range(1300):  # (1000 - 20) / 0.8 = 1225 samples
        limit.on_sample(0.0, 10.0, 10_000, False)
    assert limit.limit == 1000
    limit.on_sample(0.0, 10.0, 10_000, False)
    assert limit.limit == 1000


def test_gradient2_rtt_twice_the_long_term_shrinks() -> None:
    limit = gradient2(100)
    warm(limit, 10.0)
    assert limit.long_rtt_ms == 10.0 and limit.limit == 100
    limit.on_sample(0.0, 20.0, 100, False)
    long_rtt = 10.0 + (20.0 - 10.0) * 2 / 601
    assert limit.long_rtt_ms == pytest.approx(long_rtt)
    # gradient = 1.5 * long / 20 = 0.7525; new = 100 * gradient + 4; smoothed 0.8 * 100 + 0.2 * new
    assert limit.limit == 95
    seen = [limit.limit]
    for _ in range(5):
        limit.on_sample(0.0, 20.0, 100, False)
        seen.append(limit.limit)
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == len(seen)


def test_gradient2_gradient_is_floored_at_one_half() -> None:
    limit = gradient2(100)
    warm(limit, 10.0)
    limit.on_sample(0.0, 100.0, 100, False)  # 1.5 * 10.3 / 100 = 0.15 -> 0.5
    assert limit.limit == 90  # 0.8 * 100 + 0.2 * (50 + 4) = 90.8


def test_gradient2_rtt_within_tolerance_still_grows() -> None:
    limit = gradient2(100)
    warm(limit, 10.0)
    limit.on_sample(0.0, 15.0, 100, False)  # 1.5x the baseline: gradient 1
    assert limit.limit == 100  # 100.8
    limit.on_sample(0.0, 15.0, 100, False)
    assert limit.limit == 101  # 101.6


def test_gradient2_app_limited_holds_the_limit_either_way() -> None:
    limit = gradient2(100)
    warm(limit, 10.0)
    for rtt_ms in (10.0, 100.0, 1.0):
        limit.on_sample(0.0, rtt_ms, 49, False)  # 49 < 100 / 2
        assert limit.limit == 100
    limit.on_sample(0.0, 100.0, 50, False)  # not app-limited any more
    assert limit.limit < 100


def test_gradient2_clamps_at_both_ends() -> None:
    high = gradient2(20, max_limit=22)
    for _ in range(10):
        high.on_sample(0.0, 10.0, 100, False)
    assert high.limit == 22
    low = gradient2(20, min_limit=20)
    warm(low, 10.0)
    for _ in range(10):
        low.on_sample(0.0, 100.0, 100, False)
    assert low.limit == 20


def test_gradient2_long_rtt_decays_towards_a_recovered_short_rtt() -> None:
    limit = gradient2(100)
    warm(limit, 100.0)
    limit.on_sample(0.0, 10.0, 0, False)
    ewma = 100.0 * (1 - 2 / 601) + 10.0 * 2 / 601
    assert limit.long_rtt_ms == pytest.approx(ewma * 0.95)  # long / short > 2: decayed
    for _ in range(60):
        limit.on_sample(0.0, 10.0, 0, False)
    plain_ewma = 10.0 + 90.0 * (1 - 2 / 601) ** 61
    assert plain_ewma > 80.0
    assert limit.long_rtt_ms < 20.0


def test_gradient2_ignores_dropped_flag_like_netflix() -> None:
    kept, dropped = gradient2(100), gradient2(100)
    for rtt_ms in [10.0] * 10 + [30.0, 5.0, 40.0]:
        kept.on_sample(0.0, rtt_ms, 100, False)
        dropped.on_sample(0.0, rtt_ms, 100, True)
    assert kept.limit == dropped.limit and kept.long_rtt_ms == dropped.long_rtt_ms


def test_gradient2_ignores_non_finite_rtt_and_survives_zero() -> None:
    limit = gradient2(100)
    warm(limit, 10.0)
    for rtt_ms in (math.nan, math.inf):
        limit.on_sample(0.0, rtt_ms, 100, False)
    assert limit.long_rtt_ms == 10.0 and limit.limit == 100
    limit.on_sample(0.0, 0.0, 100, False)  # read as 1 µs: gradient 1
    assert limit.limit == 100


# --- registry ----------------------------------------------------------------


def test_public_names() -> None:
    assert sorted(LIMITS) == ["aimd", "fixed", "gradient2"]
    assert sorted(limits_pkg.__all__) == [
        "LIMITS",
        "LimitAlgorithm",
        "build_limit",
        "check_limit",
        "clamp",
        "limit_class",
    ]
    for name, cls in LIMITS.items():
        assert cls.name == name
        assert build_limit(name, {}, 10, "pool").limit == 10


def test_unknown_algorithm_names_the_field_and_lists_valid_names() -> None:
    for call in (
        lambda: limit_class("magic", "pool"),
        lambda: check_limit("magic", {}, 10, "pool"),
        lambda: build_limit("magic", {}, 10, "pool"),
    ):
        with pytest.raises(InvalidArgument) as exc:
            call()
        assert exc.value.field == "pool.limit_algorithm"
        assert "aimd, fixed, gradient2" in str(exc.value)


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("aimd", {"backoff_ratio": 1.2}, "backoff_ratio"),
        ("aimd", {"backoff_ratio": 0.4}, "backoff_ratio"),
        ("aimd", {"min_limit": 20, "max_limit": 5}, "min_limit"),
        ("aimd", {"min_limit": 0}, "min_limit"),
        ("aimd", {"timeout_ms": -1}, "timeout_ms"),
        ("aimd", {"timeout_ms": "5s"}, "timeout_ms"),
        ("aimd", {"min_limit": 1.5}, "min_limit"),
        ("aimd", {"backoff_ratio": True}, "backoff_ratio"),
        ("aimd", {"nope": 1}, "nope"),
        ("gradient2", {"min_limit": 20, "max_limit": 5}, "min_limit"),
        ("gradient2", {"rtt_tolerance": 0.9}, "rtt_tolerance"),
        ("gradient2", {"smoothing": 0}, "smoothing"),
        ("gradient2", {"smoothing": 1.5}, "smoothing"),
        ("gradient2", {"long_window": 0}, "long_window"),
        ("gradient2", {"queue_size": 0}, "queue_size"),
        ("gradient2", {"backoff_ratio": 0.9}, "backoff_ratio"),
        ("fixed", {"min_limit": 1}, "min_limit"),
    ],
)
def test_invalid_params_name_the_field(name: str, params: dict[str, Any], field: str) -> None:
    for call in (check_limit, build_limit):
        with pytest.raises(InvalidArgument) as exc:
            call(name, params, 10, "pool")
        assert exc.value.field == f"pool.limit_params.{field}"


def test_unknown_param_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidArgument, match="backoff_ratio, max_limit, min_limit, timeout_ms"):
        check_limit("aimd", {"nope": 1}, 10, "pool")


def test_integral_floats_from_a_struct_are_accepted() -> None:
    limit = build_limit("aimd", {"min_limit": 2.0, "max_limit": 50.0, "timeout_ms": 100}, 10, "pool")
    assert limit.limit == 10


@pytest.mark.parametrize("name", ["aimd", "gradient2"])
@pytest.mark.parametrize(
    ("initial", "params", "problem"),
    [
        (0, {}, "valid only with 'fixed'"),
        (2000, {}, "above limit_params.max_limit 1000"),
        (3, {"min_limit": 5}, "below limit_params.min_limit 5"),
        (-1, {}, ">= 0"),
    ],
)
def test_adaptive_initial_limit_must_lie_within_bounds(
    name: str, initial: int, params: dict[str, Any], problem: str
) -> None:
    for call in (check_limit, build_limit):
        with pytest.raises(InvalidArgument, match=problem) as exc:
            call(name, params, initial, "pool")
        assert exc.value.field == "pool.max_concurrency"


def test_fixed_accepts_zero_but_not_negative() -> None:
    check_limit("fixed", {}, 0, "pool")
    with pytest.raises(InvalidArgument) as exc:
        check_limit("fixed", {}, -1, "pool")
    assert exc.value.field == "pool.max_concurrency"


# --- start_from: where the capacity planner starts a forecast surge ----------------


def test_start_from_moves_an_adaptive_limit_within_its_bounds_and_it_adapts_from_there() -> None:
    limit = aimd(10, max_limit=40)
    limit.start_from(30)
    assert limit.limit == 30
    limit.on_sample(0.0, 10.0, 15, False)
    assert limit.limit == 31
    limit.start_from(500)
    assert limit.limit == 40
    limit.start_from(0)
    assert limit.limit == 1
    slow = gradient2(10, max_limit=100)
    warm(slow, 10.0)
    slow.start_from(50)
    assert slow.limit == 50 and slow.long_rtt_ms == pytest.approx(10.0)  # the baseline is the backend's
    slow.start_from(1_000)
    assert slow.limit == 100


def test_start_from_leaves_a_fixed_limit_alone() -> None:
    limit = build_limit("fixed", {}, 8, "pool")
    limit.start_from(20)
    assert limit.limit == 8
