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
import functools
import itertools
import json
import operator
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from loadwarden.policy import RateLimit
from loadwarden.server import PoolSettings, PoolSpec, RunningService, ServiceConfig, start_service
from loadwarden.server.app._config import StateSettings
from loadwarden.server.shared import RedisSettings, SharedAdmission
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import wait_for

_prefixes = itertools.count()

# Quoted: the async stub exists for type checkers only (@type_check_only in the .pyi).
Replicas = Callable[..., Awaitable[list["pb_grpc.DecisionServiceAsyncStub"]]]


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[Replicas]:
    """``await replicas(*pools, n=2)``: n services sharing one fresh key prefix; stubs to each."""
    started: list[RunningService] = []
    channels: list[grpc.aio.Channel] = []

    async def _start(*pools: PoolSpec, n: int = 2, **redis: Any) -> list[pb_grpc.DecisionServiceAsyncStub]:
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


async def acquire(stub: pb_grpc.DecisionServiceAsyncStub, **fields: Any) -> pb.AcquireSlotResponse:
    request = pb.AcquireSlotRequest(pool=fields.pop("pool", "p"), **fields)
    response: pb.AcquireSlotResponse = await stub.AcquireSlot(request, timeout=10)
    return response


async def queue_length(stub: pb_grpc.DecisionServiceAsyncStub, name: str = "p") -> int:
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


async def test_a_lease_is_reclaimed_at_its_ttl_when_its_replica_is_gone(redis_url: str) -> None:
    import redis as redis_py

    prefix = f"{{t{next(_prefixes)}}}:"
    state = StateSettings(store="redis", redis=RedisSettings(url=redis_url, key_prefix=prefix))
    config = ServiceConfig(
        listen="127.0.0.1:0", pools=(pool(max_concurrency=1, lease_ttl_ms=3_000),), state=state, expiry_interval_ms=50
    )
    a, b = await start_service(config), await start_service(config)
    running = [a, b]
    client = redis_py.Redis.from_url(redis_url)

    def redis_ms() -> int:
        seconds, micros = client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    try:
        async with grpc.aio.insecure_channel(a.target) as channel:
            held = await acquire(pb_grpc.DecisionServiceStub(channel))  # never released nor renewed
        assert held.granted
        expires_ms = int(client.zscore(f"{prefix}expiry", held.lease.lease_id) or 0)
        running.remove(a)
        await a.stop(0)  # a is gone with its sweep: only b (or the scripts b runs) can reclaim the lease
        polls: list[tuple[int, bool]] = []  # (Redis time once answered, granted)
        async with grpc.aio.insecure_channel(b.target) as channel:
            stub = pb_grpc.DecisionServiceStub(channel)

            async def poll() -> pb.AcquireSlotResponse:
                answer = await acquire(stub)
                polls.append((redis_ms(), answer.granted))
                return answer

            granted = await wait_for(poll, lambda r: r.granted, "the slot back on b after the TTL", timeout_s=10)
        # Every answer b gave before the lease's expiry (on Redis's clock) was a denial, and
        # there was at least one: the lease held its slot with its replica gone ...
        assert [ok for at, ok in polls if at < expires_ms] and not any(ok for at, ok in polls if at < expires_ms)
        # ... and the grant that took it back came at the expiry or after.
        record = json.loads(client.hget(f"{prefix}leases", granted.lease.lease_id) or b"{}")
        assert int(record["g"]) >= expires_ms
        assert not client.hexists(f"{prefix}leases", held.lease.lease_id)
    finally:
        client.close()
        for service in running:
            await service.stop(0)


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


# Two adaptive limits, each with releases that move it by a known amount. gradient2 reads
# latency only, and learns its baseline from its first sample (which cannot lower it): with
# smoothing 1, tolerance 1 and queue_size 1, from 8 with 3 other leases held (so no sample
# is app-limited), samples of 100 ms then 400 ms give 8 * (250 / 400) + 1 = 6, and another
# 400 ms sample 6 * (300 / 400) + 1 = 5. aimd halves the limit on each drop.
GRADIENT2 = {"min_limit": 1, "max_limit": 8, "rtt_tolerance": 1.0, "smoothing": 1.0, "queue_size": 1}
AIMD = {"backoff_ratio": 0.5}
# algorithm, its params, leases held meanwhile, then per release: (through the limit's
# owner?, success, latency ms, the shared limit after it).
LIMIT_CASES = {
    "aimd": ("aimd", AIMD, 0, [(True, False, 0.0, 4), (False, False, 0.0, 2)]),
    "gradient2": ("gradient2", GRADIENT2, 3, [(True, True, 100.0, 8), (False, True, 400.0, 6), (True, True, 400.0, 5)]),
}


async def _shared_limit(stubs: list[pb_grpc.DecisionServiceAsyncStub]) -> tuple[int, ...]:
    answers = [await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="p")) for stub in stubs]
    return tuple(int(a.status.pools[0].concurrency_limit) for a in answers)


async def _release_one(stub: pb_grpc.DecisionServiceAsyncStub, success: bool, latency_ms: float) -> None:
    held = await acquire(stub)
    assert held.granted
    release = pb.ReleaseSlotRequest(lease_id=held.lease.lease_id, success=success, latency_ms=latency_ms)
    assert (await stub.ReleaseSlot(release)).released


@pytest.mark.parametrize("case", list(LIMIT_CASES))
async def test_an_adaptive_limit_has_one_value_over_both_replicas(redis_url: str, case: str) -> None:
    import redis as redis_py

    algorithm, params, others, steps = LIMIT_CASES[case]
    prefix = f"{{t{next(_prefixes)}}}:"
    state = StateSettings(store="redis", redis=RedisSettings(url=redis_url, key_prefix=prefix))
    spec = pool(max_concurrency=8, limit_algorithm=algorithm, limit_params=params)
    config = ServiceConfig(listen="127.0.0.1:0", pools=(spec,), state=state, expiry_interval_ms=50)
    services = [await start_service(config) for _ in range(2)]
    channels = [grpc.aio.insecure_channel(s.target) for s in services]
    stubs = [pb_grpc.DecisionServiceStub(c) for c in channels]
    client = redis_py.Redis.from_url(redis_url)

    owner = functools.partial(_limit_owner, client, prefix)

    try:
        first = await wait_for(owner, lambda o: o is not None, "an owner", timeout_s=5)
        by_owner = {s.core.ids.prefix == first: stub for s, stub in zip(services, stubs, strict=True)}
        await wait_for(lambda: _shared_limit(stubs), lambda pair: pair == (8, 8), "the shared starting limit")
        assert all([(await acquire(stubs[0])).granted for _ in range(others)])
        for on_owner, success, latency_ms, expected in steps:
            # A sample released on the owner applies at once, one released on the other replica
            # once its batch reaches the owner: wait for each, so the owner sees them in order.
            await _release_one(by_owner[on_owner], success, latency_ms)
            await wait_for(
                lambda: _shared_limit(stubs),
                functools.partial(operator.eq, (expected, expected)),
                f"one limit of {expected} on both replicas",
            )
        final = steps[-1][3]
        assert client.get(f"{prefix}limit:p") == str(final).encode()
        granted = [(await acquire(stub)).granted for stub in stubs * final]
        assert granted.count(True) == final - others  # the scripts enforce it, over both replicas
        assert granted[: final - others] == [True] * (final - others)
    finally:
        client.close()
        for channel in channels:
            await channel.close()
        for service in services:
            await service.stop(0)


async def _limit_owner(client: Any, prefix: str) -> str | None:
    """The replica that computes pool p's shared limit, as Redis says; None before one is elected."""
    value = client.get(f"{prefix}limit-owner:p")
    return value.decode() if isinstance(value, bytes) else None


# The survivor's own releases, after it took the limit over, and the limit they give: it goes
# on from the shared value (4 with aimd, 6 with gradient2) rather than from its own idle copy.
TAKEOVER_CASES = {
    "aimd": ("aimd", AIMD, 0, [(False, 0.0)], 4, 2),
    # gradient2 restarts its baseline from the shared 6: 100 ms gives 7, then 400 ms
    # 7 * (250 / 400) + 1 = 5.375.
    "gradient2": ("gradient2", GRADIENT2, 3, [(True, 100.0), (True, 400.0)], 6, 5),
}


@pytest.mark.parametrize("case", list(TAKEOVER_CASES))
async def test_a_survivor_takes_over_the_adaptive_limit_when_its_owner_is_gone(redis_url: str, case: str) -> None:
    import redis as redis_py

    algorithm, params, others, releases, before, after = TAKEOVER_CASES[case]
    prefix = f"{{t{next(_prefixes)}}}:"
    state = StateSettings(store="redis", redis=RedisSettings(url=redis_url, key_prefix=prefix))
    spec = pool(max_concurrency=8, limit_algorithm=algorithm, limit_params=params)
    services = [await start_service(ServiceConfig(listen="127.0.0.1:0", pools=(spec,), state=state)) for _ in range(2)]
    running = list(services)
    client = redis_py.Redis.from_url(redis_url)

    owner = functools.partial(_limit_owner, client, prefix)

    try:
        first = await wait_for(owner, lambda o: o is not None, "an owner", timeout_s=5)
        gone = next(s for s in services if s.core.ids.prefix == first)
        survivor = next(s for s in services if s is not gone)
        async with grpc.aio.insecure_channel(gone.target) as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            assert all([(await acquire(stub)).granted for _ in range(others)])
            for success, latency_ms in releases:  # the owner moves the shared limit first
                await _release_one(stub, success, latency_ms)
        async with grpc.aio.insecure_channel(survivor.target) as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            await wait_for(lambda: _shared_limit([stub]), lambda n: n == (before,), "the owner's limit on the survivor")
        running.remove(gone)
        await gone.stop(0)  # its key lapses at its TTL: nobody deletes it, as after a crash
        admission = survivor.core.admission
        assert isinstance(admission, SharedAdmission)
        mine = survivor.core.ids.prefix

        async def owner_here() -> str | None:  # set once the new owner has written its limit
            return admission._owners.get("p")

        await wait_for(owner_here, lambda o: o == mine, "the survivor owns the limit", timeout_s=8)
        assert await owner() == mine
        assert client.get(f"{prefix}limit:p") == str(before).encode()  # taken over, not reset
        async with grpc.aio.insecure_channel(survivor.target) as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            assert await _shared_limit([stub]) == (before,)
            for success, latency_ms in releases:
                await _release_one(stub, success, latency_ms)
            await wait_for(
                lambda: _shared_limit([stub]), lambda n: n == (after,), "the survivor's algorithm moves the limit"
            )
        assert client.get(f"{prefix}limit:p") == str(after).encode()
    finally:
        client.close()
        for service in running:
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
