"""Evidence before the timeout, in the simulator: on ``one-stuck`` (one backend turns 30x
slower mid-run, every request sent to it is lost) the service's defaults lose at most half
as many requests there as they do without overdue ejection (ejection on failed outcomes
only, as before). Behaviour, never speed; seeded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from loadwarden.backend_sim import SimResult, load_scenario, simulate

SCENARIOS = Path(__file__).resolve().parents[3] / "scenarios"


def run(strategy: str, seed: int, *, overdue: bool) -> SimResult:
    spec = load_scenario(SCENARIOS / "one-stuck.toml", seed=seed).for_simulate()
    scenario = spec.scenario()
    if not overdue:
        settings = {**scenario.pool_settings, "outlier_detection": {"overdue_disabled": True}}
        scenario = dataclasses.replace(scenario, pool_settings=settings)
    return simulate(scenario, strategy, spec.strategy_params(strategy))


def lost(result: SimResult) -> int:
    """Requests sent to the stuck backend after it turned slow that failed."""
    return sum(1 for r in result.records if r.server == "b-10" and r.time_s >= 5.0 and not r.success)


def test_overdue_requests_get_the_stuck_server_ejected_sooner() -> None:
    """round_robin, the default strategy: it keeps sending the stuck server its share until
    outlier detection acts. Seeds 1-3: 15, 14, 14 lost without overdue ejection, 5, 5, 6 with it."""
    before = sum(lost(run("round_robin", seed, overdue=False)) for seed in (1, 2, 3))
    after = sum(lost(run("round_robin", seed, overdue=True)) for seed in (1, 2, 3))
    assert after * 2 <= before, (before, after)


def test_every_strategy_loses_no_more_with_overdue_ejection() -> None:
    for strategy in ("least_connections", "p2c", "peak_ewma", "q_linear"):
        before = lost(run(strategy, 1, overdue=False))
        after = lost(run(strategy, 1, overdue=True))
        assert after <= before + 1, (strategy, before, after)
