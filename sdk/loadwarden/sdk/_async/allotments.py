"""A thin driver of an `AllotmentBook`: takes, renews and returns allotments from one
background worker (a task, or a daemon thread for the sync client).

The worker wakes when a `slot()` block found no free allotted slot and when a
renewal comes due (at half the TTL). An acquire with no free slot at the service
is tried again after its retry-after; a renewal answered NOT_FOUND loses the
allotment (and a new one is asked for when a block wants one); a renewal that gets
no answer is tried again soon, and the allotment is lost if its TTL passes first.
Every decision about sizes and times lives in the book.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from loadwarden.sdk._allotments import AllotmentBook
from loadwarden.sdk._errors import LoadwardenError, NotFoundError
from loadwarden.sdk._synchronization import AsyncEvent, AsyncThreadLock, AsyncWorker
from loadwarden.v1 import decision_pb2 as _pb

log = logging.getLogger("loadwarden.sdk")

RETRY_S = 0.5  # after a failed acquire or an unanswered renewal, seconds
UNKNOWN_POOL_RETRY_S = 30.0  # after the service said the pool does not exist
GROW_RETRY_S = 0.1  # after a renewal could not grow the allotment as asked, seconds


class AsyncAllotmentKeeper:
    """Keeps the book's allotments, from a worker started by the first `wake`.

    Args:
        book: The allotments and their local slots.
        call: Makes one RPC through the client (breakers, retries, deadline).
        clock: The client's monotonic clock, seconds.
    """

    def __init__(
        self, book: AllotmentBook, call: Callable[[str, Any], Awaitable[Any]], clock: Callable[[], float]
    ) -> None:
        self._book = book
        self._call = call
        self._clock = clock
        self._wake = AsyncEvent()
        self._start_lock = AsyncThreadLock()
        self._task: AsyncWorker | None = None
        self._stopping = False

    def wake(self) -> None:
        """A block wanted an allotted slot: look at what is due now."""
        if self._task is None and not self._stopping:
            with self._start_lock:
                if self._task is None:
                    self._task = AsyncWorker.start(self._run, "loadwarden-allotments")
        self._wake.set()

    async def stop(self) -> None:
        """Stops the worker and hands every allotment back (best effort: else its TTL returns it)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task.join()
        for pool, allotment_id in self._book.held_ids():
            try:
                await self._call("ReleaseAllotment", _pb.ReleaseAllotmentRequest(allotment_id=allotment_id))
            except LoadwardenError as err:
                log.debug("returning the allotment of pool %s failed (its TTL returns it): %s", pool, err)
            self._book.lose(pool)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before looking, so a wake-up after this is not lost
            now = self._clock()
            acquire, renew, expired, next_at = self._book.due(now)
            for pool in expired:
                log.warning("the allotment of pool %s expired unrenewed: its slots went back to the pool", pool)
                self._book.lose(pool)
            for pool in acquire:
                await self._acquire(pool)
            for pool in renew:
                await self._renew(pool)
            if acquire or renew or expired:
                continue
            await self._wake.wait(None if next_at == float("inf") else max(0.0, next_at - now))

    async def _acquire(self, pool: str) -> None:
        sent = self._clock()
        request = _pb.AcquireAllotmentRequest(pool=pool, slots=self._book.size_wanted(pool))
        try:
            response = await self._call("AcquireAllotment", request)
        except NotFoundError:
            self._book.refused(pool, UNKNOWN_POOL_RETRY_S)
            return
        except LoadwardenError as err:
            log.debug("taking an allotment of pool %s failed: %s", pool, err)
            self._book.refused(pool, RETRY_S)
            return
        allotment = response.allotment
        if allotment.slots:
            self._book.granted(pool, allotment.allotment_id, allotment.slots, allotment.ttl_ms / 1000.0, sent)
        else:
            self._book.refused(pool, response.retry_after_ms / 1000.0)

    async def _renew(self, pool: str) -> None:
        held = self._book.pools[pool]
        sent = self._clock()
        request = _pb.RenewAllotmentRequest(allotment_id=held.allotment_id, slots=self._book.size_wanted(pool))
        try:
            response = await self._call("RenewAllotment", request)
        except NotFoundError:
            log.warning("the allotment of pool %s was reclaimed by the service", pool)
            self._book.lose(pool)
            return
        except LoadwardenError as err:
            log.debug("renewing the allotment of pool %s failed; trying again: %s", pool, err)
            self._book.retry_renewal(pool, RETRY_S)
            return
        allotment = response.allotment
        self._book.granted(pool, allotment.allotment_id, allotment.slots, allotment.ttl_ms / 1000.0, sent)
        if allotment.slots < request.slots:  # the pool had no more free: do not ask to grow at once again
            self._book.refused(pool, GROW_RETRY_S)
