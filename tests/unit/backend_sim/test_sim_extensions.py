"""Simulator features behind scenario files: schedules, outages, timeouts, closed loop, drops, ramps.

Pure and seeded: the real decision core in process, virtual time, no sockets.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from loadwarden.backend_sim import (
    Arrivals,
    ClosedLoop,
    Phase,
    RequestRecord,
    Scenario,
    SimServer,
    simulate,
)

NO_EJECTION = {"outlier_detection": {"disabled": True}}


def max_overlap(records: Sequence[RequestRecord]) -> int:
    """Most requests in flight at once (arrival to answer) among those that reached a server."""
    events = []
    for r in records:
        if r.server:
            events.append((r.time_s, 1))
            events.append((r.time_s + r.latency_ms / 1000.0, -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an answer at t frees its place before an arrival at t
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def latencies(records: Sequence[RequestRecord], keep: Callable[[RequestRecord], bool]) -> list[float]:
    return [r.latency_ms for r in records if keep(r)]


# --- schedules ------------------------------------------------------------------------


def test_a_slowdown_phase_raises_latency_inside_it_only() -> None:
    server = SimServer("a", base_ms=10, service="constant", schedule=(Phase(20, 10, slowdown=5),))
    result = simulate(Scenario((server,), Arrivals(5, duration_s=50), seed=4))

    before = latencies(result.records, lambda r: r.time_s < 19.9)
    inside = latencies(result.records, lambda r: 20.5 <= r.time_s < 29.5)
    after = latencies(result.records, lambda r: r.time_s >= 31)
    assert min(before) == pytest.approx(10) and statistics.median(before) == pytest.approx(10)
    assert min(inside) == pytest.approx(50) and statistics.median(inside) >= 50
    assert min(after) == pytest.approx(10) and statistics.median(after) == pytest.approx(10)


def test_a_service_ms_phase_replaces_the_mean_from_when_service_starts() -> None:
    server = SimServer("a", base_ms=10, service="constant", schedule=(Phase(5, 5, service_ms=200),))
    result = simulate(Scenario((server,), Arrivals(2, duration_s=20), seed=2))

    inside = latencies(result.records, lambda r: 5 <= r.time_s < 9.8)
    outside = latencies(result.records, lambda r: r.time_s < 4.9 or r.time_s > 12)
    assert inside and min(inside) == pytest.approx(200)
    assert min(outside) == pytest.approx(10)


def test_an_outage_fails_at_once_then_the_server_goes_stale_and_gets_nothing() -> None:
    down = SimServer("b", schedule=(Phase(5, 20, outage=True),))
    scenario = Scenario(
        (SimServer("a", speed=10), down),
        Arrivals(50, duration_s=40),
        seed=3,
        load_report_interval_ms=100,
        pool_settings={"load_report_ttl_ms": 500, **NO_EJECTION},
    )

    result = simulate(scenario, "round_robin")

    to_b = [r for r in result.records if r.server == "b"]
    failed_fast = [r for r in to_b if 5 <= r.time_s < 25]
    assert failed_fast and all(not r.success and r.latency_ms == 0 for r in failed_fast)
    assert all(r.time_s < 5.7 for r in failed_fast)  # stale after the TTL (+ one interval): no more selections
    assert result.counters["outage"] == len(failed_fast)
    assert any(r.time_s < 5 for r in to_b) and any(r.time_s > 25.2 for r in to_b)  # before and after
    assert not [r for r in result.loads if r.server == "b" and 5 <= r.time_s < 25]
    assert all(r.success for r in result.records if r.server == "a")


def test_with_every_server_down_requests_reach_no_server() -> None:
    server = SimServer("a", schedule=(Phase(2, 5, outage=True),))
    scenario = Scenario(
        (server,),
        Arrivals(20, duration_s=10),
        seed=1,
        load_report_interval_ms=100,
        pool_settings={"load_report_ttl_ms": 300, **NO_EJECTION},
    )

    result = simulate(scenario)

    unrouted = [r for r in result.records if r.server == ""]
    assert unrouted and all(2.1 <= r.time_s < 7.2 and not r.success for r in unrouted)  # last report >= 1.8 s
    assert result.counters["unavailable"] == len(unrouted)
    assert result.summary().unrouted == len(unrouted)
    assert any(r.server == "a" and r.success and r.time_s > 7.2 for r in result.records)  # back


# --- timeouts -------------------------------------------------------------------------


def test_a_timeout_aborts_service_and_frees_the_worker() -> None:
    # Every request needs 1 s but the client waits 300 ms: a server that kept working on
    # abandoned requests would be busy 100 %; one that stops is busy ~ rate x 0.3 s.
    slow = SimServer("a", base_ms=1000, service="constant")
    scenario = Scenario((slow,), Arrivals(1, duration_s=200), seed=5, timeout_ms=300, load_report_interval_ms=10_000)

    result = simulate(scenario)

    assert all(not r.success and r.latency_ms == 300 for r in result.records)
    assert result.counters["timed_out"] == len(result.records)
    busy = statistics.mean(r.cpu_percent for r in result.loads[:-1])
    assert 20 < busy < 32


def test_a_request_that_times_out_in_the_queue_leaves_it() -> None:
    server = SimServer("a", base_ms=100, service="constant")
    scenario = Scenario((server,), Arrivals(15, requests=3_000), seed=6, timeout_ms=250)

    result = simulate(scenario)

    ok = sorted(r.time_s + r.latency_ms / 1000.0 for r in result.records if r.success)
    timed_out = [r for r in result.records if not r.success]
    assert timed_out and ok
    assert all(r.latency_ms == 250 for r in timed_out)
    assert all(r.latency_ms <= 250 for r in result.records)
    # One worker: successful services (100 ms each) never overlap.
    assert all(later - earlier >= 0.1 - 1e-9 for earlier, later in itertools.pairwise(ok))
    # A request waits 250 ms at most: a report counts the one served plus those that arrived since t - 250 ms.
    arrivals = [r.time_s for r in result.records]
    for report in result.loads:
        recent = sum(1 for t in arrivals if report.time_s - 0.25 < t <= report.time_s)
        assert report.active_requests <= 1 + recent
    assert result.counters["timed_out"] == len(timed_out)


# --- traffic shapes ---------------------------------------------------------------------


def test_closed_loop_keeps_at_most_users_in_flight_and_the_server_busy() -> None:
    server = SimServer("a", workers=2, base_ms=10)
    result = simulate(Scenario((server,), ClosedLoop(users=5, requests=6_000), seed=7))

    assert len(result.records) == 6_000
    assert max_overlap(result.records) == 5
    # Five users on two workers with no think time: both workers always busy, 200 req/s.
    assert result.summary().throughput_per_s == pytest.approx(200, rel=0.05)


def test_closed_loop_think_time_slows_the_users_down() -> None:
    server = SimServer("a", workers=8, base_ms=10)
    result = simulate(Scenario((server,), ClosedLoop(users=4, think_ms=90, duration_s=60), seed=8))

    # Each user cycles every ~10 ms service + 90 ms think: ~40 requests/s for 60 s.
    assert len(result.records) == pytest.approx(2_400, rel=0.08)
    assert max_overlap(result.records) <= 4
    assert all(r.time_s <= 60 for r in result.records)


def test_max_in_flight_drops_arrivals_over_the_bound() -> None:
    server = SimServer("a", base_ms=1000, service="constant")
    arrivals = Arrivals(20, requests=200, max_in_flight=5)

    result = simulate(Scenario((server,), arrivals, seed=9))

    dropped = [r for r in result.records if r.server == ""]
    assert len(result.records) == 200 and dropped
    assert all(not r.success and r.latency_ms == 0 and not r.explored for r in dropped)
    assert result.counters["dropped"] == len(dropped) == result.summary().unrouted
    assert max_overlap(result.records) == 5


def test_a_ramp_raises_the_arrival_rate_linearly() -> None:
    servers = (SimServer("a", speed=100),)
    arrivals = Arrivals(100, duration_s=10, rate_end_per_s=300)

    result = simulate(Scenario(servers, arrivals, seed=10))
    again = simulate(Scenario(servers, arrivals, seed=10), "least_connections")

    first = sum(1 for r in result.records if r.time_s < 2)
    last = sum(1 for r in result.records if r.time_s >= 8)
    assert first == pytest.approx(240, rel=0.15)  # integral of 100 + 20 t over [0, 2]
    assert last == pytest.approx(560, rel=0.15)  # over [8, 10]
    assert len(result.records) == pytest.approx(2_000, rel=0.08)
    assert [r.time_s for r in result.records] == [r.time_s for r in again.records]


# --- determinism, progress, validation ----------------------------------------------------


def test_new_features_are_deterministic_under_a_seed() -> None:
    servers = (SimServer("a", workers=2, schedule=(Phase(1, 1, slowdown=8),)), SimServer("b", speed=2))

    def once() -> Any:
        return simulate(Scenario(servers, ClosedLoop(6, think_ms=5, duration_s=5), seed=11, timeout_ms=60), "peak_ewma")

    first, again = once(), once()
    assert first.records == again.records and first.loads == again.loads and first.counters == again.counters
    assert first.counters["timed_out"] > 0


def test_progress_is_reported_in_chunks_adding_up_to_the_requests() -> None:
    calls: list[int] = []

    result = simulate(Scenario((SimServer("a", speed=5),), Arrivals(100, requests=20_500)), progress=calls.append)

    assert sum(calls) == len(result.records) == 20_500
    assert calls == [10_000, 10_000, 500]


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Arrivals(10, requests=5, rate_end_per_s=20), "rate_end_per_s"),
        (lambda: Arrivals(10, duration_s=5, rate_end_per_s=0), "rate_end_per_s"),
        (lambda: Arrivals(10, requests=5, max_in_flight=0), "max_in_flight"),
        (lambda: ClosedLoop(0, requests=5), "users"),
        (lambda: ClosedLoop(2, think_ms=-1, requests=5), "think_ms"),
        (lambda: ClosedLoop(2), "requests"),
        (lambda: Scenario((SimServer("a"),), Arrivals(1, requests=1), timeout_ms=0), "timeout_ms"),
        (
            lambda: Scenario((SimServer("a"),), Arrivals(1, requests=1), pool_settings={"strategy": "x"}),
            "pool_settings.strategy",
        ),
        (
            lambda: simulate(Scenario((SimServer("a"),), Arrivals(1, requests=1), pool_settings={"bogus": 1})),
            "pool_settings.bogus",
        ),
    ],
)
def test_new_settings_name_the_bad_field(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ValueError) as caught:
        make()
    assert str(caught.value).startswith(f"{field}: ")
