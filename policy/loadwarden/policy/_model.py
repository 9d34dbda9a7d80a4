"""Decision state of servers. Lives in the event-loop thread: no locks."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._probes import Probed, ProbeRecord


class Health(enum.Enum):
    """Why a server may or may not be chosen right now.

    SERVING and DEGRADED servers may be chosen (DEGRADED at a reduced weight); STALE
    and DRAINING ones never; EJECTED and UNHEALTHY ones only when the pool panics.
    """

    SERVING = "serving"
    STALE = "stale"
    DRAINING = "draining"
    EJECTED = "ejected"
    UNHEALTHY = "unhealthy"
    DEGRADED = "degraded"


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A server as registered.

    Attributes:
        id: Unique in its pool; the characters of a pool name.
        address: ``host:port`` (printable ASCII, no spaces), where clients send its requests.
        weight: 1-1000, the server's share under weighted strategies (0 in a file or an RPC means 1).
    """

    id: str
    address: str
    weight: int = 1


@dataclass(frozen=True, slots=True)
class LoadSample:
    """One load report: percentages 0-100, latency in ms, error rate 0-1.

    The rest is what an ORCA load report carries beyond those, each 0 (or empty) when
    the backend did not say: ``application_utilization`` a fraction of its capacity
    (1 = full, may exceed 1), ``requests_per_second`` and ``errors_per_second`` over
    the backend's recent window, ``named_metrics`` in the backend's own units (a
    bounded, validated mapping; never mutated once stored).
    """

    cpu_percent: float
    memory_percent: float
    active_requests: int
    mean_latency_ms: float
    error_rate: float
    application_utilization: float = 0.0
    requests_per_second: float = 0.0
    errors_per_second: float = 0.0
    named_metrics: Mapping[str, float] = field(default_factory=dict, hash=False)


# Weight of the newest outcome in the per-server latency and error-rate EWMAs.
OUTCOME_EWMA_WEIGHT = 0.2
# ... and in the slow latency EWMA, which a few quick answers in a row hardly move.
SLOW_EWMA_WEIGHT = 0.02
# Outcomes before a server's latencies say what it usually answers in.
USUAL_AFTER_OUTCOMES = 10
# Requests in flight that have gone this many times a server's usual latency without a
# successful answer are evidence against it (``Backend.overdue_ms``).
OVERDUE_FACTOR = 3.0


@dataclass(slots=True, eq=False)
class Backend:
    """Mutable decision state of one server.

    ``in_flight`` counts this process's selections not yet matched by an outcome or
    expiry; it is never negative. ``client_in_flight`` is what clients deciding locally
    reported to this process (``LocalInFlight``). ``peer_in_flight`` is both counts of
    the other replicas sharing the pool (0 with one replica); in a client deciding
    locally, the other clients' and the service's. Strategies weigh ``in_flight_total``.
    ``load_at`` is monotonic seconds; ``None`` means never reported.
    ``effective_weight`` is what strategies weigh by: ``weight``, scaled down while
    the server ramps up after joining or returning (slow start); it is refreshed
    by the pool each time the server is a candidate.
    """

    id: str
    address: str
    weight: int
    draining: bool = False
    in_flight: int = 0
    peer_in_flight: int = 0
    client_in_flight: int = 0
    load: LoadSample | None = None
    load_at: float | None = None
    load_wall: float | None = None
    ewma_latency_ms: float = 0.0
    slow_latency_ms: float = 0.0  # the outcome latencies' slow EWMA (SLOW_EWMA_WEIGHT)
    error_rate: float = 0.0
    outcomes_total: int = 0
    failures_total: int = 0  # of outcomes_total
    expired_total: int = 0  # selections that reached no outcome within their TTL
    selections_total: int = 0  # this process's selections
    local_total: int = 0  # clients' own decisions, as their outcomes reported them
    effective_weight: float = 0.0
    consecutive_failures: int = 0
    ejected_until: float = 0.0  # monotonic; > now while ejected, 0 once back
    ejections_total: int = 0
    ejection_level: int = 0  # multiplier of the next ejection's length
    returned_at: float | None = None  # when the last ejection ended
    ramp_start: float | None = None  # when the server last became routable
    routable: bool = False  # routable (not drained, not stale) at the last check
    probed: Probed = Probed.UNCHECKED  # active health checks' verdict (see Pool.set_probed)
    degraded_share: float = 1.0  # share of its weight while probed DEGRADED, (0, 1]
    probe: ProbeRecord | None = None  # what the checks found; None when none cover it
    busy_since: float | None = None  # monotonic; when this process's in_flight last rose from 0
    answered_at: float | None = None  # monotonic; this process's last successful outcome

    def __post_init__(self) -> None:
        self.effective_weight = float(self.weight)

    @property
    def cpu_percent(self) -> float:
        """Reported CPU %, 0 when never reported."""
        return self.load.cpu_percent if self.load is not None else 0.0

    @property
    def in_flight_total(self) -> int:
        """Requests in flight over every replica and client: this process's selections,
        its clients' reports and its peers'."""
        return self.in_flight + self.client_in_flight + self.peer_in_flight

    @property
    def active_requests(self) -> int:
        """Requests in progress: the larger of the in-flight count (every replica's) and the server's own report."""
        reported = self.load.active_requests if self.load is not None else 0
        return max(self.in_flight + self.client_in_flight + self.peer_in_flight, reported)

    @property
    def response_time_ms(self) -> float:
        """Outcome latency EWMA; the reported mean latency before any outcome; 0 when neither."""
        if self.outcomes_total:
            return self.ewma_latency_ms
        return self.load.mean_latency_ms if self.load is not None else 0.0

    def started(self, now: float) -> None:
        """One more of this process's requests in flight, from monotonic time ``now``."""
        if self.in_flight <= 0:
            self.busy_since = now
        self.in_flight += 1

    def ended(self, now: float | None, success: bool) -> None:
        """One of this process's requests in flight ended (``now`` None: time unknown)."""
        self.in_flight = max(0, self.in_flight - 1)
        if success and now is not None:
            self.answered_at = now
        if not self.in_flight:
            self.busy_since = None

    @property
    def usual_latency_ms(self) -> float:
        """The latency this server usually answers in: the larger of the outcome EWMA and its
        slow twin (so a run of quick answers does not make ordinary waits look overdue), once
        ``USUAL_AFTER_OUTCOMES`` outcomes came; 0 (unknown) before."""
        if self.outcomes_total < USUAL_AFTER_OUTCOMES:
            return 0.0
        return max(self.ewma_latency_ms, self.slow_latency_ms)

    def stalled_ms(self, now: float) -> float:
        """How long this process's requests in flight have gone without a successful answer:
        since the later of when they began (the count rose from 0) and the last success;
        0 with none in flight."""
        if self.in_flight <= 0 or self.busy_since is None:
            return 0.0
        answered = self.answered_at
        since = self.busy_since if answered is None or answered < self.busy_since else answered
        return max(0.0, (now - since) * 1000.0)

    def overdue_ms(self, now: float, usual_ms: float, factor: float = OVERDUE_FACTOR) -> float:
        """``stalled_ms`` when it exceeds ``factor`` times ``usual_ms`` (the server's usual
        latency as the caller knows it; 0 when unknown), else 0: evidence that the server
        turned slow, before any of those requests completes or times out."""
        if usual_ms <= 0:
            return 0.0
        stalled = self.stalled_ms(now)
        return stalled if stalled > factor * usual_ms else 0.0

    @classmethod
    def from_spec(cls, spec: ServerSpec) -> Backend:
        return cls(id=spec.id, address=spec.address, weight=spec.weight)

    def update_spec(self, spec: ServerSpec) -> None:
        """Takes a re-registration's address and weight, keeping the decision state."""
        self.address = spec.address
        self.effective_weight *= spec.weight / self.weight
        self.weight = spec.weight

    def record_outcome(
        self, success: bool, latency_ms: float, *, settles: bool = True, count: int = 1, now: float | None = None
    ) -> None:
        """Folds one reported outcome into the EWMAs and the consecutive-failure count; it
        settles one of this process's selections unless a client decided it (``settles``),
        and counts as ``count`` outcomes (a client's sampled outcome stands for several).
        ``now`` (monotonic) dates a success for ``stalled_ms``."""
        if settles:
            self.ended(now, success)
        self.consecutive_failures = 0 if success else self.consecutive_failures + 1
        if not success:
            self.failures_total += count
        if not settles:
            self.local_total += count
        failure = 0.0 if success else 1.0
        if self.outcomes_total == 0:
            self.ewma_latency_ms = self.slow_latency_ms = latency_ms
            self.error_rate = failure
        else:
            w = OUTCOME_EWMA_WEIGHT
            self.ewma_latency_ms += w * (latency_ms - self.ewma_latency_ms)
            self.slow_latency_ms += SLOW_EWMA_WEIGHT * (latency_ms - self.slow_latency_ms)
            self.error_rate += w * (failure - self.error_rate)
        self.outcomes_total += count

    def is_stale(self, now: float, load_ttl_s: float, require_load: bool) -> bool:
        """True when the load is unknown: no report (and one is required) or an old one."""
        if self.load_at is None:
            return require_load
        return now - self.load_at > load_ttl_s

    def health(self, now: float, load_ttl_s: float, require_load: bool) -> Health:
        """The server's routing state at monotonic time ``now``."""
        if self.draining:
            return Health.DRAINING
        if self.is_stale(now, load_ttl_s, require_load):
            return Health.STALE
        if self.ejected_until > now:
            return Health.EJECTED
        if self.probed is Probed.UNHEALTHY:
            return Health.UNHEALTHY
        return Health.DEGRADED if self.probed is Probed.DEGRADED else Health.SERVING


@dataclass(frozen=True, slots=True)
class LocalChoice:
    """A decision a client made from a routing table (a ReportOutcome entry's ``local``).

    ``features`` and ``state`` are the strategy's memo as the client sent it
    (``Strategy.memo_wire``); the service's instance reads them with ``memo_from_wire``.
    """

    pool: str
    server_id: str
    features: tuple[float, ...] = ()
    state: str = ""
    weight: float = 1.0  # outcomes this one stands for (the client's sample weight)


@dataclass(frozen=True, slots=True)
class LocalInFlight:
    """A client's requests in flight in one pool, by server (a ReportOutcome ``in_flight``
    entry): every server it has requests on when ``complete``, else the ones that changed."""

    pool: str
    counts: Mapping[str, int]
    complete: bool = False


@dataclass(frozen=True, slots=True)
class OutcomeReport:
    """A validated ReportOutcome entry: of the service's decision ``decision_id``, or, with
    ``decision_id`` empty, of the client's decision ``local``."""

    decision_id: str
    success: bool
    latency_ms: float
    status: str = ""
    local: LocalChoice | None = None


@dataclass(frozen=True, slots=True)
class BatchReportIn:
    """A validated ReportBatch entry."""

    operation: str
    batch_size: int
    duration_ms: float
    success: bool


@dataclass(frozen=True, slots=True)
class LoadReportIn:
    """A validated ReportLoad entry."""

    pool: str
    server_id: str
    sample: LoadSample
