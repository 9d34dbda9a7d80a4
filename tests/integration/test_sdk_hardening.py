"""The SDK against a real in-process grpc.aio service on 127.0.0.1: lost leases are told,
failed releases land later, and an open breaker lets calls back within 2 s of a restart.

A small asyncio TCP proxy between client and service stalls the connection on demand,
so a release really goes unanswered (no fake channel, no mocked gRPC).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from loadwarden.sdk import AsyncClient, BreakerConfig, BreakerState, LeaseLostError, RetryConfig
from loadwarden.sdk._async.leases import AsyncReleaseRetries
from loadwarden.server import PoolSettings, PoolSpec, ServiceConfig, start_service

from ..conftest import StartService, wait_for

FLOWING_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StallingProxy:
    """Forwards TCP between a client and 127.0.0.1:`upstream_port`; `stall()` holds every byte until `flow()`."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stall(self) -> None:
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await asyncio.wait_for(self._flowing.wait(), FLOWING_TIMEOUT_S)
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()


@pytest.fixture
async def proxy_to() -> AsyncIterator:
    proxies: list[StallingProxy] = []

    async def _start(port: int) -> StallingProxy:
        proxy = StallingProxy(port)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield _start
    for proxy in proxies:
        await proxy.close()


def ml_pool(**settings: Any) -> PoolSpec:
    settings.setdefault("max_concurrency", 2)
    return PoolSpec(PoolSettings(name="ml", **settings), ())


async def active_leases(client: AsyncClient) -> int:
    status = await client.load_status("ml")
    return status.pools[0].active_leases


async def test_a_lease_the_service_no_longer_holds_is_seen_lost_by_the_block(start: StartService) -> None:
    running = await start(ml_pool())
    told: list[LeaseLostError] = []
    async with AsyncClient(running.target, timeout_s=1.0) as client, AsyncClient(running.target) as other:
        with pytest.raises(LeaseLostError) as raised:
            async with client.slot("ml", lease_ttl_s=0.4, on_lost=told.append) as lease:
                assert await other.release_slot(lease.lease_id)  # ended behind the holder's back
                await wait_for(lambda: asyncio.sleep(0, lease.lost), bool, "the keeper sees the loss")
                assert told == [lease.lost_error]

        assert raised.value is told[0]
        assert raised.value.why == "reclaimed" and raised.value.lease_id == lease.lease_id
        assert await active_leases(client) == 0


async def test_a_lease_whose_service_died_is_lost_once_its_ttl_passes_unrenewed(start: StartService) -> None:
    running = await start(ml_pool())
    told: list[LeaseLostError] = []
    client = AsyncClient(running.target, timeout_s=0.2, retry=None)
    try:
        with pytest.raises(LeaseLostError) as raised:
            async with client.slot("ml", lease_ttl_s=1.0, on_lost=told.append) as lease:
                began = time.monotonic()
                await running.stop(0)
                await wait_for(lambda: asyncio.sleep(0, lease.lost), bool, "the lease is lost", timeout_s=5.0)
                lost_after_s = time.monotonic() - began

        assert raised.value.why == "expired" and told == [raised.value]
        assert 0.5 < lost_after_s < 2.5  # about one TTL after the last successful renewal or grant
    finally:
        await client.close()


async def test_a_release_that_got_no_answer_lands_in_the_background(start: StartService, proxy_to) -> None:
    running = await start(ml_pool())
    proxy = await proxy_to(running.port)
    client = AsyncClient(f"127.0.0.1:{proxy.port}", timeout_s=0.2, retry=RetryConfig(max_attempts=1), breaker=None)
    observer = AsyncClient(running.target)
    releases = client._releases
    assert isinstance(releases, AsyncReleaseRetries)
    try:
        async with client.slot("ml", lease_ttl_s=30.0):
            proxy.stall()  # the release below gets no answer in its 0.2 s
        assert releases.pending() == 1
        assert await active_leases(observer) == 1

        proxy.flow()
        await wait_for(lambda: active_leases(observer), lambda n: n == 0, "the retried release lands", timeout_s=5.0)
        await wait_for(lambda: asyncio.sleep(0, releases.pending()), lambda n: n == 0, "retries settle")
    finally:
        await client.close()
        await observer.close()


async def test_close_drains_a_pending_release_before_closing_the_channel(start: StartService, proxy_to) -> None:
    running = await start(ml_pool())
    proxy = await proxy_to(running.port)
    client = AsyncClient(f"127.0.0.1:{proxy.port}", timeout_s=0.2, retry=None, breaker=None, close_timeout_s=3.0)
    async with AsyncClient(running.target) as observer:
        async with client.slot("ml", lease_ttl_s=30.0):
            proxy.stall()
        proxy.flow()

        await client.close()  # at once: the background retry has not run yet

        assert await active_leases(observer) == 0


async def test_calls_reach_a_restarted_service_within_two_seconds_whatever_the_open_wait(
    clock_free_service_config: ServiceConfig,
) -> None:
    config = clock_free_service_config
    running = await start_service(config)
    client = AsyncClient(
        config.listen,
        timeout_s=0.2,
        retry=None,
        breaker=BreakerConfig(consecutive_failures=2, open_wait_s=60.0, max_open_wait_s=60.0),
    )
    try:
        await client.acquire_slot("ml")
        await running.stop(0)
        for _ in range(3):
            await client.acquire_slot("ml")  # local fallback answers
        breaker = client.breaker("AcquireSlot")
        assert breaker is not None and breaker.state is BreakerState.OPEN

        running = await start_service(config)
        serving_at = time.monotonic()

        async def from_service() -> bool:
            lease = await client.acquire_slot("ml")
            if not lease.fallback:
                await client.release_slot(lease.lease_id)
            return not lease.fallback

        await wait_for(from_service, bool, "a call reaches the restarted service", timeout_s=5.0)
        assert time.monotonic() - serving_at < 2.0
        assert client._prober is not None and client._prober.recoveries >= 1
    finally:
        await client.close()
        await running.stop(0)


@pytest.fixture
def clock_free_service_config() -> ServiceConfig:
    return ServiceConfig(listen=f"127.0.0.1:{free_port()}", pools=(ml_pool(max_concurrency=100),))
