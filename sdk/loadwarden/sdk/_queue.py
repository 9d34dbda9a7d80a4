"""A client-side request queue: a concurrency limit, spacing between starts, priority, timeouts.

`SlotSchedule` holds every decision (who starts next, when, who is turned away)
as a pure function of its state and the time it is given. `RequestQueue`
(threads, generated) and `AsyncRequestQueue` (asyncio, `_async/queue.py`) only
wait until it says a call may start, so tests drive the ordering and spacing with
a fake clock.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class QueueTimeout(Exception):
    """A call waited its whole `timeout_s` in a `RequestQueue` without starting.

    Attributes:
        priority: The call's priority.
        waited_s: How long it waited, seconds.
        timeout_s: The longest it was allowed to wait, seconds.
    """

    def __init__(self, priority: int, waited_s: float, timeout_s: float) -> None:
        super().__init__(f"waited {waited_s:.3f} s (timeout {timeout_s:g} s) at priority {priority} without starting")
        self.priority = priority
        self.waited_s = waited_s
        self.timeout_s = timeout_s

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.priority, self.waited_s, self.timeout_s)


class QueueFull(Exception):
    """A call could not start at once and `max_queue` calls were already waiting.

    Attributes:
        max_queue: Calls allowed to wait, count.
    """

    def __init__(self, max_queue: int) -> None:
        super().__init__(f"request queue full: {max_queue} calls already waiting")
        self.max_queue = max_queue

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.max_queue,)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counters of a request queue.

    Attributes:
        in_flight: Calls holding a slot right now, count.
        waiting: Calls waiting for a slot right now, count.
        max_in_flight_seen: Most calls ever in flight at once, count (<= max_concurrent).
        timeouts: Calls that raised `QueueTimeout`, count.
        rejected: Calls that raised `QueueFull`, count.
        started: Calls that got a slot, count.
    """

    in_flight: int
    waiting: int
    max_in_flight_seen: int
    timeouts: int
    rejected: int
    started: int


@dataclass(eq=False, slots=True)
class Ticket:
    """One call's place in the queue; ordered by priority (higher first), then arrival."""

    priority: int
    seq: int
    joined_at: float
    waiting: bool = True

    def __lt__(self, other: Ticket) -> bool:
        return (-self.priority, self.seq) < (-other.priority, other.seq)


class SlotSchedule:
    """Who starts next and when: the whole policy of a request queue, with no waiting and no locks.

    Invariants: `in_flight <= max_concurrent`; two starts are at least
    `min_spacing_s` apart by the times passed to `start`; only the head (highest
    priority, then earliest arrival) of the waiting calls ever starts. Callers
    serialise access (the drivers hold a lock or run on one event loop).

    Args:
        max_concurrent: Calls in flight at most, count, >= 1.
        min_spacing_s: Least time between two starts, seconds, >= 0.
        max_queue: Calls waiting at most, count, >= 0; a call that can start at
            once never needs a place.

    Raises:
        ValueError: An argument is out of range; the message names it.
    """

    def __init__(self, max_concurrent: int, *, min_spacing_s: float = 0.0, max_queue: int = 1000) -> None:
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"max_concurrent must be a positive integer, got {max_concurrent!r}")
        if (
            isinstance(min_spacing_s, bool)
            or not isinstance(min_spacing_s, int | float)
            or not 0 <= min_spacing_s < math.inf
        ):
            raise ValueError(f"min_spacing_s must be a finite number of seconds >= 0, got {min_spacing_s!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise ValueError(f"max_queue must be an integer >= 0, got {max_queue!r}")
        self.max_concurrent = max_concurrent
        self.min_spacing_s = float(min_spacing_s)
        self.max_queue = max_queue
        self._heap: list[Ticket] = []  # may hold tickets that left; they are skipped lazily
        self._seq = itertools.count()
        self._waiting = 0
        self._in_flight = 0
        self._last_start_at: float | None = None
        self._max_in_flight_seen = 0
        self._timeouts = 0
        self._rejected = 0
        self._started = 0

    def next_start_at(self) -> float | None:
        """Earliest time the next call may start by the spacing rule; None when any time will do."""
        if self._last_start_at is None or self.min_spacing_s == 0:
            return None
        return self._last_start_at + self.min_spacing_s

    def join(self, priority: int, now: float) -> Ticket:
        """Puts a call in the queue at `now`.

        Raises:
            QueueFull: `max_queue` calls are waiting and this one cannot start at once.
        """
        if self._waiting >= self.max_queue and not (self._waiting == 0 and self._free_at(now) == 0):
            self._rejected += 1
            raise QueueFull(self.max_queue)
        ticket = Ticket(priority, next(self._seq), now)
        heapq.heappush(self._heap, ticket)
        self._waiting += 1
        return ticket

    def head(self) -> Ticket | None:
        """The waiting call that starts next, or None when none waits."""
        while self._heap and not self._heap[0].waiting:
            heapq.heappop(self._heap)
        return self._heap[0] if self._heap else None

    def delay_s(self, ticket: Ticket, now: float) -> float | None:
        """Seconds from `now` until `ticket` may start: 0 means now.

        None means not before something changes: a slot is released, or the
        calls ahead of `ticket` start or leave.
        """
        if ticket is not self.head():
            return None
        return self._free_at(now)

    def start(self, ticket: Ticket, now: float) -> None:
        """Gives `ticket` a slot; only when `delay_s(ticket, now)` is 0."""
        if self.delay_s(ticket, now) != 0:
            raise RuntimeError("start() of a call that may not start now")
        heapq.heappop(self._heap)
        ticket.waiting = False
        self._waiting -= 1
        self._in_flight += 1
        self._started += 1
        self._last_start_at = now
        self._max_in_flight_seen = max(self._max_in_flight_seen, self._in_flight)

    def leave(self, ticket: Ticket, *, timed_out: bool) -> None:
        """Takes a waiting call out of the queue (it timed out or was cancelled)."""
        if not ticket.waiting:
            return
        ticket.waiting = False
        self._waiting -= 1
        if timed_out:
            self._timeouts += 1

    def release(self) -> None:
        """Frees the slot of a call that started."""
        if self._in_flight == 0:
            raise RuntimeError("release() without a started call")
        self._in_flight -= 1

    def stats(self) -> QueueStats:
        return QueueStats(
            in_flight=self._in_flight,
            waiting=self._waiting,
            max_in_flight_seen=self._max_in_flight_seen,
            timeouts=self._timeouts,
            rejected=self._rejected,
            started=self._started,
        )

    def _free_at(self, now: float) -> float | None:
        # Seconds until a start is allowed regardless of who waits; None while full.
        if self._in_flight >= self.max_concurrent:
            return None
        next_at = self.next_start_at()
        return 0.0 if next_at is None or now >= next_at else next_at - now


def _check_call(priority: int, timeout_s: float | None) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"priority must be an integer, got {priority!r}")
    if timeout_s is not None and (
        isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 <= timeout_s < math.inf
    ):
        raise ValueError(f"timeout_s must be None or a finite number of seconds >= 0, got {timeout_s!r}")


def _check_clock(clock: Callable[[], float]) -> None:
    if not callable(clock):
        raise ValueError(f"clock must be a callable returning seconds, got {clock!r}")
