"""Admission whose leases live in Redis, so that every replica grants against one count.

What is shared and how (README "Several replicas"):

* **Leases** are Redis entries with their expiry; acquire, renew and release are one
  script each (``_lua``), so ``held <= max_concurrency`` holds over all replicas at
  every instant. A lease not renewed or released by its TTL is reclaimed by whichever
  replica looks first (every acquire in its pool, and each replica's sweep), also when
  the replica that granted it is dead.
* **Request ids** are shared: a retry that lands on another replica gets the lease the
  first call was granted.
* **Lease ids** are signed with one key all replicas share, so any replica can renew or
  release any lease, and answers NOT_FOUND for another caller's.
* **Waiting** is per replica: a replica keeps its own queue, exact in priority and
  arrival order, and tries its head again when Redis announces a freed slot in the pool
  (and every ``POLL_S`` in case an announcement was lost). Across replicas a freed slot
  goes to the replica whose retry arrives first, and a newcomer on a replica with an
  empty queue may take a slot that a waiter on another replica wanted: the priority
  order is exact within a replica, not across them. ``max_queue_length`` counts one
  replica's waiters.
* **An adaptive limit** (AIMD, Gradient2) has one value: one replica owns it (a Redis key
  with a TTL that it renews every ``ELECT_S``; another takes over within ``OWNER_TTL_MS``
  of its death), runs the algorithm on every replica's release samples (the others send
  theirs in batches on the events channel) and writes the value every acquire script reads.
* **A selection** made with a lease (``select_server``) is settled by the replica that
  made it: a release on another replica is announced to it.

Everything runs in the event-loop thread, like ``Admission``; Redis calls are awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from loadwarden.policy import (
    Clock,
    IdGenerator,
    InvalidArgument,
    NotFound,
    PoolSettings,
    RateLimit,
    RateTaken,
    ResourceExhausted,
    Unavailable,
)
from loadwarden.policy.limits import build_limit

from ..engine._admission import (
    DEADLINE_MARGIN_S,
    MAX_RETRY_AFTER_S,
    MIN_RETRY_AFTER_S,
    Admission,
    Answer,
    Denial,
    Denied,
    Granted,
    Lease,
    LeaseSelection,
    SlotPool,
    SlotRequest,
    _Waiter,
    rate_refusal,
)
from ._redis import FAIL_CLOSED, FAIL_OPEN, LOCAL, SharedRedis, decode

log = logging.getLogger("loadwarden.server")

# While Redis is unreachable, a probe tries it again after this long, doubling up to the most.
PROBE_FIRST_S = 0.05
PROBE_MAX_S = 2.0


@dataclass(frozen=True, slots=True)
class Outage:
    """What each surface does while Redis is unreachable (``[state] on_failure`` and friends).

    Attributes:
        admission: ``fail_closed`` (AcquireSlot answers UNAVAILABLE and the
            DecisionService health is NOT_SERVING), ``fail_open`` (every request is
            granted, counted by nobody), or ``local`` (each replica grants up to
            ``limit // replicas`` on its own).
        rate_limit: The same choice for rate limits (``local``: each replica allows
            ``count // replicas``; ``fail_closed`` also makes the health NOT_SERVING
            when a pool has a rate limit).
        replicas: How many replicas share the limit, for ``local``.
    """

    admission: str = FAIL_CLOSED
    rate_limit: str = FAIL_CLOSED
    replicas: int = 1


class StoreUnavailable(Unavailable):
    """Redis did not answer (or failed) a call.

    Answered UNAVAILABLE with no reason trailer, as an unreachable service would be:
    the trouble is transient, so clients retry and their breakers and local
    fallbacks act as for any outage (a reason would mark it the service's decision).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="")


# How often replicas renew or take the ownership of adaptive limits, and how long an owner
# that stopped renewing keeps it (a dead owner's limit is taken over within OWNER_TTL_MS).
ELECT_S = 1.0
OWNER_TTL_MS = 3_000
# Samples kept for an owner between flushes, per pool; more are dropped (the limit learns slower).
MAX_PENDING_SAMPLES = 10_000

# A replica with waiters tries its queues again this often even without an announcement.
POLL_S = 0.25
# Leases one sweep reclaims at most (a later sweep takes the rest).
SWEEP_BATCH = 500


@dataclass(slots=True, eq=False)
class _Mine:
    """A lease this replica granted with a selection: settled here when it ends anywhere."""

    lease: Lease
    selection: LeaseSelection


class SharedAdmission(Admission):
    """``Admission`` over Redis; see the module docstring for what holds across replicas.

    Args:
        clock: Monotonic time (local waits and timeouts).
        select / settle / max_leases / max_request_ids / ids: As for ``Admission``;
            ``ids`` must hold the key every replica shares.
        redis: The connected store.
        now_ms: Time for the scripts, ms, as a string; None uses Redis's clock (tests
            pass their manual clock's).
    """

    def __init__(
        self,
        clock: Clock,
        select: Callable[[str, str], LeaseSelection],
        settle: Callable[[LeaseSelection, bool, float, bool], None],
        *,
        redis: SharedRedis,
        max_leases: int = 200_000,
        max_request_ids: int = 200_000,
        ids: IdGenerator | None = None,
        now_ms: Callable[[], str] | None = None,
        outage: Outage | None = None,
    ) -> None:
        super().__init__(clock, select, settle, max_leases=max_leases, max_request_ids=max_request_ids, ids=ids)
        self.outage = outage or Outage()
        # Where leases come from while Redis is unreachable (fail_open, local): this replica alone.
        self._fallback = Admission(
            clock,
            select,
            settle,
            max_leases=max_leases,
            max_request_ids=max_request_ids,
            ids=self._ids.derived("local"),
        )
        self._fallback_slots: dict[str, SlotPool] = {}
        self.down = False  # Redis failed and has not answered since
        self.on_health: Callable[[bool], None] = lambda serving: None
        self._redis = redis
        self._prefix = redis.prefix
        self._replica = redis.replica
        self._now_ms = now_ms or (lambda: "")
        self._by_name: dict[str, SlotPool] = {}
        self._mine: dict[str, _Mine] = {}  # lease id -> a selection to settle when it ends
        self._dispatching: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._owners: dict[str, str] = {}  # pool -> the replica that computes its adaptive limit
        self._samples: dict[str, list[tuple[float, int, bool]]] = {}  # pool -> samples for its owner
        redis.on_event(self._event)

    # --- pools -------------------------------------------------------------------------

    def open_pool(self, settings: PoolSettings, where: str) -> SlotPool:
        slots = self._by_name.get(settings.name)
        if slots is None or not slots.deleted:
            slots = SlotPool(settings, where)
        else:
            slots.reconfigure(settings, where)
            slots.deleted = False
        self._by_name[settings.name] = slots
        return slots

    def close_pool(self, slots: SlotPool) -> None:
        super().close_pool(slots)  # answers the waiters; the leases stay in Redis and keep counting
        name = slots.settings.name
        self._closed.pop(name, None)
        self._by_name.pop(name, None)
        fallback = self._fallback_slots.pop(name, None)
        if fallback is not None:
            self._fallback.close_pool(fallback)

    def _slots(self, pool: str) -> SlotPool:
        """The pool's admission state, or a detached one for a pool this replica no longer has."""
        slots = self._by_name.get(pool)
        if slots is None:
            slots = SlotPool(PoolSettings(name=pool), "pool")
            slots.deleted = True
        return slots

    # --- acquire -----------------------------------------------------------------------

    async def acquire(self, slots: SlotPool, request: SlotRequest, time_left_s: float | None) -> Answer:
        """Grants against the count in Redis; with Redis unreachable, as ``outage`` says.

        The Redis part never outlives the call's deadline: past it the answer is a
        queue-timeout denial.
        """
        if not self.down:
            try:
                # Half the margin: a wait's own timeout (the whole margin) ends it first.
                budget = None if time_left_s is None else max(0.0, time_left_s - DEADLINE_MARGIN_S / 2)
                async with asyncio.timeout(budget):
                    return await self._acquire_shared(slots, request, time_left_s)
            except TimeoutError:
                if not self.down:
                    return Denied(
                        Denial.QUEUE_TIMEOUT,
                        "the shared state store did not answer within the call's deadline",
                        MIN_RETRY_AFTER_S,
                        0.0,
                    )
            except StoreUnavailable as exc:
                self.went_down(exc)
        return await self._acquire_alone(slots, request, time_left_s)

    async def _acquire_alone(self, slots: SlotPool, request: SlotRequest, time_left_s: float | None) -> Answer:
        """Admission while Redis is unreachable: refused (fail_closed), or by this replica on its
        own with no limit (fail_open) or the limit's share of one replica (local)."""
        mode = self.outage.admission
        if mode == FAIL_CLOSED:
            raise StoreUnavailable(
                f"pool {request.pool!r}: admission is unavailable while the shared state store is unreachable "
                "(state.on_failure = fail_closed)"
            )
        rate_mode = self.outage.rate_limit
        if slots.settings.rate_limit is not None and rate_mode == FAIL_CLOSED:
            raise StoreUnavailable(
                f"pool {request.pool!r}: the rate limit cannot be checked while the shared state store is "
                "unreachable (state.rate_limit_on_failure = fail_closed)"
            )
        alone = self._alone_slots(slots, mode, rate_mode)
        return await self._fallback.acquire(alone, request, time_left_s)

    def _alone_slots(self, slots: SlotPool, mode: str, rate_mode: str) -> SlotPool:
        settings = slots.settings
        limit = slots.limit.limit
        share = 0 if mode == FAIL_OPEN or limit == 0 else max(1, limit // self.outage.replicas)
        rate = settings.rate_limit
        if rate is not None and rate_mode == LOCAL:
            rate = RateLimit(
                max(1, rate.count // self.outage.replicas), rate.per_s, max(1, rate.burst // self.outage.replicas)
            )
        elif rate_mode == FAIL_OPEN:
            rate = None
        wanted = dataclasses.replace(
            settings,
            max_concurrency=share,
            limit_algorithm="fixed",
            limit_params={},
            rate_limit=rate,
            identity_rate_limit=settings.identity_rate_limit if rate is not None else None,
        )
        alone = self._fallback_slots.get(settings.name)
        if alone is None:
            alone = self._fallback_slots[settings.name] = self._fallback.open_pool(wanted, f"pools.{settings.name}")
        elif alone.settings != wanted:
            alone.reconfigure(wanted, f"pools.{settings.name}")
        return alone

    def went_down(self, exc: Exception) -> None:
        """Redis failed: answer as ``outage`` says until a probe gets through."""
        if self.down:
            return
        self.down = True
        log.warning(
            "the shared state store is unreachable (%s): admission %s, rate limits %s, until it is back",
            exc,
            self.outage.admission,
            self.outage.rate_limit,
        )
        if self.fails_closed():
            self.on_health(False)
        self._spawn(self._probe(), "loadwarden-shared-probe")

    def fails_closed(self) -> bool:
        """Whether an outage refuses calls: admission fails closed, or rate limits do and a
        pool has one (then DecisionService's health is NOT_SERVING while Redis is away)."""
        if self.outage.admission == FAIL_CLOSED:
            return True
        return self.outage.rate_limit == FAIL_CLOSED and any(
            slots.settings.rate_limit is not None for slots in self._by_name.values()
        )

    async def _probe(self) -> None:
        delay = PROBE_FIRST_S
        while True:
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(self._redis.settings.command_timeout_ms / 1000.0):
                    # Connections from before the outage may be dead (a restarted Redis): the
                    # ping, and every call once it answered, goes over a new one.
                    await self._redis.drop_idle_connections()
                    await self._redis.client.ping()
            except Exception as exc:  # noqa: BLE001 - any failure: still down, try again later
                log.debug("the shared state store is still unreachable: %s", exc)
                delay = min(PROBE_MAX_S, delay * 2)
                continue
            self.down = False
            log.warning("the shared state store is back: admission is shared again")
            self.on_health(True)
            for slots in list(self._by_name.values()):
                self.dispatch(slots)
            return

    async def _acquire_shared(self, slots: SlotPool, request: SlotRequest, time_left_s: float | None) -> Answer:
        now = self._clock.monotonic()
        if request.lease_ttl_s is not None:
            self._check_ttl(slots, request.lease_ttl_s, "lease_ttl_ms")
        key = (request.owner, request.pool, request.request_id)
        if request.request_id:
            earlier = self._requests.get(key)
            if isinstance(earlier, _Waiter) and not earlier.gone:
                earlier.callers += 1
                return await self._wait(slots, earlier, request, time_left_s)
        if slots.rate is not None:
            await self._spend_rate(slots, request)
        if slots.waiting == 0:  # a newcomer never jumps this replica's queue
            answer = await self._try_grant(slots, request, now)
            if answer is not None:
                return answer
        return await self._queue_or_deny(slots, request, now, time_left_s)

    LIMIT_SCOPE = " (over every replica)"
    QUEUE_SCOPE = " on this replica"

    def _queued(self, slots: SlotPool) -> None:
        self.dispatch(slots)  # the slot may have freed while this call was on its way

    async def _try_grant(self, slots: SlotPool, request: SlotRequest, enqueued_at: float) -> Answer | None:
        """One acquire script: a Granted, a Denied (no server to select), or None at the limit.

        Raises:
            ResourceExhausted: ``limits.max_leases`` leases are held over all replicas.
            Unavailable: Redis did not answer.
        """
        ttl_s = request.lease_ttl_s or slots.settings.lease_ttl_ms / 1000.0
        lease_id = self._ids.new(request.owner)
        try:
            result = await self._call(
                self._redis.acquire,
                self._now_ms(),
                request.pool,
                slots.limit.limit,
                self.max_leases,
                lease_id,
                request.owner,
                request.request_id,
                round(ttl_s * 1000),
                slots.settings.max_lease_ttl_ms,
                self._replica,
                "1" if slots.limit.adaptive else "0",
            )
        except (asyncio.CancelledError, TimeoutError):
            # The script may have run with its answer lost: the lease goes back (a no-op if it never was).
            self._spawn(self._give_back_id(lease_id, request.owner), "loadwarden-give-back")
            raise
        code, granted_id, _granted_ms, expires_ms, now_ms, held = result
        slots.in_use = int(held)
        now = self._clock.monotonic()
        if code == 0:
            return None
        if code == -1:
            raise ResourceExhausted.cap_reached(
                "max_leases",
                "limits.max_leases",
                self.max_leases,
                f"{self.max_leases} leases are held over every replica; pool {request.pool!r} cannot grant another",
                retry_after_s=_clamp((int(expires_ms) - int(now_ms)) / 1000.0),
            )
        granted_id = decode(granted_id)
        expires_at = now + (int(expires_ms) - int(now_ms)) / 1000.0
        if code == 2:  # a retry of a granted request: the same lease, not a second
            mine = self._mine.get(granted_id)
            selection = mine.selection if mine is not None else None
            return Granted(
                Lease(granted_id, slots, ttl_s, now, expires_at, request.request_id, request.owner, selection), 0.0
            )
        lease = Lease(granted_id, slots, ttl_s, now, expires_at, request.request_id, request.owner)
        if request.select_server:
            try:
                lease.selection = self._select(request.pool, request.owner)
            except Unavailable as exc:
                await self._end_lease(lease.id, request.owner, "given_back", True, 0.0)
                return Denied(Denial.NO_ELIGIBLE_SERVER, str(exc), slots.retry_after_s(), now - enqueued_at)
            self._mine[lease.id] = _Mine(lease, lease.selection)
        return Granted(lease, now - enqueued_at)

    async def _spend_rate(self, slots: SlotPool, request: SlotRequest) -> None:
        keys, args = self._pool_buckets(request.pool, slots.settings, request.owner, request.client_key)
        taken = await self._take_rate(keys, args, 1)
        if taken.wait_s > 0:
            raise rate_refusal(slots, request, taken.wait_s)

    def _pool_buckets(
        self, pool: str, settings: PoolSettings, owner: str, client_key: str
    ) -> tuple[list[str], list[Any]]:
        """The keys of the buckets an AcquireSlot of ``owner`` with ``client_key`` in ``pool``
        passes, and each one's count, per ms and burst (the RATE script's arguments)."""
        rate = settings.rate_limit
        assert rate is not None
        if owner:
            identity = settings.identity_rate_limit or rate
            keys = [self._redis.key(f"rate:{pool}:i:{owner}")]
            args: list[Any] = [identity.count, round(identity.per_s * 1000), identity.burst]
            if client_key:
                keys.append(self._redis.key(f"rate:{pool}:k:{owner}:{client_key}"))
                args += [rate.count, round(rate.per_s * 1000), rate.burst]
        else:
            keys = [self._redis.key(f"rate:{pool}:a:{client_key}")]
            args = [rate.count, round(rate.per_s * 1000), rate.burst]
        return keys, args

    async def _take_rate(self, keys: list[str], args: list[Any], tokens: int) -> RateTaken:
        wait_ms, left, full_ms = await self._call_keys(self._redis.rate, keys, [self._now_ms(), tokens, *args])
        wait_s = math.inf if int(wait_ms) < 0 else int(wait_ms) / 1000.0
        return RateTaken(wait_s, int(left), int(full_ms) / 1000.0)

    async def take_pool_rate(self, slots: SlotPool, client_key: str, owner: str, tokens: int) -> RateTaken | None:
        """``Admission.take_pool_rate`` over the buckets in Redis (the ones ``_spend_rate`` spends
        from); with Redis unreachable, as ``outage.rate_limit`` says: UNAVAILABLE, no limit
        (None), or this replica's share of the limit."""
        settings = slots.settings
        if settings.rate_limit is None:
            return None
        if not self.down:
            try:
                keys, args = self._pool_buckets(settings.name, settings, owner, client_key)
                return await self._take_rate(keys, args, tokens)
            except StoreUnavailable as exc:
                self.went_down(exc)
        if not self._rates_alone():
            return None
        alone = self._alone_slots(slots, self.outage.admission, LOCAL)
        return await self._fallback.take_pool_rate(alone, client_key, owner, tokens)

    async def take_named_rate(
        self, name: str, limit: RateLimit, key: str, tokens: int, max_keys: int
    ) -> RateTaken | None:
        """``Admission.take_named_rate`` over a bucket in Redis (``P named:<name>:<key>``, which
        expires once full again: ``max_keys`` bounds only the outage fallback); with Redis
        unreachable, as ``take_pool_rate``."""
        if not self.down:
            try:
                bucket = self._redis.key(f"named:{name}:{key}")
                return await self._take_rate([bucket], [limit.count, round(limit.per_s * 1000), limit.burst], tokens)
            except StoreUnavailable as exc:
                self.went_down(exc)
        if not self._rates_alone():
            return None
        replicas = self.outage.replicas
        share = RateLimit(max(1, limit.count // replicas), limit.per_s, max(1, limit.burst // replicas))
        return await super().take_named_rate(name, share, key, tokens, max_keys)

    def _rates_alone(self) -> bool:
        """While Redis is unreachable: whether rate limits are this replica's share (``local``)
        rather than off (``fail_open``).

        Raises:
            StoreUnavailable: they fail closed.
        """
        if self.outage.rate_limit == FAIL_CLOSED:
            raise StoreUnavailable(
                "rate limits cannot be checked while the shared state store is unreachable "
                "(state.rate_limit_on_failure = fail_closed)"
            )
        return self.outage.rate_limit == LOCAL

    def dispatch(self, slots: SlotPool) -> None:
        """Tries this replica's waiters of ``slots`` again, in the background (one run per pool at a time)."""
        name = slots.settings.name
        if slots.waiting == 0 or slots.deleted or name in self._dispatching:
            return
        self._dispatching.add(name)
        self._spawn(self._dispatch(slots), f"loadwarden-dispatch-{name}")

    async def _dispatch(self, slots: SlotPool) -> None:
        name = slots.settings.name
        try:
            while slots.queue and not slots.deleted:
                _, _, waiter = slots.queue[0]
                if waiter.gone:
                    heapq.heappop(slots.queue)
                    continue
                try:
                    answer = await self._try_grant(slots, waiter.request, waiter.enqueued_at)
                except StoreUnavailable as exc:
                    self.went_down(exc)
                    return
                except ResourceExhausted as exc:
                    log.debug("pool %s: waiters stay queued: %s", name, exc)
                    return
                if answer is None:
                    return
                if waiter.gone:  # left (timed out, cancelled) while the script ran: the slot goes back
                    if isinstance(answer, Granted):
                        self.give_back(answer.lease)
                    continue
                heapq.heappop(slots.queue)
                waiter.gone = True
                slots.waiting -= 1
                waiter.future.set_result(answer)
        finally:
            self._dispatching.discard(name)

    async def poll(self) -> None:
        """Tries the queues with waiters every POLL_S (an announcement may have been lost)."""
        while True:
            await asyncio.sleep(POLL_S)
            for slots in list(self._by_name.values()):
                self.dispatch(slots)

    # --- renew / release / expire ----------------------------------------------------

    def _check_signed(self, lease_id: str, owner: str) -> None:
        if not self._ids.signed(lease_id, owner):
            raise NotFound("lease_id", f"lease {lease_id!r} does not exist")

    async def renew_async(self, lease_id: str, ttl_s: float | None, owner: str = "") -> Lease:
        if lease_id in self._fallback.leases:
            return self._fallback.renew(lease_id, ttl_s, owner)
        self._check_signed(lease_id, owner)
        result = await self._call(
            self._redis.renew, self._now_ms(), lease_id, owner, round(ttl_s * 1000) if ttl_s else 0
        )
        code, pool, ttl_ms, expires_ms, now_ms, _granted_ms = result
        if code == 0:
            raise NotFound("lease_id", f"lease {lease_id!r} was released or reclaimed")
        if code == -1:
            raise NotFound("lease_id", f"lease {lease_id!r} does not exist")
        slots = self._slots(decode(pool))
        if code == -2:
            raise InvalidArgument(
                "ttl_ms",
                f"pool {slots.settings.name!r} allows leases of at most {int(ttl_ms)} ms "
                f"(max_lease_ttl_ms); renew a long-held lease instead",
            )
        now = self._clock.monotonic()
        expires_at = now + (int(expires_ms) - int(now_ms)) / 1000.0
        mine = self._mine.get(lease_id)
        if mine is not None:
            mine.lease.expires_at = expires_at
            mine.lease.ttl_s = int(ttl_ms) / 1000.0
        return Lease(lease_id, slots, int(ttl_ms) / 1000.0, now, expires_at, "", owner)

    async def release_async(self, lease_id: str, *, success: bool, latency_ms: float, owner: str = "") -> bool:
        if lease_id in self._fallback.leases:
            return self._fallback.release(lease_id, success=success, latency_ms=latency_ms, owner=owner)
        self._check_signed(lease_id, owner)
        return await self._end_lease(lease_id, owner, "released", success, latency_ms)

    async def _end_lease(self, lease_id: str, owner: str, how: str, success: bool, latency_ms: float) -> bool:
        """Ends a lease in Redis; settles it here when this replica granted it. True when it
        was held until now."""
        result = await self._call(
            self._redis.release, self._now_ms(), lease_id, owner, how, int(success), latency_ms, self._replica
        )
        code, pool, granted_ms, now_ms, held, replica = result
        if code == -1:
            raise NotFound("lease_id", f"lease {lease_id!r} does not exist")
        pool = decode(pool)
        if not pool:
            return False  # already ended
        slots = self._slots(pool)
        slots.in_use = int(held)
        held_ms = float(int(now_ms) - int(granted_ms))
        expired = code == 0
        if how == "released":
            self._sample(slots, latency_ms or held_ms, int(held) + 1, expired or not success)
            self._note_hold(slots, held_ms / 1000.0)
        if decode(replica) == self._replica:
            self._settle_mine(lease_id, success and not expired, latency_ms or held_ms, expired)
        self.dispatch(slots)
        return not expired

    # --- one adaptive limit for every replica ------------------------------------------

    def _sample(self, slots: SlotPool, rtt_ms: float, in_flight: int, dropped: bool) -> None:
        """A release's sample for the pool's limit: applied here when this replica owns the
        limit (or it is fixed), else sent to the owner with the next batch."""
        name = slots.settings.name
        if not slots.limit.adaptive or self._owners.get(name) == self._replica:
            before = slots.limit.limit
            slots.limit.on_sample(self._clock.monotonic(), rtt_ms, in_flight, dropped)
            if slots.limit.adaptive and slots.limit.limit != before:
                self._spawn(self._publish_limit(slots), "loadwarden-limit")
            return
        pending = self._samples.setdefault(name, [])
        if len(pending) < MAX_PENDING_SAMPLES:
            pending.append((rtt_ms, in_flight, dropped))

    async def _publish_limit(self, slots: SlotPool) -> None:
        """Writes the owner's limit where every acquire script reads it, and announces it."""
        name, value = slots.settings.name, slots.limit.limit
        slots.shared_limit = value
        try:
            async with self._redis.client.pipeline(transaction=True) as pipe:
                pipe.set(self._redis.key(f"limit:{name}"), value)
                pipe.publish(self._redis.events_channel, f"M {name} {value}")
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis away: the next change or election writes it again
            log.debug("pool %s: limit %d not published: %s", name, value, exc)

    async def elect(self) -> None:
        """Takes (or renews) the ownership of each adaptive limit that nobody holds, and sends
        the samples of limits another replica owns to it."""
        for slots in list(self._by_name.values()):
            if not slots.limit.adaptive:
                continue
            name = slots.settings.name
            owner = decode(
                await self._redis.own(keys=[self._redis.key(f"limit-owner:{name}")], args=[self._replica, OWNER_TTL_MS])
            )
            if owner == self._replica and self._owners.get(name) != self._replica:
                await self._take_over_limit(slots)
                log.info("pool %s: this replica now computes the shared limit (%d)", name, slots.limit.limit)
                await self._publish_limit(slots)
            self._owners[name] = owner
        await self.flush_samples()

    async def _take_over_limit(self, slots: SlotPool) -> None:
        """A new owner goes on from the shared value, not from its own copy of the algorithm
        (idle while another replica owned the limit): it restarts the algorithm there."""
        settings = slots.settings
        shared = decode(await self._redis.client.get(self._redis.key(f"limit:{settings.name}")) or "")
        if shared.isdigit() and int(shared) >= 1 and int(shared) != slots.limit.limit:
            where = f"pools.{settings.name}.limit_params"
            slots.limit = build_limit(settings.limit_algorithm, settings.limit_params, int(shared), where)

    async def flush_samples(self) -> None:
        """Sends each pool's pending samples to its limit's owner (applies them here when that
        is this replica; keeps them while no owner is known yet)."""
        for name, pending in list(self._samples.items()):
            owner = self._owners.get(name)
            if owner is None:
                continue
            del self._samples[name]
            if owner == self._replica:
                self._take_samples({"p": name, "s": pending})
                continue
            body = json.dumps({"p": name, "s": pending}, separators=(",", ":"))
            try:
                await self._redis.client.publish(self._redis.events_channel, f"S {owner} {body}")
            except Exception as exc:  # noqa: BLE001 - lost samples only slow the limit down
                log.debug("pool %s: %d limit samples not sent: %s", name, len(pending), exc)

    def _take_samples(self, body: dict[str, Any]) -> None:
        slots = self._by_name.get(str(body["p"]))
        if slots is None or not slots.limit.adaptive:
            return
        before = slots.limit.limit
        now = self._clock.monotonic()
        for rtt_ms, in_flight, dropped in body["s"]:
            slots.limit.on_sample(now, float(rtt_ms), int(in_flight), bool(dropped))
        if slots.limit.limit != before:
            self._spawn(self._publish_limit(slots), "loadwarden-limit")

    def _note_hold(self, slots: SlotPool, held_s: float) -> None:
        if slots.hold_ewma_s:
            slots.hold_ewma_s += 0.2 * (held_s - slots.hold_ewma_s)
        else:
            slots.hold_ewma_s = held_s

    def _settle_mine(self, lease_id: str, success: bool, latency_ms: float, expired: bool) -> None:
        mine = self._mine.pop(lease_id, None)
        if mine is not None:
            self._settle(mine.selection, success, latency_ms, expired)

    async def release_request_async(
        self, pool: str, request_id: str, *, success: bool, latency_ms: float, owner: str = ""
    ) -> bool:
        entry = self._requests.get((owner, pool, request_id))
        if self._give_up_wait(entry):
            return True
        if self._fallback.release_request(pool, request_id, success=success, latency_ms=latency_ms, owner=owner):
            return True
        lease_id = decode(await self._call(self._redis.lookup, self._now_ms(), owner, pool, request_id))
        if not lease_id:
            return False
        return await self._end_lease(lease_id, owner, "released", success, latency_ms)

    async def abandon_requests_async(self, pool: str, request_ids: Iterable[str], *, owner: str = "") -> int:
        ended = 0
        for request_id in request_ids:
            if self._give_up_wait(self._requests.get((owner, pool, request_id))):
                ended += 1
                continue
            if self._fallback.abandon_requests(pool, [request_id], owner=owner):
                ended += 1
                continue
            lease_id = decode(await self._call(self._redis.lookup, self._now_ms(), owner, pool, request_id))
            if lease_id and await self._end_lease(lease_id, owner, "given_back", True, 0.0):
                ended += 1
        return ended

    def give_back(self, lease: Lease) -> None:
        """Ends a lease whose caller was gone before the grant reached it (in the background)."""
        if lease.id in self._fallback.leases:
            self._fallback.give_back(lease)
            return
        self._spawn(self._give_back(lease), "loadwarden-give-back")

    async def _give_back(self, lease: Lease) -> None:
        await self._give_back_id(lease.id, lease.owner)

    async def _give_back_id(self, lease_id: str, owner: str) -> None:
        try:
            await self._end_lease(lease_id, owner, "given_back", True, 0.0)
        except (StoreUnavailable, NotFound) as exc:
            log.warning("lease %s could not be given back (%s); it is reclaimed at its TTL", lease_id, exc)

    def release(self, lease_id: str, *, success: bool, latency_ms: float, owner: str = "") -> bool:
        raise TypeError("a shared admission is awaited: use release_async")

    def renew(self, lease_id: str, ttl_s: float | None, owner: str = "") -> Lease:
        raise TypeError("a shared admission is awaited: use renew_async")

    def expire(self, now: float | None = None) -> int:
        """Reclaiming happens in Redis (``sweep``); locally there is nothing to do."""
        return 0

    async def sweep(self) -> int:
        """Reclaims every pool's leases past their TTL (one script), and settles this
        replica's selections whose lease ended without an announcement reaching it."""
        self.reclaimed_total += self._fallback.expire()
        if self.down:
            return 0
        reclaimed = int(await self._call(self._redis.sweep, self._now_ms(), SWEEP_BATCH))
        self.reclaimed_total += reclaimed
        now = self._clock.monotonic()
        overdue = [lease_id for lease_id, mine in self._mine.items() if mine.lease.expires_at < now - 1.0]
        if overdue:
            scores = await self._redis.client.zmscore(self._redis.key("expiry"), overdue)
            for lease_id, score in zip(overdue, scores, strict=True):
                if score is None:  # ended, and the announcement was lost
                    self._settle_mine(lease_id, False, 0.0, True)
                else:  # renewed through another replica
                    self._mine[lease_id].lease.expires_at = now + POLL_S
        return reclaimed

    async def run(self, interval_s: float) -> None:
        """Sweeps every ``interval_s``, and holds elections for the adaptive limits every
        ELECT_S, until cancelled; Redis failures are logged and retried."""
        since_election = ELECT_S
        while True:
            await asyncio.sleep(interval_s or 1.0)
            since_election += interval_s or 1.0
            try:
                await self.sweep()
                if since_election >= ELECT_S and not self.down:
                    since_election = 0.0
                    await self.elect()
                elif self._samples and not self.down:
                    await self.flush_samples()
            except StoreUnavailable as exc:
                self.went_down(exc)
            except Exception as exc:  # noqa: BLE001 - redis-py errors outside the scripts: retried next round
                log.debug("election or sample flush skipped: %s", exc)

    # --- events ------------------------------------------------------------------------

    def _event(self, message: str) -> None:
        kind, _, rest = message.partition(" ")
        if kind == "F":
            slots = self._by_name.get(rest)
            if slots is not None:
                self.dispatch(slots)
        elif kind == "M":
            name, _, value = rest.partition(" ")
            slots = self._by_name.get(name)
            if slots is not None and value.isdigit():
                slots.shared_limit = int(value)
        elif kind == "S":
            owner, _, payload = rest.partition(" ")
            if owner == self._replica:
                try:
                    self._take_samples(json.loads(payload))
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("ignored malformed limit samples (%s): %.200s", exc, message)
        elif kind == "E":
            replica, _, payload = rest.partition(" ")
            if replica != self._replica:
                return
            try:
                ended = json.loads(payload)
                lease_id, how = str(ended["l"]), str(ended["h"])
                success, latency_ms = bool(ended["ok"]), float(ended["ms"])
            except (ValueError, KeyError, TypeError):
                log.warning("ignored a malformed lease event: %.200s", message)
                return
            if lease_id in self._mine:
                self._settle_mine(lease_id, success and how != "expired", latency_ms, how == "expired")

    # --- plumbing ----------------------------------------------------------------------

    async def _call(self, script: Any, *args: Any) -> Any:
        # The scripts name their keys from the prefix (ARGV[1]); the one key given routes the
        # call to the prefix's slot in a Cluster.
        return await self._call_keys(script, [self._redis.key("leases")], [self._prefix, *args])

    async def _call_keys(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Runs a script; every Redis failure is StoreUnavailable naming the store."""
        import redis.exceptions as errors

        try:
            return await script(keys=keys, args=args)
        except (errors.ConnectionError, errors.TimeoutError, OSError) as exc:
            raise StoreUnavailable(
                f"the shared state store (Redis at {self._redis.settings.shown_url}) is unreachable: {exc}"
            ) from None
        except errors.RedisError as exc:
            raise StoreUnavailable(f"the shared state store (Redis) failed: {exc}") from None

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _clamp(seconds: float) -> float:
    return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, seconds if math.isfinite(seconds) else MAX_RETRY_AFTER_S))
