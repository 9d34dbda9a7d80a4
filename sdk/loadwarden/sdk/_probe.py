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
when no breaker is OPEN or the client closes. `TaskProber` (`_async/probe.py`)
serves `AsyncClient` and `ThreadProber`, generated from it, serves `Client`; both
take a clock, an RNG and a wait function, so tests drive them without sleeping.
This module holds what they share.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from loadwarden.sdk._breaker import BreakerRegistry, BreakerState

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
