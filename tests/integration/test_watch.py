"""WatchLoadStatus over a real grpc.aio server: a snapshot at once, then on change."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from loadwarden.server import CoreLimits, RunningService
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import three_server_pool


@pytest.fixture
async def service(start) -> RunningService:
    return await start(three_server_pool("api"), limits=CoreLimits(max_watch_streams=2))


async def test_first_snapshot_at_once_then_only_on_change(service: RunningService, channel_to) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    stream = stub.WatchLoadStatus(pb.WatchLoadStatusRequest(pool="api", interval_ms=100))
    first = await asyncio.wait_for(stream.read(), 5)
    assert [s.id for s in first.status.pools[0].servers] == ["s1", "s2", "s3"]
    # Nothing changes: no second snapshot within several intervals.
    pending = asyncio.ensure_future(stream.read())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(pending), 0.45)
    await stub.ReportLoad(pb.ReportLoadRequest(reports=[common.LoadReport(pool="api", server_id="s2", cpu_percent=42)]))
    changed = await asyncio.wait_for(pending, 5)  # the read that was waiting gets the change
    s2 = next(s for s in changed.status.pools[0].servers if s.id == "s2")
    assert s2.load.cpu_percent == 42
    stream.cancel()


async def test_streams_are_capped(service: RunningService, channel_to) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    open_streams = [stub.WatchLoadStatus(pb.WatchLoadStatusRequest(interval_ms=100)) for _ in range(2)]
    for stream in open_streams:
        await asyncio.wait_for(stream.read(), 5)
    third = stub.WatchLoadStatus(pb.WatchLoadStatusRequest(interval_ms=100))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(third.read(), 5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_watch_streams" in (err.value.details() or "")
    for stream in open_streams:
        stream.cancel()
    # Closed streams free their places.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        again = stub.WatchLoadStatus(pb.WatchLoadStatusRequest(interval_ms=100))
        try:
            await asyncio.wait_for(again.read(), 5)
            again.cancel()
            break
        except grpc.aio.AioRpcError as retry:
            assert retry.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and loop.time() < deadline
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (pb.WatchLoadStatusRequest(interval_ms=50), grpc.StatusCode.INVALID_ARGUMENT, "interval_ms"),
        (pb.WatchLoadStatusRequest(interval_ms=60_001), grpc.StatusCode.INVALID_ARGUMENT, "interval_ms"),
        (pb.WatchLoadStatusRequest(pool="bad name"), grpc.StatusCode.INVALID_ARGUMENT, "pool"),
        (pb.WatchLoadStatusRequest(pool="nope"), grpc.StatusCode.NOT_FOUND, "pool"),
    ],
)
async def test_bad_watch_requests(service: RunningService, channel_to, request_, code, field) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(stub.WatchLoadStatus(request_).read(), 5)
    assert err.value.code() == code and (err.value.details() or "").startswith(f"{field}: ")


async def test_streams_of_one_feed_get_the_same_snapshot(service: RunningService, channel_to) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    streams = [stub.WatchLoadStatus(pb.WatchLoadStatusRequest(pool="api", interval_ms=1_000)) for _ in range(2)]
    firsts = [await asyncio.wait_for(s.read(), 5) for s in streams]
    assert firsts[0] == firsts[1] and firsts[0].status.HasField("generated_at")
    await stub.ReportLoad(pb.ReportLoadRequest(reports=[common.LoadReport(pool="api", server_id="s1", cpu_percent=9)]))
    seconds = [await asyncio.wait_for(s.read(), 5) for s in streams]
    assert seconds[0] == seconds[1] and seconds[0].status.pools[0].servers[0].load.cpu_percent == 9
    for s in streams:
        s.cancel()


LONG_ID = 120  # characters of each server id: makes every server status about 420 bytes


def big_pool(name: str, count: int) -> common.PoolConfig:
    return common.PoolConfig(
        name=name,
        servers=[
            common.ServerSpec(id=f"{name}-{i:06d}-".ljust(LONG_ID, "x"), address=f"{'h' * 240}.example:{1000 + i}")
            for i in range(count)
        ],
    )


async def test_an_unfiltered_status_over_the_receive_limit_comes_in_pages(start, channel_to) -> None:
    from loadwarden.v1 import admin_pb2, admin_pb2_grpc

    service = await start(three_server_pool("api"))
    channel = channel_to(service)  # gRPC's default 4 MiB receive limit, as the SDK's
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    for name in ("big-a", "big-b"):
        await admin.ConfigurePool(admin_pb2.ConfigurePoolRequest(pool=big_pool(name, 6_000)), timeout=60)
    stub = pb_grpc.DecisionServiceStub(channel)
    # An old client (no page fields) gets a valid first page under the limit, with the way on.
    first = await stub.GetLoadStatus(pb.GetLoadStatusRequest(), timeout=30)
    assert first.next_page_token and first.ByteSize() < 4 * 1024 * 1024
    seen: list[str] = [s.id for p in first.status.pools for s in p.servers]
    token, pages = first.next_page_token, 1
    while token:
        page = await stub.GetLoadStatus(pb.GetLoadStatusRequest(page_token=token), timeout=30)
        seen += [s.id for p in page.status.pools for s in p.servers]
        token, pages = page.next_page_token, pages + 1
        assert pages < 20
    assert len(seen) == 12_003 and len(set(seen)) == len(seen) and pages >= 2
    # The SDK reads every page and returns one snapshot; a pool split over pages comes back whole.
    from loadwarden.sdk import AsyncClient, Client

    async with AsyncClient(service.target, timeout_s=30.0) as client:
        whole = await client.load_status()
    assert sorted(p.name for p in whole.pools) == ["api", "big-a", "big-b"]
    assert sorted(len(p.servers) for p in whole.pools) == [3, 6_000, 6_000]
    assert [s.id for p in whole.pools for s in p.servers] == seen
    with Client(service.target, timeout_s=30.0) as sync_client:
        assert (await asyncio.to_thread(sync_client.load_status)).pools == whole.pools
    small = await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="api", page_size=2), timeout=30)
    assert [s.id for s in small.status.pools[0].servers] == ["s1", "s2"] and small.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="big-a", page_token=small.next_page_token), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and (err.value.details() or "").startswith(
        "page_token: "
    )
    # A watch on a snapshot over the bound ends saying how to get it.
    stream = stub.WatchLoadStatus(pb.WatchLoadStatusRequest())  # all pools: about 5 MB
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(stream.read(), 30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "page GetLoadStatus" in (
        err.value.details() or ""
    )
