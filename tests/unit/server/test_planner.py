"""The capacity planner over a real DecisionCore and an in-memory history, on a manual clock.

Histories are written as the service writes them (LoadStatus snapshots at wall times);
the planner's forecasts run in a worker thread here (the service uses a process).
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from loadwarden.observability.history import History
from loadwarden.policy import IdGenerator, InvalidArgument, ManualClock, NotFound, PoolSettings, ServerSpec
from loadwarden.server import CoreLimits, DecisionCore
from loadwarden.server.engine._planner import Planner, PlanningSettings, PoolScaling

STEP_S = 60.0
DAY_S = 86_400.0


def make_core(clock: ManualClock, servers: int = 2, slow_start_ms: int = 0) -> DecisionCore:
    core = DecisionCore(CoreLimits(), clock=clock, rng=random.Random(3), ids=IdGenerator("t"))
    specs = [ServerSpec(f"s{i}", f"h:{i}") for i in range(servers)]
    core.configure_pool(PoolSettings(name="api", slow_start_ms=slow_start_ms), specs)
    return core


def snapshot(servers: int, requests_total: int, cpu: float | None = None) -> dict[str, Any]:
    members: list[dict[str, Any]] = [
        {"id": f"s{i}", "state": "SERVER_STATE_SERVING", **({"load": {"cpu_percent": cpu}} if cpu is not None else {})}
        for i in range(servers)
    ]
    return {"pools": [{"name": "api", "servers": members, "requests_total": str(requests_total)}]}


class Setup:
    """A core, a history and a planner sharing one manual clock (monotonic and wall)."""

    def __init__(self, scaling: PoolScaling, *, servers: int = 2, history_s: float = 3 * DAY_S, **settings: Any):
        self.clock = ManualClock(start=0.0, wall_offset=1_700_000_000.0)
        self.core = make_core(self.clock, servers)
        self.history = History(None, retention_s=30 * DAY_S, clock=self.clock.wall)
        self.settings = PlanningSettings(
            enabled=True,
            step_s=STEP_S,
            horizon_s=900.0,
            history_s=history_s,
            pools={"api": scaling},
            **settings,
        )
        self.planner = Planner(self.core, self.settings, self.history, clock=self.clock, wall=self.clock.wall)
        self.requests = 0

    def play(self, seconds: float, rate: Any, servers: int = 2, cpu: Any = None) -> None:
        """Advances the clock by ``seconds``, one sample per step, at ``rate(t)`` requests per second."""
        for _ in range(round(seconds / STEP_S)):
            self.clock.advance(STEP_S)
            t = self.clock.monotonic()
            self.requests += round(rate(t) * STEP_S)
            load = cpu(t) if callable(cpu) else cpu
            self.history.record(snapshot(servers, self.requests, load), at=self.clock.wall())


def daily(t: float) -> float:
    return 40.0 + 30.0 * math.sin(2 * math.pi * t / DAY_S)


async def test_without_history_every_forecast_says_so_and_the_pool_is_held() -> None:
    setup = Setup(PoolScaling(metric="requests_per_s", target=10.0, predictive=True))
    await setup.planner.refresh()
    plan = setup.planner.plans["api"]
    assert set(plan.forecasts) == {"requests_per_s", "in_flight", "cpu", "latency_ms"}
    for result in plan.forecasts.values():
        assert result.model is None and result.reason and result.points == ()
    rec = plan.recommendation
    assert rec.metric is None and rec.desired == rec.current == 2
    assert rec.predictive is None
    wall = setup.clock.wall()
    setup.history.record(snapshot(2, 0), at=wall)  # the dashboard shows plans beside the samples
    assert setup.history.query(wall - 60, wall)["pools"]["api"]["plan"]["desired_servers"] == [2]


async def test_the_reactive_rule_is_the_hpa_rule_on_the_newest_step() -> None:
    setup = Setup(PoolScaling(metric="requests_per_s", target=10.0))
    setup.play(3_600.0, lambda t: 45.0)
    await setup.planner.refresh()
    rec = setup.planner.plans["api"].recommendation
    assert rec.metric == pytest.approx(22.5)  # 45/s over 2 servers
    assert rec.reactive == rec.desired == math.ceil(2 * 22.5 / 10.0) == 5
    assert rec.predictive is None  # not predictive


async def test_cpu_is_read_in_servers_and_divided_by_the_servers_now() -> None:
    setup = Setup(PoolScaling(metric="cpu", target=0.5))
    setup.play(1_800.0, lambda t: 1.0, cpu=90.0)
    await setup.planner.refresh()
    rec = setup.planner.plans["api"].recommendation
    assert rec.metric == pytest.approx(0.9)
    assert rec.desired == math.ceil(2 * 0.9 / 0.5) == 4


async def test_a_predictive_pool_provisions_for_the_forecast_peak_ahead_of_a_daily_rise() -> None:
    scaling = PoolScaling(metric="requests_per_s", target=10.0, predictive=True, lead_time_s=900.0)
    setup = Setup(scaling, history_s=3 * DAY_S)
    setup.play(2.75 * DAY_S + 2 * 3_600.0, daily)  # ends two hours into the daily rise
    await setup.planner.refresh()
    plan = setup.planner.plans["api"]
    demand = plan.forecasts["requests_per_s"]
    assert demand.model is not None, demand.reason
    assert len(demand.points) == 15
    rec = plan.recommendation
    assert rec.forecast_peak is not None and rec.predictive == math.ceil(rec.forecast_peak / 10.0)
    assert rec.desired >= rec.reactive and rec.desired == max(rec.reactive, rec.predictive)


async def test_scale_down_waits_for_its_window_and_scale_up_does_not() -> None:
    setup = Setup(PoolScaling(metric="requests_per_s", target=10.0, scale_down_window_s=300.0))
    setup.play(600.0, lambda t: 80.0)
    await setup.planner.refresh()
    assert setup.planner.plans["api"].recommendation.desired == 8
    for i in range(2, 8):  # the autoscaler acts on it
        setup.core.register_server("api", ServerSpec(f"s{i}", f"h:{i}"))
    setup.play(120.0, lambda t: 20.0)  # a dip: the HPA rule alone says 2
    await setup.planner.refresh()
    dip = setup.planner.plans["api"].recommendation
    assert (dip.current, dip.reactive, dip.desired) == (8, 2, 8)  # held by the window
    assert "scale-down window" in dip.reason
    setup.play(300.0, lambda t: 20.0)
    await setup.planner.refresh()
    assert setup.planner.plans["api"].recommendation.desired == 2
    setup.play(60.0, lambda t: 100.0)
    await setup.planner.refresh()
    assert setup.planner.plans["api"].recommendation.desired == math.ceil(8 * (100.0 / 8) / 10.0)  # up at once


@pytest.mark.parametrize(
    "history",
    ["gap", "constant", "garbage", "zeros"],
)
async def test_awkward_histories_give_a_clear_answer_never_an_exception(history: str) -> None:
    setup = Setup(PoolScaling(metric="requests_per_s", target=10.0, predictive=True), history_s=DAY_S)
    rng = random.Random(5)
    if history == "gap":
        setup.play(6 * 3_600.0, lambda t: 30.0)
        setup.clock.advance(8 * 3_600.0)  # the service was down: nothing recorded
        setup.play(3_600.0, lambda t: 30.0)
    elif history == "constant":
        setup.play(12 * 3_600.0, lambda t: 30.0)
    elif history == "zeros":
        setup.play(12 * 3_600.0, lambda t: 0.0)
    else:
        setup.play(12 * 3_600.0, lambda t: rng.choice([0.0, 1e7, 3.0, 5e-9]), cpu=lambda t: rng.uniform(-50, 1e6))
    await setup.planner.refresh()
    plan = setup.planner.plans["api"]
    for result in plan.forecasts.values():
        assert (result.model is None) == (result.reason != "")
        for point in result.points:
            assert all(math.isfinite(v) and v >= 0 for v in (point.value, point.lower, point.upper))
    rec = plan.recommendation
    assert 1 <= rec.desired <= 1_000 and rec.reason
    if history == "constant":
        assert plan.forecasts["requests_per_s"].points[0].value == pytest.approx(30.0, rel=0.05)
        assert rec.desired == 3


async def test_the_lead_time_is_learned_from_a_scale_up() -> None:
    setup = Setup(PoolScaling(metric="requests_per_s", target=10.0, lead_time_s=600.0))
    setup.core.configure_pool(PoolSettings(name="api", slow_start_ms=30_000), None)
    setup.play(300.0, lambda t: 40.0)
    await setup.planner.refresh()
    assert setup.planner.plans["api"].recommendation.desired == 4
    assert setup.planner.plans["api"].recommendation.lead_time_s == 600.0  # nothing learned yet
    setup.play(120.0, lambda t: 40.0)
    for i in (2, 3):
        setup.core.register_server("api", ServerSpec(f"s{i}", f"h:{i}"))
    setup.play(60.0, lambda t: 40.0, servers=4)
    await setup.planner.refresh()
    # Asked at the first refresh; the two servers were seen 180 s later, plus 30 s of slow start.
    assert setup.planner.plans["api"].recommendation.lead_time_s == pytest.approx(210.0)


async def test_answers_check_their_arguments_and_drop_deleted_pools() -> None:
    setup = Setup(PoolScaling(metric="requests_per_s", target=10.0))
    setup.core.configure_pool(PoolSettings(name="jobs"), [ServerSpec("j", "h:9")])
    await setup.planner.refresh()
    assert [p.pool for p in setup.planner.answer([], 0.0, False).pools] == ["api", "jobs"]
    assert setup.planner.answer(["jobs", "jobs"], 300.0, True).horizon_s == 300.0
    with pytest.raises(NotFound) as missing:
        setup.planner.answer(["api", "nope"], 0.0, False)
    assert missing.value.field == "pools[1]"
    for horizon in (901.0, -1.0, math.nan):
        with pytest.raises(InvalidArgument) as bad:
            setup.planner.answer([], horizon, False)
        assert bad.value.field == "horizon_s"
    with pytest.raises(InvalidArgument) as named:
        setup.planner.answer(["bad name!"], 0.0, False)
    assert named.value.field == "pools[0]"
    with pytest.raises(InvalidArgument) as many:
        setup.planner.answer([f"p{i}" for i in range(1_001)], 0.0, False)
    assert many.value.field == "pools"
    setup.core.delete_pool("jobs")
    await setup.planner.refresh()
    assert list(setup.planner.plans) == ["api"]


async def test_overlapping_refreshes_take_turns_so_the_newest_read_of_the_history_stands() -> None:
    import asyncio
    import threading

    setup = Setup(PoolScaling(metric="requests_per_s", target=10.0))
    planner = setup.planner
    read = planner._series
    first_read, release = threading.Event(), threading.Event()
    calls = 0

    def series(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        out = read(*args)
        if calls == 1:  # the first refresh has read an empty history; hold it there
            first_read.set()
            assert release.wait(10.0)
        return out

    planner._series = series  # type: ignore[method-assign,assignment]  # stands in for the history read, to hold it
    older = asyncio.ensure_future(planner.refresh())
    assert await asyncio.to_thread(first_read.wait, 10.0)
    setup.play(3_600.0, lambda t: 45.0)  # the history fills while the first refresh is under way
    newer = asyncio.ensure_future(planner.refresh())
    with pytest.raises(TimeoutError):  # it waits for the one under way
        await asyncio.wait_for(asyncio.shield(newer), 0.2)
    release.set()
    await asyncio.gather(older, newer)
    assert calls == 2 and planner.refreshes == 2
    assert planner.plans["api"].recommendation.metric == pytest.approx(22.5)  # the newer read, not the empty one
