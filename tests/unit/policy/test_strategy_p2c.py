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
