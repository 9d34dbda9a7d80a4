"""Predictive load management end to end: a service whose history holds hourly surges moves
its predictive operation's batch size and its predictive-limit pool's adaptive limit ahead
of the next one; GetBatchSize, GetLoadStatus, the log and the metrics say so.

The service runs in process; its history is written as the service writes it (LoadStatus
snapshots at past wall times) and the planner is refreshed by the test.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from loadwarden.policy import OperationSettings
from loadwarden.server import PoolSettings, PoolSpec, RunningService, ServerSpec
from loadwarden.server.app._config import AdminSettings, MonitorSettings
from loadwarden.server.engine._planner import PlanningSettings, PoolScaling
from loadwarden.server.engine._predictive import OperationPlanning
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

TOKEN = "predictive-test-token-0123456789"
STEP_S = 60.0
HOUR_S = 3_600.0
SURGE_S = 900.0  # each hour's surge lasts 15 minutes
AHEAD_S = 150.0  # the next surge starts this long after the test starts


async def surging_service(start) -> RunningService:
    planning = PlanningSettings(
        enabled=True,
        interval_s=3_600.0,  # the loop's first refresh runs at start; the test refreshes after that
        step_s=STEP_S,
        horizon_s=900.0,
        history_s=12 * HOUR_S,
        seasons_s=(HOUR_S,),
        pools={"api": PoolScaling(metric="requests_per_s", target=10.0, predictive_limit=True)},
        operations={"import": OperationPlanning(predictive=True, lead_s=300.0)},
    )
    servers = (ServerSpec("a1", "127.0.0.1:9201"), ServerSpec("a2", "127.0.0.1:9202"))
    pool = PoolSettings(name="api", max_concurrency=10, limit_algorithm="aimd", limit_params={"max_limit": 100})
    operation = OperationSettings(
        name="import", min_batch_size=5, max_batch_size=100, default_batch_size=50, load_source="pool", pool="api"
    )
    running = await start(
        PoolSpec(pool, servers),
        operations=(operation,),
        planning=planning,
        monitor=MonitorSettings(enabled=False),
        admin=AdminSettings(listen="127.0.0.1:0", token=TOKEN, history_retention_s=86_400),
    )
    assert running.planner is not None
    history = running.planner.history
    now = time.time()
    next_surge = now + AHEAD_S

    def surging(t: float) -> bool:
        return (t - next_surge) % HOUR_S < SURGE_S

    def write() -> None:
        requests = decisions = 0
        t = now - 12 * HOUR_S
        while t < now - 30.0:
            t += STEP_S
            on = surging(t)
            requests += round((80.0 if on else 20.0) * STEP_S)
            decisions += 60
            members = [{"id": s, "state": "SERVER_STATE_SERVING"} for s in ("a1", "a2")]
            phase = (t - next_surge) % HOUR_S
            limit = 10 + 2 * round(phase / 60.0) if on else 10  # climbs through a surge to 38
            snapshot = {
                "pools": [
                    {"name": "api", "servers": members, "requests_total": str(requests), "concurrency_limit": limit}
                ],
                "operations": [
                    {"name": "import", "decisions_total": str(decisions), "last_load_score": 90.0 if on else 30.0}
                ],
            }
            history.record(snapshot, at=t)

    await asyncio.to_thread(write)
    return running


async def metrics(running: RunningService) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{running.admin_port}/metrics"
        async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            text = await response.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_batch_size_and_limit_move_ahead_of_a_forecast_surge(start, channel_to, caplog) -> None:
    caplog.set_level(logging.INFO, logger="loadwarden")
    running = await surging_service(start)
    assert running.planner is not None
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    reports = [common.LoadReport(pool="api", server_id=s, cpu_percent=30, memory_percent=30) for s in ("a1", "a2")]
    await stub.ReportLoad(pb.ReportLoadRequest(reports=reports))

    await running.planner.refresh()
    demand = running.planner.plans["api"].forecasts["requests_per_s"]
    assert demand.model, demand.reason

    answer = await stub.GetBatchSize(pb.GetBatchSizeRequest(operation="import"))
    assert answer.batch_size == 5
    assert answer.reason.startswith("forecast load ") and answer.reason.endswith("(measured load 30.0)")
    (status,) = (await stub.GetLoadStatus(pb.GetLoadStatusRequest())).status.operations
    assert status.recent_adjustments[-1].reason == answer.reason and status.recent_adjustments[-1].new_size == 5
    (pool,) = (await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="api"))).status.pools
    assert pool.concurrency_limit == 38
    (move,) = running.planner.limit_moves
    assert (move.previous, move.new) == (10, 38) and "settled at 38" in move.reason
    assert "pool api: predictive limit 10 -> 38 (forecast " in caplog.text
    assert "batch size of import: 50 -> 5 (forecast load " in caplog.text

    samples = await metrics(running)
    moves = "loadwarden_predictive_moves_total"
    assert samples[(moves, (("kind", "limit"), ("operation", ""), ("pool", "api")))] == 1
    assert samples[(moves, (("kind", "batch_size"), ("operation", "import"), ("pool", "")))] == 1
