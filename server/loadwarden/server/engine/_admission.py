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
* Lease ids are unique per process, never reused and unguessable; a lease, its
  request id and its selection belong to the caller that acquired it, and are
  NOT_FOUND to any other. A lease not renewed or released within its TTL (at most
  the pool's ``max_lease_ttl_ms``) is reclaimed, so a crashed client cannot leak
  capacity.
* A request id is remembered while its waiter waits or its lease is held, and
  forgotten when the lease ends, so the map holds at most leases + waiters entries
  (and ``max_request_ids`` in all).
* A deleted pool's leases stay counted: recreating a pool of the same name takes
  over the old admission state, so the cap holds across the recreation.

Everything runs in the event-loop thread; waiting is an asyncio future per waiter.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from loadwarden.policy import (
    Backend,
    Clock,
    IdGenerator,
    InvalidArgument,
    NotFound,
    PoolSettings,
    RateLimit,
    RateLimiter,
    RateTaken,
    ResourceExhausted,
    Unavailable,
)
from loadwarden.policy.limits import LimitAlgorithm, build_limit

log = logging.getLogger("loadwarden.server")

# Weight of the newest hold time in the per-pool hold-time EWMA used for retry-after hints.
HOLD_EWMA_WEIGHT = 0.2
MIN_RETRY_AFTER_S = 0.01
MAX_RETRY_AFTER_S = 60.0
# A waiter answers this long before the call's deadline, so the answer still arrives.
DEADLINE_MARGIN_S = 0.05
# Stale entries a heap (wait queue, lease expiry) may hold beyond twice its live ones before it is rebuilt.
QUEUE_SLACK = 64
# Rate limits with names of their own (take_named_rate) kept at most; the least recently used
# is forgotten past it, and its buckets come back full.
MAX_NAMED_RATES = 10_000


class Denial(enum.Enum):
    AT_CAPACITY = "at_capacity"
    QUEUE_TIMEOUT = "queue_timeout"
    NO_ELIGIBLE_SERVER = "no_eligible_server"


class LeaseSelection(Protocol):
    """A server chosen together with a slot; it is settled when the lease ends, so it
    lives exactly as long as the lease (renewals extend it), never a decision TTL."""

    @property
    def decision_id(self) -> str: ...

    @property
    def server(self) -> Backend: ...


@dataclass(slots=True, eq=False)
class Lease:
    """A granted slot, owned by the caller identity ``owner``. ``expires_at`` is monotonic seconds."""

    id: str
    slots: SlotPool
    ttl_s: float
    granted_at: float
    expires_at: float
    request_id: str
    owner: str = ""
    selection: LeaseSelection | None = None

    @property
    def decision_id(self) -> str | None:
        return self.selection.decision_id if self.selection is not None else None

    @property
    def server(self) -> Backend | None:
        return self.selection.server if self.selection is not None else None


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
    owner: str = ""  # the caller identity; "" is the anonymous caller (no credentials configured)


@dataclass(slots=True, eq=False)
class _Waiter:
    request: SlotRequest
    slots: SlotPool
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
        self.rate = _rate_limiter(settings)
        self.in_use = 0
        self.waiting = 0
        self.queue: list[tuple[int, int, _Waiter]] = []  # (-priority, arrival, waiter)
        self.hold_ewma_s = 0.0
        self.deleted = False
        self.rate_limited_total = 0  # requests refused by the rate limit, for metrics
        # The limit every replica enforces, when replicas share one adaptive limit that
        # another replica computes (None: this process's own algorithm decides).
        self.shared_limit: int | None = None

    @property
    def current_limit(self) -> int:
        """The limit in force: the shared one when replicas share it, else the algorithm's."""
        return self.shared_limit if self.shared_limit is not None else self.limit.limit

    def reconfigure(self, settings: PoolSettings, where: str) -> None:
        """Takes new settings; leases and waiters stay. The limit algorithm restarts
        only when its name, parameters or initial limit changed."""
        old = self.settings
        if (old.limit_algorithm, old.limit_params, old.max_concurrency) != (
            settings.limit_algorithm,
            settings.limit_params,
            settings.max_concurrency,
        ):
            self.limit = build_limit(settings.limit_algorithm, settings.limit_params, settings.max_concurrency, where)
        if _rate_settings(old) != _rate_settings(settings):
            self.rate = _rate_limiter(settings)
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
        limit = self.current_limit
        return limit == 0 or self.in_use < limit

    def retry_after_s(self) -> float:
        """Rough time until a slot frees for a newcomer: mean hold time x (queue + 1) / limit."""
        limit = max(1, self.current_limit)
        estimate = self.hold_ewma_s * (self.waiting + 1) / limit
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, estimate))


def rate_refusal(slots: SlotPool, request: SlotRequest, wait_s: float) -> ResourceExhausted:
    """The answer to ``request`` over its pool's rate limit, a token due in ``wait_s``; counted."""
    slots.rate_limited_total += 1
    if request.owner:
        who = f"caller {request.owner!r}"
        if request.client_key:
            who += f" (client_key {request.client_key!r})"
    else:
        who = f"client_key {request.client_key or '(anonymous)'!r}"
    rate = slots.settings.rate_limit
    assert rate is not None
    return ResourceExhausted(
        f"client_key: {who} is over pool {request.pool!r}'s rate limit of {rate.count} per {rate.per_s:g} s",
        retry_after_s=wait_s,
    )


def _rate_settings(settings: PoolSettings) -> tuple[object, ...]:
    return (
        settings.rate_limit,
        settings.rate_limit_keys,
        settings.identity_rate_limit,
        settings.rate_limit_keys_per_identity,
    )


def _rate_limiter(settings: PoolSettings) -> RateLimiter | None:
    if settings.rate_limit is None:
        return None
    return RateLimiter(
        settings.rate_limit,
        max_keys=settings.rate_limit_keys,
        identity_limit=settings.identity_rate_limit,
        max_keys_per_identity=settings.rate_limit_keys_per_identity,
    )


class Admission:
    """Slots, leases and wait queues of every pool.

    Args:
        clock: Monotonic time.
        select: ``(pool_name, owner) -> LeaseSelection`` for ``select_server``
            requests; raises Unavailable when no server is eligible.
        settle: ``(selection, success, latency_ms, expired) -> None``, called once
            when a lease with a selection ends (released, or reclaimed: expired).
        max_leases: Leases held at once, service-wide.
        max_request_ids: Request ids remembered at most (each lives as long as its
            waiter or lease).
        ids: Where lease ids come from (a derived id space).
    """

    def __init__(
        self,
        clock: Clock,
        select: Callable[[str, str], LeaseSelection],
        settle: Callable[[LeaseSelection, bool, float, bool], None],
        *,
        max_leases: int = 200_000,
        max_request_ids: int = 200_000,
        ids: IdGenerator | None = None,
    ) -> None:
        self._clock = clock
        self._select = select
        self._settle = settle
        self.max_leases = max_leases
        # Lease ids have their own id space, so "issued and no longer held" means "ended"
        # with no per-lease memory of ended leases.
        self._ids = (ids or IdGenerator()).derived("lease")
        self.leases: dict[str, Lease] = {}
        self._expiry: list[tuple[float, str]] = []  # (expires_at, lease id); stale entries skipped
        # (owner, pool, request id) -> lease id or waiter; an entry lives as long as its lease or waiter.
        self._requests: OrderedDict[tuple[str, str, str], str | _Waiter] = OrderedDict()
        self._max_request_ids = max_request_ids
        self._arrivals = itertools.count()
        # Admission state of deleted pools whose leases are still held, by pool name: a pool
        # created again under the name takes it over, so those leases keep counting.
        self._closed: dict[str, SlotPool] = {}
        self.reclaimed_total = 0
        # name -> (its rate, keys tracked, its buckets), least recently used first (take_named_rate).
        self._named_rates: OrderedDict[str, tuple[RateLimit, int, RateLimiter]] = OrderedDict()

    # --- acquire ---------------------------------------------------------------------

    async def acquire(self, slots: SlotPool, request: SlotRequest, time_left_s: float | None) -> Answer:
        """Grants a slot now, after a wait, or denies.

        Args:
            slots: The pool's admission state.
            request: The validated request.
            time_left_s: Seconds until the call's deadline (None: no deadline).

        Raises:
            ResourceExhausted: full queue, exhausted rate, or the lease cap.
            InvalidArgument: a lease TTL over the pool's max_lease_ttl_ms.
        """
        now = self._clock.monotonic()
        self.expire(now)
        if request.lease_ttl_s is not None:
            self._check_ttl(slots, request.lease_ttl_s, "lease_ttl_ms")
        key = (request.owner, request.pool, request.request_id)
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
            wait = slots.rate.try_acquire(request.client_key, now, request.owner or None)
            if wait > 0:
                raise rate_refusal(slots, request, wait)
        if slots.has_room():
            return self._grant(slots, request, now, now)
        return await self._queue_or_deny(slots, request, now, time_left_s)

    # How the limit and the queue are described in denials (a shared admission says whose).
    LIMIT_SCOPE = ""
    QUEUE_SCOPE = ""

    async def _queue_or_deny(
        self, slots: SlotPool, request: SlotRequest, now: float, time_left_s: float | None
    ) -> Answer:
        """No slot now: a denial when the request may not wait, ResourceExhausted when the
        queue is full, else a place in the queue and the wait's answer."""
        if request.max_wait_s <= 0:
            return Denied(
                Denial.AT_CAPACITY,
                f"pool {request.pool!r} is at its limit of {slots.current_limit} slots{self.LIMIT_SCOPE}",
                slots.retry_after_s(),
                0.0,
            )
        if slots.waiting >= slots.settings.max_queue_length:
            cap = slots.settings.max_queue_length
            raise ResourceExhausted.cap_reached(
                "max_queue_length",
                f"pools.{request.pool}.max_queue_length",
                cap,
                f"pool {request.pool!r}: wait queue is full "
                f"({slots.waiting} waiting{self.QUEUE_SCOPE}; max_queue_length {cap})",
                retry_after_s=slots.retry_after_s(),
            )
        waiter = _Waiter(request, slots, now, asyncio.get_running_loop().create_future())
        slots.compact()
        heapq.heappush(slots.queue, (-request.priority, next(self._arrivals), waiter))
        slots.waiting += 1
        if request.request_id:
            self._remember((request.owner, request.pool, request.request_id), waiter)
        self._queued(slots)
        return await self._wait(slots, waiter, request, time_left_s)

    def _queued(self, slots: SlotPool) -> None:
        """A waiter joined ``slots``' queue (a shared admission looks for a slot freed meanwhile)."""
        return None

    @staticmethod
    def _check_ttl(slots: SlotPool, ttl_s: float, field_name: str) -> None:
        longest_ms = slots.settings.max_lease_ttl_ms
        if ttl_s * 1000.0 > longest_ms:
            raise InvalidArgument(
                field_name,
                f"pool {slots.settings.name!r} allows leases of at most {longest_ms} ms "
                f"(max_lease_ttl_ms); renew a long-held lease instead",
            )

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
            return Denied(
                Denial.QUEUE_TIMEOUT,
                f"no slot in pool {request.pool!r} freed up within {timeout * 1000:.0f} ms",
                slots.retry_after_s(),
                waited,
            )
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                waiter.callers -= 1
                answer = waiter.future.result()
                if waiter.callers <= 0 and isinstance(answer, Granted):
                    # The caller is gone: the slot goes straight back, it never counts.
                    self.give_back(answer.lease)
            else:
                self._leave(slots, waiter)
            raise

    def _leave(self, slots: SlotPool, waiter: _Waiter) -> None:
        waiter.callers -= 1
        if waiter.callers <= 0 and not waiter.gone:
            waiter.gone = True
            slots.waiting -= 1
            request = waiter.request
            self._forget((request.owner, request.pool, request.request_id), waiter)

    def lease_retry_after_s(self, now: float) -> float:
        """Seconds until the next lease is due to expire (a lease may free up sooner), clamped."""
        soonest = min((entry[0] for entry in self._expiry[:1]), default=now + MAX_RETRY_AFTER_S)
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, soonest - now))

    def _grant(self, slots: SlotPool, request: SlotRequest, now: float, enqueued_at: float) -> Answer:
        if len(self.leases) >= self.max_leases:
            raise ResourceExhausted.cap_reached(
                "max_leases",
                "limits.max_leases",
                self.max_leases,
                f"{len(self.leases)} leases are held; pool {request.pool!r} cannot grant another",
                retry_after_s=self.lease_retry_after_s(now),
            )
        selection = None
        if request.select_server:
            try:
                selection = self._select(request.pool, request.owner)
            except Unavailable as exc:
                return Denied(Denial.NO_ELIGIBLE_SERVER, str(exc), slots.retry_after_s(), now - enqueued_at)
        ttl_s = request.lease_ttl_s or slots.settings.lease_ttl_ms / 1000.0
        lease = Lease(
            self._ids.new(request.owner), slots, ttl_s, now, now + ttl_s, request.request_id, request.owner, selection
        )
        self.leases[lease.id] = lease
        self._push_expiry(lease)
        slots.in_use += 1
        if request.request_id:
            self._remember((request.owner, request.pool, request.request_id), lease.id)
        return Granted(lease, now - enqueued_at)

    def _remember(self, key: tuple[str, str, str], value: str | _Waiter) -> None:
        self._requests[key] = value
        self._requests.move_to_end(key)
        while len(self._requests) > self._max_request_ids:
            self._requests.popitem(last=False)

    def _forget(self, key: tuple[str, str, str], value: str | _Waiter) -> None:
        """Drops a request id's entry if it still maps to ``value`` (a lease id or waiter)."""
        if key[2] and self._requests.get(key) is value:
            del self._requests[key]

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

    # --- rate buckets for Envoy's rate-limit service (mesh/): AcquireSlot's, and named ones ---

    async def take_pool_rate(self, slots: SlotPool, client_key: str, owner: str, tokens: int) -> RateTaken | None:
        """Takes ``tokens`` from the buckets an AcquireSlot of ``owner`` with ``client_key`` in
        ``slots``' pool spends from: one count for both. None when the pool has no rate limit.

        Raises:
            Unavailable: the buckets cannot be reached (a shared admission's store).
        """
        if slots.rate is None:
            return None
        return slots.rate.take(client_key, self._clock.monotonic(), owner or None, tokens)

    async def take_named_rate(
        self, name: str, limit: RateLimit, key: str, tokens: int, max_keys: int
    ) -> RateTaken | None:
        """Takes ``tokens`` from bucket ``key`` of the rate limit called ``name``: a token bucket
        per key at ``limit`` (at most ``max_keys`` keys, least recently used forgotten), made on
        first use and made again when ``limit`` or ``max_keys`` changes. At most
        MAX_NAMED_RATES names are kept. None only from a shared admission whose store is
        unreachable with rate limits failing open.

        Raises:
            Unavailable: the buckets cannot be reached (a shared admission's store).
        """
        entry = self._named_rates.get(name)
        if entry is None or entry[:2] != (limit, max_keys):
            if entry is None and len(self._named_rates) >= MAX_NAMED_RATES:
                self._named_rates.popitem(last=False)
            entry = self._named_rates[name] = (limit, max_keys, RateLimiter(limit, max_keys=max_keys))
        self._named_rates.move_to_end(name)
        return entry[2].take(key, self._clock.monotonic(), None, tokens)

    # --- renew / release / expire ----------------------------------------------------

    def _held(self, lease_id: str, owner: str) -> Lease | None:
        """``owner``'s live lease ``lease_id``; None when it ended.

        Raises:
            NotFound: ``owner`` was never issued ``lease_id`` (another caller's lease
                looks exactly like one that never existed).
        """
        lease = self.leases.get(lease_id)
        if lease is not None and lease.owner == owner:
            return lease
        if lease is None and self._ids.issued(lease_id, owner):
            return None
        raise NotFound("lease_id", f"lease {lease_id!r} does not exist")

    def renew(self, lease_id: str, ttl_s: float | None, owner: str = "") -> Lease:
        """Extends ``owner``'s lease by its TTL (or a new ``ttl_s``) from now.

        Raises:
            NotFound: the lease ended, or was never issued to ``owner``.
            InvalidArgument: ``ttl_s`` over the pool's max_lease_ttl_ms.
        """
        now = self._clock.monotonic()
        self.expire(now)
        lease = self._held(lease_id, owner)
        if lease is None:
            raise NotFound("lease_id", f"lease {lease_id!r} was released or reclaimed")
        if ttl_s:
            self._check_ttl(lease.slots, ttl_s, "ttl_ms")
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

    def release(self, lease_id: str, *, success: bool, latency_ms: float, owner: str = "") -> bool:
        """Ends ``owner``'s lease; returns False when it had already ended (released or reclaimed).

        Raises:
            NotFound: the lease id was never issued to ``owner``.
        """
        now = self._clock.monotonic()
        self.expire(now)  # a lease past its TTL was reclaimed, whether or not a sweep ran yet
        lease = self._held(lease_id, owner)
        if lease is None:
            return False
        del self.leases[lease_id]
        held_ms = (now - lease.granted_at) * 1000.0
        self._end(lease, now, rtt_ms=latency_ms or held_ms, dropped=not success, count_sample=True)
        if lease.selection is not None:
            self._settle(lease.selection, success, latency_ms or held_ms, False)
        return True

    def release_request(self, pool: str, request_id: str, *, success: bool, latency_ms: float, owner: str = "") -> bool:
        """Ends what ``owner``'s AcquireSlot with ``request_id`` in ``pool`` holds: its lease
        (as ``release``) or its wait (the slot it may still be granted goes unclaimed by that
        caller). For a client that gave up on an AcquireSlot whose answer it never saw.

        Returns:
            True when a lease or a wait ended; False when nothing was held or waiting.
        """
        self.expire(self._clock.monotonic())
        entry = self._requests.get((owner, pool, request_id))
        if isinstance(entry, str):
            return self.release(entry, success=success, latency_ms=latency_ms, owner=owner)
        return self._give_up_wait(entry)

    def abandon_requests(self, pool: str, request_ids: Iterable[str], *, owner: str = "") -> int:
        """Ends what each of ``owner``'s AcquireSlots with these request ids in ``pool`` holds,
        as never granted: a lease is given back (``give_back``), a wait leaves its queue. For a
        client whose call timed out or was cancelled, so it never saw the answer.

        Returns:
            Leases and waits ended, count.
        """
        self.expire(self._clock.monotonic())
        ended = 0
        for request_id in request_ids:
            entry = self._requests.get((owner, pool, request_id))
            if isinstance(entry, str):
                lease = self.leases.get(entry)
                if lease is not None:
                    self.give_back(lease)
                    ended += 1
            elif self._give_up_wait(entry):
                ended += 1
        return ended

    def _give_up_wait(self, entry: object) -> bool:
        """Ends ``entry``'s wait when it is one still queued; True when it did."""
        if not (isinstance(entry, _Waiter) and not entry.gone):
            return False
        entry.callers = 1  # every caller of this request id has given up
        self._leave(entry.slots, entry)
        return True

    # --- what the core awaits: a shared admission (shared/) answers over the network ------

    async def renew_async(self, lease_id: str, ttl_s: float | None, owner: str = "") -> Lease:
        """``renew``, awaited."""
        return self.renew(lease_id, ttl_s, owner)

    async def release_async(self, lease_id: str, *, success: bool, latency_ms: float, owner: str = "") -> bool:
        """``release``, awaited."""
        return self.release(lease_id, success=success, latency_ms=latency_ms, owner=owner)

    async def release_request_async(
        self, pool: str, request_id: str, *, success: bool, latency_ms: float, owner: str = ""
    ) -> bool:
        """``release_request``, awaited."""
        return self.release_request(pool, request_id, success=success, latency_ms=latency_ms, owner=owner)

    async def abandon_requests_async(self, pool: str, request_ids: Iterable[str], *, owner: str = "") -> int:
        """``abandon_requests``, awaited."""
        return self.abandon_requests(pool, request_ids, owner=owner)

    def give_back(self, lease: Lease) -> None:
        """Ends a lease whose caller never got it (gone before the answer reached it): the
        slot returns at once and teaches the limit nothing; a selection is settled as a
        success of the time held (as a release would), so the strategy's bookkeeping of
        decisions in flight stays balanced."""
        if self.leases.pop(lease.id, None) is None:
            return
        now = self._clock.monotonic()
        self._end(lease, now, rtt_ms=0.0, dropped=False, count_sample=False)
        if lease.selection is not None:
            self._settle(lease.selection, True, (now - lease.granted_at) * 1000.0, False)

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
            log.warning(
                "lease %s in pool %s reclaimed: not renewed or released within %.1f s",
                lease_id,
                lease.slots.settings.name,
                lease.ttl_s,
            )
            held_ms = (now - lease.granted_at) * 1000.0
            self._end(lease, now, rtt_ms=held_ms, dropped=True, count_sample=True)
            if lease.selection is not None:
                self._settle(lease.selection, False, held_ms, True)
            reclaimed += 1
        self.reclaimed_total += reclaimed
        return reclaimed

    def _end(self, lease: Lease, now: float, *, rtt_ms: float, dropped: bool, count_sample: bool) -> None:
        slots = lease.slots
        slots.in_use -= 1
        self._forget((lease.owner, slots.settings.name, lease.request_id), lease.id)
        if count_sample:
            slots.limit.on_sample(now, rtt_ms, slots.in_use + 1, dropped)
            held_s = now - lease.granted_at
            slots.hold_ewma_s += HOLD_EWMA_WEIGHT * (held_s - slots.hold_ewma_s) if slots.hold_ewma_s else held_s
        if slots.deleted:
            if slots.in_use == 0 and self._closed.get(slots.settings.name) is slots:
                del self._closed[slots.settings.name]
            return
        self.dispatch(slots)

    # --- pools -------------------------------------------------------------------------

    def open_pool(self, settings: PoolSettings, where: str) -> SlotPool:
        """The admission state for a new pool: a deleted namesake's, when its leases are
        still held (they keep counting against the new settings' limit), else fresh."""
        slots = self._closed.pop(settings.name, None)
        if slots is None:
            return SlotPool(settings, where)
        slots.reconfigure(settings, where)
        slots.deleted = False
        log.info(
            "pool %s re-created with %d leases of its former self still held; they count against its limit",
            settings.name,
            slots.in_use,
        )
        return slots

    def close_pool(self, slots: SlotPool) -> None:
        """Answers every waiter of a deleted pool with a denial; leases end as usual, and keep
        counting if a pool of the same name is created before they do."""
        slots.deleted = True
        if slots.in_use > 0:
            self._closed[slots.settings.name] = slots
        while slots.queue:
            _, _, waiter = heapq.heappop(slots.queue)
            if not waiter.gone:
                waiter.gone = True
                slots.waiting -= 1
                waiter.future.set_result(
                    Denied(Denial.AT_CAPACITY, f"pool {slots.settings.name!r} was deleted", MAX_RETRY_AFTER_S, 0.0)
                )
