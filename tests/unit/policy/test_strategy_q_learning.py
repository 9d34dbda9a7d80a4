"""Tabular Q-learning: pure, seeded, driven by hand (no core, no sleeps)."""

from __future__ import annotations

import copy
import json
import math
import random
import threading
from typing import Any

import pytest

from loadwarden.policy._errors import InvalidArgument
from loadwarden.policy._model import Backend, LoadSample
from loadwarden.policy._registry import parse_params
from loadwarden.policy.strategies import Feedback, StrategyContext
from loadwarden.policy.strategies.q_learning import TOO_LARGE_HINT, QLearning, QLearningParams
from loadwarden.server import ManualClock

from ._learning import route


def fresh(sid: str, address: str) -> Backend:
    """A routable server that reported idle load (what the pool's ``eligible`` leaves)."""
    return Backend(
        id=sid, address=address, weight=1, load=LoadSample(0.0, 0.0, 0, 0.0, 0.0), load_at=0.0, routable=True
    )


def pool(*ids: str) -> dict[str, Backend]:
    return {sid: fresh(sid, f"h:{i}") for i, sid in enumerate(ids)}


def agent(servers: dict[str, Backend], seed: int = 1, **params: Any) -> QLearning:
    ctx = StrategyContext(clock=ManualClock(), rng=random.Random(seed), servers=servers)
    return QLearning(QLearningParams(**params), ctx)


def report(server: Backend, cpu: float = 0.0, active: int = 0, latency_ms: float = 0.0) -> None:
    server.load = LoadSample(cpu, 0.0, active, latency_ms, 0.0)


def state_of(strategy: QLearning, servers: dict[str, Backend]) -> str:
    memo = strategy.choose(list(servers.values())).memo
    return str(memo[1])


def with_table(strategy: QLearning, table: dict[str, dict[str, float]], epsilon: float = 0.0) -> None:
    strategy.restore(
        {
            "strategy": "q_learning",
            "version": 1,
            "epsilon": epsilon,
            "episodes": 0,
            "updates": 0,
            "explored": 0,
            "q_table": table,
        }
    )


def q(strategy: QLearning, state: str, server_id: str) -> float:
    return float(strategy.snapshot()["q_table"][state][server_id])


# --- state encoder -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu", "active", "latency_ms", "level"),
    [
        (0.0, 0, 0.0, 0),
        (49.9, 4, 99.9, 0),
        (50.0, 0, 0.0, 1),
        (79.9, 0, 0.0, 1),
        (80.0, 0, 0.0, 2),
        (0.0, 5, 0.0, 1),
        (0.0, 9, 0.0, 1),
        (0.0, 10, 0.0, 2),
        (0.0, 0, 100.0, 1),
        (0.0, 0, 200.0, 2),
        (10.0, 6, 250.0, 2),  # the worst of the three wins
        (60.0, 1, 10.0, 1),
    ],
)
def test_level_per_metric_and_worst_of_three(cpu: float, active: int, latency_ms: float, level: int) -> None:
    servers = pool("a")
    report(servers["a"], cpu, active, latency_ms)
    assert state_of(agent(servers), servers) == f"a={level}"


def test_thresholds_are_configurable() -> None:
    servers = pool("a")
    report(servers["a"], cpu=30.0)
    assert state_of(agent(servers), servers) == "a=0"
    assert state_of(agent(servers, cpu_medium_percent=20.0, cpu_high_percent=25.0), servers) == "a=2"
    report(servers["a"], active=3)
    assert state_of(agent(servers, active_medium_requests=2, active_high_requests=4), servers) == "a=1"
    report(servers["a"], latency_ms=40.0)
    assert state_of(agent(servers, response_medium_ms=10.0, response_high_ms=30.0), servers) == "a=2"


def test_unencodable_load_takes_the_high_level() -> None:
    servers = {"a": Backend(id="a", address="h:a", weight=1, routable=True), "b": fresh("b", "h:b")}
    strategy = agent(servers)
    assert state_of(strategy, servers) == "a=2,b=0"  # never reported: the seed's fallback
    servers["a"].load = LoadSample(0.0, 0.0, 0, 0.0, 0.0)
    assert state_of(strategy, servers) == "a=0,b=0"
    servers["b"].routable = False  # its report went stale (the pool's eligible marks it)
    assert state_of(strategy, servers) == "a=0,b=2"
    servers["b"].draining = True  # drained, not stale: its load is still known
    assert state_of(strategy, servers) == "a=0,b=0"


def test_unreported_server_is_levelled_by_in_flight_and_outcomes_with_known_metrics() -> None:
    servers = {"a": Backend(id="a", address="h:a", weight=1, routable=True)}
    strategy = agent(servers, unknown_load="known_metrics")
    assert state_of(strategy, servers) == "a=0"  # no report, no outcome: cpu, latency count as 0
    servers["a"].in_flight = 12
    assert state_of(strategy, servers) == "a=2"
    servers["a"].in_flight = 0
    servers["a"].record_outcome(True, 150.0)
    assert state_of(strategy, servers) == "a=1"


def test_state_is_in_id_order_and_follows_membership() -> None:
    servers = pool("b", "a")
    report(servers["b"], cpu=90.0)
    strategy = agent(servers)
    assert state_of(strategy, servers) == "a=0,b=2"
    servers["c"] = fresh("c", "h:c")
    assert state_of(strategy, servers) == "a=0,b=2,c=0"
    del servers["b"]
    strategy.forget("b")
    assert state_of(strategy, servers) == "a=0,c=0"


def test_membership_change_drops_rows_of_the_old_pool() -> None:
    servers = pool("a", "b")
    strategy = agent(servers)
    with_table(strategy, {"a=0,b=0": {"a": -1.0}, "a=1,b=0": {"b": -2.0}})
    assert strategy.stats()["table_size"] == 2
    del servers["b"]
    strategy.forget("b")
    assert strategy.stats()["table_size"] == 0


# --- Bellman update --------------------------------------------------------------------


def test_bellman_update_matches_the_formula() -> None:
    servers = pool("a", "b")
    strategy = agent(servers, epsilon=0.0, epsilon_min=0.0)
    with_table(strategy, {"a=0,b=0": {"a": -2.0, "b": -5.0}, "a=0,b=2": {"a": -1.0, "b": -7.0}})
    choice = strategy.choose(list(servers.values()))
    assert choice.server.id == "a" and choice.memo[1] == "a=0,b=0"
    report(servers["b"], cpu=95.0)  # the outcome arrives in state a=0,b=2
    strategy.observe(Feedback(servers["a"], True, 30.0, choice.memo))
    # Q(s,a) + alpha * (r + gamma * max_a' Q(s',a') - Q(s,a)), r = -30 / 10
    assert q(strategy, "a=0,b=0", "a") == pytest.approx(-2.0 + 0.1 * (-3.0 + 0.9 * -1.0 - -2.0), abs=1e-12)
    assert q(strategy, "a=0,b=0", "a") == pytest.approx(-2.19, abs=1e-12)
    assert q(strategy, "a=0,b=2", "a") == -1.0  # only the decision's own state changes
    assert strategy.stats()["updates"] == 1 and strategy.stats()["episodes"] == 1


def test_unseen_next_state_counts_zero_with_the_seed_prior() -> None:
    servers = pool("a", "b")
    strategy = agent(servers, epsilon=0.0, epsilon_min=0.0, initial_q="zero")
    with_table(strategy, {"a=0,b=0": {"a": -2.0, "b": -5.0}})
    choice = strategy.choose(list(servers.values()))
    report(servers["b"], cpu=95.0)
    strategy.observe(Feedback(servers["a"], True, 30.0, choice.memo))
    assert q(strategy, "a=0,b=0", "a") == pytest.approx(-2.0 + 0.1 * (-3.0 + 0.9 * 0.0 + 2.0), abs=1e-12)


def test_unseen_pairs_take_the_servers_mean_value() -> None:
    servers = pool("a", "b")
    strategy = agent(servers, epsilon=0.0, epsilon_min=0.0, virtual_loss=0.0)
    with_table(strategy, {"a=0,b=0": {"a": -2.0, "b": -6.0}, "a=0,b=1": {"a": -4.0, "b": -3.0}})
    report(servers["b"], cpu=95.0)  # state a=0,b=2 was never learned: a is worth -3, b -4.5
    assert [strategy.choose(list(servers.values())).server.id for _ in range(5)] == ["a"] * 5
    zero = agent(servers, epsilon=0.0, epsilon_min=0.0, initial_q="zero")
    with_table(zero, {"a=0,b=0": {"a": -2.0, "b": -6.0}, "a=0,b=2": {"a": -1.0}})
    assert zero.choose(list(servers.values())).server.id == "b"  # the seed's 0 is optimistic


def test_failure_and_expiry_reward_minus_1000() -> None:
    servers = pool("a")
    strategy = agent(servers, gamma=0.0, initial_q="zero")
    for expired in (False, True):
        with_table(strategy, {})
        choice = strategy.choose(list(servers.values()))
        strategy.observe(Feedback(servers["a"], False, 5.0, choice.memo, expired=expired))
        assert q(strategy, "a=0", "a") == pytest.approx(0.1 * -1000.0)


def test_outcome_of_a_removed_server_or_foreign_memo_is_not_learned() -> None:
    servers = pool("a", "b")
    strategy = agent(servers)
    choice = strategy.choose(list(servers.values()))
    gone = servers.pop(choice.server.id)
    strategy.forget(gone.id)
    strategy.observe(Feedback(gone, True, 10.0, choice.memo))
    strategy.observe(Feedback(servers[next(iter(servers))], True, 10.0, None))
    assert strategy.stats()["episodes"] == 2 and strategy.stats()["updates"] == 0


# --- exploration -------------------------------------------------------------------------


def test_epsilon_decays_per_update_down_to_its_floor() -> None:
    servers = pool("a")
    strategy = agent(servers, epsilon=0.5, epsilon_decay=0.5, epsilon_min=0.1)
    seen: list[float] = []
    for _ in range(4):
        choice = strategy.choose(list(servers.values()))
        assert strategy.stats()["epsilon"] == (seen[-1] if seen else 0.5)  # choosing does not decay
        strategy.observe(Feedback(servers["a"], True, 10.0, choice.memo))
        seen.append(strategy.stats()["epsilon"])
    assert seen == [0.25, 0.125, 0.1, 0.1]


def test_epsilon_one_always_explores_uniformly() -> None:
    servers = pool("a", "b", "c")
    strategy = agent(servers, epsilon=1.0, epsilon_decay=1.0, epsilon_min=1.0)
    with_table(strategy, {"a=0,b=0,c=0": {"a": -1.0, "b": -50.0, "c": -50.0}}, epsilon=1.0)
    choices = [strategy.choose(list(servers.values())) for _ in range(300)]
    assert all(c.explored for c in choices)
    assert {c.server.id for c in choices} == {"a", "b", "c"}
    assert strategy.stats()["explored"] == 300


def test_epsilon_zero_never_explores_and_takes_the_argmax() -> None:
    servers = pool("a", "b", "c")
    strategy = agent(servers, epsilon=0.0, epsilon_min=0.0, virtual_loss=0.0)
    with_table(strategy, {"a=0,b=0,c=0": {"a": -9.0, "b": -1.0, "c": -3.0}})
    choices = [strategy.choose(list(servers.values())) for _ in range(50)]
    assert not any(c.explored for c in choices)
    assert {c.server.id for c in choices} == {"b"}


def test_virtual_loss_spreads_decisions_still_pending() -> None:
    servers = pool("a", "b")
    table = {"a=0,b=0": {"a": -1.0, "b": -1.05}}
    plain = agent(servers, epsilon=0.0, epsilon_min=0.0, virtual_loss=0.0)
    with_table(plain, table)
    assert [plain.choose(list(servers.values())).server.id for _ in range(3)] == ["a", "a", "a"]
    strategy = agent(servers, epsilon=0.0, epsilon_min=0.0, virtual_loss=0.1)
    with_table(strategy, table)
    first = strategy.choose(list(servers.values()))
    second = strategy.choose(list(servers.values()))  # a pending: -1.1 < -1.05
    assert (first.server.id, second.server.id) == ("a", "b")
    strategy.observe(Feedback(servers["a"], True, 10.0, first.memo))
    strategy.observe(Feedback(servers["b"], True, 10.0, second.memo))
    assert strategy.choose(list(servers.values())).server.id == "a"  # nothing pending any more


def test_thousands_of_pending_decisions_stay_finite() -> None:
    servers = pool("a", "b")
    strategy = agent(servers, epsilon=0.0, epsilon_min=0.0, virtual_loss=1.0)
    with_table(strategy, {"a=0,b=0": {"a": -1.0, "b": -1e9}})
    picks = [strategy.choose(list(servers.values())).server.id for _ in range(5000)]
    assert picks.count("b") > 0 and picks.count("a") > 0


def test_ties_are_broken_at_random() -> None:
    servers = pool("a", "b", "c")
    strategy = agent(servers, epsilon=0.0, epsilon_min=0.0, virtual_loss=0.0)
    assert {strategy.choose(list(servers.values())).server.id for _ in range(60)} == {"a", "b", "c"}


# --- learning ------------------------------------------------------------------------------


def test_learns_to_avoid_a_server_five_times_slower() -> None:
    servers = pool("f1", "f2", "f3", "f4", "slow")
    strategy = agent(servers, seed=7)
    rng = random.Random(3)
    route(strategy, servers, rng, 500)  # warm-up
    picks = route(strategy, servers, rng, 2000)
    assert picks.count("slow") / len(picks) < 0.10
    assert strategy.stats()["episodes"] == 2500


# --- persistence -----------------------------------------------------------------------------


def trained() -> tuple[QLearning, dict[str, Backend]]:
    servers = pool("f1", "f2", "slow")
    strategy = agent(servers, seed=5)
    route(strategy, servers, random.Random(9), 400)
    return strategy, servers


def test_snapshot_round_trip_gives_identical_choices() -> None:
    strategy, servers = trained()
    state = json.loads(json.dumps(strategy.snapshot()))
    copy_ = agent(servers)
    copy_.restore(state)
    assert copy_.snapshot() == strategy.snapshot()
    transient = {"recent_reward"}  # recent outcomes, not learned state: not persisted
    assert {k: v for k, v in copy_.stats().items() if k not in transient} == {
        k: v for k, v in strategy.stats().items() if k not in transient
    }
    seed = random.Random(42).getstate()
    strategy._rng.setstate(seed)
    copy_._rng.setstate(seed)
    picks = [strategy.choose(list(servers.values())) for _ in range(200)]
    again = [copy_.choose(list(servers.values())) for _ in range(200)]
    assert [(c.server.id, c.explored) for c in picks] == [(c.server.id, c.explored) for c in again]


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def mutate(state: dict[str, Any]) -> Any:
        target = state
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return state

    return mutate


STATE = "f1=0,f2=0,slow=1"
CORRUPT = {
    "not a mapping": lambda s: ["q_table"],
    "missing key": lambda s: {k: v for k, v in s.items() if k != "epsilon"},
    "unexpected key": _set(("extra",), 1),
    "other strategy": _set(("strategy",), "q_linear"),
    "unknown version": _set(("version",), 2),
    "epsilon as text": _set(("epsilon",), "0.1"),
    "epsilon NaN": _set(("epsilon",), math.nan),
    "epsilon above 1": _set(("epsilon",), 1.5),
    "negative count": _set(("episodes",), -1),
    "bool count": _set(("updates",), True),
    "float count": _set(("explored",), 2.0),
    "table as list": _set(("q_table",), []),
    "level 3": _set(("q_table", "f1=3,f2=0,slow=0"), {"f1": -1.0}),
    "part without level": _set(("q_table", "f1,f2=0"), {"f1": -1.0}),
    "ids not sorted": _set(("q_table", "f2=0,f1=0"), {"f1": -1.0}),
    "duplicate id": _set(("q_table", "f1=0,f1=1"), {"f1": -1.0}),
    "bad id": _set(("q_table", "f 1=0"), {}),
    "too many servers": _set(("q_table", ",".join(f"s{i:02d}=0" for i in range(11))), {}),
    "empty state": _set(("q_table", ""), {}),
    "row as list": _set(("q_table", STATE), [1.0]),
    "Q NaN": _set(("q_table", STATE, "f1"), math.nan),
    "Q infinite": _set(("q_table", STATE, "f1"), -math.inf),
    "Q bool": _set(("q_table", STATE, "f1"), False),
    "Q text": _set(("q_table", STATE, "f1"), "-1"),
    "server outside the state": _set(("q_table", STATE, "other"), -1.0),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPT))
def test_corrupt_snapshots_are_refused_and_change_nothing(corruption: str) -> None:
    strategy, _ = trained()
    before = strategy.snapshot()
    assert STATE in before["q_table"]
    with pytest.raises(ValueError):
        strategy.restore(CORRUPT[corruption](copy.deepcopy(before)))
    assert strategy.snapshot() == before


def test_restore_into_an_empty_pool_keeps_rows_until_servers_join() -> None:
    strategy, _servers = trained()
    state = strategy.snapshot()
    later: dict[str, Backend] = {}
    copy_ = agent(later)
    copy_.restore(state)
    later.update(pool("f1", "f2", "slow"))
    assert copy_.choose(list(later.values())).server.id in later
    assert copy_.snapshot()["q_table"] == state["q_table"]


# --- params, limits, threads -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("alpha", 0.0),
        ("alpha", 1.5),
        ("gamma", 1.0),
        ("gamma", -0.1),
        ("epsilon", 1.1),
        ("epsilon", -0.1),
        ("epsilon_decay", 0.0),
        ("epsilon_decay", 1.01),
        ("epsilon_min", 0.2),
        ("cpu_medium_percent", 0.0),
        ("cpu_high_percent", 50.0),
        ("cpu_high_percent", 101.0),
        ("active_medium_requests", 0),
        ("active_high_requests", 5),
        ("response_medium_ms", 0.0),
        ("response_high_ms", 100.0),
        ("initial_q", "optimistic"),
        ("unknown_load", "low"),
        ("virtual_loss", -0.1),
        ("virtual_loss", 2.0),
        ("alpha", math.nan),
    ],
)
def test_invalid_params_are_rejected_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_params(QLearning.Params, {field: value}, "pool.strategy_params")
    assert err.value.field == f"pool.strategy_params.{field}"
    with pytest.raises(ValueError, match=f"^{field}: "):
        QLearningParams(**{field: value})


def test_defaults_follow_the_seed() -> None:
    p = parse_params(QLearning.Params, {}, "pool.strategy_params")
    assert (p.alpha, p.gamma, p.epsilon, p.epsilon_decay, p.epsilon_min) == (0.1, 0.9, 0.1, 0.995, 0.01)
    assert (p.cpu_medium_percent, p.cpu_high_percent) == (50.0, 80.0)
    assert (p.active_medium_requests, p.active_high_requests) == (5, 10)
    assert (p.response_medium_ms, p.response_high_ms) == (100.0, 200.0)


def test_pool_size_limit_points_to_q_linear() -> None:
    assert QLearning.max_servers == 10
    assert "q_linear" in TOO_LARGE_HINT and "10" in TOO_LARGE_HINT


def test_concurrent_threads_keep_counters_consistent() -> None:
    servers = pool("a", "b", "c")
    strategy = agent(servers)

    def work() -> None:
        for _ in range(500):
            choice = strategy.choose(list(servers.values()))
            strategy.observe(Feedback(choice.server, True, 10.0, choice.memo))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = strategy.stats()
    assert stats["episodes"] == stats["updates"] == 2000
    assert strategy._pending == {}


def test_recent_reward_is_an_ewma_of_outcome_rewards() -> None:
    servers = {"a": Backend("a", "h:1", 1)}
    strategy = QLearning(QLearningParams(), StrategyContext(ManualClock(), random.Random(1), servers))
    assert strategy.stats()["recent_reward"] == 0.0
    choice = strategy.choose(list(servers.values()))
    strategy.observe(Feedback(servers["a"], True, 100.0, choice.memo))
    assert strategy.stats()["recent_reward"] == -10.0
    choice = strategy.choose(list(servers.values()))
    strategy.observe(Feedback(servers["a"], False, 1.0, choice.memo))
    assert strategy.stats()["recent_reward"] == pytest.approx(-10.0 + 0.05 * (-1000.0 + 10.0))
