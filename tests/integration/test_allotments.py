"""Allotments over a real grpc.aio server: blocks of a pool's slots that never oversubscribe it."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from loadwarden.policy import ManualClock, NotFound
from loadwarden.server import DecisionCore, PoolSettings, RunningService, ServerSpec
from loadwarden.server.engine._allotments import Allotments
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import three_server_pool

LIMIT = 8


@pytest.fixture
async def service(start) -> RunningService:
    return await start(three_server_pool("pool", max_concurrency=LIMIT, lease_ttl_ms=30_000))


async def test_allotments_and_leases_share_the_pools_limit(service: RunningService, channel_to) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    first = (await stub.AcquireAllotment(pb.AcquireAllotmentRequest(pool="pool", slots=5))).allotment
    assert first.slots == 5 and first.allotment_id and first.ttl_ms == 30_000
    leases = [await stub.AcquireSlot(pb.AcquireSlotRequest(pool="pool")) for _ in range(4)]
    assert [lease.granted for lease in leases] == [True, True, True, False]  # 5 + 3 = the limit
    none = await stub.AcquireAllotment(pb.AcquireAllotmentRequest(pool="pool", slots=5))
    assert none.allotment.slots == 0 and not none.allotment.allotment_id and none.retry_after_ms > 0
    shrunk = (await stub.RenewAllotment(pb.RenewAllotmentRequest(allotment_id=first.allotment_id, slots=2))).allotment
    assert shrunk.slots == 2  # three handed back at once
    again = (await stub.AcquireAllotment(pb.AcquireAllotmentRequest(pool="pool", slots=5))).allotment
    assert again.slots == 3
    grown = (await stub.RenewAllotment(pb.RenewAllotmentRequest(allotment_id=first.allotment_id, slots=9))).allotment
    assert grown.slots == 2  # asked for more: none was free
    assert (await stub.ReleaseAllotment(pb.ReleaseAllotmentRequest(allotment_id=again.allotment_id))).released == 3
    assert (await stub.ReleaseAllotment(pb.ReleaseAllotmentRequest(allotment_id=again.allotment_id))).released == 0
    status = await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="pool"))
    assert status.status.pools[0].active_leases == 2 + 3


async def test_fifty_clients_with_allotments_never_oversubscribe(service: RunningService, channel_to) -> None:
    """A history checker: every slot a client held (allotted or leased), from the answer that
    granted it to the request that gave it back, never overlaps more than LIMIT at once."""
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    loop = asyncio.get_running_loop()
    events: list[tuple[float, int]] = []  # (time, +slots held / -slots given back)

    async def allotting(rng: random.Random) -> None:
        for _ in range(8):
            got = (
                await stub.AcquireAllotment(pb.AcquireAllotmentRequest(pool="pool", slots=rng.randint(1, 4)))
            ).allotment
            if not got.slots:
                await asyncio.sleep(0.001)
                continue
            events.append((loop.time(), got.slots))
            held = got.slots
            await asyncio.sleep(rng.random() * 0.003)
            if rng.random() < 0.5:
                wanted = rng.randint(1, 4)
                sent = loop.time()  # slots handed back may be re-granted from here on
                renewal = pb.RenewAllotmentRequest(allotment_id=got.allotment_id, slots=wanted)
                resized = (await stub.RenewAllotment(renewal)).allotment
                if resized.slots != held:  # a shrink counts from the request, a growth from the answer
                    events.append((sent if resized.slots < held else loop.time(), resized.slots - held))
                held = resized.slots
            events.append((loop.time(), -held))
            await stub.ReleaseAllotment(pb.ReleaseAllotmentRequest(allotment_id=got.allotment_id))

    async def leasing(rng: random.Random) -> None:
        for _ in range(8):
            answer = await stub.AcquireSlot(pb.AcquireSlotRequest(pool="pool"))
            if not answer.granted:
                await asyncio.sleep(0.001)
                continue
            events.append((loop.time(), 1))
            await asyncio.sleep(rng.random() * 0.003)
            events.append((loop.time(), -1))
            await stub.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=answer.lease.lease_id))

    clients = [allotting(random.Random(i)) for i in range(40)] + [leasing(random.Random(i)) for i in range(40, 50)]
    await asyncio.gather(*clients)
    held = peak = 0
    # At equal times a release counts before a grant: the client saw the release first.
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):
        held += change
        peak = max(peak, held)
        assert held <= LIMIT, f"{held} slots held at once, over the limit of {LIMIT}"
    assert held == 0 and peak > 0
    status = await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="pool"))
    assert status.status.pools[0].active_leases == 0


@pytest.mark.parametrize(
    ("method", "request_", "code", "field"),
    [
        (
            "AcquireAllotment",
            pb.AcquireAllotmentRequest(pool="pool", slots=0),
            grpc.StatusCode.INVALID_ARGUMENT,
            "slots",
        ),
        (
            "AcquireAllotment",
            pb.AcquireAllotmentRequest(pool="pool", slots=1001),
            grpc.StatusCode.INVALID_ARGUMENT,
            "slots",
        ),
        (
            "AcquireAllotment",
            pb.AcquireAllotmentRequest(pool="pool", slots=1, ttl_ms=50),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ttl_ms",
        ),
        (
            "AcquireAllotment",
            pb.AcquireAllotmentRequest(pool="bad name", slots=1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "pool",
        ),
        ("AcquireAllotment", pb.AcquireAllotmentRequest(pool="nope", slots=1), grpc.StatusCode.NOT_FOUND, "pool"),
        (
            "RenewAllotment",
            pb.RenewAllotmentRequest(allotment_id="never-issued"),
            grpc.StatusCode.NOT_FOUND,
            "allotment_id",
        ),
        ("RenewAllotment", pb.RenewAllotmentRequest(allotment_id=""), grpc.StatusCode.INVALID_ARGUMENT, "allotment_id"),
        (
            "RenewAllotment",
            pb.RenewAllotmentRequest(allotment_id="x", slots=1001),
            grpc.StatusCode.INVALID_ARGUMENT,
            "slots",
        ),
        (
            "ReleaseAllotment",
            pb.ReleaseAllotmentRequest(allotment_id="bad id"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "allotment_id",
        ),
    ],
)
async def test_bad_allotment_requests(service: RunningService, channel_to, method, request_, code, field) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(stub, method)(request_)
    assert err.value.code() == code and (err.value.details() or "").startswith(f"{field}: ")


async def test_a_dead_clients_allotment_comes_back_at_its_ttl_and_is_nobody_elses() -> None:
    clock = ManualClock()
    core = DecisionCore(clock=clock, rng=random.Random(1))
    core.configure_pool(PoolSettings(name="pool", max_concurrency=4), [ServerSpec("s1", "h:1")])
    allotments = Allotments(core)
    record, _ = await allotments.acquire("pool", 4, 1.0, "client-a")
    assert record is not None and record.slots == 4
    with pytest.raises(NotFound):
        await allotments.renew(record.id, None, 0, "client-b")  # another caller's is unknown to it
    assert await allotments.release(record.id, "client-b") == 0
    nothing, retry_after = await allotments.acquire("pool", 1, 1.0, "client-b")
    assert nothing is None and retry_after > 0
    clock.advance(1.01)  # client-a died: no renewal
    core.expire()
    again, _ = await allotments.acquire("pool", 4, 1.0, "client-b")
    assert again is not None and again.slots == 4
    with pytest.raises(NotFound):
        await allotments.renew(record.id, None, 0, "client-a")  # its TTL passed
