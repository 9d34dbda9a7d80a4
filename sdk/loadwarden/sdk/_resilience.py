"""What keeps an application working when the control plane is slow or gone.

* ``BreakerOpenError``: raised locally, with no network round trip, when a
  method's circuit breaker is open. It is an ``UnavailableError`` without a
  service reason, so callers treat it like an unreachable service.
* ``deadline``: a context manager that bounds every SDK call inside it by the
  caller's remaining time (the SDK never waits past it).
* ``KnownServers``: the servers the service returned per pool, for local round
  robin when SelectServer cannot be answered.
* ``LocalSlots``: the local admission policy when AcquireSlot cannot be
  answered: a local concurrency limit per pool (counting the slots this client
  holds from the service too), fail-open or fail-closed.

Everything here is shared by the sync and async clients and safe across threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from loadwarden.sdk._errors import DeadlineExceededError, SlotDenied, UnavailableError
from loadwarden.sdk._types import Lease, Selection

LOCAL_LEASE_PREFIX = "local-"
SLOT_FALLBACKS = ("local_limit", "fail_open", "fail_closed")
MAX_POOLS = 1_000
MAX_SERVERS_PER_POOL = 1_000
# Service leases a client tracks for its local limit; beyond it the ones whose TTL
# has passed are forgotten first.
MAX_TRACKED_LEASES = 100_000


class BreakerOpenError(UnavailableError):
    """The method's circuit breaker is open: the call was not attempted.

    Attributes:
        method: The RPC method, e.g. "SelectServer".
        retry_after_s: Time until the breaker lets a probe through, seconds.
    """

    def __init__(self, method: str, retry_after_s: float) -> None:
        super().__init__(f"circuit breaker for {method} is open; next probe in {retry_after_s:.2f} s")
        self.method = method
        self.retry_after_s = retry_after_s


_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("loadwarden_deadline", default=None)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Bounds every SDK call in the block (and in tasks it starts) by ``seconds`` from now.

    Nested scopes keep the earliest deadline. A call that starts with no time left
    raises DeadlineExceededError without touching the network.

    Example:
        with loadwarden.sdk.deadline(0.2):   # the request's remaining budget
            with client.route("api") as route: ...
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    end = time.monotonic() + seconds
    outer = _deadline.get()
    token = _deadline.set(end if outer is None else min(outer, end))
    try:
        yield
    finally:
        _deadline.reset(token)


def background_context() -> contextvars.Context:
    """A copy of the current context without the caller's `deadline`, for background work.

    A renewal or a retried release runs after the caller's block; its deadline
    scope must not cut it (each call still has its own timeout).
    """
    context = contextvars.copy_context()
    context.run(_deadline.set, None)
    return context


def bounded_timeout_s(timeout_s: float) -> float:
    """``timeout_s`` cut to the caller's remaining deadline, if one is set."""
    end = _deadline.get()
    if end is None:
        return timeout_s
    left = end - time.monotonic()
    if left <= 0:
        raise DeadlineExceededError("the caller's deadline has passed; no call was made")
    return min(timeout_s, left)


class KnownServers:
    """Per pool, the servers the service last returned, in a bounded LRU of pools."""

    def __init__(self, max_pools: int = MAX_POOLS) -> None:
        self._lock = threading.Lock()
        self._pools: OrderedDict[str, OrderedDict[str, str]] = OrderedDict()  # pool -> id -> address
        self._turn: dict[str, int] = {}
        self._refreshed: dict[str, float] = {}
        self._max_pools = max_pools

    def remember(self, pool: str, server_id: str, address: str) -> None:
        with self._lock:
            servers = self._pool(pool)
            servers[server_id] = address
            servers.move_to_end(server_id)
            while len(servers) > MAX_SERVERS_PER_POOL:
                servers.popitem(last=False)

    def replace(self, pool: str, servers: Iterable[tuple[str, str]], now: float) -> None:
        """Takes a fresh list (from GetLoadStatus: the servers that may be chosen)."""
        fresh = OrderedDict(itertools.islice(servers, MAX_SERVERS_PER_POOL))
        with self._lock:
            self._pool(pool).clear()
            self._pools[pool].update(fresh)
            self._refreshed[pool] = now

    def mark_refreshed(self, pool: str, now: float) -> None:
        with self._lock:
            self._refreshed[pool] = now

    def refreshed_at(self, pool: str) -> float | None:
        return self._refreshed.get(pool)

    def pick(self, pool: str, exclude: Iterable[str] = ()) -> Selection | None:
        """Round robin over the known servers of ``pool``; None when none is known."""
        with self._lock:
            servers = self._pools.get(pool)
            if not servers:
                return None
            excluded = set(exclude)
            ids = [sid for sid in servers if sid not in excluded] or list(servers)
            turn = self._turn.get(pool, 0)
            self._turn[pool] = turn + 1
            server_id = ids[turn % len(ids)]
            return Selection("", server_id, servers[server_id], "local_round_robin", False, fallback=True)

    def _pool(self, pool: str) -> OrderedDict[str, str]:
        servers = self._pools.get(pool)
        if servers is None:
            servers = self._pools[pool] = OrderedDict()
            while len(self._pools) > self._max_pools:
                gone, _ = self._pools.popitem(last=False)
                self._turn.pop(gone, None)
                self._refreshed.pop(gone, None)
        self._pools.move_to_end(pool)
        return servers


class LocalSlots:
    """Local admission while the service cannot answer AcquireSlot.

    ``local_limit`` grants a local slot only while the slots this client holds in
    the pool, from the service and local ones together, are fewer than ``limit``
    (Doorman's "safe capacity"): a client never runs more than ``limit`` slots of a
    pool on its own account while the service is unreachable. ``fail_open`` grants
    every request, ``fail_closed`` denies every request. Local leases have ids
    starting with ``local-``; they are never renewed at or released to the service.

    Service leases are tracked from their grant (``track``) until released,
    answered NOT_FOUND, lost or past their TTL (``untrack`` or ``until``), with
    ``until`` an upper bound on when the service reclaims them: a lease stops
    counting no earlier than the service stops holding it.
    """

    def __init__(
        self, policy: str, limit: int, known: KnownServers, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if policy not in SLOT_FALLBACKS:
            raise ValueError(f"slot_fallback must be one of {', '.join(SLOT_FALLBACKS)}, got {policy!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"local_slot_limit must be an integer >= 1, got {limit!r}")
        self.policy, self.limit = policy, limit
        self._known = known
        self._clock = clock  # the clock of every ``until``, seconds
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._pool_of: dict[str, str] = {}  # local lease id -> pool, for the leases held now
        self._ids = itertools.count(1)
        self._service: dict[str, dict[str, float]] = {}  # pool -> service lease id -> until (monotonic s)
        self._service_pool: dict[str, str] = {}  # service lease id -> pool

    def held(self, pool: str) -> int:
        """Local slots held in ``pool`` now, count."""
        return self._held.get(pool, 0)

    def held_from_service(self, pool: str) -> int:
        """Service slots this client holds in ``pool`` now, count."""
        with self._lock:
            return self._service_count(pool, self._clock())

    def track(self, lease_id: str, pool: str, until: float) -> None:
        """Counts a service lease against ``pool``'s local limit until ``until`` (on the clock) or ``untrack``."""
        if not lease_id:
            return
        with self._lock:
            if len(self._service_pool) >= MAX_TRACKED_LEASES:
                self._forget_expired(self._clock())
            self._service.setdefault(pool, {})[lease_id] = until
            self._service_pool[lease_id] = pool

    def extend(self, lease_id: str, until: float) -> None:
        """A tracked lease was renewed: it counts until ``until`` now."""
        with self._lock:
            pool = self._service_pool.get(lease_id)
            if pool is not None:
                self._service[pool][lease_id] = until

    def untrack(self, lease_id: str) -> None:
        """A service lease is no longer held (released, NOT_FOUND or lost)."""
        with self._lock:
            pool = self._service_pool.pop(lease_id, None)
            if pool is None:
                return
            leases = self._service[pool]
            leases.pop(lease_id, None)
            if not leases:
                del self._service[pool]

    def grant(self, pool: str, select_server: bool, cause: Exception) -> Lease:
        """A local lease, or SlotDenied (``denial="CONTROL_PLANE_UNAVAILABLE"`` or ``"LOCAL_LIMIT"``)."""
        if self.policy == "fail_closed":
            raise SlotDenied(
                f"the control plane is unavailable ({cause}) and the policy is fail_closed",
                denial="CONTROL_PLANE_UNAVAILABLE",
                pool=pool,
            )
        with self._lock:
            held = self._held.get(pool, 0)
            if self.policy == "local_limit":
                from_service = self._service_count(pool, self._clock()) if pool in self._service else 0
                if held + from_service >= self.limit:
                    raise SlotDenied(
                        f"the control plane is unavailable ({cause}) and the local limit of "
                        f"{self.limit} slots for pool {pool!r} is reached ({held} local, "
                        f"{from_service} from the service)",
                        denial="LOCAL_LIMIT",
                        pool=pool,
                    )
            if held == 0 and len(self._held) >= MAX_POOLS:
                raise SlotDenied("too many pools hold local slots", denial="LOCAL_LIMIT", pool=pool)
            self._held[pool] = held + 1
            lease_id = f"{LOCAL_LEASE_PREFIX}{next(self._ids)}"
            self._pool_of[lease_id] = pool
        server = self._known.pick(pool) if select_server else None
        return Lease(
            lease_id,
            pool,
            0.0,
            datetime.now(UTC),
            server.server_id if server else None,
            server.address if server else None,
            "",
            0.0,
            fallback=True,
        )

    def release(self, lease_id: str) -> bool:
        """Ends a local lease; False when it had already ended (or never existed)."""
        with self._lock:
            pool = self._pool_of.pop(lease_id, None)
            if pool is None:
                return False
            held = self._held[pool]
            if held == 1:
                del self._held[pool]
            else:
                self._held[pool] = held - 1
            return True

    def _service_count(self, pool: str, now: float) -> int:
        # Caller holds the lock. Leases past their bound are forgotten here.
        leases = self._service.get(pool)
        if not leases:
            return 0
        expired = [lease_id for lease_id, until in leases.items() if until <= now]
        for lease_id in expired:
            del leases[lease_id]
            self._service_pool.pop(lease_id, None)
        if not leases:
            del self._service[pool]
        return len(leases)

    def _forget_expired(self, now: float) -> None:
        # Caller holds the lock.
        for pool in list(self._service):
            self._service_count(pool, now)


def is_local_lease(lease_id: str) -> bool:
    return lease_id.startswith(LOCAL_LEASE_PREFIX)
