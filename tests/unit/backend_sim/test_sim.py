"""The simulator: seeded, in process, the real decision core; no sockets, no sleeps, no wall clock."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import loadwarden.backend_sim
from loadwarden.backend_sim import (
    Arrivals,
    RequestRecord,
    Scenario,
    SimResult,
    SimServer,
    capacity_per_s,
    simulate,
    summarize,
)

PUBLIC_NAMES = {
    "MAX_REQUESTS",
    "Arrivals",
    "BatchRecord",
    "BatchSettings",
    "ClosedLoop",
    "CoreTiming",
    "LoadRecord",
    "Phase",
    "PlotsUnavailable",
    "ProcessGroup",
    "Progress",
    "Report",
    "RequestLog",
    "RequestRecord",
    "RunningBackend",
    "Scenario",
    "ScenarioError",
    "ScenarioSpec",
    "SimResult",
    "SimServer",
    "SimulatedBackend",
    "StrategyRun",
    "Summary",
    "Surges",
    "Traffic",
    "TrafficPlan",
    "TrafficResult",
    "TrafficRunner",
    "Variant",
    "capacity_per_s",
    "load_scenario",
    "parse_scenario",
    "render_markdown",
    "reward",
    "scenario_schema",
    "simulate",
    "start_backend",
    "summarize",
    "write_plots",
    "write_report",
}


def run(
    servers: tuple[SimServer, ...],
    rate_per_s: float,
    requests: int,
    seed: int = 1,
    strategy: str = "round_robin",
    **scenario: Any,
) -> SimResult:
    arrivals = Arrivals(rate_per_s, requests=requests)
    return simulate(Scenario(servers, arrivals, seed=seed, **scenario), strategy)


def test_public_names_are_pinned() -> None:
    assert sorted(loadwarden.backend_sim.__all__) == sorted(PUBLIC_NAMES)
    assert all(hasattr(loadwarden.backend_sim, name) for name in PUBLIC_NAMES)


# --- determinism ----------------------------------------------------------------


def test_same_seed_gives_identical_results_and_another_seed_differs() -> None:
    servers = (SimServer("a", speed=2, workers=2), SimServer("b"), SimServer("c", failure_probability=0.1))
    first = run(servers, 300, 3_000, seed=5, strategy="least_connections")
    again = run(servers, 300, 3_000, seed=5, strategy="least_connections")
    other = run(servers, 300, 3_000, seed=6, strategy="least_connections")

    assert first.records == again.records and first.loads == again.loads and first.end_s == again.end_s
    assert first.summary() == again.summary()
    assert first.records != other.records


def test_strategies_see_identical_traffic_under_one_seed() -> None:
    servers = (SimServer("a"), SimServer("b", speed=3))
    rr = run(servers, 200, 2_000, seed=9, strategy="round_robin")
    lc = run(servers, 200, 2_000, seed=9, strategy="least_connections")

    assert [r.time_s for r in rr.records] == [r.time_s for r in lc.records]
    assert [r.server for r in rr.records] != [r.server for r in lc.records]


# --- queueing theory ------------------------------------------------------------


def test_mm1_mean_latency_matches_theory() -> None:
    # M/M/1, mu = 100/s, lambda = 50/s: W = 1 / (mu - lambda) = 20 ms.
    summary = run((SimServer("a", base_ms=10.0),), 50, 30_000, seed=3).summary()

    assert summary.mean_ms == pytest.approx(20.0, rel=0.06)
    assert summary.throughput_per_s == pytest.approx(50, rel=0.05)


def test_md1_constant_service_matches_pollaczek_khinchine() -> None:
    # M/D/1, service 10 ms, rho = 0.5: W = 10 + rho * 10 / (2 (1 - rho)) = 15 ms.
    summary = run((SimServer("a", service="constant"),), 50, 30_000, seed=3).summary()

    assert summary.mean_ms == pytest.approx(15.0, rel=0.06)
    assert summary.p50_ms >= 10.0  # never faster than the service time


def test_workers_serve_in_parallel_like_mmc() -> None:
    # M/M/2, mu = 100/s per worker, lambda = 150/s: Erlang C gives W = 22.857 ms.
    summary = run((SimServer("a", workers=2),), 150, 30_000, seed=3).summary()

    assert summary.mean_ms == pytest.approx(22.857, rel=0.08)


def test_latency_grows_with_load() -> None:
    servers = (SimServer("a", workers=2), SimServer("b", speed=2, workers=2))
    capacity = capacity_per_s(servers)
    means = [
        run(servers, load * capacity, 5_000, strategy="least_connections").summary().mean_ms
        for load in (0.2, 0.5, 0.8, 0.95)
    ]

    assert means == sorted(means) and means[-1] > 2 * means[0]


# --- servers, routing, reports --------------------------------------------------


def test_failure_probability_is_honoured_per_server() -> None:
    servers = (SimServer("ok"), SimServer("flaky", failure_probability=0.25), SimServer("dead", failure_probability=1))
    result = run(servers, 100, 12_000)

    by_server = {sid: [r.success for r in result.records if r.server == sid] for sid in ("ok", "flaky", "dead")}
    assert all(by_server["ok"])
    assert not any(by_server["dead"])
    assert by_server["flaky"].count(False) / len(by_server["flaky"]) == pytest.approx(0.25, abs=0.025)
    assert result.summary().success_rate == sum(r.success for r in result.records) / len(result.records)
    assert max(r.error_rate for r in result.loads if r.server == "dead") == 1.0
    assert max(r.error_rate for r in result.loads if r.server == "ok") == 0.0


def test_capacity_helper_sums_workers_times_speed_over_base_ms() -> None:
    servers = (SimServer("a", speed=2, workers=3, base_ms=20), SimServer("b", base_ms=5), SimServer("c", speed=0.5))

    assert capacity_per_s(servers) == pytest.approx(300 + 200 + 50)
    assert servers[0].capacity_per_s == pytest.approx(300)


def test_round_robin_spreads_evenly() -> None:
    servers = tuple(SimServer(f"s{i}", speed=1 + i) for i in range(4))
    result = run(servers, 100, 4_000)

    assert Counter(r.server for r in result.records) == {f"s{i}": 1_000 for i in range(4)}
    assert result.summary().share == {f"s{i}": 0.25 for i in range(4)}


def test_load_reports_carry_utilisation_every_interval() -> None:
    # One server at rho = 0.5: the busy fraction averages 50 %.
    result = run((SimServer("a"),), 50, 20_000, load_report_interval_ms=500)

    times = [r.time_s for r in result.loads]
    assert times == pytest.approx([0.5 * i for i in range(len(times))])  # one report at the start
    assert times[-1] >= result.end_s
    cpu = [r.cpu_percent for r in result.loads]
    assert all(0.0 <= c <= 100.0 for c in cpu)
    assert sum(cpu) / len(cpu) == pytest.approx(50.0, abs=3.0)
    assert max(r.active_requests for r in result.loads) >= 1
    assert result.loads[-1].active_requests == 0


def test_duration_bounds_the_arrivals() -> None:
    arrivals = Arrivals(rate_per_s=400, duration_s=5.0)
    result = simulate(Scenario((SimServer("a", speed=10),), arrivals, seed=2))

    assert all(r.time_s <= 5.0 for r in result.records)
    assert len(result.records) == pytest.approx(2_000, rel=0.1)
    assert result.expired == 0


def test_requests_and_duration_stop_at_whichever_comes_first() -> None:
    arrivals = Arrivals(rate_per_s=400, requests=100, duration_s=5.0)
    result = simulate(Scenario((SimServer("a", speed=10),), arrivals))

    assert len(result.records) == 100


def test_timer_measures_only_core_calls() -> None:
    ticks = itertools.count()  # each timer call advances one "second"

    result = simulate(Scenario((SimServer("a"),), Arrivals(50, requests=200)), timer=lambda: float(next(ticks)))

    assert result.timing is not None
    assert (result.timing.selects, result.timing.outcome_calls) == (200, 200)
    assert result.timing.select_s == 200.0 and result.timing.outcome_s == 200.0
    assert result.timing.select_us == pytest.approx(1e6)
    assert simulate(Scenario((SimServer("a"),), Arrivals(50, requests=10))).timing is None


# --- summary --------------------------------------------------------------------


def test_summary_percentiles_shares_and_learning_curve() -> None:
    records = [RequestRecord(i * 0.01, "a" if i % 4 else "b", float(i + 1), i != 0, i < 10) for i in range(1_000)]

    summary = summarize(records, ["a", "b", "c"], curve_window=100)

    assert summary.requests == 1_000
    assert (summary.p50_ms, summary.p95_ms, summary.p99_ms, summary.p999_ms) == (500.0, 950.0, 990.0, 999.0)
    assert summary.mean_ms == pytest.approx(500.5)
    assert summary.share == {"a": 0.75, "b": 0.25, "c": 0.0}
    assert summary.success_rate == pytest.approx(0.999) and summary.explored_rate == pytest.approx(0.01)
    assert len(summary.learning_curve) == 10
    assert summary.learning_curve[0] == pytest.approx(-5.05)  # mean of -latency/10 over 1..100 ms
    assert summarize(records, ["a", "b"], warmup=900).requests == 100


def test_learning_curve_reflects_a_queue_building_up() -> None:
    # Arrivals above capacity: every window waits longer than the one before.
    summary = run((SimServer("a"),), 150, 3_000).summary(curve_window=500)

    assert len(summary.learning_curve) == 6
    assert list(summary.learning_curve) == sorted(summary.learning_curve, reverse=True)


# --- validation -----------------------------------------------------------------

ONE = (SimServer("a"),)
LOAD = Arrivals(10, requests=10)


def test_scenario_takes_a_list_of_servers_as_a_tuple() -> None:
    assert Scenario([SimServer("a")], LOAD).servers == (SimServer("a"),)  # type: ignore[arg-type]  # a list on purpose: it is coerced to a tuple


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: SimServer(""), "id"),
        (lambda: SimServer("a", speed=0), "speed"),
        (lambda: SimServer("a", speed=float("nan")), "speed"),
        (lambda: SimServer("a", workers=0), "workers"),
        (lambda: SimServer("a", workers=1.5), "workers"),  # type: ignore[arg-type]  # a wrong type on purpose: the check under test
        (lambda: SimServer("a", base_ms=-1), "base_ms"),
        (lambda: SimServer("a", service="gamma"), "service"),
        (lambda: SimServer("a", failure_probability=1.5), "failure_probability"),
        (lambda: SimServer("a", weight=0), "weight"),
        (lambda: Arrivals(0, requests=10), "rate_per_s"),
        (lambda: Arrivals(10), "requests"),
        (lambda: Arrivals(10, requests=0), "requests"),
        (lambda: Arrivals(10, requests=True), "requests"),
        (lambda: Arrivals(10, duration_s=0), "duration_s"),
        (lambda: Arrivals(1e6, duration_s=1e6), "duration_s"),
        (lambda: Scenario((), LOAD), "servers"),
        (lambda: Scenario((SimServer("a"), "b"), LOAD), "servers[1]"),  # type: ignore[arg-type]  # a wrong type on purpose: the check under test
        (lambda: Scenario((SimServer("a"), SimServer("a")), LOAD), "servers[1].id"),
        (lambda: Scenario(ONE, None), "arrivals"),  # type: ignore[arg-type]  # a wrong type on purpose: the check under test
        (lambda: Scenario(ONE, LOAD, seed=1.5), "seed"),  # type: ignore[arg-type]  # a wrong type on purpose: the check under test
        (lambda: Scenario(ONE, LOAD, load_report_interval_ms=0), "load_report_interval_ms"),
        (lambda: Scenario(ONE, LOAD, pool=""), "pool"),
        (lambda: simulate(Scenario(ONE, LOAD), "no_such_strategy"), "strategy"),
        (lambda: simulate(Scenario(ONE, LOAD), "round_robin", {"bogus": 1}), "strategy_params.bogus"),
        (lambda: run(ONE, 10, 10).summary(warmup=10), "warmup"),
        (lambda: run(ONE, 10, 10).summary(curve_window=0), "curve_window"),
    ],
)
def test_config_errors_name_the_field(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ValueError) as caught:
        make()
    assert str(caught.value).startswith(f"{field}: ")
