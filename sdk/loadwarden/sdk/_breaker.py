"""Circuit breakers: one per (method, target), so a failing service fails fast locally.

States follow resilience4j's CircuitBreaker. CLOSED lets every call through and
records outcomes in a count- or time-based sliding window; it opens when the
window holds at least `minimum_calls` calls and their failure rate reaches the
threshold, or after `consecutive_failures` failures in a row. OPEN refuses every
call for the current open wait, then moves to HALF_OPEN lazily (on the next
look). HALF_OPEN lets exactly `half_open_probes` calls through: one failure
re-opens with the wait multiplied (capped), all of them succeeding closes and
resets the window and the wait.

Only transport failures (`is_transport_failure`) are failures. A business answer
(NOT_FOUND, RESOURCE_EXHAUSTED, a denied slot) reached the service and counts
as a success.

Written here rather than taken from a library; none of the maintained ones fits:

- pybreaker: consecutive failures only (no rate window, no minimum calls), a
  fixed reset timeout, wall-clock `datetime.now` that cannot be injected, and
  `call()` holds its lock for the whole guarded call, so a slow call blocks
  every other thread; its async support is Tornado only.
- aiobreaker: an asyncio fork of pybreaker with the same consecutive-failure
  model and no thread safety for a sync client; unreleased since 2021.
- circuitbreaker: consecutive failures and a fixed recovery timeout, no lock,
  no listeners, module-level `monotonic`, and HALF_OPEN does not limit probes.
- purgatory: a failure threshold and a fixed TTL per circuit, behind a unit of
  work and message bus; no rate window, no minimum calls, no growing wait, no
  injectable clock.

None has both window kinds with a minimum number of calls, a growing open wait
or a bounded number of half-open probes. This module is one lock per breaker,
held only for O(1) bookkeeping (never across a call, an await or a listener),
so the same breaker serves threads of a sync client and tasks of an asyncio
client without blocking the event loop.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeGuard

_LOG = logging.getLogger(__name__)

# A time window is this many buckets: a call stays in it between
# window_s * (1 - 1/_TIME_BUCKETS) and window_s seconds after it was recorded.
_TIME_BUCKETS = 20

_WINDOWS = ("count", "time")


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_count(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_seconds(name: str, value: object) -> None:
    if not _is_number(value) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")


class BreakerState(enum.Enum):
    """Where a circuit breaker is; see the module docstring for the moves."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    """How a circuit breaker judges failures and how long it stays open.

    Attributes:
        failure_rate_threshold: Fraction of failed calls in the window, in (0, 1],
            at or above which CLOSED opens.
        window: "count" (the last `window_size` calls) or "time" (the calls of
            the last `window_s` seconds).
        window_size: Calls in a count window, >= 1.
        window_s: Length of a time window, seconds, > 0.
        minimum_calls: Calls the window must hold before its failure rate is
            judged, >= 1; for a count window at most `window_size`.
        consecutive_failures: Failures in a row that open CLOSED whatever the
            rate, >= 0; 0 turns this trigger off.
        open_wait_s: How long the first opening lasts, seconds, > 0.
        max_open_wait_s: Cap on the open wait, seconds, >= `open_wait_s`.
        open_wait_multiplier: Factor, >= 1, applied to the wait on each re-open
            from HALF_OPEN; closing resets the wait to `open_wait_s`.
        half_open_probes: Calls let through in HALF_OPEN, >= 1; all must
            succeed to close.
        probe_interval_s: While a client's breaker is OPEN, the client asks the
            service's `grpc.health.v1.Health/Check` in the background at most
            this often (each gap jittered up to 1.5 times it), seconds, > 0; a
            SERVING answer ends the open wait (the breaker moves to HALF_OPEN at
            once, whatever the wait was). None turns probing off. Used by
            `Client`/`AsyncClient`, not by a bare `CircuitBreaker`.
    """

    failure_rate_threshold: float = 0.5
    window: str = "count"
    window_size: int = 20
    window_s: float = 10.0
    minimum_calls: int = 10
    consecutive_failures: int = 5
    open_wait_s: float = 5.0
    max_open_wait_s: float = 60.0
    open_wait_multiplier: float = 2.0
    half_open_probes: int = 3
    probe_interval_s: float | None = 0.5

    def __post_init__(self) -> None:
        if not _is_number(self.failure_rate_threshold) or not 0 < self.failure_rate_threshold <= 1:
            raise ValueError(f"failure_rate_threshold must be in (0, 1], got {self.failure_rate_threshold!r}")
        if self.window not in _WINDOWS:
            raise ValueError(f"window must be one of {', '.join(map(repr, _WINDOWS))}, got {self.window!r}")
        _check_count("window_size", self.window_size, minimum=1)
        _check_seconds("window_s", self.window_s)
        _check_count("minimum_calls", self.minimum_calls, minimum=1)
        if self.window == "count" and self.minimum_calls > self.window_size:
            raise ValueError(
                f"minimum_calls must be <= window_size ({self.window_size}) for a count window, "
                f"got {self.minimum_calls}"
            )
        _check_count("consecutive_failures", self.consecutive_failures, minimum=0)
        _check_seconds("open_wait_s", self.open_wait_s)
        _check_seconds("max_open_wait_s", self.max_open_wait_s)
        if self.max_open_wait_s < self.open_wait_s:
            raise ValueError(
                f"max_open_wait_s must be >= open_wait_s ({self.open_wait_s:g}), got {self.max_open_wait_s!r}"
            )
        if not _is_number(self.open_wait_multiplier) or not 1 <= self.open_wait_multiplier < math.inf:
            raise ValueError(f"open_wait_multiplier must be a finite number >= 1, got {self.open_wait_multiplier!r}")
        _check_count("half_open_probes", self.half_open_probes, minimum=1)
        if self.probe_interval_s is not None:
            _check_seconds("probe_interval_s", self.probe_interval_s)


@dataclass(frozen=True)
class BreakerEvent:
    """One state change of a circuit breaker, as its listeners see it.

    Attributes:
        name: The breaker's name.
        previous: State before the change.
        current: State after the change.
        at: When, on the breaker's clock, seconds.
        reason: Why, for logs, e.g. "failure rate 60% >= 50% over 10 calls".
    """

    name: str
    previous: BreakerState
    current: BreakerState
    at: float
    reason: str


BreakerListener = Callable[[BreakerEvent], None]


class CircuitBreaker:
    """Decides whether a call to one (method, target) may go out, from past outcomes.

    Callers ask `allow()` before a call and, for every allowed call, report
    exactly one of `record_success()`, `record_failure()` or `release()`. A
    HALF_OPEN breaker keeps its probe slots until their outcomes arrive, so an
    allowed call that never reports keeps the breaker from closing.

    Outcomes are attributed to the state the breaker is in when they arrive: one
    arriving while OPEN is ignored, and one arriving in HALF_OPEN counts as a
    probe result only while a probe is outstanding.

    Thread-safe, and safe to call from an event loop: the lock guards O(1)
    bookkeeping only. Listeners run after the lock is released, on the thread
    whose call caused the change; changes caused on different threads may reach
    listeners out of order (`BreakerEvent.at` orders them).
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig = BreakerConfig(),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Makes a CLOSED breaker.

        Args:
            name: Names the breaker in events, stats and logs.
            config: Thresholds and waits.
            clock: Monotonic time, seconds; tests pass a fake one.
        """
        self._name = name
        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: tuple[BreakerListener, ...] = ()
        self._window: _CountWindow | _TimeWindow = (
            _CountWindow(config.window_size) if config.window == "count" else _TimeWindow(config.window_s)
        )
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._open_until = 0.0  # clock time OPEN ends; meaningful only while OPEN
        self._open_wait_s = config.open_wait_s  # length of the current or last opening
        self._next_open_wait_s = config.open_wait_s  # length of the next opening
        self._probes_issued = 0  # HALF_OPEN calls allowed since entering HALF_OPEN
        self._probes_done = 0  # of those, how many have succeeded or been released
        self._state_changes = 0
        self._rejected = 0
        self._total_calls = 0
        self._total_failures = 0

    @property
    def name(self) -> str:
        """The breaker's name."""
        return self._name

    @property
    def config(self) -> BreakerConfig:
        """The breaker's thresholds and waits."""
        return self._config

    @property
    def state(self) -> BreakerState:
        """The current state; an OPEN breaker whose wait has passed becomes HALF_OPEN here."""
        with self._lock:
            event = self._half_open_if_due(self._clock())
            state = self._state
        if event is not None:
            self._notify(event)
        return state

    def allow(self) -> bool:
        """Tells whether a call may go out now.

        Returns:
            True in CLOSED; False in OPEN; in HALF_OPEN, True for the first
            `half_open_probes` calls and False after that until the breaker
            moves on.
        """
        with self._lock:
            event = self._half_open_if_due(self._clock())
            state = self._state
            if state is BreakerState.CLOSED:
                allowed = True
            elif state is BreakerState.HALF_OPEN and self._probes_issued < self._config.half_open_probes:
                self._probes_issued += 1
                allowed = True
            else:
                self._rejected += 1
                allowed = False
        if event is not None:
            self._notify(event)
        return allowed

    def record_success(self) -> None:
        """Reports an allowed call that reached the service.

        A business error (NOT_FOUND, RESOURCE_EXHAUSTED, a denied slot, ...) is
        a success here: the service answered.
        """
        self._record(failed=False)

    def record_failure(self) -> None:
        """Reports an allowed call that failed at the transport level.

        Callers record only errors for which `is_transport_failure` is true.
        """
        self._record(failed=True)

    def release(self) -> None:
        """Reports an allowed call that ended without an outcome, e.g. cancelled by its caller.

        Records nothing; in HALF_OPEN it hands the probe slot back so another
        call can take it.
        """
        with self._lock:
            if self._state is BreakerState.HALF_OPEN and self._probes_done < self._probes_issued:
                self._probes_issued -= 1

    def end_open_wait(self, reason: str) -> bool:
        """Ends an OPEN breaker's wait now: it moves to HALF_OPEN and lets its probes through.

        For a caller that learnt out of band that the service is back (a health
        check answered SERVING). The wait grows as before should a probe fail.

        Returns:
            True when the breaker was OPEN and is now HALF_OPEN.
        """
        with self._lock:
            now = self._clock()
            event = self._half_open_if_due(now)
            if event is None and self._state is BreakerState.OPEN:
                self._open_until = now
                event = self._half_open_if_due(now)
                if event is not None:
                    event = BreakerEvent(event.name, event.previous, event.current, event.at, reason)
        if event is not None:
            self._notify(event)
        return event is not None and event.current is BreakerState.HALF_OPEN

    def add_listener(self, fn: BreakerListener) -> None:
        """Calls `fn` with every later state change; an exception it raises is logged and dropped."""
        with self._lock:
            self._listeners = (*self._listeners, fn)

    def retry_after_s(self) -> float:
        """Seconds until an OPEN breaker becomes HALF_OPEN; 0 in any other state."""
        with self._lock:
            now = self._clock()
            event = self._half_open_if_due(now)
            remaining = self._open_until - now if self._state is BreakerState.OPEN else 0.0
        if event is not None:
            self._notify(event)
        return remaining

    def stats(self) -> dict[str, float]:
        """Numbers for metrics and debugging.

        Returns:
            calls, failures and failure_rate of the current window (the rate is
            0 for an empty window); consecutive_failures; open_wait_s, the
            length of the current or last opening, seconds; retry_after_s;
            half_open_in_flight, probes allowed and not yet reported;
            state_changes, rejected, total_calls and total_failures since the
            breaker was made.
        """
        with self._lock:
            now = self._clock()
            event = self._half_open_if_due(now)
            calls, failures = self._window.totals(now)
            stats = {
                "calls": float(calls),
                "failures": float(failures),
                "failure_rate": failures / calls if calls else 0.0,
                "consecutive_failures": float(self._consecutive_failures),
                "open_wait_s": self._open_wait_s,
                "retry_after_s": self._open_until - now if self._state is BreakerState.OPEN else 0.0,
                "half_open_in_flight": float(
                    self._probes_issued - self._probes_done if self._state is BreakerState.HALF_OPEN else 0
                ),
                "state_changes": float(self._state_changes),
                "rejected": float(self._rejected),
                "total_calls": float(self._total_calls),
                "total_failures": float(self._total_failures),
            }
        if event is not None:
            self._notify(event)
        return stats

    def _peek_closed(self) -> bool:
        # Lock-free read for the registry's eviction choice; a stale answer is harmless there.
        return self._state is BreakerState.CLOSED

    def _record(self, *, failed: bool) -> None:
        config = self._config
        with self._lock:
            now = self._clock()
            events = [self._half_open_if_due(now)]
            state = self._state
            if state is BreakerState.CLOSED:
                self._total_calls += 1
                self._total_failures += failed
                self._window.record(failed, now)
                self._consecutive_failures = self._consecutive_failures + 1 if failed else 0
                calls, failures = self._window.totals(now)
                if failed and 0 < config.consecutive_failures <= self._consecutive_failures:
                    events.append(self._open(now, f"{self._consecutive_failures} consecutive failures"))
                elif calls >= config.minimum_calls and failures / calls >= config.failure_rate_threshold:
                    events.append(
                        self._open(
                            now,
                            f"failure rate {failures / calls:.0%} >= {config.failure_rate_threshold:.0%} "
                            f"over {calls} calls",
                        )
                    )
            elif state is BreakerState.HALF_OPEN and self._probes_done < self._probes_issued:
                self._total_calls += 1
                self._total_failures += failed
                if failed:
                    events.append(self._open(now, "a half-open probe failed"))
                else:
                    self._probes_done += 1
                    if self._probes_done >= config.half_open_probes:
                        events.append(self._close(now, f"{config.half_open_probes} half-open probes succeeded"))
        for event in events:
            if event is not None:
                self._notify(event)

    def _half_open_if_due(self, now: float) -> BreakerEvent | None:
        # Caller holds the lock.
        if self._state is not BreakerState.OPEN or now < self._open_until:
            return None
        self._probes_issued = 0
        self._probes_done = 0
        return self._move(BreakerState.HALF_OPEN, now, f"open wait of {self._open_wait_s:g} s elapsed")

    def _open(self, now: float, reason: str) -> BreakerEvent:
        # Caller holds the lock.
        wait_s = self._next_open_wait_s
        self._open_wait_s = wait_s
        self._next_open_wait_s = min(wait_s * self._config.open_wait_multiplier, self._config.max_open_wait_s)
        self._open_until = now + wait_s
        return self._move(BreakerState.OPEN, now, f"{reason}; open for {wait_s:g} s")

    def _close(self, now: float, reason: str) -> BreakerEvent:
        # Caller holds the lock.
        self._window.reset()
        self._consecutive_failures = 0
        self._next_open_wait_s = self._config.open_wait_s
        return self._move(BreakerState.CLOSED, now, reason)

    def _move(self, state: BreakerState, now: float, reason: str) -> BreakerEvent:
        # Caller holds the lock.
        previous, self._state = self._state, state
        self._state_changes += 1
        return BreakerEvent(self._name, previous, state, now, reason)

    def _notify(self, event: BreakerEvent) -> None:
        # Called without the lock: a listener may call back into the breaker.
        for fn in self._listeners:
            try:
                fn(event)
            except Exception:  # noqa: BLE001 - logged; a failing listener must not fail the call it observes
                _LOG.exception("circuit breaker %r: listener %r failed on %s", self._name, fn, event)


class BreakerRegistry:
    """One circuit breaker per (method, target), made on first use, at most `max_breakers` kept.

    When full, making a new breaker evicts the least recently used CLOSED one
    (the least recently used of any state if none is CLOSED); a caller still
    holding an evicted breaker keeps using it unharmed.
    """

    def __init__(
        self,
        config: BreakerConfig = BreakerConfig(),
        *,
        clock: Callable[[], float] = time.monotonic,
        max_breakers: int = 1000,
    ) -> None:
        """Makes an empty registry.

        Args:
            config: Configuration of every breaker it makes.
            clock: Monotonic time, seconds, handed to every breaker.
            max_breakers: How many breakers it keeps, >= 1.
        """
        _check_count("max_breakers", max_breakers, minimum=1)
        self._config = config
        self._clock = clock
        self._max_breakers = max_breakers
        self._lock = threading.Lock()
        self._breakers: OrderedDict[tuple[str, str], CircuitBreaker] = OrderedDict()  # least recent first
        self._listeners: list[BreakerListener] = []

    def get(self, method: str, target: str) -> CircuitBreaker:
        """The breaker of calls to `method` on `target`, made CLOSED if there is none."""
        key = (method, target)
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is not None:
                self._breakers.move_to_end(key)
                return breaker
            if len(self._breakers) >= self._max_breakers:
                self._evict_one()
            breaker = CircuitBreaker(f"{method}@{target}", self._config, clock=self._clock)
            for fn in self._listeners:
                breaker.add_listener(fn)
            self._breakers[key] = breaker
            return breaker

    def add_listener(self, fn: BreakerListener) -> None:
        """Calls `fn` with every later state change of every breaker, present and future."""
        with self._lock:
            self._listeners.append(fn)
            for breaker in self._breakers.values():
                breaker.add_listener(fn)

    def breakers(self) -> list[CircuitBreaker]:
        """Every kept breaker, least recently used first."""
        with self._lock:
            return list(self._breakers.values())

    def snapshot(self) -> dict[str, BreakerState]:
        """The state of every kept breaker, by breaker name ("method@target")."""
        with self._lock:
            breakers = list(self._breakers.values())
        return {breaker.name: breaker.state for breaker in breakers}

    def __len__(self) -> int:
        with self._lock:
            return len(self._breakers)

    def _evict_one(self) -> None:
        # Caller holds the lock.
        for key, breaker in self._breakers.items():
            if breaker._peek_closed():  # noqa: SLF001 - the registry and its breakers share this module
                del self._breakers[key]
                return
        self._breakers.popitem(last=False)


class _CountWindow:
    """Outcomes of the last `size` calls, in a ring; totals kept by subtract-on-evict."""

    __slots__ = ("_failed", "_next", "_size", "calls", "failures")

    def __init__(self, size: int) -> None:
        self._size = size
        self._failed = bytearray(size)  # 1 for a failure; slot `_next` is the oldest once full
        self._next = 0
        self.calls = 0
        self.failures = 0

    def record(self, failed: bool, now: float) -> None:
        if self.calls == self._size:
            self.failures -= self._failed[self._next]
        else:
            self.calls += 1
        self._failed[self._next] = failed
        self.failures += failed
        self._next = (self._next + 1) % self._size

    def totals(self, now: float) -> tuple[int, int]:
        return self.calls, self.failures

    def reset(self) -> None:
        self._failed = bytearray(self._size)
        self._next = 0
        self.calls = 0
        self.failures = 0


class _TimeWindow:
    """Outcomes of the last `window_s` seconds in `_TIME_BUCKETS` buckets; totals kept by subtract-on-evict.

    Bucket k holds the calls recorded at clock times [k * width, (k + 1) * width).
    """

    __slots__ = ("_calls", "_failures", "_head", "_width", "calls", "failures")

    def __init__(self, window_s: float) -> None:
        self._width = window_s / _TIME_BUCKETS
        self._calls = [0] * _TIME_BUCKETS
        self._failures = [0] * _TIME_BUCKETS
        self._head: int | None = None  # absolute index of the newest bucket
        self.calls = 0
        self.failures = 0

    def record(self, failed: bool, now: float) -> None:
        head = self._advance(now)
        slot = head % _TIME_BUCKETS
        self._calls[slot] += 1
        self._failures[slot] += failed
        self.calls += 1
        self.failures += failed

    def totals(self, now: float) -> tuple[int, int]:
        self._advance(now)
        return self.calls, self.failures

    def reset(self) -> None:
        self._calls = [0] * _TIME_BUCKETS
        self._failures = [0] * _TIME_BUCKETS
        self._head = None
        self.calls = 0
        self.failures = 0

    def _advance(self, now: float) -> int:
        """Drops the buckets that left the window by `now`; returns the newest bucket's index."""
        index = math.floor(now / self._width)
        head = self._head
        if head is None or index - head >= _TIME_BUCKETS:
            if head is not None:
                self.reset()
            self._head = index
            return index
        if index <= head:  # same bucket (or a clock that stepped back): keep filling the newest
            return head
        for absolute in range(head + 1, index + 1):
            slot = absolute % _TIME_BUCKETS
            self.calls -= self._calls[slot]
            self.failures -= self._failures[slot]
            self._calls[slot] = 0
            self._failures[slot] = 0
        self._head = index
        return index
