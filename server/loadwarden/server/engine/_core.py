"""The decision core: pools, servers, pending decisions. The servicer's only collaborator.

Runs entirely in the event-loop thread, so nothing here takes a lock. Time comes
from the injected clock and randomness from the injected RNG.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from loadwarden.policy import (
    Backend,
    BatchAnswer,
    BatchReportIn,
    Clock,
    IdGenerator,
    InvalidArgument,
    LoadReading,
    LoadReportIn,
    LoadWeights,
    LocalInFlight,
    NotFound,
    Operation,
    OperationSettings,
    OutcomeReport,
    PendingDecision,
    PendingDecisions,
    Pool,
    PoolSettings,
    ResourceExhausted,
    ServerSpec,
    SystemClock,
    Unavailable,
    pool_reading,
)
from loadwarden.policy.strategies import Feedback, StrategyContext, build_strategy, strategy_class

from .._errors import ConfigError
from ._admission import Admission, Answer, Lease, LeaseSelection, SlotRequest
from ._loadmonitor import HostMonitor
from ._local_in_flight import LocalInFlightBook

log = logging.getLogger("loadwarden.server")

# A local client's in-flight counts are forgotten this long after its last report, seconds.
LOCAL_IN_FLIGHT_TTL_S = 3.0

NO_ELIGIBLE_SERVER = "no-eligible-server"

# What a SelectServer decision came to, as the core tells its listener.
RESULT_SELECTED = "selected"
RESULT_NO_ELIGIBLE_SERVER = "no_eligible_server"


class DecisionListener(Protocol):
    """Told of every decision the core makes (metrics attach here; the core knows no backend)."""

    def decided(self, pool: Pool[Any], result: str) -> None:
        """A SelectServer decision on ``pool``: ``RESULT_SELECTED`` or ``RESULT_NO_ELIGIBLE_SERVER``."""
        ...

    def answered(self, pool: Pool[Any], answer: Answer) -> None:
        """An AcquireSlot answer on ``pool``."""
        ...

    def settled(self, pool: Pool[Any], server: Backend, success: bool, latency_ms: float) -> None:
        """An outcome of a selection of ``server`` (this process's or a client's own)."""
        ...


class AdmissionFactory(Protocol):
    """Builds a core's admission state: ``Admission`` or a subclass over a shared store."""

    def __call__(
        self,
        clock: Clock,
        select: Callable[[str, str], LeaseSelection],
        settle: Callable[[LeaseSelection, bool, float, bool], None],
        *,
        max_leases: int,
        max_request_ids: int,
        ids: IdGenerator | None,
    ) -> Admission: ...


class PeerLink(Protocol):
    """The other replicas of a service that shares its state (shared/): told what this
    one learns that they must know too. Each method returns at once (sending is the
    link's business)."""

    def loads_reported(self, reports: Sequence[LoadReportIn]) -> None:
        """Load reports this replica took; every other replica applies them too."""
        ...

    def ejected(self, pool: str, server: str, duration_s: float) -> None:
        """This replica ejected a server; every other replica ejects it as long."""
        ...

    def elsewhere(self, outcomes: Sequence[OutcomeReport], owner: str) -> set[str]:
        """Sends outcomes of decisions another replica made to that replica; returns the
        decision ids sent (those signed for ``owner`` by a replica that is not this one)."""
        ...

    def batch_answer(self, operation: Operation) -> BatchAnswer | None:
        """The answer of the replica that sizes ``operation`` when that is another one (None:
        this replica decides)."""
        ...

    def batch_decided(self, operation: Operation, answer: BatchAnswer) -> None:
        """This replica sized ``operation``: the others answer the same."""
        ...

    def batches_elsewhere(self, reports: Sequence[BatchReportIn]) -> list[BatchReportIn]:
        """Sends the reports of operations another replica sizes to it; returns the rest."""
        ...


class _Unheard:
    """The listener of a core nobody listens to."""

    def decided(self, pool: Pool[Any], result: str) -> None:
        return None

    def answered(self, pool: Pool[Any], answer: Answer) -> None:
        return None

    def settled(self, pool: Pool[Any], server: Backend, success: bool, latency_ms: float) -> None:
        return None


# [limits] keys with their allowed ranges (inclusive). One table for config parsing and CoreLimits.
LIMIT_RANGES: dict[str, tuple[int, int]] = {
    "decision_ttl_ms": (100, 86_400_000),
    "max_pending_decisions": (1, 10_000_000),
    "max_pools": (1, 100_000),
    "max_servers_per_pool": (1, 1_000_000),
    "max_leases": (1, 10_000_000),
    "max_request_ids": (1, 10_000_000),
    "max_operations": (1, 100_000),
    "max_watch_streams": (1, 100_000),
    "max_message_bytes": (65_536, 256 * 1024 * 1024),
    "max_concurrent_rpcs": (1, 1_000_000),
    "max_servers": (1, 10_000_000),
    "max_watch_streams_per_caller": (1, 100_000),
    "route_push_interval_ms": (5, 60_000),
    "max_local_clients": (1, 1_000_000),
    "max_connections": (0, 1_000_000),
    "handshake_timeout_ms": (100, 600_000),
    "keepalive_time_ms": (1_000, 86_400_000),
    "keepalive_timeout_ms": (100, 600_000),
    "max_pings_without_data": (0, 1_000),
    "max_connection_idle_ms": (0, 86_400_000),
    "max_connection_age_ms": (0, 86_400_000 * 30),
    "max_connection_age_grace_ms": (0, 86_400_000),
}


@dataclass(frozen=True, slots=True)
class CoreLimits:
    """Bounds on state that clients can grow (the ``[limits]`` config section).

    Past a cap a request gets RESOURCE_EXHAUSTED naming the cap and its key
    (``max_leases (limits.max_leases = 200000) reached: ...``), except for the
    maps that forget their least recently used entry instead (pending decisions,
    request ids). README "Limits and caps" lists what each costs in memory.

    Attributes:
        decision_ttl_ms: How long a selection waits for its outcome, ms.
        max_pending_decisions: Selections awaiting outcomes, service-wide; at the cap
            the oldest expires early (counted as a failure), selection never fails.
        max_pools: Pools, service-wide.
        max_servers_per_pool: Servers in one pool.
        max_leases: Leases held at once, service-wide.
        max_request_ids: AcquireSlot request ids remembered for idempotency, and ended
            lease ids remembered for "already released" answers (least recent forgotten).
        max_operations: Batch operations, service-wide.
        max_watch_streams: WatchLoadStatus and WatchRoutes streams open at once.
        max_message_bytes: Largest request message the gRPC server accepts, bytes
            (gRPC answers RESOURCE_EXHAUSTED past it).
        max_concurrent_rpcs: RPCs in progress at once, all services together (waiting
            AcquireSlot calls and open streams included); gRPC answers RESOURCE_EXHAUSTED
            past it. Each costs roughly 20 KB while it lasts.
        max_servers: Servers in all pools together (about 1.4 KB each, bench/memory.py);
            ConfigurePool / RegisterServer past it: RESOURCE_EXHAUSTED; a config past it
            does not start.
        max_watch_streams_per_caller: WatchLoadStatus streams one caller identity may
            hold open at once (within max_watch_streams).
        route_push_interval_ms: Shortest time between two builds of a pool's WatchRoutes
            table, so between two changes a client receives for a pool (longer while a
            build would take more than 5 % of it), ms. Short by default because the
            tables carry the other clients' requests in flight, which local decisions
            need fresh (docs/local-decisions-quality.md); a build of a small pool costs
            tens of µs, and a large pool's builds space out by themselves.
        max_local_clients: Clients deciding locally whose in-flight counts the service
            keeps (ReportOutcomeRequest.in_flight); past it the least recently heard one
            is forgotten.
        max_connections: Incoming connections at once (gRPC's
            ``grpc.max_allowed_incoming_connections``: one past it is closed at accept);
            0 means the open-files limit less a reserve for the process's own files.
        handshake_timeout_ms: A connection that has not finished its TLS and HTTP/2
            handshake by then is closed (``grpc.server_handshake_timeout_ms``), so idle
            sockets that never speak HTTP/2 do not hold a connection place, ms.
        keepalive_time_ms: The service pings a connection after this long without
            activity, to find dead peers (``grpc.keepalive_time_ms``), ms.
        keepalive_timeout_ms: A ping unanswered this long closes the connection, ms.
        max_pings_without_data: Keepalive pings the service sends on a connection while
            no data flows (``grpc.http2.max_pings_without_data``); 0 means no limit.
        max_connection_idle_ms: A connection with no RPC in progress for this long is
            closed with GOAWAY (clients reconnect on their next call); 0 means never, ms.
        max_connection_age_ms: A connection older than this is closed with GOAWAY; 0
            means never, ms.
        max_connection_age_grace_ms: RPCs still running on a connection past its age
            get this long to finish, ms.
        auto_register_operations: GetBatchSize / ReportBatch on an unknown operation
            registers it with default settings (up to max_operations) instead of NOT_FOUND.

    Raises:
        ConfigError: a value outside LIMIT_RANGES, naming ``limits.<key>``.
    """

    decision_ttl_ms: int = 30_000
    max_pending_decisions: int = 100_000
    max_pools: int = 1_000
    max_servers_per_pool: int = 10_000
    max_leases: int = 200_000
    max_request_ids: int = 200_000
    max_operations: int = 1_000
    max_watch_streams: int = 100
    max_message_bytes: int = 4 * 1024 * 1024
    max_concurrent_rpcs: int = 10_000
    max_servers: int = 100_000
    max_watch_streams_per_caller: int = 20
    route_push_interval_ms: int = 10
    max_local_clients: int = 10_000
    max_connections: int = 0
    handshake_timeout_ms: int = 10_000
    keepalive_time_ms: int = 120_000
    keepalive_timeout_ms: int = 20_000
    max_pings_without_data: int = 0
    max_connection_idle_ms: int = 300_000
    max_connection_age_ms: int = 0
    max_connection_age_grace_ms: int = 30_000
    auto_register_operations: bool = False

    def __post_init__(self) -> None:
        for key, (low, high) in LIMIT_RANGES.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"limits.{key}", f"must be an integer in [{low}, {high}], got {value!r}")
        if not isinstance(self.auto_register_operations, bool):
            raise ConfigError(
                "service.auto_register_operations", f"must be true or false, got {self.auto_register_operations!r}"
            )


class OutcomesApplied(NamedTuple):
    """What ``report_outcomes`` did: entries applied, decision ids not pending, and local
    outcomes whose pool or server no longer exists."""

    applied: int
    unknown: list[str]
    unknown_local: int


@dataclass(frozen=True, slots=True)
class Selection:
    """A SelectServer answer."""

    decision_id: str
    server: Backend
    strategy: str
    explored: bool


@dataclass(frozen=True, slots=True)
class LeaseDecision:
    """A selection made with a lease (``select_server``); settled when the lease ends."""

    decision_id: str
    pool: Pool
    server: Backend
    memo: object


class DecisionCore:
    """Answers SelectServer, ReportOutcome, ReportLoad, GetLoadStatus and the admin calls."""

    def __init__(
        self,
        limits: CoreLimits | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        ids: IdGenerator | None = None,
        listener: DecisionListener | None = None,
        monitor: HostMonitor | None = None,
        load_weights: LoadWeights | None = None,
        admission: AdmissionFactory | None = None,
        peers: PeerLink | None = None,
    ) -> None:
        """Everything the core depends on comes in here; nothing is set on it afterwards.

        Args:
            limits: Caps on what clients may make the core hold.
            clock: Monotonic and wall time; the system's by default.
            rng: Randomness for strategies; unseeded by default.
            ids: Lease and decision id source; a fresh random key by default.
            listener: Told of every decision (the service's metrics); none by default.
            monitor: The host's load sampler, when batch sizing reads the host's load.
            load_weights: How load reports (and host samples) are scored; the defaults by default.
            admission: Builds the admission state (``Admission`` by default; several
                replicas share theirs through a shared store's).
            peers: The other replicas, when several share the service's state.
        """
        self.limits = limits or CoreLimits()
        self.clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._ids = ids or IdGenerator()
        self._listener: DecisionListener = listener if listener is not None else _Unheard()
        self._pools: dict[str, Pool] = {}
        self.pending = PendingDecisions(self.limits.decision_ttl_ms / 1000.0, self.limits.max_pending_decisions)
        self.local_in_flight = LocalInFlightBook(self.find_pool, self.limits.max_local_clients, LOCAL_IN_FLIGHT_TTL_S)
        self.operations: dict[str, Operation] = {}
        self.monitor = monitor
        self.load_weights = load_weights if load_weights is not None else LoadWeights()
        self.peers = peers
        self.admission = (admission or Admission)(
            self.clock,
            self._select_for_lease,
            self._settle_lease,
            max_leases=self.limits.max_leases,
            max_request_ids=self.limits.max_request_ids,
            ids=self._ids,
        )

    @property
    def ids(self) -> IdGenerator:
        """Where decision and lease ids come from (``signed`` checks another replica's)."""
        return self._ids

    # --- decisions -------------------------------------------------------------

    def select(self, pool_name: str, exclude: Collection[str] = (), owner: str = "") -> Selection:
        """Picks a server of ``pool_name`` with its strategy and records the pending decision,
        which belongs to ``owner`` (the caller identity).

        Raises:
            NotFound: unknown pool.
            Unavailable: no eligible server; the message says why.
        """
        now = self.clock.monotonic()
        pool = self.pool(pool_name)
        pool.requests_total += 1
        server, explored, memo = self._choose(pool, exclude, now)
        decision_id = self._ids.new(owner)
        self._settle(self.pending.add(decision_id, pool, server, now, memo, owner))
        self._settle(self.pending.expire(now))
        return Selection(decision_id, server, pool.settings.strategy, explored)

    def _choose(self, pool: Pool, exclude: Collection[str], now: float) -> tuple[Backend, bool, object]:
        candidates = pool.eligible(now, exclude)
        if not candidates:
            self._listener.decided(pool, RESULT_NO_ELIGIBLE_SERVER)
            raise Unavailable(pool.why_none_eligible(now, exclude), reason=NO_ELIGIBLE_SERVER)
        server, explored, memo = pool.strategy.choose(candidates)
        if pool.maybe_eject_overdue(server, now):  # its requests are failing, only not timed out yet
            if self.peers is not None:
                self.peers.ejected(pool.name, server.id, server.ejected_until - now)
            # The strategy learns this choice as the failure it would have been, then chooses again.
            overdue_ms = server.stalled_ms(now)
            pool.strategy.observe(Feedback(server, False, overdue_ms, memo))
            server, explored, memo = pool.strategy.choose(pool.eligible(now, exclude) or candidates)
        server.started(now)
        server.selections_total += 1
        self._listener.decided(pool, RESULT_SELECTED)
        return server, explored, memo

    def _apply(
        self,
        pool: Pool,
        server: Backend,
        memo: object,
        success: bool,
        latency_ms: float,
        now: float,
        *,
        settles: bool = True,
        count: int = 1,
    ) -> None:
        """One outcome of a selection: the server's counters, ejection, and the strategy's lesson.
        ``settles`` is False for a client's own decision, which this process never counted in
        flight; ``count`` is how many outcomes it stands for (a client's sample)."""
        server.record_outcome(success, latency_ms, settles=settles, count=count, now=now)
        self._listener.settled(pool, server, success, latency_ms)
        if not success and pool.maybe_eject(server, now) and self.peers is not None:
            self.peers.ejected(pool.name, server.id, server.ejected_until - now)
        pool.strategy.observe(Feedback(server, success, latency_ms, memo))

    def report_outcomes(self, outcomes: Sequence[OutcomeReport], owner: str = "") -> OutcomesApplied:
        """Applies outcomes to ``owner``'s pending decisions (another caller's are unknown)
        and learns from those of decisions clients made locally (``OutcomeReport.local``).

        Returns:
            The number applied, the decision ids that were not pending, and the local
            outcomes whose pool or server no longer exists.

        Raises:
            NotFound: when no entry matched a pending decision or an existing server.
        """
        now = self.clock.monotonic()
        self.expire()
        unknown: list[str] = []
        unknown_local: list[int] = []
        applied = 0
        for index, outcome in enumerate(outcomes):
            if outcome.local is not None:
                if self._apply_local(outcome, now):
                    applied += 1
                else:
                    unknown_local.append(index)
                continue
            decision = self.pending.pop(outcome.decision_id, owner)
            if decision is None:
                unknown.append(outcome.decision_id)
                continue
            self._apply(decision.pool, decision.server, decision.memo, outcome.success, outcome.latency_ms, now)
            applied += 1
        if unknown and self.peers is not None:  # decisions another replica made go to it
            missing = set(unknown)
            sent = self.peers.elsewhere([o for o in outcomes if o.local is None and o.decision_id in missing], owner)
            if sent:
                applied += len(sent)
                unknown = [d for d in unknown if d not in sent]
        if outcomes and not applied:  # every entry is unknown, the first one too
            first = outcomes[0]
            if first.local is not None:
                raise NotFound(
                    "outcomes[0].local.server_id",
                    f"no server {first.local.server_id!r} in a pool {first.local.pool!r}",
                )
            raise NotFound(
                "outcomes[0].decision_id",
                f"no pending decision {first.decision_id!r} (never issued, already reported, "
                f"or expired after {self.limits.decision_ttl_ms} ms)",
            )
        return OutcomesApplied(applied, unknown, len(unknown_local))

    def _apply_local(self, outcome: OutcomeReport, now: float) -> bool:
        """Learns from a decision a client made; False when its pool or server is gone."""
        local = outcome.local
        assert local is not None
        pool = self._pools.get(local.pool)
        server = pool.servers.get(local.server_id) if pool is not None else None
        if pool is None or server is None:
            return False
        memo = pool.strategy.memo_from_wire(local.features, local.state)
        count = max(1, round(local.weight))
        pool.requests_total += count
        self._apply(pool, server, memo, outcome.success, outcome.latency_ms, now, settles=False, count=count)
        return True

    def report_load(self, reports: Sequence[LoadReportIn], *, from_peer: bool = False) -> int:
        """Stores load reports. All entries are checked before any is applied. The other
        replicas (if any) are told, unless they are where the reports came from.

        Raises:
            NotFound: naming ``reports[i].pool`` or ``reports[i].server_id``.
        """
        targets = []
        for i, report in enumerate(reports):
            pool = self._pools.get(report.pool)
            if pool is None:
                raise NotFound(f"reports[{i}].pool", f"no pool named {report.pool!r}")
            server = pool.servers.get(report.server_id)
            if server is None:
                raise NotFound(f"reports[{i}].server_id", f"pool {report.pool!r} has no server {report.server_id!r}")
            targets.append((pool, server, report.sample))
        now, wall = self.clock.monotonic(), self.clock.wall()
        for pool, server, sample in targets:
            pool.record_load(server, sample, now, wall)
        if self.peers is not None and not from_peer:
            self.peers.loads_reported(reports)
        return len(targets)

    def expire(self) -> int:
        """Expires decisions and reclaims leases whose TTL has passed; returns how many decisions."""
        now = self.clock.monotonic()
        expired = self.pending.expire(now)
        self._settle(expired)
        self.admission.expire(now)
        self.local_in_flight.expire(now)
        return len(expired)

    def report_in_flight(self, reports: Sequence[LocalInFlight], owner: str, instance: str, seq: int = 0) -> None:
        """Takes the requests in flight that client ``instance`` of caller ``owner`` decided
        locally (checked already), from its report numbered ``seq``; they count in its
        servers' in-flight counts until it reports again, or for ``LOCAL_IN_FLIGHT_TTL_S``
        after its last report."""
        now = self.clock.monotonic()
        self.local_in_flight.expire(now)
        self.local_in_flight.report((owner, instance), reports, now, seq)

    # --- batch sizing ------------------------------------------------------------

    def batch_size(self, name: str) -> BatchAnswer:
        """GetBatchSize. Raises NotFound for an unknown operation (unless auto-registration is on)."""
        operation = self._operation(name, "operation")
        if self.peers is not None:
            shared = self.peers.batch_answer(operation)
            if shared is not None:
                operation.decisions_total += 1
                return shared
        now = self.clock.monotonic()
        answer = operation.decide(now, self.clock.wall(), self.load_reading(operation.settings, now))
        if self.peers is not None:
            self.peers.batch_decided(operation, answer)
        return answer

    def load_reading(self, settings: OperationSettings, now: float) -> LoadReading:
        """The load score an operation's source gives right now (None with the reason when unknown)."""
        weights = self.load_weights
        if settings.load_source == "pool":
            pool = self._pools.get(settings.pool)
            if pool is None:
                return LoadReading(None, f"no pool named {settings.pool!r}")
            return pool_reading(pool, now, weights)
        if self.monitor is None:
            return LoadReading(None, "the host load monitor is off")
        return self.monitor.reading(now)

    def report_batches(self, reports: Sequence[BatchReportIn]) -> int:
        """ReportBatch; every entry's operation is checked before any is applied."""
        targets = [self._operation(r.operation, f"reports[{i}].operation") for i, r in enumerate(reports)]
        here = reports if self.peers is None else self.peers.batches_elsewhere(reports)
        for report in here:
            self.operations[report.operation].observe(report.batch_size, report.duration_ms, report.success)
        return len(targets)

    def _operation(self, name: str, field: str) -> Operation:
        operation = self.operations.get(name)
        if operation is not None:
            return operation
        if not self.limits.auto_register_operations:
            raise NotFound(field, f"no operation named {name!r} (auto-registration is off)")
        operation, _ = self.configure_operation(OperationSettings(name=name))
        return operation

    def configure_operation(self, settings: OperationSettings) -> tuple[Operation, bool]:
        """Creates or reconfigures an operation.

        A ``pool``-sourced operation must name an existing pool. A pool deleted
        later is allowed: the operation then answers its default size with
        ``fallback`` set and a reason naming the missing pool.

        Raises:
            NotFound: naming ``operation.pool`` when that pool does not exist.
            ResourceExhausted: ``limits.max_operations`` reached.
        """
        if settings.load_source == "pool" and settings.pool not in self._pools:
            raise NotFound(
                "operation.pool",
                f"no pool named {settings.pool!r}; create it first "
                "(an operation reading its load would answer its default size)",
            )
        existing = self.operations.get(settings.name)
        if existing is not None:
            existing.reconfigure(settings)
            return existing, False
        if len(self.operations) >= self.limits.max_operations:
            raise ResourceExhausted.cap_reached(
                "max_operations",
                "limits.max_operations",
                self.limits.max_operations,
                f"the service holds {len(self.operations)} operations; cannot add {settings.name!r}",
            )
        operation = self.operations[settings.name] = Operation(settings)
        log.info(
            "operation %s registered (%s mode, sizes %d-%d)",
            settings.name,
            settings.mode,
            settings.min_batch_size,
            settings.max_batch_size,
        )
        return operation, True

    def delete_operation(self, name: str) -> None:
        if self.operations.pop(name, None) is None:
            raise NotFound("operation", f"no operation named {name!r}")

    # --- admission ---------------------------------------------------------------

    async def acquire(self, request: SlotRequest, time_left_s: float | None) -> Answer:
        """AcquireSlot: a grant, a denial (an answer), or ResourceExhausted.

        Raises:
            NotFound: unknown pool.
            InvalidArgument: a wait longer than the pool's max_wait_ms.
        """
        pool = self.pool(request.pool)
        pool.requests_total += 1
        if request.max_wait_s * 1000.0 > pool.settings.max_wait_ms:
            raise InvalidArgument(
                "max_wait_ms", f"pool {request.pool!r} allows waits of at most {pool.settings.max_wait_ms} ms"
            )
        answer = await self.admission.acquire(pool.slots, request, time_left_s)
        self._listener.answered(pool, answer)
        return answer

    async def renew_lease(self, lease_id: str, ttl_s: float | None, owner: str = "") -> Lease:
        return await self.admission.renew_async(lease_id, ttl_s, owner)

    async def release_slot(self, lease_id: str, success: bool, latency_ms: float, owner: str = "") -> bool:
        return await self.admission.release_async(lease_id, success=success, latency_ms=latency_ms, owner=owner)

    async def release_request(
        self, pool: str, request_id: str, success: bool, latency_ms: float, owner: str = ""
    ) -> bool:
        """Ends what ``owner``'s AcquireSlot with ``request_id`` in ``pool`` holds (lease or wait)."""
        return await self.admission.release_request_async(
            pool, request_id, success=success, latency_ms=latency_ms, owner=owner
        )

    async def abandon_requests(self, pool: str, request_ids: list[str], owner: str = "") -> int:
        """Ends, as never granted, what ``owner``'s AcquireSlots with these request ids hold."""
        return await self.admission.abandon_requests_async(pool, request_ids, owner=owner)

    def give_back(self, lease: Lease) -> None:
        """Ends a lease whose caller was gone before the grant reached it."""
        self.admission.give_back(lease)

    def new_decision_id(self, owner: str = "") -> str:
        """A fresh unguessable id issued to ``owner`` (for decisions that hold no state, e.g. denials)."""
        return self._ids.new(owner)

    def _select_for_lease(self, pool_name: str, owner: str) -> LeaseDecision:
        # Not a pending decision: it lives and is settled with its lease, whatever the decision TTL.
        pool = self.pool(pool_name)
        server, _, memo = self._choose(pool, (), self.clock.monotonic())
        return LeaseDecision(self._ids.new(owner), pool, server, memo)

    def _settle_lease(self, selection: LeaseSelection, success: bool, latency_ms: float, expired: bool) -> None:
        assert isinstance(selection, LeaseDecision)
        pool, server = selection.pool, selection.server
        if expired:  # reclaimed: the work's fate is unknown, like a decision that timed out
            server.ended(None, False)
            server.expired_total += 1
            pool.strategy.observe(Feedback(server, False, latency_ms, selection.memo, expired=True))
            return
        self._apply(pool, server, selection.memo, success, latency_ms, self.clock.monotonic())

    def _settle(self, expired: list[PendingDecision]) -> None:
        # An expired decision frees its in-flight slot and teaches the strategy a failure.
        for decision in expired:
            server = decision.server
            server.ended(None, False)
            server.expired_total += 1
            decision.pool.strategy.observe(
                Feedback(server, False, float(self.limits.decision_ttl_ms), decision.memo, expired=True)
            )

    # --- state -----------------------------------------------------------------

    def pool(self, name: str, field: str = "pool") -> Pool:
        """The pool named ``name``; NotFound naming ``field`` otherwise."""
        pool = self._pools.get(name)
        if pool is None:
            raise NotFound(field, f"no pool named {name!r}")
        return pool

    def find_pool(self, name: str) -> Pool | None:
        """The pool named ``name``, or None."""
        return self._pools.get(name)

    def pools(self) -> list[Pool]:
        """All pools, sorted by name."""
        return [self._pools[name] for name in sorted(self._pools)]

    def configure_pool(
        self, settings: PoolSettings, servers: Sequence[ServerSpec] | None, where: str = "pool"
    ) -> tuple[Pool, bool]:
        """Creates a pool or replaces its settings (and servers, when given).

        The strategy is rebuilt only when its name or parameters change, so a
        learning strategy keeps what it learned across unrelated changes.
        """
        existing = self._pools.get(settings.name)
        changed_strategy = existing is None or (
            (existing.settings.strategy, existing.settings.strategy_params)
            != (settings.strategy, settings.strategy_params)
        )
        members: dict[str, Backend] = {} if existing is None else existing.servers
        strategy = (
            build_strategy(
                settings.strategy, settings.strategy_params, StrategyContext(self.clock, self._rng, members), where
            )
            if changed_strategy
            else None
        )
        if servers is not None and len(servers) > self.limits.max_servers_per_pool:
            raise InvalidArgument(
                f"{where}.servers",
                f"has {len(servers)} servers; at most {self.limits.max_servers_per_pool} per pool allowed "
                "(limits.max_servers_per_pool)",
            )
        count = len(servers) if servers is not None else len(existing.servers) if existing else 0
        if servers is not None:
            others = sum(len(p.servers) for p in self._pools.values() if p is not existing)
            if others + len(servers) > self.limits.max_servers:
                raise ResourceExhausted.cap_reached(
                    "max_servers",
                    "limits.max_servers",
                    self.limits.max_servers,
                    f"the other pools hold {others} servers; pool {settings.name!r} cannot have {len(servers)}",
                )
        too_many = _strategy_size_problem(settings.strategy, count)
        if too_many:
            raise InvalidArgument(f"{where}.strategy", too_many)
        if existing is None:
            if len(self._pools) >= self.limits.max_pools:
                raise ResourceExhausted.cap_reached(
                    "max_pools",
                    "limits.max_pools",
                    self.limits.max_pools,
                    f"the service holds {len(self._pools)} pools; cannot add {settings.name!r}",
                )
            assert strategy is not None
            slots = self.admission.open_pool(settings, where)  # a deleted namesake's leases keep counting
            pool = self._pools[settings.name] = Pool(settings, strategy, members, slots)
            created = True
        else:
            pool = existing
            pool.slots.reconfigure(settings, where)
            pool.reconfigure(settings, strategy)
            self.admission.dispatch(pool.slots)  # a higher limit may admit waiters now
            created = False
        if servers is not None:
            pool.replace_servers(servers)
        log.info(
            "pool %s %s (strategy %s, %d servers)",
            settings.name,
            "created" if created else "reconfigured",
            settings.strategy,
            len(pool.servers),
        )
        return pool, created

    def delete_pool(self, name: str) -> None:
        pool = self.pool(name)
        self.admission.close_pool(pool.slots)
        del self._pools[name]
        self.local_in_flight.forget_pool(name)
        log.info("pool %s deleted", name)

    def register_server(self, pool_name: str, spec: ServerSpec) -> tuple[Backend, bool]:
        pool = self.pool(pool_name)
        if spec.id not in pool.servers and len(pool.servers) >= self.limits.max_servers_per_pool:
            raise ResourceExhausted.cap_reached(
                "max_servers_per_pool",
                "limits.max_servers_per_pool",
                self.limits.max_servers_per_pool,
                f"pool {pool_name!r} holds {len(pool.servers)} servers; cannot add {spec.id!r}",
            )
        if spec.id not in pool.servers:
            total = sum(len(p.servers) for p in self._pools.values())
            if total >= self.limits.max_servers:
                raise ResourceExhausted.cap_reached(
                    "max_servers",
                    "limits.max_servers",
                    self.limits.max_servers,
                    f"the service holds {total} servers; cannot add {spec.id!r} to pool {pool_name!r}",
                )
            too_many = _strategy_size_problem(pool.settings.strategy, len(pool.servers) + 1)
            if too_many:
                raise ResourceExhausted(f"server.id: pool {pool_name!r}: {too_many}")
        server, created = pool.upsert(spec)
        log.info("server %s/%s %s at %s", pool_name, spec.id, "registered" if created else "updated", spec.address)
        return server, created

    def deregister_server(self, pool_name: str, server_id: str) -> None:
        if self.pool(pool_name).remove(server_id) is None:
            raise NotFound("server_id", f"pool {pool_name!r} has no server {server_id!r}")
        self.local_in_flight.forget_server(pool_name, server_id)
        log.info("server %s/%s deregistered", pool_name, server_id)

    def drain_server(self, pool_name: str, server_id: str, drain: bool) -> Backend:
        server = self.pool(pool_name).servers.get(server_id)
        if server is None:
            raise NotFound("server_id", f"pool {pool_name!r} has no server {server_id!r}")
        self.pool(pool_name).set_draining(server, drain)
        log.info("server %s/%s %s", pool_name, server_id, "draining" if drain else "back in rotation")
        return server


def _strategy_size_problem(strategy: str, servers: int) -> str:
    """Why ``strategy`` cannot route over ``servers`` servers; empty when it can."""
    cls = strategy_class(strategy, "pool")
    limit = cls.max_servers
    if limit is None or servers <= limit:
        return ""
    hint = getattr(cls, "too_large_hint", "") or f"strategy {strategy!r} serves at most {limit} servers"
    return f"{servers} servers: {hint}"
