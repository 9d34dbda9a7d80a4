"""BackendReporter against a real in-process service, with sync and async clients.

The reporter's load shows in GetLoadStatus; when the service stops, pushes fail
without reaching the backend, and once a new service listens on the same port the
reports resume within two intervals. The sync client's reporter pushes from its
own thread while the service runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from loadwarden.sdk import AsyncClient, Client, ServerStatus, UnavailableError
from loadwarden.sdk._reporter import BackendReporter
from loadwarden.server import RunningService, ServiceConfig, start_service

from ..conftest import StartService, three_server_pool, wait_for

BuildReporter = Callable[[RunningService], BackendReporter]

INTERVAL_S = 0.25  # push interval, seconds
WAIT_S = 5.0  # bound of every poll, seconds
poll = functools.partial(wait_for, timeout_s=WAIT_S)  # every wait in this file is bounded by WAIT_S
CPU_PERCENT, MEMORY_PERCENT = 37.5, 61.0

# A stopped service makes the channel back off before reconnecting (1 s, growing,
# by default). Reconnect timing is the channel's, not the reporter's: keep it
# shorter than the interval so the test measures the reporter.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 100),
]

# A client with its default breaker and retries: ReportLoad bypasses both (the
# reporter's interval is its retry), so pushes resume on the first interval.
REPORTER_CLIENT: dict[str, Any] = {}

# Failed pushes the outage lasts at least: longer than one push, so the restart is a real outage.
OUTAGE_PUSHES = 3


async def server_status(running: RunningService, server_id: str) -> ServerStatus:
    async with AsyncClient(running.target) as checker:
        status = await checker.load_status("api")
    [server] = [s for s in status.pools[0].servers if s.id == server_id]
    return server


async def reporter_stats(reporter: BackendReporter) -> Any:
    return reporter.stats()


def has_reported_load(server: ServerStatus) -> bool:
    return server.load is not None and server.load.cpu_percent == CPU_PERCENT


@pytest.fixture(params=["sync", "async"])
async def reporter_for(request: pytest.FixtureRequest) -> AsyncIterator[BuildReporter]:
    """Builds a started reporter for server s2 of pool "api"; stops it and its client at teardown."""
    built: list[tuple[BackendReporter, Any, Any]] = []

    def build(running: RunningService) -> BackendReporter:
        client: Client | AsyncClient
        if request.param == "sync":
            channel: Any = grpc.insecure_channel(running.target, options=FAST_RECONNECT)
            client = Client(channel=channel, timeout_s=1.0, **REPORTER_CLIENT)
        else:
            channel = grpc.aio.insecure_channel(running.target, options=FAST_RECONNECT)
            client = AsyncClient(channel=channel, timeout_s=1.0, **REPORTER_CLIENT)
        reporter = BackendReporter(
            client, "api", "s2", interval_s=INTERVAL_S, sampler=lambda: (CPU_PERCENT, MEMORY_PERCENT)
        )
        reporter.start()
        built.append((reporter, client, channel))
        return reporter

    yield build
    for reporter, client, channel in built:
        await reporter.stop_async()
        if isinstance(client, AsyncClient):
            await client.close()
            await channel.close()
        else:
            await asyncio.to_thread(client.close)
            channel.close()


async def test_reported_load_shows_in_load_status(start: StartService, reporter_for: BuildReporter) -> None:
    running = await start(three_server_pool("api"))
    reporter = reporter_for(running)
    with reporter.track():  # one request in flight until a report carries it
        server = await poll(
            lambda: server_status(running, "s2"),
            lambda s: has_reported_load(s) and s.load.active_requests == 1,
            "s2's load with one request in flight",
        )
    assert server.load is not None
    assert (server.load.cpu_percent, server.load.memory_percent) == (CPU_PERCENT, MEMORY_PERCENT)
    assert (server.load.active_requests, server.load.error_rate) == (1, 0.0)
    assert server.load_reported_at is not None
    others = [await server_status(running, s) for s in ("s1", "s3")]
    assert all(other.load is None for other in others)
    assert reporter.stats().failed == 0


async def test_reports_resume_after_the_service_restarts_on_the_same_port(
    start: StartService, reporter_for: BuildReporter
) -> None:
    running = await start(three_server_pool("api"))
    port = running.port
    reporter = reporter_for(running)
    await poll(lambda: server_status(running, "s2"), has_reported_load, "s2's first load")

    await running.stop(0)
    stats = await poll(lambda: reporter_stats(reporter), lambda s: s.failed >= OUTAGE_PUSHES, "failed pushes")
    assert isinstance(stats.last_error, UnavailableError)  # counted, never raised into the backend
    pushed_before = stats.pushed

    config = ServiceConfig(listen=f"127.0.0.1:{port}", pools=(three_server_pool("api"),))
    restarted = await start_service(config, rng=random.Random(7))
    restarted_at = datetime.now(UTC)
    try:
        server = await poll(lambda: server_status(restarted, "s2"), has_reported_load, "s2's load after the restart")
        assert server.load_reported_at is not None
        assert server.load_reported_at - restarted_at <= timedelta(seconds=2 * INTERVAL_S)
        assert reporter.stats().pushed > pushed_before
        assert reporter.running
    finally:
        await restarted.stop(0)
