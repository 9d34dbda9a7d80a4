"""One trace from the application through the SDK to the service, over a real grpc.aio server.

A TracerProvider exporting to memory is installed globally for each test (and the
previous global state restored afterwards) before the service and the clients
are created, as an application would do at start-up.
"""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from loadwarden.sdk import AsyncClient, Client, NotFoundError
from loadwarden.server import MonitorSettings, OperationSettings

from ..conftest import StartService, three_server_pool

SELECT = "loadwarden.v1.DecisionService/SelectServer"


async def in_trace(
    exporter: InMemorySpanExporter, app: ReadableSpan | trace.Span, server_spans: int, timeout_s: float = 5.0
) -> list[ReadableSpan]:
    """The finished spans of ``app``'s trace, once ``server_spans`` SERVER spans are among them.

    A handler that aborts sends its status before its span ends, so the caller
    can see the answer a moment before the service's span is finished.
    """
    context = app.get_span_context()
    assert context is not None
    trace_id = context.trace_id
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        found = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
        if sum(s.kind is SpanKind.SERVER for s in found) >= server_spans or loop.time() > deadline:
            return found
        await asyncio.sleep(0.01)


def started_ns(span: ReadableSpan) -> int:
    """A finished span's start time, ns."""
    assert span.start_time is not None
    return span.start_time


def chain(found: list[ReadableSpan], app_span_id: int, name: str) -> tuple[ReadableSpan, ReadableSpan]:
    """The CLIENT span ``name`` under the application span and the SERVER span under it."""
    clients = [s for s in found if s.kind is SpanKind.CLIENT and s.name == name]
    assert len(clients) == 1, [s.name for s in found]
    client = clients[0]
    assert client.parent is not None and client.parent.span_id == app_span_id
    servers = [s for s in found if s.kind is SpanKind.SERVER and s.name == name]
    assert len(servers) == 1, [s.name for s in found]
    server = servers[0]
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert server.parent.is_remote
    return client, server


async def test_app_span_sdk_span_and_service_span_form_one_trace(
    spans: InMemorySpanExporter, start: StartService
) -> None:
    running = await start(three_server_pool("api", strategy="round_robin"))
    tracer = trace.get_tracer("test-app")
    async with AsyncClient(running.target) as client:
        with tracer.start_as_current_span("handle GET /orders") as app:
            async with client.route("api") as route:
                chosen = route.server_id
        await client.flush_outcomes(5.0)

    client_span, server_span = chain(await in_trace(spans, app, 1), app.get_span_context().span_id, SELECT)
    assert (client_span.attributes or {})["rpc.grpc.status_code"] == 0
    attributes = dict(server_span.attributes or {})
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "loadwarden.v1.DecisionService"
    assert attributes["rpc.method"] == "SelectServer"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["loadwarden.pool"] == "api"
    assert attributes["loadwarden.strategy"] == "round_robin"
    assert attributes["loadwarden.server_id"] == chosen
    assert attributes["loadwarden.explored"] is False
    assert attributes["loadwarden.decision_id"]


async def test_sync_client_joins_the_callers_trace_and_errors_are_recorded(
    spans: InMemorySpanExporter, start: StartService
) -> None:
    running = await start(three_server_pool("api", strategy="q_learning"))
    tracer = trace.get_tracer("test-app")

    def work() -> trace.Span:
        with Client(running.target) as client, tracer.start_as_current_span("batch job") as app:
            client.select("api")
            with pytest.raises(NotFoundError):
                client.select("missing")
            return app

    app = await asyncio.to_thread(work)
    found = await in_trace(spans, app, 2)
    selects = sorted((s for s in found if s.kind is SpanKind.SERVER), key=started_ns)
    assert [(s.attributes or {})["rpc.grpc.status_code"] for s in selects] == [0, 5]
    ok, missing = selects
    ok_attributes = ok.attributes or {}
    assert ok_attributes["loadwarden.strategy"] == "q_learning"
    assert ok_attributes["loadwarden.epsilon"] == pytest.approx(0.1)
    assert missing.status.status_code is StatusCode.UNSET  # a client's mistake is not the service's error
    clients = sorted((s for s in found if s.kind is SpanKind.CLIENT), key=started_ns)
    assert [s.status.status_code for s in clients] == [StatusCode.UNSET, StatusCode.ERROR]
    assert all(s.parent is not None and s.parent.span_id == app.get_span_context().span_id for s in clients)


async def test_slot_and_batch_size_decisions_carry_their_attributes(
    spans: InMemorySpanExporter, start: StartService
) -> None:
    running = await start(
        three_server_pool("api", max_concurrency=1),
        operations=(OperationSettings(name="import", default_batch_size=25),),
        monitor=MonitorSettings(enabled=False),
    )
    tracer = trace.get_tracer("test-app")
    async with AsyncClient(running.target) as client:
        with tracer.start_as_current_span("import run") as app:
            lease = await client.acquire_slot("api", select_server=True)
            size = await client.batch_size("import")
            await client.release_slot(lease.lease_id)

    found = {s.name.rpartition("/")[2]: s for s in await in_trace(spans, app, 3) if s.kind is SpanKind.SERVER}
    slot = dict(found["AcquireSlot"].attributes or {})
    assert slot["loadwarden.pool"] == "api"
    assert slot["loadwarden.granted"] is True
    assert slot["loadwarden.queue_wait_ms"] == 0
    assert slot["loadwarden.server_id"] == lease.server_id
    batch = dict(found["GetBatchSize"].attributes or {})
    assert batch["loadwarden.operation"] == "import"
    assert batch["loadwarden.batch_size"] == size.size == 25
    assert batch["loadwarden.load_level"] == "unknown"
    assert batch["loadwarden.fallback"] is True
    assert batch["loadwarden.reason"]
    assert "ReleaseSlot" in found


def _servers(exporter: InMemorySpanExporter, method: str) -> list[ReadableSpan]:
    return sorted(
        (s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER and s.name.endswith(f"/{method}")),
        key=started_ns,
    )


async def _finished(exporter: InMemorySpanExporter, method: str, count: int) -> list[ReadableSpan]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while len(found := _servers(exporter, method)) < count:
        assert loop.time() < deadline, [s.name for s in exporter.get_finished_spans()]
        await asyncio.sleep(0.01)
    return found


async def test_outcome_and_release_spans_link_to_the_decisions_they_settle(
    spans: InMemorySpanExporter, start: StartService
) -> None:
    """ReportOutcome runs in the background, a trace of its own: its span links to the
    SelectServer spans of the decisions it settles; ReleaseSlot's to AcquireSlot's."""
    running = await start(three_server_pool("api", max_concurrency=2))
    async with AsyncClient(running.target) as client:
        first = await client.select("api")
        second = await client.select("api")
        client.report_outcome(first.decision_id, success=True, latency_ms=3.0)
        client.report_outcome(second.decision_id, success=False, latency_ms=9.0)
        await client.flush_outcomes(5.0)
        lease = await client.acquire_slot("api")
        await client.release_slot(lease.lease_id)

    selects = await _finished(spans, "SelectServer", 2)
    (report,) = await _finished(spans, "ReportOutcome", 1)
    assert {link.context.span_id for link in report.links} == {s.context.span_id for s in selects}
    assert all(dict(link.attributes or {}) == {"loadwarden.link": "decision"} for link in report.links)
    assert report.context.trace_id not in {s.context.trace_id for s in selects}  # its own trace
    (acquire,) = await _finished(spans, "AcquireSlot", 1)
    (release,) = await _finished(spans, "ReleaseSlot", 1)
    assert [(link.context.span_id, dict(link.attributes or {})) for link in release.links] == [
        (acquire.context.span_id, {"loadwarden.link": "lease"})
    ]


async def test_with_the_standard_grpc_instrumentation_each_rpc_has_one_client_and_one_server_span(
    spans: InMemorySpanExporter, start: StartService
) -> None:
    """opentelemetry-instrumentation-grpc on both sides (as an application turns it on, before
    the service and the clients are made): loadwarden steps aside, the instrumentation's
    spans carry loadwarden's attributes, and the links still hold."""
    from opentelemetry.instrumentation.grpc import (
        GrpcAioInstrumentorClient,
        GrpcAioInstrumentorServer,
        GrpcInstrumentorClient,
    )

    instrumentors = (GrpcAioInstrumentorServer(), GrpcAioInstrumentorClient(), GrpcInstrumentorClient())
    for instrumentor in instrumentors:
        instrumentor.instrument()
    try:
        running = await start(three_server_pool("api"))
        tracer = trace.get_tracer("test-app")
        async with AsyncClient(running.target) as client:
            with tracer.start_as_current_span("handle GET /orders") as app:
                chosen = await client.select("api")
            client.report_outcome(chosen.decision_id, success=True, latency_ms=3.0)
            await client.flush_outcomes(5.0)

        def sync_select() -> None:
            with Client(running.target) as sync_client, tracer.start_as_current_span("batch job"):
                sync_client.select("api")

        await asyncio.to_thread(sync_select)
        selects = await _finished(spans, "SelectServer", 2)
        await _finished(spans, "ReportOutcome", 1)
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()

    by_trace: dict[int, list[ReadableSpan]] = {}
    for span in spans.get_finished_spans():
        by_trace.setdefault(span.context.trace_id, []).append(span)
    for select in selects:
        found = by_trace[select.context.trace_id]
        kinds = sorted(s.kind.name for s in found if s.kind in (SpanKind.CLIENT, SpanKind.SERVER))
        assert kinds == ["CLIENT", "SERVER"], [(s.name, s.kind.name) for s in found]
        assert (select.attributes or {})["loadwarden.pool"] == "api"  # added to the instrumentation's span
    app_trace = by_trace[app.get_span_context().trace_id]
    assert (next(s for s in app_trace if s.kind is SpanKind.SERVER).attributes or {})[
        "loadwarden.decision_id"
    ] == chosen.decision_id
    (report,) = _servers(spans, "ReportOutcome")
    report_trace = by_trace[report.context.trace_id]
    assert sorted(s.kind.name for s in report_trace) == ["CLIENT", "SERVER"]  # a trace of its own
    first_select = next(s for s in selects if s.context.trace_id == app.get_span_context().trace_id)
    assert [link.context.span_id for link in report.links] == [first_select.context.span_id]
