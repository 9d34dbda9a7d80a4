"""Clients deciding locally see each other's requests in flight through the service: each
reports its counts with its outcome batches, the service adds them into every client's
table, and forgets a client that closed or died. Real in-process services, real SDK
clients (and one killed client process); every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable
from contextlib import AsyncExitStack

import grpc
import pytest

from loadwarden.sdk import AsyncClient
from loadwarden.server import CoreLimits
from loadwarden.server.engine._core import LOCAL_IN_FLIGHT_TTL_S
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import three_server_pool
from .test_sdk_local import local_selection, until

LIMITS = CoreLimits(route_push_interval_ms=10)


async def service_in_flight(stub: pb_grpc.DecisionServiceAsyncStub) -> dict[str, int]:
    status = await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="api"))
    return {s.id: s.in_flight for s in status.status.pools[0].servers}


async def test_a_clients_requests_in_flight_reach_the_other_clients_tables(start, channel_to) -> None:
    running = await start(three_server_pool("api", "least_connections"), limits=LIMITS)
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    async with AsyncClient(running.target, decisions="local") as a, AsyncClient(running.target, decisions="local") as b:
        await local_selection(a)
        await local_selection(b)
        async with AsyncExitStack() as held:
            routes = [await held.enter_async_context(a.route("api", exclude=["s2", "s3"])) for _ in range(3)]
            assert all(r.selection.local and r.server_id == "s1" for r in routes)
            await until(lambda: _peer(b, "s1") == 3, "b to see a's 3 requests on s1")
            assert _peer(a, "s1") == 0  # a's own are in its in_flight, not counted twice
            # a's table says it holds a's report (RouteTable.in_flight_seq): a takes out exactly that
            await until(lambda: a._tables.pools["api"].held == {"s1": 3}, "a's table to hold a's report")
            assert (await service_in_flight(stub))["s1"] == 3
            # b weighs them: least connections keeps b off s1 while a holds it
            for _ in range(6):
                async with b.route("api") as route:
                    assert route.server_id != "s1"
        await until(lambda: _peer(b, "s1") == 0, "a's requests to end at b")
        await until(lambda: a._tables.pools["api"].held == {}, "a's table to hold a's last report")
    assert await service_in_flight(stub) == {"s1": 0, "s2": 0, "s3": 0}


def _peer(client: AsyncClient, server_id: str) -> int:
    pool = client._tables.pools.get("api")  # the client's own view of the pool
    return pool.servers[server_id].peer_in_flight if pool is not None else -1


async def test_a_closing_client_takes_its_counts_with_it(start, channel_to) -> None:
    running = await start(three_server_pool("api"), limits=LIMITS)
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    client = AsyncClient(running.target, decisions="local")
    await local_selection(client)
    route = client.route("api")
    await route.__aenter__()
    await until(lambda: _sum(service_in_flight(stub), 1), "the held request at the service")
    await client.close()  # the request never ends: the goodbye says it is not the client's any more
    assert sum((await service_in_flight(stub)).values()) == 0


async def _sum(values: Awaitable[dict[str, int]], want: int) -> bool:
    return sum((await values).values()) == want


async def test_a_killed_clients_counts_are_forgotten_at_their_ttl(start, channel_to) -> None:
    running = await start(three_server_pool("api"), limits=LIMITS)
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    script = textwrap.dedent(
        f"""
        import sys, time
        from loadwarden.sdk import Client
        client = Client({running.target!r}, decisions="local")
        deadline = time.monotonic() + 10
        while True:
            selection = client.select("api")
            client.report_outcome(selection.decision_id, success=True, latency_ms=1.0)
            if selection.local:
                break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        held = [client.route("api") for _ in range(4)]
        for route in held:
            route.__enter__()
        print("holding", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=dict(os.environ))
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert line.strip() == b"holding"
        await until(lambda: _sum(service_in_flight(stub), 4), "the killed client's 4 requests at the service")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        await until(
            lambda: _sum(service_in_flight(stub), 0), "the dead client's counts to go", LOCAL_IN_FLIGHT_TTL_S + 3
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({}, "outcomes"),
        ({"in_flight": [pb.LocalInFlight(pool="api", server_ids=["s1"], counts=[1])]}, "client_instance"),
        ({"client_instance": "x" * 65, "in_flight": [pb.LocalInFlight(pool="api")]}, "client_instance"),
        ({"client_instance": "bad id", "in_flight": [pb.LocalInFlight(pool="api")]}, "client_instance"),
        ({"client_instance": "c", "in_flight": [pb.LocalInFlight(pool="")]}, "in_flight[0].pool"),
        (
            {"client_instance": "c", "in_flight": [pb.LocalInFlight(pool="api"), pb.LocalInFlight(pool="api")]},
            "in_flight[1].pool",
        ),
        (
            {"client_instance": "c", "in_flight": [pb.LocalInFlight(pool="api", server_ids=["s1"], counts=[])]},
            "in_flight[0].counts",
        ),
        (
            {
                "client_instance": "c",
                "in_flight": [pb.LocalInFlight(pool="api", server_ids=["s1", "s1"], counts=[1, 2])],
            },
            "in_flight[0].server_ids[1]",
        ),
        (
            {"client_instance": "c", "in_flight": [pb.LocalInFlight(pool="api", server_ids=["s/1 "], counts=[1])]},
            "in_flight[0].server_ids[0]",
        ),
        (
            {
                "client_instance": "c",
                "in_flight": [pb.LocalInFlight(pool="api", server_ids=["s1"], counts=[2_000_000])],
            },
            "in_flight[0].counts[0]",
        ),
        ({"client_instance": "c", "in_flight": [pb.LocalInFlight(pool=f"p{i}") for i in range(101)]}, "in_flight"),
        (
            {
                "client_instance": "c",
                "in_flight": [
                    pb.LocalInFlight(pool="api", server_ids=[f"s{i}" for i in range(10_001)], counts=[1] * 10_001)
                ],
            },
            "in_flight",
        ),
        (
            {
                "client_instance": "c",
                "in_flight": [pb.LocalInFlight(pool="api", server_ids=["s1"], counts=[1])],
                "outcomes": [pb.Outcome(decision_id="", success=True)],
            },
            "outcomes[0].decision_id",
        ),
    ],
)
async def test_bad_reports_are_refused_naming_the_field_and_change_nothing(
    start, channel_to, request_fields, field
) -> None:
    running = await start(three_server_pool("api"), limits=LIMITS)
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReportOutcome(pb.ReportOutcomeRequest(**request_fields))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(field), err.value.details()
    assert await service_in_flight(stub) == {"s1": 0, "s2": 0, "s3": 0}


async def test_counts_alone_are_a_whole_report_and_unknown_names_are_skipped(start, channel_to) -> None:
    running = await start(three_server_pool("api"), limits=LIMITS)
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    answer = await stub.ReportOutcome(
        pb.ReportOutcomeRequest(
            client_instance="c1",
            in_flight=[
                pb.LocalInFlight(pool="api", server_ids=["s1", "gone"], counts=[2, 5]),
                pb.LocalInFlight(pool="no-such-pool", server_ids=["s1"], counts=[1]),
            ],
        )
    )
    assert answer == pb.ReportOutcomeResponse()
    assert await service_in_flight(stub) == {"s1": 2, "s2": 0, "s3": 0}
