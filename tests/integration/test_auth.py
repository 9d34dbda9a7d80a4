"""Bearer tokens on a real service: every AdminService RPC and admin HTTP endpoint, the data plane's client
token, the SDK sending it, and no token ever showing up in logs, spans or errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # grpcio-health-checking: no stubs, no py.typed
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # type: ignore[import-untyped]  # grpcio-reflection: no stubs, no py.typed
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from loadwarden.sdk import AsyncClient, BreakerState, Client, PermissionDeniedError, UnauthenticatedError
from loadwarden.server import (
    AdminSettings,
    AuthSettings,
    MonitorSettings,
    OperationSettings,
    RunningService,
    ServiceConfig,
    start_service,
)
from loadwarden.v1 import admin_pb2 as admin
from loadwarden.v1 import admin_pb2_grpc as admin_grpc
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import StartService, three_server_pool

ADMIN_TOKEN = "integration-admin-token-5b1f0c"
CLIENT_TOKEN = "integration-client-token-9d27e4"
WRONG_TOKEN = "integration-wrong-token-000000"
SECRETS = (ADMIN_TOKEN, CLIENT_TOKEN, WRONG_TOKEN)
TIMEOUT_S = 5.0

# One request per AdminService RPC that succeeds on the `service` fixture's state.
ADMIN_CALLS: dict[str, Message] = {
    "ConfigurePool": admin.ConfigurePoolRequest(pool=common.PoolConfig(name="new-pool")),
    "DeletePool": admin.DeletePoolRequest(pool="batch"),
    "RegisterServer": admin.RegisterServerRequest(
        pool="api", server=common.ServerSpec(id="s9", address="127.0.0.1:9009")
    ),
    "DeregisterServer": admin.DeregisterServerRequest(pool="api", server_id="s3"),
    "DrainServer": admin.DrainServerRequest(pool="api", server_id="s1", state=admin.DRAIN_STATE_DRAINING),
    "ConfigureOperation": admin.ConfigureOperationRequest(operation=common.OperationConfig(name="export")),
    "DeleteOperation": admin.DeleteOperationRequest(operation="import"),
}
DATA_CALLS: dict[str, Message] = {
    "SelectServer": pb.SelectServerRequest(pool="api"),
    "AcquireSlot": pb.AcquireSlotRequest(pool="api"),
    "GetLoadStatus": pb.GetLoadStatusRequest(),
    "WatchLoadStatus": pb.WatchLoadStatusRequest(),
}
HTTP_PATHS = ("/admin/load", "/metrics", "/api/load-status", "/api/history")
ChannelTo = Callable[[RunningService], grpc.aio.Channel]


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _service(start: StartService, **config: Any) -> RunningService:
    return await start(
        three_server_pool("api"),
        three_server_pool("batch"),
        operations=(OperationSettings(name="import"),),
        monitor=MonitorSettings(enabled=False),
        **config,
    )


@pytest.fixture
async def service(start: StartService) -> RunningService:
    """Both tokens configured, and the admin HTTP port on."""
    return await _service(
        start,
        admin=AdminSettings(listen="127.0.0.1:0", token=ADMIN_TOKEN),
        auth=AuthSettings(client_token=CLIENT_TOKEN),
    )


async def call(
    channel: grpc.aio.Channel,
    service_name: str,
    rpc: str,
    request: Message,
    metadata: tuple[tuple[str, str], ...] | None,
) -> tuple[grpc.StatusCode, str]:
    """The status code and details of one call (a stream: of its first message)."""
    stub: Any = (admin_grpc.AdminServiceStub if service_name == "admin" else pb_grpc.DecisionServiceStub)(channel)
    try:
        if rpc == "WatchLoadStatus":
            stream = stub.WatchLoadStatus(request, metadata=metadata, timeout=TIMEOUT_S)
            await stream.read()
            stream.cancel()
        else:
            await getattr(stub, rpc)(request, metadata=metadata, timeout=TIMEOUT_S)
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


async def state(channel: grpc.aio.Channel) -> pb.GetLoadStatusResponse:
    """Pools, servers and operations as the service sees them (generated_at left out)."""
    response = await pb_grpc.DecisionServiceStub(channel).GetLoadStatus(
        pb.GetLoadStatusRequest(), metadata=bearer(CLIENT_TOKEN), timeout=TIMEOUT_S
    )
    response.status.ClearField("generated_at")
    return response


# --- AdminService: 3 tests per RPC ------------------------------------------------------


def test_every_admin_rpc_is_covered() -> None:
    methods = admin.DESCRIPTOR.services_by_name["AdminService"].methods
    assert set(ADMIN_CALLS) == {method.name for method in methods}


@pytest.mark.parametrize("rpc", sorted(ADMIN_CALLS))
async def test_admin_rpc_without_a_token_is_unauthenticated(
    rpc: str, service: RunningService, channel_to: ChannelTo
) -> None:
    channel = channel_to(service)
    before = await state(channel)
    code, details = await call(channel, "admin", rpc, ADMIN_CALLS[rpc], None)
    assert code is grpc.StatusCode.UNAUTHENTICATED and "authorization: Bearer" in details
    assert await state(channel) == before  # the handler never ran


@pytest.mark.parametrize("rpc", sorted(ADMIN_CALLS))
async def test_admin_rpc_with_a_wrong_token_is_permission_denied(
    rpc: str, service: RunningService, channel_to: ChannelTo
) -> None:
    channel = channel_to(service)
    before = await state(channel)
    for token in (WRONG_TOKEN, CLIENT_TOKEN):  # the client token is no admin token
        code, details = await call(channel, "admin", rpc, ADMIN_CALLS[rpc], bearer(token))
        assert code is grpc.StatusCode.PERMISSION_DENIED and not any(s in details for s in SECRETS)
    assert await state(channel) == before


@pytest.mark.parametrize("rpc", sorted(ADMIN_CALLS))
async def test_admin_rpc_with_the_right_token_is_ok(rpc: str, service: RunningService, channel_to: ChannelTo) -> None:
    channel = channel_to(service)
    before = await state(channel)
    assert await call(channel, "admin", rpc, ADMIN_CALLS[rpc], bearer(ADMIN_TOKEN)) == (grpc.StatusCode.OK, "")
    assert await state(channel) != before  # and it did what it was asked


# --- admin HTTP: 3 tests per endpoint ----------------------------------------------------


async def http_get(running: RunningService, path: str, token: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{running.admin_port}{path}", headers=headers) as response,
    ):
        return response.status, await response.text()


@pytest.mark.parametrize("path", HTTP_PATHS)
async def test_admin_http_without_a_token_is_401(path: str, service: RunningService) -> None:
    status, body = await http_get(service, path, None)
    assert status == 401
    assert "s1" not in body and "127.0.0.1:9001" not in body  # no load data without the token


@pytest.mark.parametrize("path", HTTP_PATHS)
async def test_admin_http_with_a_wrong_token_is_403(path: str, service: RunningService) -> None:
    for token in (WRONG_TOKEN, CLIENT_TOKEN):
        status, body = await http_get(service, path, token)
        assert status == 403 and not any(s in body for s in SECRETS)


@pytest.mark.parametrize("path", HTTP_PATHS)
async def test_admin_http_with_the_right_token_is_200(path: str, service: RunningService) -> None:
    status, body = await http_get(service, path, ADMIN_TOKEN)
    assert status == 200 and body
    if path == "/api/load-status":
        assert "127.0.0.1:9001" in body


# --- DecisionService with a client token: 3 tests per RPC ------------------------------------


@pytest.mark.parametrize("rpc", sorted(DATA_CALLS))
async def test_data_rpc_without_a_token_is_unauthenticated(
    rpc: str, service: RunningService, channel_to: ChannelTo
) -> None:
    code, details = await call(channel_to(service), "decision", rpc, DATA_CALLS[rpc], None)
    assert code is grpc.StatusCode.UNAUTHENTICATED and "DecisionService" in details


@pytest.mark.parametrize("rpc", sorted(DATA_CALLS))
async def test_data_rpc_with_a_wrong_token_is_permission_denied(
    rpc: str, service: RunningService, channel_to: ChannelTo
) -> None:
    for token in (WRONG_TOKEN, ADMIN_TOKEN):  # the admin token is no client token
        code, details = await call(channel_to(service), "decision", rpc, DATA_CALLS[rpc], bearer(token))
        assert code is grpc.StatusCode.PERMISSION_DENIED and not any(s in details for s in SECRETS)


@pytest.mark.parametrize("rpc", sorted(DATA_CALLS))
async def test_data_rpc_with_the_right_token_is_ok(rpc: str, service: RunningService, channel_to: ChannelTo) -> None:
    assert await call(channel_to(service), "decision", rpc, DATA_CALLS[rpc], bearer(CLIENT_TOKEN)) == (
        grpc.StatusCode.OK,
        "",
    )


async def test_health_and_reflection_stay_open(service: RunningService, channel_to: ChannelTo) -> None:
    channel = channel_to(service)
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=TIMEOUT_S)
    await stream.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    answer = await stream.read()
    await stream.done_writing()
    names = {s.name for s in answer.list_services_response.service}
    assert {"loadwarden.v1.AdminService", "loadwarden.v1.DecisionService"} <= names


# --- the SDK sends the client token ------------------------------------------------------------


async def test_the_sync_client_sends_its_token(service: RunningService) -> None:
    def run() -> None:
        with Client(service.target, token=CLIENT_TOKEN) as client:
            assert client.select("api").server_id in {"s1", "s2", "s3"}
            assert client.batch_size("import").size > 0
            with client.slot("api"):
                pass
        with Client(service.target, token=WRONG_TOKEN) as wrong, pytest.raises(PermissionDeniedError):
            wrong.select("api")

    await asyncio.to_thread(run)


async def test_the_async_client_sends_its_token_and_auth_errors_are_answers(service: RunningService) -> None:
    async with AsyncClient(service.target, token=CLIENT_TOKEN) as client:
        assert (await client.select("api")).fallback is False
        async with client.slot("api") as lease:
            assert not lease.fallback
    async with AsyncClient(service.target) as anonymous, AsyncClient(service.target, token=WRONG_TOKEN) as wrong:
        for _ in range(30):  # well past any breaker's minimum: refusals are not transport failures
            with pytest.raises(UnauthenticatedError):
                await anonymous.select("api")
            with pytest.raises(PermissionDeniedError) as denied:
                await wrong.select("api")
            assert WRONG_TOKEN not in str(denied.value)
        breaker = anonymous.breaker("SelectServer")
        assert breaker is not None and breaker.state is BreakerState.CLOSED  # no local fallback either


# --- the default without an admin token ---------------------------------------------------------


async def test_without_an_admin_token_admin_rpcs_are_open_on_loopback(
    start: StartService, channel_to: ChannelTo
) -> None:
    running = await _service(start)
    channel = channel_to(running)
    for rpc in sorted(ADMIN_CALLS):
        assert await call(channel, "admin", rpc, ADMIN_CALLS[rpc], None) == (grpc.StatusCode.OK, ""), rpc


async def test_without_an_admin_token_admin_rpcs_are_refused_off_loopback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "loadwarden.server")
    running = await start_service(
        ServiceConfig(listen="0.0.0.0:0", monitor=MonitorSettings(enabled=False), pools=(three_server_pool("api"),))
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            for metadata in (None, bearer(ADMIN_TOKEN)):
                code, details = await call(channel, "admin", "DeletePool", ADMIN_CALLS["DeletePool"], metadata)
                assert code is grpc.StatusCode.PERMISSION_DENIED and "admin.token" in details
            assert (await call(channel, "decision", "SelectServer", DATA_CALLS["SelectServer"], None))[
                0
            ] is grpc.StatusCode.OK
    finally:
        await running.stop(0)
    refused = [r for r in caplog.records if "AdminService is refused on 0.0.0.0:0" in r.getMessage()]
    assert [r.levelname for r in refused] == ["WARNING"]


# --- no token anywhere: logs, spans, errors -----------------------------------------------------


def span_text(span: ReadableSpan) -> str:
    parts = [span.name, repr(dict(span.attributes or {})), span.status.description or ""]
    for event in span.events:
        parts += [event.name, repr(dict(event.attributes or {}))]
    return "\n".join(parts)


async def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.01)


async def test_tokens_appear_in_no_log_span_or_error(
    start: StartService,
    channel_to: ChannelTo,
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    running = await _service(
        start,
        admin=AdminSettings(listen="127.0.0.1:0", token=ADMIN_TOKEN),
        auth=AuthSettings(client_token=CLIENT_TOKEN),
    )
    channel = channel_to(running)
    seen: list[str] = [
        repr(running),
        repr(ServiceConfig(admin=AdminSettings(token=ADMIN_TOKEN), auth=AuthSettings(client_token=CLIENT_TOKEN))),
    ]
    codes = []
    for metadata in (None, bearer(WRONG_TOKEN), bearer(ADMIN_TOKEN), bearer(CLIENT_TOKEN)):
        for service_name, rpc, request in (
            ("admin", "DrainServer", ADMIN_CALLS["DrainServer"]),
            ("decision", "SelectServer", DATA_CALLS["SelectServer"]),
            ("decision", "WatchLoadStatus", DATA_CALLS["WatchLoadStatus"]),
        ):
            code, details = await call(channel, service_name, rpc, request, metadata)
            codes.append(code)
            seen.append(details)
    for token in (None, WRONG_TOKEN, ADMIN_TOKEN):
        seen.append(repr(await http_get(running, "/api/load-status", token)))
    async with (
        AsyncClient(running.target, token=CLIENT_TOKEN) as good,
        AsyncClient(running.target, token=WRONG_TOKEN) as bad,
    ):
        await good.select("api")
        try:
            await bad.select("api")
        except PermissionDeniedError as err:
            seen += [str(err), repr(err), repr(err.__cause__)]
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}

    # Refused calls are traced like any other, with their status code; a refused call's span can end
    # just after its caller saw the answer.
    def server_codes() -> dict[int, int]:
        found: dict[int, int] = {}
        for span in spans.get_finished_spans():
            attributes = span.attributes or {}
            if span.kind is SpanKind.SERVER and attributes.get("rpc.method") == "SelectServer":
                code = attributes["rpc.grpc.status_code"]
                assert isinstance(code, int), code
                found[code] = found.get(code, 0) + 1
        return found

    expected = {
        grpc.StatusCode.OK.value[0]: 2,
        grpc.StatusCode.UNAUTHENTICATED.value[0]: 1,
        grpc.StatusCode.PERMISSION_DENIED.value[0]: 3,
    }
    await wait_for(lambda: server_codes() == expected, f"SelectServer server spans {expected}")
    finished = spans.get_finished_spans()
    assert any(s.kind is SpanKind.CLIENT for s in finished) and any(
        s.name.endswith("AdminService/DrainServer") for s in finished
    )
    seen += [span_text(span) for span in finished]
    seen.append(caplog.text)
    assert any("refused /loadwarden.v1.AdminService/DrainServer" in r.getMessage() for r in caplog.records)
    for text in seen:
        for secret in SECRETS:
            assert secret not in text
