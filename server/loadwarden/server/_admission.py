"""Admission control: AcquireSlot / RenewLease / ReleaseSlot.

Each pool has a ``SlotPool``: a limit algorithm that says how many slots may be
held at once, the leases held, and a wait queue ordered by priority then
arrival. Invariants, kept after every state change:

* ``in_use <= limit`` — a slot is granted only below the limit (Sentinel's hard
  cap). A shrinking adaptive limit never revokes a lease; it only stops grants.
* If anyone is waiting, no slot is free: ``dispatch`` runs after every release,
  reclaim and limit change, so a newcomer never jumps the queue. (Exception: at
  the service-wide ``max_leases`` cap nobody is granted; a waiter whose pool has
  room then waits for a release in its own pool, or for its timeout.)
* Queues and the lease-expiry heap hold at most twice their live entries plus
  QUEUE_SLACK: entries of waiters that left and of superseded expiries are
  dropped by a rebuild, so timeouts and renewals cannot grow memory.
* A waiter whose call was cancelled or timed out never keeps a slot: if a grant
  races with the cancellation, the slot is given straight back.
* Lease ids are unique per process and never reused; a lease not renewed or
  released within its TTL is reclaimed, so a crashed client cannot leak capacity.

Everything runs in the event-loop thread; waiting is an asyncio future per waiter.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from ._clock import Clock
from ._decisions import IdGenerator
from ._errors import NotFound, ResourceExhausted, Unavailable
from ._model import Backend
from ._ratelimit import RateLimiter
from ._settings import PoolSettings
from .limits import LimitAlgorithm, build_limit

log = logging.getLogger("loadwarden.server")

# Weight of the newest hold time in the per-pool hold-time EWMA used for retry-after hints.
HOLD_EWMA_WEIGHT = 0.2
MIN_RETRY_AFTER_S = 0.01
MAX_RETRY_AFTER_S = 60.0
# A waiter answers this long before the call's deadline, so the answer still arrives.
DEADLINE_MARGIN_S = 0.05
# Stale entries a heap (wait queue, lease expiry) may hold beyond twice its live ones before it is rebuilt.
QUEUE_SLACK = 64


class Denial(enum.Enum):
    AT_CAPACITY = "at_capacity"
    QUEUE_TIMEOUT = "queue_timeout"
    NO_ELIGIBLE_SERVER = "no_eligible_server"


@dataclass(slots=True, eq=False)
class Lease:
    """A granted slot. ``expires_at`` is monotonic seconds."""

    id: str
    slots: SlotPool
    ttl_s: float
    granted_at: float
    expires_at: float
    request_id: str
    decision_id: str | None = None
    server: Backend | None = None


@dataclass(frozen=True, slots=True)
class Granted:
    lease: Lease
    queue_wait_s: float


@dataclass(frozen=True, slots=True)
class Denied:
    denial: Denial
    reason: str
    retry_after_s: float
    queue_wait_s: float


Answer = Granted | Denied


@dataclass(frozen=True, slots=True)
class SlotRequest:
    """A validated AcquireSlot."""

    pool: str
    request_id: str
    priority: int
    max_wait_s: float
    lease_ttl_s: float | None
    client_key: str
    select_server: bool


@dataclass(slots=True, eq=False)
class _Waiter:
    request: SlotRequest
    enqueued_at: float
    future: asyncio.Future[Answer]
    callers: int = 1  # idempotent retries attach to the same waiter
    gone: bool = False


class SlotPool:
    """One pool's admission state."""

    def __init__(self, settings: PoolSettings, where: str) -> None:
        self.settings = settings
        self.limit: LimitAlgorithm = build_limit(
            settings.limit_algorithm, settings.limit_params, settings.max_concurrency, where
        )
        self.rate = (
            RateLimiter(settings.rate_limit, max_keys=settings.rate_limit_keys) if settings.rate_limit else None
        )
        self.in_use = 0
        self.waiting = 0
        self.queue: list[tuple[int, int, _Waiter]] = []  # (-priority, arrival, waiter)
        self.hold_ewma_s = 0.0
        self.deleted = False
        self.rate_limited_total = 0  # requests refused by the rate limit, for metrics

    def reconfigure(self, settings: PoolSettings, where: str) -> None:
        """Takes new settings; leases and waiters stay. The limit algorithm restarts
        only when its name, parameters or initial limit changed."""
        old = self.settings
        if (old.limit_algorithm, old.limit_params, old.max_concurrency) != (
            settings.limit_algorithm, settings.limit_params, settings.max_concurrency,
        ):
            self.limit = build_limit(settings.limit_algorithm, settings.limit_params, settings.max_concurrency, where)
        if old.rate_limit != settings.rate_limit or old.rate_limit_keys != settings.rate_limit_keys:
            self.rate = (
                RateLimiter(settings.rate_limit, max_keys=settings.rate_limit_keys) if settings.rate_limit else None
            )
        self.settings = settings

    def compact(self) -> None:
        """Drops the entries of waiters that left (timed out or cancelled) from the queue.

        A leaving waiter is only marked gone; its entry stays until ``dispatch`` pops
        it. While no slot frees up nothing is popped, so without this, waiters that
        time out would pile up without bound. Rebuilding once gone entries are the
        majority keeps the queue within ``2 * waiting + QUEUE_SLACK`` entries at
        amortised O(1) per waiter.
        """
        if len(self.queue) > 2 * self.waiting + QUEUE_SLACK:
            self.queue = [entry for entry in self.queue if not entry[2].gone]
            heapq.heapify(self.queue)

    def has_room(self) -> bool:
        limit = self.limit.limit
        return limit == 0 or self.in_use < limit

    def retry_after_s(self) -> float:
        """Rough time until a slot frees for a newcomer: mean hold time x (queue + 1) / limit."""
        limit = max(1, self.limit.limit)
        estimate = self.hold_ewma_s * (self.waiting + 1) / limit
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, estimate))


class Admission:
    """Slots, leases and wait queues of every pool."""

    def __init__(
        self,
        clock: Clock,
        select: object,
        report_outcome: object,
        *,
        max_leases: int = 200_000,
        max_request_ids: int = 200_000,
        ids: IdGenerator | None = None,
    ) -> None:
        self._clock = clock
        self._select = select  # (pool_name, now) -> (decision_id, Backend); raises Unavailable
        self._report_outcome = report_outcome  # (decision_id, success, latency_ms) -> None
        self.max_leases = max_leases
        # Lease ids have their own id space, so "issued and no longer held" means "ended"
        # with no per-lease memory of ended leases.
        self._ids = (ids or IdGenerator()).derived("lease")
        self.leases: dict[str, Lease] = {}
        self._expiry: list[tuple[float, str]] = []  # (expires_at, lease id); stale entries skipped
        self._requests: OrderedDict[tuple[str, str], str | _Waiter] = OrderedDict()  # -> lease id or waiter
        self._max_request_ids = max_request_ids
        self._arrivals = itertools.count()
        self.reclaimed_total = 0

    # --- acquire ---------------------------------------------------------------------

    async def acquire(self, slots: SlotPool, request: SlotRequest, time_left_s: float | None) -> Answer:
        """Grants a slot now, after a wait, or denies.

        Args:
            slots: The pool's admission state.
            request: The validated request.
            time_left_s: Seconds until the call's deadline (None: no deadline).

        Raises:
            ResourceExhausted: full queue, exhausted rate, or the lease cap.
        """
        now = self._clock.monotonic()
        self.expire(now)
        key = (request.pool, request.request_id)
        if request.request_id:
            earlier = self._requests.get(key)
            if isinstance(earlier, str):
                lease = self.leases.get(earlier)
                if lease is not None:  # a retry of a granted request: the same lease, not a second
                    return Granted(lease, 0.0)
            elif isinstance(earlier, _Waiter) and not earlier.gone:
                earlier.callers += 1
                return await self._wait(slots, earlier, request, time_left_s)
        if slots.rate is not None:
            wait = slots.rate.try_acquire(request.client_key, now)
            if wait > 0:
                slots.rate_limited_total += 1
                raise ResourceExhausted(
                    f"client_key: {request.client_key or '(anonymous)'!r} is over pool {request.pool!r}'s rate limit "
                    f"of {slots.settings.rate_limit.count} per {slots.settings.rate_limit.per_s:g} s",  # type: ignore[union-attr]
                    retry_after_s=wait,
                )
        if slots.has_room():
            return self._grant(slots, request, now, now)
        if request.max_wait_s <= 0:
            return Denied(Denial.AT_CAPACITY, f"pool {request.pool!r} is at its limit of {slots.limit.limit} slots",
                          slots.retry_after_s(), 0.0)
        if slots.waiting >= slots.settings.max_queue_length:
            cap = slots.settings.max_queue_length
            raise ResourceExhausted.cap_reached(
                "max_queue_length", f"pools.{request.pool}.max_queue_length", cap,
                f"pool {request.pool!r}: wait queue is full ({slots.waiting} waiting; max_queue_length {cap})",
                retry_after_s=slots.retry_after_s(),
            )
        waiter = _Waiter(request, now, asyncio.get_running_loop().create_future())
        slots.compact()
        heapq.heappush(slots.queue, (-request.priority, next(self._arrivals), waiter))
        slots.waiting += 1
        if request.request_id:
            self._remember(key, waiter)
        return await self._wait(slots, waiter, request, time_left_s)

    async def _wait(self, slots: SlotPool, waiter: _Waiter, request: SlotRequest, time_left_s: float | None) -> Answer:
        timeout = request.max_wait_s
        if time_left_s is not None:  # the call's own deadline bounds the wait
            timeout = min(timeout, max(0.0, time_left_s - DEADLINE_MARGIN_S))
        try:
            # Not asyncio.wait_for: on 3.11 it can swallow a cancellation that races a grant,
            # and the grant would then go to a caller who is gone.
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiter.future)
        except TimeoutError:
            if waiter.future.done():
                return waiter.future.result()  # granted at the last instant: keep it
            self._leave(slots, waiter)
            waited = self._clock.monotonic() - waiter.enqueued_at
            return Denied(Denial.QUEUE_TIMEOUT, f"no slot in pool {request.pool!r} freed up within {timeout * 1000:.0f} ms",
                          slots.retry_after_s(), waited)
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                waiter.callers -= 1
                answer = waiter.future.result()
                if waiter.callers <= 0 and isinstance(answer, Granted):
                    # The caller is gone: the slot goes straight back, it never counts.
                    self.release(answer.lease.id, success=True, latency_ms=0.0, count_sample=False)
            else:
                self._leave(slots, waiter)
            raise

    def _leave(self, slots: SlotPool, waiter: _Waiter) -> None:
        waiter.callers -= 1
        if waiter.callers <= 0 and not waiter.gone:
            waiter.gone = True
            slots.waiting -= 1
            self._requests.pop((waiter.request.pool, waiter.request.request_id), None)

    def lease_retry_after_s(self, now: float) -> float:
        """Seconds until the next lease is due to expire (a lease may free up sooner), clamped."""
        soonest = min((entry[0] for entry in self._expiry[:1]), default=now + MAX_RETRY_AFTER_S)
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, soonest - now))

    def _grant(self, slots: SlotPool, request: SlotRequest, now: float, enqueued_at: float) -> Answer:
        if len(self.leases) >= self.max_leases:
            raise ResourceExhausted.cap_reached(
                "max_leases", "limits.max_leases", self.max_leases,
                f"{len(self.leases)} leases are held; pool {request.pool!r} cannot grant another",
                retry_after_s=self.lease_retry_after_s(now),
            )
        decision_id, server = None, None
        if request.select_server:
            try:
                decision_id, server = self._select(request.pool)  # type: ignore[operator]
            except Unavailable as exc:
                return Denied(Denial.NO_ELIGIBLE_SERVER, str(exc), slots.retry_after_s(), now - enqueued_at)
        ttl_s = request.lease_ttl_s or slots.settings.lease_ttl_ms / 1000.0
        lease = Lease(self._ids.new(), slots, ttl_s, now, now + ttl_s, request.request_id, decision_id, server)
        self.leases[lease.id] = lease
        self._push_expiry(lease)
        slots.in_use += 1
        if request.request_id:
            self._remember((request.pool, request.request_id), lease.id)
        return Granted(lease, now - enqueued_at)

    def _remember(self, key: tuple[str, str], value: str | _Waiter) -> None:
        self._requests[key] = value
        self._requests.move_to_end(key)
        while len(self._requests) > self._max_request_ids:
            self._requests.popitem(last=False)

    def dispatch(self, slots: SlotPool) -> None:
        """Grants queued waiters, highest priority first, while there is room.

        Stops at the service-wide lease cap: the waiters left keep waiting (a later
        release dispatches again) or time out, so nothing here ever raises.
        """
        now = self._clock.monotonic()
        while slots.queue and slots.has_room() and len(self.leases) < self.max_leases:
            _, _, waiter = heapq.heappop(slots.queue)
            if waiter.gone:
                continue
            waiter.gone = True
            slots.waiting -= 1
            waiter.future.set_result(self._grant(slots, waiter.request, now, waiter.enqueued_at))

    # --- renew / release / expire ----------------------------------------------------

    def renew(self, lease_id: str, ttl_s: float | None) -> Lease:
        now = self._clock.monotonic()
        self.expire(now)
        lease = self.leases.get(lease_id)
        if lease is None:
            ended = "was released or reclaimed" if self._ids.issued(lease_id) else "does not exist"
            raise NotFound("lease_id", f"lease {lease_id!r} {ended}")
        if ttl_s:
            lease.ttl_s = ttl_s
        lease.expires_at = now + lease.ttl_s
        self._push_expiry(lease)
        return lease

    def _push_expiry(self, lease: Lease) -> None:
        # Every grant and renewal pushes an entry; the superseded ones are skipped when
        # popped, which for a long TTL may be a day away. Rebuilding from the live leases
        # once stale entries are the majority keeps the heap within 2 * leases + QUEUE_SLACK.
        # ``lease`` is in self.leases already, so a rebuild includes its entry.
        if len(self._expiry) >= 2 * len(self.leases) + QUEUE_SLACK:
            self._expiry = [(live.expires_at, live.id) for live in self.leases.values()]
            heapq.heapify(self._expiry)
        else:
            heapq.heappush(self._expiry, (lease.expires_at, lease.id))

    def release(self, lease_id: str, *, success: bool, latency_ms: float, count_sample: bool = True) -> bool:
        """Ends a lease; returns False when it had already ended (released or reclaimed).

        Raises:
            NotFound: the lease id was never issued.
        """
        now = self._clock.monotonic()
        self.expire(now)  # a lease past its TTL was reclaimed, whether or not a sweep ran yet
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            if self._ids.issued(lease_id):
                return False
            raise NotFound("lease_id", f"lease {lease_id!r} does not exist")
        held_ms = (now - lease.granted_at) * 1000.0
        self._end(lease, now, rtt_ms=latency_ms or held_ms, dropped=not success, count_sample=count_sample)
        if lease.decision_id is not None:
            self._report_outcome(lease.decision_id, success, latency_ms or held_ms)  # type: ignore[operator]
        return True

    def expire(self, now: float | None = None) -> int:
        """Reclaims leases whose TTL passed; returns how many."""
        now = self._clock.monotonic() if now is None else now
        reclaimed = 0
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, lease_id = heapq.heappop(heap)
            lease = self.leases.get(lease_id)
            if lease is None or lease.expires_at > now:
                continue  # released, or renewed since this entry was pushed
            del self.leases[lease_id]
            log.warning("lease %s in pool %s reclaimed: not renewed or released within %.1f s",
                        lease_id, lease.slots.settings.name, lease.ttl_s)
            self._end(lease, now, rtt_ms=(now - lease.granted_at) * 1000.0, dropped=True, count_sample=True)
            reclaimed += 1
        self.reclaimed_total += reclaimed
        return reclaimed

    def _end(self, lease: Lease, now: float, *, rtt_ms: float, dropped: bool, count_sample: bool) -> None:
        slots = lease.slots
        slots.in_use -= 1
        if count_sample:
            slots.limit.on_sample(now, rtt_ms, slots.in_use + 1, dropped)
            held_s = now - lease.granted_at
            slots.hold_ewma_s += HOLD_EWMA_WEIGHT * (held_s - slots.hold_ewma_s) if slots.hold_ewma_s else held_s
        self.dispatch(slots)

    def close_pool(self, slots: SlotPool) -> None:
        """Answers every waiter of a deleted pool with a denial; leases end as usual."""
        slots.deleted = True
        while slots.queue:
            _, _, waiter = heapq.heappop(slots.queue)
            if not waiter.gone:
                waiter.gone = True
                slots.waiting -= 1
                waiter.future.set_result(
                    Denied(Denial.AT_CAPACITY, f"pool {slots.settings.name!r} was deleted", MAX_RETRY_AFTER_S, 0.0)
                )
