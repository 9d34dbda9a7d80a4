"""Capacity planning end to end: GetRecommendations over gRPC, /api/recommendations and the
metrics on the admin port, the forecast worker process killed and replaced.

The service runs in process; its history is written as the service writes it (LoadStatus
snapshots at past wall times) and the planner is refreshed by the test, so the answers
follow from the history alone.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import time
from concurrent.futures import BrokenExecutor

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadwarden.server import PoolSettings, PoolSpec, RunningService, ServerSpec
from loadwarden.server.app._config import AdminSettings, MonitorSettings
from loadwarden.server.engine._planner import PlanningSettings, PoolScaling
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc
from loadwarden.v1 import planning_pb2

TOKEN = "planning-test-token-0123456789"
STEP_S = 60.0
DAY_S = 86_400.0


def servers(*ids: str) -> tuple[ServerSpec, ...]:
    return tuple(ServerSpec(sid, f"127.0.0.1:{9100 + i}") for i, sid in enumerate(ids, 1))


def rate(t: float) -> float:
    """A daily cycle of requests per second."""
    return 40.0 + 30.0 * math.sin(2 * math.pi * t / DAY_S)


async def planned_service(start) -> RunningService:
    planning = PlanningSettings(
        enabled=True,
        interval_s=3_600.0,  # the loop's first refresh runs at start; the test refreshes after that
        step_s=STEP_S,
        horizon_s=900.0,
        history_s=2 * DAY_S,
        seasons_s=(DAY_S,),
        pools={"api": PoolScaling(metric="requests_per_s", target=10.0, predictive=True, lead_time_s=600.0)},
    )
    now = time.time()  # the synthetic history ends before the live sampler's first sample
    running = await start(
        PoolSpec(PoolSettings(name="api"), servers("a1", "a2", "a3")),
        PoolSpec(PoolSettings(name="jobs"), servers("j1")),
        planning=planning,
        monitor=MonitorSettings(enabled=False),
        admin=AdminSettings(listen="127.0.0.1:0", token=TOKEN, history_retention_s=3 * 86_400),
    )
    assert running.planner is not None
    history = running.planner.history
    total = 0

    def write() -> None:
        nonlocal total
        t = now - 2 * DAY_S
        while t + STEP_S <= now:
            t += STEP_S
            total += round(rate(t) * STEP_S)
            members = [{"id": s, "state": "SERVER_STATE_SERVING"} for s in ("a1", "a2", "a3")]
            history.record({"pools": [{"name": "api", "servers": members, "requests_total": str(total)}]}, at=t)

    await asyncio.to_thread(write)
    # The planner reads up to the synthetic history's end, so the live sampler's samples (taken
    # since the start, with the pool's real counter at 0) are not its newest step.
    running.planner._wall = lambda: now
    return running


async def scrape(running: RunningService, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{running.admin_port}{path}"
        async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            return response.status, await response.text()


async def test_recommendations_follow_the_history_over_grpc_json_and_metrics(start, channel_to) -> None:
    running = await planned_service(start)
    assert running.planner is not None
    await running.planner.refresh()
    stub = pb_grpc.DecisionServiceStub(channel_to(running))

    answer = await stub.GetRecommendations(pb.GetRecommendationsRequest(pools=["api"], include_operations=True))
    (rec,) = answer.recommendations
    assert answer.interval_s == 3_600.0
    assert rec.pool == "api" and rec.current_servers == 3 and rec.predictive
    assert rec.metric == planning_pb2.SCALING_METRIC_REQUESTS_PER_S and rec.target == 10.0
    by_series = {f.series: f for f in rec.forecasts}
    demand = by_series[planning_pb2.FORECAST_SERIES_REQUESTS_PER_S]
    assert demand.model, demand.reason
    assert len(demand.points) == 15 and demand.coverage == 0.8
    assert demand.scores and demand.scores[0].model == demand.model
    assert all(p.lower <= p.value <= p.upper for p in demand.points)
    # The HPA rule on the newest step, and the predictive rule on the forecast peak.
    assert rec.HasField("metric_value") and rec.HasField("predictive_servers")
    within = abs(rec.metric_value / rec.target - 1) <= 0.1
    assert rec.reactive_servers == (3 if within else math.ceil(3 * rec.metric_value / 10.0))
    assert rec.predictive_servers == math.ceil(rec.forecast_peak / 10.0)
    assert rec.desired_servers == max(rec.reactive_servers, rec.predictive_servers)
    # No history for the other series: each says so.
    latency = by_series[planning_pb2.FORECAST_SERIES_LATENCY_MS]
    assert not latency.model and latency.reason and not latency.points

    every = await stub.GetRecommendations(pb.GetRecommendationsRequest(horizon_s=300))
    assert [r.pool for r in every.recommendations] == ["api", "jobs"]
    assert len({f.series: f for f in every.recommendations[0].forecasts}[1].points) == 5
    assert not every.operations

    status, text = await scrape(running, "/api/recommendations?pool=api&horizon_s=600")
    assert status == 200
    (shown,) = json.loads(text)["recommendations"]
    assert shown["desired_servers"] == rec.desired_servers and shown["pool"] == "api"
    assert len(shown["forecasts"][0]["points"]) == 10
    status, _ = await scrape(running, "/api/recommendations?horizon_s=soon")
    assert status == 400
    status, _ = await scrape(running, "/api/recommendations?pool=nope")
    assert status == 404

    _, metrics = await scrape(running, "/metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples[("loadwarden_pool_desired_servers", (("pool", "api"), ("rule", "desired")))] == rec.desired_servers
    assert samples[("loadwarden_pool_desired_servers", (("pool", "api"), ("rule", "predictive")))] == (
        rec.predictive_servers
    )
    peak = samples[("loadwarden_pool_forecast", (("bound", "point"), ("pool", "api"), ("series", "requests_per_s")))]
    assert peak == pytest.approx(rec.forecast_peak)


async def test_bad_requests_name_the_field(start, channel_to) -> None:
    running = await planned_service(start)
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    cases = [
        (pb.GetRecommendationsRequest(pools=["api", "nope"]), grpc.StatusCode.NOT_FOUND, "pools[1]"),
        (pb.GetRecommendationsRequest(horizon_s=901), grpc.StatusCode.INVALID_ARGUMENT, "horizon_s"),
        (pb.GetRecommendationsRequest(pools=["bad name!"]), grpc.StatusCode.INVALID_ARGUMENT, "pools[0]"),
        (
            pb.GetRecommendationsRequest(pools=[f"p{i}" for i in range(1_001)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "pools",
        ),
    ]
    for request, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetRecommendations(request)
        assert err.value.code() == code and (err.value.details() or "").startswith(field), err.value.details()


async def test_planning_off_is_a_failed_precondition(start, channel_to) -> None:
    running = await start(PoolSpec(PoolSettings(name="api"), servers("a1")), monitor=MonitorSettings(enabled=False))
    assert running.planner is None
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pb_grpc.DecisionServiceStub(channel_to(running)).GetRecommendations(pb.GetRecommendationsRequest())
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "[planning] enabled" in (err.value.details() or "")


async def test_a_killed_forecast_worker_fails_one_refresh_and_the_next_starts_another(start, caplog) -> None:
    running = await planned_service(start)
    planner = running.planner
    assert planner is not None
    await planner.refresh()
    before = planner.refreshes
    executor = planner._executor
    assert executor is not None
    (pid,) = [p.pid for p in executor._processes.values()]  # type: ignore[attr-defined]  # ProcessPoolExecutor internals: its worker
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(BrokenExecutor):
        await planner.refresh()
    assert "forecast worker died" in caplog.text
    assert planner.refreshes == before and "api" in planner.plans  # the last plans are kept
    await planner.refresh()
    assert planner.refreshes == before + 1
    assert planner.plans["api"].forecasts["requests_per_s"].model
