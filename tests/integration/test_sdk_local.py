"""The SDK's local mode against a real in-process service: pushed tables, local decisions,
learning kept central, drains, broken streams, restarts and bad tables.

Every wait is on a condition with a deadline; nothing sleeps to make time pass.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from loadwarden.sdk import AsyncClient, Client, NotFoundError
from loadwarden.server import CoreLimits, ServiceConfig, start_service
from loadwarden.v1 import admin_pb2 as admin
from loadwarden.v1 import admin_pb2_grpc as admin_grpc
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import three_server_pool

WAIT_S = 5.0
PUSH = CoreLimits(route_push_interval_ms=50)


async def until(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Polls ``check`` (a function, or one returning an awaitable) until it gives something
    truthy; fails naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def local_selection(client: AsyncClient, pool: str = "api") -> Any:
    async def check() -> Any:
        selection = await client.select(pool)
        client.report_outcome(selection.decision_id, success=True, latency_ms=1.0)
        return selection if selection.local else None

    return await until(check, f"a local decision in pool {pool}")


async def test_local_decisions_need_no_rpc_and_their_outcomes_reach_the_service(start, channel_to) -> None:
    running = await start(three_server_pool("api"), limits=PUSH)
    async with AsyncClient(running.target, decisions="local") as client:
        first = await local_selection(client)
        assert first.decision_id.startswith("~") and first.table_version >= 1 and not first.stale
        seen = set()
        for _ in range(60):
            async with client.route("api") as route:
                assert route.selection.local
                seen.add(route.server_id)
        assert seen == {"s1", "s2", "s3"}
        assert await client.flush_outcomes(WAIT_S)
        assert client.outcome_stats().dropped == 0
    status = await pb_grpc.DecisionServiceStub(channel_to(running)).GetLoadStatus(pb.GetLoadStatusRequest(pool="api"))
    servers = status.status.pools[0].servers
    assert sum(s.selections_total for s in servers) <= 1  # at most the one central decision before the table
    assert all(s.in_flight == 0 for s in servers)


async def test_the_sync_client_decides_locally_too(start) -> None:
    running = await start(three_server_pool("api"), limits=PUSH)

    def run() -> list[Any]:
        with Client(running.target, decisions={"api": "local"}) as client:
            deadline = time.monotonic() + WAIT_S
            while not client.select("api").local:
                assert time.monotonic() < deadline, "no table arrived"
                time.sleep(0.01)
            out = []
            for _ in range(9):
                with client.route("api") as route:
                    out.append(route.selection)
            assert client.flush_outcomes(WAIT_S)
            return out

    selections = await asyncio.to_thread(run)
    assert all(s.local for s in selections) and {s.server_id for s in selections} == {"s1", "s2", "s3"}


async def test_central_pools_and_unknown_pools_go_to_the_service(start) -> None:
    running = await start(three_server_pool("api"), three_server_pool("other"), limits=PUSH)
    async with AsyncClient(running.target, decisions={"api": "local"}) as client:
        await local_selection(client)
        assert not (await client.select("other")).local  # not named: central
    async with AsyncClient(running.target, decisions="local") as client:
        with pytest.raises(NotFoundError):
            await client.select("nope")  # unknown to the service: it says so
        await local_selection(client)  # the stream of the known pools is unaffected
        with pytest.raises(NotFoundError):
            await client.select("nope")


async def test_a_drain_reaches_four_connected_clients_within_a_second(start, channel_to) -> None:
    running = await start(three_server_pool("api"), limits=CoreLimits(route_push_interval_ms=250))
    clients = [AsyncClient(running.target, decisions="local") for _ in range(4)]
    try:
        for client in clients:
            await local_selection(client)
        admin_stub = admin_grpc.AdminServiceStub(channel_to(running))
        drained_at = time.monotonic()
        await admin_stub.DrainServer(
            admin.DrainServerRequest(pool="api", server_id="s1", state=admin.DRAIN_STATE_DRAINING)
        )

        async def avoids_s1(client: AsyncClient) -> float:
            tables = client._tables
            await until(lambda: "s1" not in {s.id for s in tables.pools["api"].candidates}, "the drain", 2.0)
            return time.monotonic() - drained_at

        delays = await asyncio.gather(*(avoids_s1(c) for c in clients))
        assert max(delays) < 1.0, delays
        for client in clients:
            for _ in range(20):
                async with client.route("api") as route:
                    assert route.server_id != "s1"
    finally:
        for client in clients:
            await client.close()


async def test_decisions_go_on_from_the_last_table_when_the_service_dies_and_resync_after(start) -> None:
    running = await start(three_server_pool("api"), limits=PUSH)
    port = running.port
    async with AsyncClient(running.target, decisions="local", route_stale_after_s=0.2, retry=None) as client:
        before = await local_selection(client)
        await running.stop(0)
        stale = await until(lambda: _stale_choice(client), "a stale local decision")
        assert stale.local and stale.table_version == before.table_version
        async with client.route("api") as route:  # routing goes on without the service
            assert route.selection.local and route.selection.stale
        config = ServiceConfig(
            listen=f"127.0.0.1:{port}", pools=(three_server_pool("api", strategy="p2c"),), limits=PUSH
        )
        restarted = await start_service(config, rng=random.Random(7))
        try:
            fresh = await until(lambda: _fresh_p2c(client), "a fresh table from the restarted service", 10.0)
            assert fresh.local and not fresh.stale
        finally:
            await client.close()
            await restarted.stop(0)


async def _stale_choice(client: AsyncClient) -> Any:
    selection = await client.select("api")
    client.report_outcome(selection.decision_id, success=True, latency_ms=1.0)
    return selection if selection.stale else None


async def _fresh_p2c(client: AsyncClient) -> Any:
    selection = await client.select("api")
    client.report_outcome(selection.decision_id, success=True, latency_ms=1.0)
    return selection if selection.strategy == "p2c" and not selection.stale else None


async def test_q_linear_learns_centrally_from_local_outcomes_and_clients_adopt_it(start, channel_to) -> None:
    running = await start(three_server_pool("api", strategy="q_linear"), limits=PUSH)
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    latency = {"s1": 5.0, "s2": 5.0, "s3": 400.0}
    async with AsyncClient(running.target, decisions="local") as client:
        await local_selection(client)
        for _ in range(300):
            async with client.route("api") as route:
                route._started -= latency[route.server_id] / 1000.0
        assert await client.flush_outcomes(WAIT_S)

        async def learned() -> dict[str, Any] | None:
            status = await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="api"))
            stats = status.status.pools[0].strategy_stats
            return dict(stats) if stats.get("updates", 0) >= 300 else None

        stats = await until(learned, "the service learning from 300 local outcomes")
        tables = client._tables
        local_strategy = tables.pools["api"].strategy
        assert local_strategy is not None

        def adopted() -> bool:
            snapshot = local_strategy.snapshot()
            assert snapshot is not None
            return bool(snapshot["biases"].get("s3", 0.0) < snapshot["biases"].get("s1", 0.0))

        await until(adopted, "the client adopting the learned biases")
        assert stats["updates"] >= 300
        picks = []
        for _ in range(100):
            async with client.route("api") as route:
                picks.append(route.server_id)
        assert picks.count("s3") < 30  # the slow server is avoided (epsilon still explores)


class BadTables(pb_grpc.DecisionServiceServicer):
    """A WatchRoutes that sends a good table, then a malformed change, then a good change."""

    def __init__(self) -> None:
        self.sent = asyncio.Event()

    async def WatchRoutes(self, request: pb.WatchRoutesRequest, context: Any) -> Any:  # noqa: N802 - the gRPC method name
        servers = [
            pb.RouteServer(
                id=f"s{i}",
                address=f"127.0.0.1:900{i}",
                weight=1,
                effective_weight=1.0,
                state=common.SERVER_STATE_SERVING,
                eligible=True,
            )
            for i in (1, 2)
        ]

        def table(version: int, **fields: Any) -> pb.RouteTable:
            return pb.RouteTable(
                pool="api", epoch="fake", strategy="round_robin", strategy_params_json="{}", version=version, **fields
            )

        yield pb.WatchRoutesResponse(table=table(1, full=True, servers=servers))
        bad = pb.RouteServer(id="s3", address="127.0.0.1:9003", weight=5000, effective_weight=1.0, eligible=True)
        yield pb.WatchRoutesResponse(table=table(2, base_version=1, servers=[bad]))
        yield pb.WatchRoutesResponse(table=table(3, full=True, servers=servers[:1]))
        self.sent.set()
        await asyncio.Event().wait()  # keep the stream open


async def test_a_malformed_table_is_rejected_and_the_last_good_one_kept() -> None:
    server = grpc.aio.server()
    fake = BadTables()  # type: ignore[abstract]  # a fake of WatchRoutes only; the other RPCs answer UNIMPLEMENTED
    pb_grpc.add_DecisionServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AsyncClient(f"127.0.0.1:{port}", decisions="local") as client:
            client._route_watcher.watch("api")
            await asyncio.wait_for(fake.sent.wait(), WAIT_S)
            tables = client._tables
            await until(lambda: tables.pools.get("api") and tables.pools["api"].version == 3, "version 3")
            assert tables.rejected == 1 and client.route_table_stats()["rejected_tables"] == 1
            assert {(await client.select("api")).server_id for _ in range(4)} == {"s1"}
    finally:
        await server.stop(0)


def test_bad_local_settings_are_refused() -> None:
    for kwargs, name in (
        ({"decisions": "nearby"}, "decisions"),
        ({"decisions": {"api": "both"}}, "decisions['api']"),
        ({"decisions": 3}, "decisions"),
        ({"route_stale_after_s": 0}, "route_stale_after_s"),
        ({"max_table_servers": 0}, "max_table_servers"),
    ):
        with pytest.raises(ValueError, match=name.replace("[", r"\[")):
            AsyncClient("127.0.0.1:1", **kwargs)


async def test_a_table_larger_than_the_client_accepts_is_rejected_and_the_last_good_one_kept(start, channel_to) -> None:
    """A pool whose table outgrows `max_table_servers`: the client keeps deciding from the last
    table it took; the service is unharmed."""
    running = await start(three_server_pool("api"), limits=PUSH)
    async with AsyncClient(running.target, decisions="local", max_table_servers=3) as client:
        await local_selection(client)
        admin_stub = admin_grpc.AdminServiceStub(channel_to(running))
        await admin_stub.RegisterServer(
            admin.RegisterServerRequest(pool="api", server=common.ServerSpec(id="s4", address="127.0.0.1:9004"))
        )
        tables = client._tables
        await until(lambda: tables.rejected >= 1, "the oversized table's rejection")
        selection = await client.select("api")
        assert selection.local and selection.server_id in {"s1", "s2", "s3"}
        client.report_outcome(selection.decision_id, success=True, latency_ms=1.0)
