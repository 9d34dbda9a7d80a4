"""peak_ewma: power of d choices on peak-sensitive latency times load; pure, fake clock, seeded."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from loadwarden.policy._errors import InvalidArgument
from loadwarden.policy._model import Backend
from loadwarden.policy._registry import parse_params
from loadwarden.policy.strategies._base import Feedback, StrategyContext
from loadwarden.policy.strategies.peak_ewma import PeakEwma, PeakEwmaParams
from loadwarden.server import ManualClock


def servers(*weights: int) -> list[Backend]:
    return [Backend(id=f"s{i}", address=f"h:{i}", weight=w) for i, w in enumerate(weights, 1)]


def peak_ewma(pool: list[Backend], seed: int = 1, **params: Any) -> tuple[PeakEwma, ManualClock]:
    clock = ManualClock()
    members = {s.id: s for s in pool}
    context = StrategyContext(clock=clock, rng=random.Random(seed), servers=members)
    return PeakEwma(PeakEwmaParams(**params), context), clock


def ewma(strategy: PeakEwma, server: Backend) -> float:
    return strategy._ewma[server.id][0]


def route(
    strategy: PeakEwma, clock: ManualClock, pool: list[Backend], latency_ms: Callable[[Backend], float], n: int
) -> Counter[str]:
    """n decisions, one per 10 ms, each reporting its outcome before the next."""
    got: Counter[str] = Counter()
    for _ in range(n):
        server = strategy.choose(pool).server
        clock.advance(0.010)
        strategy.observe(Feedback(server, True, latency_ms(server)))
        got[server.id] += 1
    return got


def test_server_whose_latency_jumps_loses_traffic_within_20_decisions() -> None:
    pool = servers(1, 1, 1, 1)
    strategy, clock = peak_ewma(pool, seed=5)
    slow: set[str] = set()

    def latency(server: Backend) -> float:
        return 500.0 if server.id in slow else 10.0

    before = route(strategy, clock, pool, latency, 400)
    assert all(70 < n < 130 for n in before.values()), before
    slow.add("s1")
    route(strategy, clock, pool, latency, 20)
    after = route(strategy, clock, pool, latency, 200)
    assert after["s1"] < 20, after  # < 10 %
    assert ewma(strategy, pool[0]) == 500.0  # one slow answer was enough


def test_a_lower_sample_decays_the_average_by_elapsed_time() -> None:
    (s,) = pool = servers(1)
    strategy, clock = peak_ewma(pool, decay_ms=10_000)
    strategy.observe(Feedback(s, True, 100.0))
    assert ewma(strategy, s) == 100.0  # the first sample is the average

    clock.advance(5.0)
    strategy.observe(Feedback(s, True, 20.0))
    w = 1 - math.exp(-5.0 / 10.0)
    expected = 100.0 + w * (20.0 - 100.0)
    assert ewma(strategy, s) == pytest.approx(expected)  # 68.52
    assert ewma(strategy, s) == pytest.approx(68.5224, abs=1e-4)

    clock.advance(5.0)
    strategy.observe(Feedback(s, True, 20.0))
    expected += w * (20.0 - expected)
    assert ewma(strategy, s) == pytest.approx(expected)  # 49.43

    strategy.observe(Feedback(s, True, 1.0))  # no time has passed: weight 0
    assert ewma(strategy, s) == pytest.approx(expected)

    strategy.observe(Feedback(s, True, 200.0))  # a peak replaces the average at once
    assert ewma(strategy, s) == 200.0


def test_shorter_decay_forgets_faster() -> None:
    (s,) = pool = servers(1)
    strategy, clock = peak_ewma(pool, decay_ms=1_000)
    strategy.observe(Feedback(s, True, 100.0))
    clock.advance(5.0)
    strategy.observe(Feedback(s, True, 20.0))
    assert ewma(strategy, s) == pytest.approx(100.0 + (1 - math.exp(-5.0)) * (20.0 - 100.0))  # 20.54


def test_idle_server_is_probed_again_once_its_estimate_decays_below_its_peers() -> None:
    a, b = pool = servers(1, 1)
    strategy, clock = peak_ewma(pool)
    strategy.observe(Feedback(a, True, 500.0))
    strategy.observe(Feedback(b, True, 10.0))
    first_probe = None
    for second in range(1, 60):
        clock.advance(1.0)
        strategy.observe(Feedback(b, True, 10.0))  # b keeps answering in 10 ms
        if strategy.choose(pool).server is a:
            first_probe = second
            break
    # a's estimate as read: 500 * exp(-t / 10 s) < 10 from t > 10 * ln(50) = 39.1 s.
    assert first_probe == 40
    assert ewma(strategy, a) == 500.0  # reading does not change the stored average


def test_cost_multiplies_latency_by_in_flight_plus_one() -> None:
    a, b = pool = servers(1, 1)
    strategy, _ = peak_ewma(pool)
    strategy.observe(Feedback(a, True, 10.0))
    strategy.observe(Feedback(b, True, 50.0))
    a.in_flight = 2  # 10 * 3 = 30 < 50 * 1
    assert strategy.choose(pool).server is a
    a.in_flight = 5  # 10 * 6 = 60 > 50
    assert strategy.choose(pool).server is b


def test_is_weight_aware() -> None:
    a, b = pool = servers(4, 1)
    strategy, _ = peak_ewma(pool)
    strategy.observe(Feedback(a, True, 10.0))
    strategy.observe(Feedback(b, True, 10.0))
    a.in_flight, b.in_flight = 3, 1  # 10 * 4 / 4 = 10 vs 10 * 2 / 1 = 20
    assert all(strategy.choose(pool).server is a for _ in range(50))
    a.effective_weight = 1.0  # ramping up: 10 * 4 / 1 = 40
    assert strategy.choose(pool).server is b


@pytest.mark.parametrize(
    ("penalty_ms", "feedback_args", "expected_ms"),
    [
        (1000.0, (False, 5.0), 1000.0),  # default failure_penalty_ms
        (1000.0, (False, 3000.0), 3000.0),  # a slower failure counts as it is
        (5000.0, (False, 2000.0, None, True), 5000.0),  # expired: latency is the decision TTL
        (0.0, (False, 5.0), 5.0),  # 0 counts the reported latency
    ],
)
def test_failure_counts_as_at_least_the_penalty(
    penalty_ms: float, feedback_args: tuple[Any, ...], expected_ms: float
) -> None:
    (s,) = pool = servers(1)
    strategy, _ = peak_ewma(pool, failure_penalty_ms=penalty_ms)
    strategy.observe(Feedback(s, *feedback_args))
    assert ewma(strategy, s) == expected_ms


def test_server_that_fails_fast_does_not_win_traffic() -> None:
    pool = servers(1, 1, 1)
    strategy, clock = peak_ewma(pool, seed=2)
    got: Counter[str] = Counter()
    for _ in range(300):
        server = strategy.choose(pool).server
        clock.advance(0.010)
        failing = server.id == "s1"
        strategy.observe(Feedback(server, not failing, 1.0 if failing else 50.0))
        got[server.id] += 1
    assert got["s1"] < 10, got


def test_new_server_competes_on_in_flight_with_its_sampled_peer() -> None:
    known, new = pool = servers(1, 1)
    strategy, _ = peak_ewma(pool, seed=4)
    strategy.observe(Feedback(known, True, 10.0))
    got = Counter(strategy.choose(pool).server.id for _ in range(2000))
    assert 900 < got["s2"] < 1100, got  # its share, not every decision
    new.in_flight = 1
    assert all(strategy.choose(pool).server is known for _ in range(50))


def test_configured_default_rtt_prices_new_servers() -> None:
    known, new = pool = servers(1, 1)
    strategy, _ = peak_ewma(pool, default_rtt_ms=1000)
    strategy.observe(Feedback(known, True, 10.0))
    assert all(strategy.choose(pool).server is known for _ in range(50))
    known.in_flight = 200  # 10 * 201 > 1000 * 1
    assert strategy.choose(pool).server is new


def test_unobserved_servers_fall_back_to_least_in_flight() -> None:
    a, b, c = pool = servers(1, 1, 1)
    a.in_flight, b.in_flight, c.in_flight = 2, 0, 1
    strategy, _ = peak_ewma(pool, choice_count=3)
    assert all(strategy.choose(pool).server is b for _ in range(20))


def test_zero_latencies_still_rank_by_in_flight() -> None:
    a, b = pool = servers(1, 1)
    strategy, _ = peak_ewma(pool)
    strategy.observe(Feedback(a, True, 0.0))
    strategy.observe(Feedback(b, True, 0.0))
    a.in_flight = 1
    assert all(strategy.choose(pool).server is b for _ in range(20))


def test_candidates_are_drawn_in_proportion_to_weight_over_latency() -> None:
    pool = servers(*[1] * 10)
    strategy, _ = peak_ewma(pool, seed=2)
    for s in pool:
        strategy.observe(Feedback(s, True, 40.0 if s is not pool[8] and s is not pool[9] else 10.0))
    slow = {s.id for s in pool[:8]}
    both_slow = sum(1 for _ in range(4000) if set(strategy.choose(pool).memo) <= slow) / 4000
    # Uniform pairs would be both slow 28/45 = 62 % of the time, though the slow servers
    # hold half the capacity; in proportion to 1 / latency, 8/16 * 7/15 = 23 % (a little
    # more: the reference weight sits just under the highest between draws of a fast one).
    assert 0.19 < both_slow < 0.30, both_slow


def test_a_server_without_an_estimate_is_drawn_as_often_as_the_heaviest() -> None:
    pool = servers(*[1] * 10)
    strategy, _ = peak_ewma(pool, seed=4)
    for s in pool[1:]:
        strategy.observe(Feedback(s, True, 10.0))
    drawn = sum(1 for _ in range(4000) if pool[0].id in strategy.choose(pool).memo)
    assert 680 < drawn < 920, drawn  # uniform: 4000 * 2 / 10


def test_a_server_whose_estimate_decays_is_drawn_more_often() -> None:
    pool = servers(*[1] * 10)
    strategy, clock = peak_ewma(pool, seed=5)
    for s in pool:
        strategy.observe(Feedback(s, True, 10.0))
    strategy.observe(Feedback(pool[0], True, 400.0))  # a peak: 40 times the others' estimate

    def drawn() -> int:
        return sum(1 for _ in range(2000) if pool[0].id in strategy.choose(pool).memo)

    at_peak = drawn()
    clock.advance(30.0)  # every estimate read decays by exp(-3); pool[0]'s stays 40 times theirs
    for s in pool[1:]:
        strategy.observe(Feedback(s, True, 10.0))  # the others answer again, pool[0] not
    later = drawn()
    # At the peak, MIN_SHARE of the heaviest's rate (about 25 of 2000); 30 s on, 400 * exp(-3)
    # = 20 ms against 10: half their rate (about 210).
    assert at_peak < 60 and later > 150, (at_peak, later)


def test_memo_names_the_sampled_candidates() -> None:
    pool = servers(*[1] * 10)
    strategy, _ = peak_ewma(pool, choice_count=3)
    choice = strategy.choose(pool)
    assert len(set(choice.memo)) == 3 and choice.server.id in choice.memo


def test_same_seed_same_decisions() -> None:
    def run(seed: int) -> list[str]:
        pool = servers(1, 1, 1, 1, 1)
        strategy, clock = peak_ewma(pool, seed=seed)
        out = []
        for i in range(300):
            server = strategy.choose(pool).server
            clock.advance(0.010)
            strategy.observe(Feedback(server, True, 10.0 + 5 * int(server.id[1:]) + i % 7))
            out.append(server.id)
        return out

    assert run(9) == run(9)
    assert run(9) != run(10)


def test_forget_drops_state_and_late_feedback_is_ignored() -> None:
    a, b = pool = servers(1, 1)
    strategy, _ = peak_ewma(pool)
    members = strategy._servers
    assert isinstance(members, dict)  # the pool's own dict, shared with the strategy
    strategy.observe(Feedback(a, True, 10.0))
    strategy.observe(Feedback(b, True, 10.0))
    assert strategy.stats() == {"tracked_servers": 2.0}

    del members["s1"]  # the pool removes a server, then tells the strategy
    strategy.forget("s1")
    strategy.forget("unknown")  # no error
    assert strategy.stats() == {"tracked_servers": 1.0}
    strategy.observe(Feedback(a, False, 2000.0, expired=True))  # its pending decision expires later
    assert strategy.stats() == {"tracked_servers": 1.0}

    members["s1"] = Backend(id="s1", address="h:9", weight=1)  # same id, a new server
    strategy.observe(Feedback(a, True, 10.0))  # feedback for the old one
    assert strategy.stats() == {"tracked_servers": 1.0}


def test_params_parse_and_default() -> None:
    assert parse_params(PeakEwma.Params, {}, "pool.strategy_params") == PeakEwmaParams(
        choice_count=2, decay_ms=10_000.0, failure_penalty_ms=1_000.0, default_rtt_ms=0.0
    )
    parsed = parse_params(PeakEwma.Params, {"decay_ms": 500, "choice_count": 3.0}, "pool.strategy_params")
    assert parsed.decay_ms == 500.0 and parsed.choice_count == 3
    assert PeakEwma.name == "peak_ewma"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"decay_ms": -1.0}, "decay_ms"),
        ({"decay_ms": 0}, "decay_ms"),
        ({"decay_ms": math.inf}, "decay_ms"),
        ({"decay_ms": math.nan}, "decay_ms"),
        ({"decay_ms": "10s"}, "decay_ms"),
        ({"failure_penalty_ms": -1}, "failure_penalty_ms"),
        ({"failure_penalty_ms": math.inf}, "failure_penalty_ms"),
        ({"default_rtt_ms": -5}, "default_rtt_ms"),
        ({"choice_count": 1}, "choice_count"),
        ({"choice_count": 17}, "choice_count"),
        ({"decay": 100}, "decay"),
    ],
)
def test_invalid_params_name_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_params(PeakEwma.Params, values, "pool.strategy_params")
    assert err.value.field == f"pool.strategy_params.{field}"


# --- deciding in a client --------------------------------------------------------------------


def published(**estimates: float) -> dict[str, Any]:
    return {"strategy": "peak_ewma", "version": 1, "estimates": estimates}


def test_published_estimates_seed_servers_the_client_has_not_measured() -> None:
    pool = servers(1, 1)
    strategy, clock = peak_ewma(pool)
    strategy.observe(Feedback(pool[0], True, 40.0))
    strategy.adopt(published(s1=10.0, s2=25.0))
    assert (ewma(strategy, pool[0]), ewma(strategy, pool[1])) == (40.0, 25.0)  # own 40 is higher
    clock.advance(0.010)
    strategy.observe(Feedback(pool[1], True, 5.0))
    assert ewma(strategy, pool[1]) == 5.0  # the first own sample replaces a seed


def test_a_higher_published_estimate_replaces_the_clients_own() -> None:
    """A peak another client saw reaches this one with the next table: no client has to
    find a slow server out by itself."""
    pool = servers(1, 1)
    strategy, clock = peak_ewma(pool)
    strategy.observe(Feedback(pool[0], True, 20.0))
    strategy.observe(Feedback(pool[1], True, 20.0))
    clock.advance(1.0)
    strategy.adopt(published(s1=1000.0, s2=15.0))
    assert ewma(strategy, pool[0]) == 1000.0
    assert Counter(strategy.choose(pool).server.id for _ in range(20)) == Counter(s2=20)
    clock.advance(0.010)
    strategy.observe(Feedback(pool[0], True, 20.0))  # a lower own sample then pulls it down as any sample does
    assert 20.0 < ewma(strategy, pool[0]) < 1000.0


def test_a_lower_published_estimate_leaves_the_clients_own() -> None:
    pool = servers(1)
    strategy, _ = peak_ewma(pool)
    strategy.observe(Feedback(pool[0], True, 300.0))
    strategy.adopt(published(s1=50.0, gone=10.0))
    assert ewma(strategy, pool[0]) == 300.0
    assert "gone" not in strategy._ewma  # only servers of the pool
