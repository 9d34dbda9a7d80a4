"""Predictive load management through the planner: a DecisionCore, an in-memory history of
repeating surges written as the service writes it, and one manual clock (as test_planner.py).

Every hour the pool's demand and the operation's load score surge for the last 15 minutes;
during each surge the adaptive limit the history records climbs from 10 to 38.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import pytest

from loadwarden.observability.history import History
from loadwarden.policy import IdGenerator, LoadReading, ManualClock, OperationSettings, PoolSettings, ServerSpec
from loadwarden.server import CoreLimits, DecisionCore
from loadwarden.server.engine._planner import Planner, PlanningSettings, PoolScaling
from loadwarden.server.engine._predictive import OperationPlanning

STEP_S = 60.0
HOUR_S = 3_600.0
SURGE_FROM_S = 2_700.0  # each hour's surge: its last 15 minutes


def surging(t: float) -> bool:
    return t % HOUR_S >= SURGE_FROM_S


def demand(t: float) -> float:
    return 80.0 if surging(t) else 20.0


def load_score(t: float) -> float:
    return 90.0 if surging(t) else 30.0


def recorded_limit(t: float) -> int:
    """The limit the history records: 10, climbing by 2 a minute through a surge (38 at its end)."""
    return 10 + 2 * round((t % HOUR_S - SURGE_FROM_S) / 60.0) if surging(t) else 10


class World:
    """A core with pool "api" (aimd from 10, max_limit 100) and operations "import" (predictive)
    and "other" (not), a history and a planner on one manual clock."""

    def __init__(
        self,
        *,
        limit_algorithm: str = "aimd",
        limit_params: dict[str, Any] | None = None,
        scaling: PoolScaling | None = None,
        operation: OperationPlanning | None = None,
    ) -> None:
        self.clock = ManualClock(start=0.0, wall_offset=1_700_000_000.0)
        self.core = DecisionCore(CoreLimits(), clock=self.clock, rng=random.Random(3), ids=IdGenerator("t"))
        pool = PoolSettings(
            name="api",
            max_concurrency=10,
            limit_algorithm=limit_algorithm,
            limit_params=limit_params if limit_params is not None else {"max_limit": 100},
        )
        self.core.configure_pool(pool, [ServerSpec("s0", "h:0"), ServerSpec("s1", "h:1")])
        for name in ("import", "other"):
            self.core.configure_operation(
                OperationSettings(
                    name=name, min_batch_size=5, max_batch_size=100, default_batch_size=100, cooldown_ms=60_000
                )
            )
        self.history = History(None, retention_s=30 * 86_400.0, clock=self.clock.wall)
        self.settings = PlanningSettings(
            enabled=True,
            interval_s=60.0,
            step_s=STEP_S,
            horizon_s=900.0,
            history_s=12 * HOUR_S,
            seasons_s=(HOUR_S,),
            pools={"api": scaling or PoolScaling(metric="requests_per_s", target=10.0, predictive_limit=True)},
            operations={"import": operation or OperationPlanning(predictive=True)},
        )
        self.planner = Planner(self.core, self.settings, self.history, clock=self.clock, wall=self.clock.wall)
        self.requests = 0
        self.decisions = 0

    def play(
        self,
        seconds: float,
        rate: Callable[[float], float] = demand,
        score: Callable[[float], float | None] = load_score,
        limit: Callable[[float], int] = recorded_limit,
    ) -> None:
        """Advances the clock by ``seconds``, one snapshot per step, as the service records them."""
        for _ in range(round(seconds / STEP_S)):
            self.clock.advance(STEP_S)
            t = self.clock.monotonic()
            self.requests += round(rate(t) * STEP_S)
            self.decisions += 60
            members = [{"id": f"s{i}", "state": "SERVER_STATE_SERVING"} for i in range(2)]
            pool: dict[str, Any] = {"name": "api", "servers": members, "requests_total": str(self.requests)}
            pool["concurrency_limit"] = limit(t)
            value = score(t)
            operations = [
                {"name": name, "batch_size": 50, "decisions_total": str(self.decisions)}
                | ({"fallback": True} if value is None else {"last_load_score": value})
                for name in ("import", "other")
            ]
            self.history.record({"pools": [pool], "operations": operations}, at=self.clock.wall())

    def size(self, name: str, load: float = 30.0) -> tuple[int, str]:
        answer = self.core.operations[name].decide(self.clock.monotonic(), self.clock.wall(), LoadReading(load))
        return answer.size, answer.reason

    @property
    def limit(self) -> int:
        return self.core.pool("api").slots.current_limit


async def test_a_predictive_operation_shrinks_before_the_next_surge_and_grows_back_after_it() -> None:
    world = World()
    world.play(6 * HOUR_S + SURGE_FROM_S - 120.0)  # two minutes before the seventh surge
    assert world.size("import") == (100, "load 30.0 <= low threshold 50: max size")
    await world.planner.refresh()
    result = world.planner.operation_plans["import"].forecasts["load_score"]
    assert result.model is not None, result.reason
    # Default lead: the recent batch duration, a step (60 s) before any is reported; a point
    # speaks for the step it ends, and the surge's first step is (60 s, 120 s] from now.
    assert world.size("import")[0] == 100
    world.core.operations["import"].observe(50, 90_000.0, True)  # a batch started now would end in 90 s
    size, reason = world.size("import")
    assert size == 5
    assert reason.startswith("forecast load ") and " in 120 s >= high threshold 80: min size" in reason
    assert reason.endswith("(measured load 30.0)")
    operation = world.core.operations["import"]
    event = operation.events[-1]
    assert (event.previous_size, event.new_size, event.forecast) == (100, 5, True)
    assert event.load_score == pytest.approx(90.0, abs=5.0)
    assert operation.forecast_adjustments_total == 1
    assert world.size("other") == (100, "load 30.0 <= low threshold 50: max size")  # not predictive
    world.play(60.0)
    await world.planner.refresh()
    assert world.size("import")[0] == 5  # held through the surge ahead, whatever it measures
    world.play(17 * 60.0)  # the surge is over and the next one is 45 minutes away
    await world.planner.refresh()
    assert world.size("import") == (100, "load 30.0 <= low threshold 50: max size")
    assert [e.forecast for e in operation.events] == [True, False]


async def test_a_predictive_limit_is_raised_to_where_the_last_surge_settled_before_the_next() -> None:
    world = World(scaling=PoolScaling(metric="requests_per_s", target=10.0, predictive_limit=True, limit_lead_s=600.0))
    world.play(6 * HOUR_S + SURGE_FROM_S - 900.0)  # 15 minutes before the seventh surge
    await world.planner.refresh()
    assert world.limit == 10 and not world.planner.limit_moves  # the surge is 900 s away, the lead 600 s
    world.play(360.0)
    await world.planner.refresh()
    assert world.limit == 38
    (move,) = world.planner.limit_moves
    assert (move.pool, move.previous, move.new, move.at_wall) == ("api", 10, 38, world.clock.wall())
    assert move.reason.startswith("forecast ") and " requests/s in 540 s > surge threshold 24.0 (median 20.0)" in (
        move.reason
    )
    assert move.reason.endswith("where the last surge (peak 80.0 requests/s, over 2220 s ago) settled at 38")
    assert world.planner.predictive.moves_total() == {"api": 1}
    slots = world.core.pool("api").slots
    slots.limit.start_from(12)  # drops before the surge lower it again: the algorithm decides now
    world.play(60.0)
    await world.planner.refresh()
    assert world.limit == 12 and len(world.planner.limit_moves) == 1  # one move per forecast surge
    world.play(HOUR_S - 60.0)  # through the surge; 9 minutes before the next one
    slots.limit.start_from(10)
    await world.planner.refresh()
    assert world.limit == 38 and len(world.planner.limit_moves) == 2


async def test_the_default_limit_lead_is_a_step_and_a_refresh_interval() -> None:
    world = World()
    world.play(6 * HOUR_S + SURGE_FROM_S - 180.0)
    await world.planner.refresh()
    assert world.limit == 10  # 180 s ahead: beyond 60 + 60
    world.play(60.0)
    await world.planner.refresh()
    assert world.limit == 38


async def test_a_limit_is_not_moved_during_a_surge_past_its_bounds_or_when_it_cannot_move() -> None:
    world = World(scaling=PoolScaling(predictive_limit=True, limit_lead_s=900.0))
    world.play(6 * HOUR_S + SURGE_FROM_S + 300.0)  # inside the seventh surge
    await world.planner.refresh()
    assert world.limit == 10 and not world.planner.limit_moves
    capped = World(limit_params={"max_limit": 25})
    capped.play(6 * HOUR_S + SURGE_FROM_S - 60.0)
    await capped.planner.refresh()
    assert capped.limit == 25 and capped.planner.limit_moves[0].reason.endswith("(capped at its max_limit 25)")
    fixed = World(limit_algorithm="fixed", limit_params={})
    fixed.play(6 * HOUR_S + SURGE_FROM_S - 60.0)
    await fixed.planner.refresh()
    assert fixed.limit == 10 and not fixed.planner.limit_moves
    above = World()
    above.core.pool("api").slots.limit.start_from(50)  # already above where the last surge settled
    above.play(6 * HOUR_S + SURGE_FROM_S - 60.0)
    await above.planner.refresh()
    assert above.limit == 50 and not above.planner.limit_moves


async def test_only_opted_in_pools_and_operations_move_and_gone_ones_are_forgotten() -> None:
    world = World(scaling=PoolScaling(metric="requests_per_s", target=10.0), operation=OperationPlanning())
    world.play(6 * HOUR_S + SURGE_FROM_S - 60.0)
    await world.planner.refresh()
    assert world.limit == 10 and world.size("import")[0] == 100
    assert world.core.operations["import"].outlook is None and world.planner.predictive.moves_total() == {}
    watched = World()
    watched.play(6 * HOUR_S + SURGE_FROM_S - 60.0)
    await watched.planner.refresh()
    assert watched.planner.predictive.moves_total() == {"api": 1}
    watched.core.delete_pool("api")
    await watched.planner.refresh()
    assert watched.planner.predictive.moves_total() == {}


def _falling(t: float) -> float:
    return -50.0  # the counter falls every step: every rate is a gap


@pytest.mark.parametrize("history", ["none", "gap", "falling", "constant", "wild"])
async def test_awkward_histories_move_nothing_they_should_not_and_raise_nothing(history: str) -> None:
    world = World(scaling=PoolScaling(metric="requests_per_s", target=10.0, predictive_limit=True, limit_lead_s=900))
    rng = random.Random(11)
    if history == "gap":
        world.play(3 * HOUR_S)  # surges, then the service was down for 8 hours, then steady demand
        world.clock.advance(8 * HOUR_S)
        world.play(HOUR_S, rate=lambda t: 20.0, score=lambda t: 30.0, limit=lambda t: 10)
    elif history == "falling":
        world.requests = 10**9
        world.play(6 * HOUR_S, rate=_falling, score=lambda t: None)
    elif history == "constant":
        world.play(6 * HOUR_S, rate=lambda t: 20.0, score=lambda t: 30.0, limit=lambda t: 10)
    elif history == "wild":
        world.play(
            6 * HOUR_S,
            rate=lambda t: rng.choice([0.0, 1e7, 3.0, 5e-9]),
            score=lambda t: rng.uniform(-50, 1e6),
            limit=lambda t: rng.randint(-5, 10**6),
        )
    await world.planner.refresh()
    await world.planner.refresh()
    size, reason = world.size("import")
    assert 5 <= size <= 100 and reason
    assert 1 <= world.limit <= 100
    if history != "wild":  # nothing to go on: nothing moves
        assert (size, world.limit, world.planner.limit_moves) == (100, 10, ())
        assert "forecast" not in reason
    for move in world.planner.limit_moves:
        assert move.reason and move.previous < move.new <= 100
    for plan in world.planner.operation_plans.values():
        for result in plan.forecasts.values():
            assert all(math.isfinite(p.value) for p in result.points)
