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
async def service(start) -> RunningService:  # type: ignore[no-untyped-def]
    return await start(three_server_pool("api"), limits=CoreLimits(max_watch_streams=2))


async def test_first_snapshot_at_once_then_only_on_change(service: RunningService, channel_to) -> None:  # type: ignore[no-untyped-def]
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


async def test_streams_are_capped(service: RunningService, channel_to) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    open_streams = [stub.WatchLoadStatus(pb.WatchLoadStatusRequest(interval_ms=100)) for _ in range(2)]
    for stream in open_streams:
        await asyncio.wait_for(stream.read(), 5)
    third = stub.WatchLoadStatus(pb.WatchLoadStatusRequest(interval_ms=100))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(third.read(), 5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_watch_streams" in err.value.details()
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
async def test_bad_watch_requests(service: RunningService, channel_to, request_, code, field) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(stub.WatchLoadStatus(request_).read(), 5)
    assert err.value.code() == code and err.value.details().startswith(f"{field}: ")
