"""/healthz and /readyz on a real service's admin port, and the gRPC health beside them,
while a real redis-server is killed and brought back (README "Health")."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # grpcio-health-checking: no stubs, no py.typed

from loadwarden.server import RunningService, ServiceConfig, start_service
from loadwarden.server.app._config import AdminSettings, MonitorSettings, StateSettings
from loadwarden.server.shared import RedisSettings

from ..conftest import wait_for
from ..e2e._harness import Processes, RedisServer

TOKEN = "readiness-test-admin-token-0123456789"
INTERVAL_MS = 200
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_prefixes = itertools.count()


@pytest.fixture
def redis_server(tmp_path: Any) -> Iterator[RedisServer]:
    procs = Processes(tmp_path)
    server = procs.redis()
    yield server
    procs.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _service(redis_url: str | None, on_failure: str = "fail_closed") -> RunningService:
    state = StateSettings()
    if redis_url is not None:
        state = StateSettings(
            store="redis",
            redis=RedisSettings(
                url=redis_url,
                key_prefix=f"{{readiness-{next(_prefixes)}}}:",
                on_failure=on_failure,
                connect_timeout_ms=200,
                command_timeout_ms=200,
            ),
        )
    config = ServiceConfig(
        listen="127.0.0.1:0",
        readiness_interval_ms=INTERVAL_MS,
        state=state,
        monitor=MonitorSettings(interval_ms=100),
        admin=AdminSettings(listen="127.0.0.1:0", token=TOKEN),
    )
    return await start_service(config)


async def _get(http: aiohttp.ClientSession, running: RunningService, path: str) -> tuple[int, Any]:
    async with http.get(f"http://127.0.0.1:{running.admin_port}{path}") as response:
        return response.status, await response.json()


async def _grpc_health(running: RunningService, service: str = "") -> int:
    async with grpc.aio.insecure_channel(running.target) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
        return int(answer.status)


async def test_readyz_follows_redis_out_and_back_and_healthz_stays_up(
    redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    running = await _service(redis_server.url)
    try:
        status, body = await wait_for(
            lambda: _get(http, running, "/readyz"),
            lambda got: got[1]["status"] == "ready",  # the load monitor's first sample in too
            what="ready with every check ok",
        )
        assert status == 200
        assert body["checks"]["redis"]["state"] == "ok" and body["checks"]["redis"]["critical"] is True
        assert body["checks"]["load_monitor"]["state"] == "ok"
        assert await _grpc_health(running) == SERVING

        checks_before = running.readiness.checks_total
        redis_server.kill()
        status, body = await wait_for(
            lambda: _get(http, running, "/readyz"), lambda got: got[0] == 503, what="not ready", timeout_s=10
        )
        # Within one check interval: the check running when Redis went may still have passed.
        assert running.readiness.checks_total - checks_before <= 2
        assert body["status"] == "not_ready"
        assert body["checks"]["redis"]["state"] == "failing" and body["checks"]["redis"]["detail"]
        assert await _grpc_health(running) == NOT_SERVING
        assert await _grpc_health(running, "loadwarden.v1.DecisionService") == NOT_SERVING
        assert await _grpc_health(running, "loadwarden.v1.AdminService") == SERVING  # operators still get in
        assert await _get(http, running, "/healthz") == (200, {"status": "alive"})

        redis_server.start()
        status, body = await wait_for(
            lambda: _get(http, running, "/readyz"), lambda got: got[0] == 200, what="ready again", timeout_s=10
        )
        assert body["checks"]["redis"]["state"] == "ok"
        assert await wait_for(lambda: _grpc_health(running), lambda got: got == SERVING, what="SERVING again")
    finally:
        await running.stop(0)


async def test_with_fail_open_a_dead_redis_is_degraded_yet_ready(
    redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    running = await _service(redis_server.url, on_failure="fail_open")
    try:
        await wait_for(lambda: _get(http, running, "/readyz"), lambda got: got[1]["status"] == "ready", what="ready")
        redis_server.kill()
        status, body = await wait_for(
            lambda: _get(http, running, "/readyz"),
            lambda got: got[1]["status"] == "degraded",
            what="degraded",
            timeout_s=10,
        )
        assert status == 200
        assert body["checks"]["redis"]["state"] == "failing" and body["checks"]["redis"]["critical"] is False
        assert await _grpc_health(running) == SERVING
    finally:
        await running.stop(0)


async def test_health_paths_need_no_token_and_tell_nothing_else(http: aiohttp.ClientSession) -> None:
    running = await _service(None)
    try:
        assert await _get(http, running, "/healthz") == (200, {"status": "alive"})
        status, body = await wait_for(
            lambda: _get(http, running, "/readyz"), lambda got: got[1]["status"] == "ready", what="ready"
        )
        assert status == 200 and set(body["checks"]) == {"load_monitor"}  # no Redis configured
        assert (await _get(http, running, "/api/load-status"))[0] == 401  # the rest still needs the token
        assert (await _get(http, running, "/metrics"))[0] == 401
        assert (await _get(http, running, "/healthz/x"))[0] == 401  # only the exact paths are open
        async with http.post(f"http://127.0.0.1:{running.admin_port}/readyz") as response:
            assert response.status == 405
    finally:
        await running.stop(0)


async def test_a_stopping_service_is_not_ready_before_its_port_closes(http: aiohttp.ClientSession) -> None:
    running = await _service(None)
    await wait_for(lambda: _get(http, running, "/readyz"), lambda got: got[0] == 200, what="ready")
    await running.readiness.stopping()  # what stop() does first
    status, body = await _get(http, running, "/readyz")
    assert status == 503 and body["checks"]["shutdown"]["detail"] == "the service is stopping"
    await running.stop(0)
