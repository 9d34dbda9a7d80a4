"""Circuit breaker state machine and registry, driven by a fake clock: no sleeping."""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import pytest

from loadwarden.sdk._breaker import (
    BreakerConfig,
    BreakerEvent,
    BreakerRegistry,
    BreakerState,
    CircuitBreaker,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: FakeClock, **overrides: Any) -> CircuitBreaker:
    # Rate trigger only unless a test turns the consecutive trigger on.
    settings: dict[str, Any] = {"consecutive_failures": 0, **overrides}
    return CircuitBreaker("m@t", BreakerConfig(**settings), clock=clock)


def feed(breaker: CircuitBreaker, outcomes: str) -> None:
    """Records one call per character: 'f' a failure, 's' a success."""
    for outcome in outcomes:
        assert breaker.allow()
        if outcome == "f":
            breaker.record_failure()
        else:
            breaker.record_success()


def trip(breaker: CircuitBreaker) -> None:
    feed(breaker, "f" * breaker.config.minimum_calls)
    assert breaker.state is OPEN


# --- count window -------------------------------------------------------------------------------


def test_count_window_does_not_judge_the_rate_below_minimum_calls() -> None:
    breaker = make(FakeClock(), window_size=10, minimum_calls=5, failure_rate_threshold=0.5)
    feed(breaker, "ffff")  # 100% failed, but only 4 calls
    assert breaker.state is CLOSED
    assert breaker.stats()["failure_rate"] == 1.0
    feed(breaker, "f")
    assert breaker.state is OPEN
    assert not breaker.allow()


def test_count_window_opens_exactly_at_the_threshold() -> None:
    breaker = make(FakeClock(), window_size=10, minimum_calls=10, failure_rate_threshold=0.3)
    feed(breaker, "ssssssssff")  # 2 of 10 failed: 20% < 30%
    assert breaker.state is CLOSED
    feed(breaker, "f")  # the oldest success leaves: 3 of 10 = 30%
    assert breaker.state is OPEN
    assert breaker.stats()["calls"] == 10
    assert breaker.stats()["failures"] == 3


def test_count_window_forgets_failures_that_slide_out() -> None:
    breaker = make(FakeClock(), window_size=4, minimum_calls=4, failure_rate_threshold=0.5)
    feed(breaker, "fsss")  # 25%
    feed(breaker, "sss")  # the failure slid out
    stats = breaker.stats()
    assert (stats["calls"], stats["failures"]) == (4, 0)
    feed(breaker, "f")  # 1 of 4
    assert breaker.state is CLOSED
    feed(breaker, "f")  # 2 of 4 = 50%
    assert breaker.state is OPEN


# --- time window --------------------------------------------------------------------------------


def test_time_window_opens_at_the_rate_only_after_minimum_calls() -> None:
    clock = FakeClock()
    breaker = make(clock, window="time", window_s=10.0, minimum_calls=4, failure_rate_threshold=0.5)
    feed(breaker, "sf")
    clock.advance(1.0)
    feed(breaker, "s")
    assert breaker.state is CLOSED  # 3 calls: not judged
    clock.advance(1.0)
    feed(breaker, "f")  # 2 of 4 = 50%
    assert breaker.state is OPEN


def test_time_window_calls_age_out() -> None:
    clock = FakeClock(1000.0)  # 10 s window = 20 buckets of 0.5 s; 1000.0 starts a bucket
    breaker = make(clock, window="time", window_s=10.0, minimum_calls=4, failure_rate_threshold=0.5)
    feed(breaker, "fff")  # at 1000.0
    clock.now = 1009.9
    assert breaker.stats()["calls"] == 3  # still inside the window
    clock.now = 1010.0  # the window no longer reaches 1000.0
    assert breaker.stats()["calls"] == 0
    feed(breaker, "f")  # 1 call in the window, not 4
    assert breaker.state is CLOSED
    clock.advance(100.0)  # a long idle gap empties the window too
    feed(breaker, "sss")
    assert breaker.stats()["calls"] == 3
    assert breaker.stats()["failures"] == 0


def test_time_window_ages_out_oldest_buckets_first() -> None:
    clock = FakeClock(1000.0)
    breaker = make(clock, window="time", window_s=10.0, minimum_calls=4, failure_rate_threshold=0.75)
    feed(breaker, "ff")  # at 1000
    clock.advance(5.0)
    feed(breaker, "ss")  # at 1005
    clock.advance(5.0)  # 1010: the failures left, the successes stay
    assert (breaker.stats()["calls"], breaker.stats()["failures"]) == (2, 0)
    feed(breaker, "ff")  # 2 of 4 = 50% < 75%
    assert breaker.state is CLOSED
    feed(breaker, "f")  # 3 of 5 = 60%
    assert breaker.state is CLOSED
    feed(breaker, "f")  # 4 of 6 = 67%
    assert breaker.state is CLOSED
    feed(breaker, "f")  # 5 of 7 = 71%
    assert breaker.state is CLOSED
    feed(breaker, "f")  # 6 of 8 = 75%
    assert breaker.state is OPEN


# --- consecutive failures -----------------------------------------------------------------------


def test_consecutive_failures_open_below_minimum_calls() -> None:
    breaker = make(FakeClock(), consecutive_failures=3, minimum_calls=10, failure_rate_threshold=1.0)
    events: list[BreakerEvent] = []
    breaker.add_listener(events.append)
    feed(breaker, "ffsff")  # the success resets the run
    assert breaker.state is CLOSED
    feed(breaker, "f")
    assert breaker.state is OPEN
    assert events[-1].reason.startswith("3 consecutive failures")


def test_consecutive_trigger_off_at_zero() -> None:
    breaker = make(FakeClock(), consecutive_failures=0, window_size=100, minimum_calls=100)
    feed(breaker, "f" * 50)
    assert breaker.state is CLOSED


# --- open and half-open -------------------------------------------------------------------------


def test_open_refuses_until_the_wait_passes_then_half_opens_lazily() -> None:
    clock = FakeClock()
    breaker = make(clock, minimum_calls=2, window_size=2, open_wait_s=5.0)
    trip(breaker)
    assert breaker.retry_after_s() == pytest.approx(5.0)
    clock.advance(4.0)
    assert not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(1.0)
    clock.advance(1.0)
    assert breaker.retry_after_s() == 0.0
    assert breaker.state is HALF_OPEN
    assert breaker.stats()["rejected"] == 1


def test_half_open_admits_exactly_the_probes() -> None:
    clock = FakeClock()
    breaker = make(clock, minimum_calls=2, window_size=2, half_open_probes=3)
    trip(breaker)
    clock.advance(breaker.config.open_wait_s)
    assert [breaker.allow() for _ in range(4)] == [True, True, True, False]
    assert breaker.stats()["half_open_in_flight"] == 3
    breaker.record_success()
    assert not breaker.allow()  # a finished probe does not free a slot: exactly N probes
    assert breaker.state is HALF_OPEN


def test_all_probes_succeeding_closes_and_resets_window_and_wait() -> None:
    clock = FakeClock()
    breaker = make(clock, minimum_calls=2, window_size=2, half_open_probes=2, open_wait_s=1.0, open_wait_multiplier=3.0)
    trip(breaker)
    clock.advance(1.0)
    feed(breaker, "f")  # probe fails: open for 3 s
    assert breaker.retry_after_s() == pytest.approx(3.0)
    clock.advance(3.0)
    feed(breaker, "s")
    assert breaker.state is HALF_OPEN
    feed(breaker, "s")
    assert breaker.state is CLOSED
    stats = breaker.stats()
    assert (stats["calls"], stats["failures"], stats["consecutive_failures"]) == (0, 0, 0)
    feed(breaker, "f")
    assert breaker.state is CLOSED  # the window restarted empty: 1 call < minimum
    feed(breaker, "f")
    assert breaker.retry_after_s() == pytest.approx(1.0)  # the wait was reset


def test_probe_failure_reopens_with_multiplied_capped_wait() -> None:
    clock = FakeClock()
    breaker = make(
        clock, minimum_calls=2, window_size=2, open_wait_s=2.0, open_wait_multiplier=2.0, max_open_wait_s=10.0
    )
    trip(breaker)
    waits = []
    for _ in range(5):
        wait = breaker.retry_after_s()
        waits.append(wait)
        clock.advance(wait)
        assert breaker.allow()
        breaker.record_failure()
        assert breaker.state is OPEN
    assert waits == pytest.approx([2.0, 4.0, 8.0, 10.0, 10.0])
    assert breaker.stats()["open_wait_s"] == 10.0


def test_release_hands_a_probe_slot_back() -> None:
    clock = FakeClock()
    breaker = make(clock, minimum_calls=2, window_size=2, half_open_probes=1)
    trip(breaker)
    clock.advance(breaker.config.open_wait_s)
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()  # the probe was cancelled before it reached the service
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CLOSED


def test_outcomes_while_open_are_ignored() -> None:
    clock = FakeClock()
    breaker = make(clock, minimum_calls=2, window_size=2, open_wait_s=5.0)
    trip(breaker)
    breaker.record_failure()  # a late answer to a call allowed before the breaker opened
    breaker.record_success()
    assert breaker.retry_after_s() == pytest.approx(5.0)
    clock.advance(5.0)
    breaker.record_success()  # HALF_OPEN, no probe out yet: not a probe result
    assert breaker.state is HALF_OPEN
    assert breaker.stats()["half_open_in_flight"] == 0


# --- listeners ----------------------------------------------------------------------------------


def test_listeners_see_every_transition_with_reasons() -> None:
    clock = FakeClock()
    breaker = make(clock, minimum_calls=2, window_size=2, half_open_probes=1, open_wait_s=1.0)
    events: list[BreakerEvent] = []
    breaker.add_listener(events.append)
    trip(breaker)  # CLOSED -> OPEN
    clock.advance(1.0)
    feed(breaker, "f")  # -> HALF_OPEN -> OPEN
    clock.advance(2.0)
    feed(breaker, "s")  # -> HALF_OPEN -> CLOSED
    assert [(e.previous, e.current) for e in events] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]
    assert all(e.name == "m@t" and e.reason for e in events)
    assert "failure rate 100% >= 50% over 2 calls" in events[0].reason
    assert "open for 1 s" in events[0].reason
    assert "elapsed" in events[1].reason
    assert "probe failed" in events[2].reason and "open for 2 s" in events[2].reason
    assert "probes succeeded" in events[4].reason
    assert [e.at for e in events] == [1000.0, 1001.0, 1001.0, 1003.0, 1003.0]
    assert breaker.stats()["state_changes"] == 5


def test_failing_listener_is_logged_and_does_not_break_the_breaker(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    breaker = make(clock, minimum_calls=2, window_size=2)
    seen: list[BreakerEvent] = []

    def broken(event: BreakerEvent) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    breaker.add_listener(seen.append)
    with caplog.at_level(logging.ERROR, logger="loadwarden.sdk._breaker"):
        trip(breaker)
    assert [e.current for e in seen] == [OPEN]  # later listeners still ran
    assert "listener" in caplog.text and "listener bug" in caplog.text
    assert not breaker.allow()


def test_listener_may_call_back_into_the_breaker() -> None:
    breaker = make(FakeClock(), minimum_calls=2, window_size=2)
    seen: list[tuple[BreakerState, float]] = []
    breaker.add_listener(lambda event: seen.append((breaker.state, breaker.retry_after_s())))
    trip(breaker)  # would deadlock if listeners ran under the lock
    [(state, retry_after_s)] = seen
    assert state is OPEN and retry_after_s == pytest.approx(5.0)


# --- threads ------------------------------------------------------------------------------------


def test_threads_hammering_keep_counts_consistent() -> None:
    # Never opens (threshold 100%, one success per thread breaks every failure run), so every call counts.
    breaker = CircuitBreaker(
        "m@t",
        BreakerConfig(window_size=1000, minimum_calls=1000, failure_rate_threshold=1.0, consecutive_failures=0),
    )
    threads, per_thread = 8, 2000
    barrier = threading.Barrier(threads)

    def hammer(index: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            assert breaker.allow()
            if (i + index) % 4 == 0:
                breaker.record_failure()
            else:
                breaker.record_success()
            breaker.stats()

    workers = [threading.Thread(target=hammer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stats = breaker.stats()
    assert stats["total_calls"] == threads * per_thread
    assert stats["total_failures"] == threads * per_thread // 4
    assert stats["calls"] == 1000
    assert 0 <= stats["failures"] <= 1000
    assert breaker.state is CLOSED


def test_threads_racing_for_half_open_probes_get_exactly_n() -> None:
    clock = FakeClock()
    breaker = make(clock, minimum_calls=2, window_size=2, half_open_probes=5)
    trip(breaker)
    clock.advance(breaker.config.open_wait_s)
    allowed: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def race() -> None:
        barrier.wait()
        for _ in range(50):
            result = breaker.allow()
            with lock:
                allowed.append(result)

    workers = [threading.Thread(target=race) for _ in range(16)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert allowed.count(True) == 5


# --- config validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_rate_threshold", 0.0),
        ("failure_rate_threshold", -0.1),
        ("failure_rate_threshold", 1.01),
        ("failure_rate_threshold", float("nan")),
        ("window", "sliding"),
        ("window_size", 0),
        ("window_size", 2.5),
        ("window_s", 0.0),
        ("window_s", -1.0),
        ("window_s", float("inf")),
        ("minimum_calls", 0),
        ("minimum_calls", 21),  # above the default count window of 20
        ("consecutive_failures", -1),
        ("consecutive_failures", True),
        ("open_wait_s", 0.0),
        ("open_wait_s", -5.0),
        ("max_open_wait_s", 4.0),  # below the default open wait of 5 s
        ("open_wait_multiplier", 0.5),
        ("open_wait_multiplier", float("nan")),
        ("half_open_probes", 0),
    ],
)
def test_config_rejects_bad_values_naming_the_parameter(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field} "):
        BreakerConfig(**{field: value})  # type: ignore[arg-type]  # a wrong type on purpose: the check under test


def test_config_accepts_edges_and_is_frozen() -> None:
    config = BreakerConfig(
        failure_rate_threshold=1.0,
        window="time",
        minimum_calls=500,  # a time window has no size cap
        consecutive_failures=0,
        open_wait_s=2.0,
        max_open_wait_s=2.0,
        open_wait_multiplier=1.0,
        half_open_probes=1,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.window = "count"  # type: ignore[misc]  # frozen on purpose: the assignment must raise


# --- registry -----------------------------------------------------------------------------------


def test_registry_keeps_one_breaker_per_method_and_target() -> None:
    clock = FakeClock()
    registry = BreakerRegistry(BreakerConfig(minimum_calls=2, window_size=2, consecutive_failures=0), clock=clock)
    acquire_a = registry.get("/lw/AcquireSlot", "a:1")
    assert registry.get("/lw/AcquireSlot", "a:1") is acquire_a
    acquire_b = registry.get("/lw/AcquireSlot", "b:1")
    route_a = registry.get("/lw/Route", "a:1")
    assert len({id(acquire_a), id(acquire_b), id(route_a)}) == 3
    trip(acquire_a)
    assert registry.snapshot() == {
        "/lw/AcquireSlot@a:1": OPEN,
        "/lw/AcquireSlot@b:1": CLOSED,
        "/lw/Route@a:1": CLOSED,
    }
    clock.advance(5.0)
    assert registry.snapshot()["/lw/AcquireSlot@a:1"] is HALF_OPEN


def test_registry_is_bounded_and_evicts_least_recent_closed_first() -> None:
    registry = BreakerRegistry(
        BreakerConfig(minimum_calls=2, window_size=2, consecutive_failures=0), clock=FakeClock(), max_breakers=3
    )
    oldest_open = registry.get("m", "t0")
    trip(oldest_open)
    registry.get("m", "t1")
    registry.get("m", "t2")
    registry.get("m", "t1")  # t1 is now more recent than t2
    registry.get("m", "t3")  # full: t2 is the least recent CLOSED one
    assert len(registry) == 3
    assert set(registry.snapshot()) == {"m@t0", "m@t1", "m@t3"}
    assert registry.get("m", "t0") is oldest_open
    for n in range(100):
        registry.get("m", f"x{n}")
    assert len(registry) == 3


def test_registry_evicts_least_recent_when_none_is_closed() -> None:
    registry = BreakerRegistry(
        BreakerConfig(minimum_calls=2, window_size=2, consecutive_failures=0), clock=FakeClock(), max_breakers=2
    )
    trip(registry.get("m", "a"))
    trip(registry.get("m", "b"))
    registry.get("m", "c")
    assert set(registry.snapshot()) == {"m@b", "m@c"}


def test_registry_listeners_apply_to_present_and_future_breakers() -> None:
    registry = BreakerRegistry(BreakerConfig(minimum_calls=2, window_size=2, consecutive_failures=0), clock=FakeClock())
    before = registry.get("m", "before")
    events: list[BreakerEvent] = []
    registry.add_listener(events.append)
    after = registry.get("m", "after")
    trip(before)
    trip(after)
    assert [(e.name, e.current) for e in events] == [("m@before", OPEN), ("m@after", OPEN)]


def test_registry_rejects_a_bad_bound() -> None:
    with pytest.raises(ValueError, match=r"^max_breakers "):
        BreakerRegistry(max_breakers=0)
