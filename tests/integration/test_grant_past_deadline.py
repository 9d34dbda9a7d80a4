"""A grant made after its call's deadline passed goes straight back (issue 14): the event loop
was busy, the client has given up, and the slot must not wait for its TTL."""

from __future__ import annotations

import time

import grpc
import pytest

from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import three_server_pool


async def test_a_grant_past_its_deadline_is_given_back(start, channel_to) -> None:
    service = await start(three_server_pool("jobs", max_concurrency=2))
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    await stub.AcquireSlot(pb.AcquireSlotRequest(pool="jobs"), timeout=5)  # connected; one slot held
    core = service.core
    acquire = core.acquire

    async def busy_then_acquire(request, time_left_s):
        time.sleep(0.2)  # the event loop is busy past the call's 50 ms deadline (other work, a slow host)
        return await acquire(request, time_left_s)

    core.acquire = busy_then_acquire
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AcquireSlot(pb.AcquireSlotRequest(pool="jobs"), timeout=0.05)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    core.acquire = acquire
    # The slot was granted after the deadline and given straight back: only the first is held.
    assert core.pool("jobs").slots.in_use == 1
    assert (await stub.AcquireSlot(pb.AcquireSlotRequest(pool="jobs"), timeout=5)).granted
