"""Learning strategies learn: in process, the real decision core driven by the seeded simulator.

Five servers, one five times slower, Poisson arrivals at 75 % of capacity.
Round robin gives the slow server a fifth of the traffic, three times what it
can serve, so its queue grows for the whole run. A strategy that learns from
outcomes must send it little after warm-up and beat round robin's mean latency
on the same arrivals (same seed).
"""

from __future__ import annotations

import functools

import pytest

from loadwarden.backend_sim import Arrivals, Scenario, SimServer, Summary, capacity_per_s, simulate
from loadwarden.policy.strategies import STRATEGIES

SPEEDS = (5, 5, 5, 5, 1)
SLOW = "s5"
SEED = 7
LOAD = 0.75
REQUESTS = 20_000
WARMUP = 5_000
MAX_SLOW_SHARE = 0.10


def scenario() -> Scenario:
    servers = tuple(SimServer(f"s{i}", speed=speed, workers=2, base_ms=20.0) for i, speed in enumerate(SPEEDS, 1))
    arrivals = Arrivals(rate_per_s=LOAD * capacity_per_s(servers), requests=REQUESTS)
    return Scenario(servers, arrivals, seed=SEED)


@functools.cache
def run(strategy: str) -> Summary:
    if strategy not in STRATEGIES:
        pytest.fail(f"strategy {strategy!r} is not registered; registered: {', '.join(sorted(STRATEGIES))}")
    return simulate(scenario(), strategy).summary(warmup=WARMUP)


def describe(strategy: str, summary: Summary) -> str:
    shares = ", ".join(f"{sid} {share:.3f}" for sid, share in summary.share.items())
    return (
        f"{strategy} (seed {SEED}, load {LOAD}, {REQUESTS} requests, warm-up {WARMUP}): mean "
        f"{summary.mean_ms:.1f} ms, p99 {summary.p99_ms:.1f} ms, explored {summary.explored_rate:.3f}; "
        f"shares {shares}"
    )


@pytest.fixture
def round_robin() -> Summary:
    return run("round_robin")


def test_round_robin_overloads_the_slow_server(round_robin: Summary) -> None:
    # The scenario matters: spreading evenly is much worse than serving from the fast servers.
    assert round_robin.share[SLOW] == pytest.approx(0.2, abs=0.001)
    assert round_robin.mean_ms > 10 * run("least_connections").mean_ms


@pytest.mark.parametrize("strategy", ["least_connections", "q_learning", "q_linear"])
def test_strategy_avoids_the_slow_server_and_beats_round_robin(strategy: str, round_robin: Summary) -> None:
    summary = run(strategy)

    detail = f"{describe(strategy, summary)}; {describe('round_robin', round_robin)}"
    assert summary.share[SLOW] < MAX_SLOW_SHARE, detail
    assert summary.mean_ms < round_robin.mean_ms, detail
