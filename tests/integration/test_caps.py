"""Every bounded structure filled past its cap over a real grpc.aio server on 127.0.0.1:0.

Past a cap the answer is RESOURCE_EXHAUSTED naming the cap and its config key
(with a retry-after hint where waiting can help), or, for the least-recently-used
maps, an eviction; oversize repeated fields and strings are INVALID_ARGUMENT
naming the field and the maximum. After each, the service keeps answering
correctly and nothing already granted is lost.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from loadwarden.policy._settings import RateLimit
from loadwarden.server import CoreLimits, OperationSettings, RunningService
from loadwarden.v1 import admin_pb2 as admin
from loadwarden.v1 import admin_pb2_grpc as admin_grpc
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import three_server_pool

RETRY_AFTER = "loadwarden-retry-after-ms"


def stubs(
    service: RunningService, channel_to
) -> tuple[pb_grpc.DecisionServiceAsyncStub, admin_grpc.AdminServiceAsyncStub]:
    channel = channel_to(service)
    return pb_grpc.DecisionServiceStub(channel), admin_grpc.AdminServiceStub(channel)


def trailer(err: grpc.aio.AioRpcError, key: str) -> str | None:
    return dict(err.trailing_metadata() or ()).get(key)


async def exhausted(call, cap_text: str, *, retry: bool) -> grpc.aio.AioRpcError:
    """Awaits ``call``; it must fail RESOURCE_EXHAUSTED naming ``cap_text``, with a retry hint iff ``retry``."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    assert cap_text in (err.value.details() or ""), err.value.details()
    hint = trailer(err.value, RETRY_AFTER)
    assert (hint is not None and int(hint) >= 1) is retry, err.value.trailing_metadata()
    return err.value


async def invalid(call, *texts: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    for text in texts:
        assert text in (err.value.details() or ""), err.value.details()


def pool_config(name: str, *server_ids: str, **fields: Any) -> admin.ConfigurePoolRequest:
    servers = [common.ServerSpec(id=s, address=f"127.0.0.1:{9000 + i}") for i, s in enumerate(server_ids)]
    return admin.ConfigurePoolRequest(pool=common.PoolConfig(name=name, servers=servers, **fields))


async def test_pools_cap(start, channel_to) -> None:
    service = await start(three_server_pool("api"), limits=CoreLimits(max_pools=2))
    decision, adm = stubs(service, channel_to)
    assert (await adm.ConfigurePool(pool_config("b", "b1"))).created
    await exhausted(adm.ConfigurePool(pool_config("c", "c1")), "max_pools (limits.max_pools = 2) reached", retry=False)
    # At the cap: existing pools still route and can be reconfigured; a deleted pool makes room.
    assert (await decision.SelectServer(pb.SelectServerRequest(pool="api"))).server_id in {"s1", "s2", "s3"}
    assert not (await adm.ConfigurePool(pool_config("b", "b1", "b2"))).created
    await adm.DeletePool(admin.DeletePoolRequest(pool="b"))
    assert (await adm.ConfigurePool(pool_config("c", "c1"))).created
    assert [p.name for p in (await decision.GetLoadStatus(pb.GetLoadStatusRequest())).status.pools] == ["api", "c"]


async def test_servers_per_pool_cap(start, channel_to) -> None:
    service = await start(three_server_pool("api"), limits=CoreLimits(max_servers_per_pool=3))
    decision, adm = stubs(service, channel_to)
    new = admin.RegisterServerRequest(pool="api", server=common.ServerSpec(id="s4", address="127.0.0.1:9004"))
    await exhausted(
        adm.RegisterServer(new), "max_servers_per_pool (limits.max_servers_per_pool = 3) reached", retry=False
    )
    # A whole list over the cap is a malformed request: INVALID_ARGUMENT naming the field and the maximum.
    await invalid(
        adm.ConfigurePool(pool_config("api", "a", "b", "c", "d")),
        "pool.servers",
        "at most 3",
        "limits.max_servers_per_pool",
    )
    # Updating a registered server is no growth; routing goes on over the three.
    moved = admin.RegisterServerRequest(pool="api", server=common.ServerSpec(id="s1", address="127.0.0.1:9999"))
    assert not (await adm.RegisterServer(moved)).created
    chosen = {(await decision.SelectServer(pb.SelectServerRequest(pool="api"))).server_id for _ in range(6)}
    assert chosen == {"s1", "s2", "s3"}


async def test_operations_cap_with_auto_registration(start, channel_to) -> None:
    service = await start(
        operations=(OperationSettings(name="import"),),
        limits=CoreLimits(max_operations=2, auto_register_operations=True),
    )
    decision, adm = stubs(service, channel_to)
    assert (await decision.GetBatchSize(pb.GetBatchSizeRequest(operation="auto-1"))).batch_size >= 1
    cap = "max_operations (limits.max_operations = 2) reached"
    await exhausted(decision.GetBatchSize(pb.GetBatchSizeRequest(operation="auto-2")), cap, retry=False)
    reports = [pb.BatchReport(operation=f"new-{i}", batch_size=1, duration_ms=1.0, success=True) for i in range(5)]
    await exhausted(decision.ReportBatch(pb.ReportBatchRequest(reports=reports)), cap, retry=False)
    await exhausted(
        adm.ConfigureOperation(admin.ConfigureOperationRequest(operation=common.OperationConfig(name="manual"))),
        cap,
        retry=False,
    )
    # Registered operations still answer; deleting one makes room.
    assert (await decision.GetBatchSize(pb.GetBatchSizeRequest(operation="import"))).batch_size >= 1
    await adm.DeleteOperation(admin.DeleteOperationRequest(operation="auto-1"))
    assert (await decision.GetBatchSize(pb.GetBatchSizeRequest(operation="auto-2"))).batch_size >= 1
    assert len(service.core.operations) == 2


async def test_leases_cap(start, channel_to) -> None:
    service = await start(three_server_pool("api"), limits=CoreLimits(max_leases=3))
    decision, _ = stubs(service, channel_to)
    leases = [
        (await decision.AcquireSlot(pb.AcquireSlotRequest(pool="api", lease_ttl_ms=5_000))).lease for _ in range(3)
    ]
    err = await exhausted(
        decision.AcquireSlot(pb.AcquireSlotRequest(pool="api")),
        "max_leases (limits.max_leases = 3) reached",
        retry=True,
    )
    assert int(trailer(err, RETRY_AFTER) or 0) <= 5_000  # at most until the soonest lease expires
    # Granted leases are intact: they renew and release; a release makes room for a new grant.
    for lease in leases:
        renewed = await decision.RenewLease(pb.RenewLeaseRequest(lease_id=lease.lease_id, ttl_ms=10_000))
        assert renewed.lease.ttl_ms == 10_000
    assert (await decision.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=leases[0].lease_id, success=True))).released
    assert (await decision.AcquireSlot(pb.AcquireSlotRequest(pool="api"))).granted
    assert len(service.core.admission.leases) == 3


async def test_lease_cap_never_breaks_a_dispatch(start, channel_to) -> None:
    """Raising a pool's limit while the service holds max_leases leaves its waiters waiting
    (the admin call succeeds); a release then grants one of them."""
    service = await start(
        three_server_pool("q", max_concurrency=1, max_wait_ms=10_000),
        three_server_pool("other"),
        limits=CoreLimits(max_leases=2),
    )
    decision, adm = stubs(service, channel_to)
    held = (await decision.AcquireSlot(pb.AcquireSlotRequest(pool="q"))).lease
    assert (await decision.AcquireSlot(pb.AcquireSlotRequest(pool="other"))).granted
    waiters = [
        asyncio.ensure_future(decision.AcquireSlot(pb.AcquireSlotRequest(pool="q", max_wait_ms=10_000), timeout=15))
        for _ in range(2)
    ]
    slots = service.core.pool("q").slots
    for _ in range(500):
        if slots.waiting == 2:
            break
        await asyncio.sleep(0.01)
    assert slots.waiting == 2
    raised = await adm.ConfigurePool(
        admin.ConfigurePoolRequest(pool=common.PoolConfig(name="q", max_concurrency=3, max_wait_ms=10_000))
    )
    assert raised.pool.concurrency_limit == 3 and raised.pool.queue_length == 2
    await decision.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=held.lease_id, success=True))
    done, _ = await asyncio.wait(waiters, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1 and next(iter(done)).result().granted
    for waiter in waiters:
        waiter.cancel()


async def test_wait_queue_cap(start, channel_to) -> None:
    service = await start(three_server_pool("q", max_concurrency=1, max_queue_length=2, max_wait_ms=10_000))
    decision, _ = stubs(service, channel_to)
    held = (await decision.AcquireSlot(pb.AcquireSlotRequest(pool="q"))).lease
    waiters = [
        asyncio.ensure_future(
            decision.AcquireSlot(pb.AcquireSlotRequest(pool="q", max_wait_ms=10_000, priority=i), timeout=15)
        )
        for i in range(2)
    ]
    slots = service.core.pool("q").slots
    for _ in range(500):
        if slots.waiting == 2:
            break
        await asyncio.sleep(0.01)
    await exhausted(
        decision.AcquireSlot(pb.AcquireSlotRequest(pool="q", max_wait_ms=1_000)),
        "max_queue_length (pools.q.max_queue_length = 2) reached",
        retry=True,
    )
    # The queue is intact: a release grants the highest-priority waiter.
    await decision.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=held.lease_id, success=True))
    granted = await asyncio.wait_for(waiters[1], 10)
    assert granted.granted and not waiters[0].done()
    waiters[0].cancel()


async def test_watch_streams_cap_names_its_key(start, channel_to) -> None:
    service = await start(three_server_pool("api"), limits=CoreLimits(max_watch_streams=1))
    decision, _ = stubs(service, channel_to)
    first = decision.WatchLoadStatus(pb.WatchLoadStatusRequest(interval_ms=100))
    await asyncio.wait_for(first.read(), 5)
    second = decision.WatchLoadStatus(pb.WatchLoadStatusRequest(interval_ms=100))
    await exhausted(second.read(), "max_watch_streams (limits.max_watch_streams = 1) reached", retry=True)
    # The open stream is untouched: it sends the next change.
    await decision.ReportLoad(
        pb.ReportLoadRequest(reports=[common.LoadReport(pool="api", server_id="s1", cpu_percent=7)])
    )
    update = await asyncio.wait_for(first.read(), 5)
    assert isinstance(update, pb.WatchLoadStatusResponse)  # read() is typed object: it may be grpc.aio.EOF
    assert update.status.pools[0].servers[0].load.cpu_percent == 7
    first.cancel()


async def test_pending_decisions_evict_oldest(start, channel_to) -> None:
    """At max_pending_decisions the oldest decision expires early: selection never fails."""
    service = await start(three_server_pool("api"), limits=CoreLimits(max_pending_decisions=3))
    decision, _ = stubs(service, channel_to)
    ids = [(await decision.SelectServer(pb.SelectServerRequest(pool="api"))).decision_id for _ in range(5)]
    assert len(service.core.pending) == 3
    outcomes = [pb.Outcome(decision_id=i, success=True, latency_ms=1.0) for i in ids]
    answer = await decision.ReportOutcome(pb.ReportOutcomeRequest(outcomes=outcomes))
    assert answer.applied == 3 and list(answer.unknown_decision_ids) == ids[:2]
    # Every selection was settled once (by its outcome or by eviction): nothing is left in flight.
    assert sum(s.in_flight for s in service.core.pool("api").servers.values()) == 0


async def test_request_ids_are_least_recently_used(start, channel_to) -> None:
    """Past max_request_ids the least recently used id is forgotten: its retry gets a new lease."""
    service = await start(three_server_pool("api"), limits=CoreLimits(max_request_ids=3))
    decision, _ = stubs(service, channel_to)
    leases = {}
    for rid in ("r1", "r2", "r3", "r4"):
        leases[rid] = (await decision.AcquireSlot(pb.AcquireSlotRequest(pool="api", request_id=rid))).lease.lease_id
    retry_r4 = await decision.AcquireSlot(pb.AcquireSlotRequest(pool="api", request_id="r4"))
    assert retry_r4.lease.lease_id == leases["r4"]  # remembered: the same lease, not a second slot
    retry_r1 = await decision.AcquireSlot(pb.AcquireSlotRequest(pool="api", request_id="r1"))
    assert retry_r1.lease.lease_id != leases["r1"]  # evicted: a new lease
    assert len(service.core.admission.leases) == 5  # nothing granted was lost


async def test_rate_limit_keys_are_least_recently_used(start, channel_to) -> None:
    """Past rate_limit_keys the least recently used client key is forgotten (and comes back full)."""
    rated = three_server_pool("rated", rate_limit=RateLimit(count=1, per_s=3600.0, burst=1), rate_limit_keys=2)
    service = await start(rated)
    decision, _ = stubs(service, channel_to)

    async def acquire(key: str) -> pb.AcquireSlotResponse:
        return await decision.AcquireSlot(pb.AcquireSlotRequest(pool="rated", client_key=key))

    assert (await acquire("a")).granted and (await acquire("b")).granted
    await exhausted(acquire("a"), "rate limit", retry=True)  # a is spent (and now most recently used)
    assert (await acquire("c")).granted  # tracking c evicts b, the least recently used
    assert len(service.core.pool("rated").slots.rate or ()) == 2
    assert (await acquire("b")).granted  # b came back with a full bucket (evicting a)
    assert (await acquire("a")).granted


async def test_request_size_cap(start, channel_to) -> None:
    service = await start(three_server_pool("api"), limits=CoreLimits(max_message_bytes=65_536))
    decision, _ = stubs(service, channel_to)
    big = pb.SelectServerRequest(pool="api", exclude_server_ids=["x" * 100] * 700)  # ~72 KB
    assert big.ByteSize() > 65_536
    await exhausted(decision.SelectServer(big), "larger than max", retry=False)
    assert (await decision.SelectServer(pb.SelectServerRequest(pool="api"))).server_id


async def test_concurrent_rpcs_cap(start, channel_to) -> None:
    """max_concurrent_rpcs counts every call in progress (here, queued AcquireSlot calls);
    past it gRPC answers RESOURCE_EXHAUSTED, and the calls in progress are unharmed."""
    service = await start(
        three_server_pool("q", max_concurrency=1, max_wait_ms=10_000), limits=CoreLimits(max_concurrent_rpcs=3)
    )
    decision, _ = stubs(service, channel_to)
    held = (await decision.AcquireSlot(pb.AcquireSlotRequest(pool="q"))).lease
    waiters = {
        asyncio.ensure_future(decision.AcquireSlot(pb.AcquireSlotRequest(pool="q", max_wait_ms=10_000), timeout=15))
        for _ in range(3)
    }
    slots = service.core.pool("q").slots
    for _ in range(500):
        if slots.waiting == 3:
            break
        await asyncio.sleep(0.01)
    assert slots.waiting == 3
    await exhausted(decision.GetLoadStatus(pb.GetLoadStatusRequest()), "Concurrent RPC limit", retry=False)
    # Every place is taken by a waiter, so the first release goes through the core directly.
    assert await service.core.release_slot(held.lease_id, True, 1.0)
    while waiters:  # each waiter is granted in turn as the one before it releases
        done, waiters = await asyncio.wait(waiters, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1
        answer = done.pop().result()
        assert answer.granted
        released = await decision.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=answer.lease.lease_id, success=True))
        assert released.released
    assert (await decision.GetLoadStatus(pb.GetLoadStatusRequest())).status.pools[0].active_leases == 0


@pytest.mark.parametrize(
    ("method", "request_", "texts"),
    [
        (
            "ReportOutcome",
            pb.ReportOutcomeRequest(outcomes=[pb.Outcome(decision_id="d", latency_ms=1)] * 1_001),
            ("outcomes", "1-1000 entries", "1001"),
        ),
        (
            "ReportLoad",
            pb.ReportLoadRequest(reports=[common.LoadReport(pool="api", server_id="s1")] * 1_001),
            ("reports", "1-1000 entries"),
        ),
        (
            "ReportBatch",
            pb.ReportBatchRequest(reports=[pb.BatchReport(operation="o", batch_size=1)] * 1_001),
            ("reports", "1-1000 entries"),
        ),
        (
            "SelectServer",
            pb.SelectServerRequest(pool="api", exclude_server_ids=["s1"] * 65),
            ("exclude_server_ids", "at most 64"),
        ),
        ("SelectServer", pb.SelectServerRequest(pool="a" * 129), ("pool", "at most 128")),
        ("AcquireSlot", pb.AcquireSlotRequest(pool="api", client_key="k" * 100_000), ("client_key", "at most 128")),
        ("AcquireSlot", pb.AcquireSlotRequest(pool="api", request_id="\x00" * 10), ("request_id",)),
        (
            "ReportOutcome",
            pb.ReportOutcomeRequest(outcomes=[pb.Outcome(decision_id="d", status="x" * 65)]),
            ("outcomes[0].status", "at most 64"),
        ),
    ],
)
async def test_oversize_fields_name_the_field_and_maximum(start, channel_to, method, request_, texts) -> None:
    service = await start(three_server_pool("api"))
    decision, _ = stubs(service, channel_to)
    await invalid(getattr(decision, method)(request_), *texts)
    assert (await decision.SelectServer(pb.SelectServerRequest(pool="api"))).server_id


async def test_echoed_values_are_clipped(start, channel_to) -> None:
    """A 900,000-character address is INVALID_ARGUMENT with a short message (gRPC clients refuse
    trailers over 8 KiB: an echo of the value would have turned into a client-side error)."""
    service = await start(three_server_pool("api"))
    _, adm = stubs(service, channel_to)
    huge = admin.RegisterServerRequest(pool="api", server=common.ServerSpec(id="s9", address="a b" * 300_000))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await adm.RegisterServer(huge)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("server.address: is 900000 characters long; at most 255")
    bad_rate = pool_config("api", "s1", rate_limit="1/" + "é" * 200_000)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await adm.ConfigurePool(bad_rate)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(err.value.details() or "") < 300
    assert (err.value.details() or "").startswith("pool.rate_limit: must look like '30/minute'")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
async def test_non_finite_parameters_are_invalid(start, channel_to, value: float) -> None:
    """NaN or infinity in strategy_params cannot become JSON: INVALID_ARGUMENT naming the field
    (it used to escape as INTERNAL)."""
    service = await start(three_server_pool("api"))
    _, adm = stubs(service, channel_to)
    params = struct_pb2.Struct()
    params.update({"nested": {"alpha": value}})
    request = admin.ConfigurePoolRequest(
        pool=common.PoolConfig(name="q", strategy="q_learning", strategy_params=params)
    )
    await invalid(adm.ConfigurePool(request), "pool.strategy_params")
    limit_params = struct_pb2.Struct()
    limit_params.update({"timeout_ms": value})
    await invalid(
        adm.ConfigurePool(
            admin.ConfigurePoolRequest(
                pool=common.PoolConfig(name="q", limit_algorithm="aimd", limit_params=limit_params)
            )
        ),
        "pool.limit_params",
    )


@pytest.mark.parametrize(
    "path",
    [
        "/loadwarden.v1.DecisionService/SelectServer",
        "/loadwarden.v1.DecisionService/ReportOutcome",
        "/loadwarden.v1.AdminService/ConfigurePool",
        "/loadwarden.v1.AdminService/DeleteOperation",
    ],
)
async def test_undecodable_request_is_invalid_argument(start, channel_to, path: str) -> None:
    """Bytes that are not the request message: INVALID_ARGUMENT naming its type (gRPC's own answer is UNKNOWN)."""
    service = await start(three_server_pool("api"))
    channel = channel_to(service)
    call = channel.unary_unary(path)  # bytes in, bytes out
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(b"\x0a\xff\xff\xff\xff\x0f")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("request: is not a valid loadwarden.v1.")
    stream = channel.unary_stream("/loadwarden.v1.DecisionService/WatchLoadStatus")(b"\xff")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    decision, _ = stubs(service, channel_to)
    assert (await decision.SelectServer(pb.SelectServerRequest(pool="api"))).server_id
