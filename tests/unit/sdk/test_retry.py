"""The retry layer: full-jitter backoff, the deadline, the retry budget. Pure: fake time."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from typing import Any

import pytest

from loadwarden.sdk import (
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    SlotDenied,
    UnavailableError,
)
from loadwarden.sdk._retry import MIN_ATTEMPT_S, Retrier, RetryBudget, RetryConfig

# Float slack for "start + timeout <= deadline": timeout is computed as deadline - start.
EPS = 1e-9
# A budget that never refuses, for tests about backoff and deadlines.
ROOMY: dict[str, Any] = {"budget_ratio": 1.0, "budget_min_per_s": 1000.0}


class FakeTime:
    """A clock that moves only when a fake sleep or a simulated attempt moves it."""

    def __init__(self, now: float = 1000.0, *, sleep_advances: bool = True) -> None:
        self.now = now
        self.sleep_advances = sleep_advances
        self.sleeps: list[tuple[float, float]] = []  # (start, seconds)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append((self.now, seconds))
        if self.sleep_advances:
            self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)

    @property
    def sleep_lengths(self) -> list[float]:
        return [seconds for _, seconds in self.sleeps]


def make_retrier(fake: FakeTime, *, seed: int = 7, budget: RetryBudget | None = None, **config: Any) -> Retrier:
    return Retrier(
        RetryConfig(**config),
        budget=budget,
        rng=random.Random(seed),
        clock=fake.clock,
        sleep=fake.sleep,
        async_sleep=fake.async_sleep,
    )


class Script:
    """An attempt function: records (start, timeout) and plays one step per attempt.

    A step is an exception to raise, a value to return, or a number of seconds the
    attempt takes before failing with UNAVAILABLE.
    """

    def __init__(self, fake: FakeTime, steps: list[Any], *, takes_s: float = 0.0) -> None:
        self.fake = fake
        self.steps = steps
        self.takes_s = takes_s
        self.calls: list[tuple[float, float]] = []
        self.raised: list[BaseException] = []

    def __call__(self, timeout_s: float) -> Any:
        self.calls.append((self.fake.now, timeout_s))
        step = self.steps[min(len(self.calls), len(self.steps)) - 1]
        self.fake.now += min(self.takes_s, timeout_s)
        if isinstance(step, BaseException):
            self.raised.append(step)
            raise step
        if callable(step):
            return step(timeout_s)
        return step

    async def async_call(self, timeout_s: float) -> Any:
        return self(timeout_s)


def unavailable(n: int) -> list[BaseException]:
    return [UnavailableError(f"down {i}") for i in range(n)]


def caps(n: int, initial: float, multiplier: float, maximum: float) -> list[float]:
    return [min(maximum, initial * multiplier**i) for i in range(n)]


# --- backoff -------------------------------------------------------------------------


def test_sleeps_follow_full_jitter_within_growing_caps() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, seed=11, max_attempts=6, initial_backoff_s=0.1, max_backoff_s=0.5, **ROOMY)
    script = Script(fake, unavailable(6))

    with pytest.raises(UnavailableError) as raised:
        retrier.call(script, deadline=fake.now + 100)

    assert raised.value is script.raised[-1]  # the last error itself, not a RetryError
    expected_caps = caps(5, 0.1, 2.0, 0.5)
    assert expected_caps == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert len(fake.sleeps) == 5
    for seconds, cap in zip(fake.sleep_lengths, expected_caps, strict=True):
        assert 0 <= seconds <= cap
    # Seeded: exactly the draws uniform(0, cap_n) from the same seed.
    rng = random.Random(11)
    assert fake.sleep_lengths == [rng.uniform(0, cap) for cap in expected_caps]
    assert retrier.stats()["attempts"] == 6
    assert retrier.stats()["retries"] == 5


def test_jitter_spreads_over_the_whole_range() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, seed=3, max_attempts=2, initial_backoff_s=1.0, max_backoff_s=1.0, **ROOMY)
    for _ in range(400):
        with pytest.raises(UnavailableError):
            retrier.call(Script(fake, unavailable(2)), deadline=fake.now + 100)
    sleeps = fake.sleep_lengths
    assert len(sleeps) == 400
    assert all(0 <= s <= 1.0 for s in sleeps)
    assert min(sleeps) < 0.05 and max(sleeps) > 0.95  # full jitter, not equal or decorrelated
    assert 0.45 < sum(sleeps) / len(sleeps) < 0.55


def test_huge_attempt_count_keeps_the_cap_at_max_backoff() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, max_attempts=1100, initial_backoff_s=0.001, max_backoff_s=0.002, **ROOMY)
    with pytest.raises(UnavailableError):
        retrier.call(Script(fake, unavailable(1)), deadline=fake.now + 10_000)
    assert len(fake.sleeps) == 1099  # multiplier ** 1098 overflows a float: the cap stays max_backoff_s
    assert all(s <= 0.002 for s in fake.sleep_lengths)


def test_success_after_failures_returns_the_value() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, max_attempts=3)
    script = Script(fake, [UnavailableError("a"), DeadlineExceededError("b"), "ok"])

    assert retrier.call(script, deadline=fake.now + 5) == "ok"
    stats = retrier.stats()
    assert (stats["calls"], stats["attempts"], stats["retries"], stats["budget_exhausted"]) == (1, 3, 2, 0)
    assert stats["budget"]["window_retries"] == 2


def test_one_attempt_means_no_retry_and_no_budget_spent() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, max_attempts=1)
    script = Script(fake, unavailable(1))
    with pytest.raises(UnavailableError):
        retrier.call(script, deadline=fake.now + 5)
    assert len(script.calls) == 1 and fake.sleeps == []
    assert retrier.stats()["budget"]["window_retries"] == 0


# --- what is retried -----------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError("pool: no pool 'x'"),
        InvalidArgumentError("pool: must not be empty"),
        UnavailableError("no server", reason="no-eligible-server"),
        ResourceExhaustedError("queue full", retry_after_s=0.5),
        SlotDenied("full", denial="AT_CAPACITY"),
        ValueError("a bug in the caller"),
    ],
    ids=lambda e: type(e).__name__ + ("-reason" if getattr(e, "reason", None) == "no-eligible-server" else ""),
)
def test_non_retryable_errors_are_raised_at_once(error: BaseException) -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, max_attempts=5)
    script = Script(fake, [error])

    with pytest.raises(type(error)) as raised:
        retrier.call(script, deadline=fake.now + 5)

    assert raised.value is error
    assert len(script.calls) == 1
    assert fake.sleeps == []
    assert retrier.stats()["retries"] == 0
    assert retrier.stats()["budget"]["window_retries"] == 0


def test_the_caller_chooses_what_is_retryable() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, max_attempts=3)
    script = Script(fake, [ResourceExhaustedError("busy"), "ok"])
    result = retrier.call(script, deadline=fake.now + 5, retryable=lambda exc: isinstance(exc, ResourceExhaustedError))
    assert result == "ok" and len(script.calls) == 2


# --- the deadline --------------------------------------------------------------------


@pytest.mark.parametrize("takes_s", [0.0, 0.07, 0.3])
def test_attempts_and_sleeps_stay_within_the_deadline(takes_s: float) -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, max_attempts=1000, initial_backoff_s=0.05, max_backoff_s=0.4, **ROOMY)
    start = fake.now
    deadline = start + 1.0
    script = Script(fake, unavailable(1), takes_s=takes_s)

    with pytest.raises(UnavailableError):
        retrier.call(script, deadline=deadline)

    assert len(script.calls) > 2
    for attempt_start, timeout_s in script.calls:
        assert timeout_s == deadline - attempt_start  # each attempt gets exactly the time left
        assert timeout_s >= MIN_ATTEMPT_S - EPS
        assert attempt_start + timeout_s <= deadline + EPS
    for sleep_start, seconds in fake.sleeps:
        assert sleep_start + seconds <= deadline - MIN_ATTEMPT_S + EPS  # room left for the next attempt
    assert fake.now <= deadline + EPS
    assert len(script.calls) < 1000  # the deadline ended it, not the attempt count


def test_a_sleep_that_would_pass_the_deadline_is_clipped() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, seed=5, max_attempts=3, initial_backoff_s=10.0, max_backoff_s=10.0, **ROOMY)
    deadline = fake.now + 0.5
    script = Script(fake, unavailable(3))

    with pytest.raises(UnavailableError):
        retrier.call(script, deadline=deadline)

    # Jitter in [0, 10 s] against 0.5 s left: this seed's first draw overshoots.
    assert random.Random(5).uniform(0, 10.0) > 0.5
    first_start, first_sleep = fake.sleeps[0]
    assert first_sleep == pytest.approx(deadline - first_start - MIN_ATTEMPT_S)
    assert script.calls[1][1] == pytest.approx(MIN_ATTEMPT_S)
    assert len(script.calls) == 2 and len(fake.sleeps) == 1  # the attempt after a clipped sleep is the last
    assert fake.now <= deadline + EPS


def test_deadline_exceeded_that_used_up_the_time_is_not_retried() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, max_attempts=5)
    deadline = fake.now + 2.0
    error = DeadlineExceededError("Deadline Exceeded")

    def attempt(timeout_s: float) -> None:
        fake.now += timeout_s  # gRPC gave up when the attempt's timeout ran out
        raise error

    with pytest.raises(DeadlineExceededError) as raised:
        retrier.call(attempt, deadline=deadline)
    assert raised.value is error
    assert fake.sleeps == []
    assert retrier.stats()["attempts"] == 1
    assert retrier.stats()["budget"]["window_retries"] == 0


def test_early_deadline_exceeded_is_retried_while_time_is_left() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, max_attempts=3)
    # e.g. a proxy with a shorter timeout answered DEADLINE_EXCEEDED after 0.1 s of 2 s
    script = Script(fake, [DeadlineExceededError("proxy timeout"), "ok"], takes_s=0.1)
    assert retrier.call(script, deadline=fake.now + 2.0) == "ok"
    assert len(script.calls) == 2


def test_no_retry_when_less_than_the_minimum_is_left() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, max_attempts=5)
    deadline = fake.now + 1.0
    script = Script(fake, unavailable(1), takes_s=1.0 - MIN_ATTEMPT_S / 2)
    with pytest.raises(UnavailableError):
        retrier.call(script, deadline=deadline)
    assert len(script.calls) == 1 and fake.sleeps == []


def test_a_passed_deadline_makes_no_attempt() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake)
    script = Script(fake, ["never"])
    with pytest.raises(DeadlineExceededError):
        retrier.call(script, deadline=fake.now)
    assert script.calls == []
    assert retrier.stats()["calls"] == 0 and retrier.stats()["budget"]["window_calls"] == 0


def test_an_overrunning_sleep_ends_the_call_with_the_last_error() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, max_attempts=5, **ROOMY)
    deadline = fake.now + 1.0

    def late_sleep(seconds: float) -> None:
        fake.now = deadline  # the real sleep overran its clipped length

    retrier._sleep = late_sleep
    script = Script(fake, unavailable(1))
    with pytest.raises(UnavailableError) as raised:
        retrier.call(script, deadline=deadline)
    assert raised.value is script.raised[0]
    assert len(script.calls) == 1


# --- the budget ----------------------------------------------------------------------


def storm(retrier: Retrier, fake: FakeTime, calls: int) -> list[int]:
    """Makes `calls` calls against a service failing every attempt; returns attempts per call."""
    attempts = []
    for _ in range(calls):
        script = Script(fake, unavailable(1))
        with pytest.raises(UnavailableError):
            retrier.call(script, deadline=fake.now + 30)
        attempts.append(len(script.calls))
    return attempts


def test_a_failure_storm_retries_at_most_ratio_of_calls_plus_the_floor() -> None:
    fake = FakeTime(sleep_advances=False)  # the whole storm within one budget window
    budget = RetryBudget(0.2, 1.0, 10.0, clock=fake.clock)
    retrier = make_retrier(fake, max_attempts=3, budget=budget)

    attempts = storm(retrier, fake, 100)

    retries = sum(a - 1 for a in attempts)
    assert retries <= 0.2 * 100 + 1.0 * 10.0
    assert retries == 30  # exact: tokens are integers, nothing leaks
    stats = retrier.stats()
    assert stats["retries"] == 30 and stats["attempts"] == 130
    assert stats["budget_exhausted"] == sum(1 for a in attempts if a < 3)
    assert stats["budget"]["balance"] == 0
    assert stats["budget"]["refused"] == stats["budget_exhausted"]
    # Without a budget the storm would have tripled the load; with it, +30 %.
    assert sum(attempts) / len(attempts) == pytest.approx(1.3)


def test_a_long_storm_stays_within_ratio_plus_floor_per_window() -> None:
    fake = FakeTime(now=0.0, sleep_advances=False)
    ratio, min_per_s, window_s = 0.1, 2.0, 5.0
    retrier = make_retrier(fake, max_attempts=4, budget=RetryBudget(ratio, min_per_s, window_s, clock=fake.clock))
    retries_at: list[float] = []
    calls_at: list[float] = []
    for _ in range(4000):  # 40 calls/s for 100 s, every attempt failing
        calls_at.append(fake.now)
        before = retrier.stats()["retries"]
        storm(retrier, fake, 1)
        retries_at += [fake.now] * (retrier.stats()["retries"] - before)
        fake.now += 0.025

    duration_s = fake.now
    assert len(retries_at) <= ratio * len(calls_at) + min_per_s * (duration_s + window_s)
    # The invariant behind it: over any stretch shorter than the window by one slice (so every
    # retry in it still counts at the stretch's last retry), retries are at most the floor plus
    # the share of the calls still counting then, made at most one window before.
    stretch_s = window_s * 9 / 10
    for start in range(int(duration_s)):
        in_stretch = sum(1 for t in retries_at if start <= t < start + stretch_s)
        calls_counting = sum(1 for t in calls_at if start - window_s <= t < start + stretch_s)
        assert in_stretch <= ratio * calls_counting + min_per_s * window_s


def test_budget_recovers_as_time_passes() -> None:
    fake = FakeTime(now=0.0, sleep_advances=False)
    budget = RetryBudget(0.2, 1.0, 10.0, clock=fake.clock)
    retrier = make_retrier(fake, max_attempts=3, budget=budget)

    assert sum(a - 1 for a in storm(retrier, fake, 100)) == 30
    assert budget.stats()["balance"] == 0
    fake.now += 10.0  # one window later every deposit and withdrawal has expired
    refused = retrier.stats()["budget_exhausted"]
    assert budget.stats() == {"balance": 10, "window_calls": 0, "window_retries": 0, "refused": refused}
    assert sum(a - 1 for a in storm(retrier, fake, 100)) == 30


def test_budget_recovers_as_calls_succeed() -> None:
    fake = FakeTime(now=0.0, sleep_advances=False)
    budget = RetryBudget(0.2, 0.0, 10.0, clock=fake.clock)
    retrier = make_retrier(fake, max_attempts=3, budget=budget)

    assert storm(retrier, fake, 4) == [1, 1, 1, 1]  # 4 x 0.2 tokens: not yet one retry
    assert retrier.stats()["budget_exhausted"] == 4
    retrier.call(Script(fake, ["ok"]), deadline=fake.now + 5)  # the fifth call completes a token
    assert budget.stats()["balance"] == 1
    assert storm(retrier, fake, 1) == [2]  # its 0.2 plus the saved token: one retry
    assert budget.stats()["balance"] == 0


def test_budget_unit() -> None:
    fake = FakeTime(now=0.0)
    budget = RetryBudget(0.5, 0.0, 1.0, clock=fake.clock)
    assert not budget.try_spend()
    budget.record_call()
    budget.record_call()
    assert budget.try_spend()
    assert not budget.try_spend()
    assert budget.stats() == {"balance": 0, "window_calls": 2, "window_retries": 1, "refused": 2}
    fake.now = 0.95  # still within the window (10 slices of 0.1 s)
    assert budget.stats()["window_calls"] == 2
    fake.now = 1.0
    assert budget.stats() == {"balance": 0, "window_calls": 0, "window_retries": 0, "refused": 2}


def test_empty_budget_never_retries() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, max_attempts=5, budget_ratio=0.0, budget_min_per_s=0.0)
    assert storm(retrier, fake, 10) == [1] * 10


def test_budget_is_thread_safe() -> None:
    budget = RetryBudget(0.0, 5.0, 10.0, clock=lambda: 0.0)  # a reserve of exactly 50 retries
    granted = []
    barrier = threading.Barrier(8)

    def spend() -> None:
        barrier.wait()
        granted.append(sum(budget.try_spend() for _ in range(100)))

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 50
    assert budget.stats()["refused"] == 750


# --- async ---------------------------------------------------------------------------


async def test_async_backoff_matches_sync() -> None:
    sync_fake, async_fake = FakeTime(), FakeTime()
    config = {"max_attempts": 5, "initial_backoff_s": 0.1, "max_backoff_s": 0.3, **ROOMY}
    sync_retrier = make_retrier(sync_fake, seed=21, **config)
    async_retrier = make_retrier(async_fake, seed=21, **config)
    sync_script, async_script = Script(sync_fake, unavailable(5)), Script(async_fake, unavailable(5))

    with pytest.raises(UnavailableError):
        sync_retrier.call(sync_script, deadline=sync_fake.now + 10)
    with pytest.raises(UnavailableError) as raised:
        await async_retrier.call_async(async_script.async_call, deadline=async_fake.now + 10)

    assert raised.value is async_script.raised[-1]
    assert async_fake.sleeps == sync_fake.sleeps
    assert async_script.calls == sync_script.calls
    assert all(s <= cap for s, cap in zip(async_fake.sleep_lengths, caps(4, 0.1, 2, 0.3), strict=True))


async def test_async_success_and_non_retryable() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, max_attempts=3)
    ok = Script(fake, [UnavailableError("a"), "ok"])
    assert await retrier.call_async(ok.async_call, deadline=fake.now + 5) == "ok"

    error = NotFoundError("pool: no pool 'x'")
    missing = Script(fake, [error])
    with pytest.raises(NotFoundError) as raised:
        await retrier.call_async(missing.async_call, deadline=fake.now + 5)
    assert raised.value is error and len(missing.calls) == 1


async def test_async_deadline_and_budget() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, max_attempts=1000, initial_backoff_s=0.05, max_backoff_s=0.4, **ROOMY)
    deadline = fake.now + 1.0
    script = Script(fake, unavailable(1), takes_s=0.07)
    with pytest.raises(UnavailableError):
        await retrier.call_async(script.async_call, deadline=deadline)
    for attempt_start, timeout_s in script.calls:
        assert timeout_s == deadline - attempt_start
        assert attempt_start + timeout_s <= deadline + EPS
    assert fake.now <= deadline + EPS

    stormy = FakeTime(sleep_advances=False)
    budgeted = make_retrier(stormy, max_attempts=3, budget=RetryBudget(0.2, 1.0, 10.0, clock=stormy.clock))
    for _ in range(100):
        with pytest.raises(UnavailableError):
            await budgeted.call_async(Script(stormy, unavailable(1)).async_call, deadline=stormy.now + 30)
    assert budgeted.stats()["retries"] == 30


async def test_async_deadline_exceeded_that_used_up_the_time_is_not_retried() -> None:
    fake = FakeTime()
    retrier = make_retrier(fake, max_attempts=5)

    async def attempt(timeout_s: float) -> None:
        fake.now += timeout_s
        raise DeadlineExceededError("Deadline Exceeded")

    with pytest.raises(DeadlineExceededError):
        await retrier.call_async(attempt, deadline=fake.now + 2.0)
    assert retrier.stats()["attempts"] == 1 and fake.sleeps == []


# --- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"initial_backoff_s": -0.1}, "initial_backoff_s"),
        ({"initial_backoff_s": 0.0}, "initial_backoff_s"),
        ({"initial_backoff_s": float("nan")}, "initial_backoff_s"),
        ({"max_backoff_s": 0.01, "initial_backoff_s": 0.05}, "max_backoff_s"),
        ({"max_backoff_s": float("inf")}, "max_backoff_s"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"budget_ratio": 1.5}, "budget_ratio"),
        ({"budget_ratio": -0.1}, "budget_ratio"),
        ({"budget_min_per_s": -1.0}, "budget_min_per_s"),
        ({"budget_window_s": 0.0}, "budget_window_s"),
    ],
)
def test_config_validation_names_the_parameter(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} "):
        RetryConfig(**kwargs)


@pytest.mark.parametrize(
    ("args", "name"),
    [((1.5, 1.0, 10.0), "ratio"), ((0.2, -1.0, 10.0), "min_per_s"), ((0.2, 1.0, 0.0), "window_s")],
)
def test_budget_validation_names_the_parameter(args: tuple[float, float, float], name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} "):
        RetryBudget(*args)


def test_config_is_frozen_with_documented_defaults() -> None:
    config = RetryConfig()
    backoff = (config.max_attempts, config.initial_backoff_s, config.max_backoff_s, config.multiplier)
    assert backoff == (3, 0.05, 1.0, 2.0)
    assert (config.budget_ratio, config.budget_min_per_s, config.budget_window_s) == (0.2, 1.0, 10.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_attempts = 5  # type: ignore[misc]  # frozen on purpose: the assignment must raise


def test_default_retrier_uses_real_time_without_sleeping_on_success() -> None:
    retrier = Retrier()
    calls: list[float] = []

    def attempt(timeout_s: float) -> str:
        calls.append(timeout_s)
        return "ok"

    assert retrier.call(attempt, deadline=time.monotonic() + 5) == "ok"
    assert 4 < calls[0] <= 5


def test_a_first_attempt_that_succeeds_never_builds_the_retry_machinery(monkeypatch: pytest.MonkeyPatch) -> None:
    # Building tenacity's objects costs tens of microseconds: the common case must not.
    import loadwarden.sdk._retry as retry_module

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("tenacity was entered for a call that needed no retry")

    monkeypatch.setattr(retry_module, "Retrying", forbidden)
    monkeypatch.setattr(retry_module, "AsyncRetrying", forbidden)
    retrier = retry_module.Retrier(retry_module.RetryConfig())
    assert retrier.call(lambda timeout_s: "ok", deadline=time.monotonic() + 1) == "ok"

    async def attempt(timeout_s: float) -> str:
        return "ok"

    assert asyncio.run(retrier.call_async(attempt, deadline=time.monotonic() + 1)) == "ok"
    assert retrier.stats()["attempts"] == 2 and retrier.stats()["retries"] == 0
