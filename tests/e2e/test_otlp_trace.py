"""Acceptance: an application's span, the SDK's span and ``loadwarden serve``'s span reach an
OTLP/gRPC collector as one trace, the service's span explaining the decision.

The collector is a real OTLP/gRPC TraceService on 127.0.0.1:0 in this process.
The service exports to it with the standard variables only; this process
configures tracing to it with ``configure_tracing`` like an application would.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from loadwarden.observability import configure_tracing, shutdown_tracing
from loadwarden.sdk import Client

from ._harness import API_CONFIG, API_SERVERS, Processes

pytestmark = pytest.mark.e2e

SELECT = "loadwarden.v1.DecisionService/SelectServer"
DEADLINE_S = 20.0


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported span with its resource's service.name."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.spans: list[tuple[str, Span]] = []

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any) -> Any:  # noqa: N802 - the .proto's RPC name
        with self._cond:
            for resource_spans in request.resource_spans:
                service = attributes(resource_spans.resource.attributes).get("service.name", "")
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((service, span) for span in scope_spans.spans)
            self._cond.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, found: Any, timeout_s: float = DEADLINE_S) -> Any:
        """Waits until ``found(spans)`` returns something truthy; returns it (None at the deadline)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                result = found(list(self.spans))
                remaining = deadline - time.monotonic()
                if result or remaining <= 0:
                    return result
                self._cond.wait(remaining)


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


def attributes(items: Any) -> dict[str, Any]:
    return {item.key: value(item.value) for item in items if isinstance(item, KeyValue)}


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(None)


@pytest.mark.usefixtures("global_tracing")
def test_route_call_is_one_trace_from_the_application_to_the_service(
    processes: Processes, collector: tuple[Collector, int]
) -> None:
    receiver, port = collector
    otlp = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    service = processes.serve(API_CONFIG, env=otlp)
    provider = configure_tracing("checkout-app", environ={**otlp, "OTEL_BSP_SCHEDULE_DELAY": "60000"})
    assert provider is not None

    with (
        Client(service.target) as client,
        trace.get_tracer("checkout-app").start_as_current_span("POST /checkout") as app,
        client.route("api") as route,
    ):
        chosen = route.server_id
    shutdown_tracing()  # the application's spans go out now (its batch delay is a minute)

    app_context = app.get_span_context()
    trace_id = app_context.trace_id.to_bytes(16, "big")

    def chain(spans: list[tuple[str, Span]]) -> tuple[Span, Span] | None:
        mine = [(service_name, s) for service_name, s in spans if s.trace_id == trace_id]
        clients = [s for name, s in mine if name == "checkout-app" and s.kind == Span.SPAN_KIND_CLIENT]
        servers = [s for name, s in mine if name == "loadwarden" and s.kind == Span.SPAN_KIND_SERVER]
        for client_span in clients:
            for server_span in servers:
                if server_span.parent_span_id == client_span.span_id:
                    return client_span, server_span
        return None

    found = receiver.wait_for(chain)
    if found is None:
        service.stop(signal.SIGTERM)  # its exit flushes; show what arrived
        seen = [(name, s.name, Span.SpanKind.Name(s.kind)) for name, s in receiver.spans]
        pytest.fail(
            f"no SDK span -> service span chain in trace {trace_id.hex()}; collector got {seen}\n"
            f"{service.process.describe()}"
        )
    client_span, server_span = found

    assert client_span.name == server_span.name == SELECT
    assert client_span.parent_span_id == app_context.span_id.to_bytes(8, "big")
    app_spans = [s for name, s in receiver.spans if s.span_id == client_span.parent_span_id]
    assert [s.name for s in app_spans] == ["POST /checkout"]

    decision = attributes(server_span.attributes)
    assert decision["loadwarden.pool"] == "api"
    assert decision["loadwarden.strategy"] == "round_robin"
    assert decision["loadwarden.server_id"] == chosen and chosen in API_SERVERS
    assert decision["loadwarden.explored"] is False
    assert decision["loadwarden.decision_id"]
    assert decision["rpc.grpc.status_code"] == 0
    assert attributes(client_span.attributes)["rpc.method"] == "SelectServer"
