"""Admission shared over a real redis-server: two in-process replicas answer as one.

Each test starts two services on 127.0.0.1:0 with ``[state] store = "redis"`` on the
same Redis and key prefix, then drives them over gRPC: the limit holds over both,
a request id retried on the other replica gets the same lease, either replica
renews and releases any lease (another caller's stays NOT_FOUND), a lease is
reclaimed at its TTL with its replica gone, a waiter on one replica is woken by a
release on the other, and a rate bucket is one bucket.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from loadwarden.policy import RateLimit
from loadwarden.server import PoolSettings, PoolSpec, RunningService, ServiceConfig, start_service
from loadwarden.server.app._config import StateSettings
from loadwarden.server.shared import RedisSettings
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import wait_for

_prefixes = itertools.count()

Replicas = Callable[..., Awaitable[list[pb_grpc.DecisionServiceStub]]]


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[Replicas]:
    """``await replicas(*pools, n=2)``: n services sharing one fresh key prefix; stubs to each."""
    started: list[RunningService] = []
    channels: list[grpc.aio.Channel] = []

    async def _start(*pools: PoolSpec, n: int = 2, **redis: Any) -> list[pb_grpc.DecisionServiceStub]:
        state = StateSettings(
            store="redis",
            redis=RedisSettings(url=redis_url, key_prefix=f"{{t{next(_prefixes)}}}:", **redis),
        )
        stubs = []
        for _ in range(n):
            running = await start_service(
                ServiceConfig(listen="127.0.0.1:0", pools=pools, state=state, expiry_interval_ms=50)
            )
            started.append(running)
            channel = grpc.aio.insecure_channel(running.target)
            channels.append(channel)
            stubs.append(pb_grpc.DecisionServiceStub(channel))
        return stubs

    yield _start
    for channel in channels:
        await channel.close()
    for running in started:
        await running.stop(0)


def pool(name: str = "p", **settings: Any) -> PoolSpec:
    return PoolSpec(PoolSettings(name=name, max_concurrency=settings.pop("max_concurrency", 2), **settings))


async def acquire(stub: pb_grpc.DecisionServiceStub, **fields: Any) -> pb.AcquireSlotResponse:
    request = pb.AcquireSlotRequest(pool=fields.pop("pool", "p"), **fields)
    response: pb.AcquireSlotResponse = await stub.AcquireSlot(request, timeout=10)
    return response


async def queue_length(stub: pb_grpc.DecisionServiceStub, name: str = "p") -> int:
    status = await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool=name))
    return int(status.status.pools[0].queue_length)


async def test_the_limit_holds_over_both_replicas(replicas: Replicas) -> None:
    a, b = await replicas(pool(max_concurrency=3))
    answers = [await acquire(stub) for stub in (a, b, a, b, a)]
    assert [r.granted for r in answers] == [True, True, True, False, False]
    assert answers[3].denial_reason == pb.DENIAL_REASON_AT_CAPACITY
    released = await b.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=answers[0].lease.lease_id, success=True))
    assert released.released  # granted by a, released through b
    assert (await acquire(a)).granted
    assert not (await acquire(b)).granted


async def test_a_retried_request_id_gets_the_same_lease_on_the_other_replica(replicas: Replicas) -> None:
    a, b = await replicas(pool(max_concurrency=1))
    first = await acquire(a, request_id="r-1")
    again = await acquire(b, request_id="r-1")
    assert first.granted and again.granted
    assert again.lease.lease_id == first.lease.lease_id
    assert not (await acquire(b, request_id="r-2")).granted  # still one slot held, not two


async def test_any_replica_renews_and_another_callers_lease_stays_not_found(replicas: Replicas) -> None:
    a, b = await replicas(pool(max_concurrency=1))
    lease = (await acquire(a, lease_ttl_ms=5_000)).lease
    renewed = await b.RenewLease(pb.RenewLeaseRequest(lease_id=lease.lease_id, ttl_ms=20_000))
    assert renewed.lease.ttl_ms == 20_000 and renewed.lease.pool == "p"
    with pytest.raises(grpc.aio.AioRpcError) as forged:
        await b.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=lease.lease_id[:-4] + "0000"))
    assert forged.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as too_long:
        await b.RenewLease(pb.RenewLeaseRequest(lease_id=lease.lease_id, ttl_ms=86_400_000))
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ttl_ms" in (too_long.value.details() or "")
    assert (await a.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=lease.lease_id))).released
    again = await b.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=lease.lease_id))
    assert again.already_released and not again.released
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await b.RenewLease(pb.RenewLeaseRequest(lease_id=lease.lease_id))
    assert ended.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_waiter_on_one_replica_is_woken_by_a_release_on_the_other(replicas: Replicas) -> None:
    a, b = await replicas(pool(max_concurrency=1))
    held = await acquire(a)
    waiting = asyncio.ensure_future(acquire(b, max_wait_ms=20_000))
    await wait_for(lambda: queue_length(b), lambda n: n == 1, "the waiter queued on b")
    assert not waiting.done()
    await a.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=held.lease.lease_id, success=True))
    woken = await asyncio.wait_for(waiting, 5)
    assert woken.granted


async def test_a_lease_is_reclaimed_at_its_ttl_when_its_replica_is_gone(replicas: Replicas) -> None:
    a, b = await replicas(pool(max_concurrency=1, lease_ttl_ms=300))
    assert (await acquire(a)).granted
    assert not (await acquire(b)).granted
    # b reclaims it (its sweep, or the acquire itself) once the TTL has passed in Redis.
    await wait_for(lambda: acquire(b), lambda r: r.granted, "a slot back after the TTL", timeout_s=5)


async def test_one_rate_bucket_over_both_replicas(replicas: Replicas) -> None:
    c, d = await replicas(
        pool("r", max_concurrency=0, rate_limit=RateLimit(count=4, per_s=60.0, burst=4)),
    )
    allowed = refused = 0
    for stub in (c, d) * 5:
        try:
            response = await acquire(stub, pool="r", client_key="k")
            allowed += response.granted
            await stub.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=response.lease.lease_id))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "rate limit" in (exc.details() or "")
            refused += 1
    assert (allowed, refused) == (4, 6)
    other = await acquire(d, pool="r", client_key="another")  # keys are separate buckets
    assert other.granted


async def test_an_adaptive_limit_has_one_value_over_both_replicas(replicas: Replicas) -> None:
    a, b = await replicas(pool(max_concurrency=8, limit_algorithm="aimd", limit_params={"backoff_ratio": 0.5}))

    async def limits() -> tuple[int, int]:
        sa = await a.GetLoadStatus(pb.GetLoadStatusRequest(pool="p"))
        sb = await b.GetLoadStatus(pb.GetLoadStatusRequest(pool="p"))
        return sa.status.pools[0].concurrency_limit, sb.status.pools[0].concurrency_limit

    await wait_for(limits, lambda pair: pair == (8, 8), "the shared starting limit")
    for stub in (a, b):  # one drop released on each replica: the owner halves the limit twice
        held = await acquire(stub)
        await stub.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=held.lease.lease_id, success=False))
    await wait_for(limits, lambda pair: pair == (2, 2), "one limit, lowered by both replicas' samples")
    granted = [await acquire(stub) for stub in (a, b, a, b)]
    assert [g.granted for g in granted] == [True, True, False, False]  # the scripts enforce it


async def test_a_survivor_takes_over_the_adaptive_limit_when_its_owner_is_gone(redis_url: str) -> None:
    import redis as redis_py

    prefix = f"{{t{next(_prefixes)}}}:"
    state = StateSettings(store="redis", redis=RedisSettings(url=redis_url, key_prefix=prefix))
    spec = pool(max_concurrency=8, limit_algorithm="aimd", limit_params={"backoff_ratio": 0.5})
    services = [await start_service(ServiceConfig(listen="127.0.0.1:0", pools=(spec,), state=state)) for _ in range(2)]
    client = redis_py.Redis.from_url(redis_url)

    async def owner() -> str | None:
        value = client.get(f"{prefix}limit-owner:p")
        return value.decode() if isinstance(value, bytes) else None

    try:
        first = await wait_for(owner, lambda o: o is not None, "an owner", timeout_s=5)
        gone = next(s for s in services if s.core.ids.prefix == first)
        survivor = next(s for s in services if s is not gone)
        await gone.stop(0)  # its key lapses at its TTL: nobody deletes it, as after a crash
        await wait_for(owner, lambda o: o == survivor.core.ids.prefix, "the survivor owns the limit", timeout_s=8)
        async with grpc.aio.insecure_channel(survivor.target) as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            held = await acquire(stub)
            await stub.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=held.lease.lease_id, success=False))

            async def limit() -> int:
                status = await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="p"))
                return int(status.status.pools[0].concurrency_limit)

            await wait_for(limit, lambda n: n == 4, "the survivor's algorithm moves the shared limit")
        assert client.get(f"{prefix}limit:p") == b"4"
    finally:
        client.close()
        for service in services:
            await service.stop(0)


async def test_allotments_on_both_replicas_share_the_global_limit(replicas: Replicas) -> None:
    a, b = await replicas(pool(max_concurrency=5))
    on_a = (await a.AcquireAllotment(pb.AcquireAllotmentRequest(pool="p", slots=3), timeout=10)).allotment
    on_b = (await b.AcquireAllotment(pb.AcquireAllotmentRequest(pool="p", slots=3), timeout=10)).allotment
    assert (on_a.slots, on_b.slots) == (3, 2)  # five slots over both replicas, not six
    assert not (await acquire(a)).granted and not (await acquire(b)).granted
    grown = await a.RenewAllotment(pb.RenewAllotmentRequest(allotment_id=on_a.allotment_id, slots=4), timeout=10)
    assert grown.allotment.slots == 3  # nothing free anywhere
    handed = await b.RenewAllotment(pb.RenewAllotmentRequest(allotment_id=on_b.allotment_id, slots=1), timeout=10)
    assert handed.allotment.slots == 1  # one back, usable through the other replica at once
    assert (await acquire(a)).granted
    released = await a.ReleaseAllotment(pb.ReleaseAllotmentRequest(allotment_id=on_a.allotment_id), timeout=10)
    assert released.released == 3
