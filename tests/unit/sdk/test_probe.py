"""The background health probe that ends an open breaker's wait: pure, fake clock, seeded RNG."""

from __future__ import annotations

import random

import pytest

from loadwarden.sdk import BreakerConfig, BreakerEvent, BreakerState, CircuitBreaker
from loadwarden.sdk._async.probe import TaskProber
from loadwarden.sdk._breaker import BreakerRegistry
from loadwarden.sdk._probe import ProbeSchedule
from loadwarden.sdk._sync.probe import ThreadProber

from .conftest import FakeClock

LONG_S = 60.0


def open_registry(clock: FakeClock, *methods: str) -> BreakerRegistry:
    registry = BreakerRegistry(
        BreakerConfig(consecutive_failures=1, open_wait_s=LONG_S, max_open_wait_s=LONG_S), clock=clock
    )
    for method in methods:
        breaker = registry.get(method, "t")
        assert breaker.allow()
        breaker.record_failure()
    return registry


def test_probes_start_at_most_every_interval_with_jitter_up_to_half_of_it(fake_clock: FakeClock) -> None:
    schedule = ProbeSchedule(0.5, random.Random(11), fake_clock)
    assert schedule.delay_s() == 0.0  # the first probe goes at once

    gaps = []
    for _ in range(100):
        schedule.started()
        gaps.append(schedule.delay_s())
        fake_clock.advance(gaps[-1])
        assert schedule.delay_s() == 0.0

    assert all(0.5 <= gap <= 0.75 for gap in gaps)
    assert max(gaps) - min(gaps) > 0.1


def test_a_serving_answer_moves_every_open_breaker_to_half_open_and_the_prober_stops(fake_clock: FakeClock) -> None:
    registry = open_registry(fake_clock, "SelectServer", "AcquireSlot")
    answers = iter([False, False, True])
    waits: list[float] = []

    def wait(delay_s: float) -> bool:
        waits.append(delay_s)
        fake_clock.advance(delay_s)
        return False

    prober = ThreadProber(
        registry, 0.5, lambda timeout_s: next(answers), rng=random.Random(2), clock=fake_clock, wait=wait
    )
    prober.run()

    assert prober.probes == 3 and prober.recoveries == 1
    assert waits[0] == 0.0 and all(0.5 <= w <= 0.75 for w in waits[1:])
    assert {b.name: b.state for b in registry.breakers()} == {
        "SelectServer@t": BreakerState.HALF_OPEN,
        "AcquireSlot@t": BreakerState.HALF_OPEN,
    }
    assert fake_clock.now < 1000.0 + 2.0  # well before the 60 s open wait


def test_no_probe_runs_while_every_breaker_is_closed_and_stop_ends_the_loop(fake_clock: FakeClock) -> None:
    calls: list[float] = []

    def serving(timeout_s: float) -> bool:
        calls.append(timeout_s)
        return True

    def not_serving(timeout_s: float) -> bool:
        calls.append(timeout_s)
        return False

    closed = ThreadProber(
        BreakerRegistry(clock=fake_clock),
        0.5,
        serving,
        rng=random.Random(1),
        clock=fake_clock,
        wait=lambda d: False,
    )
    closed.run()
    assert calls == []

    registry = open_registry(fake_clock, "SelectServer")
    stopping = ThreadProber(
        registry,
        0.5,
        not_serving,
        rng=random.Random(1),
        clock=fake_clock,
        wait=lambda d: len(calls) >= 2,
    )
    stopping.run()
    assert len(calls) == 2
    assert registry.get("SelectServer", "t").state is BreakerState.OPEN


def test_wake_starts_at_most_one_probe_thread(fake_clock: FakeClock) -> None:
    registry = open_registry(fake_clock, "SelectServer")
    import threading

    release = threading.Event()
    prober = ThreadProber(
        registry, 0.5, lambda t: False, rng=random.Random(1), clock=fake_clock, wait=lambda d: release.wait(5.0)
    )
    prober.wake()
    first = prober._thread
    prober.wake()
    assert first is not None and prober._thread is first
    release.set()
    prober.stop(timeout_s=5.0)
    first.join(5.0)
    assert not first.is_alive()


async def test_the_task_prober_probes_on_the_loop_and_stop_cancels_it(fake_clock: FakeClock) -> None:
    registry = open_registry(fake_clock, "GetBatchSize")
    answers = iter([False, True])

    async def check(timeout_s: float) -> bool:
        return next(answers)

    async def sleep(delay_s: float) -> None:
        fake_clock.advance(delay_s)

    prober = TaskProber(registry, 0.5, check, rng=random.Random(4), clock=fake_clock, wait=sleep)
    await prober.run()
    assert prober.probes == 2 and registry.get("GetBatchSize", "t").state is BreakerState.HALF_OPEN

    import asyncio

    blocked = TaskProber(
        open_registry(fake_clock, "X"),
        0.5,
        check,
        rng=random.Random(4),
        clock=fake_clock,
        wait=lambda d: asyncio.Event().wait(),
    )
    blocked.wake()
    assert blocked._task is not None
    await blocked.stop()
    assert blocked._task is None


def test_end_open_wait_keeps_half_open_semantics_and_the_growing_wait(fake_clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "m",
        BreakerConfig(consecutive_failures=1, open_wait_s=1.0, max_open_wait_s=8.0, half_open_probes=1),
        clock=fake_clock,
    )
    assert not breaker.end_open_wait("serving")  # CLOSED: nothing to end
    breaker.allow()
    breaker.record_failure()
    events: list[BreakerEvent] = []
    breaker.add_listener(events.append)

    assert breaker.end_open_wait("health check answered SERVING")
    assert events[-1].reason == "health check answered SERVING"
    assert breaker.allow() and not breaker.allow()  # one trial call
    breaker.record_failure()  # the trial fails: open again, for twice as long
    assert breaker.state is BreakerState.OPEN and breaker.retry_after_s() == 2.0


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "0.5"])
def test_probe_interval_is_validated(bad: object) -> None:
    with pytest.raises(ValueError, match="probe_interval_s"):
        BreakerConfig(probe_interval_s=bad)  # type: ignore[arg-type]  # a wrong type on purpose: the check under test
    assert BreakerConfig(probe_interval_s=None).probe_interval_s is None
    assert BreakerConfig().probe_interval_s == 0.5
