"""`client.admin` (sync and async) against a real in-process service.

Every AdminService RPC is driven with the SDK's own types and answered with them;
bad input is refused with an error that names the argument, either by the SDK
(ValueError, TypeError) or by the service (InvalidArgumentError naming the field).
The sync client runs in a worker thread: the service runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from loadwarden.sdk import (
    AsyncClient,
    BatchMode,
    Client,
    Configured,
    InvalidArgumentError,
    NotFoundError,
    OperationConfig,
    OutlierDetection,
    PoolConfig,
    PoolStatus,
    ServerSpec,
    ServerState,
    ServerStatus,
    UnauthenticatedError,
)
from loadwarden.server import AdminSettings, RunningService

from ..conftest import StartService, three_server_pool, wait_for

ADMIN_TOKEN = "sdk-admin-token-0123456789"


class Driver:
    """Runs a client's calls as coroutines: the sync client's in a worker thread."""

    def __init__(self, client: Client | AsyncClient) -> None:
        self.client = client

    async def admin(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method: Callable[..., Any] = getattr(self.client.admin, name)
        if isinstance(self.client, Client):
            return await asyncio.to_thread(method, *args, **kwargs)
        return await method(*args, **kwargs)

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method: Callable[..., Any] = getattr(self.client, name)
        if isinstance(self.client, Client):
            return await asyncio.to_thread(method, *args, **kwargs)
        return await method(*args, **kwargs)

    async def server(self, pool: str, server_id: str) -> ServerStatus:
        status = await self.call("load_status", pool)
        [server] = [s for s in status.pools[0].servers if s.id == server_id]
        assert isinstance(server, ServerStatus)
        return server


@pytest.fixture(params=["sync", "async"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Driver]]:
    drivers: list[Driver] = []

    def _connect(target: str, **options: Any) -> Driver:
        flavour = Client if request.param == "sync" else AsyncClient
        driver = Driver(flavour(target, **options))
        drivers.append(driver)
        return driver

    yield _connect
    for driver in drivers:
        await driver.call("close")


@pytest.fixture
async def service(start: StartService) -> RunningService:
    return await start(three_server_pool("api"))


async def test_configure_pool_creates_then_replaces_with_plain_params(service: RunningService, connect) -> None:
    client = connect(service.target)
    config = PoolConfig(
        "web",
        strategy="p2c",
        strategy_params={"choice_count": 3},
        servers=[ServerSpec("w1", "10.0.0.1:80"), ServerSpec("w2", "10.0.0.2:80", weight=5)],
        max_concurrency=4,
        outlier_detection=OutlierDetection(consecutive_failures=2),
    )

    first = await client.admin("configure_pool", config)
    again = await client.admin("configure_pool", PoolConfig("web", strategy="round_robin"))

    assert isinstance(first, Configured) and isinstance(first.status, PoolStatus)
    assert first.created is True
    assert first.status.strategy == "p2c"
    assert [(s.id, s.weight) for s in first.status.servers] == [("w1", 1), ("w2", 5)]
    assert first.status.concurrency_limit == 4
    assert again.created is False
    assert again.status.strategy == "round_robin"
    assert [s.id for s in again.status.servers] == ["w1", "w2"]  # no servers listed: the pool keeps its own


async def test_register_update_and_deregister_a_server(service: RunningService, connect) -> None:
    client = connect(service.target)

    added = await client.admin("register_server", "api", "s4", "127.0.0.1:9004", weight=3)
    updated = await client.admin("register_server", "api", "s4", "127.0.0.1:9044")
    await client.admin("deregister_server", "api", "s4")

    assert added.created is True
    assert (added.status.id, added.status.address, added.status.weight) == ("s4", "127.0.0.1:9004", 3)
    assert updated.created is False
    assert updated.status.address == "127.0.0.1:9044"
    status = await client.call("load_status", "api")
    assert [s.id for s in status.pools[0].servers] == ["s1", "s2", "s3"]
    with pytest.raises(NotFoundError):
        await client.admin("deregister_server", "api", "s4")


async def test_drain_then_resume_a_server(service: RunningService, connect) -> None:
    client = connect(service.target)

    drained = await client.admin("drain_server", "api", "s2")
    picks = {(await client.call("select", "api")).server_id for _ in range(6)}
    resumed = await client.admin("resume_server", "api", "s2")

    assert drained.state is ServerState.DRAINING
    assert picks == {"s1", "s3"}
    assert resumed.state is ServerState.SERVING
    assert (await client.server("api", "s2")).state is ServerState.SERVING


async def test_configure_and_delete_an_operation(service: RunningService, connect) -> None:
    client = connect(service.target)
    config = OperationConfig("export", min_batch_size=10, max_batch_size=100, default_batch_size=40)

    made = await client.admin("configure_operation", config)
    size = await client.call("batch_size", "export")
    await client.admin("delete_operation", "export")

    assert made.created is True
    assert (made.status.name, made.status.min_batch_size, made.status.max_batch_size) == ("export", 10, 100)
    assert made.status.mode is BatchMode.THRESHOLD  # UNSPECIFIED asks for the default
    assert 10 <= size.size <= 100
    with pytest.raises(NotFoundError):
        await client.call("batch_size", "export")
    with pytest.raises(NotFoundError):
        await client.admin("delete_operation", "export")


async def test_delete_pool(service: RunningService, connect) -> None:
    client = connect(service.target)
    await client.admin("configure_pool", PoolConfig("gone", servers=[ServerSpec("g1", "10.0.0.9:80")]))

    await client.admin("delete_pool", "gone")

    with pytest.raises(NotFoundError):
        await client.call("select", "gone")
    with pytest.raises(NotFoundError):
        await client.admin("delete_pool", "gone")


async def test_the_service_refuses_a_field_by_its_name(service: RunningService, connect) -> None:
    client = connect(service.target)

    with pytest.raises(InvalidArgumentError, match=r"pool\.max_wait_ms"):
        await client.admin("configure_pool", PoolConfig("api", max_wait_ms=4_000_000))
    with pytest.raises(InvalidArgumentError, match=r"pool\.strategy_params"):
        await client.admin("configure_pool", PoolConfig("api", strategy="p2c", strategy_params={"choices": 2}))
    with pytest.raises(InvalidArgumentError, match=r"operation\.min_batch_size"):
        await client.admin("configure_operation", OperationConfig("x", 10, 5, 7))
    with pytest.raises(NotFoundError):
        await client.admin("register_server", "no-such-pool", "s1", "10.0.0.1:80")


async def test_the_sdk_refuses_bad_arguments_by_name_before_any_call(service: RunningService, connect) -> None:
    client = connect(service.target)

    with pytest.raises(TypeError, match="pool must be a PoolConfig"):
        await client.admin("configure_pool", {"name": "api"})
    with pytest.raises(TypeError, match="operation must be an OperationConfig"):
        await client.admin("configure_operation", "export")
    with pytest.raises(ValueError, match="server_id must be a non-empty string"):
        await client.admin("drain_server", "api", "")
    with pytest.raises(ValueError, match="pool must be a non-empty string"):
        await client.admin("delete_pool", None)
    with pytest.raises(ValueError, match="weight must be an integer"):
        await client.admin("register_server", "api", "s9", "10.0.0.9:80", weight="2")
    with pytest.raises(ValueError, match="address must be a non-empty string"):
        await client.admin("register_server", "api", "s9", "")


async def test_admin_calls_take_the_clients_token_and_typed_errors(start: StartService, connect) -> None:
    service = await start(three_server_pool("api"), admin=AdminSettings(token=ADMIN_TOKEN))
    anonymous = connect(service.target)
    admin = connect(service.target, token=ADMIN_TOKEN)

    with pytest.raises(UnauthenticatedError):
        await anonymous.admin("drain_server", "api", "s1")
    drained = await admin.admin("drain_server", "api", "s1")

    assert drained.state is ServerState.DRAINING


async def test_server_status_carries_the_ejection_fields(service: RunningService, connect) -> None:
    client = connect(service.target)
    pool = PoolConfig(
        "ej",
        servers=[ServerSpec("e1", "10.0.0.1:80"), ServerSpec("e2", "10.0.0.2:80"), ServerSpec("e3", "10.0.0.3:80")],
        outlier_detection=OutlierDetection(consecutive_failures=2, base_ejection_time_ms=60_000),
    )
    await client.admin("configure_pool", pool)
    fresh = await client.server("ej", "e1")
    assert (fresh.ejections_total, fresh.ejected_until, fresh.consecutive_failures) == (0, None, 0)
    assert fresh.effective_weight == 1.0  # no slow start: the registered weight

    async def fail_e1() -> ServerStatus:
        selection = await client.call("select", "ej", exclude=["e2", "e3"])
        await client.call("report_outcome", selection, success=False, latency_ms=5.0)
        await client.call("flush_outcomes", 5.0)
        return await client.server("ej", "e1")

    before = datetime.now(UTC)
    ejected = await wait_for(fail_e1, lambda s: s.state is ServerState.EJECTED, "e1 ejected")

    assert ejected.ejections_total == 1
    assert ejected.ejected_until is not None and ejected.ejected_until > before
