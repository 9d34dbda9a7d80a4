"""Keeping a held lease alive, telling its holder when it is lost, and releasing it for sure.

`LeaseKeeper` (threads) and `AsyncLeaseKeeper` (asyncio) renew a held lease at 75 %
of its TTL, off the caller's path. A renewal answered NOT_FOUND loses the lease at
once; one that failed without an answer (UNAVAILABLE, a deadline, an open breaker)
is retried with jittered waits, and the lease is lost only once its TTL has passed
since the last renewal that succeeded. A loss is reported once, through `on_lost`.

`ReleaseRetries` / `AsyncReleaseRetries` retry, in the background, a release that
failed without an answer, until it is answered or the lease's TTL has passed (the
service has reclaimed it by then), and are drained when the client closes. They
also end, in batches, the AcquireSlot calls whose answers never came (the call
timed out or was cancelled): the service may have granted those slots, and nobody
else would ever release them before their TTL.

A scheduler only runs a callback later; clocks and RNGs are passed in. Tests pass
a scheduler they fire by hand and a fake clock, so nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from loadwarden.sdk._convert import MAX_LATENCY_MS
from loadwarden.sdk._errors import LeaseLostError, LoadwardenError, NotFoundError, is_transport_failure
from loadwarden.sdk._resilience import background_context
from loadwarden.sdk._types import HeldLease, Lease

_log = logging.getLogger("loadwarden.sdk")

# A held lease is renewed when this share of its TTL has passed since the grant or
# last renewal: the remaining quarter absorbs the renewal's round trip and one slow answer.
RENEW_AT_TTL_FRACTION = 0.75
# A renewal that got no answer is tried again after a wait uniform in [0.5, 1] times
# this share of the TTL (at most RETRY_MAX_S), and once more right at the TTL's end.
RENEW_RETRY_TTL_FRACTION = 0.05
RETRY_MAX_S = 1.0
# A failed release is tried again after a full-jitter wait: uniform in
# [RELEASE_RETRY_MIN_S, min(RETRY_MAX_S, RELEASE_RETRY_BASE_S * 2**attempt)].
RELEASE_RETRY_BASE_S = 0.1
RELEASE_RETRY_MIN_S = 0.01
# Slack when deciding a retry is due, seconds: a timer may fire a little early.
DUE_SLACK_S = 0.001
# An abandoned AcquireSlot is ended after a wait uniform in this range, seconds: long
# enough for the call's deadline to have passed on the service too (a grant made later
# is a denial there) and for the abandons of a burst of timeouts to share one call.
ABANDON_DELAY_S = (0.1, 0.2)
# AcquireSlot request ids ended by one ReleaseSlot call, at most (the service's limit).
ABANDON_BATCH = 100
# How long an abandoned AcquireSlot with the pool's default TTL is tried, seconds.
ABANDON_DEFAULT_TTL_S = 60.0


class Timer(Protocol):
    """A scheduled callback."""

    def cancel(self) -> object:
        """Stops the callback if it has not started (a running task is cancelled too)."""
        ...


class Scheduler(Protocol):
    """Runs a callback once, later, off the caller's thread."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer: ...


class AsyncScheduler(Protocol):
    """Runs a coroutine function once, later, on the running event loop."""

    def call_later(self, delay_s: float, callback: Callable[[], Awaitable[None]]) -> Timer: ...


class ThreadScheduler:
    """One daemon `threading.Timer` per callback: a held slot already has a caller thread."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        timer = threading.Timer(delay_s, callback)
        timer.name = "loadwarden-lease-renewal"
        timer.daemon = True
        timer.start()
        return timer


class TaskScheduler:
    """One asyncio task per callback; cancelling it also cancels a renewal in flight.

    The task runs outside the scheduling caller's `deadline` scope (threads of
    `ThreadScheduler` never see it either).
    """

    def call_later(self, delay_s: float, callback: Callable[[], Awaitable[None]]) -> Timer:
        async def later() -> None:
            await asyncio.sleep(delay_s)
            await callback()

        return asyncio.get_running_loop().create_task(
            later(), name="loadwarden-lease-renewal", context=background_context()
        )


def renew_delay_s(lease: Lease) -> float | None:
    """Seconds from now until `lease` is due for renewal; None when it is not to be renewed."""
    if lease.fallback or not lease.lease_id or lease.ttl_s <= 0:
        return None
    return lease.ttl_s * RENEW_AT_TTL_FRACTION


def latency_ms(started: float, ended: float) -> float:
    """The block's latency from two perf-counter readings, clamped into the contract's range."""
    return min(max(0.0, (ended - started) * 1000.0), float(MAX_LATENCY_MS))


def held(lease: Lease) -> HeldLease:
    """`lease` as the object a `slot()` block holds."""
    return HeldLease(*(getattr(lease, f.name) for f in dataclasses.fields(Lease)))


def renewal_retry_delay_s(ttl_s: float, left_s: float, rng: random.Random) -> float:
    """Wait before retrying an unanswered renewal, seconds: jittered, never past the TTL's end."""
    return max(0.0, min(left_s, rng.uniform(0.5, 1.0) * min(RETRY_MAX_S, ttl_s * RENEW_RETRY_TTL_FRACTION)))


def release_retry_delay_s(attempt: int, rng: random.Random) -> float:
    """Wait before the `attempt`-th (from 0) retry of a failed release, seconds (full jitter)."""
    cap_s = min(RETRY_MAX_S, RELEASE_RETRY_BASE_S * 2.0 ** min(attempt, 32))
    return rng.uniform(RELEASE_RETRY_MIN_S, max(RELEASE_RETRY_MIN_S, cap_s))


def lost_error(lease: Lease, err: BaseException, why: str) -> LeaseLostError:
    if why == "reclaimed":
        text = f"lease {lease.lease_id} in pool {lease.pool!r} was reclaimed by the service (renewal: {err})"
    elif why == "expired":
        text = (
            f"lease {lease.lease_id} in pool {lease.pool!r} was not renewed within its TTL of "
            f"{lease.ttl_s:g} s (last renewal: {err}); the service reclaims it"
        )
    else:
        text = f"renewing lease {lease.lease_id} in pool {lease.pool!r} failed: {err!r}"
    lost = LeaseLostError(text, lease_id=lease.lease_id, pool=lease.pool, why=why)
    lost.__cause__ = err
    return lost


def log_release_failure(lease: Lease, err: BaseException) -> None:
    _log.warning(
        "releasing lease %s in pool %r failed; the service reclaims it when it expires: %r",
        lease.lease_id,
        lease.pool,
        err,
        exc_info=not isinstance(err, LoadwardenError),
    )


def log_lost(lost: LeaseLostError) -> None:
    cause = lost.__cause__
    _log.warning("%s", lost, exc_info=cause if cause is not None and not isinstance(cause, LoadwardenError) else None)


class _KeeperState:
    """What both keepers decide, with no I/O: the lease, its validity and whether it is lost.

    Invariant: `valid_until` (on `clock`) is the send time of the last successful
    renewal (or the keeper's start) plus the TTL then granted, so never later than
    when the service reclaims the lease.
    """

    def __init__(
        self,
        lease: Lease,
        on_lost: Callable[[LeaseLostError], None] | None,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._lease = lease
        self._on_lost = on_lost
        self._clock = clock
        self._rng = rng
        self._timer: Timer | None = None
        self._stopped = False
        self.valid_until = clock() + lease.ttl_s
        self.lost: LeaseLostError | None = None
        self.renewals = 0  # successful renewals, count
        self.failed_renewals = 0  # renewals that got no answer and were tried again, count

    @property
    def lease(self) -> Lease:
        """The lease as of its last renewal."""
        return self._lease

    def _renewed(self, lease: Lease, renewed: Lease, sent_at: float) -> float | None:
        # Returns the delay of the next renewal. Caller holds the lock, if any.
        self.renewals += 1
        self._lease = dataclasses.replace(lease, ttl_s=renewed.ttl_s, expires_at=renewed.expires_at)
        self.valid_until = sent_at + renewed.ttl_s
        return renew_delay_s(self._lease)

    def _failed(self, lease: Lease, err: BaseException) -> float | LeaseLostError:
        # The delay of the retry, or the loss. Caller holds the lock, if any.
        if isinstance(err, NotFoundError):
            return self._lose(lost_error(lease, err, "reclaimed"))
        if not is_transport_failure(err):
            return self._lose(lost_error(lease, err, "renewal_refused"))
        left_s = self.valid_until - self._clock()
        if left_s <= DUE_SLACK_S:
            return self._lose(lost_error(lease, err, "expired"))
        self.failed_renewals += 1
        return renewal_retry_delay_s(lease.ttl_s, left_s, self._rng)

    def _lose(self, lost: LeaseLostError) -> LeaseLostError:
        self.lost = lost
        self._stopped = True
        return lost

    def _tell(self, lost: LeaseLostError) -> None:
        # Called without the lock: the callback may do anything.
        if self._on_lost is None:
            log_lost(lost)
            return
        try:
            self._on_lost(lost)
        except Exception:  # noqa: BLE001 - a holder's callback must not kill the keeper's thread
            _log.exception("the on_lost callback of lease %s failed", lost.lease_id)


class LeaseKeeper(_KeeperState):
    """Renews one lease from a scheduler's thread until stopped or the lease is lost.

    The holder learns of a loss through `on_lost` (called once, on the
    scheduler's thread) and `lost`; nothing is raised on the keeper's thread.
    Thread-safe.

    Args:
        lease: The lease to keep.
        renew: Renews a lease by id with its current TTL; raises on failure.
        scheduler: Runs the next renewal later.
        on_lost: Told once when the lease is lost; None logs the loss instead.
        clock: Monotonic time, seconds.
        rng: Jitter of renewal retries.
    """

    def __init__(
        self,
        lease: Lease,
        renew: Callable[[str], Lease],
        scheduler: Scheduler,
        *,
        on_lost: Callable[[LeaseLostError], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(lease, on_lost, clock, rng if rng is not None else random.Random())
        self._renew = renew
        self._scheduler = scheduler
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self._schedule(renew_delay_s(self._lease))

    def stop(self) -> None:
        """Ends renewing; a renewal already in flight finishes, its answer ignored."""
        with self._lock:
            self._stopped = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._timer = None
            lease = self._lease
        sent_at = self._clock()
        # The lock is not held over the call: stop() must never wait for a round trip.
        try:
            renewed = self._renew(lease.lease_id)
        except Exception as err:  # noqa: BLE001 - told through on_lost; never raised on this thread
            with self._lock:
                if self._stopped:
                    return
                outcome = self._failed(lease, err)
                if not isinstance(outcome, LeaseLostError):
                    self._schedule(outcome)
                    return
            self._tell(outcome)
            return
        with self._lock:
            if self._stopped:
                return
            self._schedule(self._renewed(lease, renewed, sent_at))

    def _schedule(self, delay_s: float | None) -> None:
        # Caller holds the lock.
        if delay_s is not None and not self._stopped:
            self._timer = self._scheduler.call_later(delay_s, self._fire)


class AsyncLeaseKeeper(_KeeperState):
    """Renews one lease from the event loop until stopped or the lease is lost.

    The holder learns of a loss through `on_lost` (called once, on the loop) and
    `lost`. Use it from the event loop's thread.

    Args:
        lease: The lease to keep.
        renew: Renews a lease by id with its current TTL; raises on failure.
        scheduler: Runs the next renewal later.
        on_lost: Told once when the lease is lost; None logs the loss instead.
        clock: Monotonic time, seconds.
        rng: Jitter of renewal retries.
    """

    def __init__(
        self,
        lease: Lease,
        renew: Callable[[str], Awaitable[Lease]],
        scheduler: AsyncScheduler,
        *,
        on_lost: Callable[[LeaseLostError], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(lease, on_lost, clock, rng if rng is not None else random.Random())
        self._renew = renew
        self._scheduler = scheduler

    def start(self) -> None:
        self._schedule(renew_delay_s(self._lease))

    def stop(self) -> None:
        """Ends renewing; a renewal in flight is cancelled by the default scheduler, else ignored."""
        self._stopped = True
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    async def _fire(self) -> None:
        if self._stopped:
            return
        self._timer = None
        lease = self._lease
        sent_at = self._clock()
        try:
            renewed = await self._renew(lease.lease_id)
        except Exception as err:  # noqa: BLE001 - told through on_lost; never raised into the loop
            if self._stopped:
                return
            outcome = self._failed(lease, err)
            if isinstance(outcome, LeaseLostError):
                self._tell(outcome)
            else:
                self._schedule(outcome)
            return
        if self._stopped:
            return
        self._schedule(self._renewed(lease, renewed, sent_at))

    def _schedule(self, delay_s: float | None) -> None:
        if delay_s is not None and not self._stopped:
            self._timer = self._scheduler.call_later(delay_s, self._fire)


@dataclass(order=True)
class PendingRelease:
    """A release that failed without an answer, waiting to be tried again.

    Attributes:
        due: When to try next, on the retries' clock, seconds.
        seq: Tie-breaker among equal `due`s (first added first).
        lease_id: The lease to release.
        pool: Its pool, for logs.
        request_id: The release's idempotency key, the same on every attempt.
        success: How the work went, as the first attempt said.
        latency_ms: How long the work took, milliseconds.
        until: When the service has reclaimed the lease anyway, on the clock, seconds.
        attempts: Retries made so far, count.
        abandoned: Instead of `lease_id` (then empty): request ids of AcquireSlot calls
            in `pool` whose answers never came, to end as never granted.
    """

    due: float
    seq: int
    lease_id: str = field(compare=False)
    pool: str = field(compare=False)
    request_id: str = field(compare=False)
    success: bool = field(compare=False)
    latency_ms: float = field(compare=False)
    until: float = field(compare=False)
    attempts: int = field(default=0, compare=False)
    abandoned: list[str] = field(default_factory=list, compare=False)

    def describe(self) -> str:
        """What the call ends, for logs."""
        if self.abandoned:
            return f"{len(self.abandoned)} abandoned AcquireSlot calls"
        return f"lease {self.lease_id}"


class _ReleaseState:
    """What both release retriers decide, with no I/O.

    Invariants: at most `capacity` releases wait; at most one timer is armed, for
    the earliest due one, and none while a retry pass runs or after closing; a
    release leaves the queue when answered (released, already released or
    NOT_FOUND), when its lease's TTL has passed, or when it fails with an error
    that is not a transport failure.
    """

    def __init__(
        self,
        capacity: int,
        clock: Callable[[], float],
        rng: random.Random,
        on_settled: Callable[[str], None] | None,
    ) -> None:
        self.capacity = capacity
        self._clock = clock
        self._rng = rng
        self._on_settled = on_settled
        self._heap: list[PendingRelease] = []
        self._gathering: dict[str, PendingRelease] = {}  # per pool, the abandon batch still filling
        self._seq = itertools.count()
        self._timer: Timer | None = None
        self._timer_due = 0.0
        self._running = False
        self._closing = False
        self.in_flight = 0  # releases being attempted now (slot exits and retries), count
        self.retried = 0  # retry attempts made, count
        self.released = 0  # retried releases that the service answered, count
        self.given_up = 0  # releases whose lease expired before an answer, count
        self.dropped = 0  # failed releases and abandons not queued (full or closing), count
        self.abandoned = 0  # AcquireSlot calls queued to be ended, count

    def pending(self) -> int:
        """Releases waiting for a retry, count."""
        return len(self._heap)

    def _queue(self, lease: Lease, request_id: str, success: bool, latency_ms: float, until: float) -> bool:
        # Caller holds the lock, if any.
        now = self._clock()
        if self._closing or len(self._heap) >= self.capacity or until <= now:
            self.dropped += 1
            return False
        due = now + release_retry_delay_s(0, self._rng)
        heapq.heappush(
            self._heap,
            PendingRelease(due, next(self._seq), lease.lease_id, lease.pool, request_id, success, latency_ms, until),
        )
        return True

    def _queue_abandon(self, pool: str, request_id: str, until: float) -> bool:
        # Caller holds the lock, if any. Joins the pool's batch still filling, if any.
        now = self._clock()
        batch = self._gathering.get(pool)
        if batch is not None and len(batch.abandoned) < ABANDON_BATCH:
            batch.abandoned.append(request_id)
            batch.until = max(batch.until, until)
            self.abandoned += 1
            return True
        if self._closing or len(self._heap) >= self.capacity:
            self.dropped += 1
            return False
        batch = PendingRelease(
            now + self._rng.uniform(*ABANDON_DELAY_S),
            next(self._seq),
            "",
            pool,
            "",
            True,
            0.0,
            until,
            abandoned=[request_id],
        )
        heapq.heappush(self._heap, batch)
        self._gathering[pool] = batch
        self.abandoned += 1
        return True

    def _next_due(self, now: float, *, all_of_them: bool = False) -> PendingRelease | None:
        # Caller holds the lock, if any. Expired releases are given up on here.
        while self._heap and (all_of_them or self._heap[0].due <= now + DUE_SLACK_S):
            item = heapq.heappop(self._heap)
            if self._gathering.get(item.pool) is item:
                del self._gathering[item.pool]  # sent as it is; later abandons start a new batch
            if item.until > now:
                return item
            self._gave_up(item)
            _log.debug("gave up ending %s: its TTL has passed, the service has reclaimed it", item.describe())
        return None

    def _after(self, item: PendingRelease, err: BaseException | None, *, retry: bool) -> None:
        # Caller holds the lock, if any.
        self.retried += 1
        if err is None or isinstance(err, NotFoundError):
            self.released += 1
            self._settled(item.lease_id)
            return
        if not is_transport_failure(err):
            log_release_failure_of(item, err)
            self._settled(item.lease_id)
            return
        now = self._clock()
        if not retry or self._closing or item.until <= now:
            self._gave_up(item)
            log_release_failure_of(item, err)
            return
        item.attempts += 1
        item.due = now + release_retry_delay_s(item.attempts, self._rng)
        heapq.heappush(self._heap, item)

    def _gave_up(self, item: PendingRelease) -> None:
        self.given_up += 1
        self._settled(item.lease_id)

    def _settled(self, lease_id: str) -> None:
        if self._on_settled is not None and lease_id:
            try:
                self._on_settled(lease_id)
            except Exception:  # noqa: BLE001 - bookkeeping must not stop the retries
                _log.exception("settling the release of lease %s failed", lease_id)


def log_release_failure_of(item: PendingRelease, err: BaseException) -> None:
    _log.warning(
        "ending %s in pool %r failed after %d retries; the service reclaims what they hold when it expires: %r",
        item.describe(),
        item.pool,
        item.attempts,
        err,
        exc_info=not isinstance(err, LoadwardenError),
    )


class ReleaseRetries(_ReleaseState):
    """Retries failed releases from a scheduler's thread, one at a time; thread-safe.

    Args:
        release: Sends one release (`PendingRelease`, timeout seconds or None for
            the client's); raises on failure.
        scheduler: Runs the next retry pass later.
        capacity: Releases waiting at most, count; a failed release beyond it is
            logged and left to expire.
        clock: Monotonic time, seconds.
        rng: Jitter of the waits.
        on_settled: Told the lease id when a release leaves the queue.
    """

    def __init__(
        self,
        release: Callable[[PendingRelease, float | None], object],
        scheduler: Scheduler,
        *,
        capacity: int,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_settled: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(capacity, clock, rng if rng is not None else random.Random(), on_settled)
        self._release = release
        self._scheduler = scheduler
        self._cond = threading.Condition()

    def begin(self) -> None:
        """Counts a release starting on a caller's thread (close() waits for it)."""
        with self._cond:
            self.in_flight += 1

    def end(self) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()

    def add(self, lease: Lease, *, request_id: str, success: bool, latency_ms: float, until: float) -> bool:
        """Queues a release that failed without an answer; False when it cannot be queued."""
        with self._cond:
            queued = self._queue(lease, request_id, success, latency_ms, until)
            self._arm()
        return queued

    def abandon(self, pool: str, request_id: str, *, until: float) -> bool:
        """Queues the end of an AcquireSlot whose answer never came; False when it cannot be queued."""
        with self._cond:
            queued = self._queue_abandon(pool, request_id, until)
            self._arm()
        return queued

    def drain(self, timeout_s: float) -> bool:
        """Stops retrying later; waits for releases in flight, then tries each waiting one once.

        Returns:
            True when nothing is left in flight or waiting within `timeout_s`.
        """
        end = self._clock() + timeout_s
        with self._cond:
            self._closing = True
            timer, self._timer = self._timer, None
            while self.in_flight and (left_s := end - self._clock()) > 0:
                self._cond.wait(left_s)
        if timer is not None:
            timer.cancel()
        while True:
            with self._cond:
                left_s = end - self._clock()
                item = self._next_due(self._clock(), all_of_them=True) if left_s > 0 else None
                if item is None:
                    return not self._heap and not self.in_flight
                self.in_flight += 1
            err = self._attempt(item, left_s)
            with self._cond:
                self.in_flight -= 1
                self._after(item, err, retry=False)
                self._cond.notify_all()

    def _attempt(self, item: PendingRelease, timeout_s: float | None) -> BaseException | None:
        try:
            self._release(item, timeout_s)
        except Exception as err:  # noqa: BLE001 - classified by _after
            return err
        return None

    def _fire(self) -> None:
        with self._cond:
            self._timer = None
            if self._closing or self._running:
                return
            self._running = True
        try:
            while True:
                with self._cond:
                    item = None if self._closing else self._next_due(self._clock())
                    if item is None:
                        return
                    self.in_flight += 1
                err = self._attempt(item, None)
                with self._cond:
                    self.in_flight -= 1
                    self._after(item, err, retry=True)
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._running = False
                self._arm()

    def _arm(self) -> None:
        # Caller holds the lock. One timer, for the earliest due release.
        if self._running or self._closing or not self._heap:
            return
        due = self._heap[0].due
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = self._scheduler.call_later(max(0.0, due - self._clock()), self._fire)


class AsyncReleaseRetries(_ReleaseState):
    """Retries failed releases from one task at a time on the event loop; use it from the loop.

    Args:
        release: Sends one release (`PendingRelease`, timeout seconds or None for
            the client's); raises on failure.
        scheduler: Runs the next retry pass later.
        capacity: Releases waiting at most, count; a failed release beyond it is
            logged and left to expire.
        clock: Monotonic time, seconds.
        rng: Jitter of the waits.
        on_settled: Told the lease id when a release leaves the queue.
    """

    def __init__(
        self,
        release: Callable[[PendingRelease, float | None], Awaitable[object]],
        scheduler: AsyncScheduler,
        *,
        capacity: int,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_settled: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(capacity, clock, rng if rng is not None else random.Random(), on_settled)
        self._release = release
        self._scheduler = scheduler
        self._idle: list[asyncio.Future[None]] = []

    def begin(self) -> None:
        """Counts a release starting in a caller's task (close() waits for it)."""
        self.in_flight += 1

    def end(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            idle, self._idle = self._idle, []
            for waiter in idle:
                if not waiter.done():
                    waiter.set_result(None)

    def add(self, lease: Lease, *, request_id: str, success: bool, latency_ms: float, until: float) -> bool:
        """Queues a release that failed without an answer; False when it cannot be queued."""
        queued = self._queue(lease, request_id, success, latency_ms, until)
        self._arm()
        return queued

    def abandon(self, pool: str, request_id: str, *, until: float) -> bool:
        """Queues the end of an AcquireSlot whose answer never came; False when it cannot be queued."""
        queued = self._queue_abandon(pool, request_id, until)
        self._arm()
        return queued

    async def drain(self, timeout_s: float) -> bool:
        """Stops retrying later; waits for releases in flight, then tries each waiting one once.

        Returns:
            True when nothing is left in flight or waiting within `timeout_s`.
        """
        end = self._clock() + timeout_s
        self._closing = True
        timer, self._timer = self._timer, None
        if timer is not None and not self._running:
            timer.cancel()
        if self.in_flight and (left_s := end - self._clock()) > 0:
            waiter = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, left_s)
        while (left_s := end - self._clock()) > 0:
            item = self._next_due(self._clock(), all_of_them=True)
            if item is None:
                break
            self.begin()
            try:
                err = await self._attempt(item, left_s)
            finally:
                self.end()
            self._after(item, err, retry=False)
        return not self._heap and not self.in_flight

    async def _attempt(self, item: PendingRelease, timeout_s: float | None) -> BaseException | None:
        try:
            await self._release(item, timeout_s)
        except Exception as err:  # noqa: BLE001 - classified by _after
            return err
        return None

    async def _fire(self) -> None:
        self._timer = None
        if self._closing or self._running:
            return
        self._running = True
        try:
            while not self._closing and (item := self._next_due(self._clock())) is not None:
                self.begin()
                try:
                    err = await self._attempt(item, None)
                finally:
                    self.end()
                self._after(item, err, retry=True)
        finally:
            self._running = False
            self._arm()

    def _arm(self) -> None:
        # One timer, for the earliest due release.
        if self._running or self._closing or not self._heap:
            return
        due = self._heap[0].due
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = self._scheduler.call_later(max(0.0, due - self._clock()), self._fire)
