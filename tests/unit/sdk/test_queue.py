"""The client-side request queue: the pure schedule with a fake clock, then both drivers.

Ordering and spacing are asserted on `SlotSchedule` with a clock that moves only
when told to. The threaded and asyncio drivers are checked for the limit,
priority, timeouts and release with threads/tasks that block on events with short
deadlines.
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
import threading
import time
from collections.abc import Callable

import pytest

from loadwarden.sdk._async.queue import AsyncRequestQueue
from loadwarden.sdk._queue import QueueFull, QueueStats, QueueTimeout, SlotSchedule, Ticket
from loadwarden.sdk._sync.queue import RequestQueue

# Longest any test waits for another thread or task to get somewhere, seconds.
DEADLINE_S = 5.0


def wait_until(predicate: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)


async def await_until(predicate: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0)


def record_starts(queue: RequestQueue | AsyncRequestQueue) -> list[float]:
    """The clock readings a queue's schedule starts calls at, in order (spies on the schedule)."""
    starts: list[float] = []
    schedule = queue._schedule
    start = schedule.start

    def spy(ticket: Ticket, now: float) -> None:
        start(ticket, now)
        starts.append(now)

    schedule.start = spy  # type: ignore[method-assign]  # a spy on this one schedule's bound method
    return starts


# -- SlotSchedule: pure, fake time ----------------------------------------------


def test_spacing_is_computed_from_the_given_time() -> None:
    schedule = SlotSchedule(10, min_spacing_s=0.1)
    assert schedule.next_start_at() is None
    a = schedule.join(0, now=100.0)
    assert schedule.delay_s(a, 100.0) == 0
    schedule.start(a, 100.0)
    assert schedule.next_start_at() == pytest.approx(100.1)

    b = schedule.join(0, now=100.0)
    assert schedule.delay_s(b, 100.0) == pytest.approx(0.1)
    assert schedule.delay_s(b, 100.06) == pytest.approx(0.04)
    with pytest.raises(RuntimeError):
        schedule.start(b, 100.06)
    assert schedule.delay_s(b, 100.1) == 0
    schedule.start(b, 100.1)
    assert schedule.next_start_at() == pytest.approx(100.2)
    # A late start moves the grid: spacing is measured from the last actual start.
    c = schedule.join(0, now=105.0)
    schedule.start(c, 105.0)
    assert schedule.next_start_at() == pytest.approx(105.1)


def test_spacing_applies_even_with_free_slots_and_zero_spacing_never_delays() -> None:
    spaced = SlotSchedule(3, min_spacing_s=2.0)
    starts = []
    now = 0.0
    tickets = [spaced.join(0, now) for _ in range(3)]
    for ticket in tickets:
        while (delay := spaced.delay_s(ticket, now)) != 0:
            assert delay is not None
            now += delay
        spaced.start(ticket, now)
        starts.append(now)
    assert starts == [0.0, 2.0, 4.0]

    unspaced = SlotSchedule(3)
    for _ in range(3):
        ticket = unspaced.join(0, 7.0)
        unspaced.start(ticket, 7.0)
    assert unspaced.next_start_at() is None
    assert unspaced.stats().in_flight == 3


def test_never_more_than_the_limit_and_release_frees_a_slot() -> None:
    schedule = SlotSchedule(2)
    first, second, third = (schedule.join(0, 0.0) for _ in range(3))
    schedule.start(first, 0.0)
    schedule.start(second, 0.0)
    assert schedule.delay_s(third, 0.0) is None  # full: not before a release
    schedule.release()
    assert schedule.delay_s(third, 0.0) == 0
    schedule.start(third, 0.0)
    assert schedule.stats() == QueueStats(
        in_flight=2, waiting=0, max_in_flight_seen=2, timeouts=0, rejected=0, started=3
    )
    with pytest.raises(RuntimeError):
        SlotSchedule(1).release()


def test_waiting_calls_start_by_priority_then_arrival() -> None:
    schedule = SlotSchedule(1)
    holder = schedule.join(0, 0.0)
    schedule.start(holder, 0.0)
    arrivals = [(0, "low"), (5, "high-1"), (2, "mid"), (5, "high-2"), (-1, "negative"), (2, "mid-2")]
    names = {id(schedule.join(priority, 0.0)): name for priority, name in arrivals}
    order = []
    while (head := schedule.head()) is not None:
        assert schedule.delay_s(head, 0.0) is None  # the slot is still held
        schedule.release()
        # Only the head may start.
        assert all(schedule.delay_s(t, 0.0) is None for t in schedule._heap if t is not head)
        schedule.start(head, 0.0)
        order.append(names[id(head)])
    assert order == ["high-1", "high-2", "mid", "mid-2", "low", "negative"]


def test_a_call_that_leaves_gives_its_place_to_the_next() -> None:
    schedule = SlotSchedule(1)
    holder = schedule.join(0, 0.0)
    schedule.start(holder, 0.0)
    first, second = schedule.join(1, 0.0), schedule.join(0, 0.0)
    assert schedule.head() is first
    schedule.leave(first, timed_out=True)
    schedule.leave(first, timed_out=True)  # idempotent
    assert schedule.head() is second
    schedule.leave(second, timed_out=False)  # cancelled: not a timeout
    assert schedule.head() is None
    stats = schedule.stats()
    assert (stats.waiting, stats.timeouts, stats.in_flight) == (0, 1, 1)


def test_queue_full_only_for_calls_that_would_wait() -> None:
    schedule = SlotSchedule(1, max_queue=2)
    holder = schedule.join(0, 0.0)  # starts at once: needs no place
    schedule.start(holder, 0.0)
    schedule.join(0, 0.0)
    schedule.join(9, 0.0)
    with pytest.raises(QueueFull) as raised:
        schedule.join(9, 0.0)
    assert raised.value.max_queue == 2
    assert schedule.stats().rejected == 1
    assert schedule.stats().waiting == 2

    no_waiting = SlotSchedule(1, max_queue=0)
    first = no_waiting.join(0, 0.0)
    no_waiting.start(first, 0.0)
    with pytest.raises(QueueFull):
        no_waiting.join(0, 0.0)


def test_queue_full_when_a_free_slot_is_held_back_by_spacing() -> None:
    schedule = SlotSchedule(5, min_spacing_s=1.0, max_queue=0)
    schedule.start(schedule.join(0, 0.0), 0.0)
    with pytest.raises(QueueFull):
        schedule.join(0, 0.5)
    schedule.start(schedule.join(0, 1.0), 1.0)


BAD_ARGS = [
    ({"max_concurrent": 0}, "max_concurrent"),
    ({"max_concurrent": 1.5}, "max_concurrent"),
    ({"max_concurrent": True}, "max_concurrent"),
    ({"min_spacing_s": -0.1}, "min_spacing_s"),
    ({"min_spacing_s": float("nan")}, "min_spacing_s"),
    ({"min_spacing_s": float("inf")}, "min_spacing_s"),
    ({"min_spacing_s": "1"}, "min_spacing_s"),
    ({"max_queue": -1}, "max_queue"),
    ({"max_queue": 2.0}, "max_queue"),
    ({"clock": 5}, "clock"),
]


@pytest.mark.parametrize("queue_class", [RequestQueue, AsyncRequestQueue])
@pytest.mark.parametrize(("override", "name"), BAD_ARGS)
def test_constructor_errors_name_the_parameter(queue_class: type, override: dict, name: str) -> None:
    args = {"max_concurrent": 2, **override}
    max_concurrent = args.pop("max_concurrent")
    with pytest.raises(ValueError, match=name):
        queue_class(max_concurrent, **args)


def test_exceptions_pickle_and_are_plain_exceptions() -> None:
    timeout = pickle.loads(pickle.dumps(QueueTimeout(3, 0.25, 0.2)))
    assert (timeout.priority, timeout.waited_s, timeout.timeout_s) == (3, 0.25, 0.2)
    full = pickle.loads(pickle.dumps(QueueFull(7)))
    assert full.max_queue == 7 and "7" in str(full)
    assert QueueTimeout.__mro__[1] is Exception and QueueFull.__mro__[1] is Exception


# -- RequestQueue: threads ------------------------------------------------------


def test_threads_never_exceed_the_limit() -> None:
    queue = RequestQueue(3)
    proceed = threading.Event()
    lock = threading.Lock()
    running = 0
    peak = 0
    errors: list[BaseException] = []

    def call() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            assert proceed.wait(DEADLINE_S)
        finally:
            with lock:
                running -= 1

    def worker() -> None:
        try:
            queue.run(call, timeout_s=DEADLINE_S)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for thread in threads:
        thread.start()
    wait_until(lambda: queue.stats().in_flight == 3 and queue.stats().waiting == 17)
    proceed.set()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert not errors
    assert peak == 3
    assert queue.stats() == QueueStats(in_flight=0, waiting=0, max_in_flight_seen=3, timeouts=0, rejected=0, started=20)


def test_threads_start_by_priority_then_arrival() -> None:
    queue = RequestQueue(1)
    started: list[str] = []
    threads = []
    with queue.slot():
        for waiting, (priority, name) in enumerate([(0, "a"), (3, "b"), (1, "c"), (3, "d"), (0, "e")], start=1):
            thread = threading.Thread(target=queue.run, args=(started.append, name), kwargs={"priority": priority})
            thread.start()
            threads.append(thread)

            def arrived(n: int = waiting) -> bool:
                return queue.stats().waiting == n

            wait_until(arrived)  # arrival order is fixed
    for thread in threads:
        thread.join(DEADLINE_S)
    assert started == ["b", "d", "c", "a", "e"]


def test_thread_waiting_too_long_raises_queue_timeout_and_leaves() -> None:
    queue = RequestQueue(1)
    with queue.slot():
        with pytest.raises(QueueTimeout) as raised, queue.slot(priority=4, timeout_s=0.02):
            pytest.fail("the block must not run")
        with pytest.raises(QueueTimeout):
            queue.run(print, timeout_s=0)  # no wait at all
    assert raised.value.priority == 4
    assert raised.value.waited_s >= 0.02
    stats = queue.stats()
    assert (stats.timeouts, stats.waiting, stats.in_flight, stats.started) == (2, 0, 0, 1)
    assert queue.run(lambda: "free again", timeout_s=0) == "free again"


def test_thread_timeout_of_the_head_lets_the_next_start() -> None:
    queue = RequestQueue(1)
    result: list[str] = []
    hold = queue.slot()
    hold.__enter__()
    follower = threading.Thread(target=lambda: result.append(queue.run(lambda: "ran", timeout_s=DEADLINE_S)))
    with pytest.raises(QueueTimeout), queue.slot(priority=9, timeout_s=0.0):
        pass
    follower.start()
    wait_until(lambda: queue.stats().waiting == 1)
    hold.__exit__(None, None, None)
    follower.join(DEADLINE_S)
    assert result == ["ran"]


def test_thread_queue_full_and_release_on_error() -> None:
    queue = RequestQueue(1, max_queue=1)
    waiter = threading.Thread(target=queue.run, args=(lambda: None,), kwargs={"timeout_s": DEADLINE_S})
    with queue.slot():
        waiter.start()
        wait_until(lambda: queue.stats().waiting == 1)
        with pytest.raises(QueueFull):
            queue.run(lambda: None)
    waiter.join(DEADLINE_S)
    with pytest.raises(ZeroDivisionError), queue.slot():
        _ = 1 / 0
    assert queue.stats() == QueueStats(in_flight=0, waiting=0, max_in_flight_seen=1, timeouts=0, rejected=1, started=3)


def test_thread_spacing_between_starts() -> None:
    spacing_s = 0.02
    queue = RequestQueue(4, min_spacing_s=spacing_s)
    starts = record_starts(queue)
    threads = [threading.Thread(target=queue.run, args=(lambda: None,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert len(starts) == 4
    assert all(b - a >= spacing_s for a, b in itertools.pairwise(starts))
    assert queue.next_start_at() == starts[-1] + spacing_s


@pytest.mark.parametrize(("kwargs", "name"), [({"priority": 1.0}, "priority"), ({"timeout_s": -1}, "timeout_s")])
def test_slot_arguments_are_checked(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name), RequestQueue(1).slot(**kwargs):
        pass


# -- AsyncRequestQueue: tasks ---------------------------------------------------


async def test_tasks_never_exceed_the_limit() -> None:
    queue = AsyncRequestQueue(4)
    proceed = asyncio.Event()
    running = 0
    peak = 0

    async def call(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await proceed.wait()
        finally:
            running -= 1
        return i

    tasks = [asyncio.create_task(queue.run(call, i, timeout_s=DEADLINE_S)) for i in range(30)]
    await await_until(lambda: queue.stats().waiting == 26)
    assert queue.stats().in_flight == 4
    proceed.set()
    async with asyncio.timeout(DEADLINE_S):
        assert await asyncio.gather(*tasks) == list(range(30))
    assert peak == 4
    assert queue.stats() == QueueStats(in_flight=0, waiting=0, max_in_flight_seen=4, timeouts=0, rejected=0, started=30)


async def test_tasks_start_by_priority_then_arrival() -> None:
    queue = AsyncRequestQueue(1)
    started: list[str] = []

    async def record(name: str) -> None:
        started.append(name)

    async with queue.slot():
        tasks = []
        for priority, name in [(0, "a"), (3, "b"), (1, "c"), (3, "d"), (0, "e")]:
            tasks.append(asyncio.create_task(queue.run(record, name, priority=priority)))
            await asyncio.sleep(0)  # the task joins the queue now: arrival order is fixed
        assert queue.stats().waiting == 5
    async with asyncio.timeout(DEADLINE_S):
        await asyncio.gather(*tasks)
    assert started == ["b", "d", "c", "a", "e"]


async def test_task_waiting_too_long_raises_queue_timeout() -> None:
    queue = AsyncRequestQueue(1)
    async with queue.slot():
        with pytest.raises(QueueTimeout) as raised:
            async with queue.slot(priority=2, timeout_s=0.02):
                pytest.fail("the block must not run")
    assert raised.value.priority == 2 and raised.value.waited_s >= 0.02
    stats = queue.stats()
    assert (stats.timeouts, stats.waiting, stats.in_flight) == (1, 0, 0)


async def test_cancelled_waiter_leaves_without_counting_a_timeout() -> None:
    queue = AsyncRequestQueue(1)
    ran: list[str] = []

    async def record(name: str) -> None:
        ran.append(name)

    async with queue.slot():
        cancelled = asyncio.create_task(queue.run(record, "cancelled", priority=5))
        follower = asyncio.create_task(queue.run(record, "follower"))
        await await_until(lambda: queue.stats().waiting == 2)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert queue.stats().waiting == 1
    async with asyncio.timeout(DEADLINE_S):
        await follower
    assert ran == ["follower"]
    assert queue.stats().timeouts == 0


async def test_task_queue_full_and_release_on_error() -> None:
    queue = AsyncRequestQueue(1, max_queue=1)
    async with queue.slot():
        waiter = asyncio.create_task(queue.run(asyncio.sleep, 0))
        await await_until(lambda: queue.stats().waiting == 1)
        with pytest.raises(QueueFull):
            async with queue.slot():
                pass
    await waiter
    with pytest.raises(ZeroDivisionError):
        async with queue.slot():
            _ = 1 / 0
    stats = queue.stats()
    assert (stats.in_flight, stats.waiting, stats.rejected, stats.started) == (0, 0, 1, 3)


async def test_task_spacing_between_starts() -> None:
    spacing_s = 0.02
    queue = AsyncRequestQueue(4, min_spacing_s=spacing_s)
    starts = record_starts(queue)
    async with asyncio.timeout(DEADLINE_S):
        await asyncio.gather(*(queue.run(asyncio.sleep, 0) for _ in range(4)))
    assert len(starts) == 4
    assert all(b - a >= spacing_s for a, b in itertools.pairwise(starts))


@pytest.mark.parametrize("queue_class", [RequestQueue, AsyncRequestQueue])
async def test_drivers_space_starts_by_the_injected_clock(queue_class: type, fake_clock) -> None:
    queue = queue_class(2, min_spacing_s=10.0, clock=fake_clock)

    async def enter(timeout_s: float) -> None:
        if isinstance(queue, RequestQueue):
            queue.run(lambda: None, timeout_s=timeout_s)
        else:
            await queue.run(asyncio.sleep, 0, timeout_s=timeout_s)

    await enter(0)
    assert queue.next_start_at() == fake_clock.now + 10.0
    fake_clock.advance(9.9)
    with pytest.raises(QueueTimeout):
        await enter(0)  # a slot is free, but the spacing holds the start back
    fake_clock.advance(0.1)
    await enter(0)
    assert queue.stats().started == 2 and queue.stats().timeouts == 1
