"""prequal in the simulator: probes answered by the simulated servers after a probe delay.

Behaviour, never speed: on the shipped scenarios prequal keeps traffic off slow servers
where round robin does not, its probes arrive when the delay says, and a run is the
same record for record under one seed, central and local.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from loadwarden.backend_sim import Arrivals, Scenario, SimResult, SimServer, load_scenario, simulate
from loadwarden.backend_sim._sim import _Server

SCENARIOS = Path(__file__).resolve().parents[3] / "scenarios"


def shipped(name: str, strategy: str, requests: int, **options: Any) -> SimResult:
    spec = load_scenario(SCENARIOS / f"{name}.toml", requests=requests).for_simulate()
    return simulate(spec.scenario(), strategy, spec.strategy_params(strategy), **options)


def share(result: SimResult, prefix: str, since_s: float = 0.0, until_s: float = float("inf")) -> float:
    """The share of the requests arriving in [since_s, until_s) that went to servers named ``prefix``*."""
    picked = [r.server for r in result.records if since_s <= r.time_s < until_s]
    return sum(1 for s in picked if s.startswith(prefix)) / len(picked)


def success(result: SimResult) -> float:
    return sum(r.success for r in result.records) / len(result.records)


def test_heterogeneous_prequal_sends_the_slow_servers_less_than_round_robin() -> None:
    rr, pq = (shipped("heterogeneous", s, 12_000) for s in ("round_robin", "prequal"))

    # Round robin gives the two slow servers a fifth each, less what their ejections spare them.
    assert share(rr, "slow") > 0.3
    assert share(pq, "slow") < 0.25  # their capacity is a fifth of the pool's
    assert share(pq, "fast") > 0.3
    assert pq.summary(warmup=1_000).p99_ms < 0.2 * rr.summary(warmup=1_000).p99_ms
    assert pq.strategy_stats["probes_received"] > 2.5 * 12_000  # 3 a decision, all answered


def test_one_slow_prequal_keeps_off_the_slow_server_while_it_is_slow() -> None:
    rr, pq = (shipped("one-slow", s, 4_000) for s in ("round_robin", "prequal"))

    assert share(rr, "b-10", 6, 35) == pytest.approx(1 / 11, abs=0.02)
    assert share(pq, "b-10", 6, 35) < 0.02
    assert pq.counters["timed_out"] < 0.2 * rr.counters["timed_out"]


def test_load_ramp_prequal_serves_more_and_faster_than_round_robin() -> None:
    # The first 40,000 arrivals: the ramp's first 45 s or so, from 50 % to about 90 % of capacity.
    rr, pq = (shipped("load-ramp", s, 40_000) for s in ("round_robin", "prequal"))

    assert share(pq, "slow") < 0.5 * share(rr, "slow")
    assert success(pq) == 1.0 > success(rr)
    assert pq.summary(warmup=1_000).p99_ms < 200


def test_the_same_seed_gives_the_same_run_central_and_local() -> None:
    for options in ({}, {"decisions": "local", "clients": 3}):
        first, again = (shipped("heterogeneous", "prequal", 3_000, **options) for _ in range(2))
        assert first.records == again.records and first.strategy_stats == again.strategy_stats


SPEEDS = (SimServer("slow", base_ms=40), SimServer("mid", speed=2, base_ms=40), SimServer("fast", speed=4, base_ms=40))


def servers_and_load(requests: int = 3_000) -> Scenario:
    """70 % of the three servers' 175 req/s."""
    return Scenario(SPEEDS, Arrivals(122.5, requests=requests), seed=4)


def test_probes_arrive_after_the_probe_delay() -> None:
    prompt = simulate(servers_and_load(), "prequal", probe_delay_ms=0.0)
    # 3,000 arrivals at 122.5/s take about 24 s: answers 30 s late come after the last decision.
    late = simulate(servers_and_load(), "prequal", probe_delay_ms=30_000.0)

    assert prompt.strategy_stats["random"] < 10
    assert late.strategy_stats["random"] == 3_000
    counts = Counter(r.server for r in late.records)
    assert all(900 < n < 1100 for n in counts.values()), counts  # uniform, whatever the speeds


def test_local_clients_probe_the_simulated_servers_too() -> None:
    options: dict[str, Any] = {"decisions": "local", "clients": 2}
    prompt = simulate(servers_and_load(), "prequal", **options)
    late = simulate(servers_and_load(), "prequal", probe_delay_ms=30_000.0, **options)

    assert Counter(r.server for r in prompt.records)["fast"] > 0.45 * 3_000
    assert all(900 < n < 1100 for n in Counter(r.server for r in late.records).values())


def test_strategies_without_probes_ignore_the_probe_delay() -> None:
    plain = simulate(servers_and_load(), "peak_ewma")
    delayed = simulate(servers_and_load(), "peak_ewma", probe_delay_ms=50.0)

    assert plain.records == delayed.records


@pytest.mark.parametrize("delay", [-1.0, float("inf"), float("nan")])
def test_a_bad_probe_delay_names_its_field(delay: float) -> None:
    with pytest.raises(ValueError, match=r"^probe_delay_ms: "):
        simulate(servers_and_load(), "prequal", probe_delay_ms=delay)


def test_a_servers_estimate_follows_its_in_flight_count_and_expires() -> None:
    server = _Server(SimServer("a"), 0)
    assert server.estimate(0, 0.0) == 0.0  # no answer yet: unknown

    server.learn(0, 10.0, 1.0)
    server.learn(2, 30.0, 1.0)
    server.learn(2, 40.0, 1.5)  # the EWMA moves a fifth of the way

    assert server.estimate(2, 2.0) == pytest.approx(32.0)
    assert server.estimate(1, 2.0) == pytest.approx(20.0)  # from RIF 0's 10 ms, times 2 / 1
    assert server.estimate(5, 2.0) == pytest.approx(64.0)  # from RIF 2's, times 6 / 3
    assert server.estimate(2, 7.0) == 0.0  # 5.5 s without an answer
    server.learn(1, 25.0, 7.0)
    assert server.estimate(2, 7.0) == pytest.approx(37.5)  # the old counts were forgotten
