"""Scenario configuration: frozen, validated dataclasses.

Every ``ValueError`` raised here reads ``"<field>: <problem>"``, the convention
the rest of loadwarden uses, so a caller can tell which field to fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SERVICE_DISTRIBUTIONS = ("exponential", "constant")
# Where routing decisions are made: by the service (SelectServer) or in each client, from pushed tables.
DECISION_MODES = ("central", "local")
# Hard bound on the requests of one run, whatever the arrival settings say.
MAX_REQUESTS = 10_000_000


def _check_positive(value: object, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(f"{field}: must be a finite number > 0, got {value!r}")


def _check_count(value: object, field: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
        raise ValueError(f"{field}: must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True, slots=True)
class Phase:
    """A stretch of time in which a backend is slower or down.

    Attributes:
        start_s: Seconds from the start of the run (simulated time in the
            simulator, wall time since the backend started in ``backend-sim``).
        duration_s: How long the phase lasts, seconds.
        service_ms: When set, the mean service time during the phase replaces
            ``base_ms / speed``.
        slowdown: Multiplies the mean service time during the phase (>= 1 slows).
        outage: The backend is down: it fails every request at once and sends
            no load report, so the decision service sees it go stale.
    """

    start_s: float
    duration_s: float
    service_ms: float | None = None
    slowdown: float = 1.0
    outage: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.start_s, bool)
            or not isinstance(self.start_s, (int, float))
            or not (0 <= self.start_s < math.inf)
        ):
            raise ValueError(f"start_s: must be a finite number >= 0, got {self.start_s!r}")
        _check_positive(self.duration_s, "duration_s")
        if self.service_ms is not None:
            _check_positive(self.service_ms, "service_ms")
        _check_positive(self.slowdown, "slowdown")
        if not isinstance(self.outage, bool):
            raise ValueError(f"outage: must be true or false, got {self.outage!r}")

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def covers(self, t_s: float) -> bool:
        """Whether time ``t_s`` falls in ``[start_s, end_s)``."""
        return self.start_s <= t_s < self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class SimServer:
    """One simulated backend.

    Attributes:
        id: Server id, unique in the scenario; also its id in the decision core.
        speed: Service rate multiplier; a request's mean service time is
            ``base_ms / speed``.
        workers: Requests served at once; more wait in one FIFO queue, so
            latency (wait + service) grows with load.
        base_ms: Mean service time in ms at speed 1.
        service: ``"exponential"`` (mean ``base_ms / speed``) or ``"constant"``
            (exactly ``base_ms / speed``).
        failure_probability: Chance in [0, 1] that a served request fails; a
            failed request still takes its service time.
        weight: Weight registered with the decision core (1-1000).
        schedule: Slowdowns and outages over time; phases may not overlap.
    """

    id: str
    speed: float = 1.0
    workers: int = 1
    base_ms: float = 10.0
    service: str = "exponential"
    failure_probability: float = 0.0
    weight: int = 1
    schedule: tuple[Phase, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"id: must be a non-empty string, got {self.id!r}")
        _check_positive(self.speed, "speed")
        _check_count(self.workers, "workers", 1, 100_000)
        _check_positive(self.base_ms, "base_ms")
        if self.service not in SERVICE_DISTRIBUTIONS:
            raise ValueError(f"service: must be one of {', '.join(SERVICE_DISTRIBUTIONS)}, got {self.service!r}")
        p = self.failure_probability
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 <= p <= 1.0):
            raise ValueError(f"failure_probability: must be a number in [0, 1], got {p!r}")
        _check_count(self.weight, "weight", 1, 1000)
        if not isinstance(self.schedule, (tuple, list)):
            raise ValueError(f"schedule: must be a sequence of Phase, got {self.schedule!r}")
        object.__setattr__(self, "schedule", tuple(sorted(self.schedule, key=lambda p: p.start_s)))
        for i, phase in enumerate(self.schedule):
            if not isinstance(phase, Phase):
                raise ValueError(f"schedule[{i}]: must be a Phase, got {phase!r}")
            if i and phase.start_s < self.schedule[i - 1].end_s:
                raise ValueError(f"schedule[{i}].start_s: overlaps the phase before it")

    def phase_at(self, t_s: float) -> Phase | None:
        """The phase in force at ``t_s``, or None."""
        for phase in self.schedule:
            if phase.covers(t_s):
                return phase
        return None

    def mean_service_ms(self, t_s: float = 0.0) -> float:
        """Mean service time at ``t_s``, ms, with any slowdown phase applied."""
        phase = self.phase_at(t_s) if self.schedule else None
        base = self.base_ms / self.speed
        if phase is None:
            return base
        return (phase.service_ms if phase.service_ms is not None else base) * phase.slowdown

    @property
    def capacity_per_s(self) -> float:
        """Requests per second this server completes when always busy."""
        return self.workers * self.speed * 1000.0 / self.base_ms


def capacity_per_s(servers: Sequence[SimServer]) -> float:
    """Requests per second the servers complete together when all are always busy.

    The sum over servers of ``workers * speed / base_ms`` (per ms, times 1000).
    Arrivals at ``0.8 * capacity_per_s(servers)`` load the servers to 80 %
    when the routing matches each server's share of the capacity.
    """
    return sum(server.capacity_per_s for server in servers)


def _check_stop(requests: int | None, duration_s: float | None) -> None:
    if requests is None and duration_s is None:
        raise ValueError("requests: set requests, duration_s or both")
    if requests is not None:
        _check_count(requests, "requests", 1, MAX_REQUESTS)
    if duration_s is not None:
        _check_positive(duration_s, "duration_s")


@dataclass(frozen=True, slots=True)
class Surges:
    """Surges that repeat: the open-loop rate is ``rate_per_s`` for ``duration_s`` every ``every_s``.

    The first surge starts at ``start_s``, the next ones every ``every_s`` after it; between
    them the traffic's own rate (constant, or ramping) holds.

    Attributes:
        rate_per_s: Arrivals per second during a surge.
        every_s: Seconds from one surge's start to the next's.
        duration_s: Seconds each surge lasts, less than ``every_s``.
        start_s: When the first surge starts, seconds from the start of the traffic (>= 0).
    """

    rate_per_s: float
    every_s: float
    duration_s: float
    start_s: float = 0.0

    def __post_init__(self) -> None:
        _check_positive(self.rate_per_s, "rate_per_s")
        _check_positive(self.every_s, "every_s")
        _check_positive(self.duration_s, "duration_s")
        if self.duration_s >= self.every_s:
            raise ValueError(
                f"duration_s: must be less than every_s ({self.every_s:g}): surges with no time between them "
                f"are a constant rate, got {self.duration_s!r}"
            )
        s = self.start_s
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0 <= s < math.inf):
            raise ValueError(f"start_s: must be a finite number >= 0, got {s!r}")

    def covers(self, t_s: float) -> bool:
        """Whether a surge is on at ``t_s`` (each surge is ``[start, start + duration_s)``)."""
        if t_s < self.start_s:
            return False
        return (t_s - self.start_s) % self.every_s < self.duration_s

    def windows(self, until_s: float, *, before_s: float = 0.0) -> list[tuple[float, float]]:
        """``(start - before_s, end)`` of every surge that ends by ``until_s``, in order."""
        out = []
        start = self.start_s
        while start + self.duration_s <= until_s:
            out.append((start - before_s, start + self.duration_s))
            start += self.every_s
        return out


@dataclass(frozen=True, slots=True)
class Arrivals:
    """Open-loop Poisson arrivals.

    A run stops arriving at ``requests`` arrivals or after ``duration_s``
    seconds of simulated time, whichever comes first; at least one must be set,
    and never more than ``MAX_REQUESTS`` arrive.

    Attributes:
        rate_per_s: Mean arrivals per simulated second (at time 0 when the rate ramps).
        requests: Number of arrivals, or None.
        duration_s: Simulated seconds during which requests arrive, or None.
        rate_end_per_s: When set, the rate ramps linearly from ``rate_per_s`` at
            time 0 to this at ``duration_s`` (which is then required).
        max_in_flight: When set, an arrival finding this many requests in flight
            (arrived, not yet finished) is dropped: recorded as a failure that
            reached no server.
        surges: When set, the rate is the surges' during each surge (``Surges``).
    """

    rate_per_s: float
    requests: int | None = None
    duration_s: float | None = None
    rate_end_per_s: float | None = None
    max_in_flight: int | None = None
    surges: Surges | None = None

    def __post_init__(self) -> None:
        _check_positive(self.rate_per_s, "rate_per_s")
        _check_stop(self.requests, self.duration_s)
        if self.rate_end_per_s is not None:
            _check_positive(self.rate_end_per_s, "rate_end_per_s")
            if self.duration_s is None:
                raise ValueError("rate_end_per_s: a ramp spans duration_s; set duration_s")
        if self.max_in_flight is not None:
            _check_count(self.max_in_flight, "max_in_flight", 1, MAX_REQUESTS)
        if self.surges is not None and not isinstance(self.surges, Surges):
            raise ValueError(f"surges: must be a Surges, got {self.surges!r}")
        if self.duration_s is not None and self.requests is None and self.expected_requests > MAX_REQUESTS:
            raise ValueError(
                f"duration_s: rate_per_s * duration_s expects more than {MAX_REQUESTS} requests; "
                "shorten it or set requests"
            )

    @property
    def expected_requests(self) -> float:
        """Mean number of arrivals in ``duration_s`` (inf without a duration), capped by ``requests``."""
        if self.duration_s is None:
            return float(self.requests or 0)
        end = self.rate_end_per_s if self.rate_end_per_s is not None else self.rate_per_s
        expected = (self.rate_per_s + end) / 2 * self.duration_s
        if self.surges is not None:  # each surge (cut at the end) replaces the base rate's mean over it
            for a, b in self.surges.windows(self.duration_s + self.surges.duration_s):
                b = min(b, self.duration_s)
                if b > a:
                    base = (self._base_rate(a) + self._base_rate(b)) / 2
                    expected += (self.surges.rate_per_s - base) * (b - a)
        return min(expected, self.requests) if self.requests is not None else expected

    @property
    def varies(self) -> bool:
        """Whether the rate changes over time (a ramp or surges)."""
        return self.rate_end_per_s is not None or self.surges is not None

    @property
    def peak_rate_per_s(self) -> float:
        """The highest rate at any time, per second."""
        rates = [self.rate_per_s]
        if self.rate_end_per_s is not None:
            rates.append(self.rate_end_per_s)
        if self.surges is not None:
            rates.append(self.surges.rate_per_s)
        return max(rates)

    def rate_at(self, t_s: float) -> float:
        """Arrival rate at simulated time ``t_s``, per second."""
        if self.surges is not None and self.surges.covers(t_s):
            return self.surges.rate_per_s
        return self._base_rate(t_s)

    def _base_rate(self, t_s: float) -> float:
        """The rate at ``t_s`` without the surges."""
        if self.rate_end_per_s is None or self.duration_s is None:
            return self.rate_per_s
        fraction = min(1.0, max(0.0, t_s / self.duration_s))
        return self.rate_per_s + (self.rate_end_per_s - self.rate_per_s) * fraction


@dataclass(frozen=True, slots=True)
class ClosedLoop:
    """Closed-loop traffic: ``users`` users, each with at most one request in flight.

    Every user sends a request, waits for its answer (success, failure or
    timeout), thinks for an exponentially distributed time of mean ``think_ms``
    (none when 0) and sends the next. Users start at time 0 (after one think
    time each when ``think_ms`` > 0). Requests stop at ``requests`` sent or
    ``duration_s``, whichever comes first.

    Attributes:
        users: Concurrent users, 1-1,000,000.
        think_ms: Mean think time between a user's answer and its next request, ms (>= 0).
        requests: Number of requests, or None.
        duration_s: Simulated seconds during which requests are sent, or None.
    """

    users: int
    think_ms: float = 0.0
    requests: int | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        _check_count(self.users, "users", 1, 1_000_000)
        t = self.think_ms
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 <= t < math.inf):
            raise ValueError(f"think_ms: must be a finite number >= 0, got {t!r}")
        _check_stop(self.requests, self.duration_s)


@dataclass(frozen=True, slots=True)
class Scenario:
    """Servers, traffic and seed of one simulation; the strategy is chosen per run.

    Attributes:
        servers: The backends, in registration order; ids unique. A list is
            stored as a tuple.
        arrivals: The traffic: open-loop ``Arrivals`` or ``ClosedLoop`` users.
        seed: Seeds every random draw of a run. Arrival times, request sizes and
            failure draws come from one stream and routing from another, so
            runs with the same seed see the same requests whatever the strategy.
        load_report_interval_ms: Each server reports its load to the decision
            core this often (simulated time), 1 ms to 1 h.
        pool: Pool name in the decision core.
        timeout_ms: The client's deadline per request, ms, or None. A request
            not answered by then fails with latency ``timeout_ms``, and the
            server drops it (from its queue, or aborts its service, freeing the
            worker), as a gRPC server does on cancellation.
        pool_settings: Extra pool settings, keys as in ``[pools.X]`` of
            ``loadwarden.toml`` (``load_report_ttl_ms``, ``outlier_detection``,
            ...), except ``strategy``, ``strategy_params`` and ``servers``. When
            ``load_report_ttl_ms`` is absent the simulator uses
            ``max(10 s, 3 report intervals)``.
    """

    servers: tuple[SimServer, ...]
    arrivals: Arrivals | ClosedLoop
    seed: int = 0
    load_report_interval_ms: float = 1000.0
    pool: str = "sim"
    timeout_ms: float | None = None
    pool_settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.servers, (tuple, list)) or not self.servers:
            raise ValueError(f"servers: must be a non-empty sequence of SimServer, got {self.servers!r}")
        object.__setattr__(self, "servers", tuple(self.servers))  # a list is taken, a tuple is kept
        seen: set[str] = set()
        for i, server in enumerate(self.servers):
            if not isinstance(server, SimServer):
                raise ValueError(f"servers[{i}]: must be a SimServer, got {server!r}")
            if server.id in seen:
                raise ValueError(f"servers[{i}].id: duplicate server id {server.id!r}")
            seen.add(server.id)
        if not isinstance(self.arrivals, (Arrivals, ClosedLoop)):
            raise ValueError(f"arrivals: must be an Arrivals or a ClosedLoop, got {self.arrivals!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed: must be an integer, got {self.seed!r}")
        interval = self.load_report_interval_ms
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not (1 <= interval <= 3_600_000):
            raise ValueError(f"load_report_interval_ms: must be a number in [1, 3600000], got {interval!r}")
        if not isinstance(self.pool, str) or not self.pool:
            raise ValueError(f"pool: must be a non-empty string, got {self.pool!r}")
        if self.timeout_ms is not None:
            _check_positive(self.timeout_ms, "timeout_ms")
        if not isinstance(self.pool_settings, Mapping):
            raise ValueError(f"pool_settings: must be a mapping, got {self.pool_settings!r}")
        reserved = sorted(set(self.pool_settings) & {"strategy", "strategy_params", "servers"})
        if reserved:
            raise ValueError(f"pool_settings.{reserved[0]}: set by the run, not by pool settings")
