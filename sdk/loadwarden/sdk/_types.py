"""The SDK's public value types; generated protobuf classes never appear in the API."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

# Largest batch size the contract allows, count.
MAX_BATCH_SIZE = 1_000_000
# Longest batch duration the contract allows, milliseconds (one day).
MAX_DURATION_MS = 86_400_000
# LoadReport.named_metrics: entries at most, and characters of a name at most.
MAX_NAMED_METRICS = 32
NAMED_METRIC_MAX_LEN = 64


@dataclass(frozen=True, slots=True)
class Selection:
    """The server chosen for one request.

    Attributes:
        decision_id: Identifies the decision; report the request's outcome with it.
            Empty when `fallback` is True (nothing to report to the service).
        server_id: Chosen server id within the pool.
        address: Where to reach the chosen server, e.g. "10.0.0.7:8080".
        strategy: Routing strategy that decided, e.g. "round_robin".
        explored: True when a learning strategy explored instead of exploiting.
        fallback: True when the SDK decided locally because the service could not answer.
        local: True when the client decided from a routing table the service pushed
            (`decisions="local"`); the decision id then starts with "~" and is this
            client's own (report its outcome with it all the same).
        table_version: With `local`: the version of the table it was decided from.
        stale: With `local`: the table's stream has been broken longer than
            `route_stale_after_s`, so the table may be out of date.
    """

    decision_id: str
    server_id: str
    address: str
    strategy: str
    explored: bool
    fallback: bool = False
    local: bool = False
    table_version: int = 0
    stale: bool = False


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted slot in a pool's concurrency limit.

    The slot is the holder's until it is released or `expires_at` passes
    unrenewed; then the service reclaims it.

    Attributes:
        lease_id: Lease id; release or renew the slot with it. Empty when
            `fallback` is True (nothing to release at the service).
        pool: Pool the slot belongs to.
        ttl_s: Time to live from the grant or last renewal, seconds.
        expires_at: When the service reclaims the slot unless renewed or released
            (UTC, by the service's clock: schedule renewals from `ttl_s`).
        server_id: Server chosen with the slot (`select_server=True`); None otherwise.
        address: Where to reach that server; None when no server was chosen.
        decision_id: Id of the admission decision, for logs and traces; empty on a renewal.
        queue_wait_s: How long the request waited in the queue, seconds; 0 on a renewal.
        fallback: True when the SDK granted the slot locally because the service
            could not answer.
    """

    lease_id: str
    pool: str
    ttl_s: float
    expires_at: datetime
    server_id: str | None
    address: str | None
    decision_id: str
    queue_wait_s: float
    fallback: bool = False


class LeaseLoss:
    """Whether a held lease has been lost, and why; written once by its keeper.

    Attributes:
        error: The `LeaseLostError` that ended the lease; None while it is held.
    """

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: Exception | None = None


@dataclass(frozen=True, slots=True)
class HeldLease(Lease):
    """The lease a `slot()` block holds: a `Lease` that also says whether it was lost.

    A lease is lost when a renewal is answered NOT_FOUND (the service reclaimed
    it, or it was never this caller's) or when no renewal succeeded within its
    TTL. Once lost it stays lost; the block keeps running, and the slot's exit
    raises `LeaseLostError` unless the block raised.
    """

    loss: LeaseLoss = field(default_factory=LeaseLoss, compare=False, repr=False)

    @property
    def lost(self) -> bool:
        """True once the lease is no longer this client's."""
        return self.loss.error is not None

    @property
    def lost_error(self) -> Exception | None:
        """The `LeaseLostError` that ended the lease (its `__cause__` is the renewal error); None while held."""
        return self.loss.error


@dataclass(frozen=True, slots=True)
class LoadReport:
    """The load of one backend server.

    Attributes:
        pool: Pool the server belongs to.
        server_id: Server id within the pool.
        cpu_percent: Host CPU utilisation, percent, 0-100.
        memory_percent: Host memory utilisation, percent, 0-100.
        active_requests: Requests the server is processing right now, count.
        mean_latency_ms: Mean request latency over the server's recent window, milliseconds.
        error_rate: Share of failed requests over the server's recent window, 0-1.
        application_utilization: How much of its capacity the application says it uses
            (ORCA's application_utilization), a fraction: 1 = full, 0-100 (above 1 past its
            own soft limit); 0 means not reported.
        requests_per_second: Requests finished per second over the server's recent window,
            any result (ORCA's rps_fractional), requests/s.
        errors_per_second: Requests failed per second over the same window (ORCA's eps), errors/s.
        named_metrics: Backend-defined metrics by name (ORCA's named_metrics), in the
            backend's own units; at most 32, each name 1-64 characters from [A-Za-z0-9._:@/-].
    """

    pool: str
    server_id: str
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    active_requests: int = 0
    mean_latency_ms: float = 0.0
    error_rate: float = 0.0
    application_utilization: float = 0.0
    requests_per_second: float = 0.0
    errors_per_second: float = 0.0
    named_metrics: Mapping[str, float] = field(default_factory=dict, hash=False)


class ServerState(enum.Enum):
    """How a server stands for routing."""

    UNSPECIFIED = "unspecified"
    """The service sent no state (or one this SDK version does not know)."""
    SERVING = "serving"
    """Eligible for new work."""
    STALE = "stale"
    """Not eligible: its load report is missing or older than the pool's TTL."""
    DRAINING = "draining"
    """Not eligible: an operator drained it; in-flight work finishes normally."""
    EJECTED = "ejected"
    """Not eligible for now: ejected as an outlier until its ejection time ends."""
    UNHEALTHY = "unhealthy"
    """Not eligible: the pool's active health check failed; back after enough good checks."""
    DEGRADED = "degraded"
    """Eligible at a reduced weight: the health check answered slowly or said degraded."""


class BatchMode(enum.Enum):
    """How an operation's batch size is decided."""

    UNSPECIFIED = "unspecified"
    """The service sent no mode (or one this SDK version does not know)."""
    THRESHOLD = "threshold"
    """Load thresholds: low load answers the max size, high load the min size."""
    LATENCY_TARGET = "latency_target"
    """AIMD on reported batch latency against a target."""


class LoadSource(enum.Enum):
    """Where an operation's load score comes from."""

    UNSPECIFIED = "unspecified"
    """The service sent no source (or one this SDK version does not know)."""
    HOST = "host"
    """The Decision service host's own CPU, memory and load average."""
    POOL = "pool"
    """The aggregated load reported by the servers of the operation's pool."""


@dataclass(frozen=True, slots=True)
class HealthCheckStatus:
    """What a pool's active health checks last found about one server.

    Attributes:
        state: "healthy", "degraded" or "unhealthy"; "unchecked" before a check concluded.
        checked_at: When the last check finished (UTC); None before the first.
        latency_ms: How long the last check took, milliseconds.
        problem: Why the last check failed or found the server degraded; empty when good.
        consecutive_failures: Checks in a row that failed, count.
        consecutive_successes: Checks in a row that passed, count.
        checks_total: Checks run on this server, count.
    """

    state: str
    checked_at: datetime | None
    latency_ms: float
    problem: str
    consecutive_failures: int
    consecutive_successes: int
    checks_total: int


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """What the service knows about one server.

    Attributes:
        id: Server id within its pool.
        address: Address clients reach it at.
        weight: Relative weight, 1-1000.
        state: Routing state.
        in_flight: Selections not yet matched by an outcome or expired, count.
        load: The latest load report; None when the server has never reported.
        load_reported_at: When `load` was reported (UTC); None when never.
        ewma_latency_ms: EWMA of reported outcome latencies, milliseconds; 0 before any outcome.
        error_rate: EWMA of reported outcome failures, 0-1.
        selections_total: Times the server was selected since it was registered, count.
        ejections_total: Times the server was ejected as an outlier, count.
        ejected_until: When the current ejection ends (UTC); None when not ejected.
        effective_weight: Weight the strategies use now: `weight`, scaled down while
            the server ramps up (slow start) and while it is degraded.
        consecutive_failures: Failed outcomes in a row, count.
        health_check: The pool's active health checks on it; None when none are configured.
    """

    id: str
    address: str
    weight: int
    state: ServerState
    in_flight: int
    load: LoadReport | None
    load_reported_at: datetime | None
    ewma_latency_ms: float
    error_rate: float
    selections_total: int
    # Added with outlier ejection in the SDK; defaults keep older constructor calls valid.
    ejections_total: int = 0
    ejected_until: datetime | None = None
    effective_weight: float = 0.0
    consecutive_failures: int = 0
    health_check: HealthCheckStatus | None = None


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """What the service knows about one pool.

    Attributes:
        name: Pool name.
        strategy: Routing strategy name.
        servers: Servers, sorted by id.
        eligible_servers: Servers in state SERVING, count.
        in_flight: Sum of the servers' in-flight selections, count.
        active_leases: Leases held right now, count.
        queue_length: Requests waiting for a slot right now, count.
        concurrency_limit: Current concurrency limit; 0 means unlimited.
        strategy_stats: Numbers that explain the strategy, by name (e.g. "epsilon",
            "episodes", "table_size" for q_learning); empty for most strategies.
        panic: True when too few servers are un-ejected and ejection is being ignored.
        requests_total: Requests to route or admit since the pool was made (SelectServer,
            decisions clients made locally and reported, AcquireSlot), count.
    """

    name: str
    strategy: str
    servers: tuple[ServerStatus, ...]
    eligible_servers: int
    in_flight: int
    active_leases: int
    queue_length: int
    concurrency_limit: int
    # Defaults keep older constructor calls valid; a dict is not hashable, so it is left out of the hash.
    strategy_stats: Mapping[str, float] = field(default_factory=dict, hash=False)
    panic: bool = False
    requests_total: int = 0


@dataclass(frozen=True, slots=True)
class BatchAdjustment:
    """One change of an operation's batch size.

    Attributes:
        at: When the change happened (UTC).
        previous_size: Size before, count.
        new_size: Size after, count.
        reason: Why, e.g. "load 85.0 >= high threshold 80.0".
        load_score: Load score that drove it, percent 0-100; 0 in latency-target mode.
    """

    at: datetime
    previous_size: int
    new_size: int
    reason: str
    load_score: float


@dataclass(frozen=True, slots=True)
class OperationStatus:
    """What the service knows about one batch operation.

    Attributes:
        name: Operation name.
        batch_size: Current batch size, count.
        last_load_score: Last load score seen, percent 0-100.
        adjustments_total: Size changes since the operation was registered, count.
        recent_adjustments: Most recent changes, newest last, at most 20.
        mode: Sizing mode.
        load_source: Where the load score comes from.
        pool: With `LoadSource.POOL`, the pool whose reported load drives the size; else empty.
        min_batch_size: Smallest size the operation answers, count.
        max_batch_size: Largest size the operation answers, count.
        default_batch_size: Size answered first and whenever the load is unknown, count.
        last_reason: Why the last answer was what it was.
        fallback: True when the last answer was the default because the load was unknown.
        decisions_total: Batch sizes answered since the operation was registered, count.
    """

    name: str
    batch_size: int
    last_load_score: float
    adjustments_total: int
    recent_adjustments: tuple[BatchAdjustment, ...]
    mode: BatchMode
    # Added with batch sizing in the SDK; defaults keep older constructor calls valid.
    load_source: LoadSource = LoadSource.UNSPECIFIED
    pool: str = ""
    min_batch_size: int = 0
    max_batch_size: int = 0
    default_batch_size: int = 0
    last_reason: str = ""
    fallback: bool = False
    decisions_total: int = 0


@dataclass(frozen=True, slots=True)
class HostLoad:
    """The Decision service host's own load, as its monitor last sampled it.

    Attributes:
        cpu_percent: CPU utilisation, percent 0-100.
        memory_percent: Memory utilisation, percent 0-100.
        load_average_percent: 1-minute load average per core, percent, capped at 100.
        load_score: Weighted score of the three, percent 0-100; None when `stale`
            (the load is unknown, never idle).
        sampled_at: When the sample was taken (UTC); None before the first sample.
        stale: True when the monitor is failing or its last sample is too old.
        problem: Why, when stale; empty otherwise.
    """

    cpu_percent: float
    memory_percent: float
    load_average_percent: float
    load_score: float | None
    sampled_at: datetime | None
    stale: bool
    problem: str


@dataclass(frozen=True, slots=True)
class LoadStatus:
    """A snapshot of everything the service decides with.

    Attributes:
        generated_at: When the snapshot was taken (UTC).
        pools: Pools, sorted by name.
        pending_decisions: Decisions waiting for their outcome, count.
        operations: Batch operations, sorted by name; empty when asked for one pool.
        host: The service host's own load; None when the service's host monitor is off.
    """

    generated_at: datetime
    pools: tuple[PoolStatus, ...]
    pending_decisions: int
    operations: tuple[OperationStatus, ...] = ()
    host: HostLoad | None = None


@dataclass(frozen=True, slots=True)
class OutcomeStats:
    """Counters of the client's background outcome reporting, since the client started.

    Every reported outcome ends up counted exactly once in `sent`, `dropped` or a
    failed batch, or is still `pending`.

    Attributes:
        sent: Outcomes the service received (including `unknown` ones), count.
        unknown: Of `sent`, outcomes whose decision the service no longer knew
            (expired or already reported), count.
        dropped: Outcomes discarded unsent because the buffer was full (oldest first)
            or the client was closed, count.
        failed_batches: Batches whose ReportOutcome call failed; their outcomes are lost, count.
        pending: Outcomes buffered or being sent right now, count.
    """

    sent: int
    unknown: int
    dropped: int
    failed_batches: int
    pending: int


@dataclass(frozen=True, slots=True)
class BatchSize:
    """The batch size an operation should use next.

    Attributes:
        size: Items to put in the next batch, count, >= 1.
        load_score: Load score the size is based on, percent 0-100; None when the
            load is unknown (`load_level` "unknown").
        load_level: "low", "medium" or "high" by the operation's thresholds, or
            "unknown" when the load is not known (always when the SDK answered).
        reason: Why this size, e.g. "load 62.0 between thresholds 50.0 and 80.0".
        fallback: True when the size is not a fresh decision: the service answered
            the operation's default because the load was unknown, or the SDK
            answered locally (`source` says which).
        decision_id: Id of the sizing decision; pass it to `report_batch`. Empty
            when the SDK answered locally.
        source: "service" when the service answered; "last_known" (the last size
            the service gave this client for the operation) or "default" (the
            caller's `default`) when the service could not be reached.
    """

    size: int
    load_score: float | None
    load_level: str
    reason: str
    fallback: bool
    decision_id: str
    source: str


@dataclass(frozen=True, slots=True)
class BatchReport:
    """How one batch went, for `report_batches`; checked when constructed.

    Attributes:
        operation: Operation name.
        batch_size: Items in the batch, count, >= 1.
        duration_ms: How long the batch took, milliseconds, 0-86,400,000.
        success: True when the batch succeeded.
        decision_id: `BatchSize.decision_id` of the size used; empty when unknown.

    Raises:
        ValueError: A field is out of range (it would make the service reject the
            whole call it travels in); the message names the field.
    """

    operation: str
    batch_size: int
    duration_ms: float
    success: bool = True
    decision_id: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.operation, str) or not self.operation:
            raise ValueError(f"operation must be a non-empty string, got {self.operation!r}")
        if (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, int)
            or not (1 <= self.batch_size <= MAX_BATCH_SIZE)
        ):
            raise ValueError(f"batch_size must be an integer 1-{MAX_BATCH_SIZE:,}, got {self.batch_size!r}")
        duration_ms = self.duration_ms
        if (
            isinstance(duration_ms, bool)
            or not isinstance(duration_ms, int | float)
            or not 0 <= duration_ms <= MAX_DURATION_MS  # False for NaN
        ):
            raise ValueError(f"duration_ms must be 0-{MAX_DURATION_MS:,} milliseconds, got {duration_ms!r}")
        if not isinstance(self.decision_id, str):
            raise ValueError(f"decision_id must be a string, got {self.decision_id!r}")
