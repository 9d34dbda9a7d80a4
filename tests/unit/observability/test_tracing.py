"""Tracing: the service's and the SDK's interceptors, decision attributes, configure_tracing.

No sockets: interceptors are driven with fake continuations and contexts, and
every provider is either passed explicitly or installed by ``global_tracing``,
which restores the global OpenTelemetry state afterwards.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import grpc
import grpc.aio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from loadwarden.observability import _tracing, build_tracer_provider, configure_tracing, shutdown_tracing
from loadwarden.sdk import _telemetry as sdk_telemetry
from loadwarden.server import DecisionCore, PoolSettings, ServerSpec
from loadwarden.server.rpc import _telemetry as server_telemetry

SELECT = "/loadwarden.v1.DecisionService/SelectServer"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@dataclass
class Memory:
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def one(self, kind: SpanKind) -> ReadableSpan:
        found = [s for s in self.spans() if s.kind is kind]
        assert len(found) == 1, self.spans()
        return found[0]


@pytest.fixture
def memory() -> Iterator[Memory]:
    """A TracerProvider exporting to memory, not installed globally."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Memory(provider, exporter)
    provider.shutdown()


# --- the service's interceptor -------------------------------------------------------


@dataclass
class CallDetails:
    """grpc.HandlerCallDetails as the server would pass it."""

    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...] = ()


@dataclass
class FakeServicerContext:
    metadata: tuple[tuple[str, str], ...] = ()
    _code: grpc.StatusCode | None = None
    _details: str | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details
        raise grpc.aio.AbortError()


async def intercept(
    interceptor: grpc.aio.ServerInterceptor, handler: grpc.RpcMethodHandler[Any, Any], method: str = SELECT
) -> grpc.RpcMethodHandler[Any, Any]:
    async def continuation(details: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return handler

    traced = await interceptor.intercept_service(continuation, CallDetails(method))
    assert traced is not None
    return traced


# grpc's stubs type a handler's behaviours as sync; these handlers are grpc.aio ones.
def unary(handler: grpc.RpcMethodHandler[Any, Any]) -> Callable[..., Awaitable[Any]]:
    """The handler's unary-unary behaviour, a coroutine function."""
    assert handler.unary_unary is not None
    return cast(Callable[..., Awaitable[Any]], handler.unary_unary)


def unary_stream(handler: grpc.RpcMethodHandler[Any, Any]) -> Callable[..., AsyncIterator[Any]]:
    """The handler's unary-stream behaviour, an async generator function."""
    assert handler.unary_stream is not None
    return cast(Callable[..., AsyncIterator[Any]], handler.unary_stream)


def attributes(span: ReadableSpan) -> Mapping[str, Any]:
    assert span.attributes is not None
    return span.attributes


async def test_server_span_named_after_the_rpc_with_rpc_attributes_and_ok_status(memory: Memory) -> None:
    async def behavior(request: bytes, context: Any) -> bytes:
        return b"pong"

    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(behavior)
    traced = await intercept(server_telemetry.ServerTracingInterceptor(memory.provider), handler)

    assert await unary(traced)(b"ping", FakeServicerContext()) == b"pong"
    span = memory.one(SpanKind.SERVER)
    assert span.name == "loadwarden.v1.DecisionService/SelectServer"
    assert dict(span.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "loadwarden.v1.DecisionService",
        "rpc.method": "SelectServer",
        "rpc.grpc.status_code": 0,
    }
    assert span.status.status_code is StatusCode.UNSET
    assert span.parent is None


async def test_server_span_continues_the_trace_in_the_incoming_metadata(memory: Memory) -> None:
    seen: list[trace.SpanContext] = []

    async def behavior(request: bytes, context: Any) -> bytes:
        seen.append(trace.get_current_span().get_span_context())
        return b""

    traced = await intercept(
        server_telemetry.ServerTracingInterceptor(memory.provider), grpc.unary_unary_rpc_method_handler(behavior)
    )
    await unary(traced)(b"", FakeServicerContext(metadata=(("traceparent", TRACEPARENT), ("other", "x"))))

    span = memory.one(SpanKind.SERVER)
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and span.parent.is_remote
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert seen == [span.context]  # the handler ran inside the span


async def test_client_mistake_leaves_status_unset_but_a_crash_is_an_error(memory: Memory) -> None:
    async def not_found(request: bytes, context: FakeServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "pool: no pool named 'x'")
        raise AssertionError("unreachable")

    async def crash(request: bytes, context: Any) -> bytes:
        raise RuntimeError("boom")

    interceptor = server_telemetry.ServerTracingInterceptor(memory.provider)
    for behavior, error in ((not_found, grpc.aio.AbortError), (crash, RuntimeError)):
        traced = await intercept(
            interceptor, grpc.unary_unary_rpc_method_handler(behavior), f"/svc.S/{behavior.__name__}"
        )
        with pytest.raises(error):
            await unary(traced)(b"", FakeServicerContext())

    spans = {span.name: span for span in memory.spans()}
    aborted, crashed = spans["svc.S/not_found"], spans["svc.S/crash"]
    assert attributes(aborted)["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert aborted.status.status_code is StatusCode.UNSET and not aborted.events
    assert attributes(crashed)["rpc.grpc.status_code"] == grpc.StatusCode.UNKNOWN.value[0]
    assert crashed.status.status_code is StatusCode.ERROR
    assert [event.name for event in crashed.events] == ["exception"]


async def test_streaming_handlers_are_traced_until_their_last_message(memory: Memory) -> None:
    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for item in (b"a", b"b"):
            yield item

    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_stream_rpc_method_handler(stream)
    traced = await intercept(server_telemetry.ServerTracingInterceptor(memory.provider), handler, "/svc.S/Watch")

    assert [item async for item in unary_stream(traced)(b"", FakeServicerContext())] == [b"a", b"b"]
    span = memory.one(SpanKind.SERVER)
    assert span.name == "svc.S/Watch" and attributes(span)["rpc.grpc.status_code"] == 0


async def test_wrapped_handler_is_reused_per_method(memory: Memory) -> None:
    async def behavior(request: bytes, context: Any) -> bytes:
        return b""

    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(behavior)
    interceptor = server_telemetry.ServerTracingInterceptor(memory.provider)
    assert await intercept(interceptor, handler) is await intercept(interceptor, handler)


@pytest.mark.usefixtures("global_tracing")
async def test_tracing_off_installs_nothing_and_passes_handlers_through(monkeypatch: pytest.MonkeyPatch) -> None:
    async def behavior(request: bytes, context: Any) -> bytes:
        return b""

    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(behavior)
    assert server_telemetry.server_interceptors() == ()
    assert await intercept(server_telemetry.ServerTracingInterceptor(), handler) is handler
    opened: list[dict[str, Any]] = []
    channel = object()

    def insecure_channel(target: str, **kwargs: Any) -> object:
        opened.append(kwargs)
        return channel

    monkeypatch.setattr(grpc, "insecure_channel", insecure_channel)
    monkeypatch.setattr(grpc.aio, "insecure_channel", insecure_channel)
    returned = [
        sdk_telemetry.traced_insecure_channel("127.0.0.1:1"),
        sdk_telemetry.traced_aio_insecure_channel("127.0.0.1:1"),
    ]
    assert all(each is channel for each in returned)  # the plain channel, not intercepted
    assert opened == [{"options": ()}, {"options": ()}]  # no interceptors at all

    trace.set_tracer_provider(TracerProvider())
    assert len(server_telemetry.server_interceptors()) == 1
    assert await intercept(server_telemetry.ServerTracingInterceptor(), handler) is not handler
    sdk_telemetry.traced_aio_insecure_channel("127.0.0.1:1")
    assert [type(i) for i in opened[-1]["interceptors"]] == [sdk_telemetry.AioClientTracingInterceptor]


# --- decision attributes -------------------------------------------------------------


def test_record_decision_prefixes_names_and_keeps_attribute_types(memory: Memory) -> None:
    tracer = memory.provider.get_tracer("test")
    with tracer.start_as_current_span("decision"):
        server_telemetry.record_decision(
            pool="api",
            explored=True,
            epsilon=0.05,
            queue_wait_ms=12,
            reason=None,  # skipped
            state=(0, 2, 1),
            q_values={"s1": -3.25, "s2": 0.5},
            mixed=[1, "a"],
        )
    span = memory.spans()[0]
    assert dict(span.attributes or {}) == {
        "loadwarden.pool": "api",
        "loadwarden.explored": True,
        "loadwarden.epsilon": 0.05,
        "loadwarden.queue_wait_ms": 12,
        "loadwarden.state": (0, 2, 1),
        "loadwarden.q_values": "s1=-3.25,s2=0.5",
        "loadwarden.mixed": ("1", "a"),
    }


def test_record_decision_without_a_recording_span_does_nothing() -> None:
    server_telemetry.record_decision(pool="api")  # no span: must not raise


def test_record_selection_adds_a_learning_strategys_epsilon(memory: Memory) -> None:
    core = DecisionCore()
    servers = [ServerSpec(f"s{i}", f"127.0.0.1:900{i}") for i in (1, 2)]
    core.configure_pool(PoolSettings(name="api", strategy="q_learning"), servers)
    choice = core.select("api")

    with memory.provider.get_tracer("test").start_as_current_span("SelectServer"):
        server_telemetry.record_selection(core, "api", choice)
    attributes = dict(memory.spans()[0].attributes or {})
    assert attributes["loadwarden.pool"] == "api"
    assert attributes["loadwarden.strategy"] == "q_learning"
    assert attributes["loadwarden.server_id"] == choice.server.id
    assert attributes["loadwarden.explored"] is choice.explored
    assert attributes["loadwarden.decision_id"] == choice.decision_id
    assert attributes["loadwarden.epsilon"] == pytest.approx(0.1)


# --- the SDK's interceptors ----------------------------------------------------------


@dataclass(frozen=True)
class ClientDetails:
    """ClientCallDetails as interceptors get them: grpc.aio passes the method as bytes."""

    method: str | bytes
    timeout: float | None = 1.0
    metadata: Any = None
    credentials: Any = None
    wait_for_ready: bool | None = None
    compression: Any = None


def sync_details(method: str, **fields: Any) -> grpc.ClientCallDetails:
    return cast(grpc.ClientCallDetails, ClientDetails(method, **fields))


def aio_details(method: bytes, **fields: Any) -> grpc.aio.ClientCallDetails:
    return cast(grpc.aio.ClientCallDetails, ClientDetails(method, **fields))


@dataclass
class DoneOutcome:
    """A finished sync call, as grpc's blocking path returns it to interceptors."""

    status: grpc.StatusCode = grpc.StatusCode.OK
    callbacks: list[Any] = field(default_factory=list)

    def code(self) -> grpc.StatusCode:
        return self.status

    def details(self) -> str:
        return "" if self.status is grpc.StatusCode.OK else "no pool named 'x'"

    def add_done_callback(self, fn: Any) -> None:
        fn(self)


def sent_traceparent(metadata: Any) -> tuple[str, str]:
    values = [value for key, value in metadata if key == "traceparent"]
    assert len(values) == 1, metadata
    _, trace_id, span_id, _ = values[0].split("-")
    return trace_id, span_id


def test_sync_client_span_is_a_child_of_the_callers_span_and_its_context_is_sent(memory: Memory) -> None:
    sent: list[Any] = []

    def continuation(details: Any, request: Any) -> DoneOutcome:
        sent.append(details)
        return DoneOutcome()

    interceptor = sdk_telemetry.ClientTracingInterceptor("127.0.0.1:50051", memory.provider)
    with memory.provider.get_tracer("app").start_as_current_span("handle request") as app:
        interceptor.intercept_unary_unary(continuation, sync_details(SELECT, metadata=(("x-id", "7"),)), b"")

    client = memory.one(SpanKind.CLIENT)
    assert client.name == "loadwarden.v1.DecisionService/SelectServer"
    assert client.parent is not None and client.parent.span_id == app.get_span_context().span_id
    assert client.context.trace_id == app.get_span_context().trace_id
    assert dict(client.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "loadwarden.v1.DecisionService",
        "rpc.method": "SelectServer",
        "server.address": "127.0.0.1",
        "server.port": 50051,
        "rpc.grpc.status_code": 0,
    }
    (details,) = sent
    assert ("x-id", "7") in list(details.metadata)  # the caller's metadata is kept
    assert sent_traceparent(details.metadata) == (
        format(client.context.trace_id, "032x"),
        format(client.context.span_id, "016x"),
    )
    assert details.method == SELECT and details.timeout == 1.0


def test_sync_client_span_is_an_error_for_a_failed_call(memory: Memory) -> None:
    interceptor = sdk_telemetry.ClientTracingInterceptor(tracer_provider=memory.provider)
    outcome = interceptor.intercept_unary_unary(
        lambda details, request: DoneOutcome(grpc.StatusCode.NOT_FOUND), sync_details(SELECT), b""
    )
    assert outcome.code() is grpc.StatusCode.NOT_FOUND  # handed back unchanged
    span = memory.one(SpanKind.CLIENT)
    assert span.status.status_code is StatusCode.ERROR
    assert attributes(span)["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]


class FakeAioCall:
    def __init__(self, status: grpc.StatusCode = grpc.StatusCode.OK) -> None:
        self.status = status

    async def code(self) -> grpc.StatusCode:
        return self.status

    async def details(self) -> str:
        return ""


async def test_aio_client_span_is_a_child_of_the_callers_span_and_its_context_is_sent(memory: Memory) -> None:
    sent: list[Any] = []

    async def continuation(details: Any, request: Any) -> FakeAioCall:
        sent.append(details)
        return FakeAioCall()

    interceptor = sdk_telemetry.AioClientTracingInterceptor("localhost:7000", memory.provider)
    with memory.provider.get_tracer("app").start_as_current_span("handle request") as app:
        call = await interceptor.intercept_unary_unary(continuation, aio_details(SELECT.encode()), b"")

    assert isinstance(call, FakeAioCall)
    client = memory.one(SpanKind.CLIENT)
    assert client.name == "loadwarden.v1.DecisionService/SelectServer"
    assert client.parent is not None and client.parent.span_id == app.get_span_context().span_id
    assert attributes(client)["server.address"] == "localhost" and attributes(client)["server.port"] == 7000
    (details,) = sent
    assert isinstance(details.metadata, grpc.aio.Metadata)
    assert sent_traceparent(details.metadata) == (
        format(client.context.trace_id, "032x"),
        format(client.context.span_id, "016x"),
    )


async def test_batched_outcome_reports_start_their_own_trace(memory: Memory) -> None:
    async def continuation(details: Any, request: Any) -> FakeAioCall:
        return FakeAioCall()

    interceptor = sdk_telemetry.AioClientTracingInterceptor(tracer_provider=memory.provider)
    with memory.provider.get_tracer("app").start_as_current_span("first request") as app:
        await interceptor.intercept_unary_unary(
            continuation, aio_details(b"/loadwarden.v1.DecisionService/ReportOutcome"), b""
        )
    span = memory.one(SpanKind.CLIENT)
    assert span.parent is None and span.context.trace_id != app.get_span_context().trace_id


# --- configure_tracing ---------------------------------------------------------------


class RecordingProcessor(SpanProcessor):
    """Stands in for BatchSpanProcessor: records what it was built with."""

    built: ClassVar[list[RecordingProcessor]] = []

    def __init__(self, exporter: Any, **settings: Any) -> None:
        self.exporter, self.settings = exporter, settings
        RecordingProcessor.built.append(self)

    def shutdown(self) -> None:
        self.exporter.shutdown()


@pytest.fixture
def processors(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[RecordingProcessor]]:
    RecordingProcessor.built = []
    monkeypatch.setattr(_tracing, "BatchSpanProcessor", RecordingProcessor)
    yield RecordingProcessor.built


def build(environ: dict[str, str], **kwargs: Any) -> TracerProvider | None:
    provider = build_tracer_provider("loadwarden", environ=environ, **kwargs)
    if provider is not None:
        provider.shutdown()
    return provider


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "otlp,none"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"},
        {"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
    ],
)
def test_tracing_is_off_unless_asked_for(environ: dict[str, str], processors: list[RecordingProcessor]) -> None:
    assert build(environ) is None
    assert processors == []


def test_an_otlp_endpoint_alone_turns_on_otlp_over_grpc(processors: list[RecordingProcessor]) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        processors.clear()
        provider = build({variable: "http://127.0.0.1:4317", "OTEL_BSP_SCHEDULE_DELAY": "50"})
        assert provider is not None
        (processor,) = processors
        assert isinstance(processor.exporter, OTLPSpanExporter)
        assert processor.exporter._endpoint == "127.0.0.1:4317"
        assert processor.settings == {"schedule_delay_millis": 50}


def test_otlp_over_http_appends_the_signal_path_to_the_base_endpoint(processors: list[RecordingProcessor]) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    base = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    build({**base, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    build({**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/custom"})
    build({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert all(isinstance(p.exporter, OTLPSpanExporter) for p in processors)
    assert [p.exporter._endpoint for p in processors] == [
        "http://collector:4318/v1/traces",
        "http://collector:4318/custom",
        "http://c:4318/v1/traces",
    ]


def test_console_and_several_exporters(processors: list[RecordingProcessor]) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    build({"OTEL_TRACES_EXPORTER": "console"})
    build({"OTEL_TRACES_EXPORTER": " otlp , console,otlp"})
    assert [type(p.exporter) for p in processors] == [ConsoleSpanExporter, OTLPSpanExporter, ConsoleSpanExporter]


def test_the_exporter_argument_overrides_the_environment(processors: list[RecordingProcessor]) -> None:
    assert build({"OTEL_TRACES_EXPORTER": "otlp"}, exporter="none") is None
    assert build({}, exporter="console") is not None
    assert len(processors) == 1


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: unknown trace exporter 'zipkin'"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL: unsupported OTLP protocol 'http/json'",
        ),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "soon"}, "OTEL_BSP_SCHEDULE_DELAY"),
    ],
)
def test_invalid_settings_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_tracer_provider("loadwarden", environ=environ)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "loadwarden"),
        ({"OTEL_SERVICE_NAME": "decisions-eu"}, "decisions-eu"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "team=infra,service.name=from%20attrs"}, "from attrs"),
        ({"OTEL_SERVICE_NAME": "wins", "OTEL_RESOURCE_ATTRIBUTES": "service.name=loses"}, "wins"),
    ],
)
def test_service_name(environ: dict[str, str], expected: str, processors: list[RecordingProcessor]) -> None:
    provider = build({"OTEL_TRACES_EXPORTER": "console", **environ})
    assert provider is not None and provider.resource.attributes["service.name"] == expected


@pytest.mark.usefixtures("global_tracing")
def test_configure_tracing_installs_the_provider_and_shutdown_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(_tracing, "ConsoleSpanExporter", lambda: exporter)
    environ = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "60000"}

    provider = configure_tracing("loadwarden", environ=environ)
    assert provider is not None and trace.get_tracer_provider() is provider
    assert configure_tracing("other", environ=environ) is provider  # once per process
    with trace.get_tracer("test").start_as_current_span("work"):
        pass
    assert exporter.get_finished_spans() == ()  # still in the batch (60 s delay)
    shutdown_tracing()
    assert [span.name for span in exporter.get_finished_spans()] == ["work"]
    assert exporter.get_finished_spans()[0].resource.attributes["service.name"] == "loadwarden"
    shutdown_tracing()  # idempotent


@pytest.mark.usefixtures("global_tracing")
def test_configure_tracing_off_installs_nothing() -> None:
    assert configure_tracing("loadwarden", environ={"OTEL_SDK_DISABLED": "true"}) is None
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


@pytest.mark.usefixtures("global_tracing")
def test_configure_tracing_leaves_a_provider_installed_by_someone_else(memory: Memory) -> None:
    trace.set_tracer_provider(memory.provider)
    assert configure_tracing("loadwarden", exporter="console", environ={}) is None
    assert trace.get_tracer_provider() is memory.provider


def test_standard_instrumentation_is_detected_and_its_absence_is_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer

    assert server_telemetry.standard_instrumentation_on() is False
    instrumentor = GrpcAioInstrumentorServer()
    instrumentor.instrument()
    try:
        assert server_telemetry.standard_instrumentation_on() is True
    finally:
        instrumentor.uninstrument()
    assert server_telemetry.standard_instrumentation_on() is False

    def missing(name: str, *args: Any) -> None:
        raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")

    monkeypatch.setattr(importlib.util, "find_spec", missing)  # opentelemetry-instrumentation not installed
    assert server_telemetry.standard_instrumentation_on() is False
