"""p2c: least request over a few random candidates; pure, seeded."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any, overload

import pytest

from loadwarden.policy._errors import InvalidArgument
from loadwarden.policy._model import Backend, LoadSample
from loadwarden.policy._registry import parse_params
from loadwarden.policy.strategies._base import StrategyContext
from loadwarden.policy.strategies._sampling import MAX_DRAWS
from loadwarden.policy.strategies.p2c import P2C, P2CParams
from loadwarden.server import ManualClock


def servers(*weights: int) -> list[Backend]:
    return [Backend(id=f"s{i}", address=f"h:{i}", weight=w) for i, w in enumerate(weights, 1)]


def p2c(pool: list[Backend], seed: int = 1, **params: Any) -> P2C:
    members = {s.id: s for s in pool}
    return P2C(P2CParams(**params), StrategyContext(clock=ManualClock(), rng=random.Random(seed), servers=members))


def test_two_servers_never_picks_the_busier() -> None:
    a, b = pool = servers(1, 1)
    a.in_flight, b.in_flight = 3, 2
    strategy = p2c(pool)
    assert all(strategy.choose(pool).server is b for _ in range(200))


def test_never_picks_the_busier_of_its_sampled_pair() -> None:
    pool = servers(*[1] * 10)
    for i, s in enumerate(pool):
        s.in_flight = i  # distinct loads
    by_id = {s.id: s for s in pool}
    strategy = p2c(pool, seed=7)
    pairs: Counter[frozenset[str]] = Counter()
    for _ in range(9000):
        choice = strategy.choose(pool)
        sampled = [by_id[sid] for sid in choice.memo]
        assert len(set(choice.memo)) == 2
        assert choice.server is min(sampled, key=lambda s: s.in_flight)
        pairs[frozenset(choice.memo)] += 1
    # Every one of the C(10, 2) = 45 pairs is sampled, about equally often (expected 200 each).
    assert len(pairs) == 45
    assert all(140 < n < 260 for n in pairs.values()), pairs


def test_uses_the_servers_own_report_of_active_requests() -> None:
    a, b = pool = servers(1, 1)
    a.in_flight, b.in_flight = 0, 1
    a.load = LoadSample(
        cpu_percent=0, memory_percent=0, active_requests=5, mean_latency_ms=0, error_rate=0
    )  # a is busier than our in-flight count says
    assert p2c(pool).choose(pool).server is b


def test_is_weight_aware() -> None:
    a, b = pool = servers(4, 1)
    a.in_flight, b.in_flight = 3, 1  # (3+1)/4 = 1.0 per weight vs (1+1)/1 = 2.0
    strategy = p2c(pool)
    assert all(strategy.choose(pool).server is a for _ in range(50))


def test_weighs_by_effective_weight() -> None:
    a, b = pool = servers(4, 1)
    a.effective_weight = 0.4  # ramping up after joining: (0+1)/0.4 = 2.5 vs (0+1)/1 = 1.0
    assert p2c(pool).choose(pool).server is b


def test_idle_servers_prefer_the_heavier() -> None:
    _light, heavy = pool = servers(1, 3)
    assert p2c(pool).choose(pool).server is heavy


def test_choice_count_above_candidates_compares_all() -> None:
    pool = servers(1, 1, 1)
    pool[0].in_flight, pool[1].in_flight, pool[2].in_flight = 2, 0, 1
    strategy = p2c(pool, choice_count=5)
    for _ in range(50):
        choice = strategy.choose(pool)
        assert choice.server is pool[1]
        assert sorted(choice.memo) == ["s1", "s2", "s3"]


def test_larger_choice_count_samples_that_many_distinct() -> None:
    pool = servers(*[1] * 20)
    for i, s in enumerate(pool):
        s.in_flight = 20 - i
    strategy = p2c(pool, choice_count=16)
    for _ in range(200):
        choice = strategy.choose(pool)
        assert len(set(choice.memo)) == 16
        assert choice.server.in_flight == min(s.in_flight for s in pool if s.id in choice.memo)


def test_single_candidate_is_chosen() -> None:
    (only,) = pool = servers(1)
    assert p2c(pool).choose(pool).server is only


def test_spread_over_equal_servers_is_uniform_and_reproducible() -> None:
    pool = servers(1, 1, 1, 1)

    def run(seed: int) -> list[str]:
        strategy = p2c(pool, seed=seed)
        return [strategy.choose(pool).server.id for _ in range(4000)]

    first = run(3)
    assert first == run(3)
    assert first != run(4)
    assert all(900 < n < 1100 for n in Counter(first).values()), Counter(first)


def answered(server: Backend, latency_ms: float, error_rate: float = 0.0) -> None:
    """Gives ``server`` the outcome EWMAs of a server that has answered for a while."""
    server.ewma_latency_ms, server.error_rate, server.outcomes_total = latency_ms, error_rate, 20


def both_slow(strategy: P2C, pool: list[Backend], slow: set[str], n: int = 4000) -> float:
    """Fraction of ``n`` decisions whose sampled candidates were all in ``slow``."""
    return sum(1 for _ in range(n) if set(strategy.choose(pool).memo) <= slow) / n


def test_candidates_are_drawn_in_proportion_to_observed_capacity() -> None:
    pool = servers(*[1] * 10)
    for s in pool[:8]:
        answered(s, 40.0)
    for s in pool[8:]:
        answered(s, 10.0)  # 4 times as fast: 4 times the capacity
    slow = {s.id for s in pool[:8]}
    # Uniform pairs would be both slow 28/45 = 62 % of the time, though the slow servers
    # hold half the capacity; in proportion to capacity, 8/16 * 7/15 = 23 % (seeds 1-5: 25-27 %,
    # the reference weight sitting just under the highest between draws of a fast server).
    assert 0.19 < both_slow(p2c(pool, seed=2), pool, slow) < 0.30


def test_configured_weight_multiplies_observed_capacity() -> None:
    pool = servers(*[4] * 8, 1, 1)
    for s in pool[:8]:
        answered(s, 40.0)  # 4 times as slow, but 4 times the weight
    for s in pool[8:]:
        answered(s, 10.0)
    slow = {s.id for s in pool[:8]}
    assert 0.58 < both_slow(p2c(pool, seed=2), pool, slow) < 0.66  # as uniform: 28/45


def test_a_server_failing_fast_is_drawn_rarely_yet_still_drawn() -> None:
    pool = servers(*[1] * 10)
    for s in pool:
        answered(s, 50.0)
    failing = pool[0]
    answered(failing, 0.5, error_rate=0.99)  # answers 100 times as fast, but nearly always fails
    strategy = p2c(pool, seed=3)
    drawn = sum(1 for _ in range(4000) if failing.id in strategy.choose(pool).memo)
    # Uniform draws would include it 800 times; at MIN_SHARE of the heaviest's rate, about 55:
    # enough for its outcomes to show a recovery.
    assert 15 < drawn < 150, drawn


def test_a_server_not_known_yet_is_drawn_as_often_as_the_heaviest() -> None:
    pool = servers(*[1] * 10)
    for s in pool[1:]:
        answered(s, 10.0)
    new = pool[0]  # no outcome, no load report
    strategy = p2c(pool, seed=4)
    drawn = sum(1 for _ in range(4000) if new.id in strategy.choose(pool).memo)
    assert 680 < drawn < 920, drawn  # uniform: 4000 * 2 / 10


class _CountingCandidates(Sequence[Backend]):
    """A candidate list that counts how many items a decision reads."""

    def __init__(self, items: list[Backend]) -> None:
        self._items = items
        self.reads = 0

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, i: int) -> Backend: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Backend]: ...
    def __getitem__(self, i: int | slice) -> Backend | Sequence[Backend]:
        self.reads += 1
        return self._items[i]


@pytest.mark.parametrize("choice_count", [2, 5])
def test_decision_reads_choice_count_candidates_not_all(choice_count: int) -> None:
    items = servers(*[1] * 10_000)
    candidates = _CountingCandidates(items)
    strategy = p2c(items, choice_count=choice_count)
    for _ in range(10):
        strategy.choose(candidates)
    assert candidates.reads == 10 * choice_count


def test_decision_reads_a_bounded_number_of_candidates_when_capacities_differ() -> None:
    items = servers(*[1] * 10_000)
    for i, s in enumerate(items):
        answered(s, 10.0 * (1 + i % 8))  # speeds 1 to 8
    candidates = _CountingCandidates(items)
    strategy = p2c(items)
    most = 0
    for _ in range(500):
        before = candidates.reads
        strategy.choose(candidates)
        most = max(most, candidates.reads - before)
    assert most <= 2 * MAX_DRAWS
    # A draw is kept with probability capacity / highest: about 2.9 draws per candidate here.
    assert candidates.reads <= 500 * 2 * 4


def test_params_parse_and_default() -> None:
    assert parse_params(P2C.Params, {}, "pool.strategy_params") == P2CParams(choice_count=2)
    # A protobuf Struct carries every number as a float.
    assert parse_params(P2C.Params, {"choice_count": 3.0}, "pool.strategy_params").choice_count == 3
    assert P2C.name == "p2c"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"choice_count": 1}, "choice_count"),
        ({"choice_count": 17}, "choice_count"),
        ({"choice_count": "two"}, "choice_count"),
        ({"choice_count": 2.5}, "choice_count"),
        ({"choice_count": True}, "choice_count"),
        ({"choices": 2}, "choices"),
    ],
)
def test_invalid_params_name_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_params(P2C.Params, values, "pool.strategy_params")
    assert err.value.field == f"pool.strategy_params.{field}"
