"""Allotments (Doorman's capacity leases): a block of a pool's slots one caller hands out itself.

An allotment is a set of the pool's own leases under one id. Taking, renewing,
resizing and returning it takes, renews and ends those leases, so the pool's limit
(global on the Redis store) bounds allotments and AcquireSlot leases together, and
a dead client's slots come back at its leases' TTL with nothing to do here. Each
lease is taken with the request id ``<allotment id>.<n>``, so handing one back ends
it as never granted (``abandon_requests``): the slot returns at once and teaches the
adaptive limit nothing, since the service cannot know how the work inside went.

The id -> leases map lives in this process (on the Redis store, an allotment is
renewed and released through the replica that granted it; its slots are global all
the same). It is bounded by the leases it refers to, since each allotment holds at
least one; records whose TTL has passed are dropped when met and by a sweep every
SWEEP_EVERY calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from loadwarden.policy import NotFound

from ._admission import Denied, Granted, SlotRequest
from ._core import DecisionCore

MAX_ALLOTMENT_SLOTS = 1_000
SWEEP_EVERY = 64  # calls between two sweeps of records past their TTL


@dataclass(slots=True)
class AllotmentRecord:
    """One allotment: its leases by request id (lease id as the value)."""

    id: str
    pool: str
    owner: str
    ttl_s: float
    expires_at: float  # monotonic
    leases: dict[str, str] = field(default_factory=dict)
    taken: int = 0  # leases ever taken, for the next request id

    @property
    def slots(self) -> int:
        return len(self.leases)


class Allotments:
    """The allotments granted by one service process."""

    def __init__(self, core: DecisionCore) -> None:
        self._core = core
        self._records: dict[str, AllotmentRecord] = {}
        self._calls = 0

    def __len__(self) -> int:
        return len(self._records)

    async def acquire(
        self, pool: str, slots: int, ttl_s: float | None, owner: str
    ) -> tuple[AllotmentRecord | None, float]:
        """Takes up to ``slots`` free slots of ``pool`` for ``owner``, never waiting.

        Returns:
            The allotment (None when no slot was free) and, when none was, how long to
            wait before asking again, seconds.

        Raises:
            NotFound: unknown pool.
        """
        self._sweep()
        settings = self._core.pool(pool).settings
        ttl = ttl_s if ttl_s is not None else settings.lease_ttl_ms / 1000.0
        record = AllotmentRecord(self._core.new_decision_id(owner), pool, owner, ttl, 0.0)
        retry_after = await self._grow(record, slots)
        if not record.leases:
            return None, retry_after
        record.expires_at = self._core.clock.monotonic() + ttl
        self._records[record.id] = record
        return record, 0.0

    async def renew(self, allotment_id: str, ttl_s: float | None, slots: int, owner: str) -> AllotmentRecord:
        """Extends ``owner``'s allotment and resizes it to ``slots`` (0 keeps the count).

        Raises:
            NotFound: unknown, another caller's, or every one of its slots has run out.
        """
        self._sweep()
        record = self._find(allotment_id, owner)
        if ttl_s is not None:
            record.ttl_s = ttl_s
        for request_id, lease_id in list(record.leases.items()):
            try:
                await self._core.renew_lease(lease_id, record.ttl_s, owner)
            except NotFound:
                del record.leases[request_id]  # reclaimed at its TTL: that slot is gone
        if slots and slots < record.slots:
            extra = list(record.leases)[slots:]
            await self._core.abandon_requests(record.pool, extra, owner)
            for request_id in extra:
                del record.leases[request_id]
        elif slots > record.slots:
            await self._grow(record, slots)
        if not record.leases:
            del self._records[record.id]
            raise NotFound("allotment_id", f"allotment {allotment_id!r} has no slot left (its TTL passed)")
        record.expires_at = self._core.clock.monotonic() + record.ttl_s
        return record

    async def release(self, allotment_id: str, owner: str) -> int:
        """Hands ``owner``'s allotment back; returns its slots (0 when it had ended)."""
        self._sweep()
        record = self._records.get(allotment_id)
        if record is None or record.owner != owner:
            return 0
        del self._records[allotment_id]
        return await self._core.abandon_requests(record.pool, list(record.leases), owner)

    async def _grow(self, record: AllotmentRecord, slots: int) -> float:
        """Takes free slots until ``record`` holds ``slots``; returns the retry hint of a denial."""
        while record.slots < slots:
            record.taken += 1
            request_id = f"{record.id}.{record.taken}"
            request = SlotRequest(record.pool, request_id, 0, 0.0, record.ttl_s, "", False, record.owner)
            answer = await self._core.acquire(request, None)
            if isinstance(answer, Denied):
                return answer.retry_after_s
            assert isinstance(answer, Granted)
            record.leases[request_id] = answer.lease.id
        return 0.0

    def _find(self, allotment_id: str, owner: str) -> AllotmentRecord:
        record = self._records.get(allotment_id)
        if record is None or record.owner != owner:  # another caller's is as good as unknown
            raise NotFound("allotment_id", f"no allotment {allotment_id!r}")
        if record.expires_at < self._core.clock.monotonic():
            del self._records[allotment_id]
            raise NotFound("allotment_id", f"allotment {allotment_id!r} ended at its TTL")
        return record

    def _sweep(self) -> None:
        self._calls += 1
        if self._calls % SWEEP_EVERY:
            return
        now = self._core.clock.monotonic()
        for allotment_id in [a for a, r in self._records.items() if r.expires_at < now]:
            del self._records[allotment_id]


def expires_in_ms(record: AllotmentRecord, now: float) -> int:
    return max(0, math.ceil((record.expires_at - now) * 1000))
