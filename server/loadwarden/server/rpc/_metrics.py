"""Decision metrics through the OpenTelemetry metrics API.

Only the API is used here; ``loadwarden.observability`` builds the MeterProvider
(Prometheus text on the admin port, OTLP). Without one, every instrument is the
API's no-op or proxy and a recording costs one method call.

Names follow Prometheus's conventions once the exporter renders them: base units
(seconds; ratios 0-1 named ``_ratio``), ``_total`` on counters, no ``_milliseconds``
or ``_percent``. Two kinds of instruments:

* The histograms (queue wait, RPC handler time, per-server latency) are recorded
  where the event happens: ``ServerMetrics`` is the core's ``DecisionListener``, and
  the gRPC interceptor times the RPCs.
* Everything else is read by callbacks registered once per core with ``observe``;
  they run at collection time only. Decisions and denials are counted in plain
  dicts on the decision path (cheaper than an instrument's ``add``) and read there,
  so every known label set (each pool's results and denial reasons) is present at
  zero from the start; the rest (queue length, leases, batch sizes, per-server
  selections, outcomes, state, traffic share, load, ejections) is what the core
  already keeps.

Every attribute value is a configured name (pool, server, operation, strategy) or
comes from a fixed set (result, reason, state, method, code), never a
client-supplied string, so series are bounded by the config limits (servers per
pool, pools, operations).
"""

from __future__ import annotations

import asyncio
import platform
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import grpc
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from loadwarden.policy import Backend, Health, Operation, Pool

from .._version import VERSION
from ..engine._admission import Answer, Denial, Denied
from ..engine._core import RESULT_NO_ELIGIBLE_SERVER, RESULT_SELECTED, DecisionCore
from ..engine._planner import Planner

Callback = Callable[[CallbackOptions], Iterable[Observation]]

METER_NAME = "loadwarden.server"
DECISION_SERVICE_PREFIX = "/loadwarden.v1.DecisionService/"

# Handler times of decision RPCs, s: a decision is microseconds, a queued AcquireSlot up to minutes.
DURATION_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 10, 60)
# Queue waits, s: 0 for an immediate grant, up to the longest allowed wait (an hour).
WAIT_BUCKETS_S = (0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3_600)
# Backend latencies reported with outcomes, s.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RESULTS = (RESULT_SELECTED, RESULT_NO_ELIGIBLE_SERVER)
REASONS = tuple(denial.value for denial in Denial)
STATES = tuple(health.value for health in Health)
# Traffic share is measured between collections at least this far apart (a second
# reader collecting right after the first reuses the shares it computed).
SHARE_MIN_INTERVAL_S = 1.0


class ServerMetrics:
    """The service's instruments, on one meter; the ``DecisionListener`` of one DecisionCore.

    Args:
        meter_provider: Where the instruments come from; the global provider by default.
            Only with an explicit provider does ``interceptors`` time RPCs: without one,
            metrics are presumed off and the RPC path stays untouched.
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        self._meter = provider.get_meter(METER_NAME)
        self._explicit = meter_provider is not None
        self._observed = False
        # (pool, strategy, result) and (pool, reason) -> count; read by observable counters.
        self._decided: dict[tuple[str, str, str], int] = {}
        self._denied: dict[tuple[str, str], int] = {}
        # Traffic share: selections per (pool, server) at the last computation, and its result.
        self._share_at: float | None = None
        self._share_base: dict[tuple[str, str], int] = {}
        self._shares: dict[tuple[str, str], float] = {}
        self._queue_wait = self._meter.create_histogram(
            "loadwarden.queue.wait",
            unit="s",
            explicit_bucket_boundaries_advisory=WAIT_BUCKETS_S,
            description="Time an AcquireSlot answer waited in its pool's queue (0 for an immediate answer), "
            "by pool and result: granted or denied",
        )
        self.duration = self._meter.create_histogram(
            "loadwarden.decision.duration",
            unit="s",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
            description="Server-side handler time of DecisionService RPCs by method and status code",
        )
        self._latency = self._meter.create_histogram(
            "loadwarden.server.latency",
            unit="s",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
            description="Latency reported with the outcomes of the server's selections (the service's and "
            "clients' own decisions)",
        )

    # --- events (one call each from the core) ---------------------------------------

    def decided(self, pool: Pool, result: str) -> None:
        """A SelectServer decision on ``pool``: ``RESULT_SELECTED`` or ``RESULT_NO_ELIGIBLE_SERVER``."""
        key = (pool.name, pool.settings.strategy, result)
        self._decided[key] = self._decided.get(key, 0) + 1

    def answered(self, pool: Pool, answer: Answer) -> None:
        """An AcquireSlot answer on ``pool``: its queue wait, and the denial if it is one."""
        if type(answer) is Denied:
            key = (pool.name, answer.denial.value)
            self._denied[key] = self._denied.get(key, 0) + 1
            self._queue_wait.record(answer.queue_wait_s, {"pool": pool.name, "result": "denied"})
        else:
            self._queue_wait.record(answer.queue_wait_s, {"pool": pool.name, "result": "granted"})

    def settled(self, pool: Pool, server: Backend, success: bool, latency_ms: float) -> None:
        """An outcome of a selection of ``server``: its latency."""
        self._latency.record(latency_ms / 1000.0, {"pool": pool.name, "server": server.id})

    # --- state read at collection time --------------------------------------------------

    def observe(self, core: DecisionCore) -> None:
        """Registers the callbacks that read ``core``'s state at collection time. Call once.

        The callbacks hold ``core`` weakly, so a stopped service's core can be collected.
        """
        if self._observed:
            raise RuntimeError("ServerMetrics.observe: already observing a core; use one ServerMetrics per core")
        self._observed = True
        ref = weakref.ref(core)
        meter = self._meter

        def every(build: Callable[[DecisionCore], list[Observation]]) -> list[Callback]:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                return _collect(ref, build)

            return [callback]

        def pools(read: Callable[[Pool], float]) -> list[Callback]:
            return every(lambda c: [Observation(read(p), {"pool": p.name}) for p in c.pools()])

        def servers(field: str) -> list[Callback]:
            return every(lambda c: _per_server(c, field))

        def operations(read: Callable[[Operation], float]) -> list[Callback]:
            return every(lambda c: [Observation(read(op), {"operation": n}) for n, op in list(c.operations.items())])

        meter.create_observable_gauge(
            "loadwarden.queue.length",
            pools(lambda p: p.slots.waiting),
            unit="{request}",
            description="AcquireSlot requests waiting in the pool's queue",
        )
        meter.create_observable_gauge(
            "loadwarden.leases.active",
            pools(lambda p: p.slots.in_use),
            unit="{lease}",
            description="Slots held (leases granted and not yet released or reclaimed) in the pool",
        )
        meter.create_observable_gauge(
            "loadwarden.concurrency.limit",
            pools(lambda p: p.slots.current_limit),
            unit="{slot}",
            description="The pool's current concurrency limit (0 means unlimited)",
        )
        meter.create_observable_counter(
            "loadwarden.rate_limit.rejections",
            pools(lambda p: p.slots.rate_limited_total),
            unit="{request}",
            description="AcquireSlot requests refused by the pool's rate limit (RESOURCE_EXHAUSTED)",
        )
        meter.create_observable_counter(
            "loadwarden.leases.reclaimed",
            every(lambda c: [Observation(c.admission.reclaimed_total)]),
            unit="{lease}",
            description="Leases reclaimed because they were neither renewed nor released within their TTL",
        )
        meter.create_observable_counter(
            "loadwarden.decisions",
            every(self._decisions),
            unit="{decision}",
            description="SelectServer decisions (including AcquireSlot with select_server) by pool, strategy "
            "and result: selected or no_eligible_server",
        )
        meter.create_observable_counter(
            "loadwarden.denials",
            every(self._denials),
            unit="{denial}",
            description="AcquireSlot denials by pool and reason: at_capacity, queue_timeout, no_eligible_server",
        )
        meter.create_observable_gauge(
            "loadwarden.build.info",
            [lambda options: [Observation(1, _BUILD)]],
            unit="1",
            description="Always 1; the labels say which loadwarden, Python and grpcio this is",
        )
        meter.create_observable_gauge(
            "loadwarden.server.cpu_ratio",
            servers("cpu_percent"),
            unit="1",
            description="CPU of the server's latest load report, 0-1; absent while the report is stale",
        )
        meter.create_observable_gauge(
            "loadwarden.server.memory_ratio",
            servers("memory_percent"),
            unit="1",
            description="Memory of the server's latest load report, 0-1; absent while the report is stale",
        )
        meter.create_observable_counter(
            "loadwarden.server.selections",
            every(_selections),
            unit="{selection}",
            description="Selections of the server by who decided: service (SelectServer, AcquireSlot with "
            "select_server) or client (a client deciding locally, counted from its outcomes)",
        )
        meter.create_observable_counter(
            "loadwarden.server.outcomes",
            every(_outcomes),
            unit="{outcome}",
            description="Outcomes of the server's selections by result: success, failure, or expired (no "
            "outcome within the decision or lease TTL)",
        )
        meter.create_observable_gauge(
            "loadwarden.server.state",
            every(_states),
            unit="1",
            description="1 for the server's current state (serving, stale, draining, ejected, unhealthy, "
            "degraded), 0 for the others",
        )
        meter.create_observable_gauge(
            "loadwarden.server.traffic_share_ratio",
            every(self._traffic_shares),
            unit="1",
            description="The server's share of its pool's selections (service's and clients') since the "
            "previous collection, 0-1",
        )
        meter.create_observable_gauge(
            "loadwarden.server.in_flight",
            servers("in_flight"),
            unit="{request}",
            description="Selections of the server awaiting their outcome",
        )
        meter.create_observable_counter(
            "loadwarden.server.ejections",
            servers("ejections_total"),
            unit="{ejection}",
            description="Outlier ejections of the server",
        )
        meter.create_observable_counter(
            "loadwarden.server.health_checks",
            every(_health_checks),
            unit="{check}",
            description="Active health checks of the server by result: good, degraded (it answered and said "
            "so, or answered slowly) or failed; absent for servers no health check covers",
        )
        meter.create_observable_gauge(
            "loadwarden.batch.size",
            operations(lambda op: op.size),
            unit="{item}",
            description="The operation's current batch size",
        )
        meter.create_observable_counter(
            "loadwarden.batch.adjustments",
            operations(lambda op: op.adjustments_total),
            unit="{adjustment}",
            description="Changes of the operation's batch size",
        )

    def _decisions(self, core: DecisionCore) -> list[Observation]:
        """Every pool's decisions by result (0 for one not seen yet) under its strategy, and under
        strategies it had before; the counts of deleted pools are dropped."""
        counts = dict(self._decided)
        pools = {pool.name: pool.settings.strategy for pool in core.pools()}
        for key in [key for key in counts if key[0] not in pools]:
            self._decided.pop(key, None)
            del counts[key]
        for name, strategy in pools.items():
            for result in RESULTS:
                counts.setdefault((name, strategy, result), 0)
        return [Observation(n, {"pool": p, "strategy": st, "result": r}) for (p, st, r), n in counts.items()]

    def _denials(self, core: DecisionCore) -> list[Observation]:
        pools = {pool.name for pool in core.pools()}
        for key in [key for key in self._denied if key[0] not in pools]:
            self._denied.pop(key, None)
        return [
            Observation(self._denied.get((name, reason), 0), {"pool": name, "reason": reason})
            for name in sorted(pools)
            for reason in REASONS
        ]

    def _traffic_shares(self, core: DecisionCore) -> list[Observation]:
        now = core.clock.monotonic()
        if self._share_at is None or now - self._share_at >= SHARE_MIN_INTERVAL_S:
            counts = {
                (pool.name, server.id): server.selections_total + server.local_total
                for pool in core.pools()
                for server in list(pool.servers.values())
            }
            base = self._share_base
            deltas = {key: n - base.get(key, 0) for key, n in counts.items()}
            totals: dict[str, int] = {}
            for (pool_name, _), delta in deltas.items():
                totals[pool_name] = totals.get(pool_name, 0) + delta
            self._shares = {key: delta / totals[key[0]] if totals[key[0]] > 0 else 0.0 for key, delta in deltas.items()}
            self._share_base, self._share_at = counts, now
        return [Observation(share, {"pool": p, "server": s}) for (p, s), share in self._shares.items()]

    def observe_planner(self, planner: Planner) -> None:
        """Registers the capacity planner's gauges: each pool's recommended servers by rule
        (``desired``, the answer; ``reactive``, the HPA rule; ``predictive``, for the forecast
        peak) and the forecast peak of each series within the pool's lead time, by bound;
        and the counter of predictive moves (batch sizes and limits moved ahead of a forecast)."""
        ref = weakref.ref(planner)

        def desired(options: CallbackOptions) -> Iterable[Observation]:
            held = ref()
            out: list[Observation] = []
            for plan in list(held.plans.values()) if held is not None else ():
                rec = plan.recommendation
                for rule, value in (
                    ("desired", rec.desired),
                    ("reactive", rec.reactive),
                    ("predictive", rec.predictive),
                ):
                    if value is not None:
                        out.append(Observation(value, {"pool": plan.pool, "rule": rule}))
            return out

        def peaks(options: CallbackOptions) -> Iterable[Observation]:
            held = ref()
            out: list[Observation] = []
            for plan in list(held.plans.values()) if held is not None else ():
                for series, result in plan.forecasts.items():
                    peak = result.peak(plan.recommendation.lead_time_s)
                    if peak is None:
                        continue
                    for bound, value in (("point", peak.value), ("lower", peak.lower), ("upper", peak.upper)):
                        out.append(Observation(value, {"pool": plan.pool, "series": series, "bound": bound}))
            return out

        self._meter.create_observable_gauge(
            "loadwarden.pool.desired_servers",
            [desired],
            unit="{server}",
            description="Servers the capacity planner recommends for the pool, by rule: desired (the answer, "
            "stabilised), reactive (the HPA rule now), predictive (for the forecast peak within the lead time)",
        )
        self._meter.create_observable_gauge(
            "loadwarden.pool.forecast",
            [peaks],
            description="Forecast peak of a pool series within the pool's lead time, by bound (point, lower, "
            "upper): requests_per_s, in_flight, cpu (in servers), latency_ms",
        )

        def moves(options: CallbackOptions) -> Iterable[Observation]:
            held = ref()
            if held is None:
                return []
            # Both labels on every point (the empty one is the other kind's), as the exporter renders them.
            out = [
                Observation(n, {"kind": "limit", "pool": pool, "operation": ""})
                for pool, n in held.predictive.moves_total().items()
            ]
            for name, operation in list(held.core.operations.items()):
                if held.settings.operation(name).predictive:
                    labels = {"kind": "batch_size", "pool": "", "operation": name}
                    out.append(Observation(operation.forecast_adjustments_total, labels))
            return out

        self._meter.create_observable_counter(
            "loadwarden.predictive.moves",
            [moves],
            unit="{move}",
            description="Moves made ahead of a forecast, by kind: batch_size (per predictive operation, pool "
            "empty: batch size changes sized from its forecast load) and limit (per predictive-limit pool, "
            "operation empty: its adaptive limit raised to where the last surge settled)",
        )

    # --- RPC handler time ---------------------------------------------------------------

    def interceptors(self) -> tuple[grpc.aio.ServerInterceptor, ...]:
        """Server interceptors recording ``loadwarden.decision.duration`` for unary DecisionService
        RPCs; none unless built with an explicit meter provider."""
        return (_DurationInterceptor(self.duration),) if self._explicit else ()


def _collect(ref: weakref.ref[DecisionCore], build: Callable[[DecisionCore], list[Observation]]) -> list[Observation]:
    core = ref()
    if core is None:
        return []
    try:
        return build(core)
    except (RuntimeError, KeyError):
        # A periodic (OTLP) reader collects from its own thread; a pool or server changing
        # under it skips this one collection rather than reporting half a picture.
        return []


def _per_server(core: DecisionCore, field: str) -> list[Observation]:
    now = core.clock.monotonic()
    out = []
    for pool in core.pools():
        ttl_s = pool.settings.load_report_ttl_ms / 1000.0
        for server in list(pool.servers.values()):
            if field in ("cpu_percent", "memory_percent"):
                # An old report means "unknown", never "idle": no point rather than a stale one.
                if server.load is None or server.is_stale(now, ttl_s, True):
                    continue
                value: float = getattr(server.load, field) / 100.0
            else:
                value = getattr(server, field)
            out.append(Observation(value, {"pool": pool.name, "server": server.id}))
    return out


def _selections(core: DecisionCore) -> list[Observation]:
    out = []
    for pool in core.pools():
        for server in list(pool.servers.values()):
            out.append(Observation(server.selections_total, {"pool": pool.name, "server": server.id, "by": "service"}))
            out.append(Observation(server.local_total, {"pool": pool.name, "server": server.id, "by": "client"}))
    return out


def _outcomes(core: DecisionCore) -> list[Observation]:
    out = []
    for pool in core.pools():
        for server in list(pool.servers.values()):
            labels = {"pool": pool.name, "server": server.id}
            out.append(Observation(server.outcomes_total - server.failures_total, {**labels, "result": "success"}))
            out.append(Observation(server.failures_total, {**labels, "result": "failure"}))
            out.append(Observation(server.expired_total, {**labels, "result": "expired"}))
    return out


def _health_checks(core: DecisionCore) -> list[Observation]:
    out = []
    for pool in core.pools():
        for server in list(pool.servers.values()):
            probe = server.probe
            if probe is None:
                continue
            labels = {"pool": pool.name, "server": server.id}
            good = probe.checks_total - probe.degraded_total - probe.failed_total
            out.append(Observation(good, {**labels, "result": "good"}))
            out.append(Observation(probe.degraded_total, {**labels, "result": "degraded"}))
            out.append(Observation(probe.failed_total, {**labels, "result": "failed"}))
    return out


def _states(core: DecisionCore) -> list[Observation]:
    now = core.clock.monotonic()
    out = []
    for pool in core.pools():
        for server in list(pool.servers.values()):
            current = pool.health(server, now).value
            for state in STATES:
                out.append(Observation(int(state == current), {"pool": pool.name, "server": server.id, "state": state}))
    return out


_BUILD = {"version": VERSION, "python": platform.python_version(), "grpcio": grpc.__version__}


class _DurationInterceptor(grpc.aio.ServerInterceptor):
    """Times unary DecisionService handlers. Wrapped handlers are cached per method (a fixed set)."""

    def __init__(self, histogram: metrics.Histogram) -> None:
        self._histogram = histogram
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or not method.startswith(DECISION_SERVICE_PREFIX):
            return handler
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, self._wrap(handler, method[len(DECISION_SERVICE_PREFIX) :]))
        return cached[1]

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any], name: str) -> grpc.RpcMethodHandler[Any, Any]:
        # Only unary-unary handlers of the grpc.aio server get here: a coroutine function that
        # takes the aio context (the stubs type RpcMethodHandler for the sync server only).
        behavior = cast(Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], handler.unary_unary)
        record = self._histogram.record
        ok = {"method": name, "code": grpc.StatusCode.OK.name}

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                record(time.perf_counter() - start, {"method": name, "code": _code(context, exc)})
                raise
            record(time.perf_counter() - start, ok)
            return response

        return grpc.unary_unary_rpc_method_handler(
            timed, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )


def _code(context: grpc.aio.ServicerContext, exc: BaseException) -> str:
    """The status name a failed handler ends with: an abort sets it; a cancellation or a bug does not."""
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - a context without code(): judge by the exception
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "CANCELLED" if isinstance(exc, asyncio.CancelledError) else "UNKNOWN"
