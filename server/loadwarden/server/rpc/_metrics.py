"""Decision metrics through the OpenTelemetry metrics API.

Only the API is used here; ``loadwarden.observability`` builds the MeterProvider
(Prometheus text on the admin port, OTLP). Without one, every instrument is the
API's no-op or proxy and a recording costs one method call.

Two kinds of instruments:

* Synchronous ones (``decisions``, ``denials``, the two histograms) are recorded
  where the event happens: ``ServerMetrics`` is the core's ``DecisionListener``, and
  the gRPC interceptor times the RPCs.
* Everything the core already keeps (queue length, leases, batch sizes, server
  load, ejections, adjustments, rate-limit rejections) is read by callbacks
  registered once per core with ``observe``; they run at collection time only,
  so the decision path pays nothing for them.

Every attribute value is a configured name (pool, server, operation, strategy) or
comes from a fixed set (result, reason, method, code), never a client-supplied
string, so series are bounded by the config limits.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import grpc
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from loadwarden.policy import Operation, Pool

from ..engine._admission import Answer, Denied
from ..engine._core import DecisionCore

Callback = Callable[[CallbackOptions], Iterable[Observation]]

METER_NAME = "loadwarden.server"
DECISION_SERVICE_PREFIX = "/loadwarden.v1.DecisionService/"

# Handler times of decision RPCs, ms: a decision is microseconds, a queued AcquireSlot up to minutes.
DURATION_BUCKETS_MS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1_000, 10_000, 60_000)
# Queue waits, ms: 0 for an immediate grant, up to the longest allowed wait (an hour).
WAIT_BUCKETS_MS = (0, 1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 3_600_000)


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
        self._decisions = self._meter.create_counter(
            "loadwarden.decisions",
            unit="{decision}",
            description="SelectServer decisions (including AcquireSlot with select_server) by pool, strategy "
            "and result: selected or no_eligible_server",
        )
        self._denials = self._meter.create_counter(
            "loadwarden.denials",
            unit="{denial}",
            description="AcquireSlot denials by pool and reason: at_capacity, queue_timeout, no_eligible_server",
        )
        self._queue_wait = self._meter.create_histogram(
            "loadwarden.queue.wait",
            unit="ms",
            explicit_bucket_boundaries_advisory=WAIT_BUCKETS_MS,
            description="Time an AcquireSlot answer waited in its pool's queue (0 for an immediate answer), "
            "by pool and result: granted or denied",
        )
        self.duration = self._meter.create_histogram(
            "loadwarden.decision.duration",
            unit="ms",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_MS,
            description="Server-side handler time of DecisionService RPCs by method and status code",
        )

    # --- events (one call each from the core) ---------------------------------------

    def decided(self, pool: Pool, result: str) -> None:
        """A SelectServer decision on ``pool``: ``RESULT_SELECTED`` or ``RESULT_NO_ELIGIBLE_SERVER``."""
        self._decisions.add(1, {"pool": pool.name, "strategy": pool.settings.strategy, "result": result})

    def answered(self, pool: Pool, answer: Answer) -> None:
        """An AcquireSlot answer on ``pool``: its queue wait, and the denial if it is one."""
        if type(answer) is Denied:
            self._denials.add(1, {"pool": pool.name, "reason": answer.denial.value})
            self._queue_wait.record(answer.queue_wait_s * 1000.0, {"pool": pool.name, "result": "denied"})
        else:
            self._queue_wait.record(answer.queue_wait_s * 1000.0, {"pool": pool.name, "result": "granted"})

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
        meter.create_observable_gauge(
            "loadwarden.server.cpu",
            servers("cpu_percent"),
            unit="%",
            description="CPU of the server's latest load report, 0-100; absent while the report is stale",
        )
        meter.create_observable_gauge(
            "loadwarden.server.memory",
            servers("memory_percent"),
            unit="%",
            description="Memory of the server's latest load report, 0-100; absent while the report is stale",
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
                value: float = getattr(server.load, field)
            else:
                value = getattr(server, field)
            out.append(Observation(value, {"pool": pool.name, "server": server.id}))
    return out


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
                record((time.perf_counter() - start) * 1000.0, {"method": name, "code": _code(context, exc)})
                raise
            record((time.perf_counter() - start) * 1000.0, ok)
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
