"""RateLimiter: token buckets per client key, pure, driven by plain `now` values."""

from __future__ import annotations

import math

import pytest

from loadwarden.policy._ratelimit import RateLimiter
from loadwarden.policy._settings import RateLimit, parse_rate_limit

# "30/minute" with burst 5: one token every 2 s, five at once.
THIRTY_PER_MINUTE_BURST_5 = RateLimit(count=30, per_s=60.0, burst=5)


def admitted(limiter: RateLimiter, key: str, times: list[float]) -> int:
    return sum(limiter.try_acquire(key, now) == 0.0 for now in times)


def test_a_fresh_key_gets_its_burst_at_once_then_waits_exactly_for_the_next_token() -> None:
    limiter = RateLimiter(THIRTY_PER_MINUTE_BURST_5, max_keys=10)

    assert [limiter.try_acquire("k", 0.0) for _ in range(5)] == [0.0] * 5
    assert limiter.try_acquire("k", 0.0) == 2.0
    assert limiter.try_acquire("k", 0.5) == 1.5
    assert limiter.try_acquire("k", 1.0) == 1.0
    assert limiter.try_acquire("k", 2.0) == 0.0
    assert limiter.try_acquire("k", 2.0) == 2.0


def test_over_a_minute_exactly_burst_plus_the_rate_is_admitted() -> None:
    limiter = RateLimiter(THIRTY_PER_MINUTE_BURST_5, max_keys=10)
    # Ten tries every 0.1 s for 60 s: tokens at t = 0 (5), then one at each of t = 2, 4, ..., 60.
    times = [step / 10 for step in range(601)]

    assert admitted(limiter, "k", times) == 5 + 30


def test_one_more_is_admitted_every_two_seconds_and_no_earlier() -> None:
    limiter = RateLimiter(THIRTY_PER_MINUTE_BURST_5, max_keys=10)
    admitted(limiter, "k", [0.0] * 5)

    for second in range(2, 61, 2):
        assert limiter.try_acquire("k", second - 0.001) > 0.0
        assert limiter.try_acquire("k", float(second)) == 0.0
        assert limiter.try_acquire("k", float(second)) == 2.0


@pytest.mark.parametrize(("spec", "interval_s"), [("10/minute", 6.0), ("7/minute", 60 / 7), ("3/hour", 1200.0)])
def test_rates_that_are_not_exact_in_binary_still_admit_on_time(spec: str, interval_s: float) -> None:
    limit = parse_rate_limit(spec, 1, "rate_limit")
    assert limit is not None
    limiter = RateLimiter(limit, max_keys=1)

    assert limiter.try_acquire("k", 0.0) == 0.0
    for n in range(1, 200):
        assert limiter.try_acquire("k", n * interval_s) == 0.0, n


def test_keys_are_independent() -> None:
    limiter = RateLimiter(THIRTY_PER_MINUTE_BURST_5, max_keys=10)
    admitted(limiter, "a", [0.0] * 5)

    assert limiter.try_acquire("a", 0.0) == 2.0
    assert admitted(limiter, "b", [0.0] * 6) == 5
    assert admitted(limiter, "", [0.0] * 6) == 5  # anonymous is one more key
    assert len(limiter) == 3


def test_the_number_of_keys_is_bounded_and_the_least_recently_used_is_evicted() -> None:
    limiter = RateLimiter(RateLimit(count=1, per_s=3600.0, burst=1), max_keys=2)
    limiter.try_acquire("a", 0.0)
    limiter.try_acquire("b", 0.0)
    assert limiter.try_acquire("a", 1.0) > 0.0  # a refused try is a use too: b is now least recent

    limiter.try_acquire("c", 2.0)

    assert len(limiter) == 2
    assert "b" not in limiter and "a" in limiter and "c" in limiter
    assert limiter.try_acquire("a", 3.0) > 0.0  # kept its (empty) bucket
    assert limiter.try_acquire("b", 3.0) == 0.0  # forgotten: came back full (the documented trade-off)
    assert "c" not in limiter  # evicted in turn: c was least recent after a's refusal


def test_many_keys_never_exceed_the_bound() -> None:
    limiter = RateLimiter(THIRTY_PER_MINUTE_BURST_5, max_keys=100)
    for i in range(10_000):
        limiter.try_acquire(f"client-{i}", float(i))

    assert len(limiter) == 100
    assert "client-9999" in limiter and "client-9899" not in limiter


def test_a_huge_gap_refills_only_up_to_burst() -> None:
    limiter = RateLimiter(THIRTY_PER_MINUTE_BURST_5, max_keys=10)
    admitted(limiter, "k", [0.0] * 5)

    for gap in (1e6, 1e300):
        assert admitted(limiter, "k", [gap] * 10) == 5
        assert limiter.try_acquire("k", gap) == 2.0


def test_time_running_backwards_adds_no_tokens_and_retry_after_stays_positive() -> None:
    limiter = RateLimiter(THIRTY_PER_MINUTE_BURST_5, max_keys=10)
    admitted(limiter, "k", [100.0] * 5)

    assert limiter.try_acquire("k", 50.0) == 2.0
    assert limiter.try_acquire("k", 101.0) == 1.0


def test_retry_after_is_never_negative_and_zero_only_when_admitted() -> None:
    limiter = RateLimiter(RateLimit(count=5, per_s=1.0, burst=3), max_keys=4)
    now = 0.0
    for step in range(5_000):
        now += (step % 7) * 0.013
        retry_after = limiter.try_acquire(f"k{step % 5}", now)
        assert retry_after >= 0.0
        assert retry_after <= 1 / 5 + 1e-12  # at most one token's refill time


def test_a_refused_try_spends_nothing() -> None:
    limiter = RateLimiter(RateLimit(count=1, per_s=1.0, burst=1), max_keys=1)
    limiter.try_acquire("k", 0.0)
    for now in (0.1, 0.2, 0.5, 0.9):
        assert limiter.try_acquire("k", now) == pytest.approx(1.0 - now)

    assert limiter.try_acquire("k", 1.0) == 0.0


def test_non_finite_now_is_refused() -> None:
    limiter = RateLimiter(THIRTY_PER_MINUTE_BURST_5, max_keys=1)
    for now in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="now"):
            limiter.try_acquire("k", now)


@pytest.mark.parametrize(
    ("limit", "max_keys", "name"),
    [
        (RateLimit(count=0, per_s=1.0, burst=1), 1, "limit.count"),
        (RateLimit(count=1, per_s=0.0, burst=1), 1, "limit.per_s"),
        (RateLimit(count=1, per_s=float("inf"), burst=1), 1, "limit.per_s"),
        (RateLimit(count=1, per_s=1.0, burst=0), 1, "limit.burst"),
        (RateLimit(count=1, per_s=1.0, burst=1), 0, "max_keys"),
        (RateLimit(count=1, per_s=1.0, burst=1), 2.5, "max_keys"),
        (RateLimit(count=1, per_s=1.0, burst=1), True, "max_keys"),
        ("30/minute", 1, "limit"),
    ],
)
def test_invalid_arguments_are_refused_by_name(limit: object, max_keys: object, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} "):
        RateLimiter(limit, max_keys)  # type: ignore[arg-type]  # a wrong type on purpose: the check under test


# --- take: several tokens at once, and what is left (Envoy's hits_addend, RLS answers) ----------

TEN_PER_MINUTE = RateLimit(count=10, per_s=60.0, burst=10)


def test_take_spends_several_tokens_and_says_what_is_left_and_when_it_is_full() -> None:
    limiter = RateLimiter(TEN_PER_MINUTE, max_keys=10)

    assert limiter.take("k", 0.0, tokens=3) == (0.0, 7, 18.0)
    assert limiter.take("k", 0.0) == (0.0, 6, 24.0)
    assert limiter.take("k", 6.0, tokens=7) == (0.0, 0, 60.0)  # 6 s refilled one token


def test_take_of_more_than_is_there_takes_nothing_and_waits_for_all_of_them() -> None:
    limiter = RateLimiter(TEN_PER_MINUTE, max_keys=10)
    limiter.take("k", 0.0, tokens=8)

    assert limiter.take("k", 0.0, tokens=5) == (18.0, 2, 48.0)
    assert limiter.take("k", 0.0, tokens=2).remaining == 0


def test_take_of_more_than_the_burst_never_passes() -> None:
    limiter = RateLimiter(TEN_PER_MINUTE, max_keys=10)

    taken = limiter.take("k", 0.0, tokens=11)

    assert taken.wait_s == math.inf
    assert taken.remaining == 10


def test_take_of_zero_tokens_checks_without_spending() -> None:
    limiter = RateLimiter(TEN_PER_MINUTE, max_keys=10)

    assert limiter.take("k", 0.0, tokens=0) == (0.0, 10, 0.0)
    limiter.take("k", 0.0, tokens=10)
    assert limiter.take("k", 0.0, tokens=0) == (6.0, 0, 60.0)


def test_take_over_an_identity_reports_the_emptier_of_its_two_buckets() -> None:
    limiter = RateLimiter(TEN_PER_MINUTE, max_keys=10, identity_limit=RateLimit(count=20, per_s=60.0, burst=20))

    assert limiter.take("a", 0.0, "alice", tokens=4) == (0.0, 6, 24.0)
    assert limiter.take("b", 0.0, "alice", tokens=4) == (0.0, 6, 24.0)
    # The identity's bucket holds 12 of 20: enough for key c's 10, and 2 are left.
    assert limiter.take("c", 0.0, "alice", tokens=10) == (0.0, 0, 60.0)
    # A fresh key d holds 10, the identity only 2: d waits 3 s for the identity's third token.
    assert limiter.take("d", 0.0, "alice", tokens=3) == (3.0, 2, 54.0)


@pytest.mark.parametrize("tokens", [-1, 1.5, True])
def test_take_refuses_a_token_count_that_is_not_one(tokens: object) -> None:
    limiter = RateLimiter(TEN_PER_MINUTE, max_keys=10)

    with pytest.raises(ValueError, match="tokens must be a whole number"):
        limiter.take("k", 0.0, tokens=tokens)  # type: ignore[arg-type]  # the wrong types are the point
