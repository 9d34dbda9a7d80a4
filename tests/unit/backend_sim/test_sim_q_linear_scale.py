"""q_linear in the simulator at scale and past capacity, scaled down from the shipped scenarios.

Behaviour, never speed: with 200 servers of four speeds (``large.toml``'s mix, a fifth of
it) q_linear's p99 stays near least connections', which sees the whole pool where
q_linear scores 8 random servers; past capacity (``load-ramp.toml``'s servers) it
serves as many requests as least connections and keeps its latencies under the timeout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadwarden.backend_sim import SimResult, load_scenario, simulate

SCENARIOS = Path(__file__).resolve().parents[3] / "scenarios"

# large.toml's 500 / 300 / 150 / 50 servers of speeds 1, 2, 4 and 0.5, divided by 5.
LARGE_200 = [
    {"id": "s1", "count": 100, "speed": 1, "base_ms": 50},
    {"id": "s2", "count": 60, "speed": 2, "base_ms": 50},
    {"id": "s4", "count": 30, "speed": 4, "base_ms": 50},
    {"id": "slow", "count": 10, "speed": 0.5, "base_ms": 50},
]


def shipped(name: str, strategy: str, **overrides: Any) -> tuple[SimResult, float]:
    """The run and the scenario's warm-up, s."""
    spec = load_scenario(SCENARIOS / f"{name}.toml", **overrides).for_simulate()
    return simulate(spec.scenario(), strategy, spec.strategy_params(strategy)), spec.warmup_s


def share(result: SimResult, prefix: str) -> float:
    picked = [r.server for r in result.records if r.server]
    return sum(1 for s in picked if s.startswith(f"{prefix}-")) / len(picked)


def test_200_servers_at_80_percent_q_linear_keeps_near_least_connections() -> None:
    # 30,000 requests: about 150 a server, enough to learn what a place in each line costs.
    runs = {s: shipped("large", s, backends=LARGE_200, requests=30_000) for s in ("least_connections", "q_linear")}
    lc, ql = (result.summary(warmup_s=warmup) for result, warmup in runs.values())

    assert ql.success_rate == lc.success_rate == 1.0
    assert ql.p99_ms < 1.1 * lc.p99_ms  # 177 ms against 197 (seed 1); 575 before per-place costs
    # The slow servers hold 1.4 % of the capacity; a request in their line waits the longest.
    assert share(runs["q_linear"][0], "slow") < 0.014


def test_past_capacity_q_linear_serves_as_many_as_least_connections_and_sooner() -> None:
    # load-ramp's 8 servers under 1.1x to 1.5x their capacity from a cold start: every line
    # grows until max_in_flight (1,000) drops arrivals.
    traffic = {"load": 1.1, "load_end": 1.5, "duration_s": 30}
    (lc, warmup), (ql, _) = (shipped("load-ramp", s, traffic=traffic) for s in ("least_connections", "q_linear"))
    lc_summary, ql_summary = lc.summary(warmup_s=warmup), ql.summary(warmup_s=warmup)

    # Success is bound by the servers' capacity: 77.93 % against 77.80 (seed 1).
    assert ql_summary.success_rate >= lc_summary.success_rate - 0.001
    # Least connections fills each line alike, so the slow servers' wait past the 2 s timeout;
    # q_linear fills them by what a place costs, so none does.
    assert ql.counters["timed_out"] < 0.05 * lc.counters["timed_out"]
    assert lc_summary.p99_ms == 2000.0  # the timeout
    assert ql_summary.p99_ms < 0.9 * lc_summary.p99_ms
