"""Tracing of the SDK's RPCs, on the OpenTelemetry API only.

A CLIENT span per call (``loadwarden.v1.DecisionService/SelectServer``), child of
the caller's current span, whose W3C context goes out in the call's metadata, so
application span -> SDK span -> service span form one trace. Only channels the
SDK opens itself are traced; a caller's channel is used as is.

Where spans go is the application's choice (``loadwarden.observability.configure_tracing``
or its own TracerProvider), made before the SDK opens its channel: a ``Client`` when
it is created, an ``AsyncClient`` at its first call. A channel opened while no real
provider is installed gets no interceptor at all, so tracing off costs nothing.

With the standard ``opentelemetry-instrumentation-grpc`` instrumenting grpc's channels
(``GrpcAioInstrumentorClient`` / ``GrpcInstrumentorClient``, turned on before the
client opens its channel), its CLIENT span is the call's and the SDK adds none.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
from collections.abc import Callable, MutableSequence, Sequence
from typing import Any, TypeAlias, TypeVar

import grpc
import grpc.aio
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import SpanKind, Status, StatusCode

INSTRUMENTATION_NAME = "loadwarden.sdk"
INSTRUMENTATION_VERSION = "0.1.0"

T = TypeVar("T")

_OFF = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
# ReportOutcome carries a batch of many requests' outcomes, sent by a background
# task: it starts its own trace instead of joining whichever request's span was
# current when that task was created.
_DETACHED_METHODS = frozenset({"ReportOutcome"})
_DETACHED = Context()


class _Tracers:
    """The tracer of the global (or a fixed) provider; None while tracing is off."""

    __slots__ = ("_fixed", "_provider", "_tracer")

    def __init__(self, provider: trace.TracerProvider | None) -> None:
        self._fixed = provider
        self._provider: trace.TracerProvider | None = None
        self._tracer: trace.Tracer | None = None

    def current(self) -> trace.Tracer | None:
        provider = self._fixed if self._fixed is not None else trace.get_tracer_provider()
        if provider is not self._provider:
            # A no-op or not-yet-configured (proxy) provider means tracing is off.
            tracer = (
                None
                if isinstance(provider, _OFF)
                else provider.get_tracer(INSTRUMENTATION_NAME, INSTRUMENTATION_VERSION)
            )
            self._provider, self._tracer = provider, tracer
        return self._tracer


class _MetadataSetter(Setter[MutableSequence[tuple[str, str]]]):
    def set(self, carrier: MutableSequence[tuple[str, str]], key: str, value: str) -> None:
        carrier.append((key, value))


_SETTER = _MetadataSetter()


class _CallDetails(
    collections.namedtuple(  # noqa: PYI024 - the shape grpc's own ClientCallDetails has
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    """A sync call's details with the trace headers added (the fields grpc defines)."""


def _method_name(method: str | bytes) -> str:
    text = method.decode() if isinstance(method, bytes) else method
    return text.lstrip("/")


def _start(tracer: trace.Tracer, method: str | bytes, target: str | None) -> tuple[trace.Span, list[tuple[str, str]]]:
    """Starts the CLIENT span under the current one; returns it with the headers to send."""
    name = _method_name(method)
    service, _, rpc = name.rpartition("/")
    attributes: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}
    if target:
        host, _, port = target.rpartition(":")
        attributes["server.address"] = host.strip("[]") or target
        if port.isdigit():
            attributes["server.port"] = int(port)
    parent = _DETACHED if rpc in _DETACHED_METHODS else None
    span = tracer.start_span(name, parent, SpanKind.CLIENT, attributes)
    headers: list[tuple[str, str]] = []
    propagate.inject(headers, context=trace.set_span_in_context(span), setter=_SETTER)
    return span, headers


def _finish(span: trace.Span, code: grpc.StatusCode | None, details: str | None) -> None:
    code = code or grpc.StatusCode.UNKNOWN
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, details or code.name))
    span.end()


def _sync_details_with(details: grpc.ClientCallDetails, headers: list[tuple[str, str]]) -> grpc.ClientCallDetails:
    return _CallDetails(
        details.method,
        details.timeout,
        [*(details.metadata or ()), *headers],
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


def _aio_details_with(
    details: grpc.aio.ClientCallDetails, headers: list[tuple[str, str]]
) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), *headers)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class ClientTracingInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Traces unary calls of a sync channel (``grpc.intercept_channel``).

    Args:
        target: The channel's "host:port", recorded as ``server.address`` / ``server.port``.
        tracer_provider: Where spans go; the global provider (looked up per call) by default.
    """

    def __init__(self, target: str | None = None, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._target = target
        self._tracers = _Tracers(tracer_provider)

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        tracer = self._tracers.current()
        if tracer is None:
            return continuation(client_call_details, request)
        span, headers = _start(tracer, client_call_details.method, self._target)
        try:
            outcome = continuation(_sync_details_with(client_call_details, headers), request)
        except BaseException as exc:
            _finish(span, grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")
            raise
        # Runs at once for a blocking call; on completion for .future().
        outcome.add_done_callback(lambda call: _finish(span, _sync_code(call), _sync_details(call)))
        return outcome


def _sync_code(call: Any) -> grpc.StatusCode | None:
    try:
        code: grpc.StatusCode | None = call.code()
    except Exception:  # noqa: BLE001 - a cancelled future has no code
        return grpc.StatusCode.CANCELLED
    return code


def _sync_details(call: Any) -> str | None:
    try:
        details: str | None = call.details()
    except Exception:  # noqa: BLE001 - a cancelled future has no details; the span keeps the code's name
        return None
    return details


class AioClientTracingInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Traces unary calls of a grpc.aio channel (``interceptors=`` of ``grpc.aio.insecure_channel``).

    Args:
        target: The channel's "host:port", recorded as ``server.address`` / ``server.port``.
        tracer_provider: Where spans go; the global provider (looked up per call) by default.
    """

    def __init__(self, target: str | None = None, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._target = target
        self._tracers = _Tracers(tracer_provider)

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        tracer = self._tracers.current()
        if tracer is None:
            return await continuation(client_call_details, request)
        span, headers = _start(tracer, client_call_details.method, self._target)
        try:
            call = await continuation(_aio_details_with(client_call_details, headers), request)
            code = await call.code()  # waits for the end of the call; never raises for a status
            details = await call.details()
        except asyncio.CancelledError:
            _finish(span, grpc.StatusCode.CANCELLED, "cancelled by the caller")
            raise
        except BaseException as exc:
            _finish(span, grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")
            raise
        _finish(span, code, details)
        return call


def tracing_on() -> bool:
    """Whether a real TracerProvider is installed globally."""
    return not isinstance(trace.get_tracer_provider(), _OFF)


def standard_instrumentation_on(aio: bool) -> bool:
    """Whether ``opentelemetry-instrumentation-grpc`` instruments the channels grpc opens
    now (grpc.aio's with ``aio``, else the sync ones): then its CLIENT span is the call's,
    and the SDK adds none of its own."""
    try:  # find_spec imports the parents: opentelemetry.instrumentation may be missing too
        if importlib.util.find_spec("opentelemetry.instrumentation.grpc") is None:
            return False
    except ModuleNotFoundError:
        return False
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcInstrumentorClient

    # Singletons: this is the instance an application instrumented with.
    instrumentor = (
        GrpcAioInstrumentorClient()  # type: ignore[no-untyped-call]  # the instrumentation has no annotations
        if aio
        else GrpcInstrumentorClient()  # type: ignore[no-untyped-call]  # the instrumentation has no annotations
    )
    return bool(instrumentor.is_instrumented_by_opentelemetry)


def _traced_here(aio: bool) -> bool:
    return tracing_on() and not standard_instrumentation_on(aio)


# Client interceptors a caller may add to the channel the SDK opens (`interceptors=`).
AsyncClientInterceptor: TypeAlias = grpc.aio.ClientInterceptor
ClientInterceptor: TypeAlias = (
    grpc.UnaryUnaryClientInterceptor
    | grpc.UnaryStreamClientInterceptor
    | grpc.StreamUnaryClientInterceptor
    | grpc.StreamStreamClientInterceptor
)


def check_interceptors(interceptors: Sequence[ClientInterceptor], channel_given: bool) -> tuple[ClientInterceptor, ...]:
    """`interceptors` as a tuple; ValueError unless each is a grpc client interceptor and no `channel` is given."""
    return _checked(interceptors, ClientInterceptor, "grpc.UnaryUnaryClientInterceptor and the like", channel_given)


def check_interceptors_async(
    interceptors: Sequence[AsyncClientInterceptor], channel_given: bool
) -> tuple[AsyncClientInterceptor, ...]:
    """`interceptors` as a tuple; ValueError unless each is a grpc.aio client interceptor and no `channel` is given."""
    return _checked(
        interceptors, AsyncClientInterceptor, "grpc.aio.UnaryUnaryClientInterceptor and the like", channel_given
    )


def _checked(interceptors: Sequence[T], kind: Any, kinds: str, channel_given: bool) -> tuple[T, ...]:
    if isinstance(interceptors, str | bytes) or not isinstance(interceptors, Sequence):
        raise ValueError(f"interceptors must be a list of client interceptors ({kinds}), got {interceptors!r}")
    for index, interceptor in enumerate(interceptors):
        if not isinstance(interceptor, kind):
            raise ValueError(f"interceptors[{index}] must be a client interceptor ({kinds}), got {interceptor!r}")
    if interceptors and channel_given:
        raise ValueError(
            "interceptors apply to the channel the client opens; with channel=, intercept that channel yourself"
        )
    return tuple(interceptors)


def traced_insecure_channel(
    target: str, options: Sequence[tuple[str, Any]] = (), interceptors: Sequence[ClientInterceptor] = ()
) -> grpc.Channel:
    """``grpc.insecure_channel(target, options=options)``, traced if tracing is on now.

    Decided when the channel is opened: grpc's interceptor plumbing costs some
    30 µs of CPU per call even when the interceptor does nothing. `interceptors`
    run inside the tracing interceptor, in their order (the first is the outermost).
    """
    return _intercepted(grpc.insecure_channel(target, options=options), target, interceptors)


def traced_aio_insecure_channel(
    target: str, options: Sequence[tuple[str, Any]] = (), interceptors: Sequence[AsyncClientInterceptor] = ()
) -> grpc.aio.Channel:
    """``grpc.aio.insecure_channel(target, options=options)``, traced if tracing is on now.

    Decided when the channel is opened: an intercepted grpc.aio call costs an extra
    task, some 50 µs of CPU per call, even when the interceptor does nothing.
    `interceptors` run inside the tracing interceptor, in their order.
    """
    chain = _aio_chain(target, interceptors)
    if not chain:  # no interceptor at all: grpc.aio's plain, cheaper call path
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.insecure_channel(target, options=options, interceptors=chain)


def traced_secure_channel(
    target: str,
    credentials: grpc.ChannelCredentials,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[ClientInterceptor] = (),
) -> grpc.Channel:
    """``grpc.secure_channel(target, credentials, options=options)``, traced if tracing is on now."""
    return _intercepted(grpc.secure_channel(target, credentials, options=options), target, interceptors)


def traced_aio_secure_channel(
    target: str,
    credentials: grpc.ChannelCredentials,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[AsyncClientInterceptor] = (),
) -> grpc.aio.Channel:
    """``grpc.aio.secure_channel(target, credentials, options=options)``, traced if tracing is on now."""
    chain = _aio_chain(target, interceptors)
    if not chain:
        return grpc.aio.secure_channel(target, credentials, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=chain)


def _intercepted(channel: grpc.Channel, target: str, interceptors: Sequence[ClientInterceptor]) -> grpc.Channel:
    # grpc.intercept_channel makes its first interceptor the outermost: tracing wraps the caller's.
    chain: list[ClientInterceptor] = [ClientTracingInterceptor(target)] if _traced_here(aio=False) else []
    chain.extend(interceptors)
    return grpc.intercept_channel(channel, *chain) if chain else channel


def _aio_chain(target: str, interceptors: Sequence[AsyncClientInterceptor]) -> list[AsyncClientInterceptor]:
    # grpc.aio runs its first interceptor outermost too: tracing wraps the caller's.
    chain: list[AsyncClientInterceptor] = [AioClientTracingInterceptor(target)] if _traced_here(aio=True) else []
    chain.extend(interceptors)
    return chain
