"""AcquireSlot / RenewLease / ReleaseSlot over a real grpc.aio server on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # grpcio-health-checking: no stubs, no py.typed

from loadwarden.policy._settings import RateLimit
from loadwarden.server import PoolSettings, PoolSpec, RunningService, ServerSpec
from loadwarden.v1 import admin_pb2 as admin
from loadwarden.v1 import admin_pb2_grpc as admin_grpc
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

RETRY_AFTER = "loadwarden-retry-after-ms"


def pool(name: str = "p", **settings: Any) -> PoolSpec:
    servers = tuple(ServerSpec(f"s{i}", f"127.0.0.1:900{i}") for i in (1, 2))
    return PoolSpec(PoolSettings(name=name, **settings), servers)


@pytest.fixture
async def service(start) -> RunningService:
    return await start(
        pool("p", max_concurrency=10, max_queue_length=3, max_wait_ms=5_000),
        pool("rated", rate_limit=RateLimit(count=2, per_s=60.0, burst=2)),
    )


@pytest.fixture
def stub(service: RunningService, channel_to) -> pb_grpc.DecisionServiceAsyncStub:
    return pb_grpc.DecisionServiceStub(channel_to(service))


def acquire(**fields: Any) -> pb.AcquireSlotRequest:
    return pb.AcquireSlotRequest(**{"pool": "p", **fields})


async def test_hard_cap_over_rpc(service: RunningService, stub: pb_grpc.DecisionServiceAsyncStub) -> None:
    slots = service.core.pool("p").slots
    held = peak = service_peak = 0

    async def client(n: int) -> None:
        nonlocal held, peak, service_peak
        for i in range(20):
            answer = await stub.AcquireSlot(acquire(request_id=f"c{n}-{i}", max_wait_ms=5_000), timeout=30)
            assert answer.granted, answer
            held += 1
            peak = max(peak, held)
            service_peak = max(service_peak, slots.in_use)
            await asyncio.sleep(0)
            held -= 1
            assert (
                await stub.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=answer.lease.lease_id, success=True))
            ).released

    service.core.configure_pool(PoolSettings(name="p", max_concurrency=10, max_queue_length=1000), None)
    await asyncio.gather(*(client(n) for n in range(100)))
    assert 1 <= peak <= 10 and service_peak <= 10
    status = (await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="p"))).status.pools[0]
    assert status.active_leases == 0 and status.queue_length == 0 and status.concurrency_limit == 10


async def test_grant_renew_release_cycle(stub: pb_grpc.DecisionServiceAsyncStub) -> None:
    granted = await stub.AcquireSlot(acquire(request_id="job-1", lease_ttl_ms=2_000, select_server=True))
    assert granted.granted and granted.lease.ttl_ms == 2_000 and granted.lease.pool == "p"
    assert granted.server_id in {"s1", "s2"} and granted.address.startswith("127.0.0.1:900")
    retry = await stub.AcquireSlot(acquire(request_id="job-1", lease_ttl_ms=2_000, select_server=True))
    assert retry.lease.lease_id == granted.lease.lease_id  # a retry never takes a second slot
    renewed = await stub.RenewLease(pb.RenewLeaseRequest(lease_id=granted.lease.lease_id, ttl_ms=60_000))
    assert renewed.lease.ttl_ms == 60_000 and renewed.lease.expires_at.seconds > granted.lease.expires_at.seconds
    status = (await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="p"))).status.pools[0]
    assert status.active_leases == 1 and status.in_flight == 1
    released = await stub.ReleaseSlot(
        pb.ReleaseSlotRequest(lease_id=granted.lease.lease_id, success=True, latency_ms=12)
    )
    assert released.released and not released.already_released
    again = await stub.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=granted.lease.lease_id))
    assert again.already_released and not again.released
    status = (await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="p"))).status.pools[0]
    assert status.active_leases == 0 and status.in_flight == 0


async def test_denial_is_an_answer_with_retry_after(
    service: RunningService, stub: pb_grpc.DecisionServiceAsyncStub
) -> None:
    leases = [await stub.AcquireSlot(acquire()) for _ in range(10)]
    assert all(a.granted for a in leases)
    denied = await stub.AcquireSlot(acquire())
    assert not denied.granted and denied.denial_reason == pb.DENIAL_REASON_AT_CAPACITY
    assert denied.retry_after_ms > 0 and "limit of 10" in denied.reason and denied.decision_id
    waited = await stub.AcquireSlot(acquire(max_wait_ms=50))
    assert not waited.granted and waited.denial_reason == pb.DENIAL_REASON_QUEUE_TIMEOUT


async def test_call_deadline_bounds_the_wait_and_answers_before_it(stub: pb_grpc.DecisionServiceAsyncStub) -> None:
    for _ in range(10):
        await stub.AcquireSlot(acquire())
    answer = await stub.AcquireSlot(acquire(max_wait_ms=5_000), timeout=0.5)  # no DEADLINE_EXCEEDED
    assert not answer.granted and answer.denial_reason == pb.DENIAL_REASON_QUEUE_TIMEOUT
    assert answer.queue_wait_ms < 1_000


async def wait_until(condition, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)


async def test_full_queue_is_resource_exhausted_with_retry_after(
    service: RunningService, stub: pb_grpc.DecisionServiceAsyncStub
) -> None:
    for _ in range(10):
        await stub.AcquireSlot(acquire())
    waiting = [stub.AcquireSlot(acquire(max_wait_ms=5_000)) for _ in range(3)]
    await wait_until(lambda: service.core.pool("p").slots.waiting == 3)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AcquireSlot(acquire(max_wait_ms=5_000))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_queue_length 3" in (err.value.details() or "")
    assert int(dict(err.value.trailing_metadata())[RETRY_AFTER]) > 0
    for call in waiting:
        call.cancel()


async def test_rate_limit_is_resource_exhausted_with_retry_after(stub: pb_grpc.DecisionServiceAsyncStub) -> None:
    for _ in range(2):
        lease = (await stub.AcquireSlot(pb.AcquireSlotRequest(pool="rated", client_key="alice"))).lease
        await stub.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=lease.lease_id))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AcquireSlot(pb.AcquireSlotRequest(pool="rated", client_key="alice"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (err.value.details() or "").startswith("client_key:") and "rate limit" in (err.value.details() or "")
    assert 29_000 <= int(dict(err.value.trailing_metadata())[RETRY_AFTER]) <= 30_000
    assert (await stub.AcquireSlot(pb.AcquireSlotRequest(pool="rated", client_key="bob"))).granted


async def test_cancelled_callers_do_not_consume_slots(
    service: RunningService, stub: pb_grpc.DecisionServiceAsyncStub
) -> None:
    slots = service.core.pool("p").slots
    service.core.configure_pool(PoolSettings(name="p", max_concurrency=2, max_queue_length=100), None)
    holders = [await stub.AcquireSlot(acquire()) for _ in range(2)]
    calls = [stub.AcquireSlot(acquire(max_wait_ms=5_000)) for _ in range(10)]
    await wait_until(lambda: slots.waiting == 10)
    for call in calls:
        call.cancel()
    await wait_until(lambda: slots.waiting == 0)
    for holder in holders:
        await stub.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=holder.lease.lease_id))
    assert slots.waiting == 0 and slots.in_use == 0 and not service.core.admission.leases


BAD = grpc.StatusCode.INVALID_ARGUMENT
MISSING = grpc.StatusCode.NOT_FOUND
CASES = [
    ("AcquireSlot", acquire(pool=""), BAD, "pool"),
    ("AcquireSlot", acquire(pool="nope"), MISSING, "pool"),
    ("AcquireSlot", acquire(priority=10), BAD, "priority"),
    ("AcquireSlot", acquire(max_wait_ms=6_000), BAD, "max_wait_ms"),
    ("AcquireSlot", acquire(max_wait_ms=4_000_000), BAD, "max_wait_ms"),
    ("AcquireSlot", acquire(lease_ttl_ms=50), BAD, "lease_ttl_ms"),
    ("AcquireSlot", acquire(request_id="x" * 129), BAD, "request_id"),
    ("AcquireSlot", acquire(client_key="a b"), BAD, "client_key"),
    ("RenewLease", pb.RenewLeaseRequest(lease_id="never-issued"), MISSING, "lease_id"),
    ("RenewLease", pb.RenewLeaseRequest(lease_id=""), BAD, "lease_id"),
    ("RenewLease", pb.RenewLeaseRequest(lease_id="x", ttl_ms=10), BAD, "ttl_ms"),
    ("ReleaseSlot", pb.ReleaseSlotRequest(lease_id="never-issued"), MISSING, "lease_id"),
    ("ReleaseSlot", pb.ReleaseSlotRequest(lease_id="\x00"), BAD, "lease_id"),
    ("ReleaseSlot", pb.ReleaseSlotRequest(lease_id="x", latency_ms=-1), BAD, "latency_ms"),
    ("ReleaseSlot", pb.ReleaseSlotRequest(lease_id="x", latency_ms=float("nan")), BAD, "latency_ms"),
    ("ReleaseSlot", pb.ReleaseSlotRequest(lease_id="x", request_id="bad id"), BAD, "request_id"),
    ("ReleaseSlot", pb.ReleaseSlotRequest(request_id="acquire-1"), BAD, "pool"),
    ("ReleaseSlot", pb.ReleaseSlotRequest(request_id="acquire-1", pool="bad pool"), BAD, "pool"),
    ("ReleaseSlot", pb.ReleaseSlotRequest(lease_id="x", pool="bad pool"), BAD, "pool"),
    ("ReleaseSlot", pb.ReleaseSlotRequest(), BAD, "lease_id"),
    ("ReleaseSlot", pb.ReleaseSlotRequest(abandoned_request_ids=["a-1"]), BAD, "pool"),
    ("ReleaseSlot", pb.ReleaseSlotRequest(lease_id="x", abandoned_request_ids=["a-1"]), BAD, "pool"),
    (
        "ReleaseSlot",
        pb.ReleaseSlotRequest(pool="p", abandoned_request_ids=["a-1", "bad id"]),
        BAD,
        "abandoned_request_ids[1]",
    ),
    ("ReleaseSlot", pb.ReleaseSlotRequest(pool="p", abandoned_request_ids=[""]), BAD, "abandoned_request_ids[0]"),
    (
        "ReleaseSlot",
        pb.ReleaseSlotRequest(pool="p", abandoned_request_ids=[f"a-{i}" for i in range(101)]),
        BAD,
        "abandoned_request_ids",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_", "code", "field"), CASES, ids=[f"{m}-{f}-{i}" for i, (m, _, _, f) in enumerate(CASES)]
)
async def test_bad_slot_input_names_the_field(
    service: RunningService, stub, channel_to, method, request_, code, field
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(stub, method)(request_)
    assert err.value.code() == code and (err.value.details() or "").startswith(f"{field}: "), err.value.details()
    health = health_pb2_grpc.HealthStub(channel_to(service))
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
    assert (await stub.AcquireSlot(acquire())).granted


ADMIN_CASES = [
    (common.PoolConfig(name="q", limit_algorithm="aimd"), "pool.max_concurrency"),
    (common.PoolConfig(name="q", limit_algorithm="magic"), "pool.limit_algorithm"),
    (
        common.PoolConfig(name="q", max_concurrency=5, limit_algorithm="aimd", limit_params={"backoff_ratio": 1.5}),
        "pool.limit_params.backoff_ratio",
    ),
    (
        common.PoolConfig(name="q", max_concurrency=5, limit_algorithm="gradient2", limit_params={"min_limit": 10}),
        "pool.max_concurrency",
    ),
    (common.PoolConfig(name="q", rate_limit="30/fortnight"), "pool.rate_limit"),
    (common.PoolConfig(name="q", rate_limit="0/minute"), "pool.rate_limit"),
    (common.PoolConfig(name="q", max_wait_ms=4_000_000), "pool.max_wait_ms"),
    (common.PoolConfig(name="q", max_concurrency=2_000_000), "pool.max_concurrency"),
]


@pytest.mark.parametrize(("config", "field"), ADMIN_CASES, ids=[f for _, f in ADMIN_CASES])
async def test_bad_limit_settings_name_the_field(service: RunningService, channel_to, config, field) -> None:
    stub = admin_grpc.AdminServiceStub(channel_to(service))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ConfigurePool(admin.ConfigurePoolRequest(pool=config))
    assert err.value.code() == BAD and (err.value.details() or "").startswith(f"{field}: "), err.value.details()


async def test_adaptive_limit_through_admin(service: RunningService, channel_to, stub) -> None:
    admin_stub = admin_grpc.AdminServiceStub(channel_to(service))
    config = common.PoolConfig(
        name="adaptive", max_concurrency=8, limit_algorithm="aimd", limit_params={"min_limit": 2, "max_limit": 16}
    )
    answer = await admin_stub.ConfigurePool(admin.ConfigurePoolRequest(pool=config))
    assert answer.pool.concurrency_limit == 8
    lease = (await stub.AcquireSlot(pb.AcquireSlotRequest(pool="adaptive"))).lease
    await stub.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=lease.lease_id, success=False))
    status = (await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="adaptive"))).status.pools[0]
    assert status.concurrency_limit == 7  # 8 x 0.9 after a failure, rounded down
