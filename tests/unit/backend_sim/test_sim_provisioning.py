"""Provisioning in the simulator: the accounting, and servers that boot and drain, seeded, in
virtual time, with the real decision core and the kernel's Scaler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from loadwarden.backend_sim._config import Arrivals, Scenario, SimServer
from loadwarden.backend_sim._provision_trace import TraceCurve, parse_trace
from loadwarden.backend_sim._provisioning import (
    Provisioner,
    ProvisioningSettings,
    Timeline,
    account,
    fixed_servers,
    shifted,
)
from loadwarden.backend_sim._sim import SimResult, simulate
from loadwarden.policy.forecast import Forecast, Prediction

HOUR = 3600.0


def _trace(rows: Sequence[tuple[float, float]], interpolation: str = "linear") -> Any:
    return parse_trace("t_s,rate\n" + "".join(f"{t:g},{r:g}\n" for t, r in rows), interpolation)


# --- the accounting ----------------------------------------------------------------------


def test_server_hours_and_under_provisioned_time_on_a_hand_built_run() -> None:
    # 10 req/s for an hour, then 50; 2 servers until 3700 s, when 8 more are asked for, ready at 4000 s.
    trace = _trace([(0, 10), (3600, 50), (7200, 50)], "step")
    timeline = Timeline((0.0, 3700.0, 4000.0), (2, 2, 10), (0, 8, 0), (0, 0, 0))
    figures = account(
        timeline, trace, capacity=10, target=0.5, window=(0, 7200), tolerance=0.1, decisions=[(3700.0, 8)]
    )
    assert figures.server_hours == pytest.approx((2 * 3700 + 10 * 300 + 10 * 3200) / HOUR)
    # Under-provisioned from 3600 s (50 req/s > 2 x 10 x 0.5) until the 10 are ready at 4000 s.
    assert figures.under_hours == pytest.approx(400 / HOUR)
    assert figures.under_share == pytest.approx(400 / 7200)
    assert figures.beyond_tolerance_hours == pytest.approx(400 / HOUR)
    assert figures.over_capacity_hours == pytest.approx(400 / HOUR)  # 50 > 2 x 10
    assert figures.mean_servers == pytest.approx((2 * 3700 + 10 * 3500) / 7200)
    assert (figures.peak_servers, figures.scale_ups, figures.scale_downs) == (10, 1, 0)

    later = account(timeline, trace, capacity=10, target=0.5, window=(3600, 7200), decisions=[(3700.0, 8)])
    assert later.server_hours == pytest.approx((2 * 100 + 10 * 300 + 10 * 3200) / HOUR)
    assert later.under_hours == pytest.approx(400 / HOUR) and later.under_share == pytest.approx(400 / 3600)


def test_the_under_provisioned_time_of_a_ramp_is_where_it_crosses_the_level() -> None:
    trace = _trace([(0, 0), (1000, 100)])
    figures = account(Timeline((0.0,), (4,), (0,), (0,)), trace, capacity=10, target=0.5, window=(0, 1000))
    assert figures.under_hours == pytest.approx(800 / HOUR)  # above 4 x 10 x 0.5 = 20 from 200 s
    assert figures.over_capacity_hours == pytest.approx(600 / HOUR)  # above 40 from 400 s
    assert figures.server_hours == pytest.approx(4000 / HOUR)
    assert figures.series["needed"][0] == pytest.approx(trace.mean_rate(0, 1000 / 168) / 5)


def test_the_fixed_count_serves_the_peak_at_the_target() -> None:
    settings = ProvisioningSettings(target=0.7)
    trace = _trace([(0, 10), (300, 281), (600, 20)])
    assert fixed_servers(settings, trace, 1.0, 20.0) == 21  # 281 / (20 x 0.7) = 20.07
    assert fixed_servers(settings, trace, 2.0, 20.0) == 41
    assert fixed_servers(ProvisioningSettings(max_servers=10), trace, 1.0, 20.0) == 10


def test_an_old_forecast_is_seen_from_now() -> None:
    points = tuple(Prediction(k * 900.0, float(k), float(k) - 0.5, float(k) + 0.5) for k in range(1, 6))
    made = Forecast("holt", "", points, (), 100)
    assert [p.offset_s for p in shifted(made, 0, 900).points] == [0, 900, 1800, 2700, 3600]
    later = shifted(made, 1000, 900)  # the first bucket is over, now is 100 s into the second
    assert [(p.offset_s, p.value) for p in later.points] == [(0, 2), (800, 3), (1700, 4), (2600, 5)]
    assert later.model == "holt"


# --- servers in the simulator ------------------------------------------------------------

TEMPLATE = SimServer("srv", workers=10, base_ms=1000, service="constant")  # 10 req/s, 1 s each


def _run(
    rows: Sequence[tuple[float, float]], mode: str, time_scale: float = 60, **settings: Any
) -> tuple[SimResult, Provisioner]:
    curve = TraceCurve(_trace(rows, "step"), time_scale, 1.0)
    values: dict[str, Any] = {"target": 0.5, "lead_time_s": 300.0} | settings
    provisioner = Provisioner(mode, ProvisioningSettings(**values), TEMPLATE, curve)
    duration = curve.duration_s
    scenario = Scenario(
        servers=(TEMPLATE,),
        arrivals=Arrivals(rate_per_s=curve.expected(duration) / duration, duration_s=duration),
        seed=3,
        pool_settings={"outlier_detection": {"disabled": True}},
    )
    result = simulate(scenario, "least_connections", curve=curve, provisioner=provisioner)
    return result, provisioner


def _first_request_s(result: SimResult) -> dict[str, float]:
    first: dict[str, float] = {}
    for record in result.records:
        if record.server and record.server not in first:
            first[record.server] = record.time_s
    return first


def test_a_server_asked_for_is_routable_only_after_the_lead_time() -> None:
    result, provisioner = _run([(0, 10), (3600, 50), (7200, 50)], "reactive")
    timeline = provisioner.timeline
    assert timeline.ready[0] == 2 and timeline.booting[0] == 0  # 10 req/s at 10 x 0.5 each
    ups = [(t, change) for t, change in provisioner._decisions if change > 0]
    assert ups and ups[0][0] > 3600
    asked_s = ups[0][0]
    first = _first_request_s(result)
    new = {sid: t for sid, t in first.items() if sid not in ("srv-0", "srv-1")}
    assert len(new) == 8  # 50 req/s at 10 x 0.5 each: 10 servers
    lead_sim = 300 / 60
    assert min(new.values()) >= asked_s / 60 + lead_sim - 1e-9
    # Booting servers are counted (paid for) from the moment they were asked for.
    k = timeline.t_s.index(asked_s)
    assert (timeline.ready[k], timeline.booting[k]) == (2, 8)
    ready_at = timeline.t_s[timeline.ready.index(10)]
    assert ready_at == pytest.approx(asked_s + 300)
    assert all(record.success for record in result.records)


def test_a_scale_down_drains_servers_and_lets_their_requests_finish() -> None:
    result, provisioner = _run([(0, 50), (3600, 10), (7200, 10)], "reactive")
    timeline = provisioner.timeline
    assert timeline.ready[0] == 10
    downs = [(t, change) for t, change in provisioner._decisions if change < 0]
    assert downs and sum(change for _, change in downs) == -8
    assert max(timeline.draining) >= 1  # some were busy when told to drain
    assert timeline.draining[-1] == 0 and timeline.ready[-1] == 2
    drained_s = downs[0][0] / 60
    late = {r.server for r in result.records if r.time_s > drained_s + 1e-9}
    assert late <= {"srv-0", "srv-1"}  # the newest went first; none gets a new request once draining
    finished_late = [
        r for r in result.records if r.server not in ("srv-0", "srv-1") and r.time_s + r.latency_ms / 1000 > drained_s
    ]
    assert finished_late and all(r.success for r in finished_late)  # in flight at the drain: served
    assert all(record.success for record in result.records) and len(result.records) > 0


def test_fixed_provisioning_keeps_one_count_all_along() -> None:
    result, provisioner = _run([(0, 10), (3600, 50), (7200, 10)], "fixed")
    timeline = provisioner.timeline
    assert set(timeline.ready) == {10} and set(timeline.booting) == {0} and set(timeline.draining) == {0}
    assert provisioner._decisions == []
    assert set(_first_request_s(result)) == {f"srv-{k}" for k in range(10)}
    figures = provisioner.figures((0, 7200))
    assert figures.server_hours == pytest.approx(20) and figures.under_hours == 0


def test_every_mode_sees_the_same_arrivals() -> None:
    rows = [(0, 10), (3600, 50), (7200, 20)]
    runs = {mode: _run(rows, mode)[0] for mode in ("fixed", "reactive", "predictive")}
    times = {mode: list(result.records.time_s) for mode, result in runs.items()}
    assert times["fixed"] == times["reactive"] == times["predictive"]


def test_a_provisioner_decides_with_central_decisions_only() -> None:
    curve = TraceCurve(_trace([(0, 10), (600, 10)]), 60, 1.0)
    scenario = Scenario(servers=(TEMPLATE,), arrivals=Arrivals(rate_per_s=10, duration_s=10), seed=1)
    provisioner = Provisioner("reactive", ProvisioningSettings(), TEMPLATE, curve)
    with pytest.raises(ValueError, match=r"^provisioner: "):
        simulate(scenario, "p2c", decisions="local", clients=2, curve=curve, provisioner=provisioner)
