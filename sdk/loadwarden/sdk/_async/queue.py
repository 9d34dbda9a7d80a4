"""`AsyncRequestQueue`: waits until the `SlotSchedule` says a call may start (see `loadwarden.sdk._queue`)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from loadwarden.sdk._queue import QueueStats, QueueTimeout, SlotSchedule, Ticket, _check_call, _check_clock
from loadwarden.sdk._synchronization import AsyncCondition, AsyncThreadLock

T = TypeVar("T")


class AsyncRequestQueue:
    """Limits and spaces calls to a backend (seed 004's client-side queue).

    Never more than `max_concurrent` calls run at once; starts are at least
    `min_spacing_s` apart; waiting calls start by priority (higher first), then
    in arrival order. Use it from one event loop.

    Example:
        queue = AsyncRequestQueue(5, min_spacing_s=0.1)
        async with queue.slot(priority=1, timeout_s=5.0):
            await call_backend()

    Args:
        max_concurrent: Calls in flight at most, count, >= 1.
        min_spacing_s: Least time between two starts, seconds, >= 0.
        max_queue: Calls waiting at most, count, >= 0; beyond it calls raise `QueueFull`.
        clock: Monotonic clock, seconds; waits are real time, re-checked against it.

    Raises:
        ValueError: An argument is out of range; the message names it.
    """

    def __init__(
        self,
        max_concurrent: int,
        *,
        min_spacing_s: float = 0.0,
        max_queue: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_clock(clock)
        self._schedule = SlotSchedule(max_concurrent, min_spacing_s=min_spacing_s, max_queue=max_queue)
        self._clock = clock
        self._lock = AsyncThreadLock()
        self._wakers: dict[Ticket, AsyncCondition] = {}  # one per waiting call, all on _lock

    @contextlib.asynccontextmanager
    async def slot(self, *, priority: int = 0, timeout_s: float | None = None) -> AsyncIterator[None]:
        """Holds a slot for the block; it is released however the block exits.

        Args:
            priority: Higher starts first; any integer.
            timeout_s: Longest to wait for the slot, seconds; None waits without limit.

        Raises:
            QueueTimeout: No slot within `timeout_s`; the block does not run.
            QueueFull: `max_queue` calls are waiting; the block does not run.
            ValueError: An argument is out of range.
        """
        await self._acquire(priority, timeout_s)
        try:
            yield
        finally:
            with self._lock:
                self._schedule.release()
                self._wake_head()

    # `fn`'s arguments are untyped: PEP 612 allows no keyword-only parameter between P.args and P.kwargs.
    async def run(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        priority: int = 0,
        timeout_s: float | None = None,
        **kwargs: Any,
    ) -> T:
        """Calls `fn(*args, **kwargs)` in a slot and returns its result; see `slot`."""
        async with self.slot(priority=priority, timeout_s=timeout_s):
            return await fn(*args, **kwargs)

    def stats(self) -> QueueStats:
        with self._lock:
            return self._schedule.stats()

    def next_start_at(self) -> float | None:
        """Earliest time (by `clock`) the next call may start by the spacing rule; None when any time."""
        with self._lock:
            return self._schedule.next_start_at()

    async def _acquire(self, priority: int, timeout_s: float | None) -> None:
        _check_call(priority, timeout_s)
        with self._lock:
            now = self._clock()
            ticket = self._schedule.join(priority, now)
            deadline = math.inf if timeout_s is None else now + timeout_s
            waker = self._wakers[ticket] = AsyncCondition(self._lock)
            try:
                while True:
                    now = self._clock()
                    delay = self._schedule.delay_s(ticket, now)
                    if delay == 0:
                        self._schedule.start(ticket, now)
                        return
                    if now >= deadline:
                        self._schedule.leave(ticket, timed_out=True)
                        raise QueueTimeout(priority, now - ticket.joined_at, timeout_s or 0.0)
                    wait_s = min(deadline - now, math.inf if delay is None else delay)
                    await waker.wait(None if wait_s == math.inf else wait_s)
            finally:
                self._schedule.leave(ticket, timed_out=False)  # no-op unless interrupted while waiting
                del self._wakers[ticket]
                self._wake_head()  # the head changed: it started or left

    def _wake_head(self) -> None:
        # Caller holds the lock. Only the head can start, so only it is woken.
        head = self._schedule.head()
        if head is not None:
            self._wakers[head].notify_all()
