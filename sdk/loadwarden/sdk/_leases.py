"""What both flavours of lease keeping decide, with no I/O; the drivers are in `_async/leases.py`.

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

import dataclasses
import heapq
import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from loadwarden.sdk._convert import MAX_LATENCY_MS
from loadwarden.sdk._errors import LeaseLostError, LoadwardenError, NotFoundError, is_transport_failure
from loadwarden.sdk._synchronization import Timer
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
# Least deadline of a background retry (a release or an abandon batch), seconds: no caller
# waits for it, and a client's short call deadline would fail it against the slow service
# it is most needed for. A retry at close() has close_timeout_s instead.
BACKGROUND_CALL_MIN_TIMEOUT_S = 1.0


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
        self.abandons_given_up = 0  # abandon batches not answered before their leases' TTL or close(), count
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
        if item.abandoned:
            self.abandons_given_up += 1
        else:
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
