"""Discrete-event simulation of backends routed by the real ``DecisionCore``.

Simulated time drives a virtual clock that the core and its strategy read, so
the code that decides in the service decides here too, in process: every
arrival calls ``core.select``, every completion ``core.report_outcomes``, and
every load-report interval ``core.report_load``. Nothing here reads the wall
clock unless a ``timer`` is passed to measure the core's own cost.

What a backend does, in simulated time (the real ``backend-sim`` does the same):

- ``workers`` requests are served at once, the rest wait in one FIFO queue;
- a request's service time is drawn when its service starts, with the mean
  ``SimServer.mean_service_ms(start)`` (slowdown phases apply);
- every server reports its load at time 0 and then every interval;
- during an ``outage`` phase a request fails at once, without using a worker,
  and the server sends no load report (the core sees it stale after the TTL);
- with ``timeout_ms`` a request not answered by its deadline fails with the
  deadline as latency, and leaves the queue or has its service cut short,
  freeing the worker, as a gRPC server does when the client cancels.

Decisions ``"local"`` (the SDK's ``decisions="local"``; see ``_sim_local``):
``clients`` simulated clients, each arrival going to one of them drawn with a
seeded generator of its own, decide from routing tables instead of calling
``core.select``. The core's pool is turned into a table every push interval
(the service's ``route_push_interval_ms``, 10 ms by default) and every client
takes it at once, before any traffic too (as a client waits for its first table);
the core learns from the clients' outcomes, sent as local outcomes in batches
every ``outcome_interval_ms`` (the SDK's flush interval, 5 ms), with each client's
in-flight counts that moved (the core adds them to the table's counts). A client without a
candidate asks the core, as the SDK does. Central runs draw the same random
numbers as before local mode existed, so their results are unchanged.

Probes (a strategy with ``use_probes``, e.g. ``prequal``; the core's instance and
every client's): a probe reads the simulated server's requests in flight (busy
workers plus queue) when it is sent and its answer reaches the strategy
``probe_delay_ms`` later, with the server's own latency estimate: the moving
average of the latencies of the requests that arrived when as many were in
flight as now, so the latency a request sent now can expect (without an answer
at that count, the nearest count's, in proportion to the requests in flight;
0, "unknown", after 5 s without any answer). A server in an outage answers no
probe.

Traces and provisioning (``curve``, ``provisioner``; see ``_provisioning``): with a
``TraceCurve`` the open-loop arrivals follow the trace's rate instead of the scenario's;
with a ``Provisioner`` the pool's servers come and go. The run starts with the
provisioner's count of copies of its template (ids ``<id>-0``, ``<id>-1``, ...), and every
``interval_sim`` it decides how many to ask for: a new server is registered with the core
(and reports its load at once) ``lead_sim`` after it was asked for; on a scale-down servers
still booting are cancelled first (newest first), then the newest ready ones drain
(``core.drain_server``: no new requests, those queued and in service finish) and are
deregistered when their last request ends. A freed id is used again by the next new
server. Central decisions only.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from loadwarden.policy import (
    Backend,
    IdGenerator,
    InvalidArgument,
    LoadReportIn,
    LoadSample,
    NotFound,
    OutcomeReport,
    Unavailable,
    parse_pool,
)
from loadwarden.policy.strategies.prequal import Probe
from loadwarden.server import CoreLimits, DecisionCore, ServerSpec

from ._config import DECISION_MODES, MAX_REQUESTS, Arrivals, ClosedLoop, Scenario, SimServer
from ._sim_local import LocalClient, TableFeed
from ._summary import LoadRecord, RequestLog, Summary, summarize

if TYPE_CHECKING:
    from ._provision_trace import TraceCurve
    from ._provisioning import Provisioner

# A simulated outcome always arrives, however long the queue: the decision TTL
# only has to outlast the longest simulated latency.
_DECISION_TTL_MS = 86_400_000
# Event kinds, in the heap as (time, seq, kind, payload).
_DONE, _REPORT, _TIMEOUT, _USER, _PUSH, _FLUSH, _PROBE, _SCALE, _READY = 0, 1, 2, 3, 4, 5, 6, 7, 8
# How often a local client's outcomes reach the core, simulated ms: the SDK's outcome_flush_interval_s.
OUTCOME_INTERVAL_MS = 5.0
# A probe's round trip, simulated ms: a small RPC inside one data centre.
PROBE_DELAY_MS = 1.0
# Weight of a new latency in a server's estimate for its in-flight count (about the last 5).
_ESTIMATE_WEIGHT = 0.2
# How long a server's latency estimate stands after its last answer, s: a server serving a few
# requests a second always has one, and one that got none for this long is tried again.
_ESTIMATE_WINDOW_S = 5.0
# The most simulated clients deciding locally.
MAX_CLIENTS = 1_000
# A closed-loop user whose request found no eligible server waits at least this long before the next.
_RETRY_AFTER_S = 0.1
# How many requests between two ``progress`` calls.
PROGRESS_EVERY = 10_000
_CLOCK_ORIGIN_S = 1000.0
_WALL_OFFSET_S = 1_700_000_000.0


@dataclass(frozen=True, slots=True)
class CoreTiming:
    """Time spent inside the decision core, measured with the caller's timer.

    Attributes:
        select_s: Total seconds in ``core.select``.
        selects: Calls to ``core.select``.
        outcome_s: Total seconds in ``core.report_outcomes``.
        outcome_calls: Calls to ``core.report_outcomes`` (one per routed request).
        load_s: Total seconds in ``core.report_load``.
        load_calls: Calls to ``core.report_load`` (one per report interval).
    """

    select_s: float
    selects: int
    outcome_s: float
    outcome_calls: int
    load_s: float = 0.0
    load_calls: int = 0

    @property
    def select_us(self) -> float:
        """Mean µs per ``select``."""
        return self.select_s / self.selects * 1e6 if self.selects else 0.0

    @property
    def outcome_us(self) -> float:
        """Mean µs per ``report_outcomes``."""
        return self.outcome_s / self.outcome_calls * 1e6 if self.outcome_calls else 0.0

    @property
    def core_s(self) -> float:
        """Seconds in the core altogether."""
        return self.select_s + self.outcome_s + self.load_s


@dataclass(frozen=True, slots=True)
class SimResult:
    """Everything one run produced.

    Attributes:
        scenario: What was simulated.
        strategy: Routing strategy registry name.
        strategy_params: Its parameters.
        records: One per request, in arrival order (a ``RequestLog``).
        loads: Every load report sent to the core, in time order.
        end_s: Simulated seconds at the last completion.
        expired: Outcomes the core no longer expected (decision TTL or
            pending-decision bound); 0 in any reasonable scenario.
        strategy_stats: The strategy's ``stats()`` at the end.
        timing: Time inside the core, when ``simulate`` was given a timer.
        counters: ``dropped`` (arrivals over ``max_in_flight``),
            ``unavailable`` (no eligible server), ``timed_out``, ``outage``
            (requests failed at once by a server in an outage phase), ``expired``,
            ``ejections`` (outlier ejections by the pool); with decisions
            ``"local"`` also ``local`` (decisions the clients made),
            ``central`` (those a client without a candidate left to the core),
            ``tables`` (table versions pushed) and ``local_ejections``.
        decisions: ``"central"`` or ``"local"``.
        clients: Simulated clients deciding locally (1 for central).
    """

    scenario: Scenario
    strategy: str
    strategy_params: dict[str, Any]
    records: RequestLog
    loads: tuple[LoadRecord, ...]
    end_s: float
    expired: int
    strategy_stats: dict[str, float] = field(default_factory=dict)
    timing: CoreTiming | None = None
    counters: dict[str, int] = field(default_factory=dict)
    decisions: str = "central"
    clients: int = 1

    def summary(self, warmup: int = 0, curve_window: int = 500, warmup_s: float = 0.0) -> Summary:
        """Statistics over the requests after the warm-up; see ``summarize``."""
        ids = [s.id for s in self.scenario.servers]
        return summarize(self.records, ids, warmup=warmup, curve_window=curve_window, warmup_s=warmup_s)


class _VirtualClock:
    """The core's clock: simulated seconds (plus an origin), set by the event loop only."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = _CLOCK_ORIGIN_S

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return _WALL_OFFSET_S + self.now


class _Server:
    """Run-time state of one simulated server.

    ``busy <= workers``; ``queue`` is FIFO, so with one timeout for every
    request its deadlines ascend and only its head can be the next to time out:
    at most one deadline event per server is pending (``deadline_pending``).
    """

    __slots__ = (
        "busy",
        "busy_area",
        "changed_at",
        "constant",
        "deadline_pending",
        "done",
        "estimates",
        "failed",
        "id",
        "index",
        "last_answer",
        "last_mean_ms",
        "lat_sum",
        "mean_s",
        "p_fail",
        "queue",
        "scheduled",
        "spec",
        "workers",
    )

    def __init__(self, spec: SimServer, index: int) -> None:
        self.spec = spec
        self.index = index
        self.id = spec.id
        self.workers = spec.workers
        self.mean_s = spec.base_ms / spec.speed / 1000.0
        self.constant = spec.service == "constant"
        self.p_fail = spec.failure_probability
        self.scheduled = bool(spec.schedule)
        self.busy = 0
        self.queue: deque[list[Any]] = deque()
        self.deadline_pending = False
        # Worker-seconds busy since the last load report, up to ``changed_at``.
        self.busy_area = 0.0
        self.changed_at = 0.0
        # Completions since the last load report.
        self.lat_sum = 0.0
        self.done = 0
        self.failed = 0
        self.last_mean_ms = 0.0
        # [latency EWMA ms, time of its last answer s] of the requests that arrived with ``i`` in
        # flight (None: none yet); every answer came within ``_ESTIMATE_WINDOW_S`` of the next.
        self.estimates: list[list[float] | None] = []
        self.last_answer = -math.inf

    def learn(self, rif: int, latency_ms: float, now: float) -> None:
        """Folds in the latency of a request that arrived with ``rif`` requests in flight; an
        estimate older than ``_ESTIMATE_WINDOW_S`` is replaced, not averaged."""
        since = now - _ESTIMATE_WINDOW_S
        if self.last_answer < since:
            self.estimates = []
        self.last_answer = now
        estimates = self.estimates
        if rif >= len(estimates):
            estimates.extend([None] * (rif + 1 - len(estimates)))
        entry = estimates[rif]
        if entry is None or entry[1] < since:
            estimates[rif] = [latency_ms, now]
        else:
            entry[0] += _ESTIMATE_WEIGHT * (latency_ms - entry[0])
            entry[1] = now

    def estimate(self, rif: int, now: float) -> float:
        """The latency a request arriving now with ``rif`` in flight can expect, ms: the estimate
        for that count, else the nearest one's (below first) in proportion to the requests in
        flight; 0 (unknown) without an answer in the last ``_ESTIMATE_WINDOW_S``."""
        if self.last_answer < now - _ESTIMATE_WINDOW_S:
            return 0.0
        estimates = self.estimates
        top = len(estimates) - 1
        for i in itertools.chain(range(min(rif, top), -1, -1), range(rif + 1, top + 1)):
            entry = estimates[i]
            if entry is not None:
                return entry[0] * (rif + 1) / (i + 1)
        return 0.0

    def account(self, now: float) -> None:
        """Adds busy worker-time up to ``now``; call before ``busy`` changes."""
        self.busy_area += self.busy * (now - self.changed_at)
        self.changed_at = now

    def down(self, now: float) -> bool:
        """Whether an outage phase covers ``now``."""
        if not self.scheduled:
            return False
        phase = self.spec.phase_at(now)
        return phase is not None and phase.outage


def _build_core(
    scenario: Scenario, strategy: str, params: Mapping[str, Any], clock: Any, rng: random.Random
) -> DecisionCore:
    limits = CoreLimits(
        decision_ttl_ms=_DECISION_TTL_MS,
        max_pending_decisions=MAX_REQUESTS,
        max_servers_per_pool=max(10_000, len(scenario.servers)),
    )
    core = DecisionCore(limits, clock=clock, rng=rng, ids=IdGenerator("sim"))
    values = dict(scenario.pool_settings)
    # Without a TTL from the scenario, reports come every interval, so a server is never stale
    # unless an outage stops its reports.
    values.setdefault("load_report_ttl_ms", int(max(10_000, math.ceil(3 * scenario.load_report_interval_ms))))
    values["strategy"] = strategy
    values["strategy_params"] = dict(params)
    try:
        settings, _ = parse_pool(scenario.pool, "pool", values, "sim", limits.max_servers_per_pool)
        specs = [ServerSpec(s.id, f"sim:{i}", s.weight) for i, s in enumerate(scenario.servers)]
        core.configure_pool(settings, specs, where="sim")
    except InvalidArgument as exc:
        name = exc.field.removeprefix("sim.")
        if not name.startswith(("strategy", "servers")):
            name = f"pool_settings.{name}"
        raise ValueError(f"{name}: {exc.problem}") from None
    return core


def simulate(
    scenario: Scenario,
    strategy: str = "round_robin",
    strategy_params: Mapping[str, Any] | None = None,
    *,
    timer: Callable[[], float] | None = None,
    progress: Callable[[int], None] | None = None,
    decisions: str = "central",
    clients: int = 1,
    push_interval_ms: float | None = None,
    outcome_interval_ms: float = OUTCOME_INTERVAL_MS,
    probe_delay_ms: float = PROBE_DELAY_MS,
    curve: TraceCurve | None = None,
    provisioner: Provisioner | None = None,
) -> SimResult:
    """Runs ``scenario`` with the real decision core routing by ``strategy``.

    The same scenario (seed included) gives the same result, record for record.
    In open loop, arrival times, request sizes and failure draws depend on the
    seed only, not on the strategy, so strategies are compared on identical
    traffic; in closed loop each request's size and failure draw are the
    same, while its start depends on when the user's previous one ended.

    Args:
        scenario: Servers, traffic and seed.
        strategy: A name registered in ``loadwarden.policy.strategies.STRATEGIES``.
        strategy_params: Its parameters by name; defaults when None.
        timer: When given (e.g. ``time.perf_counter``), the seconds spent in
            ``core.select``, ``core.report_outcomes`` and ``core.report_load``
            are measured with it and returned as ``SimResult.timing``. It never
            affects the run.
        progress: Called with the number of requests started since the last
            call, every ``PROGRESS_EVERY`` requests and once at the end.
        decisions: ``"central"`` (every arrival asks ``core.select``) or
            ``"local"`` (``clients`` clients decide from pushed tables).
        clients: Clients deciding locally, 1-``MAX_CLIENTS`` (ignored for central).
        push_interval_ms: Time between two table pushes, simulated ms; the
            service's default ``route_push_interval_ms`` when None.
        outcome_interval_ms: Time between two batches of local outcomes, simulated ms.
        probe_delay_ms: Time from a probe to its answer, simulated ms, >= 0 (strategies
            with ``use_probes`` only).
        curve: Open loop: arrivals follow this trace (until the scenario's ``duration_s``)
            instead of the scenario's rate.
        provisioner: Servers come and go as it decides (see the module's docstring); the
            scenario's servers are replaced by its initial count of its template. Central
            decisions only; it is bound to this run (``Provisioner.bind``).

    Raises:
        ValueError: unknown strategy, bad parameters or pool settings, naming
            ``strategy``, ``strategy_params.<name>`` or ``pool_settings.<key>``;
            or ``decisions``, ``clients``, ``push_interval_ms``, ``outcome_interval_ms``,
            ``probe_delay_ms``, ``provisioner``.
    """
    if decisions not in DECISION_MODES:
        raise ValueError(f"decisions: must be one of {', '.join(DECISION_MODES)}, got {decisions!r}")
    local = decisions == "local"
    if isinstance(clients, bool) or not isinstance(clients, int) or not 1 <= clients <= MAX_CLIENTS:
        raise ValueError(f"clients: must be an integer in [1, {MAX_CLIENTS}], got {clients!r}")
    if push_interval_ms is None:
        push_interval_ms = float(CoreLimits().route_push_interval_ms)
    for name, value in (("push_interval_ms", push_interval_ms), ("outcome_interval_ms", outcome_interval_ms)):
        if not 0 < value < math.inf:
            raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
    if not 0 <= probe_delay_ms < math.inf:
        raise ValueError(f"probe_delay_ms: must be a finite number >= 0, got {probe_delay_ms!r}")
    probe_delay_s = probe_delay_ms / 1000.0
    if provisioner is not None and local:
        raise ValueError('provisioner: servers come and go with central decisions only, got decisions "local"')
    params = dict(strategy_params or {})
    master = random.Random(scenario.seed)
    traffic = random.Random(master.getrandbits(64))  # arrival times, request sizes, failure draws
    routing = random.Random(master.getrandbits(64))  # the core's and its strategy's RNG
    thinking = random.Random(master.getrandbits(64))  # closed-loop think times
    clock = _VirtualClock()
    template: SimServer | None = None
    if provisioner is not None:
        template = provisioner.template
        initial = provisioner.bind(clock, timer)
        scenario = replace(scenario, servers=tuple(replace(template, id=f"{template.id}-{k}") for k in range(initial)))
    core = _build_core(scenario, strategy, params, clock, routing)
    pool = scenario.pool
    # Local mode only, drawn after the others so central runs see the same numbers as ever.
    n_clients = clients if local else 0
    splitting = random.Random(master.getrandbits(64)) if local else None  # which client gets an arrival
    use_probes = getattr(core.pool(pool).strategy, "use_probes", None)  # the strategy takes simulated probes
    probing = use_probes is not None
    feed = TableFeed()
    push_s = push_interval_ms / 1000.0
    flush_s = outcome_interval_ms / 1000.0
    outbox: list[OutcomeReport] = []  # local outcomes not yet delivered to the core
    local_decisions = central_decisions = 0
    servers = [_Server(s, i) for i, s in enumerate(scenario.servers)]
    by_id = {s.id: s for s in servers}

    arrivals = scenario.arrivals
    closed = isinstance(arrivals, ClosedLoop)
    limit = min(arrivals.requests or MAX_REQUESTS, MAX_REQUESTS)
    horizon = arrivals.duration_s if arrivals.duration_s is not None else math.inf
    interval_s = scenario.load_report_interval_ms / 1000.0
    timeout_s = scenario.timeout_ms / 1000.0 if scenario.timeout_ms is not None else math.inf
    timeout_ms = scenario.timeout_ms or 0.0
    max_in_flight = MAX_REQUESTS
    varying: Arrivals | None = None
    rate = peak = 0.0
    think_mean_s = 0.0
    if isinstance(arrivals, Arrivals):
        rate = peak = arrivals.rate_per_s
        if arrivals.max_in_flight is not None:
            max_in_flight = arrivals.max_in_flight
        if arrivals.varies:
            varying = arrivals
            peak = arrivals.peak_rate_per_s
    else:
        think_mean_s = arrivals.think_ms / 1000.0

    expovariate, uniform = traffic.expovariate, traffic.random
    select, report_outcomes, report_load = core.select, core.report_outcomes, core.report_load
    push, pop = heapq.heappush, heapq.heappop
    seq = itertools.count()  # equal-time events run in the order they were scheduled
    heap: list[tuple[float, int, int, Any]] = []
    log = RequestLog(s.id for s in scenario.servers)
    times, server_col, latencies, flags = log.time_s, log.server, log.latency_ms, log.flags
    explored_flag = RequestLog.EXPLORED
    loads: list[LoadRecord] = []
    select_s = outcome_s = load_s = 0.0
    selects = outcome_calls = load_calls = 0
    expired = dropped = unavailable = timed_out = outage = 0
    in_flight = 0
    pool_state = core.pool(pool)
    issued = 0
    reported = 0  # requests already passed to ``progress``
    counted = 0  # arrivals since the last scaling decision (provisioning)

    def probe(backend: Backend, receive: Callable[[Probe], None]) -> None:
        """A simulated probe: the server's state now, delivered ``probe_delay_ms`` later."""
        server = by_id.get(backend.id)
        now = clock.now - _CLOCK_ORIGIN_S
        if server is None or (server.scheduled and server.down(now)):
            return
        rif = server.busy + len(server.queue)
        push(heap, (now + probe_delay_s, next(seq), _PROBE, (receive, Probe(backend, rif, server.estimate(rif, now)))))

    if use_probes is not None:
        use_probes(probe)
    locals_ = [LocalClient(clock, random.Random(master.getrandbits(64)), probe) for _ in range(n_clients)]

    def next_rate_arrival(after: float) -> float:
        """The next arrival time after ``after``: Poisson at ``rate``, thinned when it varies."""
        if varying is None:
            return after + expovariate(rate)
        t = after
        while True:
            t += expovariate(peak)
            if t > horizon or uniform() * peak <= varying.rate_at(t):
                return t

    next_open_arrival: Callable[[float], float] = (
        curve.arrivals(horizon, expovariate, uniform) if curve is not None else next_rate_arrival
    )

    def finish(request: list[Any], server: _Server | None, now: float, success: bool, latency_ms: float) -> None:
        """Records the answer of a routed request and reports its outcome to the core."""
        nonlocal expired, outcome_s, outcome_calls, in_flight
        index = request[0]
        in_flight -= 1
        latencies[index] = latency_ms
        if success:
            flags[index] |= 1
        if server is not None:
            server.lat_sum += latency_ms
            server.done += 1
            server.failed += not success
            if probing:
                server.learn(request[6], latency_ms, now)
        decision = request[4]
        if isinstance(decision, tuple):  # (client, LocalDecision): the client settles it, the core learns later
            client, choice = decision
            outbox.append(client.finish(choice, success, latency_ms))
            if closed:
                schedule_user(now)
            return
        outcome = [OutcomeReport(decision, success, latency_ms)]
        try:
            if timer is None:
                report_outcomes(outcome)
            else:
                t0 = timer()
                report_outcomes(outcome)
                outcome_s += timer() - t0
                outcome_calls += 1
        except NotFound:
            expired += 1
        if closed:
            schedule_user(now)

    def start_next(server: _Server, now: float) -> None:
        """Fills ``server``'s free workers from its queue (call after ``busy`` dropped)."""
        nonlocal timed_out, outage
        queue = server.queue
        while server.busy < server.workers and queue:
            request = queue.popleft()
            if server.scheduled and server.down(now):
                outage += 1
                finish(request, server, now, False, (now - request[1]) * 1000.0)
                continue
            server.account(now)
            server.busy += 1
            begin(server, request, now)

    def begin(server: _Server, request: list[Any], now: float) -> None:
        """Starts serving ``request`` (a worker is already counted busy)."""
        mean_s = server.spec.mean_service_ms(now) / 1000.0 if server.scheduled else server.mean_s
        end = now + (mean_s if server.constant else request[2] * mean_s)
        deadline = request[1] + timeout_s
        if end >= deadline:
            end = deadline
            request[5] = True  # cut short at the deadline
        push(heap, (end, next(seq), _DONE, (server, request)))

    def arrive(now: float) -> None:
        """One request starts at ``now``: drawn, routed, queued or served."""
        nonlocal issued, in_flight, dropped, unavailable, select_s, selects, outage
        nonlocal local_decisions, central_decisions, counted
        work, u = expovariate(1.0), uniform()  # drawn for every request, whatever the routing
        index = issued
        issued += 1
        counted += 1
        times.append(now)
        latencies.append(0.0)
        if not closed and in_flight >= max_in_flight:
            dropped += 1
            server_col.append(-1)
            flags.append(0)
            return
        decision: Any = None
        if splitting is not None:
            client = locals_[splitting.randrange(n_clients)]
            if timer is None:
                mine = client.decide()
            else:
                t0 = timer()
                mine = client.decide()
                select_s += timer() - t0
                selects += 1
            if mine is not None:
                local_decisions += 1
                decision = (client, mine)
                server_id, explored = mine.server.id, mine.explored
        if decision is None:
            try:
                if timer is None:
                    chosen = select(pool)
                else:
                    t0 = timer()
                    chosen = select(pool)
                    select_s += timer() - t0
                    selects += 1
            except Unavailable:
                unavailable += 1
                server_col.append(-1)
                flags.append(0)
                if closed:
                    schedule_user(now, _RETRY_AFTER_S)
                return
            central_decisions += splitting is not None
            decision, server_id, explored = chosen.decision_id, chosen.server.id, chosen.explored
        server = by_id[server_id]
        server_col.append(server.index)
        flags.append(explored_flag if explored else 0)
        in_flight += 1
        # [index, arrived, work, failure draw, decision id or (client, local decision), cut short at the
        # deadline, requests in flight at the server as it arrived]
        request = [index, now, work, u, decision, False, server.busy + len(server.queue)]
        if server.scheduled and server.down(now):
            outage += 1
            finish(request, server, now, False, 0.0)
            return
        if server.busy < server.workers:
            server.account(now)
            server.busy += 1
            begin(server, request, now)
        else:
            server.queue.append(request)
            if timeout_s < math.inf and not server.deadline_pending:
                server.deadline_pending = True
                push(heap, (now + timeout_s, next(seq), _TIMEOUT, server))

    # --- provisioning: servers asked for, booting, ready, draining -------------------------
    free_slots: list[int] = []  # numbers of ids freed by drained servers (a heap: lowest first)
    next_slot = len(servers)
    slot_of = {s.id: i for i, s in enumerate(servers)}
    booting: dict[int, None] = {}  # tokens of servers asked for, in the order asked (cancelled newest first)
    tokens = itertools.count()
    ready_list = list(servers)  # routable servers, in the order they became ready (drained newest first)
    draining: set[_Server] = set()

    def note(now: float) -> None:
        if provisioner is not None:
            provisioner.record(now, len(ready_list), len(booting), len(draining))

    def remove(server: _Server, now: float) -> None:
        """A drained server leaves the pool (its id free again)."""
        core.deregister_server(pool, server.id)
        servers.remove(server)
        del by_id[server.id]
        heapq.heappush(free_slots, slot_of.pop(server.id))
        note(now)

    def start_server(now: float) -> None:
        """A server asked for ``lead_sim`` ago is registered with the core and reports its load."""
        nonlocal next_slot
        assert template is not None
        if free_slots:
            slot = heapq.heappop(free_slots)
        else:
            slot, next_slot = next_slot, next_slot + 1
        server_id = f"{template.id}-{slot}"
        server = _Server(replace(template, id=server_id), log.add_server(server_id))
        server.changed_at = now
        slot_of[server_id] = slot
        servers.append(server)
        by_id[server_id] = server
        ready_list.append(server)
        core.register_server(pool, ServerSpec(server_id, f"sim:{slot}", template.weight))
        report_load([LoadReportIn(pool, server_id, LoadSample(0.0, 0.0, 0, 0.0, 0.0))])
        loads.append(LoadRecord(now, server_id, 0.0, 0, 0.0, 0.0))
        note(now)

    def scale(now: float) -> None:
        """One scaling decision: ask for servers, or cancel booting ones and drain ready ones."""
        nonlocal counted
        assert provisioner is not None
        asked = len(ready_list) + len(booting)
        desired = provisioner.decide(now, asked, counted)
        counted = 0
        if desired > asked:
            for _ in range(desired - asked):
                token = next(tokens)
                booting[token] = None
                push(heap, (now + provisioner.lead_sim, next(seq), _READY, token))
        elif desired < asked:
            surplus = asked - desired
            while surplus and booting:
                booting.popitem()  # the newest asked for
                surplus -= 1
            while surplus and ready_list:
                server = ready_list.pop()
                surplus -= 1
                core.drain_server(pool, server.id, True)
                if server.busy or server.queue:
                    draining.add(server)
                else:
                    remove(server, now)
        note(now)

    def deliver() -> None:
        """The local outcomes sent since the last batch reach the core, and with them every
        client's in-flight counts that moved."""
        nonlocal outcome_s, outcome_calls, expired
        for i, client in enumerate(locals_):
            counts = client.in_flight_report()
            if counts is not None:
                core.report_in_flight([counts], "", f"client-{i}")
        if not outbox:
            return
        batch = outbox[:]
        outbox.clear()
        try:
            if timer is None:
                report_outcomes(batch)
            else:
                t0 = timer()
                report_outcomes(batch)
                outcome_s += timer() - t0
                outcome_calls += 1
        except NotFound:  # the pool lost every server named: none in a simulation
            expired += len(batch)

    def push_table(now: float) -> None:
        """The core's table reaches every client, when it changed since the last push."""
        table = feed.build(pool_state, now + _CLOCK_ORIGIN_S)
        if table is not None:
            for client in locals_:
                client.apply(table)

    def schedule_user(now: float, at_least: float = 0.0) -> None:
        """A closed-loop user got its answer at ``now``: it thinks, then sends its next request."""
        think = thinking.expovariate(1.0 / think_mean_s) if think_mean_s > 0 else 0.0
        at = now + max(think, at_least)
        if issued + pending_users[0] < limit and at <= horizon:
            pending_users[0] += 1
            push(heap, (at, next(seq), _USER, None))

    pending_users = [0]  # users thinking, whose next request is already scheduled
    now = 0.0
    last_report = 0.0
    last_done = 0.0
    if closed:
        assert isinstance(arrivals, ClosedLoop)
        for _ in range(min(arrivals.users, limit)):
            think = thinking.expovariate(1.0 / think_mean_s) if think_mean_s > 0 else 0.0
            if think <= horizon:
                pending_users[0] += 1
                push(heap, (think, next(seq), _USER, None))
        next_arrival = math.inf
        arriving = False
    else:
        next_arrival = next_open_arrival(0.0)
        arriving = next_arrival <= horizon
    if provisioner is not None:
        note(0.0)
        if provisioner.interval_sim <= horizon:
            push(heap, (provisioner.interval_sim, next(seq), _SCALE, None))
    # Every backend reports once as it starts, before any traffic (as BackendReporter does), so
    # the core knows each report's age from the first selection on; one in an outage stays silent.
    first = [server for server in servers if not server.down(0.0)]
    if first:
        report_load([LoadReportIn(pool, s.id, LoadSample(0.0, 0.0, 0, 0.0, 0.0)) for s in first])
        loads.extend(LoadRecord(0.0, s.id, 0.0, 0, 0.0, 0.0) for s in first)
    push(heap, (interval_s, next(seq), _REPORT, None))
    # Periodic events in the heap (load reports; table pushes and outcome batches in local mode):
    # each is scheduled again only while other events are pending or arrivals are to come.
    periodic = 1 + (provisioner is not None and provisioner.interval_sim <= horizon)
    if local:
        push_table(0.0)  # every client has its first table before the first request, as it waits for it
        push(heap, (push_s, next(seq), _PUSH, None))
        push(heap, (flush_s, next(seq), _FLUSH, None))
        periodic = 3
    while heap:
        if arriving and next_arrival < heap[0][0]:
            # --- open-loop arrival ---------------------------------------------
            now = next_arrival
            clock.now = now + _CLOCK_ORIGIN_S
            arrive(now)
            next_arrival = next_open_arrival(now)
            arriving = issued < limit and next_arrival <= horizon
            if progress is not None and issued - reported >= PROGRESS_EVERY:
                progress(issued - reported)
                reported = issued
            continue

        t, _, kind, payload = pop(heap)
        now = t
        clock.now = t + _CLOCK_ORIGIN_S
        if kind == _DONE:
            # --- completion (or service cut short at the deadline) --------------
            server, request = payload
            last_done = now
            if request[5]:
                timed_out += 1
                finish(request, server, now, False, timeout_ms)
            else:
                finish(request, server, now, request[3] >= server.p_fail, (now - request[1]) * 1000.0)
            server.account(now)
            server.busy -= 1
            if server.queue:
                start_next(server, now)
            elif draining and not server.busy and server in draining:
                draining.discard(server)
                remove(server, now)
        elif kind == _TIMEOUT:
            # --- deadline of the request at the head of a queue -----------------
            server = payload
            server.deadline_pending = False
            queue = server.queue
            while queue and queue[0][1] + timeout_s <= now:  # still queued at its deadline: it leaves
                timed_out += 1
                last_done = now
                finish(queue.popleft(), server, now, False, timeout_ms)
            if queue:
                server.deadline_pending = True
                push(heap, (queue[0][1] + timeout_s, next(seq), _TIMEOUT, server))
        elif kind == _USER:
            # --- closed-loop user sends its next request ------------------------
            pending_users[0] -= 1
            if issued < limit:
                arrive(now)
                if progress is not None and issued - reported >= PROGRESS_EVERY:
                    progress(issued - reported)
                    reported = issued
        elif kind == _PROBE:
            # --- a probe's answer reaches the strategy ------------------------------
            receive, answer = payload
            receive(answer)
        elif kind == _SCALE:
            # --- a scaling decision -------------------------------------------------
            assert provisioner is not None
            periodic -= 1
            scale(now)
            after = now + provisioner.interval_sim
            if after <= horizon * (1 + 1e-12):
                periodic += 1
                push(heap, (after, next(seq), _SCALE, None))
        elif kind == _READY:
            # --- a server asked for is ready ------------------------------------------
            if payload in booting:
                del booting[payload]
                start_server(now)
        elif kind == _FLUSH:
            # --- local outcomes reach the core ----------------------------------
            periodic -= 1
            deliver()
            if arriving or len(heap) > periodic:
                periodic += 1
                push(heap, (now + flush_s, next(seq), _FLUSH, None))
        elif kind == _PUSH:
            # --- routing tables reach the clients ---------------------------------
            periodic -= 1
            push_table(now)
            if arriving or len(heap) > periodic:
                periodic += 1
                push(heap, (now + push_s, next(seq), _PUSH, None))
        else:
            # --- load reports ------------------------------------------------
            periodic -= 1
            span = now - last_report
            last_report = now
            batch = []
            for server in servers:
                server.account(now)
                cpu = min(100.0, 100.0 * server.busy_area / (server.workers * span))
                server.busy_area = 0.0
                if server.scheduled and server.down(now):
                    continue  # a server in an outage sends nothing; its counts carry over
                if server.done:
                    server.last_mean_ms = server.lat_sum / server.done
                error_rate = server.failed / server.done if server.done else 0.0
                active = server.busy + len(server.queue)
                sample = LoadSample(cpu, 0.0, active, server.last_mean_ms, error_rate)
                batch.append(LoadReportIn(pool, server.id, sample))
                loads.append(LoadRecord(now, server.id, cpu, active, server.last_mean_ms, error_rate))
                server.lat_sum, server.done, server.failed = 0.0, 0, 0
            if batch:
                if timer is None:
                    report_load(batch)
                else:
                    t0 = timer()
                    report_load(batch)
                    load_s += timer() - t0
                    load_calls += 1
            if arriving or len(heap) > periodic:
                periodic += 1
                push(heap, (now + interval_s, next(seq), _REPORT, None))

    if progress is not None and issued > reported:
        progress(issued - reported)
    timing = None
    if timer is not None:
        timing = CoreTiming(select_s, selects, outcome_s, outcome_calls, load_s, load_calls)
    members = core.pool(pool).servers.values()
    counters = {
        "dropped": dropped,
        "unavailable": unavailable,
        "timed_out": timed_out,
        "outage": outage,
        "expired": expired,
        "ejections": sum(s.ejections_total for s in members),
    }
    if local:
        deliver()  # nothing is left by then; kept so no outcome is ever lost
        counters.update(
            local=local_decisions,
            central=central_decisions,
            tables=feed.version,
            local_ejections=sum(c.ejections for c in locals_),
        )
    return SimResult(
        scenario=scenario,
        strategy=strategy,
        strategy_params=params,
        records=log,
        loads=tuple(loads),
        end_s=last_done,
        expired=expired,
        strategy_stats=dict(core.pool(pool).strategy.stats()),
        timing=timing,
        counters=counters,
        decisions=decisions,
        clients=max(1, n_clients),
    )
