"""Fast recovery: while a breaker is open, ask the service's health in the background.

An OPEN breaker waits `open_wait_s`, growing up to `max_open_wait_s`, before it
lets a trial call through; after a long outage that wait, not the service, decides
when calls come back. So while any breaker of a client is OPEN, one background
prober per client (so one per target) sends `grpc.health.v1.Health/Check` at
most every `probe_interval_s` (each gap jittered up to 1.5 times it) and, on a
SERVING answer, ends every open wait: the breakers move to HALF_OPEN and their
trial calls close them as before.

Invariants: at most one probe in flight per client; a probe never runs on a
caller's path (starting one only starts a thread or a task); the prober stops
when no breaker is OPEN or the client closes. `ThreadProber` serves `Client`,
`TaskProber` serves `AsyncClient`; both take a clock, an RNG and a wait
function, so tests drive them without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable

from loadwarden.sdk._breaker import BreakerEvent, BreakerRegistry, BreakerState

_log = logging.getLogger("loadwarden.sdk")

# The health service name the Decision service reports on (its proto full name).
HEALTH_SERVICE = "loadwarden.v1.DecisionService"
# A probe waits for the channel to connect (wait_for_ready) up to this long, seconds:
# longer than the channel's largest reconnect backoff, so the probe in flight is
# answered as soon as the channel reconnects.
PROBE_TIMEOUT_S = 1.5
# Each gap between probe starts is probe_interval_s times a uniform factor in [1, this].
PROBE_JITTER = 1.5
SERVING_REASON = "health check answered SERVING"


class ProbeSchedule:
    """When the next probe may start: never sooner than `interval_s` after the last one started.

    Args:
        interval_s: Least gap between probe starts, seconds.
        rng: Draws each gap's jitter.
        clock: Monotonic time, seconds.
    """

    def __init__(self, interval_s: float, rng: random.Random, clock: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self._rng = rng
        self._clock = clock
        self._next_at = clock()  # the first probe may start at once: the breaker just opened

    def delay_s(self) -> float:
        """Seconds until the next probe may start, >= 0."""
        return max(0.0, self._next_at - self._clock())

    def started(self) -> None:
        """Records that a probe starts now."""
        self._next_at = self._clock() + self.interval_s * self._rng.uniform(1.0, PROBE_JITTER)


def any_open(breakers: BreakerRegistry) -> bool:
    return any(breaker.state is BreakerState.OPEN for breaker in breakers.breakers())


def end_open_waits(breakers: BreakerRegistry) -> int:
    """Moves every OPEN breaker to HALF_OPEN; returns how many moved."""
    return sum(breaker.end_open_wait(SERVING_REASON) for breaker in breakers.breakers())


class ThreadProber:
    """Probes from one daemon thread, started when a breaker opens, ended when none is OPEN.

    Args:
        breakers: The client's breakers.
        interval_s: Least gap between probe starts, seconds.
        check: Sends one health check bounded by a timeout in seconds; True when
            the service answered SERVING. Must not raise.
        rng: Jitter of the gaps.
        clock: Monotonic time, seconds.
        wait: Waits up to a number of seconds; True when the prober was stopped
            meanwhile. None uses the prober's own stop event.
    """

    def __init__(
        self,
        breakers: BreakerRegistry,
        interval_s: float,
        check: Callable[[float], bool],
        *,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        self._breakers = breakers
        self._check = check
        self._schedule = ProbeSchedule(interval_s, rng, clock)
        self._stopped = threading.Event()
        self._wait = wait if wait is not None else self._stopped.wait
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.probes = 0  # health checks sent, count
        self.recoveries = 0  # SERVING answers that ended at least one open wait, count

    def on_breaker_event(self, event: BreakerEvent) -> None:
        """A breaker listener: starts the prober when a breaker opens. Never blocks."""
        if event.current is BreakerState.OPEN:
            self.wake()

    def wake(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopped.is_set():
                return
            self._thread = threading.Thread(target=self.run, name="loadwarden-health-probe", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 0.0) -> None:
        """Stops probing; waits up to `timeout_s` for a probe in flight to end."""
        self._stopped.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread() and timeout_s > 0:
            thread.join(timeout_s)

    def run(self) -> None:
        """The probe loop, until no breaker is OPEN or the prober is stopped."""
        try:
            while True:
                with self._lock:
                    # Decided under the lock that wake() takes: a breaker opening now starts a new loop.
                    if self._stopped.is_set() or not any_open(self._breakers):
                        self._thread = None
                        return
                if self._wait(self._schedule.delay_s()):
                    return
                self._schedule.started()
                self.probes += 1
                if self._check(PROBE_TIMEOUT_S) and not self._stopped.is_set() and end_open_waits(self._breakers):
                    self.recoveries += 1
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None


class TaskProber:
    """Probes from one asyncio task on the client's loop, started when a breaker opens.

    Args:
        breakers: The client's breakers.
        interval_s: Least gap between probe starts, seconds.
        check: Sends one health check bounded by a timeout in seconds; True when
            the service answered SERVING. Must not raise.
        rng: Jitter of the gaps.
        clock: Monotonic time, seconds.
        sleep: Sleeps a number of seconds (asyncio.sleep unless a test passes one).
    """

    def __init__(
        self,
        breakers: BreakerRegistry,
        interval_s: float,
        check: Callable[[float], Awaitable[bool]],
        *,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._breakers = breakers
        self._check = check
        self._schedule = ProbeSchedule(interval_s, rng, clock)
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.probes = 0  # health checks sent, count
        self.recoveries = 0  # SERVING answers that ended at least one open wait, count

    def on_breaker_event(self, event: BreakerEvent) -> None:
        """A breaker listener: starts the prober when a breaker opens. Never blocks."""
        if event.current is BreakerState.OPEN:
            self.wake()

    def wake(self) -> None:
        if self._task is not None or self._stopped:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # opened off the loop's thread: the next opening on the loop starts it
            return
        self._task = loop.create_task(self.run(), name="loadwarden-health-probe")

    async def stop(self) -> None:
        """Stops probing and cancels a probe in flight."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """The probe loop, until no breaker is OPEN or the prober is stopped."""
        try:
            while not self._stopped and any_open(self._breakers):
                await self._sleep(self._schedule.delay_s())
                if self._stopped:
                    return
                self._schedule.started()
                self.probes += 1
                if await self._check(PROBE_TIMEOUT_S) and not self._stopped and end_open_waits(self._breakers):
                    self.recoveries += 1
        finally:
            if self._task is asyncio.current_task():
                self._task = None
