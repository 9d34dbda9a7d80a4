"""Tracing of the service's RPCs, on the OpenTelemetry API only.

``ServerTracingInterceptor`` gives every RPC a SERVER span (``loadwarden.v1.DecisionService/SelectServer``),
parented by the W3C trace context in the incoming metadata, with ``rpc.*`` attributes
and the status code; the handler runs inside it. Decision handlers add what explains
the decision through ``record_selection`` / ``record_slot`` / ``record_batch_size``
(all built on ``record_decision``).

Where the spans go is configured by ``loadwarden.observability.configure_tracing``,
before the server starts: a server created while no real TracerProvider is
installed gets no interceptor, and the ``record_*`` helpers return after one
context lookup (the current span does not record).

With the standard ``opentelemetry-instrumentation-grpc`` instrumenting grpc.aio
servers (``GrpcAioInstrumentorServer().instrument()`` before the service starts),
its SERVER span is the RPC's span: this module's interceptor steps aside (never two
spans for one call) and the ``record_*`` helpers add loadwarden's attributes to that
span, which is current while the handler runs.

``DecisionSpans`` links the calls that settle a decision or a lease (ReportOutcome,
ReleaseSlot) to the span of the call that made it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

from .._version import VERSION

if TYPE_CHECKING:
    from loadwarden.policy import BatchAnswer
    from loadwarden.v1 import decision_pb2 as _pb

    from ..engine._core import DecisionCore, Selection

INSTRUMENTATION_NAME = "loadwarden.server"
ATTRIBUTE_PREFIX = "loadwarden."

# Server-side span status is ERROR only for these codes (OTel gRPC semantic
# conventions); a client's mistake (INVALID_ARGUMENT, NOT_FOUND, ...) is not the
# service's error.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_OFF = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)

AttributeValue = str | bool | int | float | tuple[str, ...] | tuple[bool, ...] | tuple[int, ...] | tuple[float, ...]


class _Tracers:
    """The tracer of the global (or a fixed) provider; None while tracing is off."""

    __slots__ = ("_fixed", "_name", "_provider", "_tracer", "_version")

    def __init__(self, name: str, version: str, provider: trace.TracerProvider | None) -> None:
        self._name, self._version = name, version
        self._fixed = provider
        self._provider: trace.TracerProvider | None = None
        self._tracer: trace.Tracer | None = None

    def current(self) -> trace.Tracer | None:
        provider = self._fixed if self._fixed is not None else trace.get_tracer_provider()
        if provider is not self._provider:
            # A no-op or not-yet-configured (proxy) provider means tracing is off.
            tracer = None if isinstance(provider, _OFF) else provider.get_tracer(self._name, self._version)
            self._provider, self._tracer = provider, tracer
        return self._tracer


class _MetadataGetter(Getter[Collection[tuple[str, str | bytes]]]):
    """Reads W3C headers from gRPC metadata (a collection of key/value pairs)."""

    def get(self, carrier: Collection[tuple[str, str | bytes]], key: str) -> list[str] | None:
        values = [v if isinstance(v, str) else v.decode("latin-1") for k, v in carrier if k == key]
        return values or None

    def keys(self, carrier: Collection[tuple[str, str | bytes]]) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


class ServerTracingInterceptor(grpc.aio.ServerInterceptor):
    """A SERVER span per RPC, parented by the caller's W3C trace context.

    Args:
        tracer_provider: Where spans go; the global provider (looked up per RPC) by default.
            Handlers pass through untouched while that is a no-op or proxy provider.
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:

        self._tracers = _Tracers(INSTRUMENTATION_NAME, VERSION, tracer_provider)
        # method -> (handler from the continuation, tracer, traced handler): wrapped once per method.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, trace.Tracer, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        tracer = self._tracers.current()
        if handler is None or tracer is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler and cached[1] is tracer:
            return cached[2]
        traced = _traced_handler(handler, tracer, method)
        if len(self._wrapped) < 1024:  # only registered methods get here; bounded anyway
            self._wrapped[method] = (handler, tracer, traced)
        return traced


def tracing_on() -> bool:
    """Whether a real TracerProvider is installed globally."""
    return not isinstance(trace.get_tracer_provider(), _OFF)


def standard_instrumentation_on() -> bool:
    """Whether ``opentelemetry-instrumentation-grpc`` instruments grpc.aio servers now."""
    try:  # find_spec imports the parents: opentelemetry.instrumentation may be missing too
        if importlib.util.find_spec("opentelemetry.instrumentation.grpc") is None:
            return False
    except ModuleNotFoundError:
        return False
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer

    return bool(GrpcAioInstrumentorServer().is_instrumented_by_opentelemetry)  # a singleton


def server_interceptors() -> tuple[grpc.aio.ServerInterceptor, ...]:
    """The interceptors for the service's grpc.aio server: tracing if it is on now and the
    standard instrumentation does not trace the server already; none otherwise.

    Decided when the server is created (configure tracing before ``start_service``):
    grpc.aio's interceptor pipeline costs a few µs per RPC even when it does nothing.
    """
    return (ServerTracingInterceptor(),) if tracing_on() and not standard_instrumentation_on() else ()


class DecisionSpans:
    """The span contexts of recent decisions and grants by id, so that the calls that settle
    them (ReportOutcome, ReleaseSlot) link to the call that made them.

    Ids are the service's own (never a client's string) and at most ``capacity`` are
    kept, the oldest forgotten first: a decision settled later than that simply has no
    link. Only built while tracing is on, so the decision path pays nothing otherwise.
    """

    MAX_LINKS = 128  # per settling call; the OpenTelemetry SDK's default link limit

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._spans: OrderedDict[str, trace.SpanContext] = OrderedDict()

    def __len__(self) -> int:
        return len(self._spans)

    def remember(self, key: str) -> None:
        """Keeps the current span's context for ``key`` (a decision or lease id)."""
        span = trace.get_current_span()
        if not span.is_recording():
            return
        self._spans[key] = span.get_span_context()
        if len(self._spans) > self._capacity:
            self._spans.popitem(last=False)

    def link(self, keys: Iterable[str], what: str) -> None:
        """Links the current span to the spans that made ``keys`` (``what`` they were)."""
        span = trace.get_current_span()
        if not span.is_recording():
            return
        linked = 0
        for key in keys:
            context = self._spans.pop(key, None)
            if context is None:
                continue
            span.add_link(context, {"loadwarden.link": what})
            linked += 1
            if linked >= self.MAX_LINKS:
                break


def _traced_handler(handler: grpc.RpcMethodHandler, tracer: trace.Tracer, method: str) -> grpc.RpcMethodHandler:
    service, _, name = method.lstrip("/").rpartition("/")
    span_name = f"{service}/{name}"
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

    def start(context: grpc.aio.ServicerContext) -> trace.Span:
        parent = propagate.extract(context.invocation_metadata() or (), getter=_GETTER)
        return tracer.start_span(span_name, parent, SpanKind.SERVER, attributes)

    def wrap_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def traced(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            span = start(context)
            with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
                try:
                    response = await behavior(request_or_iterator, context)
                except BaseException as exc:
                    _finish(span, context, exc)
                    raise
                _finish(span, context, None)
                return response

        return traced

    def wrap_streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def traced(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            span = start(context)
            with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
                try:
                    async for response in behavior(request_or_iterator, context):
                        yield response
                except BaseException as exc:
                    _finish(span, context, exc)
                    raise
                _finish(span, context, None)

        return traced

    def wrap(behavior: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):
            return wrap_streaming(behavior)
        if inspect.iscoroutinefunction(behavior):
            return wrap_unary(behavior)
        return behavior  # a sync behaviour runs on an executor thread: left untraced

    behavior: Callable[..., Any] | None
    if handler.request_streaming and handler.response_streaming:
        behavior, make = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behavior, make = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        behavior, make = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        behavior, make = handler.unary_unary, grpc.unary_unary_rpc_method_handler
    if behavior is None:  # nothing to trace; a handler grpc builds has the behaviour its flags select
        return handler
    return make(
        wrap(behavior),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _finish(span: trace.Span, context: grpc.aio.ServicerContext, exc: BaseException | None) -> None:
    code = _status_code(context, exc)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERRORS:
        details = context.details() if hasattr(context, "details") else None
        description = details if isinstance(details, str) and details else code.name
        span.set_status(Status(StatusCode.ERROR, description))
        if exc is not None and not isinstance(exc, grpc.aio.AbortError):
            span.record_exception(exc)


def _status_code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - a context without code(): judge by the exception
        code = None
    if isinstance(code, grpc.StatusCode):
        return code
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN  # aborted without a code we can see
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


# --- decision attributes ---------------------------------------------------------


def record_decision(**attributes: Any) -> None:
    """Sets ``loadwarden.<name>`` attributes on the current span, if it records.

    ``None`` values are skipped. Strings, bools, ints and floats are kept; a mapping
    becomes one ``"key=value,..."`` string (``q_values={"s1": -3.2}`` ->
    ``"s1=-3.2"``); another sequence becomes a tuple of one primitive type (mixed
    items become strings). Example: ``record_decision(pool="api", explored=False)``.
    """
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attributes(
        {ATTRIBUTE_PREFIX + name: _attribute(value) for name, value in attributes.items() if value is not None}
    )


def _attribute(value: Any) -> AttributeValue:
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return ",".join(f"{k}={_scalar(v)}" for k, v in value.items())
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, (Sequence, set, frozenset)):
        items = tuple(value)
        kinds = {type(item) for item in items}
        if len(kinds) == 1 and kinds <= {str, bool, int, float}:
            return items
        if kinds <= {int, float} and bool not in kinds:
            return tuple(float(item) for item in items)
        return tuple(str(item) for item in items)
    return str(value)


def _scalar(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def record_selection(core: DecisionCore, pool: str, choice: Selection) -> None:
    """SelectServer's attributes; a learning strategy's epsilon too (read only when tracing)."""
    if not trace.get_current_span().is_recording():
        return
    epsilon = core.pool(pool).strategy.stats().get("epsilon")
    record_decision(
        pool=pool,
        strategy=choice.strategy,
        server_id=choice.server.id,
        explored=choice.explored,
        decision_id=choice.decision_id,
        epsilon=epsilon,
    )


def record_slot(pool: str, response: _pb.AcquireSlotResponse) -> None:
    """AcquireSlot's attributes: grant or denial, why, how long it waited, which server."""
    if not trace.get_current_span().is_recording():
        return
    record_decision(
        pool=pool,
        granted=response.granted,
        reason=response.reason or None,
        queue_wait_ms=response.queue_wait_ms,
        server_id=response.server_id or None,
        decision_id=response.decision_id or None,
    )


def record_batch_size(operation: str, answer: BatchAnswer) -> None:
    """GetBatchSize's attributes: the size, the load level it was based on, why."""
    if not trace.get_current_span().is_recording():
        return
    record_decision(
        operation=operation,
        batch_size=answer.size,
        load_level=answer.level,
        reason=answer.reason or None,
        fallback=answer.fallback,
    )
