"""least_connections' cost index and round_robin's deadline schedule: pure, seeded, fake clock.

Both keep state across decisions instead of scanning every candidate, so each
test checks that state against what a scan would say, through long seeded
sequences of the changes the kernel makes (picks, outcomes, expiries, excludes,
removals, re-weighting, peer counts).
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections import Counter

import pytest

from loadwarden.policy._errors import NotFound
from loadwarden.policy._model import Backend
from loadwarden.policy.strategies import Feedback, Strategy, StrategyContext, build_strategy, round_robin
from loadwarden.policy.strategies._sampling import overdue_load
from loadwarden.server import CoreLimits, DecisionCore, ManualClock, PoolSettings, ServerSpec
from loadwarden.server.engine._core import OutcomeReport

# Upper 0.1 % points of the chi-square distribution, by degrees of freedom.
CHI2_999 = {3: 16.27, 7: 24.32, 9: 27.88}


def servers(*weights: int) -> list[Backend]:
    return [Backend(id=f"s{i}", address=f"h:{i}", weight=w) for i, w in enumerate(weights, 1)]


def strategy(name: str, seed: int = 1) -> Strategy:
    return build_strategy(name, {}, StrategyContext(clock=ManualClock(), rng=random.Random(seed)), "pool")


def cost(server: Backend, now: float = 0.0) -> float:
    return (server.in_flight_total + overdue_load(server, now)) / server.effective_weight


def chi_square(counts: Counter[str], expected: dict[str, float]) -> float:
    return sum((counts[sid] - e) ** 2 / e for sid, e in expected.items())


# --- least_connections ---------------------------------------------------------------


def test_least_connections_picks_a_true_minimum_through_a_random_core_run() -> None:
    """Selections, outcomes, expiries, excludes, removals, re-weighting and peer counts in the
    real core; every pick must be of minimal cost among the candidates a scan sees."""
    clock = ManualClock()
    core = DecisionCore(CoreLimits(decision_ttl_ms=1_000), clock=clock, rng=random.Random(7))
    rng = random.Random(11)
    specs = {f"s{i}": ServerSpec(f"s{i}", f"h:{i}", rng.randint(1, 5)) for i in range(40)}
    core.configure_pool(PoolSettings(name="p", strategy="least_connections"), list(specs.values()))
    pool = core.pool("p")
    pending: list[str] = []
    indexed = overdue = 0
    for step in range(6_000):
        roll = rng.random()
        if roll < 0.55 or not pending:
            exclude = set(rng.sample(sorted(pool.servers), 3)) if rng.random() < 0.1 else set()
            core.expire()  # settles what select would only after choosing
            candidates = pool.eligible(clock.monotonic(), exclude)
            indexed += candidates is pool.eligible(clock.monotonic(), exclude)
            costs = {s.id: cost(s, clock.monotonic()) for s in candidates}
            overdue += any(overdue_load(s, clock.monotonic()) for s in candidates)
            selection = core.select("p", exclude)
            chosen = selection.server
            assert chosen in candidates and costs[chosen.id] == min(costs.values()), step
            pending.append(selection.decision_id)
        elif roll < 0.85:
            decision = pending.pop(rng.randrange(len(pending)))
            with contextlib.suppress(NotFound):  # it may have expired already
                core.report_outcomes([OutcomeReport(decision, rng.random() < 0.97, 5.0)])
        elif roll < 0.90:
            clock.advance(rng.choice((0.1, 0.6)))  # some decisions expire: settled without an outcome
        elif roll < 0.93:
            for server in pool.servers.values():  # what exchange_in_flight does
                server.peer_in_flight = rng.randint(0, 4) if rng.random() < 0.3 else server.peer_in_flight
            pool.invalidate()
        elif roll < 0.96 and len(pool.servers) > 10:
            core.deregister_server("p", rng.choice(sorted(pool.servers)))  # its decisions still settle
        else:
            sid = f"s{rng.randrange(50)}"
            core.register_server("p", ServerSpec(sid, f"h:{sid}", rng.randint(1, 5)))
    assert indexed > 2_000  # the standing list came back as the same object: the index was used
    assert overdue > 500, overdue  # picks with servers whose requests went long unanswered among the candidates


def test_least_connections_index_follows_choose_and_observe() -> None:
    """Driven by hand: a standing list, one-off lists, and feedback for a server no longer listed."""
    rng = random.Random(5)
    lc = strategy("least_connections", seed=2)
    pool = servers(*(rng.randint(1, 4) for _ in range(30)))
    standing = list(pool)
    in_flight: list[Backend] = []
    for step in range(5_000):
        roll = rng.random()
        if roll < 0.6 or not in_flight:
            candidates = standing if rng.random() < 0.9 else [s for s in standing if rng.random() < 0.8] or standing
            chosen = lc.choose(candidates).server
            assert cost(chosen) == min(cost(s) for s in candidates), step
            chosen.in_flight += 1
            in_flight.append(chosen)
        elif roll < 0.97:
            server = in_flight.pop(rng.randrange(len(in_flight)))
            server.in_flight -= 1
            lc.observe(Feedback(server, True, 1.0))
        else:  # a server leaves and another joins: a new standing list
            gone = standing.pop(rng.randrange(len(standing)))
            lc.forget(gone.id)
            standing = [*standing, Backend(id=f"n{step}", address="h:n", weight=rng.randint(1, 4))]
    assert in_flight  # feedback for departed servers was delivered along the way


def test_least_connections_spreads_ties_uniformly_on_the_indexed_path() -> None:
    lc = strategy("least_connections", seed=3)
    cands = servers(*[1] * 8)
    counts: Counter[str] = Counter()
    for _ in range(8_000):  # every server always idle again before the next pick: all tied
        chosen = lc.choose(cands).server
        counts[chosen.id] += 1
        chosen.in_flight += 1
        chosen.in_flight -= 1
        lc.observe(Feedback(chosen, True, 1.0))
    assert chi_square(counts, {s.id: 1_000.0 for s in cands}) < CHI2_999[7], counts


def test_least_connections_ties_of_unequal_weights_and_loads_spread_uniformly() -> None:
    a, b, c, d = cands = servers(1, 2, 2, 4)
    a.in_flight, b.in_flight, c.in_flight, d.in_flight = 1, 2, 2, 4  # all cost 1.0
    lc = strategy("least_connections", seed=4)
    counts = Counter(lc.choose(cands).server.id for _ in range(4_000))  # choose only: nothing moves
    assert chi_square(counts, {s.id: 1_000.0 for s in cands}) < CHI2_999[3], counts


def test_least_connections_is_reproducible() -> None:
    def run() -> list[str]:
        lc = strategy("least_connections", seed=9)
        cands = servers(3, 1, 2, 2, 1, 3)
        seq = []
        for i in range(500):
            chosen = lc.choose(cands).server
            chosen.in_flight += 1
            seq.append(chosen.id)
            if i % 3:
                done = cands[i % len(cands)]
                done.in_flight = max(0, done.in_flight - 1)
                lc.observe(Feedback(done, True, 1.0))
        return seq

    assert run() == run()


# --- round_robin -----------------------------------------------------------------------


def test_round_robin_rotates_exactly_when_weights_are_equal() -> None:
    rr = strategy("round_robin")
    cands = servers(*[3] * 5)
    assert [rr.choose(cands).server.id for _ in range(12)] == [f"s{1 + i % 5}" for i in range(12)]


def assert_prefix_shares(rr: Strategy, cands: list[Backend], picks: int) -> Counter[str]:
    """Each server's picks are 1/weight apart on the virtual clock and its next one lies within
    one period: after k picks its count is within 1 + n * weight / total of its share."""
    total, n = sum(s.effective_weight for s in cands), len(cands)
    counts: Counter[str] = Counter()
    for k in range(1, picks + 1):
        counts[rr.choose(cands).server.id] += 1
        for s in cands:
            w = s.effective_weight
            assert abs(counts[s.id] - k * w / total) < 1 + n * w / total, (k, s.id, counts)
    return counts


def test_round_robin_shares_follow_weights_at_every_prefix() -> None:
    weights = (1, 2, 3, 5, 9)
    counts = assert_prefix_shares(strategy("round_robin", seed=6), servers(*weights), 20_000)
    assert counts == {f"s{i}": 1_000 * w for i, w in enumerate(weights, 1)}


def test_round_robin_reweighting_scales_the_wait() -> None:
    cands = servers(1, 2, 1)
    rr = strategy("round_robin", seed=14)
    for _ in range(7):
        rr.choose(cands)
    cands[2].effective_weight = 100.0  # what the pool does on a re-registration: a new list follows
    # s3 waits 1/100 of what was left of its old period, not all of it.
    assert_prefix_shares(rr, list(cands), 2_000)


def assert_interleaved(seq: list[str], weights: dict[str, int]) -> None:
    """Each server's picks are 1/weight apart on the virtual clock, so none comes in a long burst."""
    for sid, weight in weights.items():
        others = [w for other, w in weights.items() if other != sid]
        longest = max((len(list(run)) for s, run in itertools.groupby(seq) if s == sid), default=0)
        assert longest <= weight // max(others) + 1, (sid, longest)
        # Between two of its picks, each other server fits at most weight_j // weight + 1 picks.
        at = [i for i, s in enumerate(seq) if s == sid]
        widest = max((b - a for a, b in itertools.pairwise(at)), default=0)
        assert widest <= 1 + sum(w // weight + 1 for w in others), (sid, widest)


def test_round_robin_interleaves_instead_of_bursting() -> None:
    rr = strategy("round_robin", seed=8)
    cands = servers(5, 1, 1, 3, 8, 2)
    seq = [rr.choose(cands).server.id for _ in range(5_000)]
    assert_interleaved(seq, {s.id: s.weight for s in cands})


def test_round_robin_a_new_list_of_the_same_servers_changes_nothing() -> None:
    cands = servers(4, 1, 2, 8, 1)
    steady, renewed = strategy("round_robin", seed=10), strategy("round_robin", seed=10)
    first = [steady.choose(cands).server.id for _ in range(3_000)]
    second = [renewed.choose(cands if i % 7 else list(cands)).server.id for i in range(3_000)]
    assert first == second


def test_round_robin_keeps_the_others_in_step_across_excludes_and_removals() -> None:
    rng = random.Random(12)
    cands = servers(*(rng.randint(1, 5) for _ in range(20)))
    rr = strategy("round_robin", seed=13)
    counts: Counter[str] = Counter()
    for i in range(40_000):
        if i % 10 == 0:  # a request excluding one server: a one-off list
            skip = cands[rng.randrange(len(cands))]
            counts[rr.choose([s for s in cands if s is not skip]).server.id] += 1
        else:
            counts[rr.choose(cands).server.id] += 1
    total = sum(s.weight for s in cands)
    for server in cands:
        assert abs(counts[server.id] / 40_000 - server.weight / total) < 0.01, (server.id, counts)
    # One server leaves (a new list, as the pool hands over); the others keep their deadlines.
    rr.forget(cands[0].id)
    cands = cands[1:]
    seq = [rr.choose(cands).server.id for _ in range(2_000)]
    assert_interleaved(seq, {s.id: s.weight for s in cands})


def test_round_robin_rebases_its_clock_without_a_hitch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(round_robin, "REBASE_AFTER", 4.0)
    rr = strategy("round_robin", seed=15)
    cands = servers(3, 1, 2)
    assert_prefix_shares(rr, cands, 3_000)  # 500 units of virtual time: rebased about 125 times
    assert isinstance(rr, round_robin.RoundRobin) and rr._now <= 4.0 + 1.0
