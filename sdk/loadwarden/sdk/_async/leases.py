"""Renewing a held lease and retrying failed releases in the background (see `loadwarden.sdk._leases`).

The decisions are in `_KeeperState` and `_ReleaseState`; these drivers only take
the lock, call the service and schedule the next attempt.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable

from loadwarden.sdk._errors import LeaseLostError
from loadwarden.sdk._leases import PendingRelease, _KeeperState, _ReleaseState, renew_delay_s
from loadwarden.sdk._synchronization import AsyncCondition, AsyncScheduler, AsyncThreadLock
from loadwarden.sdk._types import Lease


class AsyncLeaseKeeper(_KeeperState):
    """Renews one lease in the background until stopped or the lease is lost.

    The holder learns of a loss through `on_lost` (called once, where the renewal
    ran) and `lost`; nothing is raised there. Use it from one event loop.

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
        self._lock = AsyncThreadLock()

    def start(self) -> None:
        with self._lock:
            self._schedule(renew_delay_s(self._lease))

    def stop(self) -> None:
        """Ends renewing; a renewal already in flight finishes, its answer ignored, unless the scheduler cancels it."""
        with self._lock:
            self._stopped = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    async def _fire(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._timer = None
            lease = self._lease
        sent_at = self._clock()
        # The lock is not held over the call: stop() must never wait for a round trip.
        try:
            renewed = await self._renew(lease.lease_id)
        except Exception as err:  # noqa: BLE001 - told through on_lost; never raised where the renewal runs
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


class AsyncReleaseRetries(_ReleaseState):
    """Retries failed releases in the background, one at a time. Use it from one event loop.

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
        self._cond = AsyncCondition()

    def begin(self) -> None:
        """Counts a release starting on a caller's path (close() waits for it)."""
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

    async def drain(self, timeout_s: float) -> bool:
        """Stops retrying later; waits for releases in flight, then tries each waiting one once.

        Returns:
            True when nothing is left in flight or waiting within `timeout_s`.
        """
        end = self._clock() + timeout_s
        with self._cond:
            self._closing = True
            timer, self._timer = self._timer, None
            # A running pass took its own timer off already; a task's cancel would end that pass.
            if timer is not None and not self._running:
                timer.cancel()
            while self.in_flight and (left_s := end - self._clock()) > 0:
                await self._cond.wait(left_s)
        while True:
            with self._cond:
                left_s = end - self._clock()
                item = self._next_due(self._clock(), all_of_them=True) if left_s > 0 else None
                if item is None:
                    return not self._heap and not self.in_flight
                self.in_flight += 1
            await self._attempt(item, left_s, retry=False)

    async def _attempt(self, item: PendingRelease, timeout_s: float | None, *, retry: bool) -> None:
        # The caller counted the attempt in `in_flight`; it ends here, cancelled or not.
        err: BaseException | None = None
        try:
            await self._release(item, timeout_s)
        except Exception as error:  # noqa: BLE001 - classified by _after
            err = error
        except BaseException:
            self.end()  # cancelled: no answer to classify
            raise
        with self._cond:
            self.in_flight -= 1
            self._after(item, err, retry=retry)
            self._cond.notify_all()

    async def _fire(self) -> None:
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
                await self._attempt(item, None, retry=True)
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
