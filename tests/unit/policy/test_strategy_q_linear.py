"""Linear Q-learning: pure, seeded, driven by hand (no core, no sleeps)."""

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
from loadwarden.policy.strategies.q_linear import UNLEARNED_PLACE_COST, WEIGHT_LIMIT, QLinear, QLinearParams
from loadwarden.server import ManualClock

from ._learning import route


def pool(*ids: str) -> dict[str, Backend]:
    return {sid: Backend(id=sid, address=f"h:{i}", weight=1) for i, sid in enumerate(ids)}


def agent(servers: dict[str, Backend], seed: int = 1, **params: Any) -> QLinear:
    ctx = StrategyContext(clock=ManualClock(), rng=random.Random(seed), servers=servers)
    return QLinear(QLinearParams(**params), ctx)


def greedy(servers: dict[str, Backend], **params: Any) -> QLinear:
    return agent(servers, epsilon=0.0, epsilon_min=0.0, **params)


def from_zero(servers: dict[str, Backend], **params: Any) -> QLinear:
    """Greedy, every server's cost per place 0, so an update's numbers read plainly."""
    strategy = greedy(servers, **params)
    strategy.restore(snapshot_with(biases=dict.fromkeys(servers, 0.0)))
    return strategy


# --- learning ------------------------------------------------------------------------


def test_learns_to_avoid_a_server_five_times_slower() -> None:
    servers = pool("f1", "f2", "f3", "f4", "slow")
    strategy = agent(servers, seed=7)
    rng = random.Random(3)
    route(strategy, servers, rng, 500)  # warm-up
    picks = route(strategy, servers, rng, 2000)
    assert picks.count("slow") / len(picks) < 0.10
    biases = strategy.snapshot()["biases"]
    assert biases["slow"] < min(biases[f"f{i}"] for i in range(1, 5))


def test_per_server_bias_learns_speed_the_features_do_not_show() -> None:
    # Outcomes are not folded into the servers, so every feature stays 0: only b_a can learn.
    servers = pool("f1", "f2", "slow")
    strategy = agent(servers, seed=2)
    for _ in range(600):
        choice = strategy.choose(list(servers.values()))
        latency = 100.0 if choice.server.id == "slow" else 20.0
        strategy.observe(Feedback(choice.server, True, latency, choice.memo))
    biases = strategy.snapshot()["biases"]
    assert biases["f1"] == pytest.approx(-0.2, abs=0.02)  # reward -20/100, picked often
    assert biases["slow"] < -0.5  # heading for -1, picked only until it looked worst
    picks = [strategy.choose(list(servers.values())).server.id for _ in range(1000)]
    assert picks.count("slow") < 100


def test_update_is_normalised_lms_with_exact_numbers() -> None:
    servers = pool("a")
    servers["a"].load = LoadSample(50.0, 0.0, 0, 0.0, 0.0)  # features (0.5, 0, 0, 0)
    strategy = from_zero(servers)
    choice = strategy.choose(list(servers.values()))
    assert choice.memo == (0.5, 0.0, 0.0, 0.0)
    strategy.observe(Feedback(servers["a"], True, 100.0, choice.memo))  # reward -100/100
    step = 0.1 * (-1.0 - 0.0) / (1.0 + 0.5**2)
    state = strategy.snapshot()
    assert state["weights"]["cpu"] == pytest.approx(step * 0.5, abs=1e-12)
    assert state["biases"]["a"] == pytest.approx(step, abs=1e-12)
    # The prediction moved alpha of the way to the target.
    assert state["weights"]["cpu"] * 0.5 + state["biases"]["a"] == pytest.approx(0.1 * -1.0, abs=1e-12)


def test_failure_and_expiry_cost_failure_penalty() -> None:
    servers = pool("a")
    for expired in (False, True):
        strategy = from_zero(servers, failure_penalty_ms=500.0)
        choice = strategy.choose(list(servers.values()))
        strategy.observe(Feedback(servers["a"], False, 1.0, choice.memo, expired=expired))
        assert strategy.snapshot()["biases"]["a"] == pytest.approx(0.1 * -5.0)


def test_a_failure_slower_than_the_penalty_counts_its_latency() -> None:
    servers = pool("a")
    strategy = from_zero(servers, failure_penalty_ms=500.0)
    choice = strategy.choose(list(servers.values()))
    strategy.observe(Feedback(servers["a"], False, 2000.0, choice.memo))  # a 2 s timeout
    assert strategy.snapshot()["biases"]["a"] == pytest.approx(0.1 * -10.0)  # td_error_clip 10 of -20


# --- what a place in line costs ---------------------------------------------------------------


def test_active_is_this_process_in_flight_count_on_a_log_scale() -> None:
    servers = pool("a")
    a = servers["a"]
    a.load = LoadSample(0.0, 0.0, 40, 0.0, 0.0)  # a report of 40 active, since drained
    strategy = greedy(servers, active_scale_requests=10.0)
    assert strategy.choose([a]).memo[1] == 0.0
    a.in_flight, a.client_in_flight, a.peer_in_flight = 3, 2, 1  # in_flight_total 6
    a.effective_weight = 2.0
    assert strategy.choose([a]).memo[1] == pytest.approx(math.log1p(6 / 2 / 10))
    a.in_flight = 10**9
    assert strategy.choose([a]).memo[1] == 10.0  # clipped, as every feature


def test_update_scales_the_per_place_cost_by_the_place_in_line() -> None:
    servers = pool("a")
    a = servers["a"]
    a.in_flight = 3  # q = 1 + 3 / 1: the request is fourth in line
    strategy = from_zero(servers, active_scale_requests=10.0)
    choice = strategy.choose([a])
    x = choice.memo
    strategy.observe(Feedback(a, True, 200.0, x))  # reward -2
    step = 0.1 * -2.0 / (4.0**2 + sum(v * v for v in x))
    state = strategy.snapshot()
    assert state["biases"]["a"] == pytest.approx(step * 4.0, abs=1e-12)
    assert state["weights"]["active"] == pytest.approx(step * x[1], abs=1e-12)
    prediction = state["weights"]["active"] * x[1] + state["biases"]["a"] * 4.0
    assert prediction == pytest.approx(0.1 * -2.0, abs=1e-12)  # alpha of the way, as with q = 1


def test_a_fast_servers_line_beats_an_idle_slow_server_until_it_costs_more() -> None:
    servers = pool("fast", "slow")
    strategy = greedy(servers)
    strategy.restore(snapshot_with(biases={"fast": -0.1, "slow": -0.5}))  # 10 and 50 ms a place
    candidates = list(servers.values())
    servers["fast"].in_flight = 3  # 4 places of 10 ms: 40 ms against 50
    assert {strategy.choose(candidates).server.id for _ in range(20)} == {"fast"}
    servers["fast"].in_flight = 5  # 60 ms
    assert {strategy.choose(candidates).server.id for _ in range(20)} == {"slow"}


def test_weights_and_costs_never_rise_above_zero() -> None:
    servers = pool("a")
    servers["a"].load = LoadSample(50.0, 0.0, 0, 0.0, 0.0)
    strategy = greedy(servers, alpha=1.0)
    strategy.restore(snapshot_with(biases={"a": 0.0}, cpu=-1.0))  # predicts -0.5
    choice = strategy.choose(list(servers.values()))
    strategy.observe(Feedback(servers["a"], True, 0.0, choice.memo))  # reward 0: td +0.5
    state = strategy.snapshot()
    assert state["weights"]["cpu"] == pytest.approx(-1.0 + 0.4 * 0.5)  # step 0.5 / 1.25
    assert state["biases"]["a"] == 0.0  # not 0.4: more load never makes a server better


def test_positive_values_of_an_older_snapshot_are_taken_as_zero() -> None:
    servers = pool("a", "b")
    strategy = greedy(servers)
    strategy.restore(snapshot_with(biases={"a": 2.0, "b": -1.0}, cpu=3.0, active=-0.5))
    state = strategy.snapshot()
    assert state["biases"] == {"a": 0.0, "b": -1.0}
    assert state["weights"] == {"cpu": 0.0, "active": -0.5, "response": 0.0, "error_rate": 0.0}
    assert strategy.stats()["servers_learned"] == 2


def test_td_error_is_clipped_and_nan_is_refused() -> None:
    servers = pool("a")
    strategy = from_zero(servers, td_error_clip=2.0)
    choice = strategy.choose(list(servers.values()))
    strategy.observe(Feedback(servers["a"], True, 1e9, choice.memo))
    assert strategy.snapshot()["biases"]["a"] == pytest.approx(0.1 * -2.0)
    before = strategy.snapshot()
    strategy.observe(Feedback(servers["a"], True, math.nan, choice.memo))
    strategy.observe(Feedback(servers["a"], True, 5.0, "not ours"))
    assert strategy.snapshot()["biases"] == before["biases"]
    assert strategy.snapshot()["weights"] == before["weights"]


def test_extreme_loads_keep_weights_finite_and_bounded() -> None:
    servers = pool("a", "b")
    servers["a"].load = LoadSample(100.0, 0.0, 10**9, 1e12, 1.0)
    servers["a"].in_flight = 10**9
    strategy = agent(servers, alpha=1.0, td_error_clip=1e6)
    for _ in range(2000):
        choice = strategy.choose(list(servers.values()))
        strategy.observe(Feedback(choice.server, choice.server.id == "b", 1e7, choice.memo))
    state = strategy.snapshot()
    values = list(state["weights"].values()) + list(state["biases"].values())
    assert all(math.isfinite(v) and abs(v) <= WEIGHT_LIMIT for v in values)


def test_before_any_server_is_learned_a_place_in_line_costs_the_same_everywhere() -> None:
    # At 0 a line would cost nothing and the choice would be random: the shortest line wins.
    servers = pool("a", "b", "c")
    servers["a"].in_flight, servers["b"].in_flight, servers["c"].in_flight = 2, 0, 1
    strategy = greedy(servers)
    assert {strategy.choose(list(servers.values())).server.id for _ in range(20)} == {"b"}
    choice = strategy.choose([servers["b"]])
    strategy.observe(Feedback(servers["b"], True, 0.0, choice.memo))  # reward 0
    assert strategy.snapshot()["biases"] == {"b": pytest.approx(UNLEARNED_PLACE_COST * 0.9)}
    assert strategy.choose([servers["a"], servers["c"]]).server.id == "c"  # both at b's cost


def test_new_server_starts_at_the_mean_bias_and_forget_drops_it() -> None:
    servers = pool("a", "b")
    strategy = greedy(servers)
    strategy.restore(snapshot_with(biases={"a": -1.0, "b": -3.0}))
    servers["c"] = Backend(id="c", address="h:c", weight=1)
    choice = strategy.choose([servers["c"]])
    strategy.observe(Feedback(servers["c"], True, 200.0, choice.memo))  # reward -2 = the prior
    assert strategy.snapshot()["biases"]["c"] == pytest.approx(-2.0)
    del servers["c"]
    strategy.forget("c")
    assert set(strategy.snapshot()["biases"]) == {"a", "b"}
    assert strategy.stats()["servers_learned"] == 2


# --- exploration and decision cost --------------------------------------------------------


def test_epsilon_decays_per_update_down_to_its_floor() -> None:
    servers = pool("a")
    strategy = agent(servers, epsilon=0.5, epsilon_decay=0.5, epsilon_min=0.1)
    seen = []
    for _ in range(4):
        choice = strategy.choose(list(servers.values()))
        strategy.observe(Feedback(servers["a"], True, 10.0, choice.memo))
        seen.append(strategy.stats()["epsilon"])
    assert seen == [0.25, 0.125, 0.1, 0.1]


def test_epsilon_one_always_explores_and_zero_never() -> None:
    servers = pool("a", "b", "c")
    explorer = agent(servers, epsilon=1.0, epsilon_decay=1.0, epsilon_min=1.0)
    picks = [explorer.choose(list(servers.values())) for _ in range(300)]
    assert all(c.explored for c in picks) and {c.server.id for c in picks} == {"a", "b", "c"}
    exploiter = greedy(servers)
    exploiter.restore(snapshot_with(biases={"a": -3.0, "b": -1.0, "c": -2.0}))
    picks = [exploiter.choose(list(servers.values())) for _ in range(100)]
    assert not any(c.explored for c in picks) and {c.server.id for c in picks} == {"b"}


def test_decision_cost_is_bounded_by_sample_size_with_200_servers() -> None:
    servers = {f"s{i:03d}": Backend(id=f"s{i:03d}", address="h", weight=1) for i in range(200)}
    strategy = greedy(servers, sample_size=8)
    candidates = list(servers.values())
    chosen = set()
    for _ in range(1000):
        choice = strategy.choose(candidates)
        strategy.observe(Feedback(choice.server, True, 10.0, choice.memo))
        chosen.add(choice.server.id)
    assert strategy.stats()["scored"] == 8 * 1000
    assert len(chosen) > 100  # the sample is random, not the same 8 servers


def test_small_pools_score_every_candidate() -> None:
    servers = pool("a", "b", "c")
    strategy = greedy(servers, sample_size=8)
    for _ in range(10):
        strategy.choose(list(servers.values()))
    assert strategy.stats()["scored"] == 30


@pytest.mark.parametrize(
    ("local", "pool_size", "local_sample_size", "share", "scored"),
    [
        (False, 20, 3, 0.5, 8),  # the service scores sample_size
        (True, 20, 3, 0.0, 3),  # a client: local_sample_size ...
        (True, 5, 3, 0.5, 3),  # ... or the share of the candidates when more: ceil(2.5) = 3
        (True, 11, 3, 0.5, 6),  # ceil(5.5) = 6
        (True, 20, 3, 0.5, 8),  # never over sample_size
        (True, 20, 3, 1.0, 8),
        (True, 20, 0, 0.0, 8),  # 0: as the service
        (True, 2, 3, 0.5, 2),  # never more than there are
    ],
)
def test_a_client_deciding_locally_scores_a_share_of_the_candidates(
    local: bool, pool_size: int, local_sample_size: int, share: float, scored: int
) -> None:
    servers = {f"s{i}": Backend(id=f"s{i}", address="h", weight=1) for i in range(pool_size)}
    ctx = StrategyContext(clock=ManualClock(), rng=random.Random(1), servers=servers, local=local)
    params = QLinearParams(
        epsilon=0.0, epsilon_min=0.0, sample_size=8, local_sample_size=local_sample_size, local_sample_share=share
    )
    strategy = QLinear(params, ctx)
    for _ in range(10):
        strategy.choose(list(servers.values()))
    assert strategy.stats()["scored"] == scored * 10


def test_sampling_exploits_the_best_of_the_sample() -> None:
    servers = {f"s{i:03d}": Backend(id=f"s{i:03d}", address="h", weight=1) for i in range(200)}
    biases = {sid: -1.0 for sid in servers} | {"s007": -0.1}
    strategy = greedy(servers, sample_size=200)
    strategy.restore(snapshot_with(biases=biases))
    assert strategy.choose(list(servers.values())).server.id == "s007"


# --- persistence -------------------------------------------------------------------------------


def snapshot_with(biases: dict[str, float], **weights: float) -> dict[str, Any]:
    w = {"cpu": 0.0, "active": 0.0, "response": 0.0, "error_rate": 0.0} | weights
    return {
        "strategy": "q_linear",
        "version": 1,
        "epsilon": 0.0,
        "episodes": 0,
        "updates": 0,
        "explored": 0,
        "weights": w,
        "biases": biases,
    }


def trained() -> tuple[QLinear, dict[str, Backend]]:
    servers = pool("f1", "f2", "slow")
    strategy = agent(servers, seed=5)
    route(strategy, servers, random.Random(9), 400)
    return strategy, servers


def test_snapshot_round_trip_gives_identical_choices() -> None:
    strategy, servers = trained()
    copy_ = agent(servers)
    copy_.restore(json.loads(json.dumps(strategy.snapshot())))
    assert copy_.snapshot() == strategy.snapshot()
    transient = {"scored", "recent_reward"}  # this process's decisions and outcomes; not persisted
    assert {k: v for k, v in copy_.stats().items() if k not in transient} == {
        k: v for k, v in strategy.stats().items() if k not in transient
    }
    seed = random.Random(42).getstate()
    strategy._rng.setstate(seed)
    copy_._rng.setstate(seed)
    picks = [strategy.choose(list(servers.values())) for _ in range(200)]
    again = [copy_.choose(list(servers.values())) for _ in range(200)]
    assert [(c.server.id, c.explored) for c in picks] == [(c.server.id, c.explored) for c in again]


def test_restore_drops_biases_of_servers_no_longer_in_the_pool() -> None:
    servers = pool("a")
    strategy = greedy(servers)
    strategy.restore(snapshot_with(biases={"a": -1.0, "gone": -2.0}))
    assert strategy.snapshot()["biases"] == {"a": -1.0}


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def mutate(state: dict[str, Any]) -> Any:
        target = state
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return state

    return mutate


CORRUPT = {
    "not a mapping": lambda s: [s],
    "missing key": lambda s: {k: v for k, v in s.items() if k != "biases"},
    "unexpected key": _set(("q_table",), {}),
    "other strategy": _set(("strategy",), "q_learning"),
    "epsilon NaN": _set(("epsilon",), math.nan),
    "epsilon as text": _set(("epsilon",), "0.1"),
    "bool count": _set(("episodes",), False),
    "weights as list": _set(("weights",), [0.0] * 4),
    "missing weight": _set(("weights",), {"cpu": 0.0}),
    "unknown weight": _set(("weights", "memory"), 0.0),
    "weight NaN": _set(("weights", "cpu"), math.nan),
    "weight infinite": _set(("weights", "active"), math.inf),
    "weight beyond limit": _set(("weights", "active"), 2 * WEIGHT_LIMIT),
    "bias text": _set(("biases", "f1"), "x"),
    "bias NaN": _set(("biases", "f1"), math.nan),
    "bias bool": _set(("biases", "f1"), True),
    "bad server id": _set(("biases", "a b"), 0.0),
    "biases as list": _set(("biases",), []),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPT))
def test_corrupt_snapshots_are_refused_and_change_nothing(corruption: str) -> None:
    strategy, _ = trained()
    before = strategy.snapshot()
    with pytest.raises(ValueError):
        strategy.restore(CORRUPT[corruption](copy.deepcopy(before)))
    assert strategy.snapshot() == before


# --- params and threads --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("alpha", 0.0),
        ("alpha", 1.5),
        ("epsilon", 1.1),
        ("epsilon_decay", 0.0),
        ("epsilon_decay", 1.5),
        ("epsilon_min", 0.5),
        ("sample_size", 0),
        ("local_sample_size", -1),
        ("local_sample_size", 10_001),
        ("local_sample_share", -0.1),
        ("local_sample_share", 1.5),
        ("local_sample_share", math.nan),
        ("latency_scale_ms", 0.0),
        ("failure_penalty_ms", -1.0),
        ("active_scale_requests", 0.0),
        ("td_error_clip", 0.0),
        ("td_error_clip", math.inf),
    ],
)
def test_invalid_params_are_rejected_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_params(QLinear.Params, {field: value}, "pool.strategy_params")
    assert err.value.field == f"pool.strategy_params.{field}"


def test_no_pool_size_limit() -> None:
    assert QLinear.max_servers is None


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
    assert strategy.stats()["episodes"] == strategy.stats()["updates"] == 2000
