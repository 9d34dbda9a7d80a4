"""Keeping a held lease alive: renewal at 75 % of its TTL, off the caller's path.

`LeaseKeeper` (threads) and `AsyncLeaseKeeper` (asyncio) decide when to renew and
when to stop; a scheduler only runs a callback later. Tests pass a scheduler they
fire by hand, so renewal is driven without sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Protocol

from loadwarden.sdk._convert import MAX_LATENCY_MS
from loadwarden.sdk._errors import LoadwardenError, NotFoundError
from loadwarden.sdk._types import Lease

_log = logging.getLogger("loadwarden.sdk")

# A held lease is renewed when this share of its TTL has passed since the grant or
# last renewal: the remaining quarter absorbs the renewal's round trip and one slow answer.
RENEW_AT_TTL_FRACTION = 0.75


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
    """One asyncio task per callback; cancelling it also cancels a renewal in flight."""

    def call_later(self, delay_s: float, callback: Callable[[], Awaitable[None]]) -> Timer:
        async def later() -> None:
            await asyncio.sleep(delay_s)
            await callback()

        return asyncio.get_running_loop().create_task(later(), name="loadwarden-lease-renewal")


def renew_delay_s(lease: Lease) -> float | None:
    """Seconds from now until `lease` is due for renewal; None when it is not to be renewed."""
    if lease.fallback or not lease.lease_id or lease.ttl_s <= 0:
        return None
    return lease.ttl_s * RENEW_AT_TTL_FRACTION


def latency_ms(started: float, ended: float) -> float:
    """The block's latency from two perf-counter readings, clamped into the contract's range."""
    return min(max(0.0, (ended - started) * 1000.0), float(MAX_LATENCY_MS))


def log_renewal_failure(lease: Lease, err: BaseException) -> None:
    if isinstance(err, NotFoundError):
        _log.warning("lease %s in pool %r expired or was reclaimed; no longer renewing it", lease.lease_id, lease.pool)
    else:
        _log.warning(
            "renewing lease %s in pool %r failed; no longer renewing it: %r",
            lease.lease_id,
            lease.pool,
            err,
            exc_info=not isinstance(err, LoadwardenError),
        )


def log_release_failure(lease: Lease, err: BaseException) -> None:
    _log.warning(
        "releasing lease %s in pool %r failed; the service reclaims it when it expires: %r",
        lease.lease_id,
        lease.pool,
        err,
        exc_info=not isinstance(err, LoadwardenError),
    )


class LeaseKeeper:
    """Renews one lease from a scheduler's thread until stopped or a renewal fails.

    A failed renewal (e.g. NotFoundError: the lease expired) is logged and ends
    renewing; nothing is raised to the lease holder. Thread-safe.

    Args:
        lease: The lease to keep.
        renew: Renews a lease by id with its current TTL; raises on failure.
        scheduler: Runs the next renewal later.
    """

    def __init__(self, lease: Lease, renew: Callable[[str], Lease], scheduler: Scheduler) -> None:
        self._lease = lease
        self._renew = renew
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._timer: Timer | None = None
        self._stopped = False
        self.renewals = 0  # successful renewals, count

    @property
    def lease(self) -> Lease:
        """The lease as of its last renewal."""
        return self._lease

    def start(self) -> None:
        with self._lock:
            self._schedule()

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
        # The lock is not held over the call: stop() must never wait for a round trip.
        try:
            renewed = self._renew(lease.lease_id)
        except Exception as err:  # noqa: BLE001 - logged; must never reach the lease holder
            if not self._stopped:
                log_renewal_failure(lease, err)
            return
        with self._lock:
            if self._stopped:
                return
            self.renewals += 1
            self._lease = dataclasses.replace(lease, ttl_s=renewed.ttl_s, expires_at=renewed.expires_at)
            self._schedule()

    def _schedule(self) -> None:
        # Caller holds the lock.
        delay_s = renew_delay_s(self._lease)
        if delay_s is not None and not self._stopped:
            self._timer = self._scheduler.call_later(delay_s, self._fire)


class AsyncLeaseKeeper:
    """Renews one lease from the event loop until stopped or a renewal fails.

    A failed renewal is logged and ends renewing; nothing is raised to the lease
    holder. Use it from the event loop's thread.

    Args:
        lease: The lease to keep.
        renew: Renews a lease by id with its current TTL; raises on failure.
        scheduler: Runs the next renewal later.
    """

    def __init__(self, lease: Lease, renew: Callable[[str], Awaitable[Lease]], scheduler: AsyncScheduler) -> None:
        self._lease = lease
        self._renew = renew
        self._scheduler = scheduler
        self._timer: Timer | None = None
        self._stopped = False
        self.renewals = 0  # successful renewals, count

    @property
    def lease(self) -> Lease:
        """The lease as of its last renewal."""
        return self._lease

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        """Ends renewing; a renewal in flight is cancelled by the default scheduler, else ignored."""
        self._stopped = True
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    async def _fire(self) -> None:
        if self._stopped:
            return
        lease = self._lease
        try:
            renewed = await self._renew(lease.lease_id)
        except Exception as err:  # noqa: BLE001 - logged; must never reach the lease holder
            if not self._stopped:
                log_renewal_failure(lease, err)
            return
        if self._stopped:
            return
        self.renewals += 1
        self._lease = dataclasses.replace(lease, ttl_s=renewed.ttl_s, expires_at=renewed.expires_at)
        self._schedule()

    def _schedule(self) -> None:
        delay_s = renew_delay_s(self._lease)
        if delay_s is not None and not self._stopped:
            self._timer = self._scheduler.call_later(delay_s, self._fire)
