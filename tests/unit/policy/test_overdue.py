"""Evidence before the timeout: requests in flight that have gone many times a server's usual
latency without an answer weigh against it at once, in the strategies and in outlier
detection (pure kernel, fake clock)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from loadwarden.policy import ManualClock, OutlierSettings, PoolSettings, ServerSpec
from loadwarden.policy._model import OVERDUE_FACTOR, USUAL_AFTER_OUTCOMES, Backend, LoadSample
from loadwarden.policy.strategies import StrategyContext, build_strategy
from loadwarden.policy.strategies._sampling import overdue_load
from loadwarden.server import CoreLimits, DecisionCore
from loadwarden.server.engine._core import OutcomeReport


def usual(server: Backend, latency_ms: float = 50.0, now: float = 0.0) -> Backend:
    """``server`` with enough outcomes of ``latency_ms`` to have a usual latency."""
    for _ in range(USUAL_AFTER_OUTCOMES):
        server.started(now)
        server.record_outcome(True, latency_ms, now=now)
    return server


def test_stalled_time_runs_from_the_later_of_busy_since_and_the_last_success() -> None:
    server = Backend("a", "h:1", 1)
    assert server.stalled_ms(10.0) == 0.0  # nothing in flight
    server.started(1.0)
    server.started(1.5)
    assert server.stalled_ms(2.0) == pytest.approx(1_000.0)
    server.ended(2.0, True)  # one answered at 2.0: the other has waited since then only
    assert server.stalled_ms(2.5) == pytest.approx(500.0)
    server.ended(3.0, False)  # the last one failed: nothing in flight, nothing stalled
    assert server.stalled_ms(9.0) == 0.0 and server.busy_since is None
    server.started(9.0)
    assert server.stalled_ms(9.2) == pytest.approx(200.0)  # a new busy period


def test_overdue_needs_a_usual_latency_and_several_times_it() -> None:
    server = Backend("a", "h:1", 1)
    server.started(0.0)
    server.record_outcome(True, 50.0, now=0.0)
    assert server.usual_latency_ms == 0.0  # one outcome says little
    usual(server, 50.0)
    assert server.usual_latency_ms == 50.0
    server.started(0.0)
    limit_s = OVERDUE_FACTOR * 50.0 / 1000.0
    assert server.overdue_ms(limit_s, server.usual_latency_ms) == 0.0
    assert server.overdue_ms(limit_s + 0.01, server.usual_latency_ms) == pytest.approx(160.0)
    assert overdue_load(server, limit_s + 0.01) == pytest.approx(3.2)  # 160 ms of 50 ms requests


def test_a_run_of_quick_answers_does_not_make_ordinary_waits_look_overdue() -> None:
    server = usual(Backend("a", "h:1", 1), 50.0)
    for _ in range(10):
        server.started(0.0)
        server.record_outcome(True, 2.0, now=0.0)
    assert server.ewma_latency_ms < 10.0 and server.usual_latency_ms > 40.0  # the slow EWMA holds


def _strategy(name: str, servers: dict[str, Backend], clock: ManualClock, **params: Any) -> Any:
    return build_strategy(name, params, StrategyContext(clock, random.Random(3), servers), "pool")


@pytest.mark.parametrize("name", ["p2c", "peak_ewma", "least_connections"])
def test_load_aware_strategies_avoid_an_overdue_server_before_its_request_ends(name: str) -> None:
    clock = ManualClock(0.0)
    servers = {sid: usual(Backend(sid, f"h:{sid}", 1), 50.0) for sid in ("a", "b")}
    strategy = _strategy(name, servers, clock)
    candidates = list(servers.values())
    servers["a"].started(0.0)  # one request in flight on each
    servers["b"].started(0.0)
    clock.advance(0.1)  # 100 ms: twice the usual latency, not yet overdue; a tie
    assert {strategy.choose(candidates).server.id for _ in range(40)} == {"a", "b"}
    servers["b"].ended(0.1, True)  # b answers and takes another; a's request goes on
    servers["b"].started(0.1)
    clock.advance(0.2)  # a: 300 ms unanswered, six times its usual latency
    assert {strategy.choose(candidates).server.id for _ in range(40)} == {"b"}


def test_q_linear_reads_overdue_time_as_response_time() -> None:
    clock = ManualClock(0.0)
    servers = {sid: usual(Backend(sid, f"h:{sid}", 1), 50.0) for sid in ("a", "b")}
    strategy = _strategy("q_linear", servers, clock, epsilon=0.0, epsilon_min=0.0)
    strategy.restore(
        {
            "strategy": "q_linear",
            "version": 1,
            "epsilon": 0.0,
            "episodes": 0,
            "updates": 0,
            "explored": 0,
            "weights": {"cpu": 0.0, "active": 0.0, "response": -1.0, "error_rate": 0.0},
            "biases": {"a": 0.0, "b": -0.01},
        }
    )
    candidates = list(servers.values())
    assert strategy.choose(candidates).server.id == "a"  # a little better by its bias
    servers["a"].started(0.0)
    clock.advance(0.5)
    choice = strategy.choose(candidates)
    assert choice.server.id == "b"
    assert strategy.choose([servers["a"]]).memo[2] == pytest.approx(500.0 / 100.0)  # latency_scale_ms 100


def test_q_learning_puts_an_overdue_server_at_the_high_level() -> None:
    clock = ManualClock(0.0)
    servers = {sid: usual(Backend(sid, f"h:{sid}", 1, routable=True), 50.0) for sid in ("a", "b")}
    for server in servers.values():
        server.load = LoadSample(10.0, 10.0, 0, 50.0, 0.0)
    strategy = _strategy("q_learning", servers, clock)
    assert strategy.choose(list(servers.values())).memo[1] == "a=0,b=0"
    servers["a"].started(0.0)
    clock.advance(0.5)  # 500 ms unanswered: above the 200 ms high threshold
    assert strategy.choose(list(servers.values())).memo[1] == "a=2,b=0"


def _core(clock: ManualClock, **outlier: Any) -> DecisionCore:
    core = DecisionCore(CoreLimits(decision_ttl_ms=60_000), clock=clock, rng=random.Random(1))
    settings = PoolSettings(name="p", strategy="round_robin", outlier=OutlierSettings(**outlier))
    core.configure_pool(settings, [ServerSpec(f"s{i}", f"h:{i}") for i in range(4)])
    return core


def _warm(core: DecisionCore, clock: ManualClock) -> None:
    for _ in range(4 * USUAL_AFTER_OUTCOMES):
        selection = core.select("p")
        clock.advance(0.01)
        core.report_outcomes([OutcomeReport(selection.decision_id, True, 10.0)])


def test_a_server_with_enough_overdue_requests_is_ejected_before_any_times_out() -> None:
    clock = ManualClock(0.0)
    core = _core(clock)
    _warm(core, clock)
    stuck = core.pool("p").servers["s0"]
    pending: list[str] = []
    picks: list[str] = []
    for _ in range(40):  # s0 never answers again; the others answer at once
        selection = core.select("p")
        picks.append(selection.server.id)
        if selection.server is stuck:
            pending.append(selection.decision_id)
        else:
            core.report_outcomes([OutcomeReport(selection.decision_id, True, 10.0)])
        clock.advance(0.05)
    # Round robin gives s0 every fourth pick until 5 are in flight and unanswered for 10 x 10 ms.
    assert stuck.ejected_until > clock.monotonic() and stuck.ejections_total == 1
    assert len(pending) == 5 and picks[20:].count("s0") == 0
    assert stuck.consecutive_failures == 0  # none of its requests has failed yet


@pytest.mark.parametrize("outlier", [{"overdue_disabled": True}, {"disabled": True}, {"overdue_factor": 1_000}])
def test_overdue_ejection_can_be_turned_off_or_made_patient(outlier: dict[str, Any]) -> None:
    clock = ManualClock(0.0)
    core = _core(clock, **outlier)
    _warm(core, clock)
    stuck = core.pool("p").servers["s0"]
    for _ in range(40):
        selection = core.select("p")
        if selection.server is not stuck:
            core.report_outcomes([OutcomeReport(selection.decision_id, True, 10.0)])
        clock.advance(0.05)
    assert stuck.ejections_total == 0 and stuck.in_flight == 10
