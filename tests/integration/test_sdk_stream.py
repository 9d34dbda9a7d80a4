"""The SDK with `transport="stream"`: its central calls on one Decide stream, against a real
in-process service, answering and failing exactly as the unary calls do."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from loadwarden.sdk import AsyncClient, Client, LoadwardenError, NotFoundError, SlotDenied, UnavailableError, deadline
from loadwarden.server import ServiceConfig, start_service
from loadwarden.v1 import admin_pb2 as admin
from loadwarden.v1 import admin_pb2_grpc as admin_grpc
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import three_server_pool

WAIT_S = 5.0


async def status(channel: Any, pool: str) -> Any:
    answer = await pb_grpc.DecisionServiceStub(channel).GetLoadStatus(pb.GetLoadStatusRequest(pool=pool))
    return answer.status.pools[0]


async def test_selects_slots_and_outcomes_travel_on_the_stream(start, channel_to) -> None:
    running = await start(three_server_pool("api"), three_server_pool("one", max_concurrency=1))
    async with AsyncClient(running.target, transport="stream") as client:
        picks = [(await client.select("api")).server_id for _ in range(6)]
        assert picks == ["s1", "s2", "s3", "s1", "s2", "s3"]
        async with client.route("api") as route:
            assert route.selection.decision_id and not route.selection.local
        async with client.slot("one") as lease:
            assert lease.lease_id and not lease.fallback
            with pytest.raises(SlotDenied):
                await client.acquire_slot("one")  # the one slot is held
        assert await client.flush_outcomes(WAIT_S)
        stats = client.outcome_stats()
        assert stats.sent == 1 and stats.failed_batches == 0
        assert client._decide is not None and client._decide._connection is not None
    one = await status(channel_to(running), "one")
    assert one.active_leases == 0  # the slot came back through the stream
    api = await status(channel_to(running), "api")
    assert sum(s.selections_total for s in api.servers) == 7 and all(s.in_flight <= 6 for s in api.servers)


async def test_errors_are_the_unary_calls_errors(start, channel_to) -> None:
    running = await start(three_server_pool("api"))
    for server_id in ("s1", "s2", "s3"):
        await admin_grpc.AdminServiceStub(channel_to(running)).DrainServer(
            admin.DrainServerRequest(pool="api", server_id=server_id, state=admin.DRAIN_STATE_DRAINING)
        )
    async with AsyncClient(running.target, transport="stream") as client:
        with pytest.raises(NotFoundError) as missing:
            await client.select("nope")
        assert "pool" in str(missing.value)
        with pytest.raises(UnavailableError) as none_left:
            await client.select("api")
        assert none_left.value.reason == "no-eligible-server"  # an answer, not an outage
        await admin_grpc.AdminServiceStub(channel_to(running)).DrainServer(
            admin.DrainServerRequest(pool="api", server_id="s2", state=admin.DRAIN_STATE_SERVING)
        )
        assert (await client.select("api")).server_id == "s2"  # the stream goes on after errors
        with pytest.raises(NotFoundError):
            await client.release_slot("never-issued")


async def test_many_concurrent_calls_share_the_stream(start) -> None:
    running = await start(three_server_pool("api"))
    async with AsyncClient(running.target, transport="stream") as client:
        selections = await asyncio.gather(*(client.select("api") for _ in range(200)))
        assert len({s.decision_id for s in selections}) == 200
        assert {s.server_id for s in selections} == {"s1", "s2", "s3"}


async def test_a_dead_service_fails_calls_as_an_outage_and_a_restart_gets_a_new_stream(start) -> None:
    running = await start(three_server_pool("api"))
    port = running.port
    async with AsyncClient(running.target, transport="stream", timeout_s=1.0) as client:
        await client.select("api")
        await running.stop(0)
        fallback = await client.select("api")  # unreachable: local round robin over the known servers
        assert fallback.fallback
        config = ServiceConfig(listen=f"127.0.0.1:{port}", pools=(three_server_pool("api"),))
        restarted = await start_service(config, rng=random.Random(7))
        try:
            deadline = time.monotonic() + 10
            while True:
                again = await client.select("api")
                if not again.fallback:
                    break
                assert time.monotonic() < deadline, "the client never reached the restarted service"
                await asyncio.sleep(0.05)
            assert again.decision_id
        finally:
            await client.close()
            await restarted.stop(0)


async def test_an_acquire_that_outlives_its_timeout_is_abandoned_at_the_service(start, channel_to) -> None:
    running = await start(three_server_pool("one", max_concurrency=1, max_wait_ms=60_000))
    channel = channel_to(running)
    async with AsyncClient(running.target, transport="stream", retry=None) as client:
        held = await client.acquire_slot("one")
        with deadline(0.3), pytest.raises((SlotDenied, LoadwardenError)):  # the deadline cuts the 30 s wait, there too
            await client.acquire_slot("one", wait_s=30.0)
        until = time.monotonic() + WAIT_S
        while (await status(channel, "one")).queue_length:
            assert time.monotonic() < until, "the timed-out acquire stayed queued"
            await asyncio.sleep(0.02)
        await client.release_slot(held.lease_id)


async def test_the_sync_client_uses_the_stream_too(start, channel_to) -> None:
    running = await start(three_server_pool("api"), three_server_pool("one", max_concurrency=2))

    def run() -> list[str]:
        with Client(running.target, transport="stream") as client:
            picks = [client.select("api").server_id for _ in range(3)]
            with client.slot("one"), client.slot("one"), pytest.raises(SlotDenied):
                client.acquire_slot("one")
            with pytest.raises(NotFoundError):
                client.select("nope")
            return picks

    assert await asyncio.to_thread(run) == ["s1", "s2", "s3"]
    assert (await status(channel_to(running), "one")).active_leases == 0


def test_an_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="transport"):
        AsyncClient("127.0.0.1:1", transport="carrier-pigeon")


@pytest.mark.parametrize("transport", ["unary", "stream"])
async def test_background_releases_leave_the_block_at_once_and_close_sends_them(
    start, channel_to, transport: str
) -> None:
    running = await start(three_server_pool("pool", max_concurrency=50))
    channel = channel_to(running)
    client = AsyncClient(running.target, transport=transport, release_in_background=True)
    try:

        async def hold() -> None:
            async with client.slot("pool"):
                await asyncio.sleep(0)

        await asyncio.gather(*(hold() for _ in range(40)))
        assert client._release_sender is not None
    finally:
        await client.close()  # sends what is still queued
    assert (await status(channel, "pool")).active_leases == 0


async def test_the_sync_client_releases_in_the_background_too(start, channel_to) -> None:
    running = await start(three_server_pool("one", max_concurrency=1))

    def run() -> None:
        with Client(running.target, transport="stream", release_in_background=True) as client:
            for _ in range(5):  # each acquire waits until the previous release came through
                with client.slot("one", wait_s=5.0):
                    pass

    await asyncio.to_thread(run)
    assert (await status(channel_to(running), "one")).active_leases == 0


def test_release_in_background_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="release_in_background"):
        AsyncClient("127.0.0.1:1", release_in_background="yes")  # type: ignore[arg-type]  # the mistake under test
