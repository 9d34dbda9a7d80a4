"""The background health prober of a client: a task (async) or a daemon thread (sync).

See `loadwarden.sdk._probe` for why it exists and what it shares with its twin.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable

from loadwarden.sdk._breaker import BreakerEvent, BreakerRegistry, BreakerState
from loadwarden.sdk._probe import PROBE_TIMEOUT_S, ProbeSchedule, any_open, end_open_waits
from loadwarden.sdk._synchronization import AsyncEvent, AsyncThreadLock, AsyncWorker, AsyncWorkerHandle


class TaskProber:
    """Probes from one background task (a daemon thread, in the sync twin), started when a
    breaker opens, ended when none is OPEN.

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
        check: Callable[[float], Awaitable[bool]],
        *,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], Awaitable[bool | None]] | None = None,
    ) -> None:
        self._breakers = breakers
        self._check = check
        self._schedule = ProbeSchedule(interval_s, rng, clock)
        self._stopped = AsyncEvent()
        self._wait = wait if wait is not None else self._stopped.wait
        self._lock = AsyncThreadLock()
        self._task: AsyncWorkerHandle | None = None
        self.probes = 0  # health checks sent, count
        self.recoveries = 0  # SERVING answers that ended at least one open wait, count

    def on_breaker_event(self, event: BreakerEvent) -> None:
        """A breaker listener: starts the prober when a breaker opens. Never blocks."""
        if event.current is BreakerState.OPEN:
            self.wake()

    def wake(self) -> None:
        """Starts the probe loop unless it runs or the prober was stopped (off a loop: the next opening on it)."""
        with self._lock:
            if self._task is not None or self._stopped.is_set():
                return
            self._task = AsyncWorker.spawn(self.run, "loadwarden-health-probe")

    async def stop(self, timeout_s: float = 0.0) -> None:
        """Stops probing: a task is cancelled with its probe in flight; a thread is waited for up to `timeout_s`."""
        self._stopped.set()
        with self._lock:
            task = self._task
        if task is None:
            return
        await AsyncWorker.stop(task, timeout_s)
        with self._lock:
            if self._task is task and AsyncWorker.finished(task):
                self._task = None

    async def run(self) -> None:
        """The probe loop, until no breaker is OPEN or the prober is stopped."""
        try:
            while True:
                with self._lock:
                    # Decided under the lock that wake() takes: a breaker opening now starts a new loop.
                    if self._stopped.is_set() or not any_open(self._breakers):
                        self._task = None
                        return
                if await self._wait(self._schedule.delay_s()):
                    return
                self._schedule.started()
                self.probes += 1
                if await self._check(PROBE_TIMEOUT_S) and not self._stopped.is_set() and end_open_waits(self._breakers):
                    self.recoveries += 1
        finally:
            with self._lock:
                if self._task is not None and AsyncWorker.is_current(self._task):
                    self._task = None
