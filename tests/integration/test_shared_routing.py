"""Routing state shared by two replicas on a real redis-server: each decides with both views.

An outcome reported to the replica that did not decide reaches the one that did; a load
report, an ejection and in-flight selections on one replica are seen by the other; and
what a learning strategy learns on one replica is merged into the other's.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from loadwarden.policy import OutlierSettings
from loadwarden.server import PoolSettings, PoolSpec, RunningService, ServerSpec, ServiceConfig, start_service
from loadwarden.server.app._config import StateSettings
from loadwarden.server.shared import RedisSettings
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import wait_for

_prefixes = itertools.count()
SERVERS = (ServerSpec("s1", "127.0.0.1:9001"), ServerSpec("s2", "127.0.0.1:9002"))

# Quoted: the async stub exists for type checkers only (@type_check_only in the .pyi).
Start = Callable[..., Awaitable[tuple[list[RunningService], list["pb_grpc.DecisionServiceAsyncStub"]]]]


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[Start]:
    started: list[RunningService] = []
    channels: list[grpc.aio.Channel] = []

    async def _start(
        *pools: PoolSpec, n: int = 2
    ) -> tuple[list[RunningService], list[pb_grpc.DecisionServiceAsyncStub]]:
        settings = RedisSettings(
            url=redis_url, key_prefix=f"{{r{next(_prefixes)}}}:", exchange_interval_ms=50, merge_interval_ms=200
        )
        runnings, stubs = [], []
        for _ in range(n):
            running = await start_service(
                ServiceConfig(listen="127.0.0.1:0", pools=pools, state=StateSettings(store="redis", redis=settings))
            )
            channel = grpc.aio.insecure_channel(running.target)
            started.append(running)
            channels.append(channel)
            runnings.append(running)
            stubs.append(pb_grpc.DecisionServiceStub(channel))
        return runnings, stubs

    yield _start
    for channel in channels:
        await channel.close()
    for running in started:
        await running.stop(0)


def pool(strategy: str = "round_robin", **settings: Any) -> PoolSpec:
    return PoolSpec(PoolSettings(name="p", strategy=strategy, **settings), SERVERS)


async def servers_of(stub: pb_grpc.DecisionServiceAsyncStub) -> dict[str, common.ServerStatus]:
    status = await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="p"))
    return {s.id: s for s in status.status.pools[0].servers}


async def test_an_outcome_sent_to_the_other_replica_is_applied_where_the_decision_was_made(replicas: Start) -> None:
    (a_service, _), (a, b) = await replicas(pool())
    choice = await a.SelectServer(pb.SelectServerRequest(pool="p"))
    answer = await b.ReportOutcome(
        pb.ReportOutcomeRequest(outcomes=[pb.Outcome(decision_id=choice.decision_id, success=True, latency_ms=42.0)])
    )
    assert answer.applied == 1 and not answer.unknown_decision_ids
    server = a_service.core.pool("p").servers[choice.server_id]
    await wait_for(lambda: _now(server.outcomes_total), lambda n: n == 1, "the outcome applied on a")
    assert server.ewma_latency_ms == 42.0 and server.in_flight == 0
    forged = choice.decision_id[:-4] + "0000"  # not signed: unknown here, never forwarded
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await b.ReportOutcome(pb.ReportOutcomeRequest(outcomes=[pb.Outcome(decision_id=forged, success=True)]))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_load_report_on_one_replica_is_seen_by_the_other(replicas: Start) -> None:
    _, (a, b) = await replicas(pool())
    report = common.LoadReport(
        pool="p",
        server_id="s1",
        cpu_percent=77.0,
        active_requests=3,
        application_utilization=0.4,  # ORCA's fields travel too
        requests_per_second=12.5,
        named_metrics={"queue_depth": 7.0},
    )
    await a.ReportLoad(pb.ReportLoadRequest(reports=[report]))
    status = await wait_for(lambda: servers_of(b), lambda s: s["s1"].load.cpu_percent == 77.0, "the report on b")
    load = status["s1"].load
    assert (load.application_utilization, load.requests_per_second) == (0.4, 12.5)
    assert dict(load.named_metrics) == {"queue_depth": 7.0}


async def test_an_ejection_on_one_replica_is_an_ejection_on_the_other(replicas: Start) -> None:
    outlier = OutlierSettings(consecutive_failures=2, base_ejection_time_ms=30_000, max_ejection_percent=50)
    _, (a, b) = await replicas(pool(outlier=outlier))
    for _ in range(4):  # round robin: two failures on each of s1 and s2 would eject both; stop at the first
        choice = await a.SelectServer(pb.SelectServerRequest(pool="p", exclude_server_ids=["s2"]))
        await a.ReportOutcome(pb.ReportOutcomeRequest(outcomes=[pb.Outcome(decision_id=choice.decision_id)]))
    assert (await servers_of(a))["s1"].state == common.SERVER_STATE_EJECTED
    await wait_for(lambda: servers_of(b), lambda s: s["s1"].state == common.SERVER_STATE_EJECTED, "ejected on b")
    assert (await b.SelectServer(pb.SelectServerRequest(pool="p"))).server_id == "s2"


async def test_in_flight_selections_on_one_replica_steer_the_other(replicas: Start) -> None:
    _, (a, b) = await replicas(pool("least_connections"))
    for _ in range(3):
        await a.SelectServer(pb.SelectServerRequest(pool="p", exclude_server_ids=["s2"]))  # three on s1, no outcome
    await wait_for(lambda: servers_of(b), lambda s: s["s1"].in_flight == 3, "a's in-flight seen by b")
    picks = {(await b.SelectServer(pb.SelectServerRequest(pool="p"))).server_id for _ in range(2)}
    assert picks == {"s2"}  # b's own two selections go where a's are not


async def test_every_replica_counts_the_requests_of_all_of_them(replicas: Start) -> None:
    """The capacity planner reads requests_total from each replica's history: with shared
    state it is the pool's, not the replica's share of it."""
    (_, b_service), (a, b) = await replicas(pool())
    for stub, n in ((a, 5), (b, 3)):
        for _ in range(n):
            await stub.SelectServer(pb.SelectServerRequest(pool="p"))

    async def totals() -> list[int]:
        return [
            (await s.GetLoadStatus(pb.GetLoadStatusRequest(pool="p"))).status.pools[0].requests_total for s in (a, b)
        ]

    await wait_for(totals, lambda t: t == [8, 8], "both replicas count all eight requests")
    assert b_service.core.pool("p").requests_total == 3  # its own, the rest is the other's


async def test_what_one_replica_learns_is_merged_into_the_other(replicas: Start) -> None:
    (a_service, b_service), (a, _) = await replicas(pool("q_linear"))
    for _ in range(40):
        choice = await a.SelectServer(pb.SelectServerRequest(pool="p"))
        ok = choice.server_id == "s1"
        await a.ReportOutcome(
            pb.ReportOutcomeRequest(
                outcomes=[pb.Outcome(decision_id=choice.decision_id, success=ok, latency_ms=10.0 if ok else 500.0)]
            )
        )
    learned_on_a = a_service.core.pool("p").strategy.snapshot()
    assert learned_on_a is not None and learned_on_a["updates"] >= 40

    def learned_on_b() -> Any:
        return b_service.core.pool("p").strategy.snapshot()

    # b made no decision; after a merge its state is the average of both, so it has learned too.
    await wait_for(lambda: _now(learned_on_b()["updates"]), lambda n: n >= 40, "a's learning merged into b")
    assert learned_on_b()["biases"] != {"s1": 0.0, "s2": 0.0}


async def _now(value: Any) -> Any:
    return value


async def _owner(peers: Any, operation: str) -> Any:
    return peers.batch_owner(operation)


async def test_two_replicas_give_the_same_batch_size(replicas: Start) -> None:
    from loadwarden.server.shared import Peers
    from loadwarden.v1 import admin_pb2 as admin
    from loadwarden.v1 import admin_pb2_grpc as admin_grpc

    (a_service, b_service), (a, b) = await replicas(pool())
    channel = grpc.aio.insecure_channel(a_service.target)
    try:
        operation = common.OperationConfig(
            name="etl",
            mode=common.BATCH_MODE_LATENCY_TARGET,
            min_batch_size=1,
            max_batch_size=64,
            default_batch_size=32,
            target_latency_ms=100.0,
            backoff_ratio=0.5,
        )
        await admin_grpc.AdminServiceStub(channel).ConfigureOperation(
            admin.ConfigureOperationRequest(operation=operation)
        )
    finally:
        await channel.close()

    async def sizes() -> tuple[int, int]:
        first = await a.GetBatchSize(pb.GetBatchSizeRequest(operation="etl"))
        second = await b.GetBatchSize(pb.GetBatchSizeRequest(operation="etl"))
        return first.batch_size, second.batch_size

    for service in (a_service, b_service):  # both know who sizes it (elections run every second)
        peers = service.core.peers
        assert isinstance(peers, Peers)
        owner = functools.partial(_owner, peers, "etl")
        await wait_for(owner, lambda o: o is not None, "an owner", timeout_s=5)
    for stub in (b, b, b):  # slow batches, reported to b only: the owner (whichever) learns from them
        report = pb.BatchReport(operation="etl", batch_size=32, duration_ms=900.0, success=True)
        await stub.ReportBatch(pb.ReportBatchRequest(reports=[report]))
    await wait_for(sizes, lambda pair: pair[0] == pair[1] < 32, "one smaller size on both")


async def test_a_survivor_takes_over_sizing_when_the_owner_is_gone(redis_url: str) -> None:
    from loadwarden.policy import OperationSettings
    from loadwarden.server.shared import Peers

    prefix = f"{{r{next(_prefixes)}}}:"
    state = StateSettings(store="redis", redis=RedisSettings(url=redis_url, key_prefix=prefix))
    operation = OperationSettings(
        name="etl", mode="latency_target", target_latency_ms=100.0, default_batch_size=32, max_batch_size=64
    )
    config = ServiceConfig(listen="127.0.0.1:0", pools=(pool(),), operations=(operation,), state=state)
    services = [await start_service(config) for _ in range(2)]
    try:
        peers = [s.core.peers for s in services]
        assert all(isinstance(p, Peers) for p in peers)
        first = await wait_for(functools.partial(_owner, peers[0], "etl"), lambda o: o is not None, "an owner")
        gone = next(s for s in services if s.core.ids.prefix == first)
        survivor = next(s for s in services if s is not gone)
        await gone.stop(0)
        mine = survivor.core.ids.prefix
        await wait_for(
            functools.partial(_owner, survivor.core.peers, "etl"), lambda o: o == mine, "taken over", timeout_s=8
        )
        async with grpc.aio.insecure_channel(survivor.target) as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            report = pb.BatchReport(operation="etl", batch_size=32, duration_ms=900.0, success=True)
            await stub.ReportBatch(pb.ReportBatchRequest(reports=[report]))

            async def size() -> int:
                return int((await stub.GetBatchSize(pb.GetBatchSizeRequest(operation="etl"))).batch_size)

            await wait_for(size, lambda n: n < 32, "the survivor sizes it itself")
    finally:
        for service in services:
            await service.stop(0)
