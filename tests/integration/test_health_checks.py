"""Active health checks against real HTTP (aiohttp) and gRPC (grpc.aio) backends on
127.0.0.1:0: a backend that fails its checks turns unhealthy after the threshold and
gets nothing more; a slow one turns degraded and gets its reduced share; both come
back after the healthy threshold; errors of any kind stay inside the checker."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # grpcio-health-checking: no stubs, no py.typed

from loadwarden.policy import PoolSettings, ServerSpec
from loadwarden.server import RunningService
from loadwarden.server.app._settings import AdminSettings, PoolSpec
from loadwarden.server.engine._health_checks import HealthCheckSettings
from loadwarden.v1 import admin_pb2 as admin_pb
from loadwarden.v1 import admin_pb2_grpc as admin_grpc
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import wait_for
from .test_metrics import TOKEN, scrape, value

# Timeouts and latency thresholds far from what a loopback answer takes on a busy machine.
CHECK = HealthCheckSettings(
    interval_ms=200,
    timeout_ms=150,
    unhealthy_threshold=3,
    healthy_threshold=2,
    jitter_ms=10,
    degraded_weight_percent=20,
)
SLOW_S = 0.3
LATENCY_CHECK = HealthCheckSettings(
    interval_ms=500, timeout_ms=450, jitter_ms=0, degraded_latency_ms=150, degraded_weight_percent=20
)


@dataclass
class HttpBackend:
    """An aiohttp server whose /health answers as ``mode`` says."""

    mode: str = "ok"  # ok, 503, slow, degraded (JSON status), hang
    port: int = 0
    checks: int = 0
    runner: web.AppRunner | None = field(default=None, repr=False)

    async def health(self, request: web.Request) -> web.Response:
        self.checks += 1
        if self.mode == "503":
            return web.json_response({"status": "unhealthy"}, status=503)
        if self.mode == "slow":
            await asyncio.sleep(SLOW_S)
        if self.mode == "hang":
            await asyncio.sleep(5.0)
        status = "degraded" if self.mode == "degraded" else "healthy"
        return web.json_response({"status": status, "cpu_percent": 10.0, "active_requests": 0})

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def http_backends() -> AsyncIterator[list[HttpBackend]]:
    backends = [HttpBackend() for _ in range(3)]
    for backend in backends:
        app = web.Application()
        app.router.add_get("/health", backend.health)
        backend.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await backend.runner.setup()
        site = web.TCPSite(backend.runner, "127.0.0.1", 0)
        await site.start()
        backend.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # started: it has sockets
    yield backends
    for backend in backends:
        assert backend.runner is not None
        await backend.runner.cleanup()


def _pool(name: str, addresses: list[str], check: HealthCheckSettings = CHECK) -> PoolSpec:
    servers = tuple(ServerSpec(f"s{i}", address) for i, address in enumerate(addresses))
    return PoolSpec(PoolSettings(name=name, strategy="round_robin"), servers, check)


async def _status(stub: pb_grpc.DecisionServiceAsyncStub, pool: str) -> dict[str, common.ServerStatus]:
    answer = await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool=pool))
    return {s.id: s for s in answer.status.pools[0].servers}


def _until(
    stub: pb_grpc.DecisionServiceAsyncStub, pool: str, server: str
) -> Callable[[], Awaitable[common.ServerStatus]]:
    async def fetch() -> common.ServerStatus:
        return (await _status(stub, pool))[server]

    return fetch


async def _picks(stub: pb_grpc.DecisionServiceAsyncStub, pool: str, n: int) -> Counter[str]:
    answers = [await stub.SelectServer(pb.SelectServerRequest(pool=pool)) for _ in range(n)]
    return Counter(a.server_id for a in answers)


async def _service(start: Any, channel_to: Any, *pools: PoolSpec) -> tuple[Any, Any]:
    running: RunningService = await start(*pools)
    channel = channel_to(running)
    return admin_grpc.AdminServiceStub(channel), pb_grpc.DecisionServiceStub(channel)


async def test_http_backend_failing_its_checks_is_unhealthy_after_the_threshold_and_comes_back(
    start: Any, channel_to: Any, http_backends: list[HttpBackend]
) -> None:
    _, stub = await _service(start, channel_to, _pool("api", [b.address for b in http_backends]))
    fetch = _until(stub, "api", "s1")
    first = await wait_for(fetch, lambda s: s.health_check.state == "healthy", "s1 healthy")
    assert first.state == common.SERVER_STATE_SERVING and first.health_check.problem == ""

    http_backends[1].mode = "503"
    down = await wait_for(fetch, lambda s: s.health_check.state == "unhealthy", "s1 unhealthy")
    # Unhealthy on exactly the third failed check in a row: three intervals, not sooner.
    assert down.state == common.SERVER_STATE_UNHEALTHY
    assert down.health_check.consecutive_failures == 3 and down.health_check.problem == "HTTP 503"
    picks = await _picks(stub, "api", 200)
    assert picks["s1"] == 0 and picks["s0"] == picks["s2"] == 100

    http_backends[1].mode = "ok"
    back = await wait_for(fetch, lambda s: s.health_check.state == "healthy", "s1 back")
    assert back.state == common.SERVER_STATE_SERVING and back.health_check.consecutive_successes == 2
    assert (await _picks(stub, "api", 300))["s1"] == 100


async def test_a_slow_or_self_declared_degraded_backend_gets_its_reduced_share(
    start: Any, channel_to: Any, http_backends: list[HttpBackend]
) -> None:
    _, stub = await _service(start, channel_to, _pool("api", [b.address for b in http_backends], LATENCY_CHECK))
    http_backends[0].mode = "slow"  # answers in about 300 ms; degraded above 150 ms
    http_backends[2].mode = "degraded"  # says so in its JSON
    for sid in ("s0", "s2"):
        await wait_for(_until(stub, "api", sid), lambda s: s.health_check.state == "degraded", f"{sid} degraded")
    servers = await _status(stub, "api")
    assert (
        servers["s0"].state == common.SERVER_STATE_DEGRADED
        and "degraded above 150 ms" in servers["s0"].health_check.problem
    )
    assert servers["s2"].health_check.problem == "status 'degraded'"
    assert servers["s0"].effective_weight == pytest.approx(0.2)
    # Weighted round robin over weights 0.2, 1, 0.2: s1 takes 1/1.4 of the picks.
    picks = await _picks(stub, "api", 280)
    assert picks["s1"] == 200 and picks["s0"] == picks["s2"] == 40

    http_backends[0].mode = "ok"
    back = await wait_for(_until(stub, "api", "s0"), lambda s: s.health_check.state == "healthy", "s0 back")
    assert back.state == common.SERVER_STATE_SERVING and back.effective_weight == 1.0


async def test_timeouts_refused_connections_and_garbage_are_failed_checks_never_errors(
    start: Any, channel_to: Any, http_backends: list[HttpBackend]
) -> None:
    garbage = await asyncio.start_server(_garbage, "127.0.0.1", 0)
    garbage_port = garbage.sockets[0].getsockname()[1]
    closed = await asyncio.start_server(_garbage, "127.0.0.1", 0)
    refused_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    http_backends[0].mode = "hang"
    addresses = [
        http_backends[0].address,
        f"127.0.0.1:{refused_port}",
        f"127.0.0.1:{garbage_port}",
        http_backends[1].address,
    ]
    running = await start(_pool("api", addresses), admin=AdminSettings(listen="127.0.0.1:0", token=TOKEN))
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    try:
        servers = await wait_for(
            lambda: _status(stub, "api"),
            lambda st: all(st[f"s{i}"].health_check.state == "unhealthy" for i in range(3)),
            "three unhealthy",
        )
        assert servers["s0"].health_check.problem == "timed out after 150 ms"
        assert servers["s1"].health_check.problem == "connection refused"
        assert servers["s2"].health_check.problem.startswith("not an HTTP answer")
        assert servers["s3"].health_check.state == "healthy"
        # Three of four unhealthy is under the panic threshold (50 %): every server is routed again.
        picks = await _picks(stub, "api", 40)
        assert sorted(picks) == ["s0", "s1", "s2", "s3"]
        status = await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="api"))
        assert status.status.pools[0].panic
        _, samples = await scrape(running)
        assert value(samples, "loadwarden_server_state", pool="api", server="s1", state="unhealthy") == 1
        assert value(samples, "loadwarden_server_health_checks_total", pool="api", server="s1", result="failed") >= 3
        assert value(samples, "loadwarden_server_health_checks_total", pool="api", server="s3", result="good") >= 1
    finally:
        garbage.close()


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    await writer.drain()
    writer.close()


async def test_only_addresses_in_the_configuration_are_checked(
    start: Any, channel_to: Any, http_backends: list[HttpBackend]
) -> None:
    admin, stub = await _service(start, channel_to, _pool("api", [http_backends[0].address]))
    # Registered over RPC at an address the configuration does not list: routed, never checked.
    server = common.ServerSpec(id="rpc", address=http_backends[1].address)
    await admin.RegisterServer(admin_pb.RegisterServerRequest(pool="api", server=server))
    await wait_for(_until(stub, "api", "s0"), lambda s: s.health_check.checks_total >= 3, "three checks of s0")
    assert http_backends[1].checks == 0 and http_backends[0].checks >= 3
    assert not (await _status(stub, "api"))["rpc"].HasField("health_check")
    assert (await _picks(stub, "api", 10)) == Counter({"s0": 5, "rpc": 5})


async def test_grpc_backends_are_checked_with_grpc_health(start: Any, channel_to: Any) -> None:
    backends = []
    for _ in range(2):
        server = grpc.aio.server()
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        backends.append((server, servicer, f"127.0.0.1:{port}"))
    check = HealthCheckSettings(protocol="grpc", interval_ms=200, timeout_ms=150, jitter_ms=0)
    try:
        _, stub = await _service(start, channel_to, _pool("grpc", [b[2] for b in backends], check))
        fetch = _until(stub, "grpc", "s0")
        await wait_for(fetch, lambda s: s.health_check.state == "healthy", "s0 healthy")
        await backends[0][1].set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        down = await wait_for(fetch, lambda s: s.health_check.state == "unhealthy", "s0 unhealthy")
        assert down.health_check.problem == "NOT_SERVING" and down.state == common.SERVER_STATE_UNHEALTHY
        assert (await _picks(stub, "grpc", 20)) == Counter({"s1": 20})
        await backends[0][0].stop(0)  # gone altogether: UNAVAILABLE, still a failed check
        await wait_for(fetch, lambda s: s.health_check.problem.startswith("UNAVAILABLE"), "s0 unavailable")
    finally:
        for server, _, _ in backends:
            await server.stop(0)
