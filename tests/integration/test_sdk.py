"""The SDK's sync and async clients pass the same behavioural tests against a real service.

The sync client runs in a worker thread (``asyncio.to_thread``) because the
service under test runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from loadwarden.sdk import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ServerState,
    UnavailableError,
    UnimplementedError,
)
from loadwarden.sdk._errors import is_transport_failure
from loadwarden.server import RunningService

from ..conftest import three_server_pool


class Boom(Exception):
    pass


class SyncDriver:
    """Drives a sync Client from a worker thread, exposing coroutines."""

    def __init__(self, target: str, **options: Any) -> None:
        self.client = Client(target, **options)

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def select(self, pool: str, **kw: Any) -> Any:
        return await self.run(self.client.select, pool, **kw)

    async def route(self, pool: str, mode: str = "ok") -> str:
        def body() -> str:
            with self.client.route(pool) as route:
                if mode == "fail":
                    route.fail("503")
                if mode == "raise":
                    raise Boom()
                return route.server_id

        return await self.run(body)

    async def report_load(self, pool: str, server_id: str, **kw: Any) -> int:
        return await self.run(self.client.report_load, pool, server_id, **kw)

    async def load_status(self, pool: str | None = None) -> Any:
        return await self.run(self.client.load_status, pool)

    async def flush(self) -> bool:
        return await self.run(self.client.flush_outcomes, 5.0)

    async def close(self) -> None:
        await self.run(self.client.close)


class AsyncDriver:
    def __init__(self, target: str, **options: Any) -> None:
        self.client = AsyncClient(target, **options)

    async def select(self, pool: str, **kw: Any) -> Any:
        return await self.client.select(pool, **kw)

    async def route(self, pool: str, mode: str = "ok") -> str:
        async with self.client.route(pool) as route:
            if mode == "fail":
                route.fail("503")
            if mode == "raise":
                raise Boom()
            return route.server_id

    async def report_load(self, pool: str, server_id: str, **kw: Any) -> int:
        return await self.client.report_load(pool, server_id, **kw)

    async def load_status(self, pool: str | None = None) -> Any:
        return await self.client.load_status(pool)

    async def flush(self) -> bool:
        return await self.client.flush_outcomes(5.0)

    async def close(self) -> None:
        await self.client.close()


Driver = SyncDriver | AsyncDriver


@pytest.fixture(params=["sync", "async"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Driver]]:
    drivers: list[Driver] = []

    def _connect(target: str, **options: Any) -> Driver:
        driver = (SyncDriver if request.param == "sync" else AsyncDriver)(target, **options)
        drivers.append(driver)
        return driver

    yield _connect
    for driver in drivers:
        await driver.close()


@pytest.fixture
async def service(start) -> RunningService:
    return await start(three_server_pool("api"))


async def test_select_round_robins(service: RunningService, connect) -> None:
    client = connect(service.target)
    picks = [await client.select("api") for _ in range(30)]
    assert Counter(p.server_id for p in picks) == {"s1": 10, "s2": 10, "s3": 10}
    assert all(p.strategy == "round_robin" and not p.fallback and p.decision_id for p in picks)
    assert (await client.select("api", exclude=["s1", "s2"])).server_id == "s3"


async def test_route_reports_success_failure_and_exceptions(service: RunningService, connect) -> None:
    client = connect(service.target)
    ok = await client.route("api")
    failed = await client.route("api", "fail")
    with pytest.raises(Boom):
        await client.route("api", "raise")
    assert await client.flush()
    status = await client.load_status("api")
    servers = {s.id: s for s in status.pools[0].servers}
    assert status.pending_decisions == 0
    assert all(s.in_flight == 0 for s in servers.values())
    assert servers[ok].error_rate == 0.0
    assert servers[failed].error_rate == 1.0
    assert servers["s3"].error_rate == 1.0  # the block that raised
    assert client.client.outcome_stats().sent == 3


async def test_typed_errors(service: RunningService, connect) -> None:
    client = connect(service.target)
    with pytest.raises(NotFoundError, match="pool"):
        await client.select("nope")
    with pytest.raises(InvalidArgumentError) as err:
        await client.select("")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.details.startswith("pool:")
    with pytest.raises(InvalidArgumentError, match=r"reports\[0\]\.cpu_percent"):
        await client.report_load("api", "s1", cpu_percent=math.nan, memory_percent=1)
    with pytest.raises(NotFoundError, match=r"reports\[0\]\.server_id"):
        await client.report_load("api", "s9", cpu_percent=1, memory_percent=1)


async def test_no_eligible_server_is_unavailable_with_reason(start, connect) -> None:
    from loadwarden.server import PoolSettings, PoolSpec

    running = await start(PoolSpec(PoolSettings(name="empty")))
    client = connect(running.target)
    with pytest.raises(UnavailableError, match="has no servers") as err:
        await client.select("empty")
    assert err.value.reason == "no-eligible-server"
    assert not is_transport_failure(err.value)  # the service answered: must not trip a breaker


async def test_report_load_then_status(service: RunningService, connect) -> None:
    client = connect(service.target)
    applied = await client.report_load(
        "api", "s2", cpu_percent=42.0, memory_percent=30.0, active_requests=3, mean_latency_ms=8.5
    )
    assert applied == 1
    status = await client.load_status()
    s2 = next(s for s in status.pools[0].servers if s.id == "s2")
    assert s2.state is ServerState.SERVING
    assert s2.load is not None and s2.load.cpu_percent == 42.0 and s2.load.active_requests == 3
    assert s2.load_reported_at is not None
    s1 = next(s for s in status.pools[0].servers if s.id == "s1")
    assert s1.load is None and s1.load_reported_at is None


async def test_unreachable_service_fails_within_deadline(connect) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = connect(f"127.0.0.1:{port}", timeout_s=0.5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises((UnavailableError, DeadlineExceededError)) as err:
        await client.select("api")
    assert is_transport_failure(err.value)
    assert loop.time() - began < 5.0  # bounded by the deadline, not hanging


async def test_silent_service_hits_the_deadline(connect) -> None:
    release = asyncio.Event()

    async def never(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await release.wait()
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "loadwarden.v1.DecisionService", {"SelectServer": grpc.unary_unary_rpc_method_handler(never)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        client = connect(f"127.0.0.1:{port}", timeout_s=0.2)
        with pytest.raises(DeadlineExceededError):
            await client.select("api")
        with pytest.raises(UnimplementedError):
            await client.load_status()
    finally:
        release.set()
        await server.stop(0)
