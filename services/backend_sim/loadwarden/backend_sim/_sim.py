"""Discrete-event simulation of backends routed by the real ``DecisionCore``.

Simulated time drives a ``ManualClock`` that the core and its strategy read, so
the code that decides in the service decides here too, in process: every
arrival calls ``core.select``, every completion ``core.report_outcomes``, and
every load-report interval ``core.report_load``. Nothing here reads the wall
clock unless a ``timer`` is passed to measure the core's own cost.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from loadwarden.server import CoreLimits, DecisionCore, ManualClock, PoolSettings, ServerSpec
from loadwarden.server._core import LoadReportIn, OutcomeReport
from loadwarden.server._decisions import IdGenerator
from loadwarden.server._errors import InvalidArgument, NotFound
from loadwarden.server._model import LoadSample

from ._config import MAX_REQUESTS, Scenario, SimServer
from ._summary import LoadRecord, RequestRecord, Summary, summarize

# A simulated outcome always arrives, however long the queue: the decision TTL
# only has to outlast the longest simulated latency.
_DECISION_TTL_MS = 86_400_000
_DONE, _REPORT = 0, 1


@dataclass(frozen=True, slots=True)
class CoreTiming:
    """Time spent inside the decision core, measured with the caller's timer.

    Attributes:
        select_s: Total seconds in ``core.select``.
        selects: Calls to ``core.select``.
        outcome_s: Total seconds in ``core.report_outcomes``.
        outcome_calls: Calls to ``core.report_outcomes`` (one per request).
    """

    select_s: float
    selects: int
    outcome_s: float
    outcome_calls: int

    @property
    def select_us(self) -> float:
        """Mean µs per ``select``."""
        return self.select_s / self.selects * 1e6 if self.selects else 0.0

    @property
    def outcome_us(self) -> float:
        """Mean µs per ``report_outcomes``."""
        return self.outcome_s / self.outcome_calls * 1e6 if self.outcome_calls else 0.0


@dataclass(frozen=True, slots=True)
class SimResult:
    """Everything one run produced.

    Attributes:
        scenario: What was simulated.
        strategy: Routing strategy registry name.
        strategy_params: Its parameters.
        records: One per request, in arrival order.
        loads: Every load report sent to the core, in time order.
        end_s: Simulated seconds at the last completion.
        expired: Outcomes the core no longer expected (decision TTL or
            pending-decision bound); 0 in any reasonable scenario.
        strategy_stats: The strategy's ``stats()`` at the end.
        timing: Time inside the core, when ``simulate`` was given a timer.
    """

    scenario: Scenario
    strategy: str
    strategy_params: Mapping[str, Any]
    records: tuple[RequestRecord, ...]
    loads: tuple[LoadRecord, ...]
    end_s: float
    expired: int
    strategy_stats: dict[str, float] = field(default_factory=dict)
    timing: CoreTiming | None = None

    def summary(self, warmup: int = 0, curve_window: int = 500) -> Summary:
        """Statistics over the requests after the first ``warmup``; see ``summarize``."""
        ids = [s.id for s in self.scenario.servers]
        return summarize(self.records, ids, warmup=warmup, curve_window=curve_window)


class _Server:
    """Run-time state of one simulated server. ``busy <= workers``; the queue is FIFO."""

    __slots__ = (
        "id", "workers", "mean_s", "constant", "p_fail", "busy", "queue",
        "busy_area", "changed_at", "lat_sum", "done", "failed", "last_mean_ms",
    )

    def __init__(self, spec: SimServer) -> None:
        self.id = spec.id
        self.workers = spec.workers
        self.mean_s = spec.base_ms / spec.speed / 1000.0
        self.constant = spec.service == "constant"
        self.p_fail = spec.failure_probability
        self.busy = 0
        self.queue: deque[tuple[int, float, float, float, str, bool]] = deque()
        # Worker-seconds busy since the last load report, up to ``changed_at``.
        self.busy_area = 0.0
        self.changed_at = 0.0
        # Completions since the last load report.
        self.lat_sum = 0.0
        self.done = 0
        self.failed = 0
        self.last_mean_ms = 0.0

    def account(self, now: float) -> None:
        """Adds busy worker-time up to ``now``; call before ``busy`` changes."""
        self.busy_area += self.busy * (now - self.changed_at)
        self.changed_at = now


def _build_core(scenario: Scenario, strategy: str, params: Mapping[str, Any], clock: ManualClock,
                rng: random.Random) -> DecisionCore:
    limits = CoreLimits(decision_ttl_ms=_DECISION_TTL_MS, max_pending_decisions=MAX_REQUESTS,
                        max_servers_per_pool=max(10_000, len(scenario.servers)))
    core = DecisionCore(limits, clock=clock, rng=rng, ids=IdGenerator("sim"))
    # Reports come every interval, so a server is never stale while the run lasts.
    ttl_ms = int(max(10_000, math.ceil(3 * scenario.load_report_interval_ms)))
    settings = PoolSettings(name=scenario.pool, strategy=strategy, strategy_params=dict(params),
                            load_report_ttl_ms=ttl_ms)
    specs = [ServerSpec(s.id, f"sim:{i}", s.weight) for i, s in enumerate(scenario.servers)]
    try:
        core.configure_pool(settings, specs, where="sim")
    except InvalidArgument as exc:
        raise ValueError(f"{exc.field.removeprefix('sim.')}: {exc.problem}") from None
    return core


def simulate(
    scenario: Scenario,
    strategy: str = "round_robin",
    strategy_params: Mapping[str, Any] | None = None,
    *,
    timer: Callable[[], float] | None = None,
) -> SimResult:
    """Runs ``scenario`` with the real decision core routing by ``strategy``.

    The same scenario (seed included) gives the same result, record for record.
    Arrival times, request sizes and failure draws depend on the seed only, not
    on the strategy, so strategies are compared on identical traffic.

    Args:
        scenario: Servers, arrivals and seed.
        strategy: A name registered in ``loadwarden.server.strategies.STRATEGIES``.
        strategy_params: Its parameters by name; defaults when None.
        timer: When given (e.g. ``time.perf_counter``), the seconds spent in
            ``core.select`` and ``core.report_outcomes`` are measured with it
            and returned as ``SimResult.timing``. It never affects the run.

    Raises:
        ValueError: unknown strategy or bad parameters, naming ``strategy`` or
            ``strategy_params.<name>``.
    """
    params = dict(strategy_params or {})
    master = random.Random(scenario.seed)
    traffic = random.Random(master.getrandbits(64))  # arrivals, request sizes, failure draws
    routing = random.Random(master.getrandbits(64))  # the core's and its strategy's RNG
    clock = ManualClock()
    core = _build_core(scenario, strategy, params, clock, routing)
    pool = scenario.pool
    servers = [_Server(s) for s in scenario.servers]
    by_id = {s.id: s for s in servers}

    arrivals = scenario.arrivals
    rate = arrivals.rate_per_s
    limit = min(arrivals.requests or MAX_REQUESTS, MAX_REQUESTS)
    horizon = arrivals.duration_s if arrivals.duration_s is not None else math.inf
    interval_s = scenario.load_report_interval_ms / 1000.0

    expovariate, uniform = traffic.expovariate, traffic.random
    select, report_outcomes, report_load = core.select, core.report_outcomes, core.report_load
    push, pop = heapq.heappush, heapq.heappop
    seq = itertools.count()  # equal-time events run in the order they were scheduled
    heap: list[tuple[float, int, int, Any]] = []
    records: list[Any] = []
    loads: list[LoadRecord] = []
    select_s = outcome_s = 0.0
    expired = 0

    def start(server: _Server, request: tuple[int, float, float, float, str, bool], now: float) -> None:
        service_s = server.mean_s if server.constant else request[2] * server.mean_s
        push(heap, (now + service_s, next(seq), _DONE, (server, request)))

    now = 0.0
    last_report = 0.0
    last_done = 0.0
    next_arrival = expovariate(rate)
    arriving = next_arrival <= horizon
    push(heap, (interval_s, next(seq), _REPORT, None))
    while heap:
        if arriving and next_arrival < heap[0][0]:
            # --- arrival -----------------------------------------------------
            clock.advance(next_arrival - now)
            now = next_arrival
            work, u = expovariate(1.0), uniform()  # drawn for every request, whatever the routing
            if timer is None:
                chosen = select(pool)
            else:
                t0 = timer()
                chosen = select(pool)
                select_s += timer() - t0
            server = by_id[chosen.server.id]
            request = (len(records), now, work, u, chosen.decision_id, chosen.explored)
            records.append(None)
            if server.busy < server.workers:
                server.account(now)
                server.busy += 1
                start(server, request, now)
            else:
                server.queue.append(request)
            next_arrival = now + expovariate(rate)
            arriving = len(records) < limit and next_arrival <= horizon
            continue

        t, _, kind, payload = pop(heap)
        clock.advance(t - now)
        now = t
        if kind == _DONE:
            # --- completion --------------------------------------------------
            server, (index, arrived, _work, u, decision_id, explored) = payload
            last_done = now
            latency_ms = (now - arrived) * 1000.0
            success = u >= server.p_fail
            outcome = [OutcomeReport(decision_id, success, latency_ms)]
            try:
                if timer is None:
                    report_outcomes(outcome)
                else:
                    t0 = timer()
                    report_outcomes(outcome)
                    outcome_s += timer() - t0
            except NotFound:
                expired += 1
            records[index] = RequestRecord(arrived, server.id, latency_ms, success, explored)
            server.lat_sum += latency_ms
            server.done += 1
            server.failed += not success
            if server.queue:
                start(server, server.queue.popleft(), now)
            else:
                server.account(now)
                server.busy -= 1
        else:
            # --- load reports ------------------------------------------------
            span = now - last_report
            last_report = now
            batch = []
            for server in servers:
                server.account(now)
                cpu = min(100.0, 100.0 * server.busy_area / (server.workers * span))
                server.busy_area = 0.0
                if server.done:
                    server.last_mean_ms = server.lat_sum / server.done
                error_rate = server.failed / server.done if server.done else 0.0
                active = server.busy + len(server.queue)
                sample = LoadSample(cpu, 0.0, active, server.last_mean_ms, error_rate)
                batch.append(LoadReportIn(pool, server.id, sample))
                loads.append(LoadRecord(now, server.id, cpu, active, server.last_mean_ms, error_rate))
                server.lat_sum, server.done, server.failed = 0.0, 0, 0
            report_load(batch)
            if arriving or len(heap) > 0:
                push(heap, (now + interval_s, next(seq), _REPORT, None))

    timing = None
    if timer is not None:
        timing = CoreTiming(select_s, len(records), outcome_s, len(records))
    return SimResult(
        scenario=scenario,
        strategy=strategy,
        strategy_params=params,
        records=tuple(records),
        loads=tuple(loads),
        end_s=last_done,
        expired=expired,
        strategy_stats=dict(core.pool(pool).strategy.stats()),
        timing=timing,
    )
