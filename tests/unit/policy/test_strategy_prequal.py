"""prequal: hot-cold lexicographic choice over pooled probes; pure, seeded, on a fake clock."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from loadwarden.policy._errors import InvalidArgument
from loadwarden.policy._model import Backend, LoadSample
from loadwarden.policy._registry import parse_params
from loadwarden.policy.strategies import Feedback, StrategyContext, build_strategy
from loadwarden.policy.strategies.prequal import Prequal, PrequalParams, Probe, kernel_probe
from loadwarden.server import ManualClock


def servers(n: int) -> list[Backend]:
    return [Backend(id=f"s{i}", address=f"h:{i}", weight=1) for i in range(n)]


class Probes:
    """A probe source whose answers the test gives: every probe waits until ``answer``."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Backend, Callable[[Probe], None]]] = []
        self.sent = 0

    def __call__(self, server: Backend, deliver: Callable[[Probe], None]) -> None:
        self.waiting.append((server, deliver))
        self.sent += 1

    def answer(self, state: dict[str, tuple[int, float]]) -> None:
        """Delivers the waiting probes of the servers in ``state`` (id -> (RIF, latency ms)), in order."""
        waiting, self.waiting = self.waiting, []
        for server, deliver in waiting:
            if server.id in state:
                deliver(Probe(server, *state[server.id]))

    def drop(self) -> None:
        self.waiting = []


def prequal(seed: int = 1, clock: ManualClock | None = None, **params: Any) -> tuple[Prequal, Probes]:
    strategy = Prequal(PrequalParams(**params), StrategyContext(clock=clock or ManualClock(), rng=random.Random(seed)))
    probes = Probes()
    strategy.use_probes(probes)
    return strategy, probes


def pooled(state: dict[str, tuple[int, float]], pool: list[Backend], **params: Any) -> tuple[Prequal, Probes]:
    """A strategy whose pool holds ``state``'s probes (every candidate probed once, no removals)."""
    params.setdefault("probe_rate", 16.0)
    params.setdefault("remove_rate", 0.0)
    strategy, probes = prequal(**params)
    strategy.choose(pool)  # the pool is empty: a random choice, and a probe to each candidate
    probes.answer(state)
    return strategy, probes


# --- parameters ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "field", "problem"),
    [
        ({"probe_rate": 0}, "probe_rate", "(0, 16]"),
        ({"probe_rate": 16.5}, "probe_rate", "(0, 16]"),
        ({"probe_rate": float("nan")}, "probe_rate", "(0, 16]"),
        ({"pool_size": 0}, "pool_size", "[1, 1024]"),
        ({"pool_size": 1025}, "pool_size", "[1, 1024]"),
        ({"pool_size": 2.5}, "pool_size", "type int"),
        ({"reuse_budget": 0}, "reuse_budget", "[1, 1000]"),
        ({"max_age_ms": 0}, "max_age_ms", "(0, 3.6e+06]"),
        ({"max_age_ms": float("inf")}, "max_age_ms", "(0, 3.6e+06]"),
        ({"q_rif": 1.5}, "q_rif", "[0, 1]"),
        ({"q_rif": -0.1}, "q_rif", "[0, 1]"),
        ({"remove_rate": -1}, "remove_rate", "[0, 16]"),
        ({"min_pool": 0}, "min_pool", "[1, 1024]"),
        ({"pool_size": 4, "min_pool": 5}, "min_pool", "must not exceed pool_size (4)"),
        ({"probes": 3}, "probes", "unknown parameter"),
    ],
)
def test_bad_params_name_their_field(values: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_params(PrequalParams, values, "pools.api.strategy_params")
    assert err.value.field == f"pools.api.strategy_params.{field}"
    assert problem in str(err.value)


def test_registered_with_the_papers_pool_size_and_quantile() -> None:
    strategy = build_strategy("prequal", {"probe_rate": 2}, StrategyContext(ManualClock(), random.Random(1)), "pool")
    assert isinstance(strategy, Prequal) and strategy.name == "prequal"
    assert PrequalParams().pool_size == 16 and PrequalParams().q_rif == 0.84


# --- the hot/cold rule --------------------------------------------------------------


def test_the_cold_probe_of_lowest_latency_wins_not_the_hot_fastest() -> None:
    pool = servers(5)
    # RIFs 0, 1, 2, 3, 10: the 0.84 quantile is 3 + 0.36 * 7 = 5.52, so only s4 is hot.
    state = {"s0": (0, 50.0), "s1": (1, 40.0), "s2": (2, 30.0), "s3": (3, 20.0), "s4": (10, 1.0)}
    strategy, _ = pooled(state, pool)

    assert strategy.choose(pool).server.id == "s3"
    assert strategy.stats()["all_hot"] == 0


def test_with_every_candidate_hot_the_lowest_rif_wins() -> None:
    pool = servers(5)
    # The quantile is over the whole pool: with q_rif 0.5 it is 0, so s3 and s4 are hot.
    state = {"s0": (0, 90.0), "s1": (0, 90.0), "s2": (0, 90.0), "s3": (5, 30.0), "s4": (6, 10.0)}
    strategy, _ = pooled(state, pool, q_rif=0.5)

    assert strategy.choose(pool[3:]).server.id == "s3"  # a request excluding s0-s2: both candidates hot
    assert strategy.stats()["all_hot"] == 1


def test_a_used_probe_counts_the_request_just_sent() -> None:
    pool = servers(2)
    strategy, probes = pooled({"s0": (0, 10.0), "s1": (1, 50.0)}, pool, q_rif=0.0, reuse_budget=5)
    probes.drop()  # no fresher answers: the pooled probes serve every decision

    # q_rif 0: only RIFs above the lowest are hot. s0 (RIF 0) wins, then counts 1, ties s1,
    # both are cold and the lower latency wins again; at RIF 2 it is hot and s1 takes a turn.
    picks = []
    for _ in range(3):
        picks.append(strategy.choose(pool).server.id)
        probes.drop()
    assert picks == ["s0", "s0", "s1"]


def test_an_unknown_latency_counts_as_the_median_of_the_known() -> None:
    pool = servers(4)
    state = {"s0": (0, 10.0), "s1": (0, 30.0), "s2": (0, 50.0), "s3": (0, 0.0)}
    strategy, _ = pooled(state, pool, q_rif=1.0)

    # s3 competes at the pool's median, 30 ms: behind s0, ahead of s2.
    assert strategy.choose(pool).server.id == "s0"
    assert strategy.choose([pool[2], pool[3]]).server.id == "s3"


# --- the pool -----------------------------------------------------------------------


def test_too_few_probes_give_a_uniform_choice() -> None:
    pool = servers(4)
    strategy, probes = prequal(seed=3)
    counts: Counter[str] = Counter()
    for _ in range(4000):
        counts[strategy.choose(pool).server.id] += 1
        probes.drop()  # no probe ever answers

    assert strategy.stats()["random"] == 4000
    assert all(900 < n < 1100 for n in counts.values()), counts


def test_one_probe_under_min_pool_is_not_enough() -> None:
    pool = servers(3)
    strategy, probes = pooled({"s0": (0, 1.0)}, pool, min_pool=2)
    probes.drop()

    strategy.choose(pool)
    assert strategy.stats()["random"] == 2  # the first choice and this one


def test_a_probe_serves_at_most_reuse_budget_decisions() -> None:
    pool = servers(2)
    strategy, probes = pooled({"s0": (0, 10.0), "s1": (0, 50.0)}, pool, reuse_budget=2, min_pool=1, q_rif=1.0)
    picks = []
    for _ in range(5):
        picks.append(strategy.choose(pool).server.id)
        probes.drop()

    assert picks[:4] == ["s0", "s0", "s1", "s1"]  # each probe twice, then gone
    assert strategy.stats()["random"] == 2 and strategy.stats()["pool_probes"] == 0


def test_probes_age_out_after_max_age() -> None:
    clock = ManualClock()
    pool = servers(3)
    strategy, probes = prequal(clock=clock, max_age_ms=500.0, probe_rate=16.0, remove_rate=0.0)
    strategy.choose(pool)
    probes.answer({s.id: (0, 10.0) for s in pool})
    clock.advance(0.4)
    strategy.choose(pool)
    probes.drop()
    assert strategy.stats()["random"] == 1

    clock.advance(0.2)  # 0.6 s after the answers
    strategy.choose(pool)
    assert strategy.stats()["aged_out"] == 3 and strategy.stats()["random"] == 2


def test_the_pool_keeps_one_probe_per_server_and_at_most_pool_size() -> None:
    pool = servers(5)
    strategy, probes = prequal(pool_size=3, min_pool=1, probe_rate=16.0, remove_rate=0.0, q_rif=1.0)
    strategy.choose(pool)
    probes.answer({s.id: (0, 10.0 + i) for i, s in enumerate(pool)})  # s0 first: the oldest
    assert strategy.stats()["pool_probes"] == 3

    # s0 and s1 left the pool; s2 (12 ms) is the fastest that stayed.
    assert strategy.choose(pool).server.id == "s2"
    probes.answer({"s2": (4, 5.0)})  # a newer probe of s2 replaces its old one
    assert strategy.stats()["pool_probes"] == 3


def test_removals_alternate_the_worst_and_the_oldest() -> None:
    pool = servers(6)
    # s5's RIF is the only one above the pool's 0.84 quantile: the worst.
    state = {f"s{i}": (i // 5 * 9, 10.0 * (i + 1)) for i in range(6)}
    strategy, probes = pooled(state, pool, remove_rate=1.0, reuse_budget=100)
    probes.drop()

    picks = [strategy.choose(pool[:5]).server.id]  # s0; then s5, the hot one, is removed
    probes.drop()
    assert strategy.stats()["pool_probes"] == 5
    picks.append(strategy.choose(pool[:5]).server.id)  # s0 is hot at RIF 1: s1; then s0, the oldest, goes
    probes.drop()
    assert strategy.stats()["pool_probes"] == 4
    picks.append(strategy.choose(pool[:5]).server.id)  # s1 is hot now: s2; then s1, the worst, goes

    assert picks == ["s0", "s1", "s2"]
    assert strategy.stats()["pool_probes"] == 3


def test_a_failure_and_forget_drop_the_servers_probe() -> None:
    pool = servers(3)
    strategy, probes = pooled({s.id: (0, 10.0) for s in pool}, pool)
    probes.drop()

    strategy.observe(Feedback(pool[0], success=True, latency_ms=5.0))
    assert strategy.stats()["pool_probes"] == 3
    strategy.observe(Feedback(pool[0], success=False, latency_ms=5.0))
    strategy.forget("s1")
    assert strategy.stats()["pool_probes"] == 1


# --- probing ------------------------------------------------------------------------


def test_a_fractional_probe_rate_sends_that_many_on_average() -> None:
    strategy, probes = prequal(seed=5, probe_rate=1.5)
    for _ in range(2000):
        strategy.choose(servers(8))
        probes.drop()

    assert 2850 < probes.sent < 3150
    assert strategy.stats()["probes_sent"] == probes.sent


def test_probes_go_to_distinct_candidates() -> None:
    pool = servers(6)
    strategy, probes = prequal(probe_rate=3.0)
    strategy.choose(pool)

    assert len({server.id for server, _ in probes.waiting}) == 3


def test_the_default_source_reads_the_kernels_view_at_the_probes_time() -> None:
    server = Backend("s0", "h:0", 1)
    server.in_flight, server.peer_in_flight = 2, 1
    server.load = LoadSample(cpu_percent=0, memory_percent=0, active_requests=7, mean_latency_ms=40, error_rate=0)
    got: list[Probe] = []

    kernel_probe(server, got.append)
    server.record_outcome(True, 25.0)
    kernel_probe(server, got.append)

    assert got[0] == Probe(server, 7, 40.0)  # the report's count (above the 3 in flight) and mean
    assert got[1] == Probe(server, 7, 25.0)  # then the outcome EWMA


def run_default(seed: int) -> list[str]:
    """200 decisions with the kernel's own probes, requests finishing in a fixed pattern."""
    clock = ManualClock()
    pool = servers(4)
    strategy = Prequal(PrequalParams(), StrategyContext(clock=clock, rng=random.Random(seed)))
    picks = []
    for i in range(200):
        server = strategy.choose(pool).server
        server.in_flight += 1
        picks.append(server.id)
        if i % 3:
            done = pool[i % 4]
            if done.in_flight:
                done.record_outcome(True, 10.0 * (i % 4 + 1))
        clock.advance(0.002)
    return picks


def test_the_same_seed_gives_the_same_choices() -> None:
    first = run_default(7)

    assert first == run_default(7)
    assert first != run_default(8)
    assert set(first) == {"s0", "s1", "s2", "s3"}
