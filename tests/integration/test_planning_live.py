"""Capacity planning on live traffic: requests counted by the core reach the history and
the planner's metric, with no synthetic snapshot in between."""

from __future__ import annotations

import asyncio
import contextlib

from loadwarden.server import PoolSettings, PoolSpec, ServerSpec
from loadwarden.server.app._config import AdminSettings, MonitorSettings
from loadwarden.server.engine._planner import PlanningSettings, PoolScaling
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

WAIT_S = 20.0


async def test_routed_and_admitted_requests_are_counted_recorded_and_planned_on(start, channel_to) -> None:
    planning = PlanningSettings(
        enabled=True,
        interval_s=3_600.0,
        step_s=1.0,
        horizon_s=10.0,
        history_s=600.0,
        seasons_s=(),
        pools={"api": PoolScaling(metric="requests_per_s", target=1.0, lead_time_s=5.0)},
    )
    running = await start(
        PoolSpec(PoolSettings(name="api", max_concurrency=100), (ServerSpec("a1", "127.0.0.1:9301"),)),
        planning=planning,
        monitor=MonitorSettings(enabled=False),
        admin=AdminSettings(history_interval_ms=100),  # no admin port: the planner keeps the history on
    )
    assert running.admin_port is None and running.planner is not None
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    for _ in range(30):
        await stub.SelectServer(pb.SelectServerRequest(pool="api"))
    granted = await stub.AcquireSlot(pb.AcquireSlotRequest(pool="api"))
    assert granted.granted
    (pool,) = (await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="api"))).status.pools
    assert pool.requests_total == 31

    history = running.planner.history
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not any(row[3] == 31 for row in await asyncio.to_thread(history.pool_rows, "api", 0.0, 4e9)):
        assert loop.time() < deadline, "the history never recorded the requests"
        await asyncio.sleep(0.05)

    async def traffic() -> None:  # keeps the newest step busy while the planner reads it
        while True:
            await stub.SelectServer(pb.SelectServerRequest(pool="api"))
            await asyncio.sleep(0.01)

    sender = asyncio.create_task(traffic())
    try:
        deadline = loop.time() + WAIT_S
        while True:
            await asyncio.sleep(1.1)
            await running.planner.refresh()
            rec = running.planner.plans["api"].recommendation
            if rec.metric:
                break
            assert loop.time() < deadline, rec
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
    assert rec.metric > 0 and rec.current == 1
    assert rec.reactive >= 1 and running.planner.plans["api"].forecasts["requests_per_s"].history_points >= 2
